use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::LogError;
use crate::codec::{
    self, CodecError, ENVELOPE_LEN, HEADER_FRAME_OFFSET, STATE_OFFSET, VERSION_OFFSET,
};
use crate::format::{Entry, FORMAT_VERSION, Header, LogState, MAX_FRAME_LEN};

/// Appends entries to a new log file.
///
/// Durability: `flush` hands buffered frames to the OS, so a crash of the
/// recorder process loses nothing flushed; only `finish` fsyncs. Dropping a
/// writer without `finish` flushes (ignoring errors) and leaves the log
/// Incomplete, which is exactly what a crashed recorder leaves.
#[derive(Debug)]
pub struct LogWriter {
    path: PathBuf,
    out: BufWriter<File>,
    next_seq: u64,
    bytes_written: u64,
    ended: bool,
    scratch: Vec<u8>,
}

impl LogWriter {
    /// Creates (or truncates) `path` and writes the prefix with state
    /// Incomplete, flushed so that even an immediate crash leaves a readable
    /// empty log.
    pub fn create(path: &Path, header: &Header) -> Result<Self, LogError> {
        let in_file = |e: LogError| e.in_file(Some(path));
        if header.format_version != FORMAT_VERSION {
            return Err(in_file(
                CodecError::UnsupportedVersion {
                    offset: VERSION_OFFSET,
                    found: header.format_version,
                    oldest: FORMAT_VERSION,
                    supported: FORMAT_VERSION,
                }
                .into(),
            ));
        }
        let prefix = codec::encode_prefix(header, LogState::Incomplete);
        let header_body_len = prefix.len() as u64 - HEADER_FRAME_OFFSET - ENVELOPE_LEN as u64;
        if header_body_len > u64::from(MAX_FRAME_LEN) {
            return Err(in_file(
                CodecError::FrameTooLarge {
                    offset: HEADER_FRAME_OFFSET,
                    len: u32::try_from(header_body_len).unwrap_or(u32::MAX),
                    max: MAX_FRAME_LEN,
                }
                .into(),
            ));
        }
        let io = |source| LogError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io)?;
        let mut out = BufWriter::new(file);
        out.write_all(&prefix).map_err(io)?;
        out.flush().map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            out,
            next_seq: 0,
            bytes_written: prefix.len() as u64,
            ended: false,
            scratch: Vec::new(),
        })
    }

    /// Appends `entry` with the next sequence number and returns that number.
    /// Refuses (writing nothing) an entry after `End`, an entry `Entry::check` refuses and a
    /// frame larger than `MAX_FRAME_LEN`, since no reader would accept any of them.
    pub fn append(&mut self, t_ns: u64, state_check: u64, entry: &Entry) -> Result<u64, LogError> {
        let offset = self.bytes_written;
        if self.ended {
            return Err(LogError::AfterEnd { offset }.in_file(Some(&self.path)));
        }
        let seq = self.next_seq;
        if let Err(what) = entry.check() {
            return Err(LogError::InvalidEntry { offset, seq, what }.in_file(Some(&self.path)));
        }
        self.scratch.clear();
        codec::encode_entry(
            codec::EntryEncoding::CURRENT,
            seq,
            t_ns,
            state_check,
            entry,
            &mut self.scratch,
        );
        let body_len = (self.scratch.len() - ENVELOPE_LEN) as u64;
        if body_len > u64::from(MAX_FRAME_LEN) {
            return Err(LogError::from(CodecError::FrameTooLarge {
                offset,
                len: u32::try_from(body_len).unwrap_or(u32::MAX),
                max: MAX_FRAME_LEN,
            })
            .in_file(Some(&self.path)));
        }
        self.out.write_all(&self.scratch).map_err(|e| self.io(e))?;
        self.next_seq += 1;
        self.bytes_written += self.scratch.len() as u64;
        self.ended = matches!(entry, Entry::End { .. });
        Ok(seq)
    }

    /// Hands buffered bytes to the OS (no fsync).
    pub fn flush(&mut self) -> Result<(), LogError> {
        self.out.flush().map_err(|e| self.io(e))
    }

    /// Entries appended so far, which is also the seq the next one gets.
    pub fn entries_written(&self) -> u64 {
        self.next_seq
    }

    /// Prefix plus all appended frames: the offset the next frame will have.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Flushes, fsyncs, rewrites the state byte to Complete, fsyncs. The
    /// first fsync orders the data before the state byte, so a log marked
    /// Complete never lacks its entries. Requires an `End` entry.
    pub fn finish(mut self) -> Result<(), LogError> {
        self.flush()?;
        if !self.ended {
            return Err(LogError::MissingEnd {
                offset: self.bytes_written,
            }
            .in_file(Some(&self.path)));
        }
        let path = self.path;
        let io = |source| LogError::Io {
            path: path.clone(),
            source,
        };
        let mut file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        file.seek(SeekFrom::Start(STATE_OFFSET)).map_err(io)?;
        file.write_all(&[LogState::Complete as u8]).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(())
    }

    fn io(&self, source: std::io::Error) -> LogError {
        LogError::Io {
            path: self.path.clone(),
            source,
        }
    }
}
