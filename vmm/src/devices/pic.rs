//! The PC's pair of 8259A programmable interrupt controllers: the master at 0x20/0x21 and the
//! slave at 0xa0/0xa1, cascaded into the master's IRQ2.
//!
//! What is modelled, and what is deliberately not:
//! - Inputs are edge-triggered. [`DualPic::raise_irq`] latches a request into IRR on a rising
//!   edge; [`DualPic::lower_irq`] only re-arms edge detection and leaves the latched request
//!   alone, as KVM's and QEMU's models do, so a device may pulse a line (raise then lower)
//!   without the interrupt being lost. ICW1's LTIM bit (level mode) is accepted and ignored:
//!   on a PC level/edge selection lives in the ELCR, which is not part of this device.
//! - Priorities are fixed (IRQ0 highest, IRQ7 lowest on each chip). The rotate variants of
//!   OCW2 perform their EOI part only, "set priority" and the automatic-rotation toggles are
//!   ignored. Special mask mode (OCW3 ESMM/SMM) and special fully nested mode (ICW4 SFNM) are
//!   ignored too; Linux and common firmware use none of them.
//! - OCW3 poll mode is not supported: the poll bit is ignored and the next read of the
//!   command port returns IRR or ISR as currently selected.
//! - ICW3 is accepted but the wiring is fixed: the slave always cascades through master IRQ2.
//!   ICW4's 8086 bit is not checked; vectors are always `ICW2 base + line` (8080 mode's
//!   CALL sequences make no sense under KVM).
//! - A chip that has not completed its initialisation sequence delivers nothing.

use super::state::{DeviceStateError, PicChipState, PicState};
use super::{DeviceEnv, PioDevice, StateHash};

const MASTER_CMD: u16 = 0x20;
const MASTER_DATA: u16 = 0x21;
const SLAVE_CMD: u16 = 0xa0;
const SLAVE_DATA: u16 = 0xa1;

const MASTER: usize = 0;
const SLAVE: usize = 1;
const CASCADE_LINE: u8 = 2;
/// The line an 8259A reports when an INTA cycle finds no request any more.
const SPURIOUS_LINE: u8 = 7;

/// FNV-1a, 64-bit, over explicitly little-endian field encodings: unlike `std`'s `Hasher`
/// implementations its output is fixed by specification, so replay digests stay comparable
/// across Rust versions and hosts. Shared by every device in this module.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StateHasher(u64);

impl StateHasher {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// Starts a hash; `tag` keeps two devices with coincidentally equal fields apart.
    pub(crate) fn new(tag: &[u8]) -> Self {
        Self(Self::OFFSET_BASIS).bytes(tag)
    }

    pub(crate) fn bytes(mut self, bytes: &[u8]) -> Self {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
        self
    }

    pub(crate) fn u8(self, v: u8) -> Self {
        self.bytes(&[v])
    }

    pub(crate) fn u16(self, v: u16) -> Self {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn u32(self, v: u32) -> Self {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn u64(self, v: u64) -> Self {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn bool(self, v: bool) -> Self {
        self.u8(u8::from(v))
    }

    pub(crate) fn finish(self) -> u64 {
        self.0
    }
}

/// Where a chip is in its ICW1..ICW4 initialisation sequence; data-port writes mean
/// different things in each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InitStep {
    Ready,
    Icw2,
    Icw3,
    Icw4,
}

impl InitStep {
    fn encode(self) -> u8 {
        match self {
            InitStep::Ready => 0,
            InitStep::Icw2 => 1,
            InitStep::Icw3 => 2,
            InitStep::Icw4 => 3,
        }
    }

    fn decode(value: u8) -> Option<Self> {
        match value {
            0 => Some(InitStep::Ready),
            1 => Some(InitStep::Icw2),
            2 => Some(InitStep::Icw3),
            3 => Some(InitStep::Icw4),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Chip {
    irr: u8,
    isr: u8,
    imr: u8,
    /// Input levels as last reported, for rising-edge detection.
    lines: u8,
    vector_base: u8,
    step: InitStep,
    needs_icw4: bool,
    single: bool,
    auto_eoi: bool,
    read_isr: bool,
    initialised: bool,
}

impl Chip {
    fn new() -> Self {
        Self {
            irr: 0,
            isr: 0,
            imr: 0,
            lines: 0,
            vector_base: 0,
            step: InitStep::Ready,
            needs_icw4: false,
            single: false,
            auto_eoi: false,
            read_isr: false,
            initialised: false,
        }
    }

    fn raise(&mut self, bit: u8) {
        if self.lines & bit == 0 {
            self.irr |= bit;
        }
        self.lines |= bit;
    }

    fn lower(&mut self, bit: u8) {
        self.lines &= !bit;
    }

    /// The line this chip would signal given `irr` (which, for the master, already includes
    /// the slave's output on IRQ2): the highest-priority unmasked request, provided nothing
    /// of equal or higher priority is in service.
    fn best_request(&self, irr: u8) -> Option<u8> {
        if !self.initialised {
            return None;
        }
        let requests = irr & !self.imr;
        if requests == 0 {
            return None;
        }
        let line = requests.trailing_zeros() as u8;
        match self.highest_in_service() {
            Some(in_service) if in_service <= line => None,
            _ => Some(line),
        }
    }

    fn highest_in_service(&self) -> Option<u8> {
        (self.isr != 0).then(|| self.isr.trailing_zeros() as u8)
    }

    /// The INTA cycle's effect on one chip: the request stops being pending and, unless
    /// auto-EOI is on, becomes in-service.
    fn accept(&mut self, line: u8) {
        let bit = 1 << line;
        self.irr &= !bit;
        if !self.auto_eoi {
            self.isr |= bit;
        }
    }

    fn write_command(&mut self, value: u8) {
        if value & 0x10 != 0 {
            // ICW1. Per the datasheet this resets the mask and the edge-sense latches and
            // selects IRR for status reads; in-flight requests are dropped as well, as a
            // re-initialising guest expects a clean controller.
            self.irr = 0;
            self.isr = 0;
            self.imr = 0;
            self.lines = 0;
            self.auto_eoi = false;
            self.read_isr = false;
            self.initialised = false;
            self.needs_icw4 = value & 0x01 != 0;
            self.single = value & 0x02 != 0;
            self.step = InitStep::Icw2;
        } else if value & 0x08 != 0 {
            // OCW3: only the register-select half is meaningful here (see module docs).
            if value & 0x02 != 0 {
                self.read_isr = value & 0x01 != 0;
            }
        } else {
            self.write_ocw2(value);
        }
    }

    fn write_ocw2(&mut self, value: u8) {
        let specific_line = value & 0x07;
        match value >> 5 {
            // Non-specific EOI, and rotate-on-non-specific-EOI (rotation not modelled).
            0b001 | 0b101 => {
                if let Some(line) = self.highest_in_service() {
                    self.isr &= !(1 << line);
                }
            }
            // Specific EOI, and rotate-on-specific-EOI.
            0b011 | 0b111 => self.isr &= !(1 << specific_line),
            // No-op, rotate-in-AEOI set/clear, set-priority: nothing to do with fixed priorities.
            _ => {}
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.step {
            InitStep::Ready => self.imr = value,
            InitStep::Icw2 => {
                self.vector_base = value & 0xf8;
                self.step = if !self.single {
                    InitStep::Icw3
                } else if self.needs_icw4 {
                    InitStep::Icw4
                } else {
                    self.finish_init()
                };
            }
            InitStep::Icw3 => {
                self.step = if self.needs_icw4 {
                    InitStep::Icw4
                } else {
                    self.finish_init()
                };
            }
            InitStep::Icw4 => {
                self.auto_eoi = value & 0x02 != 0;
                self.step = self.finish_init();
            }
        }
    }

    fn finish_init(&mut self) -> InitStep {
        self.initialised = true;
        InitStep::Ready
    }

    fn hash_into(&self, h: StateHasher) -> StateHasher {
        h.u8(self.irr)
            .u8(self.isr)
            .u8(self.imr)
            .u8(self.lines)
            .u8(self.vector_base)
            .u8(self.step.encode())
            .bool(self.needs_icw4)
            .bool(self.single)
            .bool(self.auto_eoi)
            .bool(self.read_isr)
            .bool(self.initialised)
    }

    fn save(&self) -> PicChipState {
        PicChipState {
            irr: self.irr,
            isr: self.isr,
            imr: self.imr,
            lines: self.lines,
            vector_base: self.vector_base,
            init_step: self.step.encode(),
            needs_icw4: self.needs_icw4,
            single: self.single,
            auto_eoi: self.auto_eoi,
            read_isr: self.read_isr,
            initialised: self.initialised,
        }
    }

    /// `name` ("master" or "slave") only labels errors.
    fn restore(name: &'static str, s: &PicChipState) -> Result<Self, DeviceStateError> {
        let step = InitStep::decode(s.init_step).ok_or(DeviceStateError::PicInitStep {
            chip: name,
            step: s.init_step,
        })?;
        // The vector is `base | line`: stray low bits would misdirect every interrupt.
        if s.vector_base & 0x07 != 0 {
            return Err(DeviceStateError::PicVectorBase {
                chip: name,
                base: s.vector_base,
            });
        }
        let chip = Self {
            irr: s.irr,
            isr: s.isr,
            imr: s.imr,
            lines: s.lines,
            vector_base: s.vector_base,
            step,
            needs_icw4: s.needs_icw4,
            single: s.single,
            auto_eoi: s.auto_eoi,
            read_isr: s.read_isr,
            initialised: s.initialised,
        };
        match chip.init_sequence_conflict() {
            Some(conflict) => Err(DeviceStateError::PicInitSequence {
                chip: name,
                step: s.init_step,
                conflict,
            }),
            None => Ok(chip),
        }
    }

    /// Combinations the ICW sequence cannot produce; a state holding one was not saved by a
    /// chip, and would send the next data-port writes down a path no guest expects.
    fn init_sequence_conflict(&self) -> Option<&'static str> {
        match self.step {
            InitStep::Ready => None,
            _ if self.initialised => Some("is in progress on a chip marked initialised"),
            InitStep::Icw3 if self.single => Some("waits for ICW3, which single mode skips"),
            InitStep::Icw4 if !self.needs_icw4 => {
                Some("waits for ICW4, which ICW1 did not ask for")
            }
            _ => None,
        }
    }
}

/// The master/slave 8259A pair. Port handlers take absolute ports (0x20, 0x21, 0xa0, 0xa1);
/// the vCPU loop drives interrupt delivery with [`DualPic::pending_vector`] and
/// [`DualPic::acknowledge`].
#[derive(Debug, Clone)]
pub struct DualPic {
    chips: [Chip; 2],
}

impl Default for DualPic {
    fn default() -> Self {
        Self::new()
    }
}

impl DualPic {
    /// Both chips as at power-on: uninitialised, so they deliver nothing until the guest programs
    /// them.
    pub fn new() -> Self {
        Self {
            chips: [Chip::new(), Chip::new()],
        }
    }

    /// Drives input `line` (0..=15) high. Lines 8..=15 belong to the slave. A line that is
    /// already high does not request again until it has been lowered. Out-of-range lines
    /// are ignored.
    pub fn raise_irq(&mut self, line: u8) {
        if let Some((chip, bit)) = Self::route(line) {
            self.chips[chip].raise(bit);
        }
    }

    /// Drives input `line` low. A request already latched in IRR stays pending.
    pub fn lower_irq(&mut self, line: u8) {
        if let Some((chip, bit)) = Self::route(line) {
            self.chips[chip].lower(bit);
        }
    }

    /// The vector the CPU would receive if it ran an INTA cycle now, or `None` if the
    /// master's INT output is low.
    pub fn pending_vector(&self) -> Option<u8> {
        let master = &self.chips[MASTER];
        let line = master.best_request(self.master_irr())?;
        if self.cascades_through(line) {
            // Only reachable without a slave request if IR2 itself was raised directly:
            // the INTA cycle would then yield the slave's spurious IRQ15, so report that.
            let slave = &self.chips[SLAVE];
            let slave_line = slave.best_request(slave.irr).unwrap_or(SPURIOUS_LINE);
            return Some(slave.vector_base | slave_line);
        }
        Some(master.vector_base | line)
    }

    /// Performs the INTA cycle and returns the vector handed to the CPU. If no request is
    /// pending any more (for instance it was masked after the VMM sampled
    /// [`DualPic::pending_vector`]) the chips answer with their spurious IRQ7 / IRQ15 vector
    /// as the datasheet describes: a spurious IRQ7 sets no ISR bit, a spurious IRQ15 leaves
    /// master ISR bit 2 set (the guest must EOI the master). Returns `None` only while the
    /// master is uninitialised and thus has no vector base.
    pub fn acknowledge(&mut self) -> Option<u8> {
        let master_irr = self.master_irr();
        let master = &self.chips[MASTER];
        if !master.initialised {
            return None;
        }
        let Some(line) = master.best_request(master_irr) else {
            return Some(master.vector_base | SPURIOUS_LINE);
        };
        self.chips[MASTER].accept(line);
        if !self.cascades_through(line) {
            return Some(self.chips[MASTER].vector_base | line);
        }
        let slave = &mut self.chips[SLAVE];
        match slave.best_request(slave.irr) {
            Some(slave_line) => {
                slave.accept(slave_line);
                Some(slave.vector_base | slave_line)
            }
            None => Some(slave.vector_base | SPURIOUS_LINE),
        }
    }

    /// The complete state of both chips, for [`DualPic::restore`].
    pub fn save(&self) -> PicState {
        PicState {
            master: self.chips[MASTER].save(),
            slave: self.chips[SLAVE].save(),
        }
    }

    /// A pair in exactly the saved state. Refuses states the chips could not have been in.
    pub fn restore(state: &PicState) -> Result<Self, DeviceStateError> {
        Ok(Self {
            chips: [
                Chip::restore("master", &state.master)?,
                Chip::restore("slave", &state.slave)?,
            ],
        })
    }

    /// True once the master has completed an initialisation sequence. The slave's lines are
    /// additionally gated on the slave's own initialisation.
    pub fn is_initialised(&self) -> bool {
        self.chips[MASTER].initialised
    }

    fn route(line: u8) -> Option<(usize, u8)> {
        match line {
            0..=7 => Some((MASTER, 1 << line)),
            8..=15 => Some((SLAVE, 1 << (line - 8))),
            _ => None,
        }
    }

    fn cascades_through(&self, master_line: u8) -> bool {
        master_line == CASCADE_LINE && !self.chips[MASTER].single
    }

    /// The master's IRR as its priority logic sees it: the slave's INT output is wired to
    /// IR2, so it is folded in rather than latched, and follows the slave's state exactly.
    fn master_irr(&self) -> u8 {
        let master = &self.chips[MASTER];
        let slave = &self.chips[SLAVE];
        let slave_int = !master.single && slave.best_request(slave.irr).is_some();
        master.irr | (u8::from(slave_int) << CASCADE_LINE)
    }
}

impl PioDevice for DualPic {
    fn read(&mut self, port: u16, _env: &mut dyn DeviceEnv) -> u8 {
        match port {
            MASTER_CMD => {
                let master = &self.chips[MASTER];
                if master.read_isr {
                    master.isr
                } else {
                    self.master_irr()
                }
            }
            SLAVE_CMD => {
                let slave = &self.chips[SLAVE];
                if slave.read_isr { slave.isr } else { slave.irr }
            }
            MASTER_DATA => self.chips[MASTER].imr,
            SLAVE_DATA => self.chips[SLAVE].imr,
            _ => 0xff,
        }
    }

    fn write(&mut self, port: u16, value: u8, _env: &mut dyn DeviceEnv) {
        match port {
            MASTER_CMD => self.chips[MASTER].write_command(value),
            SLAVE_CMD => self.chips[SLAVE].write_command(value),
            MASTER_DATA => self.chips[MASTER].write_data(value),
            SLAVE_DATA => self.chips[SLAVE].write_data(value),
            _ => {}
        }
    }
}

impl StateHash for DualPic {
    fn state_hash(&self) -> u64 {
        let h = StateHasher::new(b"pic8259");
        let h = self.chips[MASTER].hash_into(h);
        self.chips[SLAVE].hash_into(h).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::FakeEnv;

    const MASTER_BASE: u8 = 0x20;
    const SLAVE_BASE: u8 = 0x28;

    fn out(pic: &mut DualPic, port: u16, value: u8) {
        pic.write(port, value, &mut FakeEnv::default());
    }

    fn inb(pic: &mut DualPic, port: u16) -> u8 {
        pic.read(port, &mut FakeEnv::default())
    }

    /// The sequence Linux's `init_8259A` uses: edge, cascade, ICW4, 8086 mode, normal EOI.
    fn init_like_linux(pic: &mut DualPic, auto_eoi: bool) {
        let icw4 = if auto_eoi { 0x03 } else { 0x01 };
        out(pic, MASTER_DATA, 0xff);
        out(pic, SLAVE_DATA, 0xff);
        out(pic, MASTER_CMD, 0x11);
        out(pic, MASTER_DATA, MASTER_BASE);
        out(pic, MASTER_DATA, 1 << CASCADE_LINE);
        out(pic, MASTER_DATA, icw4);
        out(pic, SLAVE_CMD, 0x11);
        out(pic, SLAVE_DATA, SLAVE_BASE);
        out(pic, SLAVE_DATA, CASCADE_LINE);
        out(pic, SLAVE_DATA, icw4);
        out(pic, MASTER_DATA, 0x00);
        out(pic, SLAVE_DATA, 0x00);
    }

    fn ready_pic() -> DualPic {
        let mut pic = DualPic::new();
        init_like_linux(&mut pic, false);
        pic
    }

    fn eoi_master(pic: &mut DualPic) {
        out(pic, MASTER_CMD, 0x20);
    }

    fn eoi_slave(pic: &mut DualPic) {
        out(pic, SLAVE_CMD, 0x20);
    }

    fn select_isr(pic: &mut DualPic, port: u16) {
        out(pic, port, 0x0b);
    }

    fn select_irr(pic: &mut DualPic, port: u16) {
        out(pic, port, 0x0a);
    }

    #[test]
    fn nothing_is_delivered_before_initialisation() {
        let mut pic = DualPic::new();
        pic.raise_irq(0);
        assert!(!pic.is_initialised());
        assert_eq!(pic.pending_vector(), None);
        assert_eq!(pic.acknowledge(), None);
    }

    #[test]
    fn init_sequence_sets_vector_base_and_initialised_flag() {
        let mut pic = DualPic::new();
        out(&mut pic, MASTER_CMD, 0x11);
        assert!(!pic.is_initialised(), "ICW2..4 still outstanding");
        out(&mut pic, MASTER_DATA, 0x30);
        out(&mut pic, MASTER_DATA, 0x04);
        assert!(!pic.is_initialised(), "ICW4 still outstanding");
        out(&mut pic, MASTER_DATA, 0x01);
        assert!(pic.is_initialised());
        assert_eq!(inb(&mut pic, MASTER_DATA), 0x00, "ICW1 clears the mask");

        pic.raise_irq(3);
        assert_eq!(pic.pending_vector(), Some(0x33));
    }

    #[test]
    fn icw2_low_bits_are_not_part_of_the_vector_base() {
        let mut pic = DualPic::new();
        out(&mut pic, MASTER_CMD, 0x11);
        out(&mut pic, MASTER_DATA, 0x27);
        out(&mut pic, MASTER_DATA, 0x04);
        out(&mut pic, MASTER_DATA, 0x01);
        pic.raise_irq(1);
        assert_eq!(pic.pending_vector(), Some(0x21));
    }

    #[test]
    fn single_mode_without_icw4_skips_icw3_and_icw4() {
        let mut pic = DualPic::new();
        out(&mut pic, MASTER_CMD, 0x12); // single, no ICW4
        out(&mut pic, MASTER_DATA, 0x40);
        assert!(pic.is_initialised());
        out(&mut pic, MASTER_DATA, 0xfe); // now OCW1
        assert_eq!(inb(&mut pic, MASTER_DATA), 0xfe);
        pic.raise_irq(0);
        assert_eq!(pic.acknowledge(), Some(0x40));
    }

    #[test]
    fn single_mode_treats_irq2_as_an_ordinary_line() {
        let mut pic = DualPic::new();
        out(&mut pic, MASTER_CMD, 0x13); // single, ICW4
        out(&mut pic, MASTER_DATA, 0x40);
        out(&mut pic, MASTER_DATA, 0x01);
        pic.raise_irq(2);
        assert_eq!(pic.acknowledge(), Some(0x42));
    }

    #[test]
    fn raise_acknowledge_eoi_cycle() {
        let mut pic = ready_pic();
        pic.raise_irq(4);
        assert_eq!(pic.pending_vector(), Some(MASTER_BASE + 4));
        // Sampling is side-effect free.
        assert_eq!(pic.pending_vector(), Some(MASTER_BASE + 4));

        assert_eq!(pic.acknowledge(), Some(MASTER_BASE + 4));
        assert_eq!(pic.pending_vector(), None);
        select_isr(&mut pic, MASTER_CMD);
        assert_eq!(inb(&mut pic, MASTER_CMD), 1 << 4);

        eoi_master(&mut pic);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0);
    }

    #[test]
    fn a_line_held_high_requests_only_once_per_edge() {
        let mut pic = ready_pic();
        pic.raise_irq(1);
        assert_eq!(pic.acknowledge(), Some(MASTER_BASE + 1));
        eoi_master(&mut pic);

        pic.raise_irq(1); // still high: no new edge
        assert_eq!(pic.pending_vector(), None);

        pic.lower_irq(1);
        pic.raise_irq(1);
        assert_eq!(pic.pending_vector(), Some(MASTER_BASE + 1));
    }

    #[test]
    fn a_pulse_stays_latched_after_the_line_drops() {
        let mut pic = ready_pic();
        pic.raise_irq(0);
        pic.lower_irq(0);
        assert_eq!(pic.acknowledge(), Some(MASTER_BASE));
    }

    #[test]
    fn masked_request_waits_until_unmasked() {
        let mut pic = ready_pic();
        out(&mut pic, MASTER_DATA, 0x01);
        assert_eq!(inb(&mut pic, MASTER_DATA), 0x01);

        pic.raise_irq(0);
        assert_eq!(pic.pending_vector(), None);
        select_irr(&mut pic, MASTER_CMD);
        assert_eq!(
            inb(&mut pic, MASTER_CMD),
            0x01,
            "masked request still in IRR"
        );

        out(&mut pic, MASTER_DATA, 0x00);
        assert_eq!(pic.pending_vector(), Some(MASTER_BASE));
    }

    #[test]
    fn masked_line_does_not_hide_a_lower_priority_one() {
        let mut pic = ready_pic();
        out(&mut pic, MASTER_DATA, 0x01);
        pic.raise_irq(0);
        pic.raise_irq(1);
        assert_eq!(pic.acknowledge(), Some(MASTER_BASE + 1));
    }

    #[test]
    fn irq0_beats_irq1() {
        let mut pic = ready_pic();
        pic.raise_irq(1);
        pic.raise_irq(0);
        assert_eq!(pic.acknowledge(), Some(MASTER_BASE));
        eoi_master(&mut pic);
        assert_eq!(pic.acknowledge(), Some(MASTER_BASE + 1));
    }

    #[test]
    fn in_service_blocks_lower_priority_until_eoi_but_not_higher() {
        let mut pic = ready_pic();
        pic.raise_irq(3);
        assert_eq!(pic.acknowledge(), Some(MASTER_BASE + 3));

        pic.raise_irq(5);
        assert_eq!(
            pic.pending_vector(),
            None,
            "IRQ5 waits behind IRQ3 in service"
        );
        pic.raise_irq(1);
        assert_eq!(pic.pending_vector(), Some(MASTER_BASE + 1), "IRQ1 nests");
        assert_eq!(pic.acknowledge(), Some(MASTER_BASE + 1));

        // Non-specific EOI retires the highest-priority in-service line first.
        eoi_master(&mut pic);
        assert_eq!(pic.pending_vector(), None, "IRQ3 still in service");
        eoi_master(&mut pic);
        assert_eq!(pic.acknowledge(), Some(MASTER_BASE + 5));
    }

    #[test]
    fn in_service_line_blocks_its_own_next_request() {
        let mut pic = ready_pic();
        pic.raise_irq(0);
        pic.lower_irq(0);
        assert_eq!(pic.acknowledge(), Some(MASTER_BASE));
        pic.raise_irq(0);
        assert_eq!(pic.pending_vector(), None);
        eoi_master(&mut pic);
        assert_eq!(pic.pending_vector(), Some(MASTER_BASE));
    }

    #[test]
    fn specific_eoi_clears_the_named_line_only() {
        let mut pic = ready_pic();
        pic.raise_irq(3);
        pic.acknowledge();
        pic.raise_irq(1);
        pic.acknowledge();
        select_isr(&mut pic, MASTER_CMD);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0b0000_1010);

        out(&mut pic, MASTER_CMD, 0x60 | 3); // specific EOI for IRQ3
        assert_eq!(inb(&mut pic, MASTER_CMD), 0b0000_0010);
    }

    #[test]
    fn rotate_commands_act_as_plain_eoi() {
        let mut pic = ready_pic();
        select_isr(&mut pic, MASTER_CMD);

        pic.raise_irq(6);
        pic.acknowledge();
        out(&mut pic, MASTER_CMD, 0xa0); // rotate on non-specific EOI
        assert_eq!(inb(&mut pic, MASTER_CMD), 0);

        pic.lower_irq(6);
        pic.raise_irq(6);
        pic.acknowledge();
        out(&mut pic, MASTER_CMD, 0xe0 | 6); // rotate on specific EOI
        assert_eq!(inb(&mut pic, MASTER_CMD), 0);

        // Priority stays fixed: IRQ0 still wins over IRQ7.
        pic.raise_irq(7);
        pic.raise_irq(0);
        assert_eq!(pic.acknowledge(), Some(MASTER_BASE));
    }

    #[test]
    fn set_priority_command_changes_nothing() {
        let mut pic = ready_pic();
        pic.raise_irq(4);
        pic.acknowledge();
        let before = pic.state_hash();
        out(&mut pic, MASTER_CMD, 0xc0 | 3);
        assert_eq!(pic.state_hash(), before);
    }

    #[test]
    fn auto_eoi_leaves_nothing_in_service() {
        let mut pic = DualPic::new();
        init_like_linux(&mut pic, true);
        pic.raise_irq(3);
        assert_eq!(pic.acknowledge(), Some(MASTER_BASE + 3));
        select_isr(&mut pic, MASTER_CMD);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0);

        pic.raise_irq(5);
        assert_eq!(pic.pending_vector(), Some(MASTER_BASE + 5), "no EOI needed");
    }

    #[test]
    fn slave_irq_cascades_through_master_irq2() {
        let mut pic = ready_pic();
        pic.raise_irq(8);
        assert_eq!(pic.pending_vector(), Some(SLAVE_BASE));

        select_irr(&mut pic, MASTER_CMD);
        assert_eq!(
            inb(&mut pic, MASTER_CMD),
            1 << 2,
            "slave INT shows on master IR2"
        );

        assert_eq!(pic.acknowledge(), Some(SLAVE_BASE));
        select_isr(&mut pic, MASTER_CMD);
        select_isr(&mut pic, SLAVE_CMD);
        assert_eq!(inb(&mut pic, MASTER_CMD), 1 << 2);
        assert_eq!(inb(&mut pic, SLAVE_CMD), 0x01);

        eoi_slave(&mut pic);
        eoi_master(&mut pic);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0);
        assert_eq!(inb(&mut pic, SLAVE_CMD), 0);
    }

    #[test]
    fn slave_line_priority_sits_between_master_irq1_and_irq3() {
        let mut pic = ready_pic();
        pic.raise_irq(3);
        pic.raise_irq(15);
        assert_eq!(pic.acknowledge(), Some(SLAVE_BASE + 7));
        pic.raise_irq(1);
        assert_eq!(pic.acknowledge(), Some(MASTER_BASE + 1));
    }

    #[test]
    fn master_cascade_in_service_blocks_other_slave_lines_until_master_eoi() {
        let mut pic = ready_pic();
        pic.raise_irq(12);
        assert_eq!(pic.acknowledge(), Some(SLAVE_BASE + 4));
        pic.raise_irq(9); // higher priority than 12 on the slave
        assert_eq!(pic.pending_vector(), None, "master IR2 is in service");

        eoi_slave(&mut pic);
        eoi_master(&mut pic);
        assert_eq!(pic.acknowledge(), Some(SLAVE_BASE + 1));
    }

    #[test]
    fn masking_irq2_on_the_master_hides_the_whole_slave() {
        let mut pic = ready_pic();
        out(&mut pic, MASTER_DATA, 1 << 2);
        pic.raise_irq(8);
        assert_eq!(pic.pending_vector(), None);
        out(&mut pic, MASTER_DATA, 0);
        assert_eq!(pic.pending_vector(), Some(SLAVE_BASE));
    }

    #[test]
    fn slave_mask_hides_slave_lines() {
        let mut pic = ready_pic();
        out(&mut pic, SLAVE_DATA, 0x01);
        assert_eq!(inb(&mut pic, SLAVE_DATA), 0x01);
        pic.raise_irq(8);
        assert_eq!(pic.pending_vector(), None);
        select_irr(&mut pic, SLAVE_CMD);
        assert_eq!(inb(&mut pic, SLAVE_CMD), 0x01);
    }

    #[test]
    fn vanished_master_request_yields_spurious_irq7_without_isr() {
        let mut pic = ready_pic();
        pic.raise_irq(4);
        assert_eq!(pic.pending_vector(), Some(MASTER_BASE + 4));
        out(&mut pic, MASTER_DATA, 1 << 4); // masked between sampling and INTA

        assert_eq!(pic.acknowledge(), Some(MASTER_BASE + 7));
        select_isr(&mut pic, MASTER_CMD);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0);
    }

    #[test]
    fn vanished_slave_request_yields_spurious_irq15_with_master_cascade_in_service() {
        let mut pic = ready_pic();
        pic.raise_irq(10);
        // Raising master IR2 directly latches it there, so the master still asks for the
        // slave after the slave's own request has been masked away.
        pic.raise_irq(2);
        out(&mut pic, SLAVE_DATA, 1 << 2);

        assert_eq!(pic.pending_vector(), Some(SLAVE_BASE + 7));
        assert_eq!(pic.acknowledge(), Some(SLAVE_BASE + 7));
        select_isr(&mut pic, MASTER_CMD);
        select_isr(&mut pic, SLAVE_CMD);
        assert_eq!(
            inb(&mut pic, MASTER_CMD),
            1 << 2,
            "guest must EOI the master"
        );
        assert_eq!(inb(&mut pic, SLAVE_CMD), 0);
    }

    #[test]
    fn ocw3_selects_between_irr_and_isr() {
        let mut pic = ready_pic();
        pic.raise_irq(5);
        pic.raise_irq(6);
        pic.acknowledge();

        // IRR is the default selection after initialisation.
        assert_eq!(inb(&mut pic, MASTER_CMD), 1 << 6);
        select_isr(&mut pic, MASTER_CMD);
        assert_eq!(inb(&mut pic, MASTER_CMD), 1 << 5);
        assert_eq!(inb(&mut pic, MASTER_CMD), 1 << 5, "selection is sticky");
        select_irr(&mut pic, MASTER_CMD);
        assert_eq!(inb(&mut pic, MASTER_CMD), 1 << 6);

        // OCW3 without RR set leaves the selection alone (e.g. the poll command).
        select_isr(&mut pic, MASTER_CMD);
        out(&mut pic, MASTER_CMD, 0x0c);
        assert_eq!(inb(&mut pic, MASTER_CMD), 1 << 5);
    }

    #[test]
    fn reinitialisation_clears_pending_and_in_service_state() {
        let mut pic = ready_pic();
        pic.raise_irq(0);
        pic.acknowledge();
        pic.raise_irq(1);
        out(&mut pic, MASTER_CMD, 0x11);
        assert!(!pic.is_initialised());
        out(&mut pic, MASTER_DATA, MASTER_BASE);
        out(&mut pic, MASTER_DATA, 0x04);
        out(&mut pic, MASTER_DATA, 0x01);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0, "IRR cleared");
        select_isr(&mut pic, MASTER_CMD);
        assert_eq!(inb(&mut pic, MASTER_CMD), 0, "ISR cleared");
        assert_eq!(pic.pending_vector(), None);
    }

    #[test]
    fn out_of_range_lines_are_ignored() {
        let mut pic = ready_pic();
        let before = pic.state_hash();
        pic.raise_irq(16);
        pic.lower_irq(200);
        assert_eq!(pic.state_hash(), before);
        assert_eq!(pic.pending_vector(), None);
    }

    #[test]
    fn state_hash_tracks_state_and_is_reproducible() {
        let mut a = ready_pic();
        let mut b = ready_pic();
        assert_eq!(a.state_hash(), b.state_hash());
        assert_ne!(a.state_hash(), DualPic::new().state_hash());

        a.raise_irq(3);
        assert_ne!(a.state_hash(), b.state_hash());
        b.raise_irq(3);
        assert_eq!(a.state_hash(), b.state_hash());

        let pending = a.state_hash();
        a.acknowledge();
        assert_ne!(a.state_hash(), pending);
        let in_service = a.state_hash();
        eoi_master(&mut a);
        assert_ne!(a.state_hash(), in_service);

        let before_mask = a.state_hash();
        out(&mut a, SLAVE_DATA, 0x80);
        assert_ne!(a.state_hash(), before_mask);
    }

    #[test]
    fn state_hasher_matches_published_fnv1a_vectors() {
        assert_eq!(
            StateHasher(StateHasher::OFFSET_BASIS).finish(),
            0xcbf2_9ce4_8422_2325
        );
        assert_eq!(
            StateHasher(StateHasher::OFFSET_BASIS).bytes(b"a").finish(),
            0xaf63_dc4c_8601_ec8c
        );
        assert_eq!(
            StateHasher(StateHasher::OFFSET_BASIS)
                .bytes(b"foobar")
                .finish(),
            0x8594_4171_f739_67e8
        );
    }

    mod saved_state {
        use proptest::collection::vec;
        use proptest::prelude::*;

        use super::*;
        use crate::devices::state::twins::{self, PortOp, Seen};

        /// What the guest (through ports) and the vCPU loop (through the INTA helpers) do to
        /// a PIC.
        #[derive(Debug, Clone)]
        enum PicOp {
            Port(PortOp),
            Raise(u8),
            Lower(u8),
            Acknowledge,
            Pending,
        }

        fn apply(pic: &mut DualPic, op: &PicOp, env: &mut FakeEnv) -> Seen {
            match op {
                PicOp::Port(port_op) => port_op.apply(pic, env),
                PicOp::Raise(line) => {
                    pic.raise_irq(*line);
                    Seen::Nothing
                }
                PicOp::Lower(line) => {
                    pic.lower_irq(*line);
                    Seen::Nothing
                }
                PicOp::Acknowledge => Seen::Vector(pic.acknowledge()),
                PicOp::Pending => Seen::Vector(pic.pending_vector()),
            }
        }

        /// The commands a guest actually sends (EOIs, register selects, re-initialisation),
        /// which arbitrary bytes would rarely hit without also re-initialising half the time.
        fn command() -> impl Strategy<Value = u8> {
            prop_oneof![
                Just(0x20u8),
                0x60u8..=0x67,
                Just(0xa0u8),
                0xc0u8..=0xc7,
                0xe0u8..=0xe7,
                Just(0x0au8),
                Just(0x0bu8),
                Just(0x0cu8),
                Just(0x11u8),
                Just(0x13u8),
            ]
        }

        fn pic_op() -> impl Strategy<Value = PicOp> {
            let cmd_port = proptest::sample::select(vec![MASTER_CMD, SLAVE_CMD]);
            prop_oneof![
                3 => twins::port_op(&[MASTER_CMD, MASTER_DATA, SLAVE_CMD, SLAVE_DATA])
                    .prop_map(PicOp::Port),
                3 => (cmd_port, command()).prop_map(|(port, value)| {
                    PicOp::Port(PortOp::Write { port, data: vec![value] })
                }),
                3 => (0u8..=16).prop_map(PicOp::Raise),
                2 => (0u8..=16).prop_map(PicOp::Lower),
                2 => Just(PicOp::Acknowledge),
                1 => Just(PicOp::Pending),
            ]
        }

        /// A pair with something in every register: master IRQ3 in service with IRQ5 queued
        /// behind it, IRQ1 held high (so raising it again must not request), a slave request
        /// masked, ISR selected for reads, and the slave half-way through re-initialisation.
        fn busy_pic() -> DualPic {
            let mut pic = ready_pic();
            pic.raise_irq(3);
            pic.acknowledge();
            pic.raise_irq(5);
            pic.raise_irq(1);
            pic.acknowledge();
            eoi_master(&mut pic);
            out(&mut pic, SLAVE_DATA, 1 << 3);
            pic.raise_irq(11);
            select_isr(&mut pic, MASTER_CMD);
            out(&mut pic, SLAVE_CMD, 0x11);
            out(&mut pic, SLAVE_DATA, 0x70);
            pic
        }

        fn start(kind: u8) -> DualPic {
            match kind {
                0 => DualPic::new(),
                1 => ready_pic(),
                _ => busy_pic(),
            }
        }

        fn save_and_restore(pic: &DualPic) -> DualPic {
            DualPic::restore(&twins::through_json(&pic.save())).unwrap()
        }

        #[test]
        fn busy_pic_restores_exactly() {
            let original = busy_pic();
            let mut restored = save_and_restore(&original);
            assert_eq!(restored.save(), original.save());
            assert_eq!(restored.state_hash(), original.state_hash());

            // The held line, the queue behind IRQ3 and the slave's ICW3 step all survived.
            restored.raise_irq(1);
            assert_eq!(restored.pending_vector(), None, "IRQ5 waits behind IRQ3");
            eoi_master(&mut restored);
            assert_eq!(restored.acknowledge(), Some(MASTER_BASE + 5));
            assert_eq!(inb(&mut restored, MASTER_CMD), 1 << 5, "ISR selected");
            out(&mut restored, SLAVE_DATA, CASCADE_LINE);
            out(&mut restored, SLAVE_DATA, 0x01);
            restored.raise_irq(9);
            eoi_master(&mut restored);
            assert_eq!(restored.acknowledge(), Some(0x71));
        }

        proptest! {
            #[test]
            fn restored_pic_is_indistinguishable(
                kind in 0u8..3,
                before in vec(pic_op(), 0..40),
                after in vec(pic_op(), 1..80),
            ) {
                let mut env = FakeEnv::default();
                let mut original = start(kind);
                for op in &before {
                    apply(&mut original, op, &mut env);
                }
                let mut restored = save_and_restore(&original);
                prop_assert_eq!(restored.save(), original.save());
                twins::run_twins(&mut original, &mut restored, &env, &after, apply)?;
                prop_assert_eq!(restored.save(), original.save());
            }
        }

        fn refusal(edit: impl FnOnce(&mut PicState)) -> String {
            let mut state = busy_pic().save();
            edit(&mut state);
            DualPic::restore(&state).unwrap_err().to_string()
        }

        #[test]
        fn corrupt_pic_states_are_refused() {
            let message = refusal(|s| s.master.init_step = 4);
            assert!(
                message.starts_with("PIC master: initialisation step 4"),
                "{message}"
            );

            let message = refusal(|s| s.slave.vector_base = 0x71);
            assert!(
                message.starts_with("PIC slave: vector base 0x71"),
                "{message}"
            );

            let message = refusal(|s| s.slave.initialised = true);
            assert!(
                message.starts_with("PIC slave: initialisation step 2"),
                "{message}"
            );

            let message = refusal(|s| {
                s.slave.init_step = 3;
                s.slave.needs_icw4 = false;
            });
            assert!(message.contains("ICW4"), "{message}");
        }
    }
}
