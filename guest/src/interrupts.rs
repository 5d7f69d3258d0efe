//! Rust side of the common interrupt path: routes a saved frame by vector and
//! returns the frame to resume (a different task's after a switch).

use crate::fmt::LineBuf;
use crate::idt::{Frame, VECTOR_YIELD};
use crate::{clock, console, pic, power, sched, syscall, virtio_net};
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// Timer ticks and network-card interrupts taken so far. A CPL3 task reads it from memory
/// before its last look for work and passes it to `SYS_WAIT_IRQ`, which returns as soon as
/// it differs: no interrupt between the look and the sleep is lost.
pub static EVENTS: AtomicU64 = AtomicU64::new(0);

/// The PIC line of the network card, if one is driven (0xff: none).
static NIC_IRQ: AtomicU8 = AtomicU8::new(0xff);

pub fn events() -> u64 {
    EVENTS.load(Ordering::SeqCst)
}

/// Routes PIC line `irq` to the network card's handler and unmasks it. CPL0, interrupts off.
pub fn route_nic(irq: u8) {
    NIC_IRQ.store(irq, Ordering::SeqCst);
    pic::unmask(irq);
}

const EXCEPTION_NAMES: [&str; 32] = [
    "divide error",
    "debug",
    "nmi",
    "breakpoint",
    "overflow",
    "bound range",
    "invalid opcode",
    "device not available",
    "double fault",
    "coprocessor segment overrun",
    "invalid tss",
    "segment not present",
    "stack fault",
    "general protection",
    "page fault",
    "reserved",
    "x87 floating point",
    "alignment check",
    "machine check",
    "simd floating point",
    "virtualization",
    "control protection",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "reserved",
    "hypervisor injection",
    "vmm communication",
    "security",
    "reserved",
];

const IRQ_BASE: u64 = pic::MASTER_VECTOR as u64;
const IRQ_TIMER: u64 = IRQ_BASE;
const IRQ_LAST: u64 = IRQ_BASE + 15;

/// Called from `isr_common` with interrupts disabled.
#[unsafe(no_mangle)]
extern "C" fn isr_dispatch(frame: *mut Frame) -> *mut Frame {
    // SAFETY: `isr_common` passes the frame it just pushed on the current
    // stack; nothing else aliases it while we run.
    let vector = unsafe { (*frame).vector };
    match vector {
        // SAFETY: see above; the frame is ours until we return it.
        6 if syscall::is_syscall(unsafe { &*frame }) => {
            // SAFETY: as above.
            unsafe { (*frame).rip += syscall::SYSCALL_OPCODE.len() as u64 };
            syscall::handle(frame)
        }
        0..=31 => exception(frame),
        IRQ_TIMER => {
            // The PIC ended the interrupt itself (auto-EOI, pic.rs): nothing
            // to acknowledge there before possibly switching away.
            clock::tick();
            EVENTS.fetch_add(1, Ordering::SeqCst);
            sched::on_timer(frame)
        }
        v @ 0x21..=IRQ_LAST => {
            let irq = (v - IRQ_BASE) as u8;
            // Anything else is spurious (IRQ7/IRQ15 when a request vanished
            // before the CPU accepted it); with auto-EOI nothing is in service,
            // so nothing is acknowledged at the PIC either way.
            if irq == NIC_IRQ.load(Ordering::SeqCst) {
                // The card's line falls once its status is acknowledged.
                virtio_net::on_interrupt();
                EVENTS.fetch_add(1, Ordering::SeqCst);
            }
            frame
        }
        v if v == u64::from(VECTOR_YIELD) => sched::schedule(frame),
        v => {
            let mut line = LineBuf::new();
            line.str("guest: unexpected interrupt ").dec(v).newline();
            console::write_raw(line.as_bytes());
            power::exit(power::EXIT_EXCEPTION)
        }
    }
}

fn exception(frame: *mut Frame) -> ! {
    // SAFETY: see `isr_dispatch`.
    let f = unsafe { &*frame };
    let name = EXCEPTION_NAMES
        .get(f.vector as usize)
        .copied()
        .unwrap_or("?");
    let mut line = LineBuf::new();
    line.str("guest: exception ")
        .dec(f.vector)
        .str(" (")
        .str(name)
        .str(") at rip=")
        .hex(f.rip)
        .str(" err=")
        .hex(f.error_code)
        .str(" cs=")
        .hex(f.cs)
        .newline();
    console::write_raw(line.as_bytes());
    power::exit(power::EXIT_EXCEPTION)
}
