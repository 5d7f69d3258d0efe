//! One line per timer tick with the clock reading: exercises interrupt
//! delivery, PIT latching and halting.

use crate::cmdline::End;
use crate::fmt::LineBuf;
use crate::{clock, console, port, power};

pub fn run(ticks: u64, end: End) -> ! {
    for i in 1..=ticks {
        wait_for_tick();
        let now = clock::now_ns();
        let mut line = LineBuf::new();
        line.str("tick ")
            .dec(i)
            .byte(b'/')
            .dec(ticks)
            .str(" t=")
            .dec(now)
            .str(" ns");
        console::print(&mut line);
    }
    let mut line = LineBuf::new();
    line.str("ticker: done");
    console::print(&mut line);
    match end {
        End::PowerOff(code) => power::exit(code),
        End::TripleFault => crate::idt::triple_fault(),
        End::Reset => {
            // SAFETY: 0xFE to the keyboard controller's command port pulses the reset line;
            // the VMM ends the machine at this exit, and nothing here depends on memory.
            unsafe { port::outb(0x64, 0xfe) };
            // A machine that ignored it: end as a PC whose reset failed would, by halting.
            loop {
                // SAFETY: interrupts off, then halt: nothing runs after this.
                unsafe { core::arch::asm!("cli; hlt", options(nostack)) };
            }
        }
    }
}

/// Halts until the next timer tick (CPL0 only).
pub fn wait_for_tick() {
    let start = clock::ticks();
    loop {
        // SAFETY: IF is cleared so the check and the halt are atomic with
        // respect to the timer; `sti; hlt` re-enables interrupts only for
        // the halt (the STI shadow keeps a tick from slipping in between).
        unsafe { core::arch::asm!("cli", options(nostack)) };
        if clock::ticks() != start {
            break;
        }
        // SAFETY: see above.
        unsafe { core::arch::asm!("sti", "hlt", options(nostack)) };
    }
    // SAFETY: leave with interrupts enabled, as on entry.
    unsafe { core::arch::asm!("sti", options(nostack)) };
}
