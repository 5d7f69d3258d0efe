//! Pure, I/O-free encoding and decoding of the log format, usable on a file
//! image and on a byte stream alike: decoders take a byte slice and answer
//! "need more bytes" (`Ok(None)`) when a frame is incomplete.

mod entry_body;
pub(crate) mod envelope;
mod error;
mod header_body;
mod partial;
mod prefix;
pub(crate) mod wire;

#[cfg(test)]
mod compact_tests;
#[cfg(test)]
mod tests;

pub use envelope::ENVELOPE_LEN;
pub use error::CodecError;
pub use partial::{check_partial_frame, check_partial_frame_as, check_partial_prefix};
pub use prefix::{decode_prefix, encode_prefix};

use crate::format::{COMPACT_SINCE_VERSION, Entry, Frame};

/// How an entry body lays out its counts (`seq`, `t_ns`, exits, the instruction counter,
/// values, lengths); everything else is the same in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryEncoding {
    /// Fixed-width little-endian `u64`/`u32` (log format versions 1 to 3).
    Fixed,
    /// LEB128 varints (version 4 on, and the logging channel): a timer tick's three entries
    /// take ~100 bytes instead of 137.
    Compact,
}

impl EntryEncoding {
    /// The encoding this build writes, in files and on the logging channel.
    pub const CURRENT: Self = Self::Compact;

    /// The encoding of a log whose header states `version`.
    pub fn of_version(version: u16) -> Self {
        if version >= COMPACT_SINCE_VERSION {
            Self::Compact
        } else {
            Self::Fixed
        }
    }
}

/// Offset of the state byte, which the recorder rewrites in place on a
/// clean close.
pub const STATE_OFFSET: u64 = 8;

/// Offset of the header frame (its length field).
pub const HEADER_FRAME_OFFSET: u64 = 12;

/// Offset of the header's `u16 format_version`, the first body byte of the
/// header frame. Fixed forever so any future reader can find it.
pub const VERSION_OFFSET: u64 = HEADER_FRAME_OFFSET + 8;

/// Appends one entry frame to `out`, in this build's encoding. Does not enforce
/// `MAX_FRAME_LEN`; writers must (`LogWriter` does), as every reader rejects larger frames.
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) {
    encode_frame_as(frame, EntryEncoding::CURRENT, out);
}

/// [`encode_frame`] in a given encoding (e.g. to size a frame as an older log holds it).
pub fn encode_frame_as(frame: &Frame, enc: EntryEncoding, out: &mut Vec<u8>) {
    encode_entry(
        enc,
        frame.seq,
        frame.t_ns,
        frame.state_check,
        &frame.entry,
        out,
    );
}

/// `encode_frame_as` without building a `Frame` (which would clone the entry).
pub(crate) fn encode_entry(
    enc: EntryEncoding,
    seq: u64,
    t_ns: u64,
    state_check: u64,
    entry: &Entry,
    out: &mut Vec<u8>,
) {
    envelope::put_frame(out, |body| {
        entry_body::put_entry_body(body, enc, seq, t_ns, state_check, entry)
    });
}

/// Decodes one entry frame in this build's encoding at the start of `buf`; `base_offset` is
/// where `buf` starts in the file or stream (for error messages).
///
/// `Ok(None)`: not enough bytes yet (a partial frame). On success, also
/// returns how many bytes the frame occupied. Never panics on any input.
pub fn decode_frame(buf: &[u8], base_offset: u64) -> Result<Option<(Frame, usize)>, CodecError> {
    decode_frame_as(buf, base_offset, EntryEncoding::CURRENT)
}

/// [`decode_frame`] for a given encoding (an older log's).
pub fn decode_frame_as(
    buf: &[u8],
    base_offset: u64,
    enc: EntryEncoding,
) -> Result<Option<(Frame, usize)>, CodecError> {
    let Some((body, len)) = envelope::open_frame(buf, base_offset)? else {
        return Ok(None);
    };
    let frame =
        entry_body::decode_entry_body(body, base_offset + envelope::ENVELOPE_LEN as u64, enc)?;
    Ok(Some((frame, len)))
}
