//! Instruction counters: how far the guest has executed between two exits.
//!
//! Precise interrupt landing needs a counter that is exact and identical between record and
//! replay. On real VMX/SVM hosts that would be a PMU retired-branch counter (rr, VMware FT). On
//! this host (PVM backend, no PMU) KVM's per-vCPU `insn_emulation` statistic counts the guest's
//! CPL0 instructions, because PVM emulates CPL0 code instruction by instruction. It is identical
//! across runs (compared at every exit of 4,000-exit runs, with and without kicks), but not
//! every instruction bumps it (`sti` does not), so a position is the count *and* the registers.
//! Hosts with neither get [`CounterKind::None`] and interrupts wait for the next guest exit.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

use kvm_ioctls::VcpuFd;
use logging_channel::format::CounterKind;
use vmm_sys_util::ioctl::ioctl;

const KVMIO: u32 = 0xAE;
// In a private module: the macro declares a `pub fn`, which is no part of this crate's API.
mod ioctls {
    vmm_sys_util::ioctl_io_nr!(KVM_GET_STATS_FD, super::KVMIO, 0xce);
}
use ioctls::KVM_GET_STATS_FD;

/// The statistic that counts emulated instructions on the PVM backend.
const PVM_INSN_STAT: &str = "insn_emulation";

/// Why the instruction counter could not be opened, read or rebased.
#[derive(Debug, thiserror::Error)]
pub enum CounterError {
    /// KVM would not hand out the vCPU's statistics descriptor.
    #[error("KVM_GET_STATS_FD on the vCPU failed")]
    StatsFd(#[source] std::io::Error),
    /// Reading the statistics descriptor failed.
    #[error("reading the vCPU statistics failed")]
    Read(#[source] std::io::Error),
    /// The statistics lack the named counter (not a PVM host).
    #[error("the vCPU statistics have no '{0}' counter")]
    Missing(&'static str),
    /// The statistics descriptor's header does not parse (what is wrong).
    #[error("malformed vCPU statistics header: {0}")]
    Malformed(&'static str),
}

/// A monotonically increasing count of guest instructions, as far as the host can tell.
pub trait InsnCounter: std::fmt::Debug {
    /// Which counter this is, as logs record it.
    fn kind(&self) -> CounterKind;
    /// The count now (the vCPU must be stopped for it to mean anything).
    fn read(&self) -> Result<u64, CounterError>;
    /// Makes `read` return `now` at this moment and count on from there: a machine restored
    /// from another's state continues that machine's count.
    fn rebase(&mut self, now: u64) -> Result<(), CounterError>;
}

/// No counter: positions are identified by exit counts only.
#[derive(Debug)]
pub struct NoCounter;

impl InsnCounter for NoCounter {
    fn kind(&self) -> CounterKind {
        CounterKind::None
    }
    fn read(&self) -> Result<u64, CounterError> {
        Ok(0)
    }
    fn rebase(&mut self, _now: u64) -> Result<(), CounterError> {
        Ok(())
    }
}

/// PVM's exact CPL0 instruction count, read from the vCPU's binary stats fd.
#[derive(Debug)]
pub struct PvmInsnCounter {
    stats: File,
    data_offset: u64,
    /// Added (wrapping) to KVM's statistic, which starts at 0 for every vCPU.
    offset: u64,
}

impl PvmInsnCounter {
    /// Opens the counter of `vcpu`; fails on hosts without PVM's statistic.
    pub fn open(vcpu: &VcpuFd) -> Result<Self, CounterError> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1.
        let fd = unsafe { ioctl(vcpu, KVM_GET_STATS_FD()) };
        if fd < 0 {
            return Err(CounterError::StatsFd(std::io::Error::last_os_error()));
        }
        // SAFETY: the kernel just gave us this fd; nobody else owns it.
        let stats = unsafe { File::from_raw_fd(fd) };
        let data_offset = find_stat(&stats, PVM_INSN_STAT)?;
        Ok(Self {
            stats,
            data_offset,
            offset: 0,
        })
    }
}

impl InsnCounter for PvmInsnCounter {
    fn kind(&self) -> CounterKind {
        CounterKind::PvmInsnEmulation
    }
    fn read(&self) -> Result<u64, CounterError> {
        let mut buf = [0u8; 8];
        self.stats
            .read_exact_at(&mut buf, self.data_offset)
            .map_err(CounterError::Read)?;
        Ok(u64::from_ne_bytes(buf).wrapping_add(self.offset))
    }
    fn rebase(&mut self, now: u64) -> Result<(), CounterError> {
        self.offset = 0;
        self.offset = now.wrapping_sub(self.read()?);
        Ok(())
    }
}

fn read_u32(buf: &[u8], at: usize) -> Result<u32, CounterError> {
    buf.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or(CounterError::Malformed("field past end"))
}

/// Walks the descriptor table of a KVM binary stats fd (Documentation/virt/kvm/api.rst,
/// "KVM_GET_STATS_FD") and returns the file offset of the named u64 counter.
fn find_stat(stats: &File, name: &'static str) -> Result<u64, CounterError> {
    let mut header = [0u8; 24];
    stats
        .read_exact_at(&mut header, 0)
        .map_err(CounterError::Read)?;
    let name_size = read_u32(&header, 4)? as usize;
    let num_desc = read_u32(&header, 8)? as usize;
    let desc_offset = u64::from(read_u32(&header, 16)?);
    let data_offset = u64::from(read_u32(&header, 20)?);
    // struct kvm_stats_desc: flags u32, exponent s16, size u16, offset u32, bucket_size u32, name[name_size]
    let desc_size = 16 + name_size;
    if num_desc > 4096 || name_size > 4096 {
        return Err(CounterError::Malformed(
            "implausible descriptor count or name size",
        ));
    }
    let mut descs = vec![0u8; desc_size * num_desc];
    stats
        .read_exact_at(&mut descs, desc_offset)
        .map_err(CounterError::Read)?;
    for d in descs.chunks_exact(desc_size) {
        let raw_name = &d[16..];
        let end = raw_name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(raw_name.len());
        if &raw_name[..end] == name.as_bytes() {
            let offset = u64::from(read_u32(d, 8)?);
            return Ok(data_offset + offset);
        }
    }
    Err(CounterError::Missing(name))
}

/// Best counter this host offers for `vcpu`.
pub fn best_counter(vcpu: &VcpuFd) -> Box<dyn InsnCounter + Send> {
    match PvmInsnCounter::open(vcpu) {
        Ok(c) if is_pvm_host() => Box::new(c),
        _ => Box::new(NoCounter),
    }
}

/// `insn_emulation` exists on every KVM, but only PVM routes every CPL0 instruction through the
/// emulator; on VMX/SVM it counts rare emulations and is useless as a position.
pub fn is_pvm_host() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}
