//! A small virtio-net driver: virtio 1.x over virtio-mmio (register layout version 2), split
//! virtqueues, features VERSION_1 and MAC only, no allocation.
//!
//! The kernel initialises the card at boot (CPL0); from then on the CPL3 server task owns
//! the rings: it polls the used rings straight from memory and notifies the card with one
//! MMIO store (one exit), with no system call. The interrupt handler (CPL0) only reads and
//! acknowledges InterruptStatus. The register window and the rings are mapped
//! user-accessible for that (see [`map_window`]).
//!
//! Receive: every descriptor `i` of queue 0 permanently points at receive buffer `i`
//! (header + one whole frame: no MRG_RXBUF); a buffer goes back on the available ring as soon
//! as smoltcp has parsed the frame in place. Transmit: one descriptor per frame, the 12-byte
//! header and the frame contiguous in transmit buffer `i`; the card consumes transmit buffers
//! synchronously at the notify exit, so a full ring is drained by notifying.
//!
//! Interrupts are suppressed (`VIRTQ_AVAIL_F_NO_INTERRUPT`) on the transmit queue always and
//! on the receive queue while the task runs; the task enables them only just before it
//! sleeps, so a busy server takes no interrupt at all.

use crate::sync::Global;
use core::sync::atomic::{AtomicU64, Ordering, compiler_fence, fence};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Entries per queue (the card offers up to 256).
pub const QUEUE_SIZE: usize = 64;
/// `virtio_net_hdr_v1`.
pub const HEADER_LEN: usize = 12;
/// A whole Ethernet frame without the FCS (the IP MTU is 1500).
pub const FRAME_MAX: usize = 1514;
const BUF_SIZE: usize = 1536;
const _: () = assert!(BUF_SIZE >= HEADER_LEN + FRAME_MAX);

const MAGIC: u32 = 0x7472_6976;
const DEVICE_NET: u32 = 1;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;

mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
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
    pub const CONFIG: u64 = 0x100;
}

mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const FAILED: u32 = 128;
}

const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;
const RX: u32 = 0;
const TX: u32 = 1;

#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C)]
struct Avail {
    flags: u16,
    idx: u16,
    ring: [u16; QUEUE_SIZE],
    used_event: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UsedElem {
    id: u32,
    len: u32,
}

#[repr(C)]
struct Used {
    flags: u16,
    idx: u16,
    ring: [UsedElem; QUEUE_SIZE],
    avail_event: u16,
}

/// One split virtqueue (descriptor table 16-aligned, available ring 2-aligned, used ring
/// 4-aligned: `repr(C)` keeps each field at its natural alignment).
#[repr(C, align(4096))]
struct Ring {
    desc: [Desc; QUEUE_SIZE],
    avail: Avail,
    used: Used,
}

const EMPTY_RING: Ring = Ring {
    desc: [Desc {
        addr: 0,
        len: 0,
        flags: 0,
        next: 0,
    }; QUEUE_SIZE],
    avail: Avail {
        flags: 0,
        idx: 0,
        ring: [0; QUEUE_SIZE],
        used_event: 0,
    },
    used: Used {
        flags: 0,
        idx: 0,
        ring: [UsedElem { id: 0, len: 0 }; QUEUE_SIZE],
        avail_event: 0,
    },
};

type Buffers = [[u8; BUF_SIZE]; QUEUE_SIZE];

/// The rings: zeroed with `.bss` at boot (the card reads them).
static RINGS: Global<[Ring; 2]> = Global::new([EMPTY_RING, EMPTY_RING]);

/// Frame buffers: never read before written (by the card or by smoltcp), so they sit in
/// memory the boot stub does not zero (`.noinit`, see link.ld): zeroing at CPL0 costs ~1 µs
/// per 4 bytes on the target host.
#[unsafe(link_section = ".noinit.net")]
static BUFFERS: Global<[Buffers; 2]> = Global::new([[[0; BUF_SIZE]; QUEUE_SIZE]; 2]);

/// Base of the register window, for the interrupt handler.
static BASE: AtomicU64 = AtomicU64::new(0);
/// Interrupts taken, and the configuration-change ones among them (a broken queue).
static INTERRUPTS: AtomicU64 = AtomicU64::new(0);
static CONFIG_CHANGES: AtomicU64 = AtomicU64::new(0);

fn read32(base: u64, off: u64) -> u32 {
    // SAFETY: `base` is the mapped register window of the card (checked at init).
    unsafe { core::ptr::read_volatile((base + off) as *const u32) }
}

fn write32(base: u64, off: u64, v: u32) {
    // SAFETY: as in read32.
    unsafe { core::ptr::write_volatile((base + off) as *mut u32, v) }
}

/// Maps the card's register window (`addr`, `size` bytes inside one 4 KiB page, above the
/// identity-mapped first GiB) uncached and user-accessible, so the CPL3 task can notify the
/// card directly. CPL0, interrupts off, at boot.
pub fn map_window(addr: u64, size: u64) -> Result<(), &'static str> {
    #[repr(C, align(4096))]
    struct Table([u64; 512]);
    static PD: Global<Table> = Global::new(Table([0; 512]));
    static PT: Global<Table> = Global::new(Table([0; 512]));
    unsafe extern "C" {
        static mut boot_pdpt: [u64; 512];
    }
    const PRESENT_WRITE_USER: u64 = 0x7;
    const PWT_PCD: u64 = 0x18;
    if size == 0 || (addr & 0xfff) + size > 0x1000 {
        return Err("the card's window must lie inside one 4 KiB page");
    }
    let pdpt_index = (addr >> 30) as usize;
    if pdpt_index == 0 {
        return Err("the card's window overlaps RAM (the first GiB)");
    }
    if pdpt_index >= 512 {
        return Err("the card's window is above 512 GiB");
    }
    // SAFETY: boot, interrupts off, single CPU: nothing else walks or writes the tables;
    // only an unused PDPT entry is filled, then CR3 is reloaded to flush the TLB.
    unsafe {
        let pd = &mut *PD.get();
        let pt = &mut *PT.get();
        pt.0[((addr >> 12) & 511) as usize] = (addr & !0xfff) | PWT_PCD | PRESENT_WRITE_USER;
        pd.0[((addr >> 21) & 511) as usize] = PT.get() as u64 | PRESENT_WRITE_USER;
        (&raw mut boot_pdpt)
            .cast::<u64>()
            .add(pdpt_index)
            .write_volatile(PD.get() as u64 | PRESENT_WRITE_USER);
        core::arch::asm!("mov {t}, cr3", "mov cr3, {t}", t = out(reg) _, options(nostack));
    }
    Ok(())
}

#[derive(Debug)]
struct RxQueue {
    ring: *mut Ring,
    bufs: *mut Buffers,
    /// Next used-ring entry to look at.
    last_used: u16,
    /// Our copy of avail.idx.
    avail_idx: u16,
    base: u64,
    /// Receive notifications sent (exits).
    notifies: u64,
}

#[derive(Debug)]
struct TxQueue {
    ring: *mut Ring,
    bufs: *mut Buffers,
    last_used: u16,
    avail_idx: u16,
    free: [u16; QUEUE_SIZE],
    free_len: usize,
    /// Frames queued since the last notify.
    unsent: bool,
    base: u64,
    frames: u64,
    notifies: u64,
}

/// The card, owned by the server task.
#[derive(Debug)]
pub struct VirtioNet {
    mac: [u8; 6],
    rx: RxQueue,
    tx: TxQueue,
    rx_frames: u64,
}

fn used_idx(ring: *mut Ring) -> u16 {
    // SAFETY: `ring` is one of RINGS; an aligned 16-bit volatile read is one load, so it sees
    // a whole index whether the card writes it while the vCPU is stopped (understudy's) or
    // beside it (QEMU's).
    unsafe { (&raw const (*ring).used.idx).read_volatile() }
}

fn used_elem(ring: *mut Ring, at: u16) -> UsedElem {
    // SAFETY: as in used_idx; the index is reduced modulo the ring size.
    unsafe { (&raw const (*ring).used.ring[usize::from(at) % QUEUE_SIZE]).read_volatile() }
}

/// Puts descriptor `id` on the available ring.
fn offer(ring: *mut Ring, avail_idx: &mut u16, id: u16) {
    // SAFETY: `ring` is one of RINGS, owned by the caller's queue; the slot index is reduced
    // modulo the ring size. The ring entry is written before the index, and the compiler
    // may not reorder them (x86 keeps stores in order, and the card reads the ring only at
    // exits).
    unsafe {
        (&raw mut (*ring).avail.ring[usize::from(*avail_idx) % QUEUE_SIZE]).write_volatile(id);
        compiler_fence(Ordering::SeqCst);
        *avail_idx = avail_idx.wrapping_add(1);
        (&raw mut (*ring).avail.idx).write_volatile(*avail_idx);
    }
}

fn used_flags(ring: *mut Ring) -> u16 {
    // SAFETY: as in used_idx.
    unsafe { (&raw const (*ring).used.flags).read_volatile() }
}

impl RxQueue {
    /// Gives receive buffer `id` back to the card, notifying it only if it may have stopped
    /// for want of buffers. A card that runs beside the vCPU (QEMU's) stops taking frames
    /// from its backend once the ring is empty and waits for a notification; understudy's
    /// looks at the ring whenever it delivers, so a notification per buffer would be an exit
    /// per frame for nothing. The card can be waiting only if it has used every buffer
    /// offered before this one; it then also clears `USED_F_NO_NOTIFY` before it looks at
    /// the ring once more, and that look sees this buffer if it comes after our reads.
    fn give_back(&mut self, id: u16) {
        offer(self.ring, &mut self.avail_idx, id);
        // The index store must be visible before the loads below (x86 lets a load pass an
        // earlier store), or the card and we could each miss the other's update.
        fence(Ordering::SeqCst);
        if self.avail_idx.wrapping_sub(used_idx(self.ring)) <= 1
            && used_flags(self.ring) & USED_F_NO_NOTIFY == 0
        {
            self.notifies += 1;
            write32(self.base, reg::QUEUE_NOTIFY, RX);
        }
    }
}

fn set_avail_flags(ring: *mut Ring, flags: u16) {
    // SAFETY: as in offer.
    unsafe { (&raw mut (*ring).avail.flags).write_volatile(flags) };
    compiler_fence(Ordering::SeqCst);
}

impl VirtioNet {
    /// Resets and initialises the card at `base` (virtio 1.x §3.1.1). CPL0, at boot.
    pub fn init(base: u64) -> Result<Self, &'static str> {
        if read32(base, reg::MAGIC_VALUE) != MAGIC {
            return Err("no virtio-mmio device at the given address");
        }
        if read32(base, reg::VERSION) != 2 {
            return Err("the virtio-mmio device is not version 2 (virtio 1.x)");
        }
        if read32(base, reg::DEVICE_ID) != DEVICE_NET {
            return Err("the virtio-mmio device is not a network card");
        }
        write32(base, reg::STATUS, 0);
        write32(base, reg::STATUS, status::ACKNOWLEDGE);
        write32(base, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        write32(base, reg::DEVICE_FEATURES_SEL, 0);
        let low = u64::from(read32(base, reg::DEVICE_FEATURES));
        write32(base, reg::DEVICE_FEATURES_SEL, 1);
        let high = u64::from(read32(base, reg::DEVICE_FEATURES));
        let offered = low | (high << 32);
        let wanted = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC;
        if offered & wanted != wanted {
            write32(base, reg::STATUS, status::FAILED);
            return Err("the card does not offer VERSION_1 and MAC");
        }
        write32(base, reg::DRIVER_FEATURES_SEL, 0);
        write32(base, reg::DRIVER_FEATURES, wanted as u32);
        write32(base, reg::DRIVER_FEATURES_SEL, 1);
        write32(base, reg::DRIVER_FEATURES, (wanted >> 32) as u32);
        let s = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        write32(base, reg::STATUS, s);
        if read32(base, reg::STATUS) & status::FEATURES_OK == 0 {
            write32(base, reg::STATUS, status::FAILED);
            return Err("the card refused our features");
        }

        let rings = RINGS.get().cast::<Ring>();
        let bufs = BUFFERS.get().cast::<Buffers>();
        for q in [RX, TX] {
            // SAFETY: q is 0 or 1, inside both two-element arrays.
            let (ring, buf) = unsafe { (rings.add(q as usize), bufs.add(q as usize)) };
            write32(base, reg::QUEUE_SEL, q);
            if read32(base, reg::QUEUE_NUM_MAX) < QUEUE_SIZE as u32 {
                write32(base, reg::STATUS, status::FAILED);
                return Err("the card's queues are too small");
            }
            write32(base, reg::QUEUE_NUM, QUEUE_SIZE as u32);
            // SAFETY: boot, nothing else uses the rings yet.
            let (desc, avail, used) = unsafe {
                let r = &mut *ring;
                for (i, d) in r.desc.iter_mut().enumerate() {
                    *d = Desc {
                        addr: (*buf).as_ptr().add(i) as u64,
                        len: BUF_SIZE as u32,
                        flags: if q == RX { DESC_F_WRITE } else { 0 },
                        next: 0,
                    };
                }
                r.avail.flags = AVAIL_F_NO_INTERRUPT;
                r.avail.idx = 0;
                r.used.idx = 0;
                (
                    &raw const r.desc as u64,
                    &raw const r.avail as u64,
                    &raw const r.used as u64,
                )
            };
            for (lo, hi, v) in [
                (reg::QUEUE_DESC_LOW, reg::QUEUE_DESC_HIGH, desc),
                (reg::QUEUE_DRIVER_LOW, reg::QUEUE_DRIVER_HIGH, avail),
                (reg::QUEUE_DEVICE_LOW, reg::QUEUE_DEVICE_HIGH, used),
            ] {
                write32(base, lo, v as u32);
                write32(base, hi, (v >> 32) as u32);
            }
            write32(base, reg::QUEUE_READY, 1);
        }
        let mut mac = [0u8; 6];
        for (i, b) in mac.iter_mut().enumerate() {
            // SAFETY: the configuration space follows the registers in the mapped window.
            *b = unsafe { core::ptr::read_volatile((base + reg::CONFIG + i as u64) as *const u8) };
        }

        let mut rx = RxQueue {
            ring: rings,
            bufs,
            last_used: 0,
            avail_idx: 0,
            base,
            notifies: 0,
        };
        for id in 0..QUEUE_SIZE as u16 {
            offer(rx.ring, &mut rx.avail_idx, id);
        }
        let mut free = [0u16; QUEUE_SIZE];
        for (i, f) in free.iter_mut().enumerate() {
            *f = i as u16;
        }
        // SAFETY: index 1 of the two-element arrays.
        let (tx_ring, tx_bufs) = unsafe { (rings.add(1), bufs.add(1)) };
        let tx = TxQueue {
            ring: tx_ring,
            bufs: tx_bufs,
            last_used: 0,
            avail_idx: 0,
            free,
            free_len: QUEUE_SIZE,
            unsent: false,
            base,
            frames: 0,
            notifies: 0,
        };
        write32(base, reg::STATUS, s | status::DRIVER_OK);
        write32(base, reg::QUEUE_NOTIFY, RX);
        BASE.store(base, Ordering::SeqCst);
        Ok(Self {
            mac,
            rx,
            tx,
            rx_frames: 0,
        })
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Whether a received frame waits in the used ring.
    pub fn rx_pending(&self) -> bool {
        used_idx(self.rx.ring) != self.rx.last_used
    }

    /// Whether the card raises an interrupt for received frames (only while the task is
    /// about to sleep).
    pub fn set_rx_interrupts(&mut self, on: bool) {
        set_avail_flags(self.rx.ring, if on { 0 } else { AVAIL_F_NO_INTERRUPT });
    }

    /// Frames received, frames transmitted, transmit notifications (exits).
    pub fn counters(&self) -> (u64, u64, u64) {
        (self.rx_frames, self.tx.frames, self.tx.notifies)
    }

    /// Receive notifications: buffers given back to a card that had run out of them.
    pub fn rx_notifies(&self) -> u64 {
        self.rx.notifies
    }

    /// Notifies the card of the frames queued since the last call: one exit.
    pub fn flush(&mut self) {
        self.tx.flush();
    }
}

impl TxQueue {
    fn flush(&mut self) {
        if self.unsent {
            self.unsent = false;
            self.notifies += 1;
            write32(self.base, reg::QUEUE_NOTIFY, TX);
        }
    }

    /// Takes back the buffers the card has sent.
    fn reclaim(&mut self) {
        let idx = used_idx(self.ring);
        while self.last_used != idx {
            let id = used_elem(self.ring, self.last_used).id;
            self.last_used = self.last_used.wrapping_add(1);
            if let (Some(slot), true) =
                (self.free.get_mut(self.free_len), (id as usize) < QUEUE_SIZE)
            {
                *slot = id as u16;
                self.free_len += 1;
            }
        }
    }

    /// A free buffer, notifying the card (which then sends everything at once) if none is.
    fn take(&mut self) -> Option<u16> {
        if self.free_len == 0 {
            self.reclaim();
        }
        if self.free_len == 0 {
            self.flush();
            self.reclaim();
        }
        if self.free_len == 0 {
            return None;
        }
        self.free_len -= 1;
        self.free.get(self.free_len).copied()
    }
}

/// The kernel's half, from the interrupt handler (CPL0): acknowledges whatever the card
/// signalled, which lowers its line.
pub fn on_interrupt() {
    let base = BASE.load(Ordering::SeqCst);
    if base == 0 {
        return;
    }
    let status = read32(base, reg::INTERRUPT_STATUS);
    if status != 0 {
        write32(base, reg::INTERRUPT_ACK, status);
    }
    INTERRUPTS.fetch_add(1, Ordering::SeqCst);
    if status & 2 != 0 {
        CONFIG_CHANGES.fetch_add(1, Ordering::SeqCst);
    }
}

/// Interrupts the card raised, and how many of them flagged a configuration change (a queue
/// the card found broken). Plain memory reads: callable at CPL3.
pub fn interrupts() -> (u64, u64) {
    (
        INTERRUPTS.load(Ordering::SeqCst),
        CONFIG_CHANGES.load(Ordering::SeqCst),
    )
}

pub struct RxToken<'a> {
    q: &'a mut RxQueue,
    id: u16,
    len: usize,
}

pub struct TxToken<'a> {
    q: &'a mut TxQueue,
}

impl phy::Device for VirtioNet {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        loop {
            if used_idx(self.rx.ring) == self.rx.last_used {
                return None;
            }
            let e = used_elem(self.rx.ring, self.rx.last_used);
            self.rx.last_used = self.rx.last_used.wrapping_add(1);
            let (id, len) = (e.id as usize, e.len as usize);
            if id >= QUEUE_SIZE {
                // Not a buffer we offered: nothing to give back.
                continue;
            }
            if !(HEADER_LEN..=BUF_SIZE).contains(&len) {
                self.rx.give_back(id as u16);
                continue;
            }
            self.rx_frames += 1;
            return Some((
                RxToken {
                    q: &mut self.rx,
                    id: id as u16,
                    len: len - HEADER_LEN,
                },
                TxToken { q: &mut self.tx },
            ));
        }
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken { q: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = FRAME_MAX;
        caps
    }
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        // SAFETY: the card filled buffer `id` and handed it back through the used ring;
        // until it is offered again below nobody else touches it.
        let buf = unsafe { &(*self.q.bufs)[usize::from(self.id)] };
        let frame = buf.get(HEADER_LEN..HEADER_LEN + self.len).unwrap_or(&[]);
        let r = f(frame);
        self.q.give_back(self.id);
        r
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        static SCRATCH: Global<[u8; BUF_SIZE]> = Global::new([0; BUF_SIZE]);
        let len = len.min(FRAME_MAX);
        let Some(id) = self.q.take() else {
            // The card took nothing even after a notify (a broken queue): the frame is
            // built and dropped, as a NIC drops it.
            // SAFETY: only the server task transmits, one frame at a time.
            let scratch = unsafe { &mut *SCRATCH.get() };
            return f(&mut scratch[..len]);
        };
        // SAFETY: buffer `id` was free: the card is done with it and it is not offered.
        let buf = unsafe { &mut (*self.q.bufs)[usize::from(id)] };
        buf[..HEADER_LEN].fill(0);
        let r = f(&mut buf[HEADER_LEN..HEADER_LEN + len]);
        // SAFETY: descriptor `id` belongs to this free buffer; the card reads it only after
        // it is offered.
        unsafe {
            (&raw mut (*self.q.ring).desc[usize::from(id)].len)
                .write_volatile((HEADER_LEN + len) as u32);
        }
        offer(self.q.ring, &mut self.q.avail_idx, id);
        self.q.unsent = true;
        self.q.frames += 1;
        r
    }
}
