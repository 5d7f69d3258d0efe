//! Model check of the view service: the real [`ViewService`] state machine,
//! driven by three servers that ping (answers may be lost), crash and restart,
//! and by the clock ticking, explored exhaustively with stateright.
//!
//! The servers follow the node-side rules of `docs/viewserver.md`: a server
//! pings with the view number it knows (0 after a restart); a primary acks a
//! view only once it could transfer its state to the view's backup; a server
//! without state that finds itself primary of a view > 1 keeps pinging 0.
//! Ghost variables (`history`, `has_state`, `pinged_zero`) record what the
//! properties need and the service does not expose.

#![allow(clippy::unwrap_used)]

use stateright::{Checker, Model, Property};
use viewserver::{View, ViewService};

const SERVERS: [&str; 3] = ["a", "b", "c"];
const DEAD_PINGS: u32 = 1;
const MAX_VIEWNUM: u64 = 3;
/// Crashes, restarts and lost answers, together.
const MAX_FAULTS: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Node {
    known: View,
    /// Pings (crashed nodes stay silent until they restart).
    up: bool,
    /// Ghost: holds the service's state (the first primary creates it; a
    /// backup gets it when its primary acks; a restart loses it).
    has_state: bool,
    /// Ghost: pinged 0 since it was last backup of an acked view.
    pinged_zero: bool,
    /// Ghost: restarted at least once.
    restarted: bool,
}

/// Ghost record of one view, written when the service first shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Record {
    view: View,
    /// Its primary pinged with its number.
    acked: bool,
    /// The previous view had been acked when this one was created.
    prev_acked: bool,
    /// Its primary was primary or backup of the previous view.
    primary_from_prev: bool,
    /// Its primary was promoted although it had pinged 0 since last being
    /// backup of an acked view.
    promoted_restarted: bool,
    /// Its backup had restarted before.
    backup_restarted: bool,
    /// Its primary was a promoted backup.
    promoted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct State {
    vs: ViewService,
    nodes: Vec<Node>,
    history: Vec<Record>,
    faults: u8,
    /// Ghost: a primary acked a view > 1 without holding the state.
    acked_stateless: bool,
    /// Ghost: the service showed a view that is neither the last one nor the
    /// next.
    view_reused_or_skipped: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Action {
    /// Node pings; the answer arrives unless `lost`.
    Ping {
        node: usize,
        lost: bool,
    },
    Tick,
    Crash(usize),
    Restart(usize),
}

struct ViewModel;

fn idx(name: &str) -> Option<usize> {
    SERVERS.iter().position(|s| *s == name)
}

impl State {
    /// What `node` puts in its ping: the node-side rules.
    fn ping_viewnum(&self, node: usize) -> u64 {
        let me = &self.nodes[node];
        let k = &me.known;
        if k.primary != SERVERS[node] {
            return k.viewnum;
        }
        if k.viewnum > 1 && !me.has_state {
            return 0;
        }
        // The state transfer to a crashed backup cannot finish: keep pinging
        // with the view before, i.e. do not ack yet.
        if let Some(b) = idx(&k.backup)
            && !self.nodes[b].up
        {
            return k.viewnum - 1;
        }
        k.viewnum
    }

    /// Records a view the service shows for the first time.
    fn observe(&mut self) {
        let v = self.vs.view();
        let last = self.history.last().map(|r| r.view.viewnum).unwrap_or(0);
        if v.viewnum == last {
            if self.history.last().is_some_and(|r| r.view != v) {
                self.view_reused_or_skipped = true;
            }
            return;
        }
        if v.viewnum != last + 1 {
            self.view_reused_or_skipped = true;
            return;
        }
        let prev = self.history.last().cloned();
        let primary = idx(&v.primary);
        let (prev_acked, primary_from_prev, promoted) = match &prev {
            None => (true, true, false),
            Some(p) => (
                p.acked,
                v.primary == p.view.primary || v.primary == p.view.backup,
                v.primary != p.view.primary,
            ),
        };
        let promoted_restarted = promoted && primary.is_some_and(|i| self.nodes[i].pinged_zero);
        let backup_restarted = idx(&v.backup).is_some_and(|i| self.nodes[i].restarted);
        self.history.push(Record {
            view: v,
            acked: false,
            prev_acked,
            primary_from_prev,
            promoted_restarted,
            backup_restarted,
            promoted,
        });
    }

    fn ping(&mut self, node: usize, lost: bool) {
        let n = self.ping_viewnum(node);
        let before = self.vs.view();
        if n == 0 {
            self.nodes[node].pinged_zero = true;
        }
        if before.viewnum > 0 && before.primary == SERVERS[node] && n == before.viewnum {
            if before.viewnum > 1 && !self.nodes[node].has_state {
                self.acked_stateless = true;
            }
            if let Some(r) = self.history.last_mut() {
                r.acked = true;
            }
            // The primary acks only after the transfer: the backup has the
            // state, and has not restarted since it got it.
            if let Some(b) = idx(&before.backup) {
                self.nodes[b].has_state = true;
                self.nodes[b].pinged_zero = false;
            }
        }
        let reply = self.vs.ping(SERVERS[node], n);
        self.observe();
        if !lost {
            if reply.viewnum == 1 && reply.primary == SERVERS[node] {
                // The very first primary is where the state begins.
                self.nodes[node].has_state = true;
            }
            self.nodes[node].known = reply;
        }
    }
}

impl Model for ViewModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let node = Node {
            known: View::default(),
            up: true,
            has_state: false,
            pinged_zero: false,
            restarted: false,
        };
        vec![State {
            vs: ViewService::new(DEAD_PINGS),
            nodes: vec![node; SERVERS.len()],
            history: Vec::new(),
            faults: 0,
            acked_stateless: false,
            view_reused_or_skipped: false,
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        actions.push(Action::Tick);
        for (node, n) in state.nodes.iter().enumerate() {
            if n.up {
                actions.push(Action::Ping { node, lost: false });
                if state.faults < MAX_FAULTS {
                    actions.push(Action::Ping { node, lost: true });
                }
                if state.faults < MAX_FAULTS {
                    actions.push(Action::Crash(node));
                }
            }
            if state.faults < MAX_FAULTS {
                actions.push(Action::Restart(node));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Tick => {
                s.vs.tick();
                s.observe();
            }
            Action::Ping { node, lost } => {
                s.ping(node, lost);
                if lost {
                    if s.vs.view() == s.nodes[node].known {
                        // Losing an answer the node already knows is the
                        // same as receiving it: that state is reached by the
                        // delivered ping, and need not cost the loss budget.
                        return None;
                    }
                    s.faults += 1;
                }
            }
            Action::Crash(node) => {
                // What a crashed node knew no longer matters (it restarts
                // from nothing, if at all); forgetting it now keeps the state
                // space small.
                let n = &mut s.nodes[node];
                n.up = false;
                n.known = View::default();
                n.has_state = false;
                s.faults += 1;
            }
            Action::Restart(node) => {
                let n = &mut s.nodes[node];
                n.up = true;
                n.known = View::default();
                n.has_state = false;
                n.restarted = true;
                s.faults += 1;
            }
        }
        Some(s)
    }

    fn within_boundary(&self, state: &State) -> bool {
        state.vs.view().viewnum <= MAX_VIEWNUM
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "a view number is never reused or skipped",
                |_, s: &State| {
                    !s.view_reused_or_skipped
                        && s.nodes.iter().all(|n| {
                            n.known.viewnum == 0
                                || s.history
                                    .get((n.known.viewnum - 1) as usize)
                                    .is_some_and(|r| r.view == n.known)
                        })
                },
            ),
            Property::always("no view advances past an unacked one", |_, s: &State| {
                s.history.iter().all(|r| r.prev_acked)
            }),
            Property::always(
                "the new primary was primary or backup before",
                |_, s: &State| s.history.iter().all(|r| r.primary_from_prev),
            ),
            Property::always(
                "a restarted server is promoted only after being backup of an acked view",
                |_, s: &State| s.history.iter().all(|r| !r.promoted_restarted),
            ),
            Property::always("a primary acks only with the state", |_, s: &State| {
                !s.acked_stateless
            }),
            Property::always("backup differs from primary", |_, s: &State| {
                let v = s.vs.view();
                v.backup.is_empty() || v.backup != v.primary
            }),
            Property::sometimes("a backup is promoted", |_, s: &State| {
                s.history.iter().any(|r| r.promoted)
            }),
            Property::sometimes("an idle server becomes backup", |_, s: &State| {
                s.history.iter().any(|r| !r.view.backup.is_empty())
            }),
            Property::sometimes("a restarted server becomes backup", |_, s: &State| {
                s.history.iter().any(|r| r.backup_restarted)
            }),
            Property::sometimes("a restarted primary is replaced", |_, s: &State| {
                s.history.windows(2).any(|w| {
                    w[1].promoted
                        && idx(&w[0].view.primary).is_some_and(|i| s.nodes[i].up)
                        && w[1].view.backup == w[0].view.primary
                })
            }),
            Property::sometimes(
                "stuck: primary dead, no backup, idle servers",
                |_, s: &State| {
                    let v = s.vs.view();
                    v.viewnum > 1
                        && v.backup.is_empty()
                        && !s.vs.is_alive(&v.primary)
                        && !s.vs.idle_servers().is_empty()
                },
            ),
        ]
    }
}

/// Pinned so that any change to the model or to the service's state space is
/// noticed (and the bounds re-justified in docs/viewserver.md).
const EXPECTED_UNIQUE_STATES: usize = 545_980;

#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "half a million states: minutes unoptimised; run with --release (as CI does)"
)]
fn view_service_model_check() {
    let checker = ViewModel.checker().spawn_bfs().join();
    checker.assert_properties();
    eprintln!(
        "states: {} unique, {} total, max depth {}",
        checker.unique_state_count(),
        checker.state_count(),
        checker.max_depth()
    );
    assert_eq!(checker.unique_state_count(), EXPECTED_UNIQUE_STATES);
}
