//! The log as a debugging artefact: `log inspect` and `log dump` report what is in it.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;

fn dump_json(log: &std::path::Path, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["log", "dump", "--json", log.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = understudy(&args);
    assert_ok(&o, "log dump");
    stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[test]
fn inspect_and_dump_agree_with_each_other_and_with_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("compute.ulog");
    let rec = understudy(&[
        "run",
        "--guest",
        "compute",
        "--guest-arg",
        "iters=8000",
        "--record",
        log.to_str().unwrap(),
        "--stats",
    ]);
    assert_ok(&rec, "recording");
    let info = inspect_json(&log);
    for key in [
        "complete",
        "entries",
        "bytes",
        "by_kind",
        "interrupts",
        "digests",
        "duration_ns",
        "header",
    ] {
        assert!(
            info.get(key).is_some(),
            "inspect --json lacks {key}: {info}"
        );
    }
    assert_eq!(info["complete"], true);
    assert_eq!(
        info["bytes"].as_u64().unwrap(),
        std::fs::metadata(&log).unwrap().len()
    );
    assert_eq!(info["header"]["guest_name"], "compute");
    assert_eq!(info["header"]["guest_args"][0], "iters=8000");

    let all = dump_json(&log, &[]);
    assert_eq!(all.len() as u64, info["entries"].as_u64().unwrap());
    for (i, e) in all.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64));
    }
    // by_kind counts match the dump, kind by kind, and --kind filters exactly those.
    let by_kind = info["by_kind"].as_object().unwrap();
    let mut total_bytes = 0;
    for (kind, stats) in by_kind {
        let n = all.iter().filter(|e| e["kind"] == kind.as_str()).count() as u64;
        assert_eq!(stats["entries"].as_u64(), Some(n), "{kind}");
        total_bytes += stats["bytes"].as_u64().unwrap();
        let filtered = dump_json(&log, &["--kind", kind]);
        assert_eq!(filtered.len() as u64, n, "{kind}");
        assert!(filtered.iter().all(|e| e["kind"] == kind.as_str()));
    }
    // Entries plus the file prefix make up the whole file.
    assert!(total_bytes < info["bytes"].as_u64().unwrap());

    // Interrupt placement: injections at exits vs mid-execution, as the recorder counted them.
    let injects: Vec<_> = all.iter().filter(|e| e["kind"] == "inject").collect();
    let precise = injects
        .iter()
        .filter(|e| e["entry"]["Inject"]["pos"].get("Precise").is_some())
        .count() as u64;
    assert_eq!(info["interrupts"]["precise"].as_u64(), Some(precise));
    assert_eq!(
        info["interrupts"]["at_exit"].as_u64(),
        Some(injects.len() as u64 - precise)
    );
    assert!(
        precise > 0,
        "a kernel-mode compute run has mid-execution interrupts"
    );
    let stats = stderr(&rec);
    assert!(
        stats.contains(&format!(
            "interrupts {} at exit + {precise} precise",
            injects.len() as u64 - precise
        )),
        "{stats}"
    );
    assert_eq!(
        info["digests"].as_u64(),
        Some(by_kind["digest"]["entries"].as_u64().unwrap())
    );
    // A digest's fields sit beside its position, as they always have in the dump.
    let digest = all.iter().find(|e| e["kind"] == "digest").unwrap();
    let mut fields: Vec<_> = digest["entry"]["Digest"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "cr0",
            "cr3",
            "cr4",
            "devices_hash",
            "efer",
            "mem_hash",
            "pos",
            "regs"
        ]
    );
    assert_eq!(
        digest["entry"]["Digest"]["regs"].as_object().unwrap().len(),
        18
    );
    assert_eq!(all.last().unwrap()["kind"], "end");

    // --from and --limit select a window.
    let window = dump_json(&log, &["--from", "5", "--limit", "3"]);
    assert_eq!(
        window
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![5, 6, 7]
    );

    // The text forms say the same things in words.
    let text = understudy(&["log", "inspect", log.to_str().unwrap()]);
    assert_ok(&text, "inspect");
    let t = stdout(&text);
    assert!(t.contains("complete:   true"), "{t}");
    assert!(
        t.contains(&format!("{precise} landed mid-execution")),
        "{t}"
    );
    let dump = understudy(&["log", "dump", log.to_str().unwrap(), "--kind", "end"]);
    assert_ok(&dump, "dump --kind end");
    assert!(
        stdout(&dump).contains("end (power-off, exit code 0)"),
        "{}",
        stdout(&dump)
    );
}

/// A log with network frames, made by hand (no VMM produces them yet): `--kind net-rx` /
/// `net-tx` select them, the dump shows each frame's size and decode, inspect counts frames and
/// bytes per direction. Garbage frames are described, never trusted.
#[test]
fn network_frames_are_dumped_decoded_and_counted_per_direction() {
    use logging_channel::file::LogWriter;
    use logging_channel::format::{
        CounterKind, EndReason, Entry, FORMAT_VERSION, Header, Position, PositionSemantics,
    };

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("net.ulog");
    let header = Header {
        format_version: FORMAT_VERSION,
        guest_image_sha256: [0; 32],
        guest_name: "kv".into(),
        guest_args: vec!["ip=10.0.0.10/24".into()],
        mem_mib: 64,
        position: PositionSemantics {
            counter: CounterKind::None,
            precise_cpl0: false,
            precise_cpl3: false,
            description: "hand-made".into(),
        },
        digest_interval_ms: 0,
        recorded_at_unix_ms: 0,
        host: "test".into(),
        nic_mac: None,
    };
    let guest = [0x52u8, 0x54, 0, 0x12, 0x34, 0x56];
    let peer = [0x52u8, 0x54, 0, 0, 0, 2];
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&peer);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&peer);
    arp.extend_from_slice(&[10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 10]);
    arp.resize(60, 0);
    let mut reply = peer.to_vec();
    reply.extend_from_slice(&guest);
    reply.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 45, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    reply.extend_from_slice(&[10, 0, 0, 10, 10, 0, 0, 1]);
    reply.extend_from_slice(&6379u16.to_be_bytes());
    reply.extend_from_slice(&51234u16.to_be_bytes());
    reply.extend_from_slice(&8u32.to_be_bytes());
    reply.extend_from_slice(&1015u32.to_be_bytes());
    reply.extend_from_slice(&[0x50, 0x18, 0xfa, 0xf0, 0, 0, 0, 0]);
    reply.extend_from_slice(b"+OK\r\n");
    let garbage = vec![0xee; 20];
    let entries = [
        Entry::NetRx {
            pos: Position::AtExit { exits: 10 },
            frame: arp.clone(),
        },
        Entry::NetTx {
            pos: Position::AtExit { exits: 20 },
            frame: reply.clone(),
        },
        Entry::NetRx {
            pos: Position::AtExit { exits: 30 },
            frame: garbage.clone(),
        },
        Entry::End {
            pos: Position::AtExit { exits: 40 },
            reason: EndReason::Stopped,
        },
    ];
    let mut w = LogWriter::create(&log, &header).unwrap();
    for (i, e) in entries.iter().enumerate() {
        w.append(1_000_000 * i as u64, 0, e).unwrap();
    }
    w.finish().unwrap();

    let info = inspect_json(&log);
    assert_eq!(
        info["header"]["format_version"],
        logging_channel::FORMAT_VERSION
    );
    assert_eq!(info["by_kind"]["net-rx"]["entries"], 2);
    assert_eq!(info["by_kind"]["net-tx"]["entries"], 1);
    assert_eq!(info["network"]["rx"]["frames"], 2);
    assert_eq!(
        info["network"]["rx"]["bytes"],
        (arp.len() + garbage.len()) as u64
    );
    assert_eq!(info["network"]["tx"]["frames"], 1);
    assert_eq!(info["network"]["tx"]["bytes"], reply.len() as u64);

    let rx = understudy(&["log", "dump", log.to_str().unwrap(), "--kind", "net-rx"]);
    assert_ok(&rx, "dump --kind net-rx");
    let rx = stdout(&rx);
    let lines: Vec<_> = rx.lines().collect();
    assert_eq!(lines.len(), 2, "{rx}");
    assert!(
        lines[0].ends_with(
            "net-rx frame of 60 bytes at exit 10: 52:54:00:00:00:02 > ff:ff:ff:ff:ff:ff ARP request sender 10.0.0.1 target 10.0.0.10"
        ),
        "{rx}"
    );
    assert!(
        lines[1].ends_with(
            "net-rx frame of 20 bytes at exit 30: ee:ee:ee:ee:ee:ee > ee:ee:ee:ee:ee:ee ethertype 0xeeee"
        ),
        "{rx}"
    );
    let tx = understudy(&["log", "dump", log.to_str().unwrap(), "--kind", "net-tx"]);
    assert_ok(&tx, "dump --kind net-tx");
    assert!(
        stdout(&tx).trim_end().ends_with(
            "net-tx frame of 59 bytes at exit 20: 52:54:00:12:34:56 > 52:54:00:00:00:02 IPv4 10.0.0.10 > 10.0.0.1 TCP 6379 > 51234 [PSH,ACK] seq 8 ack 1015 len 5"
        ),
        "{}",
        stdout(&tx)
    );
    let json = dump_json(&log, &["--kind", "net-tx"]);
    assert_eq!(json.len(), 1);
    assert_eq!(
        json[0]["entry"]["NetTx"]["frame"].as_array().unwrap().len(),
        reply.len()
    );
    assert!(
        json[0]["frame_summary"]
            .as_str()
            .unwrap()
            .ends_with("[PSH,ACK] seq 8 ack 1015 len 5"),
        "{}",
        json[0]
    );

    let text = understudy(&["log", "inspect", log.to_str().unwrap()]);
    assert_ok(&text, "inspect");
    assert!(
        stdout(&text).contains("network:    2 frames in (80 bytes), 1 frames out (59 bytes)"),
        "{}",
        stdout(&text)
    );
}

/// `log dump | head`: the reader goes away after a few lines; the dump ends quietly (killed
/// by SIGPIPE, as `cat` is), without a panic.
#[test]
fn a_dump_into_a_pipe_closed_early_ends_quietly() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ticker.ulog");
    let rec = understudy(&[
        "run",
        "--guest",
        "ticker",
        "--guest-arg",
        "hz=1000",
        "--guest-arg",
        "ticks=1500",
        "--record",
        log.to_str().unwrap(),
    ]);
    assert_ok(&rec, "recording");
    // Far more than a pipe holds (64 KiB), so the dump is still writing when the reader goes.
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size > 128 * 1024, "only {size} bytes of log");
    let mut child = Command::new(bin())
        .args(["log", "dump", log.to_str().unwrap()])
        .env_remove("UNDERSTUDY_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("#0"), "{first}");
    // The reader is gone now; the rest of the dump cannot be written.
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}\n{err}",
        out.status
    );
}
