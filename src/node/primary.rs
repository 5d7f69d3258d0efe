//! The primary role: run the guest live, stream its log to the view's backup (after giving it
//! the machine's state), release output under the output rule, and acknowledge a view only
//! once its backup holds the state.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use logging_channel::net::{ChannelConfig, Hello};
use viewserver::node::{self, Holding, Step};
use viewserver::{Finished, GuestEnd, View};
use vmm::clock::SystemClock;
use vmm::host_net::HostNet;
use vmm::live::{LiveOptions, LiveStart, run_live_from};
use vmm::machine::Machine;
use vmm::net::held::HeldNet;
use vmm::net::tap_net::TapNet;
use vmm::outcome::{Ended, RunError};
use vmm::replication::release::{FrameWriter, Gate, HeldConsole, ReleaseQueue};
use vmm::replication::transfer::transfer;
use vmm::replication::{ReplicaSink, Replication};
use vmm::sink::{LogSink, SinkError};
use vmm::snapshot::LogPoint;
use vmm::snapshot::memory::MemoryTracker;

use super::NodeCtx;
use super::events::{NodeEvent, Spread};
use super::views::Views;
use crate::events::emit;

/// A transfer that failed (or a stream that broke) is retried this often while the view still
/// names the same backup.
const RETRY_AFTER: Duration = Duration::from_millis(300);
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// The backup's lag is sampled this often while streaming (the `--stats` spreads).
const LAG_SAMPLE_EVERY: Duration = Duration::from_millis(10);

#[derive(Debug)]
pub enum PrimaryEnd {
    /// The guest ended, everything it said was released, and the view service recorded it.
    Finished(Finished),
    /// The view names another primary: this node stopped its guest and released nothing more.
    Superseded,
    /// The view service refused this node (another process took its name): stopped, as for
    /// `Superseded`, and the node must exit.
    Refused(String),
}

/// Where the guest starts: freshly booted, or going live after replay.
#[derive(Debug)]
pub struct Start {
    pub live: LiveStart,
    pub clock: SystemClock,
    pub next_seq: u64,
    /// The guest's console so far.
    pub history: Vec<u8>,
    /// How much of it was released (by this node's predecessor, as far as it is known).
    pub released: u64,
    /// Frames the guest transmitted that its predecessor may not have released: sent again
    /// (under the output rule) before anything new. TCP and ARP take a duplicate in their stride.
    pub resend_frames: Vec<Vec<u8>>,
    /// The guest had already ended (a backup that replayed the end, promoted): how, and where
    /// its log stands. It never runs again; what is held is released and the end reported.
    pub ended: Option<(Ended, LogPoint)>,
}

/// Lag samples in recorded nanoseconds, every 10 ms while streaming: how far the backup's
/// replay is behind the newest entry, and how far its receive buffer is.
#[derive(Debug, Default)]
struct LagSamples {
    replay: Vec<u64>,
    receive: Vec<u64>,
}

/// Median, 99th percentile and maximum of samples in milliseconds.
fn spread_ms(mut ms: Vec<f64>) -> Option<Spread> {
    if ms.is_empty() {
        return None;
    }
    ms.sort_unstable_by(f64::total_cmp);
    let n = ms.len();
    Some(Spread {
        p50_ms: ms[n / 2],
        p99_ms: ms[n * 99 / 100],
        max_ms: ms[n - 1],
        n,
    })
}

fn ns_to_ms(ns: Vec<u64>) -> Vec<f64> {
    ns.into_iter().map(|ns| ns as f64 / 1e6).collect()
}

pub fn serve(
    ctx: &NodeCtx,
    views: &Arc<Views>,
    mut machine: Machine,
    start: Start,
) -> Result<PrimaryEnd, Box<dyn std::error::Error + Send + Sync>> {
    // Output leaves only while the view service's lease says this node is the primary.
    let lease_views = Arc::clone(views);
    let gate: Gate = Arc::new(move || lease_views.lease.valid());
    let queue = Arc::new(ReleaseQueue::gated(
        start.history,
        start.released,
        Some(gate),
    ));
    for frame in start.resend_frames {
        queue.push_frame(frame);
    }
    let replication = Replication::new(Arc::clone(&queue), MemoryTracker::new(&machine)?);
    // The TAP speaks only while this node is primary.
    let tap = ctx.tap.clone();
    if let Some(t) = &tap
        && let Err(e) = t.set_carrier(true)
    {
        eprintln!("node {}: TAP {}: {e}", views.me, t.name());
    }
    let mut net = tap
        .clone()
        .map(|t| HeldNet::new(TapNet::new(t), Arc::clone(&queue)));
    // Frames leave on the TAP, from the release thread or straight from the thread that reads
    // the backup's acks.
    let write_frame: FrameWriter = {
        let tap = tap.clone();
        Arc::new(move |frame: &[u8]| {
            if let Some(t) = &tap
                && let Err(e) = t.write_frame(frame)
            {
                tracing::warn!("TAP {}: a released frame could not be sent: {e}", t.name());
            }
        })
    };
    if tap.is_some() {
        queue.write_frames_on_ack(Arc::clone(&write_frame));
    }
    let release = {
        let q = Arc::clone(&queue);
        let released_before = start.released;
        std::thread::Builder::new()
            .name("release".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                let mut out = stdout.lock();
                q.run(&mut out, &mut |frame| write_frame(frame));
                q.released() - released_before
            })?
    };
    let stop = Arc::new(AtomicBool::new(false));
    let lags = Arc::new(std::sync::Mutex::new(LagSamples::default()));
    let manager = spawn_manager(ctx, views, &replication, &stop, &lags)?;
    let mut sink = ReplicaSink::new(Arc::clone(&replication), start.next_seq);
    let mut console = HeldConsole {
        queue: Arc::clone(&queue),
        transcript: ctx.transcript(),
    };
    let ran = match start.ended {
        Some((how, point)) => {
            sink.guest_ended(point, how);
            Ok(how)
        }
        None => {
            let opts = LiveOptions {
                digest_interval: ctx.digest_interval,
                digest_max_share: ctx.digest_max_share,
                ..LiveOptions::default()
            };
            let result = run_live_from(
                &mut machine,
                &start.clock,
                &mut sink,
                &mut console,
                net.as_mut().map(|n| n as &mut (dyn HostNet + 'static)),
                &opts,
                start.live,
            );
            let ended = match result {
                Ok((outcome, _)) => Ok(super::node_end(outcome)),
                Err(RunError::TripleFault { regs, sregs }) => {
                    eprintln!(
                        "node {}: registers at the triple fault:\n{regs}\n{sregs}",
                        views.me
                    );
                    Ok(Ended::TripleFault)
                }
                Err(e) => Err(e),
            };
            if let Ok(how) = ended {
                super::say_ended(&views.me, how, false);
            }
            ended
        }
    };
    let end = match ran {
        Ok(how) => {
            // The replication manager keeps following the view meanwhile: a backup dropped
            // lets output flow, a new one is given the finished machine.
            let released = release_all(views, &mut machine, &mut sink, &queue, &replication);
            stop.store(true, Ordering::Release);
            let _ = manager.join();
            match released {
                Ok(true) => report_end(views, super::guest_end(how)),
                Ok(false) => deposed(views),
                Err(e) => return Err(e.into()),
            }
        }
        Err(e) => {
            stop.store(true, Ordering::Release);
            let _ = manager.join();
            match e {
                RunError::Sink(SinkError::Superseded) => deposed(views),
                e => return Err(e.into()),
            }
        }
    };
    queue.close();
    // Superseded, the queue was abandoned: the thread ends after the write in hand, if any.
    if let Ok(written) = release.join() {
        ctx.stdout_written
            .fetch_add(written, std::sync::atomic::Ordering::AcqRel);
    }
    // No longer primary: stop reading the TAP and make it silent again.
    drop(net);
    if let Some(t) = &tap
        && let Err(e) = t.set_carrier(false)
    {
        eprintln!("node {}: TAP {}: {e}", views.me, t.name());
    }
    let pauses = replication.pauses();
    if ctx.stats && !pauses.is_empty() {
        eprintln!(
            "node {}: guest pauses for state transfers (ms): {:?}",
            views.me,
            pauses
                .iter()
                .map(|p| (p.as_secs_f64() * 1e4).round() / 10.0)
                .collect::<Vec<_>>()
        );
    }
    let l = std::mem::take(&mut *lags.lock().unwrap_or_else(|p| p.into_inner()));
    let (replay_lag, receive_lag) = (
        spread_ms(ns_to_ms(l.replay)),
        spread_ms(ns_to_ms(l.receive)),
    );
    let us_to_ms = |us: Vec<u32>| us.into_iter().map(|us| f64::from(us) / 1e3).collect();
    let release_delay = spread_ms(us_to_ms(queue.delays_us()));
    let frame_release_delay = spread_ms(us_to_ms(queue.frame_delays_us()));
    let ack_round_trip = spread_ms(us_to_ms(replication.round_trips_us()));
    if ctx.stats {
        for (what, lag) in [("replay", &replay_lag), ("receive", &receive_lag)] {
            if let Some(spread) = lag {
                eprintln!(
                    "node {}: backup {what} lag (sampled every 10 ms while streaming) {spread} samples",
                    views.me
                );
            }
        }
        eprintln!(
            "node {}: guest held back {:.1} ms in all for the backup's replay to catch up",
            views.me,
            replication.throttled().as_secs_f64() * 1e3
        );
        eprintln!(
            "node {}: covered output waited {:.1} ms in all for a lease",
            views.me,
            queue.gated_time().as_secs_f64() * 1e3
        );
        if let Some(spread) = &release_delay {
            eprintln!("node {}: output release delay {spread} chunks", views.me);
        }
        if let Some(spread) = &frame_release_delay {
            eprintln!(
                "node {}: frame release delay (transmit to TAP) {spread} frames",
                views.me
            );
        }
        if let Some(spread) = &ack_round_trip {
            eprintln!(
                "node {}: logging channel round trip (write to ack) {spread} samples",
                views.me
            );
        }
    }
    emit(&NodeEvent::PrimarySummary {
        throttled_ms: replication.throttled().as_secs_f64() * 1e3,
        lease_wait_ms: queue.gated_time().as_secs_f64() * 1e3,
        pauses_ms: pauses.iter().map(|p| p.as_secs_f64() * 1e3).collect(),
        replay_lag,
        receive_lag,
        release_delay,
        frame_release_delay,
        ack_round_trip,
    });
    Ok(end)
}

/// How often a primary whose guest ended says what its last output still waits for.
const ENDED_NOTE_EVERY: Duration = Duration::from_secs(10);

/// The guest ended: keeps its replication going until everything it said was released (the
/// backup acknowledged the end, or installed the finished machine, or the view has no backup).
/// False if this node was deposed meanwhile: then what it held was dropped, not released.
fn release_all(
    views: &Views,
    machine: &mut Machine,
    sink: &mut ReplicaSink,
    queue: &ReleaseQueue,
    replication: &Replication,
) -> Result<bool, SinkError> {
    let ended = Instant::now();
    let mut next_note = ENDED_NOTE_EVERY;
    loop {
        sink.after_end(machine)?;
        let empty = queue.drain(Duration::from_millis(10));
        // A deposed primary's queue is emptied by dropping, not releasing.
        if replication.is_superseded() {
            return Ok(false);
        }
        if empty {
            return Ok(true);
        }
        if ended.elapsed() >= next_note {
            next_note += ENDED_NOTE_EVERY;
            eprintln!(
                "node {}: the guest ended {:.0} s ago; its last output waits for the view's backup to hold it",
                views.me,
                ended.elapsed().as_secs_f64()
            );
        }
    }
}

/// Tells the view service the guest ended (everything it said is released) and waits until it
/// recorded that. Everything released means the view's backup, if any, holds the end too: so
/// if the view service made another node primary meanwhile, that node holds this very end and
/// reports it. Either way this node held the guest to the end the service records.
fn report_end(views: &Views, end: GuestEnd) -> PrimaryEnd {
    let view = views.latest_view().map_or(0, |v| v.viewnum);
    eprintln!(
        "node {}: everything the guest said is released; telling the view service it finished ({end})",
        views.me
    );
    emit(&NodeEvent::EndReported {
        view,
        reason: super::reason_name(end.reason),
        code: end.code,
    });
    views.report_end(end);
    loop {
        if let Some(f) = views.finished() {
            return PrimaryEnd::Finished(f);
        }
        if let Some(why) = views.fatal() {
            return PrimaryEnd::Refused(why);
        }
        match views.latest_view() {
            Some(v) => {
                // The manager, which acknowledged views, has stopped: a view that still names
                // this node primary (a backup was co-opted or dropped meanwhile) is
                // acknowledged here, or the service, which takes the end only from the
                // primary holding the current view, would wait for that ack forever.
                if v.is_primary(&views.me, views.incarnation) {
                    views.set_holding(Holding::Guest { view: v.viewnum });
                }
                views.wait_change(v.viewnum, views.interval);
            }
            None => {
                views.wait_first(views.interval);
            }
        }
    }
}

/// This node is no longer primary: superseded, or refused by the view service.
fn deposed(views: &Views) -> PrimaryEnd {
    match views.fatal() {
        Some(why) => PrimaryEnd::Refused(why),
        None => PrimaryEnd::Superseded,
    }
}

/// Follows the view while the guest runs: transfers state to each new backup, acks views,
/// retries broken streams, notices being superseded, and prints a status line.
fn spawn_manager(
    ctx: &NodeCtx,
    views: &Arc<Views>,
    replication: &Arc<Replication>,
    stop: &Arc<AtomicBool>,
    lags: &Arc<std::sync::Mutex<LagSamples>>,
) -> std::io::Result<JoinHandle<()>> {
    let lags = Arc::clone(lags);
    let views = Arc::clone(views);
    let replication = Arc::clone(replication);
    let stop = Arc::clone(stop);
    let image = ctx.image_sha256;
    let channel = ctx.channel.clone();
    std::thread::Builder::new()
        .name("replication".into())
        .spawn(move || {
            // `None` until the first view is handled.
            let mut target: Option<BackupTarget> = None;
            let mut running: Option<JoinHandle<()>> = None;
            let mut last_try = Instant::now() - RETRY_AFTER;
            let mut last_status = Instant::now();
            while !stop.load(Ordering::Acquire) {
                let Some(view) = views.wait_first(LAG_SAMPLE_EVERY) else {
                    continue;
                };
                let holding = views.holding();
                match node::step(holding, &view, views.who()) {
                    Step::Serve => {
                        // Acknowledge the view at once: its backup's readiness is its own to
                        // report, so nothing here waits for the transfer.
                        views.set_holding(node::after(holding, Step::Serve, &view));
                    }
                    _ => {
                        let why = views.fatal().unwrap_or_else(|| {
                            format!("view {} names {:?} primary", view.viewnum, view.primary)
                        });
                        eprintln!(
                            "node {}: {why}; stopping this guest, releasing nothing more",
                            views.me
                        );
                        emit(&NodeEvent::SteppedDown { reason: &why });
                        views.lease.revoke();
                        replication.supersede();
                        return;
                    }
                }
                if views.fatal().is_some() {
                    replication.supersede();
                    return;
                }
                if running.as_ref().is_some_and(|h| h.is_finished())
                    && let Some(h) = running.take()
                {
                    let _ = h.join();
                }
                let want = BackupTarget::of(&view);
                let changed = target.as_ref() != Some(&want);
                let retry = !changed
                    && matches!(want, BackupTarget::Backup(_))
                    && running.is_none()
                    && replication.lost().is_some()
                    && last_try.elapsed() >= RETRY_AFTER;
                if changed || retry {
                    target = Some(want.clone());
                    match &want {
                        BackupTarget::Alone => {
                            replication.no_backup();
                            eprintln!(
                                "node {}: view {}: primary, no backup: output flows at once",
                                views.me, view.viewnum
                            );
                            emit(&NodeEvent::NoBackup { view: view.viewnum });
                        }
                        BackupTarget::Backup(backup) => {
                            if let Some(why) = replication.lost().filter(|_| retry) {
                                eprintln!(
                                    "node {}: stream to {backup} lost ({why}); sending state again",
                                    views.me
                                );
                                emit(&NodeEvent::StreamLost {
                                    backup,
                                    reason: &why,
                                });
                            }
                            last_try = Instant::now();
                            running = start_transfer(
                                &replication,
                                &views,
                                backup,
                                view.viewnum,
                                changed,
                                image,
                                &channel,
                            );
                        }
                    }
                }
                let (received, replayed) = (replication.lag(), replication.replay_lag());
                if let Some(l) = received {
                    let mut v = lags.lock().unwrap_or_else(|p| p.into_inner());
                    if v.receive.len() < 1_000_000 {
                        v.receive.push(l.t_ns);
                        if let Some(r) = replayed {
                            v.replay.push(r.t_ns);
                        }
                    }
                }
                if last_status.elapsed() >= STATUS_EVERY {
                    last_status = Instant::now();
                    let lag = match (received, replayed) {
                        (None, _) => "no stream".to_string(),
                        (Some(_), Some(r)) => {
                            format!("lag {} entries / {:.1} ms", r.entries, r.t_ns as f64 / 1e6)
                        }
                        (Some(l), None) => format!(
                            "lag {} entries / {:.1} ms (received)",
                            l.entries,
                            l.t_ns as f64 / 1e6
                        ),
                    };
                    eprintln!(
                        "node {}: primary of view {}, backup {:?}, {lag}, released {} bytes",
                        views.me,
                        view.viewnum,
                        view.backup,
                        replication.queue.released()
                    );
                    if let Some(r) = replayed.or(received) {
                        emit(&NodeEvent::Lag {
                            view: view.viewnum,
                            backup: &view.backup,
                            entries: r.entries,
                            ms: r.t_ns as f64 / 1e6,
                            released_bytes: replication.queue.released(),
                        });
                    }
                }
                // Wakes at once when the view changes (a deposed primary stops without waiting
                // out a sample period); otherwise the next lag sample is due.
                views.wait_change(view.viewnum, LAG_SAMPLE_EVERY);
            }
            if let Some(h) = running {
                let _ = h.join();
            }
        })
}

/// Whom the primary streams to, as far as the manager has acted on it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BackupTarget {
    /// The view has no backup: output flows at once.
    Alone,
    /// The view's backup, by name.
    Backup(String),
}

impl BackupTarget {
    fn of(view: &View) -> Self {
        if view.backup.is_empty() {
            Self::Alone
        } else {
            Self::Backup(view.backup.clone())
        }
    }
}

/// Sends the state to `backup` on a thread of its own.
fn start_transfer(
    replication: &Arc<Replication>,
    views: &Arc<Views>,
    backup: &str,
    viewnum: u64,
    first: bool,
    image: [u8; 32],
    channel: &ChannelConfig,
) -> Option<JoinHandle<()>> {
    let generation = replication.begin_transfer(first);
    let identity = Hello::new(image, viewnum, views.me.clone(), 0);
    let (r, v, b, c) = (
        Arc::clone(replication),
        Arc::clone(views),
        backup.to_string(),
        channel.clone(),
    );
    std::thread::Builder::new()
        .name("state-transfer".into())
        .spawn(move || {
            let me = v.me.clone();
            let mut progress = |line: String| {
                eprintln!("node {me}: {line}");
                emit(&NodeEvent::TransferProgress {
                    backup: &b,
                    message: &line,
                });
            };
            match transfer(&r, generation, &b, identity, c, &mut progress) {
                Ok(rep) => {
                    eprintln!(
                        "node {me}: view {viewnum}: backup {b} installed the state: {:.0} ms total, guest paused {:.2} ms, {} pre-copy rounds, {:.1} MiB sent; streaming from entry #{}",
                        rep.total.as_secs_f64() * 1e3,
                        rep.pause.as_secs_f64() * 1e3,
                        rep.rounds,
                        rep.bytes as f64 / f64::from(1 << 20),
                        rep.next_seq
                    );
                    emit(&NodeEvent::TransferDone {
                        view: viewnum,
                        backup: &b,
                        total_ms: rep.total.as_secs_f64() * 1e3,
                        pause_ms: rep.pause.as_secs_f64() * 1e3,
                        rounds: rep.rounds,
                        bytes: rep.bytes,
                        next_seq: rep.next_seq,
                    });
                }
                Err(e) => {
                    eprintln!("node {me}: state transfer to {b} failed: {e}");
                    emit(&NodeEvent::TransferFailed {
                        backup: &b,
                        error: &e.to_string(),
                    });
                }
            }
        })
        .ok()
}
