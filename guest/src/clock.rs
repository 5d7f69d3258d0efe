//! Monotonic nanosecond clock from PIT ticks plus the latched sub-tick count.
//! The guest must never read the TSC (non-deterministic and not emulated), so
//! this is its only time source besides the RTC.

use crate::pit;
use crate::sync::{Global, without_interrupts};
use core::sync::atomic::{AtomicU64, Ordering};

static TICKS: AtomicU64 = AtomicU64::new(0);

struct State {
    reload: u64,
    last_ns: u64,
}

/// Only touched with interrupts disabled (init runs before they are enabled;
/// `now_ns` wraps itself in `without_interrupts`).
static STATE: Global<State> = Global::new(State {
    reload: 0,
    last_ns: 0,
});

pub fn init(hz: u32) {
    let reload = pit::reload_for(hz);
    // SAFETY: called once at boot with interrupts disabled.
    unsafe { (*STATE.get()).reload = u64::from(reload) };
    pit::init(reload);
}

/// Called from the timer ISR.
pub fn tick() {
    TICKS.fetch_add(1, Ordering::SeqCst);
}

pub fn ticks() -> u64 {
    TICKS.load(Ordering::SeqCst)
}

pub fn now_ns() -> u64 {
    without_interrupts(|| {
        // SAFETY: interrupts are disabled, so nothing else touches STATE.
        let state = unsafe { &mut *STATE.get() };
        if state.reload == 0 {
            return state.last_ns;
        }
        // SAFETY: interrupts are disabled around latch + reads.
        let count = u64::from(unsafe { pit::read_count() });
        let elapsed = state.reload.saturating_sub(count);
        let counts = ticks() * state.reload + elapsed;
        // Split to stay in u64 without a 128-bit division.
        let ns = counts / pit::INPUT_HZ * 1_000_000_000
            + (counts % pit::INPUT_HZ) * 1_000_000_000 / pit::INPUT_HZ;
        // A tick can be pending (counter already reloaded, IRQ not yet
        // taken) while we read; clamp instead of going backwards.
        state.last_ns = state.last_ns.max(ns);
        state.last_ns
    })
}
