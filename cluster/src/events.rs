//! A process's machine-readable events: the JSON-lines file `understudy node --events` and
//! `understudy viewserver --events` append to (schema: docs/events.md). A line is written with
//! one `write`, so a reader may see the start of one being written: only complete lines (up to
//! the last newline) count.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::wait;

/// What went wrong reading an events file.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The file exists but could not be read.
    #[error("reading events {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A complete line is not a JSON object.
    #[error("events {} line {line_no}: not an event ({source}): {line:?}", path.display())]
    Bad {
        /// The file.
        path: PathBuf,
        /// The line's number, from 1.
        line_no: usize,
        /// The line.
        line: String,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
}

/// Whether `event` is called `name` (its `event` field).
pub fn is(event: &Value, name: &str) -> bool {
    event["event"] == name
}

/// One process's events file (which may not exist yet: no events so far).
#[derive(Debug, Clone)]
pub struct EventsFile {
    path: PathBuf,
}

impl EventsFile {
    /// The events file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The events so far, in order (complete lines only; none if the file does not exist yet).
    pub fn read(&self) -> Result<Vec<Value>, EventsError> {
        let text = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(EventsError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        let complete = text
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(&text[..0], |end| &text[..end]);
        complete
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
            .map(|(i, l)| {
                serde_json::from_slice(l).map_err(|source| EventsError::Bad {
                    path: self.path.clone(),
                    line_no: i + 1,
                    line: String::from_utf8_lossy(l).into_owned(),
                    source,
                })
            })
            .collect()
    }

    /// How many events so far: a mark for [`Self::wait_for`]'s `from`.
    pub fn count(&self) -> Result<usize, EventsError> {
        Ok(self.read()?.len())
    }

    /// The events called `name` so far, in order.
    pub fn named(&self, name: &str) -> Result<Vec<Value>, EventsError> {
        let mut events = self.read()?;
        events.retain(|e| is(e, name));
        Ok(events)
    }

    /// The first event after the first `from` that `pred` accepts, if there is one so far.
    pub fn find(
        &self,
        from: usize,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Option<Value>, EventsError> {
        Ok(self.read()?.into_iter().skip(from).find(|e| pred(e)))
    }

    /// Waits (up to `timeout`) for an event after the first `from` that `pred` accepts;
    /// `None` if none came in time.
    pub fn wait_for(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Option<Value>, EventsError> {
        self.wait_for_with(from, timeout, std::thread::sleep, pred)
    }

    /// [`Self::wait_for`], spending the time between polls in `pause` rather than asleep.
    pub fn wait_for_with(
        &self,
        from: usize,
        timeout: Duration,
        pause: impl FnMut(Duration),
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Option<Value>, EventsError> {
        wait::try_poll_with(timeout, wait::POLL, pause, || self.find(from, &pred))
    }

    /// Waits (up to `timeout`) for an event called `name` after the first `from`.
    pub fn wait_event(
        &self,
        name: &str,
        from: usize,
        timeout: Duration,
    ) -> Result<Option<Value>, EventsError> {
        self.wait_for(from, timeout, |e| is(e, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(text: &[u8]) -> (tempfile::TempDir, EventsFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.events");
        std::fs::write(&path, text).unwrap();
        (dir, EventsFile::new(path))
    }

    #[test]
    fn a_missing_file_has_no_events() {
        let dir = tempfile::tempdir().unwrap();
        let f = EventsFile::new(dir.path().join("none"));
        assert!(f.read().unwrap().is_empty());
        assert_eq!(f.count().unwrap(), 0);
    }

    #[test]
    fn only_complete_lines_count() {
        let (_d, f) = file_with(b"{\"event\":\"a\"}\n{\"event\":\"b\"}\n{\"event\":\"c\",\"x\":");
        let names: Vec<Value> = f
            .read()
            .unwrap()
            .iter()
            .map(|e| e["event"].clone())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(f.named("b").unwrap().len(), 1);
        assert!(f.named("c").unwrap().is_empty());
    }

    #[test]
    fn a_bad_complete_line_is_an_error_naming_it() {
        let (_d, f) = file_with(b"{\"event\":\"a\"}\nnot json\n");
        let e = f.read().unwrap_err();
        assert!(matches!(e, EventsError::Bad { line_no: 2, .. }), "{e}");
        assert!(e.to_string().contains("not json"), "{e}");
    }

    #[test]
    fn find_skips_the_first_from() {
        let (_d, f) = file_with(b"{\"event\":\"a\",\"n\":1}\n{\"event\":\"a\",\"n\":2}\n");
        assert_eq!(f.find(0, |e| is(e, "a")).unwrap().unwrap()["n"], 1);
        assert_eq!(f.find(1, |e| is(e, "a")).unwrap().unwrap()["n"], 2);
        assert!(f.find(2, |e| is(e, "a")).unwrap().is_none());
    }

    #[test]
    fn wait_sees_an_event_written_later_and_times_out_without_one() {
        let (_d, f) = file_with(b"");
        let path = f.path().to_path_buf();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut w = std::fs::OpenOptions::new().append(true).open(path).unwrap();
            w.write_all(b"{\"event\":\"started\"").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            w.write_all(b"}\n").unwrap();
        });
        let e = f.wait_event("started", 0, Duration::from_secs(5)).unwrap();
        assert_eq!(e.unwrap()["event"], "started");
        writer.join().unwrap();
        let none = f.wait_event("other", 0, Duration::from_millis(60)).unwrap();
        assert!(none.is_none());
    }
}
