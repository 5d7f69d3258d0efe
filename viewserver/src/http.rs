//! A small, strict HTTP/1.1 subset: `Content-Length` bodies only, hard limits
//! on every part, keep-alive and pipelining. Enough for a JSON API spoken by
//! our own client and by curl, small enough to read in one sitting, and with
//! no input that can make it allocate more than [`MAX_REQUEST`] per
//! connection.
//!
//! The parser is incremental: [`RequestParser::parse`] looks at the bytes a
//! connection received so far and says "not yet", "here is a request of N
//! bytes", or "this is malformed" (an [`HttpError`] whose
//! [`status`](HttpError::status) is the answer). It never blocks and never
//! reads: the event loop in `server` owns the sockets and the clocks.

use std::time::Duration;

/// Request line plus headers, including the blank line that ends them.
pub const MAX_HEAD: usize = 8 * 1024;
/// Request body (and, on the client side, response body).
pub const MAX_BODY: usize = 64 * 1024;
/// The largest complete request: a buffer this full holds a whole request or
/// an error, never "not yet".
pub const MAX_REQUEST: usize = MAX_HEAD + MAX_BODY;
/// More headers than this is not a client of ours.
pub const MAX_HEADERS: usize = 32;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// An RFC 9110 token, as sent (methods are case-sensitive).
    pub method: String,
    /// Starts with `/`; the query string, if any, included.
    pub path: String,
    /// Exactly `Content-Length` bytes.
    pub body: Vec<u8>,
    /// Whether the client wants the connection kept for another request:
    /// HTTP/1.1 unless it sent `Connection: close`, HTTP/1.0 only if it sent
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
}

/// Why a request cannot be answered normally; [`HttpError::status`] is the
/// answer to send, after which the connection is closed (the bytes that
/// follow a malformed request cannot be trusted to start a new one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The whole request did not arrive within the request timeout (given): 408.
    #[error("the request did not arrive within {0:?}")]
    Timeout(Duration),
    /// The client closed the connection inside the request head (bytes received): 400.
    #[error("connection closed in the middle of the request head ({0} bytes)")]
    TruncatedHead(usize),
    /// The request head exceeds `MAX_HEAD` bytes: 431.
    #[error("request head exceeds {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The request head is not UTF-8: 400.
    #[error("request head is not UTF-8")]
    HeadNotUtf8,
    /// The request line is not `METHOD /path VERSION` with a token method (the line): 400.
    #[error("malformed request line {0:?}")]
    BadRequestLine(String),
    /// A protocol other than HTTP/1.0 or HTTP/1.1 (the one given): 400.
    #[error("unsupported protocol version {0:?} (HTTP/1.0 or HTTP/1.1 only)")]
    BadVersion(String),
    /// A header line without a colon, with a name that is no token, or with control characters in
    /// its value (the line): 400.
    #[error("malformed header line {0:?}")]
    BadHeader(String),
    /// More than `MAX_HEADERS` header lines: 431.
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    /// A `Content-Length` that is not a number, or several that disagree (the value): 400.
    #[error("invalid Content-Length {0:?}")]
    BadContentLength(String),
    /// A `Transfer-Encoding` header: chunked bodies are not supported: 411.
    #[error("Transfer-Encoding is not supported; send a Content-Length")]
    TransferEncoding,
    /// The announced body exceeds `MAX_BODY` bytes (the announced length): 413.
    #[error("body of {0} bytes exceeds the {MAX_BODY}-byte limit")]
    BodyTooLarge(u64),
    /// The client closed the connection inside the body: 400.
    #[error("connection closed after {got} of {expected} body bytes")]
    TruncatedBody {
        /// Body bytes received.
        got: usize,
        /// Body bytes announced.
        expected: usize,
    },
}

impl HttpError {
    /// The status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::Timeout(_) => 408,
            HttpError::HeadTooLarge => 431,
            HttpError::TooManyHeaders => 431,
            HttpError::TransferEncoding => 411,
            HttpError::BodyTooLarge(_) => 413,
            HttpError::TruncatedHead(_)
            | HttpError::HeadNotUtf8
            | HttpError::BadRequestLine(_)
            | HttpError::BadVersion(_)
            | HttpError::BadHeader(_)
            | HttpError::BadContentLength(_)
            | HttpError::TruncatedBody { .. } => 400,
        }
    }
}

/// What the bytes received so far hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet: wait for more bytes.
    Incomplete,
    /// A request made of the first `len` bytes; what follows (a pipelined
    /// request) is the caller's to keep.
    Complete {
        /// The parsed request.
        request: Request,
        /// Bytes it took, head and body.
        len: usize,
    },
}

/// A request head, kept once parsed so that a body arriving in pieces does
/// not make the head be parsed again.
#[derive(Debug, Clone)]
struct Head {
    method: String,
    path: String,
    keep_alive: bool,
    /// Bytes of the head, blank line included.
    len: usize,
    body_len: usize,
}

/// Parses one request at a time out of a connection's receive buffer.
///
/// Call [`parse`](Self::parse) with the whole buffer every time bytes were
/// appended to it; after [`Parsed::Complete`], remove the request's `len`
/// bytes from the front before the next call. The parser remembers how far
/// it looked, so a head trickling in byte by byte costs linear time.
#[derive(Debug, Default)]
pub struct RequestParser {
    /// Bytes already searched for the end of the head.
    scanned: usize,
    head: Option<Head>,
}

impl RequestParser {
    /// A parser at the start of a request.
    pub fn new() -> Self {
        Self::default()
    }

    /// Looks for a whole request at the start of `buf`.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Parsed, HttpError> {
        if self.head.is_none() {
            // The terminator may straddle what was scanned and what is new.
            let limit = buf.len().min(MAX_HEAD);
            let from = self.scanned.saturating_sub(3).min(limit);
            let Some(at) = find_head_end(&buf[from..limit]) else {
                if buf.len() >= MAX_HEAD {
                    return Err(HttpError::HeadTooLarge);
                }
                self.scanned = limit;
                return Ok(Parsed::Incomplete);
            };
            let end = from + at;
            self.head = Some(parse_head(&buf[..end], end + 4)?);
        }
        let Some(head) = self.head.as_ref() else {
            return Ok(Parsed::Incomplete);
        };
        let len = head.len + head.body_len;
        if buf.len() < len {
            return Ok(Parsed::Incomplete);
        }
        let body = buf[head.len..len].to_vec();
        self.scanned = 0;
        let head = self.head.take();
        let Some(Head {
            method,
            path,
            keep_alive,
            ..
        }) = head
        else {
            return Ok(Parsed::Incomplete);
        };
        Ok(Parsed::Complete {
            request: Request {
                method,
                path,
                body,
                keep_alive,
            },
            len,
        })
    }

    /// What it means that the peer closed its side after sending `received`
    /// bytes of a request that [`parse`](Self::parse) found incomplete.
    pub fn truncated(&self, received: usize) -> HttpError {
        match &self.head {
            Some(h) => HttpError::TruncatedBody {
                got: received.saturating_sub(h.len),
                expected: h.body_len,
            },
            None => HttpError::TruncatedHead(received),
        }
    }
}

/// Parses the request at the start of `buf` with a fresh parser (tests, and
/// callers holding a whole buffer).
pub fn parse_request(buf: &[u8]) -> Result<Parsed, HttpError> {
    RequestParser::new().parse(buf)
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// `head` is everything before the blank line; `len` includes it.
fn parse_head(head: &[u8], len: usize) -> Result<Head, HttpError> {
    let head = std::str::from_utf8(head).map_err(|_| HttpError::HeadNotUtf8)?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let (method, path, version) = parse_request_line(request_line)?;

    let mut content_length: Option<u64> = None;
    let (mut close, mut keep) = (false, false);
    for (i, line) in lines.enumerate() {
        if i >= MAX_HEADERS {
            return Err(HttpError::TooManyHeaders);
        }
        let (name, value) = line
            .split_once(':')
            .filter(|(name, _)| is_token(name))
            .ok_or_else(|| HttpError::BadHeader(truncate(line)))?;
        let value = value.trim_matches([' ', '\t']);
        if value.chars().any(|c| c.is_control() && c != '\t') {
            return Err(HttpError::BadHeader(truncate(line)));
        }
        if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncoding);
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value
                .parse()
                .ok()
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| HttpError::BadContentLength(truncate(value)))?;
            // Two different lengths is the classic request-smuggling shape.
            if content_length.is_some_and(|prev| prev != n) {
                return Err(HttpError::BadContentLength(truncate(value)));
            }
            content_length = Some(n);
        }
        if name.eq_ignore_ascii_case("connection") {
            for option in value.split(',').map(|o| o.trim_matches([' ', '\t'])) {
                close |= option.eq_ignore_ascii_case("close");
                keep |= option.eq_ignore_ascii_case("keep-alive");
            }
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > MAX_BODY as u64 {
        return Err(HttpError::BodyTooLarge(body_len));
    }
    let keep_alive = !close && (version == "HTTP/1.1" || keep);
    Ok(Head {
        method: method.to_string(),
        path: path.to_string(),
        keep_alive,
        len,
        body_len: body_len as usize,
    })
}

fn parse_request_line(line: &str) -> Result<(&str, &str, &str), HttpError> {
    let bad = || HttpError::BadRequestLine(truncate(line));
    let mut parts = line.split(' ');
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if !is_token(method) || !path.starts_with('/') || path.chars().any(|c| c.is_control()) {
        return Err(bad());
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HttpError::BadVersion(truncate(version)));
    }
    Ok((method, path, version))
}

/// RFC 9110 token: what methods and header names are made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Echoing client bytes into errors: a bounded, printable prefix only.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// The reason phrase of the statuses this API uses.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Appends a complete JSON response to `out`, saying whether the connection
/// stays open for another request.
pub fn encode_response(
    out: &mut Vec<u8>,
    status: u16,
    extra_headers: &[(&str, &str)],
    json: &str,
    keep_alive: bool,
) {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: {connection}\r\n",
        reason(status),
        json.len() + 1
    );
    for (name, value) in extra_headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(json.as_bytes());
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8]) -> (Request, usize) {
        match parse_request(bytes) {
            Ok(Parsed::Complete { request, len }) => (request, len),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    /// The error for `bytes`, whether found while parsing or when the peer
    /// closes after them.
    fn error(bytes: &[u8]) -> HttpError {
        let mut p = RequestParser::new();
        match p.parse(bytes) {
            Err(e) => e,
            Ok(Parsed::Incomplete) => p.truncated(bytes.len()),
            Ok(c) => panic!("{:?}: {c:?}", String::from_utf8_lossy(bytes)),
        }
    }

    const POST: &[u8] = b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn parses_a_post_with_a_body() {
        let (r, len) = complete(POST);
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/ping"));
        assert_eq!(r.body, b"hello");
        assert!(r.keep_alive);
        assert_eq!(len, POST.len());
    }

    #[test]
    fn parses_a_get_without_headers() {
        let (r, len) = complete(b"GET /view HTTP/1.0\r\n\r\n");
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/view"));
        assert!(r.body.is_empty());
        assert!(!r.keep_alive);
        assert_eq!(len, 22);
    }

    #[test]
    fn every_prefix_is_incomplete_and_every_split_parses_the_same() {
        for end in 0..POST.len() {
            assert_eq!(
                parse_request(&POST[..end]).unwrap(),
                Parsed::Incomplete,
                "{end}"
            );
        }
        // One parser fed a growing buffer, as a connection feeds it, split
        // at every point (and byte by byte).
        let whole = complete(POST);
        for split in 1..POST.len() {
            let mut p = RequestParser::new();
            assert_eq!(p.parse(&POST[..split]).unwrap(), Parsed::Incomplete);
            let Parsed::Complete { request, len } = p.parse(POST).unwrap() else {
                panic!("{split}: incomplete");
            };
            assert_eq!((request, len), whole.clone(), "{split}");
        }
        let mut p = RequestParser::new();
        for end in 1..POST.len() {
            assert_eq!(p.parse(&POST[..end]).unwrap(), Parsed::Incomplete);
        }
        assert!(matches!(p.parse(POST).unwrap(), Parsed::Complete { .. }));
    }

    #[test]
    fn pipelined_requests_come_out_one_at_a_time_in_order() {
        let mut buf = POST.to_vec();
        buf.extend_from_slice(
            b"GET /view HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\nPOST /pi",
        );
        let mut p = RequestParser::new();
        let mut seen = Vec::new();
        while let Parsed::Complete { request, len } = p.parse(&buf).unwrap() {
            seen.push((request.method, request.path, request.keep_alive));
            buf.drain(..len);
        }
        assert_eq!(
            seen,
            [
                ("POST".into(), "/ping".into(), true),
                ("GET".into(), "/view".into(), true),
                ("GET".into(), "/nope".into(), false),
            ]
        );
        assert_eq!(buf, b"POST /pi");
        assert_eq!(p.truncated(buf.len()), HttpError::TruncatedHead(8));
    }

    #[test]
    fn keep_alive_follows_version_and_connection_header() {
        let cases: &[(&[u8], bool)] = &[
            (b"GET /view HTTP/1.1\r\n\r\n", true),
            (b"GET /view HTTP/1.1\r\nConnection: close\r\n\r\n", false),
            (
                b"GET /view HTTP/1.1\r\nconnection: Keep-Alive, CLOSE\r\n\r\n",
                false,
            ),
            (
                b"GET /view HTTP/1.1\r\nConnection: keep-alive\r\n\r\n",
                true,
            ),
            (b"GET /view HTTP/1.1\r\nConnection: upgrade\r\n\r\n", true),
            (b"GET /view HTTP/1.0\r\n\r\n", false),
            (
                b"GET /view HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                true,
            ),
            (
                b"GET /view HTTP/1.0\r\nConnection: x, keep-alive\r\n\r\n",
                true,
            ),
            (b"GET /view HTTP/1.0\r\nConnection: close\r\n\r\n", false),
        ];
        for (raw, keep) in cases {
            assert_eq!(
                complete(raw).0.keep_alive,
                *keep,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn rejects_malformed_input_with_4xx() {
        let cases: &[(&[u8], u16)] = &[
            (b"garbage\r\n\r\n", 400),
            (b"\x00\x01\x02\xff\xfe\r\n\r\n", 400),
            (b"GET /view\r\n\r\n", 400),
            (b"GET view HTTP/1.1\r\n\r\n", 400),
            (b"GET /view HTTP/2.0\r\n\r\n", 400),
            (b"GET /view HTTP/1.1 extra\r\n\r\n", 400),
            (b"GET /view HTTP/1.1\r\nno colon\r\n\r\n", 400),
            (b"GET /view HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400),
            (b"POST /ping HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (b"POST /ping HTTP/1.1\r\nContent-Length: +1\r\n\r\n", 400),
            (
                b"POST /ping HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (b"POST /ping HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", 400),
            (b"POST /ping HTTP/1.1\r\nContent-Length: 65537\r\n\r\n", 413),
            (
                b"POST /ping HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                400,
            ),
            (
                b"POST /ping HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                411,
            ),
            (b"GET /view HTTP/1.1\r\n", 400),
        ];
        for (raw, status) in cases {
            let err = error(raw);
            assert_eq!(
                err.status(),
                *status,
                "{:?}: {err}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(HttpError::Timeout(Duration::from_secs(2)).status(), 408);
        // Arriving a byte at a time changes nothing: one parser fed every
        // prefix finds the same error (or, at the end, the same truncation).
        for (raw, _) in cases {
            let mut p = RequestParser::new();
            let mut found = None;
            for end in 1..=raw.len() {
                match p.parse(&raw[..end]) {
                    Ok(Parsed::Incomplete) => {}
                    Ok(c) => panic!("{:?}: {c:?}", String::from_utf8_lossy(raw)),
                    Err(e) => {
                        found = Some(e);
                        break;
                    }
                }
            }
            let found = found.unwrap_or_else(|| p.truncated(raw.len()));
            assert_eq!(found, error(raw), "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn errors_in_the_head_are_found_as_soon_as_the_head_is_complete() {
        // Bytes after the head do not matter: the answer need not wait for a
        // body that will not be read.
        let bad = b"GET /view HTTP/2.0\r\n\r\nmore";
        assert!(matches!(parse_request(bad), Err(HttpError::BadVersion(_))));
        let big = b"POST /ping HTTP/1.1\r\nContent-Length: 65537\r\n\r\n";
        assert!(matches!(
            parse_request(big),
            Err(HttpError::BodyTooLarge(65537))
        ));
    }

    #[test]
    fn truncation_is_told_apart_from_silence() {
        let mut p = RequestParser::new();
        let partial = b"POST /ping HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc";
        assert_eq!(p.parse(partial).unwrap(), Parsed::Incomplete);
        assert_eq!(
            p.truncated(partial.len()),
            HttpError::TruncatedBody {
                got: 3,
                expected: 10
            }
        );
        let p = RequestParser::new();
        assert_eq!(p.truncated(5), HttpError::TruncatedHead(5));
    }

    #[test]
    fn limits_the_head() {
        let mut raw = b"GET /view HTTP/1.1\r\n".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_HEAD * 2));
        assert_eq!(error(&raw).status(), 431);
        // Exactly at the limit: refused as soon as MAX_HEAD bytes are in,
        // without waiting for more.
        assert_eq!(error(&raw[..MAX_HEAD]).status(), 431);
        assert_eq!(parse_request(&raw[..MAX_HEAD - 1]), Ok(Parsed::Incomplete));
        // A head of exactly MAX_HEAD bytes (blank line included) is fine.
        let mut raw = b"GET /view HTTP/1.1\r\nX: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_HEAD - raw.len() - 4));
        raw.extend(b"\r\n\r\n");
        assert_eq!(raw.len(), MAX_HEAD);
        assert_eq!(complete(&raw).1, MAX_HEAD);
        let mut raw = b"GET /view HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            raw.extend(format!("X-{i}: y\r\n").as_bytes());
        }
        raw.extend(b"\r\n");
        assert_eq!(error(&raw).status(), 431);
    }

    #[test]
    fn the_largest_request_fits_the_largest_buffer() {
        let body = "x".repeat(MAX_BODY);
        let mut raw =
            format!("POST /ping HTTP/1.1\r\nContent-Length: {MAX_BODY}\r\nX: ").into_bytes();
        raw.extend(std::iter::repeat_n(b'a', MAX_HEAD - raw.len() - 4));
        raw.extend(b"\r\n\r\n");
        raw.extend(body.as_bytes());
        assert_eq!(raw.len(), MAX_REQUEST);
        assert_eq!(complete(&raw).1, MAX_REQUEST);
    }

    #[test]
    fn writes_a_complete_response() {
        let mut out = Vec::new();
        encode_response(&mut out, 404, &[], r#"{"error":"x"}"#, false);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 404 Not Found\r\n"), "{s}");
        assert!(s.contains("Content-Length: 14\r\n"), "{s}");
        assert!(s.contains("Connection: close\r\n"), "{s}");
        assert!(s.ends_with("\r\n\r\n{\"error\":\"x\"}\n"), "{s}");
        let mut out = Vec::new();
        encode_response(&mut out, 405, &[("Allow", "GET")], "{}", true);
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.contains("Connection: keep-alive\r\nAllow: GET\r\n\r\n{}\n"),
            "{s}"
        );
    }
}
