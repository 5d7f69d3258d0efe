//! Partitions, one-way drops, delay and loss between real hosts (network namespaces, iptables,
//! tc netem) under a live pair and an idle node. After each fault heals, the service must be
//! releasing output again, and the bytes every node released must fit one history.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::Ordering;

use cluster::netns::{self, Net};
use common::cluster::{Cluster, Proxy};

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const PING_MS: u64 = 100;
const LONG: Duration = Duration::from_secs(40);

/// A viewserver on host "vs", nodes on "n0" (primary), "n1" (backup) and "n2" (idle), once the
/// backup holds the state; `None` (after saying "skipped") if namespaces cannot be made here.
fn cluster() -> Option<(Cluster, Arc<Net>)> {
    if let Some(why) = netns::unavailable() {
        eprintln!("skipped: {why}");
        return None;
    }
    let net = Arc::new(Net::new(&["vs", "ctl", "n0", "n1", "n2"]).unwrap());
    let mut c = Cluster::start_on(
        Some(Arc::clone(&net)),
        "ticker",
        &["hz=50", "ticks=1000000"],
        PING_MS,
    );
    let a = c.add_node_on("n0");
    let a_addr = c.nodes[a].addr().to_string();
    c.wait_view(LONG, |v| v.primary == a_addr);
    let b = c.add_node_on("n1");
    let b_addr = c.nodes[b].addr().to_string();
    c.wait_status(LONG, |s| {
        s.view.primary == a_addr && s.view.backup == b_addr && s.acked && s.backup_ready
    });
    c.add_node_on("n2");
    std::thread::sleep(Duration::from_millis(300));
    Some((c, net))
}

/// After healing: some node is the acknowledged primary and releases output again; then the
/// history invariant against it.
fn recovers(c: &Cluster, what: &str) {
    let deadline = Instant::now() + LONG;
    loop {
        if let Some(s) = c.status()
            && s.acked
            && !s.view.primary.is_empty()
        {
            let p = c.index_of(&s.view.primary);
            let before = c.nodes[p].out_len();
            std::thread::sleep(Duration::from_millis(500));
            if c.nodes[p].out_len() > before && c.status().is_some_and(|t| t.view == s.view) {
                let r = c.check_history(p);
                eprintln!("{what}: recovered; {r:?}");
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the service did not recover: {:?}\n{}",
            c.status(),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The primary's host is cut off from everyone: the backup takes over; the old primary's
/// lease runs out and it releases nothing after the new primary started; once the network
/// heals it learns it was replaced.
#[test]
fn an_isolated_primary_is_replaced_and_never_speaks_again() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some((c, net)) = cluster() else { return };
    let (b_addr, b) = (c.nodes[1].addr().to_string(), 1);
    net.isolate("n0").unwrap();
    let cut_at = Instant::now();
    c.wait_status(LONG, |s| s.view.primary == b_addr);
    let before = c.nodes[b].out_len();
    let deadline = Instant::now() + LONG;
    while c.nodes[b].out_len() <= before {
        assert!(
            Instant::now() < deadline,
            "no output from the new primary\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let failover = cut_at.elapsed();
    let old = c.nodes[0].out();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        c.nodes[0].out(),
        old,
        "the isolated primary released output while another was primary"
    );
    let events_before = c.nodes[0].event_count();
    net.heal().unwrap();
    assert!(
        c.nodes[0]
            .wait_event("stepped_down", events_before, LONG)
            .is_some(),
        "the old primary never learned it was replaced\n{}",
        c.logs()
    );
    assert_eq!(c.nodes[0].out(), old);
    eprintln!("isolation to first output of the new primary: {failover:?}");
    recovers(&c, "isolated primary");
}

/// Every one-way drop between primary, backup and viewserver, one at a time for 3 s, then
/// healed: whatever happened meanwhile (held output, a failover, a new backup), the service
/// recovers and nothing released contradicts anything else.
#[test]
fn one_way_drops_between_every_pair_heal_without_contradiction() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some((c, net)) = cluster() else { return };
    let host_of = |addr: &str| -> &'static str {
        ["n0", "n1", "n2"]
            .into_iter()
            .find(|h| addr.starts_with(&net.ip(h).unwrap().to_string()))
            .unwrap()
    };
    for (from, to) in [
        ("p", "b"),
        ("b", "p"),
        ("p", "vs"),
        ("vs", "p"),
        ("b", "vs"),
        ("vs", "b"),
    ] {
        // Roles move with failovers: find who is primary and backup now.
        c.wait_status(LONG, |s| {
            s.acked && s.backup_ready && !s.view.backup.is_empty()
        });
        let s = c.status().unwrap();
        let resolve = |r: &str| match r {
            "p" => host_of(&s.view.primary),
            "b" => host_of(&s.view.backup),
            _ => "vs",
        };
        let (hf, ht) = (resolve(from), resolve(to));
        eprintln!("dropping {from} ({hf}) -> {to} ({ht}) for 3 s");
        net.cut(hf, ht, false).unwrap();
        std::thread::sleep(Duration::from_secs(3));
        net.heal().unwrap();
        recovers(&c, &format!("{from} -> {to} dropped"));
    }
}

/// Random packet loss on the primary's and then the backup's host for a few seconds: the pair
/// may slow down or even fail over, but it recovers and never contradicts itself.
#[test]
fn packet_loss_slows_the_pair_but_never_breaks_it() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some((c, net)) = cluster() else { return };
    for (role, pct) in [("primary", 5), ("backup", 10), ("primary", 20)] {
        let s = c.status().unwrap();
        let addr = if role == "primary" {
            s.view.primary.clone()
        } else {
            s.view.backup.clone()
        };
        let host = ["n0", "n1", "n2"]
            .into_iter()
            .find(|h| addr.starts_with(&net.ip(h).unwrap().to_string()))
            .unwrap();
        eprintln!("{pct}% loss on the {role}'s host {host} for 4 s");
        net.lose(host, pct).unwrap();
        std::thread::sleep(Duration::from_secs(4));
        net.heal().unwrap();
        recovers(&c, &format!("{pct}% loss on the {role}"));
        c.wait_status(LONG, |s| {
            s.acked && s.backup_ready && !s.view.backup.is_empty()
        });
    }
}

/// Latency with jitter on the primary's link to the viewserver and on the logging channel (a
/// delaying proxy on each): output keeps flowing, later; a failover under that latency works
/// and keeps the history.
#[test]
fn latency_on_the_links_delays_output_but_keeps_the_history() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::start("ticker", &["hz=50", "ticks=1000000"], PING_MS);
    let vs_link = Proxy::start(c.vs_addr.clone());
    let backend = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_addr = backend.local_addr().unwrap().to_string();
    drop(backend);
    let channel = Proxy::start(backend_addr.clone());
    for p in [&vs_link, &channel] {
        p.delay_ms.store(40, Ordering::Relaxed);
        p.jitter_ms.store(20, Ordering::Relaxed);
    }
    let a = c.add_node_via("127.0.0.1:0", None, &vs_link.addr.clone());
    let a_addr = c.nodes[a].addr().to_string();
    c.wait_view(LONG, |v| v.primary == a_addr);
    let b = c.add_node(&backend_addr, Some(&channel.addr));
    c.wait_status(LONG, |s| {
        s.view.backup == channel.addr && s.acked && s.backup_ready
    });
    let view = c.status().unwrap().view;
    let mut released = c.nodes[a].out_len();
    for second in 0..4 {
        std::thread::sleep(Duration::from_secs(1));
        let now = c.nodes[a].out_len();
        assert!(now > released, "no output in second {second}\n{}", c.logs());
        released = now;
    }
    assert_eq!(
        c.status().unwrap().view,
        view,
        "latency alone changed the view"
    );
    c.nodes[a].sigkill();
    c.wait_status(LONG, |s| s.view.primary == channel.addr);
    let deadline = Instant::now() + LONG;
    while c.nodes[b].out_len() == 0 {
        assert!(
            Instant::now() < deadline,
            "the new primary released nothing\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    c.check_history(b);
}
