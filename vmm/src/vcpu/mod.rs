//! The one vCPU: register access through `KVM_CAP_SYNC_REGS`, interrupt injection without an
//! in-kernel irqchip, and guest-debug controls used by the replayer's final approach.

pub mod counter;
pub mod kick;

use kvm_bindings::{
    KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP, kvm_guest_debug,
    kvm_regs, kvm_sregs,
};
use kvm_ioctls::{SyncReg, VcpuFd};
use logging_channel::format::Regs;
use vmm_sys_util::ioctl::ioctl_with_ref;

const KVMIO: u32 = 0xAE;
// kvm-ioctls does not wrap KVM_INTERRUPT (it is only meaningful without an in-kernel irqchip).
// In a private module: the macro declares a `pub fn`, which is no part of this crate's API.
mod ioctls {
    vmm_sys_util::ioctl_iow_nr!(
        KVM_INTERRUPT,
        super::KVMIO,
        0x86,
        kvm_bindings::kvm_interrupt
    );
}
use ioctls::KVM_INTERRUPT;

/// A vCPU ioctl that failed.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// Injecting an interrupt failed.
    #[error("KVM_INTERRUPT (vector {vector:#x}) failed")]
    Interrupt {
        /// The vector.
        vector: u8,
        /// What KVM said.
        source: std::io::Error,
    },
    /// Setting or clearing a breakpoint or single step failed.
    #[error("KVM_SET_GUEST_DEBUG failed")]
    SetGuestDebug(#[source] kvm_ioctls::Error),
    /// Reading the general registers failed.
    #[error("KVM_GET_REGS failed")]
    GetRegs(#[source] kvm_ioctls::Error),
    /// Writing the general registers failed.
    #[error("KVM_SET_REGS failed")]
    SetRegs(#[source] kvm_ioctls::Error),
    /// Reading the special registers failed.
    #[error("KVM_GET_SREGS failed")]
    GetSregs(#[source] kvm_ioctls::Error),
    /// Writing the special registers failed.
    #[error("KVM_SET_SREGS failed")]
    SetSregs(#[source] kvm_ioctls::Error),
    /// Completing a pending exit before saving state failed.
    #[error("KVM_RUN with immediate_exit (to finish the exit's I/O before saving state) failed")]
    CompleteExit(#[source] kvm_ioctls::Error),
    /// Completing a pending exit ran the guest instead (the exit it made).
    #[error("KVM_RUN with immediate_exit ran the guest (exit {0}) instead of returning EINTR")]
    CompleteExitRan(String),
}

/// Converts KVM's register block to the log's register set: the same 18 registers under the
/// same names, copied field by field from the log format's one list of them.
pub fn regs_from_kvm(r: &kvm_regs) -> Regs {
    macro_rules! copy_from {
        (($from:ident) $($reg:ident)*) => {
            Regs { $($reg: $from.$reg),* }
        };
    }
    logging_channel::with_regs!(copy_from!(r))
}

/// Requested-privilege level of the code segment: the guest's current privilege level.
pub fn cpl(sregs: &kvm_sregs) -> u8 {
    // In long mode CS.DPL is the CPL; SS.DPL agrees for all normal code.
    sregs.cs.dpl
}

/// The guest's one vCPU with sync registers enabled, so registers are free to read at every exit.
#[derive(Debug)]
pub struct Vcpu {
    /// KVM's vCPU; for what this wrapper does not cover (state saving, runs).
    pub fd: VcpuFd,
    /// The debug state last given to KVM (control, DR0, DR7): setting it again is skipped,
    /// since `KVM_SET_GUEST_DEBUG` costs about as much as a third of a stop on PVM.
    debug: (u32, u64, u64),
}

impl Vcpu {
    /// Wraps `fd`, asking KVM to sync registers, special registers and events at every exit.
    pub fn new(mut fd: VcpuFd) -> Self {
        fd.set_sync_valid_reg(SyncReg::Register);
        fd.set_sync_valid_reg(SyncReg::SystemRegister);
        fd.set_sync_valid_reg(SyncReg::VcpuEvents);
        Self {
            fd,
            debug: (0, 0, 0),
        }
    }

    /// Registers as of the last exit (valid after the first `KVM_RUN`).
    pub fn regs(&self) -> kvm_regs {
        self.fd.sync_regs().regs
    }

    /// Special registers as of the last exit (valid after the first `KVM_RUN`).
    pub fn sregs(&self) -> kvm_sregs {
        self.fd.sync_regs().sregs
    }

    /// Registers read with an ioctl: needed before the first run, when sync regs are not yet valid.
    pub fn get_regs(&self) -> Result<kvm_regs, VcpuError> {
        self.fd.get_regs().map_err(VcpuError::GetRegs)
    }

    /// Special registers read with an ioctl (before the first run).
    pub fn get_sregs(&self) -> Result<kvm_sregs, VcpuError> {
        self.fd.get_sregs().map_err(VcpuError::GetSregs)
    }

    /// Writes the general registers.
    pub fn set_regs(&self, regs: &kvm_regs) -> Result<(), VcpuError> {
        self.fd.set_regs(regs).map_err(VcpuError::SetRegs)
    }

    /// Writes the special registers.
    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), VcpuError> {
        self.fd.set_sregs(sregs).map_err(VcpuError::SetSregs)
    }

    /// Whether KVM would accept an interrupt now: IF set and no interrupt shadow.
    pub fn ready_for_interrupt(&mut self) -> bool {
        let run = self.fd.get_kvm_run();
        run.ready_for_interrupt_injection != 0 && run.if_flag != 0
    }

    /// Queues `vector` for delivery at the next entry. The caller must have checked
    /// [`Self::ready_for_interrupt`]: KVM ignores IF here and a second call replaces the first.
    pub fn inject(&self, vector: u8) -> Result<(), VcpuError> {
        let irq = kvm_bindings::kvm_interrupt {
            irq: u32::from(vector),
        };
        // SAFETY: KVM_INTERRUPT reads one `kvm_interrupt` from the pointer, which is valid.
        let ret = unsafe { ioctl_with_ref(&self.fd, KVM_INTERRUPT(), &irq) };
        if ret < 0 {
            return Err(VcpuError::Interrupt {
                vector,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Pointer to `kvm_run.immediate_exit`, for the kick signal handler.
    pub fn immediate_exit_ptr(&mut self) -> *mut u8 {
        &mut self.fd.get_kvm_run().immediate_exit
    }

    /// Clears `kvm_run.immediate_exit`, which a kick sets, so the next `KVM_RUN` enters the
    /// guest.
    pub fn clear_immediate_exit(&mut self) {
        self.fd.set_kvm_immediate_exit(0);
    }

    /// Finishes the instruction of the last exit without running the guest any further.
    ///
    /// After a port or MMIO exit KVM has not yet advanced RIP (nor loaded RAX for an `in`): it
    /// does so at the start of the next `KVM_RUN`, and that pending step is not part of any
    /// state `KVM_GET_*` returns. State saved for another host must therefore be taken after a
    /// `KVM_RUN` with `immediate_exit` set, which completes the operation and returns EINTR
    /// before entering the guest (KVM API, "immediate_exit").
    pub fn complete_pending_exit(&mut self) -> Result<(), VcpuError> {
        self.fd.set_kvm_immediate_exit(1);
        let result = match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Ok(kvm_ioctls::VcpuExit::Intr) => Ok(()),
            Err(e) => Err(VcpuError::CompleteExit(e)),
            Ok(exit) => Err(VcpuError::CompleteExitRan(format!("{exit:?}"))),
        };
        self.fd.set_kvm_immediate_exit(0);
        result
    }

    /// Arms a hardware execution breakpoint at `rip` (DR0), or clears all debugging with `None`.
    pub fn set_breakpoint(&mut self, rip: Option<u64>) -> Result<(), VcpuError> {
        let mut dbg = kvm_guest_debug::default();
        if let Some(addr) = rip {
            dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP;
            dbg.arch.debugreg[0] = addr;
            // DR7: L0 enable, R/W0 = 00 (execute), LEN0 = 00.
            dbg.arch.debugreg[7] = 0x1;
        }
        self.set_debug(dbg)
    }

    /// Makes the next `KVM_RUN` execute exactly one instruction (at CPL0 on this host).
    pub fn set_single_step(&mut self, on: bool) -> Result<(), VcpuError> {
        let mut dbg = kvm_guest_debug::default();
        if on {
            dbg.control = KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP;
        }
        self.set_debug(dbg)
    }

    fn set_debug(&mut self, dbg: kvm_guest_debug) -> Result<(), VcpuError> {
        let state = (dbg.control, dbg.arch.debugreg[0], dbg.arch.debugreg[7]);
        if state == self.debug {
            return Ok(());
        }
        self.fd
            .set_guest_debug(&dbg)
            .map_err(VcpuError::SetGuestDebug)?;
        self.debug = state;
        Ok(())
    }
}
