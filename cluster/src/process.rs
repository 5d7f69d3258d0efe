//! Child processes this crate started, signalled by their PID only while the PID is still
//! theirs: until the process is reaped, the kernel keeps its PID (a zombie at worst), so a signal
//! cannot reach some other process that reused it. Dropping a [`Process`] kills and reaps it.

use std::io;
use std::process::{Child, Command, ExitStatus};

/// A signal for a [`Process`] (std offers SIGKILL only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGKILL: the process dies at once, as on a crash.
    Kill,
    /// SIGSTOP: the process freezes (its sockets stay open), as on a long pause.
    Stop,
    /// SIGCONT: a stopped process runs on.
    Cont,
    /// SIGTERM: the process is asked to exit.
    Term,
}

impl Signal {
    fn number(self) -> libc::c_int {
        match self {
            Signal::Kill => libc::SIGKILL,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
            Signal::Term => libc::SIGTERM,
        }
    }

    /// The signal's name without the `SIG` prefix (`KILL`, `STOP`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Signal::Kill => "KILL",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
            Signal::Term => "TERM",
        }
    }
}

/// What went wrong with a child process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program (the first word of the command).
        program: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The process was already reaped: its PID may name another process by now.
    #[error("process {pid} has already ended: its PID is no longer ours to signal")]
    Reaped {
        /// The PID it had.
        pid: u32,
    },
    /// `kill(2)` failed.
    #[error("sending SIG{signal} to process {pid}: {source}")]
    Signal {
        /// The process.
        pid: u32,
        /// The signal's name.
        signal: &'static str,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Waiting for the process failed.
    #[error("waiting for process {pid}: {source}")]
    Wait {
        /// The process.
        pid: u32,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// A child process we started. Signals go to its PID only until it is reaped ([`Self::wait`],
/// [`Self::kill`]); dropping it kills and reaps it, so nothing we started outlives its owner.
#[derive(Debug)]
pub struct Process {
    child: Child,
    status: Option<ExitStatus>,
}

impl Process {
    /// Starts `cmd` (its stdio as `cmd` sets it up).
    pub fn spawn(cmd: &mut Command) -> Result<Self, ProcessError> {
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            program: cmd.get_program().to_string_lossy().into_owned(),
            source,
        })?;
        Ok(Self {
            child,
            status: None,
        })
    }

    /// The std child, for taking its pipes.
    pub(crate) fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has been reaped (killed with [`Self::kill`], or waited for): it runs no more
    /// and its PID is no longer ours.
    pub fn reaped(&self) -> bool {
        self.status.is_some()
    }

    /// How it ended, once reaped.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.status
    }

    /// Sends `signal` to it; refused once it is reaped.
    pub fn signal(&self, signal: Signal) -> Result<(), ProcessError> {
        let pid = self.pid();
        if self.reaped() {
            return Err(ProcessError::Reaped { pid });
        }
        let target = libc::pid_t::try_from(pid).map_err(|_| ProcessError::Signal {
            pid,
            signal: signal.name(),
            source: io::Error::from_raw_os_error(libc::ESRCH),
        })?;
        // SAFETY: kill(2) takes two integers and touches no memory of ours. `target` is the PID
        // of our own child, not reaped yet (checked above), so it names that process and no
        // other; it is never 0 or negative, which would name process groups.
        let rc = unsafe { libc::kill(target, signal.number()) };
        if rc != 0 {
            return Err(ProcessError::Signal {
                pid,
                signal: signal.name(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Reaps it if it has exited; `None` while it runs.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, ProcessError> {
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let pid = self.pid();
        let status = self
            .child
            .try_wait()
            .map_err(|source| ProcessError::Wait { pid, source })?;
        self.status = status;
        Ok(status)
    }

    /// Waits until it exits and reaps it (at once if it already was).
    pub fn wait(&mut self) -> Result<ExitStatus, ProcessError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let pid = self.pid();
        let status = self
            .child
            .wait()
            .map_err(|source| ProcessError::Wait { pid, source })?;
        self.status = Some(status);
        Ok(status)
    }

    /// SIGKILLs it and reaps it (only reaps it if it already exited; nothing if reaped).
    pub fn kill(&mut self) -> Result<ExitStatus, ProcessError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let pid = self.pid();
        // Not reaped, so the PID is still our child's (a zombie at worst, which is no error).
        self.child.kill().map_err(|source| ProcessError::Signal {
            pid,
            signal: Signal::Kill.name(),
            source,
        })?;
        self.wait()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_cont_then_kill_and_no_signal_after_reaping() {
        let mut p = Process::spawn(Command::new("sleep").arg("30")).unwrap();
        p.signal(Signal::Stop).unwrap();
        p.signal(Signal::Cont).unwrap();
        assert!(!p.reaped());
        let status = p.kill().unwrap();
        assert!(!status.success());
        assert!(p.reaped());
        assert!(matches!(
            p.signal(Signal::Stop),
            Err(ProcessError::Reaped { .. })
        ));
        // Killing again is a no-op that reports the same end.
        assert_eq!(p.kill().unwrap(), status);
    }

    #[test]
    fn term_then_wait() {
        let mut p = Process::spawn(Command::new("sleep").arg("30")).unwrap();
        p.signal(Signal::Term).unwrap();
        let status = p.wait().unwrap();
        assert!(!status.success());
        assert!(p.exit_status().is_some());
    }

    #[test]
    fn a_missing_program_is_a_spawn_error() {
        let e = Process::spawn(&mut Command::new("/nonexistent/understudy")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/understudy"), "{e}");
    }

    #[test]
    fn drop_kills() {
        let p = Process::spawn(Command::new("sleep").arg("30")).unwrap();
        let pid = libc::pid_t::try_from(p.pid()).unwrap();
        drop(p);
        // SAFETY: signal 0 only checks whether the PID exists; it was our child and is reaped,
        // so at worst it asks about an unrelated process and sends it nothing.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive);
    }
}
