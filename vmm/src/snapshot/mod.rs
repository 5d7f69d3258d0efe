//! A running machine's complete state, for live state transfer to a new backup: guest memory
//! (sent page by page, see [`memory`]), the vCPU, the devices, and where the log continues.

pub mod cpu;
pub mod memory;

use serde::{Deserialize, Serialize};

use crate::console::ConsoleStream;
use crate::devices::{DeviceStateError, DevicesState};
use crate::machine::Machine;
use crate::snapshot::cpu::{CpuState, CpuStateError};

/// Bumped whenever [`MachineState`]'s encoding changes; both ends must agree.
pub const STATE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Cpu(#[from] CpuStateError),
    #[error(transparent)]
    Devices(#[from] DeviceStateError),
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    #[error("encoding the machine state failed: {0}")]
    Encode(String),
    #[error("the machine state from the primary is malformed: {0}")]
    Decode(String),
    #[error("machine state version {found}, this build reads version {STATE_VERSION}")]
    Version { found: u32 },
    #[error("the primary's guest has {primary} bytes of memory, this machine {here}")]
    MemSize { primary: u64, here: u64 },
    #[error("switching dirty logging {} failed", if *.on { "on" } else { "off" })]
    DirtyLogging { on: bool, source: kvm_ioctls::Error },
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
    pub console_bytes: u64,
    pub console_hash: u64,
    /// The recorder's clock at this point; the backup's clock continues from it if it goes live.
    pub clock_ns: u64,
    /// First log entry after the state.
    pub next_seq: u64,
    /// Console bytes the primary had released to the world.
    pub released: u64,
}

impl LogPoint {
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
    pub version: u32,
    pub mem_bytes: u64,
    pub cpu: CpuState,
    pub devices: DevicesState,
    pub point: LogPoint,
    /// The guest's whole console so far (`point.console_bytes` bytes). The backup starts its
    /// transcript with it, and if it goes live it releases what the old primary had not.
    pub console_history: Vec<u8>,
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
        })
    }

    pub fn encode(&self) -> Result<Vec<u8>, SnapshotError> {
        bincode::serialize(self).map_err(|e| SnapshotError::Encode(e.to_string()))
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        // Check the version before trusting the rest of the layout.
        let version = bytes
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .ok_or_else(|| SnapshotError::Decode(format!("{} bytes", bytes.len())))?;
        if version != STATE_VERSION {
            return Err(SnapshotError::Version { found: version });
        }
        bincode::deserialize(bytes).map_err(|e| SnapshotError::Decode(e.to_string()))
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
