//! Primary side.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::message::{Hello, Message, encode_entry_message};
use super::stream::{
    MsgReader, Polled, check_len, encode_checked, reply_error, shutdown, tune, write_all_while,
    write_since,
};
use super::{ChannelConfig, ChannelError, Lag};
use crate::format::Frame;

struct InFlight {
    seq: u64,
    t_ns: u64,
    bytes: usize,
}

/// Acknowledged entries remembered for the replay backlog; a backup that acknowledges this many
/// more than it reports replayed is held to the newest of them only (its reports have stopped,
/// and a quiet backup is not waited for anyway).
const MAX_UNREPLAYED: usize = 1 << 16;

/// Queued bytes that [`LogSender::push_due`] writes whatever they hold: a received frame's
/// entries are ~1.5 KiB, so a few of them wait, not a burst.
pub const PUSH_AT_BYTES: usize = 16 << 10;

struct TxState {
    /// Encoded messages handed to `send` and not yet given to the socket.
    queue: Vec<u8>,
    next_seq: u64,
    /// (seq, t_ns) of the newest entry handed to `send`.
    newest: Option<(u64, u64)>,
    /// Sent (or queued) and not acknowledged, oldest first.
    inflight: VecDeque<InFlight>,
    unacked_bytes: usize,
    acked: Option<(u64, u64)>,
    /// (seq, t_ns) of the newest entry the backup reported replayed, and when.
    replayed: Option<(u64, u64)>,
    /// (seq, t_ns) of acknowledged entries not yet reported replayed, oldest first: the first
    /// is the one the backup's replay is working toward.
    unreplayed: VecDeque<(u64, u64)>,
    replayed_at: Instant,
    /// The first failure; every later call returns it.
    error: Option<ChannelError>,
    closing: bool,
    writer_done: bool,
    /// Someone (the writer thread, or `send` writing directly) owns the socket's write side
    /// right now: messages must not interleave on the wire.
    writing: bool,
    /// When anything last went out, for the writer's heartbeats.
    last_tx: Instant,
    /// When entries last went out (a heartbeat does not count): what `push_due` batches
    /// against, so that a heartbeat just before a timer interrupt does not hold its entries.
    entries_sent_at: Instant,
    /// `queue` holds an entry output waits for.
    queued_output: bool,
    /// Threads waiting on `progress`: an ack wakes them with a system call only if there are.
    progress_waiting: usize,
    last_rx: Instant,
    /// The newest entry of a write that went out whole, and when: the next ack that covers it
    /// times the channel's round trip. One at a time, so a busy channel is sampled about
    /// once per round trip, at the cost of one comparison per write.
    probe: Option<(u64, Instant)>,
}

impl TxState {
    /// Everything queued, for one write.
    fn take_queue(&mut self) -> Vec<u8> {
        self.queued_output = false;
        std::mem::take(&mut self.queue)
    }

    /// A write that held entries, started at `at`, went out whole.
    fn entries_written(&mut self, at: Instant) {
        self.last_tx = at;
        self.entries_sent_at = at;
        if self.probe.is_none()
            && let Some((seq, _)) = self.newest
        {
            self.probe = Some((seq, at));
        }
    }
}

/// Round trips of the logging channel, from a write of entries to the ack that covers its
/// newest, in microseconds: what every released output waits for at least (see
/// [`LogSender::keep_round_trips`]).
pub type RoundTrips = Arc<Mutex<Vec<u32>>>;

/// Round trips kept at most (4 MB): enough for a run's spread.
const MAX_ROUND_TRIPS: usize = 1_000_000;

/// Called on the reader thread with each new acknowledged seq (see [`LogSender::on_ack`]).
pub type AckHook = Box<dyn Fn(u64) + Send + Sync>;

struct Shared {
    state: Mutex<TxState>,
    on_ack: std::sync::OnceLock<AckHook>,
    round_trips: std::sync::OnceLock<RoundTrips>,
    /// The writer thread's: something to write, closing, failure, and the writer's own end.
    to_writer: Condvar,
    /// Acks and replay reports (the release thread, the throttle and a full window wait on
    /// them), closing and failure. Apart from `to_writer` so that each entry sent does not wake
    /// the ack waiters and each ack does not wake the writer: on a busy primary every needless
    /// wake-up is a context switch on the way of a reply.
    progress: Condvar,
    peer: SocketAddr,
    cfg: ChannelConfig,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, TxState> {
        super::stream::lock(&self.state)
    }

    fn wait_for_writer_work<'a>(
        &self,
        g: MutexGuard<'a, TxState>,
        deadline: Instant,
    ) -> MutexGuard<'a, TxState> {
        super::stream::wait_until(&self.to_writer, g, deadline)
    }

    fn wait_for_progress<'a>(
        &self,
        g: MutexGuard<'a, TxState>,
        deadline: Instant,
    ) -> MutexGuard<'a, TxState> {
        crate::waiters::wait_counted(&self.progress, g, deadline, |s| &mut s.progress_waiting)
    }

    /// Wakes the threads waiting for acks or replay reports, if any.
    fn progressed(&self, g: MutexGuard<'_, TxState>) {
        crate::waiters::notify_counted(&self.progress, g, |s| s.progress_waiting);
    }

    fn notify_all(&self) {
        self.to_writer.notify_all();
        self.progress.notify_all();
    }

    fn fail(&self, e: ChannelError) {
        super::stream::fail_first(&self.state, &self.to_writer, |s| &mut s.error, e);
        self.progress.notify_all();
    }
}

/// The primary's end of the logging channel.
#[derive(Debug)]
pub struct LogSender {
    shared: Arc<Shared>,
    stream: TcpStream,
    next_seq: u64,
    reader: Option<JoinHandle<()>>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("peer", &self.peer).finish()
    }
}

impl LogSender {
    /// Connects to the backup, sends `hello` and waits (up to
    /// `peer_timeout`) for its `Welcome`. A `Refuse` becomes
    /// `ChannelError::Refused` with the backup's reason.
    pub fn connect(
        addr: impl ToSocketAddrs,
        hello: Hello,
        cfg: ChannelConfig,
    ) -> Result<Self, ChannelError> {
        let (stream, peer) = dial(addr, &cfg)?;
        let reader = prepare(&stream, peer, &cfg)?;
        Self::handshake(stream, reader, peer, hello, cfg)
    }

    /// The handshake and start-up on a connection already set up by
    /// [`prepare`] (a fresh one, or one that just carried a state transfer).
    pub(crate) fn handshake(
        mut stream: TcpStream,
        mut reader: MsgReader,
        peer: SocketAddr,
        hello: Hello,
        cfg: ChannelConfig,
    ) -> Result<Self, ChannelError> {
        let io_err = |source| ChannelError::Connect {
            peer: peer.to_string(),
            source: Arc::new(source),
        };
        let first_seq = hello.first_seq;
        let started = Instant::now();
        let hello = Message::Hello(hello);
        write_since(&mut stream, peer, &hello, started, cfg.peer_timeout)?;
        let next_seq = match reader.next_within(cfg.peer_timeout)? {
            (Message::Welcome { next_seq }, _) => next_seq,
            (m, offset) => return Err(reply_error(m, offset, peer, "before Welcome")),
        };
        if next_seq != first_seq {
            // The transport cannot replay older entries; the node must
            // reinitialise the backup (state transfer) instead.
            let reason = format!("cannot start at seq {next_seq}, first entry is {first_seq}");
            let bye = Message::Bye { reason };
            let _ = write_since(&mut stream, peer, &bye, started, cfg.peer_timeout);
            shutdown(&stream);
            return Err(ChannelError::WelcomeMismatch {
                peer,
                first_seq,
                next_seq,
            });
        }

        let shared = Arc::new(Shared {
            state: Mutex::new(TxState {
                queue: Vec::new(),
                next_seq,
                newest: None,
                inflight: VecDeque::new(),
                unacked_bytes: 0,
                acked: None,
                replayed: None,
                unreplayed: VecDeque::new(),
                replayed_at: Instant::now(),
                error: None,
                closing: false,
                writer_done: false,
                writing: false,
                last_tx: Instant::now(),
                entries_sent_at: Instant::now(),
                queued_output: false,
                progress_waiting: 0,
                last_rx: Instant::now(),
                probe: None,
            }),
            to_writer: Condvar::new(),
            progress: Condvar::new(),
            on_ack: std::sync::OnceLock::new(),
            round_trips: std::sync::OnceLock::new(),
            peer,
            cfg,
        });
        let write_half = stream.try_clone().map_err(io_err)?;
        let s = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name(format!("logch-rx {peer}"))
            .spawn(move || read_loop(&s, reader))
            .map_err(io_err)?;
        let s = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name(format!("logch-tx {peer}"))
            .spawn(move || write_loop(&s, write_half))
            .map_err(io_err);
        let writer = match writer {
            Ok(w) => w,
            Err(e) => {
                shared.fail(ChannelError::Closed { peer });
                shutdown(&stream);
                let _ = reader.join();
                return Err(e);
            }
        };
        Ok(Self {
            shared,
            stream,
            next_seq,
            reader: Some(reader),
            writer: Some(writer),
        })
    }

    /// The backup's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// The seq the backup's `Welcome` asked for (= `Hello::first_seq`).
    pub fn welcome_seq(&self) -> u64 {
        self.next_seq
    }

    /// Queues `frame` for transmission. Seqs must be consecutive from
    /// `welcome_seq()`. Blocks while `max_unacked` entries (or
    /// `max_unacked_bytes`) are unacknowledged, up to `send_timeout`, then
    /// fails with `WindowFull` (the entry is not sent; retrying is fine).
    pub fn send(&self, frame: &Frame) -> Result<(), ChannelError> {
        self.queue(frame)?;
        self.push();
        Ok(())
    }

    /// [`Self::send`] without putting the entry on the wire yet: it goes with the next
    /// [`Self::push`] (or [`Self::send`]), in one write with whatever else was queued. For a
    /// primary that logs several entries at one exit and pushes them before the guest runs on.
    /// Entries left queued are not lost: the writer thread takes them at its next heartbeat, and
    /// at once if the window fills.
    pub fn queue(&self, frame: &Frame) -> Result<(), ChannelError> {
        let peer = self.shared.peer;
        if let Err(what) = frame.entry.check() {
            return Err(ChannelError::InvalidEntry {
                peer,
                seq: frame.seq,
                what,
            });
        }
        let mut bytes = Vec::new();
        let len = encode_entry_message(frame, &mut bytes);
        let bytes = check_len(bytes, len, peer)?;
        let cfg = &self.shared.cfg;
        // Read the clock only once the window is full: this runs for every entry.
        let mut started: Option<Instant> = None;
        let mut g = self.shared.lock();
        loop {
            if let Some(e) = &g.error {
                return Err(e.clone());
            }
            if g.closing {
                return Err(ChannelError::Closed { peer });
            }
            if frame.seq != g.next_seq {
                return Err(ChannelError::OutOfOrder {
                    peer,
                    expected: g.next_seq,
                    found: frame.seq,
                });
            }
            let full = g.inflight.len() >= cfg.max_unacked
                || (!g.inflight.is_empty()
                    && g.unacked_bytes + bytes.len() > cfg.max_unacked_bytes);
            if !full {
                break;
            }
            // Acks can only come for what is on the wire.
            if !g.queue.is_empty() {
                self.shared.to_writer.notify_all();
            }
            let started = *started.get_or_insert_with(Instant::now);
            let deadline = started + cfg.send_timeout;
            if Instant::now() >= deadline {
                return Err(ChannelError::WindowFull {
                    peer,
                    waited: started.elapsed(),
                    unacked: g.inflight.len() as u64,
                    unacked_bytes: g.unacked_bytes as u64,
                });
            }
            g = self.shared.wait_for_progress(g, deadline);
        }
        g.inflight.push_back(InFlight {
            seq: frame.seq,
            t_ns: frame.t_ns,
            bytes: bytes.len(),
        });
        g.unacked_bytes += bytes.len();
        g.next_seq += 1;
        g.newest = Some((frame.seq, frame.t_ns));
        g.queued_output |= frame.entry.releases_output();
        g.queue.extend_from_slice(&bytes);
        Ok(())
    }

    /// Puts everything queued on the wire now. When no one is writing, straight from the
    /// calling thread (`send(2)` with `MSG_DONTWAIT`, which never blocks), sparing the hand-off
    /// to the writer thread — a wake-up and a context switch on the way of every output the
    /// backup must acknowledge; the writer thread takes what the socket did not. When the writer
    /// is busy, it takes the queue as soon as it is done.
    pub fn push(&self) {
        self.push_if(|_| true);
    }

    /// [`Self::push`] if the queue holds an entry output waits for, or [`PUSH_AT_BYTES`], or
    /// entries last went out `batch_hold` ago or longer; otherwise the entries wait for the next
    /// call (or the writer's next heartbeat). For a primary whose guest runs on: entries no
    /// output waits for, logged soon after a write, go with the next ones (one write and one
    /// ack for both); entries logged after a quiet spell go at once, so the backup's replay is
    /// not held back by the batching of a guest that rarely stops.
    pub fn push_due(&self) {
        let hold = self.shared.cfg.batch_hold;
        self.push_if(|g| {
            g.queued_output || g.queue.len() >= PUSH_AT_BYTES || g.entries_sent_at.elapsed() >= hold
        });
    }

    fn push_if(&self, due: impl FnOnce(&TxState) -> bool) {
        let mut g = self.shared.lock();
        if g.queue.is_empty() || g.writing || !due(&g) {
            return;
        }
        if g.error.is_some() || g.closing {
            // The writer sees it and ends; nothing more goes out from here.
            drop(g);
            self.shared.to_writer.notify_all();
            return;
        }
        g.writing = true;
        let bytes = g.take_queue();
        drop(g);
        let at = Instant::now();
        let written = write_now(&self.stream, &bytes);
        let mut g = self.shared.lock();
        g.writing = false;
        if written == bytes.len() {
            g.entries_written(at);
        } else if written > 0 {
            g.last_tx = at;
            g.entries_sent_at = at;
        }
        if written < bytes.len() {
            // The socket is full or failed: the writer finishes it (and meets the failure).
            let mut rest = bytes[written..].to_vec();
            rest.extend_from_slice(&g.queue);
            g.queue = rest;
            // The writer thread takes it at once: nothing is held back any more.
            g.queued_output = true;
        }
        let wake_writer = !g.queue.is_empty();
        drop(g);
        if wake_writer {
            self.shared.to_writer.notify_all();
        }
    }

    /// Highest seq the backup acknowledged (cumulatively).
    /// Tells the backup that console output up to byte `bytes` has left
    /// this node. Outside the window (it is not an entry) and best effort:
    /// nothing is sent on a failed or closing channel.
    pub fn released(&self, bytes: u64) {
        let Ok(msg) = encode_checked(&Message::Released { bytes }, self.shared.peer) else {
            return;
        };
        let mut g = self.shared.lock();
        if g.error.is_some() || g.closing {
            return;
        }
        let wake_writer = g.queue.is_empty();
        g.queue.extend_from_slice(&msg);
        drop(g);
        if wake_writer {
            self.shared.to_writer.notify_all();
        }
    }

    /// Has `hook` called with each new acknowledged seq, on the thread that reads the acks,
    /// right after waiters were woken: for work that must follow an ack at once, without
    /// waking another thread for it. Only the first hook set is kept (false for later ones).
    pub fn on_ack(&self, hook: AckHook) -> bool {
        self.shared.on_ack.set(hook).is_ok()
    }

    /// Has the channel's round trips (write of entries to the ack covering them) added to
    /// `into`, so that a primary keeps them across its backups' channels. Only the first
    /// store set is kept (false for later ones).
    pub fn keep_round_trips(&self, into: RoundTrips) -> bool {
        self.shared.round_trips.set(into).is_ok()
    }

    /// The newest seq the backup acknowledged; `None` before its first ack.
    pub fn acked(&self) -> Option<u64> {
        self.shared.lock().acked.map(|(seq, _)| seq)
    }

    /// Blocks until the backup acknowledged `seq` (true), `timeout` passed
    /// (false) or the connection failed (error). The output rule: release
    /// an output only after `wait_acked(seq of its entry)` is true.
    pub fn wait_acked(&self, seq: u64, timeout: Duration) -> Result<bool, ChannelError> {
        let deadline = Instant::now() + timeout;
        let mut g = self.shared.lock();
        loop {
            if g.acked.is_some_and(|(a, _)| a >= seq) {
                return Ok(true);
            }
            if let Some(e) = &g.error {
                return Err(e.clone());
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            g = self.shared.wait_for_progress(g, deadline);
        }
    }

    /// How far the backup is behind.
    pub fn lag(&self) -> Lag {
        let g = self.shared.lock();
        let newest_t = g.newest.map_or(0, |(_, t)| t);
        let base_t = match (g.acked, g.inflight.front()) {
            (Some((_, t)), _) => t,
            (None, Some(oldest)) => oldest.t_ns,
            (None, None) => newest_t,
        };
        Lag {
            entries: g.inflight.len() as u64,
            t_ns: if g.inflight.is_empty() {
                0
            } else {
                newest_t.saturating_sub(base_t)
            },
        }
    }

    /// How far the backup's replay is behind the newest entry sent; `None`
    /// until the backup has reported any entry replayed.
    pub fn replay_lag(&self) -> Option<Lag> {
        let g = self.shared.lock();
        replay_lag(&g)
    }

    /// How far the backup's replay is behind what it has received (its
    /// backlog, from its own reports): the acknowledged entries beyond the
    /// one its replay is working toward (the first after the last it
    /// reported replayed), in entries and in recorded time from that one to
    /// the newest acknowledged. `None` until it has reported any entry
    /// replayed. Unlike [`Self::replay_lag`] this does not grow with the
    /// network's latency (both reports travel the same way), nor with the
    /// spacing of entries: a replay cannot run past an entry it has not
    /// received, so one stretch between entries is always ahead of it, and
    /// a primary that waited for it to close that stretch would wait out
    /// every stretch of a guest that logs rarely, running at half speed.
    pub fn replay_backlog(&self) -> Option<Lag> {
        let g = self.shared.lock();
        replay_backlog(&g)
    }

    /// Blocks while the backup's replay backlog (see
    /// [`Self::replay_backlog`]) exceeds `max` (in entries or in recorded
    /// time), up to `timeout`; true if it is (now) within, or if there is
    /// nothing to wait for.
    ///
    /// This is the primary's throttle: it slows the guest as soon as the
    /// backup's replay falls behind, long before the window or the backup's
    /// buffer fill. Entries still on the wire are the window's business: a
    /// slow link is not a slow backup, and holding the guest for it would
    /// only slow the primary by the round trip on every entry. It waits only for a backup that is visibly replaying: no report
    /// yet, or none for `quiet`, counts as within. A stopped or dead backup
    /// is the failure detector's business, and holding the guest for it
    /// would only stall the primary until the peer timeout.
    pub fn wait_replay_within(
        &self,
        max: Lag,
        quiet: Duration,
        timeout: Duration,
    ) -> Result<bool, ChannelError> {
        // The clock is read only when the backlog is too long: this runs for every entry.
        let mut deadline: Option<Instant> = None;
        let mut g = self.shared.lock();
        loop {
            if let Some(e) = &g.error {
                return Err(e.clone());
            }
            let within =
                replay_backlog(&g).is_none_or(|l| l.entries <= max.entries && l.t_ns <= max.t_ns);
            if within {
                return Ok(true);
            }
            let deadline = *deadline.get_or_insert_with(|| Instant::now() + timeout);
            let goes_quiet = g.replayed_at + quiet;
            let now = Instant::now();
            if now > goes_quiet {
                return Ok(true);
            }
            if now >= deadline {
                return Ok(false);
            }
            // Wake when the backup would count as quiet, too: nothing signals that.
            let wake = deadline.min(goes_quiet + Duration::from_millis(1));
            g = self.shared.wait_for_progress(g, wake);
        }
    }

    /// False once the connection failed or was closed.
    pub fn is_alive(&self) -> bool {
        let g = self.shared.lock();
        g.error.is_none() && !g.closing
    }

    /// The error that ended the connection, if any.
    pub fn error(&self) -> Option<ChannelError> {
        self.shared.lock().error.clone()
    }

    /// Flushes what was sent (waiting at most `send_timeout` for the socket
    /// to take it), says `Bye`, and closes. Does not wait for acks: call
    /// `wait_acked` first if they matter. Returns the connection's error if
    /// it had already failed.
    pub fn close(mut self) -> Result<(), ChannelError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), ChannelError> {
        let peer = self.shared.peer;
        let deadline = Instant::now() + self.shared.cfg.send_timeout;
        let mut g = self.shared.lock();
        let earlier = g.error.clone();
        g.closing = true;
        self.shared.notify_all();
        while !g.writer_done && Instant::now() < deadline {
            g = self.shared.wait_for_writer_work(g, deadline);
        }
        if g.error.is_none() {
            g.error = Some(ChannelError::Closed { peer });
        }
        drop(g);
        self.shared.notify_all();
        // Unblocks a writer stuck on a peer that does not read, and the reader.
        shutdown(&self.stream);
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
        earlier.map_or(Ok(()), Err)
    }
}

impl Drop for LogSender {
    fn drop(&mut self) {
        if self.writer.is_some() || self.reader.is_some() {
            let _ = self.finish();
        }
    }
}

/// Socket options for a primary's connection, and a reader on it.
pub(crate) fn prepare(
    stream: &TcpStream,
    peer: SocketAddr,
    cfg: &ChannelConfig,
) -> Result<MsgReader, ChannelError> {
    let io_err = |source| ChannelError::Connect {
        peer: peer.to_string(),
        source: Arc::new(source),
    };
    Ok(MsgReader::new(tune(stream, cfg).map_err(io_err)?, peer))
}

pub(crate) fn dial(
    addr: impl ToSocketAddrs,
    cfg: &ChannelConfig,
) -> Result<(TcpStream, SocketAddr), ChannelError> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|e| ChannelError::Connect {
            peer: "(unresolved address)".into(),
            source: Arc::new(e),
        })?
        .collect();
    let mut last = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, cfg.connect_timeout) {
            Ok(s) => return Ok((s, *a)),
            Err(e) => last = Some((a, e)),
        }
    }
    Err(match last {
        Some((a, e)) => ChannelError::Connect {
            peer: a.to_string(),
            source: Arc::new(e),
        },
        None => ChannelError::Connect {
            peer: "(no address)".into(),
            source: Arc::new(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "address resolved to nothing",
            )),
        },
    })
}

/// Writes what the socket takes at once, without blocking: the bytes written (0 if it would block
/// or failed; the writer thread then writes the rest, and meets any failure itself).
fn write_now(stream: &TcpStream, bytes: &[u8]) -> usize {
    use std::os::fd::AsRawFd;
    // SAFETY: `bytes` is a live slice for the whole call and the length passed is its own; the
    // descriptor belongs to `stream`, which outlives the call. MSG_DONTWAIT makes this one call
    // non-blocking without touching the descriptor's flags, which the writer thread shares.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(n).unwrap_or(0)
}

/// A backup's report on entry `seq` (ack or replay progress) must name an entry that was sent
/// and must not go back from its previous report.
fn implausible(seq: u64, sent: Option<u64>, previous: Option<u64>) -> bool {
    sent.is_none_or(|s| seq > s) || previous.is_some_and(|p| seq < p)
}

fn replay_lag(g: &TxState) -> Option<Lag> {
    let (seq, t_ns) = g.replayed?;
    let (newest_seq, newest_t) = g.newest?;
    Some(Lag {
        entries: newest_seq.saturating_sub(seq),
        t_ns: newest_t.saturating_sub(t_ns),
    })
}

fn replay_backlog(g: &TxState) -> Option<Lag> {
    let (seq, _) = g.replayed?;
    let Some((acked_seq, acked_t)) = g.acked else {
        return Some(Lag::default());
    };
    // The backup cannot run past an entry it has not received, so it is always somewhere
    // between its last replayed entry and the next one; that stretch is not held against it.
    let working_toward_t = g.unreplayed.front().map_or(acked_t, |&(_, t)| t);
    Some(Lag {
        entries: acked_seq.saturating_sub(seq).saturating_sub(1),
        t_ns: acked_t.saturating_sub(working_toward_t),
    })
}

fn read_loop(shared: &Shared, mut reader: MsgReader) {
    let peer = shared.peer;
    let err = loop {
        let polled = reader.poll();
        let mut g = shared.lock();
        if g.closing && g.writer_done {
            // Our own Bye is out; whatever happens now is the close itself.
            return;
        }
        match polled {
            Ok(Polled::Msg(Message::Ack { seq }, offset)) => {
                g.last_rx = Instant::now();
                let round_trip = match g.probe {
                    Some((probe, written)) if probe <= seq => {
                        g.probe = None;
                        Some(g.last_rx.saturating_duration_since(written))
                    }
                    _ => None,
                };
                let sent = g.newest.map(|(s, _)| s);
                let previous = g.acked.map(|(s, _)| s);
                if implausible(seq, sent, previous) {
                    break ChannelError::BadAck {
                        peer,
                        offset,
                        seq,
                        sent,
                        previous,
                    };
                }
                while let Some(f) = g.inflight.pop_front() {
                    if f.seq > seq {
                        g.inflight.push_front(f);
                        break;
                    }
                    g.unacked_bytes -= f.bytes;
                    g.acked = Some((f.seq, f.t_ns));
                    // A replay report can overtake the acks of the entries it covers.
                    if g.replayed.is_some_and(|(r, _)| f.seq <= r) {
                        continue;
                    }
                    if g.unreplayed.len() >= MAX_UNREPLAYED {
                        g.unreplayed.pop_front();
                    }
                    g.unreplayed.push_back((f.seq, f.t_ns));
                }
                shared.progressed(g);
                if let Some(hook) = shared.on_ack.get() {
                    hook(seq);
                }
                if let (Some(rt), Some(keep)) = (round_trip, shared.round_trips.get()) {
                    let us = u32::try_from(rt.as_micros()).unwrap_or(u32::MAX);
                    let mut kept = super::stream::lock(keep);
                    if kept.len() < MAX_ROUND_TRIPS {
                        kept.push(us);
                    }
                }
            }
            Ok(Polled::Msg(Message::Heartbeat { .. }, _)) => g.last_rx = Instant::now(),
            Ok(Polled::Msg(Message::Replayed { seq, t_ns }, offset)) => {
                g.last_rx = Instant::now();
                let sent = g.newest.map(|(s, _)| s);
                let previous = g.replayed.map(|(s, _)| s);
                if implausible(seq, sent, previous) {
                    break ChannelError::BadReplayed {
                        peer,
                        offset,
                        seq,
                        sent,
                        previous,
                    };
                }
                g.replayed = Some((seq, t_ns));
                g.replayed_at = Instant::now();
                while g.unreplayed.front().is_some_and(|&(s, _)| s <= seq) {
                    g.unreplayed.pop_front();
                }
                shared.progressed(g);
            }
            Ok(Polled::Msg(Message::Bye { reason }, _)) => {
                break ChannelError::Bye { peer, reason };
            }
            Ok(Polled::Msg(m, offset)) => {
                break ChannelError::Unexpected {
                    peer,
                    offset,
                    message: m.name(),
                    when: "from a backup after Welcome",
                };
            }
            Ok(Polled::Idle) => {
                if g.error.is_some() {
                    return;
                }
                let waited = g.last_rx.elapsed();
                if waited > shared.cfg.peer_timeout {
                    break ChannelError::PeerTimeout { peer, waited };
                }
            }
            Err(e) => break e,
        }
    };
    shared.fail(err);
}

fn write_loop(shared: &Shared, mut stream: TcpStream) {
    let peer = shared.peer;
    let interval = shared.cfg.heartbeat_interval;
    let alive = || match &shared.lock().error {
        Some(e) => Err(e.clone()),
        None => Ok(()),
    };
    loop {
        let mut g = shared.lock();
        let (bytes, bye, entries) = loop {
            if g.error.is_some() {
                g.writer_done = true;
                drop(g);
                shared.to_writer.notify_all();
                return;
            }
            if g.writing {
                // `send` is writing directly; it wakes this thread if it leaves anything.
                g = shared.wait_for_writer_work(g, Instant::now() + interval);
                continue;
            }
            if !g.queue.is_empty() {
                g.writing = true;
                break (g.take_queue(), false, true);
            }
            if g.closing {
                let bye = Message::Bye {
                    reason: "primary closed the channel".into(),
                };
                break (encode_checked(&bye, peer).unwrap_or_default(), true, false);
            }
            if g.last_tx.elapsed() >= interval {
                let hb = Message::Heartbeat {
                    t_ns: g.newest.map_or(0, |(_, t)| t),
                    last_seq: g.newest.map(|(s, _)| s),
                };
                g.writing = true;
                break (encode_checked(&hb, peer).unwrap_or_default(), false, false);
            }
            let next_heartbeat = g.last_tx + interval;
            g = shared.wait_for_writer_work(g, next_heartbeat);
        };
        drop(g);
        let at = Instant::now();
        let result = write_all_while(&mut stream, peer, &bytes, alive);
        let mut g = shared.lock();
        g.writing = false;
        if entries && result.is_ok() {
            g.entries_written(at);
        } else {
            g.last_tx = Instant::now();
        }
        drop(g);
        if let Err(e) = result {
            shared.fail(e);
            continue;
        }
        // `send` refuses new entries once closing, so nothing follows the Bye.
        if bye {
            let mut g = shared.lock();
            g.writer_done = true;
            drop(g);
            shared.to_writer.notify_all();
            return;
        }
    }
}
