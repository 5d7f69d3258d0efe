//! 8259A pair. Remapped away from the exception vectors; the timer (IRQ0) and
//! the cascade line (IRQ2) are unmasked at init, a network card's line by
//! [`unmask`].
//!
//! Both chips run in auto-EOI mode (ICW4 bit 1): a chip ends an interrupt
//! itself when the CPU accepts it, so a handler sends no EOI. Each EOI is a
//! port exit (two for a line on the slave, as the network card's usually
//! is), ~13 µs on the PVM host, paid at every timer tick and card
//! interrupt. The fully nested priority that in-service bits give is of no
//! use here: handlers run with interrupts off and never nest.

use crate::port::{inb, outb};

const MASTER_CMD: u16 = 0x20;
const MASTER_DATA: u16 = 0x21;
const SLAVE_CMD: u16 = 0xa0;
const SLAVE_DATA: u16 = 0xa1;

pub const MASTER_VECTOR: u8 = 0x20;
pub const SLAVE_VECTOR: u8 = 0x28;

const ICW1_INIT_ICW4: u8 = 0x11;
/// 8086 mode, auto-EOI.
const ICW4_8086_AUTO_EOI: u8 = 0x03;

pub fn init() {
    // SAFETY: the PICs are ours alone; called once with interrupts disabled.
    unsafe {
        outb(MASTER_CMD, ICW1_INIT_ICW4);
        outb(SLAVE_CMD, ICW1_INIT_ICW4);
        outb(MASTER_DATA, MASTER_VECTOR);
        outb(SLAVE_DATA, SLAVE_VECTOR);
        outb(MASTER_DATA, 1 << 2); // slave on IRQ2
        outb(SLAVE_DATA, 2); // slave identity
        outb(MASTER_DATA, ICW4_8086_AUTO_EOI);
        outb(SLAVE_DATA, ICW4_8086_AUTO_EOI);
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
