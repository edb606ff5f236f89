//! Batch input files: `POST /v1/files?purpose=batch&market=<M>` takes the raw JSONL body, checks
//! it line by line (OpenAI Batch API style) against the market's workload and stores it in the
//! NATS object store bucket `gridbook_files` under its sha256 (hex); `GET /v1/files`,
//! `GET /v1/files/{id}` and `GET /v1/files/{id}/content` serve the caller's own files.
//!
//! Validation reuses the executor's own line parser and field checks
//! (`executor::registry::check_jsonl`: `custom_id` unique, 1..=256 bytes; a JSON object per line;
//! UTF-8; the workload's fields parsed by the function the executor runs lines with), so a file
//! the API accepts is a file the executor can run. On top of it the API enforces its limits (`settings.limits`: bytes,
//! lines, bytes per line) and refuses blank lines, so line `n` of the file is item `n - 1` of
//! the job (assignments address items by line index).
//!
//! Bounds: the body is read chunk by chunk and refused (413) as soon as it exceeds
//! `limits.file_bytes`; one account may have `limits.uploads_per_account` uploads in progress
//! (beyond: 429 `too_many_uploads`) and the process buffers at most `limits.uploads_total` at
//! once (beyond: 503 `uploads_busy`), so upload memory is at most that many times `file_bytes`.
//! A body that stalls (`http.body_idle_timeout_secs`) or trickles past `http.body_timeout_secs`
//! is aborted with 408 `request_timeout` by the app's body guard; nothing is stored.
//!
//! Idempotency: `Idempotency-Key` is honoured as on the other creating POSTs; the request hash
//! covers the query (purpose, market, filename) and the bytes of the file.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use async_nats::jetstream::object_store::{self, ObjectStore};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use gridbook_wire::catalog::Work;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::{Principal, Role, Scope};
use crate::error::{ApiError, ApiResult, ErrorDetail};
use crate::idempotency::{self, IdempotencyKey};
use crate::schema::files;
use crate::settings::Limits;
use crate::state::AppState;

/// At most this many problems are reported for a bad file.
pub const MAX_DETAILS: usize = 100;
/// Page size bounds of the list routes.
pub const MAX_PAGE: i64 = 100;
pub const DEFAULT_PAGE: i64 = 20;

/// Routes of this module (mounted by `app`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/files")
            .route(web::post().to(upload))
            .route(web::get().to(list)),
    )
    .service(web::resource("/files/{id}").route(web::get().to(get)))
    .service(web::resource("/files/{id}/content").route(web::get().to(content)));
}

/// Creates the `gridbook_files` object store bucket if it is missing (idempotent).
pub async fn ensure_bucket(state: &AppState) -> anyhow::Result<()> {
    gridbook_wire::streams::set_up_files_bucket(&state.js, state.settings.nats_replicas)
        .await
        .map(|_| ())
        .map_err(anyhow::Error::msg)
}

/// The files bucket (503 when NATS is unreachable).
pub async fn bucket(state: &AppState) -> ApiResult<ObjectStore> {
    state
        .js
        .get_object_store(gridbook_wire::streams::FILES_BUCKET)
        .await
        .map_err(ApiError::unavailable)
}

// ---------------------------------------------------------------------------------------------
// Validation (pure)
// ---------------------------------------------------------------------------------------------

/// What a valid file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub lines: usize,
}

/// Checks a whole JSONL file for `work`. `Err` carries the first [`MAX_DETAILS`] problems,
/// line numbers 1-based, in line order.
pub fn validate_jsonl(
    work: Work,
    bytes: &[u8],
    limits: &Limits,
) -> Result<Checked, Vec<ErrorDetail>> {
    let mut details: Vec<ErrorDetail> = Vec::new();
    let mut flagged = std::collections::BTreeSet::new();
    // Pass 1: the API's own limits (line length, blank lines, line count).
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if bytes.is_empty() {
        return Err(vec![ErrorDetail {
            line: 0,
            message: "the file is empty: send at least one JSONL line".into(),
        }]);
    }
    let mut lines = 0usize;
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        lines += 1;
        let n = i as u64 + 1;
        if line.len() > limits.line_bytes {
            flagged.insert(n);
            details.push(ErrorDetail {
                line: n,
                message: format!(
                    "line is {} bytes, the limit is {}",
                    line.len(),
                    limits.line_bytes
                ),
            });
        } else if line.iter().all(u8::is_ascii_whitespace) {
            flagged.insert(n);
            details.push(ErrorDetail {
                line: n,
                message: "blank line: every line must be one JSON object".into(),
            });
        } else if crate::validate::may_contain_nul(line)
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(line)
            && let Err(e) = crate::validate::json(&v)
        {
            // custom_id and other strings reach PostgreSQL later (assignment details).
            flagged.insert(n);
            details.push(ErrorDetail {
                line: n,
                message: e.message,
            });
        }
    }
    if lines > limits.file_lines {
        return Err(vec![ErrorDetail {
            line: limits.file_lines as u64 + 1,
            message: format!(
                "the file has {lines} lines, the limit is {}",
                limits.file_lines
            ),
        }]);
    }
    // Pass 2: the executor's parser (JSON object, custom_id, the workload's fields).
    let parsed = executor::registry::check_jsonl(work.kind, std::io::Cursor::new(body));
    for e in parsed.errors {
        let n = e.line as u64;
        if flagged.contains(&n) {
            continue;
        }
        let mut message = String::new();
        if let Some(f) = &e.field {
            message.push_str(f);
            message.push_str(": ");
        }
        message.push_str(&e.message);
        if let Some(id) = &e.custom_id {
            message.push_str(&format!(" (custom_id {id:?})"));
        }
        details.push(ErrorDetail { line: n, message });
    }
    if details.is_empty() && parsed.items.len() == lines {
        return Ok(Checked { lines });
    }
    if details.is_empty() {
        details.push(ErrorDetail {
            line: 0,
            message: "some lines could not be read".into(),
        });
    }
    details.sort_by_key(|d| d.line);
    details.truncate(MAX_DETAILS);
    Err(details)
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// Only `batch` (input of a batch job).
    pub purpose: String,
    /// The market whose workload the lines are for, e.g. `EMBED-MINILM-L6`.
    pub market: String,
    /// Optional name to remember the file by (at most 255 bytes).
    pub filename: Option<String>,
}

/// A stored file.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FileOut {
    pub id: Uuid,
    /// sha256 of the content (hex); also its object name in the `gridbook_files` bucket.
    pub sha256: String,
    pub bytes: i64,
    pub lines: i32,
    /// `batch`, `batch_output` or `batch_error`.
    pub purpose: String,
    pub market: Option<String>,
    pub filename: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = files)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct FileRow {
    pub id: Uuid,
    pub owner: Uuid,
    pub purpose: String,
    pub sha256: String,
    pub bytes: i64,
    pub lines: i32,
    pub filename: Option<String>,
    pub created_at: DateTime<Utc>,
    pub market: Option<String>,
}

impl From<FileRow> for FileOut {
    fn from(r: FileRow) -> Self {
        FileOut {
            id: r.id,
            sha256: r.sha256,
            bytes: r.bytes,
            lines: r.lines,
            purpose: r.purpose,
            market: r.market,
            filename: r.filename,
            created_at: r.created_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct FileList {
    pub data: Vec<FileOut>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<Uuid>,
}

/// `?limit=1..100&before=<id>`: newest first; ids are UUIDv7, so id order is creation order.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct Page {
    pub limit: Option<i64>,
    pub before: Option<Uuid>,
}

impl Page {
    pub fn limit(&self) -> ApiResult<i64> {
        match self.limit {
            None => Ok(DEFAULT_PAGE),
            Some(l) if (1..=MAX_PAGE).contains(&l) => Ok(l),
            Some(_) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("limit must be 1..={MAX_PAGE}"),
            )
            .with_field("limit")),
        }
    }
}

/// One keyset page of `$table`'s rows owned by `$owner`, newest id first, as
/// `Result<(rows, next_before), diesel::result::Error>`: the list routes of files, jobs, nodes
/// and asks. The table needs `id` (Uuid, time-ordered v7) and `owner` columns; `$row` is its
/// `Selectable` row type; the caller's module imports `diesel::prelude::*`.
macro_rules! owned_page {
    ($conn:expr, $table:ident, $row:ty, $owner:expr, $limit:expr, $before:expr) => {{
        let mut q = $table::table
            .filter($table::owner.eq($owner))
            .select(<$row>::as_select())
            .order($table::id.desc())
            .limit($limit + 1)
            .into_boxed();
        if let Some(b) = $before {
            q = q.filter($table::id.lt(b));
        }
        q.load::<$row>($conn)
            .map(|rows| crate::files::paginate(rows, $limit, |r: &$row| r.id))
    }};
}
pub(crate) use owned_page;

/// The next cursor of a page fetched with `limit + 1` rows (the extra row is dropped).
pub fn paginate<T>(
    mut rows: Vec<T>,
    limit: i64,
    id: impl Fn(&T) -> Uuid,
) -> (Vec<T>, Option<Uuid>) {
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next = if more { rows.last().map(id) } else { None };
    (rows, next)
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the file exceeds the limit of {limit} bytes"),
    )
}

/// What the idempotency hash of an upload covers: the query and the content.
#[derive(Serialize)]
struct UploadIdentity<'a> {
    purpose: &'a str,
    market: &'a str,
    filename: Option<&'a str>,
    sha256: &'a str,
}

/// Upload a JSONL batch input file.
#[utoipa::path(
    post, path = "/v1/files", tag = "files",
    params(UploadQuery,
        ("Idempotency-Key" = Option<String>, Header, description = "optional; 1-255 characters; the same key, query and content replay the first response")),
    request_body(content = String, content_type = "application/jsonl",
        description = "JSONL: one JSON object per line with a unique `custom_id` and the market's input fields"),
    responses(
        (status = 201, body = FileOut),
        (status = 400, description = "`invalid_file` with per-line `details`", body = crate::error::ErrorResponse),
        (status = 408, description = "`request_timeout`: the body stalled or took too long; nothing was stored", body = crate::error::ErrorResponse),
        (status = 413, body = crate::error::ErrorResponse),
        (status = 415, body = crate::error::ErrorResponse),
        (status = 422, description = "`idempotency_key_reused`", body = crate::error::ErrorResponse),
        (status = 429, description = "`too_many_uploads`: this account's uploads in progress are at the limit (Retry-After)", body = crate::error::ErrorResponse),
        (status = 503, description = "`uploads_busy`: the server's upload slots are full (Retry-After)", body = crate::error::ErrorResponse),
    ),
    security(("api_key" = []), ("session" = []))
)]
pub async fn upload(
    state: web::Data<AppState>,
    bounds: web::Data<crate::limits::Bounds>,
    principal: Principal,
    idem: IdempotencyKey,
    req: HttpRequest,
    query: web::Query<UploadQuery>,
    mut payload: web::Payload,
) -> ApiResult<HttpResponse> {
    principal.require_role(&[Role::Studio])?;
    principal.require_scope(Scope::Jobs)?;
    let q = query.into_inner();
    if q.purpose != "batch" {
        return Err(ApiError::invalid("purpose", "purpose must be `batch`"));
    }
    let market = state
        .markets
        .get(&q.market)
        .ok_or_else(|| ApiError::invalid("market", format!("unknown market {:?}", q.market)))?;
    let work = market.compute("market")?;
    if let Some(f) = &q.filename {
        if f.is_empty() || f.len() > 255 {
            return Err(ApiError::invalid(
                "filename",
                "filename must be 1 to 255 bytes",
            ));
        }
        crate::validate::text("filename", f)?;
    }
    match crate::body::media_type(&req).as_deref() {
        Some(
            "application/jsonl" | "application/x-ndjson" | "text/plain" | "application/x-jsonlines",
        ) => {}
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the file as the body with Content-Type application/jsonl, application/x-ndjson or text/plain",
            ));
        }
    }
    let limit = state.settings.limits.file_bytes;
    if crate::body::announces_more_than(&req, limit) {
        return Err(too_large(limit));
    }
    // Held until the handler returns, whatever happens (refused at once when full).
    let _slot = bounds.uploads.acquire(principal.user_id)?;
    let (body, sha256) = crate::body::read_limited(&mut payload, limit, too_large).await?;
    let request = idempotency::Request::from_hash(
        principal.user_id,
        idem,
        "POST /v1/files",
        idempotency::hash_json(&UploadIdentity {
            purpose: &q.purpose,
            market: &q.market,
            filename: q.filename.as_deref(),
            sha256: &sha256,
        })?,
    );
    // A replay (or a reused key) is answered before the file is checked and stored again.
    if let Some(outcome) = idempotency::peek(&state.db, &request).await? {
        return Ok(outcome.into_response());
    }
    let limits = state.settings.limits.clone();
    let checked = {
        let body = body.clone();
        actix_web::rt::task::spawn_blocking(move || validate_jsonl(work, &body, &limits))
            .await
            .map_err(ApiError::internal)?
    };
    let checked = match checked {
        Ok(c) => c,
        Err(details) => {
            tracing::info!(user = %principal.user_id, market = %q.market, problems = details.len(), "file refused");
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_file",
                format!(
                    "the file has invalid lines (the first {} problems are listed in details)",
                    details.len()
                ),
            )
            .with_details(details));
        }
    };
    // Content-addressed: an object with this name already holds exactly these bytes.
    let store = bucket(&state).await?;
    match store.info(&sha256).await {
        Ok(info) if info.size == body.len() && !info.deleted => {}
        _ => {
            let mut reader = std::io::Cursor::new(body.as_ref());
            store
                .put(sha256.as_str(), &mut reader)
                .await
                .map_err(ApiError::unavailable)?;
        }
    }
    let row = FileRow {
        id: Uuid::now_v7(),
        owner: principal.user_id,
        purpose: "batch".into(),
        sha256,
        bytes: body.len() as i64,
        lines: i32::try_from(checked.lines).map_err(ApiError::internal)?,
        filename: q.filename,
        created_at: Utc::now(),
        market: Some(q.market.clone()),
    };
    let market_name = q.market;
    let outcome = crate::db::run(&state.db, move |c| {
        idempotency::run(c, request, |c| {
            let row = diesel::insert_into(files::table)
                .values(&row)
                .returning(FileRow::as_returning())
                .get_result(c)?;
            tracing::info!(file = %row.id, user = %row.owner, market = %market_name, bytes = row.bytes, lines = row.lines, "file stored");
            Ok((StatusCode::CREATED, FileOut::from(row)))
        })
    })
    .await?;
    Ok(outcome.into_response())
}

/// A file of `owner` (404 for anyone else's).
pub fn load_owned(conn: &mut PgConnection, owner: Uuid, id: Uuid) -> ApiResult<FileRow> {
    files::table
        .find(id)
        .filter(files::owner.eq(owner))
        .select(FileRow::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(|| ApiError::not_found("file"))
}

/// The caller's files, newest first.
#[utoipa::path(get, path = "/v1/files", tag = "files", params(Page),
    responses((status = 200, body = FileList)), security(("api_key" = []), ("session" = [])))]
pub async fn list(
    state: web::Data<AppState>,
    principal: Principal,
    page: web::Query<Page>,
) -> ApiResult<HttpResponse> {
    principal.require_scope(Scope::Read)?;
    let limit = page.limit()?;
    let before = page.before;
    let owner = principal.user_id;
    let (rows, next_before) = crate::db::run(&state.db, move |c| {
        Ok(owned_page!(c, files, FileRow, owner, limit, before)?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(FileList {
        data: rows.into_iter().map(FileOut::from).collect(),
        next_before,
    }))
}

/// One of the caller's files (metadata).
#[utoipa::path(get, path = "/v1/files/{id}", tag = "files",
    responses((status = 200, body = FileOut), (status = 404, body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn get(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    principal.require_scope(Scope::Read)?;
    let (owner, id) = (principal.user_id, id.into_inner());
    let row = crate::db::run(&state.db, move |c| load_owned(c, owner, id)).await?;
    Ok(HttpResponse::Ok().json(FileOut::from(row)))
}

/// The content of one of the caller's files, streamed from the object store.
#[utoipa::path(get, path = "/v1/files/{id}/content", tag = "files",
    responses((status = 200, content_type = "application/jsonl", body = String),
        (status = 404, body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn content(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    principal.require_scope(Scope::Read)?;
    let (owner, id) = (principal.user_id, id.into_inner());
    let row = crate::db::run(&state.db, move |c| load_owned(c, owner, id)).await?;
    stream_object(&state, &row).await
}

/// Streams the object of `file` (JSONL) as the response body.
pub async fn stream_object(state: &AppState, file: &FileRow) -> ApiResult<HttpResponse> {
    let store = bucket(state).await?;
    let object = store.get(&file.sha256).await.map_err(|e| {
        if matches!(e.kind(), object_store::GetErrorKind::NotFound) {
            ApiError::internal(format!(
                "file {} (object {}) is missing from the bucket",
                file.id, file.sha256
            ))
        } else {
            ApiError::unavailable(e)
        }
    })?;
    let stream = tokio_util::io::ReaderStream::new(object);
    Ok(HttpResponse::Ok()
        .content_type("application/jsonl")
        .insert_header(("X-Content-Sha256", file.sha256.clone()))
        .streaming(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embed() -> Work {
        gridbook_wire::catalog::work("EMBED-MINILM-L6").unwrap()
    }

    #[test]
    fn good_embed_file() {
        let f = b"{\"custom_id\":\"a\",\"input\":\"hello\"}\n{\"custom_id\":\"b\",\"body\":{\"input\":\"x\"}}\n";
        assert_eq!(
            validate_jsonl(embed(), f, &Limits::default()).unwrap(),
            Checked { lines: 2 }
        );
        // No trailing newline.
        assert_eq!(
            validate_jsonl(embed(), &f[..f.len() - 1], &Limits::default()).unwrap(),
            Checked { lines: 2 }
        );
    }

    #[test]
    fn bad_lines_are_numbered_from_one() {
        let f = "{\"custom_id\":\"a\",\"input\":\"x\"}\nnot json\n{\"custom_id\":\"a\",\"input\":\"y\"}\n\n{\"input\":\"z\"}\n{\"custom_id\":\"c\",\"input\":3}\n[1]\n";
        let d = validate_jsonl(embed(), f.as_bytes(), &Limits::default()).unwrap_err();
        let lines: Vec<u64> = d.iter().map(|d| d.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7], "{d:?}");
        assert!(d[0].message.contains("invalid JSON"), "{d:?}");
        assert!(d[1].message.contains("duplicate"), "{d:?}");
        assert!(d[2].message.contains("blank"), "{d:?}");
        assert!(d[3].message.contains("custom_id: missing"), "{d:?}");
        assert!(d[4].message.contains("input: expected a string"), "{d:?}");
        assert!(d[5].message.contains("JSON object"), "{d:?}");
    }

    #[test]
    fn limits() {
        let limits = Limits {
            line_bytes: 40,
            file_lines: 2,
            ..Limits::default()
        };
        let long = format!("{{\"custom_id\":\"a\",\"input\":\"{}\"}}\n", "x".repeat(40));
        let d = validate_jsonl(embed(), long.as_bytes(), &limits).unwrap_err();
        assert_eq!(d[0].line, 1);
        assert!(d[0].message.contains("limit is 40"));
        let three = "{\"custom_id\":\"a\",\"input\":\"x\"}\n".repeat(3);
        let d = validate_jsonl(embed(), three.as_bytes(), &limits).unwrap_err();
        assert!(d[0].message.contains("limit is 2"), "{d:?}");
        let d = validate_jsonl(embed(), b"", &limits).unwrap_err();
        assert!(d[0].message.contains("empty"));
        let bad_utf8 = b"{\"custom_id\":\"a\",\"input\":\"\xff\"}\n";
        let d = validate_jsonl(embed(), bad_utf8, &Limits::default()).unwrap_err();
        assert!(d[0].message.contains("UTF-8"), "{d:?}");
    }

    #[test]
    fn at_most_100_details() {
        let f = "nope\n".repeat(500);
        let d = validate_jsonl(embed(), f.as_bytes(), &Limits::default()).unwrap_err();
        assert_eq!(d.len(), MAX_DETAILS);
        assert_eq!(d[99].line, 100);
    }

    #[test]
    fn terrain_and_sd_fields() {
        let t = gridbook_wire::catalog::work("RENDER-TERRAIN-128").unwrap();
        assert!(
            validate_jsonl(
                t,
                b"{\"custom_id\":\"a\",\"seed\":1,\"difficulty\":50}",
                &Limits::default()
            )
            .is_ok()
        );
        let d = validate_jsonl(
            t,
            b"{\"custom_id\":\"a\",\"difficulty\":500}",
            &Limits::default(),
        )
        .unwrap_err();
        assert!(d[0].message.starts_with("difficulty:"), "{d:?}");
        let s = gridbook_wire::catalog::work("RENDER-SD15-512").unwrap();
        assert!(
            validate_jsonl(
                s,
                b"{\"custom_id\":\"a\",\"prompt\":\"a cat\",\"steps\":20}",
                &Limits::default()
            )
            .is_ok()
        );
        let d = validate_jsonl(
            s,
            b"{\"custom_id\":\"a\",\"prompt\":\"p\",\"width\":500}\n{\"custom_id\":\"b\"}",
            &Limits::default(),
        )
        .unwrap_err();
        assert!(d[0].message.starts_with("width:"), "{d:?}");
        assert!(d[1].message.starts_with("prompt: missing"), "{d:?}");
    }
}

/// The OpenAPI paths of this module (merged by `openapi::document`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(upload, list, get, content),
    tags((name = "files", description = "JSONL batch input files (validated per line, stored by sha256)"))
)]
pub struct ApiDoc;
