pub mod demo;
pub mod demo_net;
pub mod export_guest;
pub mod log;
pub mod node;
pub mod replay;
pub mod run;
pub mod view;
pub mod viewserver;

use logging_channel::format::{CounterKind, Header, PositionSemantics};
use vmm::precise::PrecisePolicy;

pub type CmdResult = Result<std::process::ExitCode, Box<dyn std::error::Error + Send + Sync>>;

/// `error: cause: cause`, each source once.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut s = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let msg = e.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = e.source();
    }
    s
}

/// What positions in a log recorded on this host mean.
pub fn position_semantics(counter: CounterKind, policy: PrecisePolicy) -> PositionSemantics {
    let description = match counter {
        CounterKind::PvmInsnEmulation => format!(
            "AtExit{{exits}}: at the n-th guest-initiated VM exit (port/MMIO I/O, hlt), before the guest resumes. \
             Precise{{exits, counter, regs}}: after `exits` guest exits, when KVM's per-vCPU insn_emulation \
             statistic read `counter` (on the PVM backend it counts the guest's CPL0 instructions, which PVM \
             emulates one by one; a few such as `sti` are not counted, so the registers complete the position) \
             and the 18 registers were `regs`; precise landing allowed at CPL0={} CPL3={}",
            policy.cpl0, policy.cpl3
        ),
        CounterKind::None => "AtExit{exits} only: interrupts are delivered at guest-initiated exits (port/MMIO I/O, hlt); \
             this host offers no exact instruction counter, so no mid-execution positions"
            .to_string(),
    };
    PositionSemantics {
        counter,
        precise_cpl0: policy.cpl0 && counter != CounterKind::None,
        precise_cpl3: policy.cpl3 && counter != CounterKind::None,
        description,
    }
}

/// Kernel release and KVM backend, for the log header (informative).
pub fn host_description() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let backend = if vmm::vcpu::counter::is_pvm_host() {
        "kvm_pvm"
    } else if std::path::Path::new("/sys/module/kvm_intel").exists() {
        "kvm_intel"
    } else if std::path::Path::new("/sys/module/kvm_amd").exists() {
        "kvm_amd"
    } else {
        "kvm"
    };
    format!("linux {} {backend}", release.trim())
}

pub fn header_summary(h: &Header) -> String {
    let nic = h.nic_mac.map_or_else(String::new, |mac| {
        format!(", network card {}", crate::net_choice::format_mac(mac))
    });
    format!(
        "guest {} [{}], {} MiB{nic}, image sha256 {}",
        h.guest_name,
        h.guest_args.join(" "),
        h.mem_mib,
        vmm::guest_image::hex(&h.guest_image_sha256)
    )
}
