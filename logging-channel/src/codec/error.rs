use thiserror::Error;

use crate::format::EntryKind;

/// "1", or "1 and 2", or "1 to 3".
fn versions(oldest: u16, newest: u16) -> String {
    match newest.saturating_sub(oldest) {
        0 => format!("{newest}"),
        1 => format!("{oldest} and {newest}"),
        _ => format!("{oldest} to {newest}"),
    }
}

/// A reason the bytes are not a valid log. Every variant names the absolute
/// byte offset (in the file or stream) where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    /// The first bytes are not `MAGIC`: not a log at all (checked as soon as they arrive).
    #[error("not an understudy log: bad magic at byte {offset}")]
    BadMagic {
        /// Where the mismatch was found: always 0.
        offset: u64,
    },

    /// The header's `format_version` is not one this build reads (a newer or older log), or a
    /// channel peer's protocol version is not this build's; refused before the envelope is
    /// trusted, since another version may frame it differently.
    #[error(
        "unsupported log format version {found} (this build reads {}); version field at byte {offset}",
        versions(*oldest, *supported)
    )]
    UnsupportedVersion {
        /// Where the version field is: `VERSION_OFFSET` in a log file.
        offset: u64,
        /// The version the log says it has.
        found: u16,
        /// The oldest version this build reads (`OLDEST_FORMAT_VERSION` for a log file).
        oldest: u16,
        /// The newest version this build reads (`FORMAT_VERSION` for a log file).
        supported: u16,
    },

    /// A frame's body does not match its stored CRC: the bytes were damaged.
    #[error(
        "log corrupt at byte {offset}: CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
    )]
    Crc {
        /// Where the frame (its length field) starts.
        offset: u64,
        /// The CRC in the frame.
        stored: u32,
        /// The CRC of the body as read.
        computed: u32,
    },

    /// A frame's length field exceeds the cap; refused before anything is allocated.
    #[error("log corrupt at byte {offset}: frame length {len} exceeds the maximum of {max}")]
    FrameTooLarge {
        /// Where the frame (its length field) starts.
        offset: u64,
        /// The length the field states.
        len: u32,
        /// `MAX_FRAME_LEN`.
        max: u32,
    },

    /// The length field disagrees with the body actually present: the bytes
    /// up to `actual` form a complete, CRC-valid body but the field says
    /// `stated`, which runs past the end of the input.
    #[error(
        "log corrupt at byte {offset}: frame length field says {stated} bytes, but a complete frame body of {actual} bytes ends at the end of the log"
    )]
    CorruptLength {
        /// Where the frame (its length field) starts.
        offset: u64,
        /// The body length the field states.
        stated: u32,
        /// The length of the complete, CRC-valid body actually present.
        actual: u32,
    },

    /// A CRC-valid entry body whose kind byte is no `EntryKind` (0, or beyond the last kind):
    /// a writer bug or a newer format. (A newer log format is normally refused at its version
    /// field before any entry is read; this is what a stream without one, or a writer that
    /// forgot to bump the version, meets.)
    #[error(
        "log corrupt at byte {offset}: unknown entry kind {kind} (this build knows kinds 1 to {})",
        EntryKind::ALL.len()
    )]
    UnknownKind {
        /// Where the kind byte is.
        offset: u64,
        /// The kind byte found.
        kind: u8,
    },

    /// A CRC-valid body that does not decode strictly (bad tag, bool, UTF-8, length, trailing
    /// bytes), or non-zero reserved bytes in the prefix.
    #[error("log corrupt at byte {offset}: {what}")]
    Malformed {
        /// Where the offending field starts.
        offset: u64,
        /// Which field, and what is wrong with it.
        what: String,
    },

    /// The state byte is neither 0 (incomplete) nor 1 (complete).
    #[error("log corrupt at byte {offset}: state byte is {value:#04x} (expected 0 or 1)")]
    BadState {
        /// Where the state byte is: always `STATE_OFFSET`.
        offset: u64,
        /// The byte found.
        value: u8,
    },
}

impl CodecError {
    /// The byte offset the error is about.
    pub fn offset(&self) -> u64 {
        match self {
            Self::BadMagic { offset }
            | Self::UnsupportedVersion { offset, .. }
            | Self::Crc { offset, .. }
            | Self::FrameTooLarge { offset, .. }
            | Self::CorruptLength { offset, .. }
            | Self::UnknownKind { offset, .. }
            | Self::Malformed { offset, .. }
            | Self::BadState { offset, .. } => *offset,
        }
    }
}
