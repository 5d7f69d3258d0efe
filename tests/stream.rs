//! The log streamed live over TCP (`run --stream-to`) to a replaying backup (`replay --listen`):
//! the backup reproduces the primary's run as it happens.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

use common::*;

/// The two tests run one after the other: four VMs at once on a two-core machine starve the
/// backup's kicks, and this file is about streaming, not about overload.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Starts a backup on an ephemeral port and returns it with the address it listens on.
fn start_backup(guest_args: &[&str]) -> (Child, String, BufReader<std::process::ChildStderr>) {
    let mut args = vec!["replay", "--listen", "127.0.0.1:0", "--guest", "compute"];
    for a in guest_args {
        args.push("--guest-arg");
        args.push(a);
    }
    let mut child = Command::new(bin())
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("replay: listening on ")
        .unwrap_or_else(|| panic!("unexpected: {line}"))
        .to_string();
    (child, addr, err)
}

/// Waits for the backup to end: its exit status, stdout and stderr.
fn finish_backup(
    mut backup: Child,
    mut err: BufReader<std::process::ChildStderr>,
) -> (std::process::ExitStatus, String, String) {
    let mut out = String::new();
    backup
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let status = backup.wait().unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    (status, out, rest)
}

#[test]
fn a_backup_replays_the_primary_live_and_prints_the_same_console() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (backup, addr, backup_err) = start_backup(&["iters=8000"]);
    let primary = understudy(&[
        "run",
        "--guest",
        "compute",
        "--guest-arg",
        "iters=8000",
        "--stream-to",
        &addr,
    ]);
    assert_ok(&primary, "primary");
    let (status, backup_out, err) = finish_backup(backup, backup_err);
    assert!(status.success(), "backup failed: {err}");
    assert!(
        err.contains("replay: OK: reached the recorded end"),
        "{err}"
    );
    assert_eq!(backup_out, stdout(&primary));
}

#[test]
fn a_killed_primary_leaves_the_backup_with_a_faithful_prefix() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // The kill lands mid-run.
    let (backup, addr, backup_err) = start_backup(&[COMPUTE_FOR_LONG]);
    let mut primary = Command::new(bin())
        .args(["run", "--guest", "compute", "--guest-arg", COMPUTE_FOR_LONG])
        .args(["--stream-to", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1200));
    primary.kill().unwrap();
    let primary_out =
        String::from_utf8_lossy(&primary.wait_with_output().unwrap().stdout).into_owned();
    let (status, backup_out, err) = finish_backup(backup, backup_err);
    assert_eq!(status.code(), Some(3), "{err}");
    assert!(
        err.contains("INCOMPLETE: the primary's stream ended"),
        "{err}"
    );
    assert!(!backup_out.is_empty());
    assert!(
        primary_out.starts_with(&backup_out),
        "backup printed what the primary did not:\n{backup_out}\n---\n{primary_out}"
    );
}
