use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::codec::CodecError;

/// A logging-channel failure. Every variant names the peer; those about
/// received bytes also name the byte offset in the stream from that peer
/// (counted from the first byte of the connection). Cloneable so that the
/// one error that killed a connection can be returned by every later call.
#[derive(Debug, Clone, Error)]
pub enum ChannelError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: Arc<io::Error>,
    },

    #[error("accepting a connection on {local}: {source}")]
    Accept {
        local: SocketAddr,
        #[source]
        source: Arc<io::Error>,
    },

    #[error("no primary connected to {local} within {waited:?}")]
    AcceptTimeout { local: SocketAddr, waited: Duration },

    #[error("cannot connect to backup {peer}: {source}")]
    Connect {
        peer: String,
        #[source]
        source: Arc<io::Error>,
    },

    #[error("reading from {peer} at stream byte {offset}: {source}")]
    Read {
        peer: SocketAddr,
        offset: u64,
        #[source]
        source: Arc<io::Error>,
    },

    #[error("writing to {peer}: {source}")]
    Write {
        peer: SocketAddr,
        #[source]
        source: Arc<io::Error>,
    },

    /// Bad bytes from the peer: CRC, size cap, malformed body, unknown type.
    /// The codec error carries the stream byte offset.
    #[error("corrupt data from {peer}: {source}")]
    Corrupt {
        peer: SocketAddr,
        #[source]
        source: CodecError,
    },

    #[error("{peer} sent {message} at stream byte {offset}, which is not allowed {when}")]
    Unexpected {
        peer: SocketAddr,
        offset: u64,
        message: &'static str,
        when: &'static str,
    },

    /// The backup refused this primary (seen by the primary).
    #[error("backup {peer} refused the connection: {reason}")]
    Refused { peer: SocketAddr, reason: String },

    /// This backup refused a primary (seen by the backup; the primary was
    /// sent the same reason). The listener stays usable.
    #[error("refused primary {peer}: {reason}")]
    RefusedPrimary { peer: SocketAddr, reason: String },

    #[error("backup {peer} welcomed us at seq {next_seq}, but our first entry is seq {first_seq}")]
    WelcomeMismatch {
        peer: SocketAddr,
        first_seq: u64,
        next_seq: u64,
    },

    /// Gap (found > expected) or duplicate/reorder (found < expected).
    #[error("{peer} sent entry seq {found} at stream byte {offset}, expected seq {expected}")]
    SeqGap {
        peer: SocketAddr,
        offset: u64,
        expected: u64,
        found: u64,
    },

    #[error(
        "{peer} acknowledged seq {seq} at stream byte {offset}, but the newest entry sent is {sent:?} and the previous ack {previous:?}"
    )]
    BadAck {
        peer: SocketAddr,
        offset: u64,
        seq: u64,
        sent: Option<u64>,
        previous: Option<u64>,
    },

    #[error(
        "{peer} reported entry {seq} replayed at stream byte {offset}, but the newest entry sent is {sent:?} and its previous report {previous:?}"
    )]
    BadReplayed {
        peer: SocketAddr,
        offset: u64,
        seq: u64,
        sent: Option<u64>,
        previous: Option<u64>,
    },

    /// A connection's first message (`Hello` or `StateOffer`) did not
    /// arrive whole within the listener's handshake deadline.
    #[error("no whole Hello or StateOffer from {peer} within {waited:?} (handshake deadline)")]
    HandshakeTimeout { peer: SocketAddr, waited: Duration },

    #[error("nothing heard from {peer} for {waited:?} (peer timeout)")]
    PeerTimeout { peer: SocketAddr, waited: Duration },

    #[error("{peer} closed the connection at stream byte {offset}")]
    PeerClosed { peer: SocketAddr, offset: u64 },

    #[error(
        "{peer} closed the connection inside a message at stream byte {offset} ({have} bytes of it received)"
    )]
    Truncated {
        peer: SocketAddr,
        offset: u64,
        have: usize,
    },

    #[error("{peer} said goodbye: {reason}")]
    Bye { peer: SocketAddr, reason: String },

    #[error("stopped taking entries from {peer}: {reason}")]
    Stopped { peer: SocketAddr, reason: String },

    /// Flow control: the window stayed full for the whole send timeout.
    #[error(
        "send window to {peer} full for {waited:?}: {unacked} entries ({unacked_bytes} bytes) sent but not acknowledged"
    )]
    WindowFull {
        peer: SocketAddr,
        waited: Duration,
        unacked: u64,
        unacked_bytes: u64,
    },

    /// Caller bug: entries must be sent with consecutive seqs.
    #[error("entry seq {found} sent to {peer}, but the next seq must be {expected}")]
    OutOfOrder {
        peer: SocketAddr,
        expected: u64,
        found: u64,
    },

    #[error("message for {peer} of {len} bytes exceeds the frame cap of {max}")]
    TooLarge {
        peer: SocketAddr,
        len: usize,
        max: u32,
    },

    #[error("channel to {peer} was closed locally")]
    Closed { peer: SocketAddr },
}

impl ChannelError {
    /// The stream byte offset the error is about, if it is about received bytes.
    pub fn offset(&self) -> Option<u64> {
        match self {
            Self::Read { offset, .. }
            | Self::Unexpected { offset, .. }
            | Self::SeqGap { offset, .. }
            | Self::BadAck { offset, .. }
            | Self::BadReplayed { offset, .. }
            | Self::PeerClosed { offset, .. }
            | Self::Truncated { offset, .. } => Some(*offset),
            Self::Corrupt { source, .. } => Some(source.offset()),
            _ => None,
        }
    }
}
