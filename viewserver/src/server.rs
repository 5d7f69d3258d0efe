//! The network service: one thread runs an event loop over every connection
//! (non-blocking sockets, edge-triggered epoll through mio), another ticks
//! the [`Coordinator`] once per ping interval. Nothing here decides anything
//! about views.
//!
//! Why an event loop: a connection costs a few hundred bytes of buffers here,
//! not a thread, so idle or slow peers cannot use up what pings need. Every
//! connection is bounded in time (a deadline per request, counted from its
//! first byte, and an idle timeout between requests) and in number (at the
//! limit, a new connection evicts the one idle the longest). A legitimate
//! ping is therefore never refused for lack of room.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::api::{ApiError, ErrorBody, error_json, parse_ping};
use crate::coordinator::{Coordinator, Rules};
use crate::events::Observer;
use crate::http::{HttpError, MAX_REQUEST, Parsed, Request, RequestParser, encode_response};
use crate::service::Status;
use crate::store::{Store, StoreError};

/// How the service runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one.
    pub listen: String,
    /// Servers ping this often; one tick per interval.
    pub ping_interval: Duration,
    /// Consecutive missed intervals after which a server is dead.
    pub dead_pings: u32,
    /// How long a backup may take to hold the state before it is replaced.
    pub backup_timeout: Duration,
    /// How long one request may take to arrive in full, counted from its
    /// first byte (from accept for a connection's first request); also how
    /// long an answer may take to be read. A late request is answered 408
    /// and its connection closed, however steadily its bytes trickle in.
    pub request_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Connections open at once. A new connection beyond this evicts the one
    /// idle the longest (or, if none is idle, the oldest partial request);
    /// none is ever refused.
    pub max_connections: usize,
    /// Receives leadership and view changes (see [`crate::events`]); nothing if `None`.
    pub events: Option<Observer>,
}

impl Config {
    /// The defaults: 100 ms pings, dead after 5 missed, 30 s for a backup,
    /// 2 s per request, 30 s idle, 1024 connections.
    pub fn new(listen: impl Into<String>) -> Self {
        Config {
            listen: listen.into(),
            ping_interval: Duration::from_millis(100),
            dead_pings: 5,
            backup_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
            max_connections: 1024,
            events: None,
        }
    }
}

/// Why the service could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listening socket could not be bound to `addr`.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address as configured.
        addr: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The bound socket's address could not be read.
    #[error("cannot read the bound address of the listener on {addr}")]
    LocalAddr {
        /// The address as configured.
        addr: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Listening again with the server's larger connection backlog failed.
    #[error("cannot set the connection backlog of the listener on {addr}")]
    Backlog {
        /// The address as configured.
        addr: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The listener could not be made non-blocking, which the event loop needs.
    #[error("cannot make the listener on {addr} non-blocking")]
    Nonblocking {
        /// The address as configured.
        addr: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// `Config::ping_interval` is below 1 ms.
    #[error("ping interval must be at least 1 ms")]
    ZeroInterval,
    /// `Config::dead_pings` is 0.
    #[error("dead pings must be at least 1")]
    ZeroDeadPings,
    /// A limit that must be nonzero is zero (its name).
    #[error("{0} must be nonzero")]
    ZeroLimit(&'static str),
    /// The stored state could not be opened or loaded.
    #[error("cannot start from the stored view")]
    Store(#[from] StoreError),
    /// A service thread could not be started.
    #[error("cannot start the {what} thread")]
    Spawn {
        /// Which thread.
        what: &'static str,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The event poller could not be created.
    #[error("cannot create the network event poller")]
    Poll(#[source] io::Error),
    /// The listener could not be registered with the event poller.
    #[error("cannot register the listener with the event poller")]
    Register(#[source] io::Error),
    /// Waiting for network events failed; the server stops serving.
    #[error("waiting for network events failed")]
    Wait(#[source] io::Error),
}

struct Shared {
    coordinator: Coordinator,
    config: Config,
}

/// A bound, not yet serving, view service.
#[derive(Debug)]
pub struct ViewServer {
    listener: TcpListener,
    addr: SocketAddr,
    config: Config,
    coordinator: Coordinator,
}

impl ViewServer {
    /// Binds `config.listen` and checks the state in `store`.
    pub fn bind(config: Config, store: Box<dyn Store>) -> Result<Self, ServerError> {
        check(&config)?;
        let listener = listen(&config.listen)?;
        Self::with_listener(config, listener, store)
    }

    /// Serves on `listener` (bound with [`listen`]: a store that must know
    /// the real address, such as the etcd store's advertise address, can
    /// then be made in between); checks the state in `store`.
    pub fn with_listener(
        config: Config,
        listener: std::net::TcpListener,
        store: Box<dyn Store>,
    ) -> Result<Self, ServerError> {
        check(&config)?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServerError::LocalAddr {
                addr: config.listen.clone(),
                source,
            })?;
        // std listens with a backlog of 128: a burst of connections (an
        // attack, or every node reconnecting after a restart) while the
        // loop is busy would overflow it, and a dropped SYN is retried only
        // after a second, longer than a node's ping timeout. Listening
        // again on a listening socket just changes the backlog (the kernel
        // caps it at net.core.somaxconn).
        // SAFETY: `listen` on a valid socket that `listener` owns and keeps
        // open; it reads and writes no memory of ours.
        if unsafe { libc::listen(listener.as_raw_fd(), LISTEN_BACKLOG) } != 0 {
            return Err(ServerError::Backlog {
                addr: config.listen.clone(),
                source: io::Error::last_os_error(),
            });
        }
        listener
            .set_nonblocking(true)
            .map_err(|source| ServerError::Nonblocking {
                addr: config.listen.clone(),
                source,
            })?;
        let ticks = config.backup_timeout.as_nanos() / config.ping_interval.as_nanos().max(1);
        let rules = Rules {
            dead_pings: config.dead_pings,
            backup_ticks: u32::try_from(ticks).unwrap_or(u32::MAX).max(1),
            lease: Rules::lease_for(config.dead_pings, config.ping_interval),
        };
        let coordinator = Coordinator::new(store, rules, config.events.clone());
        coordinator.load()?;
        Ok(ViewServer {
            listener: TcpListener::from_std(listener),
            addr,
            config,
            coordinator,
        })
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves forever on this thread (and a ticker thread); returns only if
    /// the ticker cannot be started or the event poller fails.
    pub fn serve(self) -> Result<(), ServerError> {
        let shared = Arc::new(Shared {
            coordinator: self.coordinator,
            config: self.config,
        });
        let poll = Poll::new().map_err(ServerError::Poll)?;
        let mut listener = self.listener;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(ServerError::Register)?;
        let ticker = Arc::clone(&shared);
        thread::Builder::new()
            .name("viewserver-tick".into())
            .spawn(move || tick_forever(&ticker))
            .map_err(|source| ServerError::Spawn {
                what: "ticker",
                source,
            })?;
        EventLoop {
            shared: &shared,
            poll,
            listener,
            conns: HashMap::new(),
            next_token: 0,
            scratch: vec![0; SCRATCH],
            next_sweep: None,
            accept_retry: None,
            again: Vec::new(),
        }
        .run()
    }

    /// Serves on background threads; for tests and embedding.
    pub fn spawn(self) -> Result<SocketAddr, ServerError> {
        let addr = self.addr;
        thread::Builder::new()
            .name("viewserver-net".into())
            .spawn(move || self.serve())
            .map_err(|source| ServerError::Spawn {
                what: "network",
                source,
            })?;
        Ok(addr)
    }
}

fn check(config: &Config) -> Result<(), ServerError> {
    if config.ping_interval.is_zero() {
        return Err(ServerError::ZeroInterval);
    }
    if config.dead_pings == 0 {
        return Err(ServerError::ZeroDeadPings);
    }
    if config.request_timeout.is_zero() {
        return Err(ServerError::ZeroLimit("request timeout"));
    }
    if config.idle_timeout.is_zero() {
        return Err(ServerError::ZeroLimit("idle timeout"));
    }
    if config.max_connections == 0 {
        return Err(ServerError::ZeroLimit("max connections"));
    }
    Ok(())
}

/// Binds `addr` (port 0 picks a free one) for [`ViewServer::with_listener`].
pub fn listen(addr: &str) -> Result<std::net::TcpListener, ServerError> {
    std::net::TcpListener::bind(addr).map_err(|source| ServerError::Bind {
        addr: addr.to_string(),
        source,
    })
}

/// One tick per interval of the viewserver's own time. After a stall (the
/// process was stopped or starved) the missed ticks are skipped rather than
/// replayed: the servers did not miss those pings, we did not listen.
fn tick_forever(shared: &Shared) {
    let interval = shared.config.ping_interval;
    let mut next = Instant::now() + interval;
    loop {
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        }
        // Not leading, or the store failing: nothing to tick; the next tick
        // tries again.
        let _ = shared.coordinator.tick();
        next += interval;
        let now = Instant::now();
        if next + interval < now {
            next = now + interval;
        }
    }
}

const LISTENER: Token = Token(usize::MAX);
/// Connections the kernel may hold for us to accept. Independent of
/// `max_connections`: every connection is accepted (evicting another if
/// need be), the queue only has to absorb bursts.
const LISTEN_BACKLOG: i32 = 4096;
/// One read's worth; a request larger than this arrives over several reads.
const SCRATCH: usize = 16 * 1024;
/// Receive-buffer capacity a connection keeps between requests.
const IDLE_BUFFER: usize = 4 * 1024;
/// After answering and closing its side, how long a connection waits for the
/// peer to close (at most; never longer than the request timeout).
const LINGER: Duration = Duration::from_secs(1);
/// Request answers or reads one connection may have per turn of the loop,
/// so that a fast pipelining client cannot keep the loop to itself.
const TURN_BUDGET: usize = 64;
/// When accepting fails for lack of file descriptors and there is no
/// connection to evict, when to try again.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// Consecutive unexplained accept errors before pausing accepts briefly
/// (an error that does not go away must not spin the loop).
const ACCEPT_ERRORS: usize = 64;

/// What the loop does with a connection after driving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Waiting for the socket (or its deadline).
    Wait,
    /// Has more to do but used its turn: drive it again soon.
    Again,
    /// Done: close it.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading and answering requests.
    Open,
    /// A last answer is queued; once it is out, stop sending.
    Closing,
    /// Answered and shut down for writing; reading (and dropping) what the
    /// peer still sends until it closes. Closing a socket with unread input
    /// makes the kernel send RST, which may destroy the answer before the
    /// peer read it.
    Lingering { until: Instant, budget: usize },
}

struct Conn {
    stream: TcpStream,
    /// Received and not yet answered: at most [`MAX_REQUEST`] bytes.
    inbuf: Vec<u8>,
    parser: RequestParser,
    /// Answers not yet accepted by the kernel (from `written` on). Holds at
    /// most one answer: the next request is parsed only once it is out.
    out: Vec<u8>,
    written: usize,
    phase: Phase,
    /// When the request now arriving started: its first byte, or the
    /// accept for a connection's first request. `None` between requests.
    request_since: Option<Instant>,
    /// When the connection last finished a request (or was accepted).
    idle_since: Instant,
    /// When a write first could not complete (the peer is not reading).
    blocked_since: Option<Instant>,
    /// The peer closed its side: no more requests will come.
    peer_closed: bool,
}

impl Conn {
    fn new(stream: TcpStream, now: Instant) -> Self {
        Conn {
            stream,
            inbuf: Vec::new(),
            parser: RequestParser::new(),
            out: Vec::new(),
            written: 0,
            phase: Phase::Open,
            request_since: Some(now),
            idle_since: now,
            blocked_since: None,
            peer_closed: false,
        }
    }

    /// When this connection must have moved on.
    fn deadline(&self, config: &Config) -> Instant {
        if let Phase::Lingering { until, .. } = self.phase {
            return until;
        }
        match (self.blocked_since, self.request_since) {
            (Some(t), _) | (None, Some(t)) => t + config.request_timeout,
            (None, None) => self.idle_since + config.idle_timeout,
        }
    }

    /// Which connection to drop first when a new one needs room: lowest
    /// first, then oldest. Connections that are done, then idle ones (a
    /// fresh connection that sent nothing is idle too), then partial
    /// requests, then answers the peer is slow to read.
    fn eviction_rank(&self) -> (u8, Instant) {
        match self.phase {
            Phase::Lingering { until, .. } => (0, until),
            _ => match self.blocked_since {
                Some(t) => (3, t),
                None if self.inbuf.is_empty() => (1, self.idle_since),
                None => (2, self.request_since.unwrap_or(self.idle_since)),
            },
        }
    }

    /// Does everything the socket allows now: writes pending answers,
    /// answers buffered requests, reads more. Returns when it would block,
    /// when the connection is done, or when its turn is used up.
    fn drive(&mut self, shared: &Shared, now: Instant, scratch: &mut [u8]) -> Step {
        for _ in 0..TURN_BUDGET {
            if self.written < self.out.len() {
                match write_some(&mut self.stream, &self.out[self.written..]) {
                    Ok(0) => return Step::Close,
                    Ok(n) => {
                        self.written += n;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.blocked_since.get_or_insert(now);
                        return Step::Wait;
                    }
                    Err(_) => return Step::Close,
                }
            }
            self.out.clear();
            self.written = 0;
            self.blocked_since = None;
            match self.phase {
                Phase::Open => {}
                Phase::Closing => {
                    if self.peer_closed {
                        return Step::Close;
                    }
                    // Already gone or not: either way we are done sending.
                    let _ = self.stream.shutdown(Shutdown::Write);
                    self.phase = Phase::Lingering {
                        until: now + LINGER.min(shared.config.request_timeout),
                        budget: MAX_REQUEST,
                    };
                    continue;
                }
                Phase::Lingering { until, budget } => match read_some(&mut self.stream, scratch) {
                    Ok(0) => return Step::Close,
                    Ok(n) if n >= budget => return Step::Close,
                    Ok(n) => {
                        self.phase = Phase::Lingering {
                            until,
                            budget: budget - n,
                        };
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                    Err(_) => return Step::Close,
                },
            }
            match self.parser.parse(&self.inbuf) {
                Ok(Parsed::Complete { request, len }) => {
                    self.inbuf.drain(..len);
                    self.answer(shared, &request, now);
                    continue;
                }
                Ok(Parsed::Incomplete) => {}
                Err(e) => {
                    self.fail(&e);
                    continue;
                }
            }
            if self.peer_closed {
                if self.inbuf.is_empty() {
                    return Step::Close;
                }
                let e = self.parser.truncated(self.inbuf.len());
                self.fail(&e);
                continue;
            }
            // Never zero: a buffer of MAX_REQUEST bytes holds a complete
            // request or an error, so parsing above consumed it.
            let room = MAX_REQUEST
                .saturating_sub(self.inbuf.len())
                .min(scratch.len());
            if room == 0 {
                return Step::Close;
            }
            match read_some(&mut self.stream, &mut scratch[..room]) {
                Ok(0) => self.peer_closed = true,
                Ok(n) => {
                    if self.request_since.is_none() {
                        self.request_since = Some(now);
                    }
                    self.inbuf.extend_from_slice(&scratch[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(_) => return Step::Close,
            }
        }
        Step::Again
    }

    fn answer(&mut self, shared: &Shared, request: &Request, now: Instant) {
        let (status, headers, body) = route(shared, request);
        encode_response(&mut self.out, status, &headers, &body, request.keep_alive);
        if !request.keep_alive {
            self.phase = Phase::Closing;
        }
        self.idle_since = now;
        // A pipelined request already begun gets its own full deadline.
        self.request_since = (!self.inbuf.is_empty()).then_some(now);
        // A large request's buffer is not kept for the connection's life:
        // a thousand idle connections should cost little.
        if self.inbuf.is_empty() && self.inbuf.capacity() > IDLE_BUFFER {
            self.inbuf = Vec::new();
        }
    }

    /// Answers a request that cannot be served, and closes: whatever
    /// follows a malformed request cannot be trusted to start a new one.
    fn fail(&mut self, e: &HttpError) {
        self.inbuf.clear();
        self.parser = RequestParser::new();
        encode_response(
            &mut self.out,
            e.status(),
            &[],
            &message(&e.to_string()),
            false,
        );
        self.phase = Phase::Closing;
    }

    /// The deadline passed. A request partly received gets 408; a silent or
    /// idle connection, one whose peer does not read, and one done
    /// lingering are closed.
    fn expire(&mut self, shared: &Shared, now: Instant, scratch: &mut [u8]) -> Step {
        if self.phase != Phase::Open || self.blocked_since.is_some() || self.inbuf.is_empty() {
            return Step::Close;
        }
        self.fail(&HttpError::Timeout(shared.config.request_timeout));
        self.drive(shared, now, scratch)
    }
}

fn read_some(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn write_some(w: &mut impl Write, buf: &[u8]) -> io::Result<usize> {
    loop {
        match w.write(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

struct EventLoop<'a> {
    shared: &'a Shared,
    poll: Poll,
    listener: TcpListener,
    conns: HashMap<Token, Conn>,
    /// Tokens are never reused, so a stale event cannot reach a newer
    /// connection.
    next_token: usize,
    scratch: Vec<u8>,
    /// No connection's deadline is earlier than this (it may be later: a
    /// sweep then finds nothing to do and recomputes it). `None`: no
    /// connections.
    next_sweep: Option<Instant>,
    accept_retry: Option<Instant>,
    /// Connections that used up their turn with work left.
    again: Vec<Token>,
}

impl EventLoop<'_> {
    fn run(mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(1024);
        loop {
            let wake = [self.next_sweep, self.accept_retry]
                .into_iter()
                .flatten()
                .min();
            let timeout = if self.again.is_empty() {
                wake.map(|t| t.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ServerError::Wait(e)),
            }
            let now = Instant::now();
            for token in std::mem::take(&mut self.again) {
                self.drive(token, now);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(now),
                    token => self.drive(token, now),
                }
            }
            if self.accept_retry.is_some_and(|t| t <= now) {
                self.accept_retry = None;
                self.accept_all(now);
            }
            if self.next_sweep.is_some_and(|t| t <= now) {
                self.sweep(now);
            }
        }
    }

    fn accept_all(&mut self, now: Instant) {
        let mut errors = 0;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    errors = 0;
                    self.admit(stream, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_out_of_descriptors(&e) => {
                    // The pending connection stays queued in the kernel:
                    // make room, or try again shortly.
                    if !self.evict_one() {
                        self.accept_retry = Some(now + ACCEPT_RETRY);
                        return;
                    }
                }
                // E.g. a peer that reset before accept: one connection's
                // problem, not the service's.
                Err(_) => {
                    errors += 1;
                    if errors >= ACCEPT_ERRORS {
                        self.accept_retry = Some(now + ACCEPT_RETRY);
                        return;
                    }
                }
            }
        }
    }

    fn admit(&mut self, mut stream: TcpStream, now: Instant) {
        if self.conns.len() >= self.shared.config.max_connections {
            self.evict_one();
        }
        let token = Token(self.next_token);
        self.next_token += 1;
        if self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            return;
        }
        // Answers are small and complete: send each at once.
        let _ = stream.set_nodelay(true);
        self.conns.insert(token, Conn::new(stream, now));
        // The request usually arrived with the connection: read it before
        // this connection can look idle to an eviction.
        self.drive(token, now);
    }

    fn drive(&mut self, token: Token, now: Instant) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let step = conn.drive(self.shared, now, &mut self.scratch);
        self.settle(token, step);
    }

    /// Acts on what driving (or expiring) a connection said.
    fn settle(&mut self, token: Token, step: Step) {
        match step {
            Step::Close => self.close(token),
            Step::Again => self.again.push(token),
            Step::Wait => {}
        }
        if let Some(conn) = self.conns.get(&token) {
            let d = conn.deadline(&self.shared.config);
            self.next_sweep = Some(self.next_sweep.map_or(d, |t| t.min(d)));
        }
    }

    fn close(&mut self, token: Token) {
        if let Some(mut conn) = self.conns.remove(&token) {
            // Dropping the socket closes it, which also removes it from
            // epoll; deregistering first just keeps mio's view exact.
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    /// Closes the connection that matters least; false if there is none.
    fn evict_one(&mut self) -> bool {
        let victim = self
            .conns
            .iter()
            // Tokens grow with accept order: among equals, the oldest.
            .min_by_key(|(t, c)| (c.eviction_rank(), t.0))
            .map(|(t, _)| *t);
        match victim {
            Some(token) => {
                self.close(token);
                true
            }
            None => false,
        }
    }

    /// Acts on every passed deadline, then finds the next one.
    fn sweep(&mut self, now: Instant) {
        let config = &self.shared.config;
        let due: Vec<Token> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline(config) <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in due {
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            let step = conn.expire(self.shared, now, &mut self.scratch);
            match step {
                Step::Close => self.close(token),
                Step::Again => self.again.push(token),
                Step::Wait => {}
            }
        }
        self.next_sweep = self.conns.values().map(|c| c.deadline(config)).min();
    }
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

fn message(msg: &str) -> String {
    error_json(&ErrorBody {
        error: msg.to_string(),
        leader: None,
    })
}

fn status_json(status: &Status) -> String {
    serde_json::to_string(status).unwrap_or_else(|_| message("cannot encode the view"))
}

type Response = (u16, Vec<(&'static str, &'static str)>, String);

/// Answers one request: (status, extra headers, JSON body).
fn route(shared: &Shared, req: &Request) -> Response {
    let not_allowed = |allow: &'static str| {
        (
            405,
            vec![("Allow", allow)],
            message(&format!(
                "method {} not allowed on {}; use {allow}",
                req.method, req.path
            )),
        )
    };
    let answer = |r: Result<Status, ApiError>| match r {
        Ok(status) => (200, Vec::new(), status_json(&status)),
        Err(e) => (e.status(), Vec::new(), error_json(&e.body())),
    };
    match req.path.as_str() {
        "/ping" if req.method == "POST" => {
            answer(parse_ping(&req.body).and_then(|p| shared.coordinator.ping(&p)))
        }
        "/ping" => not_allowed("POST"),
        "/view" if req.method == "GET" => answer(shared.coordinator.status()),
        "/view" => not_allowed("GET"),
        _ => (
            404,
            Vec::new(),
            message(&format!(
                "no such endpoint {}: use POST /ping or GET /view",
                req.path
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::MAX_SERVER_NAME;
    use std::net::TcpStream as StdStream;

    fn shared() -> Shared {
        let config = Config::new("127.0.0.1:0");
        let rules = Rules {
            dead_pings: 3,
            backup_ticks: 10,
            lease: Duration::from_millis(100),
        };
        Shared {
            coordinator: Coordinator::new(Box::new(crate::MemoryStore::default()), rules, None),
            config,
        }
    }

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
            keep_alive: true,
        }
    }

    #[test]
    fn ping_answers_the_view_and_get_view_does_not_count_as_a_ping() {
        let s = shared();
        let (status, _, body) = route(&s, &req("POST", "/ping", r#"{"server":"a","viewnum":0}"#));
        assert_eq!(status, 200);
        let pinged: Status = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (pinged.view.viewnum, pinged.view.primary.as_str()),
            (1, "a")
        );
        let (status, _, body) = route(&s, &req("GET", "/view", ""));
        assert_eq!(status, 200);
        let got: Status = serde_json::from_str(&body).unwrap();
        assert_eq!(got, pinged);
        assert!(!got.acked);
    }

    #[test]
    fn bad_requests_get_4xx_with_an_error_body() {
        let s = shared();
        let cases = [
            (req("POST", "/ping", "{"), 400),
            (req("POST", "/ping", r#"{"server":"a"}"#), 400),
            (req("POST", "/ping", r#"{"viewnum":1}"#), 400),
            (req("POST", "/ping", r#"{"server":"","viewnum":1}"#), 400),
            (req("POST", "/ping", r#"{"server":"a","viewnum":-1}"#), 400),
            (
                req("POST", "/ping", r#"{"server":"a","viewnum":1,"x":2}"#),
                400,
            ),
            (req("POST", "/ping", r#"{"server":"a\n","viewnum":1}"#), 400),
            (req("POST", "/ping", "\u{0}\u{1}"), 400),
            (
                req(
                    "POST",
                    "/ping",
                    r#"{"server":"a","viewnum":0,"incarnation":0}"#,
                ),
                400,
            ),
            (req("GET", "/ping", ""), 405),
            (req("POST", "/view", ""), 405),
            (req("GET", "/", ""), 404),
            (req("GET", "/view?x=1", ""), 404),
        ];
        for (r, want) in cases {
            let (status, _, body) = route(&s, &r);
            assert_eq!(status, want, "{r:?}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
        }
        let long = "x".repeat(MAX_SERVER_NAME + 1);
        let (status, _, _) = route(
            &s,
            &req(
                "POST",
                "/ping",
                &format!(r#"{{"server":"{long}","viewnum":0}}"#),
            ),
        );
        assert_eq!(status, 400);
        assert_eq!(s.coordinator.status().unwrap().view.viewnum, 0);
    }

    #[test]
    fn refuses_bad_config() {
        let bind = |c| ViewServer::bind(c, Box::new(crate::MemoryStore::default()));
        let mut c = Config::new("127.0.0.1:0");
        c.dead_pings = 0;
        assert!(matches!(bind(c), Err(ServerError::ZeroDeadPings)));
        let mut c = Config::new("127.0.0.1:0");
        c.ping_interval = Duration::ZERO;
        assert!(matches!(bind(c), Err(ServerError::ZeroInterval)));
        let mut c = Config::new("127.0.0.1:0");
        c.request_timeout = Duration::ZERO;
        assert!(matches!(bind(c), Err(ServerError::ZeroLimit(_))));
        let mut c = Config::new("127.0.0.1:0");
        c.idle_timeout = Duration::ZERO;
        assert!(matches!(bind(c), Err(ServerError::ZeroLimit(_))));
        let mut c = Config::new("127.0.0.1:0");
        c.max_connections = 0;
        assert!(matches!(bind(c), Err(ServerError::ZeroLimit(_))));
        let c = Config::new("256.0.0.1:0");
        assert!(matches!(bind(c), Err(ServerError::Bind { .. })));
    }

    /// A real server on loopback with the given front-end limits.
    fn serve(request: Duration, idle: Duration, max: usize) -> SocketAddr {
        let mut config = Config::new("127.0.0.1:0");
        config.ping_interval = Duration::from_secs(3600);
        config.request_timeout = request;
        config.idle_timeout = idle;
        config.max_connections = max;
        ViewServer::bind(config, Box::new(crate::MemoryStore::default()))
            .unwrap()
            .spawn()
            .unwrap()
    }

    const LONG: Duration = Duration::from_secs(60);
    /// Upper bound on how late the server may act on one of its deadlines:
    /// generous, for a loaded machine.
    const SLACK: Duration = Duration::from_secs(5);

    fn connect(addr: SocketAddr) -> StdStream {
        let s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(LONG)).unwrap();
        s
    }

    /// Reads one response (head and `Content-Length` body) off `s`.
    fn read_response(s: &mut StdStream) -> (u16, String, String) {
        let mut raw = Vec::new();
        let mut byte = [0u8; 1];
        while !raw.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut byte).unwrap(), 1, "EOF in head: {raw:?}");
            raw.push(byte[0]);
        }
        let head = String::from_utf8(raw).unwrap();
        let status = head[9..12].parse().unwrap();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        let mut body = vec![0; len];
        s.read_exact(&mut body).unwrap();
        (status, head, String::from_utf8(body).unwrap())
    }

    /// How long until the server closes `s` (reading and dropping anything
    /// it sends first).
    fn time_to_eof(s: &mut StdStream) -> Duration {
        let start = Instant::now();
        let mut sink = Vec::new();
        s.read_to_end(&mut sink).unwrap();
        start.elapsed()
    }

    fn ping_bytes(server: &str, extra: &str) -> String {
        let body = format!(r#"{{"server":"{server}","viewnum":0}}"#);
        format!(
            "POST /ping HTTP/1.1\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn pipelined_requests_on_one_connection_are_answered_in_order() {
        let addr = serve(LONG, LONG, 16);
        let mut s = connect(addr);
        let all = format!(
            "GET /view HTTP/1.1\r\n\r\n{}GET /nope HTTP/1.1\r\n\r\nGET /view HTTP/1.1\r\nConnection: close\r\n\r\nGET /view HTTP/1.1\r\n\r\n",
            ping_bytes("a", "")
        );
        s.write_all(all.as_bytes()).unwrap();
        let (status, head, body) = read_response(&mut s);
        assert_eq!(status, 200);
        assert!(head.contains("Connection: keep-alive\r\n"), "{head}");
        assert_eq!(
            serde_json::from_str::<Status>(&body).unwrap().view.viewnum,
            0
        );
        let (status, _, body) = read_response(&mut s);
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_str::<Status>(&body).unwrap().view.primary,
            "a"
        );
        assert_eq!(read_response(&mut s).0, 404);
        let (status, head, body) = read_response(&mut s);
        assert_eq!(status, 200);
        assert!(head.contains("Connection: close\r\n"), "{head}");
        assert_eq!(
            serde_json::from_str::<Status>(&body).unwrap().view.viewnum,
            1
        );
        // The request after `Connection: close` is not answered.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    }

    #[test]
    fn a_connection_serves_many_requests_then_closes_when_idle() {
        let idle = Duration::from_millis(300);
        let addr = serve(LONG, idle, 16);
        let mut s = connect(addr);
        for _ in 0..20 {
            s.write_all(b"GET /view HTTP/1.1\r\n\r\n").unwrap();
            assert_eq!(read_response(&mut s).0, 200);
        }
        let waited = time_to_eof(&mut s);
        assert!(waited < idle + SLACK, "idle connection kept for {waited:?}");
    }

    #[test]
    fn http_1_0_and_connection_close_get_one_answer_each() {
        let addr = serve(LONG, LONG, 16);
        for raw in [
            "GET /view HTTP/1.0\r\n\r\n",
            "GET /view HTTP/1.1\r\nConnection: close\r\n\r\n",
        ] {
            let mut s = connect(addr);
            s.write_all(raw.as_bytes()).unwrap();
            let (status, head, _) = read_response(&mut s);
            assert_eq!(status, 200);
            assert!(head.contains("Connection: close\r\n"), "{head}");
            assert!(time_to_eof(&mut s) < SLACK);
        }
        let mut s = connect(addr);
        s.write_all(b"GET /view HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let (_, head, _) = read_response(&mut s);
        assert!(head.contains("Connection: keep-alive\r\n"), "{head}");
        s.write_all(b"GET /view HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut s).0, 200);
    }

    #[test]
    fn a_malformed_request_is_answered_and_its_connection_closed() {
        let addr = serve(LONG, LONG, 16);
        let mut s = connect(addr);
        s.write_all(
            b"GET /view HTTP/1.1\r\n\r\nGET /view HTTP/9\r\n\r\nGET /view HTTP/1.1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(read_response(&mut s).0, 200);
        let (status, head, body) = read_response(&mut s);
        assert_eq!(status, 400, "{body}");
        assert!(head.contains("Connection: close\r\n"), "{head}");
        assert!(body.contains("unsupported protocol version"), "{body}");
        assert!(time_to_eof(&mut s) < SLACK);
    }

    #[test]
    fn a_trickled_request_gets_408_at_its_deadline() {
        let deadline = Duration::from_millis(400);
        let addr = serve(deadline, LONG, 16);
        let mut s = connect(addr);
        let start = Instant::now();
        // A byte every 100 ms: every read succeeds, the request never ends.
        let reader = {
            let mut s = s.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut out = Vec::new();
                let _ = s.read_to_end(&mut out);
                (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
            })
        };
        for &b in b"POST /ping HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
            .iter()
            .take(30)
        {
            if s.write_all(&[b]).is_err() || reader.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let (answer, closed_after) = reader.join().unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{answer}"
        );
        assert!(answer.contains("Connection: close\r\n"), "{answer}");
        // Counted from accept, which may come before `start`: not early by
        // more than that.
        assert!(closed_after >= deadline / 2, "{closed_after:?}");
        assert!(closed_after < deadline + SLACK, "{closed_after:?}");
    }

    #[test]
    fn a_silent_connection_is_closed_without_an_answer() {
        let deadline = Duration::from_millis(200);
        let addr = serve(deadline, LONG, 16);
        let mut s = connect(addr);
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    }

    #[test]
    fn a_client_that_does_not_read_its_answers_holds_up_no_one() {
        let deadline = Duration::from_millis(500);
        let addr = serve(deadline, LONG, 16);
        let hog = {
            let mut s = connect(addr);
            s.set_write_timeout(Some(LONG)).unwrap();
            std::thread::spawn(move || {
                // Far more answers than the socket buffers hold: the
                // server's writes block, then it must stop reading.
                let burst = "GET /view HTTP/1.1\r\n\r\n".repeat(1000);
                for _ in 0..1000 {
                    if let Err(e) = s.write_all(burst.as_bytes()) {
                        return Some(e.kind());
                    }
                }
                None
            })
        };
        for _ in 0..10 {
            crate::client::get_view(&addr.to_string(), LONG).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        // The server gave up on it (its answers unread past the deadline):
        // the hog's writes fail, well before its own long timeout.
        let failed = hog.join().unwrap();
        assert!(
            matches!(
                failed,
                Some(io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe)
            ),
            "{failed:?}"
        );
    }

    /// Whether the server closed `s` (without waiting long if it did not).
    fn is_closed(s: &mut StdStream) -> bool {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut b = [0u8; 1];
        let closed = match s.read(&mut b) {
            Ok(0) => true,
            Ok(_) => panic!("unexpected data"),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                false
            }
            Err(_) => true,
        };
        s.set_read_timeout(Some(LONG)).unwrap();
        closed
    }

    #[test]
    fn at_the_limit_a_new_connection_evicts_the_longest_idle_one() {
        let addr = serve(LONG, LONG, 4);
        // A partial request first (the oldest connection), then three that
        // say nothing, each surely accepted after the one before.
        let mut partial = connect(addr);
        partial.write_all(b"GET /vi").unwrap();
        let mut idle = Vec::new();
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(50));
            idle.push(connect(addr));
            std::thread::sleep(Duration::from_millis(50));
        }
        // A fifth: the first idle connection (not the older partial
        // request) makes room; the request is answered, not refused.
        let v = crate::client::get_view(&addr.to_string(), LONG).unwrap();
        assert_eq!(v.view.viewnum, 0);
        assert!(is_closed(&mut idle[0]), "the longest idle survived");
        assert!(!is_closed(&mut idle[2]), "the youngest idle was closed");
        partial.write_all(b"ew HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut partial).0, 200);
        // Many more idle connections than slots: requests still get in.
        let crowd: Vec<StdStream> = (0..40).map(|_| connect(addr)).collect();
        for _ in 0..10 {
            crate::client::get_view(&addr.to_string(), LONG).unwrap();
        }
        drop(crowd);
    }
}
