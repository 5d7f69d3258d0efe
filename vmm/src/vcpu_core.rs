//! The one vCPU core under plain runs, recordings, replays and a live backup: one `KVM_RUN`
//! step with its exit bookkeeping, and one path by which interrupts reach the CPU.
//!
//! Recording and replay differ only in what they plug into it: the [`DeviceEnv`] (the recorder
//! reads the host clock and logs each value, replay answers from the log) and who decides where
//! an interrupt lands (the recorder stops the vCPU and logs the position; replay approaches the
//! logged position). Device I/O, the guest-exit count that every position is built on, the
//! timer's edge on the PIC and the hand-over of a vector to the CPU are this module's, so both
//! sides do them identically. The core sees the vCPU only through [`VcpuPort`], so its logic is
//! unit-tested with a fake vCPU and a fake clock, next to the real-KVM tests.

use kvm_ioctls::VcpuExit;

use crate::bus::Bus;
use crate::devices::DeviceEnv;
use crate::exit::{ExitError, RunExit, Stop, handle_exit};
use crate::vcpu::counter::InsnCounter;
use crate::vcpu::{Vcpu, VcpuError};

/// What the core needs from a vCPU. [`Vcpu`] is the real one.
pub trait VcpuPort {
    /// Enters the guest until its next exit, or until a kick (`EINTR`).
    fn run(&mut self) -> RunExit<'_>;
    /// The guest's instruction pointer as of the last exit (for traces).
    fn rip(&self) -> u64;
    /// Whether the CPU can take an interrupt now: IF set and no interrupt shadow.
    fn ready_for_interrupt(&mut self) -> bool;
    /// Queues `vector` for delivery at the next entry.
    fn inject(&mut self, vector: u8) -> Result<(), VcpuError>;
}

impl VcpuPort for Vcpu {
    fn run(&mut self) -> RunExit<'_> {
        let run: *const kvm_bindings::kvm_run = self.fd.get_kvm_run();
        let result = self.fd.run();
        let io_size = match result {
            Ok(VcpuExit::IoIn(..) | VcpuExit::IoOut(..)) => {
                // SAFETY: `run` points at this vCPU's `kvm_run`, mapped for the vCPU's life;
                // after an I/O exit the kernel filled its `io` member, which is apart from the
                // data area `result` borrows, and nothing writes it until the next `KVM_RUN`.
                usize::from(unsafe { (*run).__bindgen_anon_1.io.size })
            }
            _ => 0,
        };
        RunExit { result, io_size }
    }
    fn rip(&self) -> u64 {
        self.regs().rip
    }
    fn ready_for_interrupt(&mut self) -> bool {
        Vcpu::ready_for_interrupt(self)
    }
    fn inject(&mut self, vector: u8) -> Result<(), VcpuError> {
        Vcpu::inject(self, vector)
    }
}

/// The exit loop's own state: how far the guest has come in guest exits, the backbone of every
/// logged position, and how often the VMM stopped it between exits.
#[derive(Debug, Clone, Copy, Default)]
pub struct Core {
    exits: u64,
    stops: u64,
}

impl Core {
    /// A core whose guest has made `exits` guest exits already (0 for a fresh boot; a saved
    /// state's count for a backup).
    pub fn new(exits: u64) -> Self {
        Self { exits, stops: 0 }
    }

    /// Guest exits so far.
    pub fn exits(&self) -> u64 {
        self.exits
    }

    /// VMM-initiated stops (kicks, debug exits) so far.
    pub fn stops(&self) -> u64 {
        self.stops
    }

    /// One entry into the guest: carries out the exit's I/O on `bus`, which asks `env` for
    /// anything from outside the guest, and counts it. `counter` is only read for the trace.
    pub fn step(
        &mut self,
        vcpu: &mut dyn VcpuPort,
        bus: &mut Bus,
        env: &mut dyn DeviceEnv,
        counter: &dyn InsnCounter,
    ) -> Result<Stop, ExitError> {
        let stop = handle_exit(vcpu.run(), bus, env)?;
        if stop.is_guest_exit() {
            self.exits += 1;
            tracing::trace!(
                exits = self.exits,
                counter = counter.read().unwrap_or(0),
                rip = vcpu.rip(),
                "EXIT"
            );
        } else {
            self.stops += 1;
        }
        Ok(stop)
    }
}

/// A timer tick: one edge on PIC `line` (the PIT's output pulses once per period). The recorder
/// logs it as an `Irq` entry where it raised it; replay raises it where the entry says.
pub fn tick(bus: &mut Bus, line: u8) {
    bus.devices.pic.raise_irq(line);
    bus.devices.pic.lower_irq(line);
}

/// Hands the CPU the interrupt the PIC offers, if any and if the CPU can take it now; returns
/// the vector (the recorder logs it as an `Inject` entry at this position).
pub fn deliver(bus: &mut Bus, vcpu: &mut dyn VcpuPort) -> Result<Option<u8>, VcpuError> {
    if bus.devices.pic.pending_vector().is_none() || !vcpu.ready_for_interrupt() {
        return Ok(None);
    }
    let Some(vector) = bus.devices.pic.acknowledge() else {
        return Ok(None);
    };
    vcpu.inject(vector)?;
    Ok(Some(vector))
}

/// Why a recorded injection cannot be repeated here.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The PIC offers another vector, or none.
    #[error("the PIC offers {offered:?}, the recording injected {recorded:#x}")]
    Vector {
        /// What the PIC offers now.
        offered: Option<u8>,
        /// What the recording injected.
        recorded: u8,
    },
    /// IF clear or an interrupt shadow.
    #[error("the replayed guest cannot take an interrupt here (IF clear or interrupt shadow)")]
    NotReady,
    /// KVM refused the injection.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
}

/// Replay's side of [`deliver`]: the recording handed the CPU `recorded` here; the PIC must
/// offer exactly that and the CPU must be able to take it, then it is delivered the same way.
pub fn deliver_recorded(
    bus: &mut Bus,
    vcpu: &mut dyn VcpuPort,
    recorded: u8,
) -> Result<(), InjectError> {
    let offered = bus.devices.pic.pending_vector();
    if offered != Some(recorded) {
        return Err(InjectError::Vector { offered, recorded });
    }
    match deliver(bus, vcpu)? {
        Some(v) if v == recorded => Ok(()),
        Some(v) => Err(InjectError::Vector {
            offered: Some(v),
            recorded,
        }),
        None => Err(InjectError::NotReady),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::devices::{FakeEnv, LINUX_PIC_INIT};
    use crate::vcpu::counter::NoCounter;

    /// What a scripted exit does.
    enum Scripted {
        Out(u16, Vec<u8>),
        In(u16, usize),
        Kick,
        Halt,
    }

    /// A vCPU that "runs" by replaying a script of exits, records what port reads returned and
    /// which vectors it was given, and can take interrupts whenever `if_flag` says.
    struct FakeVcpu {
        script: VecDeque<Scripted>,
        buf: Vec<u8>,
        reads: Vec<(u16, Vec<u8>)>,
        injected: Vec<u8>,
        if_flag: bool,
        rip: u64,
    }

    impl FakeVcpu {
        fn new(script: Vec<Scripted>) -> Self {
            Self {
                script: script.into(),
                buf: Vec::new(),
                reads: Vec::new(),
                injected: Vec::new(),
                if_flag: true,
                rip: 0x1000,
            }
        }
    }

    impl VcpuPort for FakeVcpu {
        fn run(&mut self) -> RunExit<'_> {
            // What the last port read got back, now that the bus has filled it in.
            if let Some((_, data)) = self.reads.last_mut()
                && data.is_empty()
            {
                data.clone_from(&self.buf);
            }
            self.rip += 2;
            let (result, io_size) = match self.script.pop_front() {
                Some(Scripted::Out(port, data)) => {
                    self.buf = data;
                    (Ok(VcpuExit::IoOut(port, &self.buf)), self.buf.len())
                }
                Some(Scripted::In(port, len)) => {
                    self.buf = vec![0; len];
                    self.reads.push((port, Vec::new()));
                    (Ok(VcpuExit::IoIn(port, &mut self.buf)), len)
                }
                Some(Scripted::Kick) => (Err(kvm_ioctls::Error::new(libc::EINTR)), 0),
                Some(Scripted::Halt) | None => (Ok(VcpuExit::Hlt), 0),
            };
            RunExit { result, io_size }
        }
        fn rip(&self) -> u64 {
            self.rip
        }
        fn ready_for_interrupt(&mut self) -> bool {
            self.if_flag
        }
        fn inject(&mut self, vector: u8) -> Result<(), VcpuError> {
            self.injected.push(vector);
            Ok(())
        }
    }

    /// Linux-like 8259 programming (vectors 0x20/0x28), then everything but the timer masked.
    fn pic_setup() -> Vec<Scripted> {
        LINUX_PIC_INIT
            .into_iter()
            .chain([(0x21, 0xfe)])
            .map(|(port, value)| Scripted::Out(port, vec![value]))
            .collect()
    }

    /// Drives the core through a port read answered from the (fake) clock, a kick that lands
    /// the timer interrupt mid-execution, and the guest's halt: exits are counted only for
    /// guest exits, the read sees the clock, and the vector reaches the CPU once, where the
    /// loop delivered it.
    #[test]
    fn a_port_read_and_an_interrupt_landing_through_the_core() {
        let mut script = pic_setup();
        // The RTC's seconds register: read from the wall clock.
        script.push(Scripted::Out(0x70, vec![0x00]));
        script.push(Scripted::In(0x71, 1));
        script.push(Scripted::Kick);
        script.push(Scripted::Halt);
        let setup_exits = script.len() as u64 - 2;
        let mut vcpu = FakeVcpu::new(script);
        let mut bus = Bus::new();
        let mut env = FakeEnv {
            wall_secs: 1_709_214_307, // 13:45:07 UTC
            ..FakeEnv::default()
        };
        let mut core = Core::new(0);
        for _ in 0..setup_exits {
            let stop = core
                .step(&mut vcpu, &mut bus, &mut env, &NoCounter)
                .unwrap();
            assert!(stop.is_guest_exit(), "{stop:?}");
            // Nothing pending yet: the loop delivers nothing.
            assert_eq!(deliver(&mut bus, &mut vcpu).unwrap(), None);
        }
        assert_eq!(core.exits(), setup_exits);

        // A tick arrives: the VMM kicks the vCPU, which is not a guest exit.
        let stop = core
            .step(&mut vcpu, &mut bus, &mut env, &NoCounter)
            .unwrap();
        assert_eq!(stop, Stop::Kicked);
        assert_eq!((core.exits(), core.stops()), (setup_exits, 1));
        // The port read before it was answered from the environment's wall clock (BCD seconds).
        assert_eq!(vcpu.reads, vec![(0x71, vec![0x07])]);
        // With IF clear it waits; then it lands here, once.
        tick(&mut bus, 0);
        vcpu.if_flag = false;
        assert_eq!(deliver(&mut bus, &mut vcpu).unwrap(), None);
        vcpu.if_flag = true;
        assert_eq!(deliver(&mut bus, &mut vcpu).unwrap(), Some(0x20));
        assert_eq!(
            deliver(&mut bus, &mut vcpu).unwrap(),
            None,
            "delivered twice"
        );
        assert_eq!(vcpu.injected, vec![0x20]);

        let stop = core
            .step(&mut vcpu, &mut bus, &mut env, &NoCounter)
            .unwrap();
        assert_eq!(stop, Stop::Halt);
        assert_eq!(core.exits(), setup_exits + 1);
    }

    /// Replay repeats an injection only where the PIC offers exactly the recorded vector.
    #[test]
    fn a_recorded_injection_needs_the_same_vector_from_the_pic() {
        let mut vcpu = FakeVcpu::new(pic_setup());
        let mut bus = Bus::new();
        let mut env = FakeEnv::default();
        let mut core = Core::new(0);
        while !vcpu.script.is_empty() {
            core.step(&mut vcpu, &mut bus, &mut env, &NoCounter)
                .unwrap();
        }
        assert!(matches!(
            deliver_recorded(&mut bus, &mut vcpu, 0x20),
            Err(InjectError::Vector {
                offered: None,
                recorded: 0x20
            })
        ));
        tick(&mut bus, 0);
        assert!(matches!(
            deliver_recorded(&mut bus, &mut vcpu, 0x21),
            Err(InjectError::Vector {
                offered: Some(0x20),
                recorded: 0x21
            })
        ));
        vcpu.if_flag = false;
        assert!(matches!(
            deliver_recorded(&mut bus, &mut vcpu, 0x20),
            Err(InjectError::NotReady)
        ));
        vcpu.if_flag = true;
        assert!(deliver_recorded(&mut bus, &mut vcpu, 0x20).is_ok());
        assert_eq!(vcpu.injected, vec![0x20]);
    }
}
