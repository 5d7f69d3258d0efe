//! The `kv` guest workload end to end: a Redis-protocol server in the guest, on a virtio-net
//! card backed by a real TAP device, answering real TCP clients: our own (replies checked
//! byte for byte), then `redis-cli` and `redis-benchmark` if installed (Debian `redis-tools`).
//! Then the same under `--record`, and `understudy replay` of that log, which reproduces
//! every transmitted frame byte for byte. Misbehaving clients; and junk on the wire (bad
//! frames and a flood written straight at the TAP, see the section at the end).
//!
//! Everything happens in network namespaces the test creates and always removes
//! (`cluster::netns::Net`, also on panic); the guest's TAP lives in the client host's
//! namespace, with 10.0.0.1/24 on the host side and the guest at 10.0.0.10. No waits are
//! timed: every wait is bounded, generously, and only fails when the bound runs out.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ::cluster::netns::Net;
use common::rng::Rng;
use common::{assert_ok, bin, inspect_json, replay, stderr, stdout, understudy};

const HOST: &str = "client";
const TAP: &str = "kvtap0";
const GUEST: [u8; 4] = [10, 0, 0, 10];
const PORT: u16 = 6379;
/// Bound on any single wait (boot, a reply, an exit): far above what any machine of this kind
/// needs, so it only ends a run that is really stuck.
const PATIENCE: Duration = Duration::from_secs(120);

fn guest_addr() -> SocketAddr {
    SocketAddr::from((GUEST, PORT))
}

/// The namespace with the TAP device, set up and addressed; removed on drop.
fn network() -> Option<Net> {
    if let Some(why) = ::cluster::netns::unavailable() {
        eprintln!("skipped: {why}");
        return None;
    }
    let net = Net::new(&[HOST]).expect("building the test network");
    net.exec(HOST, "ip", &["tuntap", "add", TAP, "mode", "tap"])
        .unwrap();
    net.exec(HOST, "ip", &["addr", "add", "10.0.0.1/24", "dev", TAP])
        .unwrap();
    net.exec(HOST, "ip", &["link", "set", TAP, "up"]).unwrap();
    Some(net)
}

/// `understudy run` in the namespace; killed if the test ends before it does.
struct Vmm {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Vmm {
    fn start(net: &Net, dir: &Path, name: &str, extra: &[&str]) -> Self {
        let stdout = dir.join(format!("{name}.stdout"));
        let stderr = dir.join(format!("{name}.stderr"));
        let mut cmd = net.command(HOST, bin()).unwrap();
        cmd.args([
            "run",
            "--guest",
            "kv",
            "--guest-arg",
            "ip=10.0.0.10/24",
            "--tap",
            TAP,
            "--stats",
        ])
        .args(extra)
        .env_remove("UNDERSTUDY_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap());
        let child = cmd.spawn().expect("spawn understudy run");
        Self {
            child,
            stdout,
            stderr,
        }
    }

    fn output(&self) -> (String, String) {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        (read(&self.stdout), read(&self.stderr))
    }

    /// Waits (bounded) for the VMM to exit.
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let (out, err) = self.output();
                panic!("understudy run did not exit:\nstdout:\n{out}\nstderr:\n{err}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A RESP connection to the guest.
struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    /// Connects, retrying until the guest answers (it may still be booting).
    fn open() -> Conn {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match TcpStream::connect_timeout(&guest_addr(), Duration::from_secs(2)) {
                Ok(s) => {
                    s.set_read_timeout(Some(PATIENCE)).unwrap();
                    s.set_nodelay(true).unwrap();
                    let w = s.try_clone().unwrap();
                    return Conn {
                        r: BufReader::new(s),
                        w,
                    };
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot connect to the guest at {}: {e}", guest_addr()),
            }
        }
    }

    fn send(&mut self, args: &[&str]) {
        self.w.write_all(&encode(args)).unwrap();
    }

    /// One whole reply, as the raw RESP text.
    fn reply(&mut self) -> String {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        assert!(line.ends_with("\r\n"), "truncated reply {line:?}");
        match line.as_bytes()[0] {
            b'$' => {
                let n: i64 = line[1..line.len() - 2].parse().unwrap();
                if n >= 0 {
                    let mut body = vec![0u8; n as usize + 2];
                    self.r.read_exact(&mut body).unwrap();
                    line.push_str(&String::from_utf8(body).unwrap());
                }
            }
            b'*' => {
                let n: i64 = line[1..line.len() - 2].parse().unwrap();
                for _ in 0..n.max(0) {
                    line.push_str(&self.reply());
                }
            }
            _ => {}
        }
        line
    }

    fn call(&mut self, args: &[&str]) -> String {
        self.send(args);
        self.reply()
    }
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    v
}

/// What our own client checks; runs inside the namespace.
fn talk_to_the_guest() {
    let mut c = Conn::open();
    assert_eq!(c.call(&["PING"]), "+PONG\r\n");
    assert_eq!(c.call(&["SET", "greeting", "hello"]), "+OK\r\n");
    assert_eq!(c.call(&["GET", "greeting"]), "$5\r\nhello\r\n");
    assert_eq!(c.call(&["GET", "missing"]), "$-1\r\n");
    const N: u64 = 300;
    for i in 1..=N {
        assert_eq!(c.call(&["INCR", "counter"]), format!(":{i}\r\n"));
    }
    assert_eq!(
        c.call(&["NOSUCHCMD", "x"]),
        "-ERR unknown command 'NOSUCHCMD', with args beginning with: 'x' \r\n"
    );
    assert_eq!(
        c.call(&["GET"]),
        "-ERR wrong number of arguments for 'get' command\r\n"
    );
    assert_eq!(
        c.call(&["INCR", "greeting"]),
        "-ERR value is not an integer or out of range\r\n"
    );
    // Inline commands, and a pipeline sent in one write.
    c.w.write_all(b"PING\r\nECHO inline\r\n").unwrap();
    assert_eq!(c.reply(), "+PONG\r\n");
    assert_eq!(c.reply(), "$6\r\ninline\r\n");
    let batch: Vec<u8> = (0..200).flat_map(|_| encode(&["INCR", "piped"])).collect();
    c.w.write_all(&batch).unwrap();
    for i in 1..=200 {
        assert_eq!(c.reply(), format!(":{i}\r\n"));
    }
    // 16 connections at once, interleaved.
    let mut conns: Vec<Conn> = (0..16).map(|_| Conn::open()).collect();
    for round in 1..=10 {
        for (k, c) in conns.iter_mut().enumerate() {
            c.send(&["INCR", &format!("conn:{k}")]);
        }
        for c in conns.iter_mut() {
            assert_eq!(c.reply(), format!(":{round}\r\n"));
        }
    }
    drop(conns);
    assert_eq!(
        c.call(&["GET", "counter"]),
        format!("${}\r\n{N}\r\n", N.to_string().len())
    );
}

/// Runs `program args` in the namespace with a bounded wait; `None` if it is not installed.
fn tool(net: &Net, program: &str, args: &[&str]) -> Option<(ExitStatus, String)> {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: {program} is not installed");
        return None;
    }
    let mut child = net
        .command(HOST, program)
        .unwrap()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{program} {args:?} did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    Some((o.status, text))
}

fn redis_tools(net: &Net, requests: &str) {
    if let Some((status, out)) = tool(net, "redis-cli", &["-h", "10.0.0.10", "SET", "cli", "v1"]) {
        assert!(status.success(), "redis-cli: {out}");
        assert_eq!(out.trim(), "OK");
        let (_, out) = tool(net, "redis-cli", &["-h", "10.0.0.10", "GET", "cli"]).unwrap();
        assert_eq!(out.trim(), "v1");
        let (_, out) = tool(
            net,
            "redis-cli",
            &["-h", "10.0.0.10", "INCRBY", "cli-n", "5"],
        )
        .unwrap();
        assert_eq!(
            out.trim(),
            "5",
            "redis-cli prints bare replies when not on a terminal"
        );
    }
    if let Some((status, out)) = tool(
        net,
        "redis-benchmark",
        &[
            "-h",
            "10.0.0.10",
            "-t",
            "ping,set,get,incr",
            "-n",
            requests,
            "-q",
        ],
    ) {
        // It exits non-zero when the server closes a connection.
        assert!(status.success(), "redis-benchmark: {out}");
        let out = out.replace('\r', "\n");
        for test in ["PING_INLINE", "PING_MBULK", "SET", "GET", "INCR"] {
            assert!(
                out.lines()
                    .any(|l| l.starts_with(&format!("{test}: "))
                        && l.contains("requests per second")),
                "redis-benchmark did not finish {test}:\n{out}"
            );
        }
        eprintln!(
            "redis-benchmark: {}",
            out.lines()
                .filter(|l| l.contains("requests per second"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
}

/// Asks the guest to power off (SHUTDOWN) and checks that it did, with code 0.
fn shut_down(net: &Net, vmm: &mut Vmm) -> (String, String) {
    let reply = net
        .within(HOST, || Conn::open().call(&["SHUTDOWN"]))
        .unwrap();
    assert_eq!(reply, "+OK\r\n");
    let status = vmm.wait();
    let (out, err) = vmm.output();
    assert!(
        status.success(),
        "understudy run: {status:?}\nstdout:\n{out}\nstderr:\n{err}"
    );
    assert!(
        out.contains("kv: mac=02:75:73:00:00:01 ip=10.0.0.10/24"),
        "{out}"
    );
    assert!(out.lines().any(|l| l == "kv: shut down"), "{out}");
    (out, err)
}

#[test]
fn kv_answers_redis_clients_over_a_tap() {
    let Some(net) = network() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut vmm = Vmm::start(&net, dir.path(), "run", &[]);
    net.within(HOST, talk_to_the_guest).unwrap();
    if let Some((status, out)) = tool(&net, "ping", &["-c", "2", "-W", "10", "10.0.0.10"]) {
        assert!(status.success(), "the guest does not answer ping:\n{out}");
    }
    redis_tools(&net, "2000");
    let (_, err) = shut_down(&net, &mut vmm);
    eprintln!("{}", err.trim());
}

#[test]
fn a_recorded_kv_run_replays_every_frame() {
    let Some(net) = network() else { return };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("kv.ulog");
    let mut vmm = Vmm::start(
        &net,
        dir.path(),
        "record",
        &["--record", log.to_str().unwrap()],
    );
    net.within(HOST, talk_to_the_guest).unwrap();
    redis_tools(&net, "500");
    let (out, _) = shut_down(&net, &mut vmm);

    let info = inspect_json(&log);
    assert_eq!(info["complete"], true);
    assert_eq!(info["end"], "power-off, exit code 0");
    let tx = info["network"]["tx"]["frames"].as_u64().unwrap();
    let rx = info["network"]["rx"]["frames"].as_u64().unwrap();
    assert!(tx > 1000 && rx > 1000, "frames: {tx} out, {rx} in");

    // Replay checks each transmitted frame against its net-tx entry, byte for byte, and
    // stops at the first difference.
    let rep = replay(&log);
    assert_ok(&rep, "replay of the kv recording");
    assert_eq!(stdout(&rep), out, "the replay printed something else");
    let err = stderr(&rep);
    assert!(
        err.contains("replay: OK: reached the recorded end (guest exit code 0)"),
        "{err}"
    );
}

/// `run --tap --stream-to` and a backup replaying the stream live (`replay --listen`, given
/// the primary's card with `--mac`): the backup reproduces every transmitted frame as it
/// arrives and reaches the same end, with the same console.
#[test]
fn a_streamed_kv_run_replays_live_on_a_listening_backup() {
    let Some(net) = network() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut backup = net
        .command(HOST, bin())
        .unwrap()
        .args([
            "replay",
            "--listen",
            "127.0.0.1:0",
            "--guest",
            "kv",
            "--guest-arg",
            "ip=10.0.0.10/24",
            "--mac",
            "02:75:73:00:00:01",
        ])
        .env_remove("UNDERSTUDY_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn understudy replay --listen");
    let mut backup_err = BufReader::new(backup.stderr.take().unwrap());
    let mut line = String::new();
    let addr = loop {
        line.clear();
        assert!(
            backup_err.read_line(&mut line).unwrap() > 0,
            "the backup ended before it listened"
        );
        if let Some(a) = line.trim().strip_prefix("replay: listening on ") {
            break a.to_string();
        }
    };
    let mut vmm = Vmm::start(&net, dir.path(), "primary", &["--stream-to", &addr]);
    net.within(HOST, talk_to_the_guest).unwrap();
    redis_tools(&net, "300");
    let (out, _) = shut_down(&net, &mut vmm);

    let mut backup_out = String::new();
    backup
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut backup_out)
        .unwrap();
    let mut rest = String::new();
    backup_err.read_to_string(&mut rest).unwrap();
    let status = backup.wait().unwrap();
    assert!(status.success(), "the backup: {status:?}\n{rest}");
    assert!(
        rest.contains("replay: OK: reached the recorded end (guest exit code 0)"),
        "{rest}"
    );
    assert_eq!(
        backup_out, out,
        "the backup's console differs from the primary's"
    );
}

#[test]
fn kv_refuses_to_start_without_an_address_or_a_card() {
    let run = |args: &[&str]| {
        let mut all = vec!["run", "--guest"];
        all.extend_from_slice(args);
        understudy(&all)
    };
    let o = run(&["kv"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("kv: needs ip=A.B.C.D/N"),
        "{}",
        stdout(&o)
    );
    for bad in [
        "ip=10.0.0.300/24",
        "ip=10.0.0.3/33",
        "ip=10.0.0.3",
        "ip=10.0.3/24",
        "gw=10.0.0",
    ] {
        let o = run(&["kv", "--guest-arg", "ip=10.0.0.10/24", "--guest-arg", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stdout(&o));
        assert!(
            stdout(&o).contains(&format!("guest: invalid argument '{bad}'")),
            "{}",
            stdout(&o)
        );
    }
    let o = run(&["kv", "--guest-arg", "ip=10.0.0.10/24"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("kv: needs a network card"),
        "{}",
        stdout(&o)
    );
    // The VMM adds virtio_mmio.device= whenever it attaches a card, whatever the workload.
    let o = run(&[
        "ticker",
        "--guest-arg",
        "ticks=1",
        "--guest-arg",
        "virtio_mmio.device=512@0xd0000000:5",
    ]);
    assert_ok(&o, "ticker with a virtio_mmio.device argument");
    let o = run(&["ticker", "--guest-arg", "virtio_mmio.device=512@0xd0000000"]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
}

/// Clients that misbehave, from inside the namespace: garbage RESP, a request past the size
/// limit, 100 connections at once (more than the guest's sockets), one that pipelines without
/// ever reading. Each gets an error or is dropped; a well-behaved client is answered throughout.
fn misbehave_at_the_guest() {
    let mut good = Conn::open();
    assert_eq!(good.call(&["PING"]), "+PONG\r\n");
    // A bulk length that is not a number: an error reply, or the connection closed.
    let mut g = Conn::open();
    g.w.write_all(b"*1\r\n$abc\r\nPING\r\n").unwrap();
    let mut line = String::new();
    let n = g.r.read_line(&mut line).unwrap_or(0);
    assert!(n == 0 || line.starts_with("-ERR"), "garbage got {line:?}");
    // A value past the limit: an error reply, or the connection closed; never stored.
    let mut big = Conn::open();
    let huge = "x".repeat(64 * 1024);
    big.w
        .write_all(&encode(&["SET", "big", &huge]))
        .unwrap_or(());
    let mut line = String::new();
    let n = big.r.read_line(&mut line).unwrap_or(0);
    assert!(
        n == 0 || line.starts_with("-ERR"),
        "an oversized SET got {line:?}"
    );
    assert_eq!(good.call(&["EXISTS", "big"]), ":0\r\n");
    // 100 connections at once: some are refused (the guest has 64 sockets), none hurts `good`.
    let many: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect_timeout(&guest_addr(), Duration::from_secs(2)).ok())
        .collect();
    assert_eq!(good.call(&["PING"]), "+PONG\r\n");
    drop(many);
    // A client that pipelines and never reads: its replies back up in its own connection only.
    let lazy = TcpStream::connect_timeout(&guest_addr(), Duration::from_secs(10)).unwrap();
    lazy.set_write_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let batch: Vec<u8> = (0..1000).flat_map(|_| encode(&["INCR", "lazy"])).collect();
    let mut w = &lazy;
    let mut batches = 0;
    while w.write_all(&batch).is_ok() {
        assert_eq!(good.call(&["PING"]), "+PONG\r\n");
        batches += 1;
        assert!(
            batches < 1000,
            "the guest took 32 MB of requests whose replies nobody read"
        );
    }
    assert_eq!(good.call(&["PING"]), "+PONG\r\n");
    drop(lazy);
    // And a new client still gets in and is answered.
    assert_eq!(Conn::open().call(&["PING"]), "+PONG\r\n");
}

#[test]
fn misbehaving_clients_never_stop_the_guest_serving_others() {
    let Some(net) = network() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut vmm = Vmm::start(&net, dir.path(), "run", &[]);
    net.within(HOST, misbehave_at_the_guest).unwrap();
    shut_down(&net, &mut vmm);
}

// ---------------------------------------------------------------------------------------------
// Junk on the wire: bad frames and a flood on the TAP.
//
// What reaches the VMM, and how: an `AF_PACKET` socket bound to the TAP's host end (in the
// client namespace, no bridge in between) sends raw frames, which the kernel hands to the
// VMM's TAP reader unchanged whatever their destination MAC, up to the interface's MTU + 14
// bytes (raised to the TAP's maximum, 65521, for the oversized ones). Frames shorter than an
// Ethernet header cannot reach a TAP's reader from the host at all: the kernel refuses them
// (`EINVAL`), which the test checks; a second opener of the TAP is refused too (single-queue
// TAP: `EBUSY`). So the card's handling of those is covered by unit tests
// (`devices::virtio::net`), not here.

/// The guest card's MAC (`--mac` default).
const GUEST_MAC: [u8; 6] = [0x02, 0x75, 0x73, 0x00, 0x00, 0x01];
/// A made-up, locally administered sender for junk: the guest learns MACs only from ARP, and
/// no junk ARP claims the host's address, so none of it can redirect the guest's replies.
const JUNK_MAC: [u8; 6] = [0x02, 0x6a, 0x75, 0x6e, 0x6b, 0x01];
const HOST_IP: [u8; 4] = [10, 0, 0, 1];
/// The longest frame the card takes (`virtio::net::MAX_FRAME`): 1500 + header + a VLAN tag.
const CARD_MAX_FRAME: usize = 1518;
/// The largest MTU a TAP takes (65535 less the Ethernet header).
const TAP_MAX_MTU: &str = "65521";

/// An `AF_PACKET` socket on the TAP's host end, for sending raw frames to the VMM.
struct Wire(std::os::fd::OwnedFd);

impl Wire {
    /// Binds to `ifname` in the calling thread's network namespace.
    fn open(ifname: &str) -> Wire {
        use std::os::fd::FromRawFd;
        let name = std::ffi::CString::new(ifname).unwrap();
        // SAFETY: a NUL-terminated string alive across the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(index, 0, "no interface {ifname} here");
        // Protocol 0: this socket receives nothing, it only sends.
        // SAFETY: socket() takes no pointers.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = index as i32;
        // SAFETY: `sll` is a whole sockaddr_ll of the length passed.
        let r = unsafe {
            libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                std::ptr::from_ref(&sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
        Wire(fd)
    }

    /// Sends one frame: `Ok(false)` when the kernel dropped it for lack of room (`ENOBUFS`).
    fn send(&self, frame: &[u8]) -> std::io::Result<bool> {
        // SAFETY: `frame` is valid for reads of its length across the call.
        let n = unsafe {
            libc::send(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                frame.as_ptr().cast(),
                frame.len(),
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOBUFS) => Ok(false),
                _ => Err(e),
            };
        }
        assert_eq!(n as usize, frame.len(), "a partial frame");
        Ok(true)
    }

    /// Sends every frame, panicking on anything but a full queue; how many the kernel took.
    fn send_all(&self, frames: &[Vec<u8>]) -> u64 {
        let mut taken = 0;
        for f in frames {
            if self
                .send(f)
                .unwrap_or_else(|e| panic!("{}-byte frame: {e}", f.len()))
            {
                taken += 1;
            }
        }
        taken
    }
}

/// Junk frames, the same on every run (seeded), so a failure can be repeated.
struct Junk(Rng);

impl Junk {
    fn next(&mut self) -> u64 {
        self.0.next()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        self.0.bytes(n)
    }

    fn ethernet(dst: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(14 + payload.len());
        f.extend_from_slice(&dst);
        f.extend_from_slice(&JUNK_MAC);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An IPv4 packet from the host to the guest with a correct header checksum around
    /// `payload`; `l4_checksum_at` is where a TCP/UDP/ICMP checksum goes, if any.
    fn ipv4(&mut self, proto: u8, payload: &[u8], l4_checksum_at: Option<usize>) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        let total = (20 + payload.len()) as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p[4..6].copy_from_slice(&(self.next() as u16).to_be_bytes());
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&HOST_IP);
        p[16..20].copy_from_slice(&GUEST);
        let c = checksum(&p, 0);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        let mut body = payload.to_vec();
        if let Some(at) = l4_checksum_at {
            body[at..at + 2].fill(0);
            let pseudo = if proto == 1 {
                0
            } else {
                let mut s = 0u32;
                for w in [HOST_IP, GUEST] {
                    s += u32::from(u16::from_be_bytes([w[0], w[1]]));
                    s += u32::from(u16::from_be_bytes([w[2], w[3]]));
                }
                s + u32::from(proto) + body.len() as u32
            };
            let c = checksum(&body, pseudo);
            body[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        p.extend_from_slice(&body);
        p
    }

    /// One frame of junk of kind `kind % 10`.
    fn frame(&mut self, kind: u64) -> Vec<u8> {
        match kind % 10 {
            // A runt of the wire: a header and up to 45 bytes, any ethertype.
            0 => {
                let ethertype =
                    [0x0800, 0x0806, 0x86dd, self.next() as u16][self.below(4) as usize];
                let n = self.below(46) as usize;
                let body = self.bytes(n);
                Self::ethernet(GUEST_MAC, ethertype, &body)
            }
            // 60 bytes of pure garbage, destination MAC included.
            1 => self.bytes(60),
            // Broadcast garbage as ARP, and ARP-shaped junk: an unknown operation, or a
            // request from an address off the subnet or a multicast sender.
            2 => {
                let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
                match self.below(3) {
                    0 => arp = self.bytes(28),
                    1 => arp[7] = 99,
                    _ => {}
                }
                arp.resize(8, 0);
                arp.extend_from_slice(&[0x01, 0x00, 0x5e, 0, 0, 1]);
                arp.extend_from_slice(&[192, 168, self.next() as u8, 7]);
                arp.extend_from_slice(&[0; 6]);
                arp.extend_from_slice(&GUEST);
                Self::ethernet([0xff; 6], 0x0806, &arp)
            }
            // Broadcast garbage of any ethertype and length.
            3 => {
                let n = 46 + self.below(1400) as usize;
                let body = self.bytes(n);
                Self::ethernet([0xff; 6], self.next() as u16, &body)
            }
            // "IPv4" to the guest that is noise after the ethertype.
            4 => {
                let n = 20 + self.below(200) as usize;
                let body = self.bytes(n);
                Self::ethernet(GUEST_MAC, 0x0800, &body)
            }
            // A well-formed IPv4 header around nonsense: unknown protocols, lengths that
            // disagree with the frame, fragments, options, TTL 0.
            5 => {
                let n = self.below(100) as usize;
                let body = self.bytes(n);
                let proto = self.next() as u8;
                let mut ip = self.ipv4(proto, &body, None);
                match self.below(5) {
                    0 => ip[2..4].copy_from_slice(&(self.next() as u16).to_be_bytes()),
                    1 => ip[6] = 0x20 | (self.next() as u8 & 0x1f),
                    2 => ip[0] = 0x40 | (6 + self.below(10) as u8),
                    3 => ip[8] = 0,
                    _ => ip[9] = 6,
                }
                // Keep the header checksum right so the guest looks further.
                ip[10..12].fill(0);
                let ihl = (usize::from(ip[0] & 0xf) * 4).min(ip.len());
                let c = checksum(&ip[..ihl], 0);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                Self::ethernet(GUEST_MAC, 0x0800, &ip)
            }
            // TCP to the server's port with correct checksums and random everything else:
            // flags, sequence numbers, window, data offset, options, payload. The ports are
            // below the host's ephemeral range, so no segment belongs to a real connection.
            6 | 7 => {
                let n = self.below(120) as usize;
                let mut tcp = self.bytes(20 + n);
                let sport = 1024 + self.below(31_000) as u16;
                tcp[0..2].copy_from_slice(&sport.to_be_bytes());
                tcp[2..4].copy_from_slice(&PORT.to_be_bytes());
                tcp[12] = ((5 + self.below(11) as u8) << 4) | (tcp[12] & 1);
                let bad_checksum = self.below(8) == 0;
                let mut ip = self.ipv4(6, &tcp, Some(16));
                if bad_checksum {
                    let last = ip.len() - 1;
                    ip[last] ^= 0x5a;
                }
                Self::ethernet(GUEST_MAC, 0x0800, &ip)
            }
            // ICMP: echo requests (answered) and any other type and code.
            8 => {
                let n = 8 + self.below(300) as usize;
                let mut icmp = self.bytes(n);
                if self.below(2) == 0 {
                    icmp[0] = 8;
                    icmp[1] = 0;
                }
                let ip = self.ipv4(1, &icmp, Some(2));
                Self::ethernet(GUEST_MAC, 0x0800, &ip)
            }
            // UDP to any port (the guest has no UDP socket).
            _ => {
                let n = self.below(200) as usize;
                let mut udp = self.bytes(8 + n);
                udp[4..6].copy_from_slice(&((8 + n) as u16).to_be_bytes());
                let ip = self.ipv4(17, &udp, Some(6));
                Self::ethernet(GUEST_MAC, 0x0800, &ip)
            }
        }
    }
}

/// The Internet checksum of `data`, starting from `sum`.
fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for pair in data.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        sum += hi | pair.get(1).map_or(0, |b| u32::from(*b));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The `key=value` words of `run --stats`'s `run: net:` line.
fn net_counters(stderr: &str) -> std::collections::BTreeMap<String, u64> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("run: net: "))
        .unwrap_or_else(|| panic!("no `run: net:` line in:\n{stderr}"));
    line.split_whitespace()
        .map(|w| {
            let (k, v) = w.split_once('=').unwrap();
            (k.to_owned(), v.parse().unwrap())
        })
        .collect()
}

/// Sets the TAP's MTU from inside the namespace.
fn set_mtu(net: &Net, mtu: &str) {
    net.exec(HOST, "ip", &["link", "set", TAP, "mtu", mtu])
        .unwrap();
}

/// A counter read from the TAP's kernel statistics.
fn kernel_counter(net: &Net, name: &str) -> u64 {
    let path = format!("/sys/class/net/{TAP}/statistics/{name}");
    let o = net
        .command(HOST, "cat")
        .unwrap()
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
}

#[test]
fn junk_frames_and_a_flood_on_the_tap_leave_the_guest_serving_and_replay_exactly() {
    let Some(net) = network() else { return };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("junk.ulog");
    let mut vmm = Vmm::start(
        &net,
        dir.path(),
        "junk",
        &["--record", log.to_str().unwrap()],
    );
    let mut good = net.within(HOST, Conn::open).unwrap();
    assert_eq!(good.call(&["SET", "before", "junk"]), "+OK\r\n");

    // Every kind of junk, a few hundred frames at a calm pace, each batch followed by a
    // request: its answer means the card has taken everything sent before it.
    let (mut good, calm) = net
        .within(HOST, move || {
            let wire = Wire::open(TAP);
            for len in [0, 1, 13] {
                let err = wire.send(&vec![0xff; len]).unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{len}-byte frame");
            }
            let mut junk = Junk(Rng(0x6a75_6e6b));
            let mut calm = 0;
            for kind in 0..10 {
                let batch: Vec<_> = (0..30).map(|_| junk.frame(kind)).collect();
                calm += wire.send_all(&batch);
                assert_eq!(good.call(&["INCR", "calm"]), format!(":{}\r\n", kind + 1));
            }
            (good, calm)
        })
        .unwrap();

    // Frames over the card's limit, up to the largest a TAP carries; and the longest frames it
    // does take. The request after them waits for them all: none can be lost to a full queue
    // (a handful, after a quiet moment), so exactly the oversized ones must be counted.
    set_mtu(&net, TAP_MAX_MTU);
    let (mut good, oversized) = net
        .within(HOST, move || {
            let wire = Wire::open(TAP);
            let mut junk = Junk(Rng(0x0b16));
            let mut oversized = 0;
            for len in [1515, 1518, 1519, 1600, 4096, 9014, 16_384, 65_535] {
                for _ in 0..3 {
                    let mut f = junk.frame(6);
                    f.resize(len, 0xa5);
                    assert!(
                        wire.send(&f).unwrap(),
                        "the kernel dropped a {len}-byte frame"
                    );
                    if len > CARD_MAX_FRAME {
                        oversized += 1;
                    }
                }
            }
            assert_eq!(good.call(&["GET", "before"]), "$4\r\njunk\r\n");
            (good, oversized)
        })
        .unwrap();
    set_mtu(&net, "1500");

    // A flood: 30000 frames as fast as the kernel takes them, while another client keeps
    // counting on its own connection; its every reply must be right. (How many of its
    // requests get through while the flood lasts depends on the host: the flood takes the
    // same queues, so its segments are dropped and retransmitted like everyone's.)
    const FLOOD: usize = 30_000;
    let (flood_sent, counted, while_flooding) = net
        .within(HOST, move || {
            use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
            let (started, flooding, done, during) = (
                AtomicBool::new(false),
                AtomicBool::new(false),
                AtomicBool::new(false),
                AtomicU64::new(0),
            );
            let mut junk = Junk(Rng(0xf100d));
            let frames: Vec<_> = (0..FLOOD).map(|i| junk.frame(i as u64)).collect();
            std::thread::scope(|s| {
                let counter = s.spawn(|| {
                    let mut c = Conn::open();
                    let mut n = 0u64;
                    while !done.load(SeqCst) || n < 20 {
                        // Sent and answered entirely within the flood.
                        let within = flooding.load(SeqCst);
                        n += 1;
                        assert_eq!(c.call(&["INCR", "during"]), format!(":{n}\r\n"));
                        started.store(true, SeqCst);
                        if within && !done.load(SeqCst) {
                            during.fetch_add(1, SeqCst);
                        }
                    }
                    n
                });
                let wire = Wire::open(TAP);
                // The client is connected and counting before the first junk frame.
                while !started.load(SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                flooding.store(true, SeqCst);
                let sent = wire.send_all(&frames);
                done.store(true, SeqCst);
                let counted = counter.join().unwrap();
                (sent, counted, during.load(SeqCst))
            })
        })
        .unwrap();
    eprintln!(
        "junk: {calm} calm frames, {oversized} oversized, flood {flood_sent} of {FLOOD} taken by \
         the kernel; {counted} INCRs, {while_flooding} answered while it lasted"
    );

    // After it all: the old connection, a new one, and everything written before.
    net.within(HOST, move || {
        assert_eq!(good.call(&["GET", "before"]), "$4\r\njunk\r\n");
        assert_eq!(
            good.call(&["GET", "during"]),
            format!("${}\r\n{counted}\r\n", counted.to_string().len())
        );
        let mut fresh = Conn::open();
        assert_eq!(fresh.call(&["INCR", "calm"]), ":11\r\n");
    })
    .unwrap();
    let (out, err) = shut_down(&net, &mut vmm);
    eprintln!("{}", err.trim());

    // The counts add up: every frame read from the TAP was handed to the guest, dropped by
    // the card (oversized, runt, no driver yet), dropped with the queue full, or left queued.
    let c = net_counters(&err);
    let read = c["tap_read"];
    let accounted = c["card_delivered"]
        + c["card_bad_buffer"]
        + c["card_oversized"]
        + c["card_runts"]
        + c["card_no_driver"]
        + c["tap_queue_full"]
        + c["tap_queued"];
    assert_eq!(read, accounted, "frames read but not accounted for: {c:?}");
    assert_eq!(c["card_oversized"], oversized, "{c:?}");
    assert_eq!(
        c["card_runts"], 0,
        "the kernel never hands over a runt: {c:?}"
    );
    assert_eq!(
        c["tap_read_errors"], 0,
        "no frame was too long to read: {c:?}"
    );
    assert_eq!(
        c["card_bad_buffer"], 0,
        "the guest's buffers hold any frame taken: {c:?}"
    );
    assert_eq!(
        c["card_sent"],
        c["tap_written"] + c["tap_write_errors"],
        "{c:?}"
    );
    // The kernel counts a frame as transmitted on the TAP when the VMM reads it.
    assert_eq!(kernel_counter(&net, "tx_packets"), read, "{c:?}");
    eprintln!(
        "junk: kernel dropped {} frames for the TAP's full queue",
        kernel_counter(&net, "tx_dropped")
    );

    // The log holds exactly what reached the guest, each frame one the card takes whole.
    let reader = logging_channel::file::LogReader::open(&log).unwrap();
    let (mut rx, mut tx) = (0u64, 0u64);
    for item in reader.frames() {
        match item.unwrap().1.entry {
            logging_channel::format::Entry::NetRx { frame, .. } => {
                assert!(
                    (14..=CARD_MAX_FRAME).contains(&frame.len()),
                    "a {}-byte frame reached the guest",
                    frame.len()
                );
                rx += 1;
            }
            logging_channel::format::Entry::NetTx { .. } => tx += 1,
            _ => {}
        }
    }
    assert_eq!(rx, c["card_delivered"] + c["card_bad_buffer"], "{c:?}");
    assert_eq!(tx, c["card_sent"], "{c:?}");

    // And the recording replays to its end, every transmitted frame as recorded.
    common::assert_replays(&log, &out, "the run with junk on the wire");
}
