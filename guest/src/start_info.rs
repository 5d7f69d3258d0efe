//! `struct hvm_start_info` handed over by the PVH loader in %ebx. We only need
//! the command line; the rest of the layout is noted for reference.

const MAGIC: u32 = 0x336e_c578;
const OFF_MAGIC: u64 = 0;
const OFF_CMDLINE_PADDR: u64 = 24;

/// Upper bound on the command line we accept; longer is treated as
/// truncated at this length.
const MAX_CMDLINE: usize = 1024;
/// Everything the guest touches must be inside the identity map.
const MAPPED_LIMIT: u64 = 1 << 30;

#[derive(Debug)]
pub enum Error {
    NoStartInfo,
    BadMagic(u32),
}

/// Returns the command line bytes (without the terminating NUL).
pub fn cmdline(start_info_paddr: u64) -> Result<&'static [u8], Error> {
    if start_info_paddr == 0 || start_info_paddr >= MAPPED_LIMIT - 64 {
        return Err(Error::NoStartInfo);
    }
    // SAFETY: the address is inside the identity map; the loader placed the
    // start info there and nothing else writes it.
    let magic = unsafe { core::ptr::read_volatile((start_info_paddr + OFF_MAGIC) as *const u32) };
    if magic != MAGIC {
        return Err(Error::BadMagic(magic));
    }
    // SAFETY: as above; offset 24 is `cmdline_paddr` in every version.
    let paddr =
        unsafe { core::ptr::read_volatile((start_info_paddr + OFF_CMDLINE_PADDR) as *const u64) };
    if paddr == 0 || paddr >= MAPPED_LIMIT {
        return Ok(&[]);
    }
    let max = MAX_CMDLINE.min((MAPPED_LIMIT - paddr) as usize);
    let mut len = 0;
    // SAFETY: every byte read lies in [paddr, paddr + max), inside the map.
    while len < max && unsafe { core::ptr::read_volatile((paddr + len as u64) as *const u8) } != 0 {
        len += 1;
    }
    // SAFETY: same range as the scan above; the loader does not change it
    // afterwards, so a shared 'static view is sound.
    Ok(unsafe { core::slice::from_raw_parts(paddr as *const u8, len) })
}
