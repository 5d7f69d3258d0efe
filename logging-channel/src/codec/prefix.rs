//! The file prefix: magic, state byte, reserved bytes, header frame.

use super::envelope::{ENVELOPE_LEN, open_frame, put_frame};
use super::header_body::{decode_header_body, put_header_body};
use super::{CodecError, HEADER_FRAME_OFFSET, STATE_OFFSET, VERSION_OFFSET};
use crate::format::{FORMAT_VERSION, Header, LogState, MAGIC, OLDEST_FORMAT_VERSION};

const RESERVED: std::ops::Range<usize> = 9..12;

/// Magic, `state`, the reserved zeros and the header frame: the bytes a log starts with.
/// Does not check `header.format_version`; `LogWriter` does.
pub fn encode_prefix(header: &Header, state: LogState) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&MAGIC);
    out.push(state as u8);
    out.extend_from_slice(&[0; 3]);
    put_frame(&mut out, |body| put_header_body(body, header));
    out
}

/// Decodes magic, state and header. `Ok(None)` if `buf` is too short to hold
/// them yet. Checks run in byte order and as soon as their bytes are
/// present, so a stream that is not a log fails on its first bytes.
pub fn decode_prefix(buf: &[u8]) -> Result<Option<(Header, LogState, usize)>, CodecError> {
    let seen = buf.len().min(MAGIC.len());
    if buf[..seen] != MAGIC[..seen] {
        return Err(CodecError::BadMagic { offset: 0 });
    }
    let state_at = STATE_OFFSET as usize;
    let Some(&raw_state) = buf.get(state_at) else {
        return Ok(None);
    };
    let state = LogState::from_u8(raw_state).ok_or(CodecError::BadState {
        offset: STATE_OFFSET,
        value: raw_state,
    })?;
    for i in RESERVED {
        match buf.get(i) {
            None => return Ok(None),
            Some(0) => {}
            Some(v) => {
                return Err(CodecError::Malformed {
                    offset: i as u64,
                    what: format!("reserved byte is {v:#04x} (must be 0)"),
                });
            }
        }
    }
    // The version is read at its fixed offset before the envelope is
    // trusted: a future version may frame its header differently, and its
    // reader-facing message must be "unsupported version", not "corrupt".
    let version_at = VERSION_OFFSET as usize;
    let Some(version) = buf.get(version_at..version_at + 2) else {
        return Ok(None);
    };
    let version = u16::from_le_bytes([version[0], version[1]]);
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(CodecError::UnsupportedVersion {
            offset: VERSION_OFFSET,
            found: version,
            oldest: OLDEST_FORMAT_VERSION,
            supported: FORMAT_VERSION,
        });
    }
    let frame_at = HEADER_FRAME_OFFSET as usize;
    let Some((body, frame_len)) = open_frame(&buf[frame_at..], HEADER_FRAME_OFFSET)? else {
        return Ok(None);
    };
    let header = decode_header_body(body, HEADER_FRAME_OFFSET + ENVELOPE_LEN as u64)?;
    Ok(Some((header, state, frame_at + frame_len)))
}
