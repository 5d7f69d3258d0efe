//! A VM with one vCPU, guest memory, the PC bus and a booted guest, ready to run.

use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::boot::{self, BootError, BootInfo};
use crate::bus::Bus;
use crate::devices::nic::Nic;
use crate::vcpu::counter::{self, InsnCounter};
use crate::vcpu::{Vcpu, VcpuError};

/// Largest guest supported: everything lives below the 32-bit PCI hole.
pub const MAX_MEM_MIB: u32 = 3072;
/// Smallest guest the built-in image boots in.
pub const MIN_MEM_MIB: u32 = 4;

/// Why a machine could not be created.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm (is KVM available and are you allowed to use it?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// KVM would not create a VM.
    #[error("KVM_CREATE_VM failed")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// KVM would not create the vCPU.
    #[error("KVM_CREATE_VCPU failed")]
    CreateVcpu(#[source] kvm_ioctls::Error),
    /// The host's supported CPUID could not be read.
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    GetCpuid(#[source] kvm_ioctls::Error),
    /// The vCPU refused the filtered CPUID.
    #[error("KVM_SET_CPUID2 failed")]
    SetCpuid(#[source] kvm_ioctls::Error),
    /// The memory size is outside `MIN_MEM_MIB..=MAX_MEM_MIB`.
    #[error("guest memory size {mib} MiB is out of range ({MIN_MEM_MIB}..={MAX_MEM_MIB})")]
    MemSize {
        /// The size asked for, in MiB.
        mib: u32,
    },
    /// The host could not map that much guest memory.
    #[error("allocating {mib} MiB of guest memory failed")]
    AllocMemory {
        /// The size asked for, in MiB.
        mib: u32,
        /// What the mapping said.
        source: vm_memory::mmap::FromRangesError,
    },
    /// KVM would not take the memory slot.
    #[error("KVM_SET_USER_MEMORY_REGION failed")]
    SetMemory(#[source] kvm_ioctls::Error),
    /// The image could not be loaded.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Setting the vCPU's entry registers failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct MachineConfig<'a> {
    /// Guest memory in MiB (`MIN_MEM_MIB..=MAX_MEM_MIB`).
    pub mem_mib: u32,
    /// The guest's ELF image (PVH entry).
    pub image: &'a [u8],
    /// The guest's command line.
    pub cmdline: String,
    /// A network card with this MAC address, if the guest gets one. Its location is appended
    /// to the command line (`virtio_mmio.device=...`).
    pub nic: Option<[u8; 6]>,
}

/// One guest: a KVM VM with one vCPU, memory in one slot at guest-physical 0, the PC devices,
/// and the image booted (the vCPU at its entry point).
#[derive(Debug)]
pub struct Machine {
    // Field order matters for drop: the vCPU goes before the VM, the VM before memory.
    /// The one vCPU.
    pub vcpu: Vcpu,
    /// The VM.
    pub vm: VmFd,
    /// `/dev/kvm`: MSR lists for state saving, and the VM descriptor a transfer thread duplicates.
    pub kvm: Kvm,
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The devices.
    pub bus: Bus,
    /// The best instruction counter this host offers (`NoCounter` if none).
    pub counter: Box<dyn InsnCounter + Send>,
    /// Where the image was loaded.
    pub boot: BootInfo,
    /// How digests hash memory: this build's way, or an older log's (`replay` sets it).
    pub mem_hash: crate::digest::MemHash,
}

impl Machine {
    /// Creates the VM, loads `cfg.image` with its command line and sets the vCPU at the entry.
    pub fn new(cfg: &MachineConfig<'_>) -> Result<Self, MachineError> {
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&cfg.mem_mib) {
            return Err(MachineError::MemSize { mib: cfg.mem_mib });
        }
        let kvm = Kvm::new().map_err(MachineError::OpenKvm)?;
        let vm = kvm.create_vm().map_err(MachineError::CreateVm)?;
        let size = (cfg.mem_mib as usize) << 20;
        let mem =
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).map_err(|source| {
                MachineError::AllocMemory {
                    mib: cfg.mem_mib,
                    source,
                }
            })?;
        let host = mem
            .get_host_address(GuestAddress(0))
            .map_err(|_| MachineError::MemSize { mib: cfg.mem_mib })?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: size as u64,
            userspace_addr: host as u64,
        };
        // SAFETY: the region is a live anonymous mapping owned by `mem`, which outlives the VM
        // (field order in `Machine` drops the VM first) and is never remapped.
        unsafe { vm.set_user_memory_region(region) }.map_err(MachineError::SetMemory)?;

        let cmdline = match cfg.nic {
            Some(_) => format!("{} {}", cfg.cmdline, Nic::cmdline_arg())
                .trim_start()
                .to_owned(),
            None => cfg.cmdline.clone(),
        };
        let boot = boot::load_guest(&mem, cfg.image, &cmdline)?;

        let vcpu_fd = vm.create_vcpu(0).map_err(MachineError::CreateVcpu)?;
        let cpuid = deterministic_cpuid(&kvm)?;
        vcpu_fd.set_cpuid2(&cpuid).map_err(MachineError::SetCpuid)?;
        let counter = counter::best_counter(&vcpu_fd);
        let vcpu = Vcpu::new(vcpu_fd);
        let (regs, sregs) = boot::entry_state(&boot, vcpu.get_sregs()?);
        vcpu.set_sregs(&sregs)?;
        vcpu.set_regs(&regs)?;
        let mut bus = Bus::new();
        if let Some(mac) = cfg.nic {
            bus.attach_nic(mac, mem.clone());
        }
        Ok(Self {
            vcpu,
            vm,
            kvm,
            mem,
            bus,
            counter,
            boot,
            mem_hash: crate::digest::MemHash::default(),
        })
    }

    /// Guest memory as one byte slice (the VM has a single slot at guest-physical 0).
    pub fn memory(&self) -> &[u8] {
        use vm_memory::GuestMemoryRegion;
        let len: u64 = self.mem.iter().map(|r| r.len()).sum();
        match self.mem.get_host_address(GuestAddress(0)) {
            // SAFETY: the single region starts at guest address 0 and is `len` bytes long; the
            // vCPU is stopped while the VMM looks at memory, so nothing writes concurrently.
            Ok(ptr) => unsafe { std::slice::from_raw_parts(ptr, len as usize) },
            Err(_) => &[],
        }
    }
}

/// The host's CPUID, minus what would let the guest reach non-determinism we cannot log.
/// (On VMX a clear RDRAND/RDSEED bit makes them #UD; on PVM it has no effect, which is why the
/// built-in guest never executes them and the image check in the guest build rejects them.)
fn deterministic_cpuid(kvm: &Kvm) -> Result<kvm_bindings::CpuId, MachineError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(MachineError::GetCpuid)?;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ecx &= !(1 << 30); // RDRAND
            }
            7 if e.index == 0 => {
                e.ebx &= !(1 << 18); // RDSEED
            }
            _ => {}
        }
    }
    Ok(cpuid)
}
