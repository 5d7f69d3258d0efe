//! LogWriter and LogReader on real files.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TempFile, temp_path};
use logging_channel::codec::{EntryEncoding, encode_frame_as, encode_prefix};
use logging_channel::format::RESET_SINCE_VERSION;
use logging_channel::{
    CodecError, Completeness, EndReason, Entry, FORMAT_VERSION, Frame, IncompleteReason, LogError,
    LogReader, LogState, LogWriter, MAX_FRAME_LEN, MAX_NET_FRAME, MIN_NET_FRAME,
    OLDEST_FORMAT_VERSION, Position, Tail,
};

fn write_all(writer: &mut LogWriter) {
    for (i, entry) in common::entries().iter().enumerate() {
        let seq = writer.append(1_000 * i as u64, 0, entry).unwrap();
        assert_eq!(seq, i as u64);
    }
}

#[test]
fn finished_log_reads_back_complete() {
    let file = TempFile(temp_path("finished"));
    let mut writer = LogWriter::create(&file.0, &common::header()).unwrap();
    write_all(&mut writer);
    assert_eq!(writer.entries_written(), common::entries().len() as u64);
    let bytes_written = writer.bytes_written();
    writer.finish().unwrap();

    let reader = LogReader::open(&file.0).unwrap();
    assert_eq!(reader.header(), &common::header());
    assert_eq!(reader.state(), LogState::Complete);
    assert_eq!(reader.total_bytes(), bytes_written);
    let frames: Vec<_> = reader.frames().map(|f| f.unwrap().1).collect();
    assert_eq!(frames, common::frames());
    assert_eq!(reader.tail().unwrap(), Tail::Clean);
    assert_eq!(reader.completeness().unwrap(), Completeness::Complete);
    // Byte-identical to the pure codec's image: the file layer adds nothing.
    assert_eq!(
        std::fs::read(&file.0).unwrap(),
        common::log_image(LogState::Complete).0
    );
}

#[test]
fn dropped_writer_leaves_an_incomplete_readable_log() {
    let file = TempFile(temp_path("dropped"));
    let mut writer = LogWriter::create(&file.0, &common::header()).unwrap();
    let entries = common::entries();
    for entry in &entries[..3] {
        writer.append(5, 0, entry).unwrap();
    }
    writer.flush().unwrap();
    drop(writer);

    let reader = LogReader::open(&file.0).unwrap();
    assert_eq!(reader.state(), LogState::Incomplete);
    let read: Vec<_> = reader.frames().map(|f| f.unwrap().1.entry).collect();
    assert_eq!(read, entries[..3]);
    assert_eq!(
        reader.completeness().unwrap(),
        Completeness::Incomplete {
            reason: IncompleteReason::NoEnd
        }
    );
}

#[test]
fn flushed_entries_are_on_disk_while_the_writer_lives() {
    let file = TempFile(temp_path("live"));
    let mut writer = LogWriter::create(&file.0, &common::header()).unwrap();
    // The prefix is flushed by create: an immediately crashed recorder
    // still leaves a readable empty log.
    assert_eq!(LogReader::open(&file.0).unwrap().frames().count(), 0);
    writer.append(0, 0, &common::entries()[0]).unwrap();
    writer.flush().unwrap();
    let reader = LogReader::open(&file.0).unwrap();
    assert_eq!(reader.frames().count(), 1);
    assert_eq!(reader.total_bytes(), writer.bytes_written());
}

#[test]
fn writer_refuses_entries_after_end_and_finish_without_end() {
    let file = TempFile(temp_path("after-end"));
    let mut writer = LogWriter::create(&file.0, &common::header()).unwrap();
    let entries = common::entries();
    writer.append(0, 0, &entries[0]).unwrap();
    let at = writer.bytes_written();
    let err = writer.finish().unwrap_err();
    assert!(
        matches!(err.without_path(), LogError::MissingEnd { offset } if *offset == at),
        "{err}"
    );
    assert_eq!(
        LogReader::open(&file.0).unwrap().state(),
        LogState::Incomplete
    );

    let mut writer = LogWriter::create(&file.0, &common::header()).unwrap();
    write_all(&mut writer);
    let before = writer.bytes_written();
    let err = writer.append(0, 0, &entries[0]).unwrap_err();
    assert!(
        matches!(err.without_path(), LogError::AfterEnd { offset } if *offset == before),
        "{err}"
    );
    assert_eq!(writer.bytes_written(), before);
    writer.finish().unwrap();
    assert_eq!(
        LogReader::open(&file.0).unwrap().completeness().unwrap(),
        Completeness::Complete
    );
}

#[test]
fn writer_refuses_oversized_frames() {
    let file = TempFile(temp_path("oversized"));
    let mut writer = LogWriter::create(&file.0, &common::header()).unwrap();
    let before = writer.bytes_written();
    let huge = logging_channel::Entry::ConsoleInput {
        pos: Position::AtExit { exits: 1 },
        bytes: vec![0; MAX_FRAME_LEN as usize],
    };
    let err = writer.append(0, 0, &huge).unwrap_err();
    assert!(
        matches!(
            err.without_path(),
            LogError::Codec(CodecError::FrameTooLarge { offset, .. }) if *offset == before
        ),
        "{err}"
    );
    assert_eq!(writer.entries_written(), 0);
    assert_eq!(writer.append(0, 0, &common::entries()[0]).unwrap(), 0);
}

#[test]
fn writer_refuses_net_frames_no_reader_accepts() {
    let file = TempFile(temp_path("net-size"));
    let mut writer = LogWriter::create(&file.0, &common::header()).unwrap();
    let before = writer.bytes_written();
    for (entry, what) in [
        (
            Entry::NetTx {
                pos: Position::AtExit { exits: 1 },
                frame: vec![0; MAX_NET_FRAME + 1],
            },
            "net-tx frame of 65536 bytes is longer than the maximum of 65535",
        ),
        (
            Entry::NetRx {
                pos: Position::AtExit { exits: 1 },
                frame: vec![0; MIN_NET_FRAME - 1],
            },
            "net-rx frame of 13 bytes is shorter than an Ethernet header (14 bytes)",
        ),
    ] {
        let err = writer.append(0, 0, &entry).unwrap_err();
        assert!(
            matches!(
                err.without_path(),
                LogError::InvalidEntry { offset, seq: 0, what: w } if *offset == before && w == what
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .ends_with(&format!("cannot write entry #0 at byte {before}: {what}")),
            "{err}"
        );
    }
    assert_eq!(writer.entries_written(), 0);
    assert_eq!(writer.bytes_written(), before);
    // The largest allowed frame is written and reads back.
    let largest = Entry::NetRx {
        pos: Position::AtExit { exits: 1 },
        frame: vec![0x5a; MAX_NET_FRAME],
    };
    assert_eq!(writer.append(0, 0, &largest).unwrap(), 0);
    writer.flush().unwrap();
    let reader = LogReader::open(&file.0).unwrap();
    let frames: Vec<_> = reader.frames().map(|f| f.unwrap().1.entry).collect();
    assert_eq!(frames, [largest]);
}

#[test]
fn writer_refuses_a_header_of_another_version() {
    let file = TempFile(temp_path("version"));
    for version in [OLDEST_FORMAT_VERSION, FORMAT_VERSION + 1] {
        let mut header = common::header();
        header.format_version = version;
        let err = LogWriter::create(&file.0, &header).unwrap_err();
        assert!(
            matches!(
                err.without_path(),
                LogError::Codec(CodecError::UnsupportedVersion { found, .. }) if *found == version
            ),
            "{err}"
        );
    }
}

/// A log image of `entries` under `header`, numbered from 0; also where its last frame starts.
/// A log image as a writer of the header's version wrote it (its entry encoding included),
/// and the offset of its last frame.
fn log_of(header: &logging_channel::Header, entries: &[Entry]) -> (Vec<u8>, u64) {
    let mut image = encode_prefix(header, LogState::Complete);
    let mut last = 0;
    for (i, entry) in entries.iter().enumerate() {
        last = image.len() as u64;
        encode_frame_as(
            &Frame {
                seq: i as u64,
                t_ns: 1_000_000 * i as u64,
                state_check: 0,
                entry: entry.clone(),
            },
            EntryEncoding::of_version(header.format_version),
            &mut image,
        );
    }
    (image, last)
}

/// Every version this build reads, written as its writers wrote it (fixed-width counts up to
/// version 3, varints from version 4), reads back the entries that version may hold, and a
/// version-4 log is the smaller.
#[test]
fn every_readable_version_reads_as_its_writer_wrote_it() {
    let mut sizes = Vec::new();
    for version in OLDEST_FORMAT_VERSION..=FORMAT_VERSION {
        let mut header = common::header();
        header.format_version = version;
        let entries: Vec<_> = common::entries()
            .into_iter()
            .filter(|e| e.kind().since_version() <= version)
            .filter(|e| {
                version >= RESET_SINCE_VERSION
                    || !matches!(
                        e,
                        Entry::End {
                            reason: EndReason::Reset { .. },
                            ..
                        }
                    )
            })
            .collect();
        let (image, _) = log_of(&header, &entries);
        let reader = LogReader::from_bytes(image.clone()).unwrap();
        let read: Vec<_> = reader.frames().map(|f| f.unwrap().1.entry).collect();
        assert_eq!(read, entries, "version {version}");
        assert_eq!(reader.completeness().unwrap(), Completeness::Complete);
        if version >= 2 {
            sizes.push((version, image.len(), entries.len()));
        }
    }
    // Versions 2 to 4 hold the same entries; only the encoding differs.
    let fixed = sizes.iter().find(|s| s.0 == 3).unwrap();
    let compact = sizes.iter().find(|s| s.0 == 4).unwrap();
    assert_eq!(fixed.2, compact.2);
    assert!(compact.1 < fixed.1, "{sizes:?}");
}

/// A log written before network entries existed (format version 1) reads as before; a
/// version-2 kind in it is refused, since no version-1 writer wrote one, and so is an end by a
/// reset (version 3).
#[test]
fn version_1_logs_read_and_may_not_hold_newer_kinds() {
    let mut header = common::header();
    header.format_version = 1;
    let old_entries: Vec<_> = common::entries()
        .into_iter()
        .filter(|e| e.kind().since_version() == 1)
        .collect();
    let (image, _) = log_of(&header, &old_entries);
    let reader = LogReader::from_bytes(image).unwrap();
    assert_eq!(reader.header().format_version, 1);
    let read: Vec<_> = reader.frames().map(|f| f.unwrap().1.entry).collect();
    assert_eq!(read, old_entries);
    assert_eq!(reader.completeness().unwrap(), Completeness::Complete);

    // The same log with a net-rx entry where the End was.
    let net_rx = Entry::NetRx {
        pos: Position::AtExit { exits: 5 },
        frame: common::net_frame(0x0800, 46),
    };
    let (image, offset) = log_of(&header, &[old_entries[0].clone(), net_rx]);
    let reader = LogReader::from_bytes(image).unwrap();
    let err = reader.frames().find_map(Result::err).unwrap();
    assert!(
        matches!(err, LogError::KindNotInVersion { offset: o, kind: 8, name: "net-rx", version: 1 } if o == offset + 8),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "log corrupt at byte {}: entry kind 8 (net-rx) does not exist in log format version 1, which this log's header states",
            offset + 8
        )
    );
    assert!(reader.completeness().is_err());

    // The same log ending in a reset.
    let reset: Vec<_> = old_entries
        .iter()
        .map(|e| match e {
            Entry::End { pos, .. } => Entry::End {
                pos: pos.clone(),
                reason: EndReason::Reset {
                    port: 0xcf9,
                    value: 6,
                },
            },
            other => other.clone(),
        })
        .collect();
    let (image, offset) = log_of(&header, &reset);
    let reader = LogReader::from_bytes(image).unwrap();
    let err = reader.frames().find_map(Result::err).unwrap();
    assert!(
        matches!(err, LogError::KindNotInVersion { offset: o, name: "end (reset)", version: 1, .. } if o == offset + 8),
        "{err}"
    );
}

#[test]
fn errors_name_the_path_and_offset() {
    let file = TempFile(temp_path("named"));
    let (mut image, offsets) = common::log_image(LogState::Complete);
    let at = offsets[2] as usize + 10;
    image[at] ^= 0x40;
    std::fs::write(&file.0, &image).unwrap();
    let reader = LogReader::open(&file.0).unwrap();
    let err = reader.frames().find_map(Result::err).unwrap();
    let msg = err.to_string();
    assert!(msg.contains(&file.0.display().to_string()), "{msg}");
    assert!(
        msg.contains(&format!("log corrupt at byte {}: CRC mismatch", offsets[2])),
        "{msg}"
    );
    assert_eq!(err.offset(), Some(offsets[2]));

    std::fs::write(&file.0, b"not a log at all").unwrap();
    let err = LogReader::open(&file.0).unwrap_err();
    assert!(
        err.to_string().contains(&file.0.display().to_string()),
        "{err}"
    );
    assert!(err.to_string().contains("bad magic at byte 0"), "{err}");
}

#[test]
fn missing_file_is_an_io_error_naming_the_path() {
    let path = temp_path("missing");
    let err = LogReader::open(&path).unwrap_err();
    assert!(matches!(err, LogError::Io { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}
