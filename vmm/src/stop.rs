//! A user's request to end a run early (Ctrl-C, SIGTERM): the vCPU loop ends the log cleanly,
//! with an `End { Stopped }` entry, at the next guest exit; a run that records nothing ends at
//! the kick that the request sends.
//!
//! A log ends only at a guest exit: every log entry carries a state check of the registers
//! there, and an exit is a position replay reaches without approaching it. A recorded guest
//! that never exits again (no timer, no I/O) cannot be stopped cleanly; a second signal ends the
//! process at once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::vcpu::kick::Kicker;

/// Shared between whoever asks for the stop (a signal-watching thread) and the vCPU loop.
#[derive(Debug, Default)]
pub struct StopRequest {
    requested: AtomicBool,
    /// The running vCPU's thread while a run is attached, to kick it out of the guest.
    vcpu: Mutex<Option<Kicker>>,
}

impl StopRequest {
    /// A request nobody has made yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the run to end at its next guest exit and kicks the vCPU so it looks soon.
    pub fn request(&self) {
        self.requested.store(true, Ordering::SeqCst);
        if let Ok(vcpu) = self.vcpu.lock()
            && let Some(kicker) = *vcpu
        {
            kicker.kick();
        }
    }

    /// Whether a stop was asked for.
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// Lets `request` kick the vCPU thread `kicker` names until the guard is dropped (the
    /// thread must outlive the guard: a kick to an exited thread is undefined).
    pub(crate) fn attach(&self, kicker: Kicker) -> Attached<'_> {
        if let Ok(mut vcpu) = self.vcpu.lock() {
            *vcpu = Some(kicker);
        }
        Attached { stop: self }
    }
}

/// Detaches the vCPU thread from a [`StopRequest`] when dropped.
#[derive(Debug)]
pub(crate) struct Attached<'a> {
    stop: &'a StopRequest,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        if let Ok(mut vcpu) = self.stop.vcpu.lock() {
            *vcpu = None;
        }
    }
}
