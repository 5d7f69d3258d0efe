//! 8259A pair. Remapped away from the exception vectors; the timer (IRQ0) and
//! the cascade line (IRQ2) are unmasked at init, a network card's line by
//! [`unmask`].

use crate::port::{inb, outb};

const MASTER_CMD: u16 = 0x20;
const MASTER_DATA: u16 = 0x21;
const SLAVE_CMD: u16 = 0xa0;
const SLAVE_DATA: u16 = 0xa1;

pub const MASTER_VECTOR: u8 = 0x20;
pub const SLAVE_VECTOR: u8 = 0x28;

const ICW1_INIT_ICW4: u8 = 0x11;
const ICW4_8086: u8 = 0x01;
const OCW3_READ_ISR: u8 = 0x0b;
const EOI: u8 = 0x20;

pub fn init() {
    // SAFETY: the PICs are ours alone; called once with interrupts disabled.
    unsafe {
        outb(MASTER_CMD, ICW1_INIT_ICW4);
        outb(SLAVE_CMD, ICW1_INIT_ICW4);
        outb(MASTER_DATA, MASTER_VECTOR);
        outb(SLAVE_DATA, SLAVE_VECTOR);
        outb(MASTER_DATA, 1 << 2); // slave on IRQ2
        outb(SLAVE_DATA, 2); // slave identity
        outb(MASTER_DATA, ICW4_8086);
        outb(SLAVE_DATA, ICW4_8086);
        outb(MASTER_DATA, !((1 << 0) | (1 << 2)));
        outb(SLAVE_DATA, 0xff);
    }
}

/// Lets `irq` (1..=15) through, e.g. the network card's line. CPL0, interrupts off.
pub fn unmask(irq: u8) {
    let (port, bit) = if irq < 8 {
        (MASTER_DATA, irq)
    } else {
        (SLAVE_DATA, irq - 8)
    };
    // SAFETY: the PICs are ours alone; the caller has interrupts disabled, so the
    // read-modify-write of the mask cannot interleave with an ISR.
    unsafe { outb(port, inb(port) & !(1 << bit)) };
}

/// Acknowledges `irq` (0..=15). Spurious IRQ7/IRQ15 (raised when a request
/// vanishes before INTA) must not be acknowledged on the chip that raised
/// them, or a real in-service interrupt would be cleared.
pub fn ack(irq: u8) {
    // SAFETY: the PICs are ours alone; called from ISRs with IF=0.
    unsafe {
        match irq {
            7 if !in_service(MASTER_CMD, 7) => {}
            15 if !in_service(SLAVE_CMD, 7) => outb(MASTER_CMD, EOI), // cascade was real
            0..=7 => outb(MASTER_CMD, EOI),
            _ => {
                outb(SLAVE_CMD, EOI);
                outb(MASTER_CMD, EOI);
            }
        }
    }
}

/// # Safety
/// Port I/O on the PIC; caller must have interrupts disabled.
unsafe fn in_service(cmd: u16, line: u8) -> bool {
    // SAFETY: reading the ISR has no side effect beyond selecting it for
    // the next read; we are in an ISR so nothing interleaves.
    unsafe {
        outb(cmd, OCW3_READ_ISR);
        inb(cmd) & (1 << line) != 0
    }
}
