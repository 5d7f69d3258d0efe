//! What a child writes to a pipe, kept as it arrives by a reader thread: all of it in a buffer,
//! and each line also sent, stamped with when it arrived, to whoever shows them live.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::{Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Which of a child's streams a [`Line`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output: a node's released guest output.
    Stdout,
    /// Standard error: the process's log, for people.
    Stderr,
}

/// One line a child wrote, when it arrived.
#[derive(Debug, Clone)]
pub struct Line {
    /// The child's label ([`crate::NodeSpec::label`], [`crate::ViewserverSpec::label`]).
    pub who: String,
    /// The line without its line ending (invalid UTF-8 replaced).
    pub text: String,
    /// When the reader got it.
    pub at: Instant,
    /// Which stream it came from.
    pub stream: Stream,
}

#[derive(Debug, Default)]
struct Buffer {
    bytes: Vec<u8>,
    /// The stream reached its end (the writer closed it, or reading failed).
    closed: bool,
}

/// Everything a child wrote to one stream so far, kept by a reader thread.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    inner: Arc<(Mutex<Buffer>, Condvar)>,
}

impl Captured {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        // A reader thread that panicked left whole lines behind: use them.
        self.inner.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A stream that has ended without a byte (one that was never piped).
    pub(crate) fn ended() -> Self {
        let c = Self::default();
        c.close();
        c
    }

    /// A copy of the bytes so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }

    /// The bytes so far as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.lock().bytes).into_owned()
    }

    /// How many bytes so far.
    pub fn len(&self) -> usize {
        self.lock().bytes.len()
    }

    /// Whether nothing was written so far.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits (up to `timeout`) until the stream has ended, so that everything the child wrote is
    /// here; returns whether it has.
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        let (_, cv) = &*self.inner;
        let guard = self.lock();
        let (guard, _) = cv
            .wait_timeout_while(guard, timeout, |b| !b.closed)
            .unwrap_or_else(PoisonError::into_inner);
        guard.closed
    }

    fn push(&self, line: &[u8]) {
        self.lock().bytes.extend_from_slice(line);
    }

    fn close(&self) {
        self.lock().closed = true;
        self.inner.1.notify_all();
    }
}

/// Where a reader thread sends what it reads besides the buffer.
#[derive(Debug, Default)]
pub(crate) struct Taps {
    /// Every line, as it arrives.
    pub lines: Option<Sender<Line>>,
    /// The first line only (to learn a viewserver's address from it).
    pub first: Option<SyncSender<String>>,
}

/// Starts a thread that reads `stream` line by line into a new [`Captured`] until its end.
pub(crate) fn capture(
    who: &str,
    kind: Stream,
    stream: impl Read + Send + 'static,
    mut taps: Taps,
) -> std::io::Result<Captured> {
    let captured = Captured::default();
    let into = captured.clone();
    let who = who.to_string();
    let name = format!(
        "{who}-{}",
        if kind == Stream::Stdout { "out" } else { "err" }
    );
    std::thread::Builder::new().name(name).spawn(move || {
        let mut r = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    into.push(&buf);
                    let text = String::from_utf8_lossy(&buf).trim_end().to_string();
                    if let Some(first) = taps.first.take() {
                        let _ = first.try_send(text.clone());
                    }
                    if let Some(tx) = &taps.lines {
                        let line = Line {
                            who: who.clone(),
                            text,
                            at: Instant::now(),
                            stream: kind,
                        };
                        if tx.send(line).is_err() {
                            // Nobody listens any more; the buffer still gets everything.
                            taps.lines = None;
                        }
                    }
                }
            }
        }
        into.close();
    })?;
    Ok(captured)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, sync_channel};

    #[test]
    fn keeps_every_byte_and_sends_each_line() {
        let (tx, rx) = channel();
        let (first_tx, first_rx) = sync_channel(1);
        let input: &[u8] = b"one\ntwo \xff\nthree";
        let c = capture(
            "n",
            Stream::Stdout,
            input,
            Taps {
                lines: Some(tx),
                first: Some(first_tx),
            },
        )
        .unwrap();
        assert!(c.wait_closed(Duration::from_secs(5)));
        assert_eq!(c.bytes(), input);
        assert_eq!(c.len(), input.len());
        assert_eq!(first_rx.recv().unwrap(), "one");
        let lines: Vec<String> = rx.iter().map(|l| l.text).collect();
        assert_eq!(lines, ["one", "two \u{fffd}", "three"]);
    }
}
