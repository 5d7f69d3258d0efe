//! Where the replayer's entries come from: a log file read into memory, or (later) the logging
//! channel from a live primary.

use std::collections::VecDeque;

use logging_channel::format::Frame;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading the replay log failed")]
    Log(#[from] logging_channel::file::LogError),
}

pub trait EntrySource {
    /// The next entry without consuming it; `None` when the log has no more entries.
    fn peek(&mut self) -> Result<Option<&Frame>, SourceError>;
    fn pop(&mut self) -> Result<Option<Frame>, SourceError>;
}

/// Entries already in memory, e.g. a whole log file.
#[derive(Debug, Default)]
pub struct VecSource {
    frames: VecDeque<Frame>,
}

impl VecSource {
    pub fn new(frames: impl IntoIterator<Item = Frame>) -> Self {
        Self {
            frames: frames.into_iter().collect(),
        }
    }
}

impl EntrySource for VecSource {
    fn peek(&mut self) -> Result<Option<&Frame>, SourceError> {
        Ok(self.frames.front())
    }
    fn pop(&mut self) -> Result<Option<Frame>, SourceError> {
        Ok(self.frames.pop_front())
    }
}
