//! A provider's assignments (the work its nodes were given, with verification outcomes) and
//! earnings (paid, held, available, withheld / released / forfeited).


use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::files::{Page, paginate};
use crate::schema::{job_assignments, nodes};
use crate::state::AppState;

/// Routes of this module (mounted by `app`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/assignments").route(web::get().to(list_assignments)))
        .service(web::resource("/earnings").route(web::get().to(earnings)));
}

// ---------------------------------------------------------------------------------------------
// Assignments and earnings
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema, Queryable, Selectable)]
#[diesel(table_name = job_assignments)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct AssignmentOut {
    pub id: Uuid,
    pub job_id: Uuid,
    pub node_id: Uuid,
    pub market: String,
    pub unit_start: i64,
    pub units: i64,
    pub item_start: i32,
    pub item_count: i32,
    /// Trade price, minor units per unit.
    pub price: i64,
    /// `assigned`, `verifying`, `completed` or `failed`.
    pub status: String,
    pub output_sha256: Option<String>,
    pub merkle_root: Option<String>,
    pub detail: Option<String>,
    pub deadline: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AssignmentList {
    pub data: Vec<AssignmentOut>,
    pub next_before: Option<Uuid>,
}

/// Assignments of the caller's nodes, newest first (`before` = an assignment id of the previous
/// page).
#[utoipa::path(get, path = "/v1/assignments", tag = "nodes", params(Page),
    responses((status = 200, body = AssignmentList)), security(("api_key" = []), ("session" = [])))]
pub async fn list_assignments(
    state: web::Data<AppState>,
    principal: Principal,
    page: web::Query<Page>,
) -> ApiResult<HttpResponse> {
    principal.require_provider(false)?;
    let limit = page.limit()?;
    let before = page.before;
    let owner = principal.user_id;
    let rows = crate::db::run(&state.db, move |c| {
        let mut q = job_assignments::table
            .inner_join(nodes::table)
            .filter(nodes::owner.eq(owner))
            .select(AssignmentOut::as_select())
            .order((
                job_assignments::created_at.desc(),
                job_assignments::id.desc(),
            ))
            .limit(limit + 1)
            .into_boxed();
        if let Some(b) = before {
            let at: Option<DateTime<Utc>> = job_assignments::table
                .find(b)
                .select(job_assignments::created_at)
                .first(c)
                .optional()?;
            let at = at.ok_or_else(|| ApiError::invalid("before", "unknown assignment id"))?;
            q = q.filter(
                job_assignments::created_at
                    .lt(at)
                    .or(job_assignments::created_at
                        .eq(at)
                        .and(job_assignments::id.lt(b))),
            );
        }
        Ok(q.load(c)?)
    })
    .await?;
    let (rows, next_before) = paginate(rows, limit, |r: &AssignmentOut| r.id);
    Ok(HttpResponse::Ok().json(AssignmentList {
        data: rows,
        next_before,
    }))
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Earnings {
    pub completed_assignments: i64,
    pub units: i64,
    /// Σ trade price × units of completed assignments: what the provider was paid. The
    /// protocol fee is charged to the studio on top of the trade price, not deducted here.
    pub earned: i64,
    /// Σ ⌈price × units × fee⌉ the studios paid to the protocol on this work (information).
    pub protocol_fees: i64,
    /// The provider's ledger account: posted balance and what is available to withdraw (the
    /// same figures as `GET /v1/balance`'s `posted` and `available`). Withheld pay is not in
    /// it: it sits in each node's `withheld` account until released.
    pub balance: i64,
    pub available: i64,
    /// Pay for verified assignments still withheld (the withholding window: released after
    /// `withhold_assignments` more verified assignments of the same node; forfeited on a proven
    /// cheat).
    pub withheld: i64,
    /// Withheld pay released to the provider's balance so far.
    pub released: i64,
    /// Withheld pay forfeited by a proven cheat (to the market's verification fund).
    pub forfeited: i64,
    /// Verification tasks the caller's nodes answered right (`GET /v1/verification-tasks`), and
    /// what they were paid for them (from the protocol fee; in `balance`, not in `earned`).
    pub verification_tasks: i64,
    pub verification_pay: i64,
}

/// Earnings of the caller's nodes and their ledger balance.
#[utoipa::path(get, path = "/v1/earnings", tag = "nodes",
    responses((status = 200, body = Earnings)), security(("api_key" = []), ("session" = [])))]
pub async fn earnings(state: web::Data<AppState>, principal: Principal) -> ApiResult<HttpResponse> {
    principal.require_provider(false)?;
    let owner = principal.user_id;
    let account = principal.account_id;
    let markets = state.markets.clone();
    let out = crate::db::run(&state.db, move |c| {
        // Bounded: one row per (market, price) of completed work.
        let rows: Vec<(String, i64, i64, i64)> = diesel::sql_query(
            "SELECT a.market, a.price, sum(a.units)::bigint AS units, count(*)::bigint AS n \
             FROM job_assignments a JOIN nodes n ON n.id = a.node_id \
             WHERE n.owner = $1 AND a.status = 'completed' GROUP BY a.market, a.price",
        )
        .bind::<diesel::sql_types::Uuid, _>(owner)
        .load::<EarnRow>(c)?
        .into_iter()
        .map(|r| (r.market, r.price, r.units, r.n))
        .collect();
        let (mut n, mut units, mut earned, mut fees) = (0i64, 0i64, 0i64, 0i64);
        for (market, price, u, count) in rows {
            let amount = gridbook_ledger::settlement::cost(u, price)?;
            let bps = markets.get(&market).map_or(0, |m| m.config.fee_bps);
            n = n.saturating_add(count);
            units = units.saturating_add(u);
            earned = earned.saturating_add(amount);
            fees = fees.saturating_add(gridbook_ledger::settlement::fee(amount, bps)?);
        }
        let w: WithheldRow = diesel::sql_query(
            "SELECT coalesce(sum(w.amount) FILTER (WHERE w.state = 'withheld'), 0)::bigint AS withheld, \
                    coalesce(sum(w.amount) FILTER (WHERE w.state = 'released'), 0)::bigint AS released, \
                    coalesce(sum(w.amount) FILTER (WHERE w.state = 'forfeited'), 0)::bigint AS forfeited \
             FROM node_withholdings w JOIN nodes n ON n.id = w.node_id WHERE n.owner = $1",
        )
        .bind::<diesel::sql_types::Uuid, _>(owner)
        .get_result(c)?;
        let v: VerifiedTasksRow = diesel::sql_query(
            "SELECT count(*) FILTER (WHERE t.verifier_correct)::bigint AS tasks, coalesce(sum(t.paid), 0)::bigint AS paid \
             FROM verification_tasks t JOIN nodes n ON n.id = t.node_id WHERE n.owner = $1",
        )
        .bind::<diesel::sql_types::Uuid, _>(owner)
        .get_result(c)?;
        let st = gridbook_ledger::store::balance_statement(c, account)?;
        Ok(Earnings {
            completed_assignments: n,
            units,
            earned,
            protocol_fees: fees,
            balance: i64::try_from(st.posted_balance).unwrap_or(i64::MAX),
            available: i64::try_from(st.available_balance).unwrap_or(i64::MAX),
            withheld: w.withheld,
            released: w.released,
            forfeited: w.forfeited,
            verification_tasks: v.tasks,
            verification_pay: v.paid,
        })
    })
    .await?;
    Ok(HttpResponse::Ok().json(out))
}

#[derive(QueryableByName)]
struct VerifiedTasksRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    tasks: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    paid: i64,
}

#[derive(QueryableByName)]
struct WithheldRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    withheld: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    released: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    forfeited: i64,
}

#[derive(QueryableByName)]
struct EarnRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    market: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    price: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    units: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// The OpenAPI paths of this module (merged by `openapi::document`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        list_assignments,
        earnings
    )
)]
pub struct ApiDoc;
