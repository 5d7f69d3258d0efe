//! Every single-byte corruption of a log is reported, at the right frame.

#![allow(clippy::unwrap_used)]

mod common;

use logging_channel::codec::{HEADER_FRAME_OFFSET, STATE_OFFSET, VERSION_OFFSET};
use logging_channel::{CodecError, Completeness, LogError, LogReader, LogState, Tail};

/// Reads the whole log; the first error, if any.
fn read_all(bytes: Vec<u8>) -> Result<(LogReader, usize), LogError> {
    let reader = LogReader::from_bytes(bytes)?;
    let mut n = 0;
    for item in reader.frames() {
        item?;
        n += 1;
    }
    reader.tail()?;
    Ok((reader, n))
}

/// The offset of the frame that contains byte `at`.
fn containing_frame(at: u64, frame_offsets: &[u64]) -> u64 {
    frame_offsets
        .iter()
        .copied()
        .rev()
        .find(|&start| start <= at)
        .unwrap_or(HEADER_FRAME_OFFSET)
}

#[test]
fn every_flipped_byte_is_reported_at_its_frame() {
    let (image, offsets) = common::log_image(LogState::Complete);
    let mut checked = 0;
    let mut seen = std::collections::BTreeSet::new();
    for at in HEADER_FRAME_OFFSET as usize..image.len() {
        // Low bit, high bit and whole byte: length fields react differently
        // to each (smaller, past EOF, over the cap).
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bytes = image.clone();
            bytes[at] ^= mask;
            let err = match read_all(bytes) {
                Ok((_, n)) => panic!("flip {mask:#04x} at {at} went unnoticed ({n} frames read)"),
                Err(e) => e,
            };
            seen.insert(match err.without_path() {
                LogError::Codec(CodecError::Crc { .. }) => "crc",
                LogError::Codec(CodecError::FrameTooLarge { .. }) => "too-large",
                LogError::Codec(CodecError::CorruptLength { .. }) => "corrupt-length",
                LogError::Codec(CodecError::UnsupportedVersion { .. }) => "version",
                other => panic!("unexpected error kind for a flip at {at}: {other}"),
            });
            let at = at as u64;
            let still_a_version = |e: &LogError| {
                // A flip that turns the version into another one this build reads (3 into 2)
                // is no version error: the header frame's CRC, which covers it, catches it.
                matches!(e, LogError::Codec(CodecError::Crc { .. }))
                    && e.offset() == Some(HEADER_FRAME_OFFSET)
            };
            if (VERSION_OFFSET..VERSION_OFFSET + 2).contains(&at) && !still_a_version(&err) {
                // The version is judged before the header frame is trusted,
                // so it is reported at its own offset (inside the header).
                assert!(
                    matches!(err, LogError::Codec(CodecError::UnsupportedVersion { .. })),
                    "{err}"
                );
                assert_eq!(err.offset(), Some(VERSION_OFFSET), "{err}");
            } else {
                assert_eq!(
                    err.offset(),
                    Some(containing_frame(at, &offsets)),
                    "flip {mask:#04x} at {at}: {err}"
                );
                assert!(err.to_string().contains("corrupt"), "{err}");
            }
            checked += 1;
        }
    }
    assert!(
        checked > 3 * 300,
        "the fixture covers a realistic log ({checked})"
    );
    // Length-field flips must have hit all three ways of going wrong.
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["corrupt-length", "crc", "too-large", "version"]
    );
}

#[test]
fn state_byte_flips_are_bad_state_or_change_only_completeness() {
    let (image, _) = common::log_image(LogState::Complete);
    for value in 0..=u8::MAX {
        let mut bytes = image.clone();
        bytes[STATE_OFFSET as usize] = value;
        match LogReader::from_bytes(bytes) {
            Ok(reader) => {
                let frames: Vec<_> = reader.frames().map(|f| f.unwrap().1).collect();
                assert_eq!(frames, common::frames());
                assert_eq!(reader.tail().unwrap(), Tail::Clean);
                let expected = if value == 1 {
                    Completeness::Complete
                } else {
                    Completeness::Incomplete {
                        reason: logging_channel::IncompleteReason::StateByteIncomplete,
                    }
                };
                assert_eq!(reader.completeness().unwrap(), expected, "state {value}");
            }
            Err(e) => {
                assert!(value > 1, "state {value} rejected: {e}");
                assert!(
                    matches!(
                        e,
                        LogError::Codec(CodecError::BadState { offset: STATE_OFFSET, value: v }) if v == value
                    ),
                    "{e}"
                );
            }
        }
    }
}

#[test]
fn magic_and_reserved_bytes_are_checked() {
    let (image, _) = common::log_image(LogState::Complete);
    for at in 0..STATE_OFFSET as usize {
        let mut bytes = image.clone();
        bytes[at] ^= 0x20;
        let err = LogReader::from_bytes(bytes).unwrap_err();
        assert!(
            matches!(err, LogError::Codec(CodecError::BadMagic { offset: 0 })),
            "{err}"
        );
    }
    for at in STATE_OFFSET as usize + 1..HEADER_FRAME_OFFSET as usize {
        let mut bytes = image.clone();
        bytes[at] = 1;
        let err = LogReader::from_bytes(bytes).unwrap_err();
        assert_eq!(err.offset(), Some(at as u64), "{err}");
    }
}
