use serde::Serialize;

/// The 18 architectural registers that identify an instruction instance.
/// Field order is the on-disk order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
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
    AtExit { exits: u64 },
    /// Mid-execution, between exit `exits` and the next one: the instruction
    /// counter read `counter` and the registers were `regs`. The counter
    /// alone is ambiguous inside a `rep` instruction; rip + all GPRs are not.
    Precise {
        exits: u64,
        counter: u64,
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

    pub fn is_precise(&self) -> bool {
        matches!(self, Self::Precise { .. })
    }
}
