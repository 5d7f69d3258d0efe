//! Log files on top of the pure codec: a buffered appending writer and an
//! in-memory reader.

mod error;
mod reader;
mod writer;

pub use error::LogError;
pub use reader::{Completeness, Frames, IncompleteReason, LogReader, Tail};
pub use writer::LogWriter;
