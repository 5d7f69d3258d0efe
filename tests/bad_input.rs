//! Bad input gets a clear error that says what and where, never a panic, and never a replay
//! that silently goes wrong.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::*;
use logging_channel::codec::{encode_frame, encode_prefix};
use logging_channel::file::LogReader;
use logging_channel::format::{Entry, Frame, InputSource, LogState};

fn small_compute_log(dir: &std::path::Path) -> std::path::PathBuf {
    let log = dir.join("compute.ulog");
    assert_ok(&record(&log, "compute", &["iters=6000"]), "recording");
    log
}

/// Reads a whole log into (header, state, frames).
fn load(log: &std::path::Path) -> (logging_channel::format::Header, LogState, Vec<(u64, Frame)>) {
    let reader = LogReader::open(log).expect("open log");
    let frames = reader.frames().map(|f| f.expect("valid frame")).collect();
    (reader.header().clone(), reader.state(), frames)
}

fn write_log(
    path: &std::path::Path,
    header: &logging_channel::format::Header,
    state: LogState,
    frames: &[(u64, Frame)],
) {
    let mut bytes = encode_prefix(header, state);
    for (_, f) in frames {
        encode_frame(f, &mut bytes);
    }
    std::fs::write(path, bytes).expect("write log");
}

#[test]
fn a_flipped_byte_is_rejected_by_inspect_and_replay_naming_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = small_compute_log(dir.path());
    let (_, _, frames) = load(&log);
    // Flip a byte in the middle of an entry that is not the first or the last.
    let (offset, _) = frames[frames.len() / 2];
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[offset as usize + 12] ^= 0x40;
    let bad = dir.path().join("flipped.ulog");
    std::fs::write(&bad, &bytes).unwrap();

    let inspect = understudy(&["log", "inspect", bad.to_str().unwrap()]);
    assert_eq!(inspect.status.code(), Some(1), "{}", stderr(&inspect));
    let msg = stderr(&inspect);
    assert!(
        msg.contains(&format!("byte {offset}")),
        "inspect must name the frame's offset {offset}: {msg}"
    );
    assert!(!msg.contains("panicked"), "{msg}");

    let rep = replay(&bad);
    assert_eq!(rep.status.code(), Some(1), "{}", stderr(&rep));
    assert!(
        stderr(&rep).contains(&format!("byte {offset}")),
        "{}",
        stderr(&rep)
    );
    assert!(
        stdout(&rep).is_empty(),
        "a corrupt log must not be replayed at all"
    );
}

#[test]
fn a_truncated_log_is_reported_incomplete_and_replays_to_its_last_whole_entry() {
    let dir = tempfile::tempdir().unwrap();
    let log = small_compute_log(dir.path());
    let (_, _, frames) = load(&log);
    let keep = frames.len() / 2;
    let cut_at = frames[keep].0 + 5; // in the middle of frame `keep`
    let bytes = std::fs::read(&log).unwrap();
    let cut = dir.path().join("cut.ulog");
    std::fs::write(&cut, &bytes[..cut_at as usize]).unwrap();

    let info = inspect_json(&cut);
    assert_eq!(info["complete"], false);
    assert_eq!(info["entries"].as_u64(), Some(keep as u64));
    assert_eq!(info["truncated_tail_bytes"].as_u64(), Some(5));

    let rep = replay(&cut);
    assert_eq!(rep.status.code(), Some(3), "{}", stderr(&rep));
    let msg = stderr(&rep);
    assert!(
        msg.contains("INCOMPLETE") && msg.contains("truncated"),
        "{msg}"
    );
    assert!(msg.contains(&format!("#{} of {keep}", keep - 1)), "{msg}");
    // What replay printed is a prefix of what the recording printed.
    let full = replay(&log);
    assert_ok(&full, "replay of the whole log");
    assert!(stdout(&full).starts_with(&stdout(&rep)));
}

#[test]
fn a_killed_recorder_leaves_a_log_that_replays_as_far_as_it_goes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("killed.ulog");
    let mut child = Command::new(bin())
        .args([
            "run",
            "--guest",
            "compute",
            // The kill must land mid-run.
            "--guest-arg",
            COMPUTE_FOR_LONG,
            "--record",
            log.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    // SIGKILL: no chance to finish the log.
    child.kill().unwrap();
    let recorded = child.wait_with_output().unwrap();
    let info = inspect_json(&log);
    assert_eq!(info["complete"], false, "{info}");
    assert!(info["entries"].as_u64().unwrap() > 10, "{info}");
    let rep = replay(&log);
    assert_eq!(rep.status.code(), Some(3), "{}", stderr(&rep));
    assert!(stderr(&rep).contains("INCOMPLETE"), "{}", stderr(&rep));
    let recorded = String::from_utf8_lossy(&recorded.stdout).into_owned();
    assert!(
        recorded.starts_with(&stdout(&rep)),
        "replayed console is not a prefix of the recorded one:\n--- recorded\n{recorded}\n--- replayed\n{}",
        stdout(&rep)
    );
}

#[test]
fn an_altered_input_with_a_valid_crc_is_caught_at_that_entry() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ticker.ulog");
    assert_ok(&record(&log, "ticker", &["ticks=6"]), "recording");
    let (header, state, mut frames) = load(&log);
    // The third clock read: change the time the guest sees by a millisecond.
    let (idx, altered_seq) = frames
        .iter()
        .enumerate()
        .filter(|(_, (_, f))| {
            matches!(
                f.entry,
                Entry::Input {
                    source: InputSource::Clock,
                    ..
                }
            )
        })
        .map(|(i, (_, f))| (i, f.seq))
        .nth(2)
        .expect("ticker reads the clock");
    if let Entry::Input { value, .. } = &mut frames[idx].1.entry {
        *value += 1_000_000;
    }
    let bad = dir.path().join("altered.ulog");
    write_log(&bad, &header, state, &frames);
    assert!(
        LogReader::open(&bad).is_ok(),
        "the altered log must be well-formed (valid CRCs)"
    );

    let rep = replay(&bad);
    assert_eq!(rep.status.code(), Some(4), "{}", stderr(&rep));
    let msg = stderr(&rep);
    assert!(msg.contains("DIVERGED"), "{msg}");
    assert!(
        msg.contains(&format!("up to entry #{altered_seq},"))
            || msg.contains(&format!("entry #{altered_seq} (")),
        "the report must name the altered entry #{altered_seq}: {msg}"
    );
}

#[test]
fn a_log_of_another_guest_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = small_compute_log(dir.path());
    let (mut header, state, frames) = load(&log);
    header.guest_image_sha256[0] ^= 1;
    let other = dir.path().join("other.ulog");
    write_log(&other, &header, state, &frames);
    let rep = replay(&other);
    assert_eq!(rep.status.code(), Some(1));
    assert!(
        stderr(&rep).contains("recorded with guest image"),
        "{}",
        stderr(&rep)
    );
    assert!(stdout(&rep).is_empty());
}

#[test]
fn a_malformed_guest_image_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.elf");
    std::fs::write(&garbage, b"\x7fELF this is not really an ELF file").unwrap();
    let o = understudy(&["run", "--guest", garbage.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("not a loadable x86_64 ELF"),
        "{}",
        stderr(&o)
    );

    // A real ELF, but not a PVH kernel.
    let o = understudy(&["run", "--guest", "/bin/true"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("understudy: error:"), "{}", stderr(&o));

    let o = understudy(&["run", "--guest", "/nonexistent/guest.elf"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot read guest image /nonexistent/guest.elf"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    for args in [
        &["run", "--guest", "compute", "--mem-mib", "0"][..],
        &["run", "--guest", "compute", "--mem-mib", "lots"][..],
        &["run"][..],
        &["replay"][..],
        &["log", "dump", "x.ulog", "--kind", "nonsense"][..],
    ] {
        let o = understudy(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("error"), "{args:?}: {}", stderr(&o));
    }
    let o = understudy(&["log", "inspect", "/nonexistent.ulog"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("/nonexistent.ulog"), "{}", stderr(&o));
}

#[test]
fn a_guest_triple_fault_ends_the_run_with_the_registers() {
    let dir = tempfile::tempdir().unwrap();
    let elf = guest_elf(dir.path());
    let o = understudy(&[
        "run",
        "--guest",
        elf.to_str().unwrap(),
        "--guest-arg",
        "triplefault",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let msg = stderr(&o);
    assert!(msg.contains("triple fault"), "{msg}");
    assert!(msg.contains("rip=0x") && msg.contains("cr3="), "{msg}");
}

#[test]
fn a_missing_dev_kvm_is_a_clear_error() {
    // An empty /dev in a private mount namespace (needs root and unshare; skip otherwise).
    let probe = Command::new("unshare").args(["--mount", "true"]).status();
    if !matches!(probe, Ok(s) if s.success()) {
        eprintln!("skipping: cannot create a mount namespace here");
        return;
    }
    let script = format!(
        "mount -t tmpfs none /dev && exec {} run --guest ticker",
        bin()
    );
    let o = Command::new("unshare")
        .args(["--mount", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("cannot open /dev/kvm"),
        "{}",
        stderr(&o)
    );
}

/// A log with network frames whose header gives the guest no network card (hand-made, or a
/// damaged header) is refused at its first frame with a clear error (not a divergence, not a
/// panic), after replaying what came before.
#[test]
fn a_log_with_network_frames_for_a_guest_without_a_card_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = small_compute_log(dir.path());
    let (header, state, mut frames) = load(&log);
    // A received frame at the position of an entry in the middle, just before it.
    let at = frames.len() / 2;
    let pos = frames[at].1.entry.pos().clone();
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 2, 0x08, 0x06]);
    frame.resize(60, 0);
    frames.insert(
        at,
        (
            0,
            Frame {
                seq: 0,
                t_ns: frames[at].1.t_ns,
                state_check: 0,
                entry: Entry::NetRx { pos, frame },
            },
        ),
    );
    for (i, (_, f)) in frames.iter_mut().enumerate() {
        f.seq = i as u64;
    }
    let net = dir.path().join("net.ulog");
    write_log(&net, &header, state, &frames);

    let rep = replay(&net);
    let msg = stderr(&rep);
    assert_eq!(rep.status.code(), Some(1), "{msg}");
    assert!(
        msg.contains(&format!(
            "cannot replay entry #{at} (net-rx frame of 60 bytes at "
        )),
        "{msg}"
    );
    assert!(
        msg.contains("this log has network frames but the replayed guest has no network card"),
        "{msg}"
    );
    assert!(
        !msg.contains("DIVERGED") && !msg.contains("panicked"),
        "{msg}"
    );
}
