//! `understudy replay FILE`: reproduce a recorded run and verify it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use logging_channel::file::{LogReader, Tail};
use logging_channel::net::{ChannelConfig, Hello, Listener};
use vmm::checkpoint::CheckpointPolicy;
use vmm::digest::MemHash;
use vmm::guest_image::hex;
use vmm::machine::{Machine, MachineConfig};
use vmm::outcome::Outcome;
use vmm::precise::ApproachTuning;
use vmm::replay::{ReplayError, ReplayReport, Rewind, SkipWriter, replay_recovering};
use vmm::source::{NetSource, VecSource};

use super::CmdResult;
use crate::guest_choice::Guest;

/// Exit status when the log was incomplete and replayed faithfully as far as it goes.
pub const EXIT_INCOMPLETE: u8 = 3;
/// Exit status when replay diverged from the recording.
pub const EXIT_DIVERGED: u8 = 4;
/// Replays from the start after a late kick, at most this many times in all.
const MAX_ATTEMPTS: u32 = 3;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The replay log.
    #[arg(required_unless_present = "listen")]
    pub file: Option<PathBuf>,
    /// Instead of a file, replay a log streamed live by `understudy run --stream-to`: listen on
    /// this address for one primary (needs --guest, and the same --guest-arg/--mem-mib).
    #[arg(long, value_name = "ADDR", conflicts_with = "file", requires = "guest")]
    pub listen: Option<String>,
    /// With a file: use this guest image instead of the one named in the log (its hash must
    /// match). With --listen: the guest the primary runs (`ticker`, `compute`, `tcploop`, `kv` or a path).
    #[arg(long, value_name = "GUEST")]
    pub guest: Option<String>,
    /// With --listen: guest arguments, as given to the primary.
    #[arg(long = "guest-arg", value_name = "ARG", requires = "listen")]
    pub guest_args: Vec<String>,
    /// With --listen: guest memory in MiB, as given to the primary.
    #[arg(long, default_value_t = 64, requires = "listen")]
    pub mem_mib: u32,
    /// With --listen, for a primary whose guest has a network card (`run --tap`): the card's
    /// MAC, as the primary has it (02:75:73:00:00:01 unless it gave `--mac`). The replayed
    /// card is never connected to anything: its frames are checked, not sent.
    #[arg(long, value_name = "MAC", requires = "listen")]
    pub mac: Option<String>,
    /// Print replay statistics to stderr at the end.
    #[arg(long)]
    pub stats: bool,
    /// Approach tuning: fraction of the remaining distance a timed kick aims at (experts;
    /// above 1 it overshoots on purpose, which tests the retry).
    #[arg(long, hide = true)]
    pub aim: Option<f64>,
    /// Take no checkpoints: an overshoot starts the replay over from the beginning (experts;
    /// tests that path).
    #[arg(long, hide = true)]
    pub no_checkpoints: bool,
    /// Approach tuning: single-step once this many instructions away (experts).
    #[arg(long, hide = true)]
    pub single_step_within: Option<u64>,
}

pub fn run(args: &ReplayArgs) -> CmdResult {
    if let Some(addr) = &args.listen {
        return run_streamed(args, addr);
    }
    let Some(file) = &args.file else {
        return Err("replay needs a log file or --listen ADDR".into());
    };
    let reader = LogReader::open(file)?;
    let header = reader.header().clone();
    let mut frames = Vec::new();
    for item in reader.frames() {
        let (_offset, frame) = item?;
        frames.push(frame);
    }
    let truncated = matches!(reader.tail()?, Tail::Truncated { .. });
    let guest = Guest::from_log(
        &header.guest_name,
        &header.guest_args,
        &header.guest_image_sha256,
        args.guest.as_deref().map(std::path::Path::new),
    )?;
    let mut machine = Machine::new(&MachineConfig {
        mem_mib: header.mem_mib,
        image: &guest.image,
        cmdline: guest.cmdline.clone(),
        nic: header.nic_mac,
    })?;
    // Digests are checked the way this log's writer took them.
    machine.mem_hash = MemHash::of_version(header.format_version);
    if machine.counter.kind() != header.position.counter
        && frames.iter().any(|f| f.entry.pos().is_precise())
    {
        return Err(format!(
            "the log has mid-execution positions measured with counter {:?}, which this host does not offer ({:?})",
            header.position.counter,
            machine.counter.kind()
        )
        .into());
    }
    let total = frames.len();
    let stdout = std::io::stdout();
    let mut console = std::io::LineWriter::new(stdout.lock());
    let mut tuning = ApproachTuning::default();
    if let Some(n) = args.single_step_within {
        tuning.single_step_within = n;
    }
    if let Some(aim) = args.aim {
        tuning.aim = aim;
    }
    // A kick that lands late can make the guest run past a recorded position on this host
    // (docs/design.md, "Known limits"). That loses the replay but proves nothing wrong with the
    // log: the replay goes back to its latest checkpoint (a second or so) and on, more
    // cautiously. Should that fail too, it starts over from the beginning, more cautiously
    // still. Nothing is printed twice (replay is deterministic, so it is the same bytes).
    let policy = if args.no_checkpoints {
        CheckpointPolicy::none()
    } else {
        CheckpointPolicy::default()
    };
    let mut printed = 0u64;
    let mut attempt = 1;
    let result = loop {
        let mut skip = SkipWriter {
            skip: printed,
            inner: &mut console,
        };
        let mut source = VecSource::new(frames.clone());
        let (result, _) = replay_recovering(
            &mut machine,
            &mut source,
            &mut skip,
            tuning,
            None,
            policy,
            &mut say_rewind,
        );
        match result {
            Err(ReplayError::Overshot {
                seq, console_bytes, ..
            }) if attempt < MAX_ATTEMPTS => {
                eprintln!(
                    "replay: attempt {attempt} overshot entry #{seq} and no checkpoint could take it back; replaying again from the start with more cautious kicks"
                );
                printed = printed.max(console_bytes);
                attempt += 1;
                tuning = ApproachTuning::for_attempt(attempt);
                machine = Machine::new(&MachineConfig {
                    mem_mib: header.mem_mib,
                    image: &guest.image,
                    cmdline: guest.cmdline.clone(),
                    nic: header.nic_mac,
                })?;
                machine.mem_hash = MemHash::of_version(header.format_version);
            }
            other => break other,
        }
    };
    console.flush()?;
    let why_incomplete = if truncated {
        "the log is truncated (the recorder did not finish)".to_string()
    } else {
        "the log has no end entry".to_string()
    };
    report(result, &format!("of {total}"), &why_incomplete, args.stats)
}

/// The backup side of `run --stream-to`: replays entries as they arrive.
fn run_streamed(args: &ReplayArgs, addr: &str) -> CmdResult {
    let name = args.guest.as_deref().ok_or("--listen needs --guest")?;
    let guest = Guest::resolve(name, &args.guest_args)?;
    let listener = Listener::bind(addr)?;
    eprintln!("replay: listening on {}", listener.local_addr());
    let image = guest.sha256();
    let check = |hello: &Hello| {
        if hello.guest_image_sha256 == image {
            Ok(())
        } else {
            Err(format!(
                "guest image mismatch: the primary runs {}, this backup boots {}",
                hex(&hello.guest_image_sha256),
                hex(&image)
            ))
        }
    };
    let rx = listener.accept(check, ChannelConfig::default(), None)?;
    eprintln!("replay: streaming from {}", rx.peer_addr());
    let mut machine = Machine::new(&MachineConfig {
        mem_mib: args.mem_mib,
        image: &guest.image,
        cmdline: guest.cmdline.clone(),
        nic: args
            .mac
            .as_deref()
            .map(crate::net_choice::parse_mac)
            .transpose()?,
    })?;
    let mut source = NetSource::new(rx);
    let stdout = std::io::stdout();
    let mut console = std::io::LineWriter::new(stdout.lock());
    // A live stream cannot start over, but it can go back to a checkpoint: aim as a file
    // replay does.
    let mut tuning = ApproachTuning::default();
    if let Some(aim) = args.aim {
        tuning.aim = aim;
    }
    let (result, _) = replay_recovering(
        &mut machine,
        &mut source,
        &mut console,
        tuning,
        None,
        CheckpointPolicy::default(),
        &mut say_rewind,
    );
    console.flush()?;
    let why = match source.ended_by() {
        Some(e) => format!("the primary's stream ended before its end entry ({e})"),
        None => "the primary's stream ended before its end entry".to_string(),
    };
    report(result, "received", &why, args.stats)
}

/// Says on stderr that the replay went back to a checkpoint.
fn say_rewind(r: &Rewind) {
    eprintln!(
        "replay: overshot entry #{} (a timer kick landed late); went back to the checkpoint before entry #{} and replays on from there with more cautious kicks",
        r.overshot_seq, r.from_seq
    );
}

fn report(
    result: Result<ReplayReport, ReplayError>,
    of_total: &str,
    why_incomplete: &str,
    stats: bool,
) -> CmdResult {
    match result {
        Ok(report) => {
            let code = match report.outcome {
                Outcome::PowerOff { code } => format!("guest exit code {code}"),
                Outcome::Stopped => "recording had been stopped".to_string(),
                Outcome::Reset { port, value } => {
                    format!("the guest asked for a reset, {port:#x} <- {value:#04x}")
                }
            };
            eprintln!(
                "replay: OK: reached the recorded end ({code}); {} entries, {} digests verified, interrupts {} at exit + {} precise",
                report.entries,
                report.digests_verified,
                report.stats.interrupts_at_exit,
                report.stats.interrupts_precise
            );
            if stats {
                let s = &report.stats;
                eprintln!(
                    "replay: {:.3} s wall, {} exits, approach {:.3} s ({} kicks, {} of them before the guest ran, {} breakpoint/steps, {} stops)",
                    s.wall.as_secs_f64(),
                    s.exits,
                    s.approach.as_secs_f64(),
                    s.approach_kicks,
                    s.idle_kicks,
                    s.approach_steps,
                    s.stops
                );
                let kinds = [
                    ("kicks", s.approach_kicks, s.kick_time),
                    ("breakpoint runs", s.breakpoint_runs, s.breakpoint_time),
                    ("steps over a breakpoint", s.step_overs, s.step_over_time),
                    ("single steps", s.single_steps, s.single_step_time),
                ];
                let by_kind: Vec<String> = kinds
                    .iter()
                    .map(|(name, n, t)| {
                        let each = if *n == 0 {
                            "-".to_string()
                        } else {
                            format!("{:.1} µs each", t.as_secs_f64() * 1e6 / *n as f64)
                        };
                        format!("{n} {name} {:.3} s ({each})", t.as_secs_f64())
                    })
                    .collect();
                eprintln!("replay: approach by stop kind: {}", by_kind.join("; "));
                if s.kick_floor_ns > 0.0 {
                    eprintln!(
                        "replay: kicks that stopped the guest before it ran raised the shortest kick to {:.0} µs",
                        s.kick_floor_ns / 1e3
                    );
                }
                eprintln!(
                    "replay: {} checkpoints, {:.3} s ({:.2} ms each, {:.1} MiB of guest memory in the last), {} rewinds after an overshoot ({:.2} ms each to put the machine back)",
                    s.checkpoints,
                    s.checkpoint_time.as_secs_f64(),
                    if s.checkpoints == 0 {
                        0.0
                    } else {
                        s.checkpoint_time.as_secs_f64() * 1e3 / s.checkpoints as f64
                    },
                    s.checkpoint_bytes as f64 / f64::from(1u32 << 20),
                    s.rewinds,
                    if s.rewinds == 0 {
                        0.0
                    } else {
                        s.rewind_time.as_secs_f64() * 1e3 / s.rewinds as f64
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(ReplayError::LogEnded { last_seq, exits }) => {
            let last = last_seq.map_or("none".to_string(), |s| format!("#{s}"));
            eprintln!(
                "replay: INCOMPLETE: {why_incomplete}; replayed faithfully up to its last whole entry ({last} {of_total}), {exits} guest exits"
            );
            Ok(ExitCode::from(EXIT_INCOMPLETE))
        }
        Err(e @ ReplayError::Divergence { .. }) => {
            eprintln!("replay: DIVERGED: {e}");
            Ok(ExitCode::from(EXIT_DIVERGED))
        }
        Err(e) => Err(e.into()),
    }
}
