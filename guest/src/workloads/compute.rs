//! CPU-bound tasks racing on a shared accumulator. There is no I/O between
//! progress lines, so the VMM sees long exit-free stretches, and the final
//! checksum depends on exactly where each timer interrupt preempted a task:
//! a replay that lands an interrupt one instruction off changes the result.
//!
//! A run bounded by `secs` stops at a tick count. Ticks are interrupts, which
//! the VMM logs and replays at the same instruction, so where a task sees the
//! deadline (and so the checksum) is reproduced by a replay like everything
//! else; the TSC or any other clock the guest reads without an exit would not
//! be.

use crate::fmt::LineBuf;
use crate::sync::Global;
use crate::{clock, console, power, sched, syscall};
use core::ptr::{read_volatile, write_volatile};

const LETTERS: &[u8; 4] = b"ABCD";
const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

#[derive(Clone, Copy)]
struct Params {
    /// `u64::MAX` when only the deadline bounds the run: unreachable (centuries of
    /// iterations even natively).
    iters: u64,
    /// Tick count at which every task stops; `u64::MAX`: none.
    until_tick: u64,
    report: u64,
}

/// Written by the boot task before any worker exists; read-only afterwards
/// (also from CPL3: every page is user-accessible).
static PARAMS: Global<Params> = Global::new(Params {
    iters: 0,
    until_tick: 0,
    report: 0,
});

/// Updated non-atomically by every task on every iteration: a preemption
/// between the load and the store loses the other task's updates, which is
/// the point.
static SHARED: Global<u64> = Global::new(0);

/// Runs `tasks` workers for `iters` iterations each, or until the guest has run `secs` seconds
/// at `hz` ticks a second, whichever comes first (`None`: no such bound).
pub fn run(
    tasks: usize,
    iters: Option<u64>,
    secs: Option<u64>,
    hz: u32,
    report: u64,
    user: bool,
) -> ! {
    let params = Params {
        iters: iters.unwrap_or(u64::MAX),
        until_tick: secs.map_or(u64::MAX, |s| s.saturating_mul(u64::from(hz))),
        report,
    };
    // SAFETY: no worker exists yet, so nothing reads PARAMS concurrently.
    unsafe { *PARAMS.get() = params };
    let entry: extern "C" fn(u64) -> ! = if user { user_task } else { kernel_task };
    crate::sync::without_interrupts(|| {
        for slot in 1..=tasks.min(sched::MAX_WORKERS) {
            sched::spawn(slot, entry, (slot - 1) as u64, user);
        }
    });
    sched::wait_all_done();
    let mut line = LineBuf::new();
    line.str("compute: done checksum=")
        // SAFETY: all workers are done; nothing else writes SHARED.
        .hex16(unsafe { read_volatile(SHARED.get()) })
        .str(" switches=")
        .dec(sched::switches());
    console::print(&mut line);
    power::exit(power::EXIT_OK)
}

extern "C" fn kernel_task(index: u64) -> ! {
    work(index, console::print);
    sched::exit_current()
}

/// Runs at CPL3: may only touch memory and `int 0x80`.
extern "C" fn user_task(index: u64) -> ! {
    work(index, |line| {
        syscall::write(line.newline().as_bytes());
    });
    syscall::exit()
}

#[inline(always)]
fn work(index: u64, print: impl Fn(&mut LineBuf)) {
    // SAFETY: PARAMS is read-only while workers run.
    let Params {
        iters,
        until_tick,
        report,
    } = unsafe { *PARAMS.get() };
    let letter = LETTERS.get(index as usize).copied().unwrap_or(b'?');
    // Distinct non-zero seeds (xorshift never leaves zero).
    let mut x = (index + 1).wrapping_mul(MIX) | 1;
    let mut until_report = if report == 0 { u64::MAX } else { report };
    // A plain counted loop: `1..=iters` costs extra compares per iteration,
    // and every instruction here is emulated when running at CPL0.
    let mut i = 0;
    while i != iters && clock::ticks() < until_tick {
        i += 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // SAFETY: SHARED is a plain global; the data race with other tasks
        // is intentional (single CPU, so every access is a whole u64 move),
        // and volatile keeps the load/store inside the loop.
        let shared = unsafe {
            let s = (read_volatile(SHARED.get()) ^ x)
                .rotate_left(5)
                .wrapping_mul(MIX);
            write_volatile(SHARED.get(), s);
            s
        };
        until_report -= 1;
        if until_report == 0 {
            until_report = report;
            let mut line = LineBuf::new();
            line.byte(letter)
                .str(": i=")
                .dec(i)
                .str(" x=")
                .hex16(x)
                .str(" shared=")
                .hex16(shared);
            print(&mut line);
        }
    }
}
