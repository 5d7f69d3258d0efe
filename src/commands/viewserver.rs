//! `understudy viewserver`: run the view service.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use viewserver::{Config, FileStore, ViewServer};

use super::CmdResult;

#[derive(Debug, Args)]
pub struct ViewserverArgs {
    /// Address to listen on (host:port; port 0 picks a free one).
    #[arg(long)]
    pub listen: String,
    /// Directory that keeps the view across restarts (created if missing). A restarted
    /// viewserver continues from it; one that lost it starts a new service, which nodes of the
    /// old one refuse to follow. One viewserver per directory.
    #[arg(long, value_name = "DIR", default_value = "viewserver.data")]
    pub data_dir: PathBuf,
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
}

pub fn run(args: &ViewserverArgs) -> CmdResult {
    let mut config = Config::new(args.listen.clone());
    config.ping_interval = Duration::from_millis(args.ping_interval_ms);
    config.dead_pings = args.dead_pings;
    config.backup_timeout = Duration::from_millis(args.backup_timeout_ms);
    let store = FileStore::open(&args.data_dir)?;
    let server = ViewServer::bind(config, Box::new(store))?;
    // Tests and scripts parse this line to learn the port picked for :0.
    eprintln!("viewserver: listening on {}", server.local_addr());
    server.serve()?;
    Ok(ExitCode::SUCCESS)
}
