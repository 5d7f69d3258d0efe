//! Bare cost of one port-I/O VM exit on this host, with no VMM around it: the floor that
//! understudy's per-exit cost (bench/run.sh, `exits` workload) is compared against.
//!
//! The guest is the same three-instruction loop as the `exits` workload (`out dx, al; dec ecx;
//! jnz`), run at CPL0 in 32-bit protected mode with paging off and flat segments (the PVH entry
//! state, as in `vmm::boot::entry_state`; real mode is not used because the PVM backend is not
//! known to support it). Each `KVM_RUN` returns at the `out`, and we re-enter at once.
//!
//! Usage: `cargo bench -p vmm --bench exit_cost -- [EXITS]` (default 200000). Prints one line per
//! variant, `exit_cost: <variant> exits=N total_s=T us_per_exit=U`, where the variants are
//! `plain` (nothing read at the exit) and `sync_regs` (REGS|SREGS|EVENTS synced at every exit, as
//! understudy's vCPU does).
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, SyncReg, VcpuExit, VcpuFd};

const MEM_SIZE: usize = 1 << 20;
const CODE_ADDR: u64 = 0x1000;
const PORT: u16 = 0x80;
/// `out dx, al` / `dec ecx` / `jnz -4` (back to the `out`).
const CODE: [u8; 4] = [0xee, 0x49, 0x75, 0xfc];

fn main() {
    let exits: u64 = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("EXITS must be a number"))
        .unwrap_or(200_000);
    let kvm = Kvm::new().expect("open /dev/kvm");
    for sync in [false, true] {
        // A fresh VM per variant, so one variant's state cannot affect the other's.
        let vm = kvm.create_vm().expect("KVM_CREATE_VM");
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MEM_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(mem, libc::MAP_FAILED, "mmap guest memory");
        // SAFETY: CODE_ADDR + CODE.len() is inside the MEM_SIZE-byte mapping just created.
        unsafe {
            std::ptr::copy_nonoverlapping(
                CODE.as_ptr(),
                mem.cast::<u8>().add(CODE_ADDR as usize),
                CODE.len(),
            );
        }
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: mem as u64,
        };
        // SAFETY: the mapping stays alive (it is never unmapped) for as long as the VM exists.
        unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
        let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .expect("KVM_GET_SUPPORTED_CPUID");
        vcpu.set_cpuid2(&cpuid).expect("KVM_SET_CPUID2");
        enter_protected_mode(&vcpu);
        if sync {
            vcpu.set_sync_valid_reg(SyncReg::Register);
            vcpu.set_sync_valid_reg(SyncReg::SystemRegister);
            vcpu.set_sync_valid_reg(SyncReg::VcpuEvents);
        }
        // Warm up (first entry faults in the code page and sets up shadow page tables).
        run_exits(&mut vcpu, 1000);
        let start = Instant::now();
        run_exits(&mut vcpu, exits);
        let total = start.elapsed().as_secs_f64();
        println!(
            "exit_cost: {} exits={exits} total_s={total:.4} us_per_exit={:.3}",
            if sync { "sync_regs" } else { "plain" },
            total * 1e6 / exits as f64
        );
    }
}

fn run_exits(vcpu: &mut VcpuFd, n: u64) {
    for _ in 0..n {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(PORT, _)) => {}
            other => panic!("unexpected exit: {other:?}"),
        }
    }
}

/// The PVH entry state: CR0.PE, flat 32-bit code and data segments, paging off. Only the hidden
/// segment state matters (the loop never reloads a segment), so no GDT is written to memory.
fn enter_protected_mode(vcpu: &VcpuFd) {
    let seg = |selector: u16, type_: u8| kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    let mut sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    sregs.cs = seg(0x08, 0xb);
    let data = seg(0x10, 0x3);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.cr0 = 0x11; // PE | ET
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS");
    let regs = kvm_bindings::kvm_regs {
        rip: CODE_ADDR,
        rflags: 0x2,
        rcx: u64::from(u32::MAX), // loop counter: never reaches zero within a run
        rdx: u64::from(PORT),
        ..Default::default()
    };
    vcpu.set_regs(&regs).expect("KVM_SET_REGS");
}
