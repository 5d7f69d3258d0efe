//! The host timer behind the PIT: turns the guest-programmed period into interrupt requests.
//!
//! The ticker only *requests*; the vCPU thread decides where an interrupt lands and logs that
//! position. If the guest keeps running without an exit for longer than the bound after a tick,
//! the ticker kicks the vCPU so the interrupt can land mid-execution.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock::HostClock;

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

/// Where the recorder's timer interrupts come from: it follows the guest's PIT programming and
/// hands over the ticks host time produced. [`Ticker`] is the real one (a thread on host time);
/// the recorder sees only this trait, so what it does with ticks does not depend on how they
/// are made.
pub trait TickSource {
    /// Follows the guest's PIT programming (called after every PIT access; cheap when unchanged).
    fn set_schedule(&mut self, schedule: Option<TickSchedule>);
    /// Takes every tick produced so far; returns how many.
    fn take(&self) -> u64;
    /// Waits up to `timeout` for a tick or a [`Doorbell`] ring (used while the guest is
    /// halted); returns how many ticks it took (0 after a ring or a timeout).
    fn wait(&self, timeout: Duration) -> u64;
    /// A handle that wakes [`TickSource::wait`]: other host inputs (received frames) wake a
    /// halted guest's vCPU thread through it.
    fn doorbell(&self) -> Doorbell;
    /// Whether the guest has programmed a periodic timer.
    fn is_running(&self) -> bool;
}

/// What wakes a vCPU thread waiting in [`TickSource::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Tick,
    Ring,
}

/// Wakes the vCPU thread of a halted guest when host input other than a tick arrives.
#[derive(Debug, Clone)]
pub struct Doorbell(Sender<Wake>);

impl Doorbell {
    /// Wakes the waiter (a ring while the queue is full is dropped: one is already pending).
    pub fn ring(&self) {
        let _ = self.0.try_send(Wake::Ring);
    }
}

/// The `pit-ticker` thread: produces a tick per PIT period and kicks the vCPU when one waits
/// longer than the interrupt bound.
#[derive(Debug)]
pub struct Ticker {
    shared: Arc<Shared>,
    ticks: Receiver<Wake>,
    /// For doorbells: rings go into the same queue as ticks, so one wait sees both.
    ring: Sender<Wake>,
    thread: Option<JoinHandle<()>>,
    current: Option<TickSchedule>,
}

impl Ticker {
    /// `clock` is the clock the PIT's epoch is measured on.
    pub fn spawn<C: HostClock + 'static>(
        clock: C,
        kicker: Kicker,
        bound: Duration,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            taken: AtomicU64::new(0),
        });
        let (tx, rx) = crossbeam_channel::bounded(1024);
        let worker = Arc::clone(&shared);
        let ring = tx.clone();
        let thread = std::thread::Builder::new()
            .name("pit-ticker".into())
            .spawn(move || tick_loop(&worker, &tx, &clock, kicker, bound))?;
        Ok(Self {
            shared,
            ticks: rx,
            ring,
            thread: Some(thread),
            current: None,
        })
    }
}

impl TickSource for Ticker {
    fn set_schedule(&mut self, schedule: Option<TickSchedule>) {
        if schedule == self.current {
            return;
        }
        self.current = schedule;
        if let Ok(mut st) = self.shared.state.lock() {
            st.schedule = schedule;
            self.shared.changed.notify_one();
        }
    }

    fn take(&self) -> u64 {
        let n = self.ticks.try_iter().filter(|w| *w == Wake::Tick).count() as u64;
        self.shared.taken.fetch_add(n, Ordering::AcqRel);
        n
    }

    fn wait(&self, timeout: Duration) -> u64 {
        match self.ticks.recv_timeout(timeout) {
            Ok(Wake::Tick) => {
                self.shared.taken.fetch_add(1, Ordering::AcqRel);
                1 + self.take()
            }
            Ok(Wake::Ring) => self.take(),
            Err(_) => 0,
        }
    }

    fn doorbell(&self) -> Doorbell {
        Doorbell(self.ring.clone())
    }

    fn is_running(&self) -> bool {
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

/// Which tick comes next under `schedule` and when it fires (host-clock ns), given the clock
/// reads `now_ns` and the ticker last produced the tick before `next` under the same schedule.
/// Tick k fires at epoch + (k+1)*period, like a PIT counting down from its reload value. A new
/// schedule starts with the tick due next, so a reprogrammed timer never owes ticks from
/// before it was programmed; an unchanged one goes on one by one, so a late ticker thread
/// catches up on every period it slept through (the vCPU thread takes them as one batch).
pub fn next_tick(
    schedule: TickSchedule,
    now_ns: u64,
    next: Option<(TickSchedule, u64)>,
) -> (u64, u64) {
    let k = match next {
        Some((s, k)) if s == schedule => k,
        _ => now_ns.saturating_sub(schedule.epoch_ns) / schedule.period_ns.max(1),
    };
    let due = schedule
        .epoch_ns
        .saturating_add((k + 1).saturating_mul(schedule.period_ns));
    (k, due)
}

fn tick_loop(
    shared: &Shared,
    tx: &Sender<Wake>,
    clock: &dyn HostClock,
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
        let (k, due_ns) = next_tick(schedule, clock.monotonic_ns(), next_index);
        let due = clock.instant_at(due_ns);
        if !sleep_until(shared, due, schedule) {
            next_index = None;
            continue;
        }
        next_index = Some((schedule, k + 1));
        produced += 1;
        if tx.try_send(Wake::Tick).is_err() {
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

#[cfg(test)]
mod tests {
    use super::*;

    const S: TickSchedule = TickSchedule {
        epoch_ns: 1_000,
        period_ns: 10_000,
    };

    #[test]
    fn a_doorbell_wakes_a_waiting_thread_without_counting_as_a_tick() {
        let t = Ticker::spawn(
            crate::clock::SystemClock::new(),
            Kicker::for_current_thread(),
            Duration::from_millis(1),
        )
        .unwrap();
        let bell = t.doorbell();
        let ringer = std::thread::spawn(move || bell.ring());
        let started = Instant::now();
        assert_eq!(t.wait(Duration::from_secs(60)), 0, "no timer is programmed");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "woken by the ring, not the timeout"
        );
        ringer.join().unwrap();
        assert_eq!(t.take(), 0);
    }

    #[test]
    fn a_new_schedule_starts_with_the_tick_due_next() {
        // Programmed at 1_000; the clock reads 1_000: tick 0 fires one period later.
        assert_eq!(next_tick(S, 1_000, None), (0, 11_000));
        // Read late, at 35_000: ticks 0..=2 would have fired at 11k, 21k, 31k; none is owed.
        assert_eq!(next_tick(S, 35_000, None), (3, 41_000));
        // Exactly on a tick's time: that tick counts as past.
        assert_eq!(next_tick(S, 31_000, None), (3, 41_000));
    }

    #[test]
    fn an_unchanged_schedule_goes_on_one_tick_at_a_time_however_late_the_thread_is() {
        // The thread produced tick 0 and then slept far past ticks 1..4: it still owes tick 1.
        assert_eq!(next_tick(S, 60_000, Some((S, 1))), (1, 21_000));
        assert_eq!(next_tick(S, 60_000, Some((S, 2))), (2, 31_000));
    }

    #[test]
    fn a_reprogrammed_timer_forgets_the_old_count() {
        let faster = TickSchedule {
            epoch_ns: 50_000,
            period_ns: 1_000,
        };
        assert_eq!(next_tick(faster, 50_500, Some((S, 7))), (0, 51_000));
    }

    #[test]
    fn a_clock_behind_the_epoch_or_a_zero_period_does_not_wrap_or_divide_by_zero() {
        assert_eq!(next_tick(S, 0, None), (0, 11_000));
        let zero = TickSchedule {
            epoch_ns: 5,
            period_ns: 0,
        };
        assert_eq!(next_tick(zero, 100, None), (95, 5));
        let huge = TickSchedule {
            epoch_ns: u64::MAX - 1,
            period_ns: u64::MAX,
        };
        assert_eq!(next_tick(huge, u64::MAX, None), (0, u64::MAX));
    }
}
