//! Talking to a viewserver, every request bounded by the caller's timeout.
//! [`Client`] keeps one connection per viewserver address and follows
//! whichever of several addresses leads; [`ping`] and [`get_view`] use one
//! connection per request; [`Lease`] is what a primary holds between pings.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::api::PingRequest;
use crate::http::{MAX_BODY, MAX_HEAD};
use crate::service::Status;

/// Why a request to the view service got no view.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address could not be resolved (DNS, bad syntax).
    #[error("cannot resolve viewserver address {addr}")]
    Resolve {
        /// The address as given.
        addr: String,
        /// What the resolver said.
        #[source]
        source: io::Error,
    },
    /// The address resolved to no socket address (or the client was given none).
    #[error("viewserver address {addr} resolves to nothing")]
    NoAddress {
        /// The address as given.
        addr: String,
    },
    /// No resolved address accepted a connection before the deadline.
    #[error("cannot reach viewserver at {addr}: {source}")]
    Connect {
        /// The address as given.
        addr: String,
        /// The last connection attempt's error.
        #[source]
        source: io::Error,
    },
    /// The connection's timeouts could not be set. Not returned at present: the request path
    /// reports such failures as `Send` or `Receive`.
    #[error("cannot set timeouts on the connection to viewserver at {addr}")]
    Timeouts {
        /// The address as given.
        addr: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Writing the request failed or did not finish before the deadline.
    #[error("cannot send the request to viewserver at {addr}: {source}")]
    Send {
        /// The address as given.
        addr: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The response did not arrive whole before the deadline, or the connection closed or failed
    /// first.
    #[error("no complete response from viewserver at {addr}: {source}")]
    Receive {
        /// The address as given.
        addr: String,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The response is not well-formed HTTP (or too large).
    #[error("malformed response from viewserver at {addr}: {detail}")]
    BadResponse {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The viewserver answered with an error status (4xx: the request is wrong and retrying
    /// elsewhere will not help; 503: it does not lead or cannot store).
    #[error("viewserver at {addr} answered {status}: {message}")]
    Status {
        /// The address as given.
        addr: String,
        /// The HTTP status.
        status: u16,
        /// The error body's `error`, or the start of the body if it has none.
        message: String,
        /// With 503 from a viewserver that does not lead: the one that does.
        leader: Option<String>,
    },
    /// A 200 answer whose body is not a view status.
    #[error("viewserver at {addr} answered a body that is not a view")]
    BadView {
        /// The address as given.
        addr: String,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The ping request could not be serialised (never expected).
    #[error("cannot encode the ping request")]
    Encode(#[source] serde_json::Error),
}

/// The view service at one or more addresses (several viewserver processes
/// sharing one stored view, of which one leads). Requests go to the one
/// that answered last; on failure, or when told another leads, the next.
///
/// Each address gets one keep-alive connection, opened on first use and
/// reopened when it breaks: a node pings ten times a second, and a TCP
/// handshake per ping is wasted work for it and for the viewserver.
#[derive(Debug)]
pub struct Client {
    addrs: Vec<String>,
    current: Mutex<usize>,
    timeout: Duration,
    /// The kept connection of each address; taken out while a request uses
    /// it, so a concurrent request opens its own instead of waiting.
    kept: Vec<Mutex<Option<TcpStream>>>,
}

impl Client {
    /// `addrs` must not be empty; each request is bounded by `timeout`
    /// (connect, send and receive together, per address tried).
    pub fn new(addrs: Vec<String>, timeout: Duration) -> Self {
        Client {
            kept: addrs.iter().map(|_| Mutex::new(None)).collect(),
            addrs,
            current: Mutex::new(0),
            timeout,
        }
    }

    /// The addresses, comma-separated, for messages.
    pub fn describe(&self) -> String {
        self.addrs.join(",")
    }

    /// Pings (see [`ping`]) whichever viewserver leads.
    pub fn ping(&self, req: &PingRequest) -> Result<Status, ClientError> {
        let body = serde_json::to_string(req).map_err(ClientError::Encode)?;
        self.each(|i| self.request(i, "POST", "/ping", &body))
    }

    /// The current status (see [`get_view`]) from whichever viewserver leads.
    pub fn status(&self) -> Result<Status, ClientError> {
        self.each(|i| self.request(i, "GET", "/view", ""))
    }

    fn kept(&self, i: usize) -> Option<MutexGuard<'_, Option<TcpStream>>> {
        self.kept
            .get(i)
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// One request to address `i`, on its kept connection if there is one.
    /// If that connection turns out to be closed (the viewserver closes
    /// idle ones, and may have restarted) before any answer arrived, the
    /// request is sent once more on a new connection: the viewserver did not
    /// act on it, or, if it did, a ping is safe to repeat (its sequence
    /// number makes the repeat harmless) and a view request changes nothing.
    fn request(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<Status, ClientError> {
        let addr = self.addrs.get(i).map(String::as_str).unwrap_or_default();
        let deadline = Instant::now() + self.timeout;
        let reused = self.kept(i).and_then(|mut k| k.take());
        let (answer, stream) = match reused {
            Some(mut stream) => {
                match exchange(&mut stream, addr, method, path, body, true, deadline) {
                    Ok(answer) => (answer, stream),
                    Err(Failed { stale: true, .. }) => fresh(addr, method, path, body, deadline)?,
                    Err(Failed { error, .. }) => return Err(error),
                }
            }
            None => fresh(addr, method, path, body, deadline)?,
        };
        if answer.keep_alive
            && let Some(mut k) = self.kept(i)
            && k.is_none()
        {
            *k = Some(stream);
        }
        interpret(addr, answer.status, &answer.body)
    }

    /// Tries the current address, then the others in turn, each at most
    /// once; a 503 naming the leader sends the next attempt there if it was
    /// not tried yet (a follower's hint may be stale for a moment after the
    /// leader died: following it back to the dead address would use up the
    /// attempts). Keeps the first that answers. Refusals (4xx) are answers,
    /// not failures.
    fn each(
        &self,
        mut f: impl FnMut(usize) -> Result<Status, ClientError>,
    ) -> Result<Status, ClientError> {
        let n = self.addrs.len();
        let start = *self.current.lock().unwrap_or_else(|p| p.into_inner()) % n.max(1);
        let mut tried = vec![false; n];
        let mut first_err = None;
        let mut i = start;
        while i < n {
            tried[i] = true;
            match f(i) {
                Ok(s) => {
                    *self.current.lock().unwrap_or_else(|p| p.into_inner()) = i;
                    return Ok(s);
                }
                Err(e @ ClientError::Status { status, .. }) if (400..500).contains(&status) => {
                    return Err(e);
                }
                Err(e) => {
                    let hint = match &e {
                        ClientError::Status {
                            leader: Some(l), ..
                        } => self.addrs.iter().position(|a| a == l),
                        _ => None,
                    };
                    first_err.get_or_insert(e);
                    let next = (1..n).map(|k| (i + k) % n).find(|j| !tried[*j]);
                    match (hint.filter(|h| !tried[*h]), next) {
                        (Some(h), _) => i = h,
                        (None, Some(j)) => i = j,
                        (None, None) => break,
                    }
                }
            }
        }
        Err(first_err.unwrap_or(ClientError::NoAddress {
            addr: String::new(),
        }))
    }
}

/// A primary's right to act as primary: granted by the view service for a
/// while from when the ping that earned it was *sent* (so time lost to a
/// slow answer, or to this process being stopped, is counted against it).
#[derive(Debug)]
pub struct Lease {
    base: Instant,
    /// Nanoseconds after `base` until which the lease holds; 0: none.
    until_ns: AtomicU64,
}

impl Default for Lease {
    fn default() -> Self {
        Lease {
            base: Instant::now(),
            until_ns: AtomicU64::new(0),
        }
    }
}

impl Lease {
    /// The answer to a ping sent at `sent` granted `ms` milliseconds.
    pub fn grant(&self, sent: Instant, ms: u64) {
        let until = sent.saturating_duration_since(self.base) + Duration::from_millis(ms);
        let ns = u64::try_from(until.as_nanos()).unwrap_or(u64::MAX);
        self.until_ns.fetch_max(ns, Ordering::AcqRel);
    }

    /// Whether the lease holds now.
    pub fn valid(&self) -> bool {
        let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        now < self.until_ns.load(Ordering::Acquire)
    }

    /// How long the lease still holds.
    pub fn remaining(&self) -> Duration {
        let now = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(self.until_ns.load(Ordering::Acquire).saturating_sub(now))
    }

    /// Gives the lease up (this node is no longer primary).
    pub fn revoke(&self) {
        self.until_ns.store(0, Ordering::Release);
    }
}

/// Says "`req.server` is alive, knows view `req.viewnum` and holds the
/// state of view `req.holds`" and returns the current status (with a lease
/// if the sender is the acknowledged primary). One connection, closed after
/// the answer; `timeout` bounds connect, send and receive together.
pub fn ping(addr: &str, req: &PingRequest, timeout: Duration) -> Result<Status, ClientError> {
    let body = serde_json::to_string(req).map_err(ClientError::Encode)?;
    once(addr, "POST", "/ping", &body, timeout)
}

/// The current status, without counting as a ping. One connection, closed
/// after the answer; `timeout` bounds connect, send and receive together.
pub fn get_view(addr: &str, timeout: Duration) -> Result<Status, ClientError> {
    once(addr, "GET", "/view", "", timeout)
}

fn once(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<Status, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut stream = connect(addr, deadline)?;
    let answer =
        exchange(&mut stream, addr, method, path, body, false, deadline).map_err(|f| f.error)?;
    interpret(addr, answer.status, &answer.body)
}

/// Time left until `deadline`, or a timeout error.
fn left(deadline: Instant) -> io::Result<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the request's time is up",
        ));
    }
    Ok(d)
}

fn connect(addr: &str, deadline: Instant) -> Result<TcpStream, ClientError> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|source| ClientError::Resolve {
            addr: addr.to_string(),
            source,
        })?
        .collect();
    let mut last = None;
    for a in &addrs {
        match left(deadline).and_then(|t| TcpStream::connect_timeout(a, t)) {
            Ok(s) => {
                // Requests are small and complete: send each at once.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(source) => ClientError::Connect {
            addr: addr.to_string(),
            source,
        },
        None => ClientError::NoAddress {
            addr: addr.to_string(),
        },
    })
}

/// A request on a new connection (the client's own, kept afterwards if the
/// answer allows).
fn fresh(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    deadline: Instant,
) -> Result<(Answer, TcpStream), ClientError> {
    let mut stream = connect(addr, deadline)?;
    let answer =
        exchange(&mut stream, addr, method, path, body, true, deadline).map_err(|f| f.error)?;
    Ok((answer, stream))
}

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    body: Vec<u8>,
    /// The server keeps the connection for another request.
    keep_alive: bool,
}

/// A request that got no answer.
#[derive(Debug)]
struct Failed {
    error: ClientError,
    /// Nothing at all came back and the connection is closed: on a reused
    /// connection, the server had most likely closed it before the request.
    stale: bool,
}

/// Whether an error means the connection was already closed by the peer.
fn closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
    )
}

/// Sends one request on `stream` and reads its answer, all before
/// `deadline`.
fn exchange(
    stream: &mut TcpStream,
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    keep_alive: bool,
    deadline: Instant,
) -> Result<Answer, Failed> {
    let fail = |error, stale| Failed { error, stale };
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
        body.len()
    );
    let sent = left(deadline)
        .and_then(|t| stream.set_write_timeout(Some(t)))
        .and_then(|()| stream.write_all(req.as_bytes()))
        .and_then(|()| stream.flush());
    if let Err(source) = sent {
        let stale = closed(&source);
        let error = ClientError::Send {
            addr: addr.to_string(),
            source,
        };
        return Err(fail(error, stale));
    }
    let mut raw = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        let eof = match left(deadline)
            .and_then(|t| stream.set_read_timeout(Some(t)))
            .and_then(|()| stream.read(&mut chunk))
        {
            Ok(0) => true,
            Ok(n) => {
                raw.extend_from_slice(&chunk[..n]);
                false
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                let stale = raw.is_empty() && closed(&source);
                let error = ClientError::Receive {
                    addr: addr.to_string(),
                    source,
                };
                return Err(fail(error, stale));
            }
        };
        if eof && raw.is_empty() {
            let source = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed without an answer",
            );
            let error = ClientError::Receive {
                addr: addr.to_string(),
                source,
            };
            return Err(fail(error, true));
        }
        match parse_response(&raw, eof) {
            Ok(Some(mut answer)) => {
                // Bytes past the answer were not asked for: this
                // connection's framing is no longer to be trusted.
                answer.keep_alive &= !eof && raw.len() == answer_len(&raw, &answer);
                return Ok(answer);
            }
            Ok(None) => {}
            Err(detail) => {
                let error = ClientError::BadResponse {
                    addr: addr.to_string(),
                    detail,
                };
                return Err(fail(error, false));
            }
        }
    }
}

/// Where the answer parsed out of `raw` ends.
fn answer_len(raw: &[u8], answer: &Answer) -> usize {
    head_end(raw).map_or(raw.len(), |end| end + 4 + answer.body.len())
}

fn head_end(raw: &[u8]) -> Option<usize> {
    raw.windows(4).position(|w| w == b"\r\n\r\n")
}

/// The answer at the start of `raw`: `None` while incomplete (`eof`: the
/// server closed, nothing more will come).
fn parse_response(raw: &[u8], eof: bool) -> Result<Option<Answer>, String> {
    let Some(end) = head_end(raw) else {
        if raw.len() > MAX_HEAD || eof {
            return Err(format!("no end of head in {} bytes", raw.len()));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let (version, rest) = status_line
        .split_once(' ')
        .filter(|(v, _)| *v == "HTTP/1.1" || *v == "HTTP/1.0")
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let status = rest
        .get(..3)
        .filter(|code| code.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut keep_alive = version == "HTTP/1.1";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<usize>()
                .ok()
                .filter(|n| *n <= MAX_BODY)
                .ok_or_else(|| format!("bad Content-Length {value:?}"))?;
            length = Some(n);
        }
        if name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(str::trim) {
                if option.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if option.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let body = &raw[end + 4..];
    let body = match length {
        Some(n) if body.len() >= n => &body[..n],
        Some(n) if eof => return Err(format!("body truncated at {} of {n} bytes", body.len())),
        // Without a length the body ends where the connection does.
        None if eof => {
            keep_alive = false;
            body
        }
        _ if body.len() > MAX_BODY => return Err("body too large".to_string()),
        _ => return Ok(None),
    };
    Ok(Some(Answer {
        status,
        body: body.to_vec(),
        keep_alive,
    }))
}

/// The view in a 200 answer; any other status as an error.
fn interpret(addr: &str, status: u16, body: &[u8]) -> Result<Status, ClientError> {
    if status != 200 {
        let parsed = serde_json::from_slice::<serde_json::Value>(body).ok();
        let field = |name: &str| {
            parsed
                .as_ref()
                .and_then(|v| v[name].as_str().map(str::to_string))
        };
        return Err(ClientError::Status {
            addr: addr.to_string(),
            status,
            message: field("error")
                .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect()),
            leader: field("leader"),
        });
    }
    serde_json::from_slice(body).map_err(|source| ClientError::BadView {
        addr: addr.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    fn answer(raw: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>, bool)>, String> {
        parse_response(raw, eof).map(|a| a.map(|a| (a.status, a.body, a.keep_alive)))
    }

    #[test]
    fn parses_responses() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}extra";
        assert_eq!(
            answer(raw, false).unwrap(),
            Some((200, b"{}".to_vec(), true))
        );
        let raw = b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(
            answer(raw, false).unwrap(),
            Some((404, b"{}".to_vec(), false))
        );
        let raw = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(
            answer(raw, false).unwrap(),
            Some((200, b"{}".to_vec(), false))
        );
        // Without a length, the body is whatever came before the close.
        let raw = b"HTTP/1.1 200 OK\r\n\r\n{}";
        assert_eq!(answer(raw, false).unwrap(), None);
        assert_eq!(
            answer(raw, true).unwrap(),
            Some((200, b"{}".to_vec(), false))
        );
        // Incomplete is "not yet" until the server closes, then an error.
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}";
        assert_eq!(answer(raw, false).unwrap(), None);
        assert!(answer(raw, true).is_err());
        assert_eq!(answer(b"HTTP/1.1 200 OK\r\n", false).unwrap(), None);
        assert!(answer(b"HTTP/1.1 200 OK\r\n", true).is_err());
        assert!(answer(b"SMTP 200\r\n\r\n", false).is_err());
        assert!(answer(b"HTTP/1.1 2x0 OK\r\n\r\n", false).is_err());
        assert!(answer(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", false).is_err());
        assert!(answer(b"HTTP/1.1 200 OK\r\nContent-Length: 65537\r\n\r\n", false).is_err());
        assert!(answer(&vec![b'a'; MAX_HEAD + 1], false).is_err());
    }

    fn refused(addr: &str) -> ClientError {
        ClientError::Connect {
            addr: addr.into(),
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
        }
    }

    fn not_leader(addr: &str, leader: Option<&str>) -> ClientError {
        ClientError::Status {
            addr: addr.into(),
            status: 503,
            message: "not the leader".into(),
            leader: leader.map(str::to_string),
        }
    }

    #[test]
    fn a_client_tries_every_address_once_and_follows_fresh_hints() {
        let c = Client::new(vec!["a".into(), "b".into(), "c".into()], Duration::ZERO);
        let names = ["a", "b", "c"];
        let ok = || Ok(Status::default());
        // a is dead, b still names it (stale hint): c must still be tried.
        let mut asked = Vec::new();
        let r = c.each(|i| {
            let addr = names[i];
            asked.push(addr.to_string());
            match addr {
                "a" => Err(refused(addr)),
                "b" => Err(not_leader(addr, Some("a"))),
                _ => ok(),
            }
        });
        assert!(r.is_ok());
        assert_eq!(asked, ["a", "b", "c"]);
        // c answered, so it is asked first next time; its hint to b is followed.
        let mut asked = Vec::new();
        let r = c.each(|i| {
            let addr = names[i];
            asked.push(addr.to_string());
            match addr {
                "c" => Err(not_leader(addr, Some("b"))),
                "b" => ok(),
                _ => Err(refused(addr)),
            }
        });
        assert!(r.is_ok());
        assert_eq!(asked, ["c", "b"]);
        // Nobody answers: each address once, and the first error is reported.
        let mut asked = Vec::new();
        let err = c
            .each(|i| {
                let addr = names[i];
                asked.push(addr.to_string());
                Err(not_leader(addr, Some("b")))
            })
            .unwrap_err();
        assert_eq!(asked, ["b", "c", "a"]);
        assert!(
            err.to_string().contains("viewserver at b answered 503"),
            "{err}"
        );
    }

    #[test]
    fn unreachable_viewserver_is_a_clear_error() {
        // Bind then drop: a port that was free a moment ago and has no listener.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let err = get_view(&addr, Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot reach viewserver at {addr}: ")),
            "{err}"
        );
        let err = get_view("no-such-host.invalid:1", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, ClientError::Resolve { .. }), "{err:?}");
        let err = Client::new(vec![addr.clone()], Duration::from_secs(1))
            .status()
            .unwrap_err();
        assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    }

    fn lab(server: &str, viewnum: u64) -> PingRequest {
        PingRequest {
            server: server.into(),
            viewnum,
            incarnation: None,
            seq: None,
            holds: None,
            finished: None,
            primary_lost: None,
        }
    }

    fn real_server(idle: Duration) -> String {
        let mut config = crate::Config::new("127.0.0.1:0");
        config.ping_interval = Duration::from_secs(3600);
        config.idle_timeout = idle;
        crate::ViewServer::bind(config, Box::new(crate::MemoryStore::default()))
            .unwrap()
            .spawn()
            .unwrap()
            .to_string()
    }

    #[test]
    fn talks_to_a_real_server() {
        let addr = real_server(Duration::from_secs(30));
        let t = Duration::from_secs(5);
        assert_eq!(get_view(&addr, t).unwrap().view, crate::View::default());
        let v = ping(&addr, &lab("10.0.0.1:7000", 0), t).unwrap().view;
        assert_eq!((v.viewnum, v.primary.as_str()), (1, "10.0.0.1:7000"));
        let s = ping(&addr, &lab("10.0.0.1:7000", 1), t).unwrap();
        assert!(s.acked && s.lease_ms > 0);
        let v2 = ping(&addr, &lab("10.0.0.2:7000", 0), t).unwrap().view;
        assert_eq!(v2.viewnum, s.view.viewnum + 1);
        assert_eq!(v2.backup, "10.0.0.2:7000");
        let err = ping(&addr, &lab("", 0), t).unwrap_err();
        assert!(
            matches!(err, ClientError::Status { status: 400, .. }),
            "{err:?}"
        );
    }

    /// The local address of the client's kept connection to its first
    /// address, if it keeps one.
    fn kept_port(c: &Client) -> Option<SocketAddr> {
        c.kept(0)
            .and_then(|k| k.as_ref().and_then(|s| s.local_addr().ok()))
    }

    #[test]
    fn the_client_keeps_one_connection_for_all_its_requests() {
        let addr = real_server(Duration::from_secs(30));
        let c = Client::new(vec![addr], Duration::from_secs(5));
        c.ping(&lab("a", 0)).unwrap();
        let first = kept_port(&c).unwrap();
        for viewnum in [1, 1, 1, 1, 1] {
            assert_eq!(c.ping(&lab("a", viewnum)).unwrap().view.primary, "a");
            assert_eq!(c.status().unwrap().view.viewnum, 1);
            assert_eq!(kept_port(&c), Some(first));
        }
        // Refusals are answers on a healthy connection: it stays.
        let err = c.ping(&lab("", 0)).unwrap_err();
        assert!(
            matches!(err, ClientError::Status { status: 400, .. }),
            "{err:?}"
        );
        assert_eq!(kept_port(&c), Some(first));
    }

    #[test]
    fn the_client_reconnects_after_the_server_closed_an_idle_connection() {
        let addr = real_server(Duration::from_millis(100));
        let c = Client::new(vec![addr], Duration::from_secs(5));
        assert_eq!(c.ping(&lab("a", 0)).unwrap().view.viewnum, 1);
        let first = kept_port(&c).unwrap();
        // Wait until the server has closed it (its idle timeout).
        {
            let k = c.kept(0).unwrap();
            let s = k.as_ref().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            assert_eq!(s.peek(&mut [0u8; 1]).unwrap(), 0);
        }
        assert_eq!(c.ping(&lab("a", 1)).unwrap().view.viewnum, 1);
        let second = kept_port(&c).unwrap();
        assert_ne!(first, second);
        assert!(c.status().unwrap().acked);
        assert_eq!(kept_port(&c), Some(second));
    }

    /// A server that answers every request with `status` and then closes
    /// the connection, although it claims to keep it; counts connections.
    fn one_request_per_connection(status: &'static str) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        let body = serde_json::to_string(&Status::default()).unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming().take(20) {
                let Ok(mut s) = s else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                let mut req = Vec::new();
                let mut b = [0u8; 1];
                while !req.ends_with(b"\r\n\r\n") && s.read(&mut b).is_ok_and(|n| n == 1) {
                    req.push(b[0]);
                }
                let _ = write!(
                    s,
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (addr, accepted)
    }

    #[test]
    fn a_connection_closed_between_requests_is_replaced_transparently() {
        let (addr, accepted) = one_request_per_connection("200 OK");
        let c = Client::new(vec![addr], Duration::from_secs(5));
        for n in 1..=5 {
            assert_eq!(c.status().unwrap(), Status::default());
            assert_eq!(accepted.load(Ordering::SeqCst), n);
        }
    }

    #[test]
    fn a_request_is_bounded_by_the_timeout() {
        // Accepts (the kernel does, into the backlog) and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let timeout = Duration::from_millis(300);
        let start = Instant::now();
        let err = get_view(&addr, timeout).unwrap_err();
        assert!(matches!(err, ClientError::Receive { .. }), "{err:?}");
        let c = Client::new(vec![addr], timeout);
        let err = c.status().unwrap_err();
        assert!(matches!(err, ClientError::Receive { .. }), "{err:?}");
        // Two requests, each within its timeout (plus scheduling slack).
        assert!(start.elapsed() < 2 * timeout + Duration::from_secs(3));
        drop(listener);
    }
}
