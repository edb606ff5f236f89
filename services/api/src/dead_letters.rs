//! `GET /v1/admin/dead-letters`: what the settlement worker refused (an unknown order, an
//! undecodable message, a result from the wrong node, …), newest first, with the reason and what
//! was done about escrow (admins only; read-only). The worker writes them
//! (`gridbook_settlement::dead_letter`); the API only reads the table.

use actix_web::{HttpResponse, web};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use uuid::Uuid;

use crate::auth::{Principal, Role};
use crate::error::ApiResult;
use crate::files::Page;
use crate::schema::dead_letters;
use crate::state::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/admin/dead-letters").route(web::get().to(list)));
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = dead_letters)]
#[diesel(check_for_backend(diesel::pg::Pg))]
struct Row {
    id: Uuid,
    consumer: String,
    subject: String,
    stream_seq: Option<i64>,
    event_seq: Option<i64>,
    market: Option<String>,
    reason: String,
    detail: String,
    payload: Vec<u8>,
    escrow_action: String,
    order_id: Option<Uuid>,
    job_id: Option<Uuid>,
    unit_start: Option<i64>,
    units: i64,
    created_at: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeadLetterOut {
    pub id: Uuid,
    pub consumer: String,
    pub subject: String,
    pub stream_seq: Option<i64>,
    pub event_seq: Option<i64>,
    pub market: Option<String>,
    /// `undecodable`, `malformed`, `unknown_order`, `no_escrow`, `invalid_event`,
    /// `ledger_refused`, `unknown_assignment` or `foreign_result`.
    pub reason: String,
    pub detail: String,
    /// The message as received, base64 (at most the first 4 KiB).
    pub payload_b64: String,
    pub payload_bytes: usize,
    /// `untouched` or `released` (the units the refused event held went back to the studio).
    pub escrow_action: String,
    pub order_id: Option<Uuid>,
    pub job_id: Option<Uuid>,
    pub unit_start: Option<i64>,
    pub units: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeadLetterList {
    pub data: Vec<DeadLetterOut>,
    pub next_before: Option<Uuid>,
}

/// Dead letters, newest first (`before` = an id of the previous page). Admins only.
#[utoipa::path(get, path = "/v1/admin/dead-letters", tag = "identity", params(Page),
    responses((status = 200, body = DeadLetterList), (status = 403, body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn list(state: web::Data<AppState>, principal: Principal, page: web::Query<Page>) -> ApiResult<HttpResponse> {
    principal.require_role(&[Role::Admin])?;
    let limit = page.limit()?;
    let before = page.before;
    let rows: Vec<Row> = crate::db::run(&state.db, move |c| {
        let mut q = dead_letters::table
            .order(dead_letters::id.desc())
            .limit(limit + 1)
            .select(Row::as_select())
            .into_boxed();
        if let Some(b) = before {
            q = q.filter(dead_letters::id.lt(b));
        }
        Ok(q.load(c)?)
    })
    .await?;
    let more = rows.len() as i64 > limit;
    let data: Vec<DeadLetterOut> = rows
        .into_iter()
        .take(limit as usize)
        .map(|r| DeadLetterOut {
            id: r.id,
            consumer: r.consumer,
            subject: r.subject,
            stream_seq: r.stream_seq,
            event_seq: r.event_seq,
            market: r.market,
            reason: r.reason,
            detail: r.detail,
            payload_b64: base64::engine::general_purpose::STANDARD.encode(&r.payload[..r.payload.len().min(4096)]),
            payload_bytes: r.payload.len(),
            escrow_action: r.escrow_action,
            order_id: r.order_id,
            job_id: r.job_id,
            unit_start: r.unit_start,
            units: r.units,
            created_at: r.created_at,
        })
        .collect();
    let next_before = if more { data.last().map(|d| d.id) } else { None };
    Ok(HttpResponse::Ok().json(DeadLetterList { data, next_before }))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(list))]
pub struct ApiDoc;
