//! The GRID token market (`GRID-CREDITS`, a token market of the catalogue): buy and sell GRID
//! for credits on the engine, settled delivery-versus-payment by the settlement worker
//! (`gridbook_settlement::token`).
//!
//! `POST /v1/token/orders` {side, price, quantity, time_in_force, client_order_id?} does, in ONE
//! transaction: take an engine order id (`market_order_ids`), reserve the escrow, insert the
//! `token_orders` row and queue the engine's Place in the outbox. A **buy** reserves credits
//! exactly like a job's bid (`escrow::reserve_bid`: `quantity × (price + ⌈price × fee⌉)` from the
//! caller's credits account; the fee is the buyer's). A **sell** holds `quantity × 10^6` GRID base
//! units of the caller's GRID account (`token_escrow::reserve_sell`: one pending transfer into
//! the order's escrow account). Not enough credits → 409 `insufficient_funds`, not enough GRID →
//! 409 `insufficient_tokens`, both naming `quantity`; nothing is reserved then.
//!
//! Price: credits' minor units per whole GRID (engine ticks, within the market's min/max);
//! quantity: whole GRID (engine lots, 1..=the market's max). `gtc` rests until filled or
//! cancelled, `ioc` takes what it can at once (the rest is released when the engine cancels it).
//!
//! `DELETE /v1/token/orders/{id}` queues an engine Cancel (`cancel_requested`); the unfilled part
//! of the hold is released when the engine's `cancelled` event is settled. An account never
//! trades with itself: the engine's self-trade prevention cancels the newest order's remainder
//! (and the worker refuses such a fill should one ever come).
//!
//! `GET /v1/token/balance` → the caller's GRID: available and held (open sells), in base units
//! and as whole-token decimal strings.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use gridbook_db::market_orders as orders;
use gridbook_db::status::{TokenOrderStatus, TokenSide, TokenTimeInForce};
use gridbook_db::token_orders::{self, TokenOrderRow};
use gridbook_ledger::escrow::{self, Bid};
use gridbook_ledger::{LedgerError, token, token_escrow};
use gridbook_wire::catalog::{self, MarketKind, TokenPair};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::{Principal, Role, Scope};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::files::Page;
use crate::idempotency::{self, IdempotencyKey};
use crate::schema::token_orders as t_orders;
use crate::state::AppState;

/// The longest `client_order_id`.
pub const MAX_CLIENT_ORDER_ID: usize = 64;

/// Routes of this module (mounted under `/v1` by `app`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/token/orders")
            .route(web::post().to(create_order))
            .route(web::get().to(list_orders)),
    )
    .service(
        web::resource("/token/orders/{id}")
            .route(web::get().to(get_order))
            .route(web::delete().to(cancel_order)),
    )
    .service(web::resource("/token/balance").route(web::get().to(balance)));
}

/// Who may trade: every signed-in user but an admin.
const TRADERS: &[Role] = &[Role::Studio, Role::Provider, Role::Trader];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// Pay credits for GRID.
    Buy,
    /// Deliver GRID for credits.
    Sell,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimeInForce {
    /// Good till cancelled.
    Gtc,
    /// Immediate or cancel.
    Ioc,
}

/// An order on the GRID market. Fields the market decides (status, fee, accounts) do not exist
/// here: an unknown field is a 400.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrder {
    pub side: Side,
    /// Credits' minor units per whole GRID (= engine ticks), within the market's min/max price.
    pub price: i64,
    /// Whole GRID (= engine lots), 1..=the market's max order quantity.
    pub quantity: i64,
    pub time_in_force: TimeInForce,
    /// Your own id for the order (1-64 characters of `A-Z a-z 0-9 _ -`), unique among yours.
    #[serde(default)]
    pub client_order_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderOut {
    pub id: Uuid,
    pub market: String,
    pub side: Side,
    pub price: i64,
    pub quantity: i64,
    /// Whole GRID traded so far.
    pub filled: i64,
    pub time_in_force: TimeInForce,
    pub client_order_id: Option<String>,
    /// `open`, `cancel_requested`, `filled`, `cancelled` (unfilled lots released) or
    /// `rejected` (the engine refused it; everything released).
    pub status: String,
    pub engine_order_id: i64,
    /// The fee in bps of the notional a buy pays (0 for a sell: the seller pays none).
    pub fee_bps: u32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OrderList {
    pub data: Vec<OrderOut>,
    pub next_before: Option<Uuid>,
}

/// The caller's GRID.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenBalance {
    /// `GRID`.
    pub token: String,
    /// Base units per whole GRID (10^decimals).
    pub decimals: u32,
    /// Base units the caller can sell or send.
    pub available: i64,
    /// Base units held for open sell orders.
    pub held: i64,
    /// `available` in whole GRID, a decimal string (`"1.500000"`).
    pub available_tokens: String,
    pub held_tokens: String,
}

fn side_out(s: TokenSide) -> Side {
    match s {
        TokenSide::Buy => Side::Buy,
        TokenSide::Sell => Side::Sell,
    }
}

fn order_out(r: TokenOrderRow, pair: &TokenPair) -> OrderOut {
    OrderOut {
        id: r.id,
        market: r.market,
        side: side_out(r.side),
        price: r.price,
        quantity: r.quantity,
        filled: r.filled,
        time_in_force: match r.time_in_force {
            TokenTimeInForce::Gtc => TimeInForce::Gtc,
            TokenTimeInForce::Ioc => TimeInForce::Ioc,
        },
        client_order_id: r.client_order_id,
        status: r.status.as_str().to_owned(),
        engine_order_id: r.engine_order_id,
        fee_bps: if r.side == TokenSide::Buy { pair.fee_bps } else { 0 },
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

/// The GRID market as the API serves it: its configuration and its token pair. 503 when the
/// engine's configuration does not offer it.
fn grid_market(state: &AppState) -> ApiResult<(crate::markets::Market, TokenPair)> {
    let m = state.markets.get(catalog::GRID_CREDITS).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "market_unavailable",
            format!("{} is not offered by this deployment", catalog::GRID_CREDITS),
        )
    })?;
    match m.kind {
        MarketKind::Token(pair) => Ok((m.clone(), pair)),
        MarketKind::Compute(_) => Err(ApiError::internal(format!("{} is configured as a compute market", catalog::GRID_CREDITS))),
    }
}

fn check(req: &CreateOrder, market: &crate::markets::Market) -> ApiResult<()> {
    let c = &market.config;
    if req.price < 1 || (req.price as u64) < c.min_price || (req.price as u64) > c.max_price {
        return Err(ApiError::invalid(
            "price",
            format!("price must be {}..={} credits' minor units per GRID", c.min_price, c.max_price),
        ));
    }
    if req.quantity < 1 || req.quantity as u64 > c.max_qty {
        return Err(ApiError::invalid(
            "quantity",
            format!("quantity must be 1..={} whole GRID", c.max_qty),
        ));
    }
    if let Some(id) = &req.client_order_id {
        let ok = !id.is_empty()
            && id.len() <= MAX_CLIENT_ORDER_ID
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(ApiError::invalid(
                "client_order_id",
                format!("client_order_id must be 1..={MAX_CLIENT_ORDER_ID} characters of A-Z a-z 0-9 _ -"),
            ));
        }
    }
    Ok(())
}

/// Reading needs `read` or `trade` (a key that trades may read what it placed).
fn read_scope(p: &Principal) -> ApiResult<()> {
    p.require_scope(Scope::Read).or_else(|_| p.require_scope(Scope::Trade))
}

/// `true` when a ledger error means the account's available balance does not cover a hold.
fn is_insufficient(e: &LedgerError) -> bool {
    matches!(e.root(), LedgerError::ExceedsCredits(_))
}

/// Base units as a whole-token decimal string.
fn tokens(units: i64) -> String {
    gridbook_ledger::model::to_decimal(units, token::DECIMALS).to_string()
}

/// Place an order on the GRID market: escrow reserved (credits for a buy, GRID for a sell) and
/// the order queued for the engine in one transaction.
#[utoipa::path(post, path = "/v1/token/orders", tag = "token", request_body = CreateOrder,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first response; never places twice")),
    responses((status = 201, body = OrderOut), (status = 400, body = ErrorResponse),
        (status = 403, description = "an admin, or a key without the `trade` scope", body = ErrorResponse),
        (status = 409, description = "`insufficient_funds` (credits), `insufficient_tokens` (GRID) or `client_order_id_taken`; nothing reserved", body = ErrorResponse),
        (status = 503, description = "`market_unavailable`", body = ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn create_order(
    state: web::Data<AppState>,
    principal: Principal,
    idem: IdempotencyKey,
    body: web::Json<CreateOrder>,
) -> ApiResult<HttpResponse> {
    principal.require_role(TRADERS)?;
    principal.require_scope(Scope::Trade)?;
    let req = body.into_inner();
    let (market, pair) = grid_market(&state)?;
    check(&req, &market)?;
    let request = idempotency::Request::new(&principal, idem, "POST /v1/token/orders", &req)?;
    let outcome = crate::db::run(&state.db, move |c| {
        idempotency::run(c, request, |c| {
            let row = place_in_tx(c, &principal, &market, &pair, &req)?;
            tracing::info!(
                token_order = %row.id, user = %principal.user_id, side = row.side.as_str(),
                price = row.price, quantity = row.quantity, tif = row.time_in_force.as_str(),
                engine_order_id = row.engine_order_id, "token order queued"
            );
            Ok((StatusCode::CREATED, order_out(row, &pair)))
        })
    })
    .await?;
    Ok(outcome.into_response())
}

/// The order's reservation, row and Place, in the caller's transaction.
fn place_in_tx(
    c: &mut PgConnection,
    principal: &Principal,
    market: &crate::markets::Market,
    pair: &TokenPair,
    req: &CreateOrder,
) -> ApiResult<TokenOrderRow> {
    let symbol = market.config.market.0.clone();
    if let Some(id) = &req.client_order_id {
        let taken: i64 = t_orders::table
            .filter(t_orders::owner.eq(principal.user_id))
            .filter(t_orders::client_order_id.eq(id))
            .count()
            .get_result(c)?;
        if taken > 0 {
            return Err(ApiError::conflict("client_order_id_taken", "you have an order with this client_order_id")
                .with_field("client_order_id"));
        }
    }
    // Every user's GRID account exists before anything is held from or delivered to it.
    let token_account = token::ensure_user_account(c, principal.user_id)?;
    let order_id = Uuid::now_v7();
    match req.side {
        Side::Buy => {
            let bid = Bid {
                order_id,
                studio_account: principal.account_id,
                quantity: req.quantity,
                limit_price: req.price,
                fee_bps: pair.fee_bps,
            };
            escrow::reserve_bid(c, &bid).map_err(|e| {
                if !is_insufficient(&e) {
                    return ApiError::from(e);
                }
                let need = gridbook_ledger::settlement::unit_reserve(req.price, pair.fee_bps)
                    .ok()
                    .and_then(|u| u.checked_mul(req.quantity));
                ApiError::conflict(
                    "insufficient_funds",
                    match need {
                        Some(n) => format!(
                            "buying {} GRID at {} reserves {n} credits' minor units ({} × (price {} + fee {} bps)); your available credits are fewer",
                            req.quantity, req.price, req.quantity, req.price, pair.fee_bps
                        ),
                        None => "your available credits do not cover the order".into(),
                    },
                )
                .with_field("quantity")
            })?;
        }
        Side::Sell => {
            let sell = token_escrow::Sell {
                order_id,
                seller_account: token_account,
                units_per_lot: pair.base_units_per_lot,
                quantity: req.quantity,
            };
            token_escrow::reserve_sell(c, &sell).map_err(|e| {
                if !is_insufficient(&e) {
                    return ApiError::from(e);
                }
                let available = gridbook_ledger::store::get_account(c, token_account)
                    .map(|a| a.balances.available())
                    .unwrap_or_default();
                ApiError::conflict(
                    "insufficient_tokens",
                    format!(
                        "selling {} GRID holds {} base units; your available GRID is {} ({} base units)",
                        req.quantity,
                        req.quantity.saturating_mul(pair.base_units_per_lot),
                        tokens(i64::try_from(available).unwrap_or(i64::MAX)),
                        available
                    ),
                )
                .with_field("quantity")
            })?;
        }
    }
    let engine_order_id = orders::next_engine_order_id(c)?;
    let now = Utc::now();
    let row = token_orders::insert(
        c,
        &TokenOrderRow {
            id: order_id,
            engine_order_id: i64::try_from(engine_order_id).map_err(ApiError::internal)?,
            market: symbol.clone(),
            owner: Some(principal.user_id),
            epoch: None,
            side: match req.side {
                Side::Buy => TokenSide::Buy,
                Side::Sell => TokenSide::Sell,
            },
            price: req.price,
            quantity: req.quantity,
            filled: 0,
            time_in_force: match req.time_in_force {
                TimeInForce::Gtc => TokenTimeInForce::Gtc,
                TimeInForce::Ioc => TokenTimeInForce::Ioc,
            },
            client_order_id: req.client_order_id.clone(),
            credit_account_id: principal.account_id.0,
            token_account_id: token_account.0,
            engine_account: i64::try_from(principal.engine_account).map_err(ApiError::internal)?,
            status: TokenOrderStatus::Open,
            accepted_seq: None,
            created_at: now,
            updated_at: now,
        },
    )
    .map_err(|e| match e {
        // A concurrent order with the same client_order_id won the unique index.
        gridbook_db::DbError::Query(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) if req.client_order_id.is_some() => {
            ApiError::conflict("client_order_id_taken", "you have an order with this client_order_id")
                .with_field("client_order_id")
        }
        e => ApiError::from(e),
    })?;
    gridbook_ledger::events::enqueue_outbox(
        c,
        &gridbook_wire::subjects::market_cmd(&symbol),
        &serde_json::to_value(row.place_command()?).map_err(ApiError::internal)?,
    )?;
    Ok(row)
}

fn load_own(c: &mut PgConnection, owner: Uuid, id: Uuid, lock: bool) -> ApiResult<TokenOrderRow> {
    let q = t_orders::table
        .find(id)
        .filter(t_orders::owner.eq(owner))
        .select(TokenOrderRow::as_select());
    let row = if lock { q.for_update().first(c).optional()? } else { q.first(c).optional()? };
    row.ok_or_else(|| ApiError::not_found("token order"))
}

/// The caller's orders on the GRID market, newest first.
#[utoipa::path(get, path = "/v1/token/orders", tag = "token", params(Page),
    responses((status = 200, body = OrderList), (status = 403, body = ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn list_orders(
    state: web::Data<AppState>,
    principal: Principal,
    page: web::Query<Page>,
) -> ApiResult<HttpResponse> {
    principal.require_role(TRADERS)?;
    read_scope(&principal)?;
    let (_, pair) = grid_market(&state)?;
    let limit = page.limit()?;
    let before = page.before;
    let owner = principal.user_id;
    let (rows, next_before) = crate::db::run(&state.db, move |c| {
        use crate::schema::token_orders;
        Ok(crate::files::owned_page!(c, token_orders, TokenOrderRow, owner, limit, before)?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(OrderList {
        data: rows.into_iter().map(|r| order_out(r, &pair)).collect(),
        next_before,
    }))
}

/// One of the caller's orders on the GRID market.
#[utoipa::path(get, path = "/v1/token/orders/{id}", tag = "token",
    responses((status = 200, body = OrderOut), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn get_order(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    principal.require_role(TRADERS)?;
    read_scope(&principal)?;
    let (_, pair) = grid_market(&state)?;
    let (owner, id) = (principal.user_id, id.into_inner());
    let row = crate::db::run(&state.db, move |c| load_own(c, owner, id, false)).await?;
    Ok(HttpResponse::Ok().json(order_out(row, &pair)))
}

/// Cancel an open order (engine Cancel): its unfilled part is released when the engine confirms.
/// Cancelling again answers with the order and queues nothing.
#[utoipa::path(delete, path = "/v1/token/orders/{id}", tag = "token",
    responses((status = 200, body = OrderOut), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse),
        (status = 409, description = "`order_not_open`: filled, cancelled or rejected already", body = ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn cancel_order(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    principal.require_role(TRADERS)?;
    principal.require_scope(Scope::Trade)?;
    let (_, pair) = grid_market(&state)?;
    let id = id.into_inner();
    let row = crate::db::run(&state.db, move |c| {
        c.transaction(|c| {
            let row = load_own(c, principal.user_id, id, true)?;
            match row.status {
                TokenOrderStatus::CancelRequested => return Ok(row),
                TokenOrderStatus::Open => {}
                s => return Err(ApiError::conflict("order_not_open", format!("the order is {s}"))),
            }
            let row: TokenOrderRow = diesel::update(t_orders::table.find(id))
                .set((t_orders::status.eq(TokenOrderStatus::CancelRequested), t_orders::updated_at.eq(Utc::now())))
                .returning(TokenOrderRow::as_returning())
                .get_result(c)?;
            gridbook_ledger::events::enqueue_outbox(
                c,
                &gridbook_wire::subjects::market_cmd(&row.market),
                &serde_json::to_value(row.cancel_command()?).map_err(ApiError::internal)?,
            )?;
            tracing::info!(token_order = %row.id, user = %principal.user_id, engine_order_id = row.engine_order_id, "token order cancel queued");
            Ok(row)
        })
    })
    .await?;
    Ok(HttpResponse::Ok().json(order_out(row, &pair)))
}

/// The caller's GRID: available and held for open sells.
#[utoipa::path(get, path = "/v1/token/balance", tag = "token",
    responses((status = 200, body = TokenBalance), (status = 403, body = ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn balance(state: web::Data<AppState>, principal: Principal) -> ApiResult<HttpResponse> {
    principal.require_role(TRADERS)?;
    read_scope(&principal)?;
    let user = principal.user_id;
    let b = crate::db::run(&state.db, move |c| {
        // No GRID account yet: nothing held, nothing available (a read creates nothing).
        match gridbook_ledger::store::get_account(c, token::user_account(user)) {
            Ok(a) => Ok(a.balances),
            Err(LedgerError::AccountNotFound(_)) => Ok(gridbook_ledger::Balances::default()),
            Err(e) => Err(ApiError::from(e)),
        }
    })
    .await?;
    let available = i64::try_from(b.available()).map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(TokenBalance {
        token: token::LEDGER.to_owned(),
        decimals: token::DECIMALS,
        available,
        held: b.debits_pending,
        available_tokens: tokens(available),
        held_tokens: tokens(b.debits_pending),
    }))
}

/// The OpenAPI paths of this module (merged by `openapi::document`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(create_order, list_orders, get_order, cancel_order, balance),
    components(schemas(CreateOrder, OrderOut, OrderList, TokenBalance, Side, TimeInForce)),
    tags((name = "token", description = "the GRID token market: buy and sell GRID for credits"))
)]
pub struct ApiDoc;
