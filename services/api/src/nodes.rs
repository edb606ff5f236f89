//! Providers: nodes, the hardware challenge, asks, assignments and earnings.
//!
//! **Nodes.** `POST /v1/nodes` registers a node on probation with a challenge: embed
//! [`CHALLENGE_ITEMS`] texts generated from a random 128-bit nonce
//! (`executor::challenge::inputs`) with the market's MiniLM model. `POST /v1/nodes/{id}/challenge`
//! takes the answer; the API recomputes the reference itself on CPU (the executor's `Embedder`,
//! ONNX Runtime from `ORT_DYLIB_PATH`, models from `GRIDBOOK_MODELS_DIR`, loaded once on first
//! use, behind a mutex, on the blocking pool) and compares per item (`executor::challenge::verify`,
//! cosine ≥ 0.999). Passed → the node may post asks; failed → it may not (one answer per node;
//! register a new node to try again). Passing does not end probation: a node stays `probation`
//! (with its ask cap) until it has a record of verified assignments, which the settlement
//! worker's verifier tracks; the challenge leaves `reputation` unchanged.
//!
//! **Asks.** `POST /v1/asks` (node owned, challenge passed) takes an engine order id, inserts the
//! `market_orders` row (side ask, payout account = the provider's ledger account, node), the
//! `asks` row and the engine Place (GTC) in the outbox, in one transaction. A node on probation
//! may have at most `limits.probation_ask_qty` units in open asks (409 `probation_cap`).
//! `PATCH /v1/asks/{id}` queues an Amend, `DELETE /v1/asks/{id}` a Cancel (status
//! `cancel_requested`; the worker closes it on the engine's event). Prices are ticks = minor
//! units per unit; quantities are lots = units.

use std::sync::{Mutex, OnceLock};

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use gridbook_settlement::orders::{self, MarketOrder};
use matching_core::{Amend, Cancel, CommandKind, OrderId, Place, Side, TimeInForce};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::{Principal, Role, Scope};
use crate::error::{ApiError, ApiResult};
use crate::files::{Page, paginate};
use crate::idempotency::{self, IdempotencyKey};
use crate::schema::{asks, job_assignments, nodes};
use crate::state::AppState;

/// Items of a node's challenge.
pub const CHALLENGE_ITEMS: u32 = 32;
/// Largest challenge answer body (32 × 384 floats as JSON text is about 300 KB).
pub const CHALLENGE_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Routes of this module (mounted by `app`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/nodes")
            .route(web::post().to(register))
            .route(web::get().to(list_nodes)),
    )
    .service(web::resource("/nodes/{id}").route(web::get().to(get_node)))
    .service(
        web::resource("/nodes/{id}/challenge")
            .app_data(crate::app::json_config(CHALLENGE_BODY_BYTES))
            .route(web::post().to(answer_challenge)),
    )
    .service(
        web::resource("/asks")
            .route(web::post().to(create_ask))
            .route(web::get().to(list_asks)),
    )
    .service(
        web::resource("/asks/{id}")
            .route(web::get().to(get_ask))
            .route(web::patch().to(amend_ask))
            .route(web::delete().to(cancel_ask)),
    )
    .service(web::resource("/assignments").route(web::get().to(list_assignments)))
    .service(web::resource("/earnings").route(web::get().to(earnings)));
}

fn provider(p: &Principal, write: bool) -> ApiResult<()> {
    p.require_role(&[Role::Provider])?;
    p.require_scope(if write { Scope::Nodes } else { Scope::Read })
        .or_else(|e| {
            // A key with `nodes` may also read what it writes.
            if !write {
                p.require_scope(Scope::Nodes)
            } else {
                Err(e)
            }
        })
}

// ---------------------------------------------------------------------------------------------
// The challenge reference (executor on CPU)
// ---------------------------------------------------------------------------------------------

fn runtime() -> Result<&'static executor::runtime::Runtime, String> {
    static RT: OnceLock<executor::runtime::Runtime> = OnceLock::new();
    static INIT: Mutex<()> = Mutex::new(());
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let _g = INIT
        .lock()
        .map_err(|_| "runtime lock poisoned".to_owned())?;
    if let Some(rt) = RT.get() {
        return Ok(rt);
    }
    let rt = executor::runtime::Runtime::new(executor::runtime::RuntimeConfig {
        dylib_path: None,
        provider: executor::runtime::Provider::Cpu,
        intra_threads: 1,
    })
    .map_err(|e| e.to_string())?;
    Ok(RT.get_or_init(|| rt))
}

fn embedder() -> &'static Mutex<Option<executor::embed::Embedder>> {
    static E: OnceLock<Mutex<Option<executor::embed::Embedder>>> = OnceLock::new();
    E.get_or_init(|| Mutex::new(None))
}

/// Embeds `executor::challenge::inputs(nonce, items)` with the market's reference setup (CPU,
/// the pinned MiniLM model). Blocking: call it on the blocking pool. The model is loaded on the
/// first call and kept; a failed load is retried on the next call. This is also what a test
/// (or an honest node on CPU) computes as its answer.
pub fn challenge_embeddings(nonce: &str, items: usize) -> Result<Vec<Vec<f32>>, String> {
    let items = items.min(executor::challenge::MAX_ITEMS);
    let mut guard = embedder()
        .lock()
        .map_err(|_| "embedder lock poisoned".to_owned())?;
    if guard.is_none() {
        let rt = runtime()?;
        let models = executor::models::ModelsDir::from_env().map_err(|e| e.to_string())?;
        let e =
            executor::embed::Embedder::load(rt, &models, executor::embed::EmbedConfig::default())
                .map_err(|e| e.to_string())?;
        tracing::info!("challenge reference embedder loaded");
        *guard = Some(e);
    }
    let e = guard.as_ref().ok_or("embedder missing")?;
    let (out, _elapsed) = executor::challenge::run(e, nonce, items).map_err(|e| e.to_string())?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterNode {
    /// 1..=100 characters.
    pub name: String,
    /// e.g. `RTX 4090` (1..=100 characters).
    pub gpu_model: String,
    pub vram_mb: i32,
    /// e.g. `eu-west` (1..=64 characters).
    pub region: String,
}

/// The challenge a node must answer (same shape as `gridbook_wire::node::Challenge`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChallengeOut {
    /// 128-bit random, hex.
    pub nonce: String,
    /// `embed`: embed `executor::challenge::inputs(nonce, items)` with all-MiniLM-L6-v2.
    pub workload: String,
    pub items: u32,
}

impl From<gridbook_wire::node::Challenge> for ChallengeOut {
    fn from(c: gridbook_wire::node::Challenge) -> Self {
        ChallengeOut {
            nonce: c.nonce,
            workload: c.workload,
            items: c.items,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeOut {
    pub id: Uuid,
    pub name: String,
    pub gpu_model: String,
    pub vram_mb: i32,
    pub region: String,
    /// `probation`, `active` or `suspended`.
    pub status: String,
    /// Basis points 0..=10000 (starts at 5000).
    pub reputation: i32,
    /// Present while the challenge is pending.
    pub challenge: Option<ChallengeOut>,
    /// `pending`, `passed` or `failed`.
    pub challenge_status: String,
    /// The node's reported time for the challenge.
    pub challenge_ms: Option<i32>,
    /// Why the challenge failed, or the device that passed it.
    pub challenge_detail: Option<String>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Queryable, Selectable, Insertable, Clone, Debug)]
#[diesel(table_name = nodes)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct NodeRow {
    pub id: Uuid,
    pub owner: Uuid,
    pub name: String,
    pub gpu_model: String,
    pub vram_mb: i32,
    pub region: String,
    pub status: String,
    pub reputation: i32,
    pub challenge_nonce: String,
    pub challenge_status: String,
    pub challenge_ms: Option<i32>,
    pub challenge_detail: Option<String>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<NodeRow> for NodeOut {
    fn from(r: NodeRow) -> Self {
        let challenge = (r.challenge_status == "pending").then(|| ChallengeOut {
            nonce: r.challenge_nonce.clone(),
            workload: executor::challenge::WORKLOAD.into(),
            items: CHALLENGE_ITEMS,
        });
        NodeOut {
            id: r.id,
            name: r.name,
            gpu_model: r.gpu_model,
            vram_mb: r.vram_mb,
            region: r.region,
            status: r.status,
            reputation: r.reputation,
            challenge,
            challenge_status: r.challenge_status,
            challenge_ms: r.challenge_ms,
            challenge_detail: r.challenge_detail,
            last_heartbeat_at: r.last_heartbeat_at,
            created_at: r.created_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct NodeList {
    pub data: Vec<NodeOut>,
    pub next_before: Option<Uuid>,
}

fn text(field: &str, v: &str, max: usize) -> ApiResult<()> {
    let n = v.chars().count();
    if n == 0 || n > max || v.trim() != v || v.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            format!(
                "{field} must be 1 to {max} characters, without control characters or surrounding spaces"
            ),
        ));
    }
    Ok(())
}

/// A random 128-bit nonce, hex.
pub fn new_nonce() -> ApiResult<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(ApiError::internal)?;
    Ok(hex::encode(b))
}

fn load_node(conn: &mut PgConnection, owner: Uuid, id: Uuid, lock: bool) -> ApiResult<NodeRow> {
    let q = nodes::table
        .find(id)
        .filter(nodes::owner.eq(owner))
        .select(NodeRow::as_select());
    let row = if lock {
        q.for_update().first(conn).optional()?
    } else {
        q.first(conn).optional()?
    };
    row.ok_or_else(|| ApiError::not_found("node"))
}

/// Register a node; it starts on probation with a pending challenge.
#[utoipa::path(post, path = "/v1/nodes", tag = "nodes", request_body = RegisterNode,
    params(("Idempotency-Key" = Option<String>, Header, description = "replays the first response")),
    responses((status = 201, body = NodeOut), (status = 400, body = crate::error::ErrorResponse),
        (status = 409, description = "`too_many_nodes`", body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn register(
    state: web::Data<AppState>,
    principal: Principal,
    idem: IdempotencyKey,
    body: web::Json<RegisterNode>,
) -> ApiResult<HttpResponse> {
    provider(&principal, true)?;
    let req = body.into_inner();
    text("name", &req.name, 100)?;
    text("gpu_model", &req.gpu_model, 100)?;
    text("region", &req.region, 64)?;
    if !(0..=16 * 1024 * 1024).contains(&req.vram_mb) {
        return Err(ApiError::invalid("vram_mb", "vram_mb must be 0..=16777216"));
    }
    let nonce = new_nonce()?;
    let max_nodes = state.settings.limits.nodes_per_provider;
    let request = idempotency::Request::new(&principal, idem, "POST /v1/nodes", &req)?;
    let outcome = crate::db::run(&state.db, move |c| {
        idempotency::run(c, request, |c| {
            let n: i64 = nodes::table
                .filter(nodes::owner.eq(principal.user_id))
                .count()
                .get_result(c)?;
            if n >= max_nodes {
                return Err(ApiError::conflict(
                    "too_many_nodes",
                    format!("a provider may register at most {max_nodes} nodes"),
                ));
            }
            let row = NodeRow {
                id: Uuid::now_v7(),
                owner: principal.user_id,
                name: req.name,
                gpu_model: req.gpu_model,
                vram_mb: req.vram_mb,
                region: req.region,
                status: "probation".into(),
                reputation: 5000,
                challenge_nonce: nonce,
                challenge_status: "pending".into(),
                challenge_ms: None,
                challenge_detail: None,
                last_heartbeat_at: None,
                created_at: Utc::now(),
            };
            let row: NodeRow = diesel::insert_into(nodes::table)
                .values(&row)
                .returning(NodeRow::as_returning())
                .get_result(c)?;
            tracing::info!(node = %row.id, user = %principal.user_id, gpu = %row.gpu_model, "node registered");
            Ok((StatusCode::CREATED, NodeOut::from(row)))
        })
    })
    .await?;
    Ok(outcome.into_response())
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChallengeAnswer {
    /// The nonce of the node's challenge.
    pub nonce: String,
    /// One embedding per challenge input, in order.
    pub embeddings: Vec<Vec<f32>>,
    /// How long the node took, as it measured it.
    pub elapsed_ms: u64,
    /// `cpu` or `cuda:<id>` (and the GPU's name, if known).
    pub device: String,
}

/// Answer the node's challenge (once).
#[utoipa::path(post, path = "/v1/nodes/{id}/challenge", tag = "nodes", request_body = ChallengeAnswer,
    responses((status = 200, description = "the node, `challenge_status` passed or failed", body = NodeOut),
        (status = 400, description = "wrong nonce", body = crate::error::ErrorResponse),
        (status = 409, description = "`challenge_already_answered`", body = crate::error::ErrorResponse),
        (status = 503, description = "`challenge_unavailable`: the reference model could not run", body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn answer_challenge(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
    body: web::Json<ChallengeAnswer>,
) -> ApiResult<HttpResponse> {
    provider(&principal, true)?;
    let id = id.into_inner();
    let answer = body.into_inner();
    if answer.device.is_empty() || answer.device.len() > 200 {
        return Err(ApiError::invalid("device", "device must be 1 to 200 bytes"));
    }
    if answer.embeddings.len() > executor::challenge::MAX_ITEMS {
        return Err(ApiError::invalid("embeddings", "too many embeddings"));
    }
    let owner = principal.user_id;
    let node = crate::db::run(&state.db, move |c| load_node(c, owner, id, false)).await?;
    if node.challenge_status != "pending" {
        return Err(ApiError::conflict(
            "challenge_already_answered",
            format!(
                "the challenge was already answered ({})",
                node.challenge_status
            ),
        ));
    }
    if answer.nonce != node.challenge_nonce {
        return Err(ApiError::invalid(
            "nonce",
            "nonce does not match this node's challenge",
        ));
    }
    let nonce = node.challenge_nonce.clone();
    let reference = actix_web::rt::task::spawn_blocking(move || {
        challenge_embeddings(&nonce, CHALLENGE_ITEMS as usize)
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| {
        tracing::error!(error = %e, "challenge reference failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "challenge_unavailable",
            "the market could not compute the challenge reference; retry later",
        )
    })?;
    let verdict = executor::challenge::verify(&reference, &answer.embeddings);
    let (status, detail) = match &verdict {
        Ok(()) => ("passed", format!("passed on {}", answer.device)),
        Err(why) => ("failed", why.clone()),
    };
    let elapsed = i32::try_from(answer.elapsed_ms).unwrap_or(i32::MAX);
    let row = crate::db::run(&state.db, move |c| {
        let row: Option<NodeRow> = diesel::update(
            nodes::table
                .find(id)
                .filter(nodes::owner.eq(owner))
                .filter(nodes::challenge_status.eq("pending")),
        )
        .set((
            nodes::challenge_status.eq(status),
            nodes::challenge_ms.eq(elapsed),
            nodes::challenge_detail.eq(detail),
        ))
        .returning(NodeRow::as_returning())
        .get_result(c)
        .optional()?;
        row.ok_or_else(|| {
            ApiError::conflict(
                "challenge_already_answered",
                "the challenge was already answered",
            )
        })
    })
    .await?;
    tracing::info!(node = %row.id, user = %owner, result = status, elapsed_ms = elapsed, "node challenge answered");
    Ok(HttpResponse::Ok().json(NodeOut::from(row)))
}

/// The caller's nodes, newest first.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", params(Page),
    responses((status = 200, body = NodeList)), security(("api_key" = []), ("session" = [])))]
pub async fn list_nodes(
    state: web::Data<AppState>,
    principal: Principal,
    page: web::Query<Page>,
) -> ApiResult<HttpResponse> {
    provider(&principal, false)?;
    let limit = page.limit()?;
    let before = page.before;
    let owner = principal.user_id;
    let rows = crate::db::run(&state.db, move |c| {
        let mut q = nodes::table
            .filter(nodes::owner.eq(owner))
            .select(NodeRow::as_select())
            .order(nodes::id.desc())
            .limit(limit + 1)
            .into_boxed();
        if let Some(b) = before {
            q = q.filter(nodes::id.lt(b));
        }
        Ok(q.load(c)?)
    })
    .await?;
    let (rows, next_before) = paginate(rows, limit, |r: &NodeRow| r.id);
    Ok(HttpResponse::Ok().json(NodeList {
        data: rows.into_iter().map(NodeOut::from).collect(),
        next_before,
    }))
}

/// One of the caller's nodes (challenge result, reputation, last heartbeat).
#[utoipa::path(get, path = "/v1/nodes/{id}", tag = "nodes",
    responses((status = 200, body = NodeOut), (status = 404, body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn get_node(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    provider(&principal, false)?;
    let (owner, id) = (principal.user_id, id.into_inner());
    let row = crate::db::run(&state.db, move |c| load_node(c, owner, id, false)).await?;
    Ok(HttpResponse::Ok().json(NodeOut::from(row)))
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
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
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
            status: r.status,
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

fn probation_check(
    conn: &mut PgConnection,
    node: &NodeRow,
    except: Option<Uuid>,
    qty: i64,
    cap: u64,
) -> ApiResult<()> {
    if node.status != "probation" {
        return Ok(());
    }
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
    body: web::Json<CreateAsk>,
) -> ApiResult<HttpResponse> {
    provider(&principal, true)?;
    let req = body.into_inner();
    let market = state
        .markets
        .get(&req.market)
        .ok_or_else(|| ApiError::invalid("market", format!("unknown market {:?}", req.market)))?
        .clone();
    check_price(&market, req.price)?;
    check_qty(&market, req.qty)?;
    let cap = state.settings.limits.probation_ask_qty;
    let request = idempotency::Request::new(&principal, idem, "POST /v1/asks", &req)?;
    let outcome = crate::db::run(&state.db, move |c| {
        idempotency::run(c, request, |c| {
            // The node row lock serialises asks of one node (the probation cap sum).
            let node = load_node(c, principal.user_id, req.node_id, true)
                .map_err(|e| e.with_field("node_id"))?;
            if node.challenge_status != "passed" {
                return Err(ApiError::conflict(
                    "challenge_not_passed",
                    format!("the node's challenge is {}; pass it before posting asks", node.challenge_status),
                )
                .with_field("node_id"));
            }
            if node.status == "suspended" {
                return Err(ApiError::conflict("node_suspended", "the node is suspended").with_field("node_id"));
            }
            probation_check(c, &node, None, req.qty, cap)?;
            let engine_order_id = orders::next_engine_order_id(c)?;
            let id = Uuid::now_v7();
            orders::insert(
                c,
                &MarketOrder {
                    engine_order_id,
                    market: req.market.clone(),
                    side: Side::Ask,
                    order_id: id,
                    account_id: principal.account_id,
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
                status: "open".into(),
                created_at: now,
                updated_at: now,
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
                    owner: None,
                    side: Side::Ask,
                    price: Some(req.price as u64),
                    qty: req.qty as u64,
                    tif: TimeInForce::Gtc,
                    post_only: false,
                    budget: None,
                    stp: None,
                }),
            )?;
            tracing::info!(ask = %row.id, node = %row.node_id, user = %principal.user_id, market = %row.market, price = row.price, qty = row.qty, engine_order_id, "ask placed");
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
    provider(&principal, false)?;
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
    provider(&principal, true)?;
    let req = body.into_inner();
    if req.price.is_none() && req.qty.is_none() {
        return Err(ApiError::invalid("price", "send price, qty or both"));
    }
    let id = id.into_inner();
    let cap = state.settings.limits.probation_ask_qty;
    let markets = state.markets.clone();
    let row = crate::db::run(&state.db, move |c| {
        c.transaction(|c| {
            let ask = load_ask(c, principal.user_id, id, false)?;
            // Lock order: node, then ask (as create does).
            let node = load_node(c, principal.user_id, ask.node_id, true)?;
            let ask = load_ask(c, principal.user_id, id, true)?;
            if ask.status != "open" {
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
                probation_check(c, &node, Some(ask.id), q, cap)?;
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
    provider(&principal, true)?;
    let id = id.into_inner();
    let row = crate::db::run(&state.db, move |c| {
        c.transaction(|c| {
            let ask = load_ask(c, principal.user_id, id, true)?;
            match ask.status.as_str() {
                "cancel_requested" => return Ok(ask),
                "open" => {}
                s => {
                    return Err(ApiError::conflict(
                        "ask_not_open",
                        format!("the ask is {s}"),
                    ));
                }
            }
            let row: AskRow = diesel::update(asks::table.find(id))
                .set((
                    asks::status.eq("cancel_requested"),
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

/// The caller's asks, newest first.
#[utoipa::path(get, path = "/v1/asks", tag = "asks", params(Page),
    responses((status = 200, body = AskList)), security(("api_key" = []), ("session" = [])))]
pub async fn list_asks(
    state: web::Data<AppState>,
    principal: Principal,
    page: web::Query<Page>,
) -> ApiResult<HttpResponse> {
    provider(&principal, false)?;
    let limit = page.limit()?;
    let before = page.before;
    let owner = principal.user_id;
    let rows = crate::db::run(&state.db, move |c| {
        let mut q = asks::table
            .filter(asks::owner.eq(owner))
            .select(AskRow::as_select())
            .order(asks::id.desc())
            .limit(limit + 1)
            .into_boxed();
        if let Some(b) = before {
            q = q.filter(asks::id.lt(b));
        }
        Ok(q.load(c)?)
    })
    .await?;
    let (rows, next_before) = paginate(rows, limit, |r: &AskRow| r.id);
    Ok(HttpResponse::Ok().json(AskList {
        data: rows.into_iter().map(AskOut::from).collect(),
        next_before,
    }))
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
    provider(&principal, false)?;
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
    /// The provider's ledger account: posted balance and what is available to withdraw.
    pub balance: i64,
    pub available: i64,
}

/// Earnings of the caller's nodes and their ledger balance.
#[utoipa::path(get, path = "/v1/earnings", tag = "nodes",
    responses((status = 200, body = Earnings)), security(("api_key" = []), ("session" = [])))]
pub async fn earnings(state: web::Data<AppState>, principal: Principal) -> ApiResult<HttpResponse> {
    provider(&principal, false)?;
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
        let st = gridbook_ledger::store::balance_statement(c, account)?;
        Ok(Earnings {
            completed_assignments: n,
            units,
            earned,
            protocol_fees: fees,
            balance: i64::try_from(st.posted_balance).unwrap_or(i64::MAX),
            available: i64::try_from(st.available_balance).unwrap_or(i64::MAX),
        })
    })
    .await?;
    Ok(HttpResponse::Ok().json(out))
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
        register,
        answer_challenge,
        list_nodes,
        get_node,
        create_ask,
        get_ask,
        amend_ask,
        cancel_ask,
        list_asks,
        list_assignments,
        earnings
    ),
    tags(
        (name = "nodes", description = "provider nodes, the hardware challenge, assignments, earnings"),
        (name = "asks", description = "provider asks on a market")
    )
)]
pub struct ApiDoc;
