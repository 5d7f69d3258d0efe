//! The port-I/O bus: the one path by which the guest reaches a device. Record and replay do not
//! intercept individual devices; they supply the [`DeviceEnv`] that the bus hands to every access.

use crate::devices::debug_exit::DebugExit;
use crate::devices::pic::DualPic;
use crate::devices::pit::Pit;
use crate::devices::rtc::Rtc;
use crate::devices::serial::Serial;
use crate::devices::{DeviceEnv, PioDevice};

/// The standard PC devices of an understudy guest.
#[derive(Debug)]
pub struct Devices {
    pub pic: DualPic,
    pub pit: Pit,
    pub rtc: Rtc,
    pub serial: Serial,
    pub debug_exit: DebugExit,
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

#[derive(Debug)]
pub struct Bus {
    pub devices: Devices,
    /// Accesses to ports nothing decodes (reads float high, writes vanish, as on a PC).
    pub unclaimed_accesses: u64,
}

impl Default for Bus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus {
    pub fn new() -> Self {
        Self {
            devices: Devices {
                pic: DualPic::new(),
                pit: Pit::new(),
                rtc: Rtc::new(),
                serial: Serial::new(),
                debug_exit: DebugExit::new(),
            },
            unclaimed_accesses: 0,
        }
    }

    fn device(&mut self, port: u16) -> Option<&mut dyn PioDevice> {
        let range = PC_LAYOUT
            .iter()
            .find(|r| port >= r.base && port - r.base < r.len)?;
        let d = &mut self.devices;
        Some(match range.device {
            DeviceId::Pic => &mut d.pic,
            DeviceId::Pit => &mut d.pit,
            DeviceId::Rtc => &mut d.rtc,
            DeviceId::Serial => &mut d.serial,
            DeviceId::DebugExit => &mut d.debug_exit,
        })
    }

    pub fn read(&mut self, port: u16, data: &mut [u8], env: &mut dyn DeviceEnv) {
        match self.device(port) {
            Some(dev) => dev.read(port, data, env),
            None => {
                self.unclaimed_accesses += 1;
                data.fill(0xff);
            }
        }
    }

    pub fn write(&mut self, port: u16, data: &[u8], env: &mut dyn DeviceEnv) {
        match self.device(port) {
            Some(dev) => dev.write(port, data, env),
            None => self.unclaimed_accesses += 1,
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
        ];
        let mut bytes = Vec::with_capacity(parts.len() * 8);
        for p in parts {
            bytes.extend_from_slice(&p.to_le_bytes());
        }
        xxhash_rust::xxh3::xxh3_64(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::FakeEnv;

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
    fn debug_exit_port_reaches_the_device() {
        let mut bus = Bus::new();
        let mut env = FakeEnv::default();
        bus.write(0xf4, &[7], &mut env);
        assert_eq!(bus.devices.debug_exit.take_exit_request(), Some(7));
    }
}
