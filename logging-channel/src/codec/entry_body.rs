//! Entry frame bodies: `u8 kind | u64 seq | u64 t_ns | u64 state_check | payload`.

use super::CodecError;
use super::wire::{Cursor, put_bytes, put_regs, put_u8, put_u16, put_u32, put_u64};
use crate::format::{
    Digest, EndReason, Entry, EntryKind, Frame, InputSource, Position, net_frame_len_problem,
};

/// kind + seq + t_ns: no entry body is shorter.
pub(crate) const MIN_ENTRY_BODY: usize = 1 + 8 + 8;

const POS_AT_EXIT: u8 = 1;
const POS_PRECISE: u8 = 2;

const END_POWER_OFF: u8 = 1;
const END_SHUTDOWN: u8 = 2;
const END_STOPPED: u8 = 3;
const END_RESET: u8 = 4;

pub(crate) fn put_entry_body(
    out: &mut Vec<u8>,
    seq: u64,
    t_ns: u64,
    state_check: u64,
    entry: &Entry,
) {
    put_u8(out, entry.kind() as u8);
    put_u64(out, seq);
    put_u64(out, t_ns);
    put_u64(out, state_check);
    put_position(out, entry.pos());
    match entry {
        Entry::Input { source, value, .. } => {
            put_u8(out, *source as u8);
            put_u64(out, *value);
        }
        Entry::Irq { line, .. } => put_u8(out, *line),
        Entry::Inject { vector, .. } => put_u8(out, *vector),
        Entry::ConsoleInput { bytes, .. } => put_bytes(out, bytes),
        Entry::Digest { digest, .. } => {
            put_regs(out, &digest.regs);
            for (_, v) in digest.words() {
                put_u64(out, v);
            }
        }
        Entry::End { reason, .. } => match reason {
            EndReason::PowerOff { code } => {
                put_u8(out, END_POWER_OFF);
                put_u32(out, *code);
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
            put_u64(out, *console_bytes);
            put_u64(out, *released);
        }
        // Sizes are not checked here (encoding cannot fail): writers refuse what
        // `Entry::check` refuses, as every decoder does.
        Entry::NetRx { frame, .. } | Entry::NetTx { frame, .. } => put_bytes(out, frame),
    }
}

fn put_position(out: &mut Vec<u8>, pos: &Position) {
    match pos {
        Position::AtExit { exits } => {
            put_u8(out, POS_AT_EXIT);
            put_u64(out, *exits);
        }
        Position::Precise {
            exits,
            counter,
            regs,
        } => {
            put_u8(out, POS_PRECISE);
            put_u64(out, *exits);
            put_u64(out, *counter);
            put_regs(out, regs);
        }
    }
}

/// Decodes a CRC-verified body whose first byte is at absolute offset `base`.
pub(crate) fn decode_entry_body(body: &[u8], base: u64) -> Result<Frame, CodecError> {
    let mut c = Cursor::new(body, base);
    let kind_at = c.offset();
    let kind_byte = c.u8("entry kind")?;
    let kind = EntryKind::from_u8(kind_byte).ok_or(CodecError::UnknownKind {
        offset: kind_at,
        kind: kind_byte,
    })?;
    let seq = c.u64("seq")?;
    let t_ns = c.u64("t_ns")?;
    let state_check = c.u64("state_check")?;
    let pos = position(&mut c)?;
    let entry = match kind {
        EntryKind::Input => {
            let at = c.offset();
            let raw = c.u8("input source")?;
            let source = InputSource::from_u8(raw).ok_or(CodecError::Malformed {
                offset: at,
                what: format!("unknown input source {raw}"),
            })?;
            let value = c.u64("input value")?;
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
            bytes: c.bytes("console bytes")?,
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
            reason: end_reason(&mut c)?,
        },
        EntryKind::Output => Entry::Output {
            pos,
            console_bytes: c.u64("output console_bytes")?,
            released: c.u64("output released")?,
        },
        EntryKind::NetRx => Entry::NetRx {
            pos,
            frame: net_frame(&mut c, kind, seq)?,
        },
        EntryKind::NetTx => Entry::NetTx {
            pos,
            frame: net_frame(&mut c, kind, seq)?,
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
fn net_frame(c: &mut Cursor<'_>, kind: EntryKind, seq: u64) -> Result<Vec<u8>, CodecError> {
    let at = c.offset();
    let what = format!("{} frame", kind.name());
    let len = c.u32(&what)?;
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if let Some(problem) = net_frame_len_problem(kind, len) {
        return Err(CodecError::Malformed {
            offset: at,
            what: format!("entry #{seq}: {problem}"),
        });
    }
    c.raw(len, &what)
}

fn position(c: &mut Cursor<'_>) -> Result<Position, CodecError> {
    let at = c.offset();
    match c.u8("position tag")? {
        POS_AT_EXIT => Ok(Position::AtExit {
            exits: c.u64("position exits")?,
        }),
        POS_PRECISE => Ok(Position::Precise {
            exits: c.u64("position exits")?,
            counter: c.u64("position counter")?,
            regs: c.regs("position regs")?,
        }),
        tag => Err(CodecError::Malformed {
            offset: at,
            what: format!("unknown position tag {tag}"),
        }),
    }
}

fn end_reason(c: &mut Cursor<'_>) -> Result<EndReason, CodecError> {
    let at = c.offset();
    match c.u8("end reason")? {
        END_POWER_OFF => Ok(EndReason::PowerOff {
            code: c.u32("power-off code")?,
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
