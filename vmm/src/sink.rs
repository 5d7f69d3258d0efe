//! Where the recorder's entries go: nowhere (a plain run), a log file, or (later) the logging
//! channel to a backup.

use std::path::Path;

use logging_channel::file::LogWriter;
use logging_channel::format::{Entry, Header};

/// Why a live run's entries could not be logged.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Writing the log file failed.
    #[error("writing the replay log failed")]
    Log(#[from] logging_channel::file::LogError),
    /// Streaming to the backup failed.
    #[error("streaming the log to the backup failed")]
    Channel(#[from] logging_channel::net::ChannelError),
    /// The backup did not acknowledge everything in `NetSink::finish`'s time.
    #[error("the backup did not acknowledge the log up to entry #{last} in time")]
    Unacknowledged {
        /// The newest entry sent.
        last: u64,
    },
    /// Another node is primary now (`Replication::supersede`): the guest stops at its next entry.
    #[error("another node is primary now")]
    Superseded,
    /// Saving the machine for a new backup failed.
    #[error("saving the machine for the new backup failed")]
    State(#[from] crate::snapshot::SnapshotError),
}

/// What the vCPU thread does after [`LogSink::hand_off`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Runs the guest on: more entries are coming soon.
    RunsGuest,
    /// Waits for a tick or a frame: nothing more comes until then.
    Waits,
}

impl Then {
    /// Puts `sender`'s queued entries on the wire as this moment requires: what is due while
    /// the guest runs on, everything before a wait.
    pub fn push(self, sender: &logging_channel::net::LogSender) {
        match self {
            Self::RunsGuest => sender.push_due(),
            Self::Waits => sender.push(),
        }
    }
}

/// Where a live run's entries go: nowhere, a file, memory, or a backup.
pub trait LogSink {
    /// False for a plain run: nothing is logged and no digests are computed.
    fn is_recording(&self) -> bool;
    /// Logs `entry`, recorded at `t_ns` with state check `state_check` (0: not checked); the sink
    /// numbers entries.
    fn append(&mut self, t_ns: u64, state_check: u64, entry: &Entry) -> Result<(), SinkError>;
    /// Pushes buffered entries out, so a crash of the VMM loses at most what came after.
    fn flush(&mut self) -> Result<(), SinkError>;
    /// The vCPU thread is about to run the guest (`then` says so) or to wait for an event. A
    /// sink may gather one exit's entries into one write; entries that output waits for, and
    /// every entry before a wait, must be on their way now. Other entries may be held back
    /// briefly (`ChannelConfig::batch_hold`) to go with the next exit's.
    fn hand_off(&mut self, _then: Then) {}
    /// Whether the recorder should log `Output` entries (console output is held until the log
    /// up to it is acknowledged).
    fn output_markers(&self) -> bool {
        false
    }
    /// Console bytes released to the world so far (for `Output` entries).
    fn released(&self) -> u64 {
        0
    }
    /// Whether the sink wants the machine's state at the next clean point (a new backup needs
    /// it). Called at every exit: must be cheap.
    fn state_wanted(&self) -> bool {
        false
    }
    /// The guest ended (its `End` entry is logged) at `point`: a sink that hands out states
    /// keeps it, to give a backup that still needs one the finished machine.
    fn guest_ended(&mut self, _point: crate::snapshot::LogPoint, _how: crate::outcome::Ended) {}
    /// The machine, stopped at a clean point, with where the log stands there.
    fn take_state(
        &mut self,
        _m: &mut crate::machine::Machine,
        _point: crate::snapshot::LogPoint,
    ) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A plain run: no log.
#[derive(Debug, Default)]
pub struct NullSink;

impl LogSink for NullSink {
    fn is_recording(&self) -> bool {
        false
    }
    fn append(&mut self, _t_ns: u64, _state_check: u64, _entry: &Entry) -> Result<(), SinkError> {
        Ok(())
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// A replay log on disk.
#[derive(Debug)]
pub struct FileSink {
    writer: LogWriter,
}

impl FileSink {
    /// Creates the log at `path` with `header`, marked incomplete until `finish`.
    pub fn create(path: &Path, header: &Header) -> Result<Self, SinkError> {
        Ok(Self {
            writer: LogWriter::create(path, header)?,
        })
    }

    /// Marks the log complete (only after its `End` entry was appended).
    pub fn finish(self) -> Result<(), SinkError> {
        Ok(self.writer.finish()?)
    }

    /// Entries appended so far.
    pub fn entries(&self) -> u64 {
        self.writer.entries_written()
    }

    /// Bytes written so far, prefix included.
    pub fn bytes(&self) -> u64 {
        self.writer.bytes_written()
    }
}

impl LogSink for FileSink {
    fn is_recording(&self) -> bool {
        true
    }
    fn append(&mut self, t_ns: u64, state_check: u64, entry: &Entry) -> Result<(), SinkError> {
        self.writer.append(t_ns, state_check, entry)?;
        Ok(())
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(self.writer.flush()?)
    }
}

/// The log streamed live to a backup over the logging channel.
#[derive(Debug)]
pub struct NetSink {
    sender: logging_channel::net::LogSender,
    next_seq: u64,
}

impl NetSink {
    /// A sink over an established channel; entries continue at the seq the backup welcomed.
    pub fn new(sender: logging_channel::net::LogSender) -> Self {
        let next_seq = sender.welcome_seq();
        Self { sender, next_seq }
    }

    /// Waits until the backup acknowledged everything sent, then closes the channel.
    pub fn finish(self, timeout: std::time::Duration) -> Result<(), SinkError> {
        if let Some(last) = self.next_seq.checked_sub(1)
            && !self.sender.wait_acked(last, timeout)?
        {
            return Err(SinkError::Unacknowledged { last });
        }
        // Everything is acknowledged, the end included: a backup that has replayed it all may
        // have said goodbye (or hung up) first, which is how a stream ends, not a failure.
        if let Err(e) = self.sender.close() {
            tracing::debug!("the backup ended the stream first: {e}");
        }
        Ok(())
    }

    /// How far the backup's buffer is behind (`LogSender::lag`).
    pub fn lag(&self) -> logging_channel::net::Lag {
        self.sender.lag()
    }
}

impl LogSink for NetSink {
    fn is_recording(&self) -> bool {
        true
    }
    fn append(&mut self, t_ns: u64, state_check: u64, entry: &Entry) -> Result<(), SinkError> {
        let frame = logging_channel::format::Frame {
            seq: self.next_seq,
            t_ns,
            state_check,
            entry: entry.clone(),
        };
        // A full window stalls the primary for as long as the backup is behind but alive; a
        // dead backup surfaces as a channel error instead.
        loop {
            match self.sender.queue(&frame) {
                Err(logging_channel::net::ChannelError::WindowFull { .. }) => continue,
                other => break other?,
            }
        }
        self.next_seq += 1;
        Ok(())
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        self.sender.push();
        Ok(())
    }
    fn hand_off(&mut self, then: Then) {
        then.push(&self.sender);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use logging_channel::net::{ChannelConfig, Hello, LogReceiver, LogSender};
    use logging_channel::{EndReason, Position};
    use std::time::Duration;

    /// A primary's and a backup's end of one logging channel on loopback, for unit tests.
    pub(crate) fn loopback_channel() -> (LogSender, LogReceiver) {
        let listener = LogReceiver::listen("127.0.0.1:0").unwrap();
        let addr = listener.local_addr();
        let acceptor = std::thread::spawn(move || {
            listener.accept(
                |_| Ok(()),
                ChannelConfig::default(),
                Some(Duration::from_secs(30)),
            )
        });
        let hello = Hello::new([7; 32], 0, "primary", 0);
        let sender = LogSender::connect(addr, hello, ChannelConfig::default()).unwrap();
        (sender, acceptor.join().unwrap().unwrap())
    }

    /// The backup acknowledges the end and hangs up before the primary closes: the stream
    /// ended as it should, and `finish` says so (it once reported the goodbye as a failure).
    #[test]
    fn a_backup_that_hangs_up_after_acknowledging_the_end_is_a_clean_finish() {
        let (sender, backup) = loopback_channel();
        let mut sink = NetSink::new(sender);
        let end = Entry::End {
            pos: Position::AtExit { exits: 1 },
            reason: EndReason::PowerOff { code: 0 },
        };
        sink.append(1, 0, &end).unwrap();
        sink.flush().unwrap();
        let got = backup.recv(Duration::from_secs(30)).unwrap();
        assert!(matches!(got.map(|f| f.entry), Some(Entry::End { .. })));
        // The backup has it all and leaves first.
        backup.close().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while sink.sender.is_alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!sink.sender.is_alive(), "the goodbye never arrived");
        sink.finish(Duration::from_secs(30)).unwrap();
    }
}
