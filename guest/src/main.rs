//! understudy's test guest: a tiny deterministic x86_64 kernel booted via
//! PVH. Its behaviour depends only on its command line, device reads and
//! where interrupts land, which is what record/replay must reproduce.

#![no_std]
#![no_main]

mod boot;
mod clock;
mod cmdline;
mod console;
mod fmt;
mod gdt;
mod idt;
mod interrupts;
mod loopback;
mod mem;
mod pic;
mod pit;
mod port;
mod power;
mod resp;
mod rtc;
mod sched;
mod start_info;
mod sync;
mod syscall;
mod virtio_net;
mod workloads;

use cmdline::{Config, Workload};
use fmt::LineBuf;

#[unsafe(no_mangle)]
pub extern "C" fn kmain(start_info_paddr: u64) -> ! {
    console::init();
    let stack_top = boot::boot_stack_top_addr();
    gdt::init(stack_top);
    idt::init();

    let cmdline = match start_info::cmdline(start_info_paddr) {
        Ok(c) => c,
        Err(e) => {
            let mut line = LineBuf::new();
            line.str("guest: no usable hvm_start_info (");
            match e {
                start_info::Error::NoStartInfo => line.str("null"),
                start_info::Error::BadMagic(m) => line.str("magic=").hex(u64::from(m)),
            };
            line.str("), using defaults");
            console::print(&mut line);
            &[]
        }
    };
    let config = match cmdline::parse(cmdline) {
        Ok(c) => c,
        Err(e) => {
            let mut line = LineBuf::new();
            match e {
                cmdline::Error::Unknown(tok) => line.str("guest: unknown argument '").bytes(tok),
                cmdline::Error::Invalid(tok) => line.str("guest: invalid argument '").bytes(tok),
            };
            line.byte(b'\'');
            console::print(&mut line);
            power::exit(power::EXIT_BAD_ARGS)
        }
    };

    print_banner(&config);
    if let Some(code) = config.exit {
        power::exit(code);
    }

    let mut line = LineBuf::new();
    line.str("rtc: ");
    rtc::read_datetime().format(&mut line);
    console::print(&mut line);

    if config.workload == Workload::TripleFault {
        idt::triple_fault();
    }

    sched::init(stack_top);
    pic::init();
    clock::init(config.hz);
    // SAFETY: IDT, PIC and PIT are set up; from here on the timer runs.
    unsafe { core::arch::asm!("sti", options(nostack)) };

    match config.workload {
        Workload::Ticker => workloads::ticker::run(config.ticks, config.end),
        Workload::Compute => workloads::compute::run(
            config.tasks,
            config.iters,
            config.secs,
            config.hz,
            config.report,
            config.user,
        ),
        Workload::Exits => workloads::exits::run(config.n, config.port),
        Workload::TcpLoop => {
            workloads::tcploop::run(config.n, config.report, config.hz, config.user)
        }
        Workload::Kv => workloads::kv::run(&config),
        Workload::TripleFault => idt::triple_fault(),
    }
}

fn print_banner(c: &Config) {
    let mut line = LineBuf::new();
    line.str("understudy guest: workload=")
        .str(c.workload.name())
        .str(" hz=")
        .dec(u64::from(c.hz));
    match c.workload {
        Workload::Ticker => {
            line.str(" ticks=").dec(c.ticks);
            match c.end {
                cmdline::End::PowerOff(0) => {}
                cmdline::End::PowerOff(code) => {
                    line.str(" end=").dec(u64::from(code));
                }
                cmdline::End::TripleFault => {
                    line.str(" end=triplefault");
                }
                cmdline::End::Reset => {
                    line.str(" end=reset");
                }
            }
        }
        Workload::Compute => {
            line.str(" tasks=").dec(c.tasks as u64);
            if let Some(iters) = c.iters {
                line.str(" iters=").dec(iters);
            }
            if let Some(secs) = c.secs {
                line.str(" secs=").dec(secs);
            }
            line.str(" report=")
                .dec(c.report)
                .str(" mode=")
                .str(if c.user { "user" } else { "kernel" });
        }
        Workload::Exits => {
            line.str(" n=")
                .dec(c.n)
                .str(" port=")
                .hex(u64::from(c.port));
        }
        Workload::TcpLoop => {
            line.str(" n=")
                .dec(c.n)
                .str(" report=")
                .dec(c.report)
                .str(" mode=")
                .str(if c.user { "user" } else { "kernel" });
        }
        Workload::Kv | Workload::TripleFault => {}
    }
    if let Some(code) = c.exit {
        line.str(" exit=").dec(u64::from(code));
    }
    console::print(&mut line);
}

/// Prints the message only when it has no arguments, and the location.
/// Rendering arguments would run `core::fmt`, whose prebuilt integer and
/// string padding code uses SSE, which the host's CPL0 emulator cannot
/// execute; `check-forbidden-insns.sh` proves nothing else can reach that
/// code. The location is enough to find the panic site.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut line = LineBuf::new();
    line.str("guest: panic");
    if let Some(msg) = info.message().as_str() {
        line.str(": ").str(msg);
    }
    if let Some(loc) = info.location() {
        line.str(" at ")
            .str(loc.file())
            .byte(b':')
            .dec(u64::from(loc.line()));
    }
    line.newline();
    if gdt::current_cpl() == 3 {
        // A CPL3 task cannot reach the serial port or the power-off port
        // itself.
        syscall::panic(line.as_bytes())
    }
    console::write_raw(line.as_bytes());
    power::exit(power::EXIT_PANIC)
}

/// Referenced by the precompiled `core` even with `panic = "abort"`; never
/// called because nothing unwinds.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}
