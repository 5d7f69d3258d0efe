//! `understudy node`: one replica of a fault-tolerant guest. It pings the viewserver and takes
//! its role from the view: primary (run live, stream the log, release output once the backup
//! has it), backup (install the primary's state, replay its log, emit nothing), or idle.
//! docs/design.md has the role state machine and the protocol.

pub mod backup;
pub mod primary;
pub mod views;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use logging_channel::net::{ChannelConfig, Listener};
use vmm::clock::SystemClock;
use vmm::live::LiveStart;
use vmm::machine::{Machine, MachineConfig};

use backup::BackupEnd;
use primary::{PrimaryEnd, Start};
use views::Views;

/// What every role needs to know about this node and its guest.
#[derive(Debug)]
pub struct NodeCtx {
    pub image: Vec<u8>,
    pub image_sha256: [u8; 32],
    pub cmdline: String,
    pub mem_mib: u32,
    pub transcript: Option<PathBuf>,
    pub channel: ChannelConfig,
    pub stats: bool,
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
    viewserver: String,
    listener: &Listener,
    name: String,
    ping_interval: Duration,
) -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
    if let Some(path) = &ctx.transcript {
        // A fresh transcript per process: it is this node's execution.
        std::fs::write(path, b"")?;
    }
    let views = Views::new(viewserver, name, ping_interval);
    let pinger = views::spawn_pinger(Arc::clone(&views))?;
    let result = roles(ctx, listener, &views);
    views.stop();
    let _ = pinger.join();
    result
}

fn roles(
    ctx: &NodeCtx,
    listener: &Listener,
    views: &Arc<Views>,
) -> Result<u32, Box<dyn std::error::Error + Send + Sync>> {
    let me = views.me.clone();
    let mut said_idle = false;
    let mut said_no_state = false;
    let mut promoted: Option<Box<backup::Retained>> = None;
    loop {
        let Some(view) = views.wait_first(Duration::from_secs(3600)) else {
            continue;
        };
        if view.primary == me {
            let end = match promoted.take() {
                Some(r) => go_live(ctx, views, *r)?,
                None if view.viewnum == 1 => {
                    eprintln!("node {me}: view 1: primary; booting the guest");
                    let machine = build(ctx)?;
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
                        },
                    )?
                }
                None => {
                    // Booting afresh would contradict whatever the guest already said.
                    if !said_no_state {
                        eprintln!(
                            "node {me}: view {} names this node primary, but it has no state (it restarted); waiting",
                            view.viewnum
                        );
                        said_no_state = true;
                    }
                    views.stateless();
                    views.wait_change(view.viewnum, views.interval * 10);
                    continue;
                }
            };
            match end {
                PrimaryEnd::PowerOff(code) => {
                    eprintln!("node {me}: the guest powered off (exit code {code})");
                    return Ok(code);
                }
                PrimaryEnd::Superseded => {
                    views.stateless();
                    continue;
                }
            }
        }
        if view.backup == me {
            said_idle = false;
            eprintln!(
                "node {me}: view {}: backup of {}; waiting for its state",
                view.viewnum, view.primary
            );
            match backup::serve(ctx, listener, views) {
                BackupEnd::Promoted(r) => promoted = r,
                BackupEnd::NotBackup => {}
                BackupEnd::GuestDone(code) => {
                    eprintln!(
                        "node {me}: the replayed guest powered off (exit code {code}), as the primary's did"
                    );
                    return Ok(code);
                }
            }
            continue;
        }
        if !said_idle {
            eprintln!(
                "node {me}: view {}: idle (primary {:?}, backup {:?})",
                view.viewnum, view.primary, view.backup
            );
            said_idle = true;
        }
        views.follow();
        views.wait_change(view.viewnum, views.interval);
    }
}

fn build(ctx: &NodeCtx) -> Result<Machine, vmm::machine::MachineError> {
    Machine::new(&MachineConfig {
        mem_mib: ctx.mem_mib,
        image: &ctx.image,
        cmdline: ctx.cmdline.clone(),
    })
}

/// The backup was promoted: its replayed machine goes live where the log stopped.
fn go_live(
    ctx: &NodeCtx,
    views: &Arc<Views>,
    r: backup::Retained,
) -> Result<PrimaryEnd, Box<dyn std::error::Error + Send + Sync>> {
    let s = &r.stopped;
    let from = s.released.min(r.history.len() as u64);
    eprintln!(
        "node {}: going live at guest exit {}, console byte {}; releasing from byte {from} ({} bytes the old primary may not have released)",
        views.me,
        s.exits,
        s.console.bytes,
        r.history.len() as u64 - from
    );
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
    };
    primary::serve(ctx, views, r.machine, start)
}
