//! `understudy log inspect|dump`: the log as a debugging artefact.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use logging_channel::codec::encode_frame;
use logging_channel::file::{Completeness, LogReader, Tail};
use logging_channel::format::{Entry, EntryKind, Frame};
use serde::Serialize;
use vmm::replay::describe;

use super::{CmdResult, header_summary};

#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Header, completeness, duration, entries and bytes by kind, interrupt placement, digests.
    Inspect(InspectArgs),
    /// One line per entry.
    Dump(DumpArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    pub file: PathBuf,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    pub file: PathBuf,
    /// Only entries of this kind (input, irq, inject, console-input, digest, end).
    #[arg(long, value_parser = parse_kind)]
    pub kind: Option<EntryKind>,
    /// Start at this entry number.
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// At most this many entries.
    #[arg(long)]
    pub limit: Option<u64>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

fn parse_kind(s: &str) -> Result<EntryKind, String> {
    EntryKind::from_name(s).ok_or_else(|| {
        let names: Vec<_> = EntryKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown entry kind '{s}' (one of: {})", names.join(", "))
    })
}

pub fn run(cmd: &LogCommand) -> CmdResult {
    match cmd {
        LogCommand::Inspect(a) => inspect(a),
        LogCommand::Dump(a) => dump(a),
    }
}

#[derive(Debug, Default, Serialize)]
struct KindStats {
    entries: u64,
    bytes: u64,
}

#[derive(Debug, Default, Serialize)]
struct Interrupts {
    at_exit: u64,
    precise: u64,
    irq_raised: u64,
}

#[derive(Debug, Serialize)]
struct Inspection {
    file: String,
    header: logging_channel::format::Header,
    complete: bool,
    completeness: String,
    truncated_tail_bytes: u64,
    entries: u64,
    bytes: u64,
    duration_ns: u64,
    guest_exits: u64,
    by_kind: BTreeMap<&'static str, KindStats>,
    interrupts: Interrupts,
    digests: u64,
    end: Option<String>,
}

fn frame_len(frame: &Frame) -> u64 {
    let mut buf = Vec::new();
    encode_frame(frame, &mut buf);
    buf.len() as u64
}

fn inspect(args: &InspectArgs) -> CmdResult {
    let reader = LogReader::open(&args.file)?;
    let mut by_kind: BTreeMap<&'static str, KindStats> = BTreeMap::new();
    for k in EntryKind::ALL {
        by_kind.insert(k.name(), KindStats::default());
    }
    let mut interrupts = Interrupts::default();
    let (mut entries, mut digests, mut duration_ns, mut guest_exits) = (0u64, 0u64, 0u64, 0u64);
    let mut end = None;
    for item in reader.frames() {
        let (_offset, frame) = item?;
        entries += 1;
        duration_ns = duration_ns.max(frame.t_ns);
        guest_exits = guest_exits.max(frame.entry.pos().exits());
        let stats = by_kind.entry(frame.entry.kind().name()).or_default();
        stats.entries += 1;
        stats.bytes += frame_len(&frame);
        match &frame.entry {
            Entry::Inject { pos, .. } if pos.is_precise() => interrupts.precise += 1,
            Entry::Inject { .. } => interrupts.at_exit += 1,
            Entry::Irq { .. } => interrupts.irq_raised += 1,
            Entry::Digest { .. } => digests += 1,
            Entry::End { reason, .. } => end = Some(format!("{reason:?}")),
            _ => {}
        }
    }
    let completeness = reader.completeness()?;
    let truncated_tail_bytes = match reader.tail()? {
        Tail::Truncated { trailing_bytes, .. } => trailing_bytes,
        Tail::Clean => 0,
    };
    let report = Inspection {
        file: args.file.display().to_string(),
        header: reader.header().clone(),
        complete: matches!(completeness, Completeness::Complete),
        completeness: format!("{completeness:?}"),
        truncated_tail_bytes,
        entries,
        bytes: reader.total_bytes(),
        duration_ns,
        guest_exits,
        by_kind,
        interrupts,
        digests,
        end,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let h = &report.header;
    println!("log:        {}", report.file);
    println!("format:     version {}", h.format_version);
    println!("guest:      {}", header_summary(h));
    println!("host:       {}", h.host);
    println!("positions:  {}", h.position.description);
    println!("complete:   {} ({})", report.complete, report.completeness);
    if report.truncated_tail_bytes > 0 {
        println!(
            "truncated:  {} trailing bytes of a partial entry",
            report.truncated_tail_bytes
        );
    }
    println!(
        "duration:   {:.3} s (recorder time), {} guest exits",
        report.duration_ns as f64 / 1e9,
        report.guest_exits
    );
    println!(
        "size:       {} entries, {} bytes",
        report.entries, report.bytes
    );
    for (kind, s) in &report.by_kind {
        println!(
            "  {kind:<14} {:>8} entries {:>10} bytes",
            s.entries, s.bytes
        );
    }
    println!(
        "interrupts: {} delivered at exits, {} landed mid-execution (precise), {} irq lines raised",
        report.interrupts.at_exit, report.interrupts.precise, report.interrupts.irq_raised
    );
    println!("digests:    {}", report.digests);
    println!("end:        {}", report.end.as_deref().unwrap_or("(none)"));
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct DumpLine<'a> {
    seq: u64,
    offset: u64,
    t_ns: u64,
    kind: &'static str,
    entry: &'a Entry,
}

fn dump(args: &DumpArgs) -> CmdResult {
    let reader = LogReader::open(&args.file)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut shown = 0u64;
    for item in reader.frames() {
        let (offset, frame) = item?;
        if frame.seq < args.from || args.kind.is_some_and(|k| k != frame.entry.kind()) {
            continue;
        }
        if args.limit.is_some_and(|l| shown >= l) {
            break;
        }
        shown += 1;
        use std::io::Write;
        if args.json {
            let line = DumpLine {
                seq: frame.seq,
                offset,
                t_ns: frame.t_ns,
                kind: frame.entry.kind().name(),
                entry: &frame.entry,
            };
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        } else {
            writeln!(
                out,
                "#{:<7} @{:<9} t={:>12.6}ms {:<13} {}",
                frame.seq,
                offset,
                frame.t_ns as f64 / 1e6,
                frame.entry.kind().name(),
                describe(&frame.entry)
            )?;
        }
    }
    if let Tail::Truncated {
        offset,
        trailing_bytes,
    } = reader.tail()?
    {
        use std::io::Write;
        out.flush()?;
        eprintln!(
            "log dump: the log ends in a partial entry at byte {offset} ({trailing_bytes} bytes): the recorder did not finish"
        );
    }
    Ok(ExitCode::SUCCESS)
}
