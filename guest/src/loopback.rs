//! An Ethernet "cable plugged into itself" for smoltcp: every frame the
//! interface transmits is received by the same interface, in order. It lets
//! the TCP stack run end to end inside the guest with no NIC and no VMM
//! device, so its cost and determinism can be measured on their own.
//!
//! smoltcp's own `phy::Loopback` needs `alloc` (a `VecDeque<Vec<u8>>`); the
//! guest has no heap, so this is a fixed ring of frame slots. Frames are
//! built and parsed in place (a transmit token lends smoltcp the tail slot, a
//! receive token the head slot): no frame is ever copied, which matters at
//! CPL0 on the target host, where `rep movsb` costs ~1 µs per byte.

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Ethernet MTU as smoltcp counts it: IP MTU 1500 plus the 14-byte header.
pub const FRAME_MAX: usize = 1514;
/// A request/response exchange has at most a handful of frames in flight
/// (data, ACK, ARP); more slots would only cost boot-time `.bss` zeroing,
/// which is emulated at CPL0.
const SLOTS: usize = 4;

#[derive(Debug)]
struct Slot {
    buf: [u8; FRAME_MAX],
    len: usize,
}

#[derive(Debug)]
struct Ring {
    /// Index of the oldest queued frame.
    head: usize,
    /// Number of queued frames.
    count: usize,
    /// Frames transmitted (queued or dropped), for the workload's summary.
    sent: u64,
    /// Frames dropped because every slot was taken, as a NIC drops them.
    dropped: u64,
}

impl Ring {
    fn tail(&self) -> usize {
        (self.head + self.count) % SLOTS
    }
}

#[derive(Debug)]
pub struct Loopback {
    slots: [Slot; SLOTS],
    ring: Ring,
    /// Where a frame goes when the ring is full: smoltcp still gets a buffer
    /// to build it in, and the frame is then discarded.
    scratch: [u8; FRAME_MAX],
}

impl Loopback {
    pub const fn new() -> Self {
        Self {
            slots: [const {
                Slot {
                    buf: [0; FRAME_MAX],
                    len: 0,
                }
            }; SLOTS],
            ring: Ring {
                head: 0,
                count: 0,
                sent: 0,
                dropped: 0,
            },
            scratch: [0; FRAME_MAX],
        }
    }

    /// Whether a transmitted frame is waiting to be received.
    pub fn has_pending(&self) -> bool {
        self.ring.count != 0
    }

    pub fn sent(&self) -> u64 {
        self.ring.sent
    }

    pub fn dropped(&self) -> u64 {
        self.ring.dropped
    }
}

pub struct RxToken<'a> {
    frame: &'a [u8],
}

/// `slot` is `None` when the ring is full: the frame lands in `scratch` and
/// is dropped.
pub struct TxToken<'a> {
    slot: Option<&'a mut Slot>,
    scratch: &'a mut [u8; FRAME_MAX],
    ring: &'a mut Ring,
}

impl phy::Device for Loopback {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        if self.ring.count == 0 {
            return None;
        }
        // Dequeue now: the receive token only reads the slot, and smoltcp
        // always consumes it. The transmit token smoltcp gets alongside (for
        // an immediate ACK or ARP reply) must not lend out the same slot,
        // which happens only when the ring was full.
        let rx = self.ring.head;
        self.ring.head = (rx + 1) % SLOTS;
        self.ring.count -= 1;
        let tx = self.ring.tail();
        let (rx_slot, tx_slot) = if rx == tx {
            (self.slots.get(rx)?, None)
        } else {
            let [r, t] = self.slots.get_disjoint_mut([rx, tx]).ok()?;
            (&*r, Some(t))
        };
        let frame = rx_slot.buf.get(..rx_slot.len)?;
        Some((
            RxToken { frame },
            TxToken {
                slot: tx_slot,
                scratch: &mut self.scratch,
                ring: &mut self.ring,
            },
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        let slot = if self.ring.count < SLOTS {
            self.slots.get_mut(self.ring.tail())
        } else {
            None
        };
        Some(TxToken {
            slot,
            scratch: &mut self.scratch,
            ring: &mut self.ring,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = FRAME_MAX;
        caps.max_burst_size = Some(1);
        // Checksums stay in software (the default): a NIC without offload
        // costs the same, so the measurement covers it.
        caps
    }
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.ring.sent += 1;
        // smoltcp never asks for more than the MTU; clamp rather than panic.
        let len = len.min(FRAME_MAX);
        match self.slot {
            Some(slot) => {
                slot.len = len;
                let r = f(&mut slot.buf[..len]);
                // The slot handed out is the tail, and nothing else changed
                // the ring while this token borrowed it.
                self.ring.count += 1;
                r
            }
            None => {
                self.ring.dropped += 1;
                f(&mut self.scratch[..len])
            }
        }
    }
}
