//! gridbook-settlement: the settlement worker.
//!
//! It consumes the engine's event messages (`market.<market>.evt`, stream `GRIDBOOK_EVENTS`)
//! with a durable pull consumer and settles them exactly once in effect: per message ONE
//! PostgreSQL transaction holds, for every event with a ledger effect, its `processed_events` row
//! (`settlement`, `<market>.<event seq>`), the escrow effect and any outbox message; the NATS
//! message is acked after the commit, so a redelivery finds the events processed and does
//! nothing. The outbox publisher sends outbox rows to JetStream with `Nats-Msg-Id` = outbox id.
//!
//! - `decide`: pure — event + `market_orders` view → [`decide::Effect`] (decisions as data);
//!   units and the event → ledger mapping are documented there.
//! - `orders`: the `market_orders` table (engine order id → escrow order, account, node, job).
//! - `settle`: the database edge — one message, one transaction.
//! - `dead_letter`: what the worker refuses (an unknown order, an undecodable message, a bid
//!   without escrow, a ledger rule) is recorded in `dead_letters` with the event's
//!   `processed_events` row and acked; the escrow the event took is released (`decide::Remedy`).
//! - `worker`: the NATS edge — streams, the consumer loop, the outbox publisher.
//! - `jobs`: job assignments (fill → input lines, deadline), job states, finishing.
//! - `verify`: checking a node's result (completeness, hashes, Merkle root, then a sample drawn
//!   from an HMAC of the commitment under `verification_secret`, re-run and compared).
//! - `results`: the NATS edge of results — the verifier consumer and the job finisher.
//! - `redo`: what a verification leaves behind — pay, or (failed) re-offer the units on the book
//!   from the same reservation / refund, cancel the node's asks or suspend it, and the
//!   `assignment_verifications` record (the dispute record when it failed).
//! - `canary`: items with known answers mixed into assignments (the pool, the layout).
//! - `crosscheck`: the sampled re-run on another provider's node (verification tasks), the
//!   market's runtime deciding disagreements.
//! - `protocol`: epoch closes — fees swept and shared, GRID emitted, rewards split by verified
//!   work × reliability × uptime under a cluster cap, the treasury's GRID burned, the buyback
//!   bid placed on the GRID market; one report per epoch.
//! - `token`: a token market (`GRID-CREDITS`): fills settled delivery-versus-payment, holds
//!   released on cancel; the protocol's buyback order (`place_protocol_buy`), `vwap`.
//! - `db`: diesel on tokio's blocking pool.
//!
//! Orders that are not in `market_orders` (load-test traffic, other clients of the engine) have
//! no escrow: their events are skipped with a debug log and not recorded as processed — unless
//! they trade with one of ours, which is refused and dead-lettered.

pub mod canary;
pub mod crosscheck;
pub mod db;
pub mod dead_letter;
pub mod decide;
pub mod error;
pub mod jobs;
pub mod protocol;
pub mod redo;
pub mod reliability;
pub mod results;
pub mod verify;
pub mod settle;
pub mod token;
pub mod withhold;
pub mod worker;

/// The tables, declared once in `gridbook-db`.
use gridbook_db::schema;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{error, info};

pub use error::{Result, SettlementError};

/// Typed settings (`gridbook_support::load_config`: defaults, `--config` file, `GRIDBOOK_*`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// `GRIDBOOK_DATABASE_URL`. Never logged (it may hold a password).
    pub database_url: String,
    /// `GRIDBOOK_NATS_URL`.
    pub nats_url: String,
    /// `GRIDBOOK_NATS_NKEY_FILE`: the worker's nkey seed (`settlement.nk`, see
    /// `gridbook-natsauth`); unset: connect without credentials.
    pub nats_nkey_file: Option<std::path::PathBuf>,
    /// Durable consumer name on `GRIDBOOK_EVENTS`.
    pub consumer: String,
    /// Subjects the consumer takes (one market in tests).
    pub filter_subject: String,
    /// Messages pulled per request.
    pub fetch_batch: usize,
    /// Deliveries of one message before JetStream gives up on it.
    pub max_deliver: i64,
    /// Seconds before JetStream redelivers a message that was not acked (e.g. after a crash).
    pub ack_wait_secs: u64,
    /// Outbox rows per publish round.
    pub outbox_batch: i64,
    pub outbox_interval_ms: u64,
    /// `GRIDBOOK_VERIFICATION_SECRET`: hex, at least 32 bytes; the key of the HMAC the
    /// verification sample is drawn from (`verify::sample_seed`). Never logged. Unset: a random
    /// secret per process (samples stay unpredictable, but cannot be recomputed after a restart;
    /// set one in production so disputes can be re-checked).
    pub verification_secret: Option<String>,
    /// Items re-run per assignment, unless `sample_items_by_market` names the market.
    pub sample_items: usize,
    pub sample_items_by_market: std::collections::BTreeMap<String, usize>,
    /// `GRIDBOOK_SD_MODEL_DIR`: the SD pipeline the verifier re-runs `RENDER-SD15-512` items
    /// with (the same export the nodes use). Unset: SD results cannot be verified and are
    /// retried, never paid unchecked.
    pub sd_model_dir: Option<std::path::PathBuf>,
    /// `GRIDBOOK_MODELS_KEK_FILE`: the key-encryption key of studios' private models (the API's
    /// file). Unset: results of jobs with a private model cannot be verified and are retried,
    /// never paid unchecked.
    pub models_kek_file: Option<std::path::PathBuf>,
    /// `GRIDBOOK_MAX_REOFFERS`: how many times the units of a failed assignment may go back to
    /// the book as a re-bid of the same job (`redo`); after that they are refunded. 0: refund
    /// at once (the behaviour before re-offers).
    pub max_reoffers: u32,
    /// `GRIDBOOK_WITHHOLD_ASSIGNMENTS`: the withholding window W (`withhold`): a node's pay for a
    /// verified assignment is released after W more of its assignments are verified, and
    /// forfeited to the verification fund on a proven cheat. Default 6 = ⌈1/p⌉ for a cheater
    /// faking 5 % of the items under the default sample of 4 (p = 1 − 0.95⁴ ≈ 0.185); raise it
    /// with `sample_items` lowered, or to cover smaller f. 0: paid at once (no window).
    pub withhold_assignments: u32,
    /// `GRIDBOOK_VERIFY_ON_NODES`: re-run a result's sample on another provider's node
    /// (`crosscheck`) when one is eligible; `false`: always on the market's own runtime.
    pub verify_on_nodes: bool,
    /// `GRIDBOOK_VERIFICATION_TASK_SECS`: how long a verifying node has to answer before the
    /// market re-runs the sample itself.
    pub verification_task_secs: u64,
    /// `GRIDBOOK_CANARY_RATE`: canaries per item mixed into assignments (`canary`; 0: none),
    /// unless `canary_rate_by_market` names the market. An assignment with more items than its
    /// sample always gets at least one.
    pub canary_rate: f64,
    pub canary_rate_by_market: std::collections::BTreeMap<String, f64>,
    /// `GRIDBOOK_CANARY_POOL_SIZE`: live canaries kept per market.
    pub canary_pool_size: u32,
    /// `GRIDBOOK_CANARY_MAX_USES`: assignments one canary is placed in before it is retired.
    pub canary_max_uses: u32,
    /// `GRIDBOOK_CLOSE_EPOCHS`: whether this worker closes epochs (`protocol`; exactly one
    /// closes each epoch however many run: an advisory lock).
    pub close_epochs: bool,
    /// `GRIDBOOK_EPOCH_SECS`: the epoch length (the published rule, `gridbook_ledger::epoch`).
    pub epoch_secs: i64,
    /// `GRIDBOOK_EPOCH_CHECK_SECS`: how often the worker looks for an epoch to close.
    pub epoch_check_secs: u64,
    /// `GRIDBOOK_EPOCH_GRACE_SECS`: how long after an epoch ends it is closed.
    pub epoch_grace_secs: i64,
    /// `GRIDBOOK_BUYBACK_SHARE_BPS`: share of each epoch's fee revenue that buys GRID back.
    pub buyback_share_bps: u32,
    /// `GRIDBOOK_REWARDS_SHARE_BPS`: share of each epoch's fee revenue for the rewards pool.
    pub rewards_share_bps: u32,
    /// `GRIDBOOK_EMISSION_BPS`: share of the GRID emission reserve emitted per epoch.
    pub emission_bps: u32,
    /// `GRIDBOOK_REWARD_CLUSTER_CAP_BPS`: most of a reward pool one identity cluster receives.
    pub reward_cluster_cap_bps: u32,
    /// `GRIDBOOK_BUYBACK_SLIPPAGE_BPS`: the buyback limit above the reference price.
    pub buyback_slippage_bps: u32,
    /// `GRIDBOOK_UPTIME_RETENTION_DAYS`: heartbeat minutes kept.
    pub uptime_retention_days: i64,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The database URL and the verification secret are never printed.
        f.debug_struct("Settings")
            .field("nats_url", &self.nats_url)
            .field("consumer", &self.consumer)
            .field("sample_items", &self.sample_items)
            .field("sample_items_by_market", &self.sample_items_by_market)
            .field("max_reoffers", &self.max_reoffers)
            .field("withhold_assignments", &self.withhold_assignments)
            .field("verify_on_nodes", &self.verify_on_nodes)
            .field("verification_task_secs", &self.verification_task_secs)
            .field("canary_rate", &self.canary_rate)
            .field("canary_rate_by_market", &self.canary_rate_by_market)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// How failed work is redone (`max_reoffers`).
    pub fn redo_policy(&self) -> redo::RedoPolicy {
        redo::RedoPolicy {
            max_reoffers: self.max_reoffers,
            withhold_assignments: self.withhold_assignments,
        }
    }

    /// Where samples are re-run (`verify_on_nodes`, `verification_task_secs`).
    pub fn task_policy(&self) -> crosscheck::TaskPolicy {
        crosscheck::TaskPolicy {
            enabled: self.verify_on_nodes,
            timeout_secs: self.verification_task_secs.max(1),
        }
    }

    /// How many canaries assignments get (`canary_*`, with the sample sizes). `Err` for a rate
    /// outside 0..=1 or an empty pool.
    pub fn canary_policy(&self) -> Result<canary::CanaryPolicy> {
        let p = canary::CanaryPolicy {
            rate: self.canary_rate,
            rate_by_market: self.canary_rate_by_market.clone(),
            pool_size: self.canary_pool_size,
            max_uses: self.canary_max_uses,
            sample_items: self.sample_items,
            sample_items_by_market: self.sample_items_by_market.clone(),
        };
        p.validate().map_err(SettlementError::Refused)?;
        Ok(p)
    }

    /// The published economic rule and when epochs close (`protocol`). `Err` for a rule that
    /// cannot be applied.
    pub fn epoch_policy(&self) -> Result<protocol::EpochPolicy> {
        let rule = gridbook_ledger::epoch::Rule {
            epoch_secs: self.epoch_secs,
            buyback_share_bps: self.buyback_share_bps,
            rewards_share_bps: self.rewards_share_bps,
            emission_bps: self.emission_bps,
            cluster_cap_bps: self.reward_cluster_cap_bps,
            buyback_slippage_bps: self.buyback_slippage_bps,
        };
        rule.validate()?;
        Ok(protocol::EpochPolicy {
            rule,
            enabled: self.close_epochs,
            check_secs: self.epoch_check_secs.max(1),
            grace_secs: self.epoch_grace_secs.max(0),
            uptime_retention_days: self.uptime_retention_days.max(1),
        })
    }

    /// The verification sample policy (`verification_secret`, `sample_items*`).
    pub fn sample_policy(&self) -> Result<verify::SamplePolicy> {
        let secret = match &self.verification_secret {
            Some(hex_secret) => hex::decode(hex_secret.trim()).map_err(|e| {
                SettlementError::Refused(format!("verification_secret is not hex: {e}"))
            })?,
            None => {
                tracing::warn!(
                    "no verification_secret configured: using a random one for this process; \
                     samples cannot be recomputed after a restart"
                );
                let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
                [a.as_bytes().as_slice(), b.as_bytes().as_slice()].concat()
            }
        };
        verify::SamplePolicy::new(secret, self.sample_items, self.sample_items_by_market.clone())
            .map_err(SettlementError::Refused)
    }
}

impl Default for Settings {
    fn default() -> Self {
        let rule = gridbook_ledger::epoch::Rule::default();
        Settings {
            database_url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            nats_nkey_file: None,
            consumer: "settlement".into(),
            filter_subject: gridbook_wire::subjects::ALL_MARKET_EVTS.into(),
            fetch_batch: 64,
            max_deliver: 20,
            ack_wait_secs: 30,
            outbox_batch: 256,
            outbox_interval_ms: 100,
            verification_secret: None,
            sample_items: verify::DEFAULT_SAMPLE_ITEMS,
            sample_items_by_market: Default::default(),
            sd_model_dir: None,
            models_kek_file: None,
            max_reoffers: redo::DEFAULT_MAX_REOFFERS,
            withhold_assignments: withhold::DEFAULT_WITHHOLD_ASSIGNMENTS,
            verify_on_nodes: crosscheck::TaskPolicy::default().enabled,
            verification_task_secs: crosscheck::TaskPolicy::default().timeout_secs,
            canary_rate: canary::DEFAULT_CANARY_RATE,
            canary_rate_by_market: Default::default(),
            canary_pool_size: canary::DEFAULT_POOL_SIZE,
            canary_max_uses: canary::DEFAULT_MAX_USES,
            close_epochs: true,
            epoch_secs: rule.epoch_secs,
            epoch_check_secs: 10,
            epoch_grace_secs: 30,
            buyback_share_bps: rule.buyback_share_bps,
            rewards_share_bps: rule.rewards_share_bps,
            emission_bps: rule.emission_bps,
            reward_cluster_cap_bps: rule.cluster_cap_bps,
            buyback_slippage_bps: rule.buyback_slippage_bps,
            uptime_retention_days: 30,
        }
    }
}

/// Runs migrations, ensures the streams, then settles and publishes until the future is
/// dropped. A failing loop is logged and restarted after a second.
pub async fn run(settings: Settings) -> Result<()> {
    // Bad configuration stops the worker at start with its message, not each task in a
    // restart loop later (a malformed `verification_secret` used to surface only when the
    // first result was verified, once a second, forever).
    if settings.verification_secret.is_some() {
        settings.sample_policy()?;
    }
    settings.canary_policy()?;
    settings.epoch_policy()?;
    let mut db = db::Db::new(&settings.database_url);
    let applied = db.with(|c| Ok(gridbook_db::run_migrations(c)?)).await?;
    info!(applied = applied.len(), "migrations up to date");
    // The bounded GRID supply exists from the start (idempotent: minted once, ever).
    db.with(|c| Ok(gridbook_ledger::supply::genesis(c)?)).await?;
    let client = gridbook_wire::connect::service_options("settlement-worker", settings.nats_nkey_file.as_deref())
        .map_err(SettlementError::Refused)?
        .connect(&settings.nats_url)
        .await
        .map_err(SettlementError::nats)?;
    let js = async_nats::jetstream::new(client.clone());
    worker::ensure_streams(&js).await?;
    let wake = Arc::new(Notify::new());
    let settings = Arc::new(settings);
    let mut tasks = tokio::task::JoinSet::new();
    {
        let (s, js, wake) = (settings.clone(), js.clone(), wake.clone());
        tasks.spawn(async move {
            loop {
                if let Err(e) = worker::run_consumer(&s, &js, &wake).await {
                    error!(error = %e, "event consumer failed; restarting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    {
        let (s, js, wake) = (settings.clone(), js.clone(), wake.clone());
        tasks.spawn(async move {
            loop {
                if let Err(e) = worker::run_outbox(&s, &js, &wake).await {
                    error!(error = %e, "outbox publisher failed; restarting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    let finished = Arc::new(Notify::new());
    {
        let (s, js, finished) = (settings.clone(), js.clone(), finished.clone());
        tasks.spawn(async move {
            loop {
                if let Err(e) = results::run_verifier(&s, &js, &finished).await {
                    error!(error = %e, "result verifier failed; restarting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    {
        let (s, js, finished, nats) =
            (settings.clone(), js.clone(), finished.clone(), client.clone());
        tasks.spawn(async move {
            loop {
                if let Err(e) = results::run_finisher(&s, &js, &nats, &finished).await {
                    error!(error = %e, "job finisher failed; restarting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    {
        let (s, nats) = (settings.clone(), client.clone());
        tasks.spawn(async move {
            loop {
                if let Err(e) = results::run_heartbeats(&s, &nats).await {
                    error!(error = %e, "heartbeat recorder failed; restarting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    {
        let s = settings.clone();
        tasks.spawn(async move {
            loop {
                if let Err(e) = protocol::run_epochs(&s).await {
                    error!(error = %e, "epoch closer failed; restarting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    info!(nats = %settings.nats_url, consumer = %settings.consumer, "settlement worker running");
    while tasks.join_next().await.is_some() {}
    Ok(())
}
