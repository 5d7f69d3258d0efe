//! The replicated guest's whole life: a guest that powers off or triple-faults ends on every
//! node, with its exit code, after everything it said was released exactly where the history
//! puts it; the view service records the end (and keeps it across a restart) and fails nothing
//! over afterwards. Real `understudy node` processes, a real viewserver, real TCP; the guest
//! ends after a number of timer ticks, which is time, not work, so hosts of any speed agree.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, Proc, Proxy, Signal};
use viewserver::EndReason;

/// These tests run one after the other: each runs up to three VMs on a two-core machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const PING_MS: u64 = 100;
const LONG: Duration = Duration::from_secs(40);

/// Waits until node `i`'s console (its transcript) shows `line`.
fn wait_transcript(c: &Cluster, i: usize, line: &str) {
    let deadline = Instant::now() + LONG;
    while !String::from_utf8_lossy(&c.nodes[i].transcript()).contains(line) {
        assert!(
            Instant::now() < deadline,
            "node {i} never printed {line:?}\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The guest's whole console was released, and released once: the nodes' released output,
/// cut into their primary roles, is one history, and it covers `history` to its last byte.
/// Only where a backup went live may bytes be said twice (the at-least-once of a failover).
fn released_everything_once(c: &Cluster, history: &[u8]) {
    let report = common::history::check(history, &c.segments())
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    let failovers: usize = c
        .nodes
        .iter()
        .map(|n| n.events_named("going_live").len())
        .sum();
    assert!(
        failovers > 0 || report.repeated == 0,
        "{} bytes released twice without a failover\n{}",
        report.repeated,
        c.logs()
    );
    let released: usize = c.nodes.iter().map(|n| n.out().len()).sum();
    assert!(
        history.ends_with(b"ticker: done\n"),
        "the history does not reach the guest's end\n{}",
        c.logs()
    );
    assert_eq!(
        released - report.repeated,
        history.len(),
        "the world heard {released} bytes ({} repeated at a failover) of a {}-byte history: something was lost\n{}",
        report.repeated,
        history.len(),
        c.logs()
    );
}

fn event_field(n: &Proc, name: &str, field: &str) -> serde_json::Value {
    n.events_named(name)
        .last()
        .map(|e| e[field].clone())
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn a_guest_that_powers_off_ends_every_node_with_its_code() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // About 6 s of guest time: long enough for the backup to take the state first.
    let mut c = Cluster::start("ticker", &["hz=50", "ticks=300", "end=7"], PING_MS);
    let (a, b) = c.primary_and_backup(None, LONG);
    let idle = c.add_node("127.0.0.1:0", None);
    let view = c.view().unwrap();

    assert_eq!(c.exit_code(a, LONG), 7, "{}", c.logs());
    assert_eq!(c.exit_code(b, LONG), 7, "{}", c.logs());
    assert_eq!(c.exit_code(idle, LONG), 0, "{}", c.logs());
    let done = c.recorded_end(LONG);
    assert_eq!(done.end.reason, EndReason::PowerOff);
    assert_eq!(done.end.code, 7);
    assert_eq!(done.view, view.viewnum);
    assert_eq!(c.view().unwrap(), view, "no view change after the end");

    let history = c.nodes[a].transcript();
    released_everything_once(&c, &history);
    assert!(c.nodes[b].out().is_empty(), "a backup released output");
    assert_eq!(
        c.nodes[b].transcript(),
        history,
        "the backup replayed the whole guest"
    );
    assert!(!c.nodes[a].events_named("end_reported").is_empty());
    assert_eq!(
        event_field(&c.nodes[b], "guest_powered_off", "replayed"),
        true
    );
    for (i, held) in [(a, true), (b, true), (idle, false)] {
        assert_eq!(
            event_field(&c.nodes[i], "guest_finished", "held"),
            held,
            "node {i}\n{}",
            c.logs()
        );
    }

    // A node that comes later learns the guest finished and leaves at once; so does one after
    // the view service restarted from its data directory.
    c.restart_viewserver();
    assert_eq!(c.status().unwrap().finished, Some(done));
    let late = c.add_node("127.0.0.1:0", None);
    assert_eq!(c.exit_code(late, LONG), 0, "{}", c.logs());
    assert_eq!(event_field(&c.nodes[late], "guest_finished", "held"), false);
    assert_eq!(c.view().unwrap(), view);
    let shown = common::understudy(&["view", "--viewserver", &c.vs_addr]);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("finished"),
        "`understudy view` does not say the guest finished: {shown:?}"
    );
}

/// `node --digest-interval-ms` sets how often the primary logs a digest of the whole machine
/// (each costs ~0.1 s per GiB of memory the guest wrote, on both nodes): the backup verified
/// one for about every interval of its replay, which the default (1000 ms) would not give.
#[test]
fn the_primary_digests_the_machine_as_often_as_it_is_told() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // About 5 s of guest time; ticks make exits every 20 ms, where a due digest is taken.
    let mut c = Cluster::start("ticker", &["hz=50", "ticks=250"], PING_MS);
    // The whole time allowed, so that only the interval spaces them, on a host of any speed.
    c.node_args = vec![
        "--digest-interval-ms".into(),
        "100".into(),
        "--digest-budget-percent".into(),
        "100".into(),
    ];
    let (a, b) = c.primary_and_backup(None, LONG);
    assert_eq!(c.exit_code(a, LONG), 0, "{}", c.logs());
    assert_eq!(c.exit_code(b, LONG), 0, "{}", c.logs());
    let summary = c.nodes[b]
        .events_named("replay_summary")
        .last()
        .cloned()
        .unwrap_or_else(|| panic!("the backup summarized no replay\n{}", c.logs()));
    let wall_ms = summary["wall_ms"].as_f64().unwrap_or(0.0);
    let digests = summary["digests"].as_u64().unwrap_or(0);
    assert!(
        wall_ms >= 1000.0,
        "the backup replayed only {wall_ms} ms: {summary}"
    );
    // Half the intervals at least (a replay's wall time runs from the state to the end);
    // the default interval would give a tenth of that.
    assert!(
        digests as f64 >= wall_ms / 100.0 / 2.0,
        "{digests} digests in {wall_ms} ms of replay: {summary}\n{}",
        c.logs()
    );
}

/// The guest ends while its primary cannot reach the backup: the stream is cut, so the
/// primary keeps trying to send the state again. Nothing of the guest's last output may leave
/// before the backup holds it; once the link heals, the backup takes the finished machine (a
/// state taken after the end), the primary releases the rest, and both exit with the code.
#[test]
fn a_guest_that_ends_while_its_backup_needs_the_state_is_finished_on_both() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::start("ticker", &["hz=50", "ticks=250", "end=5"], PING_MS);
    let (a, b, proxy) = c.primary_and_backup_behind_proxy(LONG);
    let view = c.view().unwrap();
    proxy.cut.store(true, Ordering::Release);
    assert!(
        c.nodes[a]
            .wait_event("guest_powered_off", 0, LONG)
            .is_some(),
        "{}",
        c.logs()
    );
    // Still cut: the last output waits, and the end is not reported.
    std::thread::sleep(Duration::from_millis(500));
    let history = c.nodes[a].transcript();
    assert!(
        c.nodes[a].out().len() < history.len(),
        "the primary released all its output while its backup could not have it"
    );
    assert!(c.nodes[a].events_named("end_reported").is_empty());
    assert_eq!(c.status().unwrap().finished, None);

    proxy.cut.store(false, Ordering::Release);
    assert_eq!(c.exit_code(a, LONG), 5, "{}", c.logs());
    assert_eq!(c.exit_code(b, LONG), 5, "{}", c.logs());
    assert_eq!(
        c.view().unwrap(),
        view,
        "the backup kept pinging throughout"
    );
    let installs = c.nodes[b].events_named("state_installed");
    assert_eq!(
        installs.last().map(|e| e["ended"].clone()),
        Some(serde_json::Value::Bool(true)),
        "the backup's last state was not the finished machine: {installs:?}\n{}",
        c.logs()
    );
    released_everything_once(&c, &history);
    assert_eq!(c.recorded_end(LONG).end.code, 5);
}

/// The primary loses the view service just before its guest ends: the view service promotes
/// the backup, which by then replayed the end. The promoted replica never runs again: it
/// releases what the old primary may not have, giving its own new backup the finished machine
/// if it has anything left to release, and reports the end. Whichever way the race between the
/// end and the promotion goes, every byte is released in one history, and the nodes holding
/// the guest at the end exit with its code.
#[test]
fn a_primary_lost_as_its_guest_ends_is_replaced_by_the_finished_replica() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let ticks = 200;
    let mut c = Cluster::start(
        "ticker",
        &["hz=50", &format!("ticks={ticks}"), "end=9"],
        PING_MS,
    );
    let vs_link = Proxy::start(c.vs_addr.clone());
    let a = c.add_node_via("127.0.0.1:0", None, &vs_link.addr);
    let a_addr = c.nodes[a].addr().to_string();
    c.wait_view(LONG, |v| v.primary == a_addr);
    let b = c.add_node("127.0.0.1:0", None);
    assert!(
        c.nodes[a].wait_event("transfer_done", 0, LONG).is_some(),
        "{}",
        c.logs()
    );
    let idle = c.add_node("127.0.0.1:0", None);
    // Fifteen ticks (300 ms) before the end, so that this thread may be late by that much on
    // a busy host; detection takes five missed pings (500 ms), so the guest usually ends
    // before the promotion (if not, the backup goes live before the end: also checked below).
    let near_end = format!("tick {}/{ticks}", ticks - 15);
    wait_transcript(&c, a, &near_end);
    vs_link.cut.store(true, Ordering::Release);
    assert!(
        c.nodes[a].events_named("end_reported").is_empty(),
        "the primary reported the end before its link was cut: this thread was late\n{}",
        c.logs()
    );
    let b_addr = c.nodes[b].addr().to_string();
    c.wait_view(LONG, |v| v.primary == b_addr);
    assert_eq!(c.exit_code(b, LONG), 9, "{}", c.logs());
    // The idle node became the new backup; it held the guest only if the promoted replica
    // had output left to release, which needs a backup holding it (the race above decides).
    let idle_code = c.exit_code(idle, LONG);
    let idle_held = event_field(&c.nodes[idle], "guest_finished", "held") == true;
    assert_eq!(idle_code, if idle_held { 9 } else { 0 }, "{}", c.logs());
    let done = c.recorded_end(LONG);
    assert_eq!(done.end.code, 9);
    eprintln!(
        "the promoted backup had {} the end",
        if event_field(&c.nodes[b], "going_live", "ended") == true {
            "replayed"
        } else {
            "not yet replayed"
        }
    );
    // The old primary exits with the code if it released everything before its lease ran out
    // (then the backup held its end, and the end recorded is that one), or 0 if it was
    // deposed still holding output (dropped, not released: the new primary released it).
    vs_link.cut.store(false, Ordering::Release);
    let a_code = c.exit_code(a, LONG);
    let a_held = event_field(&c.nodes[a], "guest_finished", "held") == true;
    assert_eq!(a_code, if a_held { 9 } else { 0 }, "{}", c.logs());
    let history = c.nodes[b].transcript();
    released_everything_once(&c, &history);
}

/// A guest that ends otherwise than by powering off: on every node, with the documented exit
/// code, the end recorded with its reason, and its whole console released once.
fn an_end_that_is_no_power_off(end_arg: &str, reason: EndReason, code: i32, event: &str) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::start("ticker", &["hz=50", "ticks=250", end_arg], PING_MS);
    let (a, b) = c.primary_and_backup(None, LONG);
    let idle = c.add_node("127.0.0.1:0", None);
    assert_eq!(c.exit_code(a, LONG), code, "{}", c.logs());
    assert_eq!(c.exit_code(b, LONG), code, "{}", c.logs());
    assert_eq!(c.exit_code(idle, LONG), 0, "{}", c.logs());
    let done = c.recorded_end(LONG);
    assert_eq!(done.end.reason, reason);
    assert_eq!(done.end.code, code as u32);
    assert_eq!(event_field(&c.nodes[a], event, "replayed"), false);
    assert_eq!(event_field(&c.nodes[b], event, "replayed"), true);
    let history = c.nodes[a].transcript();
    released_everything_once(&c, &history);
}

/// A guest that triple-faults has ended as surely as one that powers off: both copies end
/// there, every node holding it exits 1 (as `run` does), and the view service records it.
#[test]
fn a_triple_fault_ends_every_node() {
    an_end_that_is_no_power_off(
        "end=triplefault",
        EndReason::TripleFault,
        1,
        "guest_triple_faulted",
    );
}

/// understudy does not reboot guests: a reset request (here the keyboard controller's) ends the
/// guest on both copies at the same exit, and the nodes exit 0, as `run` does (QEMU's
/// `-no-reboot`).
#[test]
fn a_reset_request_ends_every_node() {
    an_end_that_is_no_power_off("end=reset", EndReason::Reset, 0, "guest_reset_requested");
}

/// One fault near the guest's end.
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillPrimary,
    KillBackup,
    StopPrimary,
    StopBackup,
    RestartViewserver,
}

/// Faults at random moments around the guest's end (one per round, every kind once, seeded:
/// `LIFECYCLE_SEED`): whatever happens, the end is recorded, every surviving node exits with
/// the code its holding says (the guest's if it held it at the end, else 0), and everything the
/// guest said was released in one history, nothing lost.
#[test]
fn faults_around_the_end_lose_nothing_and_end_every_node() {
    let seed = std::env::var("LIFECYCLE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x11fe_c7c1e);
    eprintln!("LIFECYCLE_SEED={seed}");
    let mut rng = common::rng::Rng(seed);
    let ticks: i64 = 150;
    for fault in [
        Fault::KillPrimary,
        Fault::KillBackup,
        Fault::StopPrimary,
        Fault::StopBackup,
        Fault::RestartViewserver,
    ] {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let mut c = Cluster::start(
            "ticker",
            &["hz=50", &format!("ticks={ticks}"), "end=4"],
            PING_MS,
        );
        let (a, b) = c.primary_and_backup(None, LONG);
        let idle = c.add_node("127.0.0.1:0", None);
        // Up to 20 ticks (400 ms) before the end, or a few after it.
        let before = rng.below(24) as i64 - 4;
        let at = format!("tick {}/{ticks}", ticks - before.max(0));
        wait_transcript(&c, a, &at);
        if before < 0 {
            std::thread::sleep(Duration::from_millis(20 * before.unsigned_abs()));
        }
        eprintln!("{fault:?} at {before} ticks before the end");
        let mut killed = Vec::new();
        match fault {
            Fault::KillPrimary => {
                c.nodes[a].sigkill();
                killed.push(a);
            }
            Fault::KillBackup => {
                c.nodes[b].sigkill();
                killed.push(b);
            }
            Fault::StopPrimary | Fault::StopBackup => {
                let i = if matches!(fault, Fault::StopPrimary) {
                    a
                } else {
                    b
                };
                // (It may have exited already, its guest's end recorded: then there is no
                // process to stop.)
                let node: &cluster::Node = &c.nodes[i];
                if node.signal(Signal::Stop).is_ok() {
                    std::thread::sleep(rng.ms(300, 1500));
                    let _ = node.signal(Signal::Cont);
                }
            }
            Fault::RestartViewserver => c.restart_viewserver(),
        }
        let done = c.recorded_end(LONG);
        assert_eq!(done.end.code, 4, "{fault:?}\n{}", c.logs());
        for i in [a, b, idle] {
            if killed.contains(&i) {
                continue;
            }
            let code = c.exit_code(i, LONG);
            let held = event_field(&c.nodes[i], "guest_finished", "held") == true;
            assert_eq!(
                code,
                if held { 4 } else { 0 },
                "{fault:?}: node {i} (held: {held})\n{}",
                c.logs()
            );
        }
        // The node that reported the end holds the whole history.
        let reporter = [a, b, idle]
            .into_iter()
            .find(|&i| !c.nodes[i].events_named("end_reported").is_empty())
            .unwrap_or_else(|| panic!("{fault:?}: nobody reported the end\n{}", c.logs()));
        let history = c.nodes[reporter].transcript();
        released_everything_once(&c, &history);
    }
}
