//! 16550 UART on COM1, polled (IER = 0): no interrupt handling needed and
//! every byte is an explicit port write, which keeps replay simple.

use crate::fmt::LineBuf;
use crate::port::{inb, outb};
use crate::sched;

const COM1: u16 = 0x3f8;
const THR: u16 = COM1; // also divisor low with DLAB
const IER: u16 = COM1 + 1; // also divisor high with DLAB
const FCR: u16 = COM1 + 2;
const LCR: u16 = COM1 + 3;
const MCR: u16 = COM1 + 4;
const LSR: u16 = COM1 + 5;
const LSR_THR_EMPTY: u8 = 1 << 5;

/// Bounded so a UART that never reports THR empty cannot hang the guest.
const MAX_SPINS: u32 = 100_000;

pub fn init() {
    // SAFETY: COM1 belongs to the console; nothing else touches it.
    unsafe {
        outb(IER, 0x00);
        outb(LCR, 0x80); // DLAB
        outb(THR, 0x01); // divisor 1 = 115200 baud
        outb(IER, 0x00);
        outb(LCR, 0x03); // 8N1, DLAB off
        outb(FCR, 0xc7); // enable + clear FIFOs, 14-byte threshold
        outb(MCR, 0x03); // DTR | RTS
    }
}

fn put_byte(b: u8) {
    // SAFETY: COM1 belongs to the console.
    unsafe {
        let mut spins = 0;
        while inb(LSR) & LSR_THR_EMPTY == 0 && spins < MAX_SPINS {
            spins += 1;
        }
        outb(THR, b);
    }
}

/// Raw write with no scheduling interaction: for exception/panic paths and
/// for callers that manage preemption themselves (the syscall handler).
pub fn write_raw(bytes: &[u8]) {
    for &b in bytes {
        put_byte(b);
    }
}

/// Writes `bytes` as one unit with respect to other tasks. Interrupts stay
/// enabled so the timer is still taken mid-line (only the switch is
/// deferred); must be called from task context, not from an ISR.
pub fn write_atomic(bytes: &[u8]) {
    sched::preempt_disable();
    write_raw(bytes);
    sched::preempt_enable();
}

pub fn print(line: &mut LineBuf) {
    write_atomic(line.newline().as_bytes());
}
