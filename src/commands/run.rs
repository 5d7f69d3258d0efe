//! `understudy run`: boot a guest, run it live, optionally record it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use logging_channel::format::{FORMAT_VERSION, Header};
use logging_channel::net::{ChannelConfig, Hello, LogSender};
use vmm::clock::SystemClock;
use vmm::devices::virtio::net::NetStats;
use vmm::host_net::HostNet;
use vmm::live::{LiveOptions, run_live};
use vmm::machine::{Machine, MachineConfig};
use vmm::net::tap_net::TapNet;
use vmm::outcome::Outcome;
use vmm::precise::PrecisePolicy;
use vmm::sink::{FileSink, LogSink, NetSink, NullSink};
use vmm::stop::StopRequest;

use super::{CmdResult, host_description, position_semantics};
use crate::digest_choice::DigestArgs;
use crate::guest_choice::GuestArgs;
use crate::net_choice::NetArgs;
use crate::signals::ExitSignals;

/// How a `run --stream-to` primary names itself to the backup (no view service involved).
const STREAM_PRIMARY_NAME: &str = "understudy-run";

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub vm: GuestArgs,
    #[command(flatten)]
    pub net: NetArgs,
    /// Record a replay log to this file.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Stream the log live to a backup replaying it (`understudy replay --listen ADDR`).
    #[arg(long, value_name = "ADDR", conflicts_with = "record")]
    pub stream_to: Option<String>,
    /// Microseconds a timer tick may wait for a guest exit before the vCPU is stopped for it.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    pub interrupt_bound_us: u64,
    #[command(flatten)]
    pub digest: DigestArgs,
    /// Deliver interrupts only at guest exits, never mid-execution (the portable fallback).
    #[arg(long)]
    pub no_precise: bool,
    /// Print run statistics to stderr at the end.
    #[arg(long)]
    pub stats: bool,
}

/// The network counters of `--stats`, as `key=value` words (tests read them): what the TAP
/// side read, dropped and still held, and what the card did with what it was handed.
fn net_stats(host: &TapNet, card: &NetStats) -> String {
    let tap = host.stats();
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    format!(
        "run: net: tap_read={} tap_queue_full={} tap_queued={} tap_read_errors={} \
         tap_written={} tap_write_errors={} card_delivered={} card_bad_buffer={} \
         card_oversized={} card_runts={} card_no_driver={} card_no_buffer_waits={} \
         card_sent={} card_tx_malformed={}",
        get(&tap.rx_frames),
        get(&tap.rx_dropped),
        host.queued(),
        get(&tap.rx_errors),
        get(&tap.tx_frames),
        get(&tap.tx_errors),
        card.rx_frames,
        card.rx_bad_buffer,
        card.rx_oversized,
        card.rx_runts,
        card.rx_no_driver,
        card.rx_no_buffer,
        card.tx_frames,
        card.tx_malformed,
    )
}

pub fn run(args: &RunArgs) -> CmdResult {
    // Before any thread starts, so only the watcher takes SIGINT/SIGTERM.
    let signals = ExitSignals::block()?;
    let stop = Arc::new(StopRequest::new());
    let stopped_by = Arc::new(AtomicI32::new(0));
    {
        let (stop, stopped_by) = (Arc::clone(&stop), Arc::clone(&stopped_by));
        let logged = args.record.is_some() || args.stream_to.is_some();
        signals.watch(move |sig| {
            if stopped_by.swap(sig, Ordering::SeqCst) != 0 {
                eprintln!("run: signal {sig} again: exiting now (a recording stays incomplete)");
                std::process::exit(128 + sig);
            }
            if logged {
                eprintln!(
                    "run: signal {sig}: stopping at the guest's next exit, where the log can end (again to exit now)"
                );
            } else {
                eprintln!("run: signal {sig}: stopping");
            }
            stop.request();
        })?;
    }
    let guest = args.vm.resolve()?;
    let nic_mac = args.net.mac()?;
    let mut host_net = args.net.open()?.map(TapNet::new);
    let mut machine = Machine::new(&MachineConfig {
        mem_mib: args.vm.mem_mib,
        image: &guest.image,
        cmdline: guest.cmdline.clone(),
        nic: nic_mac,
    })?;
    let policy = if args.no_precise {
        PrecisePolicy::NONE
    } else {
        PrecisePolicy::default()
    };
    let opts = LiveOptions {
        interrupt_bound: Duration::from_micros(args.interrupt_bound_us),
        digest_interval: args.digest.interval(),
        digest_max_share: args.digest.max_share(),
        precise: policy,
        stop: Some(Arc::clone(&stop)),
        ..LiveOptions::default()
    };
    let clock = SystemClock::new();
    let stdout = std::io::stdout();
    let mut console = std::io::LineWriter::new(stdout.lock());
    let position = position_semantics(machine.counter.kind(), policy);
    // The same run whatever the sink: only what is done with the sink afterwards differs.
    let mut live = |sink: &mut dyn LogSink| {
        let net = host_net.as_mut().map(|n| n as &mut (dyn HostNet + 'static));
        run_live(&mut machine, &clock, sink, &mut console, net, &opts)
    };
    let (result, log_info) = match &args.record {
        Some(path) => {
            let header = Header {
                format_version: FORMAT_VERSION,
                guest_image_sha256: guest.sha256(),
                guest_name: guest.name.clone(),
                guest_args: args.vm.guest_args.clone(),
                mem_mib: args.vm.mem_mib,
                position,
                digest_interval_ms: args.digest.digest_interval_ms as u32,
                recorded_at_unix_ms: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
                host: host_description(),
                nic_mac,
            };
            let mut sink = FileSink::create(path, &header)?;
            let result = live(&mut sink);
            let info = (sink.entries(), sink.bytes());
            // Only a run that reached its end is marked complete; a failed one stays incomplete
            // but keeps every entry written so far.
            if result.is_ok() {
                sink.finish()?;
            }
            (result, Some(info))
        }
        None => match &args.stream_to {
            Some(addr) => {
                let hello = Hello::new(guest.sha256(), 0, STREAM_PRIMARY_NAME, 0);
                let sender = LogSender::connect(addr.as_str(), hello, ChannelConfig::default())?;
                let mut sink = NetSink::new(sender);
                let result = live(&mut sink);
                let lag = sink.lag();
                if args.stats {
                    eprintln!(
                        "run: backup lag at the end: {} entries, {:.3} ms",
                        lag.entries,
                        lag.t_ns as f64 / 1e6
                    );
                }
                if result.is_ok() {
                    sink.finish(Duration::from_secs(10))?;
                }
                (result, None)
            }
            None => (live(&mut NullSink), None),
        },
    };
    console.flush()?;
    let (outcome, stats) = result?;
    if args.stats {
        eprintln!(
            "run: {:.3} s wall, {} exits, {} kicks ({} deferred), interrupts {} at exit + {} precise, {} digests ({:.1} ms), idle {:.3} s",
            stats.wall.as_secs_f64(),
            stats.exits,
            stats.stops,
            stats.deferred_stops,
            stats.interrupts_at_exit,
            stats.interrupts_precise,
            stats.digests,
            stats.digest_time.as_secs_f64() * 1e3,
            stats.idle.as_secs_f64()
        );
        if let Some((entries, bytes)) = log_info {
            eprintln!("run: log {entries} entries, {bytes} bytes");
        }
        if let (Some(host), Some(card)) = (host_net.as_mut(), machine.bus.devices.nic.as_ref()) {
            // Stopped first, so the counts add up: every frame read was taken by the card or
            // dropped with the queue full, or is still queued.
            host.stop_reading();
            eprintln!("{}", net_stats(host, &card.stats()));
        }
    }
    Ok(match outcome {
        Outcome::PowerOff { code } => ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)),
        // As a shell reports a process the signal ended; the log is complete all the same.
        Outcome::Stopped => {
            let sig = stopped_by.load(Ordering::SeqCst);
            ExitCode::from(u8::try_from(128 + sig).unwrap_or(u8::MAX))
        }
        // Like QEMU's `-no-reboot`: a guest that reboots has finished, it did not fail.
        Outcome::Reset { port, value } => {
            eprintln!(
                "run: the guest asked for a reset ({port:#x} <- {value:#04x}); understudy does not reboot guests, so it ended there"
            );
            ExitCode::SUCCESS
        }
    })
}
