//! `understudy node`: one replica of a fault-tolerant guest. It pings the viewserver and takes
//! its role from the view: primary (run live, stream the log, release output once the backup
//! has it), backup (install the primary's state, replay its log, emit nothing), or idle.
//! docs/design.md has the role state machine and the protocol.

pub mod backup;
pub mod events;
pub mod primary;
pub mod views;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::events::emit;

use logging_channel::net::{ChannelConfig, Listener};
use vmm::clock::SystemClock;
use vmm::live::LiveStart;
use vmm::machine::{Machine, MachineConfig};

use backup::BackupEnd;
use events::NodeEvent;
use primary::{PrimaryEnd, Start};
use views::Views;
use viewserver::node::{self, Holding, Step};
use viewserver::{EndReason, Finished, GuestEnd, View};
use vmm::clock::HostClock;
use vmm::outcome::Ended;
use vmm::snapshot::LogPoint;

/// What every role needs to know about this node and its guest.
#[derive(Debug)]
pub struct NodeCtx {
    pub image: Vec<u8>,
    pub image_sha256: [u8; 32],
    pub cmdline: String,
    pub mem_mib: u32,
    /// The guest's network card (`--mac`), if it has one (`--tap`).
    pub nic_mac: Option<[u8; 6]>,
    /// The TAP the card is plugged into on this node: silent (carrier off, unread) except
    /// while this node is primary.
    pub tap: Option<Arc<vmm::net::tap::Tap>>,
    pub transcript: Option<PathBuf>,
    pub channel: ChannelConfig,
    pub stats: bool,
    /// As primary, time between state digests in the log (`--digest-interval-ms`), at least.
    pub digest_interval: std::time::Duration,
    /// As primary, the largest share of the guest's time digests may take.
    pub digest_max_share: f64,
    /// The backup's approach tuning (`--replay-aim` changes it, for tests).
    pub replay_tuning: vmm::precise::ApproachTuning,
    /// Bytes this process has written to stdout (released output) over all its primary roles:
    /// each role says where its own output starts, so what the world heard can be matched
    /// against the guest's history segment by segment.
    pub stdout_written: std::sync::atomic::AtomicU64,
}

impl NodeCtx {
    /// The transcript, opened for appending: one file across every role this process plays.
    pub fn transcript(&self) -> Option<std::fs::File> {
        let path = self.transcript.as_ref()?;
        match std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("node: cannot open transcript {}: {e}", path.display());
                None
            }
        }
    }

    /// The transcript, emptied: a node that installs a new state rewrites its transcript from
    /// the history that came with it.
    pub fn transcript_fresh(&self) -> Option<std::fs::File> {
        let path = self.transcript.as_ref()?;
        match std::fs::File::create(path) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("node: cannot create transcript {}: {e}", path.display());
                None
            }
        }
    }
}

/// Runs the node until its guest powers off; returns the guest's exit code.
pub fn run(
    ctx: &NodeCtx,
    viewservers: Vec<String>,
    listener: &Listener,
    name: String,
    ping_interval: Duration,
) -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
    if let Some(path) = &ctx.transcript {
        // A fresh transcript per process: it is this node's execution.
        std::fs::write(path, b"")?;
    }
    let views = Views::new(viewservers, name, ping_interval);
    eprintln!(
        "node {}: incarnation {}, viewserver {}",
        views.me,
        views.incarnation,
        views.viewserver()
    );
    crate::events::set_who(&format!("node {}", views.me));
    emit(&NodeEvent::Started {
        name: &views.me,
        incarnation: views.incarnation,
        listen: &listener.local_addr().to_string(),
        viewserver: &views.viewserver(),
    });
    let pinger = views::spawn_pinger(Arc::clone(&views))?;
    let result = roles(ctx, listener, &views);
    views.stop();
    let _ = pinger.join();
    result
}

/// The role loop: whenever the view changes, [`step`] says what this node does with what it
/// holds (the rules of docs/viewserver.md, "What nodes must do").
fn roles(
    ctx: &NodeCtx,
    listener: &Listener,
    views: &Arc<Views>,
) -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
    let me = views.me.clone();
    let mut said: Option<(u64, Step)> = None;
    // The replica a backup kept when its primary's stream ended: what a promotion goes live with.
    let mut replica: Option<Box<backup::Retained>> = None;
    loop {
        if let Some(why) = views.fatal() {
            return Err(why.into());
        }
        let Some(view) = views.wait_first(Duration::from_secs(3600)) else {
            continue;
        };
        if let Some(done) = views.finished() {
            return Ok(finished(views, done, replica.is_some()));
        }
        let holding = views.holding();
        let step = node::step(holding, &view, views.who());
        let first = said != Some((view.viewnum, step));
        said = Some((view.viewnum, step));
        let end = match step {
            Step::Boot => {
                eprintln!(
                    "node {me}: view {}: primary; booting the guest (releasing from byte 0, stdout byte {})",
                    view.viewnum,
                    ctx.stdout_written
                        .load(std::sync::atomic::Ordering::Acquire)
                );
                emit(&NodeEvent::Booting {
                    view: view.viewnum,
                    stdout_byte: ctx
                        .stdout_written
                        .load(std::sync::atomic::Ordering::Acquire),
                });
                let machine = build(ctx)?;
                // Running the guest now: the next ping acknowledges the view.
                views.set_holding(node::after(holding, step, &view));
                primary::serve(
                    ctx,
                    views,
                    machine,
                    Start {
                        live: LiveStart::default(),
                        clock: SystemClock::new(),
                        next_seq: 0,
                        history: Vec::new(),
                        released: 0,
                        resend_frames: Vec::new(),
                        ended: None,
                    },
                )?
            }
            Step::GoLive => match replica.take() {
                Some(r) => go_live(ctx, views, *r, &view)?,
                None => {
                    // The holding says replica but the machine is gone: never serve.
                    views.set_holding(Holding::Nothing);
                    continue;
                }
            },
            Step::Backup { keep } => {
                if !keep {
                    replica = None;
                    views.set_holding(Holding::Nothing);
                }
                if first {
                    eprintln!(
                        "node {me}: view {}: backup of {}; {}",
                        view.viewnum,
                        view.primary,
                        if keep {
                            "holding its state"
                        } else {
                            "waiting for its state"
                        }
                    );
                    emit(&NodeEvent::Backup {
                        view: view.viewnum,
                        primary: &view.primary,
                        holding: keep,
                    });
                }
                match backup::serve(ctx, listener, views, replica.take()) {
                    BackupEnd::Left(r) => replica = r,
                    BackupEnd::Misconfigured(why) => return Err(why.into()),
                    BackupEnd::Finished { finished: f, held } => {
                        return Ok(finished(views, f, held));
                    }
                }
                continue;
            }
            Step::Stranded => {
                if first {
                    // Booting afresh would contradict whatever the guest already said.
                    eprintln!(
                        "node {me}: view {} names this node primary, but it holds no state of that view's history (it restarted, or lost its replica); it will not serve, and waits",
                        view.viewnum
                    );
                    emit(&NodeEvent::Stranded { view: view.viewnum });
                }
                replica = None;
                views.set_holding(Holding::Nothing);
                views.wait_change(view.viewnum, views.interval * 10);
                continue;
            }
            Step::Idle | Step::StepDown | Step::Serve => {
                // (StepDown and Serve happen inside the primary role, which owns the guest.)
                replica = None;
                views.set_holding(Holding::Nothing);
                if first {
                    eprintln!(
                        "node {me}: view {}: idle (primary {:?}, backup {:?})",
                        view.viewnum, view.primary, view.backup
                    );
                    emit(&NodeEvent::Idle { view: view.viewnum });
                }
                views.wait_change(view.viewnum, views.interval);
                continue;
            }
        };
        match end {
            PrimaryEnd::Finished(f) => return Ok(finished(views, f, true)),
            PrimaryEnd::Superseded => {
                views.set_holding(Holding::Nothing);
                continue;
            }
            PrimaryEnd::Refused(why) => return Err(why.into()),
        }
    }
}

/// The view service recorded that the guest finished: this node is done. Returns the exit
/// code: the guest's for a node that held it (its primary, or a backup with its replica), 0
/// for one that held nothing.
fn finished(views: &Views, f: Finished, held: bool) -> u32 {
    let exit_code = if held { f.end.code } else { 0 };
    if held {
        eprintln!(
            "node {}: the guest finished in view {} ({}); this node held it and exits with its code {exit_code}",
            views.me, f.view, f.end
        );
    } else {
        eprintln!(
            "node {}: the guest finished in view {} ({}); this node held no part of it and exits (0): nothing is left to fail over",
            views.me, f.view, f.end
        );
    }
    emit(&NodeEvent::GuestFinished {
        view: f.view,
        reason: reason_name(f.end.reason),
        code: f.end.code,
        held,
        exit_code,
    });
    exit_code
}

/// Says how the guest ended: on this node's live run, or `replayed` on a backup (as the
/// primary's did). The node holds it until the view service records the end.
fn say_ended(me: &str, how: Ended, replayed: bool) {
    let (what, whose) = if replayed {
        ("the replayed guest", ", as the primary's did")
    } else {
        ("the guest", "")
    };
    match how {
        Ended::PowerOff { code } => {
            eprintln!("node {me}: {what} powered off (exit code {code}){whose}");
            emit(&NodeEvent::GuestPoweredOff { code, replayed });
        }
        Ended::TripleFault => {
            eprintln!("node {me}: {what} triple-faulted{whose}");
            emit(&NodeEvent::GuestTripleFaulted { replayed });
        }
        Ended::Reset { port, value } => {
            eprintln!(
                "node {me}: {what} asked for a reset ({port:#x} <- {value:#04x}){whose}; understudy does not reboot guests, so it ended there"
            );
            emit(&NodeEvent::GuestResetRequested {
                port,
                value,
                replayed,
            });
        }
    }
}

/// How an ended guest is reported to the view service; the code is what every node that held
/// it exits with: a power-off's own code, 1 for a triple fault, 0 for a reset request (as
/// `run` exits after each).
pub fn guest_end(how: Ended) -> GuestEnd {
    match how {
        Ended::PowerOff { code } => GuestEnd {
            reason: EndReason::PowerOff,
            code,
        },
        Ended::TripleFault => GuestEnd {
            reason: EndReason::TripleFault,
            code: 1,
        },
        // As `run` (and QEMU's `-no-reboot`): a guest that reboots has finished, not failed.
        Ended::Reset { .. } => GuestEnd {
            reason: EndReason::Reset,
            code: 0,
        },
    }
}

/// The name events give `reason`.
pub fn reason_name(reason: EndReason) -> &'static str {
    match reason {
        EndReason::PowerOff => "power_off",
        EndReason::TripleFault => "triple_fault",
        EndReason::Reset => "reset",
    }
}

fn build(ctx: &NodeCtx) -> Result<Machine, vmm::machine::MachineError> {
    Machine::new(&MachineConfig {
        mem_mib: ctx.mem_mib,
        image: &ctx.image,
        cmdline: ctx.cmdline.clone(),
        nic: ctx.nic_mac,
    })
}

/// The backup was promoted: its replayed machine goes live where the log stopped.
fn go_live(
    ctx: &NodeCtx,
    views: &Arc<Views>,
    r: backup::Retained,
    view: &View,
) -> Result<PrimaryEnd, Box<dyn std::error::Error + Send + Sync>> {
    let s = &r.stopped;
    let from = s.released.min(r.history.len() as u64);
    eprintln!(
        "node {}: view {}: going live at guest exit {}, console byte {}; releasing from byte {from}, stdout byte {} ({} bytes the old primary may not have released)",
        views.me,
        view.viewnum,
        s.exits,
        s.console.bytes,
        ctx.stdout_written
            .load(std::sync::atomic::Ordering::Acquire),
        r.history.len() as u64 - from
    );
    emit(&NodeEvent::GoingLive {
        view: view.viewnum,
        exits: s.exits,
        log_seq: s.last_seq.map_or(0, |q| q + 1),
        console_bytes: s.console.bytes,
        released_from: from,
        stdout_byte: ctx
            .stdout_written
            .load(std::sync::atomic::Ordering::Acquire),
        unconfirmed: r.history.len() as u64 - from,
        ended: r.ended.is_some(),
    });
    // A replica that replayed the guest's end never runs again: it releases what the old
    // primary may not have, and reports the end.
    let ended = match r.ended {
        Some(how) => Some((
            how,
            LogPoint {
                exits: s.exits,
                counter: r.machine.counter.read()?,
                mid_execution: false,
                halted: false,
                console_bytes: s.console.bytes,
                console_hash: s.console.hash,
                clock_ns: s.clock.monotonic_ns(),
                next_seq: 0,
                released: 0,
            },
        )),
        None => None,
    };
    let start = Start {
        live: LiveStart {
            exits: s.exits,
            console: s.console,
            halted: s.halted,
        },
        clock: s.clock,
        next_seq: s.last_seq.map_or(0, |q| q + 1),
        history: r.history,
        released: from,
        resend_frames: s.recent_frames.clone(),
        ended,
    };
    if let (Some(tap), Some(mac)) = (&ctx.tap, ctx.nic_mac) {
        // Whatever reached the TAP while it was a backup's is from before this node had the
        // guest; then tell the network the guest's MAC lives here now.
        if let Err(e) = tap.drain() {
            eprintln!("node {}: draining TAP {}: {e}", views.me, tap.name());
        }
        if let Err(e) = tap.set_carrier(true) {
            eprintln!("node {}: TAP {}: {e}", views.me, tap.name());
        }
        if start.ended.is_none() {
            announce(Arc::clone(tap), mac);
        }
    }
    // Running the guest now: the next ping acknowledges the view.
    views.set_holding(Holding::Guest { view: view.viewnum });
    primary::serve(ctx, views, r.machine, start)
}

/// Sends the guest's MAC from this node's TAP a few times (0, 50, 150 ms after going live, as
/// QEMU's `announce_self` spaces them), on a thread of its own so going live does not wait.
/// The carrier is on by then: the primary role turns it on before it runs the guest.
fn announce(tap: Arc<vmm::net::tap::Tap>, mac: [u8; 6]) {
    let frame = vmm::net::announce::rarp_announce(mac);
    let spawned = std::thread::Builder::new()
        .name("announce".into())
        .spawn(move || {
            for wait_ms in [0, 50, 100] {
                std::thread::sleep(Duration::from_millis(wait_ms));
                if let Err(e) = tap.write_frame(&frame) {
                    eprintln!(
                        "node: announcing the guest's MAC on TAP {}: {e}",
                        tap.name()
                    );
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("node: no thread to announce the guest's MAC: {e}");
    }
}

/// How a node's guest ended, from a run or replay that finished. A node never asks its run to
/// stop, so a primary's log ends stopped only if something else stopped it: that counts as a
/// power-off with code 0.
pub(crate) fn node_end(outcome: vmm::outcome::Outcome) -> vmm::outcome::Ended {
    vmm::outcome::Ended::of(outcome).unwrap_or(vmm::outcome::Ended::PowerOff { code: 0 })
}
