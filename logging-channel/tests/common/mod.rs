//! Fixtures shared by the integration tests.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use logging_channel::codec::{encode_frame, encode_prefix};
use logging_channel::{
    CounterKind, Digest, EndReason, Entry, FORMAT_VERSION, Frame, Header, InputSource, LogState,
    Position, PositionSemantics, Regs,
};

pub fn header() -> Header {
    Header {
        format_version: FORMAT_VERSION,
        guest_image_sha256: [7; 32],
        guest_name: "compute".into(),
        guest_args: vec!["--iterations".into(), "1000".into()],
        mem_mib: 128,
        position: PositionSemantics {
            counter: CounterKind::PvmInsnEmulation,
            precise_cpl0: true,
            precise_cpl3: true,
            description: "test".into(),
        },
        digest_interval_ms: 100,
        recorded_at_unix_ms: 1_700_000_000_000,
        host: "test host".into(),
        nic_mac: None,
    }
}

/// A short run: one entry of every kind, ending with `End`.
pub fn entries() -> Vec<Entry> {
    let precise = Position::Precise {
        exits: 3,
        counter: 99,
        regs: Regs {
            rip: 0x1000,
            rcx: 5,
            ..Regs::default()
        },
    };
    vec![
        Entry::Input {
            pos: Position::AtExit { exits: 1 },
            source: InputSource::Clock,
            value: 12345,
        },
        Entry::Irq {
            pos: Position::AtExit { exits: 2 },
            line: 0,
        },
        Entry::Inject {
            pos: precise.clone(),
            vector: 0x20,
        },
        Entry::ConsoleInput {
            pos: Position::AtExit { exits: 4 },
            bytes: b"hi\n".to_vec(),
        },
        Entry::Digest {
            pos: precise,
            digest: Digest {
                regs: Regs::default(),
                cr0: 1,
                cr3: 2,
                cr4: 3,
                efer: 4,
                mem_hash: 5,
                devices_hash: 6,
            },
        },
        Entry::NetRx {
            pos: Position::AtExit { exits: 6 },
            frame: net_frame(0x0806, 46),
        },
        Entry::NetTx {
            pos: Position::AtExit { exits: 7 },
            frame: net_frame(0x0800, 60),
        },
        Entry::End {
            pos: Position::AtExit { exits: 9 },
            reason: EndReason::PowerOff { code: 0 },
        },
    ]
}

/// An Ethernet frame with this ethertype and `payload` bytes after the header.
pub fn net_frame(ethertype: u16, payload: usize) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend((0..payload).map(|i| i as u8));
    f
}

pub fn frames() -> Vec<Frame> {
    entries()
        .into_iter()
        .enumerate()
        .map(|(i, entry)| Frame {
            seq: i as u64,
            t_ns: 1_000 * i as u64,
            state_check: 0,
            entry,
        })
        .collect()
}

/// The log image of `frames()`, and the offset of each frame in it.
pub fn log_image(state: LogState) -> (Vec<u8>, Vec<u64>) {
    image_of(state, &frames())
}

pub fn image_of(state: LogState, frames: &[Frame]) -> (Vec<u8>, Vec<u64>) {
    let mut bytes = encode_prefix(&header(), state);
    let mut offsets = Vec::new();
    for f in frames {
        offsets.push(bytes.len() as u64);
        encode_frame(f, &mut bytes);
    }
    (bytes, offsets)
}

/// A path in the temp dir no other test (or test run) uses.
pub fn temp_path(name: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "understudy-log-test-{}-{n}-{name}.log",
        std::process::id()
    ))
}

/// Deletes the file when dropped, so failing tests do not litter.
pub struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
