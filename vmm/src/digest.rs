//! State digests: a cheap fingerprint of the whole machine that record and replay compare.

use logging_channel::format::{Digest, Regs};

use crate::machine::Machine;
use crate::vcpu::regs_from_kvm;

/// How a digest hashes guest memory (`Digest::mem_hash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MemHash {
    /// xxh3-64 over all of guest memory, as logs of format versions 1 to 3 hold it. Reading
    /// memory the guest never touched costs a page fault per page (~20 ms for 64 MiB here).
    Whole,
    /// xxh3-64 over each 4 KiB page that is not all zeros, in address order, as its page
    /// number (u64 little-endian) followed by its bytes (version 4 on, and the logging
    /// channel). The value depends on the contents only; pages the host never populated are
    /// known to be zero without reading them.
    #[default]
    NonZeroPages,
}

impl MemHash {
    /// The hash a log of this format version holds.
    pub fn of_version(version: u16) -> Self {
        if version >= logging_channel::format::COMPACT_SINCE_VERSION {
            Self::NonZeroPages
        } else {
            Self::Whole
        }
    }

    /// The hash of `mem`.
    pub fn of(self, mem: &[u8]) -> u64 {
        match self {
            Self::Whole => xxhash_rust::xxh3::xxh3_64(mem),
            Self::NonZeroPages => nonzero_pages_hash(mem, populated_pages(mem)),
        }
    }
}

const PAGE: usize = 4096;

/// `populated[i]`: page `i` of `mem` may hold data. `None` hashes every page.
fn nonzero_pages_hash(mem: &[u8], populated: Option<Vec<bool>>) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (i, page) in nonzero_pages_of(mem, populated) {
        h.update(&(i as u64).to_le_bytes());
        h.update(page);
    }
    h.digest()
}

/// The pages of `mem` that are not all zeros, as (index, bytes) in address order. Pages
/// `populated` says the host never populated hold zeros and are not read; `None` reads every
/// page.
fn nonzero_pages_of(
    mem: &[u8],
    populated: Option<Vec<bool>>,
) -> impl Iterator<Item = (usize, &[u8])> {
    mem.chunks(PAGE).enumerate().filter(move |(i, page)| {
        populated
            .as_ref()
            .is_none_or(|p| p.get(*i).copied().unwrap_or(true))
            && !logging_channel::net::is_zero_page(page)
    })
}

/// The pages of guest memory `mem` that are not all zeros, as (index, bytes) in address
/// order, reading only the pages this host populated (see [`populated_pages`]).
pub(crate) fn nonzero_pages(mem: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    nonzero_pages_of(mem, populated_pages(mem))
}

/// Which pages of `mem` (a private anonymous mapping) the kernel has populated, from
/// `/proc/self/pagemap`: a page neither present nor swapped out was never written (or was
/// discarded) and reads as zeros. `None` if the host does not say (another page size, no
/// pagemap): then every page is read.
fn populated_pages(mem: &[u8]) -> Option<Vec<bool>> {
    if !mem.len().is_multiple_of(PAGE) {
        return None;
    }
    populated_range(mem.as_ptr() as usize, mem.len() / PAGE)
}

/// [`populated_pages`] for the `pages` pages of this process's memory from host address
/// `start`, which need not be readable as a slice (another thread's guest may be writing it).
/// A page that was only ever read shows as populated (the kernel maps its zero page there),
/// so whoever reads untouched guest memory should ask this first.
pub(crate) fn populated_range(start: usize, pages: usize) -> Option<Vec<bool>> {
    use std::os::unix::fs::FileExt;
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;
    if !start.is_multiple_of(PAGE) || page_size() != Some(PAGE) {
        return None;
    }
    let mut raw = vec![0u8; pages * 8];
    pagemap()?
        .read_exact_at(&mut raw, (start / PAGE * 8) as u64)
        .ok()?;
    Some(
        raw.chunks_exact(8)
            .map(|e| {
                let v = u64::from_le_bytes(e.try_into().unwrap_or([0xff; 8]));
                v & (PRESENT | SWAPPED) != 0
            })
            .collect(),
    )
}

/// `/proc/self/pagemap`, opened once: its reads are positional, so every thread shares it, and
/// a state transfer asks it once per 192-page message (4,096 times for 3 GiB).
fn pagemap() -> Option<&'static std::fs::File> {
    static PAGEMAP: std::sync::OnceLock<Option<std::fs::File>> = std::sync::OnceLock::new();
    PAGEMAP
        .get_or_init(|| std::fs::File::open("/proc/self/pagemap").ok())
        .as_ref()
}

fn page_size() -> Option<usize> {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok()
}

/// The machine's digest as it stands at an exit.
pub fn take(machine: &Machine) -> Digest {
    let sregs = machine.vcpu.sregs();
    Digest {
        regs: regs_from_kvm(&machine.vcpu.regs()),
        cr0: sregs.cr0,
        cr3: sregs.cr3,
        cr4: sregs.cr4,
        efer: sregs.efer,
        mem_hash: machine.mem_hash.of(machine.memory()),
        devices_hash: machine.bus.state_hash(),
    }
}

/// The per-entry state check of the log format: xxh3-64 over the 18 registers in `Regs` order
/// and then the console hash, all little-endian. Never 0 (0 means "not checked" in the log).
pub fn state_check(r: &Regs, console_hash: u64) -> u64 {
    let mut bytes = [0u8; (Regs::COUNT + 1) * 8];
    let values = r
        .to_array()
        .into_iter()
        .chain(std::iter::once(console_hash));
    for (chunk, v) in bytes.chunks_exact_mut(8).zip(values) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&bytes).max(1)
}

/// Registers formatted four to a line, for error reports.
pub fn format_regs(r: &Regs) -> String {
    let mut s = String::new();
    for (i, (name, v)) in r.named().iter().enumerate() {
        s.push_str(&format!("{name:>6}={v:#018x}"));
        s.push(if i % 4 == 3 { '\n' } else { ' ' });
    }
    s.trim_end().to_string()
}

#[cfg(test)]
mod mem_hash_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Guest-sized memory as the VMM maps it: private, anonymous, never touched.
    fn fresh(pages: usize) -> vm_memory::GuestMemoryMmap {
        vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(vm_memory::GuestAddress(0), pages * PAGE)])
            .unwrap()
    }

    fn bytes(mem: &mut vm_memory::GuestMemoryMmap) -> &mut [u8] {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        let region = mem.iter().next().unwrap();
        let len = usize::try_from(region.len()).unwrap();
        let ptr = mem.get_host_address(vm_memory::GuestAddress(0)).unwrap();
        // SAFETY: the one region of `len` bytes starts at `ptr` and lives as long as `mem`; the
        // test holds no other reference into it while the slice is used.
        unsafe { std::slice::from_raw_parts_mut(ptr, len) }
    }

    #[test]
    fn the_hash_depends_on_contents_not_on_which_pages_the_host_populated() {
        let mut a = fresh(256);
        let mut b = fresh(256);
        let (ma, mb) = (bytes(&mut a), bytes(&mut b));
        ma[5 * PAGE + 17] = 0x42;
        mb[5 * PAGE + 17] = 0x42;
        // `b` has pages populated that hold zeros (read and written back), `a` does not.
        for p in [0, 9, 100, 255] {
            mb[p * PAGE] = 1;
            mb[p * PAGE] = 0;
        }
        let pa = populated_pages(ma).unwrap();
        let pb = populated_pages(mb).unwrap();
        assert!(
            pa[5] && !pa[9] && pb[9],
            "pagemap sees which pages were written"
        );
        assert_eq!(MemHash::NonZeroPages.of(ma), MemHash::NonZeroPages.of(mb));
        // Reading every page gives the same value as skipping the unpopulated ones.
        assert_eq!(nonzero_pages_hash(ma, None), MemHash::NonZeroPages.of(ma));
    }

    #[test]
    fn any_change_of_contents_or_place_changes_the_hash() {
        let mut a = fresh(64);
        let m = bytes(&mut a);
        let empty = MemHash::NonZeroPages.of(m);
        m[3 * PAGE] = 1;
        let at_3 = MemHash::NonZeroPages.of(m);
        assert_ne!(at_3, empty);
        m[3 * PAGE] = 0;
        assert_eq!(MemHash::NonZeroPages.of(m), empty);
        // The same bytes on another page.
        m[4 * PAGE] = 1;
        assert_ne!(MemHash::NonZeroPages.of(m), at_3);
        m[4 * PAGE + PAGE - 1] = 7;
        let last_byte = MemHash::NonZeroPages.of(m);
        m[4 * PAGE + PAGE - 1] = 8;
        assert_ne!(MemHash::NonZeroPages.of(m), last_byte);
    }

    #[test]
    fn older_logs_hash_all_of_memory() {
        let mut a = fresh(16);
        let m = bytes(&mut a);
        m[100] = 3;
        assert_eq!(MemHash::of_version(3), MemHash::Whole);
        assert_eq!(MemHash::of_version(4), MemHash::NonZeroPages);
        assert_eq!(MemHash::Whole.of(m), xxhash_rust::xxh3::xxh3_64(m));
    }
}
