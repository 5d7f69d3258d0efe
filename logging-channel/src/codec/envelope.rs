//! `u32 body_len | u32 crc32(body) | body`: the framing shared by the header
//! and every entry.

use super::CodecError;
use crate::format::MAX_FRAME_LEN;

/// Bytes before the body: length and CRC.
pub const ENVELOPE_LEN: usize = 8;

/// Appends a frame whose body is produced by `body`, encoding in place so no
/// intermediate buffer is needed.
pub(crate) fn put_frame(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; ENVELOPE_LEN]);
    body(out);
    let body_bytes = &out[start + ENVELOPE_LEN..];
    let len = u32::try_from(body_bytes.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(body_bytes);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The stated body length and CRC of the frame at the start of `buf`, if the
/// envelope is complete.
pub(crate) fn read_envelope(buf: &[u8]) -> Option<(u32, u32)> {
    let len = buf.get(0..4)?;
    let crc = buf.get(4..8)?;
    Some((le_u32(len), le_u32(crc)))
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b);
    u32::from_le_bytes(a)
}

/// Checks the envelope at the start of `buf` (absolute offset `base`) and
/// returns the CRC-verified body and the whole frame's length, or `None` if
/// `buf` does not hold the whole frame yet.
pub(crate) fn open_frame(buf: &[u8], base: u64) -> Result<Option<(&[u8], usize)>, CodecError> {
    let Some((len, stored)) = read_envelope(buf) else {
        return Ok(None);
    };
    // Before looking at the body: a corrupt length must not make a streaming
    // caller wait for (or buffer) gigabytes.
    if len > MAX_FRAME_LEN {
        return Err(CodecError::FrameTooLarge {
            offset: base,
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let total = ENVELOPE_LEN + len as usize;
    let Some(body) = buf.get(ENVELOPE_LEN..total) else {
        return Ok(None);
    };
    let computed = crc32fast::hash(body);
    if computed != stored {
        return Err(CodecError::Crc {
            offset: base,
            stored,
            computed,
        });
    }
    Ok(Some((body, total)))
}
