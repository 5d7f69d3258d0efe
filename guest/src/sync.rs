//! Shared kernel state on a single CPU.
//!
//! There are no other CPUs, so the only concurrency is interrupts. Every user
//! of [`Global`] documents why its access cannot race with an interrupt
//! handler (usually: it runs with interrupts disabled, or only the ISR
//! writes the value).

use core::cell::UnsafeCell;

pub struct Global<T>(UnsafeCell<T>);

// SAFETY: single CPU; callers of `get` uphold exclusive access as documented
// at each use.
unsafe impl<T> Sync for Global<T> {}

impl<T> Global<T> {
    pub const fn new(value: T) -> Self {
        Self(UnsafeCell::new(value))
    }

    pub const fn get(&self) -> *mut T {
        self.0.get()
    }
}

/// Runs `f` with interrupts disabled, restoring the previous IF afterwards so
/// it nests inside ISRs (which already run with IF=0).
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let flags: u64;
    // SAFETY: reads RFLAGS and clears IF; CPL0 only, which all callers are.
    // Not `nomem`: the compiler must not move memory accesses out of the
    // critical section.
    unsafe {
        core::arch::asm!("pushfq", "pop {}", "cli", out(reg) flags);
    }
    let r = f();
    if flags & (1 << 9) != 0 {
        // SAFETY: re-enables interrupts only if they were enabled on entry.
        unsafe { core::arch::asm!("sti", options(nostack)) };
    }
    r
}
