//! `loadtest`: one subcommand per scenario. Each prints the figures it measured; none of them
//! asserts a timing (speed is reported, not tested).

use clap::{Parser, Subcommand};

mod api;
mod book;
mod calibrate;
mod challenge_timing;
mod engine;
mod ledger;
mod rss;
mod sybil;
mod verification;
mod ws;

#[derive(Parser)]
#[command(name = "loadtest", about = "Gridbook load generators and benchmarks")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Order placement over HTTP (POST /v1/jobs: auth, escrow, outbox → NATS) on the real stack.
    Api(api::Args),
    /// Pure order-book core: exchange-core's mix, against orderbook-rs in the same run.
    Book(book::Args),
    /// Image tolerance calibration: honest renders across threads/batch vs the verifier's re-run, and cheats.
    CalibrateImages(calibrate::Args),
    /// Hardware challenge: a device class's challenge run as the agent runs it (the class bounds).
    ChallengeTiming(challenge_timing::Args),
    /// Verification overhead: the verifier's re-run of the sampled items as a % of the assignment's work.
    VerificationOverhead(calibrate::OverheadArgs),
    /// The engine over NATS JetStream: studios and providers trading into 1, 2, 4 markets.
    Engine(engine::Args),
    /// Escrow ledger on PostgreSQL: single and batched transfers, hot and spread accounts.
    Ledger(ledger::Args),
    /// Executor memory on a bulk file: peak RSS and time to first output byte of `executor run`.
    Rss(rss::Args),
    /// Identity clusters and the anti-whale cap: matched-volume shares of Sybil operators.
    Sybil(sybil::Args),
    /// Verification sampling: detection of cheaters under the old and the new sample rule.
    Verification(verification::Args),
    /// The API's WebSocket market feed: many clients, per-delta lag, gaps, drops.
    Ws(ws::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Api(args) => api::run(args),
        Scenario::Book(args) => book::run(args),
        Scenario::CalibrateImages(args) => calibrate::run(args),
        Scenario::ChallengeTiming(args) => challenge_timing::run(args),
        Scenario::VerificationOverhead(args) => calibrate::overhead(args),
        Scenario::Engine(args) => engine::run(args),
        Scenario::Ledger(args) => ledger::run(args),
        Scenario::Rss(args) => rss::run(args),
        Scenario::Sybil(args) => sybil::run(args),
        Scenario::Verification(args) => verification::run(args),
        Scenario::Ws(args) => ws::run(args),
    }
}
