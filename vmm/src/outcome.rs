//! How a run ends, what it cost, and the errors that end it early.

use std::time::Duration;

use crate::digest::format_regs;
use crate::exit::ExitError;
use crate::sink::SinkError;
use crate::vcpu::counter::CounterError;
use crate::vcpu::{Vcpu, VcpuError, regs_from_kvm};

/// How a run that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The guest wrote `code` to the isa-debug-exit port.
    PowerOff {
        /// The value written, zero-extended.
        code: u32,
    },
    /// The recording was stopped before the guest finished (replay reached that point).
    Stopped,
    /// The guest asked the machine to reset by writing `value` to `port`; understudy does not
    /// reboot guests (as QEMU's `-no-reboot`), so the run ends here.
    Reset {
        /// The port written (0x64, 0xCF9 or 0x92).
        port: u16,
        /// The value written.
        value: u8,
    },
}

/// How a guest ended, as a state taken after its end carries it: a backup that installs such
/// a state holds a finished guest and replays nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Ended {
    /// The guest wrote `code` to the isa-debug-exit port.
    PowerOff {
        /// The value written, zero-extended.
        code: u32,
    },
    /// The guest triple-faulted.
    TripleFault,
    /// The guest asked for a reset (port, value written), which ends it.
    Reset {
        /// The port written.
        port: u16,
        /// The value written.
        value: u8,
    },
}

impl Ended {
    /// The end a finished run's outcome is; `None` for a stopped recording (not an end of the
    /// guest).
    pub fn of(outcome: Outcome) -> Option<Self> {
        match outcome {
            Outcome::PowerOff { code } => Some(Self::PowerOff { code }),
            Outcome::Reset { port, value } => Some(Self::Reset { port, value }),
            Outcome::Stopped => None,
        }
    }
}

/// What a run did and cost, for reports and benchmarks.
#[derive(Debug, Clone, Default)]
pub struct RunStats {
    /// Guest-initiated exits.
    pub exits: u64,
    /// VMM-initiated stops (kicks).
    pub stops: u64,
    /// Kicked stops where an interrupt was pending but could not land (CPL3 or no counter).
    pub deferred_stops: u64,
    /// Interrupts injected at a guest exit.
    pub interrupts_at_exit: u64,
    /// Interrupts injected mid-execution, after a kick.
    pub interrupts_precise: u64,
    /// Digests taken (recording) or verified (replay).
    pub digests: u64,
    /// Recording only: time spent taking digests (the guest is stopped meanwhile).
    pub digest_time: Duration,
    /// Entries logged (recording; a replay counts them in `ReplayReport::entries`).
    pub entries: u64,
    /// Time the guest spent halted, waiting for a tick.
    pub idle: Duration,
    /// Wall-clock time of the whole run.
    pub wall: Duration,
    /// Replay only: time spent stopping at recorded positions.
    pub approach: Duration,
    /// Replay only: breakpoint hits and single steps used in final approaches.
    pub approach_steps: u64,
    /// Replay only: timed kicks used to get close to recorded positions.
    pub approach_kicks: u64,
    /// Replay only: kicks that stopped the guest before it executed anything (counter and
    /// registers unchanged).
    pub idle_kicks: u64,
    /// Replay only: time of the approach's kicks, from arming the timer to reading the counter
    /// after the stop (the guest runs most of it).
    pub kick_time: Duration,
    /// Replay only: runs to a breakpoint on the recorded rip, each from arming it to the stop.
    pub breakpoint_runs: u64,
    /// Replay only: time of those runs.
    pub breakpoint_time: Duration,
    /// Replay only: single steps over a breakpoint's instance that was not the target.
    pub step_overs: u64,
    /// Replay only: time of those steps, switching the debug state included.
    pub step_over_time: Duration,
    /// Replay only: single steps toward the target in its last instructions.
    pub single_steps: u64,
    /// Replay only: time of those steps.
    pub single_step_time: Duration,
    /// Replay only: the highest the shortest kick was raised to by kicks that stopped the
    /// guest before it ran (ns; 0 if never raised).
    pub kick_floor_ns: f64,
    /// Replay only: checkpoints taken (`checkpoint.rs`).
    pub checkpoints: u64,
    /// Replay only: time spent taking them.
    pub checkpoint_time: Duration,
    /// Replay only: guest memory the last checkpoint held, in bytes.
    pub checkpoint_bytes: u64,
    /// Replay only: times the replay went back to a checkpoint after an overshoot.
    pub rewinds: u64,
    /// Replay only: time spent putting the machine back to a checkpoint.
    pub rewind_time: Duration,
}

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// An exit the VMM could not handle, reported without the guest's state.
    #[error(transparent)]
    Exit(#[from] ExitError),
    /// An exit the VMM could not handle, with the guest's state to diagnose it.
    #[error("{source}; guest state:\n{regs}\n{detail}")]
    GuestFailed {
        /// What went wrong.
        source: ExitError,
        /// The general registers, formatted.
        regs: String,
        /// Control registers, CS and the bytes at rip, formatted.
        detail: String,
    },
    /// A vCPU ioctl failed.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Reading the instruction counter failed.
    #[error("reading the instruction counter failed")]
    Counter(#[from] CounterError),
    /// The log sink failed, or this node is no longer primary.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Installing the kick signal handler failed.
    #[error("installing the vCPU kick signal handler failed")]
    Signal(#[source] std::io::Error),
    /// Creating, arming or disarming the kick timer failed.
    #[error("creating or arming the vCPU kick timer failed")]
    Timer(#[source] std::io::Error),
    /// A helper thread (the PIT ticker) could not be started.
    #[error("starting a VMM thread failed")]
    Thread(#[source] std::io::Error),
    /// Writing the guest's console output failed.
    #[error("writing guest console output failed")]
    Console(#[source] std::io::Error),
    /// The guest triple-faulted (KVM's shutdown exit).
    #[error("guest triple fault (shutdown); registers at the fault:\n{regs}\n{sregs}")]
    TripleFault {
        /// The general registers, formatted.
        regs: String,
        /// Control registers, CS and the IDT, formatted.
        sregs: String,
    },
    /// The guest halted where nothing can ever wake it.
    #[error("guest halted forever ({why}); registers:\n{regs}")]
    Halted {
        /// Interrupts disabled, or no timer programmed and none pending.
        why: &'static str,
        /// The general registers, formatted.
        regs: String,
    },
}

impl RunError {
    /// `TripleFault` with the vCPU's registers as of the exit.
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

    /// `Halted` for `why`, with the vCPU's registers as of the exit.
    pub fn halted(vcpu: &Vcpu, why: &'static str) -> Self {
        RunError::Halted {
            why,
            regs: format_regs(&regs_from_kvm(&vcpu.regs())),
        }
    }
}
