//! Message I/O on a `TcpStream`: a buffering reader that tracks the stream
//! offset (for error messages) and a writer that survives slow peers.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::message::{Message, decode_message, encode_message, encoded_len_ok};
use super::{ChannelConfig, ChannelError};
use crate::codec::ENVELOPE_LEN;
use crate::format::MAX_FRAME_LEN;

const READ_CHUNK: usize = 64 * 1024;

// Lives for one loop iteration; see `Message` on not boxing entries.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Polled {
    /// A message and the stream offset of its frame.
    Msg(Message, u64),
    /// Nothing complete arrived within the socket's read timeout.
    Idle,
}

pub(crate) struct MsgReader {
    stream: TcpStream,
    peer: SocketAddr,
    /// Storage, zeroed once when it grows (not on every read: zeroing 64 KiB per message was
    /// a visible share of a backup's receive thread); `buf[start..end]` holds what was read
    /// and not yet decoded.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Stream offset of `buf[start]`.
    offset: u64,
}

impl MsgReader {
    pub(crate) fn new(stream: TcpStream, peer: SocketAddr) -> Self {
        Self {
            stream,
            peer,
            buf: Vec::new(),
            start: 0,
            end: 0,
            offset: 0,
        }
    }

    fn buffered(&mut self) -> Result<Option<(Message, u64)>, ChannelError> {
        let at = self.offset;
        match decode_message(&self.buf[self.start..self.end], at) {
            Ok(Some((msg, len))) => {
                self.start += len;
                self.offset += len as u64;
                Ok(Some((msg, at)))
            }
            Ok(None) => Ok(None),
            Err(source) => Err(ChannelError::Corrupt {
                peer: self.peer,
                source,
            }),
        }
    }

    /// Whether a whole frame is already buffered, i.e. the peer's data that
    /// has arrived is not yet drained.
    pub(crate) fn has_whole_frame(&self) -> bool {
        match self.declared_len() {
            Some(len) => {
                len > MAX_FRAME_LEN || self.end - self.start >= ENVELOPE_LEN + len as usize
            }
            None => false,
        }
    }

    /// The body length the next frame's envelope declares, once its length
    /// field has arrived.
    pub(crate) fn declared_len(&self) -> Option<u32> {
        let len = self.buf[..self.end].get(self.start..self.start + 4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(len);
        Some(u32::from_le_bytes(a))
    }

    /// Stream offset of the next unread message.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Returns a buffered message, or reads once (bounded by the socket's
    /// read timeout) and tries again.
    pub(crate) fn poll(&mut self) -> Result<Polled, ChannelError> {
        if let Some((m, at)) = self.buffered()? {
            return Ok(Polled::Msg(m, at));
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let have = self.end;
        if self.buf.len() < have + READ_CHUNK {
            self.buf.resize(have + READ_CHUNK, 0);
        }
        let res = self.stream.read(&mut self.buf[have..]);
        self.end = have + *res.as_ref().unwrap_or(&0);
        match res {
            Ok(0) if have == 0 => Err(ChannelError::PeerClosed {
                peer: self.peer,
                offset: self.offset,
            }),
            Ok(0) => Err(ChannelError::Truncated {
                peer: self.peer,
                offset: self.offset,
                have,
            }),
            Ok(_) => Ok(match self.buffered()? {
                Some((m, at)) => Polled::Msg(m, at),
                None => Polled::Idle,
            }),
            Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => Ok(Polled::Idle),
            Err(e) => Err(ChannelError::Read {
                peer: self.peer,
                offset: self.offset + have as u64,
                source: Arc::new(e),
            }),
        }
    }

    /// The next message, waiting at most `timeout` (handshake only).
    pub(crate) fn next_within(
        &mut self,
        timeout: Duration,
    ) -> Result<(Message, u64), ChannelError> {
        let start = Instant::now();
        loop {
            if let Polled::Msg(m, at) = self.poll()? {
                return Ok((m, at));
            }
            if start.elapsed() >= timeout {
                return Err(ChannelError::PeerTimeout {
                    peer: self.peer,
                    waited: start.elapsed(),
                });
            }
        }
    }
}

/// Socket options for either end, and a second handle for the reading thread. No Nagle:
/// latency is the output rule's cost, so every entry should go out now. Short timeouts let the
/// channel's threads notice a stop or a silent peer.
pub(crate) fn tune(stream: &TcpStream, cfg: &ChannelConfig) -> io::Result<TcpStream> {
    set_options(stream, cfg)?;
    stream.try_clone()
}

/// The options of [`tune`] alone: for a connection whose reader already exists (the listener
/// read its first message under its own, shorter timeouts).
pub(crate) fn set_options(stream: &TcpStream, cfg: &ChannelConfig) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(cfg.poll_interval()))?;
    stream.set_write_timeout(Some(cfg.poll_interval()))
}

pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Writes `msg` whole within `timeout`, else `PeerTimeout`: for handshakes and transfers,
/// where a peer that stops reading is a failure, not back-pressure.
pub(crate) fn write_within(
    stream: &mut TcpStream,
    peer: SocketAddr,
    msg: &Message,
    timeout: Duration,
) -> Result<(), ChannelError> {
    write_since(stream, peer, msg, Instant::now(), timeout)
}

/// [`write_within`] with the time counted from `started` (a handshake's start).
pub(crate) fn write_since(
    stream: &mut TcpStream,
    peer: SocketAddr,
    msg: &Message,
    started: Instant,
    timeout: Duration,
) -> Result<(), ChannelError> {
    let bytes = encode_checked(msg, peer)?;
    write_all_while(stream, peer, &bytes, || {
        if started.elapsed() > timeout {
            Err(ChannelError::PeerTimeout {
                peer,
                waited: started.elapsed(),
            })
        } else {
            Ok(())
        }
    })
}

/// The error for a reply other than the one a handshake step expects: the peer's refusal or
/// goodbye as such, anything else as `Unexpected` (`when` says at which step).
pub(crate) fn reply_error(
    reply: Message,
    offset: u64,
    peer: SocketAddr,
    when: &'static str,
) -> ChannelError {
    match reply {
        Message::Refuse { reason } => ChannelError::Refused { peer, reason },
        Message::Bye { reason } => ChannelError::Bye { peer, reason },
        m => ChannelError::Unexpected {
            peer,
            offset,
            message: m.name(),
            when,
        },
    }
}

/// Encodes `msg`, refusing frames every reader would reject.
pub(crate) fn encode_checked(msg: &Message, peer: SocketAddr) -> Result<Vec<u8>, ChannelError> {
    let mut out = Vec::new();
    let len = encode_message(msg, &mut out);
    check_len(out, len, peer)
}

/// Refuses frames every reader would reject.
pub(crate) fn check_len(
    out: Vec<u8>,
    len: usize,
    peer: SocketAddr,
) -> Result<Vec<u8>, ChannelError> {
    if !encoded_len_ok(len) {
        return Err(ChannelError::TooLarge {
            peer,
            len,
            max: MAX_FRAME_LEN,
        });
    }
    Ok(out)
}

/// Writes all of `bytes`. The socket's write timeout is only a polling
/// interval: a peer that reads slowly (because its buffer is full) is flow
/// control, not failure, so we keep going for as long as `alive` says the
/// connection is still good. Partial writes are kept, so the stream never
/// desynchronises.
pub(crate) fn write_all_while(
    stream: &mut TcpStream,
    peer: SocketAddr,
    bytes: &[u8],
    alive: impl Fn() -> Result<(), ChannelError>,
) -> Result<(), ChannelError> {
    let mut done = 0;
    while done < bytes.len() {
        match stream.write(&bytes[done..]) {
            Ok(0) => {
                return Err(ChannelError::Write {
                    peer,
                    source: Arc::new(io::Error::from(ErrorKind::WriteZero)),
                });
            }
            Ok(n) => done += n,
            Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => alive()?,
            Err(e) => {
                return Err(ChannelError::Write {
                    peer,
                    source: Arc::new(e),
                });
            }
        }
    }
    Ok(())
}

/// How long a refusal may take to write. It goes to a connection that has
/// been sent nothing else, so it fits the socket buffer at once unless the
/// peer is gone; never worth waiting on.
const REFUSE_WRITE_TIMEOUT: Duration = Duration::from_millis(100);

/// Sends `Refuse { reason }` (best effort, briefly) and shuts the connection.
pub(crate) fn refuse_quietly(stream: &TcpStream, peer: SocketAddr, reason: String) {
    if let Ok(bytes) = encode_checked(&Message::Refuse { reason }, peer)
        && stream.set_write_timeout(Some(REFUSE_WRITE_TIMEOUT)).is_ok()
    {
        let mut w = stream;
        let _ = w.write_all(&bytes);
    }
    shutdown(stream);
}

/// Best effort: the connection is being abandoned anyway.
pub(crate) fn shutdown(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Both);
}

/// Locks a channel end's shared state. A poisoned lock would mean a thread panicked while
/// holding it, which `panic = "abort"` rules out; recover the guard rather than unwrap.
pub(crate) fn lock<S>(state: &std::sync::Mutex<S>) -> std::sync::MutexGuard<'_, S> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits on `cond` until notified or `deadline`, whichever comes first.
pub(crate) fn wait_until<'a, S>(
    cond: &std::sync::Condvar,
    g: std::sync::MutexGuard<'a, S>,
    deadline: std::time::Instant,
) -> std::sync::MutexGuard<'a, S> {
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    match cond.wait_timeout(g, left) {
        Ok((g, _)) => g,
        Err(p) => p.into_inner().0,
    }
}

/// Records `e` as the channel end's error unless an earlier one is there (the first error is
/// the cause; later ones are consequences), and wakes every waiter so they see it.
pub(crate) fn fail_first<S>(
    state: &std::sync::Mutex<S>,
    cond: &std::sync::Condvar,
    slot: impl FnOnce(&mut S) -> &mut Option<super::ChannelError>,
    e: super::ChannelError,
) {
    {
        let mut g = lock(state);
        let error = slot(&mut g);
        if error.is_none() {
            *error = Some(e);
        }
    }
    cond.notify_all();
}
