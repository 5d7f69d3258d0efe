//! Model check of the whole replication protocol: the real [`ViewService`]
//! (restarted from what it persisted, as the coordinator does), nodes that
//! run the real node rules ([`node::believe`], [`node::ping_fields`],
//! [`node::step`], [`node::after`]), the network between them, the primary's
//! log stream to its backup with its acks, leases, the release of output,
//! and faults at every step, explored exhaustively with stateright.
//! docs/viewserver.md ("What the model checker proves") sums it up.
//!
//! How the model maps to the code:
//!
//! - **Time** is counted in viewserver ticks (ping intervals). No clock is
//!   kept: a lease is the number of intervals it still covers, and so is the
//!   lease a ping in flight would earn (it counts from the ping's sending).
//! - **Leases.** The viewserver declares a server dead at the
//!   `dead_pings + 1`-th tick after its last ping *arrived*, which is after
//!   it was sent. The real lease lasts 3/4 of `dead_pings` intervals from the
//!   sending; output may leave in interval `t` if some instant of `t` is
//!   inside it, which (for `dead_pings` <= 3) makes the `dead_pings + 1`
//!   intervals starting with the sending one ([`LEASE`]): the last release
//!   falls in the interval before the earliest tick that can declare the
//!   primary dead. One interval more ([`Mutation::LeaseTooLong`]) overlaps
//!   the next primary, and the checker finds it.
//! - **Nodes** are up or down, have an incarnation (larger at each restart),
//!   a ping seq, the latest view believed, a [`Holding`], and a guest:
//!   `content`, one entry per step executed, each entry the number of the
//!   view in which the live run that executed it began (two runs that
//!   diverge after a failover are told apart). A node reacts to each view it
//!   believes at once ([`node::step`], [`node::after`]); as primary, its
//!   replication manager starts a transfer for each new backup (by name),
//!   or lets output flow when the view has none.
//! - **Pings.** Every node that is up and can reach the viewserver pings
//!   every interval, and at once when what it says or would learn changes
//!   (`views.rs`); the model lets the clock tick only once no node has such
//!   news ([`Protocol::has_news`]), and makes the pings that only say "alive"
//!   just before the tick (where in the interval they fall changes nothing).
//!   A node that is slow or partitioned from the viewserver is *cut off* (a
//!   fault): it pings nobody but keeps running, streaming and releasing,
//!   until it reconnects.
//! - **The network** may delay one ping or answer (a fault): it then
//!   arrives at any later point, after later pings of the same process
//!   (which it is then stale to), after the sender restarted or the
//!   viewserver did, or never (a loss). A duplicate is not modelled apart:
//!   its second copy is a stale ping (answered, not applied: a refresh) or
//!   an answer already heard.
//! - **The stream** carries entries in order (TCP); the backup acks each as
//!   it reaches its buffer, and the ack reaches the primary at once or, as a
//!   fault, later (after the backup fenced, say). The stream can break (a
//!   fault); the primary then sends its state again.
//! - **State transfer** is one step: the backup checks the offer as
//!   `check_offer` does (the primary its latest view names, the same view
//!   number; its view refreshed once if they differ), installs the
//!   primary's guest as `Replica { view }` and the primary counts it all as
//!   covered. **The fence**: once the backup's latest view no longer makes
//!   it that primary's backup, it receives and acks nothing more. Promoted,
//!   it goes live with everything it received.
//! - **Promotion on the backup's word** ([`Action::LosePrimary`]): a backup
//!   whose stream is gone (its primary crashed, the stream broke) fences it
//!   and pings `primary_lost`; the service then promotes it at once
//!   (`ViewService::primary_lost_by_backup`). Asking with the stream still
//!   open is a fault (a wrong suspicion). [`Protocol::without_fast_path`]
//!   leaves it out, for the properties that only hold without it.
//! - **Release** follows the release queue (`vmm/src/replication/release.rs`):
//!   what an ack or the installed state covers, everything while the view
//!   has no backup or its new backup has no state of it yet (until the
//!   transfer, which carries it all), and only while the lease holds. Output leaves as soon as
//!   it may (a later release of the same output shows the world nothing
//!   new; a primary that would speak late is caught by its gate being open,
//!   see the properties).
//! - **Faults**, at most `max_faults` of them in all: a node crashes (it may
//!   restart later, as a new incarnation, at no cost), is cut off, a ping or
//!   answer is delayed, an ack is delayed, a stream breaks, a backup's
//!   replay fails (it drops its replica), the viewserver restarts
//!   (`ViewService::restore` of what it persisted: the coordinator stores
//!   every change before answering, so a crash at any point is this).
//! - **The guest's end** ([`Ending`]): by default a guest's `max_pos`-th
//!   step is its last, as a test can ask for an end after any step. The
//!   primary logs an `End` entry after the last output entry (so a backup
//!   may hold all the output and not the end); a state sent after the end
//!   carries it. Once everything its guest said is released (the release
//!   rule above: the End entry need not be acked), the primary reports the
//!   end in every ping from then on, for the life of its process
//!   (`Views::report_end`), with its replication manager stopped: it sends
//!   no state and acknowledges no new view (`report_end`). A backup promoted
//!   with the end goes live finished: it releases what the world has not
//!   seen, then reports. A node that hears that the service recorded the end
//!   exits, for good. A report carries, as a ghost, whether the world had
//!   seen exactly its sender's ended history when it was sent.
//!
//! Ghost variables record what the world saw (`out`, position by position),
//! the highest view whose primary spoke, the views the service showed, and
//! the view and output at the time the service recorded the end.
//! Ping seqs are renumbered after every step, keeping their order
//! (`ViewService::renumber_applied_seq`), so that the state space is finite.
//!
//! Not modelled: more than three nodes; the viewserver losing its stored
//! state (a new service identity, which nodes do not believe); the
//! `Released` counts a backup hears (a promoted backup resumes releasing
//! where the world is, instead of repeating some bytes, so a promoted
//! backup with the end reports at once if the world saw everything); clocks
//! that drift by more than the lease's margin; how a guest ended (the rules
//! never look at it).
//!
//! Found by this check and fixed (`a_primary_reporting_the_end_acknowledges_a_new_view`):
//! a primary reporting the end did not acknowledge a view that named it
//! primary again (a backup co-opted or dropped meanwhile), so the end was
//! never recorded and the service waited forever.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use stateright::{Checker, Expectation, HasDiscoveries, Model, Property};
use viewserver::node::{self, Holding, Me, Step};
use viewserver::service::{Ping, service_hex};
use viewserver::{EndReason, GuestEnd, Status, View, ViewService};

const NAMES: [&str; 3] = ["a", "b", "c"];
const SERVICE: u64 = 1;
const DEAD_PINGS: u32 = 1;
/// Intervals a backup may stay unready before it is replaced (small, so that
/// the replacement is explored).
const BACKUP_TICKS: u32 = 2;
/// A primary's lease, in intervals from the one its ping was sent in (see the
/// module comment).
const LEASE: u8 = DEAD_PINGS as u8 + 1;
/// Pings and answers delayed in flight, in all.
const MAX_IN_FLIGHT: usize = 1;
/// Rounds of the fault-free schedule run from every state for liveness.
const FAIR_ROUNDS: usize = 12;
/// The `End` entry in a stream (run ids, the other entries, are view numbers: never this).
const END: u8 = u8::MAX;
/// How every guest ends in the model: the rules never look at how.
const HOW: GuestEnd = GuestEnd {
    reason: EndReason::PowerOff,
    code: 0,
};

/// One node rule broken on purpose, to show that the properties notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mutation {
    /// The release gate ignores the lease.
    ReleaseWithoutLease,
    /// Output keeps flowing after the state was taken for the view's new backup.
    FlowPastTheState,
    /// The lease lasts one interval more (as long as the detection time).
    LeaseTooLong,
    /// Output leaves before the backup holds it.
    ReleaseUncovered,
    /// Named primary of a view that is not fresh without holding its state,
    /// the node boots the guest afresh instead of waiting (`Stranded`).
    BootWhenStranded,
    /// The backup keeps acknowledging its old primary's entries after its
    /// latest view stopped making it that primary's backup (without keeping
    /// them: it went live or dropped its replica).
    AckAfterFence,
    /// The primary reports the end as soon as its guest ended, before everything it said was
    /// released.
    ReportBeforeReleased,
    /// The viewserver does not persist the end: a restarted one has forgotten it (emulated by
    /// restoring without it, since `service.rs` is what is checked).
    EndNotPersisted,
}

/// Where a guest may end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Its `max_pos`-th step is its last: the state space grows little, since a guest that
    /// reached `max_pos` did nothing more anyway; a backup may still receive the last output
    /// and not the end (two entries).
    WithLastStep,
    /// After any number of steps from this one on, as a step of its own: a live run that
    /// diverges after a failover may then end elsewhere, or not at all.
    From(usize),
    /// Never (for traces found before the end was modelled).
    Never,
}

/// What the liveness check did: states it ran the fair schedule from, and
/// the most rounds one needed.
#[derive(Debug, Default)]
struct LiveStats {
    checked: AtomicUsize,
    max_rounds: AtomicUsize,
}

#[derive(Debug, Clone)]
struct Protocol {
    /// Nodes (named "a", "b", "c").
    servers: usize,
    /// Views up to this number are explored.
    max_view: u64,
    /// Steps a guest executes at most.
    max_pos: usize,
    /// Where a guest may end.
    ending: Ending,
    /// Faults of every kind, together.
    max_faults: u8,
    mutations: Vec<Mutation>,
    /// Run the fault-free schedule from every state (liveness).
    liveness: bool,
    /// A backup whose stream from its primary is gone asks to be promoted at once (the fast
    /// path; on in the real system).
    fast_path: bool,
    stats: Arc<LiveStats>,
}

impl Protocol {
    fn new(servers: usize, max_view: u64, max_pos: usize, max_faults: u8) -> Self {
        Protocol {
            servers,
            max_view,
            max_pos,
            ending: Ending::WithLastStep,
            max_faults,
            mutations: Vec::new(),
            liveness: false,
            fast_path: true,
            stats: Arc::default(),
        }
    }

    fn mutated(mut self, m: Mutation) -> Self {
        self.mutations.push(m);
        self
    }

    fn ending(mut self, ending: Ending) -> Self {
        self.ending = ending;
        self
    }

    fn with_liveness(mut self) -> Self {
        self.liveness = true;
        self
    }

    /// Failover only by missed pings, as before the fast path: then a deposed primary's lease
    /// has always run out before its successor can speak.
    fn without_fast_path(mut self) -> Self {
        self.fast_path = false;
        self
    }

    fn is(&self, m: Mutation) -> bool {
        self.mutations.contains(&m)
    }

    fn lease(&self) -> u8 {
        if self.is(Mutation::LeaseTooLong) {
            LEASE + 1
        } else {
            LEASE
        }
    }

    fn lease_ignored(&self) -> bool {
        self.is(Mutation::ReleaseWithoutLease)
    }

    fn fence_ignored(&self) -> bool {
        self.is(Mutation::AckAfterFence)
    }
}

/// A primary's log stream to its backup.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Stream {
    to: usize,
    /// The backup process it was set up with.
    to_inc: u64,
    /// The view number of the state offer.
    view: u64,
    /// Position of the first entry in flight (1-based).
    next: usize,
    /// Entries sent, not yet in the backup's buffer ([`END`] for the guest's end).
    inflight: Vec<u8>,
    /// The backup's latest ack (a position) not yet read by the primary.
    ack: Option<usize>,
    /// The backup's end is gone (it dropped or handed over its replica, or
    /// the connection broke): nothing more is received, but an ack already
    /// sent may still arrive.
    closed: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Node {
    up: bool,
    incarnation: u64,
    seq: u64,
    latest: Option<View>,
    holding: Holding,
    /// The guest (Guest: executed; Replica: installed and received).
    content: Vec<u8>,
    /// Replica: the primary it was installed from.
    source: Option<usize>,
    /// Guest: the view in which this live run began (the id of its steps).
    run: u8,
    /// Intervals the lease still holds.
    lease: u8,
    /// Primary: the backup it follows (`None` before the first view).
    target: Option<Option<usize>>,
    /// Primary: no backup in the view, output flows.
    free_flow: bool,
    /// Primary: positions the backup holds (acked or installed).
    covered: usize,
    /// Primary: positions released.
    released: usize,
    stream: Option<Stream>,
    /// Cut off from the viewserver (not from the other nodes): its pings do
    /// not arrive, as if it were paused or partitioned.
    cut_off: bool,
    /// Ghost: its replay failed since it last installed a state.
    replay_failed: bool,
    /// The guest held ended (Guest: it executed its last step; Replica: the `End` entry
    /// arrived, or the state was taken after the end): it never executes again.
    ended: bool,
    /// Every ping reports the end (`Views::report_end`): set once the primary released
    /// everything its ended guest said, and kept for the life of the process.
    reporting: bool,
    /// Saw that the service recorded the end and exited: down for good.
    exited: bool,
    /// Ghost: went live with a replica that had the end.
    live_ended: bool,
    /// Backup: its stream from the primary of this view is gone and it fenced it; its pings
    /// ask to be promoted while that view is the latest it knows.
    lost: Option<u64>,
}

impl Node {
    fn new(incarnation: u64) -> Self {
        Node {
            up: true,
            incarnation,
            seq: 0,
            latest: None,
            holding: Holding::Nothing,
            content: Vec::new(),
            source: None,
            run: 0,
            lease: 0,
            target: None,
            free_flow: false,
            covered: 0,
            released: 0,
            stream: None,
            cut_off: false,
            replay_failed: false,
            ended: false,
            reporting: false,
            exited: false,
            live_ended: false,
            lost: None,
        }
    }

    fn me(&self, i: usize) -> Me<'static> {
        Me {
            name: NAMES[i],
            incarnation: self.incarnation,
        }
    }

    /// Forgets the guest (the primary's side too).
    fn clear(&mut self) {
        self.holding = Holding::Nothing;
        self.content.clear();
        self.source = None;
        self.run = 0;
        self.lease = 0;
        self.target = None;
        self.free_flow = false;
        self.covered = 0;
        self.released = 0;
        self.stream = None;
        self.ended = false;
        self.live_ended = false;
        self.lost = None;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Msg {
    Ping {
        incarnation: u64,
        seq: u64,
        viewnum: u64,
        holds: u64,
        /// The lease its answer would grant (intervals left since sending).
        lease: u8,
        /// It reports the end.
        finished: bool,
        /// Ghost, for a report: the length of the sender's ended history if the world had seen
        /// exactly that history when it was sent (a report may arrive after its sender died).
        complete: Option<usize>,
        /// A backup asks to be promoted: it lost its stream from this view's primary.
        lost: Option<u64>,
    },
    Reply {
        incarnation: u64,
        view: View,
        lease: u8,
        /// The service recorded the end.
        finished: bool,
    },
}

impl Msg {
    fn incarnation(&self) -> u64 {
        match self {
            Msg::Ping { incarnation, .. } | Msg::Reply { incarnation, .. } => *incarnation,
        }
    }

    fn lease_mut(&mut self) -> &mut u8 {
        match self {
            Msg::Ping { lease, .. } | Msg::Reply { lease, .. } => lease,
        }
    }
}

/// What the properties need and the system does not keep.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct Ghost {
    /// The output the world saw, position by position.
    out: Vec<u8>,
    /// The highest view whose primary released anything.
    speaker_view: u64,
    /// The last view the service showed.
    last_view: View,
    /// Some view was seen acknowledged.
    ever_acked: bool,
    /// The view the service showed when it recorded the end, and how much the world had seen.
    finished: Option<(View, usize)>,
    // Violations.
    contradiction: bool,
    prefix_broken: bool,
    deposed_spoke: bool,
    /// A deposed primary released something the world had not seen after its successor spoke.
    deposed_said_new: bool,
    view_rewritten: bool,
    primary_not_from_prev: bool,
    fresh_after_history: bool,
    /// The end was recorded on a report sent before the world saw the whole ended history.
    finished_incomplete: bool,
    // Witnesses for `sometimes`.
    vs_restart_mid_change: bool,
    restarted_backup: bool,
    reinstalled_after_failure: bool,
    stale_boot: bool,
    /// A backup promoted with the end replayed reported it.
    promoted_reported_end: bool,
    /// A deposed primary released (repeated) output after its successor spoke.
    deposed_repeated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct State {
    vs: ViewService,
    nodes: Vec<Node>,
    /// Messages in flight, per node: its pings and their answers.
    net: Vec<Vec<Msg>>,
    faults: u8,
    g: Ghost,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Action {
    /// The node pings and hears the answer (one round trip).
    Ping(usize),
    /// The node pings; the ping stays on its way (it may arrive after later
    /// ones, or never).
    PingDelayed(usize),
    /// The node pings; the viewserver applies it, the answer stays on its way.
    AnswerDelayed(usize),
    /// A message in flight of node `.0` arrives (a ping at the viewserver,
    /// whose answer then arrives too; an answer at the node).
    Deliver(usize, usize),
    /// A message in flight never arrives.
    Lose(usize, usize),
    Tick,
    /// The node can no longer reach the viewserver (a fault).
    CutOff(usize),
    /// It can again.
    Reconnect(usize),
    /// The primary's guest executes a step (which outputs).
    Exec(usize),
    /// The primary's guest ends (powers off): it logs the `End` entry and executes no more.
    End(usize),
    /// The primary sends its state to its view's backup.
    Transfer(usize),
    /// The next entry of the primary's stream reaches its backup's buffer,
    /// and the backup's ack reaches the primary.
    Receive(usize),
    /// The same, but the ack stays on its way (a fault).
    ReceiveAckDelayed(usize),
    /// The backup's delayed ack reaches the primary.
    Ack(usize),
    Crash(usize),
    Restart(usize),
    BreakStream(usize),
    ReplayFails(usize),
    /// The backup's stream from its primary is gone (or, as a fault, it wrongly thinks so: a
    /// heartbeat missed under load): it fences that primary and asks to be promoted.
    LosePrimary(usize),
    RestartViewserver,
}

fn idx(name: &str) -> Option<usize> {
    NAMES.iter().position(|n| *n == name)
}

fn status(view: &View) -> Status {
    static HEX: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| service_hex(SERVICE));
    Status {
        view: view.clone(),
        service: HEX.clone(),
        ..Status::default()
    }
}

/// Whether `v` makes node `b` (incarnation `inc`) the backup of `primary`:
/// the fence of `src/node/backup.rs` (`backs_up`).
fn backs_up(v: Option<&View>, primary: usize, b: usize, inc: u64) -> bool {
    v.is_some_and(|v| v.primary == NAMES[primary] && v.is_backup(NAMES[b], inc))
}

impl State {
    /// Records what the service shows after every step it takes.
    fn observe(&mut self) {
        let v = &self.vs.persisted().view;
        let g = &mut self.g;
        let last = g.last_view.viewnum;
        if v.viewnum == last {
            if *v != g.last_view {
                g.view_rewritten = true;
            }
        } else if v.viewnum == last + 1 {
            let prev = &g.last_view;
            if v.fresh {
                if g.ever_acked || !g.out.is_empty() {
                    g.fresh_after_history = true;
                }
            } else if !(prev.is_primary(&v.primary, v.primary_incarnation)
                || prev.is_backup(&v.primary, v.primary_incarnation))
            {
                g.primary_not_from_prev = true;
            }
            if v.backup_incarnation > 1 {
                g.restarted_backup = true;
            }
            g.last_view = v.clone();
        } else {
            g.view_rewritten = true;
        }
        if self.vs.primary_acked() {
            g.ever_acked = true;
        }
        if g.finished.is_none() && self.vs.finished().is_some() {
            g.finished = Some((v.clone(), g.out.len()));
        }
    }

    /// Closes every stream into node `b` (its end is gone).
    fn close_streams_into(&mut self, b: usize) {
        for n in &mut self.nodes {
            if let Some(s) = n.stream.as_mut()
                && s.to == b
            {
                s.closed = true;
                s.inflight.clear();
            }
        }
    }

    /// Renumbers ping seqs (keeping their order per incarnation) and drops
    /// answers that can no longer change anything, so that states that
    /// behave alike are equal.
    fn normalise(&mut self) {
        for (i, name) in NAMES.iter().enumerate().take(self.nodes.len()) {
            let vs_inc = self.vs.incarnation(name);
            let mut incs = vec![self.nodes[i].incarnation];
            incs.extend(vs_inc);
            incs.extend(self.net[i].iter().map(Msg::incarnation));
            incs.sort_unstable();
            incs.dedup();
            for x in incs {
                let mut vals = Vec::with_capacity(4);
                if self.nodes[i].incarnation == x {
                    vals.push(self.nodes[i].seq);
                }
                for m in &self.net[i] {
                    if let Msg::Ping {
                        incarnation, seq, ..
                    } = m
                        && *incarnation == x
                    {
                        vals.push(*seq);
                    }
                }
                if vs_inc == Some(x) {
                    vals.push(self.vs.applied_seq(name).unwrap());
                }
                vals.sort_unstable();
                vals.dedup();
                // 0 (nothing sent or applied yet) stays 0.
                let base = u64::from(vals[0] != 0);
                let rank = |v: u64| vals.iter().position(|w| *w == v).unwrap() as u64 + base;
                if self.nodes[i].incarnation == x {
                    self.nodes[i].seq = rank(self.nodes[i].seq);
                }
                for m in &mut self.net[i] {
                    if let Msg::Ping {
                        incarnation, seq, ..
                    } = m
                        && *incarnation == x
                    {
                        *seq = rank(*seq);
                    }
                }
                if vs_inc == Some(x) {
                    let r = rank(self.vs.applied_seq(name).unwrap());
                    self.vs.renumber_applied_seq(name, r);
                }
            }
            // An answer that can no longer change anything is dropped: one
            // for a process that is gone, one older than what the node knows
            // (not believed), or the view it knows without a longer lease
            // (its lease ticks down as the node's does) or the end.
            let n = &self.nodes[i];
            self.net[i].retain(|m| match m {
                Msg::Ping { .. } => true,
                Msg::Reply {
                    incarnation,
                    view,
                    lease,
                    finished,
                } => {
                    n.up && *incarnation == n.incarnation
                        && match &n.latest {
                            None => true,
                            Some(l) => {
                                view.viewnum > l.viewnum
                                    || (view.viewnum == l.viewnum
                                        && (view != l
                                            || *finished
                                            || (*lease > n.lease
                                                && view.is_primary(NAMES[i], n.incarnation))))
                            }
                        }
                }
            });
        }
    }
}

impl Protocol {
    fn init(&self) -> State {
        State {
            vs: ViewService::new(SERVICE, DEAD_PINGS, BACKUP_TICKS),
            nodes: (0..self.servers).map(|_| Node::new(1)).collect(),
            net: vec![Vec::new(); self.servers],
            faults: 0,
            g: Ghost::default(),
        }
    }

    /// Node `i` received `view` (with a lease of `lease` intervals, 0: none;
    /// `finished`: the service recorded the end): `views.rs`'s `update`,
    /// then the role loop's reaction.
    fn learn(&self, s: &mut State, i: usize, view: View, lease: u8, finished: bool) {
        let n = &mut s.nodes[i];
        let latest = n.latest.as_ref().map(status);
        if !node::believe(latest.as_ref(), &status(&view)) {
            return;
        }
        if finished {
            // Every role returns on seeing it (`roles`, `backup::serve`, `report_end`)
            // and the process exits: nothing is left to fail over to it.
            let inc = n.incarnation;
            s.nodes[i] = Node {
                up: false,
                exited: true,
                ..Node::new(inc)
            };
            s.net[i].retain(|m| matches!(m, Msg::Ping { .. }));
            s.close_streams_into(i);
            return;
        }
        if lease > 0 && view.is_primary(NAMES[i], n.incarnation) {
            n.lease = n.lease.max(lease);
        }
        n.latest = Some(view);
        self.react(s, i);
    }

    /// What node `i` does with its latest view: [`node::step`], then
    /// [`node::after`].
    fn react(&self, s: &mut State, i: usize) {
        let n = &s.nodes[i];
        let Some(view) = n.latest.clone() else {
            return;
        };
        let holding = n.holding;
        let mut step = node::step(holding, &view, n.me(i));
        if self.is(Mutation::BootWhenStranded) && step == Step::Stranded {
            step = Step::Boot;
        }
        match step {
            Step::Boot | Step::GoLive => {
                // A replica with the end goes live finished: it only releases and reports.
                let ended = step == Step::GoLive && s.nodes[i].ended;
                let content = if step == Step::Boot {
                    Vec::new()
                } else {
                    // Everything received: the fence closes its stream.
                    let c = s.nodes[i].content.clone();
                    if !self.fence_ignored() {
                        s.close_streams_into(i);
                    }
                    c
                };
                let current = s.vs.persisted().view.viewnum == view.viewnum;
                let g = &mut s.g;
                if content.len() < g.out.len() || content[..g.out.len()] != g.out[..] {
                    if current || step == Step::GoLive {
                        g.prefix_broken = true;
                    } else {
                        // Booted on an answer so late that the service had
                        // already replaced this fresh view: such a guest can
                        // never get a lease (no later view names it primary
                        // unless fresh, when nothing was released), so it
                        // never speaks; "no contradiction" checks that.
                        g.stale_boot = true;
                    }
                }
                let released = g.out.len().min(content.len());
                let n = &mut s.nodes[i];
                n.clear();
                n.content = content;
                n.released = released;
                n.ended = ended;
                n.live_ended = ended;
                n.run = view.viewnum as u8;
                n.holding = node::after(holding, step, &view);
                self.manage(s, i, &view);
            }
            Step::Serve if s.nodes[i].reporting => {
                // `report_end` runs after the replication manager stopped: it acknowledges
                // a view that names it primary again itself (`set_holding`), but starts no
                // transfer (everything is released; its next ping records the end).
                s.nodes[i].holding = node::after(holding, step, &view);
            }
            Step::Serve => {
                s.nodes[i].holding = node::after(holding, step, &view);
                self.manage(s, i, &view);
            }
            Step::Backup { keep: true } => {}
            Step::StepDown | Step::Backup { keep: false } | Step::Idle | Step::Stranded => {
                let had_replica = matches!(holding, Holding::Replica { .. });
                let n = &mut s.nodes[i];
                n.clear();
                n.holding = node::after(holding, step, &view);
                if had_replica && !self.fence_ignored() {
                    s.close_streams_into(i);
                }
            }
        }
    }

    /// The primary's replication manager on view `view`: a new backup (by
    /// name) means a new transfer; no backup, free flow.
    fn manage(&self, s: &mut State, p: usize, view: &View) {
        let want = idx(&view.backup);
        let n = &mut s.nodes[p];
        if n.target != Some(want) {
            n.target = Some(want);
            n.stream = None;
            // No backup, or a new one that holds nothing of this view: output flows until
            // the state is taken (`Replication::begin_transfer`), which carries it all.
            n.free_flow = true;
        }
    }

    fn tick(&self, s: &mut State) {
        s.vs.tick();
        s.observe();
        for n in &mut s.nodes {
            n.lease = n.lease.saturating_sub(1);
        }
        for m in s.net.iter_mut().flatten() {
            let l = m.lease_mut();
            *l = l.saturating_sub(1);
        }
    }

    /// Node `i`'s next ping.
    fn make_ping(&self, s: &mut State, i: usize) -> Msg {
        let n = &mut s.nodes[i];
        n.seq += 1;
        let (viewnum, holds) = node::ping_fields(n.holding, n.latest.as_ref());
        let complete = (n.reporting && n.content == s.g.out).then_some(n.content.len());
        let lost = n
            .lost
            .filter(|v| n.latest.as_ref().is_some_and(|l| l.viewnum == *v));
        Msg::Ping {
            incarnation: n.incarnation,
            seq: n.seq,
            viewnum,
            holds,
            lease: self.lease(),
            finished: n.reporting,
            complete,
            lost,
        }
    }

    /// The viewserver applies a ping from node `i`; its answer, if anyone
    /// is there to hear it.
    fn apply_ping(&self, s: &mut State, i: usize, ping: Msg) -> Option<Msg> {
        let Msg::Ping {
            incarnation,
            seq,
            viewnum,
            holds,
            lease,
            finished,
            complete,
            lost,
        } = ping
        else {
            return Some(ping);
        };
        let recorded = s.vs.finished().is_some();
        let r = s.vs.ping(&Ping {
            server: NAMES[i],
            incarnation: Some(incarnation),
            seq: Some(seq),
            viewnum,
            holds: Some(holds),
            finished: finished.then_some(HOW),
            primary_lost: lost,
        });
        if !recorded && s.vs.finished().is_some() {
            if complete != Some(s.g.out.len()) {
                s.g.finished_incomplete = true;
            }
            let n = &s.nodes[i];
            if n.incarnation == incarnation && n.live_ended {
                s.g.promoted_reported_end = true;
            }
        }
        s.observe();
        let n = &s.nodes[i];
        let r = r.ok()?;
        (n.up && n.incarnation == incarnation).then_some(Msg::Reply {
            incarnation,
            view: r.status.view,
            lease: if r.lease { lease } else { 0 },
            finished: r.status.finished.is_some(),
        })
    }

    /// Node `i` hears an answer.
    fn hear(&self, s: &mut State, i: usize, reply: Msg) {
        if let Msg::Reply {
            incarnation,
            view,
            lease,
            finished,
        } = reply
        {
            let n = &s.nodes[i];
            if n.up && n.incarnation == incarnation {
                self.learn(s, i, view, lease, finished);
            }
        }
    }

    /// Message `k` of node `i` arrives (a ping's answer at once).
    fn deliver(&self, s: &mut State, i: usize, k: usize) {
        let m = s.net[i].remove(k);
        if let Some(r) = self.apply_ping(s, i, m) {
            self.hear(s, i, r);
        }
    }

    /// Whether node `i`'s ping now would change anything but the time of
    /// its last ping: tell the viewserver something (an ack, readiness, that
    /// it is alive again or a new incarnation), or teach the node something
    /// (a view, a lease). Such pings happen before the interval ends (a node
    /// pings at once when what it says changes, and every interval); a node
    /// that cannot is cut off (a fault). Other pings only keep it alive, and
    /// are made just before the tick.
    fn has_news(&self, s: &State, i: usize) -> bool {
        let n = &s.nodes[i];
        if !n.up || n.cut_off {
            return false;
        }
        let v = &s.vs.persisted().view;
        if n.latest.as_ref() != Some(v) || s.vs.finished().is_some() {
            return true;
        }
        let name = NAMES[i];
        if s.vs.incarnation(name) != Some(n.incarnation) || !s.vs.is_alive(name) {
            return true;
        }
        // What the ping would change at the service (`ViewService::ping`).
        // The view itself cannot change: `advance` already ran on this
        // state (or, just restored, has nothing to do: the members count as
        // alive and nobody else is known), and a ping from a live server
        // that changes neither the ack nor readiness leaves its inputs as
        // they were. `news_shortcut_matches_running_the_ping` checks this.
        let (viewnum, holds) = node::ping_fields(n.holding, n.latest.as_ref());
        if v.is_primary(name, n.incarnation) {
            let acks = !s.vs.primary_acked() && viewnum == v.viewnum && holds == v.viewnum;
            let renews = s.vs.primary_acked() && n.lease < self.lease();
            let reports = n.reporting && s.vs.primary_acked() && holds == v.viewnum;
            acks || renews || reports
        } else {
            let ready = holds == v.viewnum;
            // A ready backup's request to be promoted, while the service still counts the
            // primary alive.
            let promotes = n.lost == Some(v.viewnum)
                && ready
                && s.vs.primary_acked()
                && s.vs.is_alive(&v.primary)
                && s.vs.incarnation(&v.primary) == Some(v.primary_incarnation);
            v.is_backup(name, n.incarnation)
                && viewnum == v.viewnum
                && (ready != s.vs.backup_ready() || promotes)
        }
    }

    /// [`Self::has_news`] by running the ping on a copy (to check it).
    fn has_news_exact(&self, s: &State, i: usize) -> bool {
        let n = &s.nodes[i];
        if !n.up || n.cut_off {
            return false;
        }
        let mut t = s.clone();
        self.round_trip(&mut t, i);
        let name = NAMES[i];
        t.nodes[i].seq = n.seq;
        t.vs.persisted() != s.vs.persisted()
            || t.vs.is_alive(name) != s.vs.is_alive(name)
            || t.vs.incarnation(name) != s.vs.incarnation(name)
            || t.nodes[i] != *n
            || t.g != s.g
    }

    /// One ping round trip of node `i`.
    fn round_trip(&self, s: &mut State, i: usize) {
        let ping = self.make_ping(s, i);
        if let Some(r) = self.apply_ping(s, i, ping) {
            self.hear(s, i, r);
        }
    }

    /// What primary `p` may release now, if more than it did.
    fn releasable(&self, s: &State, p: usize) -> Option<usize> {
        let n = &s.nodes[p];
        if !n.up || !matches!(n.holding, Holding::Guest { .. }) {
            return None;
        }
        if n.lease == 0 && !self.lease_ignored() {
            return None;
        }
        let q = if n.free_flow || self.is(Mutation::ReleaseUncovered) {
            n.content.len()
        } else {
            n.covered.min(n.content.len())
        };
        (q > n.released).then_some(q)
    }

    fn release(&self, s: &mut State, p: usize, q: usize) {
        let n = &mut s.nodes[p];
        let Holding::Guest { view } = n.holding else {
            return;
        };
        let g = &mut s.g;
        if view < g.speaker_view {
            g.deposed_spoke = true;
            g.deposed_repeated = true;
            if q > g.out.len() {
                g.deposed_said_new = true;
            }
        }
        for k in n.released..q {
            if k < g.out.len() {
                if g.out[k] != n.content[k] {
                    g.contradiction = true;
                }
            } else {
                g.out.push(n.content[k]);
            }
        }
        n.released = q;
        g.speaker_view = g.speaker_view.max(view);
    }

    /// Whether backup `b` may ask to be promoted (`backup::serve` once its stream ended): it
    /// holds the replica of the view it knows, which makes it its source's backup, and has not
    /// asked yet. `Some(true)` if the stream is still open (asking is then a fault: a wrong
    /// suspicion), `Some(false)` if it is gone.
    fn may_lose_primary(&self, s: &State, b: usize) -> Option<bool> {
        let n = &s.nodes[b];
        if !self.fast_path || !n.up {
            return None;
        }
        let Holding::Replica { view } = n.holding else {
            return None;
        };
        let p = n.source?;
        let knows = n.latest.as_ref().is_some_and(|l| l.viewnum == view);
        if !knows || !backs_up(n.latest.as_ref(), p, b, n.incarnation) || n.lost == Some(view) {
            return None;
        }
        let pn = &s.nodes[p];
        Some(
            pn.up
                && pn
                    .stream
                    .as_ref()
                    .is_some_and(|st| st.to == b && st.to_inc == n.incarnation && !st.closed),
        )
    }

    /// The backup `p`'s state goes to, if `p` would send it now.
    fn transfer_target(&self, s: &State, p: usize) -> Option<usize> {
        let n = &s.nodes[p];
        if !n.up || !matches!(n.holding, Holding::Guest { .. }) {
            return None;
        }
        if n.stream.as_ref().is_some_and(|st| !st.closed) || n.reporting {
            return None;
        }
        let b = n.target??;
        s.nodes[b].up.then_some(b)
    }

    /// Primary `p` offers its state to backup `b`: `check_offer` at the
    /// backup (refreshing its view once if it does not match), then the
    /// install. Returns whether anything changed.
    fn transfer(&self, s: &mut State, p: usize, b: usize) -> bool {
        let offer = s.nodes[p].latest.as_ref().unwrap().viewnum;
        let is_backup_role = |s: &State| {
            let n = &s.nodes[b];
            n.latest
                .as_ref()
                .is_some_and(|v| matches!(node::step(n.holding, v, n.me(b)), Step::Backup { .. }))
        };
        let ok = |s: &State| {
            let n = &s.nodes[b];
            n.latest.as_ref().is_some_and(|v| v.viewnum == offer)
                && backs_up(n.latest.as_ref(), p, b, n.incarnation)
        };
        if !is_backup_role(s) {
            // Not listening for a state (`backup::serve` is not running).
            return false;
        }
        if !ok(s) {
            let before = s.nodes[b].clone();
            let current = s.vs.view();
            let finished = s.vs.finished().is_some();
            self.learn(s, b, current, 0, finished);
            if !is_backup_role(s) || !ok(s) {
                return s.nodes[b] != before;
            }
        }
        s.close_streams_into(b);
        let content = s.nodes[p].content.clone();
        let ended = s.nodes[p].ended;
        let bn = &mut s.nodes[b];
        if bn.replay_failed {
            s.g.reinstalled_after_failure = true;
            bn.replay_failed = false;
        }
        bn.holding = Holding::Replica { view: offer };
        bn.lost = None;
        bn.content = content.clone();
        bn.ended = ended;
        bn.source = Some(p);
        let to_inc = bn.incarnation;
        let pn = &mut s.nodes[p];
        pn.stream = Some(Stream {
            to: b,
            to_inc,
            view: offer,
            next: content.len() + 1,
            inflight: Vec::new(),
            ack: None,
            closed: false,
        });
        pn.covered = pn.covered.max(content.len());
        if !self.is(Mutation::FlowPastTheState) {
            pn.free_flow = false;
        }
        true
    }

    /// What happens to the next entry of `p`'s stream at its backup:
    /// `Some(true)` kept and acked, `Some(false)` acked only (a backup that
    /// ignores the fence), `None` not received.
    fn receivable(&self, s: &State, p: usize) -> Option<bool> {
        let st = s.nodes[p].stream.as_ref()?;
        if st.inflight.is_empty() {
            return None;
        }
        let b = &s.nodes[st.to];
        if !b.up || b.incarnation != st.to_inc {
            return None;
        }
        let fenced = !backs_up(b.latest.as_ref(), p, st.to, b.incarnation);
        let holds = b.holding == Holding::Replica { view: st.view } && b.source == Some(p);
        if st.closed && !self.fence_ignored() {
            return None;
        }
        if holds && !fenced {
            Some(true)
        } else if self.fence_ignored() {
            Some(false)
        } else {
            None
        }
    }

    fn receive(&self, s: &mut State, p: usize, keep: bool) {
        let st = s.nodes[p].stream.as_mut().unwrap();
        let entry = st.inflight.remove(0);
        let pos = st.next;
        st.next += 1;
        st.ack = Some(pos);
        let b = st.to;
        if keep {
            if entry == END {
                s.nodes[b].ended = true;
            } else {
                s.nodes[b].content.push(entry);
            }
        }
    }

    /// Primaries whose ended guest's output is all released report the end from now on
    /// (`release_all`, then `report_end`).
    fn settle(&self, s: &mut State) {
        for p in 0..s.nodes.len() {
            if let Some(q) = self.releasable(s, p) {
                self.release(s, p, q);
            }
            let n = &mut s.nodes[p];
            let done = n.released >= n.content.len() || self.is(Mutation::ReportBeforeReleased);
            if n.up && n.ended && matches!(n.holding, Holding::Guest { .. }) && done {
                n.reporting = true;
            }
        }
    }

    /// The fault-free fair schedule from `s`: the viewserver stays up, every
    /// message is delivered, every up node pings and hears back, transfers
    /// complete, entries and acks arrive, and the clock ticks. The number of
    /// rounds until an acknowledged view's primary holds the guest and a
    /// lease (or the end recorded); the state it ends in if that never happens
    /// within [`FAIR_ROUNDS`].
    fn fair_run(&self, s: &State) -> Result<usize, Box<State>> {
        if served(s) {
            return Ok(0);
        }
        let mut s = s.clone();
        for n in &mut s.nodes {
            n.cut_off = false;
        }
        for round in 0..FAIR_ROUNDS {
            self.deliver_all(&mut s);
            for i in 0..s.nodes.len() {
                if s.nodes[i].up {
                    self.round_trip(&mut s, i);
                }
            }
            for p in 0..s.nodes.len() {
                if let Some(b) = self.transfer_target(&s, p) {
                    self.transfer(&mut s, p, b);
                }
                while let Some(keep) = self.receivable(&s, p) {
                    self.receive(&mut s, p, keep);
                }
                if let Some(st) = s.nodes[p].stream.as_mut()
                    && let Some(a) = st.ack.take()
                {
                    s.nodes[p].covered = s.nodes[p].covered.max(a);
                }
            }
            self.settle(&mut s);
            if served(&s) {
                return Ok(round + 1);
            }
            self.tick(&mut s);
        }
        Err(Box::new(s))
    }

    fn deliver_all(&self, s: &mut State) {
        for i in 0..s.nodes.len() {
            while !s.net[i].is_empty() {
                self.deliver(s, i, 0);
            }
        }
    }
}

/// An acknowledged view whose primary runs the guest with a lease; or, for
/// a guest that ended, the end recorded (which grants no more leases).
fn served(s: &State) -> bool {
    if s.vs.finished().is_some() {
        return true;
    }
    if ended_held(s) {
        return false;
    }
    let v = &s.vs.persisted().view;
    s.vs.primary_acked()
        && idx(&v.primary).is_some_and(|p| {
            let n = &s.nodes[p];
            n.up && n.incarnation == v.primary_incarnation
                && n.holding == Holding::Guest { view: v.viewnum }
                && n.lease > 0
        })
}

/// Primary `n`'s guest ends: it logs the `End` entry and executes no more.
fn end(n: &mut Node) {
    n.ended = true;
    if let Some(st) = n.stream.as_mut()
        && !st.closed
    {
        st.inflight.push(END);
    }
}

/// The current view's primary (up) runs a guest that ended, or its backup
/// (up) holds this view's replica with the end: the end must be recorded.
fn ended_held(s: &State) -> bool {
    let v = &s.vs.persisted().view;
    let primary = idx(&v.primary).is_some_and(|p| {
        let n = &s.nodes[p];
        n.up && n.incarnation == v.primary_incarnation
            && matches!(n.holding, Holding::Guest { .. })
            && n.ended
    });
    let backup = idx(&v.backup).is_some_and(|b| {
        let n = &s.nodes[b];
        n.up && n.incarnation == v.backup_incarnation
            && n.holding == Holding::Replica { view: v.viewnum }
            && n.ended
    });
    primary || backup
}

/// The liveness obligation holds in `s`: the current view's primary is up
/// and runs the guest, or its backup is up and holds this view's replica.
fn someone_holds_the_state(s: &State) -> bool {
    let v = &s.vs.persisted().view;
    let primary = idx(&v.primary).is_some_and(|p| {
        let n = &s.nodes[p];
        n.up && n.incarnation == v.primary_incarnation && matches!(n.holding, Holding::Guest { .. })
    });
    let backup = idx(&v.backup).is_some_and(|b| {
        let n = &s.nodes[b];
        n.up && n.incarnation == v.backup_incarnation
            && n.holding == Holding::Replica { view: v.viewnum }
    });
    primary || backup
}

impl Model for Protocol {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.init()]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        let can_fault = s.faults < self.max_faults;
        let news: Vec<bool> = (0..s.nodes.len()).map(|i| self.has_news(s, i)).collect();
        if !news.contains(&true) {
            actions.push(Action::Tick);
        }
        if can_fault {
            actions.push(Action::RestartViewserver);
        }
        let room = s.net.iter().map(Vec::len).sum::<usize>() < MAX_IN_FLIGHT;
        for (i, (n, news)) in s.nodes.iter().zip(news).enumerate() {
            if n.up && n.cut_off {
                actions.push(Action::Reconnect(i));
            }
            if news {
                actions.push(Action::Ping(i));
            }
            if n.up && !n.cut_off && can_fault {
                actions.push(Action::CutOff(i));
                if room {
                    actions.push(Action::PingDelayed(i));
                    actions.push(Action::AnswerDelayed(i));
                }
            }
            for k in 0..s.net[i].len() {
                actions.push(Action::Deliver(i, k));
                actions.push(Action::Lose(i, k));
            }
            if !n.up {
                if !n.exited {
                    actions.push(Action::Restart(i));
                }
                continue;
            }
            if matches!(n.holding, Holding::Guest { .. }) && !n.ended {
                if n.content.len() < self.max_pos {
                    actions.push(Action::Exec(i));
                }
                if let Ending::From(k) = self.ending
                    && n.content.len() >= k
                {
                    actions.push(Action::End(i));
                }
            }
            if self.transfer_target(s, i).is_some() {
                actions.push(Action::Transfer(i));
            }
            if self.receivable(s, i).is_some() {
                actions.push(Action::Receive(i));
                if can_fault {
                    actions.push(Action::ReceiveAckDelayed(i));
                }
            }
            if n.stream.as_ref().is_some_and(|st| st.ack.is_some()) {
                actions.push(Action::Ack(i));
            }
            if let Some(open) = self.may_lose_primary(s, i)
                && (!open || can_fault)
            {
                actions.push(Action::LosePrimary(i));
            }
            if can_fault {
                actions.push(Action::Crash(i));
                if n.stream.as_ref().is_some_and(|st| !st.closed) {
                    actions.push(Action::BreakStream(i));
                }
                if matches!(n.holding, Holding::Replica { .. }) {
                    actions.push(Action::ReplayFails(i));
                }
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Tick => {
                // Every node that can reach the viewserver pinged during
                // the interval; with nothing new to say or learn, where in
                // the interval does not matter: just before the tick.
                for i in 0..s.nodes.len() {
                    if s.nodes[i].up && !s.nodes[i].cut_off {
                        self.round_trip(&mut s, i);
                    }
                }
                self.tick(&mut s);
            }
            Action::RestartViewserver => {
                if !s.vs.primary_acked() && s.vs.persisted().view.viewnum > 1 {
                    s.g.vs_restart_mid_change = true;
                }
                let mut p = s.vs.persisted().clone();
                if self.is(Mutation::EndNotPersisted) {
                    p.finished = None;
                }
                s.vs = ViewService::restore(p, DEAD_PINGS, BACKUP_TICKS);
                s.observe();
                s.faults += 1;
            }
            Action::Ping(i) => self.round_trip(&mut s, i),
            Action::PingDelayed(i) => {
                let ping = self.make_ping(&mut s, i);
                s.net[i].push(ping);
                s.faults += 1;
            }
            Action::AnswerDelayed(i) => {
                let ping = self.make_ping(&mut s, i);
                if let Some(r) = self.apply_ping(&mut s, i, ping) {
                    s.net[i].push(r);
                }
                s.faults += 1;
            }
            Action::Deliver(i, k) => self.deliver(&mut s, i, k),
            Action::Lose(i, k) => {
                s.net[i].remove(k);
            }
            Action::Exec(p) => {
                let n = &mut s.nodes[p];
                let run = n.run;
                n.content.push(run);
                if let Some(st) = n.stream.as_mut()
                    && !st.closed
                {
                    st.inflight.push(run);
                }
                if self.ending == Ending::WithLastStep && n.content.len() == self.max_pos {
                    end(n);
                }
            }
            Action::End(p) => end(&mut s.nodes[p]),
            Action::Transfer(p) => {
                let b = self.transfer_target(&s, p)?;
                if !self.transfer(&mut s, p, b) {
                    return None;
                }
            }
            Action::Receive(p) => {
                let keep = self.receivable(&s, p)?;
                self.receive(&mut s, p, keep);
                let n = &mut s.nodes[p];
                let a = n.stream.as_mut()?.ack.take()?;
                n.covered = n.covered.max(a);
            }
            Action::ReceiveAckDelayed(p) => {
                let keep = self.receivable(&s, p)?;
                self.receive(&mut s, p, keep);
                s.faults += 1;
            }
            Action::CutOff(i) => {
                s.nodes[i].cut_off = true;
                s.faults += 1;
            }
            Action::Reconnect(i) => s.nodes[i].cut_off = false,
            Action::Ack(p) => {
                let n = &mut s.nodes[p];
                let a = n.stream.as_mut()?.ack.take()?;
                n.covered = n.covered.max(a);
            }
            Action::Crash(i) => {
                let inc = s.nodes[i].incarnation;
                s.nodes[i] = Node {
                    up: false,
                    ..Node::new(inc)
                };
                // Answers to a dead process go nowhere; its pings may still
                // arrive.
                s.net[i].retain(|m| matches!(m, Msg::Ping { .. }));
                s.close_streams_into(i);
                s.faults += 1;
            }
            Action::Restart(i) => {
                let inc = s.nodes[i].incarnation + 1;
                s.nodes[i] = Node::new(inc);
            }
            Action::BreakStream(p) => {
                let st = s.nodes[p].stream.as_mut()?;
                st.closed = true;
                st.inflight.clear();
                st.ack = None;
                s.faults += 1;
            }
            Action::LosePrimary(b) => {
                let open = self.may_lose_primary(&s, b)?;
                let Holding::Replica { view } = s.nodes[b].holding else {
                    return None;
                };
                s.nodes[b].lost = Some(view);
                if !self.fence_ignored() {
                    s.close_streams_into(b);
                }
                if open {
                    s.faults += 1;
                }
            }
            Action::ReplayFails(b) => {
                let n = &mut s.nodes[b];
                n.holding = Holding::Nothing;
                n.content.clear();
                n.ended = false;
                n.source = None;
                n.replay_failed = true;
                s.close_streams_into(b);
                s.faults += 1;
            }
        }
        // Output leaves as soon as it may: a release delayed is the same
        // release made earlier as far as what the world sees is concerned,
        // and a late speaker is caught by its open gate (see the property).
        // Likewise the end is reported as soon as it may be.
        self.settle(&mut s);
        s.normalise();
        Some(s)
    }

    fn within_boundary(&self, s: &State) -> bool {
        s.vs.persisted().view.viewnum <= self.max_view
    }

    fn properties(&self) -> Vec<Property<Self>> {
        let mut p = vec![
            Property::always("no contradiction", |_, s: &State| !s.g.contradiction),
            Property::always("prefix", |_, s: &State| !s.g.prefix_broken),
            Property::always(
                "a deposed primary never says anything new",
                |m: &Protocol, s: &State| {
                    !s.g.deposed_said_new
                        && (0..s.nodes.len()).all(|i| match s.nodes[i].holding {
                            Holding::Guest { view } if view < s.g.speaker_view => {
                                m.releasable(s, i).is_none_or(|q| q <= s.g.out.len())
                            }
                            _ => true,
                        })
                },
            ),
            Property::always(
                "a view number is never shown with two contents",
                |_, s: &State| !s.g.view_rewritten,
            ),
            Property::always(
                "the new primary was primary or backup of the view before",
                |_, s: &State| !s.g.primary_not_from_prev,
            ),
            Property::always(
                "a fresh view only while nothing was acked or released",
                |_, s: &State| !s.g.fresh_after_history,
            ),
            Property::always("primary differs from backup", |_, s: &State| {
                let v = &s.vs.persisted().view;
                v.backup.is_empty() || v.backup != v.primary
            }),
            Property::always(
                "the end is recorded only once the world saw the whole ended history",
                |_, s: &State| !s.g.finished_incomplete,
            ),
            Property::always(
                "no view changes once the end is recorded",
                |_, s: &State| {
                    s.g.finished
                        .as_ref()
                        .is_none_or(|(v, _)| s.vs.persisted().view == *v)
                },
            ),
            Property::always(
                "nothing is output once the end is recorded",
                |_, s: &State| {
                    s.g.finished
                        .as_ref()
                        .is_none_or(|(_, out)| s.g.out.len() == *out)
                },
            ),
            Property::sometimes("the end is recorded", |_, s: &State| {
                s.vs.finished().is_some()
            }),
            Property::sometimes(
                "a backup promoted with the end reports it",
                |_, s: &State| s.g.promoted_reported_end,
            ),
            Property::sometimes(
                "failover with output released before and after",
                // Released steps of two live runs: a run begins at a fresh
                // boot (when nothing was released) or at a failover.
                |_, s: &State| s.g.out.windows(2).any(|w| w[0] != w[1]),
            ),
            Property::sometimes(
                "viewserver restart in the middle of a view change",
                |_, s: &State| s.g.vs_restart_mid_change,
            ),
            Property::sometimes("a restarted node becomes backup", |_, s: &State| {
                s.g.restarted_backup
            }),
            Property::sometimes(
                "a backup whose replay failed gets the state again",
                |_, s: &State| s.g.reinstalled_after_failure,
            ),
            Property::sometimes("stuck: nobody holds the state", |_, s: &State| {
                s.vs.booted()
                    && s.g.ever_acked
                    && s.nodes
                        .iter()
                        .all(|n| !n.up || n.holding == Holding::Nothing)
                    && s.nodes.iter().filter(|n| n.up).count() >= 2
            }),
        ];
        if self.fast_path {
            if self.max_faults >= 2 {
                // Promoted on its backup's word, the new primary may speak while the old one's
                // lease still runs: the old one can then only repeat what the world saw (an ack
                // delayed and a stream lost or wrongly suspected: two faults).
                p.push(Property::sometimes(
                    "a deposed primary repeats output after its successor spoke",
                    |_, s: &State| s.g.deposed_repeated,
                ));
            }
        } else {
            p.push(Property::always(
                "a deposed primary never speaks again",
                |m: &Protocol, s: &State| {
                    !s.g.deposed_spoke
                        && s.nodes.iter().all(|n| match n.holding {
                            Holding::Guest { view } if n.up && view < s.g.speaker_view => {
                                n.lease == 0 && !m.lease_ignored()
                            }
                            _ => true,
                        })
                },
            ));
        }
        if self.max_faults >= 2 {
            // A late answer and a silent first primary: two faults.
            p.push(Property::sometimes(
                "a node boots on a fresh view already replaced",
                |_, s: &State| s.g.stale_boot,
            ));
        }
        if self.liveness {
            p.push(Property::always(
                "no wedge: a state holder left alone gets the service served",
                |m: &Protocol, s: &State| {
                    if !someone_holds_the_state(s) {
                        return true;
                    }
                    m.stats.checked.fetch_add(1, Ordering::Relaxed);
                    match m.fair_run(s) {
                        Ok(r) => {
                            m.stats.max_rounds.fetch_max(r, Ordering::Relaxed);
                            true
                        }
                        Err(_) => false,
                    }
                },
            ));
        }
        p
    }
}

/// Explores `model` exhaustively (two threads), prints what it explored,
/// checks every property, and that it explored `expected` unique states
/// (pinned: any change to the model or to the rules it drives is noticed,
/// and the bounds in docs/viewserver.md re-justified).
fn check(model: Protocol, expected: usize) {
    let started = Instant::now();
    let stats = Arc::clone(&model.stats);
    let checker = model.checker().threads(2).spawn_bfs().join();
    eprintln!(
        "{} nodes, views <= {}, steps <= {}, faults <= {}: {} unique states ({} total, depth {}); \
         liveness: fair schedule run from {} states, served within {} rounds; {:.1} s",
        checker.model().servers,
        checker.model().max_view,
        checker.model().max_pos,
        checker.model().max_faults,
        checker.unique_state_count(),
        checker.state_count(),
        checker.max_depth(),
        stats.checked.load(Ordering::Relaxed),
        stats.max_rounds.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    check_all(&checker);
    assert_eq!(checker.unique_state_count(), expected);
}

/// Every property's verdict, all of them before failing: each `always` that
/// failed with its (shortest, BFS) trace, each `sometimes` never seen.
fn check_all(checker: &impl Checker<Protocol>) {
    let mut problems = Vec::new();
    let discoveries = checker.discoveries();
    for p in checker.model().properties() {
        match (p.expectation, discoveries.get(p.name)) {
            (Expectation::Always, Some(path)) => {
                let trace: Vec<String> = path
                    .clone()
                    .into_actions()
                    .iter()
                    .map(|a| format!("{a:?}"))
                    .collect();
                problems.push(format!(
                    "\"{}\" fails after {} steps: {}\n  last state: {:?}",
                    p.name,
                    trace.len(),
                    trace.join(", "),
                    path.last_state()
                ));
            }
            (Expectation::Sometimes, None) => {
                problems.push(format!("\"{}\" never happens", p.name));
            }
            _ => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Explores `model` breadth first (one thread: the trace found is a
/// shortest one) until `property` fails; prints the trace and returns its
/// length. Panics if it never fails.
fn breaks(model: Protocol, property: &'static str) -> usize {
    let what = format!("{:?}", model.mutations);
    let checker = model
        .checker()
        .threads(1)
        .finish_when(HasDiscoveries::AnyOf([property].into()))
        .spawn_bfs()
        .join();
    let path = checker
        .discovery(property)
        .unwrap_or_else(|| panic!("{what}: \"{property}\" never fails"));
    let actions = path.into_actions();
    eprintln!(
        "{what} breaks \"{property}\" in {} steps: {}",
        actions.len(),
        actions
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    actions.len()
}

/// Explores `model` exhaustively and asserts that no `always` property
/// fails (the `sometimes` ones are not asked for).
fn holds(model: Protocol) -> usize {
    let what = format!("{:?}", model.mutations);
    let checker = model.checker().threads(2).spawn_bfs().join();
    for p in checker.model().properties() {
        if p.expectation == Expectation::Always
            && let Some(path) = checker.discovery(p.name)
        {
            panic!("{what}: \"{}\" fails: {path}", p.name);
        }
    }
    checker.unique_state_count()
}

// The bounds. Three nodes with one fault, and two nodes with two faults and
// one view more, run by default (about 30 s together in --release on two
// cores); three nodes with two faults (about 3 minutes) on request.

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "300k states: minutes unoptimised; run with --release"
)]
fn three_nodes_one_fault() {
    check(Protocol::new(3, 3, 2, 1).with_liveness(), 483_774);
}

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "1.4M states: minutes unoptimised; run with --release"
)]
fn two_nodes_two_faults() {
    check(Protocol::new(2, 4, 2, 2).with_liveness(), 1_779_213);
}

#[test]
#[ignore = "15.0M states, 6-10 minutes on two cores: cargo test --release -p viewserver --test model -- --ignored"]
fn three_nodes_two_faults() {
    check(Protocol::new(3, 3, 2, 2).with_liveness(), 15_017_455);
}

// Each node rule broken on purpose must be caught (the checker is not
// vacuous), by the property that rule protects.

#[test]
#[cfg_attr(debug_assertions, ignore = "run with --release")]
fn without_the_lease_a_deposed_primary_speaks() {
    let m = || {
        Protocol::new(2, 3, 2, 2)
            .without_fast_path()
            .mutated(Mutation::ReleaseWithoutLease)
    };
    breaks(m(), "a deposed primary never speaks again");
    // And worse: a node that booted on a late answer speaks its own history.
    breaks(m(), "no contradiction");
}

#[test]
#[cfg_attr(debug_assertions, ignore = "run with --release")]
fn a_lease_as_long_as_detection_overlaps_the_next_primary() {
    breaks(
        Protocol::new(2, 3, 2, 1)
            .without_fast_path()
            .mutated(Mutation::LeaseTooLong),
        "a deposed primary never speaks again",
    );
}

#[test]
#[cfg_attr(debug_assertions, ignore = "run with --release")]
fn uncovered_output_is_lost_at_failover() {
    breaks(
        Protocol::new(2, 3, 2, 1).mutated(Mutation::ReleaseUncovered),
        "prefix",
    );
}

#[test]
#[cfg_attr(debug_assertions, ignore = "run with --release")]
fn output_flowing_past_the_new_backups_state_is_lost_at_failover() {
    breaks(
        Protocol::new(2, 3, 2, 1).mutated(Mutation::FlowPastTheState),
        "prefix",
    );
}

#[test]
#[cfg_attr(debug_assertions, ignore = "run with --release")]
fn booting_when_stranded_forks_the_history() {
    breaks(
        Protocol::new(2, 3, 2, 2).mutated(Mutation::BootWhenStranded),
        "prefix",
    );
}

#[test]
#[cfg_attr(debug_assertions, ignore = "run with --release")]
fn the_fence_backs_up_the_lease() {
    // A backup that keeps acking its old primary after its view changed is
    // harmless while leases hold: that primary's lease ran out before the
    // backup could learn of a view that fences it (or, dropped from the
    // view, nobody relies on what it acked).
    let states = holds(
        Protocol::new(3, 3, 2, 1)
            .without_fast_path()
            .mutated(Mutation::AckAfterFence),
    );
    eprintln!("AckAfterFence: no property fails in {states} states");
    // With a lease that overlaps the next primary's (a clock running slow,
    // say), the fence is what keeps the deposed primary from releasing what
    // the new one does not have: without it, the two speak different steps.
    breaks(
        Protocol::new(2, 3, 2, 1)
            .without_fast_path()
            .mutated(Mutation::LeaseTooLong)
            .mutated(Mutation::AckAfterFence),
        "no contradiction",
    );
}

#[test]
#[cfg_attr(debug_assertions, ignore = "run with --release")]
fn promotion_on_the_backups_word_rests_on_its_fence() {
    // Promoted at once, the backup goes live while the old primary's lease still runs: only
    // the fence (nothing received or acknowledged once it asked, or once it is not that
    // primary's backup) keeps the old primary from releasing what the new one does not have.
    breaks(
        Protocol::new(2, 3, 2, 1).mutated(Mutation::AckAfterFence),
        "no contradiction",
    );
    // And the old lease does overlap: without the fast path this is a violation.
    let checker = Protocol::new(2, 3, 2, 2)
        .checker()
        .threads(1)
        .finish_when(HasDiscoveries::AnyOf(
            ["a deposed primary repeats output after its successor spoke"].into(),
        ))
        .spawn_bfs()
        .join();
    let path = checker
        .discovery("a deposed primary repeats output after its successor spoke")
        .unwrap();
    eprintln!("a deposed primary repeats: {:?}", path.into_actions());
}

#[test]
#[cfg_attr(debug_assertions, ignore = "run with --release")]
fn a_guest_may_end_after_any_step() {
    // An end of its own after any step, even none: a live run that diverges
    // after a failover may end elsewhere than the one before, or not at all.
    check(
        Protocol::new(2, 3, 2, 1)
            .ending(Ending::From(0))
            .with_liveness(),
        101_316,
    );
}

#[test]
#[cfg_attr(debug_assertions, ignore = "run with --release")]
fn reporting_the_end_before_releasing_loses_output() {
    breaks(
        Protocol::new(2, 3, 2, 0).mutated(Mutation::ReportBeforeReleased),
        "the end is recorded only once the world saw the whole ended history",
    );
}

#[test]
#[cfg_attr(debug_assertions, ignore = "run with --release")]
fn an_end_forgotten_by_a_restarted_viewserver_fails_over_a_finished_guest() {
    breaks(
        Protocol::new(2, 3, 2, 1).mutated(Mutation::EndNotPersisted),
        "no view changes once the end is recorded",
    );
}

/// Every state of a smaller model, by a plain search (for checks of the
/// model itself).
fn all_states(m: &Protocol) -> Vec<State> {
    use std::collections::HashSet;
    let mut seen: HashSet<State> = HashSet::new();
    let mut queue = vec![m.init()];
    seen.insert(m.init());
    let mut acts = Vec::new();
    while let Some(s) = queue.pop() {
        acts.clear();
        m.actions(&s, &mut acts);
        for a in acts.drain(..) {
            if let Some(n) = m.next_state(&s, a)
                && m.within_boundary(&n)
                && seen.insert(n.clone())
            {
                queue.push(n);
            }
        }
    }
    seen.into_iter().collect()
}

#[test]
#[cfg_attr(debug_assertions, ignore = "run with --release")]
fn news_shortcut_matches_running_the_ping() {
    // The model lets the clock tick only once no node has anything new to
    // say or learn; `has_news` decides that without running the ping. Check
    // it against running it, in every state of a smaller model.
    let m = Protocol::new(3, 3, 1, 1);
    let states = all_states(&m);
    for s in &states {
        for i in 0..s.nodes.len() {
            assert_eq!(
                m.has_news(s, i),
                m.has_news_exact(s, i),
                "node {i} in {s:?}"
            );
        }
    }
    eprintln!("{} states", states.len());
}
/// Replays `actions` from the initial state, checking each is enabled.
fn replay(m: &Protocol, actions: &[Action]) -> State {
    let mut s = m.init();
    for a in actions {
        let mut enabled = Vec::new();
        m.actions(&s, &mut enabled);
        assert!(enabled.contains(a), "{a:?} not enabled in {s:?}");
        s = m.next_state(&s, a.clone()).unwrap();
    }
    s
}

#[test]
fn known_wedge_a_late_ping_from_a_dead_primary_drops_the_ready_backup() {
    // Found with two nodes, views <= 3, steps <= 2 and three faults (beyond
    // the bounds checked by default): "b" is primary with "a" its ready
    // backup; "a" is cut off for a while, and "b" sends a ping that is
    // delayed, then crashes. Both look dead, and the view stays. Then the
    // dead "b"'s ping arrives: "b" looks alive, "a" still dead, so the
    // service drops "a" (view 3: "b" alone, never acknowledged). "a" comes
    // back holding all of the state, learns it is out of the view and drops
    // its replica: the service waits forever for a primary that is gone.
    use Action::*;
    let m = Protocol::new(2, 3, 2, 3).ending(Ending::Never);
    let s = replay(
        &m,
        &[
            Ping(1),
            Ping(1),
            Ping(0),
            Exec(1),
            Exec(1),
            Ping(1),
            Ping(1),
            Tick,
            Ping(1),
            Transfer(1),
            Ping(0),
            Tick,
            CutOff(0),
            PingDelayed(1),
            Crash(1),
            Tick,
            Reconnect(0),
            Restart(1),
        ],
    );
    assert!(someone_holds_the_state(&s));
    assert!(m.fair_run(&s).is_err());
}

#[test]
fn a_primary_reporting_the_end_acknowledges_a_new_view() {
    // Found by the liveness check with no fault at all, before the fix. "a" is
    // primary alone, its guest ends and everything it said is released: it
    // reports the end (`report_end`), its replication manager stopped. Before
    // the report arrives, "b" pings and the service co-opts it: a new view,
    // which waits for its primary's ack. Only the manager acknowledged views,
    // so "a" kept saying it held the old view and the end was never recorded
    // (the service takes it only from the primary holding the current view).
    // Now `report_end` acknowledges such a view itself.
    use Action::*;
    let m = Protocol::new(2, 3, 2, 0);
    let s = replay(&m, &[Ping(0), Ping(0), Exec(0), Exec(0), Ping(1)]);
    assert!(s.nodes[0].reporting);
    assert!(
        !s.vs.primary_acked(),
        "the co-opting view waits for its ack"
    );
    // With the guest ended, the fair schedule counts as served only once the end is recorded.
    assert!(ended_held(&s));
    assert!(m.fair_run(&s).is_ok());
}
