use serde::Serialize;

/// The 18 architectural registers that identify an instruction instance.
/// Field order is the on-disk order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Regs {
    /// Register 0 of the encoding (bytes 0–7).
    pub rax: u64,
    /// Register 1 of the encoding (bytes 8–15).
    pub rbx: u64,
    /// Register 2 of the encoding (bytes 16–23).
    pub rcx: u64,
    /// Register 3 of the encoding (bytes 24–31).
    pub rdx: u64,
    /// Register 4 of the encoding (bytes 32–39).
    pub rsi: u64,
    /// Register 5 of the encoding (bytes 40–47).
    pub rdi: u64,
    /// Register 6 of the encoding (bytes 48–55).
    pub rsp: u64,
    /// Register 7 of the encoding (bytes 56–63).
    pub rbp: u64,
    /// Register 8 of the encoding (bytes 64–71).
    pub r8: u64,
    /// Register 9 of the encoding (bytes 72–79).
    pub r9: u64,
    /// Register 10 of the encoding (bytes 80–87).
    pub r10: u64,
    /// Register 11 of the encoding (bytes 88–95).
    pub r11: u64,
    /// Register 12 of the encoding (bytes 96–103).
    pub r12: u64,
    /// Register 13 of the encoding (bytes 104–111).
    pub r13: u64,
    /// Register 14 of the encoding (bytes 112–119).
    pub r14: u64,
    /// Register 15 of the encoding (bytes 120–127).
    pub r15: u64,
    /// Register 16 of the encoding (bytes 128–135): with the counter, names the instruction.
    pub rip: u64,
    /// Register 17 of the encoding (bytes 136–143).
    pub rflags: u64,
}

impl Regs {
    /// Number of registers; each is encoded as a u64.
    pub const COUNT: usize = 18;

    /// Register names, in the same (on-disk) order as [`Regs::to_array`].
    pub const NAMES: [&'static str; Self::COUNT] = [
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15", "rip", "rflags",
    ];

    /// The registers in on-disk order.
    pub fn to_array(&self) -> [u64; Self::COUNT] {
        [
            self.rax,
            self.rbx,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.rsp,
            self.rbp,
            self.r8,
            self.r9,
            self.r10,
            self.r11,
            self.r12,
            self.r13,
            self.r14,
            self.r15,
            self.rip,
            self.rflags,
        ]
    }

    /// Inverse of [`Regs::to_array`].
    pub fn from_array(v: [u64; Self::COUNT]) -> Self {
        let [
            rax,
            rbx,
            rcx,
            rdx,
            rsi,
            rdi,
            rsp,
            rbp,
            r8,
            r9,
            r10,
            r11,
            r12,
            r13,
            r14,
            r15,
            rip,
            rflags,
        ] = v;
        Self {
            rax,
            rbx,
            rcx,
            rdx,
            rsi,
            rdi,
            rsp,
            rbp,
            r8,
            r9,
            r10,
            r11,
            r12,
            r13,
            r14,
            r15,
            rip,
            rflags,
        }
    }
}

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
