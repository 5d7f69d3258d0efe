//! Entry frame bodies: `u8 kind | seq | t_ns | u64 state_check | payload`, where counts (`seq`,
//! `t_ns`, exits, the counter, values, lengths) are `u64`/`u32` in the fixed encoding (log
//! format versions 1 to 3) and LEB128 varints in the compact one (version 4 on).

use super::wire::{Cursor, put_bytes, put_regs, put_u8, put_u16, put_u32, put_u64, put_varint};
use super::{CodecError, EntryEncoding};
use crate::format::{
    Digest, EndReason, Entry, EntryKind, Frame, InputSource, Position, net_frame_len_problem,
};

/// kind + seq + t_ns: no entry body is shorter.
pub(crate) fn min_entry_body(enc: EntryEncoding) -> usize {
    match enc {
        EntryEncoding::Fixed => 1 + 8 + 8,
        EntryEncoding::Compact => 1 + 1 + 1,
    }
}

/// A count: `u64` or a varint.
fn put_count(out: &mut Vec<u8>, enc: EntryEncoding, v: u64) {
    match enc {
        EntryEncoding::Fixed => put_u64(out, v),
        EntryEncoding::Compact => put_varint(out, v),
    }
}

/// A `u32` field (a power-off code): `u32` or a varint.
fn put_count32(out: &mut Vec<u8>, enc: EntryEncoding, v: u32) {
    match enc {
        EntryEncoding::Fixed => put_u32(out, v),
        EntryEncoding::Compact => put_varint(out, u64::from(v)),
    }
}

/// A length and the bytes: `u32` length or a varint.
fn put_counted_bytes(out: &mut Vec<u8>, enc: EntryEncoding, v: &[u8]) {
    match enc {
        EntryEncoding::Fixed => put_bytes(out, v),
        EntryEncoding::Compact => {
            put_varint(out, v.len() as u64);
            out.extend_from_slice(v);
        }
    }
}

impl Cursor<'_> {
    fn count(&mut self, enc: EntryEncoding, what: &str) -> Result<u64, CodecError> {
        match enc {
            EntryEncoding::Fixed => self.u64(what),
            EntryEncoding::Compact => self.varint(what),
        }
    }

    fn count32(&mut self, enc: EntryEncoding, what: &str) -> Result<u32, CodecError> {
        let at = self.offset();
        match enc {
            EntryEncoding::Fixed => self.u32(what),
            EntryEncoding::Compact => {
                u32::try_from(self.varint(what)?).map_err(|_| CodecError::Malformed {
                    offset: at,
                    what: format!("{what} does not fit in 32 bits"),
                })
            }
        }
    }

    /// A length field; the bytes themselves are read by the caller once it has checked it.
    fn len(&mut self, enc: EntryEncoding, what: &str) -> Result<usize, CodecError> {
        let n = match enc {
            EntryEncoding::Fixed => u64::from(self.u32(what)?),
            EntryEncoding::Compact => self.varint(what)?,
        };
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    fn counted_bytes(&mut self, enc: EntryEncoding, what: &str) -> Result<Vec<u8>, CodecError> {
        let n = self.len(enc, what)?;
        self.raw(n, what)
    }
}

const POS_AT_EXIT: u8 = 1;
const POS_PRECISE: u8 = 2;

const END_POWER_OFF: u8 = 1;
const END_SHUTDOWN: u8 = 2;
const END_STOPPED: u8 = 3;
const END_RESET: u8 = 4;

pub(crate) fn put_entry_body(
    out: &mut Vec<u8>,
    enc: EntryEncoding,
    seq: u64,
    t_ns: u64,
    state_check: u64,
    entry: &Entry,
) {
    put_u8(out, entry.kind() as u8);
    put_count(out, enc, seq);
    put_count(out, enc, t_ns);
    put_u64(out, state_check);
    put_position(out, enc, entry.pos());
    match entry {
        Entry::Input { source, value, .. } => {
            put_u8(out, *source as u8);
            put_count(out, enc, *value);
        }
        Entry::Irq { line, .. } => put_u8(out, *line),
        Entry::Inject { vector, .. } => put_u8(out, *vector),
        Entry::ConsoleInput { bytes, .. } => put_counted_bytes(out, enc, bytes),
        Entry::Digest { digest, .. } => {
            put_regs(out, &digest.regs);
            for (_, v) in digest.words() {
                put_u64(out, v);
            }
        }
        Entry::End { reason, .. } => match reason {
            EndReason::PowerOff { code } => {
                put_u8(out, END_POWER_OFF);
                put_count32(out, enc, *code);
            }
            EndReason::Shutdown => put_u8(out, END_SHUTDOWN),
            EndReason::Stopped => put_u8(out, END_STOPPED),
            EndReason::Reset { port, value } => {
                put_u8(out, END_RESET);
                put_u16(out, *port);
                put_u8(out, *value);
            }
        },
        Entry::Output {
            console_bytes,
            released,
            ..
        } => {
            put_count(out, enc, *console_bytes);
            put_count(out, enc, *released);
        }
        // Sizes are not checked here (encoding cannot fail): writers refuse what
        // `Entry::check` refuses, as every decoder does.
        Entry::NetRx { frame, .. } | Entry::NetTx { frame, .. } => {
            put_counted_bytes(out, enc, frame);
        }
    }
}

fn put_position(out: &mut Vec<u8>, enc: EntryEncoding, pos: &Position) {
    match pos {
        Position::AtExit { exits } => {
            put_u8(out, POS_AT_EXIT);
            put_count(out, enc, *exits);
        }
        Position::Precise {
            exits,
            counter,
            regs,
        } => {
            put_u8(out, POS_PRECISE);
            put_count(out, enc, *exits);
            put_count(out, enc, *counter);
            put_regs(out, regs);
        }
    }
}

/// Decodes a CRC-verified body whose first byte is at absolute offset `base`.
pub(crate) fn decode_entry_body(
    body: &[u8],
    base: u64,
    enc: EntryEncoding,
) -> Result<Frame, CodecError> {
    let mut c = Cursor::new(body, base);
    let kind_at = c.offset();
    let kind_byte = c.u8("entry kind")?;
    let kind = EntryKind::from_u8(kind_byte).ok_or(CodecError::UnknownKind {
        offset: kind_at,
        kind: kind_byte,
    })?;
    let seq = c.count(enc, "seq")?;
    let t_ns = c.count(enc, "t_ns")?;
    let state_check = c.u64("state_check")?;
    let pos = position(&mut c, enc)?;
    let entry = match kind {
        EntryKind::Input => {
            let at = c.offset();
            let raw = c.u8("input source")?;
            let source = InputSource::from_u8(raw).ok_or(CodecError::Malformed {
                offset: at,
                what: format!("unknown input source {raw}"),
            })?;
            let value = c.count(enc, "input value")?;
            Entry::Input { pos, source, value }
        }
        EntryKind::Irq => Entry::Irq {
            pos,
            line: c.u8("irq line")?,
        },
        EntryKind::Inject => Entry::Inject {
            pos,
            vector: c.u8("inject vector")?,
        },
        EntryKind::ConsoleInput => Entry::ConsoleInput {
            pos,
            bytes: c.counted_bytes(enc, "console bytes")?,
        },
        // In the order `Digest::words` gives the encoder.
        EntryKind::Digest => Entry::Digest {
            pos,
            digest: Digest {
                regs: c.regs("digest regs")?,
                cr0: c.u64("digest cr0")?,
                cr3: c.u64("digest cr3")?,
                cr4: c.u64("digest cr4")?,
                efer: c.u64("digest efer")?,
                mem_hash: c.u64("digest mem_hash")?,
                devices_hash: c.u64("digest devices_hash")?,
            },
        },
        EntryKind::End => Entry::End {
            pos,
            reason: end_reason(&mut c, enc)?,
        },
        EntryKind::Output => Entry::Output {
            pos,
            console_bytes: c.count(enc, "output console_bytes")?,
            released: c.count(enc, "output released")?,
        },
        EntryKind::NetRx => Entry::NetRx {
            pos,
            frame: net_frame(&mut c, enc, kind, seq)?,
        },
        EntryKind::NetTx => Entry::NetTx {
            pos,
            frame: net_frame(&mut c, enc, kind, seq)?,
        },
        // `from_u8` never yields it; kept an error rather than a panic.
        EntryKind::Invalid => {
            return Err(CodecError::UnknownKind {
                offset: kind_at,
                kind: kind_byte,
            });
        }
    };
    c.finish()?;
    Ok(Frame {
        seq,
        t_ns,
        state_check,
        entry,
    })
}

/// A `bytes` field holding a network frame, its length checked before the bytes are read: a
/// frame outside `MIN_NET_FRAME..=MAX_NET_FRAME` is refused at its length field, naming the entry.
fn net_frame(
    c: &mut Cursor<'_>,
    enc: EntryEncoding,
    kind: EntryKind,
    seq: u64,
) -> Result<Vec<u8>, CodecError> {
    let at = c.offset();
    let what = format!("{} frame", kind.name());
    let len = c.len(enc, &what)?;
    if let Some(problem) = net_frame_len_problem(kind, len) {
        return Err(CodecError::Malformed {
            offset: at,
            what: format!("entry #{seq}: {problem}"),
        });
    }
    c.raw(len, &what)
}

fn position(c: &mut Cursor<'_>, enc: EntryEncoding) -> Result<Position, CodecError> {
    let at = c.offset();
    match c.u8("position tag")? {
        POS_AT_EXIT => Ok(Position::AtExit {
            exits: c.count(enc, "position exits")?,
        }),
        POS_PRECISE => Ok(Position::Precise {
            exits: c.count(enc, "position exits")?,
            counter: c.count(enc, "position counter")?,
            regs: c.regs("position regs")?,
        }),
        tag => Err(CodecError::Malformed {
            offset: at,
            what: format!("unknown position tag {tag}"),
        }),
    }
}

fn end_reason(c: &mut Cursor<'_>, enc: EntryEncoding) -> Result<EndReason, CodecError> {
    let at = c.offset();
    match c.u8("end reason")? {
        END_POWER_OFF => Ok(EndReason::PowerOff {
            code: c.count32(enc, "power-off code")?,
        }),
        END_SHUTDOWN => Ok(EndReason::Shutdown),
        END_STOPPED => Ok(EndReason::Stopped),
        END_RESET => Ok(EndReason::Reset {
            port: c.u16("reset port")?,
            value: c.u8("reset value")?,
        }),
        tag => Err(CodecError::Malformed {
            offset: at,
            what: format!("unknown end reason {tag}"),
        }),
    }
}
