//! The guest's TCP/IP stack is deterministic under record/replay: `tcploop` runs a smoltcp client
//! and server over an in-guest Ethernet loopback, at CPL0 and at CPL3, and a recording of it
//! replays to its end with every state check and digest matching. The replies the client got are
//! checked against a checksum computed here from first principles, not taken from any output.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;

/// FNV-1a, 64-bit.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What the guest's client hashes: the RESP integer replies to `n` INCRs of one fresh key,
/// `:1\r\n:2\r\n...:n\r\n`, exactly as its socket received them.
fn expected_checksum(n: u64) -> u64 {
    let replies: String = (1..=n).map(|i| format!(":{i}\r\n")).collect();
    fnv1a(replies.as_bytes())
}

fn record_and_replay_tcploop(mode_args: &[&str], n: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("tcploop.ulog");
    let n_arg = format!("n={n}");
    let mut args = vec![n_arg.as_str()];
    args.extend_from_slice(mode_args);

    let rec = record(&log, "tcploop", &args);
    assert_ok(&rec, &format!("recording tcploop {args:?}"));
    let out = stdout(&rec);
    let summary = format!(
        "tcploop: replies={n} checksum={:#018x} ",
        expected_checksum(n)
    );
    assert!(
        out.lines().any(|l| l.starts_with(&summary)),
        "no line starting with {summary:?} in:\n{out}"
    );
    assert_eq!(out.lines().last(), Some("tcploop: done"), "{out}");

    assert_replays(&log, &out, &format!("tcploop {args:?}"));
}

#[test]
fn the_checksum_function_is_fnv1a() {
    // Published FNV-1a 64 test vectors.
    assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
}

#[test]
fn tcp_in_kernel_mode_replies_in_order_and_replays_exactly() {
    // CPL0 is emulated on this host: ~5-10 ms per round trip, so keep n small.
    record_and_replay_tcploop(&["report=5"], 20);
}

#[test]
fn tcp_in_user_mode_replies_in_order_and_replays_exactly() {
    // CPL3 runs natively (~1 µs per round trip); the progress lines are guest exits, where
    // pending timer ticks land at CPL3 on this host.
    record_and_replay_tcploop(&["user", "report=500"], 5000);
}
