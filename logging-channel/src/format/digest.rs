//! A state digest: the whole machine reduced to a few words, which the recorder logs and the
//! replayer compares. The one definition of its fields; the VMM fills it in, the codec lays it
//! out, replay compares it with [`Digest::differences`].

use serde::Serialize;

use super::Regs;

/// The machine as it stood at an exit. Field order is the on-disk order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Digest {
    /// The general-purpose registers, rip and rflags.
    pub regs: Regs,
    /// Control register 0.
    pub cr0: u64,
    /// Control register 3 (the page-table root).
    pub cr3: u64,
    /// Control register 4.
    pub cr4: u64,
    /// The EFER MSR (long mode, NX).
    pub efer: u64,
    /// xxh3-64 of all guest memory.
    pub mem_hash: u64,
    /// Hash of every device's guest-visible state.
    pub devices_hash: u64,
}

impl Digest {
    /// The words after the registers, each with the name reports give it, in on-disk order:
    /// the codec writes them from here.
    pub fn words(&self) -> [(&'static str, u64); 6] {
        // Destructured without `..`, so a new field cannot be left out of the comparison.
        let Self {
            regs: _,
            cr0,
            cr3,
            cr4,
            efer,
            mem_hash,
            devices_hash,
        } = *self;
        [
            ("cr0", cr0),
            ("cr3", cr3),
            ("cr4", cr4),
            ("efer", efer),
            ("memory hash", mem_hash),
            ("device state hash", devices_hash),
        ]
    }

    /// One line per field that differs, registers first, `self` being the recorded side.
    /// Empty when equal.
    pub fn differences(&self, replayed: &Self) -> Vec<String> {
        let mut out = self.regs.differences(&replayed.regs);
        for ((name, a), (_, b)) in self.words().into_iter().zip(replayed.words()) {
            if a != b {
                out.push(format!("{name}: recorded {a:#x}, replayed {b:#x}"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_changed_field() {
        let a = Digest {
            regs: Regs::default(),
            cr0: 1,
            cr3: 2,
            cr4: 3,
            efer: 4,
            mem_hash: 5,
            devices_hash: 6,
        };
        assert!(a.differences(&a).is_empty());
        let mut b = a;
        b.regs.rcx = 9;
        b.mem_hash = 7;
        assert_eq!(
            a.differences(&b),
            vec![
                "rcx: recorded 0x0, replayed 0x9".to_string(),
                "memory hash: recorded 0x5, replayed 0x7".to_string()
            ]
        );
        let c = Digest {
            cr0: 0,
            cr3: 0,
            cr4: 0,
            efer: 0,
            devices_hash: 0,
            ..a
        };
        assert_eq!(a.differences(&c).len(), 5, "every word is compared");
    }
}
