//! The backup role: take the primary's state, replay its log as it arrives, emit nothing.
//! When the stream ends the replayed machine is kept: the viewserver may promote this node,
//! and then it goes live exactly where the log stopped.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use logging_channel::net::{ChannelError, Hello, Listener, LogReceiver, StatePart, StateReceiver};
use vmm::checkpoint::CheckpointPolicy;
use vmm::clock::SystemClock;
use vmm::guest_image::hex;
use vmm::machine::Machine;
use vmm::outcome::{Ended, RunError, RunStats};
use vmm::replay::{ReplayError, Rewind, Stopped, replay_recovering};
use vmm::snapshot::memory::install_pages;
use vmm::snapshot::{LogPoint, MachineState};
use vmm::source::NetSource;

use super::NodeCtx;
use super::events::NodeEvent;
use super::views::Views;
use crate::events::emit;
use viewserver::Finished;
use viewserver::node::{self, Holding, Step};

/// A replayed machine whose stream ended, ready to go live.
#[derive(Debug)]
pub struct Retained {
    pub machine: Machine,
    pub stopped: Stopped,
    /// The guest's whole console, as received with the state and then replayed.
    pub history: Vec<u8>,
    /// The guest ended here (its end was replayed, or the state came from after it): it never
    /// runs again.
    pub ended: Option<Ended>,
    /// The primary's stream, kept open while a finished replica waits: closing it would look
    /// like a lost backup to the primary, which is still releasing the guest's last output.
    pub _stream: Option<LogReceiver>,
}

#[derive(Debug)]
pub enum BackupEnd {
    /// The view no longer makes this node a backup (it was promoted, or dropped); the replica
    /// it holds, if any, for the role loop to go live with or drop.
    Left(Option<Box<Retained>>),
    /// The view service recorded that the guest finished; `held`: this node holds a replica.
    Finished { finished: Finished, held: bool },
    /// This node cannot back up the view's primary (another guest image or memory size).
    Misconfigured(String),
}

/// The backup's console: nothing leaves the node; the transcript and the history (kept for
/// going live) get every byte.
struct BackupConsole {
    transcript: Option<std::fs::File>,
    history: Vec<u8>,
}

impl Write for BackupConsole {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(t) = self.transcript.as_mut() {
            t.write_all(buf)?;
        }
        self.history.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(t) = self.transcript.as_mut() {
            t.flush()?;
        }
        Ok(())
    }
}

const WAITING_NOTE_FIRST: Duration = Duration::from_secs(10);
const WAITING_NOTE_EVERY: Duration = Duration::from_secs(60);

/// Serves as backup for as long as the view says so, starting with `replica` if it kept one.
pub fn serve(
    ctx: &NodeCtx,
    listener: &Listener,
    views: &Arc<Views>,
    replica: Option<Box<Retained>>,
) -> BackupEnd {
    let mut retained = replica;
    // A backup left waiting says so now and then: the view service cannot tell a primary that
    // finished from one that died before any backup had its state, but an operator can.
    let mut waiting_since = Instant::now();
    let mut next_note = WAITING_NOTE_FIRST;
    let mut mismatch: Option<String> = None;
    loop {
        let Some(view) = views.latest_view() else {
            std::thread::sleep(views.interval);
            continue;
        };
        if let Some(finished) = views.finished() {
            return BackupEnd::Finished {
                finished,
                held: retained.is_some(),
            };
        }
        match node::step(views.holding(), &view, views.who()) {
            Step::Backup { keep: true } => {}
            Step::Backup { keep: false } => {
                retained = None;
                views.set_holding(Holding::Nothing);
            }
            _ => return BackupEnd::Left(retained),
        }
        if let Some(why) = mismatch.take() {
            return BackupEnd::Misconfigured(why);
        }
        let rx = match listener.accept_transfer(
            |hello, mem| {
                check_offer(ctx, views, hello, mem).map_err(|e| {
                    let why = e.to_string();
                    if matches!(e, Refusal::Mismatch(_)) {
                        mismatch = Some(why.clone());
                    }
                    why
                })
            },
            ctx.channel.clone(),
            Some(Duration::from_millis(50)),
        ) {
            Ok(rx) => rx,
            Err(ChannelError::AcceptTimeout { .. }) => {
                if waiting_since.elapsed() >= next_note {
                    next_note += WAITING_NOTE_EVERY;
                    let state = if retained.is_some() {
                        "holding the replayed machine; if the view promotes this node it goes live"
                    } else {
                        "no state: if that primary is gone, the guest is lost and this node can be stopped"
                    };
                    eprintln!(
                        "node {}: view {}: still waiting for {} after {:.0} s ({state})",
                        views.me,
                        view.viewnum,
                        view.primary,
                        waiting_since.elapsed().as_secs_f64()
                    );
                }
                continue;
            }
            Err(e) => {
                eprintln!("node {}: refused a state transfer: {e}", views.me);
                emit(&NodeEvent::StateRefused {
                    error: &e.to_string(),
                });
                continue;
            }
        };
        let from = rx.offer().primary.clone();
        let offered_view = rx.offer().viewnum;
        match receive(ctx, views, rx) {
            Ok(installed) => {
                // A new state replaces whatever was kept from an earlier stream.
                retained = None;
                views.set_holding(Holding::Replica { view: offered_view });
                match replay_stream(ctx, views, installed) {
                    Ok(r) => {
                        if r.asked_promotion {
                            // The answer usually comes with the ping that asked: go live at
                            // once rather than after a wait for a transfer.
                            views.wait_change(offered_view, views.interval);
                        }
                        retained = Some(r.retained);
                    }
                    Err(e) => {
                        eprintln!(
                            "node {}: replay of {from}'s log failed: {e}; dropping this state and asking for a new one",
                            views.me
                        );
                        emit(&NodeEvent::ReplayFailed {
                            primary: &from,
                            error: &e.to_string(),
                            overshoot: matches!(e, ReplayError::Overshot { .. }),
                            diverged: matches!(e, ReplayError::Divergence { .. }),
                        });
                        // Without state this node must not be promoted: it says so at once,
                        // stays the backup, and the primary sends the state again.
                        views.set_holding(Holding::Nothing);
                    }
                }
            }
            Err(e) => {
                eprintln!("node {}: state transfer from {from} failed: {e}", views.me);
                emit(&NodeEvent::StateRefused { error: &e });
            }
        }
        // The wait starts over after every transfer and every stream.
        waiting_since = Instant::now();
        next_note = WAITING_NOTE_FIRST;
    }
}

/// Reports what the replay of one stream did and cost: an event, and with `--stats` a line.
fn summarize(ctx: &NodeCtx, views: &Views, s: &RunStats) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    emit(&NodeEvent::ReplaySummary {
        wall_ms: ms(s.wall),
        exits: s.exits,
        interrupts_precise: s.interrupts_precise,
        approach_ms: ms(s.approach),
        kicks: s.approach_kicks,
        breakpoint_runs: s.breakpoint_runs,
        single_steps: s.single_steps,
        kick_floor_us: s.kick_floor_ns / 1e3,
        checkpoints: s.checkpoints,
        checkpoint_ms: ms(s.checkpoint_time),
        rewinds: s.rewinds,
        digests: s.digests,
    });
    if ctx.stats {
        eprintln!(
            "node {}: replay of the stream: {:.3} s, {} exits, {} interrupts mid-execution, approach {:.3} s ({} kicks, {} breakpoint runs, {} single steps), {} checkpoints ({:.1} ms), {} rewinds after an overshoot",
            views.me,
            s.wall.as_secs_f64(),
            s.exits,
            s.interrupts_precise,
            s.approach.as_secs_f64(),
            s.approach_kicks,
            s.breakpoint_runs,
            s.single_steps,
            s.checkpoints,
            ms(s.checkpoint_time),
            s.rewinds
        );
    }
}

/// The stream from `primary` ended while this node still backs it up in view `viewnum`: the
/// connection is gone, so nothing more is received or acknowledged, and the replica holds
/// everything that was (`replay_stream` replayed it all). Asks to be promoted now instead of
/// waiting for the primary to miss its pings: a primary that died reset the connection at once.
fn ask_promotion(views: &Views, primary: &str, viewnum: u64) -> bool {
    let still = views
        .latest_view()
        .is_some_and(|v| v.viewnum == viewnum && backs_up(&v, primary, views));
    if !still {
        return false;
    }
    eprintln!(
        "node {}: view {viewnum}: lost the stream from {primary}; asking the view service to promote this node",
        views.me
    );
    emit(&NodeEvent::PrimaryLost {
        view: viewnum,
        primary,
    });
    views.report_primary_lost(viewnum);
    true
}

/// Why a state offer was refused.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    /// This node can never take this primary's state.
    #[error(
        "{0}; this node cannot back up that primary (every node of one guest must give the same --guest, --guest-arg and --mem-mib)"
    )]
    Mismatch(String),
    /// Not now: the offer does not come from this node's view's primary.
    #[error("{0}")]
    NotMyPrimary(String),
}

fn check_offer(ctx: &NodeCtx, views: &Views, hello: &Hello, mem: u64) -> Result<(), Refusal> {
    if hello.guest_image_sha256 != ctx.image_sha256 {
        return Err(Refusal::Mismatch(format!(
            "guest image mismatch: the primary runs {}, this node boots {}",
            hex(&hello.guest_image_sha256),
            hex(&ctx.image_sha256)
        )));
    }
    let ours = u64::from(ctx.mem_mib) << 20;
    if mem != ours {
        return Err(Refusal::Mismatch(format!(
            "guest memory mismatch: the primary has {} MiB, this node {} MiB",
            mem >> 20,
            ctx.mem_mib
        )));
    }
    check_primary(views, hello).map_err(Refusal::NotMyPrimary)
}

/// Whether view `v` makes this node the backup of `primary` (rule 5: nobody else may feed it).
fn backs_up(v: &viewserver::View, primary: &str, views: &Views) -> bool {
    v.primary == primary && v.is_backup(&views.me, views.incarnation)
}

/// Only the primary of this node's current view may send it state or log.
fn check_primary(views: &Views, hello: &Hello) -> Result<(), String> {
    let ok =
        |v: &viewserver::View| v.viewnum == hello.viewnum && backs_up(v, &hello.primary, views);
    let view = views.latest_view();
    if view.as_ref().is_some_and(ok) {
        return Ok(());
    }
    // The primary may have seen a newer view than this node's last ping did.
    match views.refresh() {
        Some(v) if ok(&v) => Ok(()),
        Some(v) => Err(format!(
            "not the primary of this backup's view: {:?} sent view {}, the view is {} (primary {:?}, backup {:?})",
            hello.primary, hello.viewnum, v.viewnum, v.primary, v.backup
        )),
        None => Err("this backup has no view yet".to_string()),
    }
}

/// What a replay of a primary's stream left.
struct Replayed {
    retained: Box<Retained>,
    /// The stream broke while this node was still the backup, and it asked to be promoted.
    asked_promotion: bool,
}

/// A state installed from the primary, with its log stream.
struct Installed {
    machine: Machine,
    point: LogPoint,
    history: Vec<u8>,
    /// The state was taken after the guest ended.
    ended: Option<Ended>,
    log: LogReceiver,
}

fn receive(ctx: &NodeCtx, views: &Arc<Views>, mut rx: StateReceiver) -> Result<Installed, String> {
    let started = std::time::Instant::now();
    let mut m = match super::build(ctx) {
        Ok(m) => m,
        Err(e) => {
            let why = format!("cannot build the machine: {e}");
            rx.refuse(why.clone());
            return Err(why);
        }
    };
    let mut pages = 0u64;
    let state = loop {
        match rx.next_part() {
            Ok(StatePart::Pages(records)) => match install_pages(&m, &records) {
                Ok(n) => pages += n,
                Err(e) => {
                    rx.refuse(e.to_string());
                    return Err(e.to_string());
                }
            },
            Ok(StatePart::Final(blob)) => {
                match MachineState::decode(&blob).and_then(|s| s.restore(&mut m).map(|()| s)) {
                    Ok(s) => break s,
                    Err(e) => {
                        let why = crate::commands::error_chain(&e);
                        rx.refuse(why.clone());
                        return Err(why);
                    }
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    let point = state.point;
    let primary = rx.offer().primary.clone();
    let v = Arc::clone(views);
    let log = rx
        .installed(point.next_seq, move |h| check_primary(&v, h))
        .map_err(|e| e.to_string())?;
    eprintln!(
        "node {}: installed state from {primary} in {:.0} ms ({pages} pages, {} MiB); replaying from entry #{}",
        views.me,
        started.elapsed().as_secs_f64() * 1e3,
        ctx.mem_mib,
        point.next_seq
    );
    emit(&NodeEvent::StateInstalled {
        primary: &primary,
        ms: started.elapsed().as_secs_f64() * 1e3,
        mem_mib: ctx.mem_mib,
        next_seq: point.next_seq,
        ended: state.ended.is_some(),
    });
    Ok(Installed {
        machine: m,
        point,
        history: state.console_history,
        ended: state.ended,
        log,
    })
}

/// Replays the installed state's stream until it ends (the primary is gone or stopped sending)
/// or the guest does; either way the replica is kept, for going live or for the end.
fn replay_stream(
    ctx: &NodeCtx,
    views: &Arc<Views>,
    installed: Installed,
) -> Result<Replayed, ReplayError> {
    let Installed {
        mut machine,
        point,
        history,
        ended,
        log,
    } = installed;
    if let Some(how) = ended {
        // The primary's guest had ended when it sent this: nothing to replay, ever.
        eprintln!(
            "node {}: the state is of a guest that already ended ({how:?}); holding it until the view service records the end",
            views.me
        );
        if let Some(mut t) = ctx.transcript_fresh()
            && let Err(e) = t.write_all(&history)
        {
            eprintln!("node {}: writing the transcript failed: {e}", views.me);
        }
        return Ok(Replayed {
            asked_promotion: false,
            retained: Box::new(Retained {
                machine,
                stopped: Stopped {
                    exits: point.exits,
                    console: point.console(),
                    halted: false,
                    last_seq: point.next_seq.checked_sub(1),
                    released: point.released,
                    clock: SystemClock::continuing(point.clock_ns),
                    recent_frames: Vec::new(),
                    stats: RunStats::default(),
                },
                history,
                ended: Some(how),
                _stream: Some(log),
            }),
        });
    }
    // Rule 5: only the view's primary feeds its backup. Once the view says otherwise (this node
    // was promoted, or dropped), take nothing more from the old primary and acknowledge nothing
    // more, so it can release nothing more; then replay what arrived.
    let sender = log.hello().primary.clone();
    let (sender_name, offered) = (sender.clone(), log.hello().viewnum);
    let watched = Arc::clone(views);
    let watch = move || {
        let v = watched.latest_view()?;
        (!backs_up(&v, &sender, &watched)).then(|| {
            format!(
                "view {} names {:?} primary and {:?} backup",
                v.viewnum, v.primary, v.backup
            )
        })
    };
    let mut source = NetSource::new(log).with_watch(Box::new(watch));
    // This node's transcript is the guest's console from its first byte: start it afresh with
    // the history that came with the state.
    let mut transcript = ctx.transcript_fresh();
    if let Some(t) = transcript.as_mut()
        && let Err(e) = t.write_all(&history)
    {
        eprintln!("node {}: writing the transcript failed: {e}", views.me);
    }
    let mut console = BackupConsole {
        transcript,
        history,
    };
    // A kick that lands late sends the replay back to its latest checkpoint (a second or so),
    // and only a failure beyond that costs a new state transfer: aim as fast as a file replay
    // does, so the backup keeps up with the primary (the cautious tuning fell ~17% behind on
    // compute and the throttle then slowed the primary to match; docs/benchmarks.md).
    let me = views.me.clone();
    let mut said = |r: &Rewind| {
        eprintln!(
            "node {me}: the replay overshot entry #{} (a timer kick landed late); went back to its checkpoint before entry #{} instead of asking for a new state",
            r.overshot_seq, r.from_seq
        );
        emit(&NodeEvent::ReplayRewound {
            overshot_seq: r.overshot_seq,
            from_seq: r.from_seq,
            in_a_row: r.in_a_row,
        });
    };
    let (result, stopped) = replay_recovering(
        &mut machine,
        &mut source,
        &mut console,
        ctx.replay_tuning,
        Some(point),
        CheckpointPolicy::default(),
        &mut said,
    );
    let _ = console.flush();
    match (&result, &stopped) {
        (Ok(report), _) => summarize(ctx, views, &report.stats),
        (_, Some(s)) => summarize(ctx, views, &s.stats),
        _ => {}
    }
    let end = match &result {
        Ok(report) => Some(super::node_end(report.outcome)),
        Err(ReplayError::Run(RunError::TripleFault { .. })) => Some(Ended::TripleFault),
        Err(_) => None,
    };
    match (result, stopped) {
        (_, Some(mut stopped)) if end.is_some() => {
            stopped.released = stopped.released.max(source.released());
            if let Some(how) = end {
                super::say_ended(&views.me, how, true);
            }
            Ok(Replayed {
                asked_promotion: false,
                retained: Box::new(Retained {
                    machine,
                    stopped,
                    history: console.history,
                    ended: end,
                    _stream: Some(source.into_receiver()),
                }),
            })
        }
        (Err(ReplayError::LogEnded { .. }), Some(mut stopped)) => {
            // `Released` messages are fresher than the counts in `Output` entries.
            stopped.released = stopped.released.max(source.released());
            let why = source
                .ended_by()
                .map_or_else(|| "closed".to_string(), |e| e.to_string());
            eprintln!(
                "node {}: the primary's stream ended ({why}); holding the replayed machine at entry {}",
                views.me,
                stopped
                    .last_seq
                    .map_or("(none)".into(), |s| format!("#{s}"))
            );
            emit(&NodeEvent::StreamEnded {
                reason: &why,
                last_seq: stopped.last_seq,
            });
            // Only a connection the primary's side closed or reset without a `Bye` says its
            // process is gone (the kernel closes a killed process's sockets at once, with a
            // reset if our acks were still unread: then an ack's write may be what fails
            // first). Silence may be a slow link, which the primary's missed pings judge; a
            // `Bye` comes from a live primary. Asked before the receiver is dropped (which
            // waits for its threads): the connection is gone, so nothing more can be
            // acknowledged.
            let peer_gone = matches!(
                source.ended_by(),
                Some(
                    ChannelError::PeerClosed { .. }
                        | ChannelError::Truncated { .. }
                        | ChannelError::Read { .. }
                        | ChannelError::Write { .. }
                )
            );
            let asked_promotion = peer_gone && ask_promotion(views, &sender_name, offered);
            drop(source);
            Ok(Replayed {
                asked_promotion,
                retained: Box::new(Retained {
                    machine,
                    stopped,
                    history: console.history,
                    ended: None,
                    _stream: None,
                }),
            })
        }
        (Err(e), _) => Err(e),
        // `replay_recovering` says where the guest stands whenever a live stream's replay ends.
        (Ok(_), _) => Err(ReplayError::Run(RunError::Exit(
            vmm::exit::ExitError::Unexpected(
                "the replay ended without saying where the guest stands".into(),
            ),
        ))),
    }
}
