use serde::Serialize;

/// Which instruction counter `Position::Precise::counter` holds in this log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[repr(u8)]
pub enum CounterKind {
    /// The recorder has no counter: every position is `AtExit`.
    None = 0,
    /// Instructions emulated by the PVM instruction-emulation path.
    PvmInsnEmulation = 1,
}

impl CounterKind {
    /// The kind for its header byte; `None` for unknown values.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::None),
            1 => Some(Self::PvmInsnEmulation),
            _ => None,
        }
    }
}

/// What a `Position` means in this log. Written in the header because it
/// depends on the recorder's backend, and a replayer with different
/// semantics must refuse rather than diverge silently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PositionSemantics {
    /// Which instruction counter `Position::Precise::counter` holds.
    pub counter: CounterKind,
    /// Whether mid-execution (precise) positions can occur at CPL0.
    pub precise_cpl0: bool,
    /// Whether mid-execution (precise) positions can occur at CPL3.
    pub precise_cpl3: bool,
    /// Human text explaining the position semantics.
    pub description: String,
}

/// Everything a replayer needs to rebuild the recorded machine, plus a
/// little informative provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Header {
    /// `FORMAT_VERSION`; a reader refuses any other.
    pub format_version: u16,
    /// SHA-256 of the guest image: replay refuses another image.
    pub guest_image_sha256: [u8; 32],
    /// "compute", "ticker" or a path.
    pub guest_name: String,
    /// The guest's command line, as arguments.
    pub guest_args: Vec<String>,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// What positions in this log mean; a replayer that counts differently refuses the log.
    pub position: PositionSemantics,
    /// How often the recorder logged a digest. Informative: replay checks the digests present.
    pub digest_interval_ms: u32,
    /// Informative only: replay never depends on it.
    pub recorded_at_unix_ms: u64,
    /// Informative only (e.g. kernel + kvm backend).
    pub host: String,
    /// The MAC address of the guest's network card, if it had one (version 2 on; `None` in a
    /// version-1 log). Replay builds the same machine: a card changes the guest's command
    /// line and its devices.
    pub nic_mac: Option<[u8; 6]>,
}

/// The state byte at `codec::STATE_OFFSET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[repr(u8)]
pub enum LogState {
    /// The recorder has not closed the log cleanly (yet, or ever: it crashed).
    Incomplete = 0,
    /// The recorder finished and fsynced the log.
    Complete = 1,
}

impl LogState {
    /// The state for its byte; `None` for anything but 0 and 1.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Incomplete),
            1 => Some(Self::Complete),
            _ => None,
        }
    }
}
