//! A running machine's complete state, for live state transfer to a new backup: guest memory
//! (sent page by page, see [`memory`]), the vCPU, the devices, and where the log continues.

pub mod cpu;
pub mod memory;

use serde::{Deserialize, Serialize};

use crate::console::ConsoleStream;
use crate::devices::{DeviceStateError, DevicesState};
use crate::machine::Machine;
use crate::snapshot::cpu::{CpuState, CpuStateError};

/// Bumped whenever [`MachineState`]'s encoding changes; both ends must agree. Version 1 was
/// bincode 1.x (unmaintained); version 2 is the layout below.
pub const STATE_VERSION: u32 = 5;

/// First bytes of an encoded [`MachineState`]: says what the bytes are before anything else is
/// trusted. Then the version (`u32`, little-endian), then the [`MachineState`] fields in
/// declaration order in postcard's documented, stable wire format (postcard 1.x; integers as
/// LEB128 varints, sequences length-prefixed), with nothing after them.
pub const STATE_MAGIC: [u8; 4] = *b"USMS";

/// Why a machine state could not be saved, sent or installed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Saving or restoring the vCPU failed.
    #[error(transparent)]
    Cpu(#[from] CpuStateError),
    /// The devices' state is one no device could be in.
    #[error(transparent)]
    Devices(#[from] DeviceStateError),
    /// Reading or writing guest pages failed.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// The state could not be encoded (never expected).
    #[error("encoding the machine state failed: {0}")]
    Encode(String),
    /// The primary's state does not decode.
    #[error("the machine state from the primary is malformed: {0}")]
    Decode(String),
    /// The primary encoded the state with another `STATE_VERSION` (another build).
    #[error(
        "machine state version {found}, this build reads version {STATE_VERSION}: primary and backup must run compatible builds"
    )]
    Version {
        /// Its version.
        found: u32,
    },
    /// The primary's guest has another memory size than this machine.
    #[error("the primary's guest has {primary} bytes of memory, this machine {here}")]
    MemSize {
        /// The primary's, in bytes.
        primary: u64,
        /// This machine's, in bytes.
        here: u64,
    },
    /// Switching dirty logging on or off failed.
    #[error("switching dirty logging {} failed", if *.on { "on" } else { "off" })]
    DirtyLogging {
        /// Whether it was being switched on.
        on: bool,
        /// What KVM said.
        source: kvm_ioctls::Error,
    },
    /// The vCPU could not be readied for a restore (its last exit finished, debugging off).
    #[error("readying the vCPU for a restore failed")]
    Vcpu(#[from] crate::vcpu::VcpuError),
    /// The instruction counter could not be rebased to the primary's count.
    #[error("the instruction counter cannot be rebased")]
    Counter(#[from] crate::vcpu::counter::CounterError),
}

/// Where the log continues after the state: everything before `next_seq` is in the state.
/// The default is a freshly booted guest's point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPoint {
    /// Guest exits so far.
    pub exits: u64,
    /// Instruction counter (positions after this point continue from it).
    pub counter: u64,
    /// The vCPU was stopped mid-execution (by a kick), not at exit `exits`.
    pub mid_execution: bool,
    /// Exit `exits` was a `hlt`: the guest runs on only after an interrupt, which the log
    /// delivers at that exit (since state version 5; a guest whose only exits while idle are
    /// halts, one whose interrupt controller ends interrupts itself, could not be given a
    /// backup before).
    pub halted: bool,
    /// Console bytes the guest had produced.
    pub console_bytes: u64,
    /// The console hash there (see `ConsoleStream::hash`).
    pub console_hash: u64,
    /// The recorder's clock at this point; the backup's clock continues from it if it goes live.
    pub clock_ns: u64,
    /// First log entry after the state.
    pub next_seq: u64,
    /// Console bytes the primary had released to the world.
    pub released: u64,
}

impl LogPoint {
    /// The console stream at this point, for a replay or run that continues from it.
    pub fn console(&self) -> ConsoleStream {
        ConsoleStream {
            hash: self.console_hash,
            bytes: self.console_bytes,
        }
    }
}

/// Everything but memory, sent last, while the primary's guest is paused.
#[derive(Debug, Serialize, Deserialize)]
pub struct MachineState {
    /// `STATE_VERSION`: encoded first, so a mismatch is caught before the rest is trusted.
    pub version: u32,
    /// Guest memory size; the backup's must match.
    pub mem_bytes: u64,
    /// The vCPU.
    pub cpu: CpuState,
    /// The devices.
    pub devices: DevicesState,
    /// Where the log continues.
    pub point: LogPoint,
    /// The guest's whole console so far (`point.console_bytes` bytes). The backup starts its
    /// transcript with it, and if it goes live it releases what the old primary had not.
    pub console_history: Vec<u8>,
    /// The guest had ended at this point (a state sent after its power-off or triple fault):
    /// there is nothing to replay, and the machine must never run again.
    pub ended: Option<crate::outcome::Ended>,
}

impl MachineState {
    /// Saves the stopped machine (the caller is the vCPU thread, between runs).
    pub fn save(m: &mut Machine, point: LogPoint) -> Result<Self, SnapshotError> {
        Ok(Self {
            version: STATE_VERSION,
            mem_bytes: m.memory().len() as u64,
            cpu: CpuState::save(&m.kvm, &mut m.vcpu)?,
            devices: m.bus.save_state(),
            point,
            console_history: Vec::new(),
            ended: None,
        })
    }

    /// The bytes a backup decodes with [`MachineState::decode`] (layout at [`STATE_MAGIC`]).
    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        let mut out = Vec::with_capacity(8 + self.console_history.len() + 4096);
        out.extend_from_slice(&STATE_MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        postcard::to_extend(self, out).map_err(|e| SnapshotError::Encode(e.to_string()))
    }

    /// Decodes what [`MachineState::encode`] produced, refusing another build's version and any
    /// malformed or trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let Some((magic, rest)) = bytes.split_first_chunk::<4>() else {
            return Err(SnapshotError::Decode(format!("only {} bytes", bytes.len())));
        };
        if *magic != STATE_MAGIC {
            return Err(SnapshotError::Decode(format!(
                "starts with {magic:02x?}, not a machine state (expected {STATE_MAGIC:02x?})"
            )));
        }
        // Check the version before trusting the rest of the layout.
        let Some((version, body)) = rest.split_first_chunk::<4>() else {
            return Err(SnapshotError::Decode("no version after the magic".into()));
        };
        let version = u32::from_le_bytes(*version);
        if version != STATE_VERSION {
            return Err(SnapshotError::Version { found: version });
        }
        let (state, trailing): (Self, _) =
            postcard::take_from_bytes(body).map_err(|e| SnapshotError::Decode(e.to_string()))?;
        if !trailing.is_empty() {
            return Err(SnapshotError::Decode(format!(
                "{} bytes after the end of the state",
                trailing.len()
            )));
        }
        if state.version != version {
            return Err(SnapshotError::Decode(format!(
                "header says version {version}, body {}",
                state.version
            )));
        }
        Ok(state)
    }

    /// Installs vCPU, devices and counter into a machine whose memory already holds the
    /// primary's pages.
    pub fn restore(&self, m: &mut Machine) -> Result<(), SnapshotError> {
        let here = m.memory().len() as u64;
        if self.mem_bytes != here {
            return Err(SnapshotError::MemSize {
                primary: self.mem_bytes,
                here,
            });
        }
        self.cpu.restore(&mut m.vcpu)?;
        m.bus.restore_state(&self.devices)?;
        m.counter.rebase(self.point.counter)?;
        Ok(())
    }
}
