//! `understudy demo --net`: the network service under failover. Builds its own network (a
//! namespace per host, a LAN bridge, a TAP per node on its host's bridge, a client host),
//! starts a viewserver and three `kv` nodes, holds one TCP connection from the client issuing
//! INCR, kills the primary with SIGKILL, and checks the same connection carried on with no gap
//! and no repeat. Everything it made is removed at the end, also after Ctrl-C.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::counter::{Counted, count_on, tcp_state};
use cluster::spawn::Place;
use cluster::{Net, NodeSpec, Signal, Store, Understudy, ViewserverSpec, wait};

use super::demo::{Console, DemoArgs, DemoEvent};
use crate::events::emit;

/// The guest's address on the demo's LAN (the hosts are 10.77.0.1 and up).
const GUEST_IP: &str = "10.77.0.100";
const TAP: &str = "us0";

/// The scenario; its files go to `dir`. `stop` turns true on Ctrl-C.
pub fn run(
    args: &DemoArgs,
    dir: &std::path::Path,
    stop: &Arc<AtomicBool>,
) -> Result<Vec<(bool, String)>, String> {
    if let Some(why) = cluster::netns::unavailable() {
        return Err(format!("demo --net needs network namespaces: {why}"));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    println!(
        "== building the network: hosts vs, client, A, B, C on one LAN; a TAP {TAP} on each of A, B, C =="
    );
    let net = Arc::new(
        Net::new(&["vs", "client", "A", "B", "C"])
            .map_err(|e| format!("building the network: {e}"))?,
    );
    for h in ["A", "B", "C"] {
        net.add_tap(h, TAP)
            .map_err(|e| format!("TAP on {h}: {e}"))?;
    }
    let place = |host: &str| Place::Host {
        net: Arc::clone(&net),
        host: host.to_string(),
    };
    let ip = |host: &str| net.ip(host).map_err(|e| e.to_string());
    let (tx, rx) = channel();
    let understudy = Understudy::new(exe).with_lines(tx);
    let mut console = Console::new(rx, args.verbose);
    let ping = args.ping_interval_ms;
    let vs_addr = format!("{}:7100", ip("vs")?);
    let vs = understudy
        .viewserver(ViewserverSpec {
            place: place("vs"),
            events: Some(dir.join("viewserver.events")),
            start_timeout: Duration::from_secs(10),
            ..ViewserverSpec::new(&vs_addr, ping, Store::DataDir(dir.join("viewserver.data")))
        })
        .map_err(|e| format!("starting the viewserver: {e}"))?;
    let get_view = || {
        let vs = vs_addr.clone();
        net.within("client", move || {
            viewserver::get_view(&vs, Duration::from_secs(1)).ok()
        })
        .ok()
        .flatten()
        .map(|s| s.view)
    };
    let guest_arg = format!("ip={GUEST_IP}/24");
    println!("== starting three kv nodes (guest {GUEST_IP}, Redis protocol on port 6379) ==");
    let mut nodes = Vec::new();
    for h in ["A", "B", "C"] {
        let spec = NodeSpec {
            place: place(h),
            listen: format!("{}:7000", ip(h)?),
            guest_args: vec![guest_arg.clone()],
            tap: Some(TAP.to_string()),
            ..NodeSpec::new(h, dir, &vs_addr, "kv", ping)
        };
        let node = understudy
            .node(spec)
            .map_err(|e| format!("starting node {h}: {e}"))?;
        console.catch_up();
        nodes.push(node);
        if h == "A" {
            let a = nodes[0].addr().to_string();
            wait::poll_with(
                Duration::from_secs(20),
                Duration::from_millis(50),
                |d| console.pause(d),
                || get_view().filter(|v| v.primary == a),
            )
            .ok_or("A never became primary")?;
        }
        if h == "B" {
            let b = nodes[1].events_file().clone();
            b.wait_for_with(
                0,
                Duration::from_secs(60),
                |d| console.pause(d),
                |e| cluster::events::is(e, "state_installed"),
            )
            .map_err(|e| e.to_string())?
            .ok_or("B never got the state")?;
        }
    }
    println!(
        "== a client on host client holds one connection to {GUEST_IP}:6379 and sends INCR counter =="
    );
    let seen = Arc::new(Mutex::new(Counted::default()));
    let client_stop = Arc::new(AtomicBool::new(false));
    // Made in the client host's namespace, the connection stays there; the client thread
    // holds no reference to the network, so whatever ends the demo removes it.
    let stream = net
        .within("client", || TcpStream::connect((GUEST_IP, 6379)))
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("cannot connect to {GUEST_IP}:6379: {e}"))?;
    // To read the connection's TCP state (retransmissions, timer) around the failover.
    let probe = stream.try_clone().map_err(|e| e.to_string())?;
    let client_thread = {
        let (s, c) = (Arc::clone(&seen), Arc::clone(&client_stop));
        // A person watches: a few hundred requests a second are plenty.
        std::thread::spawn(move || {
            count_on(
                stream,
                &c,
                &s,
                Duration::from_millis(5),
                Duration::from_secs(30),
            )
        })
    };
    // Whatever way the demo ends from here, the client stops.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }
    let _stop_client = StopOnDrop(Arc::clone(&client_stop));
    let lock = || seen.lock().unwrap_or_else(|p| p.into_inner());
    let show_progress = |console: &mut Console, d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until && !stop.load(Ordering::Acquire) {
            console.pause(Duration::from_millis(500));
            let s = lock();
            if let Some((n, _)) = s.replies.last() {
                println!("{} [client] counter = {n}", console.stamp(Instant::now()));
            }
        }
    };
    show_progress(&mut console, Duration::from_secs_f64(args.kill_after_secs));
    if stop.load(Ordering::Acquire) {
        return Err("stopped (Ctrl-C)".into());
    }
    let view = get_view().ok_or("no view")?;
    let Some(a) = nodes.iter_mut().find(|n| n.addr() == view.primary) else {
        return Err("the primary is not one of the demo's nodes".into());
    };
    let before = lock().replies.len();
    let tcp_before = tcp_state(&probe).ok();
    println!(
        "== SIGKILL of the primary {} (pid {}) ==",
        a.label(),
        a.pid()
    );
    let killed_at = Instant::now();
    a.signal(Signal::Kill).map_err(|e| e.to_string())?;
    emit(&DemoEvent::Killed {
        node: a.label(),
        pid: a.pid(),
    });
    let new_view = wait::poll_with(
        Duration::from_secs(30),
        Duration::from_millis(20),
        |d| console.pause(d),
        || get_view().filter(|v| v.primary != view.primary && !v.primary.is_empty()),
    )
    .ok_or("the viewserver never changed the primary")?;
    let view_after_ms = killed_at.elapsed().as_secs_f64() * 1e3;
    emit(&DemoEvent::ViewSeen {
        view: new_view.viewnum,
        primary: &new_view.primary,
        after_ms: view_after_ms,
    });
    let first_after = wait::poll_with(
        Duration::from_secs(30),
        Duration::from_millis(10),
        |d| console.pause(d),
        || lock().replies.get(before).map(|(_, at)| *at),
    );
    if let Some(at) = first_after {
        let after_ms = at.duration_since(killed_at).as_secs_f64() * 1e3;
        // How the client's TCP lived through it: each retransmission of the pending request
        // waited a doubled timer, and the first that reached the new primary got the answer
        // (unless the new primary resent the reply first).
        let tcp_after = tcp_state(&probe).ok();
        let retransmits = match (tcp_before, tcp_after) {
            (Some(b), Some(a)) => Some(a.total_retrans.saturating_sub(b.total_retrans)),
            _ => None,
        };
        let tcp_note = match (retransmits, tcp_before) {
            (Some(n), Some(b)) => format!(
                "; meanwhile the client's TCP retransmitted {n} time(s) (its timer was {} ms before the kill)",
                b.rto_ms
            ),
            _ => String::new(),
        };
        println!(
            "{} [client] the same connection answered again {after_ms:.0} ms after the kill (the view named the new primary after {view_after_ms:.0} ms){tcp_note}",
            console.stamp(at),
        );
        emit(&DemoEvent::AnsweredAgain {
            after_ms,
            client_retransmits: retransmits,
            client_rto_ms: tcp_before.map(|b| b.rto_ms),
        });
    }
    show_progress(&mut console, Duration::from_secs_f64(args.run_after_secs));
    client_stop.store(true, Ordering::Release);
    if stop.load(Ordering::Acquire) {
        let _ = client_thread.join();
        return Err("stopped (Ctrl-C)".into());
    }
    let _ = client_thread.join();
    for n in &mut nodes {
        let _ = n.kill();
    }
    drop(vs);

    let s = lock();
    let values = s.values();
    let in_order = s.counts_from_one();
    let after = s.replies.len().saturating_sub(before);
    let mut checks = vec![
        (
            new_view.primary != view.primary,
            format!(
                "the viewserver made {} primary after the kill",
                new_view.primary
            ),
        ),
        (
            s.broke.is_none(),
            match &s.broke {
                None => "the client's one TCP connection never broke".to_string(),
                Some(why) => format!("the client's connection broke: {why}"),
            },
        ),
        (
            in_order && !values.is_empty(),
            format!(
                "the counter went 1, 2, ... {} with no gap and no repeat",
                values.last().copied().unwrap_or(0)
            ),
        ),
        (
            after > 0,
            format!("{after} replies came after the kill, {before} before it"),
        ),
    ];
    if let Some(at) = first_after {
        let ms = at.duration_since(killed_at).as_secs_f64() * 1e3;
        let limit = (5 * ping) as f64 + 5000.0;
        checks.push((
            ms <= limit,
            format!(
                "the connection answered again {ms:.0} ms after the kill (limit {limit:.0} ms)"
            ),
        ));
    }
    Ok(checks)
}
