//! 8254 PIT channel 0 as the periodic tick (mode 2, rate generator).

use crate::port::{inb, outb};

pub const INPUT_HZ: u64 = 1_193_182;

const CH0: u16 = 0x40;
const CMD: u16 = 0x43;
const CMD_CH0_LOHI_MODE2: u8 = 0x34;
const CMD_CH0_LATCH: u8 = 0x00;

/// Reload value for `hz`, rounded to nearest. `hz` is range-checked by the
/// command-line parser so this fits 16 bits.
pub fn reload_for(hz: u32) -> u32 {
    let hz = u64::from(hz.max(1));
    ((INPUT_HZ + hz / 2) / hz).clamp(1, 0xffff) as u32
}

pub fn init(reload: u32) {
    // SAFETY: the PIT is ours alone; called once with interrupts disabled.
    unsafe {
        outb(CMD, CMD_CH0_LOHI_MODE2);
        outb(CH0, reload as u8);
        outb(CH0, (reload >> 8) as u8);
    }
}

/// Current down-counter value of channel 0.
///
/// # Safety
/// Caller must have interrupts disabled: latch and the two reads must not be
/// split by another access to the PIT.
pub unsafe fn read_count() -> u32 {
    // SAFETY: the caller guarantees exclusive, uninterrupted access.
    unsafe {
        outb(CMD, CMD_CH0_LATCH);
        let lo = inb(CH0);
        let hi = inb(CH0);
        u32::from(lo) | (u32::from(hi) << 8)
    }
}
