//! Talking to a viewserver: one connection per request, every step bounded by
//! the caller's timeout.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::http::{MAX_BODY, MAX_HEAD};
use crate::server::PingRequest;
use crate::service::View;

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

/// Says "`server` is alive and knows view `viewnum`" (0: just started, no
/// state) and returns the current view.
pub fn ping(
    addr: &str,
    server: &str,
    viewnum: u64,
    timeout: Duration,
) -> Result<View, ClientError> {
    let body = serde_json::to_string(&PingRequest {
        server: server.to_string(),
        viewnum,
    })
    .map_err(ClientError::Encode)?;
    request(addr, "POST", "/ping", &body, timeout)
}

/// The current view, without counting as a ping.
pub fn get_view(addr: &str, timeout: Duration) -> Result<View, ClientError> {
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
) -> Result<View, ClientError> {
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
        let message = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(200).collect());
        return Err(ClientError::Status {
            addr: addr.to_string(),
            status,
            message,
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
        let addr = crate::ViewServer::bind(config)
            .unwrap()
            .spawn()
            .unwrap()
            .to_string();
        let t = Duration::from_secs(5);
        assert_eq!(get_view(&addr, t).unwrap(), View::default());
        let v = ping(&addr, "10.0.0.1:7000", 0, t).unwrap();
        assert_eq!((v.viewnum, v.primary.as_str()), (1, "10.0.0.1:7000"));
        let v = ping(&addr, "10.0.0.1:7000", 1, t).unwrap();
        let v2 = ping(&addr, "10.0.0.2:7000", 0, t).unwrap();
        assert_eq!(v2.viewnum, v.viewnum + 1);
        assert_eq!(v2.backup, "10.0.0.2:7000");
        let err = ping(&addr, "", 0, t).unwrap_err();
        assert!(
            matches!(err, ClientError::Status { status: 400, .. }),
            "{err:?}"
        );
    }
}
