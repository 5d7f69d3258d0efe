//! `kv`: a key-value server speaking the Redis protocol (RESP2 and inline commands) on TCP
//! port 6379, on the virtio-net card, with smoltcp as the TCP/IP stack.
//!
//! The kernel (CPL0) maps the card's register window, initialises the card, routes its
//! interrupt line and starts one CPL3 task that runs everything else: smoltcp, the RESP
//! parser and the store. CPL0 code is emulated on the target host (~1 µs per instruction)
//! while CPL3 runs natively (docs/benchmarks.md, "Guest TCP/IP stack: CPL0 vs CPL3"). The
//! task reads the card's used rings from memory and notifies it with one MMIO store; it
//! enters the kernel only to sleep (`SYS_WAIT_IRQ`) when smoltcp has nothing to do, and to
//! print.
//!
//! Its inputs are deterministic: smoltcp's clock is the PIT tick count in milliseconds, and
//! its random seed (initial sequence numbers, ephemeral choices) is derived from the CMOS
//! RTC's date and time, which the VMM logs like every device read, and the card's MAC. No
//! TSC, no RDRAND.
//!
//! Limits: [`MAX_CONNS`] concurrent connections (one listening socket each, listening again
//! as soon as its connection ends); a request up to [`INPUT_BUF`] bytes; keys, values and the
//! store's size as in `resp.rs`.

use crate::cmdline::Config;
use crate::fmt::LineBuf;
use crate::resp::{self, Store};
use crate::sync::Global;
use crate::virtio_net::{self, VirtioNet};
use crate::{clock, console, interrupts, pic, power, rtc, sched, syscall};
use smoltcp::iface::{
    self, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet, SocketStorage,
};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};

pub const PORT: u16 = 6379;
/// Concurrent connections (redis-benchmark opens 50 by default).
pub const MAX_CONNS: usize = 64;
/// smoltcp's receive and send buffers per connection.
const SOCKET_BUF: usize = 4096;
/// A connection's unparsed input: the longest request the server takes.
pub const INPUT_BUF: usize = 4096;
/// Sockets kept listening when connections churn. smoltcp has no accept backlog: a SYN that
/// finds no listening socket is answered with a reset. Clients such as redis-benchmark close
/// all their connections and open as many new ones at once, faster than the old sockets get
/// through LAST-ACK, so when fewer than this many listen, connections the peer has already
/// closed and that have nothing left to deliver are dropped to make room.
const LISTEN_RESERVE: usize = 8;
/// After SHUTDOWN, how long open connections get to close before the guest powers off.
const STOP_SECS: u64 = 2;

#[derive(Clone, Copy)]
struct Params {
    hz: u64,
    ip: [u8; 4],
    prefix: u8,
    gw: Option<[u8; 4]>,
    seed: u64,
}

/// Written by the boot task before the worker exists; read-only afterwards.
static PARAMS: Global<Params> = Global::new(Params {
    hz: 0,
    ip: [0; 4],
    prefix: 0,
    gw: None,
    seed: 0,
});

/// The card, set up by the kernel and then owned by the worker.
static NIC: Global<Option<VirtioNet>> = Global::new(None);

/// Bytes that are only read where written: outside the zeroed `.bss` (see link.ld).
struct Buffers {
    socket_rx: [[u8; SOCKET_BUF]; MAX_CONNS],
    socket_tx: [[u8; SOCKET_BUF]; MAX_CONNS],
    input: [[u8; INPUT_BUF]; MAX_CONNS],
    out: [u8; SOCKET_BUF],
}

#[unsafe(link_section = ".noinit.kv")]
static BUFFERS: Global<Buffers> = Global::new(Buffers {
    socket_rx: [[0; SOCKET_BUF]; MAX_CONNS],
    socket_tx: [[0; SOCKET_BUF]; MAX_CONNS],
    input: [[0; INPUT_BUF]; MAX_CONNS],
    out: [0; SOCKET_BUF],
});

/// The store: its metadata is cleared by the worker before use (`Store::clear`).
#[unsafe(link_section = ".noinit.kv")]
static STORE: Global<Store> = Global::new(Store::new());

struct Sockets {
    storage: [SocketStorage<'static>; MAX_CONNS],
    input_len: [usize; MAX_CONNS],
}

static SOCKETS: Global<Sockets> = Global::new(Sockets {
    storage: [SocketStorage::EMPTY; MAX_CONNS],
    input_len: [0; MAX_CONNS],
});

/// Set by the worker if it stops; the boot task turns it into the exit code.
static FAILED: Global<bool> = Global::new(false);

fn fail(line: &mut LineBuf, code: u8) -> ! {
    console::print(line);
    power::exit(code)
}

/// Boot task (CPL0): checks the configuration, brings the card up and starts the server.
pub fn run(c: &Config) -> ! {
    let mut line = LineBuf::new();
    let Some((ip, prefix)) = c.ip else {
        line.str("kv: needs ip=A.B.C.D/N (the guest's address on the card's network)");
        fail(&mut line, power::EXIT_BAD_ARGS)
    };
    let Some(dev) = c.nic else {
        line.str("kv: needs a network card (virtio_mmio.device=...; run the VMM with --tap)");
        fail(&mut line, power::EXIT_BAD_ARGS)
    };
    let setup = crate::sync::without_interrupts(|| {
        virtio_net::map_window(dev.addr, dev.size)?;
        let nic = VirtioNet::init(dev.addr)?;
        let mac = nic.mac();
        // SAFETY: no worker exists yet; interrupts are off.
        unsafe { *NIC.get() = Some(nic) };
        if dev.irq == 0 || dev.irq == 2 {
            return Err("the card's interrupt line is taken (timer or cascade)");
        }
        crate::interrupts::route_nic(dev.irq);
        if dev.irq >= 8 {
            pic::unmask(2);
        }
        Ok(mac)
    });
    let mac = match setup {
        Ok(mac) => mac,
        Err(e) => {
            line.str("kv: network card: ").str(e);
            fail(&mut line, power::EXIT_FAILED)
        }
    };

    let t = rtc::read_datetime();
    let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
    for b in [
        (t.year >> 8) as u8,
        t.year as u8,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
    ]
    .iter()
    .chain(mac.iter())
    {
        seed = (seed ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    // SAFETY: no worker exists yet, so nothing reads PARAMS concurrently.
    unsafe {
        *PARAMS.get() = Params {
            hz: u64::from(c.hz),
            ip,
            prefix,
            gw: c.gw,
            seed,
        }
    };

    line.str("kv: mac=");
    for (i, b) in mac.iter().enumerate() {
        if i > 0 {
            line.byte(b':');
        }
        line.bytes(&[hex(b >> 4), hex(b & 0xf)]);
    }
    line.str(" ip=");
    dotted(&mut line, ip);
    line.byte(b'/').dec(u64::from(prefix));
    if let Some(gw) = c.gw {
        line.str(" gw=");
        dotted(&mut line, gw);
    }
    line.str(" port=")
        .dec(u64::from(PORT))
        .str(" conns=")
        .dec(MAX_CONNS as u64)
        .str(" irq=")
        .dec(u64::from(dev.irq));
    console::print(&mut line);

    crate::sync::without_interrupts(|| sched::spawn(1, server_task, 0, true));
    sched::wait_all_done();
    // SAFETY: the worker is done; nothing else writes FAILED.
    let failed = unsafe { core::ptr::read_volatile(FAILED.get()) };
    power::exit(if failed {
        power::EXIT_FAILED
    } else {
        power::EXIT_OK
    })
}

fn hex(d: u8) -> u8 {
    b"0123456789abcdef"[usize::from(d & 0xf)]
}

fn dotted(line: &mut LineBuf, a: [u8; 4]) {
    for (i, o) in a.iter().enumerate() {
        if i > 0 {
            line.byte(b'.');
        }
        line.dec(u64::from(*o));
    }
}

fn print(line: &mut LineBuf) {
    syscall::write(line.newline().as_bytes());
}

/// smoltcp's clock: whole milliseconds of PIT ticks (see tcploop.rs).
fn now(hz: u64) -> Instant {
    let ms = clock::ticks().saturating_mul(1000) / hz.max(1);
    Instant::from_millis(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// The server, at CPL3.
extern "C" fn server_task(_: u64) -> ! {
    let mut line = LineBuf::new();
    match serve() {
        Ok(()) => {
            line.str("kv: shut down");
            print(&mut line);
        }
        Err(e) => {
            line.str("kv: stopped: ").str(e);
            print(&mut line);
            // SAFETY: only this worker writes FAILED; the boot task reads it after the worker
            // is done.
            unsafe { core::ptr::write_volatile(FAILED.get(), true) };
        }
    }
    syscall::exit()
}

/// Runs the server until a client sends SHUTDOWN (`Ok`) or something breaks.
fn serve() -> Result<(), &'static str> {
    // SAFETY: PARAMS is read-only while the worker runs.
    let p = unsafe { *PARAMS.get() };
    // SAFETY: from here on only this worker touches NIC, BUFFERS, STORE and SOCKETS (the
    // interrupt handler uses only the card's registers), and serve() runs once.
    let (nic, bufs, store, socks) = unsafe {
        (
            &mut *NIC.get(),
            &mut *BUFFERS.get(),
            &mut *STORE.get(),
            &mut *SOCKETS.get(),
        )
    };
    let Some(nic) = nic.as_mut() else {
        return Err("no network card");
    };
    store.clear();

    let mut config = iface::Config::new(EthernetAddress(nic.mac()).into());
    config.random_seed = p.seed;
    let mut iface = Interface::new(config, nic, now(p.hz));
    let [a, b, c, d] = p.ip;
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(
            IpAddress::Ipv4(Ipv4Address::new(a, b, c, d)),
            p.prefix,
        ));
    });
    if let Some([a, b, c, d]) = p.gw
        && iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(a, b, c, d))
            .is_err()
    {
        return Err("cannot add the default route");
    }

    let mut sockets = SocketSet::new(&mut socks.storage[..]);
    let mut handles: [Option<SocketHandle>; MAX_CONNS] = [None; MAX_CONNS];
    for ((h, rx), tx) in handles
        .iter_mut()
        .zip(bufs.socket_rx.iter_mut())
        .zip(bufs.socket_tx.iter_mut())
    {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(&mut rx[..]),
            tcp::SocketBuffer::new(&mut tx[..]),
        );
        // Replies go out at once; pipelined requests are answered in one segment anyway.
        s.set_nagle_enabled(false);
        *h = Some(sockets.add(s));
    }
    let input_len = &mut socks.input_len;
    let out = &mut bufs.out;
    // Once a client asked for SHUTDOWN: the tick by which the server stops even if
    // connections are still closing.
    let mut stopping: Option<u64> = None;
    let mut commands: u64 = 0;

    loop {
        let t = now(p.hz);
        iface.poll_maintenance(t);
        let mut progress = false;
        // Frame by frame, so that a connection that ends frees its socket before the next
        // frame (often a new SYN) is looked at.
        loop {
            match iface.poll_ingress_single(t, nic, &mut sockets) {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => {}
                PollIngressSingleResult::SocketStateChanged => progress = true,
            }
            if stopping.is_none() {
                keep_listening(&mut sockets, &handles, input_len);
            }
        }
        for ((h, input), len) in handles
            .iter()
            .zip(bufs.input.iter_mut())
            .zip(input_len.iter_mut())
        {
            let Some(h) = *h else { continue };
            let s = sockets.get_mut::<tcp::Socket>(h);
            let (busy, shutdown) = serve_connection(s, input, len, store, out, &mut commands);
            progress |= busy;
            if shutdown && stopping.is_none() {
                stopping = Some(clock::ticks() + STOP_SECS * p.hz);
            }
        }
        match stopping {
            None => keep_listening(&mut sockets, &handles, input_len),
            Some(deadline) => {
                // Take no new connections, close the others gracefully; stop when they are
                // all closed (replies delivered) or at the deadline.
                let mut open = 0;
                for h in handles.iter().flatten() {
                    let s = sockets.get_mut::<tcp::Socket>(*h);
                    if s.is_listening() {
                        s.abort();
                    } else if s.is_open() {
                        s.close();
                        open += 1;
                    }
                }
                if open == 0 || clock::ticks() >= deadline {
                    while iface.poll_egress(t, nic, &mut sockets) == PollResult::SocketStateChanged
                    {
                    }
                    nic.flush();
                    let (rx, tx, notifies) = nic.counters();
                    let (irqs, config_changes) = virtio_net::interrupts();
                    let mut line = LineBuf::new();
                    line.str("kv: commands=")
                        .dec(commands)
                        .str(" keys=")
                        .dec(store.len() as u64)
                        .str(" frames_in=")
                        .dec(rx)
                        .str(" frames_out=")
                        .dec(tx)
                        .str(" notifies=")
                        .dec(notifies)
                        .str(" nic_interrupts=")
                        .dec(irqs);
                    if nic.rx_notifies() > 0 {
                        line.str(" rx_notifies=").dec(nic.rx_notifies());
                    }
                    if config_changes > 0 {
                        line.str(" config_changes=").dec(config_changes);
                    }
                    print(&mut line);
                    return Ok(());
                }
            }
        }
        while iface.poll_egress(t, nic, &mut sockets) == PollResult::SocketStateChanged {
            progress = true;
        }
        nic.flush();
        if progress || nic.rx_pending() {
            continue;
        }
        // Nothing to do until a frame arrives or a timer (delayed ACK, retransmission) is
        // due: sleep until the next interrupt. Interrupts for received frames are on only
        // while asleep; the event count read before the last look closes the race.
        let seen = interrupts::events();
        nic.set_rx_interrupts(true);
        if !nic.rx_pending() {
            syscall::wait_irq(seen);
        }
        nic.set_rx_interrupts(false);
    }
}

/// Puts sockets whose connection ended back to listening, and keeps [`LISTEN_RESERVE`] of
/// them listening by dropping finished connections if need be.
fn keep_listening(
    sockets: &mut SocketSet<'_>,
    handles: &[Option<SocketHandle>; MAX_CONNS],
    input_len: &mut [usize; MAX_CONNS],
) {
    let mut listening = 0;
    for (h, len) in handles.iter().zip(input_len.iter_mut()) {
        let Some(h) = *h else { continue };
        let s = sockets.get_mut::<tcp::Socket>(h);
        if !s.is_open() {
            // Closed, or in TIME-WAIT: take the next client.
            *len = 0;
            let _ = s.listen(PORT);
        }
        if s.is_listening() {
            listening += 1;
        }
    }
    if listening >= LISTEN_RESERVE {
        return;
    }
    for (h, len) in handles.iter().zip(input_len.iter_mut()) {
        let Some(h) = *h else { continue };
        let s = sockets.get_mut::<tcp::Socket>(h);
        // The peer has closed, everything we sent is acknowledged, nothing is unanswered.
        let finished = matches!(
            s.state(),
            tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing
        ) && s.send_queue() == 0
            && s.recv_queue() == 0
            && *len == 0;
        if finished {
            s.abort();
            let _ = s.listen(PORT);
            listening += 1;
            if listening >= LISTEN_RESERVE {
                return;
            }
        }
    }
}

const TOO_LARGE: &[u8] =
    b"-ERR Protocol error: request too large (this server takes up to 4096 bytes)\r\n";

/// Reads requests from one connection and answers them: whether anything happened, and
/// whether the client asked the server to shut down.
fn serve_connection(
    s: &mut tcp::Socket<'_>,
    input: &mut [u8; INPUT_BUF],
    len: &mut usize,
    store: &mut Store,
    out: &mut [u8; SOCKET_BUF],
    commands: &mut u64,
) -> (bool, bool) {
    if !s.may_send() {
        return (false, false);
    }
    let mut progress = false;
    if s.can_recv() && *len < INPUT_BUF {
        let n = s.recv_slice(&mut input[*len..]).unwrap_or(0);
        *len += n;
        progress |= n > 0;
    }
    if *len > 0 {
        let free = s.send_capacity() - s.send_queue();
        let room = &mut out[..free.min(SOCKET_BUF)];
        let o = resp::process(store, &input[..*len], room);
        *commands += o.commands as u64;
        if o.written > 0 {
            let _ = s.send_slice(&room[..o.written]);
        }
        if o.consumed > 0 {
            input.copy_within(o.consumed..*len, 0);
            *len -= o.consumed;
        }
        progress |= o.consumed > 0 || o.written > 0;
        if o.close {
            *len = 0;
            s.close();
            return (true, o.shutdown);
        }
        if *len == INPUT_BUF && o.consumed == 0 && s.send_queue() == 0 {
            // A request longer than the buffer: it can never complete.
            let _ = s.send_slice(TOO_LARGE);
            *len = 0;
            s.close();
            return (true, false);
        }
    }
    if s.state() == tcp::State::CloseWait && !s.can_recv() && (*len == 0 || !progress) {
        // The client is done sending; what it sent has been answered.
        *len = 0;
        s.close();
        progress = true;
    }
    (progress, false)
}
