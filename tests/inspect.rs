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
        stdout(&dump).contains("end (PowerOff { code: 0 })"),
        "{}",
        stdout(&dump)
    );
}
