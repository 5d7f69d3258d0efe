//! Running a guest live: a plain run, or a recording. The two share every line of the vCPU loop;
//! a plain run just has a sink that logs nothing.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use logging_channel::format::{EndReason, Entry, InputSource, Position};

use crate::clock::HostClock;
use crate::console::ConsoleStream;
use crate::devices::DeviceEnv;
use crate::devices::virtio::net::Received;
use crate::digest::{self, state_check};
use crate::exit::{ExitError, Stop};
use crate::host_net::HostNet;
use crate::machine::Machine;
use crate::outcome::{Ended, Outcome, RunError, RunStats};
use crate::precise::PrecisePolicy;
use crate::sink::{LogSink, SinkError, Then};
use crate::snapshot::LogPoint;
use crate::stop::StopRequest;
use crate::ticker::{TickSchedule, TickSource, Ticker};
use crate::vcpu::kick::{self, Kicker};
use crate::vcpu::{cpl, regs_from_kvm};
use crate::vcpu_core::{self, Core};

/// PIT interrupts arrive on line 0 of the master 8259.
pub const TIMER_IRQ: u8 = 0;

/// Digests take at most this share of a recording's time by default (1%).
pub const DEFAULT_DIGEST_MAX_SHARE: f64 = 0.01;

/// How a live run (plain or recording) delivers interrupts and keeps its log.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    /// How long a tick may wait for a guest exit before the vCPU is stopped to take it.
    pub interrupt_bound: Duration,
    /// Time between state digests (recording only), at least.
    pub digest_interval: Duration,
    /// The largest share of the run's time digests may take: a digest that took longer than
    /// `digest_interval` times this (a guest that has written gigabytes) puts the next one
    /// further off.
    pub digest_max_share: f64,
    /// Where interrupts may land mid-execution on this host.
    pub precise: PrecisePolicy,
    /// Flush the log at least this often, so a crash loses little.
    pub flush_interval: Duration,
    /// Ends the run cleanly (an `End { Stopped }` entry) at the next guest exit once requested.
    pub stop: Option<Arc<StopRequest>>,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            interrupt_bound: Duration::from_micros(500),
            digest_interval: Duration::from_millis(1000),
            digest_max_share: DEFAULT_DIGEST_MAX_SHARE,
            precise: PrecisePolicy::default(),
            flush_interval: Duration::from_millis(50),
            stop: None,
        }
    }
}

/// The recorder's side of the device seam: real time, written down.
struct RecordEnv<'a> {
    clock: &'a dyn HostClock,
    /// Inputs read during the exit being handled, with their values.
    inputs: &'a mut Vec<(InputSource, u64)>,
}

impl DeviceEnv for RecordEnv<'_> {
    fn clock_ns(&mut self) -> u64 {
        let v = self.clock.monotonic_ns();
        self.inputs.push((InputSource::Clock, v));
        v
    }
    fn wall_clock_unix_secs(&mut self) -> u64 {
        let v = self.clock.wall_unix_secs();
        self.inputs.push((InputSource::WallClock, v));
        v
    }
}

/// Where a live run starts: a freshly booted guest (the default), or a replayed one that goes
/// live where its replay stopped.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveStart {
    /// Guest exits so far: the next exit is `exits + 1`.
    pub exits: u64,
    /// The console as far as it went (for the state checks of what is logged next).
    pub console: ConsoleStream,
    /// The guest is halted at exit `exits`, waiting for an interrupt.
    pub halted: bool,
}

/// Console bytes that no log entry covers yet: an `Output` entry is logged once a line ends or
/// this many bytes have piled up, so held output does not wait for the next event.
const OUTPUT_MARKER_BYTES: u64 = 128;

struct Recorder<'a> {
    m: &'a mut Machine,
    clock: &'a dyn HostClock,
    sink: &'a mut dyn LogSink,
    console: &'a mut dyn Write,
    opts: &'a LiveOptions,
    stats: RunStats,
    /// The exit step and the guest-exit count every position is built on.
    core: Core,
    pending_ticks: u64,
    console_stream: ConsoleStream,
    /// Console bytes written since the last logged entry.
    uncovered: u64,
    start_halted: bool,
    /// A state was taken at this exit, so its I/O instruction was completed early: the
    /// registers show it done (RIP past it, an `in`'s value loaded), which a replay that ran
    /// to this exit sees only when it runs on, and one that starts from the state sees at
    /// once. Entries logged here after the state carry no state check, and no digest is
    /// taken here, since neither kind of replay could match both.
    completed_for_state: bool,
    /// Where the guest's network card meets the host, if it has one.
    net: Option<&'a mut (dyn HostNet + 'static)>,
}

impl Recorder<'_> {
    fn log(&mut self, entry: Entry) -> Result<(), SinkError> {
        self.stats.entries += 1;
        self.uncovered = 0;
        if !self.sink.is_recording() {
            return Ok(());
        }
        let check = if self.completed_for_state {
            0
        } else {
            state_check(
                &regs_from_kvm(&self.m.vcpu.regs()),
                self.console_stream.hash,
            )
        };
        self.sink.append(self.clock.monotonic_ns(), check, &entry)
    }

    /// Where the vCPU stands after a VMM-initiated stop, if an interrupt may land there.
    fn precise_position(&self) -> Result<Option<Position>, RunError> {
        let level = cpl(&self.m.vcpu.sregs());
        if !self.opts.precise.allows(level, self.m.counter.kind()) {
            return Ok(None);
        }
        let counter = self.m.counter.read()?;
        Ok(Some(Position::Precise {
            exits: self.core.exits(),
            counter,
            regs: regs_from_kvm(&self.m.vcpu.regs()),
        }))
    }

    /// Raises the timer line if ticks are pending and hands the CPU whatever the PIC has, if
    /// the guest can take it here. Returns whether an interrupt was injected.
    fn deliver(&mut self, pos: Position) -> Result<bool, RunError> {
        // A mid-execution stop is worth logging only if the interrupt lands right here;
        // otherwise the tick waits for the next exit, which replay reaches for free.
        if pos.is_precise() && !self.m.vcpu.ready_for_interrupt() {
            self.stats.deferred_stops += 1;
            return Ok(false);
        }
        self.receive_frames(&pos)?;
        if self.pending_ticks > 0 {
            self.pending_ticks = 0;
            vcpu_core::tick(&mut self.m.bus, TIMER_IRQ);
            self.log(Entry::Irq {
                pos: pos.clone(),
                line: TIMER_IRQ,
            })?;
        }
        let Some(vector) = vcpu_core::deliver(&mut self.m.bus, &mut self.m.vcpu)? else {
            tracing::trace!(?pos, pending = ?self.m.bus.devices.pic.pending_vector(), "interrupt not deliverable");
            return Ok(false);
        };
        if pos.is_precise() {
            self.stats.interrupts_precise += 1;
        } else {
            self.stats.interrupts_at_exit += 1;
        }
        self.log(Entry::Inject { pos, vector })?;
        Ok(true)
    }

    /// Copies the frames waiting on the host into the guest's receive buffers, here, and logs
    /// each (the card's interrupt then reaches the PIC like any other line). A frame the guest
    /// has no buffer for stays first in the host's queue until it has one.
    fn receive_frames(&mut self, pos: &Position) -> Result<(), RunError> {
        let Some(net) = self.net.as_deref_mut() else {
            return Ok(());
        };
        let mut taken = Vec::new();
        while let Some(frame) = net.receive() {
            match self.m.bus.net_receive(&frame) {
                Some(Received::NoBuffer) => {
                    net.put_back(frame);
                    break;
                }
                Some(r) if r.reached_the_guest() => taken.push(frame),
                // Dropped unseen (a runt, an oversized frame) or no driver running: nothing
                // in the guest changed, so there is nothing to log or replay.
                Some(_) | None => {}
            }
        }
        for frame in taken {
            self.log(Entry::NetRx {
                pos: pos.clone(),
                frame,
            })?;
        }
        Ok(())
    }

    /// Hands the frames the guest transmitted during this exit to the host and logs each as a
    /// `NetTx` entry. The primary's host side holds a frame until the backup acknowledged the
    /// first entry logged after it was handed over: its own `NetTx`.
    fn forward_frames(&mut self, at_exit: &Position) -> Result<(), RunError> {
        let Some(frames) = self
            .m
            .bus
            .devices
            .nic
            .as_mut()
            .map(|n| n.take_transmitted())
        else {
            return Ok(());
        };
        for frame in frames {
            if let Some(net) = self.net.as_deref_mut() {
                net.transmit(frame.clone());
            }
            self.log(Entry::NetTx {
                pos: at_exit.clone(),
                frame,
            })?;
        }
        Ok(())
    }

    /// Logs a digest of the machine; returns what taking it cost.
    fn digest(&mut self) -> Result<Duration, RunError> {
        let started = Instant::now();
        let digest = digest::take(self.m);
        let cost = started.elapsed();
        self.stats.digests += 1;
        self.stats.digest_time += cost;
        self.log(Entry::Digest {
            pos: Position::AtExit {
                exits: self.core.exits(),
            },
            digest,
        })?;
        Ok(cost)
    }

    fn forward_console(&mut self, at_exit: &Position) -> Result<(), RunError> {
        let out = self
            .console_stream
            .forward(&mut self.m.bus, self.console)
            .map_err(RunError::Console)?;
        if out.bytes == 0 || !self.sink.output_markers() {
            return Ok(());
        }
        self.uncovered += out.bytes as u64;
        if out.newline || self.uncovered >= OUTPUT_MARKER_BYTES {
            let released = self.sink.released();
            self.log(Entry::Output {
                pos: at_exit.clone(),
                console_bytes: self.console_stream.bytes,
                released,
            })?;
        }
        Ok(())
    }

    /// Hands the stopped machine to the sink if it asked for it (state transfer to a new
    /// backup). Only at a point the backup can start replaying from: the exit fully handled,
    /// nothing injected that the vCPU has not taken yet. A `hlt` exit is such a point; the
    /// state says the guest halted there.
    fn offer_state(&mut self, stop: Stop, injected_before: bool) -> Result<(), RunError> {
        // The interrupt that wakes a halted guest is logged after the state, at this exit.
        if !self.sink.state_wanted() || (injected_before && !stop.is_guest_exit()) {
            return Ok(());
        }
        if stop.is_guest_exit() {
            self.m.vcpu.complete_pending_exit()?;
            self.completed_for_state = true;
        }
        let point = self.point_here(stop)?;
        self.sink.take_state(self.m, point)?;
        Ok(())
    }

    /// The guest ended (`how`) at exit `at_exit`: logs the `End` entry, tells the sink where
    /// (a replicating sink gives a late backup the finished machine), and pushes the log out.
    fn end_here(&mut self, at_exit: Position, stop: Stop, how: Ended) -> Result<(), RunError> {
        let reason = match how {
            Ended::PowerOff { code } => EndReason::PowerOff { code },
            Ended::TripleFault => EndReason::Shutdown,
            Ended::Reset { port, value } => EndReason::Reset { port, value },
        };
        self.log(Entry::End {
            pos: at_exit,
            reason,
        })?;
        let point = self.point_here(stop)?;
        self.sink.guest_ended(point, how);
        self.sink.flush()?;
        Ok(())
    }

    /// Where the guest and its log stand at `stop` (the sink fills in `next_seq`, `released`).
    fn point_here(&mut self, stop: Stop) -> Result<LogPoint, RunError> {
        Ok(LogPoint {
            exits: self.core.exits(),
            counter: self.m.counter.read()?,
            mid_execution: !stop.is_guest_exit(),
            halted: stop == Stop::Halt,
            console_bytes: self.console_stream.bytes,
            console_hash: self.console_stream.hash,
            clock_ns: self.clock.monotonic_ns(),
            next_seq: 0,
            released: 0,
        })
    }

    fn pit_schedule(&self) -> Option<TickSchedule> {
        let pit = &self.m.bus.devices.pit;
        Some(TickSchedule {
            epoch_ns: pit.channel0_epoch_ns()?,
            period_ns: pit.channel0_period_ns()?,
        })
    }

    fn run(&mut self, ticker: &mut dyn TickSource) -> Result<Outcome, RunError> {
        // A guest that went live after replay has its PIT programmed already.
        ticker.set_schedule(self.pit_schedule());
        if self.start_halted {
            let at_exit = Position::AtExit {
                exits: self.core.exits(),
            };
            self.idle(ticker, false, &at_exit)?;
        }
        let recording = self.sink.is_recording();
        // `None`: no digest is due again (one took more than its whole share).
        let mut next_digest = Instant::now().checked_add(self.opts.digest_interval);
        let mut last_flush = Instant::now();
        let mut inputs = Vec::new();
        let mut injected = false;
        loop {
            let injected_before = std::mem::take(&mut injected);
            // This exit's entries go to the backup in one write, before the guest runs on.
            self.sink.hand_off(Then::RunsGuest);
            self.completed_for_state = false;
            self.m.vcpu.clear_immediate_exit();
            let stop = {
                let mut env = RecordEnv {
                    clock: self.clock,
                    inputs: &mut inputs,
                };
                self.core.step(
                    &mut self.m.vcpu,
                    &mut self.m.bus,
                    &mut env,
                    self.m.counter.as_ref(),
                )
            }
            .map_err(|e| RunError::with_state(e, &self.m.vcpu, self.m.memory()))?;
            let at_exit = Position::AtExit {
                exits: self.core.exits(),
            };
            for (source, value) in inputs.drain(..) {
                self.log(Entry::Input {
                    pos: at_exit.clone(),
                    source,
                    value,
                })?;
            }
            self.forward_console(&at_exit)?;
            self.forward_frames(&at_exit)?;
            if let Stop::Io {
                port: 0x40..=0x43,
                write: true,
            } = stop
            {
                ticker.set_schedule(self.pit_schedule());
            }
            match stop {
                Stop::Shutdown => {
                    self.end_here(at_exit, stop, Ended::TripleFault)?;
                    return Err(RunError::triple_fault(&self.m.vcpu));
                }
                Stop::Debug { pc } => {
                    return Err(RunError::Exit(ExitError::Unexpected(format!(
                        "debug exit at {pc:#x}"
                    ))));
                }
                _ => {}
            }
            // A power-off, or a reset request (understudy does not reboot guests), ends the run.
            let ended = match self.m.bus.devices.debug_exit.take_exit_request() {
                Some(code) => Some((Ended::PowerOff { code }, Outcome::PowerOff { code })),
                None => self.m.bus.take_reset_request().map(|(port, value)| {
                    (Ended::Reset { port, value }, Outcome::Reset { port, value })
                }),
            };
            if let Some((how, outcome)) = ended {
                if recording {
                    self.digest()?;
                }
                self.end_here(at_exit, stop, how)?;
                self.console.flush().map_err(RunError::Console)?;
                return Ok(outcome);
            }

            self.offer_state(stop, injected_before)?;
            self.pending_ticks += ticker.take();
            let pos = if stop.is_guest_exit() {
                Some(at_exit.clone())
            } else {
                self.precise_position()?
            };
            // One clock read per stop serves both periodic duties below.
            let now = Instant::now();
            if recording
                && stop.is_guest_exit()
                && !self.completed_for_state
                && next_digest.is_some_and(|due| now >= due)
            {
                let cost = self.digest()?;
                next_digest = Instant::now().checked_add(crate::cost_share::spaced(
                    self.opts.digest_interval,
                    cost,
                    self.opts.digest_max_share,
                ));
            }
            if let Some(pos) = pos {
                injected = self.deliver(pos)?;
            } else if self.pending_ticks > 0 {
                self.stats.deferred_stops += 1;
            }
            if stop == Stop::Halt {
                self.idle(ticker, injected, &at_exit)?;
            }
            // A log ends only at a guest exit, a place replay reaches without approaching it.
            // A run that records nothing may end wherever the stop's kick found the guest: one
            // that never exits (a user-mode loop without I/O) would otherwise ignore the request.
            if self.stop_requested() && (stop.is_guest_exit() || !recording) {
                if recording {
                    self.log(Entry::End {
                        pos: at_exit,
                        reason: EndReason::Stopped,
                    })?;
                }
                self.sink.flush()?;
                self.console.flush().map_err(RunError::Console)?;
                return Ok(Outcome::Stopped);
            }
            if now.saturating_duration_since(last_flush) >= self.opts.flush_interval {
                self.sink.flush()?;
                self.console.flush().map_err(RunError::Console)?;
                last_flush = Instant::now();
            }
        }
    }

    fn stop_requested(&self) -> bool {
        self.opts.stop.as_ref().is_some_and(|s| s.is_requested())
    }

    /// The guest halted: wait for a tick and deliver it at the `hlt` exit.
    fn idle(
        &mut self,
        ticker: &dyn TickSource,
        mut injected: bool,
        at_exit: &Position,
    ) -> Result<(), RunError> {
        let started = Instant::now();
        while !injected {
            if self.stop_requested() {
                break;
            }
            if !self.m.vcpu.ready_for_interrupt() {
                return Err(RunError::halted(&self.m.vcpu, "interrupts disabled"));
            }
            if !ticker.is_running()
                && self.m.bus.devices.pic.pending_vector().is_none()
                && self.net.is_none()
            {
                return Err(RunError::halted(
                    &self.m.vcpu,
                    "no timer programmed, no interrupt pending and no network card",
                ));
            }
            self.sink.hand_off(Then::Waits);
            self.pending_ticks += ticker.wait(Duration::from_millis(100));
            let frames = self.net.as_deref().is_some_and(|n| n.pending());
            if self.pending_ticks > 0 || frames || self.m.bus.devices.pic.pending_vector().is_some()
            {
                injected = self.deliver(at_exit.clone())?;
            }
        }
        self.stats.idle += started.elapsed();
        Ok(())
    }
}

/// Runs the machine until the guest powers off (or fails), logging into `sink`.
pub fn run_live<C: HostClock + Clone + 'static>(
    m: &mut Machine,
    clock: &C,
    sink: &mut dyn LogSink,
    console: &mut dyn Write,
    net: Option<&mut (dyn HostNet + 'static)>,
    opts: &LiveOptions,
) -> Result<(Outcome, RunStats), RunError> {
    run_live_from(m, clock, sink, console, net, opts, LiveStart::default())
}

/// [`run_live`] from where `start` says the guest stands. Call it on the thread that is to
/// run the vCPU: the ticker and a stop request kick that thread.
pub fn run_live_from<C: HostClock + Clone + 'static>(
    m: &mut Machine,
    clock: &C,
    sink: &mut dyn LogSink,
    console: &mut dyn Write,
    mut net: Option<&mut (dyn HostNet + 'static)>,
    opts: &LiveOptions,
    start: LiveStart,
) -> Result<(Outcome, RunStats), RunError> {
    let started = Instant::now();
    let kicker = Kicker::for_current_thread();
    // SAFETY: the vCPU (and its kvm_run mapping) is borrowed by this function for the whole
    // run, which outlives the guard; this is the vCPU's thread.
    let _published =
        unsafe { kick::publish(m.vcpu.immediate_exit_ptr()) }.map_err(RunError::Signal)?;
    let _stop_kicks = opts.stop.as_deref().map(|s| s.attach(kicker));
    let mut ticker =
        Ticker::spawn(clock.clone(), kicker, opts.interrupt_bound).map_err(RunError::Thread)?;
    if let Some(n) = net.as_deref_mut() {
        let doorbell = ticker.doorbell();
        n.wake_with(Box::new(move || {
            doorbell.ring();
            kicker.kick();
        }));
    }
    let mut rec = Recorder {
        m,
        clock,
        sink,
        console,
        opts,
        stats: RunStats::default(),
        core: Core::new(start.exits),
        pending_ticks: 0,
        console_stream: start.console,
        uncovered: 0,
        start_halted: start.halted,
        completed_for_state: false,
        net,
    };
    let outcome = rec.run(&mut ticker);
    let _ = rec.console.flush();
    let _ = rec.sink.flush();
    let mut stats = rec.stats;
    stats.exits = rec.core.exits() - start.exits;
    stats.stops = rec.core.stops();
    stats.wall = started.elapsed();
    outcome.map(|o| (o, stats))
}
