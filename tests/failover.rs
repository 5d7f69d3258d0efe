//! Primary/backup end to end: real `understudy node` processes, a real viewserver, real TCP,
//! SIGKILL, SIGSTOP and a held link. What each test asserts is what the output rule and the
//! view service promise (docs/design.md, "Replication").

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::cluster::Signal;
use common::cluster::{Cluster, Failover, FieldRefusingProxy, Proxy, released_from};

/// These tests run one after the other: each runs three VMs on a two-core machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const PING_MS: u64 = 100;
const LONG: Duration = Duration::from_secs(40);

/// A small deterministic generator for "random moments" (reproducible from the seed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

/// Kills the primary `kills` times at random moments. Each time: the backup goes live, the
/// old primary's released output is a prefix of the new primary's transcript, the new primary
/// releases from no later than where the old one stopped (nothing lost), and the idle node
/// becomes the new backup by state transfer. A fresh idle node joins for the next round.
fn failover_chain(guest: &str, guest_args: &[&str], kills: usize, seed: u64) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut rng = Rng(seed);
    let start = || {
        let mut c = Cluster::start(guest, guest_args, PING_MS);
        c.primary_and_backup(None, LONG);
        c.add_node("127.0.0.1:0", None);
        c
    };
    let mut c = start();
    let mut lost = 0;
    let mut fast = 0;
    for round in 0..kills {
        std::thread::sleep(rng.millis(200, 1500));
        // Only a backup that holds the state can take over: at high load its replay may have
        // just failed (it then takes the state again); kill once it holds it.
        let view = c.wait_ready(LONG).view;
        let p = c.index_of(&view.primary);
        let q = c.index_of(&view.backup);
        let q_addr = c.nodes[q].addr().to_string();
        let q_events_before = c.nodes[q].event_count();
        c.nodes[p].sigkill();
        let p_out = c.nodes[p].out();
        let after = match c.await_failover(&view, q, q_events_before, LONG) {
            Failover::Promoted(v) => v,
            Failover::Lost(why) => {
                // The backup's replay overshot as its primary died: the one copy left is gone
                // (docs/faults.md). What was released must still be one history; then a new
                // guest for the remaining rounds.
                eprintln!("round {round}: guest lost: {why}");
                c.check_one_history();
                no_divergence(&c);
                lost += 1;
                c = start();
                continue;
            }
        };
        assert_eq!(
            after.primary, q_addr,
            "round {round}: only the backup is promoted"
        );
        assert!(
            c.nodes[q]
                .wait_event("going_live", q_events_before, LONG)
                .is_some(),
            "round {round}: the backup never went live\n{}",
            c.logs()
        );
        // A killed process's connections close at once: a backup still streaming from it
        // reads the close and asks to be promoted instead of waiting for missed pings. (One
        // whose stream had already ended, say the primary gave up on a slow backup and was
        // about to send the state again, has nothing to read: missed pings promote it.)
        let after_kill: Vec<_> = c.nodes[q]
            .events()
            .into_iter()
            .skip(q_events_before)
            .collect();
        let closed = after_kill.iter().any(|e| {
            e["event"] == "stream_ended"
                && e["reason"].as_str().is_some_and(|r| {
                    r.contains("closed the connection")
                        || r.starts_with("reading from")
                        || r.starts_with("writing to")
                })
        });
        let asked = after_kill
            .iter()
            .any(|e| e["event"] == "primary_lost" && e["view"] == view.viewnum);
        assert!(
            asked || !closed,
            "round {round}: the backup read its primary's connection close and did not ask to be promoted\n{}",
            c.logs()
        );
        fast += usize::from(asked);
        // The new primary speaks again once its new backup holds the state (or at once, alone).
        let idle = c.index_of(
            &c.wait_view(LONG, |v| v.primary == q_addr && !v.backup.is_empty())
                .backup,
        );
        assert!(
            c.nodes[idle]
                .wait_event("state_installed", 0, LONG)
                .is_some(),
            "round {round}: the idle node never got the state\n{}",
            c.logs()
        );
        c.nodes[q].wait_output(LONG);
        // What the world saw from the old primary: its stdout, which starts at console byte 0
        // for the first primary and where it went live for the others.
        let p_from = released_from(&c.nodes[p]).unwrap_or(0);
        let p_end = p_from + p_out.len();
        // Released output first, then the transcript: a node writes its transcript before it
        // releases, so the transcript read later covers everything released until then.
        let q_out = c.nodes[q].out();
        let q_transcript = c.nodes[q].transcript();
        assert_eq!(
            q_transcript.get(p_from..p_end),
            Some(&p_out[..]),
            "round {round}: the old primary released console bytes {p_from}..{p_end} that are not the new primary's transcript there ({} bytes)\n{}",
            q_transcript.len(),
            c.logs()
        );
        let from = released_from(&c.nodes[q]).expect("the going_live event names its byte");
        assert!(
            from <= p_end,
            "round {round}: the new primary releases from byte {from}, the old one released up to {p_end}: output lost"
        );
        assert!(
            !q_out.is_empty(),
            "round {round}: the new primary released nothing"
        );
        assert_eq!(
            q_transcript.get(from..from + q_out.len()),
            Some(&q_out[..]),
            "round {round}: the new primary released something other than its transcript"
        );
        // A new idle node for the next round.
        c.add_node("127.0.0.1:0", None);
    }
    no_divergence(&c);
    eprintln!(
        "{kills} kills, {fast} promotions on the backup's word, {lost} guests lost to a backup replay overshoot as the primary died"
    );
    assert!(
        lost * 4 <= kills,
        "{lost} of {kills} failovers lost the guest: the live backup's replay overshoots too often"
    );
}

/// Every backup replayed what it was sent: a state that diverged is a bug even when a second
/// transfer hid it. (An overshoot is no divergence: the replay lost its way, not its history.)
fn no_divergence(c: &Cluster) {
    for n in &c.nodes {
        assert!(
            !n.events_named("replay_failed")
                .iter()
                .any(|e| e["diverged"] == true),
            "a backup's replay diverged\n{}",
            c.logs()
        );
    }
}

#[test]
fn twenty_sigkills_of_a_ticker_primary() {
    failover_chain("ticker", &["hz=50", "ticks=1000000"], 20, 0x5eed_0001);
}

#[test]
fn twenty_sigkills_of_a_compute_primary() {
    failover_chain(
        "compute",
        &[common::COMPUTE_FOR_LONG, "report=200"],
        20,
        0x5eed_0002,
    );
}

/// Samples how much the primary released and executed over `d`.
fn watch(c: &Cluster, p: usize, d: Duration) -> (usize, usize, usize, usize) {
    let out0 = c.nodes[p].out().len();
    let tr0 = c.nodes[p].transcript().len();
    std::thread::sleep(d);
    (
        out0,
        c.nodes[p].out().len(),
        tr0,
        c.nodes[p].transcript().len(),
    )
}

#[test]
fn a_stopped_backup_holds_output_until_the_viewserver_drops_it() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::start("ticker", &["hz=50", "ticks=1000000"], PING_MS);
    let (a, b) = c.primary_and_backup(None, LONG);
    let b_addr = c.nodes[b].addr().to_string();
    std::thread::sleep(Duration::from_millis(500));
    c.nodes[b].signal(Signal::Stop);
    // Acks already on their way may still land, and the primary's throttle waits up to 100 ms
    // for a backup that stopped reporting its replay.
    std::thread::sleep(Duration::from_millis(150));
    let mut held_while_named = false;
    while c.view().unwrap().backup == b_addr {
        let (o0, o1, t0, t1) = watch(&c, a, Duration::from_millis(100));
        if c.view().unwrap().backup != b_addr {
            break;
        }
        assert_eq!(
            o0, o1,
            "output released while the view still names the stopped backup"
        );
        assert!(
            t1 > t0,
            "the guest keeps running (its output is held, not missing)"
        );
        held_while_named = true;
    }
    assert!(
        held_while_named,
        "the view dropped the backup before anything could be observed"
    );
    // The view now has no backup: the primary continues alone and releases what it held.
    let v = c.wait_view(LONG, |v| v.backup.is_empty());
    assert!(
        c.nodes[a]
            .wait_for(0, LONG, |e| e["event"] == "no_backup"
                && e["view"] == v.viewnum)
            .is_some(),
        "{}",
        c.logs()
    );
    let (o0, o1, _, _) = watch(&c, a, Duration::from_millis(500));
    assert!(o1 > o0, "the primary alone releases output again");
    let out = c.nodes[a].out();
    assert!(c.nodes[a].transcript().starts_with(&out));
    c.nodes[b].signal(Signal::Cont);
}

#[test]
fn a_cut_logging_channel_holds_output_until_it_heals() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::start("ticker", &["hz=50", "ticks=1000000"], PING_MS);
    let (a, b, proxy) = c.primary_and_backup_behind_proxy(LONG);
    let view = c.view().unwrap();
    std::thread::sleep(Duration::from_millis(500));

    proxy.cut.store(true, std::sync::atomic::Ordering::Release);
    std::thread::sleep(Duration::from_millis(50));
    let (o0, o1, t0, t1) = watch(&c, a, Duration::from_millis(2500));
    assert_eq!(o0, o1, "output released while the channel is cut");
    assert!(t1 > t0, "the guest keeps running meanwhile");
    assert_eq!(
        c.view().unwrap(),
        view,
        "the backup kept pinging: the view did not change"
    );

    let healed_at = c.nodes[a].transcript().len();
    proxy.cut.store(false, std::sync::atomic::Ordering::Release);
    let deadline = Instant::now() + LONG;
    while c.nodes[a].out().len() < healed_at && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = c.nodes[a].out();
    assert!(
        out.len() >= healed_at,
        "after the channel healed the primary released {} of the {healed_at} bytes it had\n{}",
        out.len(),
        c.logs()
    );
    assert!(c.nodes[a].transcript().starts_with(&out));
    assert!(!c.nodes[b].log().contains("diverged"), "{}", c.logs());
}

/// The primary loses the viewserver but not its backup: the viewserver promotes the backup,
/// which must stop taking (and acknowledging) the old primary's stream and go live. The old
/// primary, still running and streaming, can then release nothing more: the world hears one
/// primary at a time, and nothing the old one said is contradicted or lost.
#[test]
fn a_primary_cut_off_from_the_viewserver_is_replaced_and_fenced() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::start("ticker", &["hz=50", "ticks=1000000"], PING_MS);
    let vs_link = Proxy::start(c.vs_addr.clone());
    let (a, b) = c.primary_and_backup(Some(&vs_link.addr), LONG);
    let b_addr = c.nodes[b].addr().to_string();
    std::thread::sleep(Duration::from_millis(500));

    vs_link
        .cut
        .store(true, std::sync::atomic::Ordering::Release);
    c.wait_view(LONG, |v| v.primary == b_addr);
    assert!(
        c.nodes[b].wait_event("going_live", 0, LONG).is_some(),
        "the promoted backup kept replaying the old primary's stream instead of going live\n{}",
        c.logs()
    );
    assert!(
        c.nodes[b].wait_output(LONG),
        "the new primary released nothing"
    );

    // The old primary runs on (its guest's console grows) but releases nothing more.
    let a_out = c.nodes[a].out();
    let a_transcript = c.nodes[a].transcript().len();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        c.nodes[a].out(),
        a_out,
        "the old primary released output while another node was primary"
    );
    assert!(
        c.nodes[a].transcript().len() > a_transcript,
        "the old primary's guest keeps running, its output held"
    );
    let b_transcript = c.nodes[b].transcript();
    assert_eq!(
        b_transcript.get(..a_out.len()),
        Some(&a_out[..]),
        "what the old primary released is not what the new primary's guest said"
    );
    let from = released_from(&c.nodes[b]).expect("the going_live event names its byte");
    assert!(
        from <= a_out.len(),
        "the new primary releases from byte {from}, the old one released up to {}: output lost",
        a_out.len()
    );

    // Back in touch with the viewserver, the old primary learns it was replaced and stops.
    vs_link
        .cut
        .store(false, std::sync::atomic::Ordering::Release);
    assert!(
        c.nodes[a].wait_event("stepped_down", 0, LONG).is_some(),
        "{}",
        c.logs()
    );
    assert_eq!(c.nodes[a].out(), a_out);
}

/// A ticker cluster whose viewserver takes a minute to find a node dead, far beyond these
/// tests' patience: only the backup's word can promote it in time.
fn ticker_with_a_minute_dead_time() -> Cluster {
    Cluster::start_with_viewserver_args(
        "ticker",
        &["hz=50", "ticks=1000000"],
        PING_MS,
        &["--dead-pings", "600"],
    )
}

/// The primary is killed while the view service would take a minute to find it dead: the backup
/// sees its connection close, asks, and is promoted at once; it speaks, and everything released
/// is one history.
#[test]
fn a_killed_primary_is_replaced_on_its_backups_word() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = ticker_with_a_minute_dead_time();
    let (a, b) = c.primary_and_backup(None, LONG);
    c.add_node("127.0.0.1:0", None);
    let view = c.view().unwrap();
    let b_addr = c.nodes[b].addr().to_string();
    std::thread::sleep(Duration::from_millis(500));
    let before = c.nodes[b].event_count();

    c.nodes[a].sigkill();
    // Well inside the minute the missed pings would take.
    let after = c.wait_view(Duration::from_secs(30), |v| v.primary == b_addr);
    assert_eq!(after.viewnum, view.viewnum + 1);
    let asked = c.nodes[b]
        .events()
        .into_iter()
        .skip(before)
        .find(|e| e["event"] == "primary_lost");
    assert_eq!(
        asked.map(|e| e["view"].clone()),
        Some(view.viewnum.into()),
        "{}",
        c.logs()
    );
    speaks_one_history(&c, b);
}

/// The logging channel is closed under both live nodes (a router resetting the flow): the
/// backup, seeing its connection end, is promoted at once, while the old primary still holds a
/// lease of most of a minute. The old primary may repeat what its backup acknowledged, never
/// anything new; it learns the view at its next ping and steps down; what both released is one
/// history, and the old primary comes back as the new one's backup.
#[test]
fn a_logging_channel_closed_under_a_live_primary_fails_over_without_contradiction() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = ticker_with_a_minute_dead_time();
    let (a, b, proxy) = c.primary_and_backup_behind_proxy(LONG);
    let view = c.view().unwrap();
    std::thread::sleep(Duration::from_millis(500));

    proxy.close_all();
    c.wait_view(Duration::from_secs(30), |v| v.primary == proxy.addr);
    // Promoted in the very next view, on its word. (Not read from the view: the old primary,
    // alive, is taken as the backup in the view after, which can come before this test looks.)
    let live = c.nodes[b].wait_event("going_live", 0, LONG);
    assert_eq!(
        live.as_ref().map(|e| e["view"].clone()),
        Some((view.viewnum + 1).into()),
        "{}",
        c.logs()
    );
    assert!(
        c.nodes[b]
            .events()
            .iter()
            .any(|e| e["event"] == "primary_lost"),
        "{}",
        c.logs()
    );
    assert!(
        c.nodes[a].wait_event("stepped_down", 0, LONG).is_some(),
        "the old primary never stepped down\n{}",
        c.logs()
    );
    let a_out = c.nodes[a].out();
    // The old primary, alive and no longer anyone's primary, is co-opted as the new backup.
    let a_addr = c.nodes[a].addr().to_string();
    let v = c.wait_status(LONG, |s| {
        s.view.primary == proxy.addr && s.view.backup == a_addr && s.backup_ready
    });
    assert_eq!(c.nodes[a].out(), a_out, "a deposed primary spoke again");
    assert!(
        c.nodes[b].wait_output(LONG),
        "the new primary released nothing"
    );
    std::thread::sleep(Duration::from_millis(500));
    let r = c.check_history(b);
    assert!(r.segments >= 2, "{r:?} in {}", v.view);
}

/// A large guest's state transfer reports its progress, and the backup ends up with the state.
#[test]
fn a_large_guests_state_transfer_shows_progress() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::start("ticker", &["hz=50", "ticks=1000000"], PING_MS);
    c.mem_mib = Some(512);
    let (a, b) = c.primary_and_backup(None, LONG);
    let progress = c.nodes[a].events_named("transfer_progress");
    let sent: Vec<u64> = progress
        .iter()
        .filter_map(|e| e["message"].as_str())
        .filter_map(|l| l.split(": ").nth(1))
        .filter_map(|l| l.strip_suffix("/512 MiB"))
        .map(|n| n.parse().unwrap())
        .collect();
    assert!(
        sent.len() >= 9,
        "expected a progress event per tenth of the memory, got {sent:?}\n{progress:?}"
    );
    assert!(sent.windows(2).all(|w| w[0] < w[1]), "{sent:?}");
    assert!(*sent.last().unwrap() >= 460, "{sent:?}");
    let installed = c.nodes[b]
        .wait_event("state_installed", 0, LONG)
        .unwrap_or_else(|| panic!("{}", c.logs()));
    assert_eq!(installed["mem_mib"], 512, "{installed}");
}

/// A backup whose kicks overshoot on purpose (`--replay-aim 4`: every kick aims at four times
/// the distance left) goes back to its latest checkpoint each time instead of dropping its
/// state: it keeps backing up the primary with the one state transfer it had, and when the
/// primary is killed it goes live, and what both released is one history.
#[test]
fn a_backup_whose_replay_overshoots_goes_back_to_its_checkpoint_not_to_the_primary() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // Overshooting needs interrupts that land mid-execution: a host with an instruction counter.
    let probe = tempfile::tempdir().expect("tempdir");
    let log = probe.path().join("probe.ulog");
    common::assert_ok(
        &common::record(&log, "compute", &["iters=100"]),
        "probe recording",
    );
    if !common::lands_mid_execution_or_skip(&log) {
        return;
    }
    let mut c = Cluster::start(
        "compute",
        &[common::COMPUTE_FOR_LONG, "report=200"],
        PING_MS,
    );
    c.node_args = vec!["--replay-aim".into(), "4".into()];
    let (a, b) = c.primary_and_backup(None, LONG);
    let b_addr = c.nodes[b].addr().to_string();
    // Three rewinds: each one a second of cautious replay from a checkpoint, then
    // overshooting kicks again.
    let deadline = Instant::now() + LONG;
    while c.nodes[b].events_named("replay_rewound").len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the backup's replay did not go back to a checkpoint three times\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        c.nodes[b].events_named("replay_failed").is_empty(),
        "the backup dropped its state\n{}",
        c.logs()
    );
    assert_eq!(
        c.nodes[a].events_named("transfer_done").len(),
        1,
        "the primary sent its state again\n{}",
        c.logs()
    );
    let before = c.nodes[b].event_count();
    c.nodes[a].sigkill();
    c.wait_view(LONG, |v| v.primary == b_addr);
    assert!(
        c.nodes[b].wait_event("going_live", before, LONG).is_some(),
        "{}",
        c.logs()
    );
    // The replay's summary, once its stream ended, counts what the events said.
    let summary = c.nodes[b]
        .wait_event("replay_summary", before, LONG)
        .expect("the backup summarized its replay");
    let rewound = c.nodes[b].events_named("replay_rewound").len() as u64;
    assert_eq!(summary["rewinds"].as_u64(), Some(rewound), "{summary}");
    assert!(summary["checkpoints"].as_u64() >= Some(1), "{summary}");
    assert!(
        summary["interrupts_precise"].as_u64() > Some(0),
        "{summary}"
    );
    speaks_one_history(&c, b);
}

/// The backup's view service is of an older build, which refuses the ping field asking for a
/// promotion (`primary_lost`) with 400, as it refuses any field it does not know. The backup
/// asks once, hears the refusal, asks no more, and is promoted on the dead primary's missed
/// pings, as before the field existed; what was released is one history.
#[test]
fn a_view_service_that_does_not_know_the_request_to_be_promoted_fails_over_on_missed_pings() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut c = Cluster::start("ticker", &["hz=50", "ticks=1000000"], PING_MS);
    let old = FieldRefusingProxy::start(c.vs_addr.clone(), "primary_lost");
    let a = c.add_node("127.0.0.1:0", None);
    let a_addr = c.nodes[a].addr().to_string();
    c.wait_view(LONG, |v| v.primary == a_addr);
    let b = c.add_node_via("127.0.0.1:0", None, &old.addr);
    let b_addr = c.nodes[b].addr().to_string();
    c.wait_view(LONG, |v| v.backup == b_addr && v.primary == a_addr);
    assert!(
        c.nodes[a].wait_event("transfer_done", 0, LONG).is_some(),
        "{}",
        c.logs()
    );
    let view = c.wait_ready(LONG).view;
    std::thread::sleep(Duration::from_millis(300));
    let before = c.nodes[b].event_count();

    c.nodes[a].sigkill();
    let after = c.wait_view(LONG, |v| v.primary == b_addr);
    assert_eq!(after.viewnum, view.viewnum + 1, "{}", c.logs());
    assert!(
        c.nodes[b]
            .wait_event("primary_lost", before, LONG)
            .is_some(),
        "the backup never asked to be promoted\n{}",
        c.logs()
    );
    assert!(
        old.refused.load(std::sync::atomic::Ordering::Acquire) >= 1,
        "the old view service was never asked\n{}",
        c.logs()
    );
    assert!(
        c.nodes[b]
            .log()
            .contains("the view service refused the request to be promoted"),
        "{}",
        c.logs()
    );
    speaks_one_history(&c, b);
}

/// The promoted node `b` releases output, and what every node released is one history, in
/// at least two segments (the old primary's and `b`'s).
fn speaks_one_history(c: &Cluster, b: usize) {
    assert!(
        c.nodes[b].wait_output(LONG),
        "the new primary released nothing\n{}",
        c.logs()
    );
    let r = c.check_history(b);
    assert!(r.segments >= 2, "{r:?}");
}
