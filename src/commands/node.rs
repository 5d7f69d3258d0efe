//! `understudy node`: one replica of a fault-tolerant guest (see `crate::node`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use logging_channel::net::{ChannelConfig, Listener};

use super::CmdResult;
use crate::guest_choice::GuestArgs;
use crate::node::{self, NodeCtx};

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The viewserver's address (`understudy viewserver --listen`), or several, comma-separated,
    /// for viewservers sharing one view through etcd (the node follows whichever leads).
    #[arg(
        long,
        value_name = "ADDR[,ADDR...]",
        value_delimiter = ',',
        required = true
    )]
    pub viewserver: Vec<String>,
    /// Address of this node's logging channel; it is also the node's name in views.
    #[arg(long, value_name = "ADDR")]
    pub listen: String,
    /// Name to give the viewserver instead of the listen address (the address other nodes
    /// reach this one at, e.g. behind NAT or a proxy).
    #[arg(long, value_name = "ADDR")]
    pub name: Option<String>,
    // Every node of one guest must give the same image, arguments and memory: the backup
    // refuses a state from a primary whose image hash or memory size differs.
    #[command(flatten)]
    pub vm: GuestArgs,
    // Every node of one guest must give the same --mac; each its own --tap.
    #[command(flatten)]
    pub net: crate::net_choice::NetArgs,
    /// Write the guest's whole console as executed on this node (replayed or live, released
    /// or not) to this file.
    #[arg(long, value_name = "FILE")]
    pub transcript: Option<PathBuf>,
    /// Milliseconds between pings to the viewserver.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(5..=60_000))]
    pub ping_interval_ms: u64,
    /// Milliseconds of silence after which a logging-channel peer counts as gone.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=600_000))]
    pub peer_timeout_ms: u64,
    /// As primary: how often the log gets a digest of the machine (the backup checks each).
    #[command(flatten)]
    pub digest: crate::digest_choice::DigestArgs,
    /// Print release-delay and pause statistics to stderr at the end.
    #[arg(long)]
    pub stats: bool,
    /// Append machine-readable events (JSON lines: roles, views, transfers, going live with
    /// its log position and console byte, lag samples, errors) to FILE; docs/events.md has the
    /// schema.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// As a backup, the replay's approach tuning: fraction of the remaining distance a timed
    /// kick aims at (experts; above 1 it overshoots on purpose, which tests going back to a
    /// checkpoint).
    #[arg(long, hide = true)]
    pub replay_aim: Option<f64>,
}

pub fn run(args: &NodeArgs) -> CmdResult {
    if let Some(path) = &args.events {
        crate::events::open(path, "node")?;
    }
    let guest = args.vm.resolve()?;
    let peer_timeout = Duration::from_millis(args.peer_timeout_ms);
    let channel = ChannelConfig {
        peer_timeout,
        heartbeat_interval: (peer_timeout / 10).max(Duration::from_millis(5)),
        ..ChannelConfig::default()
    };
    // The listener reads first messages from now on, whatever role this node takes.
    let listener = Listener::bind_with(args.listen.as_str(), &channel)?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| listener.local_addr().to_string());
    eprintln!(
        "node {name}: listening on {}, viewserver {}",
        listener.local_addr(),
        args.viewserver.join(",")
    );
    let ctx = NodeCtx {
        image_sha256: guest.sha256(),
        image: guest.image,
        cmdline: guest.cmdline,
        mem_mib: args.vm.mem_mib,
        nic_mac: args.net.mac()?,
        tap: args.net.open_silent()?,
        transcript: args.transcript.clone(),
        channel,
        stats: args.stats,
        digest_interval: args.digest.interval(),
        digest_max_share: args.digest.max_share(),
        replay_tuning: {
            let mut t = vmm::precise::ApproachTuning::default();
            if let Some(aim) = args.replay_aim {
                t.aim = aim;
            }
            t
        },
        stdout_written: std::sync::atomic::AtomicU64::new(0),
    };
    let code = node::run(
        &ctx,
        args.viewserver.clone(),
        &listener,
        name,
        Duration::from_millis(args.ping_interval_ms),
    )?;
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)))
}
