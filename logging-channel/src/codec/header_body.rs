//! The header frame body: `u16 format_version` then the header fields.

use super::CodecError;
use super::wire::{Cursor, put_bool, put_str, put_strs, put_u8, put_u16, put_u32, put_u64};
use crate::format::{CounterKind, Header, PositionSemantics};

/// The version field alone: no header body is shorter.
pub(crate) const MIN_HEADER_BODY: usize = 2;

pub(crate) fn put_header_body(out: &mut Vec<u8>, h: &Header) {
    put_u16(out, h.format_version);
    out.extend_from_slice(&h.guest_image_sha256);
    put_str(out, &h.guest_name);
    put_strs(out, &h.guest_args);
    put_u32(out, h.mem_mib);
    put_u8(out, h.position.counter as u8);
    put_bool(out, h.position.precise_cpl0);
    put_bool(out, h.position.precise_cpl3);
    put_str(out, &h.position.description);
    put_u32(out, h.digest_interval_ms);
    put_u64(out, h.recorded_at_unix_ms);
    put_str(out, &h.host);
    if h.format_version >= 2 {
        match h.nic_mac {
            Some(mac) => {
                put_bool(out, true);
                out.extend_from_slice(&mac);
            }
            None => put_bool(out, false),
        }
    }
}

/// Decodes a CRC-verified header body at absolute offset `base`. The caller
/// has already checked the version.
pub(crate) fn decode_header_body(body: &[u8], base: u64) -> Result<Header, CodecError> {
    let mut c = Cursor::new(body, base);
    let format_version = c.u16("format version")?;
    let guest_image_sha256 = c.sha256("guest image sha256")?;
    let guest_name = c.string("guest name")?;
    let guest_args = c.strings("guest args")?;
    let mem_mib = c.u32("mem_mib")?;
    let counter_at = c.offset();
    let raw = c.u8("counter kind")?;
    let counter = CounterKind::from_u8(raw).ok_or(CodecError::Malformed {
        offset: counter_at,
        what: format!("unknown counter kind {raw}"),
    })?;
    let position = PositionSemantics {
        counter,
        precise_cpl0: c.bool("precise_cpl0")?,
        precise_cpl3: c.bool("precise_cpl3")?,
        description: c.string("position description")?,
    };
    let header = Header {
        format_version,
        guest_image_sha256,
        guest_name,
        guest_args,
        mem_mib,
        position,
        digest_interval_ms: c.u32("digest_interval_ms")?,
        recorded_at_unix_ms: c.u64("recorded_at_unix_ms")?,
        host: c.string("host")?,
        nic_mac: None,
    };
    let header = if format_version >= 2 && c.bool("has a network card")? {
        Header {
            nic_mac: Some(c.array::<6>("network card MAC")?),
            ..header
        }
    } else {
        header
    };
    c.finish()?;
    Ok(header)
}
