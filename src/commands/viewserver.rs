//! `understudy viewserver`: run the view service.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use viewserver::etcd::Resigner;
use viewserver::{Config, EtcdConfig, EtcdStore, FileStore, Observer, ServiceEvent, ViewServer};

use super::CmdResult;
use crate::signals::ExitSignals;

#[derive(Debug, Args)]
pub struct ViewserverArgs {
    /// Address to listen on (host:port; port 0 picks a free one).
    #[arg(long)]
    pub listen: String,
    /// Directory that keeps the view across restarts (created if missing). A restarted
    /// viewserver continues from it; one that lost it starts a new service, which nodes of the
    /// old one refuse to follow. One viewserver per directory.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "viewserver.data",
        conflicts_with = "etcd"
    )]
    pub data_dir: PathBuf,
    /// Keep the view in etcd instead (its members' client URLs, comma-separated): run several
    /// viewservers on the same etcd and prefix, and one of them at a time leads, elected through
    /// an etcd lease; the others answer 503 naming it. Give nodes every viewserver's address.
    #[arg(long, value_name = "URL[,URL...]", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The etcd keys used are PREFIX/leader and PREFIX/state: one prefix per service.
    #[arg(
        long,
        value_name = "PREFIX",
        default_value = "/understudy",
        requires = "etcd"
    )]
    pub etcd_prefix: String,
    /// The address nodes reach this viewserver at, which followers name to them (default: the
    /// address actually listened on).
    #[arg(long, value_name = "ADDR", requires = "etcd")]
    pub advertise: Option<String>,
    /// How often servers ping; the service ticks once per interval.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_interval_ms: u64,
    /// Consecutive missed intervals after which a server is dead.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub dead_pings: u32,
    /// How long a new backup may take to hold the primary's state before another server (or
    /// none) replaces it.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub backup_timeout_ms: u64,
    /// Append machine-readable events (JSON lines: listening, leadership, view changes, etcd
    /// trouble) to FILE; docs/events.md has the schema.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
}

/// What the viewserver itself says: a human line on stderr, and the event if `--events`.
#[derive(Debug, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum ViewserverEvent<'a> {
    /// Serving on `addr` (the port picked for `:0`).
    Listening { addr: &'a str },
}

fn listening(addr: &str) {
    // Scripts without --events parse this line to learn the port picked for :0.
    eprintln!("viewserver: listening on {addr}");
    crate::events::set_who(&format!("viewserver {addr}"));
    crate::events::emit(&ViewserverEvent::Listening { addr });
}

/// Prints each service event for people and appends it for programs.
fn observer() -> Observer {
    Observer::new(|e: &ServiceEvent| {
        eprintln!("viewserver: {e}");
        crate::events::emit(e);
    })
}

pub fn run(args: &ViewserverArgs) -> CmdResult {
    let mut config = Config::new(args.listen.clone());
    config.ping_interval = Duration::from_millis(args.ping_interval_ms);
    config.dead_pings = args.dead_pings;
    config.backup_timeout = Duration::from_millis(args.backup_timeout_ms);
    config.events = Some(observer());
    if let Some(path) = &args.events {
        crate::events::open(path, "viewserver")?;
    }
    if args.etcd.is_empty() {
        // The address first: a viewserver that cannot listen leaves no data directory behind.
        let listener = viewserver::server::listen(&args.listen)?;
        let store = FileStore::open(&args.data_dir)?;
        let server = ViewServer::with_listener(config, listener, Box::new(store))?;
        listening(&server.local_addr().to_string());
        server.serve()?;
        return Ok(ExitCode::SUCCESS);
    }
    // Before any thread starts, so that every thread inherits the mask and
    // only the one that waits for them takes these signals.
    let signals = ExitSignals::block()?;
    let listener = viewserver::server::listen(&args.listen)?;
    let addr = listener.local_addr()?;
    listening(&addr.to_string());
    let advertise = args.advertise.clone().unwrap_or_else(|| addr.to_string());
    let mut etcd = EtcdConfig::new(args.etcd.clone(), args.etcd_prefix.clone(), advertise);
    etcd.events = Some(observer());
    let store = EtcdStore::open(etcd)?;
    if let Some(r) = store.resigner() {
        resign_on(signals, r)?;
    }
    let server = ViewServer::with_listener(config, listener, Box::new(store))?;
    server.serve()?;
    Ok(ExitCode::SUCCESS)
}

/// On SIGINT or SIGTERM: give the leadership up at once (another viewserver
/// leads without waiting for our lease to run out), then exit.
fn resign_on(signals: ExitSignals, r: Resigner) -> std::io::Result<()> {
    signals.watch(move |sig| {
        r.resign();
        eprintln!("viewserver: signal {sig}: resigned the leadership; exiting");
        std::process::exit(0);
    })
}
