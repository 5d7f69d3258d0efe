use proptest::prelude::*;

use super::*;
use crate::format::{
    CounterKind, Digest, EndReason, Entry, EntryKind, FORMAT_VERSION, Frame, Header, InputSource,
    LogState, MAX_FRAME_LEN, MAX_NET_FRAME, MIN_NET_FRAME, OLDEST_FORMAT_VERSION, Position,
    PositionSemantics, Regs,
};
use crate::strategies;

// The tests in this file pin the fixed encoding (log format versions 1 to 3), whose byte
// offsets they name: logs written by earlier builds must keep reading exactly. These shadow
// the glob-imported current-encoding functions; `compact_tests.rs` covers the compact one.
fn encode_frame(frame: &Frame, out: &mut Vec<u8>) {
    encode_frame_as(frame, EntryEncoding::Fixed, out);
}

fn decode_frame(buf: &[u8], base: u64) -> Result<Option<(Frame, usize)>, CodecError> {
    decode_frame_as(buf, base, EntryEncoding::Fixed)
}

fn check_partial_frame(buf: &[u8], base: u64) -> Result<(), CodecError> {
    check_partial_frame_as(buf, base, EntryEncoding::Fixed)
}

fn header() -> Header {
    Header {
        format_version: FORMAT_VERSION,
        guest_image_sha256: [0xab; 32],
        guest_name: "ticker".into(),
        guest_args: vec!["--hz".into(), "100".into(), "ünïcode".into()],
        mem_mib: 64,
        position: PositionSemantics {
            counter: CounterKind::PvmInsnEmulation,
            precise_cpl0: false,
            precise_cpl3: true,
            description: "exits count guest-initiated exits".into(),
        },
        digest_interval_ms: 250,
        recorded_at_unix_ms: 1_700_000_000_000,
        host: "linux 6.8, kvm-pvm".into(),
        nic_mac: None,
    }
}

fn regs(seed: u64) -> Regs {
    let mut a = [0u64; Regs::COUNT];
    for (i, r) in a.iter_mut().enumerate() {
        *r = seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(i as u64);
    }
    Regs::from_array(a)
}

fn precise() -> Position {
    Position::Precise {
        exits: 7,
        counter: 123_456,
        regs: regs(3),
    }
}

/// One entry of each kind, each at both kinds of position.
fn every_entry() -> Vec<Entry> {
    let mut out = Vec::new();
    for pos in [Position::AtExit { exits: 1 }, precise()] {
        out.extend([
            Entry::Input {
                pos: pos.clone(),
                source: InputSource::Clock,
                value: u64::MAX,
            },
            Entry::Input {
                pos: pos.clone(),
                source: InputSource::WallClock,
                value: 42,
            },
            Entry::Irq {
                pos: pos.clone(),
                line: 0,
            },
            Entry::Inject {
                pos: pos.clone(),
                vector: 0x20,
            },
            Entry::ConsoleInput {
                pos: pos.clone(),
                bytes: b"ls\n".to_vec(),
            },
            Entry::ConsoleInput {
                pos: pos.clone(),
                bytes: Vec::new(),
            },
            Entry::Digest {
                pos: pos.clone(),
                digest: Digest {
                    regs: regs(9),
                    cr0: 0x8000_0011,
                    cr3: 0x1000,
                    cr4: 0x20,
                    efer: 0x500,
                    mem_hash: 0xdead_beef,
                    devices_hash: 0xfeed,
                },
            },
            Entry::End {
                pos: pos.clone(),
                reason: EndReason::PowerOff { code: 3 },
            },
            Entry::End {
                pos: pos.clone(),
                reason: EndReason::Shutdown,
            },
            Entry::End {
                pos: pos.clone(),
                reason: EndReason::Stopped,
            },
            Entry::Output {
                pos: pos.clone(),
                console_bytes: 4096,
                released: 1000,
            },
            Entry::NetRx {
                pos: pos.clone(),
                frame: arp_request(),
            },
            Entry::NetRx {
                pos: pos.clone(),
                frame: vec![0x5a; MIN_NET_FRAME],
            },
            Entry::NetTx {
                pos: pos.clone(),
                frame: arp_request(),
            },
            Entry::NetTx {
                pos,
                frame: vec![0xa5; MAX_NET_FRAME],
            },
        ]);
    }
    out
}

/// A broadcast ARP request padded to the Ethernet minimum, as a NIC delivers it.
fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56, 10, 0, 0, 10]);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
    f.resize(60, 0);
    f
}

fn encoded(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(frame, &mut out);
    out
}

/// A frame with a valid envelope around an arbitrary body, to reach the
/// body decoder (random bytes almost never pass the CRC).
pub(super) fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn body_of(frame: &Frame) -> Vec<u8> {
    encoded(frame)[ENVELOPE_LEN..].to_vec()
}

#[test]
fn every_entry_kind_round_trips() {
    let entries = every_entry();
    let kinds: std::collections::HashSet<_> = entries.iter().map(Entry::kind).collect();
    assert_eq!(kinds.len(), EntryKind::ALL.len(), "test covers every kind");
    for (i, entry) in entries.into_iter().enumerate() {
        let frame = Frame {
            seq: i as u64,
            t_ns: 1000 * i as u64,
            state_check: 0,
            entry,
        };
        let bytes = encoded(&frame);
        assert_eq!(decode_frame(&bytes, 0).unwrap(), Some((frame, bytes.len())));
    }
}

#[test]
fn header_round_trips_in_both_states() {
    for state in [LogState::Incomplete, LogState::Complete] {
        let bytes = encode_prefix(&header(), state);
        assert_eq!(
            decode_prefix(&bytes).unwrap(),
            Some((header(), state, bytes.len()))
        );
    }
}

#[test]
fn frame_layout_is_pinned() {
    // Matches the worked example in docs/log-format.md.
    let frame = Frame {
        seq: 1,
        t_ns: 2,
        state_check: 0,
        entry: Entry::Irq {
            pos: Position::AtExit { exits: 5 },
            line: 0,
        },
    };
    let body: Vec<u8> = [
        &[2u8][..],          // kind irq
        &1u64.to_le_bytes(), // seq
        &2u64.to_le_bytes(), // t_ns
        &0u64.to_le_bytes(), // state_check
        &[1],                // position tag AtExit
        &5u64.to_le_bytes(), // exits
        &[0],                // line
    ]
    .concat();
    assert_eq!(body.len(), 35);
    assert_eq!(encoded(&frame), framed(&body));
    // The hex dump printed in the spec.
    let hex: Vec<String> = encoded(&frame).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex.join(" "),
        "23 00 00 00 ce 4a 28 d9 02 01 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 \
         00 00 00 00 00 00 00 00 01 05 00 00 00 00 00 00 00 00"
    );
}

/// A digest's body as docs/log-format.md lays it out, every register by name: logs written by
/// any earlier build must keep decoding to the same values.
#[test]
fn digest_layout_is_pinned() {
    let regs = Regs {
        rax: 0x100,
        rbx: 0x101,
        rcx: 0x102,
        rdx: 0x103,
        rsi: 0x104,
        rdi: 0x105,
        rsp: 0x106,
        rbp: 0x107,
        r8: 0x108,
        r9: 0x109,
        r10: 0x10a,
        r11: 0x10b,
        r12: 0x10c,
        r13: 0x10d,
        r14: 0x10e,
        r15: 0x10f,
        rip: 0x110,
        rflags: 0x111,
    };
    let frame = Frame {
        seq: 9,
        t_ns: 10,
        state_check: 11,
        entry: Entry::Digest {
            pos: Position::AtExit { exits: 12 },
            digest: Digest {
                regs,
                cr0: 0x201,
                cr3: 0x203,
                cr4: 0x204,
                efer: 0x205,
                mem_hash: 0x206,
                devices_hash: 0x207,
            },
        },
    };
    let mut body = vec![5u8]; // kind digest
    for v in [9u64, 10, 11] {
        body.extend_from_slice(&v.to_le_bytes()); // seq, t_ns, state_check
    }
    body.push(1); // position tag AtExit
    body.extend_from_slice(&12u64.to_le_bytes());
    // rax..r15, rip, rflags; then cr0, cr3, cr4, efer, mem_hash, devices_hash.
    for v in (0x100u64..=0x111).chain([0x201, 0x203, 0x204, 0x205, 0x206, 0x207]) {
        body.extend_from_slice(&v.to_le_bytes());
    }
    assert_eq!(body.len(), 34 + 24 * 8);
    let bytes = framed(&body);
    assert_eq!(encoded(&frame), bytes);
    assert_eq!(decode_frame(&bytes, 0).unwrap(), Some((frame, bytes.len())));
}

#[test]
fn prefix_layout_is_pinned() {
    let bytes = encode_prefix(&header(), LogState::Complete);
    assert_eq!(&bytes[0..8], b"USTUDYLG");
    assert_eq!(bytes[STATE_OFFSET as usize], 1);
    assert_eq!(&bytes[9..12], &[0, 0, 0]);
    let body_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), 20 + body_len);
    assert_eq!(
        u32::from_le_bytes(bytes[16..20].try_into().unwrap()),
        crc32fast::hash(&bytes[20..])
    );
    assert_eq!(&bytes[20..22], &FORMAT_VERSION.to_le_bytes());
    assert_eq!(&bytes[22..54], &[0xab; 32]);
    assert_eq!(&bytes[54..58], &6u32.to_le_bytes());
    assert_eq!(&bytes[58..64], b"ticker");
}

#[test]
fn every_strict_prefix_of_the_prefix_needs_more_bytes() {
    let bytes = encode_prefix(&header(), LogState::Incomplete);
    for cut in 0..bytes.len() {
        assert_eq!(decode_prefix(&bytes[..cut]), Ok(None), "cut at {cut}");
        assert_eq!(check_partial_prefix(&bytes[..cut]), Ok(()), "cut at {cut}");
    }
}

#[test]
fn foreign_bytes_fail_on_the_first_byte() {
    assert_eq!(decode_prefix(b"X"), Err(CodecError::BadMagic { offset: 0 }));
    assert_eq!(
        decode_prefix(b"USTUDYLX"),
        Err(CodecError::BadMagic { offset: 0 })
    );
}

#[test]
fn bad_state_byte_is_named() {
    let mut bytes = encode_prefix(&header(), LogState::Incomplete);
    bytes[8] = 2;
    assert_eq!(
        decode_prefix(&bytes),
        Err(CodecError::BadState {
            offset: 8,
            value: 2
        })
    );
}

#[test]
fn reserved_bytes_must_be_zero() {
    let mut bytes = encode_prefix(&header(), LogState::Incomplete);
    bytes[10] = 1;
    let err = decode_prefix(&bytes).unwrap_err();
    assert!(
        matches!(err, CodecError::Malformed { offset: 10, .. }),
        "{err}"
    );
}

#[test]
fn other_versions_are_refused_with_a_clear_message() {
    for (found, message) in [
        (
            FORMAT_VERSION + 1,
            "unsupported log format version 5 (this build reads 1 to 4)",
        ),
        (
            0,
            "unsupported log format version 0 (this build reads 1 to 4)",
        ),
    ] {
        let mut h = header();
        h.format_version = found;
        let bytes = encode_prefix(&h, LogState::Complete);
        let err = decode_prefix(&bytes).unwrap_err();
        assert_eq!(
            err,
            CodecError::UnsupportedVersion {
                offset: VERSION_OFFSET,
                found,
                oldest: OLDEST_FORMAT_VERSION,
                supported: FORMAT_VERSION,
            }
        );
        assert!(err.to_string().starts_with(message), "{err}");
        // Decided before the rest of the header arrives or is trusted.
        assert_eq!(decode_prefix(&bytes[..22]), Err(err));
    }
}

/// Version 2 only added entry kinds, so a version-1 header still reads (the file reader refuses
/// a version-2 kind in it; see `tests/file_io.rs`).
#[test]
fn every_readable_version_decodes() {
    for version in OLDEST_FORMAT_VERSION..=FORMAT_VERSION {
        let mut h = header();
        h.format_version = version;
        let bytes = encode_prefix(&h, LogState::Complete);
        assert_eq!(
            decode_prefix(&bytes),
            Ok(Some((h, LogState::Complete, bytes.len())))
        );
    }
}

#[test]
fn oversized_length_is_refused_before_the_body_arrives() {
    let mut bytes = (MAX_FRAME_LEN + 1).to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0; 4]);
    assert_eq!(
        decode_frame(&bytes, 100),
        Err(CodecError::FrameTooLarge {
            offset: 100,
            len: MAX_FRAME_LEN + 1,
            max: MAX_FRAME_LEN
        })
    );
}

#[test]
fn crc_mismatch_names_the_frame() {
    let frame = Frame {
        seq: 0,
        t_ns: 0,
        state_check: 0,
        entry: Entry::Irq {
            pos: Position::AtExit { exits: 1 },
            line: 4,
        },
    };
    let mut bytes = encoded(&frame);
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let err = decode_frame(&bytes, 500).unwrap_err();
    assert!(matches!(err, CodecError::Crc { offset: 500, .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("log corrupt at byte 500: CRC mismatch (stored 0x"),
        "{err}"
    );
}

#[test]
fn unknown_kind_is_rejected_including_the_reserved_zero() {
    for kind in [0u8, 10, 255] {
        let mut body = body_of(&Frame {
            seq: 0,
            t_ns: 0,
            state_check: 0,
            entry: Entry::Irq {
                pos: Position::AtExit { exits: 1 },
                line: 0,
            },
        });
        body[0] = kind;
        assert_eq!(
            decode_frame(&framed(&body), 40),
            Err(CodecError::UnknownKind { offset: 48, kind })
        );
    }
}

#[test]
fn unknown_kind_message_says_which_kinds_this_build_knows() {
    let err = CodecError::UnknownKind {
        offset: 48,
        kind: 10,
    };
    assert_eq!(
        err.to_string(),
        "log corrupt at byte 48: unknown entry kind 10 (this build knows kinds 1 to 9)"
    );
}

fn net_frame_body(entry: Entry) -> Vec<u8> {
    body_of(&Frame {
        seq: 17,
        t_ns: 0,
        state_check: 0,
        entry,
    })
}

/// Where a net entry's frame length field is, at an `AtExit` position.
const NET_LEN_AT: usize = 25 + 9;

#[test]
fn net_frame_layout_is_pinned() {
    let frame = vec![0x11; 20];
    let body = net_frame_body(Entry::NetTx {
        pos: Position::AtExit { exits: 5 },
        frame: frame.clone(),
    });
    let mut expected = vec![9u8]; // kind net-tx
    for v in [17u64, 0, 0] {
        expected.extend_from_slice(&v.to_le_bytes());
    }
    expected.push(1);
    expected.extend_from_slice(&5u64.to_le_bytes());
    assert_eq!(expected.len(), NET_LEN_AT);
    expected.extend_from_slice(&20u32.to_le_bytes());
    expected.extend_from_slice(&frame);
    assert_eq!(body, expected);
    // net-rx differs in the kind byte only.
    let rx = net_frame_body(Entry::NetRx {
        pos: Position::AtExit { exits: 5 },
        frame,
    });
    assert_eq!(rx[0], 8);
    assert_eq!(rx[1..], body[1..]);
}

/// A body with the frame length field set to `len` and `len` bytes after it (a valid CRC), so
/// only the size rule can refuse it.
fn net_body_with_len(kind: u8, len: usize) -> Vec<u8> {
    let mut body = net_frame_body(Entry::NetRx {
        pos: Position::AtExit { exits: 5 },
        frame: vec![0; MIN_NET_FRAME],
    });
    body[0] = kind;
    body.truncate(NET_LEN_AT);
    body.extend_from_slice(&u32::try_from(len).unwrap().to_le_bytes());
    body.resize(NET_LEN_AT + 4 + len, 0x42);
    body
}

#[test]
fn oversized_net_frame_is_refused_naming_the_entry() {
    for (kind, name) in [(8u8, "net-rx"), (9, "net-tx")] {
        // The largest allowed decodes ...
        let body = net_body_with_len(kind, MAX_NET_FRAME);
        assert!(decode_frame(&framed(&body), 0).unwrap().is_some());
        // ... one more byte does not, and the error is at the length field.
        let body = net_body_with_len(kind, MAX_NET_FRAME + 1);
        let (offset, what) = malformed_offset(&body, 100);
        assert_eq!(offset, 100 + 8 + NET_LEN_AT as u64);
        assert_eq!(
            what,
            format!("entry #17: {name} frame of 65536 bytes is longer than the maximum of 65535")
        );
        let err = decode_frame(&framed(&body), 100).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "log corrupt at byte 142: entry #17: {name} frame of 65536 bytes is longer than the maximum of 65535"
            )
        );
    }
}

#[test]
fn runt_net_frame_is_refused_naming_the_entry() {
    for len in [0, 1, MIN_NET_FRAME - 1] {
        let body = net_body_with_len(9, len);
        let (offset, what) = malformed_offset(&body, 0);
        assert_eq!(offset, 8 + NET_LEN_AT as u64);
        assert_eq!(
            what,
            format!(
                "entry #17: net-tx frame of {len} bytes is shorter than an Ethernet header (14 bytes)"
            )
        );
    }
}

/// A length field claiming more than the body holds (within the size rule) is a short body,
/// and a huge one is refused by the size rule before anything is read or allocated.
#[test]
fn net_frame_length_past_the_body_is_refused() {
    let mut body = net_body_with_len(8, 100);
    body.truncate(NET_LEN_AT + 4 + 60);
    let (offset, what) = malformed_offset(&body, 0);
    assert_eq!(offset, 8 + NET_LEN_AT as u64 + 4);
    assert!(
        what.contains("ends inside net-rx frame (needs 100 bytes, 60 left)"),
        "{what}"
    );

    let mut body = net_body_with_len(8, 100);
    body[NET_LEN_AT..NET_LEN_AT + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let (offset, what) = malformed_offset(&body, 0);
    assert_eq!(offset, 8 + NET_LEN_AT as u64);
    assert!(what.contains("4294967295 bytes is longer"), "{what}");
}

#[test]
fn truncated_and_padded_net_bodies_are_malformed() {
    let body = net_frame_body(Entry::NetRx {
        pos: precise(),
        frame: arp_request(),
    });
    // Every cut inside the body (behind a valid CRC) is refused, never a panic or a short frame.
    for cut in 0..body.len() {
        assert!(
            matches!(
                decode_frame(&framed(&body[..cut]), 0),
                Err(CodecError::Malformed { .. })
            ),
            "cut at {cut}"
        );
    }
    let mut long = body.clone();
    long.push(0);
    let (_, what) = malformed_offset(&long, 0);
    assert!(what.contains("1 trailing bytes"), "{what}");
}

#[test]
fn net_entries_check_their_frame_size() {
    let pos = Position::AtExit { exits: 1 };
    assert_eq!(
        Entry::NetRx {
            pos: pos.clone(),
            frame: vec![0; MAX_NET_FRAME]
        }
        .check(),
        Ok(())
    );
    assert_eq!(
        Entry::NetTx {
            pos: pos.clone(),
            frame: vec![0; MAX_NET_FRAME + 1]
        }
        .check(),
        Err("net-tx frame of 65536 bytes is longer than the maximum of 65535".to_string())
    );
    assert_eq!(
        Entry::NetRx {
            pos: pos.clone(),
            frame: vec![0; 13]
        }
        .check(),
        Err("net-rx frame of 13 bytes is shorter than an Ethernet header (14 bytes)".to_string())
    );
    assert_eq!(
        Entry::ConsoleInput {
            pos,
            bytes: Vec::new()
        }
        .check(),
        Ok(())
    );
}

#[test]
fn kinds_know_the_version_that_added_them() {
    for kind in EntryKind::ALL {
        let expected = match kind {
            EntryKind::NetRx | EntryKind::NetTx => 2,
            _ => 1,
        };
        assert_eq!(kind.since_version(), expected, "{kind:?}");
        assert!(kind.since_version() <= FORMAT_VERSION);
    }
}

fn malformed_offset(body: &[u8], base: u64) -> (u64, String) {
    match decode_frame(&framed(body), base) {
        Err(CodecError::Malformed { offset, what }) => (offset, what),
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn strict_bodies_trailing_bytes() {
    let mut body = body_of(&Frame {
        seq: 0,
        t_ns: 0,
        state_check: 0,
        entry: Entry::Inject {
            pos: Position::AtExit { exits: 1 },
            vector: 0x30,
        },
    });
    let end = body.len() as u64;
    body.push(0);
    let (offset, what) = malformed_offset(&body, 0);
    assert_eq!(offset, 8 + end);
    assert!(what.contains("trailing"), "{what}");
}

#[test]
fn strict_bodies_unknown_position_tag() {
    let mut body = body_of(&Frame {
        seq: 0,
        t_ns: 0,
        state_check: 0,
        entry: Entry::Irq {
            pos: Position::AtExit { exits: 1 },
            line: 0,
        },
    });
    body[25] = 3;
    let (offset, what) = malformed_offset(&body, 0);
    assert_eq!(offset, 8 + 25);
    assert!(what.contains("position tag"), "{what}");
}

#[test]
fn strict_bodies_unknown_input_source_and_end_reason() {
    let pos = Position::AtExit { exits: 1 };
    let source_at = 25 + 9;
    let mut body = body_of(&Frame {
        seq: 0,
        t_ns: 0,
        state_check: 0,
        entry: Entry::Input {
            pos: pos.clone(),
            source: InputSource::Clock,
            value: 0,
        },
    });
    body[source_at] = 9;
    assert_eq!(malformed_offset(&body, 0).0, 8 + source_at as u64);

    let mut body = body_of(&Frame {
        seq: 0,
        t_ns: 0,
        state_check: 0,
        entry: Entry::End {
            pos,
            reason: EndReason::Stopped,
        },
    });
    body[source_at] = 0;
    assert_eq!(malformed_offset(&body, 0).0, 8 + source_at as u64);
}

#[test]
fn strict_bodies_short_body() {
    let body = body_of(&Frame {
        seq: 0,
        t_ns: 0,
        state_check: 0,
        entry: Entry::Digest {
            pos: precise(),
            digest: Digest::default(),
        },
    });
    let short = &body[..body.len() - 3];
    let (offset, what) = malformed_offset(short, 0);
    assert_eq!(offset, 8 + body.len() as u64 - 8);
    assert!(what.contains("devices_hash"), "{what}");
}

#[test]
fn strict_header_bools_and_counter() {
    let bytes = encode_prefix(&header(), LogState::Incomplete);
    // Position semantics start after version, sha, name, args and mem_mib.
    let args_len: usize = header().guest_args.iter().map(|a| 4 + a.len()).sum();
    let counter_at = 20 + 2 + 32 + 4 + "ticker".len() + 4 + args_len + 4;
    for (at, value) in [
        (counter_at, 7u8),
        (counter_at + 1, 2),
        (counter_at + 2, 0xff),
    ] {
        let mut body = bytes[20..].to_vec();
        body[at - 20] = value;
        let mut image = bytes[..12].to_vec();
        image.extend_from_slice(&framed(&body));
        match decode_prefix(&image) {
            Err(CodecError::Malformed { offset, .. }) => assert_eq!(offset, at as u64),
            other => panic!("expected Malformed at {at}, got {other:?}"),
        }
    }
}

#[test]
fn strict_header_utf8() {
    let bytes = encode_prefix(&header(), LogState::Incomplete);
    let mut body = bytes[20..].to_vec();
    let name_at = 2 + 32 + 4;
    body[name_at + 2] = 0xff;
    let mut image = bytes[..12].to_vec();
    image.extend_from_slice(&framed(&body));
    match decode_prefix(&image) {
        Err(CodecError::Malformed { offset, what }) => {
            assert_eq!(offset, 20 + name_at as u64 + 2);
            assert!(what.contains("UTF-8"), "{what}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn grown_length_field_is_corruption_not_truncation() {
    let frame = Frame {
        seq: 3,
        t_ns: 9,
        state_check: 0,
        entry: Entry::ConsoleInput {
            pos: precise(),
            bytes: b"hello".to_vec(),
        },
    };
    let mut bytes = encoded(&frame);
    let real = (bytes.len() - ENVELOPE_LEN) as u32;
    bytes[0..4].copy_from_slice(&(real + 100).to_le_bytes());
    assert_eq!(decode_frame(&bytes, 64), Ok(None));
    assert_eq!(
        check_partial_frame(&bytes, 64),
        Err(CodecError::CorruptLength {
            offset: 64,
            stated: real + 100,
            actual: real
        })
    );
}

#[test]
fn grown_header_length_is_corruption_not_truncation() {
    let mut bytes = encode_prefix(&header(), LogState::Incomplete);
    let real = (bytes.len() - 20) as u32;
    bytes[12..16].copy_from_slice(&(real + 1).to_le_bytes());
    assert_eq!(decode_prefix(&bytes), Ok(None));
    assert!(matches!(
        check_partial_prefix(&bytes),
        Err(CodecError::CorruptLength { offset: 12, .. })
    ));
}

#[test]
fn kind_names_round_trip() {
    for kind in EntryKind::ALL {
        assert_eq!(EntryKind::from_name(kind.name()), Some(kind));
        assert_eq!(EntryKind::from_u8(kind as u8), Some(kind));
    }
    assert_eq!(EntryKind::from_name("invalid"), None);
    assert_eq!(EntryKind::from_u8(0), None);
    assert_eq!(EntryKind::ConsoleInput.name(), "console-input");
    assert_eq!(EntryKind::NetRx.name(), "net-rx");
    assert_eq!(EntryKind::NetTx.name(), "net-tx");
    assert_eq!(EntryKind::NetRx as u8, 8);
    assert_eq!(EntryKind::NetTx as u8, 9);
}

#[test]
fn position_accessors() {
    assert_eq!(Position::AtExit { exits: 4 }.exits(), 4);
    assert!(!Position::AtExit { exits: 4 }.is_precise());
    assert_eq!(precise().exits(), 7);
    assert!(precise().is_precise());
}

proptest! {
    #[test]
    fn arbitrary_frames_round_trip(frame in strategies::frame(), base in any::<u32>()) {
        let bytes = encoded(&frame);
        prop_assert_eq!(decode_frame(&bytes, u64::from(base)), Ok(Some((frame, bytes.len()))));
    }

    #[test]
    fn arbitrary_headers_round_trip(h in strategies::header(), complete in any::<bool>()) {
        let state = if complete { LogState::Complete } else { LogState::Incomplete };
        let bytes = encode_prefix(&h, state);
        prop_assert_eq!(decode_prefix(&bytes), Ok(Some((h, state, bytes.len()))));
    }

    #[test]
    fn frames_decode_from_a_stream(frames in proptest::collection::vec(strategies::frame(), 0..8)) {
        let mut stream = Vec::new();
        for f in &frames {
            encode_frame(f, &mut stream);
        }
        let mut pos = 0;
        let mut decoded = Vec::new();
        while let Some((f, n)) = decode_frame(&stream[pos..], pos as u64).unwrap() {
            decoded.push(f);
            pos += n;
        }
        prop_assert_eq!(pos, stream.len());
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn cut_frames_need_more_bytes_and_are_not_called_corrupt(frame in strategies::frame()) {
        for enc in [EntryEncoding::Fixed, EntryEncoding::Compact] {
            let mut bytes = Vec::new();
            encode_frame_as(&frame, enc, &mut bytes);
            for cut in 0..bytes.len() {
                prop_assert_eq!(decode_frame_as(&bytes[..cut], 0, enc), Ok(None));
                prop_assert_eq!(check_partial_frame_as(&bytes[..cut], 0, enc), Ok(()));
            }
        }
    }

    #[test]
    fn decode_frame_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256), base in any::<u64>()) {
        let _ = decode_frame(&bytes, base);
        let _ = check_partial_frame(&bytes, base);
        let _ = decode_prefix(&bytes);
        let _ = check_partial_prefix(&bytes);
    }

    #[test]
    fn body_decoder_never_panics(body in proptest::collection::vec(any::<u8>(), 0..256), kind in 0u8..11) {
        // Behind a valid CRC, so the body parser itself is exercised.
        let mut body = body;
        if let Some(b) = body.first_mut() {
            *b = kind;
        }
        for enc in [EntryEncoding::Fixed, EntryEncoding::Compact] {
            let _ = decode_frame_as(&framed(&body), 0, enc);
            let _ = check_partial_frame_as(&framed(&body)[..body.len() / 2], 0, enc);
        }
    }

    #[test]
    fn mutated_valid_bodies_never_panic(frame in strategies::frame(), at in any::<prop::sample::Index>(), value in any::<u8>()) {
        let mut body = body_of(&frame);
        let i = at.index(body.len());
        body[i] = value;
        if let Ok(Some((decoded, _))) = decode_frame(&framed(&body), 0) {
            // Whatever decodes must re-encode to the same bytes (no lossy parse).
            prop_assert_eq!(body_of(&decoded), body);
        }
    }
}
