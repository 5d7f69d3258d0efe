use serde::Serialize;

use super::Regs;

/// Where in the guest's execution an entry applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Position {
    /// At the guest-initiated VM exit number `exits` (count of
    /// guest-initiated exits so far, 1-based), before the guest resumes.
    AtExit {
        /// Guest-initiated exits so far, 1-based.
        exits: u64,
    },
    /// Mid-execution, between exit `exits` and the next one: the instruction
    /// counter read `counter` and the registers were `regs`. The counter
    /// alone is ambiguous inside a `rep` instruction; rip + all GPRs are not.
    Precise {
        /// The last guest-initiated exit before the position.
        exits: u64,
        /// What the instruction counter (the header's `CounterKind`) read there.
        counter: u64,
        /// All registers there: they tell apart the iterations of a `rep` instruction.
        regs: Regs,
    },
}

impl Position {
    /// The exit count this position is at or after.
    pub fn exits(&self) -> u64 {
        match self {
            Self::AtExit { exits } | Self::Precise { exits, .. } => *exits,
        }
    }

    /// Whether the position is mid-execution (and replay must approach it).
    pub fn is_precise(&self) -> bool {
        matches!(self, Self::Precise { .. })
    }
}
