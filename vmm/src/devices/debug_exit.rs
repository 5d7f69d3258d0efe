//! QEMU's `isa-debug-exit` device at port 0xf4: a guest (typically a test kernel) writes an
//! exit code and the VMM stops the VM with it.
//!
//! The raw value is recorded, zero-extended from the access width; QEMU's convention of
//! exiting with `(value << 1) | 1` is left to the VMM. Only accesses starting at 0xf4 count.
//! A second write before the VMM collects the first replaces it.

use super::StateHash;
use super::pic::StateHasher;
use super::state::{DebugExitState, DeviceStateError};

/// The port QEMU's isa-debug-exit uses by default, so test kernels work unchanged.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// The isa-debug-exit port.
#[derive(Debug, Clone, Default)]
pub struct DebugExit {
    request: Option<u32>,
}

impl DebugExit {
    /// The device with no exit request.
    pub fn new() -> Self {
        Self::default()
    }

    /// The uncollected exit request, for [`DebugExit::restore`].
    pub fn save(&self) -> DebugExitState {
        DebugExitState {
            request: self.request,
        }
    }

    /// A port in exactly the saved state. Every exit code is valid, so this cannot fail
    /// today; it returns a `Result` like every other device's `restore`.
    pub fn restore(state: &DebugExitState) -> Result<Self, DeviceStateError> {
        Ok(Self {
            request: state.request,
        })
    }

    /// The code the guest wrote since the last call, if any; clears it.
    pub fn take_exit_request(&mut self) -> Option<u32> {
        self.request.take()
    }

    /// Nothing is readable: the bus floats.
    pub fn read(&mut self, _port: u16, data: &mut [u8]) {
        data.fill(0xff);
    }

    /// The whole access is one value, so unlike the byte-register devices this port takes it
    /// unsplit (little-endian, 1, 2 or 4 bytes).
    pub fn write(&mut self, port: u16, data: &[u8]) {
        if port != DEBUG_EXIT_PORT {
            return;
        }
        let mut bytes = [0u8; 4];
        let len = data.len().min(bytes.len());
        bytes[..len].copy_from_slice(&data[..len]);
        self.request = Some(u32::from_le_bytes(bytes));
    }
}

impl StateHash for DebugExit {
    /// Covers the uncollected exit request.
    fn state_hash(&self) -> u64 {
        StateHasher::new(b"isa-debug-exit")
            .bool(self.request.is_some())
            .u32(self.request.unwrap_or(0))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::FakeEnv;

    fn write(dev: &mut DebugExit, port: u16, data: &[u8]) {
        dev.write(port, data);
    }

    #[test]
    fn nothing_requested_initially() {
        let mut dev = DebugExit::new();
        assert_eq!(dev.take_exit_request(), None);
    }

    #[test]
    fn byte_write_requests_exit_once() {
        let mut dev = DebugExit::new();
        write(&mut dev, DEBUG_EXIT_PORT, &[0x31]);
        assert_eq!(dev.take_exit_request(), Some(0x31));
        assert_eq!(dev.take_exit_request(), None, "request is consumed");
    }

    #[test]
    fn zero_is_a_valid_code() {
        let mut dev = DebugExit::new();
        write(&mut dev, DEBUG_EXIT_PORT, &[0]);
        assert_eq!(dev.take_exit_request(), Some(0));
    }

    #[test]
    fn wider_writes_are_zero_extended_little_endian() {
        let mut dev = DebugExit::new();
        write(&mut dev, DEBUG_EXIT_PORT, &[0x34, 0x12]);
        assert_eq!(dev.take_exit_request(), Some(0x1234));
        write(&mut dev, DEBUG_EXIT_PORT, &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(dev.take_exit_request(), Some(0x1234_5678));
        write(&mut dev, DEBUG_EXIT_PORT, &[0xff]);
        assert_eq!(dev.take_exit_request(), Some(0xff), "no sign extension");
    }

    #[test]
    fn later_write_replaces_an_uncollected_one() {
        let mut dev = DebugExit::new();
        write(&mut dev, DEBUG_EXIT_PORT, &[1]);
        write(&mut dev, DEBUG_EXIT_PORT, &[2]);
        assert_eq!(dev.take_exit_request(), Some(2));
    }

    #[test]
    fn writes_not_starting_at_0xf4_are_ignored() {
        let mut dev = DebugExit::new();
        write(&mut dev, DEBUG_EXIT_PORT + 1, &[7]);
        assert_eq!(dev.take_exit_request(), None);
    }

    #[test]
    fn reads_return_all_ones_at_every_width() {
        let mut dev = DebugExit::new();
        for width in [1usize, 2, 4] {
            let mut data = vec![0u8; width];
            dev.read(DEBUG_EXIT_PORT, &mut data);
            assert!(data.iter().all(|&b| b == 0xff), "width {width}");
        }
        assert_eq!(dev.take_exit_request(), None, "reads request nothing");
    }

    #[test]
    fn state_hash_reflects_a_pending_request() {
        let mut dev = DebugExit::new();
        let idle = dev.state_hash();
        write(&mut dev, DEBUG_EXIT_PORT, &[0]);
        let pending_zero = dev.state_hash();
        assert_ne!(pending_zero, idle, "a pending 0 differs from no request");
        dev.take_exit_request();
        assert_eq!(dev.state_hash(), idle);
    }

    mod saved_state {
        use proptest::collection::vec;
        use proptest::prelude::*;

        use super::*;
        use crate::devices::state::twins::{self, PortOp, Seen};

        #[derive(Debug, Clone)]
        enum DebugExitOp {
            Port(PortOp),
            Take,
        }

        /// Port accesses whole, as the bus hands them to this device.
        fn apply(dev: &mut DebugExit, op: &DebugExitOp, _env: &mut FakeEnv) -> Seen {
            match op {
                DebugExitOp::Port(PortOp::Read { port, width }) => {
                    let mut data = vec![0u8; *width];
                    dev.read(*port, &mut data);
                    Seen::Bytes(data)
                }
                DebugExitOp::Port(PortOp::Write { port, data }) => {
                    dev.write(*port, data);
                    Seen::Nothing
                }
                // The port has no clock.
                DebugExitOp::Port(PortOp::Advance { .. }) => Seen::Nothing,
                DebugExitOp::Take => Seen::Code(dev.take_exit_request()),
            }
        }

        fn debug_exit_op() -> impl Strategy<Value = DebugExitOp> {
            let ports = [DEBUG_EXIT_PORT, DEBUG_EXIT_PORT + 1, DEBUG_EXIT_PORT + 3];
            prop_oneof![
                3 => twins::port_op(&ports).prop_map(DebugExitOp::Port),
                1 => Just(DebugExitOp::Take),
            ]
        }

        fn save_and_restore(dev: &DebugExit) -> DebugExit {
            DebugExit::restore(&twins::through_json(&dev.save())).unwrap()
        }

        #[test]
        fn a_pending_request_survives() {
            let mut original = DebugExit::new();
            write(&mut original, DEBUG_EXIT_PORT, &[0x34, 0x12]);
            let mut restored = save_and_restore(&original);
            assert_eq!(restored.state_hash(), original.state_hash());
            assert_eq!(restored.take_exit_request(), Some(0x1234));
            assert_eq!(save_and_restore(&restored).take_exit_request(), None);
        }

        proptest! {
            #[test]
            fn restored_debug_exit_is_indistinguishable(
                before in vec(debug_exit_op(), 0..10),
                after in vec(debug_exit_op(), 1..20),
            ) {
                let mut env = FakeEnv::default();
                let mut original = DebugExit::new();
                for op in &before {
                    apply(&mut original, op, &mut env);
                }
                let mut restored = save_and_restore(&original);
                prop_assert_eq!(restored.save(), original.save());
                twins::run_twins(&mut original, &mut restored, &env, &after, apply)?;
            }
        }

        /// Every `u32` is a valid exit code, so nothing in a parsed state can be out of range;
        /// a code too wide for the port is already refused by the parser.
        #[test]
        fn an_out_of_range_code_does_not_parse() {
            let parsed = serde_json::from_str::<DebugExitState>(r#"{"request":4294967296}"#);
            assert!(parsed.is_err());
        }
    }
}
