//! `gridbook`: the marketplace from a terminal, for studios, providers and admins.
//!
//! Every command talks to the API (`--api`, `GRIDBOOK_API`, the address stored by `login`, else
//! http://127.0.0.1:8080) with the key `gridbook login` stored (or `GRIDBOOK_API_KEY`). Errors
//! the API sends are shown as `error: <message> (field <field>)` and the exit status is non-zero;
//! `--json` prints what the API answered (and errors as the API's JSON on stdout) for scripts.

mod account;
mod client;
mod config;
mod deadline;
mod estimate;
mod jobs;
mod output;
mod provider;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::client::{ApiFailure, Client};

#[derive(Parser, Debug)]
#[command(
    name = "gridbook",
    version,
    about = "The Gridbook GPU-compute marketplace from a terminal: jobs, balances, asks, nodes.",
    after_help = "Start with `gridbook login`. The key is stored in $XDG_CONFIG_HOME/gridbook/credentials.toml \
                  (or ~/.config/gridbook/credentials.toml) with mode 0600; GRIDBOOK_API_KEY overrides it."
)]
pub struct Cli {
    /// The API's address [default: the one `login` stored, else http://127.0.0.1:8080].
    #[arg(long, global = true, env = "GRIDBOOK_API", value_name = "URL")]
    api: Option<String>,
    /// Print JSON (the API's objects) instead of text: for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Log in with email and password; creates an API key and stores it (mode 0600).
    Login(account::LoginArgs),
    /// Revoke the stored API key and delete the credentials file.
    Logout,
    /// Who the stored key belongs to, and what it may do.
    Whoami,
    /// Markets: workload, lines per unit, price band, fee, best bid and ask.
    Markets,
    /// Batch jobs (studios).
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Your balance: available, held for open jobs, pending.
    Balance,
    /// Your ledger statement, newest first.
    Statement(account::StatementArgs),
    /// Asks: capacity your nodes offer (providers).
    #[command(subcommand)]
    Asks(provider::AsksCommand),
    /// Your nodes (providers).
    #[command(subcommand)]
    Nodes(provider::NodesCommand),
    /// What your nodes earned (providers).
    Earnings,
    /// Credit a user's account (admins).
    Credit(account::CreditArgs),
}

/// Page options of the list commands.
#[derive(Args, Debug, Clone)]
pub struct PageArgs {
    /// How many to show (1 to 100).
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Only older than this id (the previous page's `next_before`).
    #[arg(long)]
    before: Option<String>,
}

impl PageArgs {
    fn query(&self) -> String {
        let mut q = format!("?limit={}", self.limit);
        if let Some(b) = &self.before {
            q.push_str(&format!("&before={}", output::encode(b)));
        }
        q
    }
}

/// What every command gets: the client and how to print.
pub struct Ctx {
    pub client: Client,
    pub json: bool,
    /// The API address and where it came from, for messages.
    pub api: String,
}

impl Ctx {
    fn new(cli: &Cli, stored: Option<&config::Credentials>) -> anyhow::Result<Ctx> {
        let api = cli
            .api
            .clone()
            .filter(|a| !a.trim().is_empty())
            .or_else(|| stored.map(|c| c.api.clone()))
            .unwrap_or_else(|| config::DEFAULT_API.to_owned());
        let api = api.trim().trim_end_matches('/').to_owned();
        let key = std::env::var("GRIDBOOK_API_KEY")
            .ok()
            .filter(|k| !k.trim().is_empty())
            .map(|k| k.trim().to_owned())
            .or_else(|| {
                // A stored key belongs to the API it was made on.
                stored
                    .filter(|c| c.api.trim_end_matches('/') == api)
                    .map(|c| c.key.clone())
            });
        Ok(Ctx {
            client: Client::new(&api, key)?,
            json: cli.json,
            api,
        })
    }
}

/// An exit status a command chose (e.g. `jobs watch` on a job that failed), after it printed
/// what it had to say.
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}
impl std::error::Error for Exit {}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let stored = config::load()?;
    let ctx = Ctx::new(&cli, stored.as_ref())?;
    match cli.command {
        Command::Login(a) => account::login(&ctx, a, stored).await,
        Command::Logout => account::logout(&ctx, stored).await,
        Command::Whoami => account::whoami(&ctx).await,
        Command::Markets => account::markets(&ctx).await,
        Command::Jobs(c) => jobs::run(&ctx, c).await,
        Command::Balance => account::balance(&ctx).await,
        Command::Statement(a) => account::statement(&ctx, a).await,
        Command::Asks(c) => provider::asks(&ctx, c).await,
        Command::Nodes(c) => provider::nodes(&ctx, c).await,
        Command::Earnings => provider::earnings(&ctx).await,
        Command::Credit(a) => account::credit(&ctx, a).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e, json),
    }
}

/// Prints an error the way the CLI promises and picks the exit status.
fn report(e: &anyhow::Error, json: bool) -> ExitCode {
    if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
        return ExitCode::from(*code);
    }
    if let Some(f) = e.downcast_ref::<ApiFailure>() {
        if json {
            output::print_json(&f.body);
        }
        eprintln!("error: {f}");
        for (line, message) in f.details.iter().take(20) {
            eprintln!("  line {line}: {message}");
        }
        if f.details.len() > 20 {
            eprintln!("  … and {} more", f.details.len() - 20);
        }
        if let Some(h) = f.hint() {
            eprintln!("hint: {h}");
        }
        return ExitCode::FAILURE;
    }
    if json {
        output::print_json(
            &serde_json::json!({"error": {"code": "cli", "message": format!("{e:#}")}}),
        );
    }
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}
