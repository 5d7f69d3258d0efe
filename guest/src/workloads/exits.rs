//! A tight loop of port writes: every `out` is a VM exit that the VMM must
//! decode, route to its device bus and resume from, and almost nothing else
//! runs. Wall time divided by `n` is the VMM's cost per exit (benchmarks run
//! it with `n=0` too, to subtract boot and power-off).

use crate::fmt::LineBuf;
use crate::{console, power};

/// Port 0x80 (the PC POST-code port) is claimed by no device in our VMM and
/// by a no-op device in QEMU: the write itself does nothing, so the exit
/// round trip is all that is measured.
pub const DEFAULT_PORT: u16 = 0x80;
pub const DEFAULT_N: u64 = 100_000;

pub fn run(n: u64, port: u16) -> ! {
    if n != 0 {
        // SAFETY: writes to `port`, which the caller chose as having no
        // device (or a harmless one) behind it; touches no memory. The loop
        // is written in asm so that each iteration is exactly `out`, `dec`,
        // `jnz`: CPL0 instructions are emulated on the target host, and
        // compiler-generated loop code would add to the per-exit cost.
        unsafe {
            core::arch::asm!(
                "2:",
                "out dx, al",
                "dec {n}",
                "jnz 2b",
                n = inout(reg) n => _,
                in("dx") port,
                in("al") 0u8,
                options(nomem, nostack),
            );
        }
    }
    let mut line = LineBuf::new();
    line.str("exits: done n=").dec(n);
    console::print(&mut line);
    power::exit(power::EXIT_OK)
}
