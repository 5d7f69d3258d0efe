//! The virtio-mmio transport (virtio 1.x, register layout version 2): feature negotiation,
//! the device status, queue set-up and notification, and the interrupt status register.
//!
//! A driver that breaks the protocol (a register written at the wrong time, a queue set up
//! with a size the device does not offer, rings outside memory) never makes the VMM fail: the
//! write is ignored, or the device flags `DEVICE_NEEDS_RESET`, and the reason is counted and
//! traced. The guest is the one that is wrong, and a fault-tolerant VMM must survive its own
//! guest.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

use super::{GuestWrites, QueueError, VIRTIO_F_VERSION_1, VirtioDevice};

/// Bytes of register space: registers up to 0x100, then the device's configuration.
pub const MMIO_LEN: u64 = 0x200;

/// "virt", little-endian.
const MAGIC: u32 = 0x7472_6976;
/// Register layout version 2: virtio 1.x ("modern") only.
const VERSION: u32 = 2;
/// The vendor ID we report: "UNDS".
const VENDOR_ID: u32 = 0x5344_4e55;

mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio 1.x §2.1).
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is set up and running.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = 8;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    /// The driver gave up on the device.
    pub const FAILED: u32 = 128;
}

/// Interrupt status bits.
pub mod interrupt {
    /// The device put buffers in a used ring.
    pub const USED_BUFFER: u32 = 1;
    /// The configuration (or the device's status) changed.
    pub const CONFIG_CHANGE: u32 = 2;
}

/// Things the driver did wrong, counted (the guest's fault, never the VMM's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProtocolErrors {
    /// Writes the transport ignored: a register written in the wrong state, a read-only
    /// register written, a misaligned or odd-sized access.
    pub ignored_writes: u64,
    /// Queues that broke (see [`QueueError`]): the device needs a reset.
    pub broken_queues: u64,
}

/// One queue's registers and ring positions, as saved for a state transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSaved {
    /// Largest size the device offers.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// The driver made the queue live.
    pub ready: bool,
    /// Descriptor table address.
    pub desc_table: u64,
    /// Available ring address.
    pub avail_ring: u64,
    /// Used ring address.
    pub used_ring: u64,
    /// Next available-ring slot the device will look at.
    pub next_avail: u16,
    /// Next used-ring slot the device will fill.
    pub next_used: u16,
}

/// The transport's registers, for a state transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// Device status.
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// Features the driver accepted.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Every queue, by index.
    pub queues: Vec<QueueSaved>,
}

/// Why a saved transport cannot be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransportStateError {
    /// The saved queues do not match the device's.
    #[error("virtio: {found} queues saved, the device has {expected}")]
    QueueCount {
        /// The device's.
        expected: usize,
        /// The saved state's.
        found: usize,
    },
    /// A saved queue is not one the device could have had.
    #[error("virtio queue {index}: {why}")]
    Queue {
        /// Which queue.
        index: usize,
        /// What is wrong with it.
        why: String,
    },
}

/// One virtio device on the MMIO transport.
#[derive(Debug)]
pub struct MmioTransport<D> {
    /// The device behind the transport.
    pub device: D,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    interrupt_status: u32,
    config_generation: u32,
    errors: ProtocolErrors,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// `device` behind a freshly reset transport.
    pub fn new(device: D) -> Self {
        let queues = device
            .queue_max_sizes()
            .iter()
            .filter_map(|&max| Queue::new(max).ok())
            .collect();
        Self {
            device,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            interrupt_status: 0,
            config_generation: 0,
            errors: ProtocolErrors::default(),
        }
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the driver finished setting the device up and has not reset it since.
    pub fn driver_ok(&self) -> bool {
        self.status & status::DRIVER_OK != 0 && self.status & status::DEVICE_NEEDS_RESET == 0
    }

    /// The features the driver accepted.
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// Whether the interrupt line is raised (an interrupt status bit is set).
    pub fn irq_level(&self) -> bool {
        self.interrupt_status != 0
    }

    /// What the driver did wrong so far.
    pub fn errors(&self) -> ProtocolErrors {
        self.errors
    }

    /// The queues, by index.
    pub fn queues_mut(&mut self) -> &mut [Queue] {
        &mut self.queues
    }

    /// Runs `f` on the device with its queues (when the VMM has input for it, such as a
    /// received frame); raises the used-buffer interrupt if `f` says it used buffers, and
    /// flags the device for reset if a queue broke. Does nothing unless the driver is ready.
    pub fn with_device(
        &mut self,
        mem: &mut GuestWrites<'_>,
        f: impl FnOnce(&mut D, &mut [Queue], &mut GuestWrites<'_>) -> Result<bool, QueueError>,
    ) -> Option<bool> {
        if !self.driver_ok() {
            return None;
        }
        let result = f(&mut self.device, &mut self.queues, mem);
        Some(self.settle(result))
    }

    fn settle(&mut self, result: Result<bool, QueueError>) -> bool {
        match result {
            Ok(used) => {
                if used {
                    self.interrupt_status |= interrupt::USED_BUFFER;
                }
                used
            }
            Err(e) => {
                tracing::warn!("virtio device {}: {e}", self.device.device_id());
                self.errors.broken_queues += 1;
                self.status |= status::DEVICE_NEEDS_RESET;
                self.interrupt_status |= interrupt::CONFIG_CHANGE;
                false
            }
        }
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A guest read of `data.len()` bytes at `offset` into the register space.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        // Registers are 32 bits wide and read whole; anything else floats.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0xff);
            return;
        }
        let value = match offset {
            reg::MAGIC_VALUE => MAGIC,
            reg::VERSION => VERSION,
            reg::DEVICE_ID => self.device.device_id(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => self.selected().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt_status,
            reg::STATUS => self.status,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => 0,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A guest write of `data` at `offset` into the register space. Returns whether the
    /// device used buffers (a notified queue was processed and the interrupt raised).
    pub fn write(&mut self, offset: u64, data: &[u8], mem: &mut GuestWrites<'_>) -> bool {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            self.errors.ignored_writes += 1;
            return false;
        };
        if !offset.is_multiple_of(4) || offset >= reg::CONFIG {
            // The net device's configuration is read-only.
            self.errors.ignored_writes += 1;
            return false;
        }
        let v = u32::from_le_bytes(bytes);
        let negotiating = self.status & status::DRIVER != 0
            && self.status & (status::FEATURES_OK | status::FAILED) == 0;
        let configuring = self.status & status::FEATURES_OK != 0
            && self.status & (status::DRIVER_OK | status::FAILED) == 0;
        let ok = match offset {
            reg::DEVICE_FEATURES_SEL => {
                self.device_features_sel = v;
                true
            }
            reg::DRIVER_FEATURES_SEL => {
                self.driver_features_sel = v;
                true
            }
            reg::DRIVER_FEATURES if negotiating => match self.driver_features_sel {
                0 => {
                    self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v);
                    true
                }
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32);
                    true
                }
                _ => false,
            },
            reg::QUEUE_SEL => {
                self.queue_sel = v;
                true
            }
            reg::QUEUE_NUM if configuring => self.with_unready_queue(|q| {
                let size = u16::try_from(v).ok()?;
                q.try_set_size(size).ok()
            }),
            reg::QUEUE_READY if configuring => match self.selected() {
                Some(q) => {
                    q.set_ready(v == 1);
                    true
                }
                None => false,
            },
            reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH if configuring => {
                let high = offset == reg::QUEUE_DESC_HIGH;
                self.with_unready_queue(|q| {
                    q.set_desc_table_address((!high).then_some(v), high.then_some(v));
                    Some(())
                })
            }
            reg::QUEUE_DRIVER_LOW | reg::QUEUE_DRIVER_HIGH if configuring => {
                let high = offset == reg::QUEUE_DRIVER_HIGH;
                self.with_unready_queue(|q| {
                    q.set_avail_ring_address((!high).then_some(v), high.then_some(v));
                    Some(())
                })
            }
            reg::QUEUE_DEVICE_LOW | reg::QUEUE_DEVICE_HIGH if configuring => {
                let high = offset == reg::QUEUE_DEVICE_HIGH;
                self.with_unready_queue(|q| {
                    q.set_used_ring_address((!high).then_some(v), high.then_some(v));
                    Some(())
                })
            }
            reg::QUEUE_NOTIFY => {
                if !self.driver_ok() {
                    // Buffers offered before DRIVER_OK wait for the next notification.
                    return false;
                }
                let Ok(index) = u16::try_from(v) else {
                    self.errors.ignored_writes += 1;
                    return false;
                };
                if usize::from(index) >= self.queues.len() {
                    self.errors.ignored_writes += 1;
                    return false;
                }
                let result = self.device.notify(index, &mut self.queues, mem);
                return self.settle(result);
            }
            reg::INTERRUPT_ACK => {
                self.interrupt_status &= !v;
                true
            }
            reg::STATUS => self.write_status(v, mem),
            _ => false,
        };
        if !ok {
            self.errors.ignored_writes += 1;
        }
        false
    }

    /// Applies `f` to the selected queue if it is not live yet (the spec forbids changing a
    /// ready queue). Whether it applied.
    fn with_unready_queue(&mut self, f: impl FnOnce(&mut Queue) -> Option<()>) -> bool {
        match self.selected() {
            Some(q) if !q.ready() => f(q).is_some(),
            _ => false,
        }
    }

    fn write_status(&mut self, v: u32, mem: &GuestWrites<'_>) -> bool {
        if v == 0 {
            self.reset();
            return true;
        }
        // The driver may only add bits (except through a reset).
        if v & self.status != self.status {
            return false;
        }
        let added = v & !self.status;
        if added & status::FEATURES_OK != 0 {
            let offered = self.device.features();
            let acceptable = self.driver_features & !offered == 0
                && self.driver_features & VIRTIO_F_VERSION_1 != 0;
            if !acceptable {
                // The driver reads the status back and sees FEATURES_OK missing.
                self.status = v & !status::FEATURES_OK;
                return false;
            }
        }
        if added & status::DRIVER_OK != 0 {
            let all_valid = self
                .queues
                .iter()
                .filter(|q| q.ready())
                .all(|q| q.is_valid(mem.memory()));
            if !all_valid {
                self.status = v | status::DEVICE_NEEDS_RESET;
                self.interrupt_status |= interrupt::CONFIG_CHANGE;
                self.errors.broken_queues += 1;
                return true;
            }
        }
        self.status = v;
        true
    }

    /// The registers and queues, for [`MmioTransport::restore`].
    pub fn save(&self) -> TransportState {
        TransportState {
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt_status,
            config_generation: self.config_generation,
            queues: self
                .queues
                .iter()
                .map(|q| {
                    let s = q.state();
                    QueueSaved {
                        max_size: s.max_size,
                        size: s.size,
                        ready: s.ready,
                        desc_table: s.desc_table,
                        avail_ring: s.avail_ring,
                        used_ring: s.used_ring,
                        next_avail: s.next_avail,
                        next_used: s.next_used,
                    }
                })
                .collect(),
        }
    }

    /// `device` behind a transport in the saved state, checked against what the device
    /// offers (the other end is not trusted): queue count, sizes, alignment.
    pub fn restore(device: D, state: &TransportState) -> Result<Self, TransportStateError> {
        let max_sizes = device.queue_max_sizes();
        if max_sizes.len() != state.queues.len() {
            return Err(TransportStateError::QueueCount {
                expected: max_sizes.len(),
                found: state.queues.len(),
            });
        }
        let mut queues = Vec::with_capacity(max_sizes.len());
        for (index, (saved, &max)) in state.queues.iter().zip(max_sizes).enumerate() {
            let bad = |why: String| TransportStateError::Queue { index, why };
            if saved.max_size != max {
                return Err(bad(format!(
                    "maximum size {} saved, the device offers {max}",
                    saved.max_size
                )));
            }
            let q = Queue::try_from(QueueState {
                max_size: saved.max_size,
                next_avail: saved.next_avail,
                next_used: saved.next_used,
                event_idx_enabled: false,
                size: saved.size,
                ready: saved.ready,
                desc_table: saved.desc_table,
                avail_ring: saved.avail_ring,
                used_ring: saved.used_ring,
            })
            .map_err(|e| bad(format!("{e}")))?;
            queues.push(q);
        }
        Ok(Self {
            device,
            queues,
            status: state.status,
            device_features_sel: state.device_features_sel,
            driver_features_sel: state.driver_features_sel,
            driver_features: state.driver_features,
            queue_sel: state.queue_sel,
            interrupt_status: state.interrupt_status,
            config_generation: state.config_generation,
            errors: ProtocolErrors::default(),
        })
    }

    /// The driver wrote 0 to the status: back to the state after power-on.
    pub fn reset(&mut self) {
        for q in &mut self.queues {
            q.reset();
        }
        self.device.reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.interrupt_status = 0;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::devices::virtio::DirtyPages;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    /// A device that records notifications and uses one buffer per notify.
    #[derive(Debug, Default)]
    struct Probe {
        notified: Vec<u16>,
        resets: u32,
    }

    impl VirtioDevice for Probe {
        fn device_id(&self) -> u32 {
            42
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 0b101
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[8, 16]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn notify(
            &mut self,
            index: u16,
            _queues: &mut [Queue],
            _mem: &mut GuestWrites<'_>,
        ) -> Result<bool, QueueError> {
            self.notified.push(index);
            if index == 1 {
                return Err(QueueError::Malformed {
                    queue: 1,
                    what: "test".into(),
                });
            }
            Ok(true)
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn rd(t: &mut MmioTransport<impl VirtioDevice>, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(t: &mut MmioTransport<impl VirtioDevice>, m: &GuestMemoryMmap, off: u64, v: u32) -> bool {
        let mut dirty = DirtyPages::new();
        t.write(off, &v.to_le_bytes(), &mut GuestWrites::new(m, &mut dirty))
    }

    /// Drives the transport through the driver's initialisation (virtio 1.x §3.1.1) with
    /// queue `q` at the given addresses, accepting `features`.
    pub(crate) fn bring_up(
        t: &mut MmioTransport<impl VirtioDevice>,
        m: &GuestMemoryMmap,
        features: u64,
        queues: &[(u32, u16, u64, u64, u64)],
    ) {
        wr(t, m, reg::STATUS, 0);
        wr(t, m, reg::STATUS, status::ACKNOWLEDGE);
        wr(t, m, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        wr(t, m, reg::DRIVER_FEATURES_SEL, 0);
        wr(t, m, reg::DRIVER_FEATURES, features as u32);
        wr(t, m, reg::DRIVER_FEATURES_SEL, 1);
        wr(t, m, reg::DRIVER_FEATURES, (features >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        wr(t, m, reg::STATUS, s);
        assert_eq!(
            rd(t, reg::STATUS) & status::FEATURES_OK,
            status::FEATURES_OK
        );
        for &(sel, size, desc, avail, used) in queues {
            wr(t, m, reg::QUEUE_SEL, sel);
            wr(t, m, reg::QUEUE_NUM, u32::from(size));
            wr(t, m, reg::QUEUE_DESC_LOW, desc as u32);
            wr(t, m, reg::QUEUE_DESC_HIGH, (desc >> 32) as u32);
            wr(t, m, reg::QUEUE_DRIVER_LOW, avail as u32);
            wr(t, m, reg::QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
            wr(t, m, reg::QUEUE_DEVICE_LOW, used as u32);
            wr(t, m, reg::QUEUE_DEVICE_HIGH, (used >> 32) as u32);
            wr(t, m, reg::QUEUE_READY, 1);
        }
        wr(t, m, reg::STATUS, s | status::DRIVER_OK);
    }

    #[test]
    fn identifies_itself_as_a_version_2_device() {
        let mut t = MmioTransport::new(Probe::default());
        assert_eq!(rd(&mut t, reg::MAGIC_VALUE), 0x7472_6976);
        assert_eq!(rd(&mut t, reg::VERSION), 2);
        assert_eq!(rd(&mut t, reg::DEVICE_ID), 42);
        assert_eq!(rd(&mut t, reg::VENDOR_ID), VENDOR_ID);
        let m = mem();
        wr(&mut t, &m, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 0b101);
        wr(&mut t, &m, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(rd(&mut t, reg::DEVICE_FEATURES), 1);
        wr(&mut t, &m, reg::QUEUE_SEL, 1);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 16);
        wr(&mut t, &m, reg::QUEUE_SEL, 7);
        assert_eq!(rd(&mut t, reg::QUEUE_NUM_MAX), 0, "no such queue");
        let mut cfg = [0u8; 2];
        t.read(reg::CONFIG + 4, &mut cfg);
        assert_eq!(cfg, [4, 5]);
        let mut odd = [0u8; 2];
        t.read(reg::MAGIC_VALUE, &mut odd);
        assert_eq!(odd, [0xff, 0xff], "registers are read 32 bits at a time");
    }

    #[test]
    fn a_driver_without_version_1_or_with_unoffered_features_is_refused() {
        let m = mem();
        for features in [0b1, VIRTIO_F_VERSION_1 | 0b10] {
            let mut t = MmioTransport::new(Probe::default());
            wr(
                &mut t,
                &m,
                reg::STATUS,
                status::ACKNOWLEDGE | status::DRIVER,
            );
            wr(&mut t, &m, reg::DRIVER_FEATURES_SEL, 0);
            wr(&mut t, &m, reg::DRIVER_FEATURES, features as u32);
            wr(&mut t, &m, reg::DRIVER_FEATURES_SEL, 1);
            wr(&mut t, &m, reg::DRIVER_FEATURES, (features >> 32) as u32);
            wr(
                &mut t,
                &m,
                reg::STATUS,
                status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
            );
            assert_eq!(rd(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        }
    }

    #[test]
    fn notifications_reach_the_device_only_once_the_driver_is_ready() {
        let m = mem();
        let mut t = MmioTransport::new(Probe::default());
        assert!(!wr(&mut t, &m, reg::QUEUE_NOTIFY, 0));
        assert!(t.device.notified.is_empty());
        bring_up(
            &mut t,
            &m,
            VIRTIO_F_VERSION_1,
            &[(0, 8, 0x1000, 0x2000, 0x3000)],
        );
        assert!(t.driver_ok());
        assert!(wr(&mut t, &m, reg::QUEUE_NOTIFY, 0));
        assert_eq!(t.device.notified, vec![0]);
        assert!(t.irq_level());
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), interrupt::USED_BUFFER);
        wr(&mut t, &m, reg::INTERRUPT_ACK, interrupt::USED_BUFFER);
        assert!(!t.irq_level());
        assert!(!wr(&mut t, &m, reg::QUEUE_NOTIFY, 9), "no queue 9");
        assert_eq!(t.errors().ignored_writes, 1);
    }

    #[test]
    fn a_broken_queue_flags_the_device_for_reset_and_a_reset_clears_it() {
        let m = mem();
        let mut t = MmioTransport::new(Probe::default());
        bring_up(&mut t, &m, VIRTIO_F_VERSION_1, &[]);
        assert_eq!(t.errors(), ProtocolErrors::default());
        assert!(!wr(&mut t, &m, reg::QUEUE_NOTIFY, 1));
        assert_eq!(t.errors().broken_queues, 1);
        assert_ne!(rd(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(rd(&mut t, reg::INTERRUPT_STATUS), interrupt::CONFIG_CHANGE);
        assert!(!t.driver_ok());
        assert!(
            !wr(&mut t, &m, reg::QUEUE_NOTIFY, 0),
            "a broken device ignores notifies"
        );
        assert_eq!(t.errors().broken_queues, 1);
        let resets = t.device.resets;
        wr(&mut t, &m, reg::STATUS, 0);
        assert_eq!(t.status(), 0);
        assert!(!t.irq_level());
        assert_eq!(t.device.resets, resets + 1, "the device is told");
    }

    #[test]
    fn queues_cannot_be_changed_once_ready_or_outside_configuration() {
        let m = mem();
        let mut t = MmioTransport::new(Probe::default());
        // Before FEATURES_OK: ignored.
        wr(&mut t, &m, reg::QUEUE_NUM, 4);
        assert_eq!(t.errors().ignored_writes, 1);
        bring_up(
            &mut t,
            &m,
            VIRTIO_F_VERSION_1,
            &[(0, 4, 0x1000, 0x2000, 0x3000)],
        );
        assert_eq!(t.queues_mut()[0].size(), 4);
        wr(&mut t, &m, reg::QUEUE_SEL, 0);
        wr(&mut t, &m, reg::QUEUE_NUM, 2);
        assert_eq!(t.queues_mut()[0].size(), 4, "a live queue keeps its size");
    }

    #[test]
    fn a_queue_size_that_is_not_a_power_of_two_or_too_big_is_ignored() {
        let m = mem();
        let mut t = MmioTransport::new(Probe::default());
        wr(
            &mut t,
            &m,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER,
        );
        wr(&mut t, &m, reg::DRIVER_FEATURES_SEL, 1);
        wr(&mut t, &m, reg::DRIVER_FEATURES, 1);
        wr(
            &mut t,
            &m,
            reg::STATUS,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
        for bad in [3, 32, 0x1_0000] {
            wr(&mut t, &m, reg::QUEUE_NUM, bad);
            assert_eq!(t.queues_mut()[0].size(), 8, "size {bad}");
        }
    }

    #[test]
    fn rings_outside_memory_make_driver_ok_fail_safely() {
        let m = mem();
        let mut t = MmioTransport::new(Probe::default());
        bring_up(
            &mut t,
            &m,
            VIRTIO_F_VERSION_1,
            &[(0, 8, 0xfff_0000, 0x2000, 0x3000)],
        );
        assert!(!t.driver_ok());
        assert_ne!(t.status() & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn odd_writes_are_ignored_and_counted() {
        let m = mem();
        let mut t = MmioTransport::new(Probe::default());
        let mut dirty = DirtyPages::new();
        let mut w = GuestWrites::new(&m, &mut dirty);
        t.write(reg::STATUS, &[1], &mut w);
        t.write(reg::STATUS + 1, &[1, 0, 0, 0], &mut w);
        t.write(reg::CONFIG, &[1, 0, 0, 0], &mut w);
        t.write(reg::MAGIC_VALUE, &[1, 0, 0, 0], &mut w);
        assert_eq!(t.status(), 0);
        assert_eq!(t.errors().ignored_writes, 4);
    }
}
