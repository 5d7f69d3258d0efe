//! Where the replayer's entries come from: a log file read into memory, or (later) the logging
//! channel from a live primary.

use std::collections::VecDeque;

use logging_channel::format::Frame;

/// Why the replayer could not get its next entry.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The log could not be read.
    #[error("reading the replay log failed")]
    Log(#[from] logging_channel::file::LogError),
}

/// Where the replayer's entries come from, in seq order.
pub trait EntrySource {
    /// The next entry without consuming it; `None` when the log has no more entries.
    fn peek(&mut self) -> Result<Option<&Frame>, SourceError>;
    /// Takes the next entry; `None` when the log has no more.
    fn pop(&mut self) -> Result<Option<Frame>, SourceError>;
    /// No entry will come that is not already here, and none can be had again: a live stream
    /// whose primary is gone (or fenced off). The replay of what is left is the last chance to
    /// reach the log's end, so it approaches positions carefully.
    fn final_stretch(&self) -> bool {
        false
    }
    /// The replay saved the machine here (a checkpoint): a source that can hand entries out
    /// again keeps, from now on, those it hands out, so that the replay can go back to this
    /// point (`checkpoint::Rewindable`). Others ignore it.
    fn checkpointed(&mut self) {}
}

/// Entries already in memory, e.g. a whole log file.
#[derive(Debug, Default)]
pub struct VecSource {
    frames: VecDeque<Frame>,
}

impl VecSource {
    /// A source of `frames`, in order.
    pub fn new(frames: impl IntoIterator<Item = Frame>) -> Self {
        Self {
            frames: frames.into_iter().collect(),
        }
    }
}

impl EntrySource for VecSource {
    fn peek(&mut self) -> Result<Option<&Frame>, SourceError> {
        Ok(self.frames.front())
    }
    fn pop(&mut self) -> Result<Option<Frame>, SourceError> {
        Ok(self.frames.pop_front())
    }
}

/// Entries arriving live from a primary over the logging channel. The replayer blocks in
/// `peek` while the buffer is empty (the backup stalls); when the primary is gone and every
/// received entry was consumed, the source ends and `ended_by` says why.
///
/// It also tells the primary how far the replay has come (`Replayed`), so the primary can slow
/// down before the backup falls far behind: at most every [`REPORT_EVERY`] or
/// [`REPORT_ENTRIES`] entries, and whenever the replay has caught up with what arrived or is
/// about to run a long stretch (more than [`LONG_STRETCH_NS`] of recorded time) toward the next
/// entry.
pub struct NetSource {
    rx: logging_channel::net::LogReceiver,
    front: Option<Frame>,
    ended_by: Option<logging_channel::net::ChannelError>,
    /// (seq, t_ns) of the newest entry handed to the replayer, and the seq last reported.
    popped: Option<(u64, u64)>,
    reported: Option<u64>,
    last_report: std::time::Instant,
    watch: Option<StreamWatch>,
    last_watch: std::time::Instant,
}

/// Asked every [`WATCH_EVERY`] while entries are read: `Some(reason)` stops taking entries from
/// the primary (nothing more is received or acknowledged); what was received is still replayed.
pub type StreamWatch = Box<dyn FnMut() -> Option<String> + Send>;

const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

impl std::fmt::Debug for NetSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetSource")
            .field("rx", &self.rx)
            .field("popped", &self.popped)
            .field("ended_by", &self.ended_by)
            .field("watched", &self.watch.is_some())
            .finish_non_exhaustive()
    }
}

const REPORT_EVERY: std::time::Duration = std::time::Duration::from_millis(2);
const REPORT_ENTRIES: u64 = 64;
/// Recorded time to the next entry past which the replay reports at once, whatever
/// [`REPORT_EVERY`] says: that much guest execution lies ahead before the next report.
const LONG_STRETCH_NS: u64 = 2_000_000;

impl NetSource {
    /// A source over an accepted stream.
    pub fn new(rx: logging_channel::net::LogReceiver) -> Self {
        Self {
            rx,
            front: None,
            ended_by: None,
            popped: None,
            reported: None,
            last_report: std::time::Instant::now(),
            watch: None,
            last_watch: std::time::Instant::now(),
        }
    }

    /// Stops the stream when `watch` says so (e.g. the view no longer makes this node the
    /// sender's backup).
    pub fn with_watch(mut self, watch: StreamWatch) -> Self {
        self.watch = Some(watch);
        self
    }

    fn check_watch(&mut self) {
        if self.last_watch.elapsed() < WATCH_EVERY {
            return;
        }
        self.last_watch = std::time::Instant::now();
        if let Some(reason) = self.watch.as_mut().and_then(|w| w()) {
            self.watch = None;
            self.rx.stop_receiving(&reason);
        }
    }

    fn report(&mut self, force: bool) {
        let Some((seq, t_ns)) = self.popped else {
            return;
        };
        let behind = self.reported.map_or(u64::MAX, |r| seq.saturating_sub(r));
        if behind == 0
            || !(force || behind >= REPORT_ENTRIES || self.last_report.elapsed() >= REPORT_EVERY)
        {
            return;
        }
        // A failed report means a failed channel, which `recv` reports in its turn.
        let _ = self.rx.replayed(seq, t_ns);
        self.reported = Some(seq);
        self.last_report = std::time::Instant::now();
    }

    /// The channel back, e.g. to keep it open (and the primary's stream with it) after the
    /// replay ended.
    pub fn into_receiver(self) -> logging_channel::net::LogReceiver {
        self.rx
    }

    /// Console bytes the primary said it released on this stream.
    pub fn released(&self) -> u64 {
        self.rx.released()
    }

    /// Why the stream ended, once it has (the primary died, said goodbye, or was fenced off).
    pub fn ended_by(&self) -> Option<&logging_channel::net::ChannelError> {
        self.ended_by.as_ref()
    }

    /// The next entry if it has already arrived, without waiting for one.
    fn take_buffered(&mut self) -> Option<&Frame> {
        if self.front.is_none() && self.ended_by.is_none() && self.rx.buffered() > 0 {
            match self.rx.recv(std::time::Duration::ZERO) {
                Ok(frame) => self.front = frame,
                Err(e) => self.ended_by = Some(e),
            }
        }
        self.front.as_ref()
    }

    fn fill(&mut self) {
        if self.front.is_none() && self.ended_by.is_none() && self.rx.buffered() == 0 {
            // About to wait for the primary: it should know the replay has caught up.
            self.report(true);
        }
        while self.front.is_none() && self.ended_by.is_none() {
            self.check_watch();
            match self.rx.recv(WATCH_EVERY) {
                Ok(Some(frame)) => self.front = Some(frame),
                Ok(None) => {}
                Err(e) => self.ended_by = Some(e),
            }
        }
    }
}

impl EntrySource for NetSource {
    fn final_stretch(&self) -> bool {
        self.ended_by.is_some() || !self.rx.is_alive()
    }
    fn peek(&mut self) -> Result<Option<&Frame>, SourceError> {
        self.check_watch();
        self.fill();
        Ok(self.front.as_ref())
    }
    fn pop(&mut self) -> Result<Option<Frame>, SourceError> {
        self.fill();
        let frame = self.front.take();
        if let Some(f) = &frame {
            self.popped = Some((f.seq, f.t_ns));
            // Before a long stretch of guest execution, say how far the replay got: the
            // primary would otherwise count the entries just popped as its backlog for the
            // whole stretch, and wait for them.
            let stretch = self
                .take_buffered()
                .map(|next| next.t_ns.saturating_sub(f.t_ns));
            self.report(stretch.is_some_and(|ns| ns >= LONG_STRETCH_NS));
        }
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, Instant};

    use logging_channel::{Entry, Position};

    use super::*;
    use crate::sink::tests::loopback_channel as pair;

    fn irq(seq: u64, t_ns: u64) -> Frame {
        Frame {
            seq,
            t_ns,
            state_check: 0,
            entry: Entry::Irq {
                pos: Position::AtExit { exits: seq + 1 },
                line: 0,
            },
        }
    }

    fn wait_for(what: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !what() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    #[test]
    fn the_replay_reports_its_progress_before_a_long_stretch() {
        let (sender, receiver) = pair();
        // Two entries close together, then one 50 ms of guest time later.
        for f in [irq(0, 0), irq(1, 100_000), irq(2, 50_000_000)] {
            sender.send(&f).unwrap();
        }
        assert!(wait_for(|| sender.acked() == Some(2)));
        let mut source = NetSource::new(receiver);
        assert_eq!(source.pop().unwrap().map(|f| f.seq), Some(0));
        assert_eq!(source.pop().unwrap().map(|f| f.seq), Some(1));
        // Entry 1 was popped right after entry 0, within the reports' pace, but the replay now
        // runs 50 ms of guest time toward entry 2: the primary hears of entry 1 at once, not
        // when entry 2 is reached.
        assert!(
            wait_for(|| sender.replay_lag().is_some_and(|l| l.entries == 1)),
            "replay lag {:?}",
            sender.replay_lag()
        );
        assert_eq!(sender.replay_backlog().map(|l| l.t_ns), Some(0));
    }
}
