//! Frame-sequence rules the reader enforces beyond the codec.

#![allow(clippy::unwrap_used)]

mod common;

use logging_channel::{
    Completeness, EndReason, Entry, IncompleteReason, LogError, LogReader, LogState, Position,
};

fn first_error(reader: &LogReader) -> LogError {
    reader.frames().find_map(Result::err).expect("an error")
}

#[test]
fn seq_gap_is_reported_at_the_frame() {
    let mut frames = common::frames();
    frames[3].seq = 7;
    let (image, offsets) = common::image_of(LogState::Incomplete, &frames);
    let reader = LogReader::from_bytes(image).unwrap();
    let err = first_error(&reader);
    assert!(
        matches!(err, LogError::SeqGap { offset, expected: 3, found: 7 } if offset == offsets[3]),
        "{err}"
    );
    assert_eq!(reader.frames().filter(Result::is_ok).count(), 3);
    assert!(reader.tail().is_err());
    assert!(reader.completeness().is_err());
}

#[test]
fn seq_must_start_at_zero() {
    let mut frames = common::frames();
    for f in &mut frames {
        f.seq += 1;
    }
    let (image, offsets) = common::image_of(LogState::Incomplete, &frames);
    let err = first_error(&LogReader::from_bytes(image).unwrap());
    assert!(
        matches!(err, LogError::SeqGap { offset, expected: 0, found: 1 } if offset == offsets[0]),
        "{err}"
    );
}

#[test]
fn nothing_may_follow_end() {
    let mut frames = common::frames();
    let mut extra = frames[0].clone();
    extra.seq = frames.len() as u64;
    frames.push(extra);
    let (image, offsets) = common::image_of(LogState::Complete, &frames);
    let err = first_error(&LogReader::from_bytes(image).unwrap());
    assert!(
        matches!(err, LogError::AfterEnd { offset } if offset == *offsets.last().unwrap()),
        "{err}"
    );
}

#[test]
fn iteration_stops_after_an_error() {
    let mut frames = common::frames();
    frames[1].seq = 5;
    let (image, _) = common::image_of(LogState::Incomplete, &frames);
    let reader = LogReader::from_bytes(image).unwrap();
    let items: Vec<_> = reader.frames().collect();
    assert_eq!(items.len(), 2);
    assert!(items[1].is_err());
}

#[test]
fn completeness_needs_state_byte_end_and_clean_tail() {
    let (image, _) = common::log_image(LogState::Complete);
    let reader = LogReader::from_bytes(image).unwrap();
    assert_eq!(reader.completeness().unwrap(), Completeness::Complete);

    let (image, _) = common::log_image(LogState::Incomplete);
    let reader = LogReader::from_bytes(image).unwrap();
    assert_eq!(
        reader.completeness().unwrap(),
        Completeness::Incomplete {
            reason: IncompleteReason::StateByteIncomplete
        }
    );

    let mut frames = common::frames();
    frames.pop();
    let (image, _) = common::image_of(LogState::Complete, &frames);
    let reader = LogReader::from_bytes(image).unwrap();
    assert_eq!(
        reader.completeness().unwrap(),
        Completeness::Incomplete {
            reason: IncompleteReason::NoEnd
        }
    );

    let (image, _) = common::image_of(LogState::Incomplete, &[]);
    let reader = LogReader::from_bytes(image).unwrap();
    assert_eq!(reader.frames().count(), 0);
    assert_eq!(
        reader.completeness().unwrap(),
        Completeness::Incomplete {
            reason: IncompleteReason::NoEnd
        }
    );
}

#[test]
fn header_and_state_are_exposed() {
    let (image, _) = common::log_image(LogState::Complete);
    let total = image.len() as u64;
    let reader = LogReader::from_bytes(image).unwrap();
    assert_eq!(reader.header(), &common::header());
    assert_eq!(reader.state(), LogState::Complete);
    assert_eq!(reader.total_bytes(), total);
    let end = reader.frames().last().unwrap().unwrap().1.entry;
    assert_eq!(
        end,
        Entry::End {
            pos: Position::AtExit { exits: 9 },
            reason: EndReason::PowerOff { code: 0 }
        }
    );
}
