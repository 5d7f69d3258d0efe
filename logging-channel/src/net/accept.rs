//! The backup's listening socket and its accept path (docs/log-format.md,
//! "Accepting connections").
//!
//! Anything can connect to a node's port: a port scanner, an HTTP or TLS
//! client, a socket half-open since its host crashed. None of them may delay
//! the primary's offer, because the primary holds the guest's output until it
//! has a backup again. Reading first messages one connection at a time, each
//! bounded by the peer timeout, let every junk connection in the queue cost a
//! second. So:
//!
//! - one thread per [`Listener`] accepts continuously;
//! - each connection's first message is read on a short-lived thread of its
//!   own, and must arrive whole within `ChannelConfig::handshake_timeout`;
//!   at most [`MAX_HANDSHAKES`] are read at once, and at that bound the
//!   oldest is dropped (a flood must not lock out the next connection, which
//!   may be the primary's);
//! - a connection whose first message is not a `Hello` or `StateOffer` of
//!   this protocol (magic, version, size) is refused with the reason and
//!   closed by that thread; only the others are queued for
//!   [`Listener::accept`] / [`Listener::accept_transfer`], which take the
//!   oldest, check it (the node's callback, which may ask the viewserver, runs
//!   on the caller's thread with no lock held) and answer it;
//! - at most [`MAX_QUEUED`] wait for an accept call (a backup busy replaying
//!   makes none); beyond that the oldest is refused as busy, and one that
//!   waited longer than half the caller's `peer_timeout` is refused as stale
//!   (its primary waits `peer_timeout` for the answer, then gives up and
//!   retries on a new connection).

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::message::{Hello, Message};
use super::receiver::{LogReceiver, answer_hello};
use super::stream::{MsgReader, Polled, refuse_quietly, set_options, shutdown, wait_until};
use super::{ChannelConfig, ChannelError};
use crate::codec::CodecError;

/// First messages read at once by one listener. Each costs a thread for at
/// most the handshake deadline; a real primary's takes well under a
/// millisecond, so this many only fill up in a flood.
pub const MAX_HANDSHAKES: usize = 64;

/// Connections whose first message arrived, waiting for an accept call.
/// A primary that gets no answer retries, so a few are plenty.
pub const MAX_QUEUED: usize = 4;

/// The largest first message (frame body) a listener reads. A `Hello` or
/// `StateOffer` is a few hundred bytes; anything announcing more is not a
/// primary and is refused before it is read.
pub const MAX_FIRST_MESSAGE: u32 = 64 << 10;

/// Pause after the listening socket fails (e.g. out of file descriptors),
/// so that retrying does not spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// How long dropping a listener waits to wake its accepting thread.
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);

/// What a [`Listener`] did with the connections it accepted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AcceptStats {
    /// TCP connections accepted.
    pub connections: u64,
    /// Refused and closed: the first message was not a `Hello` or
    /// `StateOffer` of this protocol, or the peer closed or reset first.
    pub rejected: u64,
    /// Refused and closed: no whole first message within the handshake deadline.
    pub timed_out: u64,
    /// Dropped at a bound: a handshake beyond [`MAX_HANDSHAKES`], a queued
    /// connection beyond [`MAX_QUEUED`] or one queued for too long.
    pub dropped: u64,
    /// Handed to an `accept` or `accept_transfer` call.
    pub handed_over: u64,
}

/// A connection whose first message arrived: a `Hello` or `StateOffer` with
/// this protocol's magic and version.
pub(crate) struct Arrived {
    pub(crate) stream: TcpStream,
    pub(crate) reader: MsgReader,
    pub(crate) peer: SocketAddr,
    pub(crate) first: Message,
    /// Stream offset of `first`.
    pub(crate) offset: u64,
    arrived: Instant,
}

struct State {
    handshake_timeout: Duration,
    /// Queued longer than this: refused as stale.
    max_age: Duration,
    /// First-message reads in flight, oldest first, each with a handle to
    /// cut it short.
    reading: VecDeque<(u64, TcpStream)>,
    next_id: u64,
    queued: VecDeque<Arrived>,
    /// The listening socket's latest failure, for the next accept call.
    error: Option<ChannelError>,
    closing: bool,
    stats: AcceptStats,
}

impl State {
    /// The caller's settings apply to handshakes that start from now on.
    fn adopt(&mut self, cfg: &ChannelConfig) {
        self.handshake_timeout = cfg.handshake_timeout.max(Duration::from_millis(1));
        // The primary waits `peer_timeout` for the answer; leave it half of
        // that for the node's check and the answer to reach it.
        self.max_age = cfg.peer_timeout / 2;
    }
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a connection is queued or the socket fails.
    cond: Condvar,
    local: SocketAddr,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        super::stream::lock(&self.state)
    }
}

/// A backup's listening socket. Accepts and reads first messages in the
/// background from `bind` on (see the module doc); `accept` and
/// `accept_transfer` take the connections whose first message arrived.
/// Survives refused, junk or broken connections: call again for the next one.
pub struct Listener {
    shared: Arc<Shared>,
    local: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Binds `addr` (`127.0.0.1:0` for tests) with the default handshake
    /// deadline until an accept call passes its own config.
    pub fn bind(addr: impl ToSocketAddrs + std::fmt::Debug) -> Result<Self, ChannelError> {
        Self::bind_with(addr, &ChannelConfig::default())
    }

    /// Binds `addr`; `cfg.handshake_timeout` (and `peer_timeout`, for the
    /// stale limit) apply until an accept call passes another config.
    pub fn bind_with(
        addr: impl ToSocketAddrs + std::fmt::Debug,
        cfg: &ChannelConfig,
    ) -> Result<Self, ChannelError> {
        let listen_err = |e| ChannelError::Listen {
            addr: format!("{addr:?}"),
            source: Arc::new(e),
        };
        let inner = TcpListener::bind(&addr).map_err(listen_err)?;
        let local = inner.local_addr().map_err(listen_err)?;
        let mut state = State {
            handshake_timeout: Duration::ZERO,
            max_age: Duration::ZERO,
            reading: VecDeque::new(),
            next_id: 0,
            queued: VecDeque::new(),
            error: None,
            closing: false,
            stats: AcceptStats::default(),
        };
        state.adopt(cfg);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            cond: Condvar::new(),
            local,
        });
        let s = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name(format!("logch-accept {local}"))
            .spawn(move || accept_loop(&s, &inner))
            .map_err(listen_err)?;
        Ok(Self {
            shared,
            local,
            acceptor: Some(acceptor),
        })
    }

    /// The bound address (with the port the OS chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Counts of what happened to the connections accepted so far.
    pub fn stats(&self) -> AcceptStats {
        self.shared.lock().stats
    }

    /// Waits for one primary's `Hello` and answers it. `check` decides on it
    /// (magic and protocol version are checked before it is called);
    /// `Err(reason)` sends `Refuse { reason }`, closes, and returns
    /// `RefusedPrimary`. A `StateOffer` instead is refused and returned as
    /// `Unexpected`. Any error except `Accept`/`AcceptTimeout` concerns only
    /// that connection: call again for the next primary.
    ///
    /// `timeout`: how long to wait for a connection whose first message has
    /// arrived (`None`: forever), else `AcceptTimeout`. Junk connections
    /// are dealt with in the background and never returned.
    pub fn accept(
        &self,
        check: impl FnOnce(&Hello) -> Result<(), String>,
        cfg: ChannelConfig,
        timeout: Option<Duration>,
    ) -> Result<LogReceiver, ChannelError> {
        let a = self.next_arrived(&cfg, timeout)?;
        answer_hello(
            a.stream,
            a.reader,
            a.peer,
            Ok((a.first, a.offset)),
            check,
            cfg,
        )
    }

    /// The oldest queued connection that is not stale, waiting up to
    /// `timeout` for one, with `cfg`'s socket options.
    pub(crate) fn next_arrived(
        &self,
        cfg: &ChannelConfig,
        timeout: Option<Duration>,
    ) -> Result<Arrived, ChannelError> {
        let started = Instant::now();
        let mut stale = Vec::new();
        let mut g = self.shared.lock();
        g.adopt(cfg);
        let found = loop {
            let max_age = g.max_age;
            let mut fresh = None;
            while let Some(a) = g.queued.pop_front() {
                if a.arrived.elapsed() <= max_age {
                    fresh = Some(a);
                    break;
                }
                g.stats.dropped += 1;
                stale.push(a);
            }
            if let Some(a) = fresh {
                g.stats.handed_over += 1;
                break Ok(a);
            }
            if let Some(e) = g.error.take() {
                break Err(e);
            }
            match timeout {
                None => g = self.shared.cond.wait(g).unwrap_or_else(|p| p.into_inner()),
                Some(t) if started.elapsed() >= t => {
                    break Err(ChannelError::AcceptTimeout {
                        local: self.local,
                        waited: started.elapsed(),
                    });
                }
                Some(t) => g = wait_until(&self.shared.cond, g, started + t),
            }
        };
        drop(g);
        for a in stale {
            let waited = a.arrived.elapsed();
            refuse_quietly(
                &a.stream,
                a.peer,
                format!(
                    "stale: the backup took up this connection {waited:?} after its {} arrived; connect again",
                    a.first.name()
                ),
            );
        }
        let a = found?;
        set_options(&a.stream, cfg).map_err(|e| ChannelError::Read {
            peer: a.peer,
            offset: a.offset,
            source: Arc::new(e),
        })?;
        Ok(a)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        {
            let mut g = self.shared.lock();
            g.closing = true;
            for (_, s) in g.reading.drain(..) {
                shutdown(&s);
            }
            g.queued.clear();
        }
        self.shared.cond.notify_all();
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        // A blocking `accept` has no timeout and std cannot interrupt it: a
        // connection of our own wakes it to see `closing`. Should that fail,
        // the thread ends with the next connection to arrive instead.
        if TcpStream::connect_timeout(&wake_addr(self.local), WAKE_TIMEOUT).is_ok() {
            let _ = acceptor.join();
        }
    }
}

/// Where to connect to reach a socket bound to `local` (which may be the
/// unspecified address).
fn wake_addr(local: SocketAddr) -> SocketAddr {
    let ip = match local.ip() {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, local.port())
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    loop {
        let accepted = listener.accept();
        if shared.lock().closing {
            return;
        }
        match accepted {
            Ok((stream, peer)) => start_handshake(shared, stream, peer),
            // That connection's trouble, not the socket's.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Interrupted
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::ConnectionReset
                ) => {}
            Err(e) => {
                shared.lock().error = Some(ChannelError::Accept {
                    local: shared.local,
                    source: Arc::new(e),
                });
                shared.cond.notify_all();
                std::thread::sleep(ACCEPT_RETRY);
            }
        }
    }
}

/// Reads `stream`'s first message on a thread of its own.
fn start_handshake(shared: &Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    // Without a handle the read could not be cut short: close the connection instead.
    let Ok(handle) = stream.try_clone() else {
        return;
    };
    let (id, timeout) = {
        let mut g = shared.lock();
        if g.closing {
            return;
        }
        g.stats.connections += 1;
        if g.reading.len() >= MAX_HANDSHAKES
            && let Some((_, oldest)) = g.reading.pop_front()
        {
            // The oldest has had the longest to send its few bytes, and the
            // newest may be the primary.
            shutdown(&oldest);
            g.stats.dropped += 1;
        }
        let id = g.next_id;
        g.next_id += 1;
        g.reading.push_back((id, handle));
        (id, g.handshake_timeout)
    };
    let s = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name(format!("logch-hs {peer}"))
        .spawn(move || first_message(&s, id, stream, peer, timeout));
    if spawned.is_err() {
        // The stream went down with the closure; drop the handle too.
        let mut g = shared.lock();
        g.reading.retain(|(i, _)| *i != id);
        g.stats.dropped += 1;
    }
}

/// A handshake thread: reads the first message, then queues the connection
/// or refuses and closes it.
fn first_message(shared: &Shared, id: u64, stream: TcpStream, peer: SocketAddr, timeout: Duration) {
    let outcome = read_first(&stream, peer, timeout);
    let mut g = shared.lock();
    let Some(at) = g.reading.iter().position(|(i, _)| *i == id) else {
        // Dropped at the bound, or the listener is closing: already shut.
        return;
    };
    g.reading.remove(at);
    match outcome {
        Ok((reader, first, offset)) => {
            // Make room: first whatever went stale, then the oldest.
            let mut gone = Vec::new();
            while let Some(a) = g.queued.front()
                && a.arrived.elapsed() > g.max_age
            {
                gone.extend(g.queued.pop_front());
            }
            if g.queued.len() >= MAX_QUEUED {
                gone.extend(g.queued.pop_front());
            }
            g.stats.dropped += gone.len() as u64;
            g.queued.push_back(Arrived {
                stream,
                reader,
                peer,
                first,
                offset,
                arrived: Instant::now(),
            });
            drop(g);
            shared.cond.notify_all();
            for old in gone {
                let reason = format!(
                    "backup busy: not taken up within {:?}, newer connections wait; connect again",
                    old.arrived.elapsed()
                );
                refuse_quietly(&old.stream, old.peer, reason);
            }
        }
        Err(e) => {
            if matches!(e, ChannelError::HandshakeTimeout { .. }) {
                g.stats.timed_out += 1;
            } else {
                g.stats.rejected += 1;
            }
            drop(g);
            refuse_quietly(
                &stream,
                peer,
                foreign_reason(&e).unwrap_or_else(|| e.to_string()),
            );
        }
    }
}

/// The first message, if it arrives whole within `timeout` and is a `Hello`
/// or `StateOffer` of this protocol.
fn read_first(
    stream: &TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<(MsgReader, Message, u64), ChannelError> {
    let started = Instant::now();
    let io_err = |e| ChannelError::Read {
        peer,
        offset: 0,
        source: Arc::new(e),
    };
    stream.set_nodelay(true).map_err(io_err)?;
    let mut reader = MsgReader::new(stream.try_clone().map_err(io_err)?, peer);
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(ChannelError::HandshakeTimeout {
                peer,
                waited: started.elapsed(),
            });
        }
        // Wake at the deadline, not later; a zero timeout would mean none.
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(io_err)?;
        match reader.poll()? {
            Polled::Msg(m @ (Message::Hello(_) | Message::StateOffer { .. }), at) => {
                return Ok((reader, m, at));
            }
            Polled::Msg(m, offset) => {
                return Err(ChannelError::Unexpected {
                    peer,
                    offset,
                    message: m.name(),
                    when: "as a first message (a primary starts with Hello or StateOffer)",
                });
            }
            Polled::Idle => {
                if let Some(len) = reader.declared_len()
                    && len > MAX_FIRST_MESSAGE
                {
                    return Err(ChannelError::Corrupt {
                        peer,
                        source: CodecError::FrameTooLarge {
                            offset: reader.offset(),
                            len,
                            max: MAX_FIRST_MESSAGE,
                        },
                    });
                }
            }
        }
    }
}

/// The refusal for a well-framed `Hello` or `StateOffer` of another magic or
/// protocol version: said plainly, since it is most likely a node of another
/// build.
pub(crate) fn foreign_reason(e: &ChannelError) -> Option<String> {
    match e {
        ChannelError::Corrupt { source, .. } => match source {
            CodecError::BadMagic { .. } => {
                Some("not an understudy primary: bad magic in Hello".to_string())
            }
            CodecError::UnsupportedVersion {
                found, supported, ..
            } => Some(format!(
                "unsupported channel protocol version {found} (this backup speaks {supported})"
            )),
            _ => None,
        },
        _ => None,
    }
}
