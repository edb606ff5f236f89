//! Provider asks: place, amend, cancel and list a node's offers on a market.
//!
//! **Asks.** `POST /v1/asks` (node owned, challenge passed) takes an engine order id, inserts the
//! `market_orders` row (side ask, payout account = the provider's ledger account, node), the
//! `asks` row and the engine Place (GTC) in the outbox, in one transaction. A node on probation
//! may have at most `limits.probation_ask_qty` units in open asks (409 `probation_cap`).
//! `PATCH /v1/asks/{id}` queues an Amend, `DELETE /v1/asks/{id}` a Cancel (status
//! `cancel_requested`; the worker closes it on the engine's event). Prices are ticks = minor
//! units per unit; quantities are lots = units.


use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use gridbook_db::market_orders::{self as orders, MarketOrder};
use matching_core::{Amend, Cancel, CommandKind, OrderId, Place, Side, TimeInForce};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::files::Page;
use crate::nodes::{NodeRow, load_node};
use crate::idempotency::{self, IdempotencyKey};
use crate::schema::asks;
use gridbook_db::status::{AskStatus, ChallengeStatus, NodeStatus};
use crate::state::AppState;

/// Routes of this module (mounted by `app`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/asks")
            .route(web::post().to(create_ask))
            .route(web::get().to(list_asks)),
    )
    .service(
        web::resource("/asks/{id}")
            .route(web::get().to(get_ask))
            .route(web::patch().to(amend_ask))
            .route(web::delete().to(cancel_ask)),
    );
}

// ---------------------------------------------------------------------------------------------
// Asks
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAsk {
    pub node_id: Uuid,
    pub market: String,
    /// Minor units per unit (= ticks), within the market's min/max price.
    pub price: i64,
    /// Units (= lots) offered, 1..=the market's max order quantity.
    pub qty: i64,
    /// Never take: an ask that would cross a resting bid is rejected by the engine and closes
    /// with `close_reason: "post_only_would_cross"` (default false).
    #[serde(default)]
    pub post_only: bool,
    /// Self-trade prevention when this ask meets a bid of your own account: `cancel_newest`
    /// (the incoming order's remainder is cancelled), `cancel_oldest` (the resting order is),
    /// `cancel_both`. Default: the market's mode.
    #[serde(default)]
    pub stp: Option<Stp>,
}

/// A self-trade-prevention mode (the engine's `StpMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stp {
    CancelNewest,
    CancelOldest,
    CancelBoth,
}

impl Stp {
    fn engine(self) -> matching_core::StpMode {
        match self {
            Stp::CancelNewest => matching_core::StpMode::CancelNewest,
            Stp::CancelOldest => matching_core::StpMode::CancelOldest,
            Stp::CancelBoth => matching_core::StpMode::CancelBoth,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Stp::CancelNewest => "cancel_newest",
            Stp::CancelOldest => "cancel_oldest",
            Stp::CancelBoth => "cancel_both",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmendAsk {
    pub price: Option<i64>,
    /// The new remaining quantity.
    pub qty: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AskOut {
    pub id: Uuid,
    pub node_id: Uuid,
    pub market: String,
    pub engine_order_id: i64,
    pub price: i64,
    pub qty: i64,
    /// `open`, `cancel_requested` or `closed`.
    pub status: String,
    pub post_only: bool,
    /// The ask's own self-trade-prevention mode; absent: the market's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stp: Option<String>,
    /// Why a closed ask closed: `filled`, `cancelled`, `expired`, `self_trade`, or the engine's
    /// rejection of its place (e.g. `post_only_would_cross`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AskList {
    pub data: Vec<AskOut>,
    pub next_before: Option<Uuid>,
}

#[derive(Queryable, Selectable, Insertable, Clone, Debug)]
#[diesel(table_name = asks)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct AskRow {
    pub id: Uuid,
    pub owner: Uuid,
    pub node_id: Uuid,
    pub market: String,
    pub engine_order_id: i64,
    pub price: i64,
    pub qty: i64,
    pub status: AskStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub post_only: bool,
    pub stp: Option<String>,
    pub close_reason: Option<String>,
}

impl From<AskRow> for AskOut {
    fn from(r: AskRow) -> Self {
        AskOut {
            id: r.id,
            node_id: r.node_id,
            market: r.market,
            engine_order_id: r.engine_order_id,
            price: r.price,
            qty: r.qty,
            status: r.status.as_str().into(),
            post_only: r.post_only,
            stp: r.stp,
            close_reason: r.close_reason,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

fn check_price(market: &crate::markets::Market, price: i64) -> ApiResult<()> {
    let c = &market.config;
    if price < 1 || (price as u64) < c.min_price || (price as u64) > c.max_price {
        return Err(ApiError::invalid(
            "price",
            format!(
                "price must be {}..={} minor units per unit",
                c.min_price, c.max_price
            ),
        ));
    }
    Ok(())
}

fn check_qty(market: &crate::markets::Market, qty: i64) -> ApiResult<()> {
    let max = market.config.max_qty;
    if qty < 1 || qty as u64 > max {
        return Err(ApiError::invalid(
            "qty",
            format!("qty must be 1..={max} units"),
        ));
    }
    Ok(())
}

/// Units in the node's open asks, `except` one ask (an amend replaces its quantity).
fn open_qty(conn: &mut PgConnection, node: Uuid, except: Option<Uuid>) -> ApiResult<i64> {
    #[derive(QueryableByName)]
    struct Sum {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let s: Sum = diesel::sql_query(
        "SELECT coalesce(sum(qty), 0)::bigint AS n FROM asks \
         WHERE node_id = $1 AND status = 'open' AND id IS DISTINCT FROM $2",
    )
    .bind::<diesel::sql_types::Uuid, _>(node)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Uuid>, _>(except)
    .get_result(conn)?;
    Ok(s.n)
}

/// Units in the open asks of the probation nodes of `users`, `except` one ask.
fn cluster_probation_qty(conn: &mut PgConnection, users: &[Uuid], except: Option<Uuid>) -> ApiResult<i64> {
    #[derive(QueryableByName)]
    struct Sum {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let s: Sum = diesel::sql_query(
        "SELECT coalesce(sum(a.qty), 0)::bigint AS n FROM asks a JOIN nodes n ON n.id = a.node_id \
         WHERE a.owner = ANY($1) AND a.status = 'open' AND n.status = 'probation' AND a.id IS DISTINCT FROM $2",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Uuid>, _>(users)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Uuid>, _>(except)
    .get_result(conn)?;
    Ok(s.n)
}

/// A node on probation offers at most `limits.probation_ask_qty` units in open asks, and all
/// probation nodes of its identity cluster together at most `limits.probation_cluster_ask_qty`
/// (more accounts from one network or machine are not more room). The cluster's accounts are
/// locked (in id order) so concurrent asks cannot pass the sum.
fn probation_check(
    conn: &mut PgConnection,
    node: &NodeRow,
    except: Option<Uuid>,
    qty: i64,
    limits: &crate::settings::Limits,
) -> ApiResult<()> {
    if node.status != NodeStatus::Probation {
        return Ok(());
    }
    let cap = limits.probation_ask_qty;
    let open = open_qty(conn, node.id, except)?;
    if open.saturating_add(qty) as u64 > cap {
        return Err(ApiError::conflict(
            "probation_cap",
            format!(
                "a node on probation may offer at most {cap} units in open asks; it has {open} open and asks for {qty} more"
            ),
        )
        .with_field("qty"));
    }
    let users = gridbook_db::identity::cluster_users(conn, node.owner)?;
    for u in &users {
        crate::accounts::lock_user(conn, *u)?;
    }
    let cluster_cap = limits.probation_cluster_ask_qty;
    let open = cluster_probation_qty(conn, &users, except)?;
    if open.saturating_add(qty) as u64 > cluster_cap {
        return Err(ApiError::conflict(
            "probation_cap",
            format!(
                "the probation nodes of your identity cluster ({} accounts linked by network or hardware) may offer at most {cluster_cap} units in open asks together; they have {open} open and this asks for {qty} more",
                users.len()
            ),
        )
        .with_field("qty"));
    }
    Ok(())
}

fn enqueue(conn: &mut PgConnection, market: &str, cmd: CommandKind) -> ApiResult<()> {
    gridbook_ledger::events::enqueue_outbox(
        conn,
        &gridbook_wire::subjects::market_cmd(market),
        &serde_json::to_value(cmd).map_err(ApiError::internal)?,
    )?;
    Ok(())
}

/// Offer a node's capacity on a market.
#[utoipa::path(post, path = "/v1/asks", tag = "asks", request_body = CreateAsk,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first response; never places twice")),
    responses((status = 201, body = AskOut), (status = 400, body = crate::error::ErrorResponse),
        (status = 404, description = "node not found", body = crate::error::ErrorResponse),
        (status = 409, description = "`challenge_not_passed`, `node_suspended` or `probation_cap`", body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn create_ask(
    state: web::Data<AppState>,
    principal: Principal,
    idem: IdempotencyKey,
    http: actix_web::HttpRequest,
    body: web::Json<CreateAsk>,
) -> ApiResult<HttpResponse> {
    principal.require_provider(true)?;
    let req = body.into_inner();
    let seen = crate::identity::Seen::of(&state.settings.identity, &http);
    let market = state
        .markets
        .get(&req.market)
        .ok_or_else(|| ApiError::invalid("market", format!("unknown market {:?}", req.market)))?
        .clone();
    // Asks offer a node's capacity: a token market has none to offer.
    market.compute("market")?;
    check_price(&market, req.price)?;
    check_qty(&market, req.qty)?;
    let limits = state.settings.limits.clone();
    let request = idempotency::Request::new(&principal, idem, "POST /v1/asks", &req)?;
    let outcome = crate::db::run(&state.db, move |c| {
        idempotency::run(c, request, |c| {
            // The node row lock serialises asks of one node (the probation cap sum).
            let node = load_node(c, principal.user_id, req.node_id, true)
                .map_err(|e| e.with_field("node_id"))?;
            if node.challenge_status != ChallengeStatus::Passed {
                return Err(ApiError::conflict(
                    "challenge_not_passed",
                    format!("the node's challenge is {}; pass it before posting asks", node.challenge_status),
                )
                .with_field("node_id"));
            }
            if node.status == NodeStatus::Deleted {
                return Err(ApiError::conflict("node_deleted", "the node was deleted").with_field("node_id"));
            }
            if node.status == NodeStatus::Suspended {
                return Err(ApiError::conflict("node_suspended", "the node is suspended").with_field("node_id"));
            }
            seen.record(c, principal.user_id, Some(node.id))?;
            probation_check(c, &node, None, req.qty, &limits)?;
            let owner = gridbook_db::identity::cluster_owner(c, principal.user_id)?;
            let engine_order_id = orders::next_engine_order_id(c)?;
            let id = Uuid::now_v7();
            orders::insert(
                c,
                &MarketOrder {
                    engine_order_id,
                    market: req.market.clone(),
                    side: Side::Ask,
                    order_id: id,
                    account_id: principal.account_id.0,
                    node_id: Some(node.id),
                    job_id: None,
                    accepted_seq: None,
                },
            )?;
            let now = Utc::now();
            let row = AskRow {
                id,
                owner: principal.user_id,
                node_id: node.id,
                market: req.market.clone(),
                engine_order_id: i64::try_from(engine_order_id).map_err(ApiError::internal)?,
                price: req.price,
                qty: req.qty,
                status: AskStatus::Open,
                created_at: now,
                updated_at: now,
                post_only: req.post_only,
                stp: req.stp.map(|m| m.as_str().to_owned()),
                close_reason: None,
            };
            let row: AskRow = diesel::insert_into(asks::table)
                .values(&row)
                .returning(AskRow::as_returning())
                .get_result(c)?;
            enqueue(
                c,
                &req.market,
                CommandKind::Place(Place {
                    id: OrderId(engine_order_id),
                    account: matching_core::AccountId(principal.engine_account),
                    // The anti-whale owner is the identity cluster, not the account.
                    owner: Some(matching_core::OwnerId(owner)),
                    side: Side::Ask,
                    price: Some(req.price as u64),
                    qty: req.qty as u64,
                    tif: TimeInForce::Gtc,
                    post_only: req.post_only,
                    budget: None,
                    stp: req.stp.map(Stp::engine),
                }),
            )?;
            tracing::info!(ask = %row.id, node = %row.node_id, user = %principal.user_id, market = %row.market, price = row.price, qty = row.qty, post_only = row.post_only, stp = ?row.stp, engine_order_id, "ask placed");
            Ok((StatusCode::CREATED, AskOut::from(row)))
        })
    })
    .await?;
    Ok(outcome.into_response())
}

fn load_ask(conn: &mut PgConnection, owner: Uuid, id: Uuid, lock: bool) -> ApiResult<AskRow> {
    let q = asks::table
        .find(id)
        .filter(asks::owner.eq(owner))
        .select(AskRow::as_select());
    let row = if lock {
        q.for_update().first(conn).optional()?
    } else {
        q.first(conn).optional()?
    };
    row.ok_or_else(|| ApiError::not_found("ask"))
}

/// One of the caller's asks.
#[utoipa::path(get, path = "/v1/asks/{id}", tag = "asks",
    responses((status = 200, body = AskOut), (status = 404, body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn get_ask(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    principal.require_provider(false)?;
    let (owner, id) = (principal.user_id, id.into_inner());
    let row = crate::db::run(&state.db, move |c| load_ask(c, owner, id, false)).await?;
    Ok(HttpResponse::Ok().json(AskOut::from(row)))
}

/// Change an open ask's price and/or remaining quantity (engine Amend: a lower quantity at the
/// same price keeps time priority; a price change loses it).
#[utoipa::path(patch, path = "/v1/asks/{id}", tag = "asks", request_body = AmendAsk,
    responses((status = 200, body = AskOut), (status = 404, body = crate::error::ErrorResponse),
        (status = 409, description = "`ask_not_open` or `probation_cap`", body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn amend_ask(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
    body: web::Json<AmendAsk>,
) -> ApiResult<HttpResponse> {
    principal.require_provider(true)?;
    let req = body.into_inner();
    if req.price.is_none() && req.qty.is_none() {
        return Err(ApiError::invalid("price", "send price, qty or both"));
    }
    let id = id.into_inner();
    let limits = state.settings.limits.clone();
    let markets = state.markets.clone();
    let row = crate::db::run(&state.db, move |c| {
        c.transaction(|c| {
            let ask = load_ask(c, principal.user_id, id, false)?;
            // Lock order: node, then ask (as create does).
            let node = load_node(c, principal.user_id, ask.node_id, true)?;
            let ask = load_ask(c, principal.user_id, id, true)?;
            if ask.status != AskStatus::Open {
                return Err(ApiError::conflict("ask_not_open", format!("the ask is {}", ask.status)));
            }
            let market = markets
                .get(&ask.market)
                .ok_or_else(|| ApiError::internal(format!("ask of unknown market {}", ask.market)))?;
            if let Some(p) = req.price {
                check_price(market, p)?;
            }
            if let Some(q) = req.qty {
                check_qty(market, q)?;
                probation_check(c, &node, Some(ask.id), q, &limits)?;
            }
            let price = req.price.unwrap_or(ask.price);
            let qty = req.qty.unwrap_or(ask.qty);
            let row: AskRow = diesel::update(asks::table.find(id))
                .set((asks::price.eq(price), asks::qty.eq(qty), asks::updated_at.eq(Utc::now())))
                .returning(AskRow::as_returning())
                .get_result(c)?;
            enqueue(
                c,
                &row.market,
                CommandKind::Amend(Amend {
                    id: OrderId(u64::try_from(row.engine_order_id).map_err(ApiError::internal)?),
                    account: matching_core::AccountId(principal.engine_account),
                    price: req.price.map(|p| p as u64),
                    qty: req.qty.map(|q| q as u64),
                }),
            )?;
            tracing::info!(ask = %row.id, user = %principal.user_id, price = row.price, qty = row.qty, "ask amend queued");
            Ok(row)
        })
    })
    .await?;
    Ok(HttpResponse::Ok().json(AskOut::from(row)))
}

/// Withdraw an ask (engine Cancel). Cancelling again answers with the ask and queues nothing.
#[utoipa::path(delete, path = "/v1/asks/{id}", tag = "asks",
    responses((status = 200, body = AskOut), (status = 404, body = crate::error::ErrorResponse),
        (status = 409, description = "`ask_not_open`: already closed", body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn cancel_ask(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    principal.require_provider(true)?;
    let id = id.into_inner();
    let row = crate::db::run(&state.db, move |c| {
        c.transaction(|c| {
            let ask = load_ask(c, principal.user_id, id, true)?;
            match ask.status {
                AskStatus::CancelRequested => return Ok(ask),
                AskStatus::Open => {}
                s => {
                    return Err(ApiError::conflict(
                        "ask_not_open",
                        format!("the ask is {s}"),
                    ));
                }
            }
            let row: AskRow = diesel::update(asks::table.find(id))
                .set((
                    asks::status.eq(AskStatus::CancelRequested),
                    asks::updated_at.eq(Utc::now()),
                ))
                .returning(AskRow::as_returning())
                .get_result(c)?;
            enqueue(
                c,
                &row.market,
                CommandKind::Cancel(Cancel {
                    id: OrderId(u64::try_from(row.engine_order_id).map_err(ApiError::internal)?),
                    account: matching_core::AccountId(principal.engine_account),
                }),
            )?;
            tracing::info!(ask = %row.id, user = %principal.user_id, "ask cancel queued");
            Ok(row)
        })
    })
    .await?;
    Ok(HttpResponse::Ok().json(AskOut::from(row)))
}

/// Queues a Cancel for every open ask of `node` (its owner's engine account); returns how many.
/// In the caller's transaction (node deletion).
pub(crate) fn cancel_open_asks_of_node(c: &mut PgConnection, node: Uuid, engine_account: u64) -> ApiResult<usize> {
    let cancels = gridbook_db::nodes::cancel_open_asks(c, node, None, engine_account)?;
    for (market, cmd) in &cancels {
        enqueue(c, market, cmd.clone())?;
    }
    Ok(cancels.len())
}

/// The caller's asks, newest first.
#[utoipa::path(get, path = "/v1/asks", tag = "asks", params(Page),
    responses((status = 200, body = AskList)), security(("api_key" = []), ("session" = [])))]
pub async fn list_asks(
    state: web::Data<AppState>,
    principal: Principal,
    page: web::Query<Page>,
) -> ApiResult<HttpResponse> {
    principal.require_provider(false)?;
    let limit = page.limit()?;
    let before = page.before;
    let owner = principal.user_id;
    let (rows, next_before) = crate::db::run(&state.db, move |c| {
        Ok(crate::files::owned_page!(c, asks, AskRow, owner, limit, before)?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(AskList {
        data: rows.into_iter().map(AskOut::from).collect(),
        next_before,
    }))
}

/// The OpenAPI paths of this module (merged by `openapi::document`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        create_ask,
        get_ask,
        amend_ask,
        cancel_ask,
        list_asks
    ),
    tags(
        (name = "asks", description = "provider asks on a market")
    )
)]
pub struct ApiDoc;
