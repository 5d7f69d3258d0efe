use serde::Serialize;

use super::{Digest, Position};

/// Which host input a device read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[repr(u8)]
pub enum InputSource {
    /// The host's monotonic clock in ns (`HostClock::monotonic_ns`), read by the PIT.
    Clock = 1,
    /// Seconds since the Unix epoch, read by the RTC.
    WallClock = 2,
}

impl InputSource {
    /// The source for its byte in an `input` entry; `None` for unknown values.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::Clock),
            2 => Some(Self::WallClock),
            _ => None,
        }
    }
}

/// Why the recorded run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum EndReason {
    /// The guest powered off with this exit code.
    PowerOff {
        /// The code the guest wrote to the debug-exit port.
        code: u32,
    },
    /// Triple fault.
    Shutdown,
    /// The guest asked the machine to reset (a write of `value` to `port`: the keyboard
    /// controller's 0xFE at 0x64, a reset at 0xCF9, a fast reset at 0x92). understudy does not
    /// reboot guests (as QEMU's `-no-reboot`): the run ends here. Since format version 3.
    Reset {
        /// The port written.
        port: u16,
        /// The value written.
        value: u8,
    },
    /// The recorder was stopped by the user or by a limit.
    Stopped,
}

impl std::fmt::Display for EndReason {
    /// How `log inspect` and `log dump` name the end.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::PowerOff { code } => write!(f, "power-off, exit code {code}"),
            EndReason::Shutdown => f.write_str("triple fault"),
            EndReason::Reset { port, value } => {
                write!(f, "reset request ({value:#04x} to port {port:#x})")
            }
            EndReason::Stopped => f.write_str("recording stopped"),
        }
    }
}

/// One nondeterministic event (or a checkpoint) of the recorded run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Entry {
    /// A host input value a device read (clock etc.).
    Input {
        /// Where the device read happened.
        pos: Position,
        /// Which host input it read.
        source: InputSource,
        /// What the host answered; replay answers the same.
        value: u64,
    },
    /// An interrupt line raised by host timing (e.g. PIT tick).
    Irq {
        /// Where the line was raised.
        pos: Position,
        /// The PIC input line (0 is the PIT).
        line: u8,
    },
    /// The CPU was given this interrupt vector here.
    Inject {
        /// Where the CPU took the interrupt.
        pos: Position,
        /// The vector the PIC delivered; replay checks the PIC offers the same one.
        vector: u8,
    },
    /// Bytes typed into the guest console.
    ConsoleInput {
        /// Where the bytes reached the UART.
        pos: Position,
        /// The bytes, in order.
        bytes: Vec<u8>,
    },
    /// A checkpoint of machine state, for detecting divergence on replay.
    Digest {
        /// Where the checkpoint was taken.
        pos: Position,
        /// Flattened, so JSON shows the digest's fields beside `pos` as before it had a type.
        #[serde(flatten)]
        digest: Digest,
    },
    /// The recorded run ended here (last entry of a complete log).
    End {
        /// Where the run ended.
        pos: Position,
        /// How it ended.
        reason: EndReason,
    },
    /// The guest's console had written `console_bytes` bytes in all when it reached this
    /// position. Console output is released to the world only once the backup acknowledged an
    /// entry at or after it; this entry exists so a line does not wait for the next event.
    /// `released` is how many bytes the primary had released when it wrote this entry: a
    /// backup that goes live re-releases from there, so no output is lost.
    Output {
        /// The exit after which the console had produced `console_bytes`.
        pos: Position,
        /// Console bytes produced since the guest started.
        console_bytes: u64,
        /// Console bytes the primary had released to the world.
        released: u64,
    },
    /// A network frame the VMM copied into the guest's receive buffer here: a received frame is
    /// an input from outside, so replay copies these bytes at the same position instead of
    /// reading a TAP device. Since format version 2.
    NetRx {
        /// Where the VMM copied the frame into the guest's memory.
        pos: Position,
        /// The Ethernet frame (destination MAC first), without the virtio-net header;
        /// [`MIN_NET_FRAME`]..=[`MAX_NET_FRAME`] bytes.
        frame: Vec<u8>,
    },
    /// A network frame the guest transmitted, at the exit where it queued it (its `QueueNotify`).
    /// Transmitted frames are output: the primary releases one to the world only once the backup
    /// acknowledged an entry at or after this one, and replay checks that the replayed guest
    /// transmits exactly these bytes here. Since format version 2.
    NetTx {
        /// The exit at which the guest queued the frame.
        pos: Position,
        /// The Ethernet frame (destination MAC first), without the virtio-net header;
        /// [`MIN_NET_FRAME`]..=[`MAX_NET_FRAME`] bytes.
        frame: Vec<u8>,
    },
}

/// Shortest frame a `NetRx`/`NetTx` entry may hold: an Ethernet header (destination and source
/// MAC, ethertype). A NIC never hands over anything shorter, so a shorter one is damage.
pub const MIN_NET_FRAME: usize = 14;

/// Longest frame a `NetRx`/`NetTx` entry may hold: 64 KiB − 1, the largest frame a virtio-net
/// device hands over (a GSO packet with its headers stays below it). Bounding it keeps a bit
/// flip in a length from passing as a frame.
pub const MAX_NET_FRAME: usize = 65_535;

/// Why a network frame of `len` bytes cannot stand in an entry of `kind`, if it cannot.
pub(crate) fn net_frame_len_problem(kind: EntryKind, len: usize) -> Option<String> {
    let kind = kind.name();
    if len > MAX_NET_FRAME {
        Some(format!(
            "{kind} frame of {len} bytes is longer than the maximum of {MAX_NET_FRAME}"
        ))
    } else if len < MIN_NET_FRAME {
        Some(format!(
            "{kind} frame of {len} bytes is shorter than an Ethernet header ({MIN_NET_FRAME} bytes)"
        ))
    } else {
        None
    }
}

impl Entry {
    /// The kind byte this entry is written with.
    pub fn kind(&self) -> EntryKind {
        match self {
            Self::Input { .. } => EntryKind::Input,
            Self::Irq { .. } => EntryKind::Irq,
            Self::Inject { .. } => EntryKind::Inject,
            Self::ConsoleInput { .. } => EntryKind::ConsoleInput,
            Self::Digest { .. } => EntryKind::Digest,
            Self::End { .. } => EntryKind::End,
            Self::Output { .. } => EntryKind::Output,
            Self::NetRx { .. } => EntryKind::NetRx,
            Self::NetTx { .. } => EntryKind::NetTx,
        }
    }

    /// Whether output waits for this entry's acknowledgement: a transmitted frame, a console
    /// line's marker, the guest's end. A primary puts these on the wire at once; other entries
    /// may wait a little to go with the next ones.
    pub fn releases_output(&self) -> bool {
        matches!(
            self,
            Self::NetTx { .. } | Self::Output { .. } | Self::End { .. }
        )
    }

    /// Where the entry applies.
    pub fn pos(&self) -> &Position {
        match self {
            Self::Input { pos, .. }
            | Self::Irq { pos, .. }
            | Self::Inject { pos, .. }
            | Self::ConsoleInput { pos, .. }
            | Self::Digest { pos, .. }
            | Self::End { pos, .. }
            | Self::Output { pos, .. }
            | Self::NetRx { pos, .. }
            | Self::NetTx { pos, .. } => pos,
        }
    }

    /// Why this entry cannot be written, for rules beyond what its type expresses (a network
    /// frame's size); every reader refuses such an entry, so writers check this first.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Self::NetRx { frame, .. } | Self::NetTx { frame, .. } => {
                match net_frame_len_problem(self.kind(), frame.len()) {
                    Some(problem) => Err(problem),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

/// The kind byte of an entry frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[repr(u8)]
pub enum EntryKind {
    /// Never written: reserved so that a zero-filled region (a common shape
    /// of file damage) cannot decode as an entry.
    Invalid = 0,
    /// `Entry::Input`.
    Input = 1,
    /// `Entry::Irq`.
    Irq = 2,
    /// `Entry::Inject`.
    Inject = 3,
    /// `Entry::ConsoleInput`.
    ConsoleInput = 4,
    /// `Entry::Digest`.
    Digest = 5,
    /// `Entry::End`.
    End = 6,
    /// `Entry::Output` (logged by a replicating primary only).
    Output = 7,
    /// `Entry::NetRx` (format version 2 on).
    NetRx = 8,
    /// `Entry::NetTx` (format version 2 on).
    NetTx = 9,
}

impl EntryKind {
    /// Every kind an entry can have (without `Invalid`).
    pub const ALL: [EntryKind; 9] = [
        Self::Input,
        Self::Irq,
        Self::Inject,
        Self::ConsoleInput,
        Self::Digest,
        Self::End,
        Self::Output,
        Self::NetRx,
        Self::NetTx,
    ];

    /// Stable name for command lines and JSON output.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Input => "input",
            Self::Irq => "irq",
            Self::Inject => "inject",
            Self::ConsoleInput => "console-input",
            Self::Digest => "digest",
            Self::End => "end",
            Self::Output => "output",
            Self::NetRx => "net-rx",
            Self::NetTx => "net-tx",
        }
    }

    /// The first log format version that has this kind: a log of an older version that holds
    /// it is refused, since no writer of that version could have written it.
    pub fn since_version(&self) -> u16 {
        match self {
            Self::NetRx | Self::NetTx => 2,
            Self::Invalid
            | Self::Input
            | Self::Irq
            | Self::Inject
            | Self::ConsoleInput
            | Self::Digest
            | Self::End
            | Self::Output => 1,
        }
    }

    /// Inverse of [`EntryKind::name`]; `"invalid"` is not accepted because no
    /// entry has that kind.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The kind for a kind byte; `None` for unknown values and for `Invalid`.
    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u8 == value)
    }
}

/// An entry as it sits in a log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// 0-based, consecutive.
    pub seq: u64,
    /// Recorder's monotonic time since the start of recording. Informative
    /// (durations, lag); replay ignores it.
    pub t_ns: u64,
    /// Fingerprint of the guest at the entry's position as the recorder saw it (registers and
    /// console output so far; see docs/log-format.md); 0 if it did not look. Replay compares it
    /// before applying the entry, so a divergence shows at the first entry after its cause.
    pub state_check: u64,
    /// The event itself.
    pub entry: Entry,
}
