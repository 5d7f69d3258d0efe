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
}
