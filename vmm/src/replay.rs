//! Replaying a log: the guest runs with every outside input and interrupt taken from the log,
//! at the recorded positions, and every digest is checked. The first mismatch stops replay and
//! says where and what.

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};

use logging_channel::format::{EndReason, Entry, Frame, InputSource, Position, Regs};
use logging_channel::netframe;

use crate::checkpoint::{CheckpointPolicy, CheckpointSlot, EntryCounts, Rewindable};
use crate::clock::{HostClock, SystemClock};
use crate::console::ConsoleStream;
use crate::devices::DeviceEnv;
use crate::devices::virtio::net::Received;
use crate::digest::{self, format_regs, state_check};
use crate::exit::Stop;
use crate::machine::Machine;
use crate::outcome::{Outcome, RunError, RunStats};
use crate::precise::{ApproachStep, ApproachTuning, KickFloor, RateEstimate, plan};
use crate::snapshot::{LogPoint, SnapshotError};
use crate::source::{EntrySource, SourceError};
use crate::vcpu::kick::{self, ThreadTimer};
use crate::vcpu::{cpl, regs_from_kvm};
use crate::vcpu_core::{self, Core, InjectError};

/// Why a replay did not reach the recorded end.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The replayed guest differs from the recording at entry `seq`: a state check, digest,
    /// interrupt vector, input read or exit that does not match. The log and this replay disagree.
    #[error("replay diverged at entry #{seq} ({entry}): {what}")]
    Divergence {
        /// The entry where it showed.
        seq: u64,
        /// That entry, described.
        entry: String,
        /// What differed.
        what: String,
    },
    /// The log (or stream) ended without an `End` entry; everything in it was replayed.
    #[error("the log ends after entry {} (it is incomplete); replayed everything up to there, {exits} guest exits", last_seq.map_or("(none)".to_string(), |s| format!("#{s}")))]
    LogEnded {
        /// The last entry applied, if any.
        last_seq: Option<u64>,
        /// Guest exits replayed.
        exits: u64,
    },
    /// A timed kick landed so late that the guest ran past a recorded position. The replay is
    /// not wrong, only lost: run it again (from a checkpoint, or from the start) more cautiously.
    #[error(
        "replay overshot entry #{seq} ({entry}): a timed kick landed late and the guest ran past it (counter {count}, recorded {target})"
    )]
    Overshot {
        /// The entry whose position the guest ran past.
        seq: u64,
        /// That entry, described.
        entry: String,
        /// The counter where the guest stopped.
        count: u64,
        /// The recorded counter.
        target: u64,
        /// Console bytes this attempt printed: the next attempt skips them (replay is deterministic).
        console_bytes: u64,
    },
    /// The log holds an entry this build's replay cannot apply (e.g. network frames when no
    /// network device is attached): not a divergence, the replay never got to compare.
    #[error("cannot replay entry #{seq} ({entry}): {what}")]
    Unsupported {
        /// The entry.
        seq: u64,
        /// That entry, described.
        entry: String,
        /// Why it cannot be applied.
        what: String,
    },
    /// A checkpoint of the replay could not be taken or put back.
    #[error("replay checkpoint: {0}")]
    Checkpoint(#[source] SnapshotError),
    /// The run failed as a live run can (KVM, vCPU, console).
    #[error(transparent)]
    Run(#[from] RunError),
    /// The entries could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// One line naming an entry, for messages.
pub fn describe(entry: &Entry) -> String {
    let pos = describe_pos(entry.pos());
    match entry {
        Entry::Input { source, value, .. } => format!("input {source:?}={value} at {pos}"),
        Entry::Irq { line, .. } => format!("irq line {line} at {pos}"),
        Entry::Inject { vector, .. } => format!("inject vector {vector:#x} at {pos}"),
        Entry::ConsoleInput { bytes, .. } => {
            format!("console input of {} bytes at {pos}", bytes.len())
        }
        Entry::Digest { .. } => format!("digest at {pos}"),
        Entry::End { reason, .. } => format!("end ({reason}) at {pos}"),
        Entry::Output { console_bytes, .. } => {
            format!("output up to console byte {console_bytes} at {pos}")
        }
        Entry::NetRx { frame, .. } | Entry::NetTx { frame, .. } => format!(
            "{} frame of {} bytes at {pos}: {}",
            entry.kind().name(),
            frame.len(),
            netframe::summary(frame)
        ),
    }
}

/// One line naming a position, for messages.
pub fn describe_pos(pos: &Position) -> String {
    match pos {
        Position::AtExit { exits } => format!("exit {exits}"),
        Position::Precise {
            exits,
            counter,
            regs,
        } => {
            format!("exit {exits} + counter {counter}, rip {:#x}", regs.rip)
        }
    }
}

/// Where the replayed vCPU stands relative to recorded positions.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Here {
    /// Stopped at guest exit N, nothing executed since.
    AtExit(u64),
    /// Stopped exactly at a recorded mid-execution position.
    Precise { exits: u64, counter: u64 },
}

struct ReplayEnv<'a> {
    source: &'a mut dyn EntrySource,
    /// Set when the log may end because its primary is gone (a live backup): a read past the
    /// end then takes the time from this clock, which continues the primary's, instead of
    /// failing. Only a backup that goes live ever runs on from such a state.
    after_end: Option<&'a mut AfterEnd>,
    /// Number the exit being handled will get.
    exit: u64,
    /// Inputs consumed at this exit, checked against the vCPU's registers once the exit is
    /// handled (the registers cannot be read while KVM's exit data is borrowed).
    consumed: Vec<Frame>,
    failure: Option<ReplayError>,
}

impl ReplayEnv<'_> {
    fn take(&mut self, want: InputSource) -> u64 {
        if self.failure.is_some() {
            return 0;
        }
        let exit = self.exit;
        match self.source.peek() {
            Ok(Some(Frame {
                entry:
                    Entry::Input {
                        pos: Position::AtExit { exits },
                        source,
                        value,
                    },
                ..
            })) if *exits == exit && *source == want => {
                let v = *value;
                if let Ok(Some(f)) = self.source.pop() {
                    self.consumed.push(f);
                }
                v
            }
            Ok(Some(f)) => {
                self.failure = Some(ReplayError::Divergence {
                    seq: f.seq,
                    entry: describe(&f.entry),
                    what: format!(
                        "the replayed guest read {want:?} at exit {exit}; the log has no such input next"
                    ),
                });
                0
            }
            Ok(None) => match self.after_end.as_deref_mut() {
                Some(after) => after.read(want),
                None => {
                    self.failure = Some(ReplayError::LogEnded {
                        last_seq: None,
                        exits: exit,
                    });
                    0
                }
            },
            Err(e) => {
                self.failure = Some(e.into());
                0
            }
        }
    }
}

impl DeviceEnv for ReplayEnv<'_> {
    fn clock_ns(&mut self) -> u64 {
        self.take(InputSource::Clock)
    }
    fn wall_clock_unix_secs(&mut self) -> u64 {
        self.take(InputSource::WallClock)
    }
}

/// Time for a live backup whose log ended in the middle of an exit (see `ReplayEnv`).
#[derive(Debug)]
struct AfterEnd {
    /// Latest time the log showed (entry stamps and clock readings).
    last_ns: u64,
    clock: Option<SystemClock>,
}

impl AfterEnd {
    fn read(&mut self, want: InputSource) -> u64 {
        let last = self.last_ns;
        let clock = *self
            .clock
            .get_or_insert_with(|| SystemClock::continuing(last));
        match want {
            InputSource::Clock => clock.monotonic_ns(),
            InputSource::WallClock => clock.wall_unix_secs(),
        }
    }

    fn saw(&mut self, frame: &Frame) {
        self.last_ns = self.last_ns.max(frame.t_ns);
        if let Entry::Input {
            source: InputSource::Clock,
            value,
            ..
        } = frame.entry
        {
            self.last_ns = self.last_ns.max(value);
        }
    }
}

/// Compares an entry's recorded state check with the replayed guest's.
fn verify_state_check(recorded: u64, replayed: u64, last_seq: Option<u64>) -> Result<(), String> {
    if recorded == 0 || recorded == replayed {
        return Ok(());
    }
    let since = match last_seq {
        Some(s) => format!(
            "the replay matched the recording up to entry #{s}, so the cause lies in or after it"
        ),
        None => {
            "no entry before it was applied, so the guest diverged from its very start".to_string()
        }
    };
    Err(format!(
        "the replayed guest's state (registers or console output so far) differs from the recording at this entry's position; {since}"
    ))
}

/// Result of a replay that reached the recorded end.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// How the recorded run ended.
    pub outcome: Outcome,
    /// Entries applied.
    pub entries: u64,
    /// Digests compared and found equal.
    pub digests_verified: u64,
    /// What the replay did and cost.
    pub stats: RunStats,
}

struct Replayer<'a> {
    m: &'a mut Machine,
    source: &'a mut dyn EntrySource,
    console: &'a mut dyn Write,
    tuning: ApproachTuning,
    rate: RateEstimate,
    /// Shortest kick worth arming on this host, learnt from kicks that stopped the guest before
    /// it executed a counted instruction.
    kick_floor: KickFloor,
    timer: ThreadTimer,
    stats: RunStats,
    /// The exit step and the guest-exit count every position is built on.
    core: Core,
    here: Here,
    halted: bool,
    power_off: Option<u32>,
    shutdown: bool,
    /// The replayed guest asked for a reset (port, value).
    reset: Option<(u16, u8)>,
    digests_verified: u64,
    last_seq: Option<u64>,
    console_stream: ConsoleStream,
    in_approach: bool,
    /// Console bytes the primary had released, as its `Output` entries said.
    released: u64,
    after_end: AfterEnd,
    /// Whether the log may end because its primary died (a live backup).
    live_source: bool,
    /// Frames the replayed guest transmitted that no `NetTx` entry has matched yet.
    transmitted: VecDeque<Vec<u8>>,
    /// The last frames the replayed guest transmitted (matched), newest last: what a backup
    /// going live sends again, since it cannot know which of them the old primary released.
    recent_frames: VecDeque<Vec<u8>>,
    /// Where checkpoints go, if this replay takes them (its source can hand entries out again).
    checkpoints: Option<&'a mut CheckpointSlot>,
    /// The tuning to go back to at the next checkpoint, after a rewind made this replay
    /// cautious.
    after_checkpoint: Option<ApproachTuning>,
    /// Guest exits at the start of this attempt (`stats.exits` counts those before).
    start_exits: u64,
}

/// How many transmitted frames a replay keeps for going live.
pub const RECENT_FRAMES: usize = 32;

impl Replayer<'_> {
    fn diverged(&self, frame: &Frame, what: impl Into<String>) -> ReplayError {
        ReplayError::Divergence {
            seq: frame.seq,
            entry: describe(&frame.entry),
            what: what.into(),
        }
    }

    fn is_due(here: &Here, pos: &Position) -> bool {
        match (pos, here) {
            (Position::AtExit { exits }, Here::AtExit(e)) => exits == e,
            (
                Position::Precise { exits, counter, .. },
                Here::Precise {
                    exits: e,
                    counter: c,
                },
            ) => exits == e && counter == c,
            _ => false,
        }
    }

    /// Applies one entry at the current position. `Some` when the recorded run ended here.
    fn apply(&mut self, frame: &Frame) -> Result<Option<Outcome>, ReplayError> {
        let now = state_check(
            &regs_from_kvm(&self.m.vcpu.regs()),
            self.console_stream.hash,
        );
        if let Err(what) = verify_state_check(frame.state_check, now, self.last_seq) {
            return Err(self.diverged(frame, what));
        }
        self.last_seq = Some(frame.seq);
        self.after_end.saw(frame);
        match &frame.entry {
            Entry::Input { .. } => {
                return Err(self.diverged(
                    frame,
                    "the recorded guest read this input here; the replayed guest did not",
                ));
            }
            Entry::Irq { line, .. } => vcpu_core::tick(&mut self.m.bus, *line),
            Entry::Inject { vector, pos } => {
                match vcpu_core::deliver_recorded(&mut self.m.bus, &mut self.m.vcpu, *vector) {
                    Ok(()) => {}
                    Err(InjectError::Vcpu(e)) => return Err(RunError::from(e).into()),
                    Err(e) => return Err(self.diverged(frame, e.to_string())),
                }
                self.halted = false;
                if pos.is_precise() {
                    self.stats.interrupts_precise += 1;
                } else {
                    self.stats.interrupts_at_exit += 1;
                }
            }
            Entry::ConsoleInput { bytes, .. } => {
                self.m.bus.console_input(bytes);
            }
            Entry::Output {
                console_bytes,
                released,
                ..
            } => {
                if *console_bytes != self.console_stream.bytes {
                    return Err(self.diverged(
                        frame,
                        format!(
                            "the replayed console has written {} bytes here",
                            self.console_stream.bytes
                        ),
                    ));
                }
                self.released = self.released.max(*released);
            }
            // A log with frames for a machine without a card (a hand-made or damaged header)
            // cannot be replayed faithfully: refused at its first frame, never skipped (a
            // skipped receive is a divergence later; a skipped transmit would go unchecked).
            Entry::NetRx { .. } | Entry::NetTx { .. } if self.m.bus.devices.nic.is_none() => {
                return Err(ReplayError::Unsupported {
                    seq: frame.seq,
                    entry: describe(&frame.entry),
                    what: "this log has network frames but the replayed guest has no network card \
                           (a log file's header names the card; `replay --listen` needs the \
                           primary's card given with --mac)"
                        .into(),
                });
            }
            Entry::NetRx { frame: bytes, .. } => match self.m.bus.net_receive(bytes) {
                Some(
                    Received::Delivered { .. }
                    | Received::BadBuffer { .. }
                    | Received::BrokeTheQueue,
                ) => {}
                Some(r @ (Received::Runt | Received::Oversized)) => {
                    return Err(self.diverged(
                        frame,
                        format!(
                            "the recorded card took this {}-byte frame; the replayed card drops it unseen ({r:?})",
                            bytes.len()
                        ),
                    ));
                }
                Some(Received::NoBuffer) => {
                    return Err(self.diverged(
                        frame,
                        "the recorded guest had a receive buffer for this frame; the replayed guest has none",
                    ));
                }
                None => {
                    return Err(self.diverged(
                        frame,
                        "the recorded guest's network driver took this frame; the replayed guest's is not running",
                    ));
                }
            },
            Entry::NetTx { frame: bytes, .. } => match self.transmitted.pop_front() {
                Some(sent) if sent == *bytes => {
                    if self.recent_frames.len() == RECENT_FRAMES {
                        self.recent_frames.pop_front();
                    }
                    self.recent_frames.push_back(sent);
                }
                Some(sent) => {
                    return Err(self.diverged(
                        frame,
                        format!(
                            "the replayed guest transmitted another frame here ({})",
                            netframe::summary(&sent)
                        ),
                    ));
                }
                None => {
                    return Err(self.diverged(
                        frame,
                        "the recorded guest transmitted this frame here; the replayed guest did not",
                    ));
                }
            },
            Entry::Digest {
                digest: recorded, ..
            } => {
                let diff = recorded.differences(&digest::take(self.m));
                if !diff.is_empty() {
                    return Err(
                        self.diverged(frame, format!("state digest mismatch: {}", diff.join("; ")))
                    );
                }
                self.digests_verified += 1;
            }
            Entry::End { reason, .. } => {
                return match reason {
                    EndReason::PowerOff { code } if self.power_off == Some(*code) => Ok(Some(Outcome::PowerOff { code: *code })),
                    EndReason::PowerOff { code } => Err(self.diverged(
                        frame,
                        format!("the recorded guest powered off here with code {code}; the replayed guest did not ({:?})", self.power_off),
                    )),
                    EndReason::Shutdown if self.shutdown => Err(RunError::triple_fault(&self.m.vcpu).into()),
                    EndReason::Shutdown => Err(self.diverged(frame, "the recorded guest triple-faulted here; the replayed guest did not")),
                    EndReason::Reset { port, value } if self.reset == Some((*port, *value)) => Ok(Some(Outcome::Reset { port: *port, value: *value })),
                    EndReason::Reset { port, value } => Err(self.diverged(
                        frame,
                        format!("the recorded guest asked for a reset here ({port:#x} <- {value:#04x}); the replayed guest did not ({:?})", self.reset),
                    )),
                    EndReason::Stopped => Ok(Some(Outcome::Stopped)),
                };
            }
        }
        Ok(None)
    }

    fn run(&mut self) -> Result<Outcome, ReplayError> {
        loop {
            loop {
                let due = match self.source.peek()? {
                    Some(frame) => Self::is_due(&self.here, frame.entry.pos()),
                    None => false,
                };
                if !due {
                    break;
                }
                let Some(frame) = self.source.pop()? else {
                    break;
                };
                if let Some(outcome) = self.apply(&frame)? {
                    return Ok(outcome);
                }
            }
            let Some(next) = self.source.peek()? else {
                return Err(ReplayError::LogEnded {
                    last_seq: self.last_seq,
                    exits: self.core.exits(),
                });
            };
            let next = next.clone();
            if let Some(sent) = self.transmitted.front() {
                return Err(self.diverged(
                    &next,
                    format!(
                        "the replayed guest transmitted a frame by exit {} that the recording did not log ({})",
                        self.core.exits(),
                        netframe::summary(sent)
                    ),
                ));
            }
            if let Some(code) = self.power_off {
                return Err(self.diverged(
                    &next,
                    format!(
                        "the replayed guest powered off at exit {} (code {code}); the log goes on",
                        self.core.exits()
                    ),
                ));
            }
            if let Some((port, value)) = self.reset {
                return Err(self.diverged(
                    &next,
                    format!(
                        "the replayed guest asked for a reset ({port:#x} <- {value:#04x}) at exit {}; the log goes on",
                        self.core.exits()
                    ),
                ));
            }
            if self.shutdown {
                return Err(self.diverged(
                    &next,
                    format!(
                        "the replayed guest triple-faulted at exit {}; the log goes on",
                        self.core.exits()
                    ),
                ));
            }
            if self.halted {
                return Err(self.diverged(&next, format!("the replayed guest halted at exit {} and the log has no interrupt for it there", self.core.exits())));
            }
            self.checkpoint_if_due()?;
            let pos = next.entry.pos();
            if pos.exits() < self.core.exits() {
                return Err(self.diverged(
                    &next,
                    format!(
                        "the replayed guest is already at exit {}",
                        self.core.exits()
                    ),
                ));
            }
            match pos {
                Position::Precise {
                    exits,
                    counter,
                    regs,
                } if *exits == self.core.exits() => {
                    self.approach(&next, *counter, regs)?;
                    self.here = Here::Precise {
                        exits: *exits,
                        counter: *counter,
                    };
                }
                Position::AtExit { exits } if *exits == self.core.exits() => {
                    return Err(self.diverged(
                        &next,
                        "this entry cannot be applied at this point of the replayed run",
                    ));
                }
                _ => self.run_to_next_exit(&next)?,
            }
        }
    }

    /// Saves the machine if a checkpoint is due and the replay stands where one can be taken:
    /// at a guest exit, every entry due there applied, nothing pending (the primary's rule for
    /// a state transfer, plus the replay's own: no transmitted frame still unmatched).
    fn checkpoint_if_due(&mut self) -> Result<(), ReplayError> {
        let Some(slot) = self.checkpoints.as_deref_mut() else {
            return Ok(());
        };
        if !slot.due()
            || !matches!(self.here, Here::AtExit(_))
            || self.halted
            || !self.transmitted.is_empty()
        {
            return Ok(());
        }
        // An I/O exit's result (an `in`'s value) reaches the registers only at the next entry.
        self.m
            .vcpu
            .complete_pending_exit()
            .map_err(RunError::from)?;
        let point = LogPoint {
            exits: self.core.exits(),
            counter: self.m.counter.read().map_err(RunError::from)?,
            mid_execution: false,
            halted: false,
            console_bytes: self.console_stream.bytes,
            console_hash: self.console_stream.hash,
            clock_ns: self.after_end.last_ns,
            next_seq: self.last_seq.map_or(0, |s| s + 1),
            released: self.released,
        };
        let counts = EntryCounts {
            exits: self.stats.exits + (self.core.exits() - self.start_exits),
            interrupts_at_exit: self.stats.interrupts_at_exit,
            interrupts_precise: self.stats.interrupts_precise,
            digests_verified: self.digests_verified,
        };
        slot.take(
            self.m,
            point,
            counts,
            self.recent_frames.iter().cloned().collect(),
        )
        .map_err(ReplayError::Checkpoint)?;
        self.source.checkpointed();
        if let Some(t) = self.after_checkpoint.take() {
            self.tuning = t;
        }
        Ok(())
    }

    fn run_to_next_exit(&mut self, next: &Frame) -> Result<(), ReplayError> {
        loop {
            self.m.vcpu.clear_immediate_exit();
            let stop = self.run_once()?;
            if stop.is_guest_exit() {
                return Ok(());
            }
            if let Stop::Debug { pc } = stop {
                return Err(self.diverged(next, format!("unexpected debug exit at {pc:#x}")));
            }
        }
    }

    /// One `KVM_RUN`; handles a guest exit completely (inputs from the log, console output).
    /// Callers clear `immediate_exit` themselves, before arming a kick: clearing it here
    /// would lose a kick that fires between arming and entering the guest.
    fn run_once(&mut self) -> Result<Stop, ReplayError> {
        let mut env = ReplayEnv {
            source: &mut *self.source,
            after_end: if self.live_source {
                Some(&mut self.after_end)
            } else {
                None
            },
            exit: self.core.exits() + 1,
            consumed: Vec::new(),
            failure: None,
        };
        let stop = self.core.step(
            &mut self.m.vcpu,
            &mut self.m.bus,
            &mut env,
            self.m.counter.as_ref(),
        );
        let stop = stop.map_err(|e| RunError::with_state(e, &self.m.vcpu, self.m.memory()))?;
        let (consumed, failure) = (env.consumed, env.failure);
        if !consumed.is_empty() {
            let now = state_check(
                &regs_from_kvm(&self.m.vcpu.regs()),
                self.console_stream.hash,
            );
            for f in &consumed {
                if let Err(what) = verify_state_check(f.state_check, now, self.last_seq) {
                    return Err(self.diverged(f, what));
                }
                self.last_seq = Some(f.seq);
                self.after_end.saw(f);
            }
        }
        if let Some(failure) = failure {
            return Err(failure);
        }
        if stop.is_guest_exit() {
            self.here = Here::AtExit(self.core.exits());
            // A guest exit in the middle of an approach means the guest went past a recorded
            // position: whatever it printed there is not what the recording printed.
            if !self.in_approach {
                self.console_stream
                    .forward(&mut self.m.bus, self.console)
                    .map_err(RunError::Console)?;
                if let Some(nic) = self.m.bus.devices.nic.as_mut() {
                    self.transmitted.extend(nic.take_transmitted());
                }
            }
            match stop {
                Stop::Halt => self.halted = true,
                Stop::Shutdown => self.shutdown = true,
                _ => {}
            }
            if let Some(code) = self.m.bus.devices.debug_exit.take_exit_request() {
                self.power_off = Some(code);
            }
            if let Some(request) = self.m.bus.take_reset_request() {
                self.reset = Some(request);
            }
        }
        Ok(stop)
    }

    /// Runs the guest forward to instruction count `target` at registers `regs`, without
    /// passing it, and stops there.
    fn approach(&mut self, next: &Frame, target: u64, regs: &Regs) -> Result<(), ReplayError> {
        let started = Instant::now();
        self.in_approach = true;
        let result = self.approach_inner(next, target, regs);
        self.in_approach = false;
        self.timer.disarm().map_err(RunError::Timer)?;
        self.m.vcpu.set_breakpoint(None).map_err(RunError::from)?;
        self.stats.approach += started.elapsed();
        result
    }

    fn approach_inner(
        &mut self,
        next: &Frame,
        target: u64,
        want: &Regs,
    ) -> Result<(), ReplayError> {
        let mut last_step_was_kick = false;
        loop {
            let count = self.m.counter.read().map_err(RunError::from)?;
            let now = regs_from_kvm(&self.m.vcpu.regs());
            let level = cpl(&self.m.vcpu.sregs());
            if count == target && now == *want && level == 0 {
                return Ok(());
            }
            if count > target && last_step_was_kick {
                return Err(ReplayError::Overshot {
                    seq: next.seq,
                    entry: describe(&next.entry),
                    count,
                    target,
                    console_bytes: self.console_stream.bytes,
                });
            }
            if count > target {
                return Err(self.diverged(
                    next,
                    format!(
                        "the replayed guest passed the recorded position: counter {count} (recorded {target}), registers now:\n{}",
                        format_regs(&now)
                    ),
                ));
            }
            // Same count and rip but other registers: a `rep` string instruction still running
            // differs only in rcx/rsi/rdi (step on); anything else is a divergence.
            let rep_in_progress = Regs {
                rcx: want.rcx,
                rsi: want.rsi,
                rdi: want.rdi,
                ..now
            } == *want;
            if count == target && now.rip == want.rip && level == 0 && !rep_in_progress {
                return Err(self.diverged(
                    next,
                    format!(
                        "at the recorded position the registers differ: {}",
                        want.differences(&now).join("; ")
                    ),
                ));
            }
            let remaining = target - count;
            self.m.vcpu.clear_immediate_exit();
            tracing::debug!(count, target, remaining, level, rip = now.rip, "approach");
            // Native CPL3 code does not move the counter and cannot be stepped on this host: run
            // to the recorded rip, which the guest reaches after it re-enters the kernel. At
            // the recorded count but elsewhere, the instructions in between are ones the
            // counter skips (PVM does not count `sti`, for one): step through them.
            let step = if level != 0 {
                ApproachStep::Breakpoint
            } else if remaining == 0 {
                ApproachStep::SingleStep
            } else {
                let tuning = if self.source.final_stretch() {
                    ApproachTuning::final_stretch()
                } else {
                    self.tuning
                };
                plan(
                    remaining,
                    self.rate.insn_ns(),
                    &self.kick_floor.apply(tuning),
                )
            };
            last_step_was_kick = matches!(step, ApproachStep::Kick { .. });
            let stop = match step {
                ApproachStep::Kick { after_ns } => {
                    self.stats.approach_kicks += 1;
                    // The previous step may have left a breakpoint or single-stepping on (each
                    // step sets the debug state it needs and leaves it, so that a run of
                    // breakpoint hits re-arms nothing).
                    self.m.vcpu.set_breakpoint(None).map_err(RunError::from)?;
                    let t0 = Instant::now();
                    self.timer
                        .arm(Duration::from_nanos(after_ns))
                        .map_err(RunError::Timer)?;
                    let stop = self.run_once()?;
                    self.timer.disarm().map_err(RunError::Timer)?;
                    let ran = self
                        .m
                        .counter
                        .read()
                        .map_err(RunError::from)?
                        .saturating_sub(count);
                    let took = t0.elapsed();
                    self.stats.kick_time += took;
                    let took_ns = took.as_nanos() as f64;
                    if stop == Stop::Kicked {
                        self.rate.observe(ran, took_ns);
                        // Idle only if the guest did not move at all: code the counter does not
                        // see (CPL3, `sti`) changes the registers.
                        let idle = ran == 0 && regs_from_kvm(&self.m.vcpu.regs()) == now;
                        if idle {
                            self.stats.idle_kicks += 1;
                        }
                        self.kick_floor.kicked(after_ns as f64, idle);
                        if self.kick_floor.ns() > self.tuning.min_kick_ns {
                            self.stats.kick_floor_ns =
                                self.stats.kick_floor_ns.max(self.kick_floor.ns());
                        }
                    }
                    tracing::debug!(
                        after_ns,
                        took_ns,
                        ran,
                        remaining,
                        ?stop,
                        rate = self.rate.insn_ns(),
                        "kick step"
                    );
                    stop
                }
                ApproachStep::Breakpoint => {
                    self.stats.approach_steps += 1;
                    self.stats.breakpoint_runs += 1;
                    let armed = Instant::now();
                    self.m
                        .vcpu
                        .set_breakpoint(Some(want.rip))
                        .map_err(RunError::from)?;
                    let t0 = Instant::now();
                    let stop = self.run_once()?;
                    self.stats.breakpoint_time += armed.elapsed();
                    let after = self.m.counter.read().map_err(RunError::from)?;
                    // A breakpoint run measures the guest's speed as well as a kick does (and
                    // is the only measurement when kicks are too risky to start with).
                    if stop != Stop::Kicked && level == 0 {
                        let ran = after.saturating_sub(count);
                        self.rate.observe(ran, t0.elapsed().as_nanos() as f64);
                    }
                    tracing::debug!(
                        ?stop,
                        count = self.m.counter.read().unwrap_or(0),
                        rip = self.m.vcpu.regs().rip,
                        "breakpoint run"
                    );
                    if let Stop::Debug { .. } = stop {
                        let r = regs_from_kvm(&self.m.vcpu.regs());
                        if !(after == target && r == *want) && after < target {
                            // Not the instance we want: step over the breakpoint (RF does not
                            // get past it on this host; one single step does). The next
                            // breakpoint run re-arms it.
                            let t = Instant::now();
                            self.m.vcpu.set_single_step(true).map_err(RunError::from)?;
                            let s = self.run_once()?;
                            self.stats.step_overs += 1;
                            self.stats.step_over_time += t.elapsed();
                            self.check_no_exit(next, s, target)?;
                        }
                    }
                    stop
                }
                ApproachStep::SingleStep => {
                    self.stats.approach_steps += 1;
                    let t = Instant::now();
                    self.m.vcpu.set_single_step(true).map_err(RunError::from)?;
                    let stop = self.run_once()?;
                    self.stats.single_steps += 1;
                    self.stats.single_step_time += t.elapsed();
                    stop
                }
            };
            if last_step_was_kick && stop.is_guest_exit() {
                return Err(ReplayError::Overshot {
                    seq: next.seq,
                    entry: describe(&next.entry),
                    count: self.m.counter.read().map_err(RunError::from)?,
                    target,
                    console_bytes: self.console_stream.bytes,
                });
            }
            self.check_no_exit(next, stop, target)?;
        }
    }

    fn check_no_exit(&self, next: &Frame, stop: Stop, target: u64) -> Result<(), ReplayError> {
        if stop.is_guest_exit() {
            return Err(self.diverged(
                next,
                format!(
                    "the replayed guest reached exit {} before the recorded counter {target}",
                    self.core.exits()
                ),
            ));
        }
        Ok(())
    }
}

/// Replays `source` on a freshly booted `m` until the recorded end.
pub fn replay(
    m: &mut Machine,
    source: &mut dyn EntrySource,
    console: &mut dyn Write,
    tuning: ApproachTuning,
) -> Result<ReplayReport, ReplayError> {
    let (report, _) = replay_from(m, source, console, tuning, None);
    report
}

/// Where a live backup's replay stopped when its log ended: what it needs to go live.
#[derive(Debug, Clone)]
pub struct Stopped {
    /// Guest exits replayed.
    pub exits: u64,
    /// The console as far as the replay got.
    pub console: ConsoleStream,
    /// The guest is halted at the last exit, waiting for an interrupt.
    pub halted: bool,
    /// Seq of the last entry applied.
    pub last_seq: Option<u64>,
    /// Console bytes the old primary had released, as far as its log said.
    pub released: u64,
    /// A clock continuing the primary's time base.
    pub clock: SystemClock,
    /// The last frames the guest transmitted, newest last (up to [`RECENT_FRAMES`] that the
    /// log confirmed, then any it had no entry for yet): the old primary may not have
    /// released them.
    pub recent_frames: Vec<Vec<u8>>,
    /// What the replay did and what it cost, as a finished replay's report has it.
    pub stats: RunStats,
}

/// Replays `source` on `m`, from the start or (for a backup that received the primary's
/// state) from `from`. With `from` set, the log may end because the primary is gone: the
/// second result then says where the guest stands, for going live.
pub fn replay_from(
    m: &mut Machine,
    source: &mut dyn EntrySource,
    console: &mut dyn Write,
    tuning: ApproachTuning,
    from: Option<LogPoint>,
) -> (Result<ReplayReport, ReplayError>, Option<Stopped>) {
    let (result, stopped, _) = replay_attempt(
        m,
        source,
        console,
        tuning,
        Attempt {
            point: from.unwrap_or_default(),
            live: from.is_some(),
            recent_frames: Vec::new(),
            checkpoints: None,
            after_checkpoint: None,
            stats: RunStats::default(),
            digests_verified: 0,
        },
    );
    (result, stopped)
}

/// Where one run of the replay loop starts, and what it carries over from an earlier one.
struct Attempt<'s> {
    point: LogPoint,
    /// The source is a live stream that may end because its primary is gone.
    live: bool,
    recent_frames: Vec<Vec<u8>>,
    checkpoints: Option<&'s mut CheckpointSlot>,
    after_checkpoint: Option<ApproachTuning>,
    /// Counts so far: the work of earlier attempts, and the entries applied up to `point`.
    stats: RunStats,
    digests_verified: u64,
}

/// A replay that overshot went back to its latest checkpoint.
#[derive(Debug, Clone)]
pub struct Rewind {
    /// The entry the guest ran past.
    pub overshot_seq: u64,
    /// That entry, described.
    pub entry: String,
    /// The first entry after the checkpoint: replay goes on from there.
    pub from_seq: u64,
    /// Overshoots since the last checkpoint taken, this one included.
    pub in_a_row: u32,
}

/// Overshoots in a row (no checkpoint taken between them) after which a replay gives up: the
/// first is retried with the cautious tuning, the second with the final-stretch one.
pub const MAX_REWINDS_IN_A_ROW: u32 = 2;

/// [`replay_from`], taking checkpoints as `policy` says: when a timed kick lands late and the
/// guest runs past a recorded position, the machine goes back to the latest checkpoint and
/// the entries since are replayed again, cautiously until the next checkpoint, printing
/// nothing twice. `on_rewind` hears of each. An overshoot before the first checkpoint, past
/// what the source kept, or more than [`MAX_REWINDS_IN_A_ROW`] times in a row ends the replay
/// with [`ReplayError::Overshot`] as `replay_from` would.
pub fn replay_recovering(
    m: &mut Machine,
    source: &mut dyn EntrySource,
    console: &mut dyn Write,
    tuning: ApproachTuning,
    from: Option<LogPoint>,
    policy: CheckpointPolicy,
    on_rewind: &mut dyn FnMut(&Rewind),
) -> (Result<ReplayReport, ReplayError>, Option<Stopped>) {
    let mut source = Rewindable::new(source, policy.max_kept_bytes);
    let mut slot = CheckpointSlot::new(policy);
    let live = from.is_some();
    let mut point = from.unwrap_or_default();
    let mut recent_frames = Vec::new();
    // Console bytes (counted from the guest's start) some attempt already printed.
    let mut printed = point.console_bytes;
    let mut attempt_tuning = tuning;
    let mut after_checkpoint = None;
    let mut in_a_row = 0;
    let mut stats = RunStats::default();
    let mut digests_verified = 0;
    loop {
        let taken_before = slot.stats.taken;
        let mut skip = SkipWriter {
            skip: printed.saturating_sub(point.console_bytes),
            inner: &mut *console,
        };
        let (mut result, stopped, attempt_stats) = replay_attempt(
            m,
            &mut source,
            &mut skip,
            attempt_tuning,
            Attempt {
                point,
                live,
                recent_frames,
                checkpoints: Some(&mut slot),
                after_checkpoint,
                stats,
                digests_verified,
            },
        );
        if slot.stats.taken > taken_before {
            in_a_row = 0;
        }
        let rewind_to = match &result {
            Err(ReplayError::Overshot {
                seq,
                entry,
                console_bytes,
                ..
            }) if in_a_row < MAX_REWINDS_IN_A_ROW && source.can_rewind() => slot
                .latest
                .as_ref()
                .map(|cp| (cp, *seq, entry.clone(), *console_bytes)),
            _ => None,
        };
        let Some((cp, seq, entry, console_bytes)) = rewind_to else {
            let counted = |s: &mut RunStats| {
                s.checkpoints = slot.stats.taken;
                s.checkpoint_time = slot.stats.time;
                s.checkpoint_bytes = slot.stats.last_bytes;
                s.rewinds = slot.stats.rewinds;
                s.rewind_time = slot.stats.rewind_time;
            };
            if let Ok(report) = result.as_mut() {
                counted(&mut report.stats);
            }
            let mut stopped = stopped;
            if let Some(s) = stopped.as_mut() {
                counted(&mut s.stats);
            }
            return (result, stopped);
        };
        let restoring = Instant::now();
        if let Err(e) = cp.restore(m) {
            return (Err(ReplayError::Checkpoint(e)), None);
        }
        let took = restoring.elapsed();
        point = cp.point();
        recent_frames = cp.recent_frames.clone();
        // The work of every attempt counts; what was applied since the checkpoint is undone.
        stats = attempt_stats;
        cp.counts.put_back(&mut stats);
        digests_verified = cp.counts.digests_verified;
        source.rewind();
        slot.rewound(took);
        in_a_row += 1;
        printed = printed.max(console_bytes);
        attempt_tuning = ApproachTuning::for_attempt(in_a_row + 1);
        after_checkpoint = Some(tuning);
        on_rewind(&Rewind {
            overshot_seq: seq,
            entry,
            from_seq: point.next_seq,
            in_a_row,
        });
    }
}

/// Drops the first `skip` bytes written: what an earlier attempt already printed (replay is
/// deterministic, so an attempt from an earlier point prints the same bytes again).
pub struct SkipWriter<'a> {
    /// Bytes still to drop.
    pub skip: u64,
    /// Where the rest goes.
    pub inner: &'a mut dyn Write,
}

impl std::fmt::Debug for SkipWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkipWriter")
            .field("skip", &self.skip)
            .finish_non_exhaustive()
    }
}

impl Write for SkipWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let dropped = usize::try_from(self.skip)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        self.skip -= dropped as u64;
        if dropped < buf.len() {
            self.inner.write_all(&buf[dropped..])?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn replay_attempt(
    m: &mut Machine,
    source: &mut dyn EntrySource,
    console: &mut dyn Write,
    tuning: ApproachTuning,
    attempt: Attempt<'_>,
) -> (Result<ReplayReport, ReplayError>, Option<Stopped>, RunStats) {
    let started = Instant::now();
    // SAFETY: `m` is borrowed for this whole function, which the guard does not outlive; this
    // is the vCPU's thread.
    let _published = match unsafe { kick::publish(m.vcpu.immediate_exit_ptr()) } {
        Ok(guard) => guard,
        Err(e) => return (Err(RunError::Signal(e).into()), None, attempt.stats),
    };
    let timer = match ThreadTimer::for_current_thread() {
        Ok(t) => t,
        Err(e) => return (Err(RunError::Timer(e).into()), None, attempt.stats),
    };
    let point = attempt.point;
    let here = if point.mid_execution {
        Here::Precise {
            exits: point.exits,
            counter: point.counter,
        }
    } else {
        Here::AtExit(point.exits)
    };
    let mut r = Replayer {
        m,
        source,
        console,
        tuning,
        rate: RateEstimate::new(&tuning),
        kick_floor: KickFloor::new(&tuning),
        timer,
        stats: attempt.stats.clone(),
        core: Core::new(point.exits),
        here,
        halted: point.halted,
        power_off: None,
        shutdown: false,
        reset: None,
        digests_verified: attempt.digests_verified,
        last_seq: point.next_seq.checked_sub(1),
        console_stream: point.console(),
        in_approach: false,
        released: point.released,
        after_end: AfterEnd {
            last_ns: point.clock_ns,
            clock: None,
        },
        live_source: attempt.live,
        transmitted: VecDeque::new(),
        recent_frames: attempt.recent_frames.into(),
        checkpoints: attempt.checkpoints,
        after_checkpoint: attempt.after_checkpoint,
        start_exits: point.exits,
    };
    let result = r.run();
    let _ = r.console.flush();
    // Earlier attempts' exits, stops and time are in `attempt.stats`; this one's are added.
    let mut stats = r.stats.clone();
    stats.exits += r.core.exits() - point.exits;
    stats.stops += r.core.stops();
    stats.wall += started.elapsed();
    stats.digests = r.digests_verified;
    let entries = r.last_seq.map_or(0, |s| s + 1);
    // A live backup keeps where it stands when the stream ends, and also when the guest did:
    // promoted then, it releases what the old primary may not have.
    let ended = matches!(
        &result,
        Ok(Outcome::PowerOff { .. } | Outcome::Reset { .. })
            | Err(ReplayError::Run(RunError::TripleFault { .. }))
    );
    let stopped = match &result {
        Err(ReplayError::LogEnded { .. }) if r.live_source => {
            let last = r.after_end.last_ns;
            Some(Stopped {
                exits: r.core.exits(),
                console: r.console_stream,
                halted: r.halted,
                last_seq: r.last_seq,
                released: r.released,
                clock: r
                    .after_end
                    .clock
                    .unwrap_or_else(|| SystemClock::continuing(last)),
                // Then what the guest transmitted after the last entry that arrived: no
                // entry covered it, so the old primary cannot have released it.
                recent_frames: r
                    .recent_frames
                    .iter()
                    .chain(r.transmitted.iter())
                    .cloned()
                    .collect(),
                stats: stats.clone(),
            })
        }
        _ if ended && r.live_source => Some(Stopped {
            exits: r.core.exits(),
            console: r.console_stream,
            halted: false,
            last_seq: r.last_seq,
            released: r.released,
            clock: SystemClock::continuing(r.after_end.last_ns),
            recent_frames: r.recent_frames.iter().cloned().collect(),
            stats: stats.clone(),
        }),
        _ => None,
    };
    let report = result.map(|outcome| ReplayReport {
        entries,
        outcome,
        digests_verified: r.digests_verified,
        stats: stats.clone(),
    });
    (report, stopped, stats)
}
