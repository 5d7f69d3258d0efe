//! The view service rules as a pure state machine: no clock, no I/O.
//!
//! Time exists only as [`ViewService::tick`], which the server calls once per
//! ping interval; a server that let `dead_pings` whole intervals pass without
//! pinging is dead.
//! Every decision to change the view is taken in one place, `advance`, run
//! after each ping and each tick, so the rules read top to bottom there.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Server names longer than this are refused by the network layer: names are
/// addresses, and an unbounded name is a memory lever for a bad client.
pub const MAX_SERVER_NAME: usize = 256;

/// At most this many servers are remembered. Idle servers that are dead are
/// forgotten at each tick; past the limit a new server still gets the view but
/// is not tracked (so never co-opted) until room frees up.
pub const MAX_TRACKED_SERVERS: usize = 1024;

/// One view: who is primary and who is backup under view number `viewnum`.
/// An empty name means "none"; `viewnum` 0 is the view before any server
/// pinged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct View {
    pub viewnum: u64,
    pub primary: String,
    pub backup: String,
}

impl std::fmt::Display for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let none = |s: &str| {
            if s.is_empty() {
                "(none)".to_string()
            } else {
                s.to_string()
            }
        };
        write!(
            f,
            "view {}: primary={} backup={}",
            self.viewnum,
            none(&self.primary),
            none(&self.backup)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Server {
    /// Ticks since the last ping. The first tick after a ping closes the
    /// interval the ping was in, so `missed - 1` intervals went by without one
    /// and the server is dead once `missed > dead_pings`. Saturates there so
    /// the state space stays finite (the model checker relies on it).
    missed: u32,
    /// Pinged 0 while holding a role in the current view: it lost its state, so
    /// it counts as dead in that role. Cleared at every view change, because
    /// whoever is in the new view starts that role afresh.
    restarted: bool,
}

/// The view service state machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ViewService {
    dead_pings: u32,
    view: View,
    /// The primary of `view` pinged with `view.viewnum` (and had not restarted
    /// in this view). Only then may the view change.
    acked: bool,
    servers: BTreeMap<String, Server>,
}

impl ViewService {
    /// `dead_pings`: consecutive intervals without a ping after which a server
    /// is dead. 0 is taken as 1.
    pub fn new(dead_pings: u32) -> Self {
        ViewService {
            dead_pings: dead_pings.max(1),
            view: View::default(),
            acked: false,
            servers: BTreeMap::new(),
        }
    }

    /// `server` says it is alive and knows view `viewnum` (0: it just started
    /// and holds no state). Answers the current view, possibly a new one that
    /// this ping made possible.
    pub fn ping(&mut self, server: &str, viewnum: u64) -> View {
        if !self.servers.contains_key(server) && self.servers.len() >= MAX_TRACKED_SERVERS {
            return self.view.clone();
        }
        let in_first_view_unacked = self.view.viewnum == 1 && !self.acked;
        let entry = self.servers.entry(server.to_string()).or_insert(Server {
            missed: 0,
            restarted: false,
        });
        entry.missed = 0;

        if self.view.viewnum == 0 {
            // The very first view: nobody has state yet, so the first server
            // to ask may be primary without having been backup.
            self.view = View {
                viewnum: 1,
                primary: server.to_string(),
                backup: String::new(),
            };
            self.acked = false;
            return self.view.clone();
        }

        if server == self.view.primary {
            if viewnum == 0 {
                // View 1's primary may ping 0 again if our answer was lost: it
                // had no state to lose. Anywhere else, 0 from the primary means
                // it restarted without missing a ping.
                if !in_first_view_unacked {
                    entry.restarted = true;
                }
            } else if viewnum == self.view.viewnum && !entry.restarted {
                self.acked = true;
            }
        } else if server == self.view.backup && viewnum == 0 {
            // Conservative: the backup may have received the state transfer
            // and then restarted; it must never be promoted in this view.
            entry.restarted = true;
        }

        self.advance();
        self.view.clone()
    }

    /// One ping interval passed.
    pub fn tick(&mut self) {
        let dead_pings = self.dead_pings;
        for s in self.servers.values_mut() {
            s.missed = s.missed.saturating_add(1).min(dead_pings + 1);
        }
        let view = &self.view;
        self.servers.retain(|name, s| {
            s.missed <= dead_pings || *name == view.primary || *name == view.backup
        });
        self.advance();
    }

    /// The current view.
    pub fn view(&self) -> View {
        self.view.clone()
    }

    /// The primary of the current view acknowledged it.
    pub fn primary_acked(&self) -> bool {
        self.acked
    }

    /// Has not yet missed `dead_pings` consecutive intervals.
    pub fn is_alive(&self, server: &str) -> bool {
        self.servers
            .get(server)
            .is_some_and(|s| s.missed <= self.dead_pings)
    }

    /// Pinged 0 while primary or backup of the current view.
    pub fn restarted_in_view(&self, server: &str) -> bool {
        self.servers.get(server).is_some_and(|s| s.restarted)
    }

    /// Live servers outside the view, in the order they would be co-opted.
    pub fn idle_servers(&self) -> Vec<String> {
        self.servers
            .iter()
            .filter(|(name, s)| {
                s.missed <= self.dead_pings
                    && **name != self.view.primary
                    && **name != self.view.backup
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    pub fn dead_pings(&self) -> u32 {
        self.dead_pings
    }

    /// Alive and still holding the state its role in the view requires.
    fn fit(&self, server: &str) -> bool {
        !server.is_empty()
            && self
                .servers
                .get(server)
                .is_some_and(|s| s.missed <= self.dead_pings && !s.restarted)
    }

    fn advance(&mut self) {
        // Until the primary acks, it may not know the view exists: moving on
        // could leave two servers acting as primary, or promote a backup that
        // never received the state.
        if self.view.viewnum == 0 || !self.acked {
            return;
        }
        let primary_fit = self.fit(&self.view.primary);
        let backup_fit = self.fit(&self.view.backup);
        let has_backup = !self.view.backup.is_empty();
        let new_primary = if !primary_fit {
            if !backup_fit {
                // Only the backup holds a copy of the state; without it no
                // one may become primary. Stuck until the primary returns.
                return;
            }
            self.view.backup.clone()
        } else if has_backup && backup_fit {
            return;
        } else {
            self.view.primary.clone()
        };
        // Prefer servers that were idle all along; a member just dropped for
        // restarting is alive and stateless, so it comes second, not never.
        let alive = |name: &String, s: &Server| s.missed <= self.dead_pings && *name != new_primary;
        let outside = |name: &String| *name != self.view.primary && *name != self.view.backup;
        let new_backup = self
            .servers
            .iter()
            .find(|(name, s)| alive(name, s) && outside(name))
            .or_else(|| self.servers.iter().find(|(name, s)| alive(name, s)))
            .map(|(name, _)| name.clone())
            .unwrap_or_default();
        if new_primary == self.view.primary && new_backup.is_empty() && !has_backup {
            // Primary alone and no one to co-opt: nothing would change.
            return;
        }
        self.view = View {
            viewnum: self.view.viewnum + 1,
            primary: new_primary,
            backup: new_backup,
        };
        self.acked = false;
        for s in self.servers.values_mut() {
            s.restarted = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(viewnum: u64, primary: &str, backup: &str) -> View {
        View {
            viewnum,
            primary: primary.to_string(),
            backup: backup.to_string(),
        }
    }

    /// Every server in `pingers` pings with the view number it last saw (0 for
    /// the first time), then a tick: one ping interval of a healthy cluster.
    struct Cluster {
        vs: ViewService,
        known: BTreeMap<&'static str, u64>,
        deaf: Vec<&'static str>,
    }

    impl Cluster {
        fn new(dead_pings: u32) -> Self {
            Cluster {
                vs: ViewService::new(dead_pings),
                known: BTreeMap::new(),
                deaf: Vec::new(),
            }
        }

        fn ping(&mut self, server: &'static str) -> View {
            let n = self.known.get(server).copied().unwrap_or(0);
            let v = self.vs.ping(server, n);
            if !self.deaf.contains(&server) {
                self.known.insert(server, v.viewnum);
            }
            v
        }

        /// From now on `server` ignores the answers to its pings.
        fn deaf(&mut self, server: &'static str) {
            self.deaf.push(server);
        }

        fn restart(&mut self, server: &'static str) {
            self.known.insert(server, 0);
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

    #[test]
    fn no_view_before_any_ping() {
        let vs = ViewService::new(3);
        assert_eq!(vs.view(), View::default());
    }

    #[test]
    fn first_server_to_ping_becomes_primary_of_view_1() {
        let mut c = Cluster::new(3);
        assert_eq!(c.ping("a"), view(1, "a", ""));
        assert!(!c.vs.primary_acked());
        c.ping("a");
        assert!(c.vs.primary_acked());
        // Alone, it stays primary of view 1.
        assert_eq!(c.intervals(10, &["a"]), view(1, "a", ""));
    }

    #[test]
    fn first_primary_pinging_0_again_before_acking_stays_primary() {
        // Its answer was lost: it still knows nothing, and had nothing to lose.
        let mut c = Cluster::new(3);
        c.vs.ping("a", 0);
        assert_eq!(c.vs.ping("a", 0), view(1, "a", ""));
        assert!(!c.vs.restarted_in_view("a"));
        assert_eq!(c.vs.ping("a", 1), view(1, "a", ""));
        assert!(c.vs.primary_acked());
    }

    #[test]
    fn first_backup() {
        let mut c = Cluster::new(3);
        c.interval(&["a"]);
        c.interval(&["a"]);
        assert_eq!(c.interval(&["a", "b"]), view(2, "a", "b"));
        // The new view waits for the primary's ack; then nothing changes.
        assert_eq!(c.intervals(5, &["a", "b"]), view(2, "a", "b"));
        assert!(c.vs.primary_acked());
    }

    #[test]
    fn backup_takes_over_when_the_primary_dies() {
        let mut c = Cluster::new(3);
        c.intervals(3, &["a", "b"]);
        assert_eq!(c.vs.view(), view(2, "a", "b"));
        // a stops pinging: dead after 3 missed intervals.
        c.intervals(2, &["b"]);
        assert_eq!(c.vs.view(), view(2, "a", "b"));
        assert_eq!(c.interval(&["b"]), view(3, "b", ""));
    }

    #[test]
    fn a_restarted_server_becomes_backup() {
        let mut c = Cluster::new(3);
        c.intervals(3, &["a", "b"]);
        c.intervals(3, &["b"]);
        assert_eq!(c.vs.view(), view(3, "b", ""));
        c.restart("a");
        // b must ack view 3 first (it does in this interval), then a is co-opted.
        assert_eq!(c.intervals(2, &["b", "a"]), view(4, "b", "a"));
        assert_eq!(c.intervals(3, &["b", "a"]), view(4, "b", "a"));
    }

    #[test]
    fn an_idle_third_server_becomes_backup_when_the_primary_dies() {
        let mut c = Cluster::new(3);
        c.intervals(3, &["a", "b", "c"]);
        assert_eq!(c.vs.view(), view(2, "a", "b"));
        assert_eq!(c.vs.idle_servers(), vec!["c".to_string()]);
        c.intervals(3, &["b", "c"]);
        assert_eq!(c.vs.view(), view(3, "b", "c"));
        assert!(c.vs.idle_servers().is_empty());
    }

    #[test]
    fn a_restarted_primary_is_treated_as_dead() {
        let mut c = Cluster::new(3);
        c.intervals(3, &["a", "b"]);
        assert_eq!(c.vs.view(), view(2, "a", "b"));
        // a restarts between two pings: it never misses one, but pings 0. It
        // is alive and stateless, so it comes back as the new backup.
        c.restart("a");
        assert_eq!(c.ping("a"), view(3, "b", "a"));
    }

    #[test]
    fn a_restarted_backup_is_removed_then_may_return_as_backup() {
        let mut c = Cluster::new(3);
        c.intervals(3, &["a", "b", "c"]);
        assert_eq!(c.vs.view(), view(2, "a", "b"));
        c.restart("b");
        c.ping("b");
        // c is the first idle server in line; b, now stateless, waits.
        assert_eq!(c.vs.view(), view(3, "a", "c"));
        assert_eq!(c.vs.idle_servers(), vec!["b".to_string()]);
        // Without an idle alternative the restarted backup comes straight back,
        // in a new view, so the primary transfers the state to it afresh.
        let mut c = Cluster::new(3);
        c.intervals(3, &["a", "b"]);
        c.restart("b");
        assert_eq!(c.ping("b"), view(3, "a", "b"));
    }

    #[test]
    fn a_dead_backup_is_removed() {
        let mut c = Cluster::new(3);
        c.intervals(3, &["a", "b"]);
        assert_eq!(c.vs.view(), view(2, "a", "b"));
        c.intervals(2, &["a"]);
        assert_eq!(c.vs.view(), view(2, "a", "b"));
        assert_eq!(c.interval(&["a"]), view(3, "a", ""));
        // The primary may run alone.
        assert_eq!(c.intervals(5, &["a"]), view(3, "a", ""));
    }

    #[test]
    fn the_viewserver_waits_for_the_primary_to_ack() {
        let mut c = Cluster::new(3);
        c.intervals(3, &["a", "b"]);
        assert_eq!(c.vs.view(), view(2, "a", "b"));
        // a keeps pinging but stops learning views (say it cannot reach its
        // new backup): alive, yet never acking what comes after view 2.
        c.deaf("a");
        // c joins, b dies: view 3 = (a, c).
        c.intervals(3, &["a", "c"]);
        assert_eq!(c.vs.view(), view(3, "a", "c"));
        assert!(!c.vs.primary_acked());
        // Now a dies too. c is the backup but was never initialised (a never
        // acked), so it is not promoted, however long we wait.
        c.intervals(10, &["c"]);
        assert!(!c.vs.is_alive("a"));
        assert_eq!(c.vs.view(), view(3, "a", "c"));
        // Should a come back and ack, the service goes on from there.
        c.vs.ping("a", 3);
        assert!(c.vs.primary_acked());
        assert_eq!(c.intervals(3, &["a", "c"]), view(3, "a", "c"));
    }

    #[test]
    fn an_uninitialised_server_never_becomes_primary() {
        let mut c = Cluster::new(3);
        c.intervals(3, &["a"]);
        assert_eq!(c.vs.view(), view(1, "a", ""));
        // The primary dies with no backup.
        c.intervals(3, &[]);
        assert!(!c.vs.is_alive("a"));
        // Idle servers arrive: none of them has the state.
        assert_eq!(c.intervals(10, &["b", "c"]), view(1, "a", ""));
        assert_eq!(c.vs.idle_servers(), vec!["b".to_string(), "c".to_string()]);
    }

    #[test]
    fn a_restarted_primary_without_backup_leaves_the_service_stuck() {
        let mut c = Cluster::new(3);
        c.intervals(3, &["a"]);
        c.restart("a");
        c.ping("a");
        assert!(c.vs.restarted_in_view("a"));
        // Even acking with the view number afterwards does not make it fit:
        // it lost the state, and that view cannot move on without a backup.
        c.intervals(5, &["a", "b"]);
        assert_eq!(c.vs.view(), view(1, "a", ""));
    }

    #[test]
    fn a_restarted_backup_is_never_promoted() {
        let mut c = Cluster::new(3);
        c.intervals(3, &["a", "b"]);
        assert_eq!(c.vs.view(), view(2, "a", "b"));
        // b restarts: view 3 takes it back as a fresh backup. Then a dies
        // before acking view 3, i.e. before b got the state.
        c.restart("b");
        assert_eq!(c.ping("b"), view(3, "a", "b"));
        assert_eq!(c.intervals(10, &["b"]), view(3, "a", "b"));
        assert!(!c.vs.is_alive("a"));
    }

    #[test]
    fn a_server_returning_after_being_declared_dead_is_idle() {
        let mut c = Cluster::new(2);
        c.intervals(3, &["a", "b"]);
        c.intervals(2, &["b"]);
        assert_eq!(c.vs.view(), view(3, "b", ""));
        // b learns view 3, then acks it; a is forgotten meanwhile.
        c.intervals(2, &["b"]);
        assert!(c.vs.primary_acked());
        assert!(c.vs.idle_servers().is_empty());
        // a comes back with its old view number: an idle server like any other.
        assert_eq!(c.ping("a"), view(4, "b", "a"));
    }

    #[test]
    fn dead_idle_servers_are_forgotten_and_tracking_is_bounded() {
        let mut c = Cluster::new(2);
        c.interval(&["a", "b", "c", "d"]);
        c.intervals(2, &["a", "b"]);
        assert!(c.vs.idle_servers().is_empty());
        let mut vs = ViewService::new(2);
        for i in 0..MAX_TRACKED_SERVERS + 10 {
            vs.ping(&format!("s{i}"), 0);
        }
        assert_eq!(vs.servers.len(), MAX_TRACKED_SERVERS);
        assert_eq!(vs.view().primary, "s0");
    }

    #[test]
    fn zero_dead_pings_means_one() {
        assert_eq!(ViewService::new(0).dead_pings(), 1);
    }

    #[test]
    fn view_displays_on_one_line() {
        assert_eq!(
            view(3, "a", "").to_string(),
            "view 3: primary=a backup=(none)"
        );
    }
}
