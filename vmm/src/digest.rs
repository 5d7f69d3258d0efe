//! State digests: a cheap fingerprint of the whole machine that record and replay compare.

use logging_channel::format::{Entry, Position, Regs};

use crate::machine::Machine;
use crate::vcpu::regs_from_kvm;

/// The fields of a `Digest` entry, taken from the machine as it stands at an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateDigest {
    pub regs: Regs,
    pub cr0: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub efer: u64,
    pub mem_hash: u64,
    pub devices_hash: u64,
}

impl StateDigest {
    pub fn take(machine: &Machine) -> Self {
        let sregs = machine.vcpu.sregs();
        Self {
            regs: regs_from_kvm(&machine.vcpu.regs()),
            cr0: sregs.cr0,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
            mem_hash: xxhash_rust::xxh3::xxh3_64(machine.memory()),
            devices_hash: machine.bus.state_hash(),
        }
    }

    pub fn into_entry(self, pos: Position) -> Entry {
        Entry::Digest {
            pos,
            regs: self.regs,
            cr0: self.cr0,
            cr3: self.cr3,
            cr4: self.cr4,
            efer: self.efer,
            mem_hash: self.mem_hash,
            devices_hash: self.devices_hash,
        }
    }

    pub fn from_entry(entry: &Entry) -> Option<Self> {
        match entry {
            Entry::Digest {
                regs,
                cr0,
                cr3,
                cr4,
                efer,
                mem_hash,
                devices_hash,
                ..
            } => Some(Self {
                regs: *regs,
                cr0: *cr0,
                cr3: *cr3,
                cr4: *cr4,
                efer: *efer,
                mem_hash: *mem_hash,
                devices_hash: *devices_hash,
            }),
            _ => None,
        }
    }

    /// Human-readable list of what differs, `recorded` first. Empty when equal.
    pub fn differences(recorded: &Self, replayed: &Self) -> Vec<String> {
        let mut out = recorded.regs.differences(&replayed.regs);
        let mut cmp = |name: &str, a: u64, b: u64| {
            if a != b {
                out.push(format!("{name}: recorded {a:#x}, replayed {b:#x}"));
            }
        };
        cmp("cr0", recorded.cr0, replayed.cr0);
        cmp("cr3", recorded.cr3, replayed.cr3);
        cmp("cr4", recorded.cr4, replayed.cr4);
        cmp("efer", recorded.efer, replayed.efer);
        cmp("memory hash", recorded.mem_hash, replayed.mem_hash);
        cmp(
            "device state hash",
            recorded.devices_hash,
            replayed.devices_hash,
        );
        out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_changed_field() {
        let a = StateDigest {
            regs: Regs::default(),
            cr0: 1,
            cr3: 2,
            cr4: 3,
            efer: 4,
            mem_hash: 5,
            devices_hash: 6,
        };
        assert!(StateDigest::differences(&a, &a).is_empty());
        let mut b = a;
        b.regs.rcx = 9;
        b.mem_hash = 7;
        let d = StateDigest::differences(&a, &b);
        assert_eq!(
            d,
            vec![
                "rcx: recorded 0x0, replayed 0x9".to_string(),
                "memory hash: recorded 0x5, replayed 0x7".to_string()
            ]
        );
    }

    #[test]
    fn digest_entry_round_trips() {
        let a = StateDigest {
            regs: Regs {
                rip: 0x1000,
                ..Regs::default()
            },
            cr0: 1,
            cr3: 2,
            cr4: 3,
            efer: 4,
            mem_hash: 5,
            devices_hash: 6,
        };
        let e = a.into_entry(Position::AtExit { exits: 3 });
        assert_eq!(StateDigest::from_entry(&e), Some(a));
    }
}
