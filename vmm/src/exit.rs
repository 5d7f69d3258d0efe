//! Decoding one `KVM_RUN` result: device I/O goes to the bus, everything else becomes a [`Stop`].
//! A free function over the decoded exit, so the policy is testable without a guest.

use kvm_ioctls::VcpuExit;

use crate::bus::Bus;
use crate::devices::DeviceEnv;

/// Why the vCPU is not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Guest-initiated: port or MMIO access, already carried out on the bus.
    Io {
        /// The I/O port, or the guest-physical address for MMIO.
        port: u64,
        /// A write (else a read).
        write: bool,
    },
    /// Guest-initiated: `hlt` (rip already past it).
    Halt,
    /// Triple fault.
    Shutdown,
    /// The VMM stopped the vCPU (kick signal or `immediate_exit`): not caused by the guest.
    Kicked,
    /// A guest-debug event (breakpoint or single step) the VMM asked for.
    Debug {
        /// Where the guest stopped.
        pc: u64,
    },
}

impl Stop {
    /// Guest-initiated exits are the backbone of positions: they happen at the same instruction
    /// in every run of the same guest with the same inputs.
    pub fn is_guest_exit(&self) -> bool {
        matches!(self, Stop::Io { .. } | Stop::Halt | Stop::Shutdown)
    }
}

/// A `KVM_RUN` result the VMM cannot continue from.
#[derive(Debug, thiserror::Error)]
pub enum ExitError {
    /// The `KVM_RUN` ioctl itself failed (other than by a kick's EINTR).
    #[error("KVM_RUN failed")]
    Run(#[source] std::io::Error),
    /// KVM could not emulate the guest's instruction (PVM emulates all CPL0 code).
    #[error(
        "KVM reported an internal error (the host's instruction emulator could not run the guest's instruction)"
    )]
    Internal,
    /// The CPU refused to enter the guest (invalid guest state).
    #[error("VM entry failed (hardware reason {reason:#x})")]
    FailEntry {
        /// The hardware's entry-failure reason.
        reason: u64,
    },
    /// An exit this VMM does not handle, or a debug exit nobody asked for (which one).
    #[error("unexpected VM exit: {0}")]
    Unexpected(String),
}

/// Carries out a `KVM_RUN` result: port I/O goes to `bus` (which may ask `env` for inputs),
/// MMIO reads float high; says why the vCPU stopped. EINTR and EAGAIN are kicks.
pub fn handle_exit(
    result: Result<VcpuExit<'_>, kvm_ioctls::Error>,
    bus: &mut Bus,
    env: &mut dyn DeviceEnv,
) -> Result<Stop, ExitError> {
    match result {
        Ok(VcpuExit::IoIn(port, data)) => {
            // String I/O (`rep ins`) hands us count*size bytes; the guest never uses it, but a
            // foreign image might, so each element is its own access.
            let size = io_size(data.len());
            for chunk in data.chunks_mut(size) {
                bus.read(port, chunk, env);
            }
            Ok(Stop::Io {
                port: u64::from(port),
                write: false,
            })
        }
        Ok(VcpuExit::IoOut(port, data)) => {
            let size = io_size(data.len());
            for chunk in data.chunks(size) {
                bus.write(port, chunk, env);
            }
            Ok(Stop::Io {
                port: u64::from(port),
                write: true,
            })
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            // Nothing is mapped for MMIO: reads float high, as on a PC.
            data.fill(0xff);
            bus.unclaimed_accesses += 1;
            Ok(Stop::Io {
                port: addr,
                write: false,
            })
        }
        Ok(VcpuExit::MmioWrite(addr, _)) => {
            bus.unclaimed_accesses += 1;
            Ok(Stop::Io {
                port: addr,
                write: true,
            })
        }
        Ok(VcpuExit::Hlt) => Ok(Stop::Halt),
        Ok(VcpuExit::Shutdown) => Ok(Stop::Shutdown),
        Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => Ok(Stop::Kicked),
        Ok(VcpuExit::Debug(arch)) => Ok(Stop::Debug { pc: arch.pc }),
        Ok(VcpuExit::InternalError) => Err(ExitError::Internal),
        Ok(VcpuExit::FailEntry(reason, _)) => Err(ExitError::FailEntry { reason }),
        Ok(other) => Err(ExitError::Unexpected(format!("{other:?}"))),
        Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Ok(Stop::Kicked),
        Err(e) => Err(ExitError::Run(std::io::Error::from_raw_os_error(e.errno()))),
    }
}

/// Width of one element of a (possibly repeated) port access: KVM reports count*size bytes.
fn io_size(total: usize) -> usize {
    match total {
        1 | 2 | 4 => total,
        n if n % 4 == 0 => 4,
        n if n % 2 == 0 => 2,
        _ => 1,
    }
    .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::FakeEnv;

    #[test]
    fn port_writes_reach_the_bus_and_count_as_guest_exits() {
        let mut bus = Bus::new();
        let mut env = FakeEnv::default();
        let stop = handle_exit(Ok(VcpuExit::IoOut(0xf4, &[3])), &mut bus, &mut env).unwrap();
        assert_eq!(
            stop,
            Stop::Io {
                port: 0xf4,
                write: true
            }
        );
        assert!(stop.is_guest_exit());
        assert_eq!(bus.devices.debug_exit.take_exit_request(), Some(3));
    }

    #[test]
    fn mmio_reads_float_high() {
        let mut bus = Bus::new();
        let mut env = FakeEnv::default();
        let mut data = [0u8; 4];
        let stop = handle_exit(
            Ok(VcpuExit::MmioRead(0xfee0_0000, &mut data)),
            &mut bus,
            &mut env,
        )
        .unwrap();
        assert_eq!(data, [0xff; 4]);
        assert!(stop.is_guest_exit());
    }

    #[test]
    fn eintr_is_a_kick_not_a_guest_exit() {
        let mut bus = Bus::new();
        let mut env = FakeEnv::default();
        let stop =
            handle_exit(Err(kvm_ioctls::Error::new(libc::EINTR)), &mut bus, &mut env).unwrap();
        assert_eq!(stop, Stop::Kicked);
        assert!(!stop.is_guest_exit());
    }

    #[test]
    fn other_errors_are_reported() {
        let mut bus = Bus::new();
        let mut env = FakeEnv::default();
        assert!(matches!(
            handle_exit(
                Err(kvm_ioctls::Error::new(libc::EFAULT)),
                &mut bus,
                &mut env
            ),
            Err(ExitError::Run(_))
        ));
        assert!(matches!(
            handle_exit(Ok(VcpuExit::InternalError), &mut bus, &mut env),
            Err(ExitError::Internal)
        ));
    }

    #[test]
    fn string_io_is_split_into_elements() {
        assert_eq!(io_size(1), 1);
        assert_eq!(io_size(8), 4);
        assert_eq!(io_size(6), 2);
        assert_eq!(io_size(3), 1);
    }
}
