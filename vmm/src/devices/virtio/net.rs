//! The virtio-net device (virtio 1.x §5.1): queue 0 receives, queue 1 transmits, no offloads.
//!
//! Transmit happens at the guest's `QueueNotify` exit: each frame the driver queued is copied
//! out and kept in the device's outbox until the VMM takes it after the exit — as the UART's
//! output is — to hold it under the output rule. Receive happens where the VMM delivers a
//! frame (a logged position): the frame is copied into the next receive buffer the driver
//! offered. With no buffer (the guest is slow), the card says so and the caller keeps the
//! frame for later (its bounded queue is the card's FIFO). A frame no Ethernet NIC with a
//! 1500-byte MTU would take — shorter than an Ethernet header, or longer than [`MAX_FRAME`] —
//! is dropped before it reaches the guest's queue and counted, never truncated into a buffer:
//! the host side may hand over up to 64 KiB (a TAP's MTU can be raised). Frames are plain
//! Ethernet frames; the 12-byte `virtio_net_hdr_v1` in front of each is zero on receive (no
//! checksum offload, no GSO) and ignored on transmit.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{GuestWrites, QueueError, VIRTIO_F_VERSION_1, VirtioDevice};

/// The virtio device ID of a network card.
pub const DEVICE_ID: u32 = 1;
/// The device has a MAC address in its configuration space.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// Size of `virtio_net_hdr_v1` (with `num_buffers`, as virtio 1.x always has it).
pub const HEADER_LEN: usize = 12;
/// Largest frame either way: a 1500-byte MTU plus the Ethernet header and a VLAN tag.
pub const MAX_FRAME: usize = 1518;
/// Smallest frame worth passing on: an Ethernet header.
pub const MIN_FRAME: usize = 14;
/// Queue size offered for each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX: u16 = 0;
/// Index of the transmit queue.
pub const TX: u16 = 1;

/// What the device did, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames the guest transmitted (taken out of its queue, handed to the VMM).
    pub tx_frames: u64,
    /// Transmit buffers that held no valid frame (too short, too long, unreadable, or with a
    /// device-writable part): returned to the guest unsent.
    pub tx_malformed: u64,
    /// Frames copied into the guest's receive buffers.
    pub rx_frames: u64,
    /// Times a frame found no receive buffer offered (the caller keeps it and tries again, so
    /// one frame may count several times).
    pub rx_no_buffer: u64,
    /// Frames dropped because the offered buffer was too small or unwritable (a driver bug).
    pub rx_bad_buffer: u64,
    /// Frames dropped unseen because they were shorter than an Ethernet header.
    pub rx_runts: u64,
    /// Frames dropped unseen because they were longer than [`MAX_FRAME`].
    pub rx_oversized: u64,
    /// Frames dropped unseen because the driver had not set the card up (or had to reset it).
    /// Counted by [`crate::devices::nic::Nic`]: the device itself never sees them.
    pub rx_no_driver: u64,
}

/// What became of a frame handed to [`VirtioNet::receive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Copied into the guest's buffer; the used-buffer interrupt is due if `notify`.
    Delivered {
        /// Whether the driver wants an interrupt for it.
        notify: bool,
    },
    /// The guest offered no buffer: dropped.
    NoBuffer,
    /// The guest's buffer could not hold it: dropped, the buffer returned empty (the
    /// used-buffer interrupt is due if `notify`).
    BadBuffer {
        /// Whether the driver wants an interrupt for the returned buffer.
        notify: bool,
    },
    /// Shorter than an Ethernet header ([`MIN_FRAME`]): dropped without touching the guest.
    Runt,
    /// Longer than [`MAX_FRAME`]: dropped without touching the guest.
    Oversized,
    /// The driver's receive queue was malformed (a buffer outside guest memory, say): the card
    /// now needs a reset and has raised its configuration interrupt, and may have written part
    /// of the frame. Set by [`crate::devices::nic::Nic`].
    BrokeTheQueue,
}

impl Received {
    /// Whether the guest's memory or the card's queues changed: the frame must be logged (and
    /// replayed) at this position. A frame dropped unseen changed nothing; a frame that found
    /// no buffer is still the caller's.
    pub fn reached_the_guest(self) -> bool {
        matches!(
            self,
            Received::Delivered { .. } | Received::BadBuffer { .. } | Received::BrokeTheQueue
        )
    }
}

/// A virtio network card.
#[derive(Debug)]
pub struct VirtioNet {
    mac: [u8; 6],
    outbox: Vec<Vec<u8>>,
    stats: NetStats,
}

impl VirtioNet {
    /// A card with MAC address `mac`.
    pub fn new(mac: [u8; 6]) -> Self {
        Self {
            mac,
            outbox: Vec::new(),
            stats: NetStats::default(),
        }
    }

    /// The card's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// What the card did so far.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Frames the guest transmitted since the last call, in order.
    pub fn take_transmitted(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.outbox)
    }

    /// Copies `frame` into the next receive buffer the driver offered in `queues[RX]`.
    pub fn receive(
        &mut self,
        queues: &mut [Queue],
        mem: &mut GuestWrites<'_>,
        frame: &[u8],
    ) -> Result<Received, QueueError> {
        // Before the ring is looked at: a NIC drops runts and giants in its MAC, and a frame
        // that does not fit must not use up (or be cut into) a buffer the driver offered.
        if frame.len() < MIN_FRAME {
            self.stats.rx_runts += 1;
            return Ok(Received::Runt);
        }
        if frame.len() > MAX_FRAME {
            self.stats.rx_oversized += 1;
            return Ok(Received::Oversized);
        }
        let malformed = |what: String| QueueError::Malformed { queue: RX, what };
        let q = queues
            .get_mut(usize::from(RX))
            .ok_or_else(|| malformed("no receive queue".into()))?;
        if !q.ready() {
            self.stats.rx_no_buffer += 1;
            return Ok(Received::NoBuffer);
        }
        let memory = mem.memory();
        let Some(chain) = q.pop_descriptor_chain(memory) else {
            self.stats.rx_no_buffer += 1;
            return Ok(Received::NoBuffer);
        };
        let head = chain.head_index();
        let mut header = [0u8; HEADER_LEN];
        // num_buffers: one buffer per frame (no VIRTIO_NET_F_MRG_RXBUF).
        header[10] = 1;
        let mut pieces = [&header[..], frame];
        let mut written = 0u32;
        let mut fits = true;
        let mut regions = Vec::new();
        for desc in chain {
            if !desc.is_write_only() {
                fits = false;
                break;
            }
            regions.push((desc.addr().0, desc.len() as usize));
        }
        let capacity: usize = regions.iter().map(|r| r.1).sum();
        if !fits || capacity < HEADER_LEN + frame.len() {
            self.stats.rx_bad_buffer += 1;
            mem.add_used(q, RX, head, 0)?;
            let notify = wants_interrupt(q, RX, mem)?;
            return Ok(Received::BadBuffer { notify });
        }
        for (addr, len) in regions {
            let mut at = addr;
            let mut room = len;
            for piece in &mut pieces {
                if room == 0 {
                    break;
                }
                let n = piece.len().min(room);
                if n == 0 {
                    continue;
                }
                if !mem.write(at, &piece[..n]) {
                    return Err(malformed(format!(
                        "receive buffer at {at:#x} (+{n}) is outside guest memory"
                    )));
                }
                *piece = &piece[n..];
                at += n as u64;
                room -= n;
                written += n as u32;
            }
        }
        mem.add_used(q, RX, head, written)?;
        self.stats.rx_frames += 1;
        let notify = wants_interrupt(q, RX, mem)?;
        Ok(Received::Delivered { notify })
    }

    /// Takes every frame the driver queued on `queues[TX]` into the outbox.
    fn transmit(
        &mut self,
        queues: &mut [Queue],
        mem: &mut GuestWrites<'_>,
    ) -> Result<bool, QueueError> {
        let malformed = |what: String| QueueError::Malformed { queue: TX, what };
        let q = queues
            .get_mut(usize::from(TX))
            .ok_or_else(|| malformed("no transmit queue".into()))?;
        let memory = mem.memory();
        let mut used = false;
        while let Some(chain) = q.pop_descriptor_chain(memory) {
            let head = chain.head_index();
            let mut bytes = Vec::new();
            let mut valid = true;
            for desc in chain {
                let len = desc.len() as usize;
                if desc.is_write_only() || bytes.len() + len > HEADER_LEN + MAX_FRAME {
                    valid = false;
                    break;
                }
                let start = bytes.len();
                bytes.resize(start + len, 0);
                if memory
                    .read_slice(&mut bytes[start..], GuestAddress(desc.addr().0))
                    .is_err()
                {
                    valid = false;
                    break;
                }
            }
            if valid && bytes.len() >= HEADER_LEN + MIN_FRAME {
                bytes.drain(..HEADER_LEN);
                self.outbox.push(bytes);
                self.stats.tx_frames += 1;
            } else {
                self.stats.tx_malformed += 1;
            }
            mem.add_used(q, TX, head, 0)?;
            used = true;
        }
        if !used {
            return Ok(false);
        }
        wants_interrupt(q, TX, mem)
    }
}

/// Whether the driver wants an interrupt for buffers just used: not if it set
/// `VIRTQ_AVAIL_F_NO_INTERRUPT` (virtio-queue leaves that flag to the device; without
/// `VIRTIO_F_EVENT_IDX`, which we do not offer, it is the driver's only way to say so). Each
/// interrupt it does not want would cost an exit for nothing.
fn wants_interrupt(q: &Queue, index: u16, mem: &GuestWrites<'_>) -> Result<bool, QueueError> {
    let flags: u16 = mem
        .memory()
        .read_obj(GuestAddress(q.avail_ring()))
        .map_err(|e| QueueError::Malformed {
            queue: index,
            what: format!("cannot read the avail ring's flags: {e}"),
        })?;
    Ok(u16::from_le(flags) & 1 == 0)
}

impl VirtioDevice for VirtioNet {
    fn device_id(&self) -> u32 {
        DEVICE_ID
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // virtio_net_config: mac[6], then status and the rest, which no offered feature
        // makes valid: they read 0.
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset.saturating_add(i as u64);
            *b = usize::try_from(at)
                .ok()
                .and_then(|at| self.mac.get(at))
                .copied()
                .unwrap_or(0);
        }
    }
    fn notify(
        &mut self,
        index: u16,
        queues: &mut [Queue],
        mem: &mut GuestWrites<'_>,
    ) -> Result<bool, QueueError> {
        match index {
            TX => self.transmit(queues, mem),
            // New receive buffers: frames wait on the host side and are delivered where the
            // VMM chooses (a logged position), not here.
            _ => Ok(false),
        }
    }
    fn reset(&mut self) {
        self.outbox.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::DirtyPages;
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::mmio::tests::bring_up;
    use vm_memory::GuestMemoryMmap;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    const NOTIFY: u64 = 0x050;
    const WRITE: u16 = 2;
    const NEXT: u16 = 1;

    /// The driver's side of one split virtqueue, written by hand from the virtio spec (not by
    /// virtio-queue, whose device side is under test).
    struct Ring {
        desc: u64,
        avail: u64,
        used: u64,
        size: u16,
        next_desc: u16,
        avail_idx: u16,
    }

    impl Ring {
        fn new(base: u64, size: u16) -> Self {
            Self {
                desc: base,
                avail: base + 0x1000,
                used: base + 0x2000,
                size,
                next_desc: 0,
                avail_idx: 0,
            }
        }
        fn queue(&self, sel: u32) -> (u32, u16, u64, u64, u64) {
            (sel, self.size, self.desc, self.avail, self.used)
        }
        /// Offers a chain of (addr, len, device-writable) buffers; returns its head.
        fn post(&mut self, m: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
            let head = self.next_desc;
            for (i, &(addr, len, write)) in bufs.iter().enumerate() {
                let idx = self.next_desc;
                self.next_desc = (self.next_desc + 1) % self.size;
                let mut flags = if write { WRITE } else { 0 };
                if i + 1 < bufs.len() {
                    flags |= NEXT;
                }
                let at = self.desc + 16 * u64::from(idx);
                m.write_obj(addr, GuestAddress(at)).unwrap();
                m.write_obj(len, GuestAddress(at + 8)).unwrap();
                m.write_obj(flags, GuestAddress(at + 12)).unwrap();
                m.write_obj(self.next_desc, GuestAddress(at + 14)).unwrap();
            }
            let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
            m.write_obj(head, GuestAddress(slot)).unwrap();
            self.avail_idx = self.avail_idx.wrapping_add(1);
            m.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
                .unwrap();
            head
        }
        fn suppress_interrupts(&self, m: &GuestMemoryMmap) {
            m.write_obj(1u16, GuestAddress(self.avail)).unwrap();
        }
        fn used_idx(&self, m: &GuestMemoryMmap) -> u16 {
            m.read_obj(GuestAddress(self.used + 2)).unwrap()
        }
        fn used_elem(&self, m: &GuestMemoryMmap, i: u16) -> (u32, u32) {
            let at = self.used + 4 + 8 * u64::from(i % self.size);
            (
                m.read_obj(GuestAddress(at)).unwrap(),
                m.read_obj(GuestAddress(at + 4)).unwrap(),
            )
        }
    }

    struct Nic {
        t: MmioTransport<VirtioNet>,
        m: GuestMemoryMmap,
        rx: Ring,
        tx: Ring,
        dirty: DirtyPages,
    }

    fn nic() -> Nic {
        let m = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x40000)]).unwrap();
        let mut t = MmioTransport::new(VirtioNet::new(MAC));
        let rx = Ring::new(0x10000, 8);
        let tx = Ring::new(0x20000, 8);
        bring_up(
            &mut t,
            &m,
            VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC,
            &[rx.queue(0), tx.queue(1)],
        );
        assert!(t.driver_ok());
        Nic {
            t,
            m,
            rx,
            tx,
            dirty: DirtyPages::new(),
        }
    }

    impl Nic {
        fn notify(&mut self, queue: u32) -> bool {
            let mut w = GuestWrites::new(&self.m, &mut self.dirty);
            self.t.write(NOTIFY, &queue.to_le_bytes(), &mut w)
        }
        fn receive(&mut self, frame: &[u8]) -> Option<Received> {
            let mut w = GuestWrites::new(&self.m, &mut self.dirty);
            let mut got = None;
            self.t.with_device(&mut w, |d, q, w| {
                let r = d.receive(q, w, frame)?;
                got = Some(r);
                Ok(matches!(
                    r,
                    Received::Delivered { notify: true } | Received::BadBuffer { notify: true }
                ))
            })?;
            got
        }
    }

    fn frame(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn reports_its_mac_in_the_configuration_space() {
        let n = nic();
        let mut cfg = [0u8; 8];
        n.t.device.read_config(0, &mut cfg);
        assert_eq!(cfg, [0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0, 0]);
        let mut tail = [0xaa; 2];
        n.t.device.read_config(5, &mut tail);
        assert_eq!(tail, [0x56, 0]);
    }

    #[test]
    fn a_transmitted_frame_leaves_without_its_header_and_the_buffer_comes_back() {
        let mut n = nic();
        let f = frame(60);
        // Header and frame in separate buffers, the frame itself split in two.
        n.m.write_slice(&[0xee; HEADER_LEN], GuestAddress(0x30000))
            .unwrap();
        n.m.write_slice(&f[..20], GuestAddress(0x30100)).unwrap();
        n.m.write_slice(&f[20..], GuestAddress(0x30200)).unwrap();
        let head = n.tx.post(
            &n.m,
            &[
                (0x30000, HEADER_LEN as u32, false),
                (0x30100, 20, false),
                (0x30200, 40, false),
            ],
        );
        assert!(n.notify(u32::from(TX)), "used buffers raise the interrupt");
        assert!(n.t.irq_level());
        assert_eq!(n.t.device.take_transmitted(), vec![f]);
        assert!(n.t.device.take_transmitted().is_empty());
        assert_eq!(n.tx.used_idx(&n.m), 1);
        assert_eq!(n.tx.used_elem(&n.m, 0), (u32::from(head), 0));
        assert_eq!(n.t.device.stats().tx_frames, 1);
        // Only the used ring's page was written.
        assert_eq!(n.dirty.iter().copied().collect::<Vec<_>>(), vec![0x22]);
    }

    #[test]
    fn malformed_transmit_buffers_are_returned_unsent_and_counted() {
        let mut n = nic();
        // Header only; a frame over the maximum; a device-writable buffer.
        n.tx.post(&n.m, &[(0x30000, HEADER_LEN as u32, false)]);
        n.tx.post(
            &n.m,
            &[(0x30000, (HEADER_LEN + MAX_FRAME + 1) as u32, false)],
        );
        n.tx.post(&n.m, &[(0x30000, 100, true)]);
        // A buffer outside guest memory.
        n.tx.post(&n.m, &[(0x100_0000, 100, false)]);
        n.notify(u32::from(TX));
        assert!(n.t.device.take_transmitted().is_empty());
        assert_eq!(n.t.device.stats().tx_malformed, 4);
        assert_eq!(n.tx.used_idx(&n.m), 4, "every buffer is given back");
        assert!(
            n.t.driver_ok(),
            "a bad frame is the guest's loss, not a broken queue"
        );
    }

    #[test]
    fn a_received_frame_lands_in_the_offered_buffer_behind_a_zero_header() {
        let mut n = nic();
        let head =
            n.rx.post(&n.m, &[(0x31000, 100, true), (0x33000, 2000, true)]);
        let f = frame(1514);
        assert_eq!(n.receive(&f), Some(Received::Delivered { notify: true }));
        assert!(n.t.irq_level());
        let mut got = vec![0u8; 100];
        n.m.read_slice(&mut got, GuestAddress(0x31000)).unwrap();
        let mut header = [0u8; HEADER_LEN];
        header[10] = 1;
        assert_eq!(&got[..HEADER_LEN], &header);
        assert_eq!(&got[HEADER_LEN..], &f[..100 - HEADER_LEN]);
        let mut rest = vec![0u8; f.len() - (100 - HEADER_LEN)];
        n.m.read_slice(&mut rest, GuestAddress(0x33000)).unwrap();
        assert_eq!(&rest[..], &f[100 - HEADER_LEN..]);
        assert_eq!(
            n.rx.used_elem(&n.m, 0),
            (u32::from(head), (HEADER_LEN + f.len()) as u32)
        );
        // The buffer's pages and the used ring's page: what a state transfer must resend.
        assert_eq!(
            n.dirty.iter().copied().collect::<Vec<_>>(),
            vec![0x12, 0x31, 0x33]
        );
        assert_eq!(n.t.device.stats().rx_frames, 1);
    }

    #[test]
    fn without_a_buffer_a_frame_is_dropped_and_counted() {
        let mut n = nic();
        assert_eq!(n.receive(&frame(60)), Some(Received::NoBuffer));
        assert!(!n.t.irq_level());
        assert_eq!(n.t.device.stats().rx_no_buffer, 1);
        assert!(n.dirty.is_empty(), "nothing written");
    }

    #[test]
    fn runts_and_oversized_frames_are_dropped_and_counted_without_using_a_buffer() {
        let mut n = nic();
        n.rx.post(&n.m, &[(0x31000, 2048, true)]);
        n.rx.post(&n.m, &[(0x32000, 2048, true)]);
        // 0 to 13 bytes: no Ethernet header (a TAP never hands these over, but a card must not
        // pass them on, and a log cannot hold them). 1519 bytes up: a TAP with its MTU raised
        // hands over up to 64 KiB; none of it may be cut to fit the guest's buffer.
        for len in [0, 1, 13] {
            assert_eq!(n.receive(&frame(len)), Some(Received::Runt), "{len} bytes");
        }
        for len in [MAX_FRAME + 1, 9014, 65_535] {
            assert_eq!(
                n.receive(&frame(len)),
                Some(Received::Oversized),
                "{len} bytes"
            );
        }
        assert_eq!(n.rx.used_idx(&n.m), 0, "no buffer was used");
        assert!(n.dirty.is_empty(), "nothing written");
        assert!(!n.t.irq_level());
        let stats = n.t.device.stats();
        assert_eq!((stats.rx_runts, stats.rx_oversized), (3, 3));
        assert_eq!((stats.rx_frames, stats.rx_bad_buffer), (0, 0));
        assert!(!Received::Runt.reached_the_guest());
        assert!(!Received::Oversized.reached_the_guest());
        // The shortest and the longest frame it takes still arrive whole, in the buffers that
        // were offered first.
        for len in [MIN_FRAME, MAX_FRAME] {
            assert_eq!(
                n.receive(&frame(len)),
                Some(Received::Delivered { notify: true })
            );
        }
        assert_eq!(
            n.rx.used_elem(&n.m, 0),
            (0, (HEADER_LEN + MIN_FRAME) as u32)
        );
        assert_eq!(
            n.rx.used_elem(&n.m, 1),
            (1, (HEADER_LEN + MAX_FRAME) as u32)
        );
        let mut got = vec![0u8; MAX_FRAME];
        n.m.read_slice(&mut got, GuestAddress(0x32000 + HEADER_LEN as u64))
            .unwrap();
        assert_eq!(got, frame(MAX_FRAME));
        assert_eq!(n.t.device.stats().rx_frames, 2);
    }

    #[test]
    fn a_buffer_too_small_or_read_only_is_returned_empty() {
        let mut n = nic();
        n.rx.post(&n.m, &[(0x31000, 64, true)]);
        n.rx.post(&n.m, &[(0x31000, 2048, false)]);
        assert_eq!(
            n.receive(&frame(60)),
            Some(Received::BadBuffer { notify: true })
        );
        assert_eq!(
            n.receive(&frame(60)),
            Some(Received::BadBuffer { notify: true })
        );
        assert_eq!(n.rx.used_elem(&n.m, 1).1, 0);
        assert_eq!(n.t.device.stats().rx_bad_buffer, 2);
        assert!(n.t.driver_ok());
    }

    #[test]
    fn a_receive_buffer_outside_memory_breaks_the_queue_not_the_vmm() {
        let mut n = nic();
        n.rx.post(&n.m, &[(0x3_ff00, 0x2000, true)]);
        assert_eq!(n.receive(&frame(1000)), None);
        assert!(!n.t.driver_ok());
        assert_eq!(n.t.errors().broken_queues, 1);
        assert_eq!(
            n.receive(&frame(60)),
            None,
            "nothing until the driver resets"
        );
    }

    #[test]
    fn a_driver_that_suppresses_interrupts_gets_none() {
        let mut n = nic();
        n.rx.suppress_interrupts(&n.m);
        n.rx.post(&n.m, &[(0x31000, 2048, true)]);
        assert_eq!(
            n.receive(&frame(60)),
            Some(Received::Delivered { notify: false })
        );
        assert!(!n.t.irq_level());
    }

    #[test]
    fn a_reset_drops_frames_not_yet_taken() {
        let mut n = nic();
        n.m.write_slice(&frame(80), GuestAddress(0x30000)).unwrap();
        n.tx.post(&n.m, &[(0x30000, 80, false)]);
        n.notify(u32::from(TX));
        n.t.reset();
        assert!(n.t.device.take_transmitted().is_empty());
        assert!(!n.t.driver_ok());
    }
}
