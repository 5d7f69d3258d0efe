//! The channel's messages and their bytes. Every message is one frame in the
//! log's envelope (`u32 body_len | u32 crc32(body) | body`); the body is
//! `u8 message type | payload`. Pure, I/O-free, like `codec`.

use crate::codec::wire::{self, put_str};
use crate::codec::{CodecError, ENVELOPE_LEN, decode_frame, encode_frame, envelope};
use crate::format::{Frame, MAX_FRAME_LEN};

/// First bytes of a `Hello`, so a stray client (or a log file piped into
/// the port) is refused as "not an understudy primary" before anything else.
pub const CHANNEL_MAGIC: [u8; 8] = *b"USTUDYCH";

/// The only channel protocol version this build speaks. 4: `Entry` messages may carry the
/// `net-rx` / `net-tx` entry kinds (log format version 2); 5: `Entry` bodies are in the
/// compact encoding (log format version 4). A peer of another version refuses the `Hello`
/// instead of misreading the first entry.
pub const PROTOCOL_VERSION: u16 = 5;

const T_HELLO: u8 = 1;
const T_WELCOME: u8 = 2;
const T_REFUSE: u8 = 3;
const T_ENTRY: u8 = 4;
const T_ACK: u8 = 5;
const T_HEARTBEAT: u8 = 6;
const T_BYE: u8 = 7;
const T_STATE_OFFER: u8 = 8;
const T_STATE_PAGES: u8 = 9;
const T_STATE_FINAL: u8 = 10;
const T_STATE_INSTALLED: u8 = 11;
const T_RELEASED: u8 = 12;
const T_REPLAYED: u8 = 13;
const T_STATE_BLOB: u8 = 14;

/// The primary's first message: who it is and what it will stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Always [`CHANNEL_MAGIC`] unless a test wants to be refused.
    pub magic: [u8; 8],
    /// Always [`PROTOCOL_VERSION`] unless a test wants to be refused.
    pub protocol_version: u16,
    /// SHA-256 of the guest image: replaying a log against another image
    /// diverges at once, so the backup refuses it up front.
    pub guest_image_sha256: [u8; 32],
    /// The view the primary believes it is primary of.
    pub viewnum: u64,
    /// The primary's server name as the viewserver knows it.
    pub primary: String,
    /// Seq of the first entry the primary will send.
    pub first_seq: u64,
}

impl Hello {
    /// A `Hello` with this build's magic and protocol version.
    pub fn new(
        guest_image_sha256: [u8; 32],
        viewnum: u64,
        primary: impl Into<String>,
        first_seq: u64,
    ) -> Self {
        Self {
            magic: CHANNEL_MAGIC,
            protocol_version: PROTOCOL_VERSION,
            guest_image_sha256,
            viewnum,
            primary: primary.into(),
            first_seq,
        }
    }
}

/// One message on the channel. See docs/log-format.md, "Over TCP".
// Entry is the big variant and also by far the most common one; boxing it
// would cost an allocation per entry to shrink messages that live only
// briefly on the stack.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Primary → backup, first message.
    Hello(Hello),
    /// Backup → primary: accepted; the first entry must have seq `next_seq`.
    Welcome {
        /// The seq the backup wants first: the `Hello`'s `first_seq` (0 after a `StateOffer`);
        /// the primary gives up on anything else.
        next_seq: u64,
    },
    /// Backup → primary: not accepted; the backup closes after sending it.
    Refuse {
        /// Why, for the primary's error message.
        reason: String,
    },
    /// Primary → backup: one log entry, payload = the log's entry body.
    Entry(Frame),
    /// Backup → primary: every entry with seq ≤ `seq` is in the backup's
    /// buffer (cumulative).
    Ack {
        /// The newest seq acknowledged.
        seq: u64,
    },
    /// Both ways, sent when nothing else was sent for a heartbeat interval:
    /// the sender's newest entry (`t_ns` of it, 0 if none) so an idle link
    /// still shows how far each side is.
    Heartbeat {
        /// Recording time of the sender's newest entry; 0 if none.
        t_ns: u64,
        /// The sender's newest entry, if any.
        last_seq: Option<u64>,
    },
    /// Either way: a clean close, with why.
    Bye {
        /// Why the sender closes.
        reason: String,
    },
    /// Primary → backup, first message of a state transfer (instead of
    /// `Hello`): who it is (`first_seq` is unused, 0) and how much guest
    /// memory follows. The backup answers `Welcome { next_seq: 0 }` or
    /// `Refuse`.
    StateOffer {
        /// The primary's identity, as in a `Hello`.
        hello: Hello,
        /// Guest memory size; the backup's must be the same.
        mem_bytes: u64,
    },
    /// Primary → backup: guest pages, see [`super::transfer::encode_page`].
    StatePages {
        /// Page records, at most `PAGES_PER_MESSAGE`.
        records: Vec<u8>,
    },
    /// Primary → backup: the rest of the machine (vCPU, devices, log
    /// position), opaque to the channel; the last transfer message. A
    /// state larger than one frame comes as `StateBlob`s followed by this,
    /// whose `blob` is the last piece.
    StateFinal {
        /// The machine state, or its last piece.
        blob: Vec<u8>,
    },
    /// Primary → backup: a leading piece of the machine state, when it does
    /// not fit one frame (the console history grows with the guest's life).
    StateBlob {
        /// One `STATE_PIECE` of the machine state.
        bytes: Vec<u8>,
    },
    /// Backup → primary: the state is installed and the backup will replay
    /// from entry `next_seq`. The primary then sends `Hello` on the same
    /// connection and streams the log.
    StateInstalled {
        /// Must equal the `next_seq` in the state.
        next_seq: u64,
    },
    /// Primary → backup, after the stream started: the primary has released
    /// the guest's console up to byte `bytes`. A backup that goes live
    /// releases from there, so a failover repeats as little as possible.
    Released {
        /// Console bytes released so far, counted from the guest's start.
        bytes: u64,
    },
    /// Backup → primary: the backup's replay has applied entry `seq`
    /// (recorded at `t_ns`). The primary slows down when its newest entry
    /// is too far ahead of this (replay lag), before any buffer fills.
    Replayed {
        /// The newest entry the replay applied.
        seq: u64,
        /// Its recording time.
        t_ns: u64,
    },
}

impl Message {
    /// Name for error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello(_) => "Hello",
            Self::Welcome { .. } => "Welcome",
            Self::Refuse { .. } => "Refuse",
            Self::Entry(_) => "Entry",
            Self::Ack { .. } => "Ack",
            Self::Heartbeat { .. } => "Heartbeat",
            Self::Bye { .. } => "Bye",
            Self::StateOffer { .. } => "StateOffer",
            Self::StatePages { .. } => "StatePages",
            Self::StateFinal { .. } => "StateFinal",
            Self::StateBlob { .. } => "StateBlob",
            Self::StateInstalled { .. } => "StateInstalled",
            Self::Released { .. } => "Released",
            Self::Replayed { .. } => "Replayed",
        }
    }
}

/// Appends the message's frame to `out` and returns the frame's length.
/// Does not enforce `MAX_FRAME_LEN` (see [`encoded_len_ok`]).
pub fn encode_message(msg: &Message, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; ENVELOPE_LEN]);
    match msg {
        Message::Hello(h) => {
            out.push(T_HELLO);
            put_hello(out, h);
        }
        Message::Welcome { next_seq } => {
            out.push(T_WELCOME);
            out.extend_from_slice(&next_seq.to_le_bytes());
        }
        Message::Refuse { reason } => {
            out.push(T_REFUSE);
            put_str(out, reason);
        }
        Message::Entry(frame) => {
            out.truncate(start);
            return encode_entry_message(frame, out);
        }
        Message::Ack { seq } => {
            out.push(T_ACK);
            out.extend_from_slice(&seq.to_le_bytes());
        }
        Message::Heartbeat { t_ns, last_seq } => {
            out.push(T_HEARTBEAT);
            out.extend_from_slice(&t_ns.to_le_bytes());
            out.push(u8::from(last_seq.is_some()));
            out.extend_from_slice(&last_seq.unwrap_or(0).to_le_bytes());
        }
        Message::Bye { reason } => {
            out.push(T_BYE);
            put_str(out, reason);
        }
        Message::StateOffer { hello, mem_bytes } => {
            out.push(T_STATE_OFFER);
            put_hello(out, hello);
            out.extend_from_slice(&mem_bytes.to_le_bytes());
        }
        Message::StatePages { records } => {
            out.push(T_STATE_PAGES);
            wire::put_bytes(out, records);
        }
        Message::StateFinal { blob } => {
            out.push(T_STATE_FINAL);
            wire::put_bytes(out, blob);
        }
        Message::StateBlob { bytes } => {
            out.push(T_STATE_BLOB);
            wire::put_bytes(out, bytes);
        }
        Message::StateInstalled { next_seq } => {
            out.push(T_STATE_INSTALLED);
            out.extend_from_slice(&next_seq.to_le_bytes());
        }
        Message::Released { bytes } => {
            out.push(T_RELEASED);
            out.extend_from_slice(&bytes.to_le_bytes());
        }
        Message::Replayed { seq, t_ns } => {
            out.push(T_REPLAYED);
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&t_ns.to_le_bytes());
        }
    }
    seal(out, start)
}

fn put_hello(out: &mut Vec<u8>, h: &Hello) {
    out.extend_from_slice(&h.magic);
    out.extend_from_slice(&h.protocol_version.to_le_bytes());
    out.extend_from_slice(&h.guest_image_sha256);
    out.extend_from_slice(&h.viewnum.to_le_bytes());
    put_str(out, &h.primary);
    out.extend_from_slice(&h.first_seq.to_le_bytes());
}

/// A `Hello` (or the identity in a `StateOffer`). Another magic or version
/// fails at that field without parsing further: a future version may lay
/// the rest out differently.
fn hello(c: &mut wire::Cursor<'_>) -> Result<Hello, CodecError> {
    let magic_at = c.offset();
    let magic: [u8; 8] = c.array("hello magic")?;
    if magic != CHANNEL_MAGIC {
        return Err(CodecError::BadMagic { offset: magic_at });
    }
    let version_at = c.offset();
    let protocol_version = u16::from_le_bytes(c.array("hello protocol_version")?);
    if protocol_version != PROTOCOL_VERSION {
        return Err(CodecError::UnsupportedVersion {
            offset: version_at,
            found: protocol_version,
            oldest: PROTOCOL_VERSION,
            supported: PROTOCOL_VERSION,
        });
    }
    Ok(Hello {
        magic,
        protocol_version,
        guest_image_sha256: c.array("hello guest_image_sha256")?,
        viewnum: c.u64("hello viewnum")?,
        primary: c.string("hello primary")?,
        first_seq: c.u64("hello first_seq")?,
    })
}

/// `encode_message(&Message::Entry(frame.clone()), out)` without the clone.
pub fn encode_entry_message(frame: &Frame, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; ENVELOPE_LEN]);
    out.push(T_ENTRY);
    // The codec only exposes whole frames; strip its envelope so the
    // payload is byte-for-byte the log file's entry body.
    let at = out.len();
    encode_frame(frame, out);
    out.drain(at..at + ENVELOPE_LEN);
    seal(out, start)
}

/// Fills in the envelope of the frame that starts at `start`.
fn seal(out: &mut [u8], start: usize) -> usize {
    let body = &out[start + ENVELOPE_LEN..];
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

/// Whether an encoded frame of `frame_len` bytes is within the size cap
/// every reader enforces.
pub fn encoded_len_ok(frame_len: usize) -> bool {
    frame_len - ENVELOPE_LEN <= MAX_FRAME_LEN as usize
}

/// Decodes the message frame at the start of `buf` (stream offset
/// `offset`). `Ok(None)`: not all of it is there yet. Also returns the
/// frame's length. Never panics on any input.
///
/// A `Hello` with another magic or version fails with `BadMagic` /
/// `UnsupportedVersion` (offset of that field) without parsing further,
/// because a future version may lay the rest out differently.
pub fn decode_message(buf: &[u8], offset: u64) -> Result<Option<(Message, usize)>, CodecError> {
    // The same envelope check as the log reader's: length cap first, then the CRC.
    let Some((body, total)) = envelope::open_frame(buf, offset)? else {
        return Ok(None);
    };
    let body_at = offset + ENVELOPE_LEN as u64;
    let mut c = wire::Cursor::new(body, body_at);
    let msg = match c.u8("message type")? {
        T_HELLO => Message::Hello(hello(&mut c)?),
        T_WELCOME => Message::Welcome {
            next_seq: c.u64("welcome next_seq")?,
        },
        T_REFUSE => Message::Refuse {
            reason: c.string("refuse reason")?,
        },
        T_ENTRY => {
            // Re-wrap the entry body in a log envelope so the one strict entry
            // decoder is used; `offset + 1` makes its error offsets land on the
            // real stream bytes (the type byte takes the place of nothing).
            let entry = &body[1..];
            let mut framed = Vec::with_capacity(ENVELOPE_LEN + entry.len());
            framed.extend_from_slice(&u32::try_from(entry.len()).unwrap_or(0).to_le_bytes());
            framed.extend_from_slice(&crc32fast::hash(entry).to_le_bytes());
            framed.extend_from_slice(entry);
            let Some((frame, _)) = decode_frame(&framed, offset + 1)? else {
                return Err(c.malformed("entry body ends early"));
            };
            return Ok(Some((Message::Entry(frame), total)));
        }
        T_ACK => Message::Ack {
            seq: c.u64("ack seq")?,
        },
        T_HEARTBEAT => {
            let t_ns = c.u64("heartbeat t_ns")?;
            let flag_at = c.offset();
            let has = c.u8("heartbeat last_seq flag")?;
            let seq = c.u64("heartbeat last_seq")?;
            let last_seq = match has {
                0 => None,
                1 => Some(seq),
                v => {
                    return Err(CodecError::Malformed {
                        offset: flag_at,
                        what: format!("heartbeat last_seq flag is {v:#04x}, not 0 or 1"),
                    });
                }
            };
            Message::Heartbeat { t_ns, last_seq }
        }
        T_BYE => Message::Bye {
            reason: c.string("bye reason")?,
        },
        T_STATE_OFFER => Message::StateOffer {
            hello: hello(&mut c)?,
            mem_bytes: c.u64("state offer mem_bytes")?,
        },
        T_STATE_PAGES => Message::StatePages {
            records: c.bytes("state pages")?,
        },
        T_STATE_FINAL => Message::StateFinal {
            blob: c.bytes("state final")?,
        },
        T_STATE_BLOB => Message::StateBlob {
            bytes: c.bytes("state blob")?,
        },
        T_STATE_INSTALLED => Message::StateInstalled {
            next_seq: c.u64("state installed next_seq")?,
        },
        T_RELEASED => Message::Released {
            bytes: c.u64("released bytes")?,
        },
        T_REPLAYED => Message::Replayed {
            seq: c.u64("replayed seq")?,
            t_ns: c.u64("replayed t_ns")?,
        },
        t => {
            return Err(CodecError::Malformed {
                offset: body_at,
                what: format!("unknown channel message type {t}"),
            });
        }
    };
    c.finish()?;
    Ok(Some((msg, total)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::codec::encode_frame;

    proptest! {
        /// An entry message is its type byte and then, byte for byte, the body the log file
        /// holds for the same frame, under the same envelope; and it reads back as that frame.
        #[test]
        fn an_entry_message_carries_the_log_files_entry_body(frame in crate::strategies::frame()) {
            let mut message = Vec::new();
            let len = encode_entry_message(&frame, &mut message);
            prop_assert_eq!(len, message.len());

            let mut file = Vec::new();
            encode_frame(&frame, &mut file);
            let mut body = vec![T_ENTRY];
            body.extend_from_slice(&file[ENVELOPE_LEN..]);
            let mut expected = Vec::new();
            envelope::put_frame(&mut expected, |b| b.extend_from_slice(&body));
            prop_assert_eq!(&message, &expected);

            let (decoded, used) = decode_message(&message, 0).unwrap().unwrap();
            prop_assert_eq!(used, message.len());
            prop_assert_eq!(decoded, Message::Entry(frame));
        }
    }
}
