//! Helpers for end-to-end tests: they run the real `understudy` binary on real KVM.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Guest argument for a `compute` run that outlasts any kill a test makes, on any machine of
/// this kind (the default run takes 0.7 s on some and 3.5 s on others).
pub const COMPUTE_FOR_LONG: &str = "iters=100000000";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_understudy")
}

pub fn understudy(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_remove("UNDERSTUDY_LOG")
        .output()
        .expect("spawn understudy")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `understudy run` of a built-in workload, recording to `log`.
pub fn record(log: &Path, guest: &str, guest_args: &[&str]) -> Output {
    let mut args = vec![
        "run",
        "--guest",
        guest,
        "--record",
        log.to_str().expect("utf-8 path"),
    ];
    for a in guest_args {
        args.push("--guest-arg");
        args.push(a);
    }
    understudy(&args)
}

pub fn replay(log: &Path) -> Output {
    understudy(&["replay", log.to_str().expect("utf-8 path")])
}

pub fn inspect_json(log: &Path) -> serde_json::Value {
    let o = understudy(&[
        "log",
        "inspect",
        "--json",
        log.to_str().expect("utf-8 path"),
    ]);
    assert!(o.status.success(), "inspect failed: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("inspect --json prints JSON")
}

/// Whether `log` was recorded where interrupts land mid-execution at CPL0 (an instruction
/// counter: PVM's here). Where they cannot (VMX/SVM without a counter, `CounterKind::None`),
/// says "skipped: ..." and returns false: a test of the precise approach has nothing to test
/// there.
pub fn lands_mid_execution_or_skip(log: &Path) -> bool {
    let header = &inspect_json(log)["header"]["position"];
    let precise = header["precise_cpl0"].as_bool().unwrap_or(false);
    if !precise {
        eprintln!(
            "skipped: this host has no instruction counter (position counter {}), so no interrupt lands mid-execution",
            header["counter"]
        );
    }
    precise
}

/// Replays `log` and checks it reproduced the recording: it reached the recorded end, printed
/// exactly `recorded_stdout`, and verified every digest in the (complete) log. Returns the
/// log's `inspect --json`.
pub fn assert_replays(log: &Path, recorded_stdout: &str, what: &str) -> serde_json::Value {
    let rep = replay(log);
    assert_ok(&rep, &format!("replay of {what}"));
    assert_eq!(
        stdout(&rep),
        recorded_stdout,
        "the replay of {what} printed something else"
    );
    let err = stderr(&rep);
    assert!(
        err.contains("replay: OK: reached the recorded end"),
        "{err}"
    );
    let info = inspect_json(log);
    assert_eq!(info["complete"], true);
    let digests = info["digests"].as_u64().expect("digests");
    assert!(digests >= 1, "the recording of {what} has no digest");
    assert!(
        err.contains(&format!("{digests} digests verified")),
        "{err}"
    );
    info
}

/// The built-in guest image, exported from the binary into `dir`.
pub fn guest_elf(dir: &Path) -> PathBuf {
    let path = dir.join("guest.elf");
    let o = understudy(&["export-guest", path.to_str().expect("utf-8 path")]);
    assert_ok(&o, "export-guest");
    path
}

pub fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}
pub mod cluster;
pub mod etcd;
pub mod history;
pub mod rng;
