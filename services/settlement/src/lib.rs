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
//! - `lease`: which of several workers runs the single-writer duties (a PostgreSQL advisory
//!   lock on a dedicated connection).
//!
//! Several workers may run against one database and one NATS: the duties that need one writer
//! at a time — the event consumer (a market's events settle in stream order: a fill takes the
//! bid's next units, a cancel releases what is left, so two workers on one durable consumer
//! could settle them out of order), the outbox publisher (commands reach the engine in outbox
//! order), the job finisher and the epoch closer — run only on the instance holding the
//! [`lease`]; the result verifier (CPU heavy: sampled re-runs) and the heartbeat recorder run on
//! every instance (a result settles once: `jobs::resolve_assignment` and
//! `crosscheck::dispatch`/`close_task` move a row only from the state they expect, in the
//! settling transaction).
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
pub mod lease;
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
use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

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
    /// `GRIDBOOK_NATS_REPLICAS`: copies of the streams and buckets the worker creates (1 on a
    /// single server, 3 on a three-node cluster).
    pub nats_replicas: usize,
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
    /// `GRIDBOOK_LEASE_POLL_MS`: how often this worker tries the single-writer lease (standby)
    /// or checks it still holds it (holder), `lease::MIN_POLL_MS..=lease::MAX_POLL_MS`. A
    /// standby takes over within about one poll once the holder's database session ends (at
    /// once on its death, within 5 × poll if it stalls); the holder stops its duties within
    /// 2 × poll of losing it.
    pub lease_poll_ms: u64,
    /// `GRIDBOOK_INSTANCE_ID`: this worker's name in the lease's logs and in
    /// `pg_stat_activity.application_name`; unset: `<host>-<pid>`.
    pub instance_id: Option<String>,
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
            .field("lease_poll_ms", &self.lease_poll_ms)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// The single-writer lease of this worker (`lease_poll_ms`, `instance_id`). `Err` for a poll
    /// interval out of bounds or an empty instance id.
    pub fn lease(&self) -> Result<lease::Lease> {
        let poll = lease::validate_poll_ms(self.lease_poll_ms)?;
        let instance = match &self.instance_id {
            Some(id) if id.trim().is_empty() => {
                return Err(SettlementError::Refused("instance_id is empty; leave it unset for <host>-<pid>".into()));
            }
            Some(id) => id.trim().to_owned(),
            None => lease::default_instance(),
        };
        Ok(lease::Lease { database_url: self.database_url.clone(), key: lease::SETTLEMENT_LEASE, poll, instance })
    }

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
            nats_replicas: gridbook_wire::streams::DEFAULT_REPLICAS,
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
            lease_poll_ms: 1_000,
            instance_id: None,
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
    settings.lease()?;
    let mut db = db::Db::new(&settings.database_url);
    let applied = db.with(|c| Ok(gridbook_db::run_migrations(c)?)).await?;
    info!(applied = applied.len(), "migrations up to date");
    // The bounded GRID supply exists from the start (idempotent: minted once, ever).
    db.with(|c| Ok(gridbook_ledger::supply::genesis(c)?)).await?;
    let client = gridbook_wire::connect::service_options("settlement-worker", settings.nats_nkey_file.as_deref())
        .map_err(SettlementError::Refused)?
        .connect(gridbook_wire::connect::servers(&settings.nats_url).map_err(SettlementError::Refused)?)
        .await
        .map_err(SettlementError::nats)?;
    let js = async_nats::jetstream::new(client.clone());
    worker::ensure_streams(&js, settings.nats_replicas).await?;
    let lease = settings.lease()?;
    let instance = lease.instance.clone();
    let settings = Arc::new(settings);
    let (held_tx, held) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(lease.run(held_tx));
    // Set by the verifier when it resolved an assignment (the finisher looks at once); on a
    // standby nobody listens, and the holder's finisher looks every second anyway.
    let finished = Arc::new(Notify::new());
    {
        let (s, js, client, finished) = (settings.clone(), js.clone(), client.clone(), finished.clone());
        tasks.spawn(while_held(held.clone(), instance.clone(), move |duties| {
            single_writer_duties(duties, &s, &js, &client, &finished)
        }));
    }
    // On every instance: results (verification scales with the instances) and heartbeats.
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
    info!(nats = %settings.nats_url, consumer = %settings.consumer, instance = %instance, "settlement worker running");
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Runs the tasks `start` spawns while `held` is `true`, and aborts them (waiting until they
/// are gone) as soon as it turns `false`: a worker that lost the lease writes nothing more
/// from them (a database call already on the blocking pool still finishes; every duty is
/// idempotent, see `lease`).
async fn while_held(
    mut held: watch::Receiver<bool>,
    instance: String,
    start: impl Fn(&mut tokio::task::JoinSet<()>),
) {
    loop {
        if held.wait_for(|h| *h).await.is_err() {
            return;
        }
        let mut duties = tokio::task::JoinSet::new();
        start(&mut duties);
        info!(instance = %instance, duties = duties.len(), "single-writer duties started");
        // A dropped sender (the lease task ended) counts as lost.
        let _ = held.wait_for(|h| !*h).await;
        duties.abort_all();
        while duties.join_next().await.is_some() {}
        warn!(instance = %instance, "single-writer duties stopped");
    }
}

/// The duties of the lease holder: the event consumer, the outbox publisher, the job finisher
/// and the epoch closer, each restarted a second after it fails.
fn single_writer_duties(
    duties: &mut tokio::task::JoinSet<()>,
    settings: &Arc<Settings>,
    js: &async_nats::jetstream::Context,
    client: &async_nats::Client,
    finished: &Arc<Notify>,
) {
    // Set by the consumer after a commit that queued outbox rows (the publisher looks at once).
    let wake = Arc::new(Notify::new());
    {
        let (s, js, wake) = (settings.clone(), js.clone(), wake.clone());
        duties.spawn(async move {
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
        duties.spawn(async move {
            loop {
                if let Err(e) = worker::run_outbox(&s, &js, &wake).await {
                    error!(error = %e, "outbox publisher failed; restarting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    {
        let (s, js, finished, nats) = (settings.clone(), js.clone(), finished.clone(), client.clone());
        duties.spawn(async move {
            loop {
                if let Err(e) = results::run_finisher(&s, &js, &nats, &finished).await {
                    error!(error = %e, "job finisher failed; restarting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
    {
        let s = settings.clone();
        duties.spawn(async move {
            loop {
                if let Err(e) = protocol::run_epochs(&s).await {
                    error!(error = %e, "epoch closer failed; restarting");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }
}
