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
mod tests;

pub use envelope::ENVELOPE_LEN;
pub use error::CodecError;
pub use partial::{check_partial_frame, check_partial_prefix};
pub use prefix::{decode_prefix, encode_prefix};

use crate::format::{Entry, Frame};

/// Offset of the state byte, which the recorder rewrites in place on a
/// clean close.
pub const STATE_OFFSET: u64 = 8;

/// Offset of the header frame (its length field).
pub const HEADER_FRAME_OFFSET: u64 = 12;

/// Offset of the header's `u16 format_version`, the first body byte of the
/// header frame. Fixed forever so any future reader can find it.
pub const VERSION_OFFSET: u64 = HEADER_FRAME_OFFSET + 8;

/// Appends one entry frame to `out`. Does not enforce `MAX_FRAME_LEN`;
/// writers must (`LogWriter` does), as every reader rejects larger frames.
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) {
    encode_entry(frame.seq, frame.t_ns, frame.state_check, &frame.entry, out);
}

/// `encode_frame` without building a `Frame` (which would clone the entry).
pub(crate) fn encode_entry(
    seq: u64,
    t_ns: u64,
    state_check: u64,
    entry: &Entry,
    out: &mut Vec<u8>,
) {
    envelope::put_frame(out, |body| {
        entry_body::put_entry_body(body, seq, t_ns, state_check, entry)
    });
}

/// Decodes one entry frame at the start of `buf`; `base_offset` is where
/// `buf` starts in the file or stream (for error messages).
///
/// `Ok(None)`: not enough bytes yet (a partial frame). On success, also
/// returns how many bytes the frame occupied. Never panics on any input.
pub fn decode_frame(buf: &[u8], base_offset: u64) -> Result<Option<(Frame, usize)>, CodecError> {
    let Some((body, len)) = envelope::open_frame(buf, base_offset)? else {
        return Ok(None);
    };
    let frame = entry_body::decode_entry_body(body, base_offset + envelope::ENVELOPE_LEN as u64)?;
    Ok(Some((frame, len)))
}
