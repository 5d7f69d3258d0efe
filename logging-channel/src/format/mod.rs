//! The values a replay log holds. The byte layout lives in `codec`; this module
//! only says what the values mean. See `docs/log-format.md` for the full spec.

mod digest;
mod entry;
mod header;
mod position;
mod regs;

pub use digest::Digest;
pub use entry::{EndReason, Entry, EntryKind, Frame, InputSource};
pub use header::{CounterKind, Header, LogState, PositionSemantics};
pub use position::Position;
pub use regs::Regs;

/// First eight bytes of every log, so `file(1)`-style sniffing and a
/// confused `--log` argument are caught before anything else is parsed.
pub const MAGIC: [u8; 8] = *b"USTUDYLG";

/// The only header version this build reads and writes.
pub const FORMAT_VERSION: u16 = 1;

/// Upper bound on a frame body. Checked before allocating or hashing, so a
/// corrupt length field cannot make a reader allocate gigabytes.
pub const MAX_FRAME_LEN: u32 = 1 << 20;
