//! A node's events (see `crate::events` and docs/events.md for the file format).

use serde::Serialize;

/// Something a node did or saw, serialised as `{"event": "<snake_case name>", ...}`.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum NodeEvent<'a> {
    /// The node runs: its address (its name for the view service unless `--name`), incarnation
    /// and logging-channel listening address.
    Started {
        name: &'a str,
        incarnation: u64,
        listen: &'a str,
        viewserver: &'a str,
    },
    /// First primary of the guest: boots it from its image. Output from console byte 0 goes
    /// to this process's stdout from `stdout_byte` on.
    Booting { view: u64, stdout_byte: u64 },
    /// A backup promoted to primary: its replayed guest runs live from guest exit `exits`. It
    /// releases the console from byte `released_from`, to stdout from `stdout_byte` on;
    /// `unconfirmed` bytes of that may already have been released by the old primary.
    GoingLive {
        view: u64,
        exits: u64,
        log_seq: u64,
        console_bytes: u64,
        released_from: u64,
        stdout_byte: u64,
        unconfirmed: u64,
    },
    /// Backup of `primary` in `view`, keeping the state it holds or waiting for one.
    Backup {
        view: u64,
        primary: &'a str,
        holding: bool,
    },
    /// Named primary without holding that view's history: it will not serve, and waits.
    Stranded { view: u64 },
    /// Neither primary nor backup.
    Idle { view: u64 },
    /// A primary without a backup: output flows as soon as it is written.
    NoBackup { view: u64 },
    /// The primary's stream to its backup broke; the state is sent again.
    StreamLost { backup: &'a str, reason: &'a str },
    /// A deposed or cut-off primary stops its guest and releases nothing more.
    SteppedDown { reason: &'a str },
    /// A periodic sample of a primary's replication: the backup's replay lag and what it
    /// released.
    Lag {
        view: u64,
        backup: &'a str,
        entries: u64,
        ms: f64,
        released_bytes: u64,
    },
    /// A step of a state transfer to a new backup (human text).
    TransferProgress { backup: &'a str, message: &'a str },
    /// The new backup installed the state.
    TransferDone {
        view: u64,
        backup: &'a str,
        total_ms: f64,
        pause_ms: f64,
        rounds: u32,
        bytes: u64,
        next_seq: u64,
    },
    /// A state transfer to a backup failed.
    TransferFailed { backup: &'a str, error: &'a str },
    /// A backup installed the state from `primary`; replay continues from `next_seq`.
    StateInstalled {
        primary: &'a str,
        ms: f64,
        mem_mib: u32,
        next_seq: u64,
    },
    /// A backup refused an offered transfer, or receiving one failed.
    StateRefused { error: &'a str },
    /// A backup's replay of the stream failed; it drops the state and asks for a new one.
    /// `overshoot`: a kick landed too late (the replay lost its way, not its history);
    /// `diverged`: the replayed guest did something other than the recorded one (a bug).
    ReplayFailed {
        primary: &'a str,
        error: &'a str,
        overshoot: bool,
        diverged: bool,
    },
    /// The primary's stream ended; the backup holds its replayed guest at `last_seq`.
    StreamEnded {
        reason: &'a str,
        last_seq: Option<u64>,
    },
    /// The guest powered off (on the primary, or replayed on the backup); the node exits with
    /// the guest's code.
    GuestPoweredOff { code: u32, replayed: bool },
    /// The view service refused this node (it exits).
    Refused { message: &'a str },
    /// The view service did not answer (said once until it answers again).
    ViewServiceUnreachable { error: &'a str },
    /// A primary's totals when its role ends.
    PrimarySummary {
        throttled_ms: f64,
        lease_wait_ms: f64,
        pauses_ms: Vec<f64>,
    },
}
