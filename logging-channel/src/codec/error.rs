use thiserror::Error;

/// A reason the bytes are not a valid log. Every variant names the absolute
/// byte offset (in the file or stream) where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CodecError {
    #[error("not an understudy log: bad magic at byte {offset}")]
    BadMagic { offset: u64 },

    #[error(
        "unsupported log format version {found} (this build reads {supported}); version field at byte {offset}"
    )]
    UnsupportedVersion {
        offset: u64,
        found: u16,
        supported: u16,
    },

    #[error(
        "log corrupt at byte {offset}: CRC mismatch (stored {stored:#010x}, computed {computed:#010x})"
    )]
    Crc {
        offset: u64,
        stored: u32,
        computed: u32,
    },

    #[error("log corrupt at byte {offset}: frame length {len} exceeds the maximum of {max}")]
    FrameTooLarge { offset: u64, len: u32, max: u32 },

    /// The length field disagrees with the body actually present: the bytes
    /// up to `actual` form a complete, CRC-valid body but the field says
    /// `stated`, which runs past the end of the input.
    #[error(
        "log corrupt at byte {offset}: frame length field says {stated} bytes, but a complete frame body of {actual} bytes ends at the end of the log"
    )]
    CorruptLength {
        offset: u64,
        stated: u32,
        actual: u32,
    },

    #[error("log corrupt at byte {offset}: unknown entry kind {kind}")]
    UnknownKind { offset: u64, kind: u8 },

    #[error("log corrupt at byte {offset}: {what}")]
    Malformed { offset: u64, what: String },

    #[error("log corrupt at byte {offset}: state byte is {value:#04x} (expected 0 or 1)")]
    BadState { offset: u64, value: u8 },
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
