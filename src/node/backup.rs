//! The backup role: take the primary's state, replay its log as it arrives, emit nothing.
//! When the stream ends the replayed machine is kept: the viewserver may promote this node,
//! and then it goes live exactly where the log stopped.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use logging_channel::net::{ChannelError, Hello, Listener, LogReceiver, StatePart, StateReceiver};
use vmm::guest_image::hex;
use vmm::machine::Machine;
use vmm::precise::ApproachTuning;
use vmm::replay::{ReplayError, Stopped, replay_from};
use vmm::snapshot::memory::install_pages;
use vmm::snapshot::{LogPoint, MachineState};
use vmm::source::NetSource;

use super::NodeCtx;
use super::views::Views;

/// A replayed machine whose stream ended, ready to go live.
#[derive(Debug)]
pub struct Retained {
    pub machine: Machine,
    pub stopped: Stopped,
    /// The guest's whole console, as received with the state and then replayed.
    pub history: Vec<u8>,
}

#[derive(Debug)]
pub enum BackupEnd {
    /// The view made this node primary; `None` if it has no state (it must not go live).
    Promoted(Option<Box<Retained>>),
    /// The view no longer names this node as backup.
    NotBackup,
    /// The replayed guest powered off (the primary's did too).
    GuestDone(u32),
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

/// Serves as backup for as long as the view says so.
pub fn serve(ctx: &NodeCtx, listener: &Listener, views: &Arc<Views>) -> BackupEnd {
    let mut retained: Option<Box<Retained>> = None;
    views.follow();
    // A backup left waiting says so now and then: the view service cannot tell a primary that
    // finished from one that died before any backup had its state, but an operator can.
    let mut waiting_since = Instant::now();
    let mut next_note = WAITING_NOTE_FIRST;
    loop {
        let Some(view) = views.latest() else {
            std::thread::sleep(views.interval);
            continue;
        };
        if view.primary == views.me {
            return BackupEnd::Promoted(retained);
        }
        if view.backup != views.me {
            return BackupEnd::NotBackup;
        }
        let rx = match listener.accept_transfer(
            |hello, mem| check_offer(ctx, views, hello, mem),
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
                continue;
            }
        };
        let from = rx.offer().primary.clone();
        match receive(ctx, views, rx) {
            Ok((machine, point, held, log)) => {
                // A new state replaces whatever was kept from an earlier stream.
                retained = None;
                match replay_stream(ctx, views, machine, point, held, log) {
                    Ok(Follow::Retain(r)) => retained = Some(r),
                    Ok(Follow::GuestDone(code)) => return BackupEnd::GuestDone(code),
                    Err(e) => {
                        eprintln!(
                            "node {}: replay of {from}'s log failed: {e}; dropping this state and asking for a new one",
                            views.me
                        );
                        // Without state this node must not be promoted: look restarted.
                        views.stateless();
                        std::thread::sleep(views.interval * 3);
                        views.follow();
                    }
                }
            }
            Err(e) => eprintln!("node {}: state transfer from {from} failed: {e}", views.me),
        }
        // The wait starts over after every transfer and every stream.
        waiting_since = Instant::now();
        next_note = WAITING_NOTE_FIRST;
    }
}

fn check_offer(ctx: &NodeCtx, views: &Views, hello: &Hello, mem: u64) -> Result<(), String> {
    if hello.guest_image_sha256 != ctx.image_sha256 {
        return Err(format!(
            "guest image mismatch: the primary runs {}, this node boots {}",
            hex(&hello.guest_image_sha256),
            hex(&ctx.image_sha256)
        ));
    }
    let ours = u64::from(ctx.mem_mib) << 20;
    if mem != ours {
        return Err(format!(
            "guest memory mismatch: the primary has {} MiB, this node {} MiB",
            mem >> 20,
            ctx.mem_mib
        ));
    }
    check_primary(views, hello)
}

/// Whether view `v` makes `me` the backup of `primary` (rule 5: nobody else may feed it).
fn backs_up(v: &viewserver::View, primary: &str, me: &str) -> bool {
    v.primary == primary && v.backup == me
}

/// Only the primary of this node's current view may send it state or log.
fn check_primary(views: &Views, hello: &Hello) -> Result<(), String> {
    let ok =
        |v: &viewserver::View| v.viewnum == hello.viewnum && backs_up(v, &hello.primary, &views.me);
    let view = views.latest();
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

type Installed = (Machine, LogPoint, Vec<u8>, LogReceiver);

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
    Ok((m, point, state.console_history, log))
}

enum Follow {
    Retain(Box<Retained>),
    GuestDone(u32),
}

fn replay_stream(
    ctx: &NodeCtx,
    views: &Arc<Views>,
    mut machine: Machine,
    point: LogPoint,
    history: Vec<u8>,
    log: LogReceiver,
) -> Result<Follow, ReplayError> {
    // Rule 5: only the view's primary feeds its backup. Once the view says otherwise (this node
    // was promoted, or dropped), take nothing more from the old primary and acknowledge nothing
    // more, so it can release nothing more; then replay what arrived.
    let sender = log.hello().primary.clone();
    let watched = Arc::clone(views);
    let watch = move || {
        let v = watched.latest()?;
        (!backs_up(&v, &sender, &watched.me)).then(|| {
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
    // A live stream cannot be rewound, but a failed replay here costs only a new state
    // transfer: aim as fast as a file replay does, so the backup keeps up with the primary
    // (the cautious tuning fell ~17% behind on compute and the throttle then slowed the
    // primary to match; docs/benchmarks.md).
    let (result, stopped) = replay_from(
        &mut machine,
        &mut source,
        &mut console,
        ApproachTuning::default(),
        Some(point),
    );
    let _ = console.flush();
    match (result, stopped) {
        (Ok(report), _) => match report.outcome {
            vmm::outcome::Outcome::PowerOff { code } => Ok(Follow::GuestDone(code)),
            vmm::outcome::Outcome::Stopped => Ok(Follow::GuestDone(0)),
        },
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
            Ok(Follow::Retain(Box::new(Retained {
                machine,
                stopped,
                history: console.history,
            })))
        }
        (Err(e), _) => Err(e),
    }
}
