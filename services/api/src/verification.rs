//! Verification outcomes (issue 12): what the settlement worker found when it checked an
//! assignment's result, as it recorded it in `assignment_verifications` in the transaction that
//! settled the assignment (`gridbook_settlement::redo`). A failed outcome is the dispute record:
//! which check failed, the sample seed, the sampled items, per item both sides' hashes and the
//! comparison figure, both manifests, what became of the units (re-offered on the book as a
//! re-bid of the job, or refunded) and of the node (asks cancelled, suspended).
//!
//! Who may read what: the studio that owns the job (all of its assignments) and the provider
//! that owns the node (its assignments). Anyone else gets 404, as if the assignment did not
//! exist; anonymous callers 401.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::{Principal, Scope};
use crate::error::{ApiError, ApiResult};
use crate::schema::{assignment_verifications as av, jobs, nodes};
use crate::state::AppState;

/// Routes of this module (mounted by `app`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/assignments/{id}/verification").route(web::get().to(assignment_verification)),
    )
    .service(web::resource("/jobs/{id}/verifications").route(web::get().to(job_verifications)))
    .service(web::resource("/verification-tasks").route(web::get().to(verification_tasks)));
}

/// One sampled item, both sides.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItemFigureOut {
    pub custom_id: String,
    /// The node's item hash (sha256 of the embedding bytes or the PNG), hex.
    pub node_sha256: String,
    /// The market's reference run's item hash.
    pub reference_sha256: Option<String>,
    /// Embeddings: cosine between the node's vector and the reference's (pass ≥ 0.999).
    pub cosine: Option<f64>,
    /// Images: mean absolute difference per RGBA channel, out of 255.
    pub mean_abs_diff: Option<f64>,
    pub ok: bool,
    /// Why this item disagrees.
    pub error: Option<String>,
}

/// The verification outcome of one assignment.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerificationOut {
    pub assignment_id: Uuid,
    pub job_id: Uuid,
    pub node_id: Uuid,
    pub market: String,
    /// `passed` or `failed`.
    pub outcome: String,
    /// Failed: `node_failed`, `wrong_output`, `output_format`, `item_hash`, `missing_items`,
    /// `merkle_root`, `sample_mismatch` or `overdue`.
    pub failed_check: Option<String>,
    pub detail: String,
    /// HMAC-SHA256 of the node's commitment under the market's secret (hex): the sample was
    /// drawn from it after the node committed.
    pub sample_seed: Option<String>,
    /// The custom_ids re-run (by another node or the market's reference: `rerun_by`).
    pub sampled_items: Vec<String>,
    pub items: Vec<ItemFigureOut>,
    /// The node's commitment: its output object and Merkle root.
    pub output_sha256: Option<String>,
    pub merkle_root: Option<String>,
    /// How the node says it produced the outputs (model hash, runtime, execution provider,
    /// device, batch layout), and how the reference did.
    pub node_manifest: Option<serde_json::Value>,
    pub reference_manifest: Option<serde_json::Value>,
    pub verified_items: i32,
    /// `paid`, `reoffered` (back on the book as a re-bid of the job, same reservation) or
    /// `refunded`.
    pub remedy: String,
    /// The re-bid's engine order id when re-offered.
    pub reoffer_engine_order_id: Option<i64>,
    /// `none`, `asks_cancelled` or `suspended`.
    pub node_action: String,
    /// Who re-ran the sample: `node` (another provider's node, of another owner and identity
    /// cluster, whose answer agreed), `market` (the market's own runtime: no eligible node, a
    /// private model, or the nodes disagreed and the market decided — `rerun_note` says which)
    /// or `none` (a check before the sample failed).
    pub rerun_by: String,
    /// The verifying node and its verification task, when one was sent the sample.
    pub verifier_node_id: Option<Uuid>,
    pub verification_task_id: Option<Uuid>,
    /// Why the market re-ran the sample itself.
    pub rerun_note: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct VerificationList {
    pub data: Vec<VerificationOut>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = av)]
#[diesel(check_for_backend(diesel::pg::Pg))]
struct Row {
    assignment_id: Uuid,
    job_id: Uuid,
    node_id: Uuid,
    market: String,
    outcome: String,
    failed_check: Option<String>,
    detail: String,
    sample_seed: Option<String>,
    sampled_items: serde_json::Value,
    item_figures: serde_json::Value,
    output_sha256: Option<String>,
    merkle_root: Option<String>,
    node_manifest: Option<serde_json::Value>,
    reference_manifest: Option<serde_json::Value>,
    verified_items: i32,
    remedy: String,
    reoffer_engine_order_id: Option<i64>,
    node_action: String,
    rerun_by: String,
    verifier_node_id: Option<Uuid>,
    verification_task_id: Option<Uuid>,
    rerun_note: Option<String>,
    created_at: DateTime<Utc>,
}

impl From<Row> for VerificationOut {
    fn from(r: Row) -> Self {
        VerificationOut {
            assignment_id: r.assignment_id,
            job_id: r.job_id,
            node_id: r.node_id,
            market: r.market,
            outcome: r.outcome,
            failed_check: r.failed_check,
            detail: r.detail,
            sample_seed: r.sample_seed,
            sampled_items: serde_json::from_value(r.sampled_items).unwrap_or_default(),
            items: serde_json::from_value(r.item_figures).unwrap_or_default(),
            output_sha256: r.output_sha256,
            merkle_root: r.merkle_root,
            node_manifest: r.node_manifest,
            reference_manifest: r.reference_manifest,
            verified_items: r.verified_items,
            remedy: r.remedy,
            reoffer_engine_order_id: r.reoffer_engine_order_id,
            node_action: r.node_action,
            rerun_by: r.rerun_by,
            verifier_node_id: r.verifier_node_id,
            verification_task_id: r.verification_task_id,
            rerun_note: r.rerun_note,
            created_at: r.created_at,
        }
    }
}

/// Reading outcomes needs `read` (or, for a provider's key, `nodes`).
fn require_read(principal: &Principal) -> ApiResult<()> {
    principal
        .require_scope(Scope::Read)
        .or_else(|_| principal.require_scope(Scope::Nodes))
}

/// Most outcomes one job lists (a job has at most a few assignments per unit it was offered).
pub const MAX_VERIFICATIONS: i64 = 1_000;

/// The verification outcome of one assignment: for the studio that owns its job or the provider
/// that owns its node (anyone else: 404). 404 `not_ready` while it is not verified yet.
#[utoipa::path(get, path = "/v1/assignments/{id}/verification", tag = "verification",
    params(("id" = Uuid, Path, description = "assignment id")),
    responses((status = 200, body = VerificationOut),
        (status = 404, description = "`not_found` (no such assignment of yours), or `not_ready`", body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn assignment_verification(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    require_read(&principal)?;
    let (user, id) = (principal.user_id, id.into_inner());
    let out = crate::db::run(&state.db, move |c| {
        use crate::schema::job_assignments as ja;
        let (job_owner, node_owner): (Uuid, Uuid) = ja::table
            .inner_join(jobs::table)
            .inner_join(nodes::table)
            .filter(ja::id.eq(id))
            .select((jobs::owner, nodes::owner))
            .first(c)
            .optional()?
            .ok_or_else(|| ApiError::not_found("assignment"))?;
        if user != job_owner && user != node_owner {
            return Err(ApiError::not_found("assignment"));
        }
        let row: Option<Row> = av::table.find(id).select(Row::as_select()).first(c).optional()?;
        row.map(VerificationOut::from).ok_or_else(|| {
            ApiError::new(
                actix_web::http::StatusCode::NOT_FOUND,
                "not_ready",
                "the assignment has not been verified yet",
            )
        })
    })
    .await?;
    Ok(HttpResponse::Ok().json(out))
}

/// The verification outcomes of one of the caller's jobs, oldest first (every assignment that
/// was settled; a re-offered unit shows its failed assignment and the one that redid it).
#[utoipa::path(get, path = "/v1/jobs/{id}/verifications", tag = "verification",
    params(("id" = Uuid, Path, description = "job id")),
    responses((status = 200, body = VerificationList), (status = 404, body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn job_verifications(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    require_read(&principal)?;
    let (user, id) = (principal.user_id, id.into_inner());
    let data = crate::db::run(&state.db, move |c| {
        let owned: Option<Uuid> = jobs::table
            .find(id)
            .filter(jobs::owner.eq(user))
            .select(jobs::id)
            .first(c)
            .optional()?;
        owned.ok_or_else(|| ApiError::not_found("job"))?;
        let rows: Vec<Row> = av::table
            .filter(av::job_id.eq(id))
            .order((av::created_at.asc(), av::assignment_id.asc()))
            .limit(MAX_VERIFICATIONS)
            .select(Row::as_select())
            .load(c)?;
        Ok(rows.into_iter().map(VerificationOut::from).collect::<Vec<_>>())
    })
    .await?;
    Ok(HttpResponse::Ok().json(VerificationList { data }))
}

/// A verification task: a sample of another provider's assignment that one of the caller's
/// nodes was sent to re-run (`gridbook_settlement::crosscheck`).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerificationTaskOut {
    pub id: Uuid,
    /// The node that re-ran it (one of the caller's).
    pub node_id: Uuid,
    pub market: String,
    /// How many sampled items it was given.
    pub items: u64,
    /// `assigned`, `completed`, `failed` or `expired`.
    pub status: String,
    /// `agreed`, `disagreed`, `failed` or `expired` once decided.
    pub outcome: Option<String>,
    /// Whether the market's own runtime had to decide (a disagreement, or no usable answer).
    pub market_rerun: bool,
    /// Whether its answer was right (`false`: proven wrong, the node was suspended).
    pub verifier_correct: Option<bool>,
    /// What a right answer earns (minor units, from the protocol fee), and what was paid.
    pub pay: i64,
    pub paid: i64,
    pub detail: Option<String>,
    pub deadline: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// Most tasks one listing returns (newest first).
pub const MAX_TASKS: i64 = 200;

/// The verification tasks of the caller's nodes (providers only), newest first (at most 200). A task never shows
/// the first node's identity or output.
#[utoipa::path(get, path = "/v1/verification-tasks", tag = "verification",
    responses((status = 200, body = Vec<VerificationTaskOut>), (status = 401, body = crate::error::ErrorResponse),
        (status = 403, description = "not a provider", body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn verification_tasks(state: web::Data<AppState>, principal: Principal) -> ApiResult<HttpResponse> {
    principal.require_provider(false)?;
    let user = principal.user_id;
    let data = crate::db::run(&state.db, move |c| {
        use crate::schema::verification_tasks as vt;
        type Row = (Uuid, Uuid, String, Vec<Option<i64>>, String, Option<String>, bool, Option<bool>, i64, i64, Option<String>, DateTime<Utc>, DateTime<Utc>);
        let rows: Vec<Row> = vt::table
            .inner_join(nodes::table)
            .filter(nodes::owner.eq(user))
            .order((vt::created_at.desc(), vt::id.asc()))
            .limit(MAX_TASKS)
            .select((vt::id, vt::node_id, vt::market, vt::items, vt::status, vt::outcome, vt::market_rerun,
                vt::verifier_correct, vt::pay, vt::paid, vt::detail, vt::deadline, vt::created_at))
            .load(c)?;
        Ok(rows
            .into_iter()
            .map(|r| VerificationTaskOut {
                id: r.0,
                node_id: r.1,
                market: r.2,
                items: r.3.len() as u64,
                status: r.4,
                outcome: r.5,
                market_rerun: r.6,
                verifier_correct: r.7,
                pay: r.8,
                paid: r.9,
                detail: r.10,
                deadline: r.11,
                created_at: r.12,
            })
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(HttpResponse::Ok().json(data))
}

/// The OpenAPI paths of this module (merged by `openapi::document`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(assignment_verification, job_verifications, verification_tasks),
    tags((name = "verification", description = "verification outcomes and dispute records of assignments"))
)]
pub struct ApiDoc;
