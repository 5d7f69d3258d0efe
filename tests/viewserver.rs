//! The viewserver end to end: a real `understudy viewserver` process on
//! loopback, driven by the client module as nodes would, and by raw bytes as a
//! hostile peer would.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cluster::{Store, Understudy, ViewserverSpec};
use viewserver::View;

const BIN: &str = env!("CARGO_BIN_EXE_understudy");
const TIMEOUT: Duration = Duration::from_secs(5);

/// The child viewserver (`cluster::Viewserver`: killed by the PID we started when dropped, so
/// a failing assertion does not leak it) and its data directory.
struct Viewserver {
    vs: cluster::Viewserver,
    _dir: tempfile::TempDir,
}

impl Viewserver {
    /// A fast-ticking viewserver (20 ms pings, dead after 3 missed).
    fn start() -> Self {
        Self::start_with(20, 3)
    }

    fn start_with(ping_ms: u64, dead_pings: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::DataDir(dir.path().join("vs"));
        let spec = ViewserverSpec {
            args: vec!["--dead-pings".into(), dead_pings.to_string().into()],
            ..ViewserverSpec::new("127.0.0.1:0", ping_ms, store)
        };
        let vs = Understudy::new(BIN).viewserver(spec).unwrap();
        Viewserver { vs, _dir: dir }
    }

    fn addr(&self) -> &str {
        self.vs.addr()
    }

    fn stderr_lines(&self) -> Vec<String> {
        self.vs.log().lines().map(str::to_string).collect()
    }
}

/// A node as the protocol wants it: pings with the view number it knows.
struct Node {
    name: &'static str,
    known: u64,
}

impl Node {
    fn new(name: &'static str) -> Self {
        Node { name, known: 0 }
    }
}

/// Every live node pings every 5 ms (well inside the 20 ms interval) until
/// the view satisfies `done`.
fn pump(addr: &str, nodes: &mut [&mut Node], done: impl Fn(&View) -> bool) -> View {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut last = None;
        for n in nodes.iter_mut() {
            let v = viewserver::ping(addr, &lab(n.name, n.known), TIMEOUT)
                .unwrap()
                .view;
            n.known = v.viewnum;
            last = Some(v);
        }
        let v = last.unwrap();
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "view never got there; last {v:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A ping as the classic lab client sends it: name and view number only.
fn lab(server: &str, viewnum: u64) -> viewserver::PingRequest {
    viewserver::PingRequest {
        server: server.into(),
        viewnum,
        incarnation: None,
        seq: None,
        holds: None,
        finished: None,
        primary_lost: None,
    }
}

fn understudy_view(addr: &str, json: bool) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["view", "--viewserver", addr]);
    if json {
        cmd.arg("--json");
    }
    cmd.output().unwrap()
}

/// Sends raw bytes, returns the whole answer.
fn raw(addr: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(bytes).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn status_and_error(answer: &str) -> (u16, String) {
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer:?}"));
    (status, v["error"].as_str().unwrap_or_default().to_string())
}

#[test]
fn primary_backup_failover_end_to_end() {
    let vs = Viewserver::start();
    let addr = vs.addr();
    assert_eq!(
        viewserver::get_view(addr, TIMEOUT).unwrap().view,
        View::default()
    );

    let (mut a, mut b, mut c) = (Node::new("a"), Node::new("b"), Node::new("c"));
    let v = pump(addr, &mut [&mut a], |v| v.viewnum == 1);
    assert_eq!((v.primary.as_str(), v.backup.as_str()), ("a", ""));

    // b joins and is co-opted once a acked view 1; a then acks view 2.
    let v = pump(addr, &mut [&mut a, &mut b], |v| v.backup == "b");
    assert_eq!(v.primary, "a");
    let backup_view = v.viewnum;
    // Two rounds: a learns view 2, then its ping carries that number (the ack).
    pump(addr, &mut [&mut a, &mut b], |_| true);
    pump(addr, &mut [&mut a, &mut b], |_| true);
    assert_eq!(a.known, backup_view);

    // c idles; a stops pinging: b takes over and c becomes its backup.
    let v = pump(addr, &mut [&mut b, &mut c], |v| {
        v.primary == "b" && v.backup == "c"
    });
    assert!(v.viewnum > backup_view, "{v:?}");
    // Until b acked the new view and c showed it knows it: whichever of the two pings made the
    // change, each needs one more ping carrying the new number.
    let final_view = loop {
        let v = pump(addr, &mut [&mut b, &mut c], |_| true);
        let status = viewserver::get_view(addr, TIMEOUT).unwrap();
        assert_eq!((v.primary.as_str(), v.backup.as_str()), ("b", "c"));
        if status.acked && status.backup_ready {
            break status.view;
        }
    };

    // `understudy view` sees the same thing, in both formats.
    let out = understudy_view(addr, false);
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        line,
        format!("{final_view}\n"),
        "a view without flags: acked, backup ready"
    );
    assert!(line.starts_with(&format!("view {}: primary=b backup=c", final_view.viewnum)));
    let out = understudy_view(addr, true);
    assert!(out.status.success(), "{out:?}");
    let json: viewserver::Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json.view, final_view);
    assert!(json.acked && json.backup_ready);

    // View changes are logged.
    let log = vs.stderr_lines();
    assert!(
        log.iter()
            .any(|l| l == "viewserver: view 2: primary=a backup=b"),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("viewserver: view ") && l.contains("primary=b backup=c")),
        "{log:?}"
    );
}

#[test]
fn bad_requests_get_4xx_and_the_server_keeps_serving() {
    let vs = Viewserver::start();
    let addr = vs.addr();
    let big = format!(
        "POST /ping HTTP/1.1\r\nContent-Length: {}\r\n\r\n{}",
        64 * 1024 + 1,
        "x".repeat(64 * 1024 + 1)
    );
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec(),
            400,
        ),
        (b"hello\r\n\r\n".to_vec(), 400),
        (b"GET /nope HTTP/1.1\r\n\r\n".to_vec(), 404),
        (b"DELETE /view HTTP/1.1\r\n\r\n".to_vec(), 405),
        (b"GET /ping HTTP/1.1\r\n\r\n".to_vec(), 405),
        (
            b"POST /ping HTTP/1.1\r\nContent-Length: 5\r\n\r\n{oops".to_vec(),
            400,
        ),
        (
            b"POST /ping HTTP/1.1\r\nContent-Length: 14\r\n\r\n{\"server\":\"a\"}".to_vec(),
            400,
        ),
        (big.into_bytes(), 413),
        (
            b"POST /ping HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            411,
        ),
    ];
    for (bytes, want) in &cases {
        let answer = raw(addr, bytes);
        let (status, error) = status_and_error(&answer);
        assert_eq!(
            status,
            *want,
            "{:?} -> {answer}",
            String::from_utf8_lossy(bytes)
        );
        assert!(!error.is_empty(), "{answer}");
    }
    // A peer that connects and says nothing is cut off at the request deadline,
    // and does not stop others from being served meanwhile.
    let silent = TcpStream::connect(addr).unwrap();
    let v = viewserver::ping(addr, &lab("a", 0), TIMEOUT).unwrap().view;
    assert_eq!((v.viewnum, v.primary.as_str()), (1, "a"));
    drop(silent);
    // A well-formed ping via raw bytes, as curl would send it.
    let body = r#"{"server": "b", "viewnum": 0}"#;
    let answer = raw(
        addr,
        format!(
            "POST /ping HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    let s: viewserver::Status = serde_json::from_str(body).unwrap();
    assert_eq!((s.view.viewnum, s.view.primary.as_str()), (1, "a"));
    assert_eq!(
        viewserver::get_view(addr, TIMEOUT).unwrap().view.primary,
        "a"
    );
}

#[test]
fn view_command_reports_an_unreachable_viewserver() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = understudy_view(&addr, false);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!("cannot reach viewserver at {addr}: ")),
        "{stderr}"
    );
}

#[test]
fn viewserver_refuses_an_address_it_cannot_bind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["viewserver", "--listen", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

/// The classic view-service test suite (MIT 6.824 lab 2, `viewservice/test_test.go`), step by
/// step, through the HTTP API of the real viewserver at 100 ms pings and 5 dead pings, with
/// clients that send only their name and view number, as the lab's do.
#[test]
fn the_classic_lab_sequence_passes_through_the_http_api() {
    const DEAD: u32 = 5;
    let interval = Duration::from_millis(100);
    let vs = Viewserver::start_with(100, 5);
    let addr = vs.addr();
    let ping = |who: &str, n: u64| viewserver::ping(addr, &lab(who, n), TIMEOUT).unwrap().view;
    let get = || viewserver::get_view(addr, TIMEOUT).unwrap().view;
    let check = |primary: &str, backup: &str, n: u64| {
        let v = get();
        assert_eq!(
            (v.primary.as_str(), v.backup.as_str(), v.viewnum),
            (primary, backup, n),
            "{v:?}"
        );
    };
    let (ck1, ck2, ck3) = ("ck1", "ck2", "ck3");
    assert_eq!(get().viewnum, 0);

    // Very first primary.
    for _ in 0..DEAD * 2 {
        if ping(ck1, 0).primary == ck1 {
            break;
        }
        std::thread::sleep(interval);
    }
    check(ck1, "", 1);

    // Very first backup.
    let vx = get();
    for _ in 0..DEAD * 2 {
        ping(ck1, 1);
        if ping(ck2, 0).backup == ck2 {
            break;
        }
        std::thread::sleep(interval);
    }
    check(ck1, ck2, vx.viewnum + 1);

    // Primary dies, backup takes over.
    ping(ck1, 2);
    let vx = ping(ck2, 2);
    for _ in 0..DEAD * 2 {
        let v = ping(ck2, vx.viewnum);
        if v.primary == ck2 && v.backup.is_empty() {
            break;
        }
        std::thread::sleep(interval);
    }
    check(ck2, "", vx.viewnum + 1);

    // Revived ck1 becomes backup.
    let vx = get();
    ping(ck2, vx.viewnum);
    for _ in 0..DEAD * 2 {
        ping(ck1, 0);
        let v = ping(ck2, vx.viewnum);
        if v.primary == ck2 && v.backup == ck1 {
            break;
        }
        std::thread::sleep(interval);
    }
    check(ck2, ck1, vx.viewnum + 1);

    // ck3 starts, the primary (ck2) dies: ck1 becomes primary and ck3 backup in a single view
    // change, with no view without a backup in between.
    let mut vx = get();
    ping(ck2, vx.viewnum);
    for _ in 0..DEAD * 2 {
        ping(ck3, 0);
        let v = ping(ck1, vx.viewnum);
        if v.primary == ck1 && v.backup == ck3 {
            break;
        }
        vx = v;
        std::thread::sleep(interval);
    }
    check(ck1, ck3, vx.viewnum + 1);

    // The primary is killed and restarted at once: it pings, but it is treated as dead.
    let vx = get();
    ping(ck1, vx.viewnum);
    for _ in 0..DEAD * 2 {
        let v = ping(ck1, 0);
        ping(ck3, v.viewnum);
        if v.primary == ck3 {
            break;
        }
        std::thread::sleep(interval);
    }
    assert_eq!(get().primary, ck3);

    // A view with ck3 alone, for the next step.
    for _ in 0..DEAD * 3 {
        let vx = get();
        ping(ck3, vx.viewnum);
        std::thread::sleep(interval);
    }
    let v = get();
    assert_eq!((v.primary.as_str(), v.backup.as_str()), (ck3, ""), "{v:?}");

    // The viewserver waits for the primary's ack before the next view: ck1 is co-opted into a
    // view ck3 never acks; ck3 dies; ck1 is not promoted.
    let vx = get();
    for _ in 0..DEAD * 3 {
        ping(ck1, 0);
        ping(ck3, vx.viewnum);
        if get().viewnum > vx.viewnum {
            break;
        }
        std::thread::sleep(interval);
    }
    check(ck3, ck1, vx.viewnum + 1);
    let vy = get();
    for _ in 0..DEAD * 3 {
        if ping(ck1, vy.viewnum).viewnum > vy.viewnum {
            break;
        }
        std::thread::sleep(interval);
    }
    check(ck3, ck1, vy.viewnum);

    // Once the old servers die, a new (uninitialised) server cannot take over.
    for _ in 0..DEAD * 2 {
        let v = get();
        ping(ck1, v.viewnum);
        ping(ck2, 0);
        ping(ck3, v.viewnum);
        std::thread::sleep(interval);
    }
    for _ in 0..DEAD * 2 {
        ping(ck2, 0);
        std::thread::sleep(interval);
    }
    assert_ne!(get().primary, ck2, "an uninitialised server was promoted");
}

/// A backup that keeps pinging 0 while its answers are slow to arrive has not restarted: the
/// view must not churn, and it can still take over (the lab's clients behave so).
#[test]
fn a_backup_pinging_zero_while_learning_does_not_churn_views() {
    let vs = Viewserver::start_with(100, 5);
    let addr = vs.addr();
    let ping = |who: &str, n: u64| viewserver::ping(addr, &lab(who, n), TIMEOUT).unwrap().view;
    ping("p", 0);
    ping("p", 1);
    let v = ping("b", 0);
    assert_eq!((v.viewnum, v.backup.as_str()), (2, "b"));
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        ping("p", 2);
        ping("b", 0);
        std::thread::sleep(Duration::from_millis(20));
    }
    let v = viewserver::get_view(addr, TIMEOUT).unwrap().view;
    assert_eq!(
        (v.viewnum, v.primary.as_str(), v.backup.as_str()),
        (2, "p", "b")
    );
    // The primary restarts: the backup takes over.
    let v = ping("p", 0);
    assert_eq!((v.viewnum, v.primary.as_str()), (3, "b"));
}

/// The viewserver's deadline for a request to arrive in full (its default).
const REQUEST_DEADLINE: Duration = Duration::from_secs(2);
/// How late the viewserver may be acting on that deadline and still pass:
/// generous, for a loaded machine.
const DEADLINE_SLACK: Duration = Duration::from_secs(6);
const IDLE_CONNECTIONS: usize = 300;
const TRICKLERS: usize = 10;
const TRICKLE_EVERY: Duration = Duration::from_millis(1500);

/// Holds `IDLE_CONNECTIONS` connections that never send a byte, opening a new
/// one whenever the viewserver closes one, until `stop` and until the first
/// ones were all closed (or the server's deadline plus slack passed).
/// Returns, for each of the first ones, how long the viewserver kept it
/// (`None`: never closed), and how many it opened in all.
fn hold_idle_connections(
    addr: &str,
    opened: mpsc::Sender<()>,
    stop: &std::sync::atomic::AtomicBool,
) -> (Vec<Option<Duration>>, usize) {
    let connect = || TcpStream::connect_timeout(&addr.parse().unwrap(), TIMEOUT).ok();
    let start = Instant::now();
    let mut conns: Vec<(Option<TcpStream>, Instant)> = (0..IDLE_CONNECTIONS)
        .map(|_| (connect(), Instant::now()))
        .collect();
    let mut first: Vec<Option<Duration>> = vec![None; IDLE_CONNECTIONS];
    let mut total = IDLE_CONNECTIONS;
    opened.send(()).unwrap();
    let patience = REQUEST_DEADLINE + DEADLINE_SLACK + Duration::from_secs(1);
    // Bounded in time and in connections opened.
    while start.elapsed() < Duration::from_secs(60) {
        let all_closed = first.iter().all(Option::is_some);
        if stop.load(std::sync::atomic::Ordering::SeqCst)
            && (all_closed || start.elapsed() > patience)
        {
            break;
        }
        for (i, (conn, since)) in conns.iter_mut().enumerate() {
            let Some(s) = conn else { continue };
            s.set_nonblocking(true).unwrap();
            let closed = match s.peek(&mut [0u8; 64]) {
                // Whatever it sent (a 503, a 408) comes before the close.
                Ok(_) => true,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            s.set_nonblocking(false).unwrap();
            if closed {
                first[i].get_or_insert(since.elapsed());
                *conn = None;
                if total < IDLE_CONNECTIONS * 10 {
                    *conn = connect();
                    *since = Instant::now();
                    total += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (first, total)
}

/// Sends a ping one byte every `TRICKLE_EVERY`, reading whatever comes back,
/// until the viewserver closes the connection. Says on `connected` when it
/// is connected. Returns how long the connection lasted (`None`: still open
/// after `limit`) and what the viewserver answered.
fn trickle(addr: &str, limit: Duration, connected: mpsc::Sender<()>) -> (Option<Duration>, String) {
    let body = r#"{"server": "t", "viewnum": 0}"#;
    let request = format!(
        "POST /ping HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(addr).unwrap();
    let start = Instant::now();
    connected.send(()).unwrap();
    s.set_read_timeout(Some(TRICKLE_EVERY)).unwrap();
    let mut got = Vec::new();
    let mut next = request.bytes().cycle();
    let mut buf = [0u8; 1024];
    while start.elapsed() < limit {
        if got.is_empty() {
            // Once the server closed, writes fail: only the read tells.
            let _ = s.write_all(&[next.next().unwrap()]);
        }
        match s.read(&mut buf) {
            Ok(0) => return (Some(start.elapsed()), String::from_utf8_lossy(&got).into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (Some(start.elapsed()), String::from_utf8_lossy(&got).into()),
        }
    }
    (None, String::from_utf8_lossy(&got).into())
}

/// What a node's pings got during the attack.
#[derive(Debug, Default)]
struct Tally {
    answered: usize,
    unavailable: usize,
    failed: Vec<String>,
    views: Vec<u64>,
}

/// A node pinging with its kept connection, as `understudy node` does.
fn ping_as(client: &viewserver::client::Client, node: &mut Node, tally: &mut Tally) {
    match client.ping(&lab(node.name, node.known)) {
        Ok(s) => {
            tally.answered += 1;
            node.known = s.view.viewnum;
            if tally.views.last() != Some(&s.view.viewnum) {
                tally.views.push(s.view.viewnum);
            }
        }
        Err(viewserver::ClientError::Status { status: 503, .. }) => tally.unavailable += 1,
        Err(e) => tally.failed.push(e.to_string()),
    }
}

/// Everything the nodes saw while the viewserver was under attack.
#[derive(Debug, Default)]
struct UnderAttack {
    rounds: usize,
    nodes: Tally,
    newcomer: Tally,
}

/// Nodes a and b ping every 20 ms on their kept connections, as `understudy
/// node` does, and a newcomer asks for the view on a new connection every
/// 100 ms, until `done` (and at least `min_rounds`).
fn keep_pinging(
    addr: &str,
    nodes: [(&viewserver::client::Client, &mut Node); 2],
    min_rounds: usize,
    done: &std::sync::atomic::AtomicBool,
) -> UnderAttack {
    let mut seen = UnderAttack::default();
    let [(ca, a), (cb, b)] = nodes;
    let start = Instant::now();
    while (seen.rounds < min_rounds || !done.load(std::sync::atomic::Ordering::SeqCst))
        && start.elapsed() < Duration::from_secs(90)
    {
        ping_as(ca, a, &mut seen.nodes);
        ping_as(cb, b, &mut seen.nodes);
        if seen.rounds % 5 == 0 {
            match viewserver::get_view(addr, Duration::from_secs(1)) {
                Ok(_) => seen.newcomer.answered += 1,
                Err(viewserver::ClientError::Status { status: 503, .. }) => {
                    seen.newcomer.unavailable += 1
                }
                Err(e) => seen.newcomer.failed.push(e.to_string()),
            }
        }
        seen.rounds += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    seen
}

/// The skeptical user's scenario: hundreds of idle connections and a few
/// clients trickling a byte every 1.5 s must not keep nodes from being
/// answered (the old server had 64 slots, one thread each, and a 2 s
/// timeout per read: pings got 503 and the primary was replaced).
#[test]
fn idle_and_trickling_connections_do_not_starve_pings() {
    use std::sync::atomic::{AtomicBool, Ordering};

    // The production timing: 100 ms pings, dead after 5 missed.
    let vs = Viewserver::start_with(100, 5);
    let addr = vs.addr().to_string();
    let node_client =
        || viewserver::client::Client::new(vec![addr.clone()], Duration::from_secs(1));
    let (ca, cb) = (node_client(), node_client());
    let (mut a, mut b) = (Node::new("a"), Node::new("b"));
    let mut before = Tally::default();
    // a primary, b its backup, the view acknowledged.
    for _ in 0..200 {
        ping_as(&ca, &mut a, &mut before);
        ping_as(&cb, &mut b, &mut before);
        let s = viewserver::get_view(&addr, TIMEOUT).unwrap();
        if s.view.backup == "b" && s.acked {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let start_view = viewserver::get_view(&addr, TIMEOUT).unwrap();
    assert!(
        start_view.acked && start_view.view.backup == "b",
        "{start_view:?}"
    );
    assert_eq!(start_view.view.primary, "a");

    let done = AtomicBool::new(false);
    let stop_holding = AtomicBool::new(false);
    let limit = REQUEST_DEADLINE + DEADLINE_SLACK + TRICKLE_EVERY * 2;
    let (seen, trickled, (idle_kept, idle_opened)) = std::thread::scope(|scope| {
        let pinger = scope.spawn(|| keep_pinging(&addr, [(&ca, &mut a), (&cb, &mut b)], 50, &done));
        // The attack: tricklers (first, so that they get in even where idle
        // connections would fill every slot), then idle connections, topped
        // up as the server closes them.
        let (connected_tx, connected_rx) = mpsc::channel();
        let tricklers: Vec<_> = (0..TRICKLERS)
            .map(|_| {
                let (addr, connected) = (addr.as_str(), connected_tx.clone());
                scope.spawn(move || trickle(addr, limit, connected))
            })
            .collect();
        for _ in 0..TRICKLERS {
            connected_rx.recv_timeout(Duration::from_secs(60)).unwrap();
        }
        let (opened_tx, opened_rx) = mpsc::channel();
        let holder = scope.spawn(|| hold_idle_connections(&addr, opened_tx, &stop_holding));
        opened_rx.recv_timeout(Duration::from_secs(60)).unwrap();
        let trickled: Vec<(Option<Duration>, String)> =
            tricklers.into_iter().map(|t| t.join().unwrap()).collect();
        // The holder goes on until the first idle connections were closed.
        stop_holding.store(true, Ordering::SeqCst);
        let idle = holder.join().unwrap();
        done.store(true, Ordering::SeqCst);
        (pinger.join().unwrap(), trickled, idle)
    });
    let end_view = viewserver::get_view(&addr, TIMEOUT).unwrap();

    let (rounds, nodes, newcomer) = (seen.rounds, &seen.nodes, &seen.newcomer);
    eprintln!(
        "{rounds} rounds under attack ({IDLE_CONNECTIONS} idle connections, {idle_opened} opened in all; {TRICKLERS} trickling): \
         node pings answered {}/{}, 503 {}, failed {}; newcomer answered {}, 503 {}, failed {}; \
         views {} -> {} ({:?} seen by the nodes)",
        nodes.answered,
        rounds * 2,
        nodes.unavailable,
        nodes.failed.len(),
        newcomer.answered,
        newcomer.unavailable,
        newcomer.failed.len(),
        start_view.view.viewnum,
        end_view.view.viewnum,
        nodes.views,
    );
    for (closed, answer) in &trickled {
        eprintln!(
            "trickler closed after {closed:?}, answer {:?}",
            answer.lines().next().unwrap_or_default()
        );
    }
    let idle_closed: Vec<Duration> = idle_kept.iter().flatten().copied().collect();
    eprintln!(
        "idle connections closed by the server: {} of {IDLE_CONNECTIONS}, the latest after {:?}",
        idle_closed.len(),
        idle_closed.iter().max()
    );

    // (a) Every ping answered, none refused.
    assert_eq!(nodes.unavailable, 0, "{nodes:?}");
    assert!(nodes.failed.is_empty(), "{nodes:?}");
    assert_eq!(nodes.answered, rounds * 2);
    assert_eq!(newcomer.unavailable, 0, "{newcomer:?}");
    assert!(newcomer.failed.is_empty(), "{newcomer:?}");
    // (b) Every trickler was answered 408 and cut off at the deadline, and
    // every idle connection closed too.
    for (closed, answer) in &trickled {
        let closed = closed.unwrap_or_else(|| panic!("a trickler kept its connection: {answer:?}"));
        assert!(closed < REQUEST_DEADLINE + DEADLINE_SLACK, "{closed:?}");
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    }
    for kept in &idle_kept {
        let kept = kept.unwrap_or_else(|| panic!("an idle connection was never closed"));
        assert!(kept < REQUEST_DEADLINE + DEADLINE_SLACK, "{kept:?}");
    }
    // (c) Afterwards, business as usual, on kept and on new connections.
    let mut after = Tally::default();
    ping_as(&ca, &mut a, &mut after);
    ping_as(&cb, &mut b, &mut after);
    assert_eq!(after.answered, 2, "{after:?}");
    let s = viewserver::ping(&addr, &lab("c", 0), TIMEOUT).unwrap();
    assert!(s.view.viewnum >= end_view.view.viewnum, "{s:?}");
}
