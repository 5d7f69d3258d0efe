//! `understudy demo --net` end to end: it builds its network, fails over a replicated `kv`
//! guest under one client connection, passes its own checks, and leaves nothing behind.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};

#[test]
fn the_network_demo_passes_its_checks_and_removes_what_it_made() {
    if let Some(why) = ::cluster::netns::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let dir = tempfile::tempdir().expect("a work directory");
    let child = Command::new(common::bin())
        .args([
            "demo",
            "--net",
            "--kill-after-secs",
            "2",
            "--run-after-secs",
            "2",
        ])
        .arg("--workdir")
        .arg(dir.path())
        .env_remove("UNDERSTUDY_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the demo");
    // Its namespaces are named after its pid (`us<pid mod 100000>-<n>-<host>`).
    let prefix = format!("us{}-", child.id() % 100_000);
    let out = child.wait_with_output().expect("the demo's end");
    let text = common::stdout(&out);
    assert!(out.status.success(), "{text}\n{}", common::stderr(&out));
    for check in [
        "the client's one TCP connection never broke",
        "with no gap and no repeat",
        "replies came after the kill",
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains("[ok]") && l.contains(check)),
            "no passing check '{check}':\n{text}"
        );
    }
    let left = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.lines().any(|l| l.starts_with(&prefix)),
        "namespaces left behind:\n{left}"
    );
}
