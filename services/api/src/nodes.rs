//! Providers: nodes, the hardware challenge, asks, assignments and earnings.
//!
//! **Nodes.** `POST /v1/nodes` registers a node on probation with a challenge whose size and time
//! bound come from the device class of what it declares (`gpu_model`, `vram_mb`;
//! `executor::challenge::CLASSES`): embed `items` texts generated from a random 128-bit nonce
//! (`executor::challenge::inputs`) with the market's MiniLM model. Commit, then sample:
//!
//! 1. `POST /v1/nodes/{id}/challenge/commitment` — one leaf per item (sha256 of the embedding's
//!    little-endian f32 bytes, `executor::challenge::leaves`). The market takes the time from
//!    issuing the nonce (the registration's transaction) to this request's arrival as the
//!    challenge's time (`challenge_ms`, its own clock: the node's figure is only logged), then
//!    draws `sample` distinct items with the OS CSPRNG (`executor::challenge::sample_indices`),
//!    stores them with their committed leaves and answers them. Once per node.
//! 2. `POST /v1/nodes/{id}/challenge` — the sampled embeddings, in sample order. Each must hash
//!    to its committed leaf (exact); the API re-runs only the sampled items on its CPU reference
//!    (the executor's `registry::Reference`: ONNX Runtime from `ORT_DYLIB_PATH`, models from
//!    `GRIDBOOK_MODELS_DIR`, loaded once on first use, behind a mutex, on the blocking pool) and
//!    compares per item (cosine ≥ 0.999). Wrong → `failed`, the node may not post asks (register
//!    a new node to try again). Right → `passed`, with the timing verdict `challenge_timing`:
//!    `fits` (the commitment came within the class's bound) or `too_slow`.
//!
//! Passing does not end probation: a node stays `probation` (with its ask caps) until it has a
//! record of verified assignments, which the settlement worker's verifier tracks — and a node
//! whose timing is not `fits` never leaves it (`jobs::set_reliability` in the worker). The
//! challenge leaves `reputation` unchanged.

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
use gridbook_db::status::{ChallengeStatus, ChallengeTiming, NodeStatus};
use crate::state::AppState;

/// Largest commitment body: `MAX_ITEMS` leaves of 64 hex digits in JSON (66 bytes each with
/// quotes, 1 with the comma) and room for the nonce and the device (about 280 KB).
pub const COMMITMENT_BODY_BYTES: usize = executor::challenge::MAX_ITEMS * 67 + 4 * 1024;
/// Largest challenge answer body: `MAX_SAMPLE` embeddings of 384 floats as JSON text (at most
/// about 16 bytes a float: about 400 KB), with room.
pub const CHALLENGE_BODY_BYTES: usize = 512 * 1024;
/// Most dimensions a revealed embedding may have (MiniLM has 384).
pub const MAX_EMBEDDING_DIMS: usize = 4_096;
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
        web::resource("/nodes/{id}/challenge/commitment")
            .app_data(crate::app::json_config(COMMITMENT_BODY_BYTES))
            .route(web::post().to(commit_challenge)),
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
    let items = items.min(executor::challenge::MAX_ITEMS);
    with_reference(|e| executor::challenge::run(e, nonce, items))
}

/// The reference embeddings of only items `indices` of the challenge of `nonce`, in that order
/// (what the market re-runs of a sample). Blocking, as [`challenge_embeddings`].
pub fn challenge_embeddings_at(nonce: &str, indices: &[usize]) -> Result<Vec<Vec<f32>>, String> {
    with_reference(|e| executor::challenge::run_at(e, nonce, indices))
}

type Timed = executor::error::Result<(Vec<Vec<f32>>, std::time::Duration)>;

fn with_reference(f: impl FnOnce(&executor::embed::Embedder) -> Timed) -> Result<Vec<Vec<f32>>, String> {
    static REFERENCE: Mutex<executor::registry::Reference> =
        Mutex::new(executor::registry::Reference::new());
    let mut reference = REFERENCE
        .lock()
        .map_err(|_| "reference lock poisoned".to_owned())?;
    let w = reference
        .workload(executor::challenge::WORKLOAD)
        .map_err(|e| e.to_string())?;
    let e = w
        .embedder()
        .ok_or("the challenge's workload has no embedder")?;
    let (out, _elapsed) = f(e).map_err(|e| e.to_string())?;
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

/// The challenge a node must answer: commit to all `items`, then reveal the `sample` the market
/// draws.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChallengeOut {
    /// 128-bit random, hex.
    pub nonce: String,
    /// `embed`: embed `executor::challenge::inputs(nonce, items)` with all-MiniLM-L6-v2.
    pub workload: String,
    /// Items `N` to embed and commit to (one leaf each).
    pub items: u32,
    /// Items `k` the market will draw from the commitment and check.
    pub sample: u32,
    /// The device class of the node's declared hardware (`cpu`, `gpu`).
    pub class: String,
    /// Most milliseconds, by the market's clock from this registration to the commitment's
    /// arrival, for the timing to fit.
    pub bound_ms: u32,
    /// Whether the commitment was received (the sample is then drawn: reveal it).
    pub committed: bool,
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
    /// The challenge's time by the market's clock: from issuing the nonce (registration) to
    /// receiving the commitment. Set when the commitment arrives.
    pub challenge_ms: Option<i32>,
    /// The device class of the challenge (`cpu`, `gpu`: `executor::challenge::CLASSES`).
    pub challenge_class: String,
    /// The class's time bound for `challenge_ms`, as issued.
    pub challenge_bound_ms: i32,
    /// `fits` or `too_slow` once the challenge passed (null before, after a failure, or for a
    /// challenge that was never timed). A node that is not `fits` never leaves probation.
    pub challenge_timing: Option<String>,
    /// Why the challenge failed, or the device that passed it and its timing.
    pub challenge_detail: Option<String>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    /// Uptime over the last 24 hours, basis points: the share of its minutes in which the node's
    /// authenticated heartbeat was heard (the availability factor of its epoch rewards, with
    /// the reputation as quality; `GET /v1/protocol/epochs/{n}` shows each epoch's inputs).
    pub uptime_24h_bps: u32,
    pub created_at: DateTime<Utc>,
}

/// Minutes in the uptime window of [`NodeOut::uptime_24h_bps`].
const UPTIME_WINDOW_MINUTES: i64 = 24 * 60;

/// The 24-hour uptime of `ids`, basis points (one query).
fn uptime_24h(c: &mut PgConnection, ids: &[Uuid]) -> ApiResult<std::collections::HashMap<Uuid, u32>> {
    use crate::schema::node_uptime as nu;
    let since = Utc::now() - chrono::Duration::minutes(UPTIME_WINDOW_MINUTES);
    let rows: Vec<(Uuid, i64)> = nu::table
        .filter(nu::node_id.eq_any(ids))
        .filter(nu::minute.ge(since))
        .group_by(nu::node_id)
        .select((nu::node_id, diesel::dsl::count_star()))
        .load(c)?;
    Ok(rows
        .into_iter()
        .map(|(id, n)| (id, (n.min(UPTIME_WINDOW_MINUTES) * 10_000 / UPTIME_WINDOW_MINUTES) as u32))
        .collect())
}

/// The caller's view of `rows`, with their uptime.
fn with_uptime(c: &mut PgConnection, rows: Vec<NodeRow>) -> ApiResult<Vec<NodeOut>> {
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let up = uptime_24h(c, &ids)?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let u = up.get(&r.id).copied().unwrap_or(0);
            NodeOut { uptime_24h_bps: u, ..NodeOut::from(r) }
        })
        .collect())
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
    pub challenge_class: String,
    pub challenge_items: i32,
    pub challenge_sample_size: i32,
    pub challenge_bound_ms: i32,
    pub challenge_issued_at: DateTime<Utc>,
    pub challenge_committed_at: Option<DateTime<Utc>>,
    /// `[{"index", "leaf"}]` ([`SampledItem`]).
    pub challenge_sample: Option<serde_json::Value>,
    pub challenge_timing: Option<ChallengeTiming>,
}

/// One drawn item of a commitment as `nodes.challenge_sample` stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SampledItem {
    pub index: u32,
    /// The leaf the node committed to for it (64 lowercase hex).
    pub leaf: String,
}

impl From<NodeRow> for NodeOut {
    fn from(r: NodeRow) -> Self {
        let challenge = (r.challenge_status == ChallengeStatus::Pending).then(|| ChallengeOut {
            nonce: r.challenge_nonce.clone(),
            workload: executor::challenge::WORKLOAD.as_str().into(),
            items: r.challenge_items.max(0) as u32,
            sample: r.challenge_sample_size.max(0) as u32,
            class: r.challenge_class.clone(),
            bound_ms: r.challenge_bound_ms.max(0) as u32,
            committed: r.challenge_committed_at.is_some(),
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
            challenge_class: r.challenge_class,
            challenge_bound_ms: r.challenge_bound_ms,
            challenge_timing: r.challenge_timing.map(|t| t.as_str().to_owned()),
            challenge_detail: r.challenge_detail,
            last_heartbeat_at: r.last_heartbeat_at,
            uptime_24h_bps: 0,
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
    let class = executor::challenge::DeviceClass::of(&req.gpu_model, i64::from(req.vram_mb));
    let spec = class.spec();
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
            // The market's clock on the challenge starts here: the nonce exists from this
            // transaction on (a replay of the registration returns it, the clock running).
            let now = Utc::now();
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
                created_at: now,
                challenge_class: class.as_str().to_owned(),
                challenge_items: i32::try_from(spec.items).unwrap_or(i32::MAX),
                challenge_sample_size: i32::try_from(spec.sample).unwrap_or(i32::MAX),
                challenge_bound_ms: i32::try_from(spec.bound_ms).unwrap_or(i32::MAX),
                challenge_issued_at: now,
                challenge_committed_at: None,
                challenge_sample: None,
                challenge_timing: None,
            };
            let row: NodeRow = diesel::insert_into(nodes::table)
                .values(&row)
                .returning(NodeRow::as_returning())
                .get_result(c)?;
            seen.record(c, principal.user_id, Some(row.id))?;
            tracing::info!(node = %row.id, user = %principal.user_id, gpu = %row.gpu_model, class = %row.challenge_class,
                items = row.challenge_items, bound_ms = row.challenge_bound_ms, network = ?seen.network, "node registered");
            Ok((StatusCode::CREATED, NodeOut::from(row)))
        })
    })
    .await?;
    Ok(outcome.into_response())
}

/// `device` as a node reports it: 1 to 200 bytes, no control characters.
fn device_text(device: &str) -> ApiResult<()> {
    if device.is_empty() || device.len() > 200 || device.chars().any(char::is_control) {
        return Err(ApiError::invalid("device", "device must be 1 to 200 bytes, without control characters"));
    }
    Ok(())
}

/// The leaves of a commitment, each 64 lowercase hex digits (the error names `leaves[i]`).
fn parse_leaves(leaves: &[String]) -> ApiResult<()> {
    if leaves.is_empty() || leaves.len() > executor::challenge::MAX_ITEMS {
        return Err(ApiError::invalid(
            "leaves",
            format!("leaves must hold 1 to {} hashes", executor::challenge::MAX_ITEMS),
        ));
    }
    for (i, l) in leaves.iter().enumerate() {
        if l.len() != 64 || !l.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ApiError::invalid(
                &format!("leaves[{i}]"),
                format!("leaves[{i}] must be a sha256 in 64 lowercase hex digits"),
            ));
        }
    }
    Ok(())
}

/// The checks every challenge step makes on the node's row: still pending, the right nonce.
fn pending_challenge(node: &NodeRow, nonce: &str) -> ApiResult<()> {
    if node.challenge_status != ChallengeStatus::Pending {
        return Err(ApiError::conflict(
            "challenge_already_answered",
            format!("the challenge was already answered ({})", node.challenge_status),
        ));
    }
    if nonce != node.challenge_nonce {
        return Err(ApiError::invalid("nonce", "nonce does not match this node's challenge"));
    }
    Ok(())
}

/// `POST /v1/nodes/{id}/challenge/commitment` body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChallengeCommitment {
    /// The nonce of the node's challenge.
    pub nonce: String,
    /// One leaf per challenge item, in item order, exactly `items` of them: sha256 of the item's
    /// embedding as little-endian f32 bytes (`executor::challenge::leaf`), 64 lowercase hex.
    pub leaves: Vec<String>,
    /// `cpu` or `cuda:<id>` (and the GPU's name, if known).
    pub device: String,
}

/// The sample the market drew from a commitment.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChallengeSample {
    /// The items (0-based) whose embeddings to reveal, in this order.
    pub sample: Vec<u32>,
}

/// Commit to the challenge's answer (once); the market times it and draws the sample.
#[utoipa::path(post, path = "/v1/nodes/{id}/challenge/commitment", tag = "nodes", request_body = ChallengeCommitment,
    responses((status = 200, description = "the sample to reveal", body = ChallengeSample),
        (status = 400, description = "wrong nonce, a leaf that is no sha256 (`leaves[i]`), or not one leaf per item (`leaves`)", body = crate::error::ErrorResponse),
        (status = 404, body = crate::error::ErrorResponse),
        (status = 409, description = "`challenge_already_committed` or `challenge_already_answered`", body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn commit_challenge(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
    body: web::Json<ChallengeCommitment>,
) -> ApiResult<HttpResponse> {
    // The market's clock stops when the commitment has arrived (its body read and parsed).
    let arrived = Utc::now();
    principal.require_provider(true)?;
    let id = id.into_inner();
    let commitment = body.into_inner();
    device_text(&commitment.device)?;
    parse_leaves(&commitment.leaves)?;
    let owner = principal.user_id;
    let (row, sample) = crate::db::run(&state.db, move |c| {
        c.transaction(|c| {
            let node = load_node(c, owner, id, true)?;
            pending_challenge(&node, &commitment.nonce)?;
            if node.challenge_committed_at.is_some() {
                return Err(ApiError::conflict(
                    "challenge_already_committed",
                    "the challenge's commitment was already received; reveal the sample",
                ));
            }
            let items = usize::try_from(node.challenge_items).unwrap_or(0);
            if commitment.leaves.len() != items {
                return Err(ApiError::invalid(
                    "leaves",
                    format!("expected {items} leaves (one per challenge item), got {}", commitment.leaves.len()),
                ));
            }
            let measured = (arrived - node.challenge_issued_at).num_milliseconds().max(0);
            let k = usize::try_from(node.challenge_sample_size).unwrap_or(0);
            // The OS CSPRNG; a failure of it is recorded and answered as an internal error.
            let mut rng_error = None;
            let drawn = executor::challenge::sample_indices(items, k, || {
                getrandom::u64().unwrap_or_else(|e| {
                    rng_error.get_or_insert(e);
                    0
                })
            });
            if let Some(e) = rng_error {
                return Err(ApiError::internal(format!("random sample: {e}")));
            }
            let sample: Vec<SampledItem> = drawn
                .iter()
                .map(|&i| SampledItem { index: i as u32, leaf: commitment.leaves[i].clone() })
                .collect();
            let stored = serde_json::to_value(&sample).map_err(ApiError::internal)?;
            let row: Option<NodeRow> = diesel::update(
                nodes::table
                    .find(id)
                    .filter(nodes::challenge_status.eq(ChallengeStatus::Pending))
                    .filter(nodes::challenge_committed_at.is_null()),
            )
            .set((
                nodes::challenge_committed_at.eq(Some(arrived)),
                nodes::challenge_sample.eq(Some(stored)),
                nodes::challenge_ms.eq(Some(i32::try_from(measured).unwrap_or(i32::MAX))),
                nodes::challenge_detail.eq(Some(format!("committed on {}", commitment.device))),
            ))
            .returning(NodeRow::as_returning())
            .get_result(c)
            .optional()?;
            let row = row.ok_or_else(|| {
                ApiError::conflict("challenge_already_committed", "the challenge's commitment was already received")
            })?;
            Ok((row, sample))
        })
    })
    .await?;
    tracing::info!(node = %row.id, user = %owner, class = %row.challenge_class, items = row.challenge_items,
        measured_ms = row.challenge_ms, bound_ms = row.challenge_bound_ms, sample = sample.len(), "node challenge committed");
    Ok(HttpResponse::Ok().json(ChallengeSample { sample: sample.iter().map(|s| s.index).collect() }))
}

/// `POST /v1/nodes/{id}/challenge` body.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChallengeAnswer {
    /// The nonce of the node's challenge.
    pub nonce: String,
    /// The embeddings of the sampled items, in the sample's order (each the vector whose leaf
    /// was committed).
    pub embeddings: Vec<Vec<f32>>,
    /// How long the node took, as it measured it (logged only: the market's own clock decides).
    pub elapsed_ms: u64,
    /// `cpu` or `cuda:<id>` (and the GPU's name, if known).
    pub device: String,
}

/// Reveal the sampled items of the committed challenge (once): the market checks them.
#[utoipa::path(post, path = "/v1/nodes/{id}/challenge", tag = "nodes", request_body = ChallengeAnswer,
    responses((status = 200, description = "the node: `challenge_status` passed (with `challenge_timing` fits or too_slow) or failed", body = NodeOut),
        (status = 400, description = "wrong nonce, or not one embedding per sampled item (`embeddings`)", body = crate::error::ErrorResponse),
        (status = 404, body = crate::error::ErrorResponse),
        (status = 409, description = "`challenge_not_committed` or `challenge_already_answered`", body = crate::error::ErrorResponse),
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
    device_text(&answer.device)?;
    if answer.embeddings.len() > executor::challenge::MAX_SAMPLE {
        return Err(ApiError::invalid(
            "embeddings",
            format!("at most {} embeddings (the sample)", executor::challenge::MAX_SAMPLE),
        ));
    }
    if let Some(i) = answer.embeddings.iter().position(|e| e.len() > MAX_EMBEDDING_DIMS) {
        return Err(ApiError::invalid(
            &format!("embeddings[{i}]"),
            format!("embeddings[{i}] has more than {MAX_EMBEDDING_DIMS} values"),
        ));
    }
    let owner = principal.user_id;
    let node = crate::db::run(&state.db, move |c| load_node(c, owner, id, false)).await?;
    pending_challenge(&node, &answer.nonce)?;
    let Some(stored) = node.challenge_sample.clone() else {
        return Err(ApiError::conflict(
            "challenge_not_committed",
            "post the commitment (POST /v1/nodes/{id}/challenge/commitment) before the sample",
        ));
    };
    let drawn: Vec<SampledItem> = serde_json::from_value(stored).map_err(ApiError::internal)?;
    if answer.embeddings.len() != drawn.len() {
        return Err(ApiError::invalid(
            "embeddings",
            format!("expected {} embeddings (the sample, in its order), got {}", drawn.len(), answer.embeddings.len()),
        ));
    }
    let mut sample = Vec::with_capacity(drawn.len());
    for d in &drawn {
        let mut leaf = [0u8; 32];
        hex::decode_to_slice(&d.leaf, &mut leaf).map_err(ApiError::internal)?;
        sample.push(executor::challenge::Sampled { index: d.index as usize, leaf });
    }
    let nonce = node.challenge_nonce.clone();
    let indices: Vec<usize> = sample.iter().map(|s| s.index).collect();
    let reference = actix_web::rt::task::spawn_blocking(move || challenge_embeddings_at(&nonce, &indices))
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
    let measured = u64::try_from(node.challenge_ms.unwrap_or(i32::MAX)).unwrap_or(0);
    let bound = u64::try_from(node.challenge_bound_ms).unwrap_or(0);
    let (status, timing, detail) = match executor::challenge::verify_sample(&sample, &reference, &answer.embeddings) {
        Ok(()) => {
            let t = executor::challenge::timing(measured, bound);
            let timing = match t {
                executor::challenge::Timing::Fits => ChallengeTiming::Fits,
                executor::challenge::Timing::TooSlow => ChallengeTiming::TooSlow,
            };
            let detail = format!(
                "passed on {}: committed {} items in {measured} ms by the market's clock, {} class bound {bound} ms: {}",
                answer.device,
                node.challenge_items,
                node.challenge_class,
                t.as_str()
            );
            (ChallengeStatus::Passed, Some(timing), detail)
        }
        Err(why) => (ChallengeStatus::Failed, None, why),
    };
    let row = crate::db::run(&state.db, move |c| {
        let row: Option<NodeRow> = diesel::update(
            nodes::table
                .find(id)
                .filter(nodes::owner.eq(owner))
                .filter(nodes::challenge_status.eq(ChallengeStatus::Pending)),
        )
        .set((
            nodes::challenge_status.eq(status),
            nodes::challenge_timing.eq(timing),
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
    tracing::info!(node = %row.id, user = %owner, result = status.as_str(), timing = ?timing.map(ChallengeTiming::as_str),
        measured_ms = measured, bound_ms = bound, node_reported_ms = answer.elapsed_ms, "node challenge answered");
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
    let (data, next_before) = crate::db::run(&state.db, move |c| {
        let (rows, next) = crate::files::owned_page!(c, nodes, NodeRow, owner, limit, before)?;
        Ok((with_uptime(c, rows)?, next))
    })
    .await?;
    Ok(HttpResponse::Ok().json(NodeList { data, next_before }))
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
    let node = crate::db::run(&state.db, move |c| {
        let row = load_node(c, owner, id, false)?;
        Ok(with_uptime(c, vec![row])?.remove(0))
    })
    .await?;
    Ok(HttpResponse::Ok().json(node))
}

/// The OpenAPI paths of this module (merged by `openapi::document`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        register,
        commit_challenge,
        answer_challenge,
        list_nodes,
        get_node
    ),
    tags(
        (name = "nodes", description = "provider nodes, the hardware challenge, assignments, earnings")
    )
)]
pub struct ApiDoc;
