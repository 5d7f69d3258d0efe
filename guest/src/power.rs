//! Power-off through isa-debug-exit (port 0xf4). Our VMM turns the byte into
//! its exit code; QEMU exits with `(code << 1) | 1`.

use crate::port::outb;

const DEBUG_EXIT_PORT: u16 = 0xf4;

pub const EXIT_OK: u8 = 0;
pub const EXIT_BAD_ARGS: u8 = 2;
pub const EXIT_EXCEPTION: u8 = 3;
/// The workload ran but its own check failed (e.g. tcploop saw a bad reply).
pub const EXIT_FAILED: u8 = 4;
pub const EXIT_PANIC: u8 = 101;

pub fn exit(code: u8) -> ! {
    // SAFETY: isa-debug-exit has no state to corrupt; writing it is the
    // documented way to stop the machine.
    unsafe { outb(DEBUG_EXIT_PORT, code) };
    halt_forever()
}

/// Used when the power-off device is missing: keeps the CPU parked instead
/// of running off into whatever follows.
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: parks the CPU with interrupts off; nothing to preserve.
        unsafe { core::arch::asm!("cli", "hlt", options(nostack)) };
    }
}
