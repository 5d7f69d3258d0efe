//! System calls for CPL3 tasks: `ud2`, rax = number, args in rdi/rsi,
//! result in rax.
//!
//! Neither `int 0x80` nor `syscall` works from CPL3 on the host's PVM
//! backend for a guest that is not PVM-aware: `int n` raises #UD, and
//! `syscall` enters LSTAR without leaving CPL3. Exceptions from CPL3, however,
//! are delivered through the IDT to CPL0 like on any x86 machine. So a task
//! asks for a service with `ud2` (a deliberate #UD); the #UD handler
//! recognises it by the opcode bytes at rip and a CPL3 code segment, skips
//! the two bytes and treats the trap as a system call. It works the same on
//! VMX/SVM hosts.

use crate::idt::Frame;
use crate::{clock, console, interrupts, power, sched};

pub const SYS_WRITE: u64 = 1;
pub const SYS_EXIT: u64 = 2;
pub const SYS_CLOCK_NS: u64 = 3;
/// Prints the task's panic line and powers off with the panic exit code.
pub const SYS_PANIC: u64 = 4;
/// Returns after the next timer tick. A task must not spin for a tick at
/// CPL3: on the target host an interrupt pending at CPL3 waits for the next
/// guest exit, so a spinning task would never see the tick; the kernel halts
/// instead, which is an exit.
pub const SYS_WAIT_TICK: u64 = 5;
/// Returns once `interrupts::EVENTS` (timer ticks + network-card interrupts) differs from
/// rdi, the value the task read before it last looked for work: it sleeps until the next
/// interrupt of either kind, halting (an exit) rather than spinning.
pub const SYS_WAIT_IRQ: u64 = 6;

const ERR: u64 = u64::MAX;
/// Only the identity-mapped first GiB is valid memory.
const USER_LIMIT: u64 = 1 << 30;
const MAX_WRITE: u64 = 4096;

/// Kernel side, called from the dispatcher with interrupts disabled.
pub fn handle(frame: *mut Frame) -> *mut Frame {
    // SAFETY: the dispatcher passes the frame pushed for this interrupt.
    let f = unsafe { &mut *frame };
    match f.rax {
        SYS_WRITE => {
            let Some(bytes) = user_bytes(f.rdi, f.rsi) else {
                f.rax = ERR;
                return frame;
            };
            let len = bytes.len() as u64;
            sched::preempt_disable();
            // SAFETY: the timer must be able to fire during the (slow) port
            // I/O; preemption is disabled, so a nested timer interrupt only
            // records the switch request and returns here.
            unsafe { core::arch::asm!("sti", options(nostack)) };
            console::write_raw(bytes);
            // SAFETY: back to the dispatcher's interrupts-off invariant.
            unsafe { core::arch::asm!("cli", options(nostack)) };
            sched::preempt_enable_no_resched();
            f.rax = len;
            if sched::take_need_resched() {
                return sched::schedule(frame);
            }
            frame
        }
        SYS_EXIT => {
            sched::mark_current_done();
            sched::schedule(frame)
        }
        SYS_PANIC => {
            if let Some(bytes) = user_bytes(f.rdi, f.rsi) {
                console::write_raw(bytes);
            }
            power::exit(power::EXIT_PANIC)
        }
        SYS_CLOCK_NS => {
            f.rax = clock::now_ns();
            frame
        }
        SYS_WAIT_TICK => {
            let start = clock::ticks();
            f.rax = 0;
            halt_while(frame, || clock::ticks() == start)
        }
        SYS_WAIT_IRQ => {
            let seen = f.rdi;
            f.rax = 0;
            halt_while(frame, || interrupts::events() == seen)
        }
        _ => {
            f.rax = ERR;
            frame
        }
    }
}

/// Halts the calling task in the kernel while `waiting` holds (a system call that sleeps),
/// then returns to it, or to another task if a switch was requested meanwhile.
fn halt_while(frame: *mut Frame, waiting: impl Fn() -> bool) -> *mut Frame {
    sched::preempt_disable();
    while waiting() {
        // SAFETY: as in SYS_WRITE, a nested timer interrupt only counts the tick and records
        // any switch request; `sti; hlt` halts with interrupts enabled (the STI shadow keeps
        // the interrupt from slipping in before the halt), `cli` restores the dispatcher's
        // interrupts-off invariant.
        unsafe { core::arch::asm!("sti", "hlt", "cli", options(nostack)) };
    }
    sched::preempt_enable_no_resched();
    if sched::take_need_resched() {
        return sched::schedule(frame);
    }
    frame
}

/// A task's buffer, if it lies inside the identity-mapped first GiB and is
/// no longer than one write.
fn user_bytes(ptr: u64, len: u64) -> Option<&'static [u8]> {
    if len > MAX_WRITE || ptr >= USER_LIMIT || len > USER_LIMIT - ptr {
        return None;
    }
    // SAFETY: range checked against the identity map above; all of it is
    // readable kernel-image or stack memory.
    Some(unsafe { core::slice::from_raw_parts(ptr as *const u8, len as usize) })
}

/// `ud2`, the opcode a CPL3 task uses to call the kernel.
pub const SYSCALL_OPCODE: [u8; 2] = [0x0f, 0x0b];

/// Whether a #UD `frame` is a system call: raised at CPL3 by a `ud2`.
pub fn is_syscall(frame: &Frame) -> bool {
    if frame.cs & 3 != 3 || frame.rip >= USER_LIMIT - 2 {
        return false;
    }
    // SAFETY: rip is inside the identity-mapped first GiB (checked above)
    // and pointed at an instruction the task just tried to execute.
    let bytes = unsafe { core::ptr::read_unaligned(frame.rip as *const [u8; 2]) };
    bytes == SYSCALL_OPCODE
}

// User-side wrappers (run at CPL3).

pub fn write(bytes: &[u8]) -> u64 {
    let ret: u64;
    // SAFETY: the kernel only reads the buffer and preserves every register
    // except rax.
    unsafe {
        core::arch::asm!(
            "ud2",
            inlateout("rax") SYS_WRITE => ret,
            in("rdi") bytes.as_ptr(),
            in("rsi") bytes.len(),
            options(nostack),
        );
    }
    ret
}

pub fn exit() -> ! {
    // SAFETY: the kernel never returns to an exited task.
    unsafe {
        core::arch::asm!("ud2", in("rax") SYS_EXIT, options(noreturn));
    }
}

pub fn panic(bytes: &[u8]) -> ! {
    // SAFETY: the kernel only reads the buffer and never returns.
    unsafe {
        core::arch::asm!(
            "ud2",
            in("rax") SYS_PANIC,
            in("rdi") bytes.as_ptr(),
            in("rsi") bytes.len(),
            options(noreturn),
        );
    }
}

pub fn wait_tick() {
    // SAFETY: no memory is touched; only rax changes.
    unsafe {
        core::arch::asm!(
            "ud2",
            inlateout("rax") SYS_WAIT_TICK => _,
            options(nostack),
        );
    }
}

/// Sleeps until an interrupt arrives after the task read `seen` from `interrupts::EVENTS`.
pub fn wait_irq(seen: u64) {
    // SAFETY: no memory is touched; only rax changes.
    unsafe {
        core::arch::asm!(
            "ud2",
            inlateout("rax") SYS_WAIT_IRQ => _,
            in("rdi") seen,
            options(nostack),
        );
    }
}

#[allow(dead_code)]
pub fn clock_ns() -> u64 {
    let ret: u64;
    // SAFETY: no memory is touched; only rax changes.
    unsafe {
        core::arch::asm!(
            "ud2",
            inlateout("rax") SYS_CLOCK_NS => ret,
            options(nostack),
        );
    }
    ret
}
