//! The foundation's promise: recordings of the same guest differ from one another (interrupts
//! land differently, clocks read differently), and each replays byte-identically with every
//! digest matching.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;

use common::*;

const RECORDINGS: usize = 20;

/// Records `RECORDINGS` runs, replays each, and returns the distinct outputs and, for each
/// recording, (interrupts landed mid-execution, all interrupts).
fn record_and_replay_many(guest: &str, args: &[&str]) -> (usize, Vec<(u64, u64)>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut outputs = HashSet::new();
    let mut precise = Vec::new();
    for i in 0..RECORDINGS {
        let log = dir.path().join(format!("{guest}-{i}.ulog"));
        let rec = record(&log, guest, args);
        assert_ok(&rec, &format!("recording {i} of {guest} {args:?}"));
        let info = assert_replays(
            &log,
            &stdout(&rec),
            &format!("recording {i} of {guest} {args:?}"),
        );
        precise.push((
            info["interrupts"]["precise"]
                .as_u64()
                .expect("precise count"),
            info["interrupts"]["irq_raised"]
                .as_u64()
                .expect("interrupt count"),
        ));
        // The RTC line changes every second whatever the interrupts do: leave it out.
        let console: Vec<_> = stdout(&rec)
            .lines()
            .filter(|l| !l.starts_with("rtc:"))
            .map(str::to_owned)
            .collect();
        outputs.insert(console);
    }
    (outputs.len(), precise)
}

#[test]
fn compute_in_kernel_mode_interleaves_differently_every_time_and_replays_exactly() {
    let (distinct, precise) = record_and_replay_many("compute", &["iters=25000"]);
    assert_eq!(
        distinct, RECORDINGS,
        "every recording should interleave the tasks differently"
    );
    // How many ticks a run sees follows the host's speed (this run takes 0.7 s on some
    // machines of this kind, 3.5 s on others): ask for a share, not a count. In a compute
    // guest most ticks arrive while it computes, so most must land mid-execution, where the
    // host has an instruction counter (a recording without one has no precise interrupt).
    if precise.iter().all(|(_, all)| *all > 0) && precise.iter().all(|(p, _)| *p == 0) {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("probe.ulog");
        assert_ok(&record(&log, "compute", &["iters=100"]), "probe recording");
        if !lands_mid_execution_or_skip(&log) {
            return;
        }
    }
    let best = precise
        .iter()
        .map(|(p, all)| (*p, *all))
        .max_by(|a, b| (a.0 * b.1).cmp(&(b.0 * a.1)))
        .unwrap_or((0, 1));
    assert!(
        best.1 >= 10 && best.0 * 2 >= best.1,
        "no recording landed at least half of its interrupts mid-execution (precise, all): {precise:?}"
    );
}

#[test]
fn compute_in_user_mode_interleaves_differently_and_replays_exactly() {
    // At CPL3 a tick waits for the next guest exit (a printed line) on this host, so tasks switch
    // only at line boundaries: short lines (every 100k iterations, ~0.1 ms) let timing jitter
    // pick different switch points. Two of twenty runs may still coincide by chance.
    let (distinct, _) =
        record_and_replay_many("compute", &["user", "iters=20000000", "report=100000"]);
    assert!(
        distinct >= RECORDINGS - 2,
        "only {distinct} distinct outputs of {RECORDINGS}"
    );
}

#[test]
fn compute_bounded_by_guest_time_stops_at_its_deadline_and_replays_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("secs.ulog");
    // A billion iterations take hours at CPL0 here: only the deadline can end this run.
    let started = std::time::Instant::now();
    let rec = record(&log, "compute", &["secs=1", "iters=1000000000"]);
    let took = started.elapsed();
    assert_ok(&rec, "compute secs=1");
    let out = stdout(&rec);
    assert!(out.contains(" secs=1 "), "no secs in the banner:\n{out}");
    assert!(out.contains("compute: done checksum="), "{out}");
    // Ticks come from host time and guest time never runs ahead of it (it may lag, when ticks
    // wait for an exit), so its second cannot pass in less than one of the host's.
    assert!(
        took >= std::time::Duration::from_secs(1),
        "a second of guest time passed in {took:?}"
    );
    // Where each task saw the deadline is where a logged tick landed: the replay reproduces it.
    assert_replays(&log, &out, "compute secs=1");

    // `iters` still bounds a timed run: both tasks end at iteration 2000, long before the day.
    let o = understudy(&[
        "run",
        "--guest",
        "compute",
        "--guest-arg",
        "secs=86400",
        "--guest-arg",
        "iters=2000",
        "--guest-arg",
        "report=1000",
    ]);
    assert_ok(&o, "compute secs=86400 iters=2000");
    let out = stdout(&o);
    for task in ["A", "B"] {
        let last = out.lines().rfind(|l| l.starts_with(&format!("{task}: i=")));
        assert!(
            last.is_some_and(|l| l.starts_with(&format!("{task}: i=2000 "))),
            "task {task} did not end at iteration 2000:\n{out}"
        );
    }

    // Without progress lines a CPL3 task would never see a tick, so never its deadline.
    let o = understudy(&[
        "run",
        "--guest",
        "compute",
        "--guest-arg",
        "secs=1",
        "--guest-arg",
        "report=0",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("guest: invalid argument 'report=0'"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn ticker_reads_different_times_every_time_and_replays_exactly() {
    let (distinct, _) = record_and_replay_many("ticker", &["ticks=10"]);
    assert_eq!(distinct, RECORDINGS);
}

/// Digests keep to `--digest-budget-percent` of the recording: with the whole time allowed one
/// comes about every `--digest-interval-ms`; with a budget far below what one digest costs
/// (a hash of every page the guest wrote), the next is put off past the run's end, as for a
/// guest that has written gigabytes at the default 1%. Both logs replay, every digest checked.
#[test]
fn digests_keep_to_their_share_of_the_recording() {
    let dir = tempfile::tempdir().unwrap();
    let digests_with = |percent: &str| {
        let log = dir.path().join(format!("budget-{percent}.ulog"));
        let o = understudy(&[
            "run",
            "--guest",
            "ticker",
            "--guest-arg",
            "hz=100",
            "--guest-arg",
            "ticks=200",
            "--digest-interval-ms",
            "10",
            "--digest-budget-percent",
            percent,
            "--record",
            log.to_str().unwrap(),
        ]);
        assert_ok(&o, "recording the ticker");
        let r = replay(&log);
        assert_ok(&r, "replaying it");
        inspect_json(&log)["digests"].as_u64().unwrap()
    };
    // 2 s of guest time at 10 ms: ~200 intervals (a digest waits for an exit; ticks make one
    // every 10 ms).
    let all = digests_with("100");
    assert!(all >= 50, "{all} digests with the whole time allowed");
    // One digest of this guest takes ~0.2 ms here: at 0.001% the next waits ~20 s. The one at
    // the end is always taken.
    let starved = digests_with("0.001");
    assert!(
        (1..=3).contains(&starved),
        "{starved} digests with a budget of 0.001%"
    );
}

#[test]
fn a_plain_run_prints_the_guest_console_and_returns_its_exit_code() {
    let o = understudy(&["run", "--guest", "compute", "--guest-arg", "exit=7"]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("understudy guest: workload=compute"),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).is_empty(),
        "the VMM printed on a plain run: {}",
        stderr(&o)
    );
}

/// A reset request ends a run (understudy does not reboot guests, as QEMU's `-no-reboot`):
/// exit 0 with a message saying so, and the recording ends there with a `Reset` end that
/// replays exactly; a triple fault ends it with 1 and the registers.
#[test]
fn a_reset_request_or_a_triple_fault_ends_the_run_and_replays() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (end, code, says, inspected) in [
        (
            "end=reset",
            0,
            "asked for a reset (0x64 <- 0xfe)",
            "reset request (0xfe to port 0x64)",
        ),
        ("end=triplefault", 1, "triple fault", "triple fault"),
    ] {
        let log = dir.path().join(format!("{end}.ulog"));
        let log = log.to_str().unwrap();
        let o = understudy(&[
            "run",
            "--guest",
            "ticker",
            "--guest-arg",
            "ticks=5",
            "--guest-arg",
            end,
            "--record",
            log,
        ]);
        assert_eq!(o.status.code(), Some(code), "{}", stderr(&o));
        assert!(stderr(&o).contains(says), "{}", stderr(&o));
        assert!(stdout(&o).ends_with("ticker: done\n"), "{}", stdout(&o));
        let r = understudy(&["replay", log]);
        let replayed = String::from_utf8_lossy(&r.stdout).to_string();
        if code == 0 {
            assert_eq!(r.status.code(), Some(0), "{}", stderr(&r));
            assert!(
                stderr(&r).contains("reached the recorded end"),
                "{}",
                stderr(&r)
            );
        } else {
            // Replay ends at the recorded triple fault as `run` did: an error naming it.
            assert!(stderr(&r).contains("triple fault"), "{}", stderr(&r));
        }
        assert_eq!(replayed, stdout(&o), "the replay printed another console");
        // `log inspect` names the end in words.
        let i = understudy(&["log", "inspect", log]);
        assert!(
            stdout(&i).contains(&format!("end:        {inspected}")),
            "{}",
            stdout(&i)
        );
    }
}

#[test]
fn a_replay_whose_kick_lands_too_late_goes_back_to_a_checkpoint_without_printing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("compute.ulog");
    let rec = record(&log, "compute", &["iters=6000"]);
    assert_ok(&rec, "recording");
    if !lands_mid_execution_or_skip(&log) {
        return;
    }
    let recorded = understudy(&["replay", log.to_str().unwrap()]);
    assert_ok(&recorded, "replay");
    // Aiming kicks at 4x the remaining distance makes the replay overshoot for sure.
    let rep = understudy(&["replay", log.to_str().unwrap(), "--aim", "4", "--stats"]);
    assert_ok(&rep, "replay with overshooting kicks");
    let err = stderr(&rep);
    assert!(
        err.contains("went back to the checkpoint before entry #"),
        "{err}"
    );
    assert!(!err.contains("from the start"), "{err}");
    assert_eq!(stdout(&rep), stdout(&rec));
    // It verified what a plain replay does: every digest, every interrupt.
    let summary = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("replay: OK:"))
            .map(str::to_string)
    };
    assert_eq!(summary(&err), summary(&stderr(&recorded)));
}

#[test]
fn without_checkpoints_a_replay_that_overshoots_starts_over_without_printing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("compute.ulog");
    let rec = record(&log, "compute", &["iters=6000"]);
    assert_ok(&rec, "recording");
    if !lands_mid_execution_or_skip(&log) {
        return;
    }
    let rep = understudy(&[
        "replay",
        log.to_str().unwrap(),
        "--aim",
        "4",
        "--no-checkpoints",
    ]);
    assert_ok(&rep, "replay with overshooting kicks");
    assert!(
        stderr(&rep).contains("attempt 1 overshot entry #"),
        "{}",
        stderr(&rep)
    );
    assert_eq!(stdout(&rep), stdout(&rec));
}

/// Waits up to `within` for `child` to exit after `signal` was sent to it (killing it and
/// failing past that), and returns its status and what it wrote to stderr.
fn exit_after_signal(
    child: &mut std::process::Child,
    within: std::time::Duration,
    signal: &str,
) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let deadline = std::time::Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().expect("kill");
            panic!("run did not stop within {within:?} of {signal}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    (status, err)
}

#[test]
fn ctrl_c_ends_a_recording_cleanly_and_the_log_replays_to_that_point() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("stopped.ulog");
    let mut child = Command::new(bin())
        .args(["run", "--guest", "ticker", "--guest-arg", "ticks=1000000"])
        .arg("--record")
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn run");
    // Let the guest print a few lines (it would run for hours), then interrupt it as Ctrl-C does.
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut printed = String::new();
    for _ in 0..5 {
        assert!(
            out.read_line(&mut printed).expect("read") > 0,
            "run ended early: {printed}"
        );
    }
    // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let rest = std::thread::spawn(move || {
        let mut rest = String::new();
        out.read_to_string(&mut rest).expect("read the rest");
        rest
    });
    // Generous: the stop waits only for the guest's next exit (a tick away).
    let (status, err) = exit_after_signal(&mut child, std::time::Duration::from_secs(60), "SIGINT");
    printed.push_str(&rest.join().expect("reader"));
    assert_eq!(status.code(), Some(130), "{err}");

    let info = inspect_json(&log);
    assert_eq!(info["complete"], true, "{info}");
    assert_eq!(info["end"], "recording stopped", "{info}");
    let rep = replay(&log);
    assert_ok(&rep, "replay of the stopped recording");
    assert!(
        stderr(&rep).contains("recording had been stopped"),
        "{}",
        stderr(&rep)
    );
    assert_eq!(stdout(&rep), printed, "the replay printed something else");
}

/// A run that records nothing ends at the stop request's own kick, even in a guest that never
/// exits: `compute` at CPL3 without progress lines runs a user-mode loop with no I/O for
/// minutes, where a recording could end only at an exit and so would wait for the end.
#[test]
fn sigterm_stops_an_unrecorded_run_at_once_even_without_guest_exits() {
    use std::process::{Command, Stdio};

    let mut child = Command::new(bin())
        .args(["run", "--guest", "compute", "--guest-arg", "user"])
        .args(["--guest-arg", "report=0", "--guest-arg", "iters=4000000000"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn run");
    // Long enough to be in the tasks' loops: boot takes milliseconds.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the guest ended before the signal"
    );
    // SAFETY: kill(2) on the PID of a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    // Generous for a slow host; the loop itself would run for minutes.
    let (status, err) = exit_after_signal(
        &mut child,
        std::time::Duration::from_secs(10),
        "one SIGTERM",
    );
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(err.contains("signal 15: stopping"), "{err}");
    assert!(
        !err.contains("again: exiting now"),
        "one signal did it: {err}"
    );
}

/// A kick that stops the guest before it ran anything must not be armed again as it was: on a
/// host whose stop and re-entry outlast the shortest kick, that loop once took 450,000 kicks for
/// 117 interrupts, nearly all of them idle (replay 20x slower than the recording). Each such
/// kick now raises the shortest kick by half, so idle kicks stay a small share of all kicks
/// whatever the host's speed (a few more come from a descheduled thread on a busy machine).
#[test]
fn kicks_that_land_before_the_guest_runs_are_not_repeated_without_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("compute.ulog");
    let rec = record(&log, "compute", &["iters=6000"]);
    assert_ok(&rec, "recording");
    if !lands_mid_execution_or_skip(&log) {
        return;
    }
    let rep = understudy(&["replay", log.to_str().unwrap(), "--stats"]);
    assert_ok(&rep, "replay");
    let err = stderr(&rep);
    // "... approach 1.164 s (1290 kicks, 1 of them before the guest ran, ...)"
    let counts: Vec<u64> = err
        .split(" of them before the guest ran")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .map(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let [kicks, idle] = counts[..] else {
        panic!("no kick counts in: {err}");
    };
    assert!(
        idle * 10 <= kicks.max(10),
        "{idle} of {kicks} kicks stopped the guest before it ran:\n{err}"
    );
}
