//! State digests: a cheap fingerprint of the whole machine that record and replay compare.

use logging_channel::format::{Digest, Regs};

use crate::machine::Machine;
use crate::vcpu::regs_from_kvm;

/// The machine's digest as it stands at an exit.
pub fn take(machine: &Machine) -> Digest {
    let sregs = machine.vcpu.sregs();
    Digest {
        regs: regs_from_kvm(&machine.vcpu.regs()),
        cr0: sregs.cr0,
        cr3: sregs.cr3,
        cr4: sregs.cr4,
        efer: sregs.efer,
        mem_hash: xxhash_rust::xxh3::xxh3_64(machine.memory()),
        devices_hash: machine.bus.state_hash(),
    }
}

/// The per-entry state check of the log format: xxh3-64 over the 18 registers in `Regs` order
/// and then the console hash, all little-endian. Never 0 (0 means "not checked" in the log).
pub fn state_check(r: &Regs, console_hash: u64) -> u64 {
    let mut bytes = [0u8; (Regs::COUNT + 1) * 8];
    let values = r
        .to_array()
        .into_iter()
        .chain(std::iter::once(console_hash));
    for (chunk, v) in bytes.chunks_exact_mut(8).zip(values) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&bytes).max(1)
}

/// Registers formatted four to a line, for error reports.
pub fn format_regs(r: &Regs) -> String {
    let mut s = String::new();
    for (i, (name, v)) in r.named().iter().enumerate() {
        s.push_str(&format!("{name:>6}={v:#018x}"));
        s.push(if i % 4 == 3 { '\n' } else { ' ' });
    }
    s.trim_end().to_string()
}
