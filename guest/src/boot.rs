//! PVH entry: the loader jumps here in 32-bit protected mode with paging off,
//! flat segments, %ebx = physical address of `hvm_start_info`, and no usable
//! stack. We switch to long mode with an identity map of the first 1 GiB and
//! call `kmain`.
//!
//! The stub is deliberately short and loop-light: on the target host CPL0
//! code is emulated instruction by instruction.

core::arch::global_asm!(
    r#"
    /*
     * XEN_ELFNOTE_PHYS32_ENTRY (18): linux-loader, QEMU -kernel and
     * Firecracker look for this note to recognise a PVH kernel.
     */
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4                 /* namesz: "Xen\0" */
    .long 4                 /* descsz */
    .long 18                /* type */
    .asciz "Xen"
    .balign 4
    .long pvh_start32
    .balign 4
    .popsection

    .pushsection .text.boot, "ax", @progbits
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    movl %ebx, %esi

    /* The loader does not clear .bss; the page tables below rely on it. */
    movl $__bss_start, %edi
    movl $__bss_end, %ecx
    subl %edi, %ecx
    shrl $2, %ecx
    xorl %eax, %eax
    rep stosl

    movl $boot_stack_top, %esp

    /* User bit everywhere so CPL3 tasks can run from the kernel image. */
    movl $boot_pdpt, %eax
    orl $0x7, %eax
    movl %eax, boot_pml4
    movl $boot_pd, %eax
    orl $0x7, %eax
    movl %eax, boot_pdpt

    /* 512 x 2 MiB pages: Present | Writable | User | PageSize. */
    movl $boot_pd, %edi
    movl $0x87, %eax
    movl $512, %ecx
1:
    movl %eax, (%edi)
    addl $0x200000, %eax
    addl $8, %edi
    decl %ecx
    jnz 1b

    movl $boot_pml4, %eax
    movl %eax, %cr3

    /* PAE, OSFXSR, OSXMMEXCPT: compiler-generated code uses SSE. */
    movl %cr4, %eax
    orl $0x620, %eax
    movl %eax, %cr4

    /* EFER.LME */
    movl $0xC0000080, %ecx
    rdmsr
    orl $0x100, %eax
    wrmsr

    /* Clear EM; set PG | NE | MP | PE. */
    movl %cr0, %eax
    andl $0xFFFFFFFB, %eax
    orl $0x80000023, %eax
    movl %eax, %cr0

    lgdt boot_gdt_ptr
    ljmp $0x08, $pvh_start64

    .code64
pvh_start64:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    xorw %ax, %ax
    movw %ax, %fs
    movw %ax, %gs
    movq $boot_stack_top, %rsp
    movl %esi, %edi
    xorl %ebp, %ebp
    call kmain
2:
    cli
    hlt
    jmp 2b
    .popsection

    .pushsection .rodata.boot_gdt, "a", @progbits
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code, DPL0 */
    .quad 0x00cf92000000ffff    /* 0x10: data, DPL0 */
boot_gdt_end:
    .balign 4
    .word 0
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt
    .popsection

    .pushsection .bss.boot_page_tables, "aw", @nobits
    .balign 4096
boot_pml4:
    .skip 4096
    .global boot_pdpt
boot_pdpt:
    .skip 4096
boot_pd:
    .skip 4096
    .popsection

    .pushsection .stacks, "aw", @nobits
    .balign 16
    .global boot_stack_bottom
boot_stack_bottom:
    .skip 16384
    .global boot_stack_top
boot_stack_top:
    .popsection
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static boot_stack_top: u8;
}

/// Top of the stack `kmain` runs on (the boot task's kernel stack).
pub fn boot_stack_top_addr() -> u64 {
    (&raw const boot_stack_top) as u64
}
