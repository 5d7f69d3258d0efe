//! The view service rules as a pure state machine: no clock, no I/O.
//!
//! Time exists only as [`ViewService::tick`], which the server calls once per
//! ping interval; a server that let `dead_pings` whole intervals pass without
//! pinging is dead. Every decision to change the view is taken in one place,
//! `advance`, run after each ping and each tick, so the rules read top to
//! bottom there. docs/viewserver.md states the rules and why they are safe.
//!
//! What must survive a restart of the service is [`Persisted`]; the server
//! stores it (file or etcd) whenever [`ViewService::persisted_version`]
//! changes, *before* it answers anyone, and starts again from it with
//! [`ViewService::restore`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Server names longer than this are refused by the network layer: names are
/// addresses, and an unbounded name is a memory lever for a bad client.
pub const MAX_SERVER_NAME: usize = 256;

/// At most this many servers are remembered. Idle servers that are dead are
/// forgotten at each tick; past the limit a new server still gets the view but
/// is not tracked (so never co-opted, never granted anything) until room frees.
pub const MAX_TRACKED_SERVERS: usize = 1024;

/// One view: who is primary and who is backup under view number `viewnum`.
/// The contents of a view number never change once shown. An empty name
/// means "none"; `viewnum` 0 is the view before any server pinged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct View {
    /// The view's number: increases by one at every change.
    pub viewnum: u64,
    /// The primary's server name; empty for none.
    pub primary: String,
    /// The backup's server name; empty for none.
    pub backup: String,
    /// The primary's incarnation (its process identity); 0 for a server that
    /// does not send one.
    #[serde(default)]
    pub primary_incarnation: u64,
    /// The backup's incarnation; 0 for none or a server that does not send one.
    #[serde(default)]
    pub backup_incarnation: u64,
    /// No history exists yet (no view was ever acknowledged): the primary
    /// starts the guest from its image. Every later view carries the history.
    #[serde(default)]
    pub fresh: bool,
}

impl View {
    /// Whether `name` in incarnation `incarnation` is this view's primary.
    pub fn is_primary(&self, name: &str, incarnation: u64) -> bool {
        !self.primary.is_empty() && self.primary == name && self.primary_incarnation == incarnation
    }

    /// Whether `name` in incarnation `incarnation` is this view's backup.
    pub fn is_backup(&self, name: &str, incarnation: u64) -> bool {
        !self.backup.is_empty() && self.backup == name && self.backup_incarnation == incarnation
    }
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

/// The current view and what is known about it: the answer to every ping
/// and to `GET /view`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The current view (flattened into the JSON object).
    #[serde(flatten)]
    pub view: View,
    /// The primary acknowledged this view (pinged with its number while
    /// holding the guest). Until then the view cannot change.
    #[serde(default)]
    pub acked: bool,
    /// The backup holds the state of this view (installed from this view's
    /// primary): it may be promoted.
    #[serde(default)]
    pub backup_ready: bool,
    /// Identity of this view service's history (hex). Nodes follow one
    /// service only: a viewserver that lost its state has a new one.
    #[serde(default)]
    pub service: String,
    /// Milliseconds for which the pinging primary may act as primary,
    /// counted from when it *sent* the ping. Only in the answer to the
    /// current primary's ping once the view is acknowledged; 0 otherwise.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease_ms: u64,
    /// The guest's history is complete: its primary reported that it ended and that every
    /// byte of its output was released. No view changes any more; nodes exit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Finished>,
}

/// How a guest ended, as its primary reports it in a ping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GuestEnd {
    /// What ended it.
    pub reason: EndReason,
    /// The exit code every node that held the guest exits with (docs/design.md has the
    /// mapping: a power-off's code, 1 for a triple fault, 0 for a reset request).
    pub code: u32,
}

/// What ended a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The guest powered off (isa-debug-exit).
    PowerOff,
    /// The guest triple-faulted.
    TripleFault,
    /// The guest asked for a machine reset; understudy does not reboot guests.
    Reset,
}

/// The guest's end as the service recorded it: final for this service's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Finished {
    /// The view whose primary reported it.
    pub view: u64,
    /// How the guest ended.
    #[serde(flatten)]
    pub end: GuestEnd,
}

impl std::fmt::Display for GuestEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.reason {
            EndReason::PowerOff => write!(f, "powered off, exit code {}", self.code),
            EndReason::TripleFault => write!(f, "triple fault, exit code {}", self.code),
            EndReason::Reset => write!(f, "asked for a reset, exit code {}", self.code),
        }
    }
}

impl std::fmt::Display for Status {
    /// `view N: primary=A backup=B`, then what is not yet so: `(not acknowledged)`,
    /// `(backup not ready)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.view)?;
        if let Some(done) = &self.finished {
            return write!(
                f,
                " (the guest finished in view {}: {})",
                done.view, done.end
            );
        }
        if self.view.viewnum > 0 && !self.acked {
            write!(f, " (not acknowledged)")?;
        } else if !self.view.backup.is_empty() && !self.backup_ready {
            write!(f, " (backup not ready)")?;
        }
        Ok(())
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One ping, as the state machine sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ping<'a> {
    /// The sender's server name.
    pub server: &'a str,
    /// The sender's process identity: nonzero, and larger for every start of
    /// the same server (a larger one is a restart, a smaller one a process
    /// that was replaced, whose pings are refused). `None` for a client that
    /// does not send one: then a ping of view 0 after it has shown it knows a
    /// view is taken as a restart, as in the classic lab.
    pub incarnation: Option<u64>,
    /// Increases with every ping of one incarnation; a ping that arrives
    /// after a later one (delayed, duplicated) is answered but not applied.
    pub seq: Option<u64>,
    /// The last view the sender received (0: none yet).
    pub viewnum: u64,
    /// The view whose state the sender holds: the primary's view once it
    /// runs the guest, the backup's view once it installed the state; 0 for
    /// none. `None` (the classic lab client): a primary holds the view it
    /// names, a backup is taken to hold its view's state (its primary is
    /// trusted to have sent it, as in the lab).
    pub holds: Option<u64>,
    /// The guest ended and all its output was released: only heeded from the primary of the
    /// current, acknowledged view that holds the guest.
    pub finished: Option<GuestEnd>,
    /// The sender, backup of this view number, lost its log stream from the view's primary and
    /// acknowledges nothing more of it: it asks to be promoted now rather than after the
    /// primary missed its pings. Heeded only from the ready backup of the current,
    /// acknowledged view (docs/viewserver.md, "Promotion on the backup's word").
    pub primary_lost: Option<u64>,
}

/// The answer to a ping, before the server turns the lease into time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingReply {
    /// The answer for the sender.
    pub status: Status,
    /// The pinging server is the primary of an acknowledged view: it may
    /// act as primary for a lease from when it sent the ping.
    pub lease: bool,
}

/// A ping that is refused rather than answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PingError {
    /// The ping comes from an incarnation older than one the service has seen: a process that was
    /// replaced, which must not act for its server any more.
    #[error(
        "incarnation {incarnation} of {server} was replaced by a later one ({current}); this process must not act for {server}"
    )]
    StaleIncarnation {
        /// The server name.
        server: String,
        /// The refused incarnation.
        incarnation: u64,
        /// The newest incarnation seen for that server.
        current: u64,
    },
    /// The ping names incarnation 0, which is reserved for "none".
    #[error("incarnation 0 is reserved; send a nonzero incarnation or none")]
    ZeroIncarnation,
}

/// What must survive a restart of the view service: the view and what is
/// known about it. Idle servers and missed-ping counts are relearned.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Persisted {
    /// Identity of this service's history; created once, never changed.
    pub service: u64,
    /// The current view.
    pub view: View,
    /// Its primary acknowledged it (see `Status::acked`).
    pub acked: bool,
    /// Its backup holds its state (see `Status::backup_ready`).
    pub backup_ready: bool,
    /// Some view was ever acknowledged: a history exists, and no server
    /// without it may ever become primary.
    pub booted: bool,
    /// The guest's history is complete (see `Status::finished`): no view
    /// ever changes again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<Finished>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Server {
    /// The live process behind this name as far as we know.
    incarnation: u64,
    /// Highest `seq` applied from `incarnation`.
    seq: u64,
    /// Ticks since the last ping. The first tick after a ping closes the
    /// interval the ping was in, so `missed - 1` intervals went by without one
    /// and the server is dead once `missed > dead_pings`. Saturates there so
    /// the state space stays finite (the model checker relies on it).
    missed: u32,
    /// Pinged a nonzero view number since `incarnation` started (for clients
    /// without incarnations: a later ping of 0 is then a restart).
    shown: bool,
    /// Ticks during which this server is passed over when choosing a backup
    /// (it was dropped for never becoming ready).
    cooldown: u32,
    /// Its last ping said what it holds (`holds`); a classic lab client's
    /// does not, and its readiness is only that it knows the view.
    reports_holds: bool,
}

impl Server {
    fn new(incarnation: u64) -> Self {
        Server {
            incarnation,
            seq: 0,
            missed: 0,
            shown: false,
            cooldown: 0,
            reports_holds: false,
        }
    }
}

/// The view service state machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ViewService {
    dead_pings: u32,
    /// Ticks a backup may stay unready before it is replaced.
    backup_ticks: u32,
    p: Persisted,
    /// Bumped whenever `p` changes.
    version: u64,
    /// Ticks the current backup has been unready.
    unready_ticks: u32,
    servers: BTreeMap<String, Server>,
}

impl ViewService {
    /// A new service with history identity `service` (random, nonzero).
    /// `dead_pings`: consecutive intervals without a ping after which a
    /// server is dead (0 is taken as 1). `backup_ticks`: intervals a backup
    /// may take to become ready before it is replaced (0 is taken as 1).
    pub fn new(service: u64, dead_pings: u32, backup_ticks: u32) -> Self {
        Self::restore(
            Persisted {
                service,
                view: View::default(),
                acked: false,
                backup_ready: false,
                booted: false,
                finished: None,
            },
            dead_pings,
            backup_ticks,
        )
    }

    /// The service as it was persisted. The view's members count as alive,
    /// having just pinged: nobody is declared dead before a full detection
    /// period of this incarnation of the service has passed, so every lease
    /// the previous one granted has expired first.
    pub fn restore(p: Persisted, dead_pings: u32, backup_ticks: u32) -> Self {
        let mut servers = BTreeMap::new();
        for (name, inc) in [
            (&p.view.primary, p.view.primary_incarnation),
            (&p.view.backup, p.view.backup_incarnation),
        ] {
            if !name.is_empty() {
                let mut s = Server::new(inc);
                // Conservative for clients without incarnations: their next
                // ping of view 0 is a restart.
                s.shown = true;
                servers.insert(name.clone(), s);
            }
        }
        ViewService {
            dead_pings: dead_pings.max(1),
            backup_ticks: backup_ticks.max(1),
            p,
            version: 0,
            unready_ticks: 0,
            servers,
        }
    }

    /// `ping.server` says it is alive, knows view `ping.viewnum` and holds
    /// the state of view `ping.holds`. Answers the current status, possibly
    /// a new view that this ping made possible.
    pub fn ping(&mut self, ping: &Ping<'_>) -> Result<PingReply, PingError> {
        if ping.incarnation == Some(0) {
            return Err(PingError::ZeroIncarnation);
        }
        let name = ping.server;
        if !self.servers.contains_key(name) && self.servers.len() >= MAX_TRACKED_SERVERS {
            return Ok(self.reply(false));
        }
        let entry = self
            .servers
            .entry(name.to_string())
            .or_insert_with(|| Server::new(ping.incarnation.unwrap_or(1)));
        match ping.incarnation {
            Some(inc) if inc < entry.incarnation => {
                // An earlier process behind this name (a ping it sent before
                // it died, arriving late): it must not pass for a new one,
                // which would depose the live process at once, while its
                // lease still runs.
                return Err(PingError::StaleIncarnation {
                    server: name.to_string(),
                    incarnation: inc,
                    current: entry.incarnation,
                });
            }
            Some(inc) if inc > entry.incarnation => {
                // A new process behind this name: whatever the old one held
                // is gone, and its roles with it (fitness compares
                // incarnations with the view's).
                *entry = Server::new(inc);
            }
            None if ping.viewnum == 0 && entry.shown => {
                // A lab-style client that knew a view now knows none: it
                // restarted.
                *entry = Server::new(entry.incarnation.wrapping_add(1).max(1));
            }
            _ => {}
        }
        if let Some(seq) = ping.seq {
            if seq <= entry.seq {
                // Overtaken by a later ping of the same process: stale news.
                return Ok(self.reply(false));
            }
            entry.seq = seq;
        }
        entry.missed = 0;
        entry.reports_holds = ping.holds.is_some();
        if ping.viewnum > 0 {
            entry.shown = true;
        }
        let inc = entry.incarnation;

        let current = self.p.view.viewnum;
        if current == 0 {
            // The very first view: nobody has state yet, so the first server
            // to ask starts the guest.
            self.new_view(name.to_string(), inc, String::new(), 0);
        } else if self.p.view.is_primary(name, inc) {
            let holds = ping.holds.unwrap_or(ping.viewnum);
            if !self.p.acked && ping.viewnum == current && holds == current {
                self.p.acked = true;
                self.p.booted = true;
                self.version += 1;
            }
            // Only the acknowledged primary holding the guest knows its history is complete
            // (a deposed one's is not the history any more); it reports the end only once
            // everything the guest said was released, so nothing is left for anyone to say.
            if let Some(end) = ping.finished
                && self.p.acked
                && holds == current
                && self.p.finished.is_none()
            {
                self.p.finished = Some(Finished { view: current, end });
                self.version += 1;
            }
        } else if self.p.view.is_backup(name, inc) {
            // A classic client says nothing about its state: as in the lab, its primary is
            // trusted to have forwarded the state before anything depends on it.
            let ready = ping.holds.is_none_or(|h| h == current);
            if ready != self.p.backup_ready {
                self.p.backup_ready = ready;
                self.version += 1;
            }
            if ping.primary_lost == Some(current) && ping.holds == Some(current) {
                self.primary_lost_by_backup();
            }
        }
        self.advance();
        // A finished guest has nothing left to release.
        let lease = self.p.acked && self.p.view.is_primary(name, inc) && self.p.finished.is_none();
        Ok(self.reply(lease))
    }

    /// The ready backup of the current, acknowledged view lost its stream from the primary and
    /// fenced it: the primary counts as dead from now on, so `advance` promotes the backup at
    /// once. Safe because the primary of an acknowledged view releases only what this backup
    /// acknowledged (it left free flow before the state this backup holds was taken), and the
    /// backup goes live with everything it acknowledged: whatever the old primary still
    /// releases while its lease runs is output the new one holds too (a repeat, never
    /// anything new). A wrong suspicion (a slow or cut-off link, the primary alive) costs a
    /// failover, not correctness.
    fn primary_lost_by_backup(&mut self) {
        let v = &self.p.view;
        if !self.p.acked || !self.p.backup_ready || self.p.finished.is_some() {
            return;
        }
        let dead = self.dead_pings + 1;
        if let Some(p) = self.servers.get_mut(&v.primary)
            && p.incarnation == v.primary_incarnation
        {
            p.missed = dead;
        }
    }

    fn reply(&self, lease: bool) -> PingReply {
        PingReply {
            status: self.status(),
            lease,
        }
    }

    /// One ping interval passed.
    pub fn tick(&mut self) {
        let dead_pings = self.dead_pings;
        for s in self.servers.values_mut() {
            s.missed = s.missed.saturating_add(1).min(dead_pings + 1);
            s.cooldown = s.cooldown.saturating_sub(1);
        }
        let view = &self.p.view;
        self.servers.retain(|name, s| {
            s.missed <= dead_pings || *name == view.primary || *name == view.backup
        });
        if !self.p.view.backup.is_empty() && !self.p.backup_ready {
            self.unready_ticks = self.unready_ticks.saturating_add(1).min(self.backup_ticks);
        }
        self.advance();
    }

    /// The current view.
    pub fn view(&self) -> View {
        self.p.view.clone()
    }

    /// The current view and what is known about it (no lease).
    pub fn status(&self) -> Status {
        Status {
            view: self.p.view.clone(),
            acked: self.p.acked,
            backup_ready: self.p.backup_ready,
            service: service_hex(self.p.service),
            lease_ms: 0,
            finished: self.p.finished,
        }
    }

    /// How the guest ended, once its primary reported it.
    pub fn finished(&self) -> Option<Finished> {
        self.p.finished
    }

    /// The primary of the current view acknowledged it.
    pub fn primary_acked(&self) -> bool {
        self.p.acked
    }

    /// The backup of the current view holds its state.
    pub fn backup_ready(&self) -> bool {
        self.p.backup_ready
    }

    /// Some view was ever acknowledged: a history exists.
    pub fn booted(&self) -> bool {
        self.p.booted
    }

    /// Has not yet missed `dead_pings` consecutive intervals.
    pub fn is_alive(&self, server: &str) -> bool {
        self.servers
            .get(server)
            .is_some_and(|s| s.missed <= self.dead_pings)
    }

    /// The incarnation last seen behind `server`.
    pub fn incarnation(&self, server: &str) -> Option<u64> {
        self.servers.get(server).map(|s| s.incarnation)
    }

    /// Live servers outside the view, in the order they would be co-opted.
    pub fn idle_servers(&self) -> Vec<String> {
        let v = &self.p.view;
        self.servers
            .iter()
            .filter(|(name, s)| {
                s.missed <= self.dead_pings
                    && !v.is_primary(name, s.incarnation)
                    && !v.is_backup(name, s.incarnation)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Consecutive ping intervals without a ping after which a server is dead (at least 1).
    pub fn dead_pings(&self) -> u32 {
        self.dead_pings
    }

    /// The highest `seq` applied from `server`'s current incarnation (0: none).
    pub fn applied_seq(&self, server: &str) -> Option<u64> {
        self.servers.get(server).map(|s| s.seq)
    }

    /// For model checkers: replaces the highest `seq` applied from `server`'s
    /// current incarnation. The rules only compare one incarnation's seqs
    /// with each other, so renumbering this one together with those of the
    /// pings still on their way, keeping their order, changes nothing they
    /// can observe; a checker does it to keep the number of states finite.
    pub fn renumber_applied_seq(&mut self, server: &str, seq: u64) {
        if let Some(s) = self.servers.get_mut(server) {
            s.seq = seq;
        }
    }

    /// What must be stored to survive a restart.
    pub fn persisted(&self) -> &Persisted {
        &self.p
    }

    /// Changes whenever [`Self::persisted`] does.
    pub fn persisted_version(&self) -> u64 {
        self.version
    }

    /// Undoes changes to the persisted part that could not be stored; what
    /// was learned about servers (liveness, incarnations) is kept, and the
    /// next ping or tick decides again.
    pub fn revert_persisted(&mut self, p: Persisted) {
        if p != self.p {
            self.p = p;
            self.unready_ticks = 0;
            self.version += 1;
        }
    }

    /// `name` in incarnation `inc` is alive.
    fn fit(&self, name: &str, inc: u64) -> bool {
        !name.is_empty()
            && self
                .servers
                .get(name)
                .is_some_and(|s| s.incarnation == inc && s.missed <= self.dead_pings)
    }

    fn new_view(&mut self, primary: String, primary_inc: u64, backup: String, backup_inc: u64) {
        self.p.view = View {
            viewnum: self.p.view.viewnum + 1,
            primary,
            backup,
            primary_incarnation: primary_inc,
            backup_incarnation: backup_inc,
            fresh: !self.p.booted,
        };
        self.p.acked = false;
        self.p.backup_ready = false;
        self.unready_ticks = 0;
        self.version += 1;
    }

    /// The first live server not named `not`, skipping servers cooling down,
    /// and preferring servers outside the current view: who is co-opted next.
    fn pick(&self, not: &str) -> Option<(String, u64)> {
        let v = &self.p.view;
        let candidate = |name: &String, s: &Server| {
            s.missed <= self.dead_pings && *name != not && s.cooldown == 0
        };
        let member = |name: &String, s: &Server| {
            v.is_primary(name, s.incarnation) || v.is_backup(name, s.incarnation)
        };
        // Prefer servers that were idle all along; a member just dropped (a
        // restarted one is alive and stateless) comes second, not never.
        self.servers
            .iter()
            .find(|(name, s)| candidate(name, s) && !member(name, s) && **name != v.primary)
            .or_else(|| self.servers.iter().find(|(name, s)| candidate(name, s)))
            .map(|(name, s)| (name.clone(), s.incarnation))
    }

    fn advance(&mut self) {
        let v = self.p.view.clone();
        // A finished guest is not failed over, nor given a new backup: nobody will run it.
        if v.viewnum == 0 || self.p.finished.is_some() {
            return;
        }
        let primary_fit = self.fit(&v.primary, v.primary_incarnation);
        let backup_fit = self.fit(&v.backup, v.backup_incarnation);
        if !self.p.acked {
            // Until the primary acks, it may not know the view exists: moving
            // on could leave two servers acting as primary, or promote a
            // backup that never received the state. Two exceptions. No view
            // was ever acknowledged: no output was ever released and no
            // history exists, so a vanished first primary is replaced by any
            // live server, which starts the guest afresh.
            if !self.p.booted
                && !primary_fit
                && let Some((name, inc)) = self.pick("")
            {
                self.new_view(name, inc, String::new(), 0);
                return;
            }
            // And the backup reported holding this view's state: only this
            // view's primary can have given it (a backup takes a state only
            // from its view's primary, for that view number), so the primary
            // knew the view and ran the guest in it; gone before its ack
            // arrived, it would otherwise be waited for forever while the
            // backup holds everything. Its leases (from earlier views; none
            // for this one) ran out before it could be found dead. (A lab
            // client's readiness says nothing of the kind.)
            let reported = self.servers.get(&v.backup).is_some_and(|s| s.reports_holds);
            if !primary_fit && backup_fit && self.p.backup_ready && reported {
                let (b, binc) = self.pick(&v.backup).unwrap_or_default();
                self.new_view(v.backup.clone(), v.backup_incarnation, b, binc);
            }
            return;
        }
        let has_backup = !v.backup.is_empty();
        if !primary_fit {
            // Only a backup that holds this view's state may take over;
            // without one the service waits for its primary (nobody else has
            // the guest).
            if backup_fit && self.p.backup_ready {
                let next = self.pick(&v.backup);
                let (b, binc) = next.unwrap_or_default();
                self.new_view(v.backup.clone(), v.backup_incarnation, b, binc);
            }
            return;
        }
        if has_backup && !backup_fit {
            let (b, binc) = self.pick(&v.primary).unwrap_or_default();
            self.new_view(v.primary.clone(), v.primary_incarnation, b, binc);
            return;
        }
        if has_backup && !self.p.backup_ready && self.unready_ticks >= self.backup_ticks {
            // A backup that never took the state (misconfigured, cut off from
            // the primary) would hold the primary's output forever: replace
            // it, and pass it over for a while.
            if let Some(s) = self.servers.get_mut(&v.backup) {
                s.cooldown = self.backup_ticks;
            }
            let (b, binc) = self.pick(&v.primary).unwrap_or_default();
            self.new_view(v.primary.clone(), v.primary_incarnation, b, binc);
            return;
        }
        if !has_backup && let Some((b, binc)) = self.pick(&v.primary) {
            self.new_view(v.primary.clone(), v.primary_incarnation, b, binc);
        }
    }
}

/// How a service identity is shown: 16 hex digits.
pub fn service_hex(service: u64) -> String {
    format!("{service:016x}")
}

#[cfg(test)]
mod tests;
