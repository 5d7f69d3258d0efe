//! Virtio devices (virtio 1.x) on the virtio-mmio transport.
//!
//! Everything here runs synchronously on the vCPU thread, at the exit that caused it (a
//! register access) or at a stop where the VMM delivers host input (a received frame): no
//! ioeventfd, no irqfd, no other thread touching guest memory. So every change a device makes
//! to guest memory happens at a position the log can name, and replay repeats it exactly.
//!
//! KVM's dirty log sees only the guest's own writes. A device's writes into guest memory (used
//! rings, received frames) go through [`GuestWrites`], which remembers the pages it wrote, so a
//! state transfer can send them too.

pub mod mmio;
pub mod net;

use std::collections::BTreeSet;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest page size for dirty tracking.
pub const PAGE_SIZE: u64 = 4096;

/// Feature bit every device offers and every driver must accept: the virtio 1.x layout
/// (little-endian, the 12-byte net header), not the legacy one.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Why a device gave up on what the driver put in a queue. The driver broke the protocol (or
/// its memory is corrupt): the device stops using the queue until reset, and says so in its
/// status (`DEVICE_NEEDS_RESET`), as the virtio spec asks; the VMM carries on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QueueError {
    /// The queue's rings or descriptors point outside guest memory, or loop.
    #[error("virtqueue {queue}: {what}")]
    Malformed {
        /// Which queue.
        queue: u16,
        /// What was wrong.
        what: String,
    },
}

/// A device behind the virtio-mmio transport: what it offers and what it does when the driver
/// notifies one of its queues.
pub trait VirtioDevice: std::fmt::Debug + Send {
    /// The virtio device ID (1 for a network card).
    fn device_id(&self) -> u32;
    /// Feature bits the device offers (including [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Largest size of each queue, by index.
    fn queue_max_sizes(&self) -> &[u16];
    /// A read of the device-specific configuration space at `offset`. Bytes past its end read
    /// 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver made buffers available on queue `index` (a `QueueNotify` write, driver
    /// ready). Returns whether the device put buffers in the used ring, so the transport
    /// raises the used-buffer interrupt.
    fn notify(
        &mut self,
        index: u16,
        queues: &mut [Queue],
        mem: &mut GuestWrites<'_>,
    ) -> Result<bool, QueueError>;
    /// The driver reset the device: forget everything negotiated and queued.
    fn reset(&mut self);
}

/// Writes into guest memory by a device, with the pages they touched remembered (KVM's dirty
/// log does not see them). Reads go straight to memory.
#[derive(Debug)]
pub struct GuestWrites<'a> {
    mem: &'a GuestMemoryMmap,
    dirty: &'a mut BTreeSet<u64>,
}

impl<'a> GuestWrites<'a> {
    /// Device access to `mem`, adding the page numbers it writes to `dirty`.
    pub fn new(mem: &'a GuestMemoryMmap, dirty: &'a mut BTreeSet<u64>) -> Self {
        Self { mem, dirty }
    }

    /// Guest memory, for reads and for virtio-queue's ring handling (whose writes the caller
    /// marks with [`GuestWrites::mark`]).
    pub fn memory(&self) -> &'a GuestMemoryMmap {
        self.mem
    }

    /// Remembers that `len` bytes at `addr` were written.
    pub fn mark(&mut self, addr: u64, len: u64) {
        if len == 0 {
            return;
        }
        let last = addr.saturating_add(len - 1) / PAGE_SIZE;
        for page in addr / PAGE_SIZE..=last {
            self.dirty.insert(page);
        }
    }

    /// Writes `data` at `addr`; false (nothing written) if the range is not all guest memory.
    pub fn write(&mut self, addr: u64, data: &[u8]) -> bool {
        if self.mem.write_slice(data, GuestAddress(addr)).is_err() {
            return false;
        }
        self.mark(addr, data.len() as u64);
        true
    }

    /// Puts descriptor chain `head` with `len` bytes written into `queue`'s used ring, and
    /// marks the ring's pages written.
    pub fn add_used(
        &mut self,
        queue: &mut Queue,
        index: u16,
        head: u16,
        len: u32,
    ) -> Result<(), QueueError> {
        queue
            .add_used(self.mem, head, len)
            .map_err(|e| QueueError::Malformed {
                queue: index,
                what: format!("cannot write the used ring: {e}"),
            })?;
        // flags, idx, the ring, used_event.
        let ring_len = 4 + 8 * u64::from(queue.size()) + 2;
        self.mark(queue.used_ring(), ring_len);
        Ok(())
    }
}

/// Pages of guest memory the devices wrote since the set was last taken.
pub type DirtyPages = BTreeSet<u64>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_every_page_a_write_touches_and_no_other() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut dirty = DirtyPages::new();
        let mut w = GuestWrites::new(&mem, &mut dirty);
        assert!(w.write(0x0ffe, &[1, 2, 3, 4]));
        assert!(w.write(0x3000, &[9]));
        w.mark(0x5000, 0);
        assert!(!w.write(0xfffe, &[0; 4]), "past the end of memory");
        assert_eq!(dirty.iter().copied().collect::<Vec<_>>(), vec![0, 1, 3]);
        let mut back = [0u8; 4];
        mem.read_slice(&mut back, GuestAddress(0x0ffe)).unwrap();
        assert_eq!(back, [1, 2, 3, 4]);
    }
}
