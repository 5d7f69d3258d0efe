//! Stopping a running vCPU from another thread.
//!
//! A real-time signal sent to the vCPU thread makes `KVM_RUN` return `EINTR` at an instruction
//! boundary. The handler also sets `kvm_run.immediate_exit`, so a kick that arrives while the
//! thread is in userspace (between two runs) is not lost: the next `KVM_RUN` returns at once.
//!
//! The `immediate_exit` byte is published per thread: kicks are always sent to one thread (the
//! vCPU's), and the handler runs on that thread, so it finds that vCPU's byte. (A process-wide
//! slot once sent a kick meant for one test's vCPU to another's when tests ran VMs side by side:
//! the kick was lost and the replay overshot its target.)

use std::cell::Cell;
use std::marker::PhantomData;

use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

thread_local! {
    /// Points at `kvm_run.immediate_exit` of the vCPU this thread runs, or null. Const-initialised
    /// and without a destructor, so reading it is a plain TLS load, safe in a signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_num: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let ptr = IMMEDIATE_EXIT.with(Cell::get);
    if !ptr.is_null() {
        // SAFETY: a non-null slot was set by `publish`, whose caller guarantees the byte stays
        // mapped until the returned guard (on this same thread) clears the slot again.
        // A volatile byte store is async-signal-safe.
        unsafe { std::ptr::write_volatile(ptr, 1) };
    }
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

/// The signal number used for kicks.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// While alive, kicks sent to the thread that published set its vCPU's `immediate_exit`.
/// Dropping it (on that thread: it is neither `Send` nor `Sync`) clears the slot.
#[derive(Debug)]
#[must_use = "kicks stop reaching the vCPU's immediate_exit once the guard is dropped"]
pub struct Published {
    _not_send: PhantomData<*const ()>,
}

impl Drop for Published {
    fn drop(&mut self) {
        IMMEDIATE_EXIT.with(|slot| slot.set(std::ptr::null_mut()));
    }
}

/// Installs the kick handler (idempotent) and publishes the calling thread's vCPU
/// `immediate_exit` byte.
///
/// # Safety
/// `immediate_exit` must point into the `kvm_run` mapping of the vCPU this thread runs, and that
/// mapping must stay mapped until the returned guard is dropped.
pub unsafe fn publish(immediate_exit: *mut u8) -> std::io::Result<Published> {
    IMMEDIATE_EXIT.with(|slot| slot.set(immediate_exit));
    let guard = Published {
        _not_send: PhantomData,
    };
    register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))?;
    Ok(guard)
}

/// A handle that can stop the vCPU thread it was created on.
#[derive(Debug, Clone, Copy)]
pub struct Kicker {
    thread: libc::pthread_t,
}

impl Kicker {
    /// A kicker for the calling thread (call it on the vCPU thread).
    pub fn for_current_thread() -> Self {
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        Self { thread }
    }

    /// Sends the kick signal: the vCPU stops at the next instruction boundary, or at once on its
    /// next `KVM_RUN` if it is between runs.
    pub fn kick(&self) {
        // SAFETY: the thread id came from pthread_self on the vCPU thread, which outlives every
        // kicker user (they are joined or stopped before it returns); the handler is installed.
        unsafe { libc::pthread_kill(self.thread, kick_signal()) };
    }
}

/// A one-shot POSIX timer that sends the kick signal to the vCPU thread itself.
///
/// The timer fires from the interrupt of the CPU the vCPU thread runs on, so no second thread
/// has to be scheduled in time: if this (itself virtualised) host stalls the vCPU's CPU, the
/// guest stalls with it and the kick still lands close to its aim. A helper thread that sleeps
/// or spins was measured waking up to 1 ms late here, far beyond the approach's margin.
#[derive(Debug)]
pub struct ThreadTimer {
    id: libc::timer_t,
}

// SAFETY: a timer_t is a kernel handle; arming or deleting it from any thread is allowed.
unsafe impl Send for ThreadTimer {}

impl ThreadTimer {
    /// A timer that signals the calling thread.
    pub fn for_current_thread() -> std::io::Result<Self> {
        // SAFETY: an all-zero sigevent is a valid starting value; the fields the kernel reads
        // for SIGEV_THREAD_ID are set below.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = kick_signal();
        // SAFETY: gettid has no preconditions.
        sev.sigev_notify_thread_id = unsafe { libc::gettid() };
        let mut id: libc::timer_t = std::ptr::null_mut();
        // SAFETY: both pointers are valid for the duration of the call.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { id })
    }

    fn set(&self, after: std::time::Duration) -> std::io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(after.subsec_nanos() as i32),
            },
        };
        // SAFETY: `id` is a live timer owned by self; `spec` is valid; old value not wanted.
        if unsafe { libc::timer_settime(self.id, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Kicks the thread after `after` (at least 1 ns: zero would disarm).
    pub fn arm(&self, after: std::time::Duration) -> std::io::Result<()> {
        self.set(after.max(std::time::Duration::from_nanos(1)))
    }

    /// Cancels a kick not yet sent.
    pub fn disarm(&self) -> std::io::Result<()> {
        self.set(std::time::Duration::ZERO)
    }
}

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // SAFETY: `id` is a live timer owned by self and deleted exactly once.
        unsafe { libc::timer_delete(self.id) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::mpsc;

    /// Two "vCPU" threads in one process, the second publishing last: a kick sent to the first
    /// sets only the first's byte.
    #[test]
    fn a_kick_sets_only_the_kicked_threads_byte() {
        let bytes = [AtomicU8::new(0), AtomicU8::new(0)];
        let done = Barrier::new(3);
        std::thread::scope(|s| {
            let mut kickers = Vec::new();
            for byte in &bytes {
                let (tx, rx) = mpsc::channel();
                let done = &done;
                s.spawn(move || {
                    // SAFETY: the byte outlives the guard (both live in this scope).
                    let guard = unsafe { publish(byte.as_ptr()) }.expect("publish");
                    tx.send(Kicker::for_current_thread()).expect("send");
                    done.wait();
                    drop(guard);
                });
                kickers.push(rx.recv().expect("published"));
            }
            kickers[0].kick();
            // The handler runs on the kicked thread soon; the bound only keeps a wrong
            // implementation from hanging the test.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while bytes[0].load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
                std::thread::yield_now();
            }
            done.wait();
        });
        assert_eq!(
            bytes[0].load(Ordering::SeqCst),
            1,
            "the kicked thread's byte"
        );
        assert_eq!(
            bytes[1].load(Ordering::SeqCst),
            0,
            "the other thread's byte"
        );
    }
}
