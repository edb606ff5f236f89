//! Private models: a studio uploads its own ONNX model for a market whose workload takes one
//! (today `EMBED-MINILM-L6`: a BERT-style encoder with the market's tokenizer and a 384-wide
//! `last_hidden_state`), and names it in its jobs (`POST /v1/jobs` `model_id`).
//!
//! - `POST /v1/models?market=M&name=N` (body: the `.onnx` file, `application/octet-stream`):
//!   the market's own runtime loads the model and embeds one sentence (a model that cannot run
//!   is refused with 400 `invalid_model` and why); it is sealed with a fresh data key
//!   (`gridbook-sealed`: XChaCha20-Poly1305, associated data = model id + sha256) and stored as
//!   object `model-<id>` in the files store; the database keeps the sha256, the nonce and the
//!   data key wrapped by the market's KEK (`models_kek_file`). The plaintext is never stored.
//! - `GET /v1/models`, `GET /v1/models/{id}`: the caller's models (404 for anyone else's).
//! - `GET /v1/models/{id}/releases`: every release of the model's key to a node (which node,
//!   which assignment, when), so a studio sees who ran its model.
//! - A job pins the model's sha256 at submission ([`for_job`]); the settlement worker puts the
//!   model in the assignment; the node fetches the sealed model and its key through the
//!   assignment's grant (`node_access`: `GET /v1/assignments/{id}/model`, `…/model-key`), and
//!   only while that assignment is open and its own.
//!
//! Not protected: a node that runs the model (and the market's verifier) holds its weights in
//! memory while it runs; a node that was given the key once can keep what it saw.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use gridbook_db::rows::ModelRow;
use gridbook_wire::catalog::WorkloadKind;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::{Principal, Role, Scope};
use crate::error::{ApiError, ApiResult};
use crate::files::{Page, owned_page};
use crate::idempotency::{self, IdempotencyKey};
use crate::schema::{model_key_releases, models};
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/models")
            // The body limit is checked by the handler (`limits.model_bytes`).
            .app_data(web::PayloadConfig::new(usize::MAX))
            .route(web::post().to(upload))
            .route(web::get().to(list)),
    )
    .service(web::resource("/models/{id}").route(web::get().to(get)))
    .service(web::resource("/models/{id}/releases").route(web::get().to(releases)));
}

/// The object holding model `id`'s ciphertext.
pub fn object_name(id: Uuid) -> String {
    format!("model-{id}")
}

/// The market's key-encryption key, or 503 when private models are off.
pub fn kek(state: &AppState) -> ApiResult<&gridbook_sealed::Kek> {
    state.models_kek.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "models_unavailable",
            "private models are not configured on this market (no models_kek_file)",
        )
    })
}

#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
pub struct UploadModelQuery {
    /// The market whose workload runs it, e.g. `EMBED-MINILM-L6`.
    pub market: String,
    /// 1 to 200 characters, to remember it by.
    pub name: String,
}

/// A stored private model (never its bytes or key).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelOut {
    pub id: Uuid,
    pub market: String,
    pub name: String,
    /// sha256 of the `.onnx` file: what every node and the verifier must load.
    pub sha256: String,
    pub bytes: i64,
    /// How it is stored: `xchacha20poly1305` under a data key wrapped by the market's KEK.
    pub sealing: String,
    pub created_at: DateTime<Utc>,
}

impl From<ModelRow> for ModelOut {
    fn from(r: ModelRow) -> Self {
        ModelOut {
            id: r.id,
            market: r.market,
            name: r.name,
            sha256: r.sha256,
            bytes: r.bytes,
            sealing: gridbook_sealed::ALGORITHM.into(),
            created_at: r.created_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ModelList {
    pub data: Vec<ModelOut>,
    pub next_before: Option<Uuid>,
}

/// One release of a model's key.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyReleaseOut {
    pub node_id: Uuid,
    pub assignment_id: Uuid,
    pub released_at: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct KeyReleaseList {
    /// Newest first, at most 1,000.
    pub data: Vec<KeyReleaseOut>,
}

#[derive(Serialize)]
struct UploadIdentity<'a> {
    market: &'a str,
    name: &'a str,
    sha256: &'a str,
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "model_too_large",
        format!("a model may be at most {limit} bytes"),
    )
}

/// Loads and runs `bytes` once on the market's CPU runtime (blocking); `Err` says why it
/// cannot be used.
fn check_model(kind: WorkloadKind, bytes: &[u8]) -> Result<(), String> {
    static REFERENCE: std::sync::Mutex<executor::registry::Reference> =
        std::sync::Mutex::new(executor::registry::Reference::new());
    let mut r = REFERENCE.lock().unwrap_or_else(|p| p.into_inner());
    r.check_private_model(kind, bytes)
}

/// Upload a private ONNX model for a market (sealed at rest).
#[utoipa::path(post, path = "/v1/models", tag = "models", params(UploadModelQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the .onnx file"),
    responses((status = 201, body = ModelOut),
        (status = 400, description = "`invalid_model` (why it cannot run), `invalid_request` (market, name)", body = crate::error::ErrorResponse),
        (status = 413, description = "`model_too_large`", body = crate::error::ErrorResponse),
        (status = 415, body = crate::error::ErrorResponse),
        (status = 503, description = "`models_unavailable`, `uploads_busy`", body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
#[allow(clippy::too_many_arguments)]
pub async fn upload(
    state: web::Data<AppState>,
    bounds: web::Data<crate::limits::Bounds>,
    principal: Principal,
    idem: IdempotencyKey,
    req: HttpRequest,
    query: web::Query<UploadModelQuery>,
    mut payload: web::Payload,
) -> ApiResult<HttpResponse> {
    principal.require_role(&[Role::Studio])?;
    principal.require_scope(Scope::Jobs)?;
    let q = query.into_inner();
    let market = state
        .markets
        .get(&q.market)
        .ok_or_else(|| ApiError::invalid("market", format!("unknown market {:?}", q.market)))?;
    let kind = market.compute("market")?.kind;
    if kind != WorkloadKind::Embed {
        return Err(ApiError::invalid(
            "market",
            format!("the {} workload of {} does not take private models (only embeddings do)", kind, q.market),
        ));
    }
    if q.name.trim().is_empty() || q.name.chars().count() > 200 {
        return Err(ApiError::invalid("name", "name must be 1 to 200 characters"));
    }
    crate::validate::text("name", &q.name)?;
    let kek = kek(&state)?;
    if crate::body::media_type(&req).as_deref() != Some("application/octet-stream") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the .onnx file as the body with Content-Type application/octet-stream",
        ));
    }
    let limit = state.settings.limits.model_bytes;
    if crate::body::announces_more_than(&req, limit) {
        return Err(too_large(limit));
    }
    let _slot = bounds.uploads.acquire(principal.user_id)?;
    let (body, sha256) = crate::body::read_limited(&mut payload, limit, too_large).await?;
    if body.is_empty() {
        return Err(ApiError::invalid("body", "the model file is empty"));
    }
    let request = idempotency::Request::from_hash(
        principal.user_id,
        idem,
        "POST /v1/models",
        idempotency::hash_json(&UploadIdentity { market: &q.market, name: &q.name, sha256: &sha256 })?,
    );
    if let Some(outcome) = idempotency::peek(&state.db, &request).await? {
        return Ok(outcome.into_response());
    }
    let checked = {
        let body = body.clone();
        actix_web::rt::task::spawn_blocking(move || check_model(kind, &body))
            .await
            .map_err(ApiError::internal)?
    };
    if let Err(why) = checked {
        tracing::info!(user = %principal.user_id, market = %q.market, sha256 = %sha256, reason = %why, "model refused");
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_model",
            format!("the model cannot run on {}: {why}", q.market),
        )
        .with_field("body"));
    }
    let id = Uuid::now_v7();
    let aad = gridbook_sealed::model_aad(id.as_bytes(), &sha256);
    let size = body.len();
    let key = gridbook_sealed::DataKey::generate().map_err(ApiError::internal)?;
    let wrapped_key = kek.wrap(&key, &aad).map_err(ApiError::internal)?;
    let (sealed, nonce) = {
        let aad = aad.clone();
        actix_web::rt::task::spawn_blocking(move || {
            let mut buf = body.to_vec();
            drop(body);
            gridbook_sealed::seal(&key, &mut buf, &aad).map(|n| (buf, n))
        })
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?
    };
    let object = object_name(id);
    let store = crate::files::bucket(&state).await?;
    store
        .put(object.as_str(), &mut std::io::Cursor::new(sealed))
        .await
        .map_err(ApiError::unavailable)?;
    let row = ModelRow {
        id,
        owner: principal.user_id,
        market: q.market.clone(),
        name: q.name,
        sha256,
        bytes: size as i64,
        object,
        nonce: nonce.to_vec(),
        wrapped_key,
        created_at: Utc::now(),
    };
    let outcome = crate::db::run(&state.db, move |c| {
        idempotency::run(c, request, |c| {
            let row = diesel::insert_into(models::table)
                .values(&row)
                .returning(ModelRow::as_returning())
                .get_result(c)?;
            tracing::info!(model = %row.id, user = %row.owner, market = %row.market, sha256 = %row.sha256, bytes = row.bytes, "private model stored sealed");
            Ok((StatusCode::CREATED, ModelOut::from(row)))
        })
    })
    .await?;
    Ok(outcome.into_response())
}

/// A model of `owner` (404 for anyone else's).
fn load_owned(c: &mut PgConnection, owner: Uuid, id: Uuid) -> ApiResult<ModelRow> {
    models::table
        .find(id)
        .filter(models::owner.eq(owner))
        .select(ModelRow::as_select())
        .first(c)
        .optional()?
        .ok_or_else(|| ApiError::not_found("model"))
}

/// What a job pins of its model.
pub struct JobModel {
    pub id: Uuid,
    pub sha256: String,
}

/// The model a job of `owner` in `market` may run (inside the job's transaction): the
/// studio's own, for that market.
pub fn for_job(c: &mut PgConnection, owner: Uuid, id: Uuid, market: &str) -> ApiResult<JobModel> {
    let m = load_owned(c, owner, id).map_err(|e| e.with_field("model_id"))?;
    if m.market != market {
        return Err(ApiError::invalid(
            "model_id",
            format!("the model was uploaded for {}, not {market}", m.market),
        ));
    }
    Ok(JobModel { id: m.id, sha256: m.sha256 })
}

/// Records a release of `model`'s key to `node` for `assignment`.
pub fn record_release(c: &mut PgConnection, model: Uuid, assignment: Uuid, node: Uuid) -> QueryResult<()> {
    diesel::insert_into(model_key_releases::table)
        .values((
            model_key_releases::model_id.eq(model),
            model_key_releases::assignment_id.eq(assignment),
            model_key_releases::node_id.eq(node),
        ))
        .execute(c)
        .map(drop)
}

/// The model row by id (the data routes of an assignment).
pub fn load(c: &mut PgConnection, id: Uuid) -> QueryResult<ModelRow> {
    models::table.find(id).select(ModelRow::as_select()).first(c)
}

/// The caller's private models, newest first.
#[utoipa::path(get, path = "/v1/models", tag = "models", params(Page),
    responses((status = 200, body = ModelList)), security(("api_key" = []), ("session" = [])))]
pub async fn list(state: web::Data<AppState>, principal: Principal, page: web::Query<Page>) -> ApiResult<HttpResponse> {
    principal.require_scope(Scope::Read)?;
    let limit = page.limit()?;
    let before = page.before;
    let owner = principal.user_id;
    let (rows, next_before) =
        crate::db::run(&state.db, move |c| Ok(owned_page!(c, models, ModelRow, owner, limit, before)?)).await?;
    Ok(HttpResponse::Ok().json(ModelList { data: rows.into_iter().map(ModelOut::from).collect(), next_before }))
}

/// One of the caller's private models.
#[utoipa::path(get, path = "/v1/models/{id}", tag = "models",
    responses((status = 200, body = ModelOut), (status = 404, body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn get(state: web::Data<AppState>, principal: Principal, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    principal.require_scope(Scope::Read)?;
    let (owner, id) = (principal.user_id, id.into_inner());
    let row = crate::db::run(&state.db, move |c| load_owned(c, owner, id)).await?;
    Ok(HttpResponse::Ok().json(ModelOut::from(row)))
}

/// Which nodes were given the key of one of the caller's models, for which assignments.
#[utoipa::path(get, path = "/v1/models/{id}/releases", tag = "models",
    responses((status = 200, body = KeyReleaseList), (status = 404, body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn releases(state: web::Data<AppState>, principal: Principal, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    principal.require_scope(Scope::Read)?;
    let (owner, id) = (principal.user_id, id.into_inner());
    let rows: Vec<(Uuid, Uuid, DateTime<Utc>)> = crate::db::run(&state.db, move |c| {
        load_owned(c, owner, id)?;
        Ok(model_key_releases::table
            .filter(model_key_releases::model_id.eq(id))
            .order(model_key_releases::id.desc())
            .limit(1_000)
            .select((model_key_releases::node_id, model_key_releases::assignment_id, model_key_releases::released_at))
            .load(c)?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(KeyReleaseList {
        data: rows
            .into_iter()
            .map(|(node_id, assignment_id, released_at)| KeyReleaseOut { node_id, assignment_id, released_at })
            .collect(),
    }))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(upload, list, get, releases),
    tags((name = "models", description = "studios' private ONNX models, sealed at rest; a job names one with model_id"))
)]
pub struct ApiDoc;
