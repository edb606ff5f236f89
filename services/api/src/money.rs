//! Money: admin credits (deposits), balance and statement. Amounts are integer minor units
//! (`i64`), never floats; the currency is "credits" on the ledger [`LEDGER`].
//!
//! - `POST /v1/admin/credits` {user_id, amount, reference} (admin role, `admin` scope): a posted
//!   ledger transfer operator → user. Idempotent twice over: the transfer id is UUIDv5 of the
//!   reference (a repeat with the same reference and content returns the same transfer; the
//!   same reference with other content is 409 `reference_reused`), and `Idempotency-Key` is
//!   honoured as on every creating POST.
//! - `GET /v1/balance` → {available, held, pending_credits, posted, currency}.
//! - `GET /v1/statement?limit&before` → the transfers touching the user's account, newest
//!   first; `next_before` is the cursor of the next (older) page.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use gridbook_ledger::{AccountCode, AccountId, LedgerError, NewTransfer, TransferId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::{Principal, Role, Scope};
use crate::db;
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::idempotency::{self, IdempotencyKey};
use crate::schema::users;
use crate::state::AppState;

/// The ledger every user account lives on (minor units of credits).
pub const LEDGER: &str = "USD";
/// The largest single credit (10¹² minor units).
pub const MAX_CREDIT: i64 = 1_000_000_000_000;
pub const REFERENCE_MAX: usize = 200;
pub const STATEMENT_MAX_LIMIT: i64 = 500;

/// Routes of this module (mounted under `/v1` by `app`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/admin/credits").route(web::post().to(credit)))
        .service(web::resource("/balance").route(web::get().to(balance)))
        .service(web::resource("/statement").route(web::get().to(statement)));
}

/// The operator account credits come from (created at start-up by
/// `escrow::ensure_system_accounts`; it may go negative: it is the platform's boundary).
pub fn operator_account() -> AccountId {
    AccountId::system(LEDGER, AccountCode::Operator.as_str())
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Credit {
    pub user_id: Uuid,
    /// Minor units, 1 to 10¹².
    pub amount: i64,
    /// The external reference of the deposit (1 to 200 characters); the transfer id derives
    /// from it.
    pub reference: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Credited {
    pub transfer_id: Uuid,
    pub user_id: Uuid,
    pub amount: i64,
    pub reference: String,
    pub created_at: DateTime<Utc>,
}

/// The transfer id of a credit: UUIDv5 of its reference.
pub fn credit_transfer_id(reference: &str) -> TransferId {
    TransferId::derived(&["admin-credit", reference])
}

/// Credits `amount` to `user_id`'s account from the operator (one posted transfer, idempotent by
/// `reference`). Runs in the caller's transaction when there is one.
pub fn credit_user(
    conn: &mut PgConnection,
    user_id: Uuid,
    amount: i64,
    reference: &str,
) -> ApiResult<Credited> {
    if amount <= 0 || amount > MAX_CREDIT {
        return Err(ApiError::invalid(
            "amount",
            format!("amount must be 1 to {MAX_CREDIT} minor units"),
        ));
    }
    let account: Uuid = users::table
        .find(user_id)
        .select(users::account_id)
        .first(conn)
        .optional()?
        .ok_or_else(|| ApiError::not_found("user").with_field("user_id"))?;
    let t = NewTransfer::posted(
        credit_transfer_id(reference),
        operator_account(),
        AccountId(account),
        amount,
        "deposit",
    )
    .with_reference(user_id);
    let stored = gridbook_ledger::store::create_transfer(conn, &t).map_err(|e| match e.root() {
        LedgerError::ExistsWithDifferentContent(_) => ApiError::conflict(
            "reference_reused",
            "this reference was already used for a different credit",
        )
        .with_field("reference"),
        _ => ApiError::from(e),
    })?;
    Ok(Credited {
        transfer_id: stored.id.0,
        user_id,
        amount: stored.amount,
        reference: reference.to_owned(),
        created_at: stored.created_at,
    })
}

/// Credit a user's account (admin). Idempotent by `reference` and by `Idempotency-Key`.
#[utoipa::path(
    post, path = "/v1/admin/credits", tag = "money",
    request_body = Credit,
    params(("Idempotency-Key" = Option<String>, Header, description = "optional; 1-255 characters; replays the first response")),
    responses(
        (status = 201, body = Credited),
        (status = 400, body = ErrorResponse),
        (status = 403, description = "not an admin", body = ErrorResponse),
        (status = 404, description = "no such user", body = ErrorResponse),
        (status = 409, description = "`reference_reused`", body = ErrorResponse),
        (status = 422, description = "`idempotency_key_reused`", body = ErrorResponse),
    ),
    security(("api_key" = []), ("session" = []))
)]
pub async fn credit(
    p: Principal,
    idem: IdempotencyKey,
    state: web::Data<AppState>,
    body: web::Json<Credit>,
) -> ApiResult<HttpResponse> {
    p.require_role(&[Role::Admin])?;
    p.require_scope(Scope::Admin)?;
    let reference = body.reference.trim().to_owned();
    if reference.is_empty() || reference.chars().count() > REFERENCE_MAX {
        return Err(ApiError::invalid(
            "reference",
            format!("reference must be 1 to {REFERENCE_MAX} characters"),
        ));
    }
    if body.amount <= 0 || body.amount > MAX_CREDIT {
        return Err(ApiError::invalid(
            "amount",
            format!("amount must be 1 to {MAX_CREDIT} minor units"),
        ));
    }
    let request = idempotency::Request::new(&p, idem, "POST /v1/admin/credits", &*body)?;
    let (user_id, amount) = (body.user_id, body.amount);
    let admin = p.user_id;
    let outcome = db::run(&state.db, move |c| {
        idempotency::run(c, request, |c| {
            Ok((StatusCode::CREATED, credit_user(c, user_id, amount, &reference)?))
        })
    })
    .await?;
    if !outcome.replayed {
        tracing::info!(admin.id = %admin, user.id = %user_id, amount, "account credited");
    }
    Ok(outcome.into_response())
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Balance {
    /// What the user can spend now: posted credits − posted debits − pending debits.
    pub available: i64,
    /// Held for the user's open orders: the money in the escrow accounts of their bids
    /// (reserved, not yet paid out or refunded), plus pending debits of their own account.
    pub held: i64,
    /// Incoming but not yet final (pending credits, e.g. a provider's payouts under verification).
    pub pending_credits: i64,
    /// Posted credits − posted debits of the user's account.
    pub posted: i64,
    pub currency: String,
}

#[derive(QueryableByName)]
struct Held {
    #[diesel(sql_type = BigInt)]
    held: i64,
}

fn narrow(v: i128) -> ApiResult<i64> {
    i64::try_from(v).map_err(|_| ApiError::internal("balance out of range"))
}

/// The balance of a ledger account as the API shows it.
pub fn balance_of(conn: &mut PgConnection, account: AccountId) -> ApiResult<Balance> {
    let a = gridbook_ledger::store::get_account(conn, account)?;
    let held: Held = diesel::sql_query(
        "SELECT COALESCE(SUM(a.credits_posted - a.debits_posted), 0)::bigint AS held \
         FROM escrow_orders o JOIN ledger_accounts a ON a.id = o.escrow_account_id \
         WHERE o.studio_account_id = $1",
    )
    .bind::<SqlUuid, _>(account.0)
    .get_result(conn)?;
    let b = a.balances;
    Ok(Balance {
        available: narrow(b.available())?,
        held: held
            .held
            .checked_add(b.debits_pending)
            .ok_or_else(|| ApiError::internal("held out of range"))?,
        pending_credits: b.credits_pending,
        posted: narrow(b.posted())?,
        currency: "credits".to_owned(),
    })
}

/// The caller's balance.
#[utoipa::path(
    get, path = "/v1/balance", tag = "money",
    responses((status = 200, body = Balance), (status = 401, body = ErrorResponse)),
    security(("api_key" = []), ("session" = []))
)]
pub async fn balance(p: Principal, state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    p.require_scope(Scope::Read)?;
    let account = p.account_id;
    let b = db::run(&state.db, move |c| balance_of(c, account)).await?;
    Ok(HttpResponse::Ok().json(b))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatementQuery {
    /// 1 to 500 (default 50).
    pub limit: Option<i64>,
    /// Only entries with `seq` below this (the previous page's `next_before`).
    pub before: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Entry {
    pub transfer_id: Uuid,
    /// Position in the ledger's history (the cursor).
    pub seq: i64,
    /// posted, pending, post, void, expire.
    pub kind: String,
    /// Why: deposit, escrow_reserve, escrow_release, settle_provider, ...
    pub code: String,
    /// `credit` (money in) or `debit` (money out) for this account.
    pub direction: String,
    pub amount: i64,
    /// The pending transfer a post/void/expire resolves.
    pub pending_id: Option<Uuid>,
    pub reference: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatementPage {
    pub entries: Vec<Entry>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<i64>,
}

#[derive(QueryableByName)]
struct EntryRow {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = SqlUuid)]
    debit_account_id: Uuid,
    #[diesel(sql_type = BigInt)]
    amount: i64,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    pending_id: Option<Uuid>,
    #[diesel(sql_type = Text)]
    code: String,
    #[diesel(sql_type = Nullable<SqlUuid>)]
    reference: Option<Uuid>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
}

/// The transfers touching `account`, newest first, with `seq < before`.
pub fn statement_of(
    conn: &mut PgConnection,
    account: AccountId,
    before: Option<i64>,
    limit: i64,
) -> ApiResult<StatementPage> {
    let limit = limit.clamp(1, STATEMENT_MAX_LIMIT);
    let rows: Vec<EntryRow> = diesel::sql_query(
        "SELECT id, seq, kind, debit_account_id, amount, pending_id, code, reference, created_at \
         FROM ledger_transfers \
         WHERE (debit_account_id = $1 OR credit_account_id = $1) AND seq < $2 \
         ORDER BY seq DESC LIMIT $3",
    )
    .bind::<SqlUuid, _>(account.0)
    .bind::<BigInt, _>(before.unwrap_or(i64::MAX))
    .bind::<BigInt, _>(limit + 1)
    .load(conn)?;
    let more = rows.len() as i64 > limit;
    let entries: Vec<Entry> = rows
        .into_iter()
        .take(limit as usize)
        .map(|r| Entry {
            transfer_id: r.id,
            seq: r.seq,
            kind: r.kind,
            code: r.code,
            direction: if r.debit_account_id == account.0 {
                "debit"
            } else {
                "credit"
            }
            .to_owned(),
            amount: r.amount,
            pending_id: r.pending_id,
            reference: r.reference,
            created_at: r.created_at,
        })
        .collect();
    let next_before = if more {
        entries.last().map(|e| e.seq)
    } else {
        None
    };
    Ok(StatementPage {
        entries,
        next_before,
    })
}

/// The caller's ledger entries, newest first, paginated.
#[utoipa::path(
    get, path = "/v1/statement", tag = "money",
    params(StatementQuery),
    responses((status = 200, body = StatementPage), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)),
    security(("api_key" = []), ("session" = []))
)]
pub async fn statement(
    p: Principal,
    state: web::Data<AppState>,
    q: web::Query<StatementQuery>,
) -> ApiResult<HttpResponse> {
    p.require_scope(Scope::Read)?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=STATEMENT_MAX_LIMIT).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("limit must be 1 to {STATEMENT_MAX_LIMIT}"),
        )
        .with_field("limit"));
    }
    if let Some(b) = q.before
        && b <= 0
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            "before must be positive",
        )
        .with_field("before"));
    }
    let account = p.account_id;
    let before = q.before;
    let page = db::run(&state.db, move |c| statement_of(c, account, before, limit)).await?;
    Ok(HttpResponse::Ok().json(page))
}
