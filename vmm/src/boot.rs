//! Loading the guest: memory, ELF image (PVH entry), `hvm_start_info`, and the vCPU's entry state.
//!
//! The guest boots through the Xen PVH protocol, the same entry QEMU (`-kernel`) and Firecracker
//! use, so one image runs under all three: 32-bit protected mode, paging off, flat segments,
//! `%ebx` = guest-physical address of `hvm_start_info`.

use std::io::Cursor;

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{
    KernelLoader, elf::start_info::hvm_memmap_table_entry, elf::start_info::hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Where the loader may place the kernel: at and above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
const GDT_ADDR: u64 = 0x500;
const START_INFO_ADDR: u64 = 0x6000;
const MEMMAP_ADDR: u64 = 0x7000;
const CMDLINE_ADDR: u64 = 0x2_0000;
const CMDLINE_MAX: usize = 4096;
/// End of conventional memory below the EBDA, as on a PC.
const LOW_RAM_END: u64 = 0x9_fc00;
const PVH_MAGIC: u32 = 0x336e_c578;
const E820_RAM: u32 = 1;

/// Why a guest image could not be loaded into a fresh machine.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The image is not an x86_64 ELF the loader can place.
    #[error("guest image is not a loadable x86_64 ELF: {0}")]
    Elf(#[source] linux_loader::loader::Error),
    /// The ELF has no PVH entry note: it cannot be booted the way understudy boots guests.
    #[error(
        "guest image has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); understudy boots guests through PVH"
    )]
    NoPvhEntry,
    /// The command line does not fit its page (with its NUL).
    #[error("guest command line is {len} bytes; at most {max} fit")]
    CmdlineTooLong {
        /// Its length in bytes.
        len: usize,
        /// The most that fits.
        max: usize,
    },
    /// The command line contains a NUL, which would cut it short for the guest.
    #[error("guest command line contains a NUL byte")]
    CmdlineNul,
    /// Writing the command line or the GDT into guest memory failed.
    #[error("writing boot data into guest memory failed")]
    Memory(#[source] vm_memory::GuestMemoryError),
    /// Writing `hvm_start_info` and the memory map failed.
    #[error("writing hvm_start_info failed")]
    StartInfo(#[source] linux_loader::configurator::Error),
    /// The image (plus 1 MiB of headroom) does not fit in guest memory.
    #[error("guest memory of {mib} MiB is too small for the image (needs at least {need_mib} MiB)")]
    TooSmall {
        /// Guest memory in MiB.
        mib: u64,
        /// The least that would do, in MiB.
        need_mib: u64,
    },
}

/// Where execution starts and what the loaded image occupies.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// Guest-physical address of the PVH entry point.
    pub entry: u64,
    /// Guest-physical address just past the loaded image.
    pub kernel_end: u64,
}

/// Loads `image` and writes the PVH boot structures with `cmdline` into `mem`.
pub fn load_guest(
    mem: &GuestMemoryMmap,
    image: &[u8],
    cmdline: &str,
) -> Result<BootInfo, BootError> {
    let mem_size: u64 = mem_size(mem);
    let mut cursor = Cursor::new(image);
    let loaded = Elf::load(mem, None, &mut cursor, Some(GuestAddress(HIMEM_START))).map_err(
        |e| match e {
            linux_loader::loader::Error::Elf(_) => BootError::Elf(e),
            other => BootError::Elf(other),
        },
    )?;
    let entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => addr.0,
        _ => return Err(BootError::NoPvhEntry),
    };
    if loaded.kernel_end + 0x10_0000 > mem_size {
        return Err(BootError::TooSmall {
            mib: mem_size >> 20,
            need_mib: (loaded.kernel_end >> 20) + 2,
        });
    }

    if cmdline.len() + 1 > CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: CMDLINE_MAX - 1,
        });
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(BootError::Memory)?;

    write_gdt(mem)?;

    let memmap = [
        hvm_memmap_table_entry {
            addr: 0,
            size: LOW_RAM_END,
            type_: E820_RAM,
            reserved: 0,
        },
        hvm_memmap_table_entry {
            addr: HIMEM_START,
            size: mem_size - HIMEM_START,
            type_: E820_RAM,
            reserved: 0,
        },
    ];
    let start_info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: MEMMAP_ADDR,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new::<hvm_start_info>(&start_info, GuestAddress(START_INFO_ADDR));
    params.set_sections::<hvm_memmap_table_entry>(&memmap, GuestAddress(MEMMAP_ADDR));
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)
        .map_err(BootError::StartInfo)?;
    Ok(BootInfo {
        entry,
        kernel_end: loaded.kernel_end,
    })
}

fn mem_size(mem: &GuestMemoryMmap) -> u64 {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    mem.iter().map(|r| r.len()).sum()
}

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// Null, 32-bit flat code (0x08), flat data (0x10), TSS (0x18): what the PVH entry state
/// describes. The guest loads its own GDT before it reloads a segment register.
const GDT: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xffff_ffff),
    gdt_entry(0xc093, 0, 0xffff_ffff),
    gdt_entry(0x008b, 0, 0x67),
];

fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + 8 * i as u64))
            .map_err(BootError::Memory)?;
    }
    Ok(())
}

fn segment(selector: u16, type_: u8, limit: u32, s: u8, db: u8, g: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db,
        s,
        l: 0,
        g,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The PVH entry state on top of the vCPU's reset state.
pub fn entry_state(boot: &BootInfo, mut sregs: kvm_sregs) -> (kvm_regs, kvm_sregs) {
    let regs = kvm_regs {
        rip: boot.entry,
        rbx: START_INFO_ADDR,
        rflags: 0x2,
        ..Default::default()
    };
    let code = segment(0x08, 0xb, 0xffff_ffff, 1, 1, 1);
    let data = segment(0x10, 0x3, 0xffff_ffff, 1, 1, 1);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(0x18, 0xb, 0x67, 0, 0, 0);
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = 0x11; // PE | ET
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    (regs, sregs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_match_the_pvh_flat_segments() {
        // Values as in Firecracker's and the Linux boot protocol's flat 32-bit GDT.
        assert_eq!(GDT[1], 0x00cf_9b00_0000_ffff);
        assert_eq!(GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(GDT[3], 0x0000_8b00_0000_0067);
    }
}
