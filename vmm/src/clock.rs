//! Host time, the one clock the recorder reads. Replay never calls it: it answers from the log.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A source of time outside the guest.
pub trait HostClock: Send + Sync + std::fmt::Debug {
    /// Monotonic nanoseconds since this clock was created.
    fn monotonic_ns(&self) -> u64;
    /// Seconds since the Unix epoch, UTC.
    fn wall_unix_secs(&self) -> u64;

    /// The host instant at which this clock reads `ns` (now, for readings already past): how
    /// the ticker sleeps until a tick the guest's timer schedules in this clock's time.
    fn instant_at(&self, ns: u64) -> Instant {
        let now_ns = self.monotonic_ns();
        Instant::now() + std::time::Duration::from_nanos(ns.saturating_sub(now_ns))
    }
}

/// The recorder's clock: host monotonic time since creation (plus a base), and host wall time.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    start: Instant,
    /// What `monotonic_ns` read at `start`: 0 for a fresh clock.
    base_ns: u64,
}

impl SystemClock {
    /// A clock that reads 0 now.
    pub fn new() -> Self {
        Self::continuing(0)
    }

    /// A clock that reads `base_ns` now and runs on from there: a backup that goes live keeps
    /// the guest's time base (its PIT epoch, its clock readings) where the primary left it.
    pub fn continuing(base_ns: u64) -> Self {
        Self {
            start: Instant::now(),
            base_ns,
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl HostClock for SystemClock {
    fn monotonic_ns(&self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.base_ns.saturating_add(elapsed)
    }
    fn wall_unix_secs(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}
