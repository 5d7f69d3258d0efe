//! How a run ends, what it cost, and the errors that end it early.

use std::time::Duration;

use crate::digest::format_regs;
use crate::exit::ExitError;
use crate::sink::SinkError;
use crate::vcpu::counter::CounterError;
use crate::vcpu::{Vcpu, VcpuError, regs_from_kvm};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The guest wrote `code` to the isa-debug-exit port.
    PowerOff { code: u32 },
    /// The recording was stopped before the guest finished (replay reached that point).
    Stopped,
}

#[derive(Debug, Clone, Default)]
pub struct RunStats {
    /// Guest-initiated exits.
    pub exits: u64,
    /// VMM-initiated stops (kicks).
    pub stops: u64,
    /// Kicked stops where an interrupt was pending but could not land (CPL3 or no counter).
    pub deferred_stops: u64,
    pub interrupts_at_exit: u64,
    pub interrupts_precise: u64,
    pub digests: u64,
    pub entries: u64,
    /// Time the guest spent halted, waiting for a tick.
    pub idle: Duration,
    pub wall: Duration,
    /// Replay only: time spent stopping at recorded positions.
    pub approach: Duration,
    /// Replay only: breakpoint hits and single steps used in final approaches.
    pub approach_steps: u64,
    /// Replay only: timed kicks used to get close to recorded positions.
    pub approach_kicks: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Exit(#[from] ExitError),
    #[error("{source}; guest state:\n{regs}\n{detail}")]
    GuestFailed {
        source: ExitError,
        regs: String,
        detail: String,
    },
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("reading the instruction counter failed")]
    Counter(#[from] CounterError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("installing the vCPU kick signal handler failed")]
    Signal(#[source] std::io::Error),
    #[error("creating or arming the vCPU kick timer failed")]
    Timer(#[source] std::io::Error),
    #[error("starting a VMM thread failed")]
    Thread(#[source] std::io::Error),
    #[error("writing guest console output failed")]
    Console(#[source] std::io::Error),
    #[error("guest triple fault (shutdown); registers at the fault:\n{regs}\n{sregs}")]
    TripleFault { regs: String, sregs: String },
    #[error("guest halted forever ({why}); registers:\n{regs}")]
    Halted { why: &'static str, regs: String },
}

impl RunError {
    pub fn triple_fault(vcpu: &Vcpu) -> Self {
        let s = vcpu.sregs();
        RunError::TripleFault {
            regs: format_regs(&regs_from_kvm(&vcpu.regs())),
            sregs: format!(
                "   cr0={:#018x}    cr2={:#018x}    cr3={:#018x}    cr4={:#018x}\n  efer={:#018x}     cs={:#06x} (dpl {})   idt={:#x}/{:#x}",
                s.cr0,
                s.cr2,
                s.cr3,
                s.cr4,
                s.efer,
                s.cs.selector,
                s.cs.dpl,
                s.idt.base,
                s.idt.limit
            ),
        }
    }

    /// Attaches the guest's registers and the bytes at `rip` to a failed exit.
    pub fn with_state(source: ExitError, vcpu: &Vcpu, memory: &[u8]) -> Self {
        let regs = vcpu
            .get_regs()
            .map(|r| regs_from_kvm(&r))
            .unwrap_or_else(|_| regs_from_kvm(&vcpu.regs()));
        let sregs = vcpu.get_sregs().unwrap_or_else(|_| vcpu.sregs());
        // The built-in guest identity-maps memory, so rip is also a physical address there.
        let at = usize::try_from(regs.rip).unwrap_or(usize::MAX);
        let bytes = memory.get(at..at.saturating_add(16)).map(|b| {
            b.iter()
                .map(|x| format!("{x:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        });
        RunError::GuestFailed {
            source,
            regs: format_regs(&regs),
            detail: format!(
                "   cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x} (dpl {}, l {}, db {}); bytes at rip: {}",
                sregs.cr0,
                sregs.cr3,
                sregs.cr4,
                sregs.efer,
                sregs.cs.selector,
                sregs.cs.dpl,
                sregs.cs.l,
                sregs.cs.db,
                bytes.unwrap_or_else(|| "(outside memory)".into())
            ),
        }
    }

    pub fn halted(vcpu: &Vcpu, why: &'static str) -> Self {
        RunError::Halted {
            why,
            regs: format_regs(&regs_from_kvm(&vcpu.regs())),
        }
    }
}
