//! `gridbook-api run [--config FILE]`: the marketplace API.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Gridbook's marketplace API")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the API.
    Run {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    gridbook_support::init_tracing("gridbook-api");
    match cli.cmd {
        Cmd::Run { config } => {
            let settings: gridbook_api::Settings = gridbook_support::load_config(config.as_deref())?;
            let app = gridbook_api::Application::build(settings).await?;
            app.run_until_stopped().await?;
        }
    }
    Ok(())
}
