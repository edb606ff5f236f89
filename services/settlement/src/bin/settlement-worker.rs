//! `settlement-worker run [--config FILE]`: settles engine events and publishes the outbox until
//! Ctrl-C / SIGTERM.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use gridbook_settlement::{Settings, run};
use tracing::info;

#[derive(Parser)]
#[command(name = "settlement-worker", about = "Gridbook's settlement worker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the event consumer and the outbox publisher.
    Run {
        /// A TOML settings file; `GRIDBOOK_*` variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Command::Run { config } = Cli::parse().command;
    gridbook_support::init_tracing("settlement-worker");
    let settings: Settings =
        gridbook_support::load_config(config.as_deref()).context("loading settings")?;
    tokio::select! {
        r = run(settings) => r.context("settlement worker")?,
        _ = shutdown_signal() => info!("shutting down"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
