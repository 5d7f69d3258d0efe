//! Stopping a running vCPU from another thread.
//!
//! A real-time signal sent to the vCPU thread makes `KVM_RUN` return `EINTR` at an instruction
//! boundary. The handler also sets `kvm_run.immediate_exit`, so a kick that arrives while the
//! thread is in userspace (between two runs) is not lost: the next `KVM_RUN` returns at once.
//! One vCPU per process, so one static slot for the `immediate_exit` byte is enough.

use std::sync::atomic::{AtomicPtr, Ordering};

use vmm_sys_util::signal::{SIGRTMIN, register_signal_handler};

/// Points at `kvm_run.immediate_exit` of the process's one vCPU, or null before it exists.
static IMMEDIATE_EXIT: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_kick(_num: libc::c_int, _info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let ptr = IMMEDIATE_EXIT.load(Ordering::Acquire);
    if !ptr.is_null() {
        // SAFETY: the pointer targets the `immediate_exit` byte of the vCPU's mmap'd `kvm_run`,
        // which stays mapped for the life of the process once published (see `publish`).
        // A volatile byte store is async-signal-safe.
        unsafe { std::ptr::write_volatile(ptr, 1) };
    }
    std::sync::atomic::fence(Ordering::SeqCst);
}

/// The signal number used for kicks.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the kick handler (idempotent) and publishes the `immediate_exit` byte of the vCPU.
///
/// `immediate_exit` must point into a `kvm_run` mapping that lives as long as the process (the
/// VMM never unmaps its vCPU before exiting).
pub fn publish(immediate_exit: *mut u8) -> std::io::Result<()> {
    IMMEDIATE_EXIT.store(immediate_exit, Ordering::Release);
    register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Forgets the published `immediate_exit` byte: call before the vCPU is unmapped, so a late
/// kick cannot write into freed memory.
pub fn unpublish() {
    IMMEDIATE_EXIT.store(std::ptr::null_mut(), Ordering::Release);
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
