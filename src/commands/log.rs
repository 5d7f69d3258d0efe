//! `understudy log inspect|dump`: the log as a debugging artefact.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use logging_channel::codec::{EntryEncoding, encode_frame_as};
use logging_channel::file::{Completeness, LogReader, Tail};
use logging_channel::format::{Entry, EntryKind, Frame};
use logging_channel::netframe;
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
    /// Only entries of this kind (input, irq, inject, console-input, digest, end, output,
    /// net-rx, net-tx).
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
    crate::signals::die_quietly_on_closed_pipe();
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

/// Network frames of one direction: how many, and their Ethernet bytes (the frames alone, not
/// the log entries around them).
#[derive(Debug, Default, Serialize)]
struct NetStats {
    frames: u64,
    bytes: u64,
}

#[derive(Debug, Default, Serialize)]
struct Network {
    /// `net-rx`: frames the VMM handed to the guest.
    rx: NetStats,
    /// `net-tx`: frames the guest transmitted.
    tx: NetStats,
}

impl Network {
    fn count(&mut self, entry: &Entry) {
        let (dir, frame) = match entry {
            Entry::NetRx { frame, .. } => (&mut self.rx, frame),
            Entry::NetTx { frame, .. } => (&mut self.tx, frame),
            _ => return,
        };
        dir.frames += 1;
        dir.bytes += frame.len() as u64;
    }
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
    network: Network,
    digests: u64,
    end: Option<String>,
}

/// The frame's size as this log holds it (older logs use the fixed encoding).
fn frame_len(frame: &Frame, enc: EntryEncoding) -> u64 {
    let mut buf = Vec::new();
    encode_frame_as(frame, enc, &mut buf);
    buf.len() as u64
}

fn inspect(args: &InspectArgs) -> CmdResult {
    let reader = LogReader::open(&args.file)?;
    let enc = EntryEncoding::of_version(reader.header().format_version);
    let mut by_kind: BTreeMap<&'static str, KindStats> = BTreeMap::new();
    for k in EntryKind::ALL {
        by_kind.insert(k.name(), KindStats::default());
    }
    let mut interrupts = Interrupts::default();
    let mut network = Network::default();
    let (mut entries, mut digests, mut duration_ns, mut guest_exits) = (0u64, 0u64, 0u64, 0u64);
    let mut end = None;
    for item in reader.frames() {
        let (_offset, frame) = item?;
        entries += 1;
        duration_ns = duration_ns.max(frame.t_ns);
        guest_exits = guest_exits.max(frame.entry.pos().exits());
        let stats = by_kind.entry(frame.entry.kind().name()).or_default();
        stats.entries += 1;
        stats.bytes += frame_len(&frame, enc);
        network.count(&frame.entry);
        match &frame.entry {
            Entry::Inject { pos, .. } if pos.is_precise() => interrupts.precise += 1,
            Entry::Inject { .. } => interrupts.at_exit += 1,
            Entry::Irq { .. } => interrupts.irq_raised += 1,
            Entry::Digest { .. } => digests += 1,
            Entry::End { reason, .. } => end = Some(reason.to_string()),
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
        network,
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
    println!(
        "network:    {} frames in ({} bytes), {} frames out ({} bytes)",
        report.network.rx.frames,
        report.network.rx.bytes,
        report.network.tx.frames,
        report.network.tx.bytes
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
    /// For a network frame: its decode, as in the text dump (the bytes are in `entry`).
    #[serde(skip_serializing_if = "Option::is_none")]
    frame_summary: Option<String>,
}

impl<'a> DumpLine<'a> {
    fn new(offset: u64, frame: &'a Frame) -> Self {
        let frame_summary = match &frame.entry {
            Entry::NetRx { frame, .. } | Entry::NetTx { frame, .. } => {
                Some(netframe::summary(frame))
            }
            _ => None,
        };
        Self {
            seq: frame.seq,
            offset,
            t_ns: frame.t_ns,
            kind: frame.entry.kind().name(),
            entry: &frame.entry,
            frame_summary,
        }
    }
}

/// One line of the text dump.
fn text_line(offset: u64, frame: &Frame) -> String {
    format!(
        "#{:<7} @{:<9} t={:>12.6}ms {:<13} {}",
        frame.seq,
        offset,
        frame.t_ns as f64 / 1e6,
        frame.entry.kind().name(),
        describe(&frame.entry)
    )
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
            let line = DumpLine::new(offset, &frame);
            writeln!(out, "{}", serde_json::to_string(&line)?)?;
        } else {
            writeln!(out, "{}", text_line(offset, &frame))?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use logging_channel::format::Position;

    use super::*;

    /// A TCP SYN from 10.0.0.1:51234 to the guest's 10.0.0.10:6379, padded to 60 bytes.
    fn syn() -> Vec<u8> {
        let mut f = vec![
            0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x52, 0x54, 0, 0, 0, 2, 0x08, 0x00,
        ];
        f.extend_from_slice(&[0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 10]);
        f.extend_from_slice(&51234u16.to_be_bytes());
        f.extend_from_slice(&6379u16.to_be_bytes());
        f.extend_from_slice(&1000u32.to_be_bytes());
        f.extend_from_slice(&0u32.to_be_bytes());
        f.extend_from_slice(&[0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0]);
        f.resize(60, 0);
        f
    }

    fn rx(frame: Vec<u8>) -> Frame {
        Frame {
            seq: 12,
            t_ns: 3_456_789,
            state_check: 0,
            entry: Entry::NetRx {
                pos: Position::AtExit { exits: 4321 },
                frame,
            },
        }
    }

    #[test]
    fn kind_names_parse_for_the_network_kinds() {
        assert_eq!(parse_kind("net-rx"), Ok(EntryKind::NetRx));
        assert_eq!(parse_kind("net-tx"), Ok(EntryKind::NetTx));
        let err = parse_kind("net").unwrap_err();
        assert!(err.ends_with("output, net-rx, net-tx)"), "{err}");
    }

    #[test]
    fn text_dump_shows_a_frames_size_and_decode() {
        assert_eq!(
            text_line(4096, &rx(syn())),
            "#12      @4096      t=    3.456789ms net-rx        net-rx frame of 60 bytes at exit 4321: \
             52:54:00:00:00:02 > 52:54:00:12:34:56 IPv4 10.0.0.1 > 10.0.0.10 TCP 51234 > 6379 [SYN] seq 1000 len 0"
        );
        // Garbage is described, not trusted.
        let line = text_line(4096, &rx(vec![0xee; 14]));
        assert!(
            line.ends_with("ee:ee:ee:ee:ee:ee > ee:ee:ee:ee:ee:ee ethertype 0xeeee"),
            "{line}"
        );
    }

    #[test]
    fn json_dump_adds_the_decode_for_frames_only() {
        let f = rx(syn());
        let v = serde_json::to_value(DumpLine::new(7, &f)).unwrap();
        assert_eq!(v["kind"], "net-rx");
        assert_eq!(v["entry"]["NetRx"]["frame"].as_array().unwrap().len(), 60);
        assert!(
            v["frame_summary"]
                .as_str()
                .unwrap()
                .ends_with("[SYN] seq 1000 len 0"),
            "{v}"
        );
        let irq = Frame {
            seq: 0,
            t_ns: 0,
            state_check: 0,
            entry: Entry::Irq {
                pos: Position::AtExit { exits: 1 },
                line: 0,
            },
        };
        let v = serde_json::to_value(DumpLine::new(7, &irq)).unwrap();
        assert!(v.get("frame_summary").is_none(), "{v}");
    }

    #[test]
    fn network_stats_count_frames_and_bytes_per_direction() {
        let mut n = Network::default();
        n.count(&rx(syn()).entry);
        n.count(&rx(vec![0; 100]).entry);
        n.count(&Entry::NetTx {
            pos: Position::AtExit { exits: 1 },
            frame: vec![0; 42],
        });
        n.count(&Entry::ConsoleInput {
            pos: Position::AtExit { exits: 1 },
            bytes: vec![0; 5],
        });
        assert_eq!((n.rx.frames, n.rx.bytes), (2, 160));
        assert_eq!((n.tx.frames, n.tx.bytes), (1, 42));
    }
}
