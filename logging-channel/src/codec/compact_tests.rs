//! The compact entry encoding (log format version 4 on, and the logging channel): its layout,
//! the strictness of its varints, and that every frame survives it.

use proptest::prelude::*;

use super::tests::framed;
use super::*;
use crate::format::{EndReason, Entry, Frame, InputSource, MAX_NET_FRAME, MIN_NET_FRAME, Position};
use crate::strategies;

fn encoded(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(frame, &mut out);
    out
}

fn malformed(body: &[u8]) -> (u64, String) {
    match decode_frame(&framed(body), 0) {
        Err(CodecError::Malformed { offset, what }) => (offset, what),
        other => panic!("expected Malformed, got {other:?}"),
    }
}

fn irq(seq: u64, t_ns: u64, exits: u64) -> Frame {
    Frame {
        seq,
        t_ns,
        state_check: 0,
        entry: Entry::Irq {
            pos: Position::AtExit { exits },
            line: 0,
        },
    }
}

#[test]
fn this_build_writes_the_compact_encoding() {
    assert_eq!(EntryEncoding::CURRENT, EntryEncoding::Compact);
    assert_eq!(
        EntryEncoding::of_version(crate::format::FORMAT_VERSION),
        EntryEncoding::CURRENT
    );
    for v in 1..=3 {
        assert_eq!(EntryEncoding::of_version(v), EntryEncoding::Fixed);
    }
}

#[test]
fn compact_frame_layout_is_pinned() {
    // The worked example of docs/log-format.md, version 4.
    let body = [
        2u8, // kind irq
        1,   // seq
        2,   // t_ns
        0, 0, 0, 0, 0, 0, 0, 0, // state_check
        1, // position tag AtExit
        5, // exits
        0, // line
    ];
    assert_eq!(encoded(&irq(1, 2, 5)), framed(&body));
    let hex: Vec<String> = encoded(&irq(1, 2, 5))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        hex.join(" "),
        "0e 00 00 00 02 64 cd 7d 02 01 02 00 00 00 00 00 00 00 00 01 05 00"
    );
}

#[test]
fn varints_take_seven_bits_per_byte_least_significant_first() {
    for (v, bytes) in [
        (0u64, vec![0u8]),
        (127, vec![0x7f]),
        (128, vec![0x80, 0x01]),
        (300, vec![0xac, 0x02]),
        (u64::MAX, [vec![0xff; 9], vec![0x01]].concat()),
    ] {
        let mut out = Vec::new();
        wire::put_varint(&mut out, v);
        assert_eq!(out, bytes, "{v}");
        let mut c = wire::Cursor::new(&bytes, 0);
        assert_eq!(c.varint("v"), Ok(v));
        assert_eq!(c.finish(), Ok(()));
    }
}

/// Body of an irq at exit 5 with `seq` given as raw bytes.
fn body_with_seq(seq: &[u8]) -> Vec<u8> {
    [&[2u8][..], seq, &[2], &[0; 8], &[1, 5, 0]].concat()
}

#[test]
fn a_varint_longer_than_it_needs_is_refused() {
    // 1 written in two bytes: the same entry would have two encodings.
    let (offset, what) = malformed(&body_with_seq(&[0x81, 0x00]));
    assert_eq!(offset, 8 + 1);
    assert_eq!(what, "seq is encoded in more bytes than it needs");
    // Zero itself is one byte.
    assert!(decode_frame(&framed(&body_with_seq(&[0x00])), 0).is_ok());
}

#[test]
fn a_varint_beyond_64_bits_is_refused() {
    for seq in [
        [vec![0xff; 9], vec![0x02]].concat(),
        [vec![0xff; 9], vec![0x81, 0x00]].concat(),
        vec![0x80; 12],
    ] {
        let (offset, what) = malformed(&body_with_seq(&seq));
        assert_eq!(offset, 8 + 1);
        assert_eq!(what, "seq does not fit in 64 bits");
    }
}

#[test]
fn a_body_ending_inside_a_varint_is_refused_where_it_ends() {
    let body = [2u8, 0x80, 0x80];
    let (offset, what) = malformed(&body);
    assert_eq!(offset, 8 + 3);
    assert!(what.contains("ends inside seq"), "{what}");
}

#[test]
fn a_power_off_code_beyond_32_bits_is_refused() {
    let mut body = vec![6u8, 0, 0];
    body.extend_from_slice(&[0; 8]);
    body.extend_from_slice(&[1, 5, 1]); // AtExit 5, PowerOff
    wire::put_varint(&mut body, 1 << 32);
    let (offset, what) = malformed(&body);
    assert_eq!(offset, 8 + 14);
    assert_eq!(what, "power-off code does not fit in 32 bits");
}

/// The entries of one timer tick on a guest that has run ten minutes, as the recorder logs
/// them: the compact encoding is what keeps a 100 Hz guest under 0.1 Mbit/s.
#[test]
fn a_timer_ticks_entries_are_small() {
    let t_ns = 600 * 1_000_000_000u64;
    let exits = 3_000_000;
    let pos = Position::AtExit { exits };
    let tick = [
        Entry::Irq {
            pos: pos.clone(),
            line: 0,
        },
        Entry::Inject {
            pos: pos.clone(),
            vector: 0x20,
        },
        Entry::Input {
            pos,
            source: InputSource::Clock,
            value: t_ns + 12_345,
        },
    ];
    let size = |enc| {
        let mut out = Vec::new();
        for (i, entry) in tick.iter().enumerate() {
            let frame = Frame {
                seq: 180_000 + i as u64,
                t_ns,
                state_check: 0x1234_5678_9abc_def0,
                entry: entry.clone(),
            };
            encode_frame_as(&frame, enc, &mut out);
        }
        out.len()
    };
    assert_eq!(size(EntryEncoding::Fixed), 137);
    // 100 ticks a second under 0.1 Mbit/s means at most 125 bytes a tick.
    assert_eq!(size(EntryEncoding::Compact), 102);
}

#[test]
fn net_frame_sizes_are_checked_at_the_length_field() {
    let body = |len: usize| {
        let mut b = vec![8u8, 17, 0];
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&[1, 5]);
        wire::put_varint(&mut b, len as u64);
        b.resize(b.len() + len, 0x42);
        b
    };
    assert!(decode_frame(&framed(&body(MIN_NET_FRAME)), 0).is_ok());
    assert!(decode_frame(&framed(&body(MAX_NET_FRAME)), 0).is_ok());
    let (offset, what) = malformed(&body(MAX_NET_FRAME + 1));
    assert_eq!(offset, 8 + 13);
    assert_eq!(
        what,
        "entry #17: net-rx frame of 65536 bytes is longer than the maximum of 65535"
    );
    let (offset, what) = malformed(&body(MIN_NET_FRAME - 1));
    assert_eq!(offset, 8 + 13);
    assert!(what.contains("shorter than an Ethernet header"), "{what}");
    // A length past the body (a u64 no frame has) is refused by the size rule, not read.
    let mut huge = vec![8u8, 17, 0];
    huge.extend_from_slice(&[0; 8]);
    huge.extend_from_slice(&[1, 5]);
    wire::put_varint(&mut huge, u64::MAX);
    assert_eq!(malformed(&huge).0, 8 + 13);
}

#[test]
fn a_damaged_length_is_told_from_a_cut_frame() {
    let mut bytes = encoded(&Frame {
        seq: 3,
        t_ns: 4,
        state_check: 5,
        entry: Entry::End {
            pos: Position::AtExit { exits: 6 },
            reason: EndReason::PowerOff { code: 0 },
        },
    });
    let actual = bytes.len() - ENVELOPE_LEN;
    bytes[0] += 10;
    assert_eq!(decode_frame(&bytes, 0), Ok(None));
    assert_eq!(
        check_partial_frame(&bytes, 0),
        Err(CodecError::CorruptLength {
            offset: 0,
            stated: actual as u32 + 10,
            actual: actual as u32,
        })
    );
}

proptest! {
    #[test]
    fn arbitrary_frames_round_trip_in_both_encodings(frame in strategies::frame(), base in any::<u32>()) {
        for enc in [EntryEncoding::Fixed, EntryEncoding::Compact] {
            let mut bytes = Vec::new();
            encode_frame_as(&frame, enc, &mut bytes);
            prop_assert_eq!(
                decode_frame_as(&bytes, u64::from(base), enc),
                Ok(Some((frame.clone(), bytes.len())))
            );
        }
    }

    #[test]
    fn varints_round_trip(v in any::<u64>()) {
        let mut out = Vec::new();
        wire::put_varint(&mut out, v);
        let mut c = wire::Cursor::new(&out, 0);
        prop_assert_eq!(c.varint("v"), Ok(v));
        prop_assert_eq!(c.finish(), Ok(()));
    }
}
