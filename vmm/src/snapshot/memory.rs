//! Guest memory for state transfer: the primary reads pages while the guest runs (pre-copy)
//! and asks KVM which ones the guest wrote since (dirty logging); the backup writes them in.

use std::os::fd::AsRawFd;

use kvm_ioctls::VmFd;
use logging_channel::net::{
    PAGE_SIZE, PAGES_PER_MESSAGE, decode_pages, encode_page, encode_zero_page, is_zero_page,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::machine::Machine;

/// Why guest memory could not be transferred.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The VM descriptor could not be duplicated for the transfer thread.
    #[error("duplicating the VM descriptor for the transfer thread failed")]
    Dup(#[source] std::io::Error),
    /// KVM's dirty-page bitmap could not be read.
    #[error("KVM_GET_DIRTY_LOG failed")]
    DirtyLog(#[source] kvm_ioctls::Error),
    /// A guest page could not be read.
    #[error("reading guest page {index} failed: {what}")]
    Read {
        /// The page's index.
        index: u32,
        /// What failed.
        what: String,
    },
    /// A received page could not be written into guest memory.
    #[error("writing guest page {index} failed: {what}")]
    Write {
        /// The page's index.
        index: u32,
        /// What failed.
        what: String,
    },
    /// The primary's page records do not decode, or name a page beyond this guest's memory.
    #[error("bad page records from the primary: {0}")]
    Records(String),
}

/// A handle on a machine's memory and dirty log that another thread can own: a second
/// descriptor for the same VM, and a clone of the mapping (which keeps it alive).
#[derive(Debug)]
pub struct MemoryTracker {
    vm: VmFd,
    mem: GuestMemoryMmap,
    bytes: u64,
}

impl MemoryTracker {
    /// A tracker for `m`'s memory, usable from another thread while `m` runs.
    pub fn new(m: &Machine) -> Result<Self, MemoryError> {
        // SAFETY: dup of a descriptor we own; the new one is owned by the VmFd built from it.
        let fd = unsafe { libc::dup(m.vm.as_raw_fd()) };
        if fd < 0 {
            return Err(MemoryError::Dup(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh duplicate of a KVM VM descriptor, owned by nobody else; the
        // VmFd takes ownership of it.
        let vm = unsafe { m.kvm.create_vmfd_from_rawfd(fd) }
            .map_err(|e| MemoryError::Dup(std::io::Error::from_raw_os_error(e.errno())))?;
        Ok(Self {
            vm,
            mem: m.mem.clone(),
            bytes: m.memory().len() as u64,
        })
    }

    /// Switches KVM's dirty-page logging for the memory slot (from any thread).
    pub fn set_dirty_logging(&self, on: bool) -> Result<(), kvm_ioctls::Error> {
        register_slot(
            &self.vm,
            &self.mem,
            self.bytes,
            if on {
                kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            },
        )
    }

    /// Guest memory in pages.
    pub fn pages(&self) -> u64 {
        self.bytes / PAGE_SIZE as u64
    }

    /// Guest memory in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Pages written since the last call (or since logging was switched on), and clears them.
    pub fn take_dirty(&self) -> Result<Vec<u32>, MemoryError> {
        let bitmap = self
            .vm
            .get_dirty_log(0, self.bytes as usize)
            .map_err(MemoryError::DirtyLog)?;
        let mut out = Vec::new();
        for (w, word) in bitmap.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let b = bits.trailing_zeros();
                out.push((w * 64) as u32 + b);
                bits &= bits - 1;
            }
        }
        Ok(out)
    }

    /// Encodes the given pages as they are now into page-record messages and hands each to
    /// `emit`. Reads are volatile copies: the guest may be writing the page meanwhile, in which
    /// case dirty logging reports it again.
    pub fn encode<E: From<MemoryError>>(
        &self,
        pages: impl IntoIterator<Item = u32>,
        emit: impl FnMut(Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.encode_reading(pages, None, emit)
    }

    /// [`Self::encode`] of every page, reading only those the guest (or the VMM) wrote: a
    /// page never written is known to be zeros, and reading it would make the kernel map its
    /// zero page there, after which every digest and checkpoint of this machine would read it
    /// too (they skip only pages the host never populated).
    pub fn encode_all<E: From<MemoryError>>(
        &self,
        emit: impl FnMut(Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let pages = self.pages() as usize;
        let populated = self
            .mem
            .get_host_address(GuestAddress(0))
            .ok()
            .and_then(|host| crate::digest::populated_range(host as usize, pages));
        self.encode_reading(0..pages as u32, populated.as_deref(), emit)
    }

    /// Encodes `pages`, reading those `populated` does not say were never written.
    fn encode_reading<E: From<MemoryError>>(
        &self,
        pages: impl IntoIterator<Item = u32>,
        populated: Option<&[bool]>,
        mut emit: impl FnMut(Vec<u8>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut buf = vec![0u8; PAGE_SIZE];
        let mut records = Vec::new();
        let mut n = 0;
        for index in pages {
            if populated.is_some_and(|p| !p.get(index as usize).copied().unwrap_or(true)) {
                encode_zero_page(&mut records, index);
            } else {
                self.mem
                    .read_slice(&mut buf, GuestAddress(u64::from(index) * PAGE_SIZE as u64))
                    .map_err(|e| MemoryError::Read {
                        index,
                        what: e.to_string(),
                    })?;
                encode_page(&mut records, index, &buf);
            }
            n += 1;
            if n == PAGES_PER_MESSAGE {
                emit(std::mem::take(&mut records))?;
                n = 0;
            }
        }
        if n > 0 {
            emit(records)?;
        }
        Ok(())
    }
}

/// (Re-)registers the machine's one memory slot with `flags`; `bytes` 0 removes it.
pub fn register_slot(
    vm: &VmFd,
    mem: &GuestMemoryMmap,
    bytes: u64,
    flags: u32,
) -> Result<(), kvm_ioctls::Error> {
    let host = mem
        .get_host_address(GuestAddress(0))
        .map_err(|_| kvm_ioctls::Error::new(libc::EINVAL))?;
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        flags,
        guest_phys_addr: 0,
        memory_size: bytes,
        userspace_addr: host as u64,
    };
    // SAFETY: the machine's own live mapping (kept alive by `mem`), same slot and size as
    // registered when the machine was built, only the flags changed; or size 0, which removes
    // the slot (no mapping is handed to KVM) until it is registered again.
    unsafe { vm.set_user_memory_region(region) }
}

/// Writes a message of page records into the backup's guest memory; returns pages written.
///
/// A zero page is written only if the page here is not zero already: most of a fresh guest's
/// memory was never touched on either side, and reading an untouched page costs a zero-page
/// mapping where writing it would allocate and clear host memory.
pub fn install_pages(m: &Machine, records: &[u8]) -> Result<u64, MemoryError> {
    const ZEROS: [u8; PAGE_SIZE] = [0; PAGE_SIZE];
    let pages = m.memory().len() as u64 / PAGE_SIZE as u64;
    let decoded = decode_pages(records, pages).map_err(MemoryError::Records)?;
    // Which pages of the span this message covers were ever written here: a page of zeros
    // goes only where one was (reading the others to compare would map the kernel's zero page
    // there, and every digest and checkpoint after would read them).
    let first = decoded.iter().map(|(i, _)| *i).min().unwrap_or(0);
    let last = decoded.iter().map(|(i, _)| *i).max().unwrap_or(0);
    let start = m.memory().as_ptr() as usize + first as usize * PAGE_SIZE;
    let populated =
        crate::digest::populated_range(start, (last - first) as usize + 1).unwrap_or_default();
    for (index, data) in &decoded {
        let offset = *index as usize * PAGE_SIZE;
        let data = match data {
            Some(bytes) => bytes,
            None if !populated
                .get((*index - first) as usize)
                .copied()
                .unwrap_or(true) =>
            {
                continue;
            }
            // A fresh view of memory each time: no reference into it lives across a write.
            None if is_zero_page(&m.memory()[offset..offset + PAGE_SIZE]) => continue,
            None => &ZEROS[..],
        };
        write_page(m, *index, data)?;
    }
    Ok(decoded.len() as u64)
}

/// Writes `bytes` (one page) into guest page `index` of `m`.
pub fn write_page(m: &Machine, index: u32, bytes: &[u8]) -> Result<(), MemoryError> {
    let at = GuestAddress(u64::from(index) * PAGE_SIZE as u64);
    m.mem
        .write_slice(bytes, at)
        .map_err(|e| MemoryError::Write {
            index,
            what: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_image::BUILTIN_GUEST;
    use crate::machine::MachineConfig;

    fn machine() -> Option<Machine> {
        if !std::path::Path::new("/dev/kvm").exists() {
            eprintln!("skipped: no /dev/kvm");
            return None;
        }
        Some(
            Machine::new(&MachineConfig {
                mem_mib: 64,
                image: BUILTIN_GUEST,
                cmdline: "ticker".into(),
                nic: None,
            })
            .expect("a machine"),
        )
    }

    fn populated(m: &Machine) -> usize {
        let pages = m.memory().len() / PAGE_SIZE;
        crate::digest::populated_range(m.memory().as_ptr() as usize, pages)
            .expect("this host has /proc/self/pagemap")
            .into_iter()
            .filter(|&p| p)
            .count()
    }

    /// A state transfer of a guest that wrote little memory reads little: pages it never wrote
    /// go as zero records without being read on the primary or compared on the backup, which
    /// would map the kernel's zero page there, and every digest and checkpoint after would
    /// read all of memory (64 MiB per digest here, 3 GiB for the largest guest).
    #[test]
    fn a_transfer_reads_and_writes_only_the_pages_that_were_written() {
        let (Some(from), Some(to)) = (machine(), machine()) else {
            return;
        };
        let pages = from.memory().len() / PAGE_SIZE;
        let written = populated(&from);
        assert!(
            written < pages / 4,
            "{written} of {pages} pages populated at boot"
        );
        let tracker = MemoryTracker::new(&from).expect("a tracker");
        let mut messages = Vec::new();
        tracker
            .encode_all(|records| {
                messages.push(records);
                Ok::<_, MemoryError>(())
            })
            .expect("encoding every page");
        assert_eq!(
            populated(&from),
            written,
            "encoding read pages never written"
        );
        let mut installed = 0;
        for records in &messages {
            installed += install_pages(&to, records).expect("installing the pages");
        }
        assert_eq!(installed, pages as u64, "every page has its record");
        assert!(
            populated(&to) <= written,
            "installing populated {} pages where {written} were written",
            populated(&to)
        );
        // Last: comparing reads every page.
        assert!(
            from.memory() == to.memory(),
            "the backup's memory differs from the primary's"
        );
    }
}
