//! A small, strict HTTP/1.1 subset: one request per connection, `Content-Length`
//! bodies only, hard limits on every part. Enough for a JSON API spoken by our
//! own client and by curl, small enough to read in one sitting, and with no
//! input that can make it allocate more than [`MAX_HEAD`] + [`MAX_BODY`].

use std::io::{self, Read, Write};

/// Request line plus headers.
pub const MAX_HEAD: usize = 8 * 1024;
/// Request body (and, on the client side, response body).
pub const MAX_BODY: usize = 64 * 1024;
/// More headers than this is not a client of ours.
pub const MAX_HEADERS: usize = 32;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// Why a request could not be read; [`HttpError::status`] is the answer to
/// send, if any.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("reading the request timed out")]
    Timeout(#[source] io::Error),
    #[error("reading the request failed")]
    Read(#[source] io::Error),
    #[error("connection closed before a request arrived")]
    Empty,
    #[error("connection closed in the middle of the request head ({0} bytes)")]
    TruncatedHead(usize),
    #[error("request head exceeds {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("request head is not UTF-8")]
    HeadNotUtf8,
    #[error("malformed request line {0:?}")]
    BadRequestLine(String),
    #[error("unsupported protocol version {0:?} (HTTP/1.0 or HTTP/1.1 only)")]
    BadVersion(String),
    #[error("malformed header line {0:?}")]
    BadHeader(String),
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("invalid Content-Length {0:?}")]
    BadContentLength(String),
    #[error("Transfer-Encoding is not supported; send a Content-Length")]
    TransferEncoding,
    #[error("body of {0} bytes exceeds the {MAX_BODY}-byte limit")]
    BodyTooLarge(u64),
    #[error("connection closed after {got} of {expected} body bytes")]
    TruncatedBody { got: usize, expected: usize },
}

impl HttpError {
    /// The status to answer with; `None` when there is no one to answer (the
    /// peer went away or never said anything).
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Read(_) | HttpError::Empty => None,
            HttpError::Timeout(_) => Some(408),
            HttpError::HeadTooLarge => Some(431),
            HttpError::TooManyHeaders => Some(431),
            HttpError::TransferEncoding => Some(411),
            HttpError::BodyTooLarge(_) => Some(413),
            HttpError::TruncatedHead(_)
            | HttpError::HeadNotUtf8
            | HttpError::BadRequestLine(_)
            | HttpError::BadVersion(_)
            | HttpError::BadHeader(_)
            | HttpError::BadContentLength(_)
            | HttpError::TruncatedBody { .. } => Some(400),
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn read_some(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, HttpError> {
    loop {
        match r.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if is_timeout(&e) => return Err(HttpError::Timeout(e)),
            Err(e) => return Err(HttpError::Read(e)),
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Reads one request. The reader's timeouts bound how long this takes.
pub fn read_request(r: &mut impl Read) -> Result<Request, HttpError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Err(HttpError::HeadTooLarge);
        }
        let n = read_some(r, &mut chunk)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                HttpError::Empty
            } else {
                HttpError::TruncatedHead(buf.len())
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if head_end + 4 > MAX_HEAD {
        return Err(HttpError::HeadTooLarge);
    }
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| HttpError::HeadNotUtf8)?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let (method, path) = parse_request_line(request_line)?;
    let (method, path) = (method.to_string(), path.to_string());

    let mut content_length: Option<u64> = None;
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
    }
    let expected = content_length.unwrap_or(0);
    if expected > MAX_BODY as u64 {
        return Err(HttpError::BodyTooLarge(expected));
    }
    let expected = expected as usize;
    let mut body = buf.split_off(head_end + 4);
    // One request per connection: bytes past the body are ignored.
    body.truncate(expected);
    while body.len() < expected {
        let want = (expected - body.len()).min(chunk.len());
        let n = read_some(r, &mut chunk[..want])?;
        if n == 0 {
            return Err(HttpError::TruncatedBody {
                got: body.len(),
                expected,
            });
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Request { method, path, body })
}

fn parse_request_line(line: &str) -> Result<(&str, &str), HttpError> {
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
    Ok((method, path))
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

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Writes a complete JSON response and asks the client to close.
pub fn write_response(
    w: &mut impl Write,
    status: u16,
    extra_headers: &[(&str, &str)],
    json: &str,
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason(status),
        json.len() + 1
    );
    for (name, value) in extra_headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(json);
    out.push('\n');
    w.write_all(out.as_bytes())?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> Result<Request, HttpError> {
        read_request(&mut &bytes[..])
    }

    #[test]
    fn parses_a_post_with_a_body() {
        let r = parse(b"POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/ping");
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn parses_a_get_without_headers() {
        let r = parse(b"GET /view HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/view"));
        assert!(r.body.is_empty());
    }

    /// A reader that hands out one byte at a time: the parser must not assume
    /// the head arrives in one read.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let Some((&b, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            buf[0] = b;
            self.0 = rest;
            Ok(1)
        }
    }

    #[test]
    fn parses_byte_by_byte() {
        let raw = b"POST /ping HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello";
        let r = read_request(&mut Trickle(raw)).unwrap();
        assert_eq!(r.body, b"hello");
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
            let err = parse(raw).unwrap_err();
            assert_eq!(err.status(), Some(*status), "{raw:?}: {err}");
        }
    }

    #[test]
    fn limits_the_head() {
        let mut raw = b"GET /view HTTP/1.1\r\n".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_HEAD * 2));
        assert_eq!(parse(&raw).unwrap_err().status(), Some(431));
        let mut raw = b"GET /view HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            raw.extend(format!("X-{i}: y\r\n").as_bytes());
        }
        raw.extend(b"\r\n");
        assert_eq!(parse(&raw).unwrap_err().status(), Some(431));
    }

    #[test]
    fn silence_gets_no_answer() {
        assert_eq!(parse(b"").unwrap_err().status(), None);
    }

    #[test]
    fn writes_a_complete_response() {
        let mut out = Vec::new();
        write_response(&mut out, 404, &[], r#"{"error":"x"}"#).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 404 Not Found\r\n"), "{s}");
        assert!(s.contains("Content-Length: 14\r\n"), "{s}");
        assert!(s.ends_with("\r\n\r\n{\"error\":\"x\"}\n"), "{s}");
    }
}
