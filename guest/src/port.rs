//! x86 port I/O: the guest's only way to talk to devices (no MMIO).

/// # Safety
/// Port writes have device side effects; callers must own the device.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: caller owns the device behind `port`.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags));
    }
}

/// # Safety
/// Port reads can have device side effects (e.g. latch or FIFO pops).
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: caller owns the device behind `port`.
    unsafe {
        core::arch::asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags));
    }
    value
}
