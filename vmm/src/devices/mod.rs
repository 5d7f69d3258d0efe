//! Emulated PC devices. Every device sits behind the [`crate::bus::Bus`] and sees the outside
//! world only through [`DeviceEnv`], the one seam where record and replay plug in.

pub mod debug_exit;
pub mod nic;
pub mod pic;
pub mod pit;
pub mod rtc;
pub mod serial;
pub mod state;
pub mod virtio;

pub use state::{
    DebugExitState, DeviceStateError, DevicesState, PicChipState, PicState, PitChannelState,
    PitState, RtcState, SerialState,
};

/// What a device may ask of the world outside the guest. Every method here is a source of
/// non-determinism: the recorder logs what it returns, the replayer answers from the log.
pub trait DeviceEnv {
    /// Monotonic virtual clock in nanoseconds (never goes backwards).
    fn clock_ns(&mut self) -> u64;
    /// Wall-clock time, seconds since the Unix epoch (UTC).
    fn wall_clock_unix_secs(&mut self) -> u64;
}

/// What every device has, whether or not the bus hands it bytes (isa-debug-exit takes whole
/// accesses).
pub trait StateHash {
    /// A stable hash of the device's guest-visible state, folded into replay digests.
    fn state_hash(&self) -> u64;
}

/// A device of byte-wide registers on the port-I/O bus. `port` is the absolute I/O port (a
/// device may own several ranges, as the 8259 pair does). The bus hands it wider accesses a
/// byte at a time (see [`crate::bus`]), so a byte may arrive for a port just past the device's
/// range: it must read 0xff and drop a write there, as on a port nothing decodes.
pub trait PioDevice: StateHash + Send {
    /// A guest read of the byte at `port`.
    fn read(&mut self, port: u16, env: &mut dyn DeviceEnv) -> u8;
    /// A guest write of `value` to the byte at `port`.
    fn write(&mut self, port: u16, value: u8, env: &mut dyn DeviceEnv);
}

/// The port writes with which Linux programs the 8259 pair (ICW1–ICW4: vectors 0x20 and 0x28,
/// the slave on line 2), for unit tests that need a working PIC.
#[cfg(test)]
pub const LINUX_PIC_INIT: [(u16, u8); 8] = [
    (0x20, 0x11),
    (0x21, 0x20),
    (0x21, 0x04),
    (0x21, 0x01),
    (0xa0, 0x11),
    (0xa1, 0x28),
    (0xa1, 0x02),
    (0xa1, 0x01),
];

/// A fixed environment for unit tests: a clock you set by hand.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct FakeEnv {
    /// What `clock_ns` answers.
    pub now_ns: u64,
    /// What `wall_clock_unix_secs` answers.
    pub wall_secs: u64,
}

#[cfg(test)]
impl DeviceEnv for FakeEnv {
    fn clock_ns(&mut self) -> u64 {
        self.now_ns
    }
    fn wall_clock_unix_secs(&mut self) -> u64 {
        self.wall_secs
    }
}
