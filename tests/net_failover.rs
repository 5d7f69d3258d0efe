//! The network service under failover: a replicated `kv` guest on real TAP devices, each node in
//! its own network namespace (a host), the hosts on one LAN bridge, a client on another host.
//! Real SIGKILLs of the primary; the client's one TCP connection must carry on with no gap, no
//! repeat and no reset.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::cluster::Signal;
use ::cluster::counter::{Counted, count_on};
use common::cluster::{Failover, KV_GUEST_IP, kv_pair};

const LONG: Duration = Duration::from_secs(60);

#[test]
fn one_connection_counts_on_across_five_primary_kills() {
    let hosts = ["h0", "h1", "h2", "h3", "h4", "h5", "h6", "h7"];
    let Some((net, mut c, mut free_hosts)) = kv_pair(&hosts) else {
        return;
    };

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Counted::default()));
    // Made in the client's namespace, the connection stays there; the client thread holds no
    // reference to the network, so a failing test still removes it as it unwinds.
    let stream = net
        .within("ctl", || TcpStream::connect((KV_GUEST_IP, 6379)))
        .expect("the client's namespace")
        .expect("connect to the guest");
    let client = {
        let (stop, seen) = (Arc::clone(&stop), Arc::clone(&seen));
        std::thread::spawn(move || count_on(stream, &stop, &seen, Duration::ZERO, LONG))
    };
    let count = || seen.lock().unwrap().replies.len();
    let wait_for_more = |than: usize, what: &str| {
        let deadline = Instant::now() + LONG;
        while count() < than + 100 {
            let s = seen.lock().unwrap();
            assert!(s.broke.is_none(), "{what}: {:?}", s.broke);
            drop(s);
            assert!(
                Instant::now() < deadline,
                "{what}: the counter stopped at {}",
                count()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for_more(0, "before any kill");
    for round in 0..5 {
        // Kill only a primary whose backup holds the state: otherwise the guest is simply gone.
        let view = c.wait_ready(LONG).view;
        let p = c.index_of(&view.primary);
        let q = c.index_of(&view.backup);
        let q_events = c.nodes[q].event_count();
        let before = count();
        c.nodes[p].sigkill();
        match c.await_failover(&view, q, q_events, LONG) {
            Failover::Promoted(v) => assert_eq!(v.primary, c.nodes[q].addr()),
            Failover::Lost(why) => panic!("round {round}: the guest was lost: {why}"),
        }
        free_hosts.add(&mut c);
        wait_for_more(before, &format!("round {round}"));
        eprintln!(
            "round {round}: {} replies before the kill, {} now",
            before,
            count()
        );
    }
    stop.store(true, Ordering::Release);
    client.join().expect("the client thread");
    let s = seen.lock().unwrap();
    assert!(s.broke.is_none(), "the connection broke: {:?}", s.broke);
    assert!(
        s.counts_from_one(),
        "INCR replies must be 1, 2, 3, ... with no gap and no repeat: {:?}",
        s.values()
    );
}

/// Sends one INCR and waits up to `wait` for its reply line.
fn incr(w: &mut TcpStream, r: &mut BufReader<TcpStream>, wait: Duration) -> Option<String> {
    w.write_all(b"*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n")
        .expect("write");
    read_reply(r, wait)
}

/// The next reply line, if one comes within `wait`.
fn read_reply(r: &mut BufReader<TcpStream>, wait: Duration) -> Option<String> {
    r.get_ref().set_read_timeout(Some(wait)).expect("timeout");
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(n) if n > 0 => Some(line.trim_end().to_string()),
        Ok(_) => panic!("the server closed the connection"),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("read: {e}"),
    }
}

/// The output rule on the wire: with the backup stopped, a reply (a frame the guest sent) does
/// not reach the client while the view still names that backup; once the viewserver drops it,
/// the primary continues alone and the reply arrives, exactly once.
#[test]
fn a_stopped_backup_holds_every_reply_until_the_viewserver_drops_it() {
    let Some((net, c, _)) = kv_pair(&["h0", "h1"]) else {
        return;
    };
    let b_addr = c.nodes[1].addr().to_string();
    // A connection made in the client's namespace stays there.
    let stream = net
        .within("ctl", || TcpStream::connect((KV_GUEST_IP, 6379)))
        .expect("the client's namespace")
        .expect("connect to the guest");
    let mut w = stream.try_clone().expect("clone");
    let mut r = BufReader::new(stream);
    assert_eq!(incr(&mut w, &mut r, LONG).as_deref(), Some(":1"));

    c.nodes[1].signal(Signal::Stop);
    // Acks already on their way may still land.
    std::thread::sleep(Duration::from_millis(150));
    let mut held_while_named = 0;
    let mut reply = incr(&mut w, &mut r, Duration::from_millis(100));
    while reply.is_none() {
        if c.view().expect("a view").backup == b_addr {
            held_while_named += 1;
        }
        assert!(held_while_named < 10_000, "no reply ever came");
        reply = read_reply(&mut r, Duration::from_millis(100));
    }
    assert_ne!(
        c.view().expect("a view").backup,
        b_addr,
        "a reply reached the client while the view still named the stopped backup"
    );
    assert!(
        held_while_named > 0,
        "the view dropped the backup before anything could be observed"
    );
    assert_eq!(reply.as_deref(), Some(":2"), "the held reply, exactly once");
    assert_eq!(incr(&mut w, &mut r, LONG).as_deref(), Some(":3"));
    c.nodes[1].signal(Signal::Cont);
}

/// An unchanged off-the-shelf client through a failover: `redis-benchmark` (50 connections,
/// pipelining off) exits 0 only if no connection was closed under it; the primary is killed
/// once its first test has finished, while the rest are still to run.
#[test]
fn redis_benchmark_runs_through_a_primary_kill() {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v redis-benchmark"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: no redis-benchmark (Debian: redis-tools)");
        return;
    }
    let Some((net, mut c, mut free_hosts)) = kv_pair(&["h0", "h1", "h2"]) else {
        return;
    };
    let view = c.wait_ready(LONG).view;
    let mut bench = net
        .command("ctl", "redis-benchmark")
        .expect("the client's namespace")
        .args([
            "-h",
            KV_GUEST_IP,
            "-t",
            "ping,set,get,incr",
            "-n",
            "50000",
            "-q",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("redis-benchmark");
    let mut out = BufReader::new(bench.stdout.take().expect("its stdout"));
    // With -q it prints one line per test as it finishes (after `\r` progress in between).
    let mut first = Vec::new();
    out.read_until(b'\n', &mut first)
        .expect("redis-benchmark's output");
    let q = c.index_of(&view.backup);
    let q_events = c.nodes[q].event_count();
    let p = c.index_of(&view.primary);
    c.nodes[p].sigkill();
    match c.await_failover(&view, q, q_events, LONG) {
        Failover::Promoted(v) => assert_eq!(v.primary, c.nodes[q].addr()),
        Failover::Lost(why) => panic!("the guest was lost: {why}"),
    }
    free_hosts.add(&mut c);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("redis-benchmark's output");
    let status = bench.wait().expect("redis-benchmark's end");
    let mut err = String::new();
    if let Some(mut e) = bench.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let all = format!("{}{rest}", String::from_utf8_lossy(&first));
    eprintln!("redis-benchmark through a failover:\n{all}");
    assert!(
        status.success(),
        "redis-benchmark failed ({status}):\n{all}\n{err}"
    );
    for test in ["SET", "GET", "INCR"] {
        assert!(
            all.lines()
                .any(|l| l.contains(&format!("{test}:")) && l.contains("requests per second")),
            "no result for {test} after the kill:\n{all}"
        );
    }
}
