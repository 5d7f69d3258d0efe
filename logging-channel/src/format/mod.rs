//! The values a replay log holds. The byte layout lives in `codec`; this module
//! only says what the values mean. See `docs/log-format.md` for the full spec.

mod digest;
mod entry;
mod header;
mod position;
mod regs;

pub use digest::Digest;
pub(crate) use entry::net_frame_len_problem;
pub use entry::{EndReason, Entry, EntryKind, Frame, InputSource, MAX_NET_FRAME, MIN_NET_FRAME};
pub use header::{CounterKind, Header, LogState, PositionSemantics};
pub use position::Position;
pub use regs::Regs;

/// First eight bytes of every log, so `file(1)`-style sniffing and a
/// confused `--log` argument are caught before anything else is parsed.
pub const MAGIC: [u8; 8] = *b"USTUDYLG";

/// The header version this build writes, and the newest it reads. Version 2 added the
/// `net-rx` and `net-tx` entry kinds, version 3 the `Reset` end reason, version 4 the compact
/// entry encoding (varint counts); older logs read exactly as their writers meant them.
pub const FORMAT_VERSION: u16 = 4;

/// The first format version whose entries are in the compact encoding.
pub const COMPACT_SINCE_VERSION: u16 = 4;

/// The first format version whose `End` entries may say `Reset`.
pub const RESET_SINCE_VERSION: u16 = 3;

/// The oldest header version this build reads. Every version from it to [`FORMAT_VERSION`] is
/// read exactly (each only added entry kinds); an entry kind newer than the log's version is
/// refused, since no writer of that version could have written it.
pub const OLDEST_FORMAT_VERSION: u16 = 1;

/// Upper bound on a frame body. Checked before allocating or hashing, so a
/// corrupt length field cannot make a reader allocate gigabytes.
pub const MAX_FRAME_LEN: u32 = 1 << 20;
