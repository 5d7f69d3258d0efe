//! Host time, the one clock the recorder reads. Replay never calls it: it answers from the log.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A source of time outside the guest.
pub trait HostClock: Send + Sync + std::fmt::Debug {
    /// Monotonic nanoseconds since this clock was created.
    fn monotonic_ns(&self) -> u64;
    /// Seconds since the Unix epoch, UTC.
    fn wall_unix_secs(&self) -> u64;
}

#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl HostClock for SystemClock {
    fn monotonic_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
    fn wall_unix_secs(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}
