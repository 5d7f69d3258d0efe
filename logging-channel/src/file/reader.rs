use std::path::{Path, PathBuf};

use super::LogError;
use crate::codec;
use crate::format::{EndReason, Entry, EntryKind, Frame, Header, LogState, RESET_SINCE_VERSION};

/// A whole log held in memory (logs are small), with its prefix validated.
#[derive(Debug)]
pub struct LogReader {
    bytes: Vec<u8>,
    header: Header,
    state: LogState,
    frames_start: usize,
    /// Named in every error, when the log came from a file.
    path: Option<PathBuf>,
}

/// How the byte stream after the last whole frame looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Tail {
    /// The log ends exactly at a frame boundary.
    Clean,
    /// The log ends inside the frame starting at `offset`; its
    /// `trailing_bytes` bytes are ignored (a cut-off write, not corruption).
    Truncated {
        /// Where the partial frame starts.
        offset: u64,
        /// How many bytes of it are present.
        trailing_bytes: u64,
    },
}

/// Whether the log records a whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Completeness {
    /// State byte Complete, last frame is `End`, tail clean.
    Complete,
    /// The run is not all there, for `reason`.
    Incomplete {
        /// The most telling reason it is incomplete.
        reason: IncompleteReason,
    },
}

/// Why a log is not complete. When several apply, the first listed wins, as
/// it says the most about what is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum IncompleteReason {
    /// The log ends inside a frame (the recorder was cut off mid-write).
    TruncatedTail {
        /// Where the partial frame starts.
        offset: u64,
        /// How many bytes of it are present.
        trailing_bytes: u64,
    },
    /// No `End` entry: the recorder stopped before the run ended.
    NoEnd,
    /// An `End` entry is present but the recorder never marked the log
    /// complete (it died between appending `End` and `finish`).
    StateByteIncomplete,
}

impl std::fmt::Display for IncompleteReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TruncatedTail {
                offset,
                trailing_bytes,
            } => write!(
                f,
                "log truncated at byte {offset} ({trailing_bytes} bytes of a partial frame)"
            ),
            Self::NoEnd => write!(f, "log has no End entry"),
            Self::StateByteIncomplete => write!(f, "log was not closed cleanly by the recorder"),
        }
    }
}

impl LogReader {
    /// Reads and validates the prefix of the log at `path`. Errors name the
    /// path and the offset.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let bytes = std::fs::read(path).map_err(|source| LogError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::new(bytes, Some(path.to_path_buf()))
    }

    /// Validates the prefix of a log already in memory (tests, logs received whole); errors name
    /// no path.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, LogError> {
        Self::new(bytes, None)
    }

    fn new(bytes: Vec<u8>, path: Option<PathBuf>) -> Result<Self, LogError> {
        let decoded = codec::decode_prefix(&bytes).and_then(|prefix| match prefix {
            Some(p) => Ok(Some(p)),
            None => codec::check_partial_prefix(&bytes).map(|()| None),
        });
        match decoded {
            Ok(Some((header, state, frames_start))) => Ok(Self {
                bytes,
                header,
                state,
                frames_start,
                path,
            }),
            Ok(None) => Err(LogError::TruncatedHeader {
                offset: bytes.len() as u64,
            }
            .in_file(path.as_deref())),
            Err(e) => Err(LogError::from(e).in_file(path.as_deref())),
        }
    }

    /// The log's header, validated at open.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The state byte as written: see [`LogReader::completeness`] for
    /// whether the log is actually complete.
    pub fn state(&self) -> LogState {
        self.state
    }

    /// Size of the whole log, partial last frame included.
    pub fn total_bytes(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Iterates frames with their offsets, validating seq (consecutive from
    /// 0) and that nothing follows `End`. Ends after the first error. A
    /// partial frame at the end is not an error: iteration stops and
    /// [`LogReader::tail`] reports it.
    pub fn frames(&self) -> Frames<'_> {
        Frames {
            reader: self,
            pos: self.frames_start,
            next_seq: 0,
            after_end: false,
            done: false,
        }
    }

    /// How the log ends. Scans all frames on every call (independent of any
    /// `frames()` iteration); `Err` is the first corruption met on the way,
    /// since a log corrupt in the middle has no meaningful tail.
    pub fn tail(&self) -> Result<Tail, LogError> {
        self.scan().map(|s| s.tail)
    }

    /// Complete when the state byte is Complete, the last frame is `End`
    /// and the tail is clean. Scans all frames; `Err` as for
    /// [`LogReader::tail`].
    pub fn completeness(&self) -> Result<Completeness, LogError> {
        let scan = self.scan()?;
        let reason = if let Tail::Truncated {
            offset,
            trailing_bytes,
        } = scan.tail
        {
            IncompleteReason::TruncatedTail {
                offset,
                trailing_bytes,
            }
        } else if scan.last_kind != Some(EntryKind::End) {
            IncompleteReason::NoEnd
        } else if self.state != LogState::Complete {
            IncompleteReason::StateByteIncomplete
        } else {
            return Ok(Completeness::Complete);
        };
        Ok(Completeness::Incomplete { reason })
    }

    fn scan(&self) -> Result<Scan, LogError> {
        let mut frames = self.frames();
        let mut last_kind = None;
        for item in frames.by_ref() {
            last_kind = Some(item?.1.entry.kind());
        }
        let end = frames.pos;
        let tail = if end == self.bytes.len() {
            Tail::Clean
        } else {
            Tail::Truncated {
                offset: end as u64,
                trailing_bytes: (self.bytes.len() - end) as u64,
            }
        };
        Ok(Scan { last_kind, tail })
    }

    fn err(&self, e: LogError) -> LogError {
        e.in_file(self.path.as_deref())
    }
}

struct Scan {
    last_kind: Option<EntryKind>,
    tail: Tail,
}

/// Iterator over the frames of a [`LogReader`]; see [`LogReader::frames`].
#[derive(Debug)]
pub struct Frames<'a> {
    reader: &'a LogReader,
    /// Offset of the next frame; after a clean stop, where the frames end.
    pos: usize,
    next_seq: u64,
    after_end: bool,
    done: bool,
}

impl Frames<'_> {
    fn next_frame(&mut self) -> Result<Option<(u64, Frame)>, LogError> {
        let bytes = &self.reader.bytes;
        let rest = &bytes[self.pos..];
        if rest.is_empty() {
            return Ok(None);
        }
        let offset = self.pos as u64;
        let enc = codec::EntryEncoding::of_version(self.reader.header.format_version);
        let Some((frame, len)) = codec::decode_frame_as(rest, offset, enc)? else {
            // End of input inside a frame: a cut-off write unless the length
            // field is what is broken.
            codec::check_partial_frame_as(rest, offset, enc)?;
            return Ok(None);
        };
        if self.after_end {
            return Err(LogError::AfterEnd { offset });
        }
        let kind = frame.entry.kind();
        let version = self.reader.header.format_version;
        if kind.since_version() > version {
            return Err(LogError::KindNotInVersion {
                offset: offset + codec::ENVELOPE_LEN as u64,
                kind: kind as u8,
                name: kind.name(),
                version,
            });
        }
        if let Entry::End {
            reason: EndReason::Reset { .. },
            ..
        } = &frame.entry
            && version < RESET_SINCE_VERSION
        {
            return Err(LogError::KindNotInVersion {
                offset: offset + codec::ENVELOPE_LEN as u64,
                kind: kind as u8,
                name: "end (reset)",
                version,
            });
        }
        if frame.seq != self.next_seq {
            return Err(LogError::SeqGap {
                offset,
                expected: self.next_seq,
                found: frame.seq,
            });
        }
        self.next_seq += 1;
        self.after_end = matches!(frame.entry, Entry::End { .. });
        self.pos += len;
        Ok(Some((offset, frame)))
    }
}

impl Iterator for Frames<'_> {
    type Item = Result<(u64, Frame), LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self
            .next_frame()
            .map_err(|e| self.reader.err(e))
            .transpose();
        self.done = !matches!(item, Some(Ok(_)));
        item
    }
}

impl std::iter::FusedIterator for Frames<'_> {}
