//! The 8254 programmable interval timer at ports 0x40..=0x43.
//!
//! The counters are not ticked: each channel remembers the virtual time its count started
//! (its epoch) and derives the current count from [`DeviceEnv::clock_ns`] whenever the guest
//! looks. Every `clock_ns` call is a logged input during recording, so the device asks for
//! the time only when the answer matters:
//! - once when a count is loaded (the second byte for lobyte/hibyte access, the only byte
//!   otherwise);
//! - once per counter latch command (or read-back that latches) on a running channel;
//! - once per unlatched data-port read of a running channel.
//!
//! Control words, the first byte of a lobyte/hibyte count, reads of latched values and of
//! channels that have no count loaded never consult the clock.
//!
//! Simplifications, all invisible to Linux and common firmware:
//! - All three channels share one model with GATE permanently high. Port 0x61 (which gates
//!   channel 2 on a PC) is not part of this device; channel 1 works but nothing uses it.
//! - Modes 2 and 3 read alike: `reload - (elapsed % reload)`. Real mode 3 decrements by two
//!   twice per period; only its OUT level (high for the first half) is modelled.
//! - Modes 1 and 5 (hardware-triggered) start counting on the count write, as if the gate
//!   had just risen; they behave like modes 0 and 4 respectively. Modes 6 and 7 alias 2 and 3.
//! - BCD counting is accepted and recorded (the read-back status shows it) but counts stay
//!   binary.
//! - A new count takes effect immediately rather than at the end of the current period.
//! - A control word discards any pending count or status latch of its channel.
//! - Read-back (0xC0..=0xFF) is supported for both count and status; the status OUT bit is
//!   computed from the clock, the null-count bit is set from a control word until the next
//!   complete count write.

use super::pic::StateHasher;
use super::state::{DeviceStateError, PitChannelState, PitState};
use super::{DeviceEnv, PioDevice, StateHash};

/// The PIT's input clock in Hz.
pub const PIT_FREQUENCY_HZ: u64 = 1_193_182;
const NS_PER_SEC: u64 = 1_000_000_000;

const BASE_PORT: u16 = 0x40;
const CONTROL_PORT: u16 = 0x43;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    LoByte,
    HiByte,
    LoHi,
}

impl Access {
    /// `None` for the `00` encoding, which is the counter latch command rather than a mode.
    fn from_bits(bits: u8) -> Option<Self> {
        match bits & 0x03 {
            1 => Some(Access::LoByte),
            2 => Some(Access::HiByte),
            3 => Some(Access::LoHi),
            _ => None,
        }
    }

    fn bits(self) -> u8 {
        match self {
            Access::LoByte => 1,
            Access::HiByte => 2,
            Access::LoHi => 3,
        }
    }

    /// The inverse of [`Access::bits`]; unlike [`Access::from_bits`] nothing is masked off,
    /// since a saved state with stray bits is corrupt rather than a command.
    fn decode(bits: u8) -> Option<Self> {
        match bits {
            1 => Some(Access::LoByte),
            2 => Some(Access::HiByte),
            3 => Some(Access::LoHi),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Channel {
    /// M2..M0 as programmed, kept raw because the read-back status reports them verbatim.
    mode_bits: u8,
    access: Access,
    bcd: bool,
    /// The count register as written; 0 stands for 65536.
    reload: u16,
    /// Virtual time at which the current count was loaded; `None` until a count is loaded
    /// after the last control word.
    epoch_ns: Option<u64>,
    /// Write flip-flop: the low byte of a lobyte/hibyte count, waiting for its high byte.
    pending_low: Option<u8>,
    /// Read flip-flop for lobyte/hibyte access, shared by latched and live reads.
    read_high_next: bool,
    latched_count: Option<u16>,
    latched_status: Option<u8>,
    null_count: bool,
}

impl Channel {
    fn new() -> Self {
        Self {
            mode_bits: 0,
            access: Access::LoHi,
            bcd: false,
            reload: 0,
            epoch_ns: None,
            pending_low: None,
            read_high_next: false,
            latched_count: None,
            latched_status: None,
            null_count: true,
        }
    }

    /// The mode as behaviour sees it: 6 and 7 are the datasheet's aliases of 2 and 3.
    fn mode(&self) -> u8 {
        match self.mode_bits {
            6 => 2,
            7 => 3,
            m => m,
        }
    }

    fn is_periodic(&self) -> bool {
        matches!(self.mode(), 2 | 3)
    }

    fn reload_counts(&self) -> u64 {
        if self.reload == 0 {
            0x1_0000
        } else {
            u64::from(self.reload)
        }
    }

    /// Nanoseconds, rounded up, until `counts` input clocks have elapsed since the epoch;
    /// the exact inverse of [`elapsed_counts`] so the VMM's tick times agree with what the
    /// guest reads back.
    fn ns_for_counts(counts: u64) -> u64 {
        let ns =
            (u128::from(counts) * u128::from(NS_PER_SEC)).div_ceil(u128::from(PIT_FREQUENCY_HZ));
        u64::try_from(ns).unwrap_or(u64::MAX)
    }

    fn program(&mut self, control: u8, access: Access) {
        self.mode_bits = (control >> 1) & 0x07;
        self.access = access;
        self.bcd = control & 0x01 != 0;
        self.epoch_ns = None;
        self.pending_low = None;
        self.read_high_next = false;
        self.latched_count = None;
        self.latched_status = None;
        self.null_count = true;
    }

    fn write_count_byte(&mut self, value: u8, env: &mut dyn DeviceEnv) {
        match self.access {
            Access::LoByte => self.load(u16::from(value), env),
            Access::HiByte => self.load(u16::from(value) << 8, env),
            Access::LoHi => match self.pending_low.take() {
                None => self.pending_low = Some(value),
                Some(low) => self.load(u16::from_le_bytes([low, value]), env),
            },
        }
    }

    fn load(&mut self, reload: u16, env: &mut dyn DeviceEnv) {
        self.reload = reload;
        self.epoch_ns = Some(env.clock_ns());
        self.null_count = false;
    }

    /// Count and OUT level at the current time. The clock is consulted only for a running
    /// channel; a stopped one answers from its registers.
    fn sample(&self, env: &mut dyn DeviceEnv) -> (u16, bool) {
        match self.epoch_ns {
            None => (self.reload, self.mode() != 0),
            Some(epoch) => {
                let elapsed = elapsed_counts(env.clock_ns().saturating_sub(epoch));
                self.sample_at(elapsed)
            }
        }
    }

    fn sample_at(&self, elapsed: u64) -> (u16, bool) {
        let n = self.reload_counts();
        if self.is_periodic() {
            let phase = elapsed % n;
            let remaining = n - phase;
            let out = if self.mode() == 2 {
                remaining != 1
            } else {
                phase < n.div_ceil(2)
            };
            (truncate_count(remaining), out)
        } else {
            // One-shot modes keep decrementing, wrapping through 0xffff, after terminal count.
            let remaining = (n % 0x1_0000 + 0x1_0000 - elapsed % 0x1_0000) % 0x1_0000;
            let out = match self.mode() {
                0 | 1 => elapsed >= n,
                _ => elapsed != n,
            };
            (truncate_count(remaining), out)
        }
    }

    fn status_byte(&self, out: bool) -> u8 {
        (u8::from(out) << 7)
            | (u8::from(self.null_count) << 6)
            | (self.access.bits() << 4)
            | (self.mode_bits << 1)
            | u8::from(self.bcd)
    }

    fn latch_count(&mut self, env: &mut dyn DeviceEnv) {
        // The datasheet ignores a second latch until the first has been read.
        if self.latched_count.is_none() {
            self.latched_count = Some(self.sample(env).0);
        }
    }

    fn read_back(&mut self, latch_count: bool, latch_status: bool, env: &mut dyn DeviceEnv) {
        let wants_count = latch_count && self.latched_count.is_none();
        let wants_status = latch_status && self.latched_status.is_none();
        if !wants_count && !wants_status {
            return;
        }
        let (count, out) = self.sample(env);
        if wants_count {
            self.latched_count = Some(count);
        }
        if wants_status {
            self.latched_status = Some(self.status_byte(out));
        }
    }

    fn read_byte(&mut self, env: &mut dyn DeviceEnv) -> u8 {
        if let Some(status) = self.latched_status.take() {
            return status;
        }
        if let Some(latched) = self.latched_count {
            let (byte, complete) = self.next_byte_of(latched);
            if complete {
                self.latched_count = None;
            }
            return byte;
        }
        let (count, _) = self.sample(env);
        self.next_byte_of(count).0
    }

    /// Picks the byte of `value` the access mode and read flip-flop call for; the flag says
    /// whether the value has now been read completely.
    fn next_byte_of(&mut self, value: u16) -> (u8, bool) {
        let [low, high] = value.to_le_bytes();
        match self.access {
            Access::LoByte => (low, true),
            Access::HiByte => (high, true),
            Access::LoHi => {
                let high_now = self.read_high_next;
                self.read_high_next = !high_now;
                if high_now { (high, true) } else { (low, false) }
            }
        }
    }

    fn hash_into(&self, h: StateHasher) -> StateHasher {
        h.u8(self.mode_bits)
            .u8(self.access.bits())
            .bool(self.bcd)
            .u16(self.reload)
            .bool(self.epoch_ns.is_some())
            .u64(self.epoch_ns.unwrap_or(0))
            .bool(self.pending_low.is_some())
            .u8(self.pending_low.unwrap_or(0))
            .bool(self.read_high_next)
            .bool(self.latched_count.is_some())
            .u16(self.latched_count.unwrap_or(0))
            .bool(self.latched_status.is_some())
            .u8(self.latched_status.unwrap_or(0))
            .bool(self.null_count)
    }

    fn save(&self) -> PitChannelState {
        PitChannelState {
            mode: self.mode_bits,
            access: self.access.bits(),
            bcd: self.bcd,
            reload: self.reload,
            epoch_ns: self.epoch_ns,
            pending_low: self.pending_low,
            read_high_next: self.read_high_next,
            latched_count: self.latched_count,
            latched_status: self.latched_status,
            null_count: self.null_count,
        }
    }

    /// `index` (0..=2) only labels errors.
    fn restore(index: usize, s: &PitChannelState) -> Result<Self, DeviceStateError> {
        // The read-back status byte reports the mode in three bits; more would corrupt it.
        if s.mode > 7 {
            return Err(DeviceStateError::PitMode {
                channel: index,
                mode: s.mode,
            });
        }
        let access = Access::decode(s.access).ok_or(DeviceStateError::PitAccess {
            channel: index,
            access: s.access,
        })?;
        // Only lobyte/hibyte access moves the flip-flops, and a control word clears both, so a
        // set flip-flop under another access mode cannot come from a real channel.
        if access != Access::LoHi {
            let stray = if s.pending_low.is_some() {
                Some("the write flip-flop (a pending low byte)")
            } else if s.read_high_next {
                Some("the read flip-flop")
            } else {
                None
            };
            if let Some(field) = stray {
                return Err(DeviceStateError::PitFlipFlop {
                    channel: index,
                    field,
                });
            }
        }
        Ok(Self {
            mode_bits: s.mode,
            access,
            bcd: s.bcd,
            reload: s.reload,
            epoch_ns: s.epoch_ns,
            pending_low: s.pending_low,
            read_high_next: s.read_high_next,
            latched_count: s.latched_count,
            latched_status: s.latched_status,
            null_count: s.null_count,
        })
    }
}

fn elapsed_counts(elapsed_ns: u64) -> u64 {
    let counts = u128::from(elapsed_ns) * u128::from(PIT_FREQUENCY_HZ) / u128::from(NS_PER_SEC);
    u64::try_from(counts).unwrap_or(u64::MAX)
}

/// A 16-bit counter holds 65536 as 0.
fn truncate_count(counts: u64) -> u16 {
    (counts & 0xffff) as u16
}

/// The three-channel 8254. Channel 0 drives IRQ0; the VMM schedules those interrupts from
/// [`Pit::channel0_epoch_ns`] and [`Pit::channel0_period_ns`] (or the exact
/// [`Pit::channel0_tick_ns`]), or [`Pit::channel0_oneshot_deadline_ns`] for one-shot modes.
#[derive(Debug, Clone)]
pub struct Pit {
    channels: [Channel; 3],
}

impl Default for Pit {
    fn default() -> Self {
        Self::new()
    }
}

impl Pit {
    /// All three channels as at power-on: no count loaded, so no ticks.
    pub fn new() -> Self {
        Self {
            channels: [Channel::new(), Channel::new(), Channel::new()],
        }
    }

    /// The complete state of all three channels, for [`Pit::restore`]. Epochs are saved as
    /// the clock values they were read as; the restored device needs the same clock.
    pub fn save(&self) -> PitState {
        PitState {
            channels: self.channels.each_ref().map(Channel::save),
        }
    }

    /// A PIT in exactly the saved state. Refuses states no 8254 channel could be in.
    pub fn restore(state: &PitState) -> Result<Self, DeviceStateError> {
        let [ch0, ch1, ch2] = &state.channels;
        Ok(Self {
            channels: [
                Channel::restore(0, ch0)?,
                Channel::restore(1, ch1)?,
                Channel::restore(2, ch2)?,
            ],
        })
    }

    /// Channel 0's period, rounded to the nearest nanosecond, while it runs in a periodic
    /// mode (2 or 3) with a loaded count. Summing this period accumulates rounding error
    /// (under 0.5 ns per tick); [`Pit::channel0_tick_ns`] gives exact tick times.
    pub fn channel0_period_ns(&self) -> Option<u64> {
        let ch = &self.channels[0];
        if !ch.is_periodic() || ch.epoch_ns.is_none() {
            return None;
        }
        let ns = (ch.reload_counts() * NS_PER_SEC + PIT_FREQUENCY_HZ / 2) / PIT_FREQUENCY_HZ;
        Some(ns)
    }

    /// The virtual time at which channel 0's current count was loaded, in any mode;
    /// `None` until a count is loaded after the last control word.
    pub fn channel0_epoch_ns(&self) -> Option<u64> {
        self.channels[0].epoch_ns
    }

    /// The virtual time of channel 0's `k`-th terminal count (k >= 1) in a periodic mode:
    /// the first instant at which a counter read would show the k-th reload. Exact, unlike
    /// `epoch + k * period`.
    pub fn channel0_tick_ns(&self, k: u64) -> Option<u64> {
        let ch = &self.channels[0];
        let epoch = ch.epoch_ns.filter(|_| ch.is_periodic())?;
        let counts = k.saturating_mul(ch.reload_counts());
        Some(epoch.saturating_add(Channel::ns_for_counts(counts)))
    }

    /// The virtual time at which channel 0 reaches terminal count in a one-shot mode
    /// (0, 1, 4, 5); `None` in periodic modes or before a count is loaded. In mode 0 this is
    /// when OUT rises and IRQ0 should fire.
    pub fn channel0_oneshot_deadline_ns(&self) -> Option<u64> {
        let ch = &self.channels[0];
        let epoch = ch.epoch_ns.filter(|_| !ch.is_periodic())?;
        Some(epoch.saturating_add(Channel::ns_for_counts(ch.reload_counts())))
    }

    fn write_control(&mut self, value: u8, env: &mut dyn DeviceEnv) {
        let select = value >> 6;
        if select == 3 {
            let latch_count = value & 0x20 == 0;
            let latch_status = value & 0x10 == 0;
            for (index, channel) in self.channels.iter_mut().enumerate() {
                if value & (0x02 << index) != 0 {
                    channel.read_back(latch_count, latch_status, env);
                }
            }
            return;
        }
        let channel = &mut self.channels[usize::from(select)];
        match Access::from_bits(value >> 4) {
            None => channel.latch_count(env),
            Some(access) => channel.program(value, access),
        }
    }
}

impl PioDevice for Pit {
    fn read(&mut self, port: u16, env: &mut dyn DeviceEnv) -> u8 {
        match port {
            0x40..=0x42 => self.channels[usize::from(port - BASE_PORT)].read_byte(env),
            // The control register is write-only; the bus floats.
            _ => 0xff,
        }
    }

    fn write(&mut self, port: u16, value: u8, env: &mut dyn DeviceEnv) {
        match port {
            0x40..=0x42 => {
                self.channels[usize::from(port - BASE_PORT)].write_count_byte(value, env);
            }
            CONTROL_PORT => self.write_control(value, env),
            _ => {}
        }
    }
}

impl StateHash for Pit {
    fn state_hash(&self) -> u64 {
        self.channels
            .iter()
            .fold(StateHasher::new(b"pit8254"), |h, ch| ch.hash_into(h))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::FakeEnv;

    /// A [`FakeEnv`] that counts how often the device asks for the time, since every such
    /// call is a logged input.
    #[derive(Debug, Default)]
    struct CountingEnv {
        inner: FakeEnv,
        clock_calls: usize,
        wall_calls: usize,
    }

    impl CountingEnv {
        fn at(now_ns: u64) -> Self {
            Self {
                inner: FakeEnv {
                    now_ns,
                    wall_secs: 0,
                },
                ..Self::default()
            }
        }

        fn advance(&mut self, ns: u64) {
            self.inner.now_ns += ns;
        }

        /// Returns and resets the number of clock calls since the last check.
        fn clock_calls_since_last_check(&mut self) -> usize {
            std::mem::take(&mut self.clock_calls)
        }
    }

    impl DeviceEnv for CountingEnv {
        fn clock_ns(&mut self) -> u64 {
            self.clock_calls += 1;
            self.inner.clock_ns()
        }
        fn wall_clock_unix_secs(&mut self) -> u64 {
            self.wall_calls += 1;
            self.inner.wall_clock_unix_secs()
        }
    }

    const CH0: u16 = 0x40;
    const CH2: u16 = 0x42;
    /// 1_193_182 Hz / 100 Hz, rounded, as Linux computes LATCH.
    const RELOAD_100HZ: u16 = 11932;
    const EPOCH: u64 = 1_000_000;

    fn out(pit: &mut Pit, env: &mut CountingEnv, port: u16, value: u8) {
        pit.write(port, value, env);
    }

    fn inb(pit: &mut Pit, env: &mut CountingEnv, port: u16) -> u8 {
        pit.read(port, env)
    }

    fn latch_and_read_ch0(pit: &mut Pit, env: &mut CountingEnv) -> u16 {
        out(pit, env, CONTROL_PORT, 0x00);
        let low = inb(pit, env, CH0);
        let high = inb(pit, env, CH0);
        u16::from_le_bytes([low, high])
    }

    /// Channel 0, lobyte/hibyte, mode 2, binary: what Linux does for its 100 Hz tick.
    fn program_100hz_rate_generator(pit: &mut Pit, env: &mut CountingEnv) {
        out(pit, env, CONTROL_PORT, 0x34);
        let [low, high] = RELOAD_100HZ.to_le_bytes();
        out(pit, env, CH0, low);
        out(pit, env, CH0, high);
    }

    #[test]
    fn rate_generator_at_100hz_counts_down_and_wraps() {
        let mut env = CountingEnv::at(EPOCH);
        let mut pit = Pit::new();
        program_100hz_rate_generator(&mut pit, &mut env);

        assert_eq!(latch_and_read_ch0(&mut pit, &mut env), RELOAD_100HZ);

        // 5 ms = 5965.91 input clocks -> 5965 whole clocks elapsed.
        env.advance(5_000_000);
        assert_eq!(latch_and_read_ch0(&mut pit, &mut env), RELOAD_100HZ - 5965);

        // 25 ms = 29829 clocks = 2 full periods + 5965.
        env.advance(20_000_000);
        assert_eq!(latch_and_read_ch0(&mut pit, &mut env), RELOAD_100HZ - 5965);
    }

    #[test]
    fn period_and_epoch_of_a_periodic_channel0() {
        let mut env = CountingEnv::at(EPOCH);
        let mut pit = Pit::new();
        assert_eq!(pit.channel0_period_ns(), None);
        assert_eq!(pit.channel0_epoch_ns(), None);

        program_100hz_rate_generator(&mut pit, &mut env);
        // 11932 / 1_193_182 Hz = 10_000_150.857 ns.
        assert_eq!(pit.channel0_period_ns(), Some(10_000_151));
        assert_eq!(pit.channel0_epoch_ns(), Some(EPOCH));
        assert_eq!(pit.channel0_tick_ns(1), Some(EPOCH + 10_000_151));
        assert_eq!(pit.channel0_tick_ns(3), Some(EPOCH + 30_000_453));
        assert_eq!(pit.channel0_oneshot_deadline_ns(), None);
    }

    #[test]
    fn tick_time_is_exactly_when_the_counter_reloads() {
        let mut env = CountingEnv::at(EPOCH);
        let mut pit = Pit::new();
        program_100hz_rate_generator(&mut pit, &mut env);
        let tick = pit.channel0_tick_ns(2).unwrap();

        env.inner.now_ns = tick - 1;
        assert_eq!(latch_and_read_ch0(&mut pit, &mut env), 1);
        env.inner.now_ns = tick;
        assert_eq!(latch_and_read_ch0(&mut pit, &mut env), RELOAD_100HZ);
    }

    #[test]
    fn square_wave_mode_is_periodic_too() {
        let mut env = CountingEnv::at(EPOCH);
        let mut pit = Pit::new();
        out(&mut pit, &mut env, CONTROL_PORT, 0x36); // mode 3
        out(&mut pit, &mut env, CH0, 0x9c);
        out(&mut pit, &mut env, CH0, 0x2e);
        assert_eq!(pit.channel0_period_ns(), Some(10_000_151));
        env.advance(5_000_000);
        assert_eq!(latch_and_read_ch0(&mut pit, &mut env), RELOAD_100HZ - 5965);
    }

    #[test]
    fn modes_6_and_7_alias_2_and_3() {
        let mut env = CountingEnv::at(EPOCH);
        let mut pit = Pit::new();
        out(&mut pit, &mut env, CONTROL_PORT, 0x3c); // mode 6
        out(&mut pit, &mut env, CH0, 100);
        out(&mut pit, &mut env, CH0, 0);
        assert!(pit.channel0_period_ns().is_some());
    }

    #[test]
    fn reload_zero_means_65536() {
        let mut env = CountingEnv::at(EPOCH);
        let mut pit = Pit::new();
        out(&mut pit, &mut env, CONTROL_PORT, 0x34);
        out(&mut pit, &mut env, CH0, 0);
        out(&mut pit, &mut env, CH0, 0);
        assert_eq!(pit.channel0_period_ns(), Some(54_925_401));

        assert_eq!(
            latch_and_read_ch0(&mut pit, &mut env),
            0,
            "65536 reads as 0"
        );
        env.advance(1_000); // 1.19 clocks
        assert_eq!(latch_and_read_ch0(&mut pit, &mut env), 0xffff);
    }

    #[test]
    fn lobyte_only_access() {
        let mut env = CountingEnv::at(EPOCH);
        let mut pit = Pit::new();
        out(&mut pit, &mut env, CONTROL_PORT, 0x14); // ch0, lobyte, mode 2
        out(&mut pit, &mut env, CH0, 200);
        assert_eq!(
            pit.channel0_epoch_ns(),
            Some(EPOCH),
            "one byte starts the count"
        );

        env.advance(10_000); // 11.93 clocks -> 11
        assert_eq!(inb(&mut pit, &mut env, CH0), 200 - 11);
        assert_eq!(
            inb(&mut pit, &mut env, CH0),
            200 - 11,
            "every read is a low byte"
        );
    }

    #[test]
    fn hibyte_only_access() {
        let mut env = CountingEnv::at(EPOCH);
        let mut pit = Pit::new();
        out(&mut pit, &mut env, CONTROL_PORT, 0x24); // ch0, hibyte, mode 2
        out(&mut pit, &mut env, CH0, 0x02);
        assert_eq!(pit.channel0_period_ns(), Some(429_105)); // 512 / 1_193_182 Hz = 429_104.7 ns

        env.advance(1_000_000); // 1193 clocks: 1193 % 512 = 169 -> 343 = 0x157
        out(&mut pit, &mut env, CONTROL_PORT, 0x00);
        assert_eq!(inb(&mut pit, &mut env, CH0), 0x01, "latched high byte");
        assert_eq!(
            inb(&mut pit, &mut env, CH0),
            0x01,
            "latch consumed, live high byte"
        );
    }

    #[test]
    fn latch_freezes_the_value_while_the_clock_runs() {
        let mut env = CountingEnv::at(EPOCH);
        let mut pit = Pit::new();
        program_100hz_rate_generator(&mut pit, &mut env);
        env.advance(5_000_000);
        out(&mut pit, &mut env, CONTROL_PORT, 0x00);

        env.advance(3_000_000);
        let low = inb(&mut pit, &mut env, CH0);
        env.advance(3_000_000);
        out(&mut pit, &mut env, CONTROL_PORT, 0x00); // ignored: previous latch not yet read
        let high = inb(&mut pit, &mut env, CH0);
        assert_eq!(u16::from_le_bytes([low, high]), RELOAD_100HZ - 5965);

        // The latch is gone once both bytes were read: the next latch sees the new time.
        // 11 ms = 13125 clocks -> 13125 - 11932 = 1193 into the second period.
        assert_eq!(latch_and_read_ch0(&mut pit, &mut env), RELOAD_100HZ - 1193);
    }

    #[test]
    fn unlatched_lohi_reads_follow_the_flip_flop() {
        let mut env = CountingEnv::at(EPOCH);
        let mut pit = Pit::new();
        program_100hz_rate_generator(&mut pit, &mut env);
        env.advance(5_000_000);
        let low = inb(&mut pit, &mut env, CH0);
        let high = inb(&mut pit, &mut env, CH0);
        assert_eq!(u16::from_le_bytes([low, high]), RELOAD_100HZ - 5965);
        let low_again = inb(&mut pit, &mut env, CH0);
        assert_eq!(low_again, low, "flip-flop back on the low byte");
    }

    #[test]
    fn clock_is_read_only_when_the_time_matters() {
        let mut env = CountingEnv::at(EPOCH);
        let mut pit = Pit::new();

        out(&mut pit, &mut env, CONTROL_PORT, 0x34);
        assert_eq!(env.clock_calls_since_last_check(), 0, "control word");
        out(&mut pit, &mut env, CONTROL_PORT, 0x00);
        inb(&mut pit, &mut env, CH0);
        inb(&mut pit, &mut env, CH0);
        assert_eq!(
            env.clock_calls_since_last_check(),
            0,
            "latch and reads of a stopped channel"
        );

        out(&mut pit, &mut env, CH0, 0x9c);
        assert_eq!(env.clock_calls_since_last_check(), 0, "first count byte");
        out(&mut pit, &mut env, CH0, 0x2e);
        assert_eq!(env.clock_calls_since_last_check(), 1, "count loaded");

        out(&mut pit, &mut env, CONTROL_PORT, 0x00);
        assert_eq!(
            env.clock_calls_since_last_check(),
            1,
            "latch of a running channel"
        );
        out(&mut pit, &mut env, CONTROL_PORT, 0x00);
        assert_eq!(env.clock_calls_since_last_check(), 0, "redundant latch");
        inb(&mut pit, &mut env, CH0);
        inb(&mut pit, &mut env, CH0);
        assert_eq!(env.clock_calls_since_last_check(), 0, "latched reads");

        inb(&mut pit, &mut env, CH0);
        inb(&mut pit, &mut env, CH0);
        assert_eq!(env.clock_calls_since_last_check(), 2, "one per live read");

        inb(&mut pit, &mut env, CONTROL_PORT);
        pit.channel0_period_ns();
        pit.channel0_epoch_ns();
        pit.channel0_tick_ns(5);
        pit.state_hash();
        assert_eq!(env.clock_calls_since_last_check(), 0, "queries");

        out(&mut pit, &mut env, CONTROL_PORT, 0xc2); // read-back count + status of ch0
        assert_eq!(
            env.clock_calls_since_last_check(),
            1,
            "read-back samples once"
        );
        assert_eq!(env.wall_calls, 0);
    }

    #[test]
    fn control_word_stops_the_count_until_a_new_one_is_loaded() {
        let mut env = CountingEnv::at(EPOCH);
        let mut pit = Pit::new();
        program_100hz_rate_generator(&mut pit, &mut env);
        env.advance(1_000_000);

        out(&mut pit, &mut env, CONTROL_PORT, 0x34);
        assert_eq!(pit.channel0_period_ns(), None);
        assert_eq!(pit.channel0_epoch_ns(), None);

        out(&mut pit, &mut env, CH0, 0xe8);
        assert_eq!(pit.channel0_epoch_ns(), None, "half a count starts nothing");
        out(&mut pit, &mut env, CH0, 0x03);
        assert_eq!(pit.channel0_epoch_ns(), Some(EPOCH + 1_000_000));
        assert_eq!(latch_and_read_ch0(&mut pit, &mut env), 1000);
    }

    #[test]
    fn control_word_resets_the_write_flip_flop() {
        let mut env = CountingEnv::at(EPOCH);
        let mut pit = Pit::new();
        out(&mut pit, &mut env, CONTROL_PORT, 0x34);
        out(&mut pit, &mut env, CH0, 0x55); // abandoned low byte
        out(&mut pit, &mut env, CONTROL_PORT, 0x34);
        out(&mut pit, &mut env, CH0, 0x10);
        out(&mut pit, &mut env, CH0, 0x00);
        assert_eq!(latch_and_read_ch0(&mut pit, &mut env), 0x10);
    }

    #[test]
    fn mode0_one_shot_counts_past_terminal_count_and_reports_a_deadline() {
        let mut env = CountingEnv::at(EPOCH);
        let mut pit = Pit::new();
        out(&mut pit, &mut env, CONTROL_PORT, 0x30); // ch0, lohi, mode 0
        out(&mut pit, &mut env, CH0, 0xe8);
        out(&mut pit, &mut env, CH0, 0x03); // 1000
        assert_eq!(pit.channel0_period_ns(), None);
        let deadline = pit.channel0_oneshot_deadline_ns().unwrap();
        assert_eq!(deadline, EPOCH + 838_096);

        env.inner.now_ns = deadline - 1;
        assert_eq!(latch_and_read_ch0(&mut pit, &mut env), 1);
        env.inner.now_ns = deadline;
        assert_eq!(latch_and_read_ch0(&mut pit, &mut env), 0);
        env.advance(1_000); // one more clock: wraps, keeps counting
        assert_eq!(latch_and_read_ch0(&mut pit, &mut env), 0xffff);
    }

    #[test]
    fn read_back_latches_status_then_count() {
        let mut env = CountingEnv::at(EPOCH);
        let mut pit = Pit::new();
        out(&mut pit, &mut env, CONTROL_PORT, 0x30); // mode 0
        out(&mut pit, &mut env, CONTROL_PORT, 0xe2);
        assert_eq!(
            inb(&mut pit, &mut env, CH0),
            0b0111_0000,
            "OUT low, null count, lohi, mode 0"
        );

        out(&mut pit, &mut env, CH0, 0xe8);
        out(&mut pit, &mut env, CH0, 0x03);
        env.advance(1_000_000); // past terminal count
        out(&mut pit, &mut env, CONTROL_PORT, 0xc2); // count and status
        assert_eq!(
            inb(&mut pit, &mut env, CH0),
            0b1011_0000,
            "OUT high, count loaded"
        );
        let low = inb(&mut pit, &mut env, CH0);
        let high = inb(&mut pit, &mut env, CH0);
        // 1 ms = 1193 clocks; 1000 - 1193 wraps to 65343.
        assert_eq!(u16::from_le_bytes([low, high]), 65343);
    }

    #[test]
    fn read_back_status_only_reports_mode_bcd_and_rate_generator_out() {
        let mut env = CountingEnv::at(EPOCH);
        let mut pit = Pit::new();
        out(&mut pit, &mut env, CONTROL_PORT, 0xb5); // ch2, lohi, mode 2, BCD
        out(&mut pit, &mut env, CH2, 0x10);
        out(&mut pit, &mut env, CH2, 0x00);
        out(&mut pit, &mut env, CONTROL_PORT, 0xe8); // status only, ch2
        assert_eq!(inb(&mut pit, &mut env, CH2), 0b1011_0101);
        assert_eq!(
            inb(&mut pit, &mut env, CH2),
            0x10,
            "no count latched: live low byte"
        );
    }

    #[test]
    fn channel2_one_shot_as_used_for_tsc_calibration() {
        let mut env = CountingEnv::at(EPOCH);
        let mut pit = Pit::new();
        out(&mut pit, &mut env, CONTROL_PORT, 0xb0); // ch2, lohi, mode 0
        out(&mut pit, &mut env, CH2, 0xff);
        out(&mut pit, &mut env, CH2, 0xff);
        let msb_at_start = {
            inb(&mut pit, &mut env, CH2);
            inb(&mut pit, &mut env, CH2)
        };
        env.advance(1_000_000);
        inb(&mut pit, &mut env, CH2);
        let msb_later = inb(&mut pit, &mut env, CH2);
        assert_eq!(msb_at_start, 0xff);
        assert!(msb_later < msb_at_start);
        assert_eq!(pit.channel0_epoch_ns(), None, "channel 0 untouched");
    }

    #[test]
    fn control_port_reads_float() {
        let mut env = CountingEnv::at(EPOCH);
        let mut pit = Pit::new();
        assert_eq!(inb(&mut pit, &mut env, CONTROL_PORT), 0xff);
    }

    #[test]
    fn same_inputs_give_same_state_hash() {
        let run = || {
            let mut env = CountingEnv::at(EPOCH);
            let mut pit = Pit::new();
            program_100hz_rate_generator(&mut pit, &mut env);
            env.advance(123_456);
            out(&mut pit, &mut env, CONTROL_PORT, 0x00);
            (pit.state_hash(), inb(&mut pit, &mut env, CH0))
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn state_hash_tracks_programming_and_latches() {
        let mut env = CountingEnv::at(EPOCH);
        let mut pit = Pit::new();
        let fresh = pit.state_hash();
        out(&mut pit, &mut env, CONTROL_PORT, 0x34);
        let programmed = pit.state_hash();
        assert_ne!(programmed, fresh);
        out(&mut pit, &mut env, CH0, 0x9c);
        let half_loaded = pit.state_hash();
        assert_ne!(half_loaded, programmed);
        out(&mut pit, &mut env, CH0, 0x2e);
        let running = pit.state_hash();
        assert_ne!(running, half_loaded);
        out(&mut pit, &mut env, CONTROL_PORT, 0x00);
        assert_ne!(pit.state_hash(), running);

        let mut other_epoch = Pit::new();
        let mut later = CountingEnv::at(EPOCH + 1);
        program_100hz_rate_generator(&mut other_epoch, &mut later);
        let mut same_epoch = Pit::new();
        program_100hz_rate_generator(&mut same_epoch, &mut CountingEnv::at(EPOCH));
        assert_ne!(other_epoch.state_hash(), same_epoch.state_hash());
    }

    mod saved_state {
        use proptest::collection::vec;
        use proptest::prelude::*;

        use super::*;
        use crate::devices::state::twins::{self, PortOp, Seen};

        #[derive(Debug, Clone)]
        enum PitOp {
            Port(PortOp),
            /// What the VMM asks when it schedules IRQ0.
            Schedule,
        }

        fn apply(pit: &mut Pit, op: &PitOp, env: &mut FakeEnv) -> Seen {
            match op {
                PitOp::Port(port_op) => port_op.apply(pit, env),
                PitOp::Schedule => Seen::Times(vec![
                    pit.channel0_period_ns(),
                    pit.channel0_epoch_ns(),
                    pit.channel0_tick_ns(1),
                    pit.channel0_tick_ns(7),
                    pit.channel0_oneshot_deadline_ns(),
                ]),
            }
        }

        fn pit_op() -> impl Strategy<Value = PitOp> {
            prop_oneof![
                8 => twins::port_op(&[CH0, 0x41, CH2, CONTROL_PORT]).prop_map(PitOp::Port),
                1 => Just(PitOp::Schedule),
            ]
        }

        fn write(pit: &mut Pit, env: &mut FakeEnv, port: u16, value: u8) {
            pit.write(port, value, env);
        }

        fn read(pit: &mut Pit, env: &mut FakeEnv, port: u16) -> u8 {
            pit.read(port, env)
        }

        /// Every flip-flop and latch in use: channel 0 runs at 100 Hz with a latched count
        /// half read, channel 1 has half a count written, channel 2 runs one-shot with its
        /// status and count latched by read-back.
        fn busy_pit(env: &mut FakeEnv) -> Pit {
            let mut pit = Pit::new();
            env.now_ns = EPOCH;
            write(&mut pit, env, CONTROL_PORT, 0x34);
            write(&mut pit, env, CH0, 0x9c);
            write(&mut pit, env, CH0, 0x2e);
            write(&mut pit, env, CONTROL_PORT, 0x70); // ch1, lohi, mode 0
            write(&mut pit, env, 0x41, 0x12);
            write(&mut pit, env, CONTROL_PORT, 0xb0); // ch2, lohi, mode 0
            write(&mut pit, env, CH2, 0xff);
            write(&mut pit, env, CH2, 0x7f);
            env.now_ns += 3_000_000;
            write(&mut pit, env, CONTROL_PORT, 0x00);
            read(&mut pit, env, CH0);
            write(&mut pit, env, CONTROL_PORT, 0xc8); // count and status of ch2
            pit
        }

        fn start(kind: u8, env: &mut FakeEnv) -> Pit {
            match kind {
                0 => Pit::new(),
                _ => busy_pit(env),
            }
        }

        fn save_and_restore(pit: &Pit) -> Pit {
            Pit::restore(&twins::through_json(&pit.save())).unwrap()
        }

        #[test]
        fn busy_pit_restores_exactly() {
            let mut env = FakeEnv::default();
            let original = busy_pit(&mut env);
            let mut restored = save_and_restore(&original);
            assert_eq!(restored.save(), original.save());
            assert_eq!(restored.state_hash(), original.state_hash());
            assert_eq!(restored.channel0_tick_ns(1), Some(EPOCH + 10_000_151));

            // Much later, the latched values still come out, in flip-flop order.
            env.now_ns += 1_000_000_000;
            // 3 ms = 3579 clocks.
            assert_eq!(
                read(&mut restored, &mut env, CH0),
                ((RELOAD_100HZ - 3579) >> 8) as u8
            );
            assert_eq!(
                read(&mut restored, &mut env, CH2),
                0b0011_0000,
                "status first: OUT still low, count loaded, lohi, mode 0"
            );
            let low = read(&mut restored, &mut env, CH2);
            let high = read(&mut restored, &mut env, CH2);
            assert_eq!(u16::from_le_bytes([low, high]), 0x7fff - 3579);
            // Channel 1 still waits for its high byte.
            write(&mut restored, &mut env, 0x41, 0x00);
            write(&mut restored, &mut env, CONTROL_PORT, 0x40);
            assert_eq!(read(&mut restored, &mut env, 0x41), 0x12);
        }

        proptest! {
            #[test]
            fn restored_pit_is_indistinguishable(
                kind in 0u8..2,
                before in vec(pit_op(), 0..40),
                after in vec(pit_op(), 1..80),
            ) {
                let mut env = FakeEnv::default();
                let mut original = start(kind, &mut env);
                for op in &before {
                    apply(&mut original, op, &mut env);
                }
                let mut restored = save_and_restore(&original);
                prop_assert_eq!(restored.save(), original.save());
                twins::run_twins(&mut original, &mut restored, &env, &after, apply)?;
                prop_assert_eq!(restored.save(), original.save());
            }
        }

        fn refusal(edit: impl FnOnce(&mut PitState)) -> String {
            let mut state = busy_pit(&mut FakeEnv::default()).save();
            edit(&mut state);
            Pit::restore(&state).unwrap_err().to_string()
        }

        #[test]
        fn corrupt_pit_states_are_refused() {
            assert_eq!(
                refusal(|s| s.channels[2].mode = 9),
                "PIT channel 2: mode 9 is not a valid 8254 mode"
            );
            let message = refusal(|s| s.channels[0].access = 0);
            assert!(message.starts_with("PIT channel 0: access 0"), "{message}");
            let message = refusal(|s| s.channels[1].access = 1);
            assert!(
                message.starts_with("PIT channel 1: the write flip-flop"),
                "{message}"
            );
            let message = refusal(|s| s.channels[0].access = 2);
            assert!(
                message.starts_with("PIT channel 0: the read flip-flop"),
                "{message}"
            );
        }
    }
}
