//! Checkpoints of a replay: a copy of the machine at a guest exit, and the entries replayed
//! since, so that a replay whose timed kick landed late (an overshoot: the guest ran past a
//! recorded position) goes back a second or so instead of starting over. For a live backup
//! the alternative is a new state transfer from the primary; for a log file, a replay from
//! the start.
//!
//! A checkpoint holds guest memory page by page, only the pages that are not all zeros (the
//! others are zero again after a restore), the vCPU and devices as a state transfer sends
//! them, and the replay's own bookkeeping (where the log continues, the last transmitted
//! frames). It is taken only at a guest exit where nothing is pending: every entry due there
//! applied, the guest not halted, no frame transmitted that the log has not matched yet.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use logging_channel::format::Frame;

use crate::digest::nonzero_pages;
use crate::machine::Machine;
use crate::outcome::RunStats;
use crate::snapshot::memory::{MemoryError, register_slot, write_page};
use crate::snapshot::{LogPoint, MachineState, SnapshotError};
use crate::source::{EntrySource, SourceError};

const PAGE: usize = 4096;

/// A saved machine and where its replay stood.
#[derive(Debug)]
pub struct Checkpoint {
    /// Indices of the pages saved (those not all zeros), ascending.
    pages: Vec<u32>,
    /// Their contents, `PAGE` bytes each, in the order of `pages`.
    data: Vec<u8>,
    /// vCPU, devices and the log point (`next_seq`: the first entry after the checkpoint).
    state: MachineState,
    /// The replay's last matched transmitted frames, newest last.
    pub recent_frames: Vec<Vec<u8>>,
    /// What the replay had counted here.
    pub counts: EntryCounts,
}

/// A replay's counts that follow the guest (not the work of getting there): a replay that
/// goes back to a checkpoint goes back to these.
#[derive(Debug, Clone, Copy, Default)]
pub struct EntryCounts {
    /// Guest exits replayed.
    pub exits: u64,
    /// Interrupts injected at a guest exit.
    pub interrupts_at_exit: u64,
    /// Interrupts injected mid-execution.
    pub interrupts_precise: u64,
    /// Digests verified.
    pub digests_verified: u64,
}

impl EntryCounts {
    /// Sets `stats`' counts to these, keeping its counts of work (stops, kicks, time).
    pub fn put_back(&self, stats: &mut RunStats) {
        stats.exits = self.exits;
        stats.interrupts_at_exit = self.interrupts_at_exit;
        stats.interrupts_precise = self.interrupts_precise;
    }
}

impl Checkpoint {
    /// Saves `m`, stopped at a guest exit whose I/O is complete, at `point`.
    pub fn take(
        m: &mut Machine,
        point: LogPoint,
        counts: EntryCounts,
        recent_frames: Vec<Vec<u8>>,
        reuse: Option<Self>,
    ) -> Result<Self, SnapshotError> {
        let state = MachineState::save(m, point)?;
        let (mut pages, mut data) = match reuse {
            Some(old) => (old.pages, old.data),
            None => (Vec::new(), Vec::new()),
        };
        pages.clear();
        data.clear();
        for (i, page) in nonzero_pages(m.memory()) {
            pages.push(page_index(i)?);
            data.extend_from_slice(page);
        }
        Ok(Self {
            pages,
            data,
            state,
            recent_frames,
            counts,
        })
    }

    /// Where the log continues after this checkpoint.
    pub fn point(&self) -> LogPoint {
        self.state.point
    }

    /// Bytes of guest memory held.
    pub fn memory_bytes(&self) -> u64 {
        self.data.len() as u64
    }

    /// Puts `m` back to this checkpoint: memory (pages written since are zeroed again),
    /// vCPU, devices and instruction counter. Hardware debugging is switched off.
    pub fn restore(&self, m: &mut Machine) -> Result<(), SnapshotError> {
        const ZEROS: [u8; PAGE] = [0; PAGE];
        // A vCPU stopped at an I/O exit finishes that instruction at its next entry (an `in`
        // writes rax): let it finish now, on the state about to be overwritten, not later on
        // the restored one.
        m.vcpu.complete_pending_exit()?;
        let pages = m.memory().len() / PAGE;
        let mut saved = vec![false; pages];
        for &i in &self.pages {
            if let Some(s) = saved.get_mut(i as usize) {
                *s = true;
            }
        }
        // Pages the checkpoint does not hold were zero then: clear those written since (the
        // indices first, so that no view of memory lives across a write).
        let written_since: Vec<usize> = nonzero_pages(m.memory())
            .map(|(i, _)| i)
            .filter(|&i| !saved.get(i).copied().unwrap_or(false))
            .collect();
        for i in written_since {
            write_page(m, page_index(i)?, &ZEROS)?;
        }
        for (&i, page) in self.pages.iter().zip(self.data.chunks_exact(PAGE)) {
            write_page(m, i, page)?;
        }
        // KVM learns of the guest's writes to its page tables by write-protecting them in its
        // own tables (shadow paging, as on PVM); writes from here go around that, and mappings
        // built from page tables the guest wrote since the checkpoint would outlive them.
        // Removing and adding the memory slot drops every such mapping.
        let bytes = m.memory().len() as u64;
        register_slot(&m.vm, &m.mem, 0, 0)
            .and_then(|()| register_slot(&m.vm, &m.mem, bytes, 0))
            .map_err(|e| {
                SnapshotError::Memory(MemoryError::Write {
                    index: 0,
                    what: format!("re-registering guest memory with KVM: {e}"),
                })
            })?;
        m.vcpu.set_breakpoint(None)?;
        self.state.restore(m)
    }
}

/// Page `i`'s index as page records and errors count them.
fn page_index(i: usize) -> Result<u32, SnapshotError> {
    u32::try_from(i).map_err(|_| {
        SnapshotError::Memory(MemoryError::Read {
            index: u32::MAX,
            what: format!("page {i} is beyond a 32-bit page index"),
        })
    })
}

/// When a replay takes checkpoints, and what it keeps for them.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    /// Wall time between checkpoints (the first is taken at the first chance), at least:
    /// going back costs up to this much replay again. A checkpoint that took longer than
    /// `every / max_share` (a guest that has written much of its memory) spaces the next
    /// ones out so that they cost at most that share of the replay. `None`: no checkpoints.
    pub every: Option<Duration>,
    /// The largest share of the replay's time checkpoints may take (0: one checkpoint, the
    /// first).
    pub max_share: f64,
    /// Entries replayed since the checkpoint are kept up to this many bytes (frames count
    /// their payload); past it the checkpoint is given up until the next one.
    pub max_kept_bytes: usize,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            every: Some(Duration::from_secs(1)),
            max_share: 0.01,
            max_kept_bytes: 64 << 20,
        }
    }
}

impl CheckpointPolicy {
    /// No checkpoints: an overshoot ends the replay.
    pub fn none() -> Self {
        Self {
            every: None,
            ..Self::default()
        }
    }

    /// The wait before the next checkpoint, after one that took `cost`; `None` without
    /// checkpoints.
    pub fn interval_after(&self, cost: Duration) -> Option<Duration> {
        Some(crate::cost_share::spaced(self.every?, cost, self.max_share))
    }
}

/// What a replay's checkpoints cost and did.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckpointStats {
    /// Checkpoints taken.
    pub taken: u64,
    /// Time spent taking them (the guest is stopped meanwhile).
    pub time: Duration,
    /// Bytes of guest memory the last one held.
    pub last_bytes: u64,
    /// Replays that went back to a checkpoint after an overshoot.
    pub rewinds: u64,
    /// Time spent putting the machine back (not the replay again).
    pub rewind_time: Duration,
}

/// The replay's latest checkpoint and when the next one is due.
#[derive(Debug)]
pub struct CheckpointSlot {
    /// The policy.
    pub policy: CheckpointPolicy,
    /// The latest checkpoint, if one was taken.
    pub latest: Option<Checkpoint>,
    next_due: Option<Instant>,
    /// What the latest checkpoint took.
    last_cost: Duration,
    /// Counts and time.
    pub stats: CheckpointStats,
}

impl CheckpointSlot {
    /// An empty slot: the first checkpoint is due at once.
    pub fn new(policy: CheckpointPolicy) -> Self {
        Self {
            policy,
            latest: None,
            next_due: None,
            last_cost: Duration::ZERO,
            stats: CheckpointStats::default(),
        }
    }

    /// Whether a checkpoint is due now.
    pub fn due(&self) -> bool {
        self.policy.every.is_some() && self.next_due.is_none_or(|t| Instant::now() >= t)
    }

    /// Saves `m` at `point` as the latest checkpoint (reusing the previous one's buffers).
    pub fn take(
        &mut self,
        m: &mut Machine,
        point: LogPoint,
        counts: EntryCounts,
        recent_frames: Vec<Vec<u8>>,
    ) -> Result<(), SnapshotError> {
        let started = Instant::now();
        let old = self.latest.take();
        let cp = Checkpoint::take(m, point, counts, recent_frames, old)?;
        self.stats.taken += 1;
        self.stats.last_bytes = cp.memory_bytes();
        self.latest = Some(cp);
        let now = Instant::now();
        let cost = now - started;
        self.stats.time += cost;
        self.last_cost = cost;
        self.next_due = self
            .policy
            .interval_after(cost)
            .and_then(|d| now.checked_add(d));
        Ok(())
    }

    /// The replay went back to the latest checkpoint: the next one is a whole period away, so
    /// that the stretch that overshot is replayed from this one.
    pub fn rewound(&mut self, took: Duration) {
        self.stats.rewinds += 1;
        self.stats.rewind_time += took;
        self.next_due = self
            .policy
            .interval_after(self.last_cost)
            .and_then(|d| Instant::now().checked_add(d));
    }
}

/// An entry source that keeps what it handed out since the latest checkpoint, so that a
/// replay can go back there ([`Rewindable::rewind`]) and get the same entries again.
pub struct Rewindable<'a> {
    inner: &'a mut dyn EntrySource,
    /// Handed out since the checkpoint, oldest first.
    kept: VecDeque<Frame>,
    kept_bytes: usize,
    /// To hand out again before anything new from `inner`.
    again: VecDeque<Frame>,
    max_kept_bytes: usize,
    /// Whether `kept` holds everything since the checkpoint (false past the byte limit, or
    /// before any checkpoint).
    intact: bool,
}

impl std::fmt::Debug for Rewindable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewindable")
            .field("kept", &self.kept.len())
            .field("kept_bytes", &self.kept_bytes)
            .field("again", &self.again.len())
            .field("intact", &self.intact)
            .finish_non_exhaustive()
    }
}

impl<'a> Rewindable<'a> {
    /// Wraps `inner`, keeping up to `max_kept_bytes` of entries per checkpoint.
    pub fn new(inner: &'a mut dyn EntrySource, max_kept_bytes: usize) -> Self {
        Self {
            inner,
            kept: VecDeque::new(),
            kept_bytes: 0,
            again: VecDeque::new(),
            max_kept_bytes,
            intact: false,
        }
    }

    /// Whether the replay can go back to the latest checkpoint.
    pub fn can_rewind(&self) -> bool {
        self.intact
    }

    /// Hands out every entry since the latest checkpoint again, then the rest. `false` (and
    /// nothing changes) if they were not all kept.
    pub fn rewind(&mut self) -> bool {
        if !self.intact {
            return false;
        }
        let mut again = std::mem::take(&mut self.kept);
        again.append(&mut self.again);
        self.again = again;
        self.kept_bytes = 0;
        true
    }

    fn keep(&mut self, frame: &Frame) {
        if !self.intact {
            return;
        }
        let size = frame_bytes(frame);
        if self.kept_bytes + size > self.max_kept_bytes {
            self.kept.clear();
            self.kept_bytes = 0;
            self.intact = false;
            return;
        }
        self.kept_bytes += size;
        self.kept.push_back(frame.clone());
    }
}

/// An entry's size for the keeping limit: its payload plus a fixed overhead.
fn frame_bytes(frame: &Frame) -> usize {
    use logging_channel::format::Entry;
    let payload = match &frame.entry {
        Entry::NetRx { frame, .. } | Entry::NetTx { frame, .. } => frame.len(),
        Entry::ConsoleInput { bytes, .. } => bytes.len(),
        _ => 0,
    };
    payload + std::mem::size_of::<Frame>()
}

impl EntrySource for Rewindable<'_> {
    fn peek(&mut self) -> Result<Option<&Frame>, SourceError> {
        if self.again.is_empty() {
            self.inner.peek()
        } else {
            Ok(self.again.front())
        }
    }

    fn pop(&mut self) -> Result<Option<Frame>, SourceError> {
        let frame = match self.again.pop_front() {
            Some(f) => Some(f),
            None => self.inner.pop()?,
        };
        if let Some(f) = &frame {
            self.keep(f);
        }
        Ok(frame)
    }

    fn final_stretch(&self) -> bool {
        self.inner.final_stretch()
    }

    fn checkpointed(&mut self) {
        self.kept.clear();
        self.kept_bytes = 0;
        self.intact = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::VecSource;
    use logging_channel::format::{Entry, Position};

    fn irq(seq: u64) -> Frame {
        Frame {
            seq,
            t_ns: seq * 10,
            state_check: 0,
            entry: Entry::Irq {
                pos: Position::AtExit { exits: seq },
                line: 0,
            },
        }
    }

    fn rx(seq: u64, len: usize) -> Frame {
        Frame {
            seq,
            t_ns: seq * 10,
            state_check: 0,
            entry: Entry::NetRx {
                pos: Position::AtExit { exits: seq },
                frame: vec![0xab; len],
            },
        }
    }

    fn seqs(src: &mut dyn EntrySource) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(f) = src.pop().unwrap() {
            out.push(f.seq);
        }
        out
    }

    #[test]
    fn checkpoints_that_cost_more_than_their_share_are_spaced_out() {
        let p = CheckpointPolicy::default();
        let ms = Duration::from_millis;
        // Cheap ones (a guest that wrote little memory) come every second.
        assert_eq!(p.interval_after(ms(1)), Some(ms(1000)));
        assert_eq!(p.interval_after(ms(10)), Some(ms(1000)));
        // A 300 ms one (gigabytes written) waits 30 s: at most 1% of the replay.
        assert_eq!(p.interval_after(ms(300)), Some(ms(30_000)));
        assert_eq!(CheckpointPolicy::none().interval_after(ms(1)), None);
        // No share at all: the first checkpoint is the only one.
        let no_share = CheckpointPolicy {
            max_share: 0.0,
            ..p
        };
        assert_eq!(no_share.interval_after(ms(1)), Some(Duration::MAX));
    }

    #[test]
    fn without_a_checkpoint_nothing_is_kept_and_nothing_rewinds() {
        let mut inner = VecSource::new((0..5).map(irq));
        let mut r = Rewindable::new(&mut inner, 1 << 20);
        assert_eq!(r.pop().unwrap().unwrap().seq, 0);
        assert!(!r.can_rewind());
        assert!(!r.rewind());
        assert_eq!(seqs(&mut r), vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_rewind_hands_out_again_everything_since_the_checkpoint_then_the_rest() {
        let mut inner = VecSource::new((0..8).map(irq));
        let mut r = Rewindable::new(&mut inner, 1 << 20);
        r.pop().unwrap();
        r.pop().unwrap();
        r.checkpointed();
        for want in 2..5 {
            assert_eq!(r.pop().unwrap().unwrap().seq, want);
        }
        assert!(r.rewind());
        assert_eq!(r.peek().unwrap().unwrap().seq, 2);
        // A second rewind before the next checkpoint, halfway through the first one's entries.
        assert_eq!(r.pop().unwrap().unwrap().seq, 2);
        assert_eq!(r.pop().unwrap().unwrap().seq, 3);
        assert!(r.rewind());
        assert_eq!(seqs(&mut r), vec![2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn a_checkpoint_during_a_rewind_forgets_the_entries_before_it() {
        let mut inner = VecSource::new((0..6).map(irq));
        let mut r = Rewindable::new(&mut inner, 1 << 20);
        r.checkpointed();
        for _ in 0..4 {
            r.pop().unwrap();
        }
        assert!(r.rewind());
        r.pop().unwrap(); // 0 again
        r.pop().unwrap(); // 1 again
        r.checkpointed();
        r.pop().unwrap(); // 2 again
        assert!(r.rewind());
        assert_eq!(seqs(&mut r), vec![2, 3, 4, 5]);
    }

    #[test]
    fn past_the_byte_limit_the_checkpoint_is_given_up_until_the_next() {
        let mut inner = VecSource::new((0..6).map(|s| rx(s, 1000)));
        let limit = 2 * (1000 + std::mem::size_of::<Frame>());
        let mut r = Rewindable::new(&mut inner, limit);
        r.checkpointed();
        r.pop().unwrap();
        r.pop().unwrap();
        assert!(r.can_rewind());
        r.pop().unwrap();
        assert!(!r.can_rewind());
        assert!(!r.rewind());
        r.checkpointed();
        r.pop().unwrap();
        assert!(r.rewind());
        assert_eq!(seqs(&mut r), vec![3, 4, 5]);
    }
}
