//! The node's line to the view service: a thread pings every interval (and at once after
//! anything that changes what the ping says) with this node's incarnation, the latest view it
//! knows and the state it holds; everyone else reads the latest status from here, and the
//! release thread reads the lease.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use viewserver::client::{Client, ClientError, Lease};
use viewserver::node::{self, Holding, Me};
use viewserver::{Finished, GuestEnd, PingRequest, Status, View};

use super::events::NodeEvent;
use crate::events::emit;

#[derive(Debug)]
struct Inner {
    latest: Option<Status>,
    holding: Holding,
    seq: u64,
    /// Ping again without waiting for the interval.
    ping_now: bool,
    last_error: Option<String>,
    /// Why this node must stop (another process took its name).
    fatal: Option<String>,
    /// The guest ended and everything it said was released: every ping says so.
    report_end: Option<GuestEnd>,
    /// This backup lost its stream from the primary of this view and fenced it: pings ask to
    /// be promoted while this is the latest view known.
    primary_lost: Option<u64>,
    stop: bool,
}

#[derive(Debug)]
pub struct Views {
    inner: Mutex<Inner>,
    changed: Condvar,
    client: Client,
    pub me: String,
    pub incarnation: u64,
    pub interval: Duration,
    /// Held while this node is the acknowledged primary; output leaves only while it holds.
    pub lease: Lease,
}

impl Views {
    pub fn new(viewservers: Vec<String>, me: String, interval: Duration) -> Arc<Self> {
        let timeout = interval.max(Duration::from_millis(200));
        Arc::new(Self {
            inner: Mutex::new(Inner {
                latest: None,
                holding: Holding::Nothing,
                seq: 0,
                ping_now: false,
                last_error: None,
                fatal: None,
                report_end: None,
                primary_lost: None,
                stop: false,
            }),
            changed: Condvar::new(),
            client: Client::new(viewservers, timeout),
            me,
            incarnation: new_incarnation(),
            interval,
            lease: Lease::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This node as the view rules name it.
    pub fn who(&self) -> Me<'_> {
        Me {
            name: &self.me,
            incarnation: self.incarnation,
        }
    }

    /// The viewserver address(es), for messages.
    pub fn viewserver(&self) -> String {
        self.client.describe()
    }

    pub fn latest_view(&self) -> Option<View> {
        self.lock().latest.as_ref().map(|s| s.view.clone())
    }

    /// How the guest ended, once the view service recorded it: its history is complete.
    pub fn finished(&self) -> Option<Finished> {
        self.lock().latest.as_ref().and_then(|s| s.finished)
    }

    /// From now on every ping reports that the guest ended as `end` (the primary, once it
    /// released everything the guest said); the next goes at once.
    pub fn report_end(&self, end: GuestEnd) {
        let mut g = self.lock();
        g.report_end = Some(end);
        g.ping_now = true;
        self.changed.notify_all();
    }

    /// This backup's stream from the primary of view `viewnum` ended and it acknowledges nothing
    /// more of it: ask the view service, now, to promote it (it does so only for the ready
    /// backup of its current, acknowledged view; docs/design.md, "Failover on the backup's
    /// word"). Every ping asks until the view changes or a new state is installed.
    pub fn report_primary_lost(&self, viewnum: u64) {
        let mut g = self.lock();
        g.primary_lost = Some(viewnum);
        g.ping_now = true;
        self.changed.notify_all();
    }

    /// Why this node must stop, if it must.
    pub fn fatal(&self) -> Option<String> {
        self.lock().fatal.clone()
    }

    fn wait<'a>(&self, g: MutexGuard<'a, Inner>, deadline: Instant) -> MutexGuard<'a, Inner> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.changed
            .wait_timeout(g, left)
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0)
    }

    /// Waits up to `timeout` for the first view.
    pub fn wait_first(&self, timeout: Duration) -> Option<View> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        while g.latest.is_none() && g.fatal.is_none() && Instant::now() < deadline {
            g = self.wait(g, deadline);
        }
        g.latest.as_ref().map(|s| s.view.clone())
    }

    /// Waits until the view number differs from `seen`, the guest is recorded as finished, or
    /// `timeout` passes.
    pub fn wait_change(&self, seen: u64, timeout: Duration) -> Option<View> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            let view = g.latest.as_ref().map(|s| s.view.clone());
            let finished = g.latest.as_ref().is_some_and(|s| s.finished.is_some());
            if view.as_ref().is_some_and(|v| v.viewnum != seen)
                || finished
                || g.fatal.is_some()
                || Instant::now() >= deadline
            {
                return view;
            }
            g = self.wait(g, deadline);
        }
    }

    /// What this node holds now; its pings say so from the next one on, which goes at once
    /// (an acknowledgement or a backup's readiness should not wait for the interval).
    pub fn set_holding(&self, holding: Holding) {
        let mut g = self.lock();
        // A new state (or none) comes with a new stream, or none to lose.
        g.primary_lost = None;
        if g.holding != holding {
            g.holding = holding;
            g.ping_now = true;
            self.changed.notify_all();
        }
        if !matches!(holding, Holding::Guest { .. }) {
            self.lease.revoke();
        }
    }

    pub fn holding(&self) -> Holding {
        self.lock().holding
    }

    /// Asks the view service now (without counting as a ping), e.g. when a primary claims a
    /// view this node has not seen yet.
    pub fn refresh(&self) -> Option<View> {
        if let Ok(s) = self.client.status() {
            self.update(s, None);
        }
        self.latest_view()
    }

    /// A status arrived; `sent` is when the ping it answers left (for its lease).
    fn update(&self, s: Status, sent: Option<Instant>) {
        let mut g = self.lock();
        if !node::believe(g.latest.as_ref(), &s) {
            if let Some(l) = g.latest.as_ref()
                && l.service != s.service
            {
                let msg = format!(
                    "the view service now reports history {} but this node follows {}: its state was lost or replaced; ignoring it (restart this node to join the new service)",
                    s.service, l.service
                );
                if g.last_error.as_deref() != Some(&msg) {
                    eprintln!("node {}: {msg}", self.me);
                    g.last_error = Some(msg);
                }
            }
            return;
        }
        g.last_error = None;
        if let Some(sent) = sent
            && s.lease_ms > 0
            && s.view.is_primary(&self.me, self.incarnation)
        {
            self.lease.grant(sent, s.lease_ms);
        }
        let new_view = g.latest.as_ref().is_none_or(|l| l.view != s.view);
        if new_view {
            // Tell the service at once that this node knows it (the primary's ack).
            g.ping_now = true;
        }
        g.latest = Some(s);
        self.changed.notify_all();
    }

    pub fn stop(&self) {
        let mut g = self.lock();
        g.stop = true;
        self.changed.notify_all();
    }

    /// The next ping's contents; `None` once stopped.
    fn next_ping(&self) -> Option<PingRequest> {
        let mut g = self.lock();
        if g.stop || g.fatal.is_some() {
            return None;
        }
        g.seq += 1;
        g.ping_now = false;
        let (viewnum, holds) = node::ping_fields(g.holding, g.latest.as_ref().map(|s| &s.view));
        let viewnum_known = g.latest.as_ref().map(|s| s.view.viewnum);
        Some(PingRequest {
            server: self.me.clone(),
            viewnum,
            incarnation: Some(self.incarnation),
            seq: Some(g.seq),
            holds: Some(holds),
            finished: g.report_end,
            primary_lost: g.primary_lost.filter(|v| Some(*v) == viewnum_known),
        })
    }

    /// Sleeps until the next ping is due: the interval, or sooner while holding a lease (it
    /// is renewed three times per lease), or at once when asked to.
    fn sleep_until_due(&self, sent: Instant) {
        let mut every = self.interval;
        let remaining = self.lease.remaining();
        if !remaining.is_zero() {
            every = every.min(remaining / 3).max(Duration::from_millis(1));
        }
        let due = sent + every;
        let mut g = self.lock();
        while !g.ping_now && !g.stop && Instant::now() < due {
            g = self.wait(g, due);
        }
    }
}

/// A process identity larger than any earlier run of this node had: microseconds since the Unix
/// epoch, below 2^53 (so JSON tools that read numbers as doubles keep it exact; until the year
/// 2255). The view service takes a larger incarnation for a restart and refuses a smaller one, so
/// a ping an earlier run sent that arrives late can neither pass for this run nor depose it. A
/// clock stepped back across a restart gets this run refused (it exits), not confused with the
/// earlier one.
fn new_incarnation() -> u64 {
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64);
    (us & ((1 << 53) - 1)).max(1)
}

/// Pings until stopped. An unreachable view service is reported once per outage; the node
/// keeps its role meanwhile (the service cannot change it without its pings), but a primary
/// stops releasing output when its lease runs out.
pub fn spawn_pinger(views: Arc<Views>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("view-pinger".into())
        .spawn(move || {
            while let Some(req) = views.next_ping() {
                let sent = Instant::now();
                match views.client.ping(&req) {
                    Ok(s) => views.update(s, Some(sent)),
                    Err(ClientError::Status {
                        status: 409,
                        message,
                        ..
                    }) => {
                        eprintln!(
                            "node {}: the view service refused this node: {message}",
                            views.me
                        );
                        emit(&NodeEvent::Refused { message: &message });
                        views.lease.revoke();
                        let mut g = views.lock();
                        g.fatal = Some(message);
                        views.changed.notify_all();
                        return;
                    }
                    Err(ClientError::Status {
                        status: 400,
                        message,
                        ..
                    }) if req.primary_lost.is_some() => {
                        // A view service older than the request to be promoted refuses the
                        // field it does not know: ask no more, and let missed pings decide.
                        eprintln!(
                            "node {}: the view service refused the request to be promoted ({message}); the failover waits for the primary's missed pings",
                            views.me
                        );
                        views.lock().primary_lost = None;
                        continue;
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        let mut g = views.lock();
                        if g.last_error.as_deref() != Some(&msg) {
                            eprintln!("node {}: view service unreachable: {msg}", views.me);
                            emit(&NodeEvent::ViewServiceUnreachable { error: &msg });
                            g.last_error = Some(msg);
                        }
                    }
                }
                views.sleep_until_due(sent);
            }
        })
}
