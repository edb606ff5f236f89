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
    /// Create an admin account (admins cannot sign up over HTTP). The password is read from
    /// `GRIDBOOK_ADMIN_PASSWORD`, or else from the first line of standard input.
    CreateAdmin {
        #[arg(long)]
        email: String,
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
        Cmd::CreateAdmin { email, config } => {
            let settings: gridbook_api::Settings = gridbook_support::load_config(config.as_deref())?;
            let password = match std::env::var("GRIDBOOK_ADMIN_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            let user = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
                let mut c = gridbook_db::connect(&settings.database_url)?;
                gridbook_db::run_migrations(&mut c)?;
                gridbook_ledger::escrow::ensure_system_accounts(&mut c, gridbook_api::money::LEDGER)?;
                gridbook_api::accounts::create_admin(&mut c, &email, &password)
                    .map_err(|e| anyhow::anyhow!("{}: {}", e.code, e.message))
            })
            .await??;
            println!("admin {} created (id {})", user.email, user.id);
        }
    }
    Ok(())
}
