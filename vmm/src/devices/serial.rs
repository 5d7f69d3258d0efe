//! COM1: a 16550A UART at ports 0x3f8..=0x3ff, wired to IRQ4, built on `vm_superio::Serial`.
//!
//! The device performs no host I/O. What the guest transmits accumulates in an in-memory
//! buffer that the VMM drains with [`Serial::take_output`]; interrupt requests set a flag
//! the bus collects right after every access and turns into an edge on the PIC's line 4
//! ([`crate::bus::Bus`]); console input arrives only through
//! [`Serial::enqueue_input`]. Everything is therefore a pure function of the guest's port
//! accesses and the input the VMM feeds in (which the recorder must log). The device never
//! consults [`DeviceEnv`].
//!
//! vm-superio models an always-ready transmitter: LSR reports THR empty and transmitter idle
//! at all times, FCR writes are ignored and the FIFOs are always reported enabled in IIR.

use std::cell::Cell;
use std::convert::Infallible;

use vm_superio::serial::{NoEvents, SerialState as UartRegisters};
use vm_superio::{Serial as Uart, Trigger};

use super::pic::StateHasher;
use super::state::{DeviceStateError, SerialState};
use super::{DeviceEnv, PioDevice, StateHash};

/// First port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// The ISA interrupt line COM1 raises.
pub const COM1_IRQ: u8 = 4;
const PORT_COUNT: u16 = 8;
/// The 16550A's receive FIFO; vm-superio refuses to hold more.
const RX_FIFO_BYTES: usize = 64;

/// The UART's interrupt output, latched until the VMM collects it. vm-superio calls
/// `trigger` through `&self`, hence the cell; a `Cell` keeps the device `Send` (it is never
/// shared between threads, only moved).
#[derive(Debug, Default)]
struct InterruptLatch(Cell<bool>);

impl Trigger for InterruptLatch {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        self.0.set(true);
        Ok(())
    }
}

/// The COM1 16550A.
#[derive(Debug)]
pub struct Serial {
    uart: Uart<InterruptLatch, NoEvents, Vec<u8>>,
}

impl Default for Serial {
    fn default() -> Self {
        Self::new()
    }
}

impl Serial {
    /// The UART as at reset, with nothing received or sent.
    pub fn new() -> Self {
        Self {
            uart: Uart::new(InterruptLatch::default(), Vec::new()),
        }
    }

    /// Drains everything the guest has transmitted since the last call.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(self.uart.writer_mut())
    }

    /// Whether the UART has requested an interrupt since the last call; clears the request.
    /// The VMM should answer `true` with an edge on [`COM1_IRQ`] (raise then lower).
    pub fn take_interrupt(&mut self) -> bool {
        self.uart.interrupt_evt().0.replace(false)
    }

    /// Queues console input into the receive FIFO and returns how many bytes fitted (the
    /// FIFO holds 64). Returns 0 when the FIFO is full or the UART is in loopback mode,
    /// where the line is disconnected from the outside.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        // The only possible error is a full FIFO: the trigger cannot fail.
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// The UART's registers and receive FIFO plus the uncollected interrupt request and
    /// output, for [`Serial::restore`].
    pub fn save(&self) -> SerialState {
        let r = self.uart.state();
        SerialState {
            divisor_low: r.baud_divisor_low,
            divisor_high: r.baud_divisor_high,
            interrupt_enable: r.interrupt_enable,
            interrupt_identification: r.interrupt_identification,
            line_control: r.line_control,
            line_status: r.line_status,
            modem_control: r.modem_control,
            modem_status: r.modem_status,
            scratch: r.scratch,
            rx_fifo: r.in_buffer,
            interrupt_pending: self.uart.interrupt_evt().0.get(),
            pending_output: self.uart.writer().clone(),
        }
    }

    /// A UART in exactly the saved state. Refuses a receive FIFO longer than the 16550A's.
    pub fn restore(state: &SerialState) -> Result<Self, DeviceStateError> {
        let fifo_error = DeviceStateError::SerialRxFifo {
            len: state.rx_fifo.len(),
        };
        if state.rx_fifo.len() > RX_FIFO_BYTES {
            return Err(fifo_error);
        }
        let registers = UartRegisters {
            baud_divisor_low: state.divisor_low,
            baud_divisor_high: state.divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.rx_fifo.clone(),
        };
        let latch = InterruptLatch::default();
        let out = state.pending_output.clone();
        // With the trigger infallible, a full FIFO is the only error, and it was checked above.
        let uart = Uart::from_state(&registers, latch, NoEvents, out).map_err(|_| fifo_error)?;
        // `from_state` fires the trigger again for every enabled interrupt still flagged in
        // IIR, although the VMM may have collected that request before the save; the saved
        // latch is what the VMM has yet to see.
        uart.interrupt_evt().0.set(state.interrupt_pending);
        Ok(Self { uart })
    }

    fn offset(port: u16) -> Option<u8> {
        let offset = port.checked_sub(COM1_BASE)?;
        (offset < PORT_COUNT).then_some(offset as u8)
    }
}

impl PioDevice for Serial {
    fn read(&mut self, port: u16, _env: &mut dyn DeviceEnv) -> u8 {
        match Self::offset(port) {
            Some(offset) => self.uart.read(offset),
            None => 0xff,
        }
    }

    fn write(&mut self, port: u16, value: u8, _env: &mut dyn DeviceEnv) {
        if let Some(offset) = Self::offset(port) {
            // Writing to a `Vec` cannot fail and the trigger is infallible, so there is no
            // error to report; a lost byte would show up in the replay digest anyway.
            let _infallible = self.uart.write(offset, value);
        }
    }
}

impl StateHash for Serial {
    /// Covers every UART register (divisor latch, IER, IIR, LCR, LSR, MCR, MSR, SCR), the
    /// receive FIFO's contents and the uncollected interrupt request. Untaken output is not
    /// state: it has already left the guest.
    fn state_hash(&self) -> u64 {
        let state = self.uart.state();
        StateHasher::new(b"uart16550")
            .u8(state.baud_divisor_low)
            .u8(state.baud_divisor_high)
            .u8(state.interrupt_enable)
            .u8(state.interrupt_identification)
            .u8(state.line_control)
            .u8(state.line_status)
            .u8(state.modem_control)
            .u8(state.modem_status)
            .u8(state.scratch)
            .u64(state.in_buffer.len() as u64)
            .bytes(&state.in_buffer)
            .bool(self.uart.interrupt_evt().0.get())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::FakeEnv;

    const THR: u16 = COM1_BASE;
    const RBR: u16 = COM1_BASE;
    const DLL: u16 = COM1_BASE;
    const DLM: u16 = COM1_BASE + 1;
    const IER: u16 = COM1_BASE + 1;
    const IIR: u16 = COM1_BASE + 2;
    const LCR: u16 = COM1_BASE + 3;
    const MCR: u16 = COM1_BASE + 4;
    const LSR: u16 = COM1_BASE + 5;
    const SCR: u16 = COM1_BASE + 7;

    const LSR_DATA_READY: u8 = 0x01;
    const LSR_THR_EMPTY: u8 = 0x20;
    const LSR_IDLE: u8 = 0x40;
    const LCR_DLAB: u8 = 0x80;
    const LCR_8N1: u8 = 0x03;
    const IER_RDA: u8 = 0x01;
    const IER_THRE: u8 = 0x02;
    const MCR_LOOP: u8 = 0x10;

    fn out(serial: &mut Serial, port: u16, value: u8) {
        serial.write(port, value, &mut FakeEnv::default());
    }

    fn inb(serial: &mut Serial, port: u16) -> u8 {
        serial.read(port, &mut FakeEnv::default())
    }

    fn transmit(serial: &mut Serial, text: &[u8]) {
        for &byte in text {
            out(serial, THR, byte);
        }
    }

    #[test]
    fn transmitted_bytes_are_collected_for_the_vmm() {
        let mut serial = Serial::new();
        transmit(&mut serial, b"hi\n");
        assert_eq!(serial.take_output(), b"hi\n");
        assert!(serial.take_output().is_empty(), "output is drained");

        transmit(&mut serial, b"ok");
        assert_eq!(serial.take_output(), b"ok");
    }

    #[test]
    fn transmitter_always_reports_empty() {
        let mut serial = Serial::new();
        assert_eq!(inb(&mut serial, LSR), LSR_THR_EMPTY | LSR_IDLE);
        transmit(&mut serial, b"x");
        assert_eq!(
            inb(&mut serial, LSR) & (LSR_THR_EMPTY | LSR_IDLE),
            LSR_THR_EMPTY | LSR_IDLE
        );
    }

    #[test]
    fn divisor_latch_is_reached_through_dlab() {
        let mut serial = Serial::new();
        assert_eq!(inb(&mut serial, LCR), LCR_8N1);

        // 115200 baud: divisor 1.
        out(&mut serial, LCR, LCR_DLAB | LCR_8N1);
        out(&mut serial, DLL, 0x01);
        out(&mut serial, DLM, 0x00);
        assert_eq!(inb(&mut serial, DLL), 0x01);
        assert_eq!(inb(&mut serial, DLM), 0x00);
        assert!(
            serial.take_output().is_empty(),
            "divisor bytes are not data"
        );

        out(&mut serial, LCR, LCR_8N1);
        out(&mut serial, IER, 0x00);
        transmit(&mut serial, b"A");
        assert_eq!(serial.take_output(), b"A");

        out(&mut serial, LCR, LCR_DLAB | LCR_8N1);
        assert_eq!(
            inb(&mut serial, DLL),
            0x01,
            "divisor kept across DLAB toggles"
        );
    }

    #[test]
    fn input_becomes_data_ready_and_is_read_from_rbr() {
        let mut serial = Serial::new();
        assert_eq!(inb(&mut serial, LSR) & LSR_DATA_READY, 0);

        assert_eq!(serial.enqueue_input(b"ls\r"), 3);
        assert_eq!(inb(&mut serial, LSR) & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(inb(&mut serial, RBR), b'l');
        assert_eq!(inb(&mut serial, RBR), b's');
        assert_eq!(inb(&mut serial, LSR) & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(inb(&mut serial, RBR), b'\r');
        assert_eq!(inb(&mut serial, LSR) & LSR_DATA_READY, 0, "FIFO drained");
    }

    #[test]
    fn input_beyond_the_64_byte_fifo_is_refused() {
        let mut serial = Serial::new();
        assert_eq!(serial.enqueue_input(&[b'a'; 60]), 60);
        assert_eq!(serial.enqueue_input(&[b'b'; 10]), 4);
        assert_eq!(serial.enqueue_input(b"c"), 0);
        assert_eq!(serial.enqueue_input(b""), 0);
        inb(&mut serial, RBR);
        assert_eq!(serial.enqueue_input(b"de"), 1);
    }

    #[test]
    fn no_interrupts_until_the_guest_enables_them() {
        let mut serial = Serial::new();
        transmit(&mut serial, b"abc");
        serial.enqueue_input(b"x");
        assert!(!serial.take_interrupt());
    }

    #[test]
    fn thr_empty_interrupt_follows_ier_and_iir() {
        let mut serial = Serial::new();
        out(&mut serial, IER, IER_THRE);
        assert!(
            serial.take_interrupt(),
            "enabling THRE with THR empty interrupts at once"
        );
        assert!(!serial.take_interrupt(), "request consumed");

        assert_eq!(inb(&mut serial, IIR), 0xc2, "FIFOs on, THR empty pending");
        assert_eq!(inb(&mut serial, IIR), 0xc1, "reading IIR acknowledged it");

        transmit(&mut serial, b"x");
        assert!(
            serial.take_interrupt(),
            "each transmitted byte empties THR again"
        );
    }

    #[test]
    fn received_data_interrupt() {
        let mut serial = Serial::new();
        out(&mut serial, IER, IER_RDA);
        assert!(!serial.take_interrupt());
        serial.enqueue_input(b"k");
        assert!(serial.take_interrupt());
        assert_eq!(inb(&mut serial, IIR), 0xc4);
        assert_eq!(inb(&mut serial, RBR), b'k');
    }

    #[test]
    fn loopback_sends_transmitted_bytes_to_the_receiver_not_the_host() {
        let mut serial = Serial::new();
        out(&mut serial, MCR, MCR_LOOP);
        transmit(&mut serial, b"z");
        assert!(serial.take_output().is_empty());
        assert_eq!(inb(&mut serial, RBR), b'z');
        assert_eq!(serial.enqueue_input(b"q"), 0, "outside input disconnected");
    }

    #[test]
    fn scratch_register_round_trips() {
        let mut serial = Serial::new();
        out(&mut serial, SCR, 0x5a);
        assert_eq!(inb(&mut serial, SCR), 0x5a);
    }

    #[test]
    fn ports_outside_com1_are_ignored() {
        let mut serial = Serial::new();
        let before = serial.state_hash();
        out(&mut serial, COM1_BASE + 8, b'x');
        out(&mut serial, COM1_BASE - 1, b'x');
        assert_eq!(serial.state_hash(), before);
        assert!(serial.take_output().is_empty());
        assert_eq!(inb(&mut serial, COM1_BASE + 8), 0xff);
    }

    #[test]
    fn state_hash_covers_registers_fifo_and_pending_interrupt() {
        let mut serial = Serial::new();
        let fresh = serial.state_hash();
        assert_eq!(fresh, Serial::new().state_hash());

        out(&mut serial, SCR, 1);
        let scratched = serial.state_hash();
        assert_ne!(scratched, fresh);

        serial.enqueue_input(b"a");
        let with_input = serial.state_hash();
        assert_ne!(with_input, scratched);

        out(&mut serial, IER, IER_THRE);
        let interrupting = serial.state_hash();
        serial.take_interrupt();
        assert_ne!(serial.state_hash(), interrupting);

        out(&mut serial, IER, 0);
        let before_output = serial.state_hash();
        transmit(&mut serial, b"x");
        assert_eq!(serial.state_hash(), before_output, "output is not state");
        assert_eq!(serial.take_output(), b"x");
    }

    mod saved_state {
        use proptest::collection::vec;
        use proptest::prelude::*;

        use super::*;
        use crate::devices::state::twins::{self, PortOp, Seen};

        /// What the guest (through ports) and the VMM (console in, console out, IRQ4) do to
        /// the UART.
        #[derive(Debug, Clone)]
        enum SerialOp {
            Port(PortOp),
            Enqueue(Vec<u8>),
            TakeOutput,
            TakeInterrupt,
        }

        fn apply(serial: &mut Serial, op: &SerialOp, env: &mut FakeEnv) -> Seen {
            match op {
                SerialOp::Port(port_op) => port_op.apply(serial, env),
                SerialOp::Enqueue(bytes) => Seen::Count(serial.enqueue_input(bytes)),
                SerialOp::TakeOutput => Seen::Bytes(serial.take_output()),
                SerialOp::TakeInterrupt => Seen::Flag(serial.take_interrupt()),
            }
        }

        fn serial_op() -> impl Strategy<Value = SerialOp> {
            let ports: Vec<u16> = (COM1_BASE..COM1_BASE + PORT_COUNT).collect();
            prop_oneof![
                8 => twins::port_op(&ports).prop_map(SerialOp::Port),
                2 => vec(any::<u8>(), 0..80).prop_map(SerialOp::Enqueue),
                1 => Just(SerialOp::TakeOutput),
                2 => Just(SerialOp::TakeInterrupt),
            ]
        }

        /// Output the VMM has not collected, input the guest has half read, a custom divisor,
        /// and a THR-empty interrupt flagged in IIR that the VMM has already collected.
        fn busy_serial() -> Serial {
            let mut serial = Serial::new();
            out(&mut serial, LCR, LCR_DLAB | LCR_8N1);
            out(&mut serial, DLL, 0x01);
            out(&mut serial, LCR, LCR_8N1);
            out(&mut serial, SCR, 0x5a);
            serial.enqueue_input(b"input");
            inb(&mut serial, RBR);
            out(&mut serial, IER, IER_THRE);
            assert!(serial.take_interrupt());
            // IIR still flags THR empty, so transmitting does not request again.
            transmit(&mut serial, b"hello");
            assert!(!serial.take_interrupt());
            serial
        }

        fn save_and_restore(serial: &Serial) -> Serial {
            Serial::restore(&twins::through_json(&serial.save())).unwrap()
        }

        #[test]
        fn busy_serial_restores_exactly() {
            let original = busy_serial();
            let mut restored = save_and_restore(&original);
            assert_eq!(restored.save(), original.save());
            assert_eq!(restored.state_hash(), original.state_hash());

            assert!(
                !restored.take_interrupt(),
                "the collected request stays collected"
            );
            assert_eq!(restored.take_output(), b"hello");
            assert_eq!(inb(&mut restored, IIR), 0xc2, "THR empty still flagged");
            assert_eq!(inb(&mut restored, RBR), b'n');
            assert_eq!(inb(&mut restored, SCR), 0x5a);
            out(&mut restored, LCR, LCR_DLAB | LCR_8N1);
            assert_eq!(inb(&mut restored, DLL), 0x01);
        }

        #[test]
        fn an_uncollected_interrupt_survives() {
            let mut original = Serial::new();
            out(&mut original, IER, IER_RDA);
            original.enqueue_input(b"k");
            let mut restored = save_and_restore(&original);
            assert!(restored.take_interrupt());
            assert!(!restored.take_interrupt());
        }

        proptest! {
            #[test]
            fn restored_serial_is_indistinguishable(
                busy in any::<bool>(),
                before in vec(serial_op(), 0..40),
                after in vec(serial_op(), 1..80),
            ) {
                let mut env = FakeEnv::default();
                let mut original = if busy { busy_serial() } else { Serial::new() };
                for op in &before {
                    apply(&mut original, op, &mut env);
                }
                let mut restored = save_and_restore(&original);
                prop_assert_eq!(restored.save(), original.save());
                twins::run_twins(&mut original, &mut restored, &env, &after, apply)?;
                prop_assert_eq!(restored.save(), original.save());
            }
        }

        #[test]
        fn corrupt_serial_state_is_refused() {
            let mut state = busy_serial().save();
            state.rx_fifo = vec![b'x'; RX_FIFO_BYTES + 1];
            let message = Serial::restore(&state).unwrap_err().to_string();
            assert_eq!(
                message,
                "serial: receive FIFO holds 65 bytes, more than the 16550A's 64"
            );

            state.rx_fifo.pop();
            assert!(Serial::restore(&state).is_ok(), "a full FIFO is fine");
        }
    }
}
