//! The `kv` guest workload end to end: a Redis-protocol server in the guest, on a virtio-net
//! card backed by a real TAP device, answering real TCP clients: our own (replies checked
//! byte for byte), then `redis-cli` and `redis-benchmark` if installed (Debian `redis-tools`).
//! Then the same under `--record`, and `understudy replay` of that log, which reproduces
//! every transmitted frame byte for byte.
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
    assert_eq!(info["end"], "PowerOff { code: 0 }");
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
