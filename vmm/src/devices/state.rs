//! The saved form of every device's guest-visible state, for live state transfer: the primary
//! saves its [`crate::bus::Bus`] with `save_state`, the backup restores it into a fresh one with
//! `restore_state` and from then on answers every port access exactly as the primary would have.
//!
//! The types here are plain data with a stable serde layout (they travel in postcard and are
//! debugged as JSON). Enumerations are kept as the raw numbers the hardware uses, not as Rust
//! enums, so the encoding does not depend on how a device names its internal states; each
//! device's `restore` checks them and reports anything out of range as a [`DeviceStateError`]
//! instead of trusting the other end. Times are in the units of
//! [`super::DeviceEnv::clock_ns`], so the backup must continue that clock from the primary's
//! value for saved epochs to keep their meaning.

use serde::{Deserialize, Serialize};

/// Every device on the bus, plus the bus's own counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesState {
    /// The interrupt controllers.
    pub pic: PicState,
    /// The timer.
    pub pit: PitState,
    /// The real-time clock.
    pub rtc: RtcState,
    /// The console UART.
    pub serial: SerialState,
    /// The exit port.
    pub debug_exit: DebugExitState,
    /// The network card, if the guest has one.
    pub nic: Option<crate::devices::nic::NicState>,
    /// Accesses to ports no device decodes, as counted by the bus.
    pub unclaimed_accesses: u64,
}

/// The 8259A pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PicState {
    /// The chip at 0x20, lines 0–7.
    pub master: PicChipState,
    /// The chip at 0xa0, lines 8–15, cascaded into the master's line 2.
    pub slave: PicChipState,
}

/// One 8259A.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PicChipState {
    /// Interrupt request register: lines latched as requesting.
    pub irr: u8,
    /// In-service register: lines delivered and not yet ended by an EOI.
    pub isr: u8,
    /// Interrupt mask register (OCW1): masked lines are not delivered.
    pub imr: u8,
    /// Input levels as last driven: a line that is high requests again only after it has
    /// been lowered, so losing these would let a held line interrupt twice.
    pub lines: u8,
    /// ICW2's vector base; bits 2..0 are always clear.
    pub vector_base: u8,
    /// Where the chip is in its initialisation sequence: 0 ready, 1..=3 waiting for
    /// ICW2..ICW4.
    pub init_step: u8,
    /// ICW1 announced an ICW4.
    pub needs_icw4: bool,
    /// ICW1 said single (no cascade, so no ICW3).
    pub single: bool,
    /// ICW4's automatic EOI: a delivered line does not stay in service.
    pub auto_eoi: bool,
    /// OCW3's register selection: command-port reads return ISR rather than IRR.
    pub read_isr: bool,
    /// The chip has completed an initialisation sequence; until then it delivers nothing.
    pub initialised: bool,
}

/// The 8254, channels 0..=2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitState {
    /// Channel 0 (the timer interrupt), 1 (unused) and 2.
    pub channels: [PitChannelState; 3],
}

/// One 8254 counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitChannelState {
    /// M2..M0 as programmed (0..=7).
    pub mode: u8,
    /// The control word's RW field: 1 low byte, 2 high byte, 3 low then high.
    pub access: u8,
    /// The control word asked for BCD counting (recorded, but counts stay binary).
    pub bcd: bool,
    /// The count register as written; 0 stands for 65536.
    pub reload: u16,
    /// [`super::DeviceEnv::clock_ns`] when the current count was loaded; `None` while no
    /// count has been loaded since the last control word.
    pub epoch_ns: Option<u64>,
    /// Write flip-flop: the low byte of a half-written lobyte/hibyte count.
    pub pending_low: Option<u8>,
    /// Read flip-flop: the next lobyte/hibyte read returns the high byte.
    pub read_high_next: bool,
    /// A count latched by a latch or read-back command, not yet read.
    pub latched_count: Option<u16>,
    /// A status byte latched by read-back, not yet read.
    pub latched_status: Option<u8>,
    /// The read-back status's null-count bit: set by a control word until a count is complete.
    pub null_count: bool,
}

/// The CMOS RTC. The time itself is not state: every read asks
/// [`super::DeviceEnv::wall_clock_unix_secs`], and the guest cannot set the clock, so there is
/// no offset to carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RtcState {
    /// The register selected through port 0x70 (0..=0x7f; the NMI-mask bit is not kept).
    pub index: u8,
    /// All 128 bytes of CMOS RAM, status registers included.
    pub cmos: Vec<u8>,
}

/// The COM1 16550A: vm-superio's registers and receive FIFO, plus what our wrapper holds on
/// the VMM side of the UART.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// Divisor latch, low byte (DLL).
    pub divisor_low: u8,
    /// Divisor latch, high byte (DLM).
    pub divisor_high: u8,
    /// Interrupt enable register (IER).
    pub interrupt_enable: u8,
    /// Interrupt identification register (IIR).
    pub interrupt_identification: u8,
    /// Line control register (LCR), including the divisor-latch access bit.
    pub line_control: u8,
    /// Line status register (LSR).
    pub line_status: u8,
    /// Modem control register (MCR), including loopback.
    pub modem_control: u8,
    /// Modem status register (MSR).
    pub modem_status: u8,
    /// Scratch register (SCR).
    pub scratch: u8,
    /// Received bytes the guest has not read yet, oldest first (at most 64).
    pub rx_fifo: Vec<u8>,
    /// An interrupt request the VMM has not collected with `take_interrupt` yet.
    pub interrupt_pending: bool,
    /// Transmitted bytes the VMM has not collected with `take_output` yet.
    pub pending_output: Vec<u8>,
}

/// The isa-debug-exit port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DebugExitState {
    /// An exit code the VMM has not collected with `take_exit_request` yet.
    pub request: Option<u32>,
}

/// A saved device state that no device could be in. Each message names the device (and the
/// chip or channel) and the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceStateError {
    /// A chip's initialisation step is not one of 0..=3.
    #[error(
        "PIC {chip}: initialisation step {step} is not valid (0 ready, 1..=3 waiting for ICW2..ICW4)"
    )]
    PicInitStep {
        /// "master" or "slave".
        chip: &'static str,
        /// The step found.
        step: u8,
    },
    /// A chip's vector base has bits 2..0 set, which would misdirect every interrupt.
    #[error("PIC {chip}: vector base {base:#04x} has bits 2..0 set, which ICW2 never stores")]
    PicVectorBase {
        /// "master" or "slave".
        chip: &'static str,
        /// The base found.
        base: u8,
    },
    /// A chip's initialisation step contradicts its ICW1 flags (e.g. waiting for an ICW3 a
    /// single chip never gets).
    #[error("PIC {chip}: initialisation step {step} {conflict}")]
    PicInitSequence {
        /// "master" or "slave".
        chip: &'static str,
        /// The step found.
        step: u8,
        /// What it contradicts.
        conflict: &'static str,
    },
    /// A channel's mode does not fit the status byte's three bits.
    #[error("PIT channel {channel}: mode {mode} is not a valid 8254 mode")]
    PitMode {
        /// The channel, 0..=2.
        channel: usize,
        /// The mode found.
        mode: u8,
    },
    /// A channel's access mode is not 1, 2 or 3.
    #[error(
        "PIT channel {channel}: access {access} is not a valid 8254 read/write mode (1 low byte, 2 high byte, 3 low then high)"
    )]
    PitAccess {
        /// The channel, 0..=2.
        channel: usize,
        /// The access mode found.
        access: u8,
    },
    /// A read or write flip-flop is set on a channel whose access mode never uses it.
    #[error("PIT channel {channel}: {field} is set, but only low-then-high access uses it")]
    PitFlipFlop {
        /// The channel, 0..=2.
        channel: usize,
        /// Which flip-flop.
        field: &'static str,
    },
    /// The selected RTC register is beyond CMOS RAM.
    #[error("RTC: register index {index:#04x} is beyond the 128 bytes of CMOS")]
    RtcIndex {
        /// The index found.
        index: u8,
    },
    /// The saved CMOS RAM is not 128 bytes.
    #[error("RTC: CMOS RAM has {len} bytes, not 128")]
    RtcCmosLength {
        /// Its length.
        len: usize,
    },
    /// The saved network card is not one this card could have been in.
    #[error("network card: {0}")]
    Nic(String),
    /// The primary's guest has a network card and this machine has none.
    #[error(
        "the guest has a network card, this node's machine has none: start every node of one guest with the same network options (--tap)"
    )]
    NicMissing,
    /// This machine has a network card and the primary's guest has none.
    #[error(
        "this node's machine has a network card, the guest it is given has none: start every node of one guest with the same network options"
    )]
    NicUnexpected,
    /// The receive FIFO holds more than a 16550A can.
    #[error("serial: receive FIFO holds {len} bytes, more than the 16550A's 64")]
    SerialRxFifo {
        /// Bytes in it.
        len: usize,
    },
}

/// Shared by the device tests: runs a saved-and-restored device side by side with the
/// original and checks that nothing tells them apart.
#[cfg(test)]
pub(crate) mod twins {
    use std::fmt::Debug;

    use proptest::prelude::*;
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use crate::bus::{read_bytes, write_bytes};
    use crate::devices::{FakeEnv, PioDevice, StateHash};

    /// What one step of a script showed: everything a guest or the VMM could observe.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Seen {
        Nothing,
        Bytes(Vec<u8>),
        Vector(Option<u8>),
        Flag(bool),
        Count(usize),
        Code(Option<u32>),
        Times(Vec<Option<u64>>),
    }

    /// A step every device understands: a port access, or time passing outside the guest.
    #[derive(Debug, Clone)]
    pub(crate) enum PortOp {
        Read { port: u16, width: usize },
        Write { port: u16, data: Vec<u8> },
        Advance { ns: u64, secs: u64 },
    }

    impl PortOp {
        /// Applied as the bus does: a word access goes to the device a byte at a time.
        pub(crate) fn apply(&self, dev: &mut dyn PioDevice, env: &mut FakeEnv) -> Seen {
            match self {
                PortOp::Read { port, width } => {
                    let mut data = vec![0u8; *width];
                    read_bytes(dev, *port, &mut data, env);
                    Seen::Bytes(data)
                }
                PortOp::Write { port, data } => {
                    write_bytes(dev, *port, data, env);
                    Seen::Nothing
                }
                PortOp::Advance { ns, secs } => {
                    env.now_ns += ns;
                    env.wall_secs += secs;
                    Seen::Nothing
                }
            }
        }
    }

    /// Byte-wide accesses mostly, with some word accesses that straddle registers.
    fn width() -> impl Strategy<Value = usize> {
        prop_oneof![4 => Just(1usize), 1 => Just(2usize)]
    }

    /// Accesses to `ports` with arbitrary data, reads, and clock steps of up to 60 ms.
    pub(crate) fn port_op(ports: &[u16]) -> impl Strategy<Value = PortOp> + use<> {
        let port = proptest::sample::select(ports.to_vec());
        prop_oneof![
            3 => (port.clone(), width()).prop_map(|(port, width)| PortOp::Read { port, width }),
            4 => (port, width())
                .prop_flat_map(|(port, w)| (Just(port), proptest::collection::vec(any::<u8>(), w)))
                .prop_map(|(port, data)| PortOp::Write { port, data }),
            1 => (0u64..60_000_000, 0u64..3).prop_map(|(ns, secs)| PortOp::Advance { ns, secs }),
        ]
    }

    /// The state as it would arrive at the backup: serialized and parsed back.
    pub(crate) fn through_json<T: Serialize + DeserializeOwned>(state: &T) -> T {
        let json = serde_json::to_string(state).unwrap();
        serde_json::from_str(&json).unwrap()
    }

    /// Two environments that answer alike, one per twin, so a clock step is taken once each.
    pub(crate) fn env_pair(env: &FakeEnv) -> (FakeEnv, FakeEnv) {
        let copy = || FakeEnv {
            now_ns: env.now_ns,
            wall_secs: env.wall_secs,
        };
        (copy(), copy())
    }

    /// Applies `ops` to both devices and fails at the first step whose observation or
    /// resulting state hash differs.
    pub(crate) fn run_twins<D: StateHash, Op: Debug>(
        original: &mut D,
        restored: &mut D,
        env: &FakeEnv,
        ops: &[Op],
        apply: impl Fn(&mut D, &Op, &mut FakeEnv) -> Seen,
    ) -> Result<(), TestCaseError> {
        let (mut env_a, mut env_b) = env_pair(env);
        prop_assert_eq!(
            original.state_hash(),
            restored.state_hash(),
            "before any step"
        );
        for (i, op) in ops.iter().enumerate() {
            let seen_a = apply(original, op, &mut env_a);
            let seen_b = apply(restored, op, &mut env_b);
            prop_assert_eq!(&seen_a, &seen_b, "step {} {:?}", i, op);
            prop_assert_eq!(
                original.state_hash(),
                restored.state_hash(),
                "step {} {:?}",
                i,
                op
            );
        }
        Ok(())
    }
}
