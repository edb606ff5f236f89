//! The protocol's books, public (no sign-in): what the epoch closes did (`gridbook_settlement::
//! protocol`) and the GRID supply — enough for anyone to recompute every epoch report.
//!
//! - `GET /v1/protocol/supply`: the bounded GRID supply (minted, reserve, pools, burned,
//!   circulating), read from the ledger accounts.
//! - `GET /v1/protocol/fees`: fee revenue, attributed to closed epochs and not yet.
//! - `GET /v1/protocol/epochs`: closed epochs, newest first (summaries).
//! - `GET /v1/protocol/epochs/{epoch}`: one report: the rule, the swept fees and work, the
//!   allocation, emission, every node's reward inputs and transfer, the burn, the buyback order.
//! - `GET /v1/protocol/epochs/{epoch}/fees`: the reconciliation — every fee credit the epoch
//!   swept, by transfer id (paged), beside the epoch's allocation, buyback and burn transfers.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use gridbook_ledger::epoch::EpochReport;
use gridbook_ledger::{AccountCode, AccountId, supply, token};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::schema::{epoch_fees, epoch_reports, ledger_transfers};
use crate::state::AppState;

/// Most epochs or fee lines one page returns.
pub const MAX_PAGE: i64 = 500;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/protocol/supply").route(web::get().to(get_supply)))
        .service(web::resource("/protocol/fees").route(web::get().to(get_fees)))
        .service(web::resource("/protocol/epochs").route(web::get().to(list_epochs)))
        .service(web::resource("/protocol/epochs/{epoch}").route(web::get().to(get_epoch)))
        .service(web::resource("/protocol/epochs/{epoch}/fees").route(web::get().to(epoch_fee_lines)));
}

/// The GRID supply, base units (10^`decimals` per GRID).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SupplyOut {
    pub token: String,
    pub decimals: u32,
    /// Every GRID that will ever exist.
    pub max_supply: i64,
    /// Minted by genesis (once; the database refuses any further mint).
    pub minted: i64,
    /// Not yet emitted.
    pub reserve: i64,
    /// Emitted, not yet paid as rewards.
    pub rewards_pool: i64,
    /// Bought back, burned at the next epoch close.
    pub buyback_treasury: i64,
    /// Burned: in an account the database never lets be debited.
    pub burned: i64,
    /// Held by users.
    pub circulating: i64,
    pub burned_account: Uuid,
}

/// The bounded GRID supply. Public.
#[utoipa::path(get, path = "/v1/protocol/supply", tag = "protocol",
    responses((status = 200, body = SupplyOut), (status = 503, body = ErrorResponse)))]
pub async fn get_supply(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    let s = crate::db::run(&state.db, |c| Ok(supply::supply(c)?)).await?;
    Ok(HttpResponse::Ok().json(SupplyOut {
        token: token::LEDGER.to_owned(),
        decimals: token::DECIMALS,
        max_supply: s.max_supply,
        minted: s.minted,
        reserve: s.reserve,
        rewards_pool: s.rewards_pool,
        buyback_treasury: s.buyback_treasury,
        burned: s.burned,
        circulating: s.circulating,
        burned_account: supply::account(AccountCode::Burned).0,
    }))
}

/// Protocol fee revenue in credits (minor units).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeesOut {
    pub fee_account: Uuid,
    /// Every fee ever credited (posted).
    pub revenue: i64,
    /// Of it, attributed to a closed epoch.
    pub attributed: i64,
    /// Credited since the last close (the next close sweeps it).
    pub unattributed: i64,
    /// Spendable now (revenue less allocations and verification pay).
    pub available: i64,
    /// Credits waiting in the buyback treasury and the credits rewards pool.
    pub buyback_treasury: i64,
    pub rewards_pool: i64,
}

fn fee_account() -> AccountId {
    AccountId::system(crate::money::LEDGER, AccountCode::ProtocolFee.as_str())
}

fn available_or_zero(c: &mut PgConnection, a: AccountId) -> ApiResult<i64> {
    match gridbook_ledger::store::get_account(c, a) {
        Ok(acc) => i64::try_from(acc.balances.available()).map_err(ApiError::internal),
        Err(gridbook_ledger::LedgerError::AccountNotFound(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Fee revenue and where it stands. Public.
#[utoipa::path(get, path = "/v1/protocol/fees", tag = "protocol",
    responses((status = 200, body = FeesOut), (status = 503, body = ErrorResponse)))]
pub async fn get_fees(state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    let out = crate::db::run(&state.db, |c| {
        let fee = fee_account();
        let revenue: Option<i64> = ledger_transfers::table
            .filter(ledger_transfers::credit_account_id.eq(fee.0))
            .filter(ledger_transfers::kind.eq_any(["posted", "post"]))
            .select(diesel::dsl::sql::<diesel::sql_types::Nullable<diesel::sql_types::BigInt>>("sum(amount)::bigint"))
            .first(c)?;
        let attributed: Option<i64> = epoch_fees::table
            .select(diesel::dsl::sql::<diesel::sql_types::Nullable<diesel::sql_types::BigInt>>("sum(amount)::bigint"))
            .first(c)?;
        let (revenue, attributed) = (revenue.unwrap_or(0), attributed.unwrap_or(0));
        let usd = |code: AccountCode| AccountId::system(crate::money::LEDGER, code.as_str());
        Ok(FeesOut {
            fee_account: fee.0,
            revenue,
            attributed,
            unattributed: revenue - attributed,
            available: available_or_zero(c, fee)?,
            buyback_treasury: available_or_zero(c, usd(AccountCode::BuybackTreasury))?,
            rewards_pool: available_or_zero(c, usd(AccountCode::RewardsPool))?,
        })
    })
    .await?;
    Ok(HttpResponse::Ok().json(out))
}

#[derive(Deserialize, IntoParams)]
pub struct EpochsQuery {
    /// Only epochs before this one (paging; newest first).
    pub before: Option<i64>,
    /// 1..=500 (default 50).
    pub limit: Option<i64>,
}

/// One closed epoch in brief.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EpochSummary {
    pub epoch: i64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub closed_at: DateTime<Utc>,
    pub fee_revenue: i64,
    pub buyback_allocation: i64,
    pub rewards_allocation: i64,
    pub emission: i64,
    pub rewarded_nodes: usize,
    pub credits_rewarded: i64,
    pub grid_rewarded: i64,
    pub burned: i64,
    pub buyback_budget: i64,
    pub buyback_limit_price: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EpochList {
    pub data: Vec<EpochSummary>,
}

fn summary(r: &EpochReport) -> EpochSummary {
    let paid = |ledger: &str| r.pools.iter().filter(|p| p.ledger == ledger).map(|p| p.paid).sum();
    EpochSummary {
        epoch: r.epoch,
        start: r.start,
        end: r.end,
        closed_at: r.closed_at,
        fee_revenue: r.fee_revenue,
        buyback_allocation: r.buyback_allocation,
        rewards_allocation: r.rewards_allocation,
        emission: r.emission,
        rewarded_nodes: r.rewards.iter().filter(|l| l.credits > 0 || l.grid > 0).count(),
        credits_rewarded: paid(crate::money::LEDGER),
        grid_rewarded: paid(token::LEDGER),
        burned: r.burned,
        buyback_budget: r.buyback.budget,
        buyback_limit_price: r.buyback.limit_price,
    }
}

fn parse(epoch: i64, v: serde_json::Value) -> ApiResult<EpochReport> {
    serde_json::from_value(v).map_err(|e| ApiError::internal(format!("epoch report {epoch}: {e}")))
}

fn page(limit: Option<i64>, default: i64) -> ApiResult<i64> {
    let l = limit.unwrap_or(default);
    if !(1..=MAX_PAGE).contains(&l) {
        return Err(ApiError::invalid("limit", format!("must be 1..={MAX_PAGE}")));
    }
    Ok(l)
}

/// Closed epochs, newest first. Public.
#[utoipa::path(get, path = "/v1/protocol/epochs", tag = "protocol", params(EpochsQuery),
    responses((status = 200, body = EpochList), (status = 400, body = ErrorResponse)))]
pub async fn list_epochs(state: web::Data<AppState>, q: web::Query<EpochsQuery>) -> ApiResult<HttpResponse> {
    let limit = page(q.limit, 50)?;
    let before = q.before.unwrap_or(i64::MAX);
    let data = crate::db::run(&state.db, move |c| {
        let rows: Vec<(i64, serde_json::Value)> = epoch_reports::table
            .filter(epoch_reports::epoch.lt(before))
            .order(epoch_reports::epoch.desc())
            .limit(limit)
            .select((epoch_reports::epoch, epoch_reports::report))
            .load(c)?;
        rows.into_iter().map(|(e, v)| parse(e, v).map(|r| summary(&r))).collect::<ApiResult<Vec<_>>>()
    })
    .await?;
    Ok(HttpResponse::Ok().json(EpochList { data }))
}

fn load_report(c: &mut PgConnection, epoch: i64) -> ApiResult<EpochReport> {
    let v: serde_json::Value = epoch_reports::table
        .find(epoch)
        .select(epoch_reports::report)
        .first(c)
        .optional()?
        .ok_or_else(|| ApiError::not_found("epoch"))?;
    parse(epoch, v)
}

/// One epoch's report: the rule, inputs and every transfer id (see the module doc). Public.
#[utoipa::path(get, path = "/v1/protocol/epochs/{epoch}", tag = "protocol",
    params(("epoch" = i64, Path, description = "epoch number (Unix seconds / epoch length)")),
    responses((status = 200, description = "the epoch report (`gridbook_ledger::epoch::EpochReport`)", body = Object),
        (status = 404, body = ErrorResponse)))]
pub async fn get_epoch(state: web::Data<AppState>, epoch: web::Path<i64>) -> ApiResult<HttpResponse> {
    let epoch = epoch.into_inner();
    let r = crate::db::run(&state.db, move |c| load_report(c, epoch)).await?;
    Ok(HttpResponse::Ok().json(r))
}

#[derive(Deserialize, IntoParams)]
pub struct FeeLinesQuery {
    /// Fee transfer id to continue after (paging, ascending by id).
    pub after: Option<Uuid>,
    /// 1..=500 (default 100).
    pub limit: Option<i64>,
}

/// One fee credit swept into the epoch.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FeeLine {
    pub transfer_id: Uuid,
    pub amount: i64,
    /// The transfer's kind (`post`: the posting of a held fee) and the hold it posted.
    pub kind: String,
    pub pending_id: Option<Uuid>,
    pub code: String,
    pub created_at: DateTime<Utc>,
}

/// The epoch's fees joined to what became of them.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Reconciliation {
    pub epoch: i64,
    /// Sum of every fee line of the epoch (all pages) = the report's `fee_revenue`.
    pub fee_revenue: i64,
    pub fee_transfers: i64,
    pub buyback_allocation: i64,
    pub rewards_allocation: i64,
    /// The epoch's own transfers (allocation, emission, rewards, burn), in order.
    pub transfers: Vec<Uuid>,
    /// The buyback order the close placed (its fills deliver GRID burned at the next close).
    pub buyback_order: Option<Uuid>,
    pub burn_transfer: Option<Uuid>,
    pub data: Vec<FeeLine>,
}

/// The reconciliation of one epoch: every fee by transfer id (paged) beside the allocation,
/// buyback and burn. Public.
#[utoipa::path(get, path = "/v1/protocol/epochs/{epoch}/fees", tag = "protocol",
    params(("epoch" = i64, Path, description = "epoch number"), FeeLinesQuery),
    responses((status = 200, body = Reconciliation), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn epoch_fee_lines(
    state: web::Data<AppState>,
    epoch: web::Path<i64>,
    q: web::Query<FeeLinesQuery>,
) -> ApiResult<HttpResponse> {
    let epoch = epoch.into_inner();
    let limit = page(q.limit, 100)?;
    let after = q.after.unwrap_or(Uuid::nil());
    let out = crate::db::run(&state.db, move |c| {
        let r = load_report(c, epoch)?;
        type Row = (Uuid, i64, String, Option<Uuid>, String, DateTime<Utc>);
        let rows: Vec<Row> = epoch_fees::table
            .inner_join(ledger_transfers::table.on(ledger_transfers::id.eq(epoch_fees::transfer_id)))
            .filter(epoch_fees::epoch.eq(epoch))
            .filter(epoch_fees::transfer_id.gt(after))
            .order(epoch_fees::transfer_id.asc())
            .limit(limit)
            .select((
                epoch_fees::transfer_id,
                epoch_fees::amount,
                ledger_transfers::kind,
                ledger_transfers::pending_id,
                ledger_transfers::code,
                ledger_transfers::created_at,
            ))
            .load(c)?;
        Ok(Reconciliation {
            epoch,
            fee_revenue: r.fee_revenue,
            fee_transfers: r.fee_transfers,
            buyback_allocation: r.buyback_allocation,
            rewards_allocation: r.rewards_allocation,
            transfers: r.transfers.clone(),
            buyback_order: r.buyback.order_id,
            burn_transfer: r.burn_transfer,
            data: rows
                .into_iter()
                .map(|(transfer_id, amount, kind, pending_id, code, created_at)| FeeLine {
                    transfer_id,
                    amount,
                    kind,
                    pending_id,
                    code,
                    created_at,
                })
                .collect(),
        })
    })
    .await?;
    Ok(HttpResponse::Ok().json(out))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(get_supply, get_fees, list_epochs, get_epoch, epoch_fee_lines),
    tags((name = "protocol", description = "fee revenue, epochs, rewards, buyback and burn, GRID supply (public)"))
)]
pub struct ApiDoc;
