//! The view service on etcd, against a real 3-member etcd cluster on loopback: the store's
//! election and fencing (`EtcdStore`), then three real `understudy viewserver --etcd`
//! processes driven as nodes would drive them, then real nodes on KVM. Skipped (with a line
//! saying so) where `etcd` is not installed; CI installs it.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::cluster::Signal;
use common::etcd::{self, EtcdCluster};
use viewserver::client::Client;
use viewserver::{
    ClientError, EtcdConfig, EtcdStore, Leadership, Persisted, PingRequest, Status, Store,
    StoreError, View,
};

/// Each test runs an etcd cluster and several processes on a two-core machine: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Generous bound for anything that should take a few seconds.
const LONG: Duration = Duration::from_secs(60);

fn state(viewnum: u64) -> Persisted {
    Persisted {
        service: 0x5e41ce,
        view: View {
            viewnum,
            primary: "p".into(),
            backup: "b".into(),
            primary_incarnation: 7,
            backup_incarnation: 8,
            fresh: false,
        },
        acked: true,
        backup_ready: viewnum.is_multiple_of(2),
        booted: true,
        // Every other state records the guest's end, so the round trips through etcd carry it.
        finished: viewnum.is_multiple_of(2).then_some(viewserver::Finished {
            view: viewnum,
            end: viewserver::GuestEnd {
                reason: viewserver::EndReason::TripleFault,
                code: 1,
            },
        }),
    }
}

fn store_config(etcd: &EtcdCluster, prefix: &str, me: &str) -> EtcdConfig {
    EtcdConfig::new(etcd.urls(), prefix, me)
}

fn leader_term(l: &Leadership) -> Option<(u64, Instant)> {
    match l {
        Leadership::Leader { term, until } => Some((*term, until.unwrap())),
        Leadership::Follower { .. } => None,
    }
}

/// Exactly one of two stores leads; the leader's lease stops being renewed (as when its process
/// dies) and the other leads, but only after the first one's `until`; the deposed leader cannot
/// write; a save is refused when the state moved under the leader or its leader key is gone;
/// load and save round-trip; a clean drop revokes the lease at once.
#[test]
fn etcd_store_elects_one_leader_and_fences_a_deposed_one() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if !etcd::available() {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let prefix = "/store-test/election";
    let (leader_key, state_key) = (format!("{prefix}/leader"), format!("{prefix}/state"));
    let mut a = EtcdStore::open(store_config(&etcd, prefix, "A")).unwrap();
    let mut b = EtcdStore::open(store_config(&etcd, prefix, "B")).unwrap();

    // A campaigned first (when opened): it leads, and B knows it.
    let (a_term, _) = leader_term(&a.leadership()).expect("the first store leads");
    assert_eq!(
        b.leadership(),
        Leadership::Follower {
            leader: Some("A".into())
        }
    );
    assert_eq!(etcd.get(&leader_key).as_deref(), Some(&b"A"[..]));
    assert!(matches!(b.load(), Ok(None)));
    assert!(matches!(b.save(&state(1)), Err(StoreError::NotLeader)));

    // Round trip.
    assert_eq!(a.load().unwrap(), None);
    a.save(&state(1)).unwrap();
    a.save(&state(2)).unwrap();
    assert_eq!(a.load().unwrap(), Some(state(2)));
    let stored: serde_json::Value = serde_json::from_slice(&etcd.get(&state_key).unwrap()).unwrap();
    assert_eq!(stored["format"], 1, "{stored}");

    // A's keepalives stop. It trusts its lease until `until` and never after; B leads only
    // once A's lease expired in etcd, which is after A's `until`.
    a.halt();
    let halted = Instant::now();
    let a_until = leader_term(&a.leadership()).map(|(_, u)| u);
    let (b_term, b_led_at) = loop {
        let (la, lb) = (a.leadership(), b.leadership());
        let now = Instant::now();
        assert!(
            leader_term(&la).is_none() || leader_term(&lb).is_none(),
            "two leaders at once: {la:?} {lb:?}"
        );
        if let Some((t, _)) = leader_term(&lb) {
            break (t, now);
        }
        assert!(halted.elapsed() < LONG, "B never led\n{}", etcd.logs());
        std::thread::sleep(Duration::from_millis(5));
    };
    println!(
        "store failover: B leads {} ms after A's keepalives stopped",
        (b_led_at - halted).as_millis()
    );
    let a_until = a_until.expect("A still leads right after its keepalives stopped");
    assert!(a_until < b_led_at, "B led before A's until");
    assert!(b_term > a_term, "terms grow: {a_term} then {b_term}");
    assert_eq!(
        leader_term(&a.leadership()),
        None,
        "A stopped leading at its until"
    );
    assert!(matches!(a.save(&state(3)), Err(StoreError::NotLeader)));
    assert_eq!(
        b.load().unwrap(),
        Some(state(2)),
        "B continues from A's state"
    );
    b.save(&state(3)).unwrap();

    // The state moved under B (another writer): B's save is refused, B still leads, and once
    // it loads again it writes on top of what is there.
    let theirs = serde_json::json!({"format": 1, "state": state(7)});
    etcd.put(&state_key, theirs.to_string().as_bytes());
    assert!(matches!(b.save(&state(4)), Err(StoreError::NotLeader)));
    assert_eq!(leader_term(&b.leadership()).map(|(t, _)| t), Some(b_term));
    assert_eq!(b.load().unwrap(), Some(state(7)));
    b.save(&state(8)).unwrap();

    // B's leader key is gone (as if its lease had expired): its save is refused by etcd, it
    // stops saying it leads, and it wins a new term by campaigning again.
    etcd.delete(&leader_key);
    assert!(matches!(b.save(&state(9)), Err(StoreError::NotLeader)));
    // (Its election thread may already have won the next term.)
    assert_ne!(
        leader_term(&b.leadership()).map(|(t, _)| t),
        Some(b_term),
        "B still claims the term whose key is gone"
    );
    let deadline = Instant::now() + LONG;
    let b_term2 = loop {
        if let Some((t, _)) = leader_term(&b.leadership()) {
            break t;
        }
        assert!(Instant::now() < deadline, "B never led again");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(b_term2 > b_term);
    assert!(
        matches!(b.save(&state(9)), Err(StoreError::NotLeader)),
        "not loaded in this term"
    );
    assert_eq!(b.load().unwrap(), Some(state(8)));
    b.save(&state(9)).unwrap();

    // A clean drop revokes the lease: the leader key goes at once.
    drop(b);
    assert_eq!(etcd.get(&leader_key), None);
    assert_eq!(etcd.get(&state_key).map(|v| !v.is_empty()), Some(true));
}

/// A value in the state key that is not a state makes every viewserver refuse to start, naming
/// the key, rather than start a new service over it.
#[test]
fn a_corrupt_state_in_etcd_is_refused() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if !etcd::available() {
        return;
    }
    let etcd = EtcdCluster::start(3);
    let prefix = "/store-test/corrupt";
    let state_key = format!("{prefix}/state");
    for (value, want) in [
        (&b"garbage"[..], "is not a view service state"),
        (
            b"{\"format\":1,\"state\":{\"service\":1",
            "is not a view service state",
        ),
        (b"{\"format\":1}", "missing field `state`"),
        (b"{\"format\":9,\"state\":{}}", "has state format 9"),
    ] {
        etcd.put(&state_key, value);
        let err = EtcdStore::open(store_config(&etcd, prefix, "A"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err}");
        assert!(err.contains(&format!("etcd key {state_key}")), "{err}");
        assert_eq!(etcd.get(&format!("{prefix}/leader")), None, "lease revoked");
    }
    etcd.put(&state_key, b"garbage");
    let o = common::understudy(&[
        "viewserver",
        "--listen",
        "127.0.0.1:0",
        "--etcd",
        &etcd.urls_arg(),
        "--etcd-prefix",
        prefix,
    ]);
    assert!(!o.status.success());
    let err = common::stderr(&o);
    assert!(err.starts_with("viewserver: listening on "), "{err}");
    assert!(
        err.contains(&format!("etcd key {state_key} is not a view service state")),
        "{err}"
    );
    assert_eq!(
        etcd.get(&state_key).as_deref(),
        Some(&b"garbage"[..]),
        "left as it was"
    );

    // --data-dir and --etcd are one or the other.
    let o = common::understudy(&[
        "viewserver",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        "x",
        "--etcd",
        &etcd.urls_arg(),
    ]);
    assert!(!o.status.success());
    assert!(
        common::stderr(&o).contains("cannot be used with"),
        "{}",
        common::stderr(&o)
    );
}

/// A fake node: pings as `understudy node` does (incarnation, sequence, the view it knows and
/// claims to hold), so a primary acks at once and a backup is ready at once.
struct Fake {
    name: &'static str,
    incarnation: u64,
    seq: u64,
    known: u64,
    alive: bool,
}

/// Pings the viewservers as fake nodes would, through `Client`, and checks every answer any
/// viewserver gives: one service, a view number never shown with two different views, and
/// (answers being taken one after the other) view numbers that never go back.
struct Driver {
    client: Client,
    nodes: Vec<Fake>,
    views: BTreeMap<u64, View>,
    service: Option<String>,
    last: u64,
    answers: usize,
    last_answer: Instant,
    longest_gap: Duration,
}

impl Driver {
    fn new(addrs: Vec<String>) -> Self {
        Driver {
            client: Client::new(addrs, Duration::from_secs(1)),
            nodes: Vec::new(),
            views: BTreeMap::new(),
            service: None,
            last: 0,
            answers: 0,
            last_answer: Instant::now(),
            longest_gap: Duration::ZERO,
        }
    }

    fn add(&mut self, name: &'static str) {
        let incarnation = 1000 + self.nodes.len() as u64;
        self.nodes.push(Fake {
            name,
            incarnation,
            seq: 0,
            known: 0,
            alive: true,
        });
    }

    fn stop(&mut self, name: &str) {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap()
            .alive = false;
    }

    fn record(&mut self, s: &Status, from: &str) {
        let service = self.service.get_or_insert_with(|| s.service.clone());
        assert_eq!(*service, s.service, "{from} answered for another service");
        if let Some(v) = self.views.get(&s.view.viewnum) {
            assert_eq!(
                *v, s.view,
                "{from}: view {} shown with two contents",
                s.view.viewnum
            );
        }
        self.views.insert(s.view.viewnum, s.view.clone());
        assert!(
            s.view.viewnum >= self.last,
            "{from} answered view {} after view {} was shown",
            s.view.viewnum,
            self.last
        );
        self.last = s.view.viewnum;
        self.answers += 1;
        let now = Instant::now();
        self.longest_gap = self.longest_gap.max(now - self.last_answer);
        self.last_answer = now;
    }

    /// Every live node pings once; returns the last answer.
    fn round(&mut self) -> Option<Status> {
        let mut last = None;
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                continue;
            }
            let n = &mut self.nodes[i];
            n.seq += 1;
            let req = PingRequest {
                server: n.name.to_string(),
                viewnum: n.known,
                incarnation: Some(n.incarnation),
                seq: Some(n.seq),
                holds: Some(n.known),
                finished: None,
                primary_lost: None,
            };
            if let Ok(s) = self.client.ping(&req) {
                self.nodes[i].known = s.view.viewnum;
                self.record(&s, "a ping");
                last = Some(s);
            }
        }
        last
    }

    /// `GET /view` of each live viewserver alone; a 200 is recorded.
    fn sample(&mut self, c: &Cluster) -> Vec<Result<Status, ClientError>> {
        let mut out = Vec::new();
        for v in c.vs.iter().filter(|v| !v.reaped()) {
            let r = v.status();
            if let Ok(s) = &r {
                self.record(s, v.addr());
            }
            out.push(r);
        }
        out
    }

    /// Pings (every 30 ms, well inside the 100 ms interval) until an answer satisfies `done`.
    fn pump_until(&mut self, c: &Cluster, what: &str, done: impl Fn(&Status) -> bool) -> Status {
        let deadline = Instant::now() + LONG;
        loop {
            if let Some(s) = self.round()
                && done(&s)
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "never got to {what}; views seen {:?}\n{}",
                self.views,
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    }
}

/// Three viewservers on one etcd: one leads and the others point to it; SIGKILL the leader and
/// another leads with the same view and service, and the view numbers continue; SIGKILL etcd's
/// raft leader and view changes still go through; stop every etcd member and no view change is
/// ever answered (the viewservers answer 503 once their leadership ran out); etcd back, the
/// service resumes where it was.
#[test]
fn three_viewservers_on_etcd_fail_over_and_survive_etcd_outages() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if !etcd::available() {
        return;
    }
    let mut etcd = EtcdCluster::start(3);
    let mut c = Cluster::start_on_etcd("ticker", &[], 100, &etcd.urls_arg(), 3);
    let first = c.wait_leading_viewserver(LONG);
    let first_addr = c.vs[first].addr().to_string();
    let deadline = Instant::now() + LONG;
    for (i, v) in c.vs.iter().enumerate().filter(|(i, _)| *i != first) {
        loop {
            match v.status() {
                Err(ClientError::Status {
                    status: 503,
                    leader: Some(l),
                    ..
                }) if l == first_addr => break,
                other => assert!(
                    Instant::now() < deadline,
                    "viewserver {i} does not point to the leader: {other:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            v.wait_log(&format!("viewserver: following {first_addr}"), 0, LONG),
            "{}",
            v.log()
        );
    }

    // Through a client that starts at a follower more often than not.
    let mut addrs: Vec<String> = c.vs.iter().map(|v| v.addr().to_string()).collect();
    addrs.rotate_left(first + 1);
    let mut d = Driver::new(addrs);
    d.add("a");
    d.add("b");
    let v = d.pump_until(&c, "primary a, backup b, ready", |s| {
        s.view.primary == "a" && s.view.backup == "b" && s.acked && s.backup_ready
    });

    // The leading viewserver dies.
    c.vs[first].sigkill();
    let killed = Instant::now();
    let after = d.pump_until(&c, "an answer after the leader died", |_| true);
    let failover = killed.elapsed();
    println!(
        "viewserver failover: answered again {} ms after SIGKILL of the leading viewserver",
        failover.as_millis()
    );
    assert_eq!(after.view, v.view, "the new leader continues the view");
    assert_eq!(after.service, v.service);
    let second = c.wait_leading_viewserver(LONG);
    assert_ne!(second, first);
    // Its log line comes through a pipe read by another thread: it may trail the answer that
    // showed it leads (CI saw it missing once).
    assert!(
        c.vs[second].wait_log("viewserver: leading", 0, LONG),
        "{}",
        c.logs()
    );

    // View numbers continue from there.
    d.stop("b");
    let s = d.pump_until(&c, "b dropped", |s| s.view.backup.is_empty());
    assert_eq!(s.view.viewnum, v.view.viewnum + 1, "{:?}", d.views);
    d.add("c");
    let s = d.pump_until(&c, "c backup", |s| s.view.backup == "c" && s.backup_ready);
    assert_eq!(s.view.viewnum, v.view.viewnum + 2, "{:?}", d.views);

    // etcd's raft leader dies; a view change (c dead, d replaces it) needs etcd.
    let member = etcd.leader().unwrap_or(0);
    d.add("d");
    d.pump_until(&c, "d known", |_| true);
    d.longest_gap = Duration::ZERO;
    etcd.kill(member);
    let killed = Instant::now();
    d.stop("c");
    let s = d.pump_until(&c, "d backup", |s| s.view.backup == "d" && s.backup_ready);
    println!(
        "etcd member kill (raft leader): view change stored {} ms after, longest wait for an answer {} ms",
        killed.elapsed().as_millis(),
        d.longest_gap.as_millis()
    );
    assert_eq!(s.view.viewnum, v.view.viewnum + 3, "{:?}", d.views);
    assert_eq!(s.view.primary, "a");
    etcd.restart(member);
    assert!(etcd.wait_healthy(LONG), "{}", etcd.logs());

    // Every etcd member dies. A view change is due (d stops) but is never answered; once
    // their leadership ran out every viewserver answers 503.
    let frozen = s.view.clone();
    for i in 0..etcd.len() {
        etcd.kill(i);
    }
    let down = Instant::now();
    d.stop("d");
    let mut all_refused_after = None;
    let mut refusals_seen = 0;
    while down.elapsed() < Duration::from_secs(4) || refusals_seen < 10 {
        assert!(
            down.elapsed() < LONG,
            "viewservers kept answering without etcd"
        );
        if let Some(s) = d.round() {
            assert_eq!(s.view, frozen, "a view change without etcd");
        }
        let answers = d.sample(&c);
        for s in answers.iter().flatten() {
            assert_eq!(s.view, frozen, "a view change without etcd");
        }
        if answers
            .iter()
            .all(|r| matches!(r, Err(ClientError::Status { status: 503, .. })))
        {
            refusals_seen += 1;
            all_refused_after.get_or_insert(down.elapsed());
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    println!(
        "all etcd members down: every viewserver answers 503 after {} ms",
        all_refused_after.unwrap().as_millis()
    );

    // etcd is back: the service resumes, and the change that was due is made.
    for i in 0..etcd.len() {
        etcd.restart(i);
    }
    let back = Instant::now();
    assert!(etcd.wait_healthy(LONG), "{}", etcd.logs());
    let s = d.pump_until(&c, "d dropped after etcd came back", |s| {
        s.view.backup.is_empty()
    });
    println!(
        "etcd restarted: view change stored {} ms after the members were started",
        back.elapsed().as_millis()
    );
    assert_eq!(s.view.viewnum, frozen.viewnum + 1, "{:?}", d.views);
    assert_eq!(s.view.primary, "a");
    assert_eq!(s.service, v.service);

    // SIGTERM: the leader revokes its lease on the way out, so the other one leads well
    // before the lease's TTL would have run out.
    let leader = c.wait_leading_viewserver(LONG);
    c.vs[leader].signal(Signal::Term);
    let status = c.vs[leader].wait().unwrap();
    let stopped = Instant::now();
    assert!(status.success(), "{status:?}\n{}", c.logs());
    let after = d.pump_until(&c, "an answer after the leader resigned", |_| true);
    println!(
        "viewserver resigned (SIGTERM): answered again {} ms after it exited",
        stopped.elapsed().as_millis()
    );
    assert_eq!(after.view, s.view);
    assert!(
        c.vs[leader].wait_log("resigned the leadership", 0, LONG),
        "{}",
        c.logs()
    );
}

/// Three viewservers on a 3-member etcd for ticker nodes with `guest_args`; `None` (having
/// said "skipped") without etcd or KVM.
fn ticker_nodes_on_etcd(guest_args: &[&str]) -> Option<(EtcdCluster, Cluster)> {
    if !etcd::available() {
        return None;
    }
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("skipped: no /dev/kvm");
        return None;
    }
    let etcd = EtcdCluster::start(3);
    let c = Cluster::start_on_etcd("ticker", guest_args, 100, &etcd.urls_arg(), 3);
    Some((etcd, c))
}

/// Real nodes on three viewservers on etcd: the leading viewserver dies, then the primary;
/// the backup goes live and everything the old primary released is what the new primary's
/// guest said.
#[test]
fn nodes_fail_over_with_viewservers_on_etcd() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some((_etcd, mut c)) = ticker_nodes_on_etcd(&["hz=50", "ticks=1000000"]) else {
        return;
    };
    let leader = c.wait_leading_viewserver(LONG);
    let (a, b) = c.primary_and_backup(None, LONG);
    let b_addr = c.nodes[b].addr().to_string();
    std::thread::sleep(Duration::from_millis(500));
    let view = c.view().unwrap();

    c.vs[leader].sigkill();
    let next = c.wait_leading_viewserver(LONG);
    assert_ne!(next, leader);
    assert_eq!(
        c.view().unwrap(),
        view,
        "the new leading viewserver keeps the view\n{}",
        c.logs()
    );
    // The primary's lease ran out meanwhile; renewed by the new leader, it releases again.
    let out = c.nodes[a].out().len();
    let deadline = Instant::now() + LONG;
    while c.nodes[a].out().len() <= out && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        c.nodes[a].out().len() > out,
        "the primary never released again\n{}",
        c.logs()
    );

    let b_events_before = c.nodes[b].event_count();
    c.nodes[a].sigkill();
    let p_out = c.nodes[a].out();
    let after = c.wait_view(LONG, |v| v.primary != view.primary);
    assert_eq!(after.primary, b_addr, "only the backup is promoted");
    assert_eq!(after.viewnum, view.viewnum + 1);
    assert!(
        c.nodes[b]
            .wait_event("going_live", b_events_before, LONG)
            .is_some(),
        "the backup never went live\n{}",
        c.logs()
    );
    c.nodes[b].wait_output(LONG);
    assert!(!p_out.is_empty(), "the first primary released nothing");
    let r = c.check_history(b);
    assert!(
        r.released > p_out.len(),
        "the new primary released nothing: {r:?}"
    );
}

/// A guest that ends while the view service lives in etcd: the end is recorded there, the next
/// leading viewserver knows it after the leader dies, and a node that comes later exits at
/// once instead of waiting for a guest that will never run again.
#[test]
fn the_end_of_a_guest_is_kept_in_etcd_across_leaders() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // About 4 s of guest time: the backup takes the state first.
    let Some((_etcd, mut c)) = ticker_nodes_on_etcd(&["hz=50", "ticks=200", "end=3"]) else {
        return;
    };
    let leader = c.wait_leading_viewserver(LONG);
    let (a, b) = c.primary_and_backup(None, LONG);
    for i in [a, b] {
        assert_eq!(c.exit_code(i, LONG), 3, "node {i}\n{}", c.logs());
    }
    let done = c.recorded_end(LONG);
    assert_eq!(done.end.code, 3);
    let view = c.view().unwrap();

    c.vs[leader].sigkill();
    let next = c.wait_leading_viewserver(LONG);
    assert_ne!(next, leader);
    let status = c.vs[next].status().unwrap();
    assert_eq!(status.finished, Some(done), "{}", c.logs());
    assert_eq!(status.view, view);
    let late = c.add_node("127.0.0.1:0", None);
    assert_eq!(c.exit_code(late, LONG), 0, "{}", c.logs());
}
