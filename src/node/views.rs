//! The node's line to the viewserver: a thread pings every interval with the view this node
//! vouches for, and everyone else reads the latest view from here.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use viewserver::service::View;

#[derive(Debug, Default)]
struct Inner {
    latest: Option<View>,
    /// What the node pings with: 0 until it has state worth keeping; the primary's acked view.
    ack: u64,
    /// Ping with the latest view number instead of `ack` (backups and idle nodes: only the
    /// primary's number acknowledges anything, and a backup with state must not look restarted).
    follow_latest: bool,
    last_error: Option<String>,
    stop: bool,
}

#[derive(Debug)]
pub struct Views {
    inner: Mutex<Inner>,
    changed: Condvar,
    pub viewserver: String,
    pub me: String,
    pub interval: Duration,
}

impl Views {
    pub fn new(viewserver: String, me: String, interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            changed: Condvar::new(),
            viewserver,
            me,
            interval,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn latest(&self) -> Option<View> {
        self.lock().latest.clone()
    }

    /// Waits up to `timeout` for the first view.
    pub fn wait_first(&self, timeout: Duration) -> Option<View> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        while g.latest.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        g.latest.clone()
    }

    /// Waits until the view differs from `seen` or `timeout` passes.
    pub fn wait_change(&self, seen: u64, timeout: Duration) -> Option<View> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            if g.latest.as_ref().is_some_and(|v| v.viewnum != seen) {
                return g.latest.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                return g.latest.clone();
            }
            g = self
                .changed
                .wait_timeout(g, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// The primary acknowledges `viewnum` (its backup has state, or it has none).
    pub fn ack(&self, viewnum: u64) {
        let mut g = self.lock();
        g.follow_latest = false;
        g.ack = viewnum;
    }

    /// A backup or idle node: ping with the latest view number.
    pub fn follow(&self) {
        self.lock().follow_latest = true;
    }

    /// The node has no state (again): ping 0, so the viewserver treats it as restarted.
    pub fn stateless(&self) {
        let mut g = self.lock();
        g.follow_latest = false;
        g.ack = 0;
    }

    /// Asks the viewserver now (without counting as a ping), e.g. when a primary claims a
    /// view this node has not seen yet.
    pub fn refresh(&self) -> Option<View> {
        if let Ok(v) = viewserver::get_view(
            &self.viewserver,
            self.interval.max(Duration::from_millis(200)),
        ) {
            self.update(v);
        }
        self.latest()
    }

    fn update(&self, v: View) {
        let mut g = self.lock();
        if g.latest.as_ref().is_none_or(|l| l.viewnum <= v.viewnum) {
            g.latest = Some(v);
        }
        g.last_error = None;
        self.changed.notify_all();
    }

    pub fn stop(&self) {
        self.lock().stop = true;
    }
}

/// Pings every `views.interval` until stopped. An unreachable viewserver is reported once per
/// outage; the node keeps its role meanwhile (the viewserver cannot change it without acks).
pub fn spawn_pinger(views: Arc<Views>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("view-pinger".into())
        .spawn(move || {
            loop {
                let (viewnum, stop) = {
                    let g = views.lock();
                    let n = if g.follow_latest {
                        g.latest.as_ref().map_or(0, |v| v.viewnum)
                    } else {
                        g.ack
                    };
                    (n, g.stop)
                };
                if stop {
                    return;
                }
                let timeout = views.interval.max(Duration::from_millis(200));
                match viewserver::ping(&views.viewserver, &views.me, viewnum, timeout) {
                    Ok(v) => views.update(v),
                    Err(e) => {
                        let msg = e.to_string();
                        let mut g = views.lock();
                        if g.last_error.as_deref() != Some(&msg) {
                            eprintln!("node {}: viewserver unreachable: {msg}", views.me);
                            g.last_error = Some(msg);
                        }
                    }
                }
                std::thread::sleep(views.interval);
            }
        })
}
