//! A machine saved at a clean point of a live recording, installed into a fresh VM the way a
//! backup installs it, replays the rest of that recording exactly. State transfer to a new
//! backup rests on this: every event is in the state or in the log after it.

use logging_channel::format::{Entry, Frame};
use logging_channel::net::encode_page;
use vmm::clock::SystemClock;
use vmm::guest_image::BUILTIN_GUEST;
use vmm::live::{LiveOptions, run_live};
use vmm::machine::{Machine, MachineConfig};
use vmm::outcome::Outcome;
use vmm::precise::ApproachTuning;
use vmm::replay::{ReplayError, replay_from};
use vmm::sink::{LogSink, SinkError};
use vmm::snapshot::memory::install_pages;
use vmm::snapshot::{LogPoint, MachineState};
use vmm::source::VecSource;

const MEM_MIB: u32 = 16;
const PAGE: usize = 4096;

/// A saved machine: encoded state plus the page records a backup would receive.
struct Saved {
    blob: Vec<u8>,
    pages: Vec<u8>,
    point: LogPoint,
}

/// Records into memory and saves the machine whenever another `every` entries were logged.
struct SavingSink {
    frames: Vec<Frame>,
    every: usize,
    saved: Vec<Saved>,
    max: usize,
    /// Passes up every point but a `hlt` exit (a primary takes the first point it is offered).
    at_halts_only: bool,
    /// Keeps the encoded state and its page records (16 MiB a state); without them a state is
    /// only taken and counted.
    keep_pages: bool,
}

impl LogSink for SavingSink {
    fn is_recording(&self) -> bool {
        true
    }
    fn append(&mut self, t_ns: u64, state_check: u64, entry: &Entry) -> Result<(), SinkError> {
        self.frames.push(Frame {
            seq: self.frames.len() as u64,
            t_ns,
            state_check,
            entry: entry.clone(),
        });
        Ok(())
    }
    fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    fn state_wanted(&self) -> bool {
        self.saved.len() < self.max && self.frames.len() >= (self.saved.len() + 1) * self.every
    }
    fn take_state(&mut self, m: &mut Machine, mut point: LogPoint) -> Result<(), SinkError> {
        if self.at_halts_only && !point.halted {
            return Ok(());
        }
        point.next_seq = self.frames.len() as u64;
        let state = MachineState::save(m, point)?;
        if !self.keep_pages {
            self.saved.push(Saved {
                blob: Vec::new(),
                pages: Vec::new(),
                point,
            });
            return Ok(());
        }
        let blob = state.encode()?;
        let mut pages = Vec::new();
        for (index, page) in m.memory().chunks(PAGE).enumerate() {
            encode_page(
                &mut pages,
                u32::try_from(index).expect("page index fits u32"),
                page,
            );
        }
        self.saved.push(Saved { blob, pages, point });
        Ok(())
    }
}

fn machine(cmdline: &str) -> Machine {
    Machine::new(&MachineConfig {
        mem_mib: MEM_MIB,
        image: BUILTIN_GUEST,
        cmdline: cmdline.to_string(),
        nic: None,
    })
    .expect("machine")
}

/// Records `cmdline` live into `sink` (which saves states as it likes) and returns the guest's
/// console; the guest must power off cleanly.
fn record_giving_states(cmdline: &str, sink: &mut SavingSink) -> Vec<u8> {
    let mut m = machine(cmdline);
    let mut console = Vec::new();
    let (outcome, _) = run_live(
        &mut m,
        &SystemClock::new(),
        sink,
        &mut console,
        None,
        &LiveOptions::default(),
    )
    .expect("live run");
    assert!(
        matches!(outcome, Outcome::PowerOff { code: 0 }),
        "{outcome:?}"
    );
    console
}

/// Records `cmdline` live while saving the machine along the way, then restores every saved
/// state into a fresh VM and replays the recording's remainder from it. Returns where the
/// states were taken.
fn every_saved_state_replays_the_rest(
    cmdline: &str,
    every: usize,
    at_halts_only: bool,
) -> Vec<LogPoint> {
    let mut sink = SavingSink {
        frames: Vec::new(),
        every,
        saved: Vec::new(),
        max: 12,
        at_halts_only,
        keep_pages: true,
    };
    let console = record_giving_states(cmdline, &mut sink);
    assert!(
        sink.saved.len() >= 4,
        "only {} states were saved from {} entries",
        sink.saved.len(),
        sink.frames.len()
    );
    // The states taken at a guest exit are the ones whose pending I/O must be completed first.
    assert!(
        sink.saved.iter().any(|s| !s.point.mid_execution),
        "no state was saved at a guest exit"
    );

    for (i, saved) in sink.saved.iter().enumerate() {
        let next = usize::try_from(saved.point.next_seq).expect("seq fits usize");
        // As `understudy replay` does: a timed kick that lands too late overshoots (the replay
        // lost its way, not its history), and the replay starts over from the state, each time
        // more cautiously.
        let mut attempt = 0;
        let (report, replayed) = loop {
            let mut b = machine(cmdline);
            install_pages(&b, &saved.pages).expect("install pages");
            MachineState::decode(&saved.blob)
                .expect("decode")
                .restore(&mut b)
                .expect("restore");
            let mut source = VecSource::new(sink.frames[next..].iter().cloned());
            let mut replayed = Vec::new();
            let tuning = ApproachTuning::for_attempt(attempt + 1);
            let (result, _) = replay_from(
                &mut b,
                &mut source,
                &mut replayed,
                tuning,
                Some(saved.point),
            );
            match result {
                Err(ReplayError::Overshot { .. }) if attempt < 3 => attempt += 1,
                other => {
                    let report = other.unwrap_or_else(|e| {
                        panic!(
                            "state #{i} (entry #{next}, exit {}, mid-execution {}, halted {}) did not replay: {e}",
                            saved.point.exits, saved.point.mid_execution, saved.point.halted
                        )
                    });
                    break (report, replayed);
                }
            }
        };
        assert!(matches!(report.outcome, Outcome::PowerOff { code: 0 }));
        let from = usize::try_from(saved.point.console_bytes).expect("offset fits usize");
        assert_eq!(
            String::from_utf8_lossy(&replayed),
            String::from_utf8_lossy(&console[from..]),
            "state #{i}: the replayed console differs from the recording's after byte {from}"
        );
    }
    sink.saved.iter().map(|s| s.point).collect()
}

#[test]
fn states_saved_from_a_ticker_guest_replay_the_rest() {
    every_saved_state_replays_the_rest("ticker ticks=30", 9, false);
}

#[test]
fn states_saved_from_a_compute_guest_replay_the_rest() {
    every_saved_state_replays_the_rest("compute iters=6000", 5, false);
}

/// A state taken at a `hlt` exit: the backup's replay must wait for the interrupt logged at
/// that exit before it runs the guest (a guest whose only exits while idle are halts could
/// never be given a backup while halts were not points).
#[test]
fn states_saved_where_the_guest_halted_replay_the_rest() {
    let points = every_saved_state_replays_the_rest("ticker ticks=30", 9, true);
    assert!(
        points.iter().all(|p| p.halted),
        "a state was taken elsewhere: {points:?}"
    );
}

/// Taking a state completes the exit's I/O instruction early (RIP past an `out`, an `in`'s
/// value loaded). A replay that runs through that exit sees the registers before that, one that
/// starts from the state after it: entries logged at that exit after the state (a timer
/// interrupt delivered there) must not check registers either way, or one of the two
/// replays diverges. Here the recording takes a state at every exit of a guest that prints a
/// line per iteration (the console's status polls are `in` exits, and ticks land at them),
/// and is then replayed from the start. Without the fix it diverged at its first such tick.
#[test]
fn a_recording_that_gave_states_at_its_exits_replays_from_the_start() {
    let cmdline = "compute iters=300 report=1";
    // `every: 0`: a state is wanted at every exit, also where a tick is then delivered.
    let mut sink = SavingSink {
        frames: Vec::new(),
        every: 0,
        saved: Vec::new(),
        max: usize::MAX,
        at_halts_only: false,
        keep_pages: false,
    };
    let console = record_giving_states(cmdline, &mut sink);
    // Entries at an exit where a state was taken: interrupts delivered at a port access.
    let at_state_exits = sink
        .frames
        .iter()
        .filter(|f| {
            f.state_check == 0 && matches!(f.entry, Entry::Irq { .. } | Entry::Inject { .. })
        })
        .count();
    assert!(
        at_state_exits > 0,
        "no interrupt was logged at an exit where a state was taken ({} states, {} entries)",
        sink.saved.len(),
        sink.frames.len()
    );
    let mut b = machine(cmdline);
    let mut source = VecSource::new(sink.frames.iter().cloned());
    let mut replayed = Vec::new();
    let (result, _) = replay_from(
        &mut b,
        &mut source,
        &mut replayed,
        ApproachTuning::for_attempt(1),
        None,
    );
    let report = result.unwrap_or_else(|e| panic!("the recording did not replay: {e}"));
    assert!(matches!(report.outcome, Outcome::PowerOff { code: 0 }));
    assert_eq!(replayed, console);
}

#[test]
fn page_records_overwrite_what_the_backup_held_including_with_zeros() {
    let m = machine("ticker ticks=1");
    let page = |m: &Machine, i: usize| m.memory()[i * PAGE..(i + 1) * PAGE].to_vec();
    let mut records = Vec::new();
    encode_page(&mut records, 5, &[0xab; PAGE]);
    encode_page(&mut records, 6, &[0; PAGE]);
    assert_eq!(install_pages(&m, &records).expect("install"), 2);
    assert_eq!(page(&m, 5), vec![0xab; PAGE]);
    assert_eq!(page(&m, 6), vec![0; PAGE]);
    // A later round says page 5 became zero: the data must go, not be skipped.
    records.clear();
    encode_page(&mut records, 5, &[0; PAGE]);
    install_pages(&m, &records).expect("install");
    assert_eq!(page(&m, 5), vec![0; PAGE]);
}

#[test]
fn a_state_from_another_build_or_with_damaged_bytes_is_refused_clearly() {
    let mut m = machine("ticker ticks=1");
    let blob = MachineState::save(&mut m, LogPoint::default())
        .expect("save")
        .encode()
        .expect("encode");
    let decoded = MachineState::decode(&blob).expect("the state as encoded decodes");
    assert_eq!(
        decoded.encode().expect("re-encode"),
        blob,
        "not a fixed point"
    );
    let refused = |bytes: &[u8]| match MachineState::decode(bytes) {
        Ok(_) => panic!("decoded {} damaged bytes", bytes.len()),
        Err(e) => e.to_string(),
    };

    // Version 1 (bincode, before this layout) and any other version: named, both sides said.
    let mut other = blob.clone();
    other[4..8].copy_from_slice(&1u32.to_le_bytes());
    let e = refused(&other);
    assert!(
        e.contains("version 1") && e.contains("compatible builds"),
        "{e}"
    );
    // Not a machine state at all (e.g. the old encoding, which started with the version).
    let e = refused(&blob[4..]);
    assert!(e.contains("not a machine state"), "{e}");
    // Cut anywhere, or with bytes after the end: malformed, never a panic or a partial state.
    for cut in [0, 3, 7, 8, 9, blob.len() / 2, blob.len() - 1] {
        let e = refused(&blob[..cut]);
        assert!(e.contains("malformed"), "cut at {cut}: {e}");
    }
    let mut longer = blob.clone();
    longer.push(0);
    let e = refused(&longer);
    assert!(e.contains("1 bytes after the end"), "{e}");
}
