//! The guest's network card on the bus: virtio-net behind virtio-mmio, at a fixed MMIO window
//! and PIC line, as Firecracker and QEMU's microvm place theirs. The guest learns where from
//! its command line (`virtio_mmio.device=512@0xd0000000:5`, the form Linux parses too).
//!
//! The card holds a handle on guest memory (the buffers it fills and drains are the guest's),
//! and remembers every page it wrote there for the next state transfer.

use serde::{Deserialize, Serialize};
use vm_memory::GuestMemoryMmap;

use super::virtio::mmio::{MMIO_LEN, MmioTransport, TransportState, TransportStateError};
use super::virtio::net::{NetStats, Received, VirtioNet};
use super::virtio::{DirtyPages, GuestWrites};

/// Guest-physical base of the card's register window: above the largest RAM we map
/// (`MAX_MEM_MIB` = 3 GiB), below the 32-bit PCI hole's usual devices.
pub const NIC_MMIO_BASE: u64 = 0xd000_0000;
/// The PIC line the card interrupts on (free on a PC without a second parallel port).
pub const NIC_IRQ: u8 = 5;

/// The MAC address a card gets unless told otherwise: locally administered (bit 1 of the
/// first byte), unicast, the same on every node of one guest.
pub const DEFAULT_MAC: [u8; 6] = [0x02, 0x75, 0x73, 0x00, 0x00, 0x01];

/// The card's saved state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicState {
    /// Its MAC address.
    pub mac: [u8; 6],
    /// The transport's registers and queues.
    pub transport: TransportState,
    /// Whether the card's interrupt line is raised.
    pub irq_level: bool,
}

/// The network card.
#[derive(Debug)]
pub struct Nic {
    transport: MmioTransport<VirtioNet>,
    mem: GuestMemoryMmap,
    dirty: DirtyPages,
    irq_level: bool,
    /// Frames that arrived while the driver had no card set up (see [`NetStats::rx_no_driver`]).
    rx_no_driver: u64,
}

impl Nic {
    /// A card with `mac` whose driver will put its buffers in `mem`.
    pub fn new(mac: [u8; 6], mem: GuestMemoryMmap) -> Self {
        Self {
            transport: MmioTransport::new(VirtioNet::new(mac)),
            mem,
            dirty: DirtyPages::new(),
            irq_level: false,
            rx_no_driver: 0,
        }
    }

    /// The kernel command-line argument that tells the guest where the card is.
    pub fn cmdline_arg() -> String {
        format!("virtio_mmio.device={MMIO_LEN}@{NIC_MMIO_BASE:#x}:{NIC_IRQ}")
    }

    /// Whether guest-physical `addr` falls in the card's register window.
    pub fn decodes(addr: u64) -> bool {
        addr.checked_sub(NIC_MMIO_BASE)
            .is_some_and(|off| off < MMIO_LEN)
    }

    /// The guest memory the card reaches.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The card's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.transport.device.mac()
    }

    /// A guest read in the register window.
    pub fn read(&mut self, addr: u64, data: &mut [u8]) {
        self.transport.read(addr - NIC_MMIO_BASE, data);
    }

    /// A guest write in the register window.
    pub fn write(&mut self, addr: u64, data: &[u8]) {
        let mut w = GuestWrites::new(&self.mem, &mut self.dirty);
        self.transport.write(addr - NIC_MMIO_BASE, data, &mut w);
    }

    /// Copies `frame` into the guest's next receive buffer. `None` if the driver is not ready
    /// (the frame is dropped and counted: no guest would have seen it).
    pub fn receive(&mut self, frame: &[u8]) -> Option<Received> {
        let mut w = GuestWrites::new(&self.mem, &mut self.dirty);
        let mut got = None;
        let ran = self.transport.with_device(&mut w, |dev, queues, w| {
            let r = dev.receive(queues, w, frame)?;
            got = Some(r);
            Ok(matches!(
                r,
                Received::Delivered { notify: true } | Received::BadBuffer { notify: true }
            ))
        });
        if ran.is_none() {
            self.rx_no_driver += 1;
            return None;
        }
        // The device ran but failed: the transport broke the queue, which the guest sees (a
        // status bit, an interrupt), so the frame has to be logged like a delivered one.
        Some(got.unwrap_or(Received::BrokeTheQueue))
    }

    /// Frames the guest transmitted since the last call, in order.
    pub fn take_transmitted(&mut self) -> Vec<Vec<u8>> {
        self.transport.device.take_transmitted()
    }

    /// Pages of guest memory the card wrote since the last call.
    pub fn take_dirty(&mut self) -> DirtyPages {
        std::mem::take(&mut self.dirty)
    }

    /// What the card did so far.
    pub fn stats(&self) -> NetStats {
        NetStats {
            rx_no_driver: self.rx_no_driver,
            ..self.transport.device.stats()
        }
    }

    /// Whether the driver has the card running.
    pub fn driver_ok(&self) -> bool {
        self.transport.driver_ok()
    }

    /// The change of the card's interrupt line since the last call, if any: `Some(true)` when
    /// it rose, `Some(false)` when it fell.
    pub fn irq_change(&mut self) -> Option<bool> {
        let level = self.transport.irq_level();
        if level == self.irq_level {
            return None;
        }
        self.irq_level = level;
        Some(level)
    }

    /// The card's state, for [`Nic::restore`].
    pub fn save(&self) -> NicState {
        NicState {
            mac: self.mac(),
            transport: self.transport.save(),
            irq_level: self.irq_level,
        }
    }

    /// A card in the saved state, on `mem`.
    pub fn restore(state: &NicState, mem: GuestMemoryMmap) -> Result<Self, TransportStateError> {
        Ok(Self {
            transport: MmioTransport::restore(VirtioNet::new(state.mac), &state.transport)?,
            mem,
            dirty: DirtyPages::new(),
            irq_level: state.irq_level,
            rx_no_driver: 0,
        })
    }

    /// A stable hash of the card's guest-visible state (registers, queue positions, MAC).
    pub fn state_hash(&self) -> u64 {
        let saved = self.save();
        let bytes = postcard::to_stdvec(&saved).unwrap_or_default();
        xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, 0x006e_6963)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn write32(nic: &mut Nic, off: u64, v: u32) {
        nic.write(NIC_MMIO_BASE + off, &v.to_le_bytes());
    }

    #[test]
    fn the_window_and_the_command_line_agree() {
        assert!(Nic::decodes(NIC_MMIO_BASE));
        assert!(Nic::decodes(NIC_MMIO_BASE + MMIO_LEN - 1));
        assert!(!Nic::decodes(NIC_MMIO_BASE + MMIO_LEN));
        assert!(!Nic::decodes(NIC_MMIO_BASE - 1));
        assert_eq!(Nic::cmdline_arg(), "virtio_mmio.device=512@0xd0000000:5");
        assert!(
            u64::from(crate::machine::MAX_MEM_MIB) << 20 <= NIC_MMIO_BASE,
            "the window lies above any RAM"
        );
    }

    #[test]
    fn the_irq_line_reports_each_change_once() {
        let mut nic = Nic::new(DEFAULT_MAC, mem());
        assert_eq!(nic.irq_change(), None);
        // A broken driver (DRIVER_OK with a ring outside memory) gets a config interrupt.
        for (off, v) in [(0x70, 1), (0x70, 3), (0x24, 1), (0x20, 1), (0x70, 11)] {
            write32(&mut nic, off, v);
        }
        for (off, v) in [(0x38, 16), (0x80, 0xfff_0000), (0x44, 1), (0x70, 15)] {
            write32(&mut nic, off, v);
        }
        assert_eq!(nic.irq_change(), Some(true));
        assert_eq!(nic.irq_change(), None);
        write32(&mut nic, 0x64, 3);
        assert_eq!(nic.irq_change(), Some(false));
    }

    #[test]
    fn frames_without_a_driver_are_counted_and_a_queue_a_frame_breaks_is_reported() {
        let mut nic = Nic::new(DEFAULT_MAC, mem());
        let frame = [0x42u8; 60];
        assert_eq!(nic.receive(&frame), None, "no driver yet");
        assert_eq!(nic.stats().rx_no_driver, 1);
        // A driver whose one receive buffer lies outside guest memory.
        let m = nic.memory().clone();
        m.write_obj(0xfff_0000u64, GuestAddress(0x1000)).unwrap();
        m.write_obj(2048u32, GuestAddress(0x1008)).unwrap();
        m.write_obj(2u16, GuestAddress(0x100c)).unwrap();
        m.write_obj(0u16, GuestAddress(0x2004)).unwrap();
        m.write_obj(1u16, GuestAddress(0x2002)).unwrap();
        for (off, v) in [(0x70, 1), (0x70, 3), (0x24, 1), (0x20, 1), (0x70, 11)] {
            write32(&mut nic, off, v);
        }
        for (q, base) in [(0, 0x1000), (1, 0x4000)] {
            for (off, v) in [
                (0x30, q),
                (0x38, 16),
                (0x80, base),
                (0x90, base + 0x1000),
                (0xa0, base + 0x2000),
                (0x44, 1),
            ] {
                write32(&mut nic, off, v);
            }
        }
        write32(&mut nic, 0x70, 15);
        assert!(nic.driver_ok());
        // The guest sees the break (a status bit, an interrupt): the frame must be logged.
        let got = nic.receive(&frame);
        assert_eq!(got, Some(Received::BrokeTheQueue));
        assert!(got.is_some_and(Received::reached_the_guest));
        assert_eq!(nic.irq_change(), Some(true));
        assert_eq!(nic.receive(&frame), None, "nothing until the driver resets");
        assert_eq!(nic.stats().rx_no_driver, 2);
    }

    #[test]
    fn a_saved_card_restores_to_the_same_state() {
        let mut nic = Nic::new([2, 0, 0, 0, 0, 9], mem());
        for (off, v) in [(0x70, 1), (0x70, 3), (0x24, 1), (0x20, 1), (0x70, 11)] {
            write32(&mut nic, off, v);
        }
        for (off, v) in [(0x30, 1), (0x38, 64), (0x80, 0x1000), (0x90, 0x2000)] {
            write32(&mut nic, off, v);
        }
        let saved = nic.save();
        let back = Nic::restore(&saved, mem()).unwrap();
        assert_eq!(back.save(), saved);
        assert_eq!(back.state_hash(), nic.state_hash());
        assert_eq!(back.mac(), [2, 0, 0, 0, 0, 9]);
        write32(&mut nic, 0xa0, 0x3000);
        assert_ne!(
            back.state_hash(),
            nic.state_hash(),
            "the hash sees registers"
        );
    }

    #[test]
    fn a_saved_state_the_card_could_not_have_is_refused() {
        let nic = Nic::new(DEFAULT_MAC, mem());
        let mut saved = nic.save();
        saved.transport.queues.pop();
        assert!(matches!(
            Nic::restore(&saved, mem()),
            Err(TransportStateError::QueueCount { .. })
        ));
        let mut saved = nic.save();
        saved.transport.queues[0].size = 3;
        let err = Nic::restore(&saved, mem()).unwrap_err().to_string();
        assert!(err.contains("virtio queue 0"), "{err}");
    }
}
