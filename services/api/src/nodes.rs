//! Providers: nodes, the hardware challenge, asks, assignments and earnings.
//!
//! **Nodes.** `POST /v1/nodes` registers a node on probation with a challenge: embed
//! [`CHALLENGE_ITEMS`] texts generated from a random 128-bit nonce
//! (`executor::challenge::inputs`) with the market's MiniLM model. `POST /v1/nodes/{id}/challenge`
//! takes the answer; the API recomputes the reference itself on CPU (the executor's
//! `registry::Reference`: ONNX Runtime from `ORT_DYLIB_PATH`, models from `GRIDBOOK_MODELS_DIR`,
//! loaded once on first use, behind a mutex, on the blocking pool) and compares per item (`executor::challenge::verify`,
//! cosine ≥ 0.999). Passed → the node may post asks; failed → it may not (one answer per node;
//! register a new node to try again). Passing does not end probation: a node stays `probation`
//! (with its ask cap) until it has a record of verified assignments, which the settlement
//! worker's verifier tracks; the challenge leaves `reputation` unchanged.

use std::sync::Mutex;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::files::Page;
use crate::idempotency::{self, IdempotencyKey};
use crate::schema::nodes;
use gridbook_db::status::{ChallengeStatus, NodeStatus};
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
    .service(
        web::resource("/nodes/{id}")
            .route(web::get().to(get_node))
            .route(web::delete().to(crate::node_access::delete_node)),
    )
    .service(
        web::resource("/nodes/{id}/challenge")
            .app_data(crate::app::json_config(CHALLENGE_BODY_BYTES))
            .route(web::post().to(answer_challenge)),
    );
}

// ---------------------------------------------------------------------------------------------
// The challenge reference (executor on CPU)
// ---------------------------------------------------------------------------------------------

/// Embeds `executor::challenge::inputs(nonce, items)` with the market's reference setup (CPU,
/// the pinned MiniLM model). Blocking: call it on the blocking pool. The model is loaded on the
/// first call and kept; a failed load is retried on the next call. This is also what a test
/// (or an honest node on CPU) computes as its answer.
pub fn challenge_embeddings(nonce: &str, items: usize) -> Result<Vec<Vec<f32>>, String> {
    static REFERENCE: Mutex<executor::registry::Reference> =
        Mutex::new(executor::registry::Reference::new());
    let items = items.min(executor::challenge::MAX_ITEMS);
    let mut reference = REFERENCE
        .lock()
        .map_err(|_| "reference lock poisoned".to_owned())?;
    let w = reference
        .workload(executor::challenge::WORKLOAD)
        .map_err(|e| e.to_string())?;
    let e = w
        .embedder()
        .ok_or("the challenge's workload has no embedder")?;
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
    /// sha256 (64 lowercase hex) of the node's hardware as its agent reads it; nodes reporting
    /// one fingerprint link their accounts into one identity cluster.
    #[serde(default)]
    pub hardware_fingerprint: Option<String>,
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
    /// The reliability score, basis points 0..=10000 (starts at 5000): a moving average of the
    /// node's verified outcomes; ≥ 6000 with 10 verified assignments ends probation, < 4000
    /// returns to it, a proven cheat sets 0.
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
    pub status: NodeStatus,
    pub reputation: i32,
    pub challenge_nonce: String,
    pub challenge_status: ChallengeStatus,
    pub challenge_ms: Option<i32>,
    pub challenge_detail: Option<String>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<NodeRow> for NodeOut {
    fn from(r: NodeRow) -> Self {
        let challenge = (r.challenge_status == ChallengeStatus::Pending).then(|| ChallengeOut {
            nonce: r.challenge_nonce.clone(),
            workload: executor::challenge::WORKLOAD.as_str().into(),
            items: CHALLENGE_ITEMS,
        });
        NodeOut {
            id: r.id,
            name: r.name,
            gpu_model: r.gpu_model,
            vram_mb: r.vram_mb,
            region: r.region,
            status: r.status.as_str().into(),
            reputation: r.reputation,
            challenge,
            challenge_status: r.challenge_status.as_str().into(),
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

pub(crate) fn load_node(conn: &mut PgConnection, owner: Uuid, id: Uuid, lock: bool) -> ApiResult<NodeRow> {
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
    http: actix_web::HttpRequest,
    body: web::Json<RegisterNode>,
) -> ApiResult<HttpResponse> {
    principal.require_provider(true)?;
    let req = body.into_inner();
    if let Some(f) = &req.hardware_fingerprint
        && !gridbook_db::identity::valid_fingerprint(f)
    {
        return Err(ApiError::invalid("hardware_fingerprint", "hardware_fingerprint must be 64 lowercase hex digits"));
    }
    let mut seen = crate::identity::Seen::of(&state.settings.identity, &http);
    if state.settings.identity.link_fingerprints {
        seen.fingerprint = req.hardware_fingerprint.clone();
    }
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
            // The cap holds under concurrency: registrations of one provider serialise here.
            crate::accounts::lock_user(c, principal.user_id)?;
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
                status: NodeStatus::Probation,
                reputation: 5000,
                challenge_nonce: nonce,
                challenge_status: ChallengeStatus::Pending,
                challenge_ms: None,
                challenge_detail: None,
                last_heartbeat_at: None,
                created_at: Utc::now(),
            };
            let row: NodeRow = diesel::insert_into(nodes::table)
                .values(&row)
                .returning(NodeRow::as_returning())
                .get_result(c)?;
            seen.record(c, principal.user_id, Some(row.id))?;
            tracing::info!(node = %row.id, user = %principal.user_id, gpu = %row.gpu_model, network = ?seen.network, "node registered");
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
    principal.require_provider(true)?;
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
    if node.challenge_status != ChallengeStatus::Pending {
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
        Ok(()) => (ChallengeStatus::Passed, format!("passed on {}", answer.device)),
        Err(why) => (ChallengeStatus::Failed, why.clone()),
    };
    let elapsed = i32::try_from(answer.elapsed_ms).unwrap_or(i32::MAX);
    let row = crate::db::run(&state.db, move |c| {
        let row: Option<NodeRow> = diesel::update(
            nodes::table
                .find(id)
                .filter(nodes::owner.eq(owner))
                .filter(nodes::challenge_status.eq(ChallengeStatus::Pending)),
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
    tracing::info!(node = %row.id, user = %owner, result = status.as_str(), elapsed_ms = elapsed, "node challenge answered");
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
    principal.require_provider(false)?;
    let limit = page.limit()?;
    let before = page.before;
    let owner = principal.user_id;
    let (rows, next_before) = crate::db::run(&state.db, move |c| {
        Ok(crate::files::owned_page!(c, nodes, NodeRow, owner, limit, before)?)
    })
    .await?;
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
    principal.require_provider(false)?;
    let (owner, id) = (principal.user_id, id.into_inner());
    let row = crate::db::run(&state.db, move |c| load_node(c, owner, id, false)).await?;
    Ok(HttpResponse::Ok().json(NodeOut::from(row)))
}

/// The OpenAPI paths of this module (merged by `openapi::document`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        register,
        answer_challenge,
        list_nodes,
        get_node
    ),
    tags(
        (name = "nodes", description = "provider nodes, the hardware challenge, assignments, earnings")
    )
)]
pub struct ApiDoc;
