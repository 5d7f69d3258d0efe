//! The MC146818-style CMOS real-time clock at ports 0x70 (index) and 0x71 (data).
//!
//! The time registers (seconds, minutes, hours, weekday, day, month, year, century at 0x32)
//! are not stored: every read of one of them through 0x71 asks
//! [`DeviceEnv::wall_clock_unix_secs`] once and converts the answer to a UTC calendar date.
//! Nothing else consults the environment, so reads of RAM, status registers or the index
//! port are free of logged inputs.
//!
//! Simplifications:
//! - Writes to the time registers are ignored: the guest cannot set the clock. Status B's
//!   SET bit is stored but has no effect.
//! - No interrupts: status B's PIE/AIE/UIE are stored and read back but never fire; status C
//!   always reads 0. Status A's UIP bit always reads 0, which is safe because a read always
//!   sees a consistent snapshot of the time.
//! - Status B bit 2 (binary vs BCD) and bit 1 (24 vs 12 hour) are honoured; other bits are
//!   plain storage.
//! - Alarm registers (0x01, 0x03, 0x05) and everything from 0x0e upwards except 0x32 are
//!   plain CMOS RAM, zero at power-on.
//! - Reading the index port returns 0xff (it is write-only on real chipsets); bit 7 of an
//!   index write (the NMI mask) is dropped.
//! - The century register holds `year / 100` modulo 100, so it stays two digits even for
//!   clocks beyond year 9999.

use super::pic::StateHasher;
use super::state::{DeviceStateError, RtcState};
use super::{DeviceEnv, PioDevice, StateHash};

const INDEX_PORT: u16 = 0x70;
const CMOS_BYTES: usize = 128;
const DATA_PORT: u16 = 0x71;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_STATUS_C: u8 = 0x0c;
const REG_STATUS_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

const STATUS_A_UIP: u8 = 0x80;
/// 32.768 kHz time base, 1024 Hz periodic rate: what firmware programs.
const STATUS_A_DEFAULT: u8 = 0x26;
const STATUS_B_24H: u8 = 0x02;
const STATUS_B_BINARY: u8 = 0x04;
const STATUS_B_DEFAULT: u8 = STATUS_B_24H;
/// VRT: the battery is fine and RAM/time are valid.
const STATUS_D_VALID: u8 = 0x80;

const HOUR_PM: u8 = 0x80;

/// A UTC calendar date and time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CivilTime {
    year: u64,
    month: u8,
    day: u8,
    /// 1 = Sunday .. 7 = Saturday, as the RTC counts.
    weekday: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl CivilTime {
    fn from_unix_secs(secs: u64) -> Self {
        let days = secs / 86_400;
        let second_of_day = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        Self {
            year,
            month,
            day,
            // 1970-01-01 was a Thursday (5).
            weekday: ((days + 4) % 7) as u8 + 1,
            hour: (second_of_day / 3600) as u8,
            minute: (second_of_day / 60 % 60) as u8,
            second: (second_of_day % 60) as u8,
        }
    }
}

/// Howard Hinnant's `civil_from_days`, restricted to days on or after 1970-01-01 (the
/// environment hands out unsigned Unix time), so all arithmetic stays unsigned.
/// Returns (year, month 1..=12, day 1..=31).
fn civil_from_days(days_since_epoch: u64) -> (u64, u8, u8) {
    // Shift the epoch to 0000-03-01 so leap days fall at the end of each year.
    let z = days_since_epoch + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_based_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_based_month + 2) / 5 + 1;
    let month = if march_based_month < 10 {
        march_based_month + 3
    } else {
        march_based_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month as u8, day as u8)
}

fn to_bcd(value: u8) -> u8 {
    ((value / 10) << 4) | (value % 10)
}

/// The CMOS RTC and its 128 bytes of RAM.
#[derive(Debug, Clone)]
pub struct Rtc {
    index: u8,
    /// Backing store for every register that is not a time register, status ones included.
    cmos: [u8; CMOS_BYTES],
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new()
    }
}

impl Rtc {
    /// The RTC with CMOS RAM as at power-on (status registers at their defaults).
    pub fn new() -> Self {
        let mut cmos = [0u8; CMOS_BYTES];
        cmos[usize::from(REG_STATUS_A)] = STATUS_A_DEFAULT;
        cmos[usize::from(REG_STATUS_B)] = STATUS_B_DEFAULT;
        cmos[usize::from(REG_STATUS_D)] = STATUS_D_VALID;
        Self { index: 0, cmos }
    }

    /// The index register and the CMOS RAM, for [`Rtc::restore`]. The time is an input, not
    /// state: the restored RTC reads whatever its [`DeviceEnv`] says.
    pub fn save(&self) -> RtcState {
        RtcState {
            index: self.index,
            cmos: self.cmos.to_vec(),
        }
    }

    /// An RTC in exactly the saved state. Refuses an index past the RAM (every data-port
    /// access indexes it) and RAM of the wrong size.
    pub fn restore(state: &RtcState) -> Result<Self, DeviceStateError> {
        if usize::from(state.index) >= CMOS_BYTES {
            return Err(DeviceStateError::RtcIndex { index: state.index });
        }
        let cmos = <[u8; CMOS_BYTES]>::try_from(state.cmos.as_slice()).map_err(|_| {
            DeviceStateError::RtcCmosLength {
                len: state.cmos.len(),
            }
        })?;
        Ok(Self {
            index: state.index,
            cmos,
        })
    }

    fn is_time_register(index: u8) -> bool {
        matches!(
            index,
            REG_SECONDS
                | REG_MINUTES
                | REG_HOURS
                | REG_WEEKDAY
                | REG_DAY
                | REG_MONTH
                | REG_YEAR
                | REG_CENTURY
        )
    }

    fn status_b(&self) -> u8 {
        self.cmos[usize::from(REG_STATUS_B)]
    }

    fn read_data(&self, env: &mut dyn DeviceEnv) -> u8 {
        let index = self.index;
        if Self::is_time_register(index) {
            let now = CivilTime::from_unix_secs(env.wall_clock_unix_secs());
            return self.time_register(index, &now);
        }
        match index {
            REG_STATUS_C => 0,
            _ => self.cmos[usize::from(index)],
        }
    }

    fn write_data(&mut self, value: u8) {
        let index = self.index;
        match index {
            _ if Self::is_time_register(index) => {}
            REG_STATUS_A => {
                self.cmos[usize::from(index)] = value & !STATUS_A_UIP;
            }
            REG_STATUS_C | REG_STATUS_D => {}
            _ => self.cmos[usize::from(index)] = value,
        }
    }

    fn time_register(&self, index: u8, now: &CivilTime) -> u8 {
        let binary = self.status_b() & STATUS_B_BINARY != 0;
        let encode = |v: u8| if binary { v } else { to_bcd(v) };
        match index {
            REG_SECONDS => encode(now.second),
            REG_MINUTES => encode(now.minute),
            REG_HOURS => {
                if self.status_b() & STATUS_B_24H != 0 {
                    encode(now.hour)
                } else {
                    let twelve_hour = match now.hour % 12 {
                        0 => 12,
                        h => h,
                    };
                    let pm = if now.hour >= 12 { HOUR_PM } else { 0 };
                    encode(twelve_hour) | pm
                }
            }
            REG_WEEKDAY => encode(now.weekday),
            REG_DAY => encode(now.day),
            REG_MONTH => encode(now.month),
            REG_YEAR => encode((now.year % 100) as u8),
            REG_CENTURY => encode((now.year / 100 % 100) as u8),
            _ => 0xff,
        }
    }
}

impl PioDevice for Rtc {
    fn read(&mut self, port: u16, env: &mut dyn DeviceEnv) -> u8 {
        match port {
            DATA_PORT => self.read_data(env),
            _ => 0xff,
        }
    }

    fn write(&mut self, port: u16, value: u8, _env: &mut dyn DeviceEnv) {
        match port {
            INDEX_PORT => self.index = value & 0x7f,
            DATA_PORT => self.write_data(value),
            _ => {}
        }
    }
}

impl StateHash for Rtc {
    /// Covers the index register and the CMOS RAM (status registers included); the time is
    /// an input, not state.
    fn state_hash(&self) -> u64 {
        StateHasher::new(b"cmos-rtc")
            .u8(self.index)
            .bytes(&self.cmos)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::FakeEnv;

    /// Reads every time register the way Linux's `mc146818_get_time` does.
    #[derive(Debug, PartialEq, Eq)]
    struct Reading {
        century: u8,
        year: u8,
        month: u8,
        day: u8,
        weekday: u8,
        hour: u8,
        minute: u8,
        second: u8,
    }

    fn at(wall_secs: u64) -> FakeEnv {
        FakeEnv {
            now_ns: 0,
            wall_secs,
        }
    }

    fn cmos_read(rtc: &mut Rtc, env: &mut FakeEnv, index: u8) -> u8 {
        rtc.write(INDEX_PORT, index, env);
        rtc.read(DATA_PORT, env)
    }

    fn cmos_write(rtc: &mut Rtc, env: &mut FakeEnv, index: u8, value: u8) {
        rtc.write(INDEX_PORT, index, env);
        rtc.write(DATA_PORT, value, env);
    }

    fn read_clock(rtc: &mut Rtc, env: &mut FakeEnv) -> Reading {
        Reading {
            century: cmos_read(rtc, env, REG_CENTURY),
            year: cmos_read(rtc, env, REG_YEAR),
            month: cmos_read(rtc, env, REG_MONTH),
            day: cmos_read(rtc, env, REG_DAY),
            weekday: cmos_read(rtc, env, REG_WEEKDAY),
            hour: cmos_read(rtc, env, REG_HOURS),
            minute: cmos_read(rtc, env, REG_MINUTES),
            second: cmos_read(rtc, env, REG_SECONDS),
        }
    }

    fn binary_mode(rtc: &mut Rtc, env: &mut FakeEnv) {
        cmos_write(rtc, env, REG_STATUS_B, STATUS_B_24H | STATUS_B_BINARY);
    }

    #[test]
    fn unix_epoch_is_thursday_1970_01_01_in_bcd() {
        let mut rtc = Rtc::new();
        let reading = read_clock(&mut rtc, &mut at(0));
        assert_eq!(
            reading,
            Reading {
                century: 0x19,
                year: 0x70,
                month: 0x01,
                day: 0x01,
                weekday: 5,
                hour: 0x00,
                minute: 0x00,
                second: 0x00,
            }
        );
    }

    #[test]
    fn a_2026_timestamp_in_bcd_and_binary() {
        // `date -u -d @1795313411` says: 2026-11-22 02:10:11, a Sunday.
        let mut rtc = Rtc::new();
        let mut env = at(1_795_313_411);
        assert_eq!(
            read_clock(&mut rtc, &mut env),
            Reading {
                century: 0x20,
                year: 0x26,
                month: 0x11,
                day: 0x22,
                weekday: 1,
                hour: 0x02,
                minute: 0x10,
                second: 0x11,
            }
        );

        binary_mode(&mut rtc, &mut env);
        assert_eq!(
            read_clock(&mut rtc, &mut env),
            Reading {
                century: 20,
                year: 26,
                month: 11,
                day: 22,
                weekday: 1,
                hour: 2,
                minute: 10,
                second: 11,
            }
        );
    }

    #[test]
    fn leap_day_2024() {
        // 2024-02-29 13:45:07 UTC, a Thursday.
        let mut rtc = Rtc::new();
        let mut env = at(1_709_214_307);
        binary_mode(&mut rtc, &mut env);
        assert_eq!(
            read_clock(&mut rtc, &mut env),
            Reading {
                century: 20,
                year: 24,
                month: 2,
                day: 29,
                weekday: 5,
                hour: 13,
                minute: 45,
                second: 7,
            }
        );
        // One day later is March 1st.
        env.wall_secs += 86_400;
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_MONTH), 3);
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_DAY), 1);
    }

    #[test]
    fn century_boundaries_follow_the_gregorian_rules() {
        let mut rtc = Rtc::new();
        // 2000-03-01 00:00:00: 2000 was a leap year, so Feb 29 came before it.
        let mut env = at(951_868_800);
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_MONTH), 0x03);
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_DAY), 0x01);
        env.wall_secs -= 86_400;
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_MONTH), 0x02);
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_DAY), 0x29);

        // 2100-01-01 00:00:00, a Friday.
        env.wall_secs = 4_102_444_800;
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_CENTURY), 0x21);
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_YEAR), 0x00);
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_WEEKDAY), 6);
    }

    #[test]
    fn civil_conversion_agrees_with_day_counting_over_centuries() {
        // Walk day by day from 1970 and check each date follows the previous one.
        let mut previous = civil_from_days(0);
        assert_eq!(previous, (1970, 1, 1));
        for days in 1..(400 * 366) {
            let current = civil_from_days(days);
            let (y, m, d) = previous;
            let days_in_month = match m {
                2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            let expected = if d < days_in_month {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
            assert_eq!(current, expected, "day {days}");
            previous = current;
        }
    }

    #[test]
    fn twelve_hour_mode_sets_the_pm_bit() {
        let mut rtc = Rtc::new();
        let mut env = at(1_709_214_307); // 13:45:07
        cmos_write(&mut rtc, &mut env, REG_STATUS_B, 0x00); // 12h, BCD
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_HOURS), HOUR_PM | 0x01);

        cmos_write(&mut rtc, &mut env, REG_STATUS_B, STATUS_B_BINARY); // 12h, binary
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_HOURS), HOUR_PM | 1);

        env.wall_secs = 0; // midnight is 12 AM
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_HOURS), 12);
        env.wall_secs = 12 * 3600; // noon is 12 PM
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_HOURS), HOUR_PM | 12);
    }

    #[test]
    fn status_registers_have_their_documented_defaults() {
        let mut rtc = Rtc::new();
        let mut env = at(0);
        assert_eq!(
            cmos_read(&mut rtc, &mut env, REG_STATUS_A),
            STATUS_A_DEFAULT
        );
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_STATUS_B), 0x02);
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_STATUS_C), 0x00);
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_STATUS_D), 0x80);
    }

    #[test]
    fn status_register_writes() {
        let mut rtc = Rtc::new();
        let mut env = at(0);
        cmos_write(&mut rtc, &mut env, REG_STATUS_A, 0xa6);
        assert_eq!(
            cmos_read(&mut rtc, &mut env, REG_STATUS_A),
            0x26,
            "UIP stays clear"
        );
        cmos_write(&mut rtc, &mut env, REG_STATUS_B, 0x46);
        assert_eq!(
            cmos_read(&mut rtc, &mut env, REG_STATUS_B),
            0x46,
            "stored verbatim"
        );
        cmos_write(&mut rtc, &mut env, REG_STATUS_C, 0xff);
        cmos_write(&mut rtc, &mut env, REG_STATUS_D, 0x00);
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_STATUS_C), 0x00);
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_STATUS_D), 0x80);
    }

    #[test]
    fn time_registers_ignore_writes() {
        let mut rtc = Rtc::new();
        let mut env = at(1_795_313_411);
        cmos_write(&mut rtc, &mut env, REG_SECONDS, 0x59);
        cmos_write(&mut rtc, &mut env, REG_CENTURY, 0x19);
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_SECONDS), 0x11);
        assert_eq!(cmos_read(&mut rtc, &mut env, REG_CENTURY), 0x20);
    }

    #[test]
    fn index_register_selects_and_drops_the_nmi_bit() {
        let mut rtc = Rtc::new();
        let mut env = at(0);
        cmos_write(&mut rtc, &mut env, 0x40, 0xaa);
        cmos_write(&mut rtc, &mut env, 0x41, 0xbb);

        // With the NMI-disable bit set the same register is selected.
        rtc.write(INDEX_PORT, 0x80 | 0x40, &mut env);
        assert_eq!(rtc.read(DATA_PORT, &mut env), 0xaa);

        // The index sticks across data accesses.
        assert_eq!(rtc.read(DATA_PORT, &mut env), 0xaa);

        assert_eq!(
            rtc.read(INDEX_PORT, &mut env),
            0xff,
            "index port is write-only"
        );
    }

    #[test]
    fn cmos_ram_is_zeroed_and_writable() {
        let mut rtc = Rtc::new();
        let mut env = at(0);
        for index in (0x0e..0x80).filter(|&i| i != REG_CENTURY) {
            assert_eq!(cmos_read(&mut rtc, &mut env, index), 0, "index {index:#x}");
            cmos_write(&mut rtc, &mut env, index, index ^ 0x5a);
        }
        for index in (0x0e..0x80).filter(|&i| i != REG_CENTURY) {
            assert_eq!(cmos_read(&mut rtc, &mut env, index), index ^ 0x5a);
        }
    }

    #[test]
    fn alarm_registers_are_plain_storage() {
        let mut rtc = Rtc::new();
        let mut env = at(0);
        for alarm in [0x01, 0x03, 0x05] {
            cmos_write(&mut rtc, &mut env, alarm, 0x30 + alarm);
            assert_eq!(cmos_read(&mut rtc, &mut env, alarm), 0x30 + alarm);
        }
    }

    #[test]
    fn wall_clock_is_consulted_only_for_time_registers() {
        #[derive(Debug, Default)]
        struct CountingEnv {
            wall_calls: usize,
            clock_calls: usize,
        }
        impl DeviceEnv for CountingEnv {
            fn clock_ns(&mut self) -> u64 {
                self.clock_calls += 1;
                0
            }
            fn wall_clock_unix_secs(&mut self) -> u64 {
                self.wall_calls += 1;
                0
            }
        }

        let mut rtc = Rtc::new();
        let mut env = CountingEnv::default();
        for index in 0..0x80u8 {
            rtc.write(INDEX_PORT, index, &mut env);
            rtc.write(DATA_PORT, 0, &mut env);
            rtc.read(INDEX_PORT, &mut env);
        }
        assert_eq!(env.wall_calls, 0, "writes and index accesses");

        for index in 0..0x80u8 {
            rtc.write(INDEX_PORT, index, &mut env);
            rtc.read(DATA_PORT, &mut env);
        }
        assert_eq!(env.wall_calls, 8, "one per time register read");
        assert_eq!(env.clock_calls, 0);
    }

    #[test]
    fn state_hash_covers_index_and_ram_but_not_time() {
        let mut rtc = Rtc::new();
        let mut env = at(0);
        let fresh = rtc.state_hash();

        cmos_read(&mut rtc, &mut env, REG_SECONDS);
        assert_eq!(
            rtc.state_hash(),
            fresh,
            "index 0 and a time read change nothing"
        );

        rtc.write(INDEX_PORT, 0x20, &mut env);
        let indexed = rtc.state_hash();
        assert_ne!(indexed, fresh);
        rtc.write(DATA_PORT, 0x01, &mut env);
        assert_ne!(rtc.state_hash(), indexed);

        let mut same = Rtc::new();
        cmos_write(&mut same, &mut at(99), 0x20, 0x01);
        assert_eq!(same.state_hash(), rtc.state_hash());
    }

    mod saved_state {
        use proptest::collection::vec;
        use proptest::prelude::*;

        use super::*;
        use crate::devices::state::twins::{self, PortOp, Seen};

        /// Index writes aimed at the registers with behaviour (time, status), which arbitrary
        /// bytes would rarely select.
        fn interesting_index() -> impl Strategy<Value = PortOp> {
            proptest::sample::select(vec![
                REG_SECONDS,
                REG_HOURS,
                REG_YEAR,
                REG_CENTURY,
                REG_STATUS_A,
                REG_STATUS_B,
                REG_STATUS_C,
                REG_STATUS_D,
                0x80 | REG_STATUS_B,
            ])
            .prop_map(|index| PortOp::Write {
                port: INDEX_PORT,
                data: vec![index],
            })
        }

        fn rtc_op() -> impl Strategy<Value = PortOp> {
            prop_oneof![
                3 => twins::port_op(&[INDEX_PORT, DATA_PORT]),
                1 => interesting_index(),
            ]
        }

        fn apply(rtc: &mut Rtc, op: &PortOp, env: &mut FakeEnv) -> Seen {
            op.apply(rtc, env)
        }

        /// RAM written, 12-hour binary mode, and an index left pointing at the hours.
        fn busy_rtc(env: &mut FakeEnv) -> Rtc {
            let mut rtc = Rtc::new();
            cmos_write(&mut rtc, env, 0x40, 0xaa);
            cmos_write(&mut rtc, env, REG_STATUS_A, 0x2f);
            cmos_write(&mut rtc, env, REG_STATUS_B, STATUS_B_BINARY);
            rtc.write(INDEX_PORT, 0x80 | REG_HOURS, env);
            rtc
        }

        fn save_and_restore(rtc: &Rtc) -> Rtc {
            Rtc::restore(&twins::through_json(&rtc.save())).unwrap()
        }

        #[test]
        fn busy_rtc_restores_exactly() {
            let mut env = at(1_709_214_307); // 13:45:07
            let original = busy_rtc(&mut env);
            let mut restored = save_and_restore(&original);
            assert_eq!(restored.save(), original.save());
            assert_eq!(restored.state_hash(), original.state_hash());

            assert_eq!(
                restored.read(DATA_PORT, &mut env),
                HOUR_PM | 1,
                "hours still selected, 12h binary"
            );
            assert_eq!(cmos_read(&mut restored, &mut env, 0x40), 0xaa);
            assert_eq!(cmos_read(&mut restored, &mut env, REG_STATUS_A), 0x2f);
        }

        proptest! {
            #[test]
            fn restored_rtc_is_indistinguishable(
                busy in any::<bool>(),
                wall_secs in 0u64..5_000_000_000,
                before in vec(rtc_op(), 0..40),
                after in vec(rtc_op(), 1..80),
            ) {
                let mut env = at(wall_secs);
                let mut original = if busy { busy_rtc(&mut env) } else { Rtc::new() };
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
        fn corrupt_rtc_states_are_refused() {
            let good = busy_rtc(&mut at(0)).save();

            let mut state = good.clone();
            state.index = 0x80;
            let message = Rtc::restore(&state).unwrap_err().to_string();
            assert!(message.starts_with("RTC: register index 0x80"), "{message}");

            let mut state = good;
            state.cmos.pop();
            let message = Rtc::restore(&state).unwrap_err().to_string();
            assert_eq!(message, "RTC: CMOS RAM has 127 bytes, not 128");
        }
    }
}
