//! A TCP client and a TCP server on one smoltcp interface whose NIC is an
//! Ethernet loopback: `n` request/response round trips of a RESP `INCR`
//! (the shape of the future key-value server's traffic), with no device
//! between them. It measures what the TCP/IP stack costs at CPL0 (emulated
//! instruction by instruction on the target host) and at CPL3 (native), and
//! shows the stack is deterministic under record/replay: its only inputs are
//! the tick clock, the fixed seed and the order of its own frames.
//!
//! The final checksum is FNV-1a over every reply byte the client received
//! (`:1\r\n:2\r\n...`), so it depends only on `n`: anyone can compute it.

use crate::fmt::LineBuf;
use crate::loopback::Loopback;
use crate::sync::Global;
use crate::{clock, console, power, sched, syscall};
use smoltcp::iface::{Config, Interface, PollResult, SocketSet, SocketStorage};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};

pub const DEFAULT_KERNEL_N: u64 = 100;
pub const DEFAULT_USER_N: u64 = 10_000;

/// Locally administered, the default MAC issue 10 gives the guest.
const MAC: [u8; 6] = [0x02, 0x75, 0x6e, 0x64, 0x00, 0x01];
/// The address the kv server will use; client and server share it here.
const ADDR: Ipv4Address = Ipv4Address::new(10, 0, 0, 10);
const SERVER_PORT: u16 = 6379;
const CLIENT_PORT: u16 = 49152;
/// smoltcp derives initial sequence numbers and ephemeral choices from this.
/// A constant keeps the loopback run a pure function of the tick clock. On
/// the real NIC the seed must differ per boot (ISNs must not repeat across
/// incarnations), so it will come from the VMM as a logged input, like every
/// other value from outside the guest -- never from RDRAND or the TSC.
const RANDOM_SEED: u64 = 0x756e_6465_7273_7479;

const SOCKET_BUF: usize = 1024;
/// `INCR ctr` as a RESP array, as redis-cli sends it.
const REQUEST: &[u8] = b"*2\r\n$4\r\nINCR\r\n$3\r\nctr\r\n";
/// A stall this long (no progress at all) fails the run instead of hanging
/// it: smoltcp's longest timer here is the 1 s minimum RTO.
const STALL_SECS: u64 = 30;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[derive(Clone, Copy)]
struct Params {
    n: u64,
    report: u64,
    hz: u64,
}

/// Written by the boot task before the worker exists; read-only afterwards
/// (also from CPL3: every page is user-accessible).
static PARAMS: Global<Params> = Global::new(Params {
    n: 0,
    report: 0,
    hz: 0,
});

/// Everything smoltcp borrows for the whole run. Static rather than on the
/// worker's 16 KiB stack; only the worker touches it.
struct Storage {
    device: Loopback,
    sockets: [SocketStorage<'static>; 2],
    server_rx: [u8; SOCKET_BUF],
    server_tx: [u8; SOCKET_BUF],
    client_rx: [u8; SOCKET_BUF],
    client_tx: [u8; SOCKET_BUF],
}

static STORAGE: Global<Storage> = Global::new(Storage {
    device: Loopback::new(),
    sockets: [SocketStorage::EMPTY, SocketStorage::EMPTY],
    server_rx: [0; SOCKET_BUF],
    server_tx: [0; SOCKET_BUF],
    client_rx: [0; SOCKET_BUF],
    client_tx: [0; SOCKET_BUF],
});

/// Set by the worker before it exits; the boot task turns it into the exit
/// code (a CPL3 worker cannot power off itself).
static FAILED: Global<bool> = Global::new(false);

pub fn run(n: u64, report: u64, hz: u32, user: bool) -> ! {
    // SAFETY: no worker exists yet, so nothing reads PARAMS concurrently.
    unsafe {
        *PARAMS.get() = Params {
            n,
            report,
            hz: u64::from(hz),
        }
    };
    let entry: extern "C" fn(u64) -> ! = if user { user_task } else { kernel_task };
    crate::sync::without_interrupts(|| sched::spawn(1, entry, 0, user));
    sched::wait_all_done();
    // SAFETY: the worker is done; nothing else writes FAILED.
    let failed = unsafe { core::ptr::read_volatile(FAILED.get()) };
    power::exit(if failed {
        power::EXIT_FAILED
    } else {
        power::EXIT_OK
    })
}

extern "C" fn kernel_task(_: u64) -> ! {
    work(console::print, super::ticker::wait_for_tick);
    sched::exit_current()
}

/// Runs at CPL3: only memory accesses and `ud2` system calls.
extern "C" fn user_task(_: u64) -> ! {
    work(
        |line| {
            syscall::write(line.newline().as_bytes());
        },
        syscall::wait_tick,
    );
    syscall::exit()
}

/// smoltcp's clock: whole milliseconds of PIT ticks. The tick counter
/// advances only in the timer ISR, whose position record/replay reproduces,
/// so every reading is deterministic; CPL3 reads it straight from memory
/// (like a vDSO), with no system call. On the target host a tick pending
/// while CPL3 code runs is delivered at the next guest exit, so at CPL3 this
/// clock stands still between exits (and between system calls that exit).
fn now(hz: u64) -> Instant {
    let ms = clock::ticks().saturating_mul(1000) / hz.max(1);
    Instant::from_millis(i64::try_from(ms).unwrap_or(i64::MAX))
}

#[inline(always)]
fn work(print: impl Fn(&mut LineBuf), wait: impl Fn()) {
    let mut line = LineBuf::new();
    let failed = match exchange(&print, &wait) {
        Ok(s) => {
            line.str("tcploop: replies=")
                .dec(s.replies)
                .str(" checksum=")
                .hex16(s.checksum)
                .str(" frames=")
                .dec(s.frames)
                .str(" drops=")
                .dec(s.drops)
                .str(" waits=")
                .dec(s.waits)
                .str(" ticks=")
                .dec(s.ticks);
            print(&mut line);
            let mut line = LineBuf::new();
            line.str("tcploop: done");
            print(&mut line);
            false
        }
        Err(e) => {
            line.str("tcploop: failed: ").str(e);
            print(&mut line);
            true
        }
    };
    // SAFETY: only this worker writes FAILED, and the boot task reads it
    // after the worker is done.
    unsafe { core::ptr::write_volatile(FAILED.get(), failed) };
}

struct Summary {
    replies: u64,
    checksum: u64,
    frames: u64,
    drops: u64,
    waits: u64,
    ticks: u64,
}

/// Streaming match of the one request the server understands, byte by byte
/// straight out of the socket buffer: a request may straddle the ring
/// buffer's end, and copying it out first would cost a `rep movsb` per byte
/// at CPL0.
struct RequestMatcher {
    pos: usize,
}

impl RequestMatcher {
    /// `Ok(true)` when `b` completes a request.
    fn feed(&mut self, b: u8) -> Result<bool, &'static str> {
        if REQUEST.get(self.pos) != Some(&b) {
            return Err("server: unexpected request byte");
        }
        self.pos += 1;
        if self.pos == REQUEST.len() {
            self.pos = 0;
            return Ok(true);
        }
        Ok(false)
    }
}

/// Streaming parser of a RESP integer reply `:<digits>\r\n`, hashing every
/// byte into the run's checksum.
struct ReplyParser {
    state: ReplyState,
    value: u64,
    checksum: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ReplyState {
    Colon,
    FirstDigit,
    Digits,
    Lf,
}

impl ReplyParser {
    /// `Ok(Some(v))` when `b` completes a reply with value `v`.
    fn feed(&mut self, b: u8) -> Result<Option<u64>, &'static str> {
        self.checksum = (self.checksum ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        match (self.state, b) {
            (ReplyState::Colon, b':') => {
                self.value = 0;
                self.state = ReplyState::FirstDigit;
            }
            (ReplyState::FirstDigit | ReplyState::Digits, b'0'..=b'9') => {
                self.value = self
                    .value
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                    .ok_or("client: reply overflows")?;
                self.state = ReplyState::Digits;
            }
            (ReplyState::Digits, b'\r') => self.state = ReplyState::Lf,
            (ReplyState::Lf, b'\n') => {
                self.state = ReplyState::Colon;
                return Ok(Some(self.value));
            }
            _ => return Err("client: malformed reply"),
        }
        Ok(None)
    }
}

/// `:<v>\r\n`, built backwards from the end of `out`.
fn format_reply(mut v: u64, out: &mut [u8; 24]) -> &[u8] {
    let mut start = out.len() - 2;
    out[22] = b'\r';
    out[23] = b'\n';
    loop {
        start -= 1;
        if let Some(d) = out.get_mut(start) {
            *d = b'0' + (v % 10) as u8;
        }
        v /= 10;
        if v == 0 {
            break;
        }
    }
    // u64 has at most 20 digits, so `start` >= 2 here.
    start -= 1;
    if let Some(c) = out.get_mut(start) {
        *c = b':';
    }
    out.get(start..).unwrap_or(&[])
}

fn exchange(print: &impl Fn(&mut LineBuf), wait: &impl Fn()) -> Result<Summary, &'static str> {
    // SAFETY: PARAMS is read-only while the worker runs.
    let Params { n, report, hz } = unsafe { *PARAMS.get() };
    // SAFETY: this worker is the only code that ever touches STORAGE, and it
    // runs once, so this is the only reference.
    let storage = unsafe { &mut *STORAGE.get() };
    let device = &mut storage.device;

    let mut config = Config::new(EthernetAddress(MAC).into());
    config.random_seed = RANDOM_SEED;
    let mut iface = Interface::new(config, device, now(hz));
    iface.update_ip_addrs(|addrs| {
        // Capacity is at least one address; a failure would only show up as
        // a connect error below.
        let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(ADDR), 24));
    });

    let mut sockets = SocketSet::new(&mut storage.sockets[..]);
    let server = sockets.add(tcp::Socket::new(
        tcp::SocketBuffer::new(&mut storage.server_rx[..]),
        tcp::SocketBuffer::new(&mut storage.server_tx[..]),
    ));
    let client = sockets.add(tcp::Socket::new(
        tcp::SocketBuffer::new(&mut storage.client_rx[..]),
        tcp::SocketBuffer::new(&mut storage.client_tx[..]),
    ));
    sockets
        .get_mut::<tcp::Socket>(server)
        .listen(SERVER_PORT)
        .map_err(|_| "server: listen failed")?;
    sockets
        .get_mut::<tcp::Socket>(client)
        .connect(
            iface.context(),
            (IpAddress::Ipv4(ADDR), SERVER_PORT),
            CLIENT_PORT,
        )
        .map_err(|_| "client: connect failed")?;

    let start_ticks = clock::ticks();
    let mut matcher = RequestMatcher { pos: 0 };
    let mut parser = ReplyParser {
        state: ReplyState::Colon,
        value: 0,
        checksum: FNV_OFFSET,
    };
    let mut counter: u64 = 0; // the server's `ctr`
    let mut replies: u64 = 0;
    let mut in_flight = false;
    let mut waits: u64 = 0;
    let mut last_progress = start_ticks;
    let mut until_report = if report == 0 { u64::MAX } else { report };

    while replies < n {
        let polled = iface.poll(now(hz), device, &mut sockets);
        let mut progress = polled == PollResult::SocketStateChanged;

        // Server: answer every complete request in its receive buffer.
        let s = sockets.get_mut::<tcp::Socket>(server);
        if s.can_recv() {
            let mut completed = 0u64;
            let r = s.recv(|buf| {
                for (i, &b) in buf.iter().enumerate() {
                    match matcher.feed(b) {
                        Ok(true) => completed += 1,
                        Ok(false) => {}
                        Err(e) => return (i, Err(e)),
                    }
                }
                (buf.len(), Ok(()))
            });
            r.map_err(|_| "server: recv failed")??;
            for _ in 0..completed {
                counter += 1;
                let mut buf = [0u8; 24];
                let reply = format_reply(counter, &mut buf);
                let sent = s.send_slice(reply).map_err(|_| "server: send failed")?;
                if sent != reply.len() {
                    return Err("server: send buffer full");
                }
            }
            progress = true;
        }

        // Client: read replies, then send the next request.
        let c = sockets.get_mut::<tcp::Socket>(client);
        if c.can_recv() {
            let mut got = 0u64;
            let mut last = 0u64;
            let r = c.recv(|buf| {
                for (i, &b) in buf.iter().enumerate() {
                    match parser.feed(b) {
                        Ok(Some(v)) => {
                            got += 1;
                            last = v;
                        }
                        Ok(None) => {}
                        Err(e) => return (i, Err(e)),
                    }
                }
                (buf.len(), Ok(()))
            });
            r.map_err(|_| "client: recv failed")??;
            if got > 1 || (got == 1 && !in_flight) {
                return Err("client: unsolicited reply");
            }
            if got == 1 {
                replies += 1;
                in_flight = false;
                if last != replies {
                    return Err("client: reply is not the next counter value");
                }
                until_report -= 1;
                if until_report == 0 {
                    until_report = report;
                    let mut line = LineBuf::new();
                    line.str("tcploop: i=")
                        .dec(replies)
                        .str(" reply=")
                        .dec(last)
                        .str(" ticks=")
                        .dec(clock::ticks() - start_ticks);
                    print(&mut line);
                }
            }
            progress = true;
        }
        if !in_flight && replies < n && c.can_send() {
            let sent = c.send_slice(REQUEST).map_err(|_| "client: send failed")?;
            if sent != REQUEST.len() {
                return Err("client: send buffer full");
            }
            in_flight = true;
            progress = true;
        }

        if progress || device.has_pending() {
            last_progress = clock::ticks();
            continue;
        }
        // Nothing to do until one of smoltcp's timers (delayed ACK,
        // retransmission) expires: sleep a tick.
        if clock::ticks() - last_progress > STALL_SECS * hz {
            return Err("stalled");
        }
        waits += 1;
        wait();
    }

    Ok(Summary {
        replies,
        checksum: parser.checksum,
        frames: device.sent(),
        drops: device.dropped(),
        waits,
        ticks: clock::ticks() - start_ticks,
    })
}
