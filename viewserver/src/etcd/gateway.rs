//! etcd v3 through its JSON gateway (grpc-gateway, `POST /v3/...`) over
//! plain HTTP/1.1: one connection per call, `Connection: close`, every step
//! bounded by a deadline, and the next endpoint tried when one fails.
//!
//! Why not a gRPC client: that needs an async runtime and a protobuf stack
//! for six calls whose bodies are a few hundred bytes of JSON. The gateway
//! answers in JSON with 64-bit integers as strings and bytes as base64, and
//! may answer with chunked encoding (always, for the streaming keepalive).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Largest answer read: the view service's state is well under a KiB, and
/// nothing here reads more than two keys.
const MAX_RESPONSE: usize = 1 << 20;

/// Why a call to etcd gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No endpoint answered (refused, timed out, or answered 5xx: no
    /// quorum, no raft leader, ...). Trying again later may work.
    #[error("no endpoint answered {path} ({detail})")]
    Unreachable { path: String, detail: String },
    /// etcd answered, and refused (4xx): trying elsewhere will not help.
    #[error("{path} refused ({status}): {message}")]
    Refused {
        path: String,
        status: u16,
        message: String,
    },
    /// etcd answered 200 with something that is not the expected JSON.
    #[error("unexpected answer to {path}: {detail}")]
    BadAnswer { path: String, detail: String },
}

impl CallError {
    /// etcd no longer knows the lease (it expired, or was revoked).
    pub fn lease_not_found(&self) -> bool {
        matches!(self, CallError::Refused { message, .. } if message.contains("lease not found"))
    }
}

/// The endpoints of one etcd cluster.
#[derive(Debug)]
pub struct Gateway {
    /// `host:port` of each member's client URL.
    endpoints: Vec<String>,
    /// The one that answered last: tried first.
    current: AtomicUsize,
    /// Bound on one attempt at one endpoint (connect, send, receive).
    timeout: Duration,
}

/// `http://host:port` (a trailing `/` allowed) or `host:port` to `host:port`.
pub fn parse_endpoint(url: &str) -> Result<String, String> {
    let url = url.trim();
    if url.starts_with("https://") {
        return Err(format!(
            "{url}: TLS is not supported; give the members' plain http:// client URLs"
        ));
    }
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains('/') || !rest.contains(':') || rest.contains("://") {
        return Err(format!(
            "{url:?} is not an etcd client URL (http://HOST:PORT)"
        ));
    }
    Ok(rest.to_string())
}

impl Gateway {
    /// `endpoints`: `host:port` each, at least one.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Self {
        Gateway {
            endpoints,
            current: AtomicUsize::new(0),
            timeout,
        }
    }

    /// The endpoints, comma-separated, for messages.
    pub fn describe(&self) -> String {
        self.endpoints.join(",")
    }

    /// `POST path` with `body`; the answer parsed as `T`. Tries the endpoint
    /// that answered last, then the others in turn.
    pub fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<T, CallError> {
        let body = body.to_string();
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let Some(ep) = self.endpoints.get(i) else {
                break;
            };
            match post(ep, path, &body, self.timeout) {
                Ok((200, answer)) => {
                    self.current.store(i, Ordering::Relaxed);
                    return parse_answer(path, &answer);
                }
                Ok((status, answer)) if (400..500).contains(&status) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Err(CallError::Refused {
                        path: path.to_string(),
                        status,
                        message: error_message(&answer),
                    });
                }
                Ok((status, answer)) => {
                    failures.push(format!("{ep}: {status} {}", error_message(&answer)));
                }
                Err(e) => failures.push(format!("{ep}: {e}")),
            }
        }
        Err(CallError::Unreachable {
            path: path.to_string(),
            detail: failures.join("; "),
        })
    }
}

fn parse_answer<T: DeserializeOwned>(path: &str, answer: &[u8]) -> Result<T, CallError> {
    // A streaming call (keepalive) answers one JSON object per message, one
    // per line; we send one request, so the first is ours.
    let first = answer
        .split(|b| *b == b'\n')
        .find(|l| !l.iter().all(u8::is_ascii_whitespace))
        .unwrap_or(answer);
    serde_json::from_slice(first).map_err(|e| CallError::BadAnswer {
        path: path.to_string(),
        detail: format!(
            "{e}: {}",
            String::from_utf8_lossy(first)
                .chars()
                .take(200)
                .collect::<String>()
        ),
    })
}

/// The gateway's error text (`{"error": ..., "message": ..., "code": N}`),
/// or the raw body.
fn error_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct E {
        #[serde(default)]
        error: serde_json::Value,
        #[serde(default)]
        message: Option<String>,
    }
    match serde_json::from_slice::<E>(body) {
        Ok(E {
            message: Some(m), ..
        }) => m,
        Ok(E {
            error: serde_json::Value::String(m),
            ..
        }) => m,
        _ => String::from_utf8_lossy(body).chars().take(200).collect(),
    }
}

/// One request to one endpoint: (status, body), the whole exchange within
/// `timeout`.
fn post(ep: &str, path: &str, body: &str, timeout: Duration) -> Result<(u16, Vec<u8>), String> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {} ms", timeout.as_millis()))
    };
    let addrs: Vec<SocketAddr> = ep
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve: {e}"))?
        .collect();
    let mut stream = None;
    let mut last = String::from("resolves to no address");
    for a in &addrs {
        match TcpStream::connect_timeout(a, left()?) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e.to_string(),
        }
    }
    let mut stream = stream.ok_or(last)?;
    let _ = stream.set_nodelay(true);
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {ep}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .set_write_timeout(Some(left()?))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(req.as_bytes())
        .map_err(|e| format!("cannot send: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(done) = parse_response(&raw, false)? {
            return Ok(done);
        }
        stream
            .set_read_timeout(Some(left()?))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => {
                return parse_response(&raw, true)?
                    .ok_or_else(|| format!("connection closed after {} bytes", raw.len()));
            }
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() > MAX_RESPONSE {
                    return Err(format!("answer over {MAX_RESPONSE} bytes"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no answer within {} ms", timeout.as_millis()));
            }
            Err(e) => return Err(format!("cannot receive: {e}")),
        }
    }
}

/// A complete response in `raw` as (status, body), `None` if more is to
/// come. `eof`: the peer closed, so a body without a length ends here.
fn parse_response(raw: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>, String> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if eof {
            Err(format!("no end of head in {} bytes", raw.len()))
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = &raw[end + 4..];
    if chunked {
        return match dechunk(body)? {
            Some(b) => Ok(Some((status, b))),
            None if eof => Err("chunked body cut short".to_string()),
            None => Ok(None),
        };
    }
    match length {
        Some(n) if body.len() >= n => Ok(Some((status, body[..n].to_vec()))),
        Some(n) if eof => Err(format!("body truncated at {} of {n} bytes", body.len())),
        Some(_) => Ok(None),
        None if eof => Ok(Some((status, body.to_vec()))),
        None => Ok(None),
    }
}

/// The body of a chunked transfer, `None` if the last chunk has not arrived.
/// Trailers are ignored.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size".to_string())?;
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {hex:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&rest[..size]);
        if &rest[size..size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".to_string());
        }
        rest = &rest[size + 2..];
    }
}

/// Bytes as the gateway wants them.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Bytes from the gateway.
pub fn unb64(s: &str) -> Result<Vec<u8>, String> {
    B64.decode(s).map_err(|e| format!("not base64: {e}"))
}

/// A 64-bit integer as the gateway writes it: a JSON string (or, leniently,
/// a number); absent fields default to 0 through `#[serde(default)]`.
pub fn int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        N(i64),
    }
    match N::deserialize(d)? {
        N::N(n) => Ok(n),
        N::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// `mvccpb.KeyValue`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    #[serde(deserialize_with = "int")]
    pub create_revision: i64,
    #[serde(deserialize_with = "int")]
    pub mod_revision: i64,
    #[serde(deserialize_with = "int")]
    pub lease: i64,
}

/// `ResponseHeader` (the part used).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Header {
    #[serde(deserialize_with = "int")]
    pub revision: i64,
}

/// `RangeResponse`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RangeResponse {
    pub header: Header,
    pub kvs: Vec<KeyValue>,
}

/// `PutResponse`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PutResponse {
    pub header: Header,
}

/// `ResponseOp`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ResponseOp {
    pub response_range: Option<RangeResponse>,
    pub response_put: Option<PutResponse>,
}

/// `TxnResponse`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TxnResponse {
    pub header: Header,
    pub succeeded: bool,
    pub responses: Vec<ResponseOp>,
}

/// `LeaseGrantResponse`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LeaseGrantResponse {
    #[serde(rename = "ID", deserialize_with = "int")]
    pub id: i64,
    #[serde(rename = "TTL", deserialize_with = "int")]
    pub ttl: i64,
    pub error: String,
}

/// One message of the `LeaseKeepAlive` stream.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct KeepAliveMessage {
    pub result: Option<KeepAliveResult>,
    pub error: Option<serde_json::Value>,
}

/// `LeaseKeepAliveResponse`: a TTL of 0 (absent) means etcd no longer knows
/// the lease.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct KeepAliveResult {
    #[serde(rename = "TTL", deserialize_with = "int")]
    pub ttl: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_plain_http_host_port() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:2379").unwrap(),
            "127.0.0.1:2379"
        );
        assert_eq!(parse_endpoint("http://h:1/").unwrap(), "h:1");
        assert_eq!(parse_endpoint("h:1").unwrap(), "h:1");
        assert!(parse_endpoint("https://h:1").unwrap_err().contains("TLS"));
        assert!(parse_endpoint("http://h:1/v3").is_err());
        assert!(parse_endpoint("h").is_err());
        assert!(parse_endpoint("").is_err());
    }

    #[test]
    fn parses_length_chunked_and_close_delimited_answers() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(
            parse_response(raw, false).unwrap(),
            Some((200, b"{}".to_vec()))
        );
        assert_eq!(parse_response(&raw[..raw.len() - 1], false).unwrap(), None);
        assert!(parse_response(&raw[..raw.len() - 1], true).is_err());

        let chunked = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nGrpc-Trailer: z\r\n\r\n";
        assert_eq!(
            parse_response(chunked, false).unwrap(),
            Some((404, b"hello world".to_vec()))
        );
        assert_eq!(parse_response(&chunked[..60], false).unwrap(), None);
        assert!(parse_response(&chunked[..60], true).is_err());
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";
        assert!(parse_response(bad, false).is_err());

        let close = b"HTTP/1.0 200 OK\r\n\r\nabc";
        assert_eq!(parse_response(close, false).unwrap(), None);
        assert_eq!(
            parse_response(close, true).unwrap(),
            Some((200, b"abc".to_vec()))
        );
        assert!(parse_response(b"SMTP 220\r\n\r\n", true).is_err());
    }

    #[test]
    fn decodes_gateway_json() {
        let txn: TxnResponse = parse_answer(
            "/v3/kv/txn",
            br#"{"header":{"revision":"4"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"4"}}},{"response_range":{"kvs":[{"key":"L3k=","create_revision":"4","mod_revision":"4","version":"1","value":"bWU=","lease":"41"}],"count":"1"}}]}"#,
        )
        .unwrap();
        assert!(txn.succeeded);
        let kv = &txn.responses[1].response_range.as_ref().unwrap().kvs[0];
        assert_eq!((kv.create_revision, kv.lease), (4, 41));
        assert_eq!(unb64(&kv.value).unwrap(), b"me");
        let failed: TxnResponse = parse_answer(
            "/v3/kv/txn",
            br#"{"header":{"revision":"4"},"responses":[{"response_range":{"header":{}}}]}"#,
        )
        .unwrap();
        assert!(!failed.succeeded);
        assert!(
            failed.responses[0]
                .response_range
                .as_ref()
                .unwrap()
                .kvs
                .is_empty()
        );
        let ka: KeepAliveMessage = parse_answer(
            "/v3/lease/keepalive",
            b"{\"result\":{\"ID\":\"12\"}}\n{\"result\":{}}\n",
        )
        .unwrap();
        assert_eq!(ka.result.unwrap().ttl, 0);
        assert!(parse_answer::<TxnResponse>("/v3/kv/txn", b"nope").is_err());
        assert_eq!(
            error_message(br#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#),
            "etcdserver: requested lease not found"
        );
        assert_eq!(b64(b"/x/leader"), "L3gvbGVhZGVy");
    }

    #[test]
    fn an_unreachable_cluster_is_one_error_naming_every_endpoint() {
        let free = |_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let eps: Vec<String> = (0..2).map(free).collect();
        let g = Gateway::new(eps.clone(), Duration::from_millis(300));
        let err = g
            .call::<RangeResponse>("/v3/kv/range", &serde_json::json!({"key": "eA=="}))
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CallError::Unreachable { .. }), "{msg}");
        for ep in &eps {
            assert!(msg.contains(ep), "{msg}");
        }
    }
}
