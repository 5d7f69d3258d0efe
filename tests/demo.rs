//! `understudy demo` with the variants the README offers: they pass on this machine whatever
//! its speed (the demo sizes the guest's run in guest time), and a guest that ends before the
//! kill is reported as that, with what to change, never as a failed failover.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};

/// Demos share the machine's two cores with nothing else: a failover timed while another demo
/// computes would measure the contention.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `understudy demo ARGS` to its end, in a work directory of its own; `None` (after saying
/// "skipped") without KVM.
fn demo(args: &[&str]) -> Option<Output> {
    let dir = tempfile::tempdir().expect("a work directory");
    demo_in(dir.path(), args)
}

/// [`demo`] in work directory `dir`.
fn demo_in(dir: &std::path::Path, args: &[&str]) -> Option<Output> {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("skipped: no /dev/kvm");
        return None;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let out = Command::new(common::bin())
        .arg("demo")
        .args(args)
        .arg("--workdir")
        .arg(dir)
        .env_remove("UNDERSTUDY_LOG")
        .output()
        .expect("run the demo");
    Some(out)
}

/// The summary's check lines (`[ok] ...` / `[FAILED] ...`).
fn checks(text: &str) -> Vec<&str> {
    text.lines()
        .skip_while(|l| *l != "== summary ==")
        .skip(1)
        .map(str::trim)
        .filter(|l| l.starts_with('['))
        .collect()
}

fn assert_passes(args: &[&str]) {
    let dir = tempfile::tempdir().expect("a work directory");
    assert_passes_in(dir.path(), args);
}

fn assert_passes_in(dir: &std::path::Path, args: &[&str]) {
    let Some(out) = demo_in(dir, args) else {
        return;
    };
    let text = common::stdout(&out);
    let all = format!("{text}\nstderr:\n{}", common::stderr(&out));
    assert!(out.status.success(), "demo {args:?} failed:\n{all}");
    // The guest ran for a duration the demo chose, not for however many iterations this
    // machine happens to get through before the kill.
    assert!(
        text.contains("== compute sized by the demo: secs="),
        "the demo did not size the run:\n{all}"
    );
    let checks = checks(&text);
    // Failover, prefix, no gap, failover time, C in sync, C's lag.
    assert_eq!(checks.len(), 6, "not every check was made:\n{all}");
    assert!(
        checks.iter().all(|c| c.starts_with("[ok]")),
        "a check failed:\n{all}"
    );
}

#[test]
fn the_demo_with_the_compute_guest_passes_its_checks() {
    assert_passes(&["--guest", "compute"]);
}

#[test]
fn the_demo_with_the_compute_guest_and_fast_pings_passes_its_checks() {
    assert_passes(&["--guest", "compute", "--ping-interval-ms", "20"]);
}

#[test]
fn a_guest_that_finishes_before_the_kill_is_reported_as_that_with_what_to_change() {
    // The demo's wait ends when the guest does, so the far kill costs no time. Guest time
    // never runs ahead of the host's, so three seconds of it end after the backup has its
    // state (a fraction of a second here; killing sooner is then a remedy too) and long before
    // a minute has passed, on any machine. The default 60000 iterations (the run the issue
    // saw end before the kill) take 1-4 s, depending on the machine.
    for (arg, changes) in [
        (
            "secs=3",
            &["--guest-arg secs=N", "--kill-after-secs below"][..],
        ),
        ("iters=60000", &["--guest-arg secs=N"][..]),
    ] {
        let Some(text) = finished_before_the_kill(&["--guest", "compute", "--guest-arg", arg])
        else {
            return;
        };
        for change in changes {
            assert!(
                text.contains(change),
                "compute {arg}: no '{change}' among what to change:\n{text}"
            );
        }
    }
}

/// A guest that triple-faults (or asks for a reset) before the kill ended too: the demo says so,
/// the way it says a power-off, rather than waiting for a failover that cannot come.
#[test]
fn a_guest_that_triple_faults_before_the_kill_is_reported_as_finished() {
    for end in ["triplefault", "reset"] {
        let end_arg = format!("end={end}");
        let Some(text) = finished_before_the_kill(&[
            "--guest",
            "ticker",
            "--guest-arg",
            "ticks=60",
            "--guest-arg",
            &end_arg,
        ]) else {
            return;
        };
        let said = if end == "reset" {
            "it asked for a reset"
        } else {
            "it triple-faulted"
        };
        assert!(text.contains(said), "end={end}: not said plainly:\n{text}");
    }
}

/// Runs the demo with `args` and the kill a minute away, for a guest that ends long before:
/// it must exit 1 saying plainly that the guest finished before the kill, and never treat it as
/// a failover. Its stdout, for more checks; `None` if the demo cannot run here.
fn finished_before_the_kill(args: &[&str]) -> Option<String> {
    let mut all_args = args.to_vec();
    all_args.extend(["--kill-after-secs", "60"]);
    let out = demo(&all_args)?;
    let text = common::stdout(&out);
    let all = format!("{text}\nstderr:\n{}", common::stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{args:?}:\n{all}");
    assert!(
        text.contains("the guest finished before the kill"),
        "{args:?}: not said plainly:\n{all}"
    );
    assert!(
        !text.contains("never changed the primary") && !text.contains("SIGKILL"),
        "{args:?}: a finished guest was treated as a failover:\n{all}"
    );
    Some(text)
}

/// A work directory used again starts afresh: the last run's view service (here one that
/// recorded its guest's end, so it would send every node away) and events are not the new
/// run's.
#[test]
fn a_work_directory_used_again_starts_afresh() {
    let dir = tempfile::tempdir().expect("a work directory");
    let Some(first) = demo_in(
        dir.path(),
        &[
            "--guest",
            "compute",
            "--guest-arg",
            "secs=2",
            "--kill-after-secs",
            "60",
        ],
    ) else {
        return;
    };
    assert!(!first.status.success(), "{}", common::stdout(&first));
    assert!(dir.path().join("viewserver.data").exists());
    assert_passes_in(dir.path(), &["--guest", "compute"]);
}
