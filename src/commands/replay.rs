//! `understudy replay FILE`: reproduce a recorded run and verify it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use logging_channel::file::{LogReader, Tail};
use vmm::machine::{Machine, MachineConfig};
use vmm::outcome::Outcome;
use vmm::precise::ApproachTuning;
use vmm::replay::{ReplayError, replay};
use vmm::source::VecSource;

use super::CmdResult;
use crate::guest_choice::Guest;

/// Exit status when the log was incomplete and replayed faithfully as far as it goes.
pub const EXIT_INCOMPLETE: u8 = 3;
/// Exit status when replay diverged from the recording.
pub const EXIT_DIVERGED: u8 = 4;
/// Replays from the start after a late kick, at most this many times in all.
const MAX_ATTEMPTS: u32 = 3;

/// Drops the first `skip` bytes written: what an earlier attempt already printed.
struct SkipWriter<'a, W: Write> {
    skip: u64,
    inner: &'a mut W,
}

impl<W: Write> Write for SkipWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let dropped = usize::try_from(self.skip)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        self.skip -= dropped as u64;
        if dropped < buf.len() {
            self.inner.write_all(&buf[dropped..])?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The replay log.
    pub file: PathBuf,
    /// Use this guest image instead of the one named in the log (its hash must match).
    #[arg(long, value_name = "PATH")]
    pub guest: Option<PathBuf>,
    /// Print replay statistics to stderr at the end.
    #[arg(long)]
    pub stats: bool,
    /// Approach tuning: fraction of the remaining distance a timed kick aims at (experts;
    /// above 1 it overshoots on purpose, which tests the retry).
    #[arg(long, hide = true)]
    pub aim: Option<f64>,
    /// Approach tuning: single-step once this many instructions away (experts).
    #[arg(long, hide = true)]
    pub single_step_within: Option<u64>,
}

pub fn run(args: &ReplayArgs) -> CmdResult {
    let reader = LogReader::open(&args.file)?;
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
        args.guest.as_deref(),
    )?;
    let mut machine = Machine::new(&MachineConfig {
        mem_mib: header.mem_mib,
        image: &guest.image,
        cmdline: guest.cmdline.clone(),
    })?;
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
    // log, so replay again from the start, more cautiously, without printing twice what the
    // first attempt already printed (replay is deterministic, so it is the same bytes).
    let mut printed = 0u64;
    let mut attempt = 1;
    let result = loop {
        let mut skip = SkipWriter {
            skip: printed,
            inner: &mut console,
        };
        let mut source = VecSource::new(frames.clone());
        let result = replay(&mut machine, &mut source, &mut skip, tuning);
        match result {
            Err(ReplayError::Overshot {
                seq, console_bytes, ..
            }) if attempt < MAX_ATTEMPTS => {
                eprintln!(
                    "replay: attempt {attempt} overshot entry #{seq} (a timer kick landed late); replaying again from the start with cautious kicks"
                );
                printed = printed.max(console_bytes);
                attempt += 1;
                tuning = ApproachTuning::cautious();
                machine = Machine::new(&MachineConfig {
                    mem_mib: header.mem_mib,
                    image: &guest.image,
                    cmdline: guest.cmdline.clone(),
                })?;
            }
            other => break other,
        }
    };
    console.flush()?;
    match result {
        Ok(report) => {
            let code = match report.outcome {
                Outcome::PowerOff { code } => format!("guest exit code {code}"),
                Outcome::Stopped => "recording had been stopped".to_string(),
            };
            eprintln!(
                "replay: OK: reached the recorded end ({code}); {total} entries, {} digests verified, interrupts {} at exit + {} precise",
                report.digests_verified,
                report.stats.interrupts_at_exit,
                report.stats.interrupts_precise
            );
            if args.stats {
                let s = &report.stats;
                eprintln!(
                    "replay: {:.3} s wall, {} exits, approach {:.3} s ({} kicks, {} breakpoint/steps, {} stops)",
                    s.wall.as_secs_f64(),
                    s.exits,
                    s.approach.as_secs_f64(),
                    s.approach_kicks,
                    s.approach_steps,
                    s.stops
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(ReplayError::LogEnded { last_seq, exits }) => {
            let why = if truncated {
                "the log is truncated (the recorder did not finish)"
            } else {
                "the log has no end entry"
            };
            let last = last_seq.map_or("none".to_string(), |s| format!("#{s}"));
            eprintln!(
                "replay: INCOMPLETE: {why}; replayed faithfully up to its last whole entry ({last} of {total}), {exits} guest exits"
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
