//! A client that counts with `INCR counter` on one connection of the `kv` guest's Redis
//! protocol, recording every reply: what the network demo and the failover tests watch to see
//! that a connection survives a failover with no gap and no repeat.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What the client saw.
#[derive(Debug, Default)]
pub struct Counted {
    /// Every reply, in order, with when it arrived.
    pub replies: Vec<(i64, Instant)>,
    /// How the connection ended, if it did before the client was stopped.
    pub broke: Option<String>,
}

impl Counted {
    /// The replies' values.
    pub fn values(&self) -> Vec<i64> {
        self.replies.iter().map(|(n, _)| *n).collect()
    }

    /// Whether the replies are exactly 1, 2, 3, ... (no gap, no repeat).
    pub fn counts_from_one(&self) -> bool {
        self.replies
            .iter()
            .zip(1..)
            .all(|((n, _), want)| *n == want)
    }
}

/// What the kernel's TCP says about a client's connection (`TCP_INFO`): how a failover looked
/// from the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpState {
    /// Segments retransmitted over the connection's life.
    pub total_retrans: u32,
    /// The retransmission timeout now, in milliseconds.
    pub rto_ms: u32,
    /// The smoothed round-trip time, in microseconds.
    pub rtt_us: u32,
}

/// Reads `TCP_INFO` of `stream`.
pub fn tcp_state(stream: &TcpStream) -> std::io::Result<TcpState> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero `tcp_info` is a valid value of this plain C struct.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>())
        .map_err(|_| std::io::Error::other("tcp_info does not fit a socklen_t"))?;
    // SAFETY: `info` is a writable `tcp_info` of `len` bytes for the whole call, and the
    // descriptor belongs to `stream`, alive for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(TcpState {
        total_retrans: info.tcpi_total_retrans,
        rto_ms: info.tcpi_rto / 1000,
        rtt_us: info.tcpi_rtt,
    })
}

/// Sends `INCR counter` on `stream` and records each reply in `seen`, pausing `pace` between
/// requests, until `stop` is set or the connection fails (then `seen.broke` says how). Each
/// reply may take up to `patience` (a failover stalls the connection for a while).
pub fn count_on(
    stream: TcpStream,
    stop: &AtomicBool,
    seen: &Mutex<Counted>,
    pace: Duration,
    patience: Duration,
) {
    let lock = || seen.lock().unwrap_or_else(|p| p.into_inner());
    let fail = |why: String| lock().broke = Some(why);
    if let Err(e) = stream.set_read_timeout(Some(patience)) {
        return fail(format!("read timeout: {e}"));
    }
    let mut w = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot clone the connection: {e}")),
    };
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(Ordering::Acquire) {
        if let Err(e) = w.write_all(b"*2\r\n$4\r\nINCR\r\n$7\r\ncounter\r\n") {
            return fail(format!("write: {e}"));
        }
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => return fail("the server closed the connection".into()),
            Ok(_) => {}
            Err(e) => return fail(format!("read: {e}")),
        }
        match line.trim_end().strip_prefix(':').map(str::parse::<i64>) {
            Some(Ok(n)) => lock().replies.push((n, Instant::now())),
            _ => return fail(format!("unexpected reply {:?}", line.trim_end())),
        }
        if !pace.is_zero() {
            std::thread::sleep(pace);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_from_one_means_no_gap_and_no_repeat() {
        let at = Instant::now();
        let of = |v: &[i64]| Counted {
            replies: v.iter().map(|n| (*n, at)).collect(),
            broke: None,
        };
        assert!(of(&[1, 2, 3]).counts_from_one());
        assert!(of(&[]).counts_from_one());
        assert!(!of(&[1, 3]).counts_from_one(), "a gap");
        assert!(!of(&[1, 2, 2, 3]).counts_from_one(), "a repeat");
        assert!(!of(&[2, 3]).counts_from_one(), "not from one");
        assert_eq!(of(&[1, 2]).values(), vec![1, 2]);
    }

    #[test]
    fn tcp_state_reads_a_live_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        (&client).write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        std::io::Read::read_exact(&mut server, &mut b).unwrap();
        let s = tcp_state(&client).unwrap();
        assert_eq!(s.total_retrans, 0, "nothing was lost on loopback");
        // Linux never goes below its 200 ms minimum RTO.
        assert!(s.rto_ms >= 200, "{s:?}");
    }
}
