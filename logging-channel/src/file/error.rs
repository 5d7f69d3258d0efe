use std::path::PathBuf;

use thiserror::Error;

use crate::codec::CodecError;

/// Failure reading or writing a log file.
#[derive(Debug, Error)]
pub enum LogError {
    /// The bytes are not a valid log (corruption, another version, not a log).
    #[error(transparent)]
    Codec(#[from] CodecError),

    /// Reading or writing the file at `path` failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file the operation was on.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },

    /// The input ends before the header is complete. Not called corruption:
    /// it is what a recorder that died right after creating the file leaves.
    #[error("log truncated at byte {offset}: it ends inside the header")]
    TruncatedHeader {
        /// Where the bytes end.
        offset: u64,
    },

    /// A frame's `seq` is not the previous one plus 1 (the first is 0): a frame was lost or
    /// duplicated although each frame is valid on its own.
    #[error("log corrupt at byte {offset}: expected entry seq {expected}, found {found}")]
    SeqGap {
        /// Where the frame starts.
        offset: u64,
        /// The seq the frame should have had.
        expected: u64,
        /// The seq it has.
        found: u64,
    },

    /// A frame follows the `End` entry, which must be the last.
    #[error("log corrupt at byte {offset}: entry after the End entry")]
    AfterEnd {
        /// Where the frame after `End` starts.
        offset: u64,
    },

    /// `LogWriter::append` was given an entry no reader would accept (`Entry::check`), e.g. a
    /// network frame longer than `MAX_NET_FRAME`; nothing was written.
    #[error("cannot write entry #{seq} at byte {offset}: {what}")]
    InvalidEntry {
        /// Where the entry would have started.
        offset: u64,
        /// The seq it would have had.
        seq: u64,
        /// What is wrong with it.
        what: String,
    },

    /// A frame's entry kind is newer than the log's format version (e.g. a `net-rx` entry in a
    /// version-1 log): no writer of that version writes it, so the bytes are damaged or the
    /// writer is broken.
    #[error(
        "log corrupt at byte {offset}: entry kind {kind} ({name}) does not exist in log format version {version}, which this log's header states"
    )]
    KindNotInVersion {
        /// Where the kind byte is.
        offset: u64,
        /// The kind byte.
        kind: u8,
        /// The kind's name.
        name: &'static str,
        /// The log's format version.
        version: u16,
    },

    /// `LogWriter::finish` was called without an `End` entry; the log stays
    /// Incomplete because only a log that says how the run ended is complete.
    #[error(
        "cannot finish the log: no End entry was appended (next entry would be at byte {offset})"
    )]
    MissingEnd {
        /// Where the next frame would have started (the end of the log so far).
        offset: u64,
    },

    /// Any of the above, for a log read from or written to a file.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The log file.
        path: PathBuf,
        /// The error itself.
        #[source]
        source: Box<LogError>,
    },
}

impl LogError {
    /// The byte offset the error is about, if it is about bytes.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Self::Codec(e) => Some(e.offset()),
            Self::Io { .. } => None,
            Self::TruncatedHeader { offset }
            | Self::SeqGap { offset, .. }
            | Self::AfterEnd { offset }
            | Self::InvalidEntry { offset, .. }
            | Self::KindNotInVersion { offset, .. }
            | Self::MissingEnd { offset } => Some(*offset),
            Self::InFile { source, .. } => source.offset(),
        }
    }

    /// The error without its `InFile` context.
    pub fn without_path(&self) -> &LogError {
        match self {
            Self::InFile { source, .. } => source.without_path(),
            other => other,
        }
    }

    pub(crate) fn in_file(self, path: Option<&std::path::Path>) -> Self {
        match (path, self) {
            (
                Some(path),
                e @ (Self::Codec(_)
                | Self::TruncatedHeader { .. }
                | Self::SeqGap { .. }
                | Self::AfterEnd { .. }
                | Self::InvalidEntry { .. }
                | Self::KindNotInVersion { .. }
                | Self::MissingEnd { .. }),
            ) => Self::InFile {
                path: path.to_path_buf(),
                source: Box::new(e),
            },
            // Io already names its path; InFile already has context.
            (_, e) => e,
        }
    }
}
