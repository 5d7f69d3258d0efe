//! `understudy viewserver`: run the view service.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use viewserver::{Config, ViewServer};

use super::CmdResult;

#[derive(Debug, Args)]
pub struct ViewserverArgs {
    /// Address to listen on (host:port; port 0 picks a free one).
    #[arg(long)]
    pub listen: String,
    /// How often servers ping; the service ticks once per interval.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_interval_ms: u64,
    /// Consecutive missed intervals after which a server is dead.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub dead_pings: u32,
}

pub fn run(args: &ViewserverArgs) -> CmdResult {
    let mut config = Config::new(args.listen.clone());
    config.ping_interval = Duration::from_millis(args.ping_interval_ms);
    config.dead_pings = args.dead_pings;
    let server = ViewServer::bind(config)?;
    // Tests and scripts parse this line to learn the port picked for :0.
    eprintln!("viewserver: listening on {}", server.local_addr());
    server.serve()?;
    Ok(ExitCode::SUCCESS)
}
