//! Telling a truncated frame from a corrupt length field.
//!
//! When input ends inside a frame, either the writer was cut off (a crash,
//! a dropped connection: expected, not an error) or the frame's length
//! field was damaged so that it points past the end. The second case is
//! recognisable: the real body is all there, so some prefix of the
//! available bytes has the stored CRC and decodes cleanly. A genuine cut
//! passes that test only by a CRC coincidence (about 2^-32 per candidate
//! length, and the candidate must also decode strictly).

use super::entry_body::{decode_entry_body, min_entry_body};
use super::envelope::{ENVELOPE_LEN, read_envelope};
use super::header_body::{MIN_HEADER_BODY, decode_header_body};
use super::{CodecError, EntryEncoding, HEADER_FRAME_OFFSET};

/// Call when the input has ended and `decode_frame(buf, base_offset)`
/// returned `Ok(None)`. `Ok(())` means the frame is merely cut off;
/// `Err(CorruptLength)` means its length field is damaged.
pub fn check_partial_frame(buf: &[u8], base_offset: u64) -> Result<(), CodecError> {
    check_partial_frame_as(buf, base_offset, EntryEncoding::CURRENT)
}

/// [`check_partial_frame`] for a given encoding (an older log's).
pub fn check_partial_frame_as(
    buf: &[u8],
    base_offset: u64,
    enc: EntryEncoding,
) -> Result<(), CodecError> {
    check(buf, base_offset, min_entry_body(enc), |body, at| {
        decode_entry_body(body, at, enc).is_ok()
    })
}

/// Like [`check_partial_frame`] for the prefix: call when the input has
/// ended and `decode_prefix(buf)` returned `Ok(None)`.
pub fn check_partial_prefix(buf: &[u8]) -> Result<(), CodecError> {
    let Some(frame) = buf.get(HEADER_FRAME_OFFSET as usize..) else {
        return Ok(());
    };
    check(frame, HEADER_FRAME_OFFSET, MIN_HEADER_BODY, |body, at| {
        decode_header_body(body, at).is_ok()
    })
}

fn check(
    buf: &[u8],
    base: u64,
    min_body: usize,
    decodes: impl Fn(&[u8], u64) -> bool,
) -> Result<(), CodecError> {
    let Some((stated, stored)) = read_envelope(buf) else {
        return Ok(());
    };
    let available = &buf[ENVELOPE_LEN..];
    if available.len() >= stated as usize {
        // Not a partial frame: nothing to judge.
        return Ok(());
    }
    let body_at = base + ENVELOPE_LEN as u64;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&available[..min_body.min(available.len())]);
    for len in min_body..=available.len() {
        if len > min_body {
            hasher.update(&available[len - 1..len]);
        }
        if hasher.clone().finalize() == stored && decodes(&available[..len], body_at) {
            return Err(CodecError::CorruptLength {
                offset: base,
                stated,
                actual: u32::try_from(len).unwrap_or(u32::MAX),
            });
        }
    }
    Ok(())
}
