//! CMOS RTC, read once at boot for the wall-clock line.

use crate::fmt::LineBuf;
use crate::port::{inb, outb};

const INDEX: u16 = 0x70;
const DATA: u16 = 0x71;

const REG_SEC: u8 = 0x00;
const REG_MIN: u8 = 0x02;
const REG_HOUR: u8 = 0x04;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0a;
const REG_STATUS_B: u8 = 0x0b;
const REG_CENTURY: u8 = 0x32;

const STATUS_A_UIP: u8 = 0x80;
const STATUS_B_24H: u8 = 0x02;
const STATUS_B_BINARY: u8 = 0x04;
const HOUR_PM: u8 = 0x80;

/// Each poll is a VM exit; the update window is only ~2 ms, so a handful is
/// enough in practice and keeps boot bounded.
const MAX_UIP_POLLS: u32 = 16;

#[derive(Debug, Clone, Copy)]
pub struct DateTime {
    pub year: u32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

fn read(reg: u8) -> u8 {
    // SAFETY: the RTC is ours alone and only read at boot, before
    // interrupts are enabled.
    unsafe {
        outb(INDEX, reg);
        inb(DATA)
    }
}

fn from_bcd(v: u8) -> u8 {
    (v >> 4) * 10 + (v & 0x0f)
}

pub fn read_datetime() -> DateTime {
    let mut polls = 0;
    while read(REG_STATUS_A) & STATUS_A_UIP != 0 && polls < MAX_UIP_POLLS {
        polls += 1;
    }
    let status_b = read(REG_STATUS_B);
    let raw_hour = read(REG_HOUR);
    let decode = |v: u8| {
        if status_b & STATUS_B_BINARY != 0 {
            v
        } else {
            from_bcd(v)
        }
    };

    let mut hour = decode(raw_hour & !HOUR_PM);
    if status_b & STATUS_B_24H == 0 {
        // 12-hour mode: 12 AM is 0, 12 PM is 12.
        hour %= 12;
        if raw_hour & HOUR_PM != 0 {
            hour += 12;
        }
    }
    let century = match decode(read(REG_CENTURY)) {
        c @ 19..=21 => u32::from(c),
        _ => 20,
    };
    DateTime {
        year: century * 100 + u32::from(decode(read(REG_YEAR))),
        month: decode(read(REG_MONTH)),
        day: decode(read(REG_DAY)),
        hour,
        minute: decode(read(REG_MIN)),
        second: decode(read(REG_SEC)),
    }
}

impl DateTime {
    pub fn format(&self, line: &mut LineBuf) {
        let two = |line: &mut LineBuf, v: u8| {
            if v < 10 {
                line.byte(b'0');
            }
            line.dec(u64::from(v));
        };
        line.dec(u64::from(self.year)).byte(b'-');
        two(line, self.month);
        line.byte(b'-');
        two(line, self.day);
        line.byte(b' ');
        two(line, self.hour);
        line.byte(b':');
        two(line, self.minute);
        line.byte(b':');
        two(line, self.second);
    }
}
