//! IDT with one 16-byte-aligned asm stub per vector, all funnelling into a
//! single entry path. That path saves every GPR (the guest is built without
//! SSE, so there is no vector state to switch), hands the
//! frame to Rust, and resumes whatever frame Rust returns -- which is how
//! tasks are switched.

use crate::gdt::KERNEL_CS;
use crate::sync::Global;

pub const VECTOR_YIELD: u8 = 0x81;

/// Stubs are laid out at `isr_stubs + 16 * vector`.
const STUB_STRIDE: u64 = 16;

core::arch::global_asm!(
    r#"
    .pushsection .text.isr, "ax", @progbits
    .balign 16
    .global isr_stubs
isr_stubs:
    .set isr_vec, 0
    .rept 256
    .balign 16
    /* Vectors where the CPU pushes an error code; keep one frame shape. */
    .if (isr_vec == 8) || (isr_vec == 10) || (isr_vec == 11) || (isr_vec == 12) || (isr_vec == 13) || (isr_vec == 14) || (isr_vec == 17) || (isr_vec == 21) || (isr_vec == 29) || (isr_vec == 30)
    .else
    pushq $0
    .endif
    pushq $isr_vec
    /* Hand-encoded rel32 jmp: a fixed size keeps every stub within 16 bytes. */
    .byte 0xe9
    .long isr_common - . - 4
    .set isr_vec, isr_vec + 1
    .endr

    .balign 16
    .global isr_common
isr_common:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    /* The CPU aligned RSP to 16 before its 5 pushes; 2 + 15 more pushes
       leave it 16-byte aligned here, as the SysV ABI wants. */
    movq %rsp, %rdi
    cld
    call isr_dispatch
    movq %rax, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $16, %rsp
    iretq
    .popsection
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static isr_stubs: u8;
}

/// Register state saved by the common entry path, lowest address first.
/// Must match the push order in `isr_common` exactly.
#[repr(C)]
#[derive(Debug)]
pub struct Frame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// A multiple of 16, so frames prepared at a 16-aligned stack top stay
/// aligned.
pub const FRAME_SIZE: usize = core::mem::size_of::<Frame>();
const _: () = assert!(FRAME_SIZE.is_multiple_of(16));

#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

const EMPTY_GATE: Gate = Gate {
    offset_low: 0,
    selector: 0,
    ist: 0,
    type_attr: 0,
    offset_mid: 0,
    offset_high: 0,
    reserved: 0,
};

/// Interrupt gates (IF cleared on entry) for everything: the dispatcher and
/// scheduler assume they run with interrupts off.
const GATE_KERNEL: u8 = 0x8e;

#[repr(C, align(16))]
struct Idt([Gate; 256]);

/// Written once at boot with interrupts disabled; read only by the CPU.
static IDT: Global<Idt> = Global::new(Idt([EMPTY_GATE; 256]));

#[repr(C, packed)]
struct Pointer {
    limit: u16,
    base: u64,
}

pub fn init() {
    let stubs = (&raw const isr_stubs) as u64;
    // SAFETY: boot, interrupts disabled: the IDT is not in use yet.
    let idt = unsafe { &mut *IDT.get() };
    for (vector, gate) in idt.0.iter_mut().enumerate() {
        let handler = stubs + STUB_STRIDE * vector as u64;
        *gate = Gate {
            offset_low: handler as u16,
            selector: KERNEL_CS,
            ist: 0,
            // No gate is callable with `int` from CPL3: system calls use
            // `ud2` (see syscall.rs).
            type_attr: GATE_KERNEL,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        };
    }
    let ptr = Pointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: IDT.get() as u64,
    };
    // SAFETY: the table is fully populated with valid gates.
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &raw const ptr, options(readonly, nostack)) };
}

/// Deliberately unrecoverable: with a zero-limit IDT, `ud2` (not `int3`,
/// which the host's CPL0 emulator cannot execute) raises #UD, whose delivery raises #GP,
/// which cannot be delivered either (#DF), which cannot be delivered
/// (triple fault -> shutdown).
pub fn triple_fault() -> ! {
    let ptr = Pointer { limit: 0, base: 0 };
    // SAFETY: intentionally destroys the machine; nothing runs afterwards.
    unsafe {
        core::arch::asm!("cli", "lidt [{}]", "ud2", in(reg) &raw const ptr, options(readonly, nostack));
    }
    crate::power::halt_forever()
}
