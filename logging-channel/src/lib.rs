//! understudy's replay log: the format of a recorded run, a pure codec for
//! it (shared by log files and, later, the TCP logging channel), and a thin
//! file layer. The byte-level spec is `docs/log-format.md`.

#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod codec;
pub mod file;
pub mod format;
pub mod net;
pub mod netframe;
pub mod waiters;

#[cfg(test)]
mod strategies;

pub use codec::CodecError;
pub use file::{Completeness, Frames, IncompleteReason, LogError, LogReader, LogWriter, Tail};
pub use format::{
    CounterKind, Digest, EndReason, Entry, EntryKind, FORMAT_VERSION, Frame, Header, InputSource,
    LogState, MAGIC, MAX_FRAME_LEN, MAX_NET_FRAME, MIN_NET_FRAME, OLDEST_FORMAT_VERSION, Position,
    PositionSemantics, Regs,
};
