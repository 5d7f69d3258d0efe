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
    /// `LogReceiver::listen` could not bind its address.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address as given.
        addr: String,
        /// What the OS said.
        #[source]
        source: Arc<io::Error>,
    },

    /// The listener's `accept(2)` failed; returned by the next accept call.
    #[error("accepting a connection on {local}: {source}")]
    Accept {
        /// The listening address.
        local: SocketAddr,
        /// What the OS said.
        #[source]
        source: Arc<io::Error>,
    },

    /// No acceptable primary arrived within an accept call's timeout (junk connections do not
    /// count).
    #[error("no primary connected to {local} within {waited:?}")]
    AcceptTimeout {
        /// The listening address.
        local: SocketAddr,
        /// How long the call waited.
        waited: Duration,
    },

    /// The primary could not connect to its backup, or set up the connection (socket options,
    /// threads).
    #[error("cannot connect to backup {peer}: {source}")]
    Connect {
        /// The backup's address as given.
        peer: String,
        /// What the OS said.
        #[source]
        source: Arc<io::Error>,
    },

    /// Reading from the peer failed (reset, socket options), other than by a clean close.
    #[error("reading from {peer} at stream byte {offset}: {source}")]
    Read {
        /// The peer.
        peer: SocketAddr,
        /// Stream bytes read before the failure.
        offset: u64,
        /// What the OS said.
        #[source]
        source: Arc<io::Error>,
    },

    /// Writing to the peer failed (a write that merely waits on a slow reader is flow control, not
    /// this).
    #[error("writing to {peer}: {source}")]
    Write {
        /// The peer.
        peer: SocketAddr,
        /// What the OS said.
        #[source]
        source: Arc<io::Error>,
    },

    /// Bad bytes from the peer: CRC, size cap, malformed body, unknown type.
    /// The codec error carries the stream byte offset.
    #[error("corrupt data from {peer}: {source}")]
    Corrupt {
        /// The peer.
        peer: SocketAddr,
        /// What is wrong, at which stream offset.
        #[source]
        source: CodecError,
    },

    /// A well-formed message the protocol does not allow at that point (e.g. an `Entry` from the
    /// backup, a `Hello` where a `StateOffer` is due, a state over the size limit).
    #[error("{peer} sent {message} at stream byte {offset}, which is not allowed {when}")]
    Unexpected {
        /// The peer.
        peer: SocketAddr,
        /// Where the message starts in the stream.
        offset: u64,
        /// The message's name (`Message::name`).
        message: &'static str,
        /// Why it is not allowed there.
        when: &'static str,
    },

    /// The backup refused this primary (seen by the primary).
    #[error("backup {peer} refused the connection: {reason}")]
    Refused {
        /// The backup.
        peer: SocketAddr,
        /// The backup's reason, as sent.
        reason: String,
    },

    /// This backup refused a primary (seen by the backup; the primary was
    /// sent the same reason). The listener stays usable.
    #[error("refused primary {peer}: {reason}")]
    RefusedPrimary {
        /// The refused primary.
        peer: SocketAddr,
        /// The reason it was sent.
        reason: String,
    },

    /// The backup's `Welcome` asks for another first entry than the primary offered; the
    /// transport cannot resend older entries, so the primary says `Bye`.
    #[error("backup {peer} welcomed us at seq {next_seq}, but our first entry is seq {first_seq}")]
    WelcomeMismatch {
        /// The backup.
        peer: SocketAddr,
        /// The seq the primary offered.
        first_seq: u64,
        /// The seq the backup asked for.
        next_seq: u64,
    },

    /// Gap (found > expected) or duplicate/reorder (found < expected).
    #[error("{peer} sent entry seq {found} at stream byte {offset}, expected seq {expected}")]
    SeqGap {
        /// The primary.
        peer: SocketAddr,
        /// Where the entry starts in the stream.
        offset: u64,
        /// The seq the backup needed next.
        expected: u64,
        /// The seq that came.
        found: u64,
    },

    /// An ack for an entry not yet sent, or older than the previous ack.
    #[error(
        "{peer} acknowledged seq {seq} at stream byte {offset}, but the newest entry sent is {sent:?} and the previous ack {previous:?}"
    )]
    BadAck {
        /// The backup.
        peer: SocketAddr,
        /// Where the ack starts in the stream.
        offset: u64,
        /// The acknowledged seq.
        seq: u64,
        /// The newest seq sent, if any.
        sent: Option<u64>,
        /// The previous ack, if any.
        previous: Option<u64>,
    },

    /// A `Replayed` report for an entry not yet sent, or older than the previous report.
    #[error(
        "{peer} reported entry {seq} replayed at stream byte {offset}, but the newest entry sent is {sent:?} and its previous report {previous:?}"
    )]
    BadReplayed {
        /// The backup.
        peer: SocketAddr,
        /// Where the report starts in the stream.
        offset: u64,
        /// The reported seq.
        seq: u64,
        /// The newest seq sent, if any.
        sent: Option<u64>,
        /// The previous report, if any.
        previous: Option<u64>,
    },

    /// A connection's first message (`Hello` or `StateOffer`) did not
    /// arrive whole within the listener's handshake deadline.
    #[error("no whole Hello or StateOffer from {peer} within {waited:?} (handshake deadline)")]
    HandshakeTimeout {
        /// The connecting peer.
        peer: SocketAddr,
        /// The handshake deadline.
        waited: Duration,
    },

    /// Nothing at all came from the peer for `peer_timeout`: it is gone (dead, stopped or cut
    /// off).
    #[error("nothing heard from {peer} for {waited:?} (peer timeout)")]
    PeerTimeout {
        /// The silent peer.
        peer: SocketAddr,
        /// How long it was silent.
        waited: Duration,
    },

    /// The peer closed the connection between messages, without a `Bye`.
    #[error("{peer} closed the connection at stream byte {offset}")]
    PeerClosed {
        /// The peer.
        peer: SocketAddr,
        /// Stream bytes received in all.
        offset: u64,
    },

    /// The peer closed the connection inside a message.
    #[error(
        "{peer} closed the connection inside a message at stream byte {offset} ({have} bytes of it received)"
    )]
    Truncated {
        /// The peer.
        peer: SocketAddr,
        /// Where the cut-off message starts in the stream.
        offset: u64,
        /// Bytes of it that arrived.
        have: usize,
    },

    /// The peer closed cleanly with `Bye`.
    #[error("{peer} said goodbye: {reason}")]
    Bye {
        /// The peer.
        peer: SocketAddr,
        /// Its reason.
        reason: String,
    },

    /// This backup stopped taking entries (`LogReceiver::stop_receiving`); entries already
    /// buffered are still received first.
    #[error("stopped taking entries from {peer}: {reason}")]
    Stopped {
        /// The primary.
        peer: SocketAddr,
        /// The reason given to `stop_receiving` and sent in the `Bye`.
        reason: String,
    },

    /// Flow control: the window stayed full for the whole send timeout.
    #[error(
        "send window to {peer} full for {waited:?}: {unacked} entries ({unacked_bytes} bytes) sent but not acknowledged"
    )]
    WindowFull {
        /// The backup.
        peer: SocketAddr,
        /// The send timeout.
        waited: Duration,
        /// Entries sent but not acknowledged.
        unacked: u64,
        /// Their encoded bytes.
        unacked_bytes: u64,
    },

    /// Caller bug: entries must be sent with consecutive seqs.
    #[error("entry seq {found} sent to {peer}, but the next seq must be {expected}")]
    OutOfOrder {
        /// The backup.
        peer: SocketAddr,
        /// The seq the next entry must have.
        expected: u64,
        /// The seq it had.
        found: u64,
    },

    /// A message to send would exceed the frame cap; only this call fails.
    #[error("message for {peer} of {len} bytes exceeds the frame cap of {max}")]
    TooLarge {
        /// The peer it was for.
        peer: SocketAddr,
        /// Its body length.
        len: usize,
        /// `MAX_FRAME_LEN`.
        max: u32,
    },

    /// Caller bug: an entry no receiver would accept (`Entry::check`, e.g. a network frame
    /// longer than `MAX_NET_FRAME`); only this call fails, nothing was sent.
    #[error("entry seq {seq} for {peer} cannot be sent: {what}")]
    InvalidEntry {
        /// The backup.
        peer: SocketAddr,
        /// The entry's seq.
        seq: u64,
        /// What is wrong with it.
        what: String,
    },

    /// This side closed the channel (or failed to start its threads); every later call gets this.
    #[error("channel to {peer} was closed locally")]
    Closed {
        /// The peer.
        peer: SocketAddr,
    },
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
