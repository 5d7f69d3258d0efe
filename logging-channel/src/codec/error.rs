use thiserror::Error;

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

    /// The header's `format_version` is not the one this build reads (a newer or older log);
    /// refused before its envelope is trusted, since another version may frame it differently.
    #[error(
        "unsupported log format version {found} (this build reads {supported}); version field at byte {offset}"
    )]
    UnsupportedVersion {
        /// Where the version field is: always `VERSION_OFFSET`.
        offset: u64,
        /// The version the log says it has.
        found: u16,
        /// `FORMAT_VERSION`.
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
    /// a writer bug or a newer format.
    #[error("log corrupt at byte {offset}: unknown entry kind {kind}")]
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
