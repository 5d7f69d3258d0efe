//! Backup side.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::accept::{Listener, foreign_reason};
use super::message::{Hello, Message};
use super::stream::{
    MsgReader, Polled, encode_checked, refuse_quietly, shutdown, write_all_while, write_since,
};
use super::{ChannelConfig, ChannelError};
use crate::format::Frame;

/// Ack at least this often during a long burst, so the primary's window
/// and lag figures move even when the socket never looks drained.
const ACK_EVERY: u64 = 64;

/// The usual accept decision: the image, view and primary this backup's
/// current view expects. Use as `|h| expected.check(h)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedPrimary {
    /// SHA-256 of this backup's guest image.
    pub guest_image_sha256: [u8; 32],
    /// This backup's current view.
    pub viewnum: u64,
    /// That view's primary, by server name.
    pub primary: String,
}

impl ExpectedPrimary {
    /// `Err(reason)` is sent to the primary in the `Refuse`.
    pub fn check(&self, hello: &Hello) -> Result<(), String> {
        if hello.guest_image_sha256 != self.guest_image_sha256 {
            return Err(format!(
                "guest image mismatch: primary runs {}, backup has {}",
                hex(&hello.guest_image_sha256),
                hex(&self.guest_image_sha256)
            ));
        }
        if hello.viewnum != self.viewnum {
            return Err(format!(
                "view mismatch: primary says view {}, backup is in view {}",
                hello.viewnum, self.viewnum
            ));
        }
        if hello.primary != self.primary {
            return Err(format!(
                "not the primary of view {}: {:?} connected, the view's primary is {:?}",
                self.viewnum, hello.primary, self.primary
            ));
        }
        Ok(())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The handshake on a connection that just carried a state transfer: the
/// primary's `Hello` follows on it, within `peer_timeout`. `reader` holds
/// nothing unread, because the primary waits for `StateInstalled` before
/// sending its `Hello`.
pub(crate) fn handshake_on(
    stream: TcpStream,
    mut reader: MsgReader,
    peer: SocketAddr,
    check: impl FnOnce(&Hello) -> Result<(), String>,
    cfg: ChannelConfig,
) -> Result<LogReceiver, ChannelError> {
    let first = reader.next_within(cfg.peer_timeout);
    answer_hello(stream, reader, peer, first, check, cfg)
}

/// Answers the first message of a log stream: `Welcome` and a running
/// receiver for a `Hello` that `check` accepts, `Refuse` for anything else.
pub(crate) fn answer_hello(
    stream: TcpStream,
    reader: MsgReader,
    peer: SocketAddr,
    first: Result<(Message, u64), ChannelError>,
    check: impl FnOnce(&Hello) -> Result<(), String>,
    cfg: ChannelConfig,
) -> Result<LogReceiver, ChannelError> {
    let mut writer = stream;
    let started = Instant::now();
    let hello = match first {
        Ok((Message::Hello(h), _)) => h,
        Ok((m, offset)) => {
            let e = ChannelError::Unexpected {
                peer,
                offset,
                message: m.name(),
                when: "before Hello",
            };
            refuse_quietly(&writer, peer, e.to_string());
            return Err(e);
        }
        Err(e) => {
            if let Some(reason) = foreign_reason(&e) {
                refuse_quietly(&writer, peer, reason.clone());
                return Err(ChannelError::RefusedPrimary { peer, reason });
            }
            // Tell a confused client what went wrong, if it listens.
            refuse_quietly(&writer, peer, e.to_string());
            return Err(e);
        }
    };
    if let Err(reason) = check(&hello) {
        // Best effort: the primary may already be gone; the refusal stands.
        refuse_quietly(&writer, peer, reason.clone());
        return Err(ChannelError::RefusedPrimary { peer, reason });
    }
    let welcome = Message::Welcome {
        next_seq: hello.first_seq,
    };
    // A primary that never reads must not hold the handshake forever.
    write_since(&mut writer, peer, &welcome, started, cfg.peer_timeout * 2)?;
    LogReceiver::start(writer, reader, peer, hello, cfg)
}

struct RxState {
    buf: VecDeque<Frame>,
    /// (seq, t_ns) of the newest entry put into `buf`.
    newest: Option<(u64, u64)>,
    /// The primary's latest `Released`: console bytes it let out.
    released: u64,
    error: Option<ChannelError>,
    closing: bool,
    /// Threads waiting on `cond` (the replay for entries, the reader for room): a notification
    /// is a system call, made only when someone waits.
    waiting: usize,
}

struct Writer {
    stream: TcpStream,
    last_tx: Instant,
    acked: Option<u64>,
}

struct Shared {
    state: Mutex<RxState>,
    cond: Condvar,
    /// Separate from `state` so that `recv` never waits behind a write.
    writer: Mutex<Writer>,
    peer: SocketAddr,
    cfg: ChannelConfig,
    /// Set when the receiver closes: the heartbeat thread waits on it between heartbeats
    /// (not on `cond`, which fires on every entry), so closing never waits out a sleep. A
    /// promoted backup closes its receiver on the way to going live.
    hb_stop: Mutex<bool>,
    hb_wake: Condvar,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("peer", &self.peer).finish()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, RxState> {
        super::stream::lock(&self.state)
    }

    fn wait_until<'a>(
        &self,
        g: MutexGuard<'a, RxState>,
        deadline: Instant,
    ) -> MutexGuard<'a, RxState> {
        crate::waiters::wait_counted(&self.cond, g, deadline, |s| &mut s.waiting)
    }

    /// Wakes whoever waits on `cond`, if anyone does.
    fn wake(&self, g: MutexGuard<'_, RxState>) {
        crate::waiters::notify_counted(&self.cond, g, |s| s.waiting);
    }

    fn fail(&self, e: ChannelError) {
        super::stream::fail_first(&self.state, &self.cond, |s| &mut s.error, e);
    }

    fn alive(&self) -> Result<(), ChannelError> {
        let g = self.lock();
        match &g.error {
            Some(e) => Err(e.clone()),
            None if g.closing => Err(ChannelError::Closed { peer: self.peer }),
            None => Ok(()),
        }
    }

    /// Sends `msg`; `Ack`s only if they say something new. Nothing goes out
    /// once the connection failed or was stopped.
    fn send(&self, msg: &Message) -> Result<(), ChannelError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.alive()?;
        if let Message::Ack { seq } = msg {
            if w.acked.is_some_and(|a| a >= *seq) {
                return Ok(());
            }
            w.acked = Some(*seq);
        }
        let bytes = encode_checked(msg, self.peer)?;
        write_all_while(&mut w.stream, self.peer, &bytes, || self.alive())?;
        w.last_tx = Instant::now();
        Ok(())
    }

    fn ack(&self) -> Result<(), ChannelError> {
        let newest = self.lock().newest;
        match newest {
            Some((seq, _)) => self.send(&Message::Ack { seq }),
            None => Ok(()),
        }
    }
}

/// The backup's end of the logging channel.
#[derive(Debug)]
pub struct LogReceiver {
    shared: Arc<Shared>,
    hello: Hello,
    stream: TcpStream,
    reader: Option<JoinHandle<()>>,
    heartbeat: Option<JoinHandle<()>>,
}

impl LogReceiver {
    /// Binds the backup's listening socket (`127.0.0.1:0` for tests), as
    /// [`Listener::bind`].
    pub fn listen(addr: impl ToSocketAddrs + std::fmt::Debug) -> Result<Listener, ChannelError> {
        Listener::bind(addr)
    }

    fn start(
        stream: TcpStream,
        reader: MsgReader,
        peer: SocketAddr,
        hello: Hello,
        cfg: ChannelConfig,
    ) -> Result<Self, ChannelError> {
        let io_err = |e| ChannelError::Read {
            peer,
            offset: 0,
            source: Arc::new(e),
        };
        let control = stream.try_clone().map_err(io_err)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(RxState {
                buf: VecDeque::new(),
                newest: None,
                released: 0,
                error: None,
                closing: false,
                waiting: 0,
            }),
            cond: Condvar::new(),
            writer: Mutex::new(Writer {
                stream,
                last_tx: Instant::now(),
                acked: None,
            }),
            peer,
            cfg,
            hb_stop: Mutex::new(false),
            hb_wake: Condvar::new(),
        });
        let first = hello.first_seq;
        let s = Arc::clone(&shared);
        let reader = std::thread::Builder::new()
            .name(format!("logch-rx {peer}"))
            .spawn(move || {
                let e = read_loop(&s, reader, first);
                s.fail(e);
            })
            .map_err(io_err)?;
        let s = Arc::clone(&shared);
        let heartbeat = std::thread::Builder::new()
            .name(format!("logch-hb {peer}"))
            .spawn(move || heartbeat_loop(&s))
            .map_err(io_err);
        let heartbeat = match heartbeat {
            Ok(h) => h,
            Err(e) => {
                shared.fail(ChannelError::Closed { peer });
                shutdown(&control);
                let _ = reader.join();
                return Err(e);
            }
        };
        Ok(Self {
            shared,
            hello,
            stream: control,
            reader: Some(reader),
            heartbeat: Some(heartbeat),
        })
    }

    /// The primary's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.shared.peer
    }

    /// The accepted primary's `Hello`.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The next entry, waiting up to `timeout`; `None` if none arrived (the
    /// backup stalls on an empty buffer). Entries received before a failure
    /// are all delivered before the failure is returned, so a backup that
    /// takes over can consume everything the primary got to it.
    pub fn recv(&self, timeout: Duration) -> Result<Option<Frame>, ChannelError> {
        let deadline = Instant::now() + timeout;
        let mut g = self.shared.lock();
        loop {
            if let Some(f) = g.buf.pop_front() {
                self.shared.wake(g);
                return Ok(Some(f));
            }
            if let Some(e) = &g.error {
                return Err(e.clone());
            }
            if g.closing {
                return Err(ChannelError::Closed {
                    peer: self.shared.peer,
                });
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            g = self.shared.wait_until(g, deadline);
        }
    }

    /// Entries received and acknowledged but not yet taken by `recv`.
    pub fn buffered(&self) -> usize {
        self.shared.lock().buf.len()
    }

    /// Tells the primary that the replay has applied entry `seq` (recorded
    /// at `t_ns`), so it can keep the replay lag small.
    pub fn replayed(&self, seq: u64, t_ns: u64) -> Result<(), ChannelError> {
        self.shared.send(&Message::Replayed { seq, t_ns })
    }

    /// Console bytes the primary said it released (0 until it says so).
    pub fn released(&self) -> u64 {
        self.shared.lock().released
    }

    /// Seq of the newest entry received (and acknowledged, or about to be).
    pub fn last_received(&self) -> Option<u64> {
        self.shared.lock().newest.map(|(s, _)| s)
    }

    /// False once the connection failed or was closed (buffered entries
    /// may still be waiting for `recv`).
    pub fn is_alive(&self) -> bool {
        let g = self.shared.lock();
        g.error.is_none() && !g.closing
    }

    /// The error that ended the connection, if any.
    pub fn error(&self) -> Option<ChannelError> {
        self.shared.lock().error.clone()
    }

    /// Stops taking entries from the primary at once: no entry arrives and
    /// none is acknowledged after this returns, so the primary can release
    /// nothing more on this backup's word. Entries already buffered stay
    /// receivable; then `recv` returns `Stopped { reason }`. For a backup
    /// that the view no longer makes this primary's backup (it was promoted,
    /// or dropped) while the old primary still streams to it.
    pub fn stop_receiving(&self, reason: &str) {
        {
            let mut g = self.shared.lock();
            if g.error.is_none() {
                g.error = Some(ChannelError::Stopped {
                    peer: self.shared.peer,
                    reason: reason.to_string(),
                });
            }
        }
        self.shared.cond.notify_all();
        // Taking the writer waits out an ack being written; every later one sees the error.
        {
            let mut w = self.shared.writer.lock().unwrap_or_else(|p| p.into_inner());
            let bye = Message::Bye {
                reason: reason.to_string(),
            };
            if let Ok(bytes) = encode_checked(&bye, self.shared.peer) {
                let _ = std::io::Write::write_all(&mut w.stream, &bytes);
            }
        }
        shutdown(&self.stream);
    }

    /// Says `Bye` and closes; unreceived entries are dropped.
    pub fn close(mut self) -> Result<(), ChannelError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), ChannelError> {
        let earlier = self.shared.lock().error.clone();
        if earlier.is_none() {
            let _ = self.shared.send(&Message::Bye {
                reason: "backup closed the channel".into(),
            });
        }
        {
            let mut g = self.shared.lock();
            g.closing = true;
            if g.error.is_none() {
                g.error = Some(ChannelError::Closed {
                    peer: self.shared.peer,
                });
            }
        }
        self.shared.cond.notify_all();
        *super::stream::lock(&self.shared.hb_stop) = true;
        self.shared.hb_wake.notify_all();
        shutdown(&self.stream);
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        earlier.map_or(Ok(()), Err)
    }
}

impl Drop for LogReceiver {
    fn drop(&mut self) {
        if self.reader.is_some() || self.heartbeat.is_some() {
            let _ = self.finish();
        }
    }
}

fn read_loop(shared: &Shared, mut reader: MsgReader, first_seq: u64) -> ChannelError {
    let peer = shared.peer;
    let cfg = &shared.cfg;
    let mut expected = first_seq;
    let mut last_rx = Instant::now();
    let mut since_ack = 0u64;
    // Entries put into the buffer that the replay has not been woken for.
    let mut unannounced = false;
    loop {
        let polled = match reader.poll() {
            Ok(p) => p,
            Err(e) => return e,
        };
        if let Err(e) = shared.alive() {
            return e;
        }
        match polled {
            Polled::Msg(Message::Entry(frame), offset) => {
                last_rx = Instant::now();
                if frame.seq != expected {
                    return ChannelError::SeqGap {
                        peer,
                        offset,
                        expected,
                        found: frame.seq,
                    };
                }
                let mut g = shared.lock();
                if g.buf.len() >= cfg.max_buffered {
                    // Full: ack what we hold, then stop reading the socket so
                    // TCP backpressure (and the window) stall the primary.
                    drop(g);
                    if let Err(e) = shared.ack() {
                        return e;
                    }
                    since_ack = 0;
                    // The replay must hear of what is there, or nothing makes room.
                    shared.wake(shared.lock());
                    g = shared.lock();
                    while g.buf.len() >= cfg.max_buffered && g.error.is_none() && !g.closing {
                        g = shared.wait_until(g, Instant::now() + cfg.poll_interval());
                    }
                    // Our own stall, not the primary's silence.
                    last_rx = Instant::now();
                }
                if let Some(e) = &g.error {
                    return e.clone();
                }
                g.newest = Some((frame.seq, frame.t_ns));
                g.buf.push_back(frame);
                drop(g);
                expected += 1;
                since_ack += 1;
                unannounced = true;
            }
            Polled::Msg(Message::Heartbeat { .. }, _) => last_rx = Instant::now(),
            Polled::Msg(Message::Released { bytes }, _) => {
                last_rx = Instant::now();
                let mut g = shared.lock();
                g.released = g.released.max(bytes);
            }
            Polled::Msg(Message::Bye { reason }, _) => return ChannelError::Bye { peer, reason },
            Polled::Msg(m, offset) => {
                return ChannelError::Unexpected {
                    peer,
                    offset,
                    message: m.name(),
                    when: "from a primary after Welcome",
                };
            }
            Polled::Idle => {
                let waited = last_rx.elapsed();
                if waited > cfg.peer_timeout {
                    return ChannelError::PeerTimeout { peer, waited };
                }
            }
        }
        // Ack once what has arrived is drained (any message, heartbeats
        // included, may be the last one buffered), so a sender waiting on
        // the output rule is answered at once, yet a burst costs few acks.
        if since_ack > 0 && (since_ack >= ACK_EVERY || !reader.has_whole_frame()) {
            if let Err(e) = shared.ack() {
                return e;
            }
            since_ack = 0;
        }
        // The replay hears of new entries once the primary has heard they arrived: on a busy
        // host, waking the replay first could let it take the CPU before the ack went out,
        // and the ack is what a reply waits for.
        if unannounced && since_ack == 0 {
            shared.wake(shared.lock());
            unannounced = false;
        }
    }
}

fn heartbeat_loop(shared: &Shared) {
    let interval = shared.cfg.heartbeat_interval;
    loop {
        {
            let stop = super::stream::lock(&shared.hb_stop);
            let (stop, _) = shared
                .hb_wake
                .wait_timeout_while(stop, shared.cfg.poll_interval(), |s| !*s)
                .unwrap_or_else(|p| p.into_inner());
            if *stop {
                return;
            }
        }
        let newest = {
            let g = shared.lock();
            if g.error.is_some() || g.closing {
                return;
            }
            g.newest
        };
        let idle = {
            let w = shared.writer.lock().unwrap_or_else(|p| p.into_inner());
            w.last_tx.elapsed() >= interval
        };
        if idle {
            let hb = Message::Heartbeat {
                t_ns: newest.map_or(0, |(_, t)| t),
                last_seq: newest.map(|(s, _)| s),
            };
            if let Err(e) = shared.send(&hb) {
                shared.fail(e);
                return;
            }
        }
    }
}
