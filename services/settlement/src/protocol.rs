//! Epoch closes: the published rule (`gridbook_ledger::epoch`) applied to the database.
//!
//! Every [`EpochPolicy::check_secs`] the worker closes the epoch that ended last (at most one
//! per pass; an epoch during which no worker ran is not closed on its own — its fees and work
//! are swept into the next close). One close is ONE PostgreSQL transaction under an advisory
//! lock (so of several workers exactly one closes an epoch, and a crash leaves nothing half
//! done), idempotent by epoch (`epoch_reports`):
//! 1. **Sweep**: every protocol-fee credit and every completed assignment not yet attributed is
//!    attributed to this epoch (`epoch_fees`, `epoch_work`; primary keys make it exactly once).
//! 2. **Allocate** the swept fees: buyback and rewards shares (`epoch/<n>/buyback_allocate`,
//!    `epoch/<n>/rewards_allocate`). **Emit** GRID from the reserve (`epoch/<n>/emission`).
//! 3. **Reward**: each pool (credits, GRID) split among the nodes with verified work by work ×
//!    reliability × uptime with the cluster cap (`epoch::split`); one transfer per node and
//!    ledger (`epoch/<n>/reward/<ledger>/<node>`), its inputs in `epoch_rewards`; the rest
//!    rolls over in the pool.
//! 4. **Burn** the GRID the treasury bought since the last close (`epoch/<n>/burn`, into an
//!    account the database never lets be debited).
//! 5. **Buy back**: the treasury's credits bid (IOC) on the GRID market at the epoch's VWAP plus
//!    the published slippage (the previous reference when the epoch had no trade) —
//!    a price fixed before the order exists.
//!
//! The report (`epoch_reports.report`) holds the rule, every input and every transfer id, so
//! anyone can recompute it from the API.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Timestamptz, Uuid as SqlUuid};
use gridbook_ledger::epoch::{self, BuybackFigures, EpochReport, NodeInput, PoolFigures, RewardLine, Rule};
use gridbook_ledger::{AccountCode, AccountId, Amount, NewTransfer, TransferId, store, supply, token};
use tracing::{info, warn};
use uuid::Uuid;

use crate::error::{Result, SettlementError};
use crate::schema::{epoch_burns, epoch_reports, epoch_rewards, node_uptime, nodes, users};

/// The credits ledger.
pub const CREDITS: &str = "USD";
/// The advisory lock that serialises epoch closes (any value unique to this duty).
const CLOSE_LOCK: i64 = 0x6772_6964_6570_6f63; // "gridepoc"

/// How and when epochs close.
#[derive(Clone, Debug)]
pub struct EpochPolicy {
    pub rule: Rule,
    /// Whether this worker closes epochs.
    pub enabled: bool,
    /// How often it looks for an epoch to close.
    pub check_secs: u64,
    /// How long after an epoch's end it waits before closing it (late commits of the epoch).
    pub grace_secs: i64,
    /// Heartbeat minutes older than this are deleted at each close.
    pub uptime_retention_days: i64,
}

fn tid(epoch: i64, step: &str) -> TransferId {
    TransferId::derived(&["epoch", &epoch.to_string(), step])
}

fn available(c: &mut PgConnection, a: AccountId) -> Result<Amount> {
    Amount::try_from(store::get_account(c, a)?.balances.available())
        .map_err(|_| SettlementError::Refused(format!("account {a} balance exceeds i64")))
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
    #[diesel(sql_type = BigInt)]
    total: i64,
}

#[derive(QueryableByName)]
struct WorkRow {
    #[diesel(sql_type = SqlUuid)]
    node_id: Uuid,
    #[diesel(sql_type = BigInt)]
    work: i64,
}

/// The stored report of `epoch`, if it was closed.
pub fn report(c: &mut PgConnection, epoch: i64) -> Result<Option<EpochReport>> {
    let v: Option<serde_json::Value> = epoch_reports::table
        .find(epoch)
        .select(epoch_reports::report)
        .first(c)
        .optional()?;
    v.map(|v| serde_json::from_value(v).map_err(|e| SettlementError::Refused(format!("epoch report {epoch}: {e}"))))
        .transpose()
}

/// Closes the last epoch that ended at least `grace_secs` before `now`, unless it is closed.
pub fn close_due(c: &mut PgConnection, p: &EpochPolicy, now: DateTime<Utc>) -> Result<Option<EpochReport>> {
    let due = p.rule.epoch_of(now - chrono::Duration::seconds(p.grace_secs.max(0))) - 1;
    if due < 0 || report(c, due)?.is_some() {
        return Ok(None);
    }
    let r = close_epoch(c, p, due, now)?;
    let cutoff = now - chrono::Duration::days(p.uptime_retention_days.max(1));
    diesel::delete(node_uptime::table.filter(node_uptime::minute.lt(cutoff))).execute(c)?;
    Ok(Some(r))
}

/// Closes `epoch` (idempotent: a closed epoch returns its stored report).
pub fn close_epoch(c: &mut PgConnection, p: &EpochPolicy, epoch: i64, now: DateTime<Utc>) -> Result<EpochReport> {
    p.rule.validate()?;
    c.transaction(|c| {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)").bind::<BigInt, _>(CLOSE_LOCK).execute(c)?;
        if let Some(r) = report(c, epoch)? {
            return Ok(r);
        }
        let rule = &p.rule;
        let (start, end) = rule.window(epoch);
        gridbook_ledger::escrow::ensure_system_accounts(c, CREDITS)?;
        supply::genesis(c)?;
        let fee_account = AccountId::system(CREDITS, AccountCode::ProtocolFee.as_str());
        let usd = |code: AccountCode| AccountId::system(CREDITS, code.as_str());
        let mut transfers: Vec<Uuid> = Vec::new();
        let mut post = |c: &mut PgConnection, reqs: &[NewTransfer]| -> Result<()> {
            for t in store::create_transfers(c, reqs)? {
                transfers.push(t.id.0);
            }
            Ok(())
        };

        // 1. Sweep fees and work.
        let fees: Count = diesel::sql_query(
            "WITH swept AS (
               INSERT INTO epoch_fees (transfer_id, epoch, amount)
               SELECT t.id, $1, t.amount FROM ledger_transfers t
                WHERE t.credit_account_id = $2 AND t.kind IN ('posted', 'post')
                  AND NOT EXISTS (SELECT 1 FROM epoch_fees f WHERE f.transfer_id = t.id)
               ON CONFLICT DO NOTHING
               RETURNING amount)
             SELECT count(*)::bigint AS n, coalesce(sum(amount), 0)::bigint AS total FROM swept",
        )
        .bind::<BigInt, _>(epoch)
        .bind::<SqlUuid, _>(fee_account.0)
        .get_result(c)?;
        let work: Count = diesel::sql_query(
            "WITH swept AS (
               INSERT INTO epoch_work (assignment_id, epoch, node_id, value)
               SELECT ea.id, $1, ja.node_id, coalesce(ea.verified_units, 0) * ea.trade_price
                 FROM escrow_assignments ea JOIN job_assignments ja ON ja.id = ea.id
                WHERE ea.state = 'completed'
                  AND NOT EXISTS (SELECT 1 FROM epoch_work w WHERE w.assignment_id = ea.id)
               ON CONFLICT DO NOTHING
               RETURNING value)
             SELECT count(*)::bigint AS n, coalesce(sum(value), 0)::bigint AS total FROM swept",
        )
        .bind::<BigInt, _>(epoch)
        .get_result(c)?;

        // 2. Allocate and emit.
        let fee_available = available(c, fee_account)?;
        let (buyback_allocation, rewards_allocation) = epoch::allocate(fees.total, fee_available, rule);
        let mut reqs = Vec::new();
        if buyback_allocation > 0 {
            reqs.push(NewTransfer::posted(
                tid(epoch, "buyback_allocate"),
                fee_account,
                usd(AccountCode::BuybackTreasury),
                buyback_allocation,
                "buyback_allocate",
            ));
        }
        if rewards_allocation > 0 {
            reqs.push(NewTransfer::posted(
                tid(epoch, "rewards_allocate"),
                fee_account,
                usd(AccountCode::RewardsPool),
                rewards_allocation,
                "rewards_allocate",
            ));
        }
        let emission = epoch::emission(available(c, supply::account(AccountCode::EmissionReserve))?, rule);
        if emission > 0 {
            reqs.push(NewTransfer::posted(
                tid(epoch, "emission"),
                supply::account(AccountCode::EmissionReserve),
                supply::account(AccountCode::RewardsPool),
                emission,
                "emission",
            ));
        }
        post(c, &reqs)?;

        // 3. Rewards.
        let inputs = node_inputs(c, epoch, rule, start, end)?;
        let mut pools = Vec::new();
        let mut paid: BTreeMap<(&str, Uuid), (Amount, Option<Uuid>)> = BTreeMap::new();
        for (ledger, pool_account) in [
            (CREDITS, usd(AccountCode::RewardsPool)),
            (token::LEDGER, supply::account(AccountCode::RewardsPool)),
        ] {
            let pool = available(c, pool_account)?;
            let amounts = epoch::split(pool, &inputs.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), rule.cluster_cap_bps)?;
            let mut reqs = Vec::new();
            let mut rows = Vec::new();
            for ((n, owner), amount) in inputs.iter().zip(&amounts) {
                let id = tid(epoch, &format!("reward/{ledger}/{}", n.node));
                let to = if ledger == CREDITS { owner.1 } else { token::ensure_user_account(c, owner.0)? };
                let transfer = (*amount > 0).then_some(id.0);
                if *amount > 0 {
                    reqs.push(NewTransfer::posted(id, pool_account, to, *amount, "reward"));
                }
                paid.insert((ledger, n.node), (*amount, transfer));
                rows.push((
                    epoch_rewards::epoch.eq(epoch),
                    epoch_rewards::node_id.eq(n.node),
                    epoch_rewards::ledger.eq(ledger),
                    epoch_rewards::cluster.eq(n.cluster as i64),
                    epoch_rewards::work.eq(n.work),
                    epoch_rewards::quality_bps.eq(n.quality_bps as i32),
                    epoch_rewards::uptime_bps.eq(n.uptime_bps as i32),
                    epoch_rewards::amount.eq(*amount),
                    epoch_rewards::transfer_id.eq(transfer),
                ));
            }
            // The reward rows reference their transfers: post first.
            post(c, &reqs)?;
            diesel::insert_into(epoch_rewards::table).values(rows).execute(c)?;
            let total: Amount = amounts.iter().sum();
            pools.push(PoolFigures { ledger: ledger.to_owned(), available: pool, paid: total, rolled_over: pool - total });
        }
        let rewards = inputs
            .iter()
            .map(|(n, _)| {
                let (credits, credits_transfer) = paid[&(CREDITS, n.node)];
                let (grid, grid_transfer) = paid[&(token::LEDGER, n.node)];
                RewardLine { input: n.clone(), weight: epoch::weight(n).to_string(), credits, grid, credits_transfer, grid_transfer }
            })
            .collect();

        // 4. Burn what the treasury bought.
        let treasury_grid = supply::account(AccountCode::BuybackTreasury);
        let burned = available(c, treasury_grid)?;
        let burn_transfer = if burned > 0 {
            let id = tid(epoch, "burn");
            post(c, &[NewTransfer::posted(id, treasury_grid, supply::account(AccountCode::Burned), burned, "burn")])?;
            diesel::insert_into(epoch_burns::table)
                .values((epoch_burns::epoch.eq(epoch), epoch_burns::transfer_id.eq(id.0), epoch_burns::amount.eq(burned)))
                .execute(c)?;
            Some(id.0)
        } else {
            None
        };

        // 5. Buy back.
        let buyback = buy_back(c, epoch, rule, start, end)?;

        let report = EpochReport {
            epoch,
            start,
            end,
            closed_at: now,
            rule: rule.clone(),
            fee_transfers: fees.n,
            fee_revenue: fees.total,
            fee_available,
            buyback_allocation,
            rewards_allocation,
            emission,
            work_assignments: work.n,
            pools,
            rewards,
            burned,
            burn_transfer,
            buyback,
            transfers,
        };
        diesel::insert_into(epoch_reports::table)
            .values((epoch_reports::epoch.eq(epoch), epoch_reports::report.eq(serde_json::to_value(&report)?)))
            .execute(c)?;
        info!(
            epoch,
            fee_revenue = report.fee_revenue,
            emission = report.emission,
            rewarded_nodes = report.rewards.len(),
            burned = report.burned,
            buyback_budget = report.buyback.budget,
            "epoch closed"
        );
        Ok(report)
    })
}

/// The reward inputs of the nodes with work swept into `epoch`, with their owner and the
/// owner's credits account. Sorted by node id.
fn node_inputs(
    c: &mut PgConnection,
    epoch: i64,
    rule: &Rule,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Vec<(NodeInput, (Uuid, AccountId))>> {
    let work: Vec<WorkRow> = diesel::sql_query(
        "SELECT node_id, sum(value)::bigint AS work FROM epoch_work WHERE epoch = $1 GROUP BY node_id ORDER BY node_id",
    )
    .bind::<BigInt, _>(epoch)
    .load(c)?;
    let minutes = rule.epoch_minutes();
    let mut out = Vec::with_capacity(work.len());
    for w in work {
        let (owner, reputation, status, account): (Uuid, i32, String, Uuid) = nodes::table
            .inner_join(users::table.on(users::id.eq(nodes::owner)))
            .filter(nodes::id.eq(w.node_id))
            .select((nodes::owner, nodes::reputation, nodes::status, users::account_id))
            .first(c)?;
        // Minutes that overlap the epoch (an epoch shorter than a minute still has one).
        let heard: i64 = node_uptime::table
            .filter(node_uptime::node_id.eq(w.node_id))
            .filter(node_uptime::minute.gt(start - chrono::Duration::minutes(1)))
            .filter(node_uptime::minute.lt(end))
            .count()
            .get_result(c)?;
        let cluster = gridbook_db::identity::cluster_owner(c, owner)?;
        // A suspended node (a proven cheat) earns nothing, whatever its record says.
        let quality_bps = if status == "suspended" { 0 } else { reputation.clamp(0, 10_000) as u32 };
        let uptime_bps = (heard.min(minutes) * 10_000 / minutes) as u32;
        out.push((
            NodeInput { node: w.node_id, cluster, work: w.work, quality_bps, uptime_bps },
            (owner, AccountId(account)),
        ));
    }
    Ok(out)
}

/// Places the epoch's buyback: the treasury's credits, limit = reference × (1 + slippage).
fn buy_back(c: &mut PgConnection, epoch: i64, rule: &Rule, start: DateTime<Utc>, end: DateTime<Utc>) -> Result<BuybackFigures> {
    let budget = available(c, AccountId::system(CREDITS, AccountCode::BuybackTreasury.as_str()))?;
    let (reference_price, reference) = match crate::token::vwap(c, start, end)? {
        Some((price, qty)) => (Some(price), format!("VWAP of {qty} GRID traded in epoch {epoch}")),
        None => match previous_reference(c, epoch)? {
            Some((price, from)) => (Some(price), format!("no GRID trade in epoch {epoch}: the reference of epoch {from}")),
            None => (None, "no GRID trade yet: no buyback".to_owned()),
        },
    };
    let mut figures = BuybackFigures {
        reference_price,
        reference,
        limit_price: None,
        budget,
        engine_order_id: None,
        order_id: None,
        quantity: 0,
    };
    let Some(price) = reference_price else {
        return Ok(figures);
    };
    let limit = epoch::buyback_limit(price, rule);
    figures.limit_price = Some(limit);
    if budget <= 0 {
        return Ok(figures);
    }
    match crate::token::place_protocol_buy(c, epoch, budget, limit)? {
        Some(b) => {
            figures.engine_order_id = Some(b.engine_order_id);
            figures.order_id = Some(b.order_id);
            figures.quantity = b.quantity;
        }
        None => warn!(epoch, budget, limit, "buyback budget buys less than one GRID; it rolls over"),
    }
    Ok(figures)
}

/// The most recent earlier report's reference price.
fn previous_reference(c: &mut PgConnection, epoch: i64) -> Result<Option<(i64, i64)>> {
    let rows: Vec<(i64, serde_json::Value)> = epoch_reports::table
        .filter(epoch_reports::epoch.lt(epoch))
        .order(epoch_reports::epoch.desc())
        .select((epoch_reports::epoch, epoch_reports::report))
        .limit(1)
        .load(c)?;
    Ok(rows.into_iter().find_map(|(e, r)| {
        r.pointer("/buyback/reference_price").and_then(|v| v.as_i64()).map(|p| (p, e))
    }))
}

/// Records heartbeat minutes for `nodes` (those that exist) at `now`.
pub fn record_uptime(c: &mut PgConnection, node_ids: &[Uuid], now: DateTime<Utc>) -> Result<usize> {
    Ok(diesel::sql_query(
        "INSERT INTO node_uptime (node_id, minute)
         SELECT id, date_trunc('minute', $2) FROM nodes WHERE id = ANY($1)
         ON CONFLICT DO NOTHING",
    )
    .bind::<diesel::sql_types::Array<SqlUuid>, _>(node_ids)
    .bind::<Timestamptz, _>(now)
    .execute(c)?)
}

/// Closes epochs every `check_secs` while the worker runs.
pub async fn run_epochs(settings: &crate::Settings) -> Result<()> {
    let p = settings.epoch_policy()?;
    if !p.enabled {
        info!("epoch closing disabled on this worker");
        std::future::pending::<()>().await;
    }
    let mut db = crate::db::Db::new(&settings.database_url);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(p.check_secs.max(1)));
    loop {
        tick.tick().await;
        let p = p.clone();
        db.with(move |c| close_due(c, &p, Utc::now())).await?;
    }
}
