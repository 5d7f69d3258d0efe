use super::*;

fn view(viewnum: u64, primary: &str, backup: &str) -> (u64, String, String) {
    (viewnum, primary.to_string(), backup.to_string())
}

fn short(v: &View) -> (u64, String, String) {
    (v.viewnum, v.primary.clone(), v.backup.clone())
}

/// Servers as our nodes behave: an incarnation per process, increasing ping
/// numbers, `holds` saying what state they have. Pings are delivered in
/// order unless a test says otherwise.
struct Cluster {
    vs: ViewService,
    nodes: BTreeMap<&'static str, Node>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    incarnation: u64,
    seq: u64,
    known: u64,
    holds: u64,
    /// Ignores the answers to its pings.
    deaf: bool,
    /// Reports in every ping that the guest ended.
    reports: Option<GuestEnd>,
    /// Reports in every ping that it lost its stream from the primary of this view.
    lost: Option<u64>,
}

impl Cluster {
    fn new(dead_pings: u32) -> Self {
        Cluster {
            vs: ViewService::new(7, dead_pings, 20),
            nodes: BTreeMap::new(),
        }
    }

    fn node(&mut self, name: &'static str) -> &mut Node {
        let next = self.nodes.len() as u64 * 100 + 1;
        self.nodes.entry(name).or_insert_with(|| Node {
            incarnation: next,
            ..Node::default()
        })
    }

    /// One ping from `name` following the node rules: a primary holds the
    /// view it knows (it runs the guest), a backup holds what it was given.
    fn ping(&mut self, name: &'static str) -> PingReply {
        let n = self.node(name);
        n.seq += 1;
        let (inc, seq, known, holds, reports, lost) =
            (n.incarnation, n.seq, n.known, n.holds, n.reports, n.lost);
        let r = self
            .vs
            .ping(&Ping {
                server: name,
                incarnation: Some(inc),
                seq: Some(seq),
                viewnum: known,
                holds: Some(holds),
                finished: reports,
                primary_lost: lost,
            })
            .unwrap();
        let v = &r.status.view;
        let n = self.node(name);
        if !n.deaf {
            n.known = v.viewnum;
            if v.is_primary(name, inc) && (n.holds > 0 || v.fresh) {
                // A primary with the guest (or a fresh view: it boots it).
                n.holds = v.viewnum;
            } else if !v.is_backup(name, inc) {
                n.holds = 0;
            }
        }
        r
    }

    /// The backup installs the primary's state.
    fn install(&mut self, name: &'static str) {
        let n = self.node(name);
        n.holds = n.known;
    }

    fn restart(&mut self, name: &'static str) {
        let n = self.node(name);
        n.incarnation += 1;
        n.seq = 0;
        n.known = 0;
        n.holds = 0;
    }

    fn interval(&mut self, pingers: &[&'static str]) -> View {
        for s in pingers {
            self.ping(s);
        }
        self.vs.tick();
        self.vs.view()
    }

    fn intervals(&mut self, n: u32, pingers: &[&'static str]) -> View {
        for _ in 0..n {
            self.interval(pingers);
        }
        self.vs.view()
    }
}

/// The classic client: no incarnation, no sequence number, no `holds`.
fn lab_ping(vs: &mut ViewService, server: &str, viewnum: u64) -> View {
    vs.ping(&Ping {
        server,
        incarnation: None,
        seq: None,
        viewnum,
        holds: None,
        finished: None,
        primary_lost: None,
    })
    .unwrap()
    .status
    .view
}

#[test]
fn no_view_before_any_ping() {
    let vs = ViewService::new(1, 3, 10);
    assert_eq!(vs.view(), View::default());
    assert_eq!(vs.status().service, "0000000000000001");
}

#[test]
fn first_server_to_ping_starts_the_guest_and_acks_once_it_runs_it() {
    let mut c = Cluster::new(3);
    let r = c.ping("a");
    assert_eq!(short(&r.status.view), view(1, "a", ""));
    assert!(r.status.view.fresh);
    assert!(!r.lease, "no lease before the view is acknowledged");
    let r = c.ping("a");
    assert!(c.vs.primary_acked() && c.vs.booted());
    assert!(r.lease);
    assert_eq!(c.intervals(10, &["a"]), r.status.view);
}

#[test]
fn first_backup_is_ready_only_once_it_holds_the_state() {
    let mut c = Cluster::new(3);
    c.intervals(2, &["a"]);
    let v = c.interval(&["a", "b"]);
    assert_eq!(short(&v), view(2, "a", "b"));
    assert!(!v.fresh);
    c.intervals(2, &["a", "b"]);
    assert!(c.vs.primary_acked(), "the primary acks as soon as it knows");
    assert!(!c.vs.backup_ready());
    c.install("b");
    c.interval(&["a", "b"]);
    assert!(c.vs.backup_ready());
    assert_eq!(short(&c.intervals(5, &["a", "b"])), view(2, "a", "b"));
}

#[test]
fn a_ready_backup_takes_over_when_the_primary_dies() {
    let mut c = Cluster::new(3);
    c.intervals(3, &["a", "b"]);
    c.install("b");
    c.intervals(2, &["a", "b"]);
    // a stops pinging: dead once it missed more than 3 whole intervals.
    c.intervals(2, &["b"]);
    assert_eq!(short(&c.vs.view()), view(2, "a", "b"));
    assert_eq!(short(&c.interval(&["b"])), view(3, "b", ""));
}

#[test]
fn a_backup_without_the_state_is_never_promoted() {
    // Case 4 of the fault list, first half: the primary dies while its
    // backup is still receiving the state. Nobody else has the guest.
    let mut c = Cluster::new(3);
    c.intervals(3, &["a", "b"]);
    assert!(c.vs.primary_acked() && !c.vs.backup_ready());
    assert_eq!(short(&c.intervals(20, &["b", "c"])), view(2, "a", "b"));
}

#[test]
fn a_backup_that_dies_before_taking_the_state_is_replaced() {
    // Case 4: the primary must not be left holding output for a dead backup.
    let mut c = Cluster::new(3);
    c.intervals(3, &["a", "b", "c"]);
    assert_eq!(short(&c.vs.view()), view(2, "a", "b"));
    assert!(c.vs.primary_acked() && !c.vs.backup_ready());
    assert_eq!(short(&c.intervals(4, &["a", "c"])), view(3, "a", "c"));
    // Without another idle server the primary runs alone.
    let mut c = Cluster::new(3);
    c.intervals(3, &["a", "b"]);
    assert_eq!(short(&c.intervals(4, &["a"])), view(3, "a", ""));
}

#[test]
fn a_backup_that_took_the_state_is_promoted_even_if_the_primary_died_at_once() {
    // Case 5: the backup installed, said so, and the primary died before
    // pinging again.
    let mut c = Cluster::new(3);
    c.intervals(3, &["a", "b", "c"]);
    c.install("b");
    c.ping("b");
    assert!(c.vs.backup_ready());
    assert_eq!(short(&c.intervals(4, &["b", "c"])), view(3, "b", "c"));
}

#[test]
fn a_backup_that_loses_its_state_is_not_promoted() {
    let mut c = Cluster::new(3);
    c.intervals(3, &["a", "b"]);
    c.install("b");
    c.interval(&["a", "b"]);
    assert!(c.vs.backup_ready());
    // Its replay failed: it says it holds nothing now.
    c.node("b").holds = 0;
    c.interval(&["a", "b"]);
    assert!(!c.vs.backup_ready());
    assert_eq!(short(&c.intervals(10, &["b"])), view(2, "a", "b"));
}

#[test]
fn a_backup_that_never_becomes_ready_is_replaced_and_passed_over() {
    let mut c = Cluster::new(3);
    c.vs = ViewService::new(7, 3, 5);
    c.intervals(3, &["a", "b", "c"]);
    assert_eq!(short(&c.vs.view()), view(2, "a", "b"));
    assert_eq!(short(&c.intervals(5, &["a", "b", "c"])), view(3, "a", "c"));
    // Alone with it, the primary runs without a backup for a while rather
    // than taking it straight back.
    let mut c = Cluster::new(3);
    c.vs = ViewService::new(7, 3, 5);
    c.intervals(3, &["a", "b"]);
    // Replaced in the third of these intervals, then passed over for 5.
    assert_eq!(short(&c.intervals(5, &["a", "b"])), view(3, "a", ""));
    assert_eq!(short(&c.intervals(2, &["a", "b"])), view(3, "a", ""));
    assert_eq!(short(&c.intervals(1, &["a", "b"])), view(4, "a", "b"));
}

#[test]
fn a_restarted_primary_is_replaced_by_its_ready_backup_and_comes_back_as_backup() {
    let mut c = Cluster::new(3);
    c.intervals(3, &["a", "b"]);
    c.install("b");
    c.interval(&["a", "b"]);
    c.restart("a");
    let r = c.ping("a");
    assert_eq!(short(&r.status.view), view(3, "b", "a"));
    assert_ne!(r.status.view.backup_incarnation, 0);
    assert_eq!(
        Some(r.status.view.backup_incarnation),
        c.vs.incarnation("a")
    );
}

#[test]
fn a_restarted_first_primary_that_had_acked_leaves_the_service_stuck() {
    // Case 2: it may have released output; booting afresh would contradict it.
    let mut c = Cluster::new(3);
    c.intervals(3, &["a"]);
    assert!(c.vs.booted());
    c.restart("a");
    let v = c.intervals(10, &["a", "b"]);
    assert_eq!(short(&v), view(1, "a", ""));
    assert!(!v.is_primary("a", c.node("a").incarnation));
}

#[test]
fn a_first_primary_that_vanished_before_acking_is_replaced_afresh() {
    // It released nothing (no lease before the ack), so no history exists.
    let mut c = Cluster::new(3);
    c.node("a").deaf = true;
    c.ping("a");
    assert_eq!(short(&c.vs.view()), view(1, "a", ""));
    let v = c.intervals(5, &["b"]);
    assert_eq!(short(&v), view(2, "b", ""));
    assert!(v.fresh);
    c.interval(&["b"]);
    assert!(c.vs.booted());
    // And the same name restarted is a new server too.
    let mut c = Cluster::new(3);
    c.node("a").deaf = true;
    c.ping("a");
    c.restart("a");
    c.node("a").deaf = false;
    let r = c.ping("a");
    assert_eq!(short(&r.status.view), view(2, "a", ""));
    assert!(r.status.view.fresh);
}

#[test]
fn a_ready_backup_takes_over_from_a_primary_that_died_before_acking() {
    // Found by the model checker's liveness check (tests/model.rs): "a"
    // learns view 2, gives "c" the state and dies before its ack arrives.
    // "c" holds everything, but the service used to wait for "a" forever.
    let mut c = Cluster::new(3);
    c.intervals(2, &["a"]);
    c.ping("c");
    let r = c.ping("a");
    assert_eq!(short(&r.status.view), view(2, "a", "c"));
    assert!(!c.vs.primary_acked(), "a learned view 2, has not acked it");
    c.install("c");
    c.ping("c");
    assert!(c.vs.backup_ready());
    // a is silent from now on.
    let v = c.intervals(4, &["c"]);
    assert_eq!(short(&v), view(3, "c", ""));
    assert_eq!(Some(v.primary_incarnation), c.vs.incarnation("c"));
}

#[test]
fn the_viewserver_waits_for_the_primary_to_ack() {
    let mut c = Cluster::new(3);
    c.intervals(3, &["a", "b"]);
    c.install("b");
    c.interval(&["a", "b"]);
    // a stops learning views; b dies; c is co-opted in view 3, which a
    // never acks. Then a dies too: c has nothing and is not promoted.
    c.node("a").deaf = true;
    c.intervals(4, &["a", "c"]);
    assert_eq!(short(&c.vs.view()), view(3, "a", "c"));
    assert!(!c.vs.primary_acked());
    assert_eq!(short(&c.intervals(10, &["c"])), view(3, "a", "c"));
    assert!(!c.vs.is_alive("a"));
}

#[test]
fn stale_pings_are_answered_but_not_applied() {
    let mut c = Cluster::new(3);
    c.intervals(3, &["a", "b"]);
    c.install("b");
    c.interval(&["a", "b"]);
    assert!(c.vs.backup_ready());
    let inc = c.node("b").incarnation;
    // A ping b sent long ago (seq 1: holding nothing) arrives late.
    let r =
        c.vs.ping(&Ping {
            server: "b",
            incarnation: Some(inc),
            seq: Some(1),
            viewnum: 2,
            holds: Some(0),
            finished: None,
            primary_lost: None,
        })
        .unwrap();
    assert!(c.vs.backup_ready(), "a stale ping changed readiness");
    assert!(!r.lease);
    // The primary's stale ping gets no lease either, nor counts as alive.
    let a_inc = c.node("a").incarnation;
    c.intervals(3, &["b"]);
    let r =
        c.vs.ping(&Ping {
            server: "a",
            incarnation: Some(a_inc),
            seq: Some(1),
            viewnum: 2,
            holds: Some(2),
            finished: None,
            primary_lost: None,
        })
        .unwrap();
    assert!(!r.lease);
    assert!(!c.vs.is_alive("a"));
}

#[test]
fn pings_of_a_replaced_incarnation_are_refused() {
    let mut c = Cluster::new(3);
    c.intervals(2, &["a"]);
    let old = c.node("a").incarnation;
    c.restart("a");
    c.ping("a");
    let err =
        c.vs.ping(&Ping {
            server: "a",
            incarnation: Some(old),
            seq: Some(99),
            viewnum: 1,
            holds: Some(1),
            finished: None,
            primary_lost: None,
        })
        .unwrap_err();
    assert!(matches!(err, PingError::StaleIncarnation { .. }), "{err}");
    assert!(err.to_string().contains("replaced by a later one"));
    assert_eq!(
        c.vs.ping(&Ping {
            server: "a",
            incarnation: Some(0),
            seq: None,
            viewnum: 0,
            holds: None,
            finished: None,
            primary_lost: None,
        }),
        Err(PingError::ZeroIncarnation)
    );
}

#[test]
fn a_late_ping_from_an_earlier_process_does_not_depose_the_live_one() {
    // Found by the model checker (tests/model.rs). "a" sends a ping, dies
    // before it arrives and restarts; the restarted process becomes primary
    // with a ready backup. Then the dead process's ping arrives. Taken for a
    // new process (the service never saw its incarnation), it used to depose
    // the live primary at once, promoting "b" while "a"'s lease still ran.
    let mut c = Cluster::new(3);
    let old = c.node("a").incarnation;
    c.restart("a");
    c.intervals(3, &["a", "b"]);
    c.install("b");
    c.interval(&["a", "b"]);
    let before = c.vs.view();
    assert_eq!(short(&before), view(2, "a", "b"));
    assert!(c.vs.primary_acked() && c.vs.backup_ready());
    let late = c.vs.ping(&Ping {
        server: "a",
        incarnation: Some(old),
        seq: Some(1),
        viewnum: 0,
        holds: Some(0),
        finished: None,
        primary_lost: None,
    });
    assert!(
        matches!(late, Err(PingError::StaleIncarnation { .. })),
        "{late:?}"
    );
    assert_eq!(c.vs.view(), before);
    assert!(c.ping("a").lease, "the live primary keeps its lease");
}

#[test]
fn a_lease_only_for_the_primary_of_an_acknowledged_view() {
    let mut c = Cluster::new(3);
    assert!(!c.ping("a").lease);
    assert!(c.ping("a").lease);
    assert!(!c.ping("b").lease, "a backup gets no lease");
    // Co-opting b makes view 2, which a has not acked yet: a learns it with
    // this ping (its earlier lease still runs) and acks with the next.
    assert!(!c.vs.primary_acked());
    assert!(!c.ping("a").lease);
    assert!(c.ping("a").lease);
}

#[test]
fn restore_continues_the_view_sequence_and_waits_a_full_period() {
    let mut c = Cluster::new(3);
    c.intervals(3, &["a", "b"]);
    c.install("b");
    c.interval(&["a", "b"]);
    let saved = c.vs.persisted().clone();
    assert!(saved.acked && saved.backup_ready && saved.booted);
    c.vs = ViewService::restore(saved.clone(), 3, 20);
    assert_eq!(c.vs.persisted(), &saved);
    // Nobody pings after the restart: the members are declared dead only
    // after a full detection period (dead_pings + 1 ticks).
    for _ in 0..3 {
        c.vs.tick();
        assert_eq!(short(&c.vs.view()), view(2, "a", "b"));
    }
    // The backup is alive and ready: it takes over, as view 3.
    c.ping("b");
    c.vs.tick();
    assert_eq!(short(&c.vs.view()), view(3, "b", ""));
}

#[test]
fn a_member_that_restarted_while_the_service_was_down_is_recognised() {
    let mut c = Cluster::new(3);
    c.intervals(3, &["a", "b"]);
    c.install("b");
    c.interval(&["a", "b"]);
    c.vs = ViewService::restore(c.vs.persisted().clone(), 3, 20);
    c.restart("a");
    let r = c.ping("a");
    assert_eq!(short(&r.status.view), view(3, "b", "a"));
}

#[test]
fn revert_persisted_undoes_a_change_that_could_not_be_stored() {
    let mut c = Cluster::new(3);
    c.intervals(3, &["a"]);
    let before = c.vs.persisted().clone();
    let version = c.vs.persisted_version();
    c.ping("b");
    assert_eq!(c.vs.view().viewnum, 2);
    assert_ne!(c.vs.persisted_version(), version);
    c.vs.revert_persisted(before.clone());
    assert_eq!(c.vs.persisted(), &before);
    // The next ping decides again.
    c.ping("a");
    assert_eq!(short(&c.vs.view()), view(2, "a", "b"));
}

// The classic view-service sequence (MIT 6.824 lab 2's test), with clients
// that send neither incarnations nor `holds`: a ping of 0 after a client
// showed it knew a view is a restart; a backup that knows the view holds it.
#[test]
fn classic_sequence_with_lab_clients() {
    let mut vs = ViewService::new(9, 3, 1000);
    let intervals = |vs: &mut ViewService, n: u32, pings: &[(&str, u64)]| {
        for _ in 0..n {
            for (s, v) in pings {
                lab_ping(vs, s, *v);
            }
            vs.tick();
        }
        vs.view()
    };
    // First primary.
    assert_eq!(short(&lab_ping(&mut vs, "s1", 0)), view(1, "s1", ""));
    // First backup: s2 keeps pinging 0 while it learns; that is no restart.
    lab_ping(&mut vs, "s1", 1);
    for _ in 0..3 {
        lab_ping(&mut vs, "s2", 0);
    }
    assert_eq!(short(&vs.view()), view(2, "s1", "s2"));
    lab_ping(&mut vs, "s1", 2);
    for _ in 0..3 {
        lab_ping(&mut vs, "s2", 0);
    }
    assert_eq!(short(&vs.view()), view(2, "s1", "s2"));
    // Backup takes over.
    assert_eq!(
        short(&intervals(&mut vs, 5, &[("s2", 2)])),
        view(3, "s2", "")
    );
    // Restarted server becomes backup.
    assert_eq!(
        short(&intervals(&mut vs, 2, &[("s2", 3), ("s1", 0)])),
        view(4, "s2", "s1")
    );
    // Idle third server becomes backup when the primary fails, in one step.
    lab_ping(&mut vs, "s2", 4);
    lab_ping(&mut vs, "s1", 4);
    assert_eq!(
        short(&intervals(&mut vs, 5, &[("s3", 0), ("s1", 4)])),
        view(5, "s1", "s3")
    );
    // Restarted primary treated as dead.
    lab_ping(&mut vs, "s1", 5);
    lab_ping(&mut vs, "s3", 5);
    lab_ping(&mut vs, "s1", 0);
    assert_eq!(short(&vs.view()), view(6, "s3", "s1"));
    // Dead backup removed.
    lab_ping(&mut vs, "s3", 6);
    assert_eq!(
        short(&intervals(&mut vs, 5, &[("s3", 6)])),
        view(7, "s3", "")
    );
    // Waits for the primary's ack: s1 (restarted) is co-opted, s3 never
    // acks, dies; s1 is not promoted.
    lab_ping(&mut vs, "s3", 7);
    assert_eq!(
        short(&intervals(&mut vs, 1, &[("s3", 7), ("s1", 0)])),
        view(8, "s3", "s1")
    );
    assert_eq!(
        short(&intervals(&mut vs, 10, &[("s1", 8)])),
        view(8, "s3", "s1")
    );
    // Uninitialised server never primary: everyone old dies; s2 (restarted,
    // stateless) pings alone.
    assert_eq!(
        short(&intervals(&mut vs, 10, &[("s2", 0)])),
        view(8, "s3", "s1")
    );
}

#[test]
fn dead_idle_servers_are_forgotten_and_tracking_is_bounded() {
    let mut c = Cluster::new(2);
    c.interval(&["a", "b", "c", "d"]);
    c.intervals(3, &["a", "b"]);
    assert!(c.vs.idle_servers().is_empty());
    let mut vs = ViewService::new(1, 2, 10);
    for i in 0..MAX_TRACKED_SERVERS + 10 {
        lab_ping(&mut vs, &format!("s{i}"), 0);
    }
    assert_eq!(vs.servers.len(), MAX_TRACKED_SERVERS);
    assert_eq!(vs.view().primary, "s0");
}

#[test]
fn zero_dead_pings_means_one() {
    assert_eq!(ViewService::new(1, 0, 0).dead_pings(), 1);
}

#[test]
fn status_serialises_flat_and_old_clients_can_read_it() {
    let mut c = Cluster::new(3);
    c.ping("a");
    let s = c.vs.status();
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["viewnum"], 1);
    assert_eq!(json["primary"], "a");
    assert_eq!(json["fresh"], true);
    assert!(json.get("lease_ms").is_none());
    let back: Status = serde_json::from_value(json).unwrap();
    assert_eq!(back, s);
    let minimal: Status =
        serde_json::from_str(r#"{"viewnum":3,"primary":"x","backup":""}"#).unwrap();
    assert_eq!(minimal.view.viewnum, 3);
}

#[test]
fn view_displays_on_one_line() {
    let v = View {
        viewnum: 3,
        primary: "a".into(),
        ..View::default()
    };
    assert_eq!(v.to_string(), "view 3: primary=a backup=(none)");
}

#[test]
fn a_lab_backup_still_learning_its_view_is_no_restart_and_can_take_over() {
    // Case 8 of the fault list: a co-opted backup that keeps pinging 0 (its
    // answers are slow to arrive) must not be taken for restarted, or the
    // view churns as soon as the primary acks; and it can take over.
    let mut vs = ViewService::new(9, 3, 1000);
    lab_ping(&mut vs, "p", 0);
    lab_ping(&mut vs, "p", 1);
    lab_ping(&mut vs, "b", 0);
    assert_eq!(short(&vs.view()), view(2, "p", "b"));
    for _ in 0..20 {
        lab_ping(&mut vs, "p", 2);
        lab_ping(&mut vs, "b", 0);
        vs.tick();
    }
    assert_eq!(short(&vs.view()), view(2, "p", "b"));
    // The primary restarts: the backup takes over.
    lab_ping(&mut vs, "p", 0);
    assert_eq!(short(&vs.view()), view(3, "b", "p"));
}

const POWERED_OFF: GuestEnd = GuestEnd {
    reason: EndReason::PowerOff,
    code: 3,
};

/// a primary and b its ready backup, in view 2, acknowledged.
fn pair() -> Cluster {
    let mut c = Cluster::new(3);
    c.intervals(3, &["a", "b"]);
    c.install("b");
    c.intervals(2, &["a", "b"]);
    assert_eq!(short(&c.vs.view()), view(2, "a", "b"));
    assert!(c.vs.primary_acked() && c.vs.backup_ready());
    c
}

#[test]
fn the_primarys_report_of_the_end_is_recorded_and_no_view_changes_after_it() {
    let mut c = pair();
    c.node("a").reports = Some(POWERED_OFF);
    let r = c.ping("a");
    let done = Finished {
        view: 2,
        end: POWERED_OFF,
    };
    assert_eq!(r.status.finished, Some(done));
    assert!(!r.lease, "a finished guest has nothing left to release");
    // Everyone goes away (the nodes exit) and a newcomer shows up: the view stays.
    c.intervals(10, &["c"]);
    assert_eq!(short(&c.vs.view()), view(2, "a", "b"));
    assert!(c.vs.idle_servers().contains(&"c".to_string()));
    assert_eq!(c.vs.finished(), Some(done));
    assert_eq!(c.ping("c").status.finished, Some(done));
    // A restarted primary is not made anything either.
    c.restart("a");
    c.intervals(10, &["a", "c"]);
    assert_eq!(short(&c.vs.view()), view(2, "a", "b"));
}

#[test]
fn only_the_acknowledged_primary_holding_the_guest_reports_the_end() {
    let mut c = pair();
    for who in ["b", "c"] {
        c.node(who).reports = Some(POWERED_OFF);
        c.ping(who);
        assert_eq!(c.vs.finished(), None, "{who} is not the primary");
    }
    // The primary of a view it has not acknowledged: b promoted after a's death, before it
    // pinged with the new view.
    // b does not hear of view 3 yet.
    c.node("b").deaf = true;
    c.intervals(5, &["b", "c"]);
    assert_eq!(short(&c.vs.view()), view(3, "b", "c"));
    c.ping("b");
    assert!(!c.vs.primary_acked());
    assert_eq!(c.vs.finished(), None, "not acknowledged");
    // The ping acknowledging the view reports the end too: a promoted replica that had
    // replayed the end goes live, releases what it holds and reports.
    let b = c.node("b");
    b.known = 3;
    b.holds = 3;
    c.ping("b");
    assert!(c.vs.primary_acked());
    assert_eq!(
        c.vs.finished(),
        Some(Finished {
            view: 3,
            end: POWERED_OFF
        })
    );
}

#[test]
fn a_deposed_primarys_report_is_not_the_end() {
    let mut c = pair();
    // a is cut off; b takes over.
    c.intervals(5, &["b", "c"]);
    assert_eq!(short(&c.vs.view()), view(3, "b", "c"));
    let a = c.node("a");
    a.reports = Some(POWERED_OFF);
    a.deaf = true;
    c.ping("a");
    assert_eq!(c.vs.finished(), None);
    assert_eq!(short(&c.vs.view()), view(3, "b", "c"));
}

#[test]
fn the_end_survives_a_restart_of_the_service_and_old_stores_read_without_it() {
    let mut c = pair();
    c.node("a").reports = Some(POWERED_OFF);
    c.ping("a");
    let p = c.vs.persisted().clone();
    let json = serde_json::to_string(&p).unwrap();
    let back: Persisted = serde_json::from_str(&json).unwrap();
    assert_eq!(back, p);
    let mut vs = ViewService::restore(back, 3, 20);
    for _ in 0..10 {
        vs.tick();
    }
    assert_eq!(vs.finished(), p.finished);
    assert_eq!(vs.view(), p.view);
    let status = vs.status();
    assert_eq!(
        status.to_string(),
        "view 2: primary=a backup=b (the guest finished in view 2: powered off, exit code 3)"
    );
    // A store written before the field existed.
    let mut old: serde_json::Value = serde_json::to_value(&p).unwrap();
    old.as_object_mut().unwrap().remove("finished");
    let old: Persisted = serde_json::from_value(old).unwrap();
    assert_eq!(old.finished, None);
}

#[test]
fn a_ready_backup_that_lost_its_primary_is_promoted_at_once() {
    let mut c = pair();
    c.ping("c");
    c.node("b").lost = Some(2);
    let r = c.ping("b");
    // No interval passed: the primary has missed no ping yet.
    assert_eq!(short(&r.status.view), view(3, "b", "c"));
    // The old primary is alive and learns it was replaced: it is idle now, and may be
    // co-opted later like anyone else.
    assert!(!c.ping("a").lease);
    assert!(c.vs.idle_servers().contains(&"a".to_string()));
}

#[test]
fn the_backups_word_counts_only_for_the_current_acknowledged_view_with_its_state() {
    // A report naming an older view (a ping that arrives late) changes nothing.
    let mut c = pair();
    c.node("b").lost = Some(1);
    c.ping("b");
    assert_eq!(short(&c.vs.view()), view(2, "a", "b"));
    // Nor from a backup without the state.
    let mut c = pair();
    let b = c.node("b");
    b.lost = Some(2);
    b.holds = 0;
    c.ping("b");
    assert_eq!(short(&c.vs.view()), view(2, "a", "b"));
    assert!(!c.vs.backup_ready());
    // Nor from anyone but the backup.
    let mut c = pair();
    c.node("c").lost = Some(2);
    c.ping("c");
    assert_eq!(short(&c.vs.view()), view(2, "a", "b"));
    // Nor before the primary acknowledged the view: until then it may still let output flow
    // as the primary of the view before, which the backup does not hold.
    let mut c = pair();
    c.node("b").deaf = true;
    c.intervals(5, &["b", "c"]);
    assert_eq!(short(&c.vs.view()), view(3, "b", "c"));
    let cn = c.node("c");
    cn.known = 3;
    cn.holds = 3;
    cn.lost = Some(3);
    c.ping("c");
    assert!(!c.vs.primary_acked());
    assert_eq!(short(&c.vs.view()), view(3, "b", "c"));
    // Nor once the guest's end is recorded.
    let mut c = pair();
    c.node("a").reports = Some(POWERED_OFF);
    c.ping("a");
    c.node("b").lost = Some(2);
    c.ping("b");
    assert_eq!(short(&c.vs.view()), view(2, "a", "b"));
}

#[test]
fn a_lab_backup_cannot_ask_to_be_promoted() {
    // It says nothing of the state it holds, so its word is not enough.
    let mut vs = ViewService::new(1, 3, 20);
    lab_ping(&mut vs, "a", 0);
    lab_ping(&mut vs, "a", 1);
    lab_ping(&mut vs, "b", 0);
    vs.tick();
    lab_ping(&mut vs, "a", 1);
    lab_ping(&mut vs, "b", 2);
    lab_ping(&mut vs, "a", 2);
    assert_eq!(short(&vs.view()), view(2, "a", "b"));
    assert!(vs.primary_acked());
    vs.ping(&Ping {
        server: "b",
        incarnation: None,
        seq: None,
        viewnum: 2,
        holds: None,
        finished: None,
        primary_lost: Some(2),
    })
    .unwrap();
    assert_eq!(short(&vs.view()), view(2, "a", "b"));
}
