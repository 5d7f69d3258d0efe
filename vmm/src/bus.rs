//! The port-I/O bus: the one path by which the guest reaches a device. Record and replay do not
//! intercept individual devices; they supply the [`DeviceEnv`] that the bus hands to every access.
//!
//! The PC devices decode byte-wide registers, so the bus splits a wider access into byte
//! accesses at consecutive ports, as the ISA bus does; only isa-debug-exit, whose value is the
//! whole access, takes it unsplit.

use crate::devices::debug_exit::DebugExit;
use crate::devices::nic::{NIC_IRQ, Nic};
use crate::devices::pic::DualPic;
use crate::devices::pit::Pit;
use crate::devices::rtc::Rtc;
use crate::devices::serial::{COM1_IRQ, Serial};
use crate::devices::{DeviceEnv, DeviceStateError, DevicesState, PioDevice, StateHash};

/// The standard PC devices of an understudy guest.
#[derive(Debug)]
pub struct Devices {
    /// The 8259A pair at 0x20 and 0xa0.
    pub pic: DualPic,
    /// The 8254 timer at 0x40..=0x43.
    pub pit: Pit,
    /// The CMOS RTC at 0x70/0x71.
    pub rtc: Rtc,
    /// COM1 at 0x3f8: the guest console.
    pub serial: Serial,
    /// The isa-debug-exit port at 0xf4: how a guest powers off with an exit code.
    pub debug_exit: DebugExit,
    /// The network card, if the guest has one (MMIO at `NIC_MMIO_BASE`, PIC line 5).
    pub nic: Option<Nic>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceId {
    Pic,
    Pit,
    Rtc,
    Serial,
    DebugExit,
}

#[derive(Debug, Clone, Copy)]
struct PortRange {
    base: u16,
    len: u16,
    device: DeviceId,
}

/// Port ranges in the PC layout, as QEMU and Firecracker place them.
const PC_LAYOUT: [PortRange; 6] = [
    PortRange {
        base: 0x20,
        len: 2,
        device: DeviceId::Pic,
    },
    PortRange {
        base: 0xa0,
        len: 2,
        device: DeviceId::Pic,
    },
    PortRange {
        base: 0x40,
        len: 4,
        device: DeviceId::Pit,
    },
    PortRange {
        base: 0x70,
        len: 2,
        device: DeviceId::Rtc,
    },
    PortRange {
        base: 0x3f8,
        len: 8,
        device: DeviceId::Serial,
    },
    PortRange {
        base: 0xf4,
        len: 4,
        device: DeviceId::DebugExit,
    },
];

/// How a device takes an access.
enum Target<'a> {
    /// Byte-wide registers: one byte at a time, at consecutive ports.
    Bytes(&'a mut dyn PioDevice),
    /// isa-debug-exit: the access is one value.
    Whole(&'a mut DebugExit),
}

/// Reads `data` from `dev` a byte at a time, byte `i` from port `port + i`. The device that
/// decodes the first port takes every byte, as it always has; a byte past its range floats
/// (see [`PioDevice`]) and is not counted as an unclaimed access.
pub(crate) fn read_bytes(
    dev: &mut dyn PioDevice,
    port: u16,
    data: &mut [u8],
    env: &mut dyn DeviceEnv,
) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = dev.read(port.wrapping_add(i as u16), env);
    }
}

/// Writes `data` to `dev` a byte at a time, in order, byte `i` to port `port + i`; see
/// [`read_bytes`].
pub(crate) fn write_bytes(
    dev: &mut dyn PioDevice,
    port: u16,
    data: &[u8],
    env: &mut dyn DeviceEnv,
) {
    for (i, &byte) in data.iter().enumerate() {
        dev.write(port.wrapping_add(i as u16), byte, env);
    }
}

/// The port-I/O bus: routes each access to the device that decodes the port.
#[derive(Debug)]
pub struct Bus {
    /// Every device, for the VMM's direct use (interrupts, console output, exit requests).
    pub devices: Devices,
    /// Accesses to ports nothing decodes (reads float high, writes vanish, as on a PC).
    pub unclaimed_accesses: u64,
    /// A machine reset the guest asked for at this exit (port, value), until the VMM takes it.
    /// Taken at the exit that made it, before any state is saved, so it is never part of one.
    reset_request: Option<(u16, u8)>,
}

/// The keyboard controller's command port: 0xFE pulses the CPU's reset line.
pub const KBC_COMMAND_PORT: u16 = 0x64;
/// The reset control register (PCI chipsets): bit 2 starts a reset.
pub const RESET_CONTROL_PORT: u16 = 0xcf9;
/// System control port A: bit 0 is a fast reset.
pub const SYSTEM_CONTROL_A_PORT: u16 = 0x92;

/// Whether writing `value` to `port` asks a PC to reset.
pub fn is_reset_request(port: u16, value: u8) -> bool {
    match port {
        KBC_COMMAND_PORT => value == 0xfe,
        RESET_CONTROL_PORT => value & 0x04 != 0,
        SYSTEM_CONTROL_A_PORT => value & 0x01 != 0,
        _ => false,
    }
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    /// A bus with every device in its power-on state.
    pub fn new() -> Self {
        Self {
            devices: Devices {
                pic: DualPic::new(),
                pit: Pit::new(),
                rtc: Rtc::new(),
                serial: Serial::new(),
                debug_exit: DebugExit::new(),
                nic: None,
            },
            unclaimed_accesses: 0,
            reset_request: None,
        }
    }

    /// The reset the guest asked for since the last call (port, value), if any; clears it.
    /// understudy does not reboot guests: the VMM ends the run there (docs/design.md).
    pub fn take_reset_request(&mut self) -> Option<(u16, u8)> {
        self.reset_request.take()
    }

    /// Plugs in a network card with `mac` whose buffers live in `mem`.
    pub fn attach_nic(&mut self, mac: [u8; 6], mem: vm_memory::GuestMemoryMmap) {
        self.devices.nic = Some(Nic::new(mac, mem));
    }

    /// The device that decodes `port`, which takes the whole access starting there.
    fn target(&mut self, port: u16) -> Option<Target<'_>> {
        let range = PC_LAYOUT
            .iter()
            .find(|r| port >= r.base && port - r.base < r.len)?;
        let d = &mut self.devices;
        Some(match range.device {
            DeviceId::Pic => Target::Bytes(&mut d.pic),
            DeviceId::Pit => Target::Bytes(&mut d.pit),
            DeviceId::Rtc => Target::Bytes(&mut d.rtc),
            DeviceId::Serial => Target::Bytes(&mut d.serial),
            DeviceId::DebugExit => Target::Whole(&mut d.debug_exit),
        })
    }

    /// A port read of `data.len()` (1, 2 or 4) bytes, little-endian.
    pub fn read(&mut self, port: u16, data: &mut [u8], env: &mut dyn DeviceEnv) {
        match self.target(port) {
            Some(Target::Bytes(dev)) => read_bytes(dev, port, data, env),
            Some(Target::Whole(dev)) => dev.read(port, data),
            None => {
                self.unclaimed_accesses += 1;
                data.fill(0xff);
            }
        }
        self.route_uart_interrupt();
    }

    /// A port write of `data.len()` (1, 2 or 4) bytes, little-endian.
    pub fn write(&mut self, port: u16, data: &[u8], env: &mut dyn DeviceEnv) {
        if let [value] = data
            && is_reset_request(port, *value)
        {
            self.reset_request = Some((port, *value));
            return;
        }
        match self.target(port) {
            Some(Target::Bytes(dev)) => write_bytes(dev, port, data, env),
            Some(Target::Whole(dev)) => dev.write(port, data),
            None => self.unclaimed_accesses += 1,
        }
        self.route_uart_interrupt();
    }

    /// A guest MMIO read of `data.len()` bytes at guest-physical `addr`. The network card's
    /// window is the only MMIO device; anywhere else a read floats high, as on a PC, and is
    /// counted as unclaimed. MMIO devices sit behind the same seam as port devices: what
    /// they do at an access is a function of the guest's state alone.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8], _env: &mut dyn DeviceEnv) {
        match self.devices.nic.as_mut() {
            Some(nic) if Nic::decodes(addr) => nic.read(addr, data),
            _ => {
                self.unclaimed_accesses += 1;
                data.fill(0xff);
            }
        }
        self.route_nic_interrupt();
    }

    /// A guest MMIO write of `data` at guest-physical `addr` (see [`Bus::mmio_read`]).
    pub fn mmio_write(&mut self, addr: u64, data: &[u8], _env: &mut dyn DeviceEnv) {
        match self.devices.nic.as_mut() {
            Some(nic) if Nic::decodes(addr) => nic.write(addr, data),
            _ => self.unclaimed_accesses += 1,
        }
        self.route_nic_interrupt();
    }

    /// A received frame for the network card (a logged input), with the interrupt it may
    /// raise. `None` if there is no card or its driver is not running.
    pub fn net_receive(&mut self, frame: &[u8]) -> Option<crate::devices::virtio::net::Received> {
        let got = self.devices.nic.as_mut()?.receive(frame);
        self.route_nic_interrupt();
        got
    }

    /// The card's interrupt line drives PIC line 5 as a level: it rises when the card sets an
    /// interrupt status bit and falls when the driver acknowledges them all, so the 8259 (edge
    /// mode) sees one edge per raised level. Like the UART's, it changes only at guest
    /// accesses and logged inputs, so it is not logged.
    fn route_nic_interrupt(&mut self) {
        let Some(change) = self.devices.nic.as_mut().and_then(Nic::irq_change) else {
            return;
        };
        if change {
            self.devices.pic.raise_irq(NIC_IRQ);
        } else {
            self.devices.pic.lower_irq(NIC_IRQ);
        }
    }

    /// Console input for the guest's UART (a logged input), with the interrupt it may raise.
    /// Returns how many bytes the receive FIFO took.
    pub fn console_input(&mut self, bytes: &[u8]) -> usize {
        let taken = self.devices.serial.enqueue_input(bytes);
        self.route_uart_interrupt();
        taken
    }

    /// COM1's interrupt output drives line 4 of the PIC, as an edge. The UART requests an
    /// interrupt only on a guest access (THR empty after a write, IER changes) or on console
    /// input, which is itself a logged entry; collecting the request right after each keeps
    /// it a pure function of the guest's execution and the log, so record and replay raise it
    /// at the same point without logging it.
    fn route_uart_interrupt(&mut self) {
        if self.devices.serial.take_interrupt() {
            self.devices.pic.raise_irq(COM1_IRQ);
            self.devices.pic.lower_irq(COM1_IRQ);
        }
    }

    /// Hash of every device's guest-visible state, in a fixed order.
    pub fn state_hash(&self) -> u64 {
        let d = &self.devices;
        let parts = [
            d.pic.state_hash(),
            d.pit.state_hash(),
            d.rtc.state_hash(),
            d.serial.state_hash(),
            d.debug_exit.state_hash(),
            d.nic.as_ref().map_or(0, Nic::state_hash),
        ];
        let mut bytes = Vec::with_capacity(parts.len() * 8);
        for p in parts {
            bytes.extend_from_slice(&p.to_le_bytes());
        }
        xxhash_rust::xxh3::xxh3_64(&bytes)
    }

    /// Everything the devices and the bus hold, for [`Bus::restore_state`] on another bus.
    pub fn save_state(&self) -> DevicesState {
        let d = &self.devices;
        DevicesState {
            pic: d.pic.save(),
            pit: d.pit.save(),
            rtc: d.rtc.save(),
            serial: d.serial.save(),
            debug_exit: d.debug_exit.save(),
            nic: d.nic.as_ref().map(Nic::save),
            unclaimed_accesses: self.unclaimed_accesses,
        }
    }

    /// Puts every device into the saved state. From then on, given the same [`DeviceEnv`]
    /// answers (the PIT's saved epochs are clock readings), the bus behaves exactly as the
    /// one that was saved. All or nothing: on an error the bus is left as it was. A network
    /// card must be on both sides or neither (its memory is this bus's machine's).
    pub fn restore_state(&mut self, state: &DevicesState) -> Result<(), DeviceStateError> {
        let nic = match (&state.nic, &self.devices.nic) {
            (None, None) => None,
            (Some(saved), Some(here)) => Some(
                Nic::restore(saved, here.memory().clone())
                    .map_err(|e| DeviceStateError::Nic(e.to_string()))?,
            ),
            (Some(_), None) => return Err(DeviceStateError::NicMissing),
            (None, Some(_)) => return Err(DeviceStateError::NicUnexpected),
        };
        let devices = Devices {
            pic: DualPic::restore(&state.pic)?,
            pit: Pit::restore(&state.pit)?,
            rtc: Rtc::restore(&state.rtc)?,
            serial: Serial::restore(&state.serial)?,
            debug_exit: DebugExit::restore(&state.debug_exit)?,
            nic,
        };
        self.devices = devices;
        self.unclaimed_accesses = state.unclaimed_accesses;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{FakeEnv, LINUX_PIC_INIT};

    #[test]
    fn unclaimed_ports_float_high_and_are_counted() {
        let mut bus = Bus::new();
        let mut env = FakeEnv::default();
        let mut data = [0u8; 2];
        bus.read(0x1234, &mut data, &mut env);
        assert_eq!(data, [0xff, 0xff]);
        bus.write(0x1234, &[1], &mut env);
        assert_eq!(bus.unclaimed_accesses, 2);
    }

    #[test]
    fn the_three_pc_reset_requests_are_taken_once_and_nothing_else_is_one() {
        let mut bus = Bus::new();
        let mut env = FakeEnv::default();
        for (port, value) in [(0x64, 0xfe), (0xcf9, 0x06), (0xcf9, 0x0e), (0x92, 0x01)] {
            bus.write(port, &[value], &mut env);
            assert_eq!(bus.take_reset_request(), Some((port, value)));
            assert_eq!(bus.take_reset_request(), None, "taken once");
        }
        // Other keyboard commands, a 0xCF9 write without the reset bit (selecting the reset
        // type), port A's other bits, and wider writes are not resets.
        for (port, data) in [
            (0x64, &[0xad][..]),
            (0xcf9, &[0x02][..]),
            (0x92, &[0x02][..]),
            (0xcf9, &[0x06, 0][..]),
            (0x60, &[0xfe][..]),
        ] {
            bus.write(port, data, &mut env);
            assert_eq!(bus.take_reset_request(), None, "{port:#x} <- {data:x?}");
        }
    }

    #[test]
    fn ranges_do_not_overlap() {
        for (i, a) in PC_LAYOUT.iter().enumerate() {
            for b in &PC_LAYOUT[i + 1..] {
                assert!(
                    a.base + a.len <= b.base || b.base + b.len <= a.base,
                    "{a:?} overlaps {b:?}"
                );
            }
        }
    }

    #[test]
    fn the_uart_interrupt_reaches_the_pic_on_line_4() {
        let mut bus = Bus::new();
        let mut env = FakeEnv::default();
        // Linux-like PIC setup (vectors 0x20/0x28), every line but 4 masked.
        for (port, value) in LINUX_PIC_INIT
            .into_iter()
            .chain([(0x21, !(1u8 << COM1_IRQ))])
        {
            bus.write(port, &[value], &mut env);
        }
        // A write while the THR-empty interrupt is off raises nothing.
        bus.write(0x3f8, b"a", &mut env);
        assert_eq!(bus.devices.pic.pending_vector(), None);
        // Enabling it with the THR empty requests one at once, on IRQ 4 (vector 0x24).
        bus.write(0x3f9, &[0x02], &mut env);
        assert_eq!(bus.devices.pic.pending_vector(), Some(0x24));
        assert!(!bus.devices.serial.take_interrupt(), "collected by the bus");
        assert_eq!(bus.devices.pic.acknowledge(), Some(0x24));
        bus.write(0x20, &[0x20], &mut env);
        // Received data with the data-available interrupt on: another one.
        bus.write(0x3f9, &[0x01], &mut env);
        bus.devices.pic.acknowledge();
        bus.write(0x20, &[0x20], &mut env);
        assert_eq!(bus.console_input(b"x"), 1);
        assert_eq!(bus.devices.pic.pending_vector(), Some(0x24));
    }

    #[test]
    fn debug_exit_port_reaches_the_device() {
        let mut bus = Bus::new();
        let mut env = FakeEnv::default();
        bus.write(0xf4, &[7], &mut env);
        assert_eq!(bus.devices.debug_exit.take_exit_request(), Some(7));
    }

    #[test]
    fn a_word_access_is_byte_accesses_at_consecutive_ports() {
        let mut bus = Bus::new();
        let mut env = FakeEnv::default();
        // OCW3 selecting the ISR to the PIC's command port, then a mask to its data port.
        bus.write(0x20, &[0x0b, 0xa5], &mut env);
        let mut data = [0u8; 2];
        bus.read(0x20, &mut data, &mut env);
        assert_eq!(data, [0x00, 0xa5], "ISR (selected by OCW3), then IMR");
        // The UART's MSR then its scratch register.
        bus.write(0x3fe, &[0x00, 0x77], &mut env);
        let mut scratch = [0u8];
        bus.read(0x3ff, &mut scratch, &mut env);
        assert_eq!(scratch, [0x77]);
        assert_eq!(bus.unclaimed_accesses, 0);
    }

    #[test]
    fn the_bytes_of_a_word_write_arrive_in_order() {
        let mut bus = Bus::new();
        let mut env = FakeEnv::default();
        // CMOS index, then data: in the other order the byte would land elsewhere.
        bus.write(0x70, &[0x40, 0xaa], &mut env);
        bus.write(0x70, &[0x41], &mut env);
        bus.write(0x71, &[0xbb], &mut env);
        bus.write(0x70, &[0x40], &mut env);
        let mut data = [0u8];
        bus.read(0x71, &mut data, &mut env);
        assert_eq!(data, [0xaa]);
    }

    #[test]
    fn bytes_past_the_first_ports_device_float_and_are_not_unclaimed() {
        let mut bus = Bus::new();
        let mut env = FakeEnv::default();
        bus.write(0x70, &[0x40], &mut env);
        bus.write(0x71, &[0xaa], &mut env);
        let mut data = [0u8; 4];
        bus.read(0x71, &mut data, &mut env);
        assert_eq!(data, [0xaa, 0xff, 0xff, 0xff]);
        let before = bus.state_hash();
        bus.write(0x71, &[0xbb, 1, 2, 3], &mut env);
        let mut data = [0u8];
        bus.read(0x71, &mut data, &mut env);
        assert_eq!(data, [0xbb], "only the first byte reached a register");
        assert_ne!(bus.state_hash(), before);
        assert_eq!(
            bus.unclaimed_accesses, 0,
            "counted per access, by its first port"
        );
    }

    #[test]
    fn debug_exit_takes_the_whole_access() {
        let mut bus = Bus::new();
        let mut env = FakeEnv::default();
        bus.write(0xf4, &[0x34, 0x12], &mut env);
        assert_eq!(bus.devices.debug_exit.take_exit_request(), Some(0x1234));
        bus.write(0xf4, &[0x78, 0x56, 0x34, 0x12], &mut env);
        assert_eq!(
            bus.devices.debug_exit.take_exit_request(),
            Some(0x1234_5678)
        );
        bus.write(0xf5, &[1], &mut env);
        assert_eq!(bus.devices.debug_exit.take_exit_request(), None);
        let mut data = [0u8; 4];
        bus.read(0xf4, &mut data, &mut env);
        assert_eq!(data, [0xff; 4]);
        assert_eq!(bus.unclaimed_accesses, 0);
    }

    mod saved_state {
        use proptest::collection::vec;
        use proptest::prelude::*;

        use super::*;
        use crate::devices::state::twins::{self, PortOp, Seen};

        /// What the guest and the vCPU loop do to a bus.
        #[derive(Debug, Clone)]
        enum BusOp {
            Port(PortOp),
            Raise(u8),
            Lower(u8),
            Acknowledge,
            Input(Vec<u8>),
            TakeOutput,
            TakeInterrupt,
            TakeExit,
        }

        fn apply(bus: &mut Bus, op: &BusOp, env: &mut FakeEnv) -> Seen {
            let d = &mut bus.devices;
            match op {
                BusOp::Port(PortOp::Read { port, width }) => {
                    let mut data = vec![0u8; *width];
                    bus.read(*port, &mut data, env);
                    Seen::Bytes(data)
                }
                BusOp::Port(PortOp::Write { port, data }) => {
                    bus.write(*port, data, env);
                    Seen::Nothing
                }
                BusOp::Port(PortOp::Advance { ns, secs }) => {
                    env.now_ns += ns;
                    env.wall_secs += secs;
                    Seen::Nothing
                }
                BusOp::Raise(line) => {
                    d.pic.raise_irq(*line);
                    Seen::Nothing
                }
                BusOp::Lower(line) => {
                    d.pic.lower_irq(*line);
                    Seen::Nothing
                }
                BusOp::Acknowledge => Seen::Vector(d.pic.acknowledge()),
                BusOp::Input(bytes) => Seen::Count(d.serial.enqueue_input(bytes)),
                BusOp::TakeOutput => Seen::Bytes(d.serial.take_output()),
                BusOp::TakeInterrupt => Seen::Flag(d.serial.take_interrupt()),
                BusOp::TakeExit => Seen::Code(d.debug_exit.take_exit_request()),
            }
        }

        /// Every decoded port, plus a few that nothing decodes.
        fn ports() -> Vec<u16> {
            let decoded = PC_LAYOUT.iter().flat_map(|r| r.base..r.base + r.len);
            decoded.chain([0x80, 0x61, 0x3f7, 0x1234]).collect()
        }

        fn bus_op() -> impl Strategy<Value = BusOp> {
            prop_oneof![
                10 => twins::port_op(&ports()).prop_map(BusOp::Port),
                1 => (0u8..16).prop_map(BusOp::Raise),
                1 => (0u8..16).prop_map(BusOp::Lower),
                1 => Just(BusOp::Acknowledge),
                1 => vec(any::<u8>(), 0..8).prop_map(BusOp::Input),
                1 => Just(BusOp::TakeOutput),
                1 => Just(BusOp::TakeInterrupt),
                1 => Just(BusOp::TakeExit),
            ]
        }

        /// Linux-like programming of the PIC and PIT, and some traffic on every device.
        fn busy_bus(env: &mut FakeEnv) -> Bus {
            let mut bus = Bus::new();
            env.now_ns = 5_000_000;
            env.wall_secs = 1_709_214_307;
            let writes = LINUX_PIC_INIT.into_iter().chain([
                (0x43, 0x34),
                (0x40, 0x9c),
                (0x40, 0x2e),
                (0x70, 0x8b),
                (0x3f9, 0x03),
                (0x3f8, b'!'),
            ]);
            for (port, value) in writes {
                bus.write(port, &[value], env);
            }
            bus.devices.pic.raise_irq(0);
            bus.devices.pic.acknowledge();
            bus.devices.serial.enqueue_input(b"abc");
            bus.write(0xf4, &[0x31], env);
            bus.read(0x1234, &mut [0u8; 2], env);
            bus
        }

        fn postcard_round_trip(state: &DevicesState) -> DevicesState {
            postcard::from_bytes(&postcard::to_allocvec(state).unwrap()).unwrap()
        }

        #[test]
        fn busy_bus_round_trips_through_json_and_postcard() {
            let mut env = FakeEnv::default();
            let original = busy_bus(&mut env);
            let saved = original.save_state();
            assert_eq!(twins::through_json(&saved), saved);
            assert_eq!(postcard_round_trip(&saved), saved);

            let mut restored = Bus::new();
            restored
                .restore_state(&postcard_round_trip(&saved))
                .unwrap();
            assert_eq!(restored.save_state(), saved);
            assert_eq!(restored.state_hash(), original.state_hash());
            assert_eq!(restored.unclaimed_accesses, 1);
            assert_eq!(restored.devices.debug_exit.take_exit_request(), Some(0x31));
            assert_eq!(restored.devices.serial.take_output(), b"!");
        }

        #[test]
        fn a_refused_state_leaves_the_bus_alone() {
            let mut env = FakeEnv::default();
            let mut bus = busy_bus(&mut env);
            let before = bus.save_state();
            let mut corrupt = Bus::new().save_state();
            corrupt.serial.rx_fifo = vec![0; 100];
            let err = bus.restore_state(&corrupt).unwrap_err();
            assert!(err.to_string().starts_with("serial:"), "{err}");
            assert_eq!(bus.save_state(), before);
        }

        proptest! {
            #[test]
            fn restored_bus_is_indistinguishable(
                busy in any::<bool>(),
                before in vec(bus_op(), 0..60),
                after in vec(bus_op(), 1..100),
            ) {
                let mut env = FakeEnv::default();
                let mut original = if busy { busy_bus(&mut env) } else { Bus::new() };
                for op in &before {
                    apply(&mut original, op, &mut env);
                }
                let mut restored = Bus::new();
                restored.restore_state(&twins::through_json(&original.save_state())).unwrap();
                prop_assert_eq!(restored.save_state(), original.save_state());

                let (mut env_a, mut env_b) = twins::env_pair(&env);
                for (i, op) in after.iter().enumerate() {
                    let seen_a = apply(&mut original, op, &mut env_a);
                    let seen_b = apply(&mut restored, op, &mut env_b);
                    prop_assert_eq!(&seen_a, &seen_b, "step {} {:?}", i, op);
                    prop_assert_eq!(original.state_hash(), restored.state_hash(), "step {}", i);
                }
                prop_assert_eq!(restored.save_state(), original.save_state());
            }
        }
    }
}
