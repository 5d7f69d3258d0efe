//! The live logging channel: a primary streams log entries over TCP to a
//! backup, which acknowledges them (docs/log-format.md, "Over TCP").
//!
//! Blocking std I/O with a few threads per connection, no async runtime:
//! a connection carries one ordered stream and the VMM threads that use it
//! block anyway (the primary on a full window, the backup on an empty
//! buffer).
//!
//! - Primary: [`LogSender::connect`], then [`LogSender::send`] each entry;
//!   [`LogSender::wait_acked`] before releasing output (the output rule).
//! - Backup: [`LogReceiver::listen`] → [`Listener::accept`] → [`LogReceiver::recv`].
//!   The listener reads every new connection's first message concurrently
//!   and within a short deadline, so junk connections never delay a primary
//!   (docs/log-format.md, "Accepting connections").

mod accept;
mod error;
mod message;
mod receiver;
mod sender;
mod stream;
mod transfer;

use std::time::Duration;

pub use accept::{AcceptStats, Listener, MAX_FIRST_MESSAGE, MAX_HANDSHAKES, MAX_QUEUED};
pub use error::ChannelError;
pub use message::{
    CHANNEL_MAGIC, Hello, Message, PROTOCOL_VERSION, decode_message, encode_entry_message,
    encode_message,
};
pub use receiver::{ExpectedPrimary, LogReceiver};
pub use sender::{AckHook, LogSender, RoundTrips};
pub use transfer::{
    PAGE_SIZE, PAGES_PER_MESSAGE, PageRecord, STATE_PIECE, StatePart, StateReceiver, StateSender,
    decode_pages, encode_page, encode_zero_page, is_zero_page,
};

/// Timeouts and buffer sizes of one connection. Both sides must use the
/// same `peer_timeout` / `heartbeat_interval` ballpark: a side declares its
/// peer dead after `peer_timeout` of silence, and the peer only speaks
/// every `heartbeat_interval` when idle.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// TCP connect (primary only).
    pub connect_timeout: Duration,
    /// Silence after which the peer is considered gone. Also bounds each
    /// handshake step after the first message (the answer to it, a state
    /// transfer's messages, the `Hello` that follows one).
    pub peer_timeout: Duration,
    /// Backup: a new connection's first message (`Hello` or `StateOffer`)
    /// must arrive whole within this, or the connection is closed. Short,
    /// since a primary sends it right after connecting; it is how long a
    /// silent or junk connection occupies a handshake slot (the listener
    /// reads many at once, so it never delays another connection).
    pub handshake_timeout: Duration,
    /// Send a heartbeat when nothing else was sent for this long.
    pub heartbeat_interval: Duration,
    /// How long `LogSender::send` waits for room in a full window.
    pub send_timeout: Duration,
    /// Primary: how long entries no output waits for may stay queued for the next write
    /// ([`LogSender::push_due`]). Each write wakes the backup and brings an ack back, which on
    /// a busy primary costs more than the entry; a received frame's entry then goes with the
    /// reply's. Zero writes every exit's entries at once.
    pub batch_hold: Duration,
    /// Window: entries sent but not yet acknowledged (primary).
    pub max_unacked: usize,
    /// Window in encoded bytes (primary); at least one entry always fits.
    pub max_unacked_bytes: usize,
    /// Entries received but not yet taken by `recv` (backup). When full, the
    /// backup stops reading the socket, and TCP backpressure plus the
    /// window stall the primary.
    pub max_buffered: usize,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(1),
            handshake_timeout: Duration::from_millis(500),
            heartbeat_interval: Duration::from_millis(100),
            send_timeout: Duration::from_secs(1),
            batch_hold: Duration::from_micros(500),
            max_unacked: 4096,
            max_unacked_bytes: 16 << 20,
            max_buffered: 8192,
        }
    }
}

impl ChannelConfig {
    /// How often blocked threads wake up to check liveness and local close:
    /// small against the timeouts so failures are noticed promptly.
    fn poll_interval(&self) -> Duration {
        (self.heartbeat_interval / 2)
            .min(self.peer_timeout / 4)
            .clamp(Duration::from_millis(1), Duration::from_millis(50))
    }
}

/// How far the backup is behind the primary (seen by the primary): by
/// acknowledgement ([`LogSender::lag`]) or by replay
/// ([`LogSender::replay_lag`]), in entries and in recorded time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lag {
    /// Entries sent (handed to `send`) but not yet acknowledged (or replayed).
    pub entries: u64,
    /// `t_ns` of the newest sent entry minus `t_ns` of the newest
    /// acknowledged one (before any ack: minus the oldest sent one). 0 when
    /// everything is acknowledged.
    pub t_ns: u64,
}
