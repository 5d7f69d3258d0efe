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
    let mut source = VecSource::new(frames);
    let stdout = std::io::stdout();
    let mut console = std::io::LineWriter::new(stdout.lock());
    let mut tuning = ApproachTuning::default();
    if let Some(n) = args.single_step_within {
        tuning.single_step_within = n;
    }
    let result = replay(&mut machine, &mut source, &mut console, tuning);
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
