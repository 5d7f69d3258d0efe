//! The vCPU's complete architectural state, as Firecracker saves it (minus the LAPIC, which this
//! VM does not have, and nested state, which fails with EINVAL on this host).

use kvm_bindings::{
    Msrs, kvm_debugregs, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events,
    kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::Kvm;
use serde::{Deserialize, Serialize};

use crate::vcpu::Vcpu;

/// Why the vCPU's state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum CpuStateError {
    /// A `KVM_GET_*` ioctl failed.
    #[error("{what} failed while saving the vCPU")]
    Save {
        /// Which one.
        what: &'static str,
        /// What KVM said.
        source: kvm_ioctls::Error,
    },
    /// A `KVM_SET_*` ioctl failed.
    #[error("{what} failed while restoring the vCPU")]
    Restore {
        /// Which one.
        what: &'static str,
        /// What KVM said.
        source: kvm_ioctls::Error,
    },
    /// `KVM_SET_MSRS` stopped before the end of the list: this host does not take an MSR the
    /// primary's had.
    #[error("KVM_SET_MSRS restored {set} of {total} MSRs; MSR {index:#x} was refused")]
    MsrRefused {
        /// MSRs restored.
        set: usize,
        /// MSRs in the state.
        total: usize,
        /// The first one refused.
        index: u32,
    },
    /// The list of MSRs could not be built.
    #[error("building the MSR list failed: {0}")]
    MsrList(String),
}

/// KVM's paravirtual MSRs: KVM_SET_MSRS stops at the first of them when the guest's PV CPUID is
/// off (measured on this host), and the guest never uses them.
fn is_kvm_pv_msr(index: u32) -> bool {
    (0x4b56_4d00..=0x4b56_4dff).contains(&index) || index == 0x11 || index == 0x12
}

/// The vCPU's saved architectural state (opaque; see `save` and `restore`).
#[derive(Debug, Serialize, Deserialize)]
pub struct CpuState {
    regs: kvm_regs,
    sregs: kvm_sregs,
    xsave: kvm_xsave,
    xcrs: kvm_xcrs,
    /// (index, value) of every MSR the host lets us read.
    msrs: Vec<(u32, u64)>,
    events: kvm_vcpu_events,
    debugregs: kvm_debugregs,
    mp_state: kvm_mp_state,
    /// `kvm_run` fields the VMM reads at an exit (whether an interrupt may be injected). They
    /// are outputs of `KVM_RUN`, so a restored vCPU that has not run yet needs them written.
    ready_for_interrupt: bool,
    if_flag: bool,
}

fn save<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, CpuStateError> {
    r.map_err(|source| CpuStateError::Save { what, source })
}

fn restore<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, CpuStateError> {
    r.map_err(|source| CpuStateError::Restore { what, source })
}

impl CpuState {
    /// Reads everything with ioctls (not the sync-register copy, which may be stale before the
    /// first run). The vCPU must be stopped (the caller is its thread, between runs).
    pub fn save(kvm: &Kvm, vcpu: &mut Vcpu) -> Result<Self, CpuStateError> {
        let fd = &vcpu.fd;
        let regs = save("KVM_GET_REGS", fd.get_regs())?;
        let sregs = save("KVM_GET_SREGS", fd.get_sregs())?;
        let xsave = save("KVM_GET_XSAVE", fd.get_xsave())?;
        let xcrs = save("KVM_GET_XCRS", fd.get_xcrs())?;
        let events = save("KVM_GET_VCPU_EVENTS", fd.get_vcpu_events())?;
        let debugregs = save("KVM_GET_DEBUGREGS", fd.get_debug_regs())?;
        let mp_state = save("KVM_GET_MP_STATE", fd.get_mp_state())?;
        let msrs = save_msrs(kvm, vcpu)?;
        let run = vcpu.fd.get_kvm_run();
        Ok(Self {
            regs,
            sregs,
            xsave,
            xcrs,
            msrs,
            events,
            debugregs,
            mp_state,
            ready_for_interrupt: run.ready_for_interrupt_injection != 0,
            if_flag: run.if_flag != 0,
        })
    }

    /// Loads the state into a vCPU that has the same CPUID (same host kind, same image).
    pub fn restore(&self, vcpu: &mut Vcpu) -> Result<(), CpuStateError> {
        let fd = &vcpu.fd;
        // Firecracker's order: MP state, registers, then the rest, events last.
        restore("KVM_SET_MP_STATE", fd.set_mp_state(self.mp_state))?;
        restore("KVM_SET_REGS", fd.set_regs(&self.regs))?;
        restore("KVM_SET_SREGS", fd.set_sregs(&self.sregs))?;
        // SAFETY: `self.xsave` is a whole `kvm_xsave`, which is all KVM_SET_XSAVE reads.
        restore("KVM_SET_XSAVE", unsafe { fd.set_xsave(&self.xsave) })?;
        restore("KVM_SET_XCRS", fd.set_xcrs(&self.xcrs))?;
        restore("KVM_SET_DEBUGREGS", fd.set_debug_regs(&self.debugregs))?;
        restore_msrs(vcpu, &self.msrs)?;
        let fd = &vcpu.fd;
        restore("KVM_SET_VCPU_EVENTS", fd.set_vcpu_events(&self.events))?;
        // The VMM reads registers from the sync area and these flags from kvm_run; both are
        // written by KVM only at exits, so fill them in as the primary saw them. Nothing is
        // marked dirty: KVM ignores the sync area on entry unless told otherwise.
        let sync = vcpu.fd.sync_regs_mut();
        sync.regs = self.regs;
        sync.sregs = self.sregs;
        sync.events = self.events;
        let run = vcpu.fd.get_kvm_run();
        run.ready_for_interrupt_injection = u8::from(self.ready_for_interrupt);
        run.if_flag = u8::from(self.if_flag);
        Ok(())
    }

    /// The saved instruction pointer.
    pub fn rip(&self) -> u64 {
        self.regs.rip
    }
}

fn save_msrs(kvm: &Kvm, vcpu: &Vcpu) -> Result<Vec<(u32, u64)>, CpuStateError> {
    let list = save("KVM_GET_MSR_INDEX_LIST", kvm.get_msr_index_list())?;
    let mut indices: Vec<u32> = list
        .as_slice()
        .iter()
        .copied()
        .filter(|i| !is_kvm_pv_msr(*i))
        .collect();
    // KVM_GET_MSRS stops at the first MSR it cannot read: drop that one and go on.
    loop {
        let entries: Vec<kvm_msr_entry> = indices
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|e| CpuStateError::MsrList(format!("{e:?}")))?;
        let read = save("KVM_GET_MSRS", vcpu.fd.get_msrs(&mut msrs))?;
        if read >= indices.len() {
            return Ok(msrs.as_slice().iter().map(|e| (e.index, e.data)).collect());
        }
        indices.remove(read);
    }
}

fn restore_msrs(vcpu: &Vcpu, saved: &[(u32, u64)]) -> Result<(), CpuStateError> {
    let entries: Vec<kvm_msr_entry> = saved
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs =
        Msrs::from_entries(&entries).map_err(|e| CpuStateError::MsrList(format!("{e:?}")))?;
    let set = restore("KVM_SET_MSRS", vcpu.fd.set_msrs(&msrs))?;
    if set < saved.len() {
        return Err(CpuStateError::MsrRefused {
            set,
            total: saved.len(),
            index: saved[set].0,
        });
    }
    Ok(())
}
