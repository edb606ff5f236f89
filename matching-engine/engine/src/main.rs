//! `matching-engine`: the shell around the pure `matching-core` book. One module per
//! subcommand; `main` only dispatches.
//!
//! - `matching-engine replay FILE` — a command log (JSONL) in, the events (JSONL) out.
//! - `matching-engine run [--config FILE]` — the NATS JetStream shell: one single writer per
//!   configured market (module `market`, around the pure `state::MarketState`).

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

mod lease;
mod market;
mod replay;
mod run;
mod settings;
mod state;
mod stats;

#[derive(Parser)]
#[command(name = "matching-engine", about = "Gridbook's matching engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay a command log (JSONL, one command per line) and print the events as JSONL: the
    /// operator's tool for audits and incident replays.
    Replay(replay::Args),
    /// Run the engine over NATS JetStream for the configured markets until Ctrl-C / SIGTERM.
    Run {
        /// TOML settings; `GRIDBOOK_*` environment variables override them.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Replay(args) => replay::run(args),
        Command::Run { config } => run_engine(config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole cause chain, e.g. `error: line 3: invalid command: ...`.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_engine(config: Option<PathBuf>) -> anyhow::Result<()> {
    gridbook_support::init_tracing("matching-engine");
    let settings: settings::EngineSettings = gridbook_support::load_config(config.as_deref())?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run::run(settings))
}
