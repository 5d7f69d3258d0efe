//! The host timer behind the PIT: turns the guest-programmed period into interrupt requests.
//!
//! The ticker only *requests*; the vCPU thread decides where an interrupt lands and logs that
//! position. If the guest keeps running without an exit for longer than the bound after a tick,
//! the ticker kicks the vCPU so the interrupt can land mid-execution.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock::{HostClock, SystemClock};

use crossbeam_channel::{Receiver, Sender};

use crate::vcpu::kick::Kicker;

/// When the PIT's channel 0 fires: the period the guest programmed, from when the count was
/// loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TickSchedule {
    /// Host-clock time (ns since the recorder's start) of the first period's start.
    pub epoch_ns: u64,
    /// Time between ticks, ns.
    pub period_ns: u64,
}

#[derive(Debug, Default)]
struct State {
    schedule: Option<TickSchedule>,
    shutdown: bool,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Ticks the vCPU thread has taken; the ticker kicks while this lags what it produced.
    taken: AtomicU64,
}

/// The `pit-ticker` thread: produces a tick per PIT period and kicks the vCPU when one waits
/// longer than the interrupt bound.
#[derive(Debug)]
pub struct Ticker {
    shared: Arc<Shared>,
    ticks: Receiver<()>,
    thread: Option<JoinHandle<()>>,
    current: Option<TickSchedule>,
}

impl Ticker {
    /// `clock` is the clock the PIT's epoch is measured on.
    pub fn spawn(clock: SystemClock, kicker: Kicker, bound: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            taken: AtomicU64::new(0),
        });
        let (tx, rx) = crossbeam_channel::bounded(1024);
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("pit-ticker".into())
            .spawn(move || tick_loop(&worker, &tx, clock, kicker, bound))?;
        Ok(Self {
            shared,
            ticks: rx,
            thread: Some(thread),
            current: None,
        })
    }

    /// Follows the guest's PIT programming (called after every PIT access; cheap when unchanged).
    pub fn set_schedule(&mut self, schedule: Option<TickSchedule>) {
        if schedule == self.current {
            return;
        }
        self.current = schedule;
        if let Ok(mut st) = self.shared.state.lock() {
            st.schedule = schedule;
            self.shared.changed.notify_one();
        }
    }

    /// Takes every tick produced so far; returns how many.
    pub fn take(&self) -> u64 {
        let n = self.ticks.try_iter().count() as u64;
        self.shared.taken.fetch_add(n, Ordering::AcqRel);
        n
    }

    /// Waits up to `timeout` for a tick (used while the guest is halted).
    pub fn wait(&self, timeout: Duration) -> u64 {
        match self.ticks.recv_timeout(timeout) {
            Ok(()) => {
                self.shared.taken.fetch_add(1, Ordering::AcqRel);
                1 + self.take()
            }
            Err(_) => 0,
        }
    }

    /// Whether the guest has programmed a periodic timer.
    pub fn is_running(&self) -> bool {
        self.current.is_some()
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.shutdown = true;
            self.shared.changed.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tick_loop(
    shared: &Shared,
    tx: &Sender<()>,
    clock: SystemClock,
    kicker: Kicker,
    bound: Duration,
) {
    let mut produced: u64 = 0;
    let mut next_index: Option<(TickSchedule, u64)> = None;
    loop {
        let schedule = {
            let Ok(mut st) = shared.state.lock() else {
                return;
            };
            while st.schedule.is_none() && !st.shutdown {
                st = match shared.changed.wait(st) {
                    Ok(g) => g,
                    Err(_) => return,
                };
            }
            if st.shutdown {
                return;
            }
            match st.schedule {
                Some(s) => s,
                None => continue,
            }
        };
        // Tick k fires at epoch + (k+1)*period, like a PIT counting down from its reload value.
        let now_ns = clock.monotonic_ns();
        let k = match next_index {
            Some((s, k)) if s == schedule => k,
            _ => now_ns.saturating_sub(schedule.epoch_ns) / schedule.period_ns.max(1),
        };
        let due = clock.instant_at(schedule.epoch_ns + (k + 1) * schedule.period_ns);
        if !sleep_until(shared, due, schedule) {
            next_index = None;
            continue;
        }
        next_index = Some((schedule, k + 1));
        produced += 1;
        if tx.try_send(()).is_err() {
            // The vCPU thread is far behind; a PIT edge that is already pending is enough.
            produced -= 1;
        }
        if !sleep_until(shared, Instant::now() + bound, schedule) {
            continue;
        }
        if shared.taken.load(Ordering::Acquire) < produced {
            kicker.kick();
        }
    }
}

/// Sleeps until `deadline`; false if the schedule changed or the ticker is shutting down.
fn sleep_until(shared: &Shared, deadline: Instant, schedule: TickSchedule) -> bool {
    let Ok(mut st) = shared.state.lock() else {
        return false;
    };
    loop {
        if st.shutdown || st.schedule != Some(schedule) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        st = match shared.changed.wait_timeout(st, deadline - now) {
            Ok((g, _)) => g,
            Err(_) => return false,
        };
    }
}
