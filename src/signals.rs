//! SIGINT and SIGTERM, taken by a thread that waits for them rather than by a handler, so what
//! happens then (resigning a leadership, ending a recording cleanly) is ordinary code.

/// SIGINT and SIGTERM, blocked so that only [`ExitSignals::watch`] receives them.
#[derive(Clone, Copy)]
pub struct ExitSignals {
    set: libc::sigset_t,
}

impl ExitSignals {
    /// Blocks SIGINT and SIGTERM in the calling thread and so in every thread it starts from
    /// now on: call it before starting any.
    pub fn block() -> std::io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t we own; these only write to it and to this
        // thread's signal mask.
        let rc = unsafe {
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
        };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(Self { set })
    }

    /// Calls `on_signal` with each signal as it arrives, on a thread of its own.
    pub fn watch(
        self,
        mut on_signal: impl FnMut(libc::c_int) + Send + 'static,
    ) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("exit-signals".into())
            .spawn(move || {
                loop {
                    let mut sig = 0;
                    // SAFETY: `set` is an initialised sigset_t and `sig` a valid place for the
                    // result; the signals are blocked in every thread.
                    if unsafe { libc::sigwait(&self.set, &mut sig) } != 0 {
                        return;
                    }
                    on_signal(sig);
                }
            })
            .map(|_| ())
    }
}

/// For a command whose whole job is printing (`log inspect`, `log dump`): a reader that went
/// away (`| head`) ends the process quietly, as it ends `cat`, instead of a failed print
/// panicking (Rust ignores SIGPIPE, so the write fails instead). Never for a VMM: its output
/// is the guest's, and a closed stdout must not stop the guest.
pub fn die_quietly_on_closed_pipe() {
    // SAFETY: restoring a signal's default disposition touches no memory of ours; nothing in
    // this process handles SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
