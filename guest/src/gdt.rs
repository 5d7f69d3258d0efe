//! Final GDT (kernel + user segments) and the TSS whose `rsp0` gives each
//! CPL3 task its own kernel stack on interrupt entry.

use crate::sync::Global;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const USER_DS: u16 = 0x18 | 3;
pub const USER_CS: u16 = 0x20 | 3;
const TSS_SEL: u16 = 0x28;

#[repr(C, packed)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

const TSS_SIZE: usize = core::mem::size_of::<Tss>();

/// Only written with interrupts disabled (boot, and the scheduler inside
/// ISRs); the CPU reads `rsp0` on CPL3 -> CPL0 transitions.
static TSS: Global<Tss> = Global::new(Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    // Past the limit: no I/O bitmap, so CPL3 port I/O faults.
    iomap_base: TSS_SIZE as u16,
});

#[repr(C, align(16))]
struct Gdt([u64; 7]);

static GDT: Global<Gdt> = Global::new(Gdt([
    0,
    0x00af_9a00_0000_ffff, // 0x08 kernel code, 64-bit
    0x00cf_9200_0000_ffff, // 0x10 kernel data
    0x00cf_f200_0000_ffff, // 0x18 user data, DPL3
    0x00af_fa00_0000_ffff, // 0x20 user code, 64-bit, DPL3
    0,                     // 0x28 TSS low (filled in at init)
    0,                     // 0x30 TSS high
]));

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

pub fn init(boot_stack_top: u64) {
    let tss = TSS.get() as u64;
    let limit = (TSS_SIZE - 1) as u64;
    let low = (limit & 0xffff)
        | ((tss & 0xff_ffff) << 16)
        | (0x89 << 40) // present, 64-bit available TSS
        | (((limit >> 16) & 0xf) << 48)
        | (((tss >> 24) & 0xff) << 56);
    let high = tss >> 32;
    set_rsp0(boot_stack_top);
    // SAFETY: boot, interrupts disabled, single CPU: nobody else uses the GDT
    // yet (the boot GDT is still loaded).
    unsafe {
        let gdt = &mut *GDT.get();
        gdt.0[5] = low;
        gdt.0[6] = high;
    }
    let ptr = Pointer {
        limit: (core::mem::size_of::<Gdt>() - 1) as u16,
        base: GDT.get() as u64,
    };
    // SAFETY: the new GDT keeps the boot selectors (0x08 code, 0x10 data)
    // valid, so reloading CS via a far return and the data segments is
    // seamless; the TSS descriptor was just filled in.
    unsafe {
        core::arch::asm!(
            "lgdt [{ptr}]",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "retfq",
            "2:",
            "mov ds, {ds:x}",
            "mov es, {ds:x}",
            "mov ss, {ds:x}",
            "ltr {tss:x}",
            ptr = in(reg) &raw const ptr,
            cs = in(reg) u64::from(KERNEL_CS),
            ds = in(reg) u64::from(KERNEL_DS),
            tss = in(reg) u64::from(TSS_SEL),
            tmp = out(reg) _,
        );
    }
}

/// Privilege level of the code calling this (the low bits of CS).
pub fn current_cpl() -> u8 {
    let cs: u16;
    // SAFETY: reading CS has no side effects and works at any CPL.
    unsafe {
        core::arch::asm!("mov {:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags))
    };
    (cs & 3) as u8
}

/// Kernel stack used when the next interrupt arrives from CPL3.
pub fn set_rsp0(top: u64) {
    // SAFETY: called with interrupts disabled (boot or inside an ISR); the
    // field is packed so it is written unaligned.
    unsafe {
        (&raw mut (*TSS.get()).rsp)
            .cast::<u64>()
            .write_unaligned(top)
    };
}
