//! The output rule: console output and network frames leave the primary only once the backup
//! could reproduce them,
//! i.e. once it acknowledged a log entry at or after the output (or installed a state that
//! contains it). With no backup in the view, output flows at once. And nothing leaves while the
//! release *gate* is shut: the node keeps it open only while the view service's lease says this
//! node is still the primary, so a deposed primary never speaks again.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use logging_channel::net::LogSender;
use logging_channel::waiters::{notify_counted, wait_counted};

/// A chunk of console output, or one network frame, and what must happen before it may leave.
#[derive(Debug)]
struct Chunk {
    bytes: Vec<u8>,
    /// A transmitted network frame (leaves on the TAP, whole), not console bytes.
    frame: bool,
    /// Entries (count, i.e. seq + 1) the backup must hold first; `None` until an entry is
    /// logged after the output.
    needs: Option<u64>,
    produced: Instant,
}

#[derive(Debug, Default)]
struct State {
    chunks: VecDeque<Chunk>,
    /// Entries the backup holds: acknowledged, or inside the state it installed.
    covered: u64,
    /// No backup in the view: everything may go.
    free_flow: bool,
    /// The stream whose acks cover output.
    channel: Option<Arc<LogSender>>,
    closing: bool,
    /// The whole console so far: a new backup gets it with the state, so every node's
    /// transcript is the guest's console from its first byte.
    history: Vec<u8>,
    /// Threads waiting on `changed` (the release thread with nothing to wait for, `drain`):
    /// a notification costs a system call, so it is made only when someone listens.
    waiting: usize,
}

/// Whether output may leave this node right now (checked just before every write).
pub type Gate = Arc<dyn Fn() -> bool + Send + Sync>;

/// How often a release thread held at a shut gate looks again.
const GATE_POLL: Duration = Duration::from_millis(2);

/// How long a release thread with nothing it could wait for sleeps before it looks again. Every
/// change that could give it work (output, a cover, a backup, free flow, closing) wakes it, so
/// this is only a safety net.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Shared between the vCPU thread (which queues output), the replication manager (which
/// changes what covers it) and the release thread (which writes it out).
#[derive(Default)]
pub struct ReleaseQueue {
    state: Mutex<State>,
    changed: Condvar,
    released: AtomicU64,
    frames_released: AtomicU64,
    delays: Mutex<Vec<u32>>,
    frame_delays: Mutex<Vec<u32>>,
    gate: Option<Gate>,
    /// Time chunks spent ready but held at the shut gate.
    gated_ns: AtomicU64,
    /// Held by whoever takes a chunk off the queue until it is written, so that chunks leave
    /// in order whichever thread writes them.
    releasing: Mutex<()>,
    /// Where frames go, for the thread that reads the backup's acks: with it, a frame leaves
    /// from that thread the moment its entry is acknowledged, without waking the release
    /// thread (a wake-up and a context switch on the way of every reply).
    frame_writer: std::sync::OnceLock<FrameWriter>,
}

/// Writes one released frame to the network.
pub type FrameWriter = Arc<dyn Fn(&[u8]) + Send + Sync>;

impl std::fmt::Debug for ReleaseQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseQueue")
            .field("released", &self.released)
            .field("gated", &self.gate.is_some())
            .finish_non_exhaustive()
    }
}

impl ReleaseQueue {
    /// A queue for a guest whose console so far is `history`, of which the first `released`
    /// bytes were released (a backup that goes live holds the rest until it may release it).
    pub fn resuming(history: Vec<u8>, released: u64) -> Self {
        Self::gated(history, released, None)
    }

    /// [`Self::resuming`], with output let out only while `gate` says so.
    pub fn gated(history: Vec<u8>, released: u64, gate: Option<Gate>) -> Self {
        let q = Self {
            released: AtomicU64::new(released),
            gate,
            ..Self::default()
        };
        {
            let mut g = q.lock();
            let from = usize::try_from(released).unwrap_or(usize::MAX);
            if let Some(rest) = history.get(from..).filter(|r| !r.is_empty()) {
                g.chunks.push_back(Chunk {
                    bytes: rest.to_vec(),
                    frame: false,
                    needs: None,
                    produced: Instant::now(),
                });
            }
            g.history = history;
        }
        q
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Output the guest just wrote (not yet covered by any entry).
    pub fn push(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut g = self.lock();
        g.history.extend_from_slice(bytes);
        match g.chunks.back_mut() {
            Some(c) if c.needs.is_none() && !c.frame => c.bytes.extend_from_slice(bytes),
            _ => g.chunks.push_back(Chunk {
                bytes: bytes.to_vec(),
                frame: false,
                needs: None,
                produced: Instant::now(),
            }),
        }
        self.wake_if_ready(g);
    }

    /// Wakes the release thread for output just queued, if it may leave as it is: only free
    /// flow lets uncovered output go, and otherwise the entry that covers it will wake the
    /// thread (one futex call per frame fewer on the way of every reply).
    fn wake_if_ready(&self, g: MutexGuard<'_, State>) {
        if g.free_flow {
            self.notify(g);
        }
    }

    /// Wakes whoever waits on `changed`, if anyone does.
    fn notify(&self, g: MutexGuard<'_, State>) {
        notify_counted(&self.changed, g, |s| s.waiting);
    }

    /// Waits on `changed` for at most `timeout`, counted as a listener meanwhile.
    fn wait_changed<'a>(
        &self,
        g: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> MutexGuard<'a, State> {
        wait_counted(&self.changed, g, Instant::now() + timeout, |s| {
            &mut s.waiting
        })
    }

    /// A network frame the guest just transmitted (not yet covered by any entry): it leaves
    /// after the console output queued before it, and before what follows.
    pub fn push_frame(&self, frame: Vec<u8>) {
        let mut g = self.lock();
        g.chunks.push_back(Chunk {
            bytes: frame,
            frame: true,
            needs: None,
            produced: Instant::now(),
        });
        self.wake_if_ready(g);
    }

    /// Network frames released so far.
    pub fn frames_released(&self) -> u64 {
        self.frames_released.load(Ordering::Acquire)
    }

    /// Entry `seq` was logged: output queued so far is covered once the backup holds it.
    pub fn cover(&self, seq: u64) {
        let mut g = self.lock();
        let mut covered_any = false;
        for c in g.chunks.iter_mut().rev() {
            if c.needs.is_some() {
                break;
            }
            c.needs = Some(seq + 1);
            covered_any = true;
        }
        // The release thread may have looked between the push and this cover, found nothing it
        // could wait for, and gone to sleep: a reply would then sit until the next output or its
        // poll ran out. Unless a frame is next, which leaves from the ack thread.
        if covered_any && !self.ack_thread_takes(&g) {
            self.notify(g);
        }
    }

    /// Frames leave through `write` from the thread that reads the backup's acks (see
    /// `frame_writer`); the release thread's `frames` must write the same way. Only the first
    /// call counts.
    pub fn write_frames_on_ack(&self, write: FrameWriter) {
        let _ = self.frame_writer.set(write);
    }

    /// An ack for entry `seq` arrived on `channel`: what it covers is released, and frames
    /// at the front of the queue leave from here at once.
    fn acked_on(&self, channel: &LogSender, seq: u64) {
        {
            let mut g = self.lock();
            if !g
                .channel
                .as_deref()
                .is_some_and(|c| std::ptr::eq(c, channel))
            {
                return;
            }
            g.covered = g.covered.max(seq + 1);
        }
        let Some(write) = self.frame_writer.get() else {
            return;
        };
        // Busy: the release thread is writing, and goes on with what is covered now.
        let Ok(_releasing) = self.releasing.try_lock() else {
            return;
        };
        loop {
            let mut g = self.lock();
            let frame_ready = match g.chunks.front() {
                Some(c) if c.frame => g.free_flow || c.needs.is_some_and(|n| n <= g.covered),
                _ => false,
            };
            if !frame_ready || !self.gate_open() {
                // Console output covered now, or a frame a shut gate holds: the release
                // thread's business. An empty queue, or a frame whose entry is not
                // acknowledged yet, is not: a wake-up per ack woke it ~9,000 times per
                // 100,000 `kv` requests for nothing.
                let for_release_thread = match g.chunks.front() {
                    Some(c) if !c.frame => g.free_flow || c.needs.is_some_and(|n| n <= g.covered),
                    Some(_) => frame_ready,
                    None => false,
                };
                if for_release_thread {
                    self.notify(g);
                }
                return;
            }
            let Some(c) = g.chunks.pop_front() else {
                return;
            };
            drop(g);
            write(&c.bytes);
            self.frames_released.fetch_add(1, Ordering::AcqRel);
            note_delay(&self.frame_delays, c.produced);
        }
    }

    /// Whether a frame at the front of the queue will leave from the ack thread, so the
    /// release thread need not wait for its ack.
    fn ack_thread_takes(&self, g: &State) -> bool {
        self.frame_writer.get().is_some() && g.chunks.front().is_some_and(|c| c.frame)
    }

    /// The backup installed a state holding every entry before `next_seq` and all output so
    /// far; its acks on `channel` cover what follows.
    pub fn installed(self: &Arc<Self>, next_seq: u64, channel: Arc<LogSender>) {
        let queue = Arc::downgrade(self);
        let acked = Arc::downgrade(&channel);
        channel.on_ack(Box::new(move |seq| {
            if let (Some(q), Some(ch)) = (queue.upgrade(), acked.upgrade()) {
                q.acked_on(&ch, seq);
            }
        }));
        let mut g = self.lock();
        for c in g.chunks.iter_mut() {
            if c.needs.is_none() {
                c.needs = Some(next_seq);
            }
        }
        g.covered = g.covered.max(next_seq);
        g.channel = Some(channel);
        g.free_flow = false;
        self.notify(g);
    }

    /// The view has no backup (true) or names one that has no state yet (false).
    pub fn set_free_flow(&self, on: bool) {
        let mut g = self.lock();
        g.free_flow = on;
        if !on {
            g.channel = None;
        }
        self.notify(g);
    }

    /// The backup's stream broke: nothing covers output until a backup has state again.
    pub fn channel_lost(&self) {
        let mut g = self.lock();
        g.channel = None;
        self.notify(g);
    }

    /// Console offset up to which output was released.
    pub fn released(&self) -> u64 {
        self.released.load(Ordering::Acquire)
    }

    /// The whole console so far.
    pub fn history(&self) -> Vec<u8> {
        self.lock().history.clone()
    }

    /// Release delays of console chunks in microseconds (time from output to release), in
    /// release order.
    pub fn delays_us(&self) -> Vec<u32> {
        self.delays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The same for network frames: from the guest's transmit to the write on the TAP.
    pub fn frame_delays_us(&self) -> Vec<u32> {
        self.frame_delays
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Total time covered output waited at the shut gate.
    pub fn gated_time(&self) -> Duration {
        Duration::from_nanos(self.gated_ns.load(Ordering::Relaxed))
    }

    fn gate_open(&self) -> bool {
        self.gate.as_ref().is_none_or(|g| g())
    }

    /// Drops everything held, for good: this node is no longer primary.
    pub fn abandon(&self) {
        let mut g = self.lock();
        g.chunks.clear();
        g.free_flow = false;
        g.channel = None;
        g.closing = true;
        self.notify(g);
    }

    /// The guest has stopped: the release thread ends once everything held is released, or once
    /// nothing could ever cover it (no backup stream).
    pub fn close(&self) {
        let mut g = self.lock();
        g.closing = true;
        self.notify(g);
    }

    /// Waits up to `timeout` until everything queued was released.
    pub fn drain(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        while !g.chunks.is_empty() {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self.wait_changed(g, (deadline - now).min(Duration::from_millis(10)));
        }
        true
    }

    /// The release thread's loop: writes each chunk once it is covered, console output to
    /// `out` and frames to `frames`.
    pub fn run(&self, out: &mut dyn Write, frames: &mut dyn FnMut(&[u8])) {
        let mut write_failed = false;
        loop {
            // Held from taking a chunk to having written it (see `releasing`).
            let mut releasing = Some(self.releasing.lock().unwrap_or_else(|p| p.into_inner()));
            let (chunk, wait_for, reporter) = {
                let mut g = self.lock();
                // Closing: done once empty, or once nothing could ever cover what is held.
                if g.closing && (g.chunks.is_empty() || (!g.free_flow && g.channel.is_none())) {
                    return;
                }
                let ready = match g.chunks.front() {
                    Some(_) if g.free_flow => true,
                    Some(Chunk { needs: Some(n), .. }) => *n <= g.covered,
                    _ => false,
                };
                if ready && !self.gate_open() {
                    // Covered, but this node may no longer be the primary: wait for the lease
                    // to be renewed (or for the node to learn it was replaced and abandon).
                    drop(g);
                    drop(releasing.take());
                    let started = Instant::now();
                    std::thread::sleep(GATE_POLL);
                    let waited = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    self.gated_ns.fetch_add(waited, Ordering::Relaxed);
                    continue;
                }
                if ready {
                    (g.chunks.pop_front(), None, g.channel.clone())
                } else {
                    drop(releasing.take());
                    let want = match g.chunks.front() {
                        _ if self.ack_thread_takes(&g) => None,
                        Some(Chunk { needs: Some(n), .. }) => g.channel.clone().map(|ch| (ch, *n)),
                        _ => None,
                    };
                    if want.is_none() {
                        drop(self.wait_changed(g, IDLE_POLL));
                    }
                    (None, want, None)
                }
            };
            if let Some((channel, needs)) = wait_for {
                // Ack seqs count from 0: `needs` entries held = seq `needs - 1` acked.
                if let Ok(true) = channel.wait_acked(needs - 1, Duration::from_millis(20)) {
                    let mut g = self.lock();
                    g.covered = g.covered.max(needs);
                    self.notify(g);
                }
                continue;
            }
            if let Some(c) = chunk {
                // Once more, as close to the write as can be: the lease may have run out while
                // this thread was descheduled (or the process stopped) since the first look.
                // What remains is the instant between this check and the write itself.
                if !self.gate_open() {
                    self.lock().chunks.push_front(c);
                    continue;
                }
                if c.frame {
                    frames(&c.bytes);
                    drop(releasing);
                    self.frames_released.fetch_add(1, Ordering::AcqRel);
                    note_delay(&self.frame_delays, c.produced);
                    self.notify(self.lock());
                    continue;
                }
                // The world's end of stdout is gone (a closed pipe, a full disk): say so once.
                // The guest runs on and its bytes count as released, as they would for a
                // terminal nobody reads; the transcript still has them.
                if let Err(e) = out.write_all(&c.bytes).and_then(|()| out.flush())
                    && !write_failed
                {
                    write_failed = true;
                    tracing::error!(
                        "writing released console output failed: {e}; later output may be lost too"
                    );
                }
                let released = self
                    .released
                    .fetch_add(c.bytes.len() as u64, Ordering::AcqRel)
                    + c.bytes.len() as u64;
                // The backup goes live releasing from the last count it heard: the sooner it
                // hears, the less a failover repeats.
                if let Some(channel) = reporter {
                    channel.released(released);
                }
                note_delay(&self.delays, c.produced);
                self.notify(self.lock());
            }
        }
    }
}

/// Keeps how long an output waited, up to a million samples (a few MB).
fn note_delay(delays: &Mutex<Vec<u32>>, produced: Instant) {
    let us = u32::try_from(produced.elapsed().as_micros()).unwrap_or(u32::MAX);
    let mut d = delays.lock().unwrap_or_else(|p| p.into_inner());
    if d.len() < 1_000_000 {
        d.push(us);
    }
}

/// The primary's console: every byte goes to the transcript at once and into the release
/// queue, which lets it out under the output rule.
#[derive(Debug)]
pub struct HeldConsole {
    /// Where the output waits until the output rule lets it out.
    pub queue: Arc<ReleaseQueue>,
    /// The node's transcript, written at once, released or not.
    pub transcript: Option<std::fs::File>,
}

impl Write for HeldConsole {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(t) = self.transcript.as_mut() {
            t.write_all(buf)?;
        }
        self.queue.push(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(t) = self.transcript.as_mut() {
            t.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn covered_output_waits_at_a_shut_gate() {
        let open = Arc::new(AtomicBool::new(false));
        let o = Arc::clone(&open);
        let q = Arc::new(ReleaseQueue::gated(
            Vec::new(),
            0,
            Some(Arc::new(move || o.load(Ordering::Acquire))),
        ));
        q.set_free_flow(true);
        q.push(b"held");
        let q2 = Arc::clone(&q);
        let t = std::thread::spawn(move || q2.run(&mut std::io::sink(), &mut |_| {}));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(q.released(), 0, "released through a shut gate");
        open.store(true, Ordering::Release);
        assert!(q.drain(Duration::from_secs(2)));
        q.close();
        t.join().unwrap();
        assert_eq!(q.released(), 4);
        assert!(q.gated_time() >= Duration::from_millis(50));
    }

    #[test]
    fn uncovered_output_waits_and_free_flow_lets_it_go() {
        let q = Arc::new(ReleaseQueue::default());
        q.push(b"a");
        q.cover(4);
        q.push(b"b");
        let out = Arc::new(Mutex::new(Vec::new()));
        let q2 = Arc::clone(&q);
        let o2 = Arc::clone(&out);
        let t = std::thread::spawn(move || {
            let mut buf = Vec::new();
            q2.run(&mut buf, &mut |_| {});
            *o2.lock().unwrap() = buf;
        });
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(q.released(), 0, "nothing covers the output yet");
        q.set_free_flow(true);
        assert!(q.drain(Duration::from_secs(2)));
        q.close();
        t.join().unwrap();
        assert_eq!(*out.lock().unwrap(), b"ab");
        assert_eq!(q.released(), 2);
    }

    #[test]
    fn a_cover_wakes_a_release_thread_that_found_nothing_to_wait_for() {
        let q = Arc::new(ReleaseQueue::default());
        // As if the backup had acknowledged far ahead: the only thing missing is the cover.
        q.lock().covered = 10;
        let (tx, rx) = std::sync::mpsc::channel();
        let q2 = Arc::clone(&q);
        let t = std::thread::spawn(move || {
            q2.run(&mut std::io::sink(), &mut |f| {
                let _ = tx.send(f.to_vec());
            });
        });
        q.push_frame(b"reply".to_vec());
        // Let the release thread see the uncovered frame and go to sleep.
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            rx.try_recv().is_err(),
            "released before any entry covered it"
        );
        let covered_at = Instant::now();
        q.cover(0);
        let frame = rx.recv_timeout(IDLE_POLL * 3).expect("the frame leaves");
        assert_eq!(frame, b"reply");
        assert!(
            covered_at.elapsed() < IDLE_POLL / 2,
            "the frame waited {:?} after its cover: the release thread slept through it",
            covered_at.elapsed()
        );
        q.close();
        t.join().unwrap();
    }

    #[test]
    fn acknowledged_frames_leave_from_the_ack_thread_in_order() {
        use logging_channel::{Entry, Frame, Position};
        let (sender, _backup) = crate::sink::tests::loopback_channel();
        let sender = Arc::new(sender);
        let q = Arc::new(ReleaseQueue::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        q.write_frames_on_ack(Arc::new(move |f: &[u8]| {
            let _ = tx.lock().unwrap().send(f.to_vec());
        }));
        q.installed(0, Arc::clone(&sender));
        // No release thread at all: only the ack thread can let these out.
        for (seq, frame) in [b"one", b"two"].into_iter().enumerate() {
            q.push_frame(frame.to_vec());
            q.cover(seq as u64);
        }
        assert!(rx.try_recv().is_err(), "released before any ack");
        for seq in 0..2 {
            let entry = Entry::Irq {
                pos: Position::AtExit { exits: seq },
                line: 0,
            };
            sender
                .send(&Frame {
                    seq,
                    t_ns: seq,
                    state_check: 0,
                    entry,
                })
                .unwrap();
        }
        let wait = Duration::from_secs(30);
        assert_eq!(rx.recv_timeout(wait).unwrap(), b"one");
        assert_eq!(rx.recv_timeout(wait).unwrap(), b"two");
        // A frame is counted once its write returned, which is after the writer handed it to
        // this test: wait for the count (it used to be read at once, and was 1 now and then).
        let deadline = Instant::now() + wait;
        while q.frames_released() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(q.frames_released(), 2);
        assert!(rx.try_recv().is_err(), "nothing else left");
    }

    /// Stdout that fails every write, like a closed pipe.
    struct BrokenPipe;
    impl Write for BrokenPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_broken_stdout_does_not_stop_the_release_thread() {
        let q = Arc::new(ReleaseQueue::default());
        q.set_free_flow(true);
        q.push(b"one\n");
        q.push(b"two\n");
        let q2 = Arc::clone(&q);
        let t = std::thread::spawn(move || q2.run(&mut BrokenPipe, &mut |_| {}));
        assert!(q.drain(Duration::from_secs(2)), "the queue keeps moving");
        q.close();
        t.join().unwrap();
        assert_eq!(q.released(), 8);
        assert_eq!(q.history(), b"one\ntwo\n");
    }

    #[test]
    fn an_entry_covers_every_frame_and_line_queued_before_it_and_they_leave_in_order() {
        let q = Arc::new(ReleaseQueue::default());
        q.push(b"line 1\n");
        q.push_frame(b"frame A".to_vec());
        q.cover(0);
        q.push(b"line 2\n");
        q.push_frame(b"frame B".to_vec());
        q.push(b"line 3\n");
        q.cover(1);
        q.push_frame(b"frame C".to_vec());
        let needs: Vec<_> = q.lock().chunks.iter().map(|c| c.needs).collect();
        assert_eq!(
            needs,
            [Some(1), Some(1), Some(2), Some(2), Some(2), None],
            "each waits for the first entry logged after it"
        );
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let (q2, s2) = (Arc::clone(&q), Arc::clone(&seen));
        let t = std::thread::spawn(move || {
            let mut out = Vec::new();
            q2.run(&mut out, &mut |f| {
                s2.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(f).into_owned());
            });
            out
        });
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            q.frames_released(),
            0,
            "nothing acknowledged, nothing leaves"
        );
        q.set_free_flow(true);
        assert!(q.drain(Duration::from_secs(5)));
        q.close();
        let out = t.join().unwrap();
        assert_eq!(out, b"line 1\nline 2\nline 3\n");
        assert_eq!(*seen.lock().unwrap(), ["frame A", "frame B", "frame C"]);
        assert_eq!(q.frames_released(), 3);
        assert_eq!(q.released(), 21, "console bytes only");
        assert_eq!(
            q.history(),
            b"line 1\nline 2\nline 3\n",
            "frames are not console"
        );
    }
}
