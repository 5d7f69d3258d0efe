//! Decoding one `KVM_RUN` result: device I/O goes to the bus, everything else becomes a [`Stop`].
//! A free function over the decoded exit, so the policy is testable without a guest.

use kvm_ioctls::VcpuExit;

use crate::bus::Bus;
use crate::devices::DeviceEnv;

/// Why the vCPU is not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Guest-initiated: a port access (one, or a `rep ins/outs` string of them), already
    /// carried out on the bus.
    Io {
        /// The I/O port.
        port: u16,
        /// A write (else a read).
        write: bool,
    },
    /// Guest-initiated: an MMIO access, already carried out on the bus.
    Mmio {
        /// The guest-physical address.
        addr: u64,
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
        matches!(
            self,
            Stop::Io { .. } | Stop::Mmio { .. } | Stop::Halt | Stop::Shutdown
        )
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

/// A `KVM_RUN` result with the width of one element of a port access: KVM hands over a
/// `rep ins/outs` string as `count * size` bytes, and only the width tells a 4-byte `outsd`
/// from four `outsb`.
#[derive(Debug)]
pub struct RunExit<'a> {
    /// What `KVM_RUN` returned.
    pub result: Result<VcpuExit<'a>, kvm_ioctls::Error>,
    /// Bytes per port access (1, 2 or 4) for `IoIn`/`IoOut`; unused otherwise.
    pub io_size: usize,
}

/// Carries out a `KVM_RUN` result: port and MMIO accesses go to `bus` (which may ask `env` for
/// inputs), each element of a string access separately at its exact width; says why the vCPU
/// stopped. EINTR and EAGAIN are kicks.
pub fn handle_exit(
    exit: RunExit<'_>,
    bus: &mut Bus,
    env: &mut dyn DeviceEnv,
) -> Result<Stop, ExitError> {
    let size = exit.io_size;
    match exit.result {
        Ok(VcpuExit::IoIn(port, data)) => {
            for chunk in data.chunks_mut(element_size(size, data.len())?) {
                bus.read(port, chunk, env);
            }
            Ok(Stop::Io { port, write: false })
        }
        Ok(VcpuExit::IoOut(port, data)) => {
            for chunk in data.chunks(element_size(size, data.len())?) {
                bus.write(port, chunk, env);
            }
            Ok(Stop::Io { port, write: true })
        }
        Ok(VcpuExit::MmioRead(addr, data)) => {
            bus.mmio_read(addr, data, env);
            Ok(Stop::Mmio { addr, write: false })
        }
        Ok(VcpuExit::MmioWrite(addr, data)) => {
            bus.mmio_write(addr, data, env);
            Ok(Stop::Mmio { addr, write: true })
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

/// Checks the width KVM reported against the bytes it handed over.
fn element_size(size: usize, total: usize) -> Result<usize, ExitError> {
    if matches!(size, 1 | 2 | 4) && total.is_multiple_of(size) && total > 0 {
        Ok(size)
    } else {
        Err(ExitError::Unexpected(format!(
            "port access of {total} bytes in elements of {size}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::FakeEnv;

    /// A port access KVM reports with element width `io_size`.
    fn io(result: Result<VcpuExit<'_>, kvm_ioctls::Error>, io_size: usize) -> RunExit<'_> {
        RunExit { result, io_size }
    }

    #[test]
    fn port_writes_reach_the_bus_and_count_as_guest_exits() {
        let mut bus = Bus::new();
        let mut env = FakeEnv::default();
        let stop = handle_exit(io(Ok(VcpuExit::IoOut(0xf4, &[3])), 1), &mut bus, &mut env).unwrap();
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
    fn mmio_goes_to_the_bus_and_unmapped_reads_float_high() {
        let mut bus = Bus::new();
        let mut env = FakeEnv::default();
        let mut data = [0u8; 4];
        let stop = handle_exit(
            io(Ok(VcpuExit::MmioRead(0xfee0_0000, &mut data)), 0),
            &mut bus,
            &mut env,
        )
        .unwrap();
        assert_eq!(data, [0xff; 4]);
        assert_eq!(
            stop,
            Stop::Mmio {
                addr: 0xfee0_0000,
                write: false
            }
        );
        assert!(stop.is_guest_exit());
        handle_exit(
            io(Ok(VcpuExit::MmioWrite(0xfee0_0000, &[1, 2])), 0),
            &mut bus,
            &mut env,
        )
        .unwrap();
        assert_eq!(bus.unclaimed_accesses, 2);
    }

    #[test]
    fn eintr_is_a_kick_not_a_guest_exit() {
        let mut bus = Bus::new();
        let mut env = FakeEnv::default();
        let stop = handle_exit(
            io(Err(kvm_ioctls::Error::new(libc::EINTR)), 0),
            &mut bus,
            &mut env,
        )
        .unwrap();
        assert_eq!(stop, Stop::Kicked);
        assert!(!stop.is_guest_exit());
    }

    #[test]
    fn other_errors_are_reported() {
        let mut bus = Bus::new();
        let mut env = FakeEnv::default();
        assert!(matches!(
            handle_exit(
                io(Err(kvm_ioctls::Error::new(libc::EFAULT)), 0),
                &mut bus,
                &mut env
            ),
            Err(ExitError::Run(_))
        ));
        assert!(matches!(
            handle_exit(io(Ok(VcpuExit::InternalError), 0), &mut bus, &mut env),
            Err(ExitError::Internal)
        ));
        assert!(matches!(
            handle_exit(
                io(Ok(VcpuExit::IoOut(0x80, &[0; 3])), 2),
                &mut bus,
                &mut env
            ),
            Err(ExitError::Unexpected(_))
        ));
    }

    /// `rep outsb` of four bytes is four 1-byte writes; `outsd` of one element one 4-byte write.
    /// Told apart only by the width KVM reports (the byte count is 4 either way).
    #[test]
    fn string_io_is_split_at_the_reported_width() {
        let mut env = FakeEnv::default();
        // The isa-debug-exit port takes whole accesses: its exit code is the value written.
        let mut bus = Bus::new();
        handle_exit(
            io(Ok(VcpuExit::IoOut(0xf4, &[1, 2, 3, 4])), 4),
            &mut bus,
            &mut env,
        )
        .unwrap();
        assert_eq!(
            bus.devices.debug_exit.take_exit_request(),
            Some(0x0403_0201)
        );
        let mut bus = Bus::new();
        handle_exit(
            io(Ok(VcpuExit::IoOut(0xf4, &[1, 2, 3, 9])), 1),
            &mut bus,
            &mut env,
        )
        .unwrap();
        // Four separate writes: the last one's code stands.
        assert_eq!(bus.devices.debug_exit.take_exit_request(), Some(9));
        // `rep insb` from the PIC's mask register: every element read on its own.
        let mut bus = Bus::new();
        bus.write(0x21, &[0xa5], &mut env);
        let mut data = [0u8; 3];
        handle_exit(
            io(Ok(VcpuExit::IoIn(0x21, &mut data)), 1),
            &mut bus,
            &mut env,
        )
        .unwrap();
        assert_eq!(data, [0xa5; 3]);
    }
}
