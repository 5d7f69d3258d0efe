//! Round-robin preemptive scheduler.
//!
//! A task is represented only by the frame pointer saved on its own kernel
//! stack; switching means returning another task's frame from the interrupt
//! dispatcher. Slot 0 is the boot task (`kmain`'s flow), which only runs when
//! no worker task is runnable.

use crate::gdt::{self, KERNEL_CS, KERNEL_DS, USER_CS, USER_DS};
use crate::idt::{FRAME_SIZE, Frame, VECTOR_YIELD};
use crate::sync::Global;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

pub const MAX_WORKERS: usize = 4;
const SLOTS: usize = MAX_WORKERS + 1;
pub const STACK_SIZE: usize = 16 * 1024;

const RFLAGS_IF: u64 = 1 << 9;
/// Bit 1 of RFLAGS is reserved and always set.
const RFLAGS_RESERVED: u64 = 1 << 1;

core::arch::global_asm!(
    r#"
    .pushsection .stacks, "aw", @nobits
    .balign 16
    .global task_kernel_stacks
task_kernel_stacks:
    .skip 16384 * 4
    .global task_user_stacks
task_user_stacks:
    .skip 16384 * 4
    .popsection
"#
);

unsafe extern "C" {
    static task_kernel_stacks: u8;
    static task_user_stacks: u8;
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Unused,
    /// The boot task: not a round-robin candidate, the fallback when no
    /// worker can run.
    Boot,
    Runnable,
    Done,
}

#[derive(Clone, Copy)]
struct Task {
    state: State,
    frame: *mut Frame,
    kernel_stack_top: u64,
}

struct Scheduler {
    tasks: [Task; SLOTS],
    current: usize,
}

/// Mutated only inside ISRs (interrupts disabled) or at boot before the
/// first switch.
static SCHED: Global<Scheduler> = Global::new(Scheduler {
    tasks: [Task {
        state: State::Unused,
        frame: core::ptr::null_mut(),
        kernel_stack_top: 0,
    }; SLOTS],
    current: 0,
});

static SWITCHES: AtomicU64 = AtomicU64::new(0);
static PREEMPT_DISABLED: AtomicU32 = AtomicU32::new(0);
static NEED_RESCHED: AtomicBool = AtomicBool::new(false);

pub fn init(boot_stack_top: u64) {
    // SAFETY: boot, interrupts disabled.
    let s = unsafe { &mut *SCHED.get() };
    s.tasks[0] = Task {
        state: State::Boot,
        frame: core::ptr::null_mut(),
        kernel_stack_top: boot_stack_top,
    };
    s.current = 0;
}

/// Prepares worker `slot` (1..=MAX_WORKERS) to start at `entry(arg)` the
/// first time it is scheduled, at CPL3 if `user`.
pub fn spawn(slot: usize, entry: extern "C" fn(u64) -> !, arg: u64, user: bool) {
    if !(1..SLOTS).contains(&slot) {
        return;
    }
    let kbase = (&raw const task_kernel_stacks) as u64;
    let ubase = (&raw const task_user_stacks) as u64;
    let kernel_top = kbase + (slot * STACK_SIZE) as u64;
    let user_top = ubase + (slot * STACK_SIZE) as u64;
    // SysV: at function entry RSP + 8 is 16-aligned (as if `call` pushed a
    // return address). The slot below stays unused: entries never return.
    let (cs, ss, rsp) = if user {
        (USER_CS, USER_DS, user_top - 8)
    } else {
        (KERNEL_CS, KERNEL_DS, kernel_top - 8)
    };
    let frame = (kernel_top - FRAME_SIZE as u64) as *mut Frame;
    // SAFETY: the frame lies at the top of this slot's private kernel stack,
    // which no running code uses (the task has not started); interrupts are
    // disabled or the slot is not yet runnable, so the ISR cannot see it.
    unsafe {
        frame.write_bytes(0, 1);
        (*frame).rdi = arg;
        (*frame).rip = entry as usize as u64;
        (*frame).cs = u64::from(cs);
        (*frame).rflags = RFLAGS_IF | RFLAGS_RESERVED;
        (*frame).rsp = rsp;
        (*frame).ss = u64::from(ss);
        let s = &mut *SCHED.get();
        s.tasks[slot] = Task {
            state: State::Runnable,
            frame,
            kernel_stack_top: kernel_top,
        };
    }
}

/// Picks the next runnable worker after `current` in round-robin order,
/// else the boot task.
fn pick_next(s: &Scheduler) -> usize {
    (1..=SLOTS)
        .map(|k| (s.current + k) % SLOTS)
        .find(|&i| s.tasks.get(i).is_some_and(|t| t.state == State::Runnable))
        .unwrap_or(0)
}

/// Timer tick: preempt unless the current task is inside a
/// preemption-disabled section, in which case the switch is deferred.
pub fn on_timer(frame: *mut Frame) -> *mut Frame {
    // SAFETY: ISR context, interrupts disabled.
    let s = unsafe { &*SCHED.get() };
    if pick_next(s) == s.current {
        return frame;
    }
    if PREEMPT_DISABLED.load(Ordering::SeqCst) != 0 {
        NEED_RESCHED.store(true, Ordering::SeqCst);
        return frame;
    }
    schedule(frame)
}

/// Saves `frame` as the current task's and returns the frame to resume.
pub fn schedule(frame: *mut Frame) -> *mut Frame {
    // SAFETY: ISR context, interrupts disabled: exclusive access.
    let s = unsafe { &mut *SCHED.get() };
    NEED_RESCHED.store(false, Ordering::SeqCst);
    let cur = s.current;
    if let Some(t) = s.tasks.get_mut(cur) {
        t.frame = frame;
    }
    let next = pick_next(s);
    let Some(t) = s.tasks.get(next).copied() else {
        return frame;
    };
    if next == cur || t.frame.is_null() {
        return frame;
    }
    s.current = next;
    SWITCHES.fetch_add(1, Ordering::SeqCst);
    gdt::set_rsp0(t.kernel_stack_top);
    t.frame
}

/// Marks the current worker finished; the caller must then switch away
/// (return `schedule(frame)` from an ISR, or call [`yield_now`]).
pub fn mark_current_done() {
    crate::sync::without_interrupts(|| {
        // SAFETY: interrupts disabled: exclusive access.
        let s = unsafe { &mut *SCHED.get() };
        if let Some(t) = s.tasks.get_mut(s.current)
            && t.state == State::Runnable
        {
            t.state = State::Done;
        }
    });
}

/// Ends a CPL0 worker task.
pub fn exit_current() -> ! {
    mark_current_done();
    yield_now();
    // Never scheduled again; park defensively.
    crate::power::halt_forever()
}

pub fn yield_now() {
    // `int 0x81` would be the natural way in, but the host's CPL0 instruction
    // emulator (PVM) cannot execute INT in protected mode. So build the frame
    // the CPU would have pushed for an interrupt from CPL0 by hand and enter
    // the common path; its iretq resumes right after this block with every
    // register as it was.
    // SAFETY: the frame matches what isr_common expects (SS, RSP, RFLAGS, CS,
    // RIP, error code, vector); interrupts are off from the pushfq on, as an
    // interrupt gate would have them; no red zone exists in this kernel.
    unsafe {
        core::arch::asm!(
            "mov {tmp}, rsp",
            "push {ss}",
            "push {tmp}",
            "pushfq",
            "cli",
            "push {cs}",
            "lea {tmp}, [rip + 2f]",
            "push {tmp}",
            "push 0",
            "push {vec}",
            "jmp isr_common",
            "2:",
            tmp = out(reg) _,
            ss = const KERNEL_DS as u64,
            cs = const KERNEL_CS as u64,
            vec = const VECTOR_YIELD as u64,
        )
    };
}

/// Runs the spawned workers to their end: the boot task yields to them, and is scheduled again
/// only when none is runnable; it halts until then in case a tick brings it back early.
pub fn wait_all_done() {
    yield_now();
    while !all_done() {
        // SAFETY: wait for the next interrupt with interrupts enabled.
        unsafe { core::arch::asm!("sti", "hlt", options(nostack)) };
    }
}

/// True once every spawned worker has finished.
fn all_done() -> bool {
    crate::sync::without_interrupts(|| {
        // SAFETY: interrupts disabled: exclusive access.
        let s = unsafe { &*SCHED.get() };
        s.tasks.iter().all(|t| t.state != State::Runnable)
    })
}

pub fn switches() -> u64 {
    SWITCHES.load(Ordering::SeqCst)
}

pub fn preempt_disable() {
    PREEMPT_DISABLED.fetch_add(1, Ordering::SeqCst);
}

/// Re-enables preemption without switching: for ISR context (the syscall
/// handler), which switches by returning a frame instead.
pub fn preempt_enable_no_resched() {
    PREEMPT_DISABLED.fetch_sub(1, Ordering::SeqCst);
}

/// Re-enables preemption and performs a switch that the timer deferred.
pub fn preempt_enable() {
    if PREEMPT_DISABLED.fetch_sub(1, Ordering::SeqCst) == 1 && NEED_RESCHED.load(Ordering::SeqCst) {
        yield_now();
    }
}

/// For the syscall path: consumes a deferred switch request.
pub fn take_need_resched() -> bool {
    NEED_RESCHED.swap(false, Ordering::SeqCst)
}
