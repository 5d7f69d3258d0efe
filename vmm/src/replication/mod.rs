//! The primary's side of replication: the log sink that streams to the current backup, the
//! state transfer that gives a new backup the machine, and the output rule (`release`).
//!
//! Threads: the vCPU thread appends entries and, when a transfer asks for it, saves the machine
//! at a clean point (the guest's only pause); a transfer thread sends memory while the guest
//! runs (pre-copy with dirty logging) and then the saved state; the release thread writes
//! output once the backup holds what produced it.

pub mod release;
pub mod transfer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use logging_channel::format::{Entry, Frame};
use logging_channel::net::{ChannelError, Lag, LogSender, RoundTrips};

use crate::machine::Machine;
use crate::outcome::Ended;
use crate::sink::{LogSink, SinkError, Then};
use crate::snapshot::memory::MemoryTracker;
use crate::snapshot::{LogPoint, MachineState, SnapshotError};
use release::ReleaseQueue;

/// The throttle: past this replay lag (recorded time or entries) the vCPU thread waits for the
/// backup before it goes on, for at most [`THROTTLE_WAIT`] per entry. It keeps the backup's
/// copy close (the lag target is p99 < 50 ms) long before the window (4096 entries) or the
/// backup's buffer (8192) would stall the primary outright.
pub const MAX_REPLAY_LAG: Lag = Lag {
    entries: 1024,
    t_ns: 40_000_000,
};
const THROTTLE_WAIT: Duration = Duration::from_millis(50);
/// A backup that has not reported replay progress for this long is not waited for (it is
/// stopped, dead, or deep in one long approach); the failure detector handles the first two.
const THROTTLE_QUIET: Duration = Duration::from_millis(100);

/// Entries kept for a new backup between the state's pause and its stream starting; past
/// this the transfer is abandoned (the backup would start too far behind anyway).
const MAX_BUFFERED: usize = 200_000;

/// What the vCPU thread hands the transfer thread at the pause.
#[derive(Debug)]
pub struct Paused {
    /// The transfer this state is for (see `Replication::begin_transfer`); a stale one is ignored.
    pub generation: u64,
    /// Pages dirtied since the last pre-copy round, read while the guest was stopped.
    pub records: Vec<Vec<u8>>,
    /// The encoded `MachineState`.
    pub blob: Vec<u8>,
    /// First entry after the state: the backup's stream starts there.
    pub next_seq: u64,
    /// How long the guest was stopped for it.
    pub pause: Duration,
}

#[derive(Debug, Clone)]
enum Stream {
    /// No backup stream (none in the view, or it has no state yet).
    Idle,
    /// State saved; entries are kept until the new backup's stream starts.
    Buffering,
    Ready(Arc<LogSender>),
    /// The stream broke or the transfer failed.
    Lost(String),
}

#[derive(Debug)]
struct Slot {
    /// Bumped for every new backup (transfer); stale transfers see they are stale.
    generation: u64,
    stream: Stream,
}

/// State shared by the sink (vCPU thread), transfers and the node's view handling.
#[derive(Debug)]
pub struct Replication {
    /// The guest's console output, held under the output rule.
    pub queue: Arc<ReleaseQueue>,
    /// The guest's memory and dirty log: read by transfers while the guest runs, and by the
    /// vCPU thread for the last dirty pages at the pause.
    tracker: MemoryTracker,
    slot: Mutex<Slot>,
    /// Bumped on every slot change, so the sink locks only when something changed.
    version: AtomicU64,
    /// Generation of the transfer waiting for the machine's state; 0 for none.
    want_state: AtomicU64,
    paused_tx: Sender<Paused>,
    paused_rx: Receiver<Paused>,
    pauses: Mutex<Vec<Duration>>,
    superseded: AtomicBool,
    /// Time the vCPU thread spent in the throttle, waiting for the backup's replay.
    throttled_ns: AtomicU64,
    /// The logging channel's round trips, over every backup's stream (µs).
    round_trips: RoundTrips,
}

impl Replication {
    /// The primary's replication state for the machine `tracker` watches, with no backup yet.
    pub fn new(queue: Arc<ReleaseQueue>, tracker: MemoryTracker) -> Arc<Self> {
        let (paused_tx, paused_rx) = crossbeam_channel::bounded(1);
        Arc::new(Self {
            queue,
            tracker,
            slot: Mutex::new(Slot {
                generation: 0,
                stream: Stream::Idle,
            }),
            version: AtomicU64::new(0),
            want_state: AtomicU64::new(0),
            paused_tx,
            paused_rx,
            pauses: Mutex::new(Vec::new()),
            superseded: AtomicBool::new(false),
            throttled_ns: AtomicU64::new(0),
            round_trips: RoundTrips::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// The view has no backup: drop any stream; output flows freely.
    pub fn no_backup(&self) {
        let mut g = self.lock();
        g.generation += 1;
        g.stream = Stream::Idle;
        self.want_state.store(0, Ordering::Release);
        self.changed();
        drop(g);
        self.queue.set_free_flow(true);
    }

    /// A new backup (or the same one again after its stream broke): drop the old stream and
    /// return the generation the transfer must carry.
    ///
    /// `first`: the first transfer to this view's backup, which holds nothing of this view yet
    /// and so can be promoted only with a state this primary takes later, which will carry
    /// all output released before it. Output then flows on, as with no backup, until the
    /// state is taken (`take_state` stops it with the guest paused); a new primary's first
    /// output need not wait for its new backup's transfer. Otherwise (a retry: the backup may
    /// hold an older state of this view and be promoted with it) output is held from now on.
    pub fn begin_transfer(&self, first: bool) -> u64 {
        let mut g = self.lock();
        g.generation += 1;
        g.stream = Stream::Idle;
        self.changed();
        let generation = g.generation;
        drop(g);
        self.queue.set_free_flow(first);
        generation
    }

    /// Whether transfer `generation` is still the one the view wants.
    pub fn is_current(&self, generation: u64) -> bool {
        self.lock().generation == generation
    }

    /// Asks the vCPU thread for the machine's state, for transfer `generation`.
    fn request_state(&self, generation: u64) {
        // Discard a pause left over from an abandoned transfer.
        while self.paused_rx.try_recv().is_ok() {}
        self.want_state.store(generation, Ordering::Release);
    }

    fn finish_transfer(
        &self,
        generation: u64,
        result: Result<Arc<LogSender>, String>,
        next_seq: u64,
    ) {
        let mut g = self.lock();
        if g.generation != generation {
            return;
        }
        match result {
            Ok(sender) => {
                sender.keep_round_trips(Arc::clone(&self.round_trips));
                g.stream = Stream::Ready(Arc::clone(&sender));
                drop(g);
                self.queue.installed(next_seq, sender);
            }
            Err(why) => {
                g.stream = Stream::Lost(why);
                drop(g);
            }
        }
        self.changed();
    }

    /// Why the current backup has no working stream, if it lost one (not while a transfer is
    /// still running or when there is no backup).
    pub fn lost(&self) -> Option<String> {
        match &self.lock().stream {
            Stream::Lost(why) => Some(why.clone()),
            _ => None,
        }
    }

    /// Whether the current backup's stream is up.
    pub fn streaming(&self) -> bool {
        matches!(self.lock().stream, Stream::Ready(_))
    }

    /// Entries (and recorded time) sent but not yet in the backup's buffer.
    pub fn lag(&self) -> Option<Lag> {
        match &self.lock().stream {
            Stream::Ready(s) => Some(s.lag()),
            _ => None,
        }
    }

    /// How far the backup's replay is behind the newest entry sent.
    pub fn replay_lag(&self) -> Option<Lag> {
        match &self.lock().stream {
            Stream::Ready(s) => s.replay_lag(),
            _ => None,
        }
    }

    /// Total time the guest was held back so the backup's replay could catch up.
    pub fn throttled(&self) -> Duration {
        Duration::from_nanos(self.throttled_ns.load(Ordering::Relaxed))
    }

    /// The logging channel's round trips so far (µs, from a write of entries to the ack that
    /// covers them): the least any released output waits.
    pub fn round_trips_us(&self) -> Vec<u32> {
        self.round_trips
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Guest pauses taken for state transfers so far.
    pub fn pauses(&self) -> Vec<Duration> {
        self.pauses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether [`Self::supersede`] was called: what the queue held was dropped, not released.
    pub fn is_superseded(&self) -> bool {
        self.superseded.load(Ordering::Acquire)
    }

    /// Another node is primary now: the guest stops at its next entry and nothing held is
    /// ever released (two primaries must never both speak).
    pub fn supersede(&self) {
        self.superseded.store(true, Ordering::Release);
        self.queue.abandon();
    }
}

/// The primary's log sink: numbers entries, streams them to the backup that has state, keeps
/// them while a new backup installs its state, and marks output as covered.
#[derive(Debug)]
pub struct ReplicaSink {
    shared: Arc<Replication>,
    next_seq: u64,
    seen_version: u64,
    channel: Option<Arc<LogSender>>,
    buffering: bool,
    buffered: Vec<Frame>,
    /// Where and how the guest ended, once it did: a state taken after that is the finished
    /// machine.
    ended: Option<(LogPoint, Ended)>,
}

impl ReplicaSink {
    /// A sink whose first entry gets seq `next_seq` (0 for a fresh guest; a promoted backup
    /// continues the old primary's numbering).
    pub fn new(shared: Arc<Replication>, next_seq: u64) -> Self {
        Self {
            shared,
            next_seq,
            seen_version: u64::MAX,
            channel: None,
            buffering: false,
            buffered: Vec::new(),
            ended: None,
        }
    }

    /// After the guest ended, the vCPU thread calls this until everything is released: it
    /// sends what waited for a new backup's stream, and gives a backup that asks for the
    /// state the finished machine (whose log is complete: nothing follows).
    pub fn after_end(&mut self, m: &mut Machine) -> Result<(), SinkError> {
        self.sync();
        self.hand_off(Then::Waits);
        if self.state_wanted()
            && let Some((point, _)) = self.ended
        {
            // What the new backup's stream carries is picked up by a later call, once it is up.
            self.take_state(m, point)?;
        }
        Ok(())
    }

    /// The seq the next entry gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Picks up stream changes made by other threads.
    fn sync(&mut self) {
        let v = self.shared.version.load(Ordering::Acquire);
        if v == self.seen_version {
            return;
        }
        self.seen_version = v;
        let stream = self.shared.lock().stream.clone();
        match stream {
            Stream::Ready(s) => {
                let same = self.channel.as_ref().is_some_and(|c| Arc::ptr_eq(c, &s));
                if !same {
                    self.channel = Some(s);
                    self.buffering = false;
                    for f in std::mem::take(&mut self.buffered) {
                        if !self.send(&f) {
                            break;
                        }
                    }
                }
            }
            Stream::Buffering => {}
            Stream::Idle | Stream::Lost(_) => {
                self.channel = None;
                self.buffering = false;
                self.buffered.clear();
            }
        }
    }

    /// Sends on the current stream; on failure drops it and reports it lost.
    fn send(&mut self, frame: &Frame) -> bool {
        let Some(ch) = self.channel.clone() else {
            return false;
        };
        // A full window stalls the guest while the backup is alive but behind; a dead or
        // stopped backup surfaces as a peer timeout.
        let result = loop {
            match ch.queue(frame) {
                Err(ChannelError::WindowFull { .. }) => continue,
                other => break other,
            }
        }
        .and_then(|()| {
            let started = Instant::now();
            ch.wait_replay_within(MAX_REPLAY_LAG, THROTTLE_QUIET, THROTTLE_WAIT)?;
            let waited = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.shared
                .throttled_ns
                .fetch_add(waited, Ordering::Relaxed);
            Ok(())
        });
        if let Err(e) = result {
            self.channel = None;
            let mut g = self.shared.lock();
            if matches!(&g.stream, Stream::Ready(s) if Arc::ptr_eq(s, &ch)) {
                g.stream = Stream::Lost(e.to_string());
                drop(g);
                self.shared.changed();
                self.seen_version = self.shared.version.load(Ordering::Acquire);
                self.shared.queue.channel_lost();
            }
            return false;
        }
        true
    }
}

impl LogSink for ReplicaSink {
    fn is_recording(&self) -> bool {
        true
    }

    fn append(&mut self, t_ns: u64, state_check: u64, entry: &Entry) -> Result<(), SinkError> {
        if self.shared.superseded.load(Ordering::Acquire) {
            return Err(SinkError::Superseded);
        }
        self.sync();
        let frame = Frame {
            seq: self.next_seq,
            t_ns,
            state_check,
            entry: entry.clone(),
        };
        self.shared.queue.cover(self.next_seq);
        self.next_seq += 1;
        if self.channel.is_some() {
            self.send(&frame);
        } else if self.buffering {
            if self.buffered.len() >= MAX_BUFFERED {
                self.buffering = false;
                self.buffered.clear();
            } else {
                self.buffered.push(frame);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        self.sync();
        self.hand_off(Then::Waits);
        Ok(())
    }

    fn hand_off(&mut self, then: Then) {
        if let Some(ch) = &self.channel {
            then.push(ch);
        }
    }

    fn output_markers(&self) -> bool {
        true
    }

    fn guest_ended(&mut self, point: LogPoint, how: Ended) {
        self.ended = Some((point, how));
    }

    fn released(&self) -> u64 {
        self.shared.queue.released()
    }

    fn state_wanted(&self) -> bool {
        self.shared.want_state.load(Ordering::Acquire) != 0
    }

    fn take_state(&mut self, m: &mut Machine, mut point: LogPoint) -> Result<(), SinkError> {
        let started = Instant::now();
        let generation = self.shared.want_state.swap(0, Ordering::AcqRel);
        if generation == 0 {
            return Ok(());
        }
        // The last pre-copy round, with the guest stopped: what it wrote since the previous one.
        let tracker = &self.shared.tracker;
        let mut dirty = tracker.take_dirty().map_err(SnapshotError::from)?;
        // KVM's dirty log sees only the guest's writes; the network card's (received frames,
        // used rings) since the last transfer are added here, with the guest stopped.
        if let Some(nic) = m.bus.devices.nic.as_mut() {
            dirty.extend(
                nic.take_dirty()
                    .into_iter()
                    .filter_map(|page| u32::try_from(page).ok()),
            );
            dirty.sort_unstable();
            dirty.dedup();
        }
        let mut records = Vec::new();
        tracker
            .encode(dirty, |r| {
                records.push(r);
                Ok::<_, SnapshotError>(())
            })
            .map_err(SinkError::State)?;
        tracker
            .set_dirty_logging(false)
            .map_err(|source| SnapshotError::DirtyLogging { on: false, source })?;
        // From this state on, output waits for the backup (it flowed until now only if this is
        // the view's first transfer; see `begin_transfer`): everything before is in the state.
        self.shared.queue.set_free_flow(false);
        point.next_seq = self.next_seq;
        point.released = self.shared.queue.released();
        let mut state = MachineState::save(m, point)?;
        state.console_history = self.shared.queue.history();
        state.ended = self.ended.map(|(_, how)| how);
        let blob = state.encode()?;
        self.channel = None;
        self.buffered.clear();
        let still_wanted = {
            let mut g = self.shared.lock();
            if g.generation == generation {
                g.stream = Stream::Buffering;
                true
            } else {
                false
            }
        };
        if still_wanted {
            self.buffering = true;
            self.shared.changed();
            self.seen_version = self.shared.version.load(Ordering::Acquire);
            let pause = started.elapsed();
            self.shared
                .pauses
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(pause);
            let _ = self.shared.paused_tx.try_send(Paused {
                generation,
                records,
                blob,
                next_seq: self.next_seq,
                pause,
            });
        }
        Ok(())
    }
}
