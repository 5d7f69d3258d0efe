//! `understudy`: fault-tolerant virtual machines on Linux/KVM.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod commands;
mod digest_choice;
mod events;
mod guest_choice;
mod net_choice;
mod node;
mod signals;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "understudy",
    version,
    about = "Fault-tolerant virtual machines on Linux/KVM: run, record, replay, inspect"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Boot a guest and run it (optionally recording a replay log).
    Run(commands::run::RunArgs),
    /// Replay a log: reproduce the recorded run exactly and verify every digest.
    Replay(commands::replay::ReplayArgs),
    /// Inspect replay logs.
    #[command(subcommand)]
    Log(commands::log::LogCommand),
    /// Demonstrate failover on this machine: a viewserver and three nodes, the primary killed
    /// with SIGKILL, and checks that no released output was lost or contradicted.
    Demo(commands::demo::DemoArgs),
    /// Run one replica of a fault-tolerant guest: primary, backup or idle, as the viewserver
    /// decides.
    ///
    /// Every node of one guest must give the same `--guest`, `--guest-arg`s and `--mem-mib`: a
    /// backup refuses the state of a primary whose image or memory size differs. Released
    /// console output goes to stdout; this node's messages go to stderr.
    Node(commands::node::NodeArgs),
    /// Run the view service: decides which server is primary and which is backup.
    Viewserver(commands::viewserver::ViewserverArgs),
    /// Print the current view of a viewserver.
    View(commands::view::ViewArgs),
    /// Write the built-in guest kernel (the exact image `run --guest compute` boots) to a file,
    /// e.g. to boot it under QEMU for a side-by-side comparison.
    ExportGuest(commands::export_guest::ExportGuestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("UNDERSTUDY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = match cli.command {
        Command::Run(args) => commands::run::run(&args),
        Command::Replay(args) => commands::replay::run(&args),
        Command::Log(cmd) => commands::log::run(&cmd),
        Command::Demo(args) => commands::demo::run(&args),
        Command::Node(args) => commands::node::run(&args),
        Command::Viewserver(args) => commands::viewserver::run(&args),
        Command::View(args) => commands::view::run(&args),
        Command::ExportGuest(args) => commands::export_guest::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("understudy: error: {}", commands::error_chain(err.as_ref()));
            ExitCode::from(1)
        }
    }
}
