//! A log cut at any length reads as its whole frames plus a truncated tail.

#![allow(clippy::unwrap_used)]

mod common;

use logging_channel::{Completeness, IncompleteReason, LogError, LogReader, LogState, Tail};

#[test]
fn every_cut_yields_the_whole_frames_before_it() {
    let (image, offsets) = common::log_image(LogState::Complete);
    let frames = common::frames();
    let header_end = offsets[0] as usize;
    let mut boundaries = offsets.clone();
    boundaries.push(image.len() as u64);

    for cut in 0..=image.len() {
        let bytes = image[..cut].to_vec();
        if cut < header_end {
            let err = LogReader::from_bytes(bytes).unwrap_err();
            assert!(
                matches!(err, LogError::TruncatedHeader { offset } if offset == cut as u64),
                "cut at {cut}: {err}"
            );
            continue;
        }
        let reader = LogReader::from_bytes(bytes).unwrap();
        let read: Vec<_> = reader
            .frames()
            .map(|f| f.unwrap_or_else(|e| panic!("cut at {cut}: {e}")))
            .collect();
        let whole = boundaries.iter().filter(|&&b| b <= cut as u64).count() - 1;
        assert_eq!(read.len(), whole, "cut at {cut}");
        for ((offset, frame), (expected_offset, expected)) in
            read.iter().zip(offsets.iter().zip(&frames))
        {
            assert_eq!((offset, frame), (expected_offset, expected));
        }

        let frames_end = boundaries[whole];
        let tail = reader.tail().unwrap();
        let completeness = reader.completeness().unwrap();
        if cut as u64 == frames_end {
            assert_eq!(tail, Tail::Clean, "cut at {cut}");
            let expected = if whole == frames.len() {
                Completeness::Complete
            } else {
                Completeness::Incomplete {
                    reason: IncompleteReason::NoEnd,
                }
            };
            assert_eq!(completeness, expected, "cut at {cut}");
        } else {
            let truncated = Tail::Truncated {
                offset: frames_end,
                trailing_bytes: cut as u64 - frames_end,
            };
            assert_eq!(tail, truncated, "cut at {cut}");
            assert_eq!(
                completeness,
                Completeness::Incomplete {
                    reason: IncompleteReason::TruncatedTail {
                        offset: frames_end,
                        trailing_bytes: cut as u64 - frames_end,
                    }
                },
                "cut at {cut}"
            );
        }
    }
}
