//! Talking to a viewserver: one connection per request, every step bounded by
//! the caller's timeout. [`Client`] follows whichever of several viewserver
//! addresses leads; [`Lease`] is what a primary holds between pings.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::api::PingRequest;
use crate::http::{MAX_BODY, MAX_HEAD};
use crate::service::Status;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot resolve viewserver address {addr}")]
    Resolve {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("viewserver address {addr} resolves to nothing")]
    NoAddress { addr: String },
    #[error("cannot reach viewserver at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set timeouts on the connection to viewserver at {addr}")]
    Timeouts {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot send the request to viewserver at {addr}: {source}")]
    Send {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("no complete response from viewserver at {addr}: {source}")]
    Receive {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("malformed response from viewserver at {addr}: {detail}")]
    BadResponse { addr: String, detail: String },
    #[error("viewserver at {addr} answered {status}: {message}")]
    Status {
        addr: String,
        status: u16,
        message: String,
        /// With 503 from a viewserver that does not lead: the one that does.
        leader: Option<String>,
    },
    #[error("viewserver at {addr} answered a body that is not a view")]
    BadView {
        addr: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode the ping request")]
    Encode(#[source] serde_json::Error),
}

/// The view service at one or more addresses (several viewserver processes
/// sharing one stored view, of which one leads). Requests go to the one
/// that answered last; on failure, or when told another leads, the next.
#[derive(Debug)]
pub struct Client {
    addrs: Vec<String>,
    current: Mutex<usize>,
    timeout: Duration,
}

impl Client {
    /// `addrs` must not be empty; each request (and each attempt) is bounded
    /// by `timeout`.
    pub fn new(addrs: Vec<String>, timeout: Duration) -> Self {
        Client {
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
        self.each(|addr| ping(addr, req, self.timeout))
    }

    /// The current status (see [`get_view`]) from whichever viewserver leads.
    pub fn status(&self) -> Result<Status, ClientError> {
        self.each(|addr| get_view(addr, self.timeout))
    }

    /// Tries the current address, then the others in turn, each at most
    /// once; a 503 naming the leader sends the next attempt there if it was
    /// not tried yet (a follower's hint may be stale for a moment after the
    /// leader died: following it back to the dead address would use up the
    /// attempts). Keeps the first that answers. Refusals (4xx) are answers,
    /// not failures.
    fn each(
        &self,
        mut f: impl FnMut(&str) -> Result<Status, ClientError>,
    ) -> Result<Status, ClientError> {
        let n = self.addrs.len();
        let start = *self.current.lock().unwrap_or_else(|p| p.into_inner()) % n.max(1);
        let mut tried = vec![false; n];
        let mut first_err = None;
        let mut i = start;
        while let Some(addr) = self.addrs.get(i) {
            tried[i] = true;
            match f(addr) {
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
/// if the sender is the acknowledged primary).
pub fn ping(addr: &str, req: &PingRequest, timeout: Duration) -> Result<Status, ClientError> {
    let body = serde_json::to_string(req).map_err(ClientError::Encode)?;
    request(addr, "POST", "/ping", &body, timeout)
}

/// The current status, without counting as a ping.
pub fn get_view(addr: &str, timeout: Duration) -> Result<Status, ClientError> {
    request(addr, "GET", "/view", "", timeout)
}

fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, ClientError> {
    let addrs: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|source| ClientError::Resolve {
            addr: addr.to_string(),
            source,
        })?
        .collect();
    let mut last = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, timeout) {
            Ok(s) => return Ok(s),
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

fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> Result<Status, ClientError> {
    let mut stream = connect(addr, timeout)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|source| ClientError::Timeouts {
            addr: addr.to_string(),
            source,
        })?;
    let _ = stream.set_nodelay(true);
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(req.as_bytes())
        .and_then(|()| stream.flush())
        .map_err(|source| ClientError::Send {
            addr: addr.to_string(),
            source,
        })?;
    let mut raw = Vec::new();
    stream
        .take((MAX_HEAD + MAX_BODY) as u64)
        .read_to_end(&mut raw)
        .map_err(|source| ClientError::Receive {
            addr: addr.to_string(),
            source,
        })?;
    let (status, body) = parse_response(&raw).map_err(|detail| ClientError::BadResponse {
        addr: addr.to_string(),
        detail,
    })?;
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

/// Status and body of a `Connection: close` response.
fn parse_response(raw: &[u8]) -> Result<(u16, &[u8]), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no end of head in {} bytes", raw.len()))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let body = &raw[end + 4..];
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            let n: usize = value
                .trim()
                .parse()
                .map_err(|_| format!("bad Content-Length {value:?}"))?;
            if body.len() < n {
                return Err(format!("body truncated at {} of {n} bytes", body.len()));
            }
            return Ok((status, &body[..n]));
        }
    }
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_responses() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}extra";
        assert_eq!(parse_response(raw).unwrap(), (200, &b"{}"[..]));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{}").is_err());
        assert!(parse_response(b"SMTP 200\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
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
        let ok = || Ok(Status::default());
        // a is dead, b still names it (stale hint): c must still be tried.
        let mut asked = Vec::new();
        let r = c.each(|addr| {
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
        let r = c.each(|addr| {
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
            .each(|addr| {
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
    }

    #[test]
    fn talks_to_a_real_server() {
        let mut config = crate::Config::new("127.0.0.1:0");
        config.log_view_changes = false;
        config.ping_interval = Duration::from_secs(3600);
        let addr = crate::ViewServer::bind(config, Box::new(crate::MemoryStore::default()))
            .unwrap()
            .spawn()
            .unwrap()
            .to_string();
        let t = Duration::from_secs(5);
        assert_eq!(get_view(&addr, t).unwrap().view, crate::View::default());
        let lab = |server: &str, viewnum| PingRequest {
            server: server.into(),
            viewnum,
            incarnation: None,
            seq: None,
            holds: None,
        };
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
}
