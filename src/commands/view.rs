//! `understudy view`: print the current view of a viewserver.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::CmdResult;

#[derive(Debug, Args)]
pub struct ViewArgs {
    /// The viewserver's address (host:port), or several, comma-separated (asks whichever leads).
    #[arg(
        long,
        value_name = "ADDR[,ADDR...]",
        value_delimiter = ',',
        required = true
    )]
    pub viewserver: Vec<String>,
    /// Print the view as JSON.
    #[arg(long)]
    pub json: bool,
    /// Give up after this long.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
}

pub fn run(args: &ViewArgs) -> CmdResult {
    let client = viewserver::client::Client::new(
        args.viewserver.clone(),
        Duration::from_millis(args.timeout_ms),
    );
    let view = client.status()?;
    if args.json {
        println!("{}", serde_json::to_string(&view)?);
    } else {
        println!("{view}");
    }
    Ok(ExitCode::SUCCESS)
}
