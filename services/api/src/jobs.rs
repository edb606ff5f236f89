//! Batch jobs: a validated input file, a market, a limit price per unit and a deadline become
//! an escrowed bid on the market.
//!
//! `POST /v1/jobs` does everything in ONE database transaction: take the engine order id
//! (`market_order_ids`), reserve `units × (limit + ⌈limit × fee⌉)` from the studio
//! (`escrow::reserve_bid`), insert the `market_orders` row, the `jobs` row and the engine's
//! Place command in the outbox (the settlement worker's publisher ships it to
//! `market.<M>.cmd`). Either all of it exists or none does; not enough credits → 409
//! `insufficient_funds` and nothing is created.
//!
//! Units and prices: `units = ⌈lines / items_per_unit⌉` of the market (`catalog::units_for`);
//! 1 lot = 1 unit; 1 tick = 1 minor unit per unit (the market's `tick_size` is informational),
//! so `limit_price` is sent to the engine unchanged.
//!
//! Statuses: `validating` is the state while the input is checked. Files are checked in full at
//! upload, so a job is created directly as `queued` (escrow reserved, order in the outbox). The
//! settlement worker moves it on (`running`, `verifying`, `completed`, `failed`, `expired`,
//! `cancelled`, `rejected`).
//!
//! Time in force (`time_in_force`): `gtc` rests until the deadline (a GTD order); `ioc` and
//! `fok` are the engine's. The engine cancels an IOC remainder (`cancelled`, reason `unfilled`)
//! and the worker releases it like a cancel; it rejects an unfillable FOK (`fok_unfillable`) and
//! the worker releases the whole reservation and records the reason on the job
//! (`jobs.reject_reason`), which the finisher ends `rejected`.
//!
//! Cancel: allowed while `queued` or `running`; sets `cancel_requested_at` and queues an engine
//! Cancel in the same transaction. The worker releases the unfilled reservation when the
//! engine's `cancelled` event arrives; assignments already running finish and are settled
//! normally (the studio pays only for verified work). A second cancel is answered with the job
//! as it is and queues nothing.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use gridbook_ledger::LedgerError;
use gridbook_ledger::escrow::{self, Bid};
use gridbook_db::market_orders::{self as orders, MarketOrder};
use matching_core::{Cancel, CommandKind, OrderId, Side};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::{Principal, Role, Scope};
use crate::error::{ApiError, ApiResult};
use crate::files::Page;
use crate::idempotency::{self, IdempotencyKey};
use crate::schema::{files, jobs};
use gridbook_db::rows::JobRow;
use gridbook_db::status::{JobStatus, JobTimeInForce};
use crate::state::AppState;

/// The latest deadline a job may have, from now.
pub const MAX_DEADLINE_DAYS: i64 = 7;
/// The earliest deadline, from now (a job needs time to be matched and run).
pub const MIN_DEADLINE_SECS: i64 = 60;
/// Metadata bounds (as OpenAI's Batch API): at most 16 pairs, keys ≤ 64, values ≤ 512 chars.
pub const MAX_METADATA_PAIRS: usize = 16;
pub const MAX_METADATA_KEY: usize = 64;
pub const MAX_METADATA_VALUE: usize = 512;

/// Routes of this module (mounted by `app`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/jobs")
            .route(web::post().to(create))
            .route(web::get().to(list)),
    )
    .service(
        web::resource("/jobs/{id}")
            .route(web::get().to(get))
            .route(web::patch().to(amend)),
    )
    .service(web::resource("/jobs/{id}/assignments").route(web::get().to(assignments)))
    .service(web::resource("/jobs/{id}/cancel").route(web::post().to(cancel)))
    .service(web::resource("/jobs/{id}/output").route(web::get().to(output)))
    .service(web::resource("/jobs/{id}/errors").route(web::get().to(errors)))
    .service(web::resource("/jobs/{id}/images/{custom_id}").route(web::get().to(image)));
}

/// What a studio sends. Fields the market decides (status, fee, owner, order ids) do not exist
/// here: an unknown field is a 400.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// Market symbol, e.g. `EMBED-MINILM-L6`.
    pub market: String,
    /// Id of an uploaded `batch` file validated for this market.
    pub input_file: Uuid,
    /// Minor units per unit of work (= engine ticks), within the market's min/max price.
    pub limit_price: i64,
    /// RFC 3339; in the future (≥ 60 s) and at most 7 days ahead. Unfilled units expire then.
    pub deadline: DateTime<Utc>,
    /// Up to 16 string pairs, returned as given.
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// A private model of yours (`POST /v1/models`) for this market, run instead of the
    /// market's; its sha256 is pinned in the job.
    #[serde(default)]
    pub model_id: Option<Uuid>,
    /// How long the bid may wait on the book: `gtc` (default: until the deadline), `ioc` (what
    /// the book fills at once runs, the rest is released at once; the job completes with the
    /// filled part), `fok` (every unit at once, or the job ends `rejected` with
    /// `reject_reason: "fok_unfillable"` and everything released).
    #[serde(default)]
    pub time_in_force: TimeInForce,
}

/// A job's time in force (see [`CreateJob::time_in_force`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TimeInForce {
    #[default]
    Gtc,
    Ioc,
    Fok,
}

impl From<TimeInForce> for JobTimeInForce {
    fn from(t: TimeInForce) -> Self {
        match t {
            TimeInForce::Gtc => JobTimeInForce::Gtc,
            TimeInForce::Ioc => JobTimeInForce::Ioc,
            TimeInForce::Fok => JobTimeInForce::Fok,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RequestCounts {
    pub total: i32,
    pub completed: i32,
    /// Failed items, expired and cancelled ones included (their units were never run).
    pub failed: i32,
    /// Items on assignments a node is running or the market is verifying.
    pub running: i32,
    /// Items waiting for a provider (their units on the book, or re-offered after a failure);
    /// 0 once the job has finished.
    pub queued: i32,
}

/// Money of the job's escrow order, minor units.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EscrowOut {
    /// Reserved when the bid was placed: units × (limit + ⌈limit × fee⌉).
    pub reserved: i64,
    /// Still reserved for units not yet filled.
    pub open: i64,
    /// Held for assignments running or being verified.
    pub held: i64,
    /// Paid out to providers and the protocol fee.
    pub spent: i64,
    /// Returned to the studio (price improvement, cancelled/expired units, failed work).
    pub released: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobOut {
    pub id: Uuid,
    pub market: String,
    /// `validating`, `queued`, `running`, `verifying`, `completed`, `failed`, `expired`,
    /// `cancelled`, `rejected` (the market refused the bid: `reject_reason`; or an IOC job of
    /// which nothing filled).
    pub status: String,
    /// `gtc`, `ioc` or `fok`.
    pub time_in_force: String,
    /// Why the market rejected the job's bid (e.g. `fok_unfillable`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject_reason: Option<String>,
    pub input_file: Uuid,
    pub request_counts: RequestCounts,
    /// 0..1: finished (completed + failed) items over all items.
    pub progress: f64,
    pub units: i64,
    pub items_per_unit: i32,
    pub limit_price: i64,
    pub fee_bps: i32,
    pub deadline: DateTime<Utc>,
    /// The escrow figures; present on `GET /v1/jobs/{id}` and creation, absent in lists.
    pub escrow: Option<EscrowOut>,
    pub output_file: Option<Uuid>,
    pub error_file: Option<Uuid>,
    pub metadata: Option<serde_json::Value>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The private model the job runs, and the sha256 every node must load.
    pub model_id: Option<Uuid>,
    pub model_sha256: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct JobList {
    pub data: Vec<JobOut>,
    pub next_before: Option<Uuid>,
}

/// Items on each job's running or verifying assignments (absent: none).
fn running_items(conn: &mut PgConnection, ids: &[Uuid]) -> ApiResult<std::collections::HashMap<Uuid, i32>> {
    use gridbook_db::schema::job_assignments as a;
    use gridbook_db::status::AssignmentStatus;
    let rows: Vec<(Uuid, Option<i64>)> = a::table
        .filter(a::job_id.eq_any(ids))
        .filter(a::status.eq_any([AssignmentStatus::Assigned, AssignmentStatus::Verifying]))
        .group_by(a::job_id)
        .select((a::job_id, diesel::dsl::sum(a::item_count)))
        .load(conn)?;
    Ok(rows.into_iter().map(|(id, n)| (id, i32::try_from(n.unwrap_or(0)).unwrap_or(i32::MAX))).collect())
}

/// [`job_out`] with the job's running items read from its assignments.
fn job_out_in(conn: &mut PgConnection, r: JobRow, escrow: Option<EscrowOut>) -> ApiResult<JobOut> {
    let running = running_items(conn, &[r.id])?.get(&r.id).copied().unwrap_or(0);
    Ok(job_out(r, escrow, running))
}

fn job_out(r: JobRow, escrow: Option<EscrowOut>, running: i32) -> JobOut {
    let done = r.items_completed + r.items_failed;
    let finished = r.finished_at.is_some();
    JobOut {
        id: r.id,
        market: r.market,
        status: r.status.as_str().into(),
        time_in_force: r.time_in_force.as_str().into(),
        reject_reason: r.reject_reason,
        input_file: r.input_file,
        request_counts: RequestCounts {
            total: r.items,
            completed: r.items_completed,
            failed: r.items_failed,
            running,
            queued: if finished { 0 } else { (r.items - done - running).max(0) },
        },
        progress: if r.items > 0 {
            (f64::from(done) / f64::from(r.items)).clamp(0.0, 1.0)
        } else {
            0.0
        },
        units: r.units,
        items_per_unit: r.items_per_unit,
        limit_price: r.limit_price,
        fee_bps: r.fee_bps,
        deadline: r.deadline,
        escrow,
        output_file: r.output_file,
        error_file: r.error_file,
        metadata: r.metadata,
        cancel_requested_at: r.cancel_requested_at,
        created_at: r.created_at,
        updated_at: r.updated_at,
        finished_at: r.finished_at,
        model_id: r.model_id,
        model_sha256: r.model_sha256,
    }
}

/// Most transfers of one escrow account read to sum spent/released (bounded work per request).
const MAX_ESCROW_TRANSFERS: usize = 10_000;

/// The escrow figures of an order (`None` when the order is unknown, which cannot happen for a
/// job created by this API).
pub fn escrow_of(conn: &mut PgConnection, order_id: Uuid) -> ApiResult<Option<EscrowOut>> {
    let state = match escrow::get_order(conn, order_id) {
        Ok(s) => s,
        Err(LedgerError::OrderNotFound(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let t = &state.terms;
    let account = gridbook_ledger::store::get_account(conn, t.escrow_account)?;
    let mut released: i64 = 0;
    let mut after = None;
    let mut seen = 0usize;
    loop {
        let page = gridbook_ledger::store::account_history(conn, t.escrow_account, after, 1000)?;
        if page.is_empty() {
            break;
        }
        seen += page.len();
        for tr in &page {
            if tr.debit_account == t.escrow_account && tr.credit_account == t.studio_account {
                released = released.saturating_add(tr.amount);
            } else if tr.debit_account == t.studio_account
                && tr.credit_account == t.escrow_account
                && tr.code == "escrow_reoffer_reserve"
            {
                // Failed units offered again took back the improvement their fill released.
                released = released.saturating_sub(tr.amount);
            }
        }
        after = page.last().map(|tr| tr.seq);
        if page.len() < 1000 || seen >= MAX_ESCROW_TRANSFERS {
            break;
        }
    }
    let b = account.balances;
    let reserved = t.quantity.saturating_mul(state.unit_reserve);
    Ok(Some(EscrowOut {
        reserved,
        open: state.quantity_open.saturating_mul(state.unit_reserve),
        held: b.debits_pending,
        spent: b.debits_posted.saturating_sub(released),
        released,
    }))
}

/// `true` when a ledger error means the studio's balance does not cover the reservation.
fn is_insufficient(e: &LedgerError) -> bool {
    match e {
        LedgerError::ExceedsCredits(_) => true,
        LedgerError::InBatch { source, .. } => is_insufficient(source),
        _ => false,
    }
}

fn check_metadata(m: &serde_json::Map<String, serde_json::Value>) -> ApiResult<()> {
    if m.len() > MAX_METADATA_PAIRS {
        return Err(ApiError::invalid(
            "metadata",
            format!("at most {MAX_METADATA_PAIRS} pairs"),
        ));
    }
    for (k, v) in m {
        let ok = !k.is_empty()
            && k.chars().count() <= MAX_METADATA_KEY
            && v.as_str()
                .is_some_and(|s| s.chars().count() <= MAX_METADATA_VALUE);
        if !ok {
            return Err(ApiError::invalid(
                "metadata",
                format!(
                    "keys must be 1..={MAX_METADATA_KEY} chars and values strings of at most {MAX_METADATA_VALUE} chars (key {k:?})"
                ),
            ));
        }
    }
    Ok(())
}

/// The checks that need no database: market, price band, deadline window, metadata.
pub fn check_request(
    state: &AppState,
    req: &CreateJob,
    now: DateTime<Utc>,
) -> ApiResult<crate::markets::Market> {
    let market = state
        .markets
        .get(&req.market)
        .ok_or_else(|| ApiError::invalid("market", format!("unknown market {:?}", req.market)))?
        .clone();
    market.compute("market")?;
    let c = &market.config;
    let (min, max) = (c.min_price, c.max_price);
    if req.limit_price < 1 || (req.limit_price as u64) < min || (req.limit_price as u64) > max {
        return Err(ApiError::invalid(
            "limit_price",
            format!(
                "limit_price must be {min}..={max} minor units per unit in {}",
                req.market
            ),
        ));
    }
    if req.deadline < now + Duration::seconds(MIN_DEADLINE_SECS) {
        return Err(ApiError::invalid(
            "deadline",
            format!("deadline must be at least {MIN_DEADLINE_SECS} s in the future"),
        ));
    }
    if req.deadline > now + Duration::days(MAX_DEADLINE_DAYS) {
        return Err(ApiError::invalid(
            "deadline",
            format!("deadline must be at most {MAX_DEADLINE_DAYS} days ahead"),
        ));
    }
    if let Some(m) = &req.metadata {
        check_metadata(m)?;
    }
    Ok(market)
}

/// The engine command that places a job's bid: `gtc` is a GTD order at the job's deadline (the
/// one builder the settlement worker's re-bids of failed units use too: a re-bid of units that
/// did fill waits until the deadline whatever the job's time in force), `ioc`/`fok` the engine's.
pub fn place_bid(
    engine_order_id: u64,
    engine_account: u64,
    req: &CreateJob,
    units: u64,
) -> CommandKind {
    let mut cmd = orders::place_bid_command(
        engine_order_id,
        engine_account,
        req.limit_price as u64,
        units,
        req.deadline.timestamp_millis().max(0) as u64,
    );
    if let CommandKind::Place(p) = &mut cmd {
        match req.time_in_force {
            TimeInForce::Gtc => {}
            TimeInForce::Ioc => p.tif = matching_core::TimeInForce::Ioc,
            TimeInForce::Fok => p.tif = matching_core::TimeInForce::Fok,
        }
    }
    cmd
}

/// The escrow figures of an order the moment its reservation is created: everything reserved is
/// open; nothing is held, spent or released yet (the escrow account has only been credited by
/// the reserve transfer). Equal to what [`escrow_of`] reads back in the same transaction, without
/// its three queries.
fn escrow_at_creation(state: &gridbook_ledger::settlement::OrderState) -> EscrowOut {
    EscrowOut {
        reserved: state.terms.quantity.saturating_mul(state.unit_reserve),
        open: state.quantity_open.saturating_mul(state.unit_reserve),
        held: 0,
        spent: 0,
        released: 0,
    }
}

/// Creates the job in the caller's transaction (see the module doc). Returns the stored row and
/// the escrow figures of its new order.
pub fn create_in_tx(
    conn: &mut PgConnection,
    principal: &Principal,
    market: &crate::markets::Market,
    req: &CreateJob,
) -> ApiResult<(JobRow, EscrowOut)> {
    let file = crate::files::load_owned(conn, principal.user_id, req.input_file).map_err(|e| {
        if e.status == StatusCode::NOT_FOUND {
            e.with_field("input_file")
        } else {
            e
        }
    })?;
    if file.purpose != "batch" {
        return Err(ApiError::invalid(
            "input_file",
            "input_file must be a `batch` file",
        ));
    }
    if file.market.as_deref() != Some(req.market.as_str()) {
        return Err(ApiError::invalid(
            "input_file",
            format!(
                "the file was validated for {}, not {}",
                file.market.as_deref().unwrap_or("no market"),
                req.market
            ),
        ));
    }
    let items = u64::try_from(file.lines).unwrap_or(0);
    if items == 0 {
        return Err(ApiError::invalid("input_file", "the file has no lines"));
    }
    let work = market.compute("market")?;
    let units = gridbook_wire::catalog::units_for(work, items);
    if units > market.config.max_qty {
        return Err(ApiError::invalid(
            "input_file",
            format!(
                "the file needs {units} units, more than the market's maximum order of {}",
                market.config.max_qty
            ),
        ));
    }
    let units_i = i64::try_from(units).map_err(ApiError::internal)?;
    let model = match req.model_id {
        Some(id) => Some(crate::models::for_job(conn, principal.user_id, id, &req.market)?),
        None => None,
    };
    let engine_order_id = orders::next_engine_order_id(conn)?;
    let order_id = Uuid::now_v7();
    let job_id = Uuid::now_v7();
    let fee_bps = market.config.fee_bps;
    let bid = Bid {
        order_id,
        studio_account: principal.account_id,
        quantity: units_i,
        limit_price: req.limit_price,
        fee_bps,
    };
    let reserved = escrow::reserve_bid(conn, &bid).map_err(|e| {
        if is_insufficient(&e) {
            let need = gridbook_ledger::settlement::unit_reserve(req.limit_price, fee_bps)
                .ok()
                .and_then(|u| u.checked_mul(units_i));
            ApiError::conflict(
                "insufficient_funds",
                match need {
                    Some(n) => format!(
                        "the job reserves {n} minor units ({units} units × (limit {} + fee {} bps)); your available balance is lower: add credits or lower the limit price",
                        req.limit_price, fee_bps
                    ),
                    None => "your available balance does not cover the job's reservation".into(),
                },
            )
            .with_field("limit_price")
        } else {
            e.into()
        }
    })?;
    orders::insert(
        conn,
        &MarketOrder {
            engine_order_id,
            market: req.market.clone(),
            side: Side::Bid,
            order_id,
            account_id: principal.account_id.0,
            node_id: None,
            job_id: Some(job_id),
            accepted_seq: None,
        },
    )?;
    let now = Utc::now();
    let row = JobRow {
        id: job_id,
        owner: principal.user_id,
        market: req.market.clone(),
        input_file: file.id,
        status: JobStatus::Queued,
        items: file.lines,
        items_per_unit: i32::try_from(work.items_per_unit).map_err(ApiError::internal)?,
        units: units_i,
        limit_price: req.limit_price,
        fee_bps: i32::try_from(fee_bps).map_err(ApiError::internal)?,
        deadline: req.deadline,
        order_id,
        engine_order_id: i64::try_from(engine_order_id).map_err(ApiError::internal)?,
        items_completed: 0,
        items_failed: 0,
        output_file: None,
        error_file: None,
        cancel_requested_at: None,
        created_at: now,
        updated_at: now,
        finished_at: None,
        metadata: req.metadata.clone().map(serde_json::Value::Object),
        model_id: model.as_ref().map(|m| m.id),
        model_sha256: model.map(|m| m.sha256),
        time_in_force: req.time_in_force.into(),
        reject_reason: None,
    };
    let row: JobRow = diesel::insert_into(jobs::table)
        .values(&row)
        .returning(JobRow::as_returning())
        .get_result(conn)?;
    let cmd = place_bid(engine_order_id, principal.engine_account, req, units);
    gridbook_ledger::events::enqueue_outbox(
        conn,
        &gridbook_wire::subjects::market_cmd(&req.market),
        &serde_json::to_value(cmd).map_err(ApiError::internal)?,
    )?;
    Ok((row, escrow_at_creation(&reserved)))
}

/// Submit a batch job: escrow reserved and the bid queued for the engine in one transaction.
#[utoipa::path(
    post, path = "/v1/jobs", tag = "jobs",
    request_body = CreateJob,
    params(("Idempotency-Key" = Option<String>, Header, description = "a resend with the same key and body returns the first response and creates nothing")),
    responses(
        (status = 201, body = JobOut),
        (status = 400, body = crate::error::ErrorResponse),
        (status = 409, description = "`insufficient_funds`, or the idempotency key was used for another request", body = crate::error::ErrorResponse),
    ),
    security(("api_key" = []), ("session" = []))
)]
pub async fn create(
    state: web::Data<AppState>,
    principal: Principal,
    idem: IdempotencyKey,
    body: web::Json<CreateJob>,
) -> ApiResult<HttpResponse> {
    principal.require_role(&[Role::Studio])?;
    principal.require_scope(Scope::Jobs)?;
    let req = body.into_inner();
    let market = check_request(&state, &req, Utc::now())?;
    let request = idempotency::Request::new(&principal, idem, "POST /v1/jobs", &req)?;
    let outcome = crate::db::run(&state.db, move |c| {
        idempotency::run(c, request, |c| {
            let (row, esc) = create_in_tx(c, &principal, &market, &req)?;
            tracing::info!(job = %row.id, user = %principal.user_id, market = %row.market, units = row.units, limit_price = row.limit_price, engine_order_id = row.engine_order_id, "job queued");
            Ok((StatusCode::CREATED, job_out(row, Some(esc), 0)))
        })
    })
    .await?;
    Ok(outcome.into_response())
}

fn load_job(conn: &mut PgConnection, owner: Uuid, id: Uuid, lock: bool) -> ApiResult<JobRow> {
    let q = jobs::table
        .find(id)
        .filter(jobs::owner.eq(owner))
        .select(JobRow::as_select());
    let row = if lock {
        q.for_update().first(conn).optional()?
    } else {
        q.first(conn).optional()?
    };
    row.ok_or_else(|| ApiError::not_found("job"))
}

/// The caller's jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(Page),
    responses((status = 200, body = JobList)), security(("api_key" = []), ("session" = [])))]
pub async fn list(
    state: web::Data<AppState>,
    principal: Principal,
    page: web::Query<Page>,
) -> ApiResult<HttpResponse> {
    principal.require_scope(Scope::Read)?;
    let limit = page.limit()?;
    let before = page.before;
    let owner = principal.user_id;
    let (rows, next_before, running) = crate::db::run(&state.db, move |c| {
        let (rows, next): (Vec<JobRow>, _) = crate::files::owned_page!(c, jobs, JobRow, owner, limit, before)?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let running = running_items(c, &ids)?;
        Ok((rows, next, running))
    })
    .await?;
    Ok(HttpResponse::Ok().json(JobList {
        data: rows.into_iter().map(|r| { let n = running.get(&r.id).copied().unwrap_or(0); job_out(r, None, n) }).collect(),
        next_before,
    }))
}

/// One of the caller's jobs, with request counts, progress and escrow figures.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    responses((status = 200, body = JobOut), (status = 404, body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn get(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    principal.require_scope(Scope::Read)?;
    let (owner, id) = (principal.user_id, id.into_inner());
    let out = crate::db::run(&state.db, move |c| {
        let row = load_job(c, owner, id, false)?;
        let esc = escrow_of(c, row.order_id)?;
        job_out_in(c, row, esc)
    })
    .await?;
    Ok(HttpResponse::Ok().json(out))
}

/// One assignment of a job: which node runs (or ran) which of its units, at what price, and how
/// it ended. A node is named by its id, region and GPU model, never by its owner.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobAssignmentOut {
    pub id: Uuid,
    pub node_id: Uuid,
    /// As the node's provider registered it.
    pub node_region: String,
    pub node_gpu_model: String,
    /// The job's units `unit_start .. unit_start + units`.
    pub unit_start: i64,
    pub units: i64,
    /// The input lines `item_start .. item_start + item_count` (0-based).
    pub item_start: i32,
    pub item_count: i32,
    /// The trade price, minor units per unit.
    pub price: i64,
    /// `assigned` (the node runs it), `verifying`, `completed` (verified and paid) or `failed`
    /// (its units re-offered or refunded: `GET /v1/jobs/{id}/verifications` says why).
    pub status: String,
    pub deadline: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct JobAssignmentList {
    /// Oldest first; at most [`MAX_JOB_ASSIGNMENTS`].
    pub data: Vec<JobAssignmentOut>,
    /// More assignments exist than were returned.
    pub truncated: bool,
}

/// Most assignments `GET /v1/jobs/{id}/assignments` returns (a job has at most the market's
/// `max_qty` units; re-offers after failures add a few more).
pub const MAX_JOB_ASSIGNMENTS: i64 = 1_000;

/// The assignments of one of the caller's jobs: its units as the book split them over
/// providers' nodes, with prices and outcomes.
#[utoipa::path(get, path = "/v1/jobs/{id}/assignments", tag = "jobs",
    responses((status = 200, body = JobAssignmentList), (status = 404, body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn assignments(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    use gridbook_db::schema::{job_assignments as a, nodes};
    principal.require_scope(Scope::Read)?;
    let (owner, id) = (principal.user_id, id.into_inner());
    let (rows, truncated) = crate::db::run(&state.db, move |c| {
        load_job(c, owner, id, false)?;
        type Row = (Uuid, Uuid, String, String, i64, i64, i32, i32, i64, String, DateTime<Utc>, DateTime<Utc>, DateTime<Utc>);
        let mut rows: Vec<Row> = a::table
            .inner_join(nodes::table)
            .filter(a::job_id.eq(id))
            .order((a::created_at.asc(), a::id.asc()))
            .limit(MAX_JOB_ASSIGNMENTS + 1)
            .select((a::id, a::node_id, nodes::region, nodes::gpu_model, a::unit_start, a::units, a::item_start, a::item_count,
                a::price, a::status, a::deadline, a::created_at, a::updated_at))
            .load(c)?;
        let truncated = rows.len() as i64 > MAX_JOB_ASSIGNMENTS;
        rows.truncate(MAX_JOB_ASSIGNMENTS as usize);
        Ok((rows, truncated))
    })
    .await?;
    let data = rows
        .into_iter()
        .map(|(id, node_id, node_region, node_gpu_model, unit_start, units, item_start, item_count, price, status, deadline, created_at, updated_at)| {
            JobAssignmentOut { id, node_id, node_region, node_gpu_model, unit_start, units, item_start, item_count, price, status, deadline, created_at, updated_at }
        })
        .collect();
    Ok(HttpResponse::Ok().json(JobAssignmentList { data, truncated }))
}

/// What a studio may change on a waiting job: its limit price, upwards only.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmendJob {
    /// The new limit, minor units per unit: above the current one (equal: nothing changes) and
    /// within the market's min/max price.
    pub limit_price: i64,
}

/// Raise a waiting job's limit price. In ONE transaction: the escrow order's reservation grows
/// by `open units × (unit_reserve(new) − unit_reserve(old))`, a further hold from the studio's
/// available balance (`escrow::raise_limit`), the job's `limit_price`, and the engine `Amend`
/// (price change) in the outbox.
///
/// Why the database changes before the engine does: a reservation above what the engine's
/// order can take is always safe (a fill at ≤ the old limit releases the larger improvement; a
/// cancel or expiry releases the open units at the new reserve), while a fill at the new price
/// against the old reservation would be refused. So the raise is committed first and the
/// engine's `amended` event finds the new limit. A price change loses time priority on the book
/// (the engine re-matches the order as a taker at the new price and rests the rest at the back
/// of its new level). If the engine refuses the amend (the order closed meanwhile, the book is
/// full), the extra hold comes back with the order's next fill, cancel or expiry.
///
/// Refused: lowering (400 `limit_price`), outside the market's bounds (400), a job that is not
/// waiting on the book — finished, cancel requested, IOC/FOK, no open unit, or with re-bids of
/// failed units open (409 `not_amendable`), and a raise the balance does not cover (409
/// `insufficient_funds` naming `limit_price`; nothing changes).
#[utoipa::path(patch, path = "/v1/jobs/{id}", tag = "jobs",
    request_body = AmendJob,
    responses((status = 200, body = JobOut),
        (status = 400, description = "`limit_price` lower than the current one or outside the market's bounds", body = crate::error::ErrorResponse),
        (status = 404, body = crate::error::ErrorResponse),
        (status = 409, description = "`not_amendable` or `insufficient_funds`", body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn amend(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
    body: web::Json<AmendJob>,
) -> ApiResult<HttpResponse> {
    principal.require_role(&[Role::Studio])?;
    principal.require_scope(Scope::Jobs)?;
    let id = id.into_inner();
    let new_limit = body.into_inner().limit_price;
    let markets = state.markets.clone();
    let out = crate::db::run(&state.db, move |c| {
        c.transaction(|c| {
            let row = load_job(c, principal.user_id, id, true)?;
            let market = markets.get(&row.market).ok_or_else(|| {
                ApiError::internal(format!("job {id} names unknown market {}", row.market))
            })?;
            let (min, max) = (market.config.min_price, market.config.max_price);
            if new_limit < 1 || (new_limit as u64) < min || (new_limit as u64) > max {
                return Err(ApiError::invalid(
                    "limit_price",
                    format!("limit_price must be {min}..={max} minor units per unit in {}", row.market),
                ));
            }
            if new_limit < row.limit_price {
                return Err(ApiError::invalid(
                    "limit_price",
                    format!(
                        "limit_price can only be raised (current {}); to pay less, cancel the job",
                        row.limit_price
                    ),
                ));
            }
            if new_limit == row.limit_price {
                let esc = escrow_of(c, row.order_id)?;
                return job_out_in(c, row, esc);
            }
            let not_amendable = |why: String| {
                ApiError::conflict("not_amendable", why).with_field("limit_price")
            };
            if !matches!(row.status, JobStatus::Queued | JobStatus::Running)
                || row.cancel_requested_at.is_some()
            {
                return Err(not_amendable(format!(
                    "the job is {}{}; only a queued or running job's waiting units can be repriced",
                    row.status,
                    if row.cancel_requested_at.is_some() { " (cancel requested)" } else { "" }
                )));
            }
            if row.time_in_force != JobTimeInForce::Gtc {
                return Err(not_amendable(format!(
                    "the job is {}: its bid never waits on the book",
                    row.time_in_force
                )));
            }
            // One engine order per open reservation: the engine's `amended` event states the
            // order's remaining lots, which the worker holds against the escrow's open units.
            for rebid in orders::rebids_of_job(c, row.id)? {
                if orders::rebid_units_left(c, rebid)?.unwrap_or(0) > 0 {
                    return Err(not_amendable(
                        "failed units of the job are being offered again; raise the limit once they are taken".into(),
                    ));
                }
            }
            let (before, after) = escrow::raise_limit(c, row.order_id, new_limit).map_err(|e| {
                if is_insufficient(&e) {
                    ApiError::conflict(
                        "insufficient_funds",
                        format!(
                            "raising the limit to {new_limit} holds {} more minor units per waiting unit; your available balance is lower",
                            e_extra(row.limit_price, new_limit, row.fee_bps)
                        ),
                    )
                    .with_field("limit_price")
                } else {
                    e.into()
                }
            })?;
            if before.quantity_open == 0 {
                return Err(not_amendable("the job has no unit waiting on the book".into()));
            }
            let now = Utc::now();
            let row: JobRow = diesel::update(jobs::table.find(id))
                .set((jobs::limit_price.eq(new_limit), jobs::updated_at.eq(now)))
                .returning(JobRow::as_returning())
                .get_result(c)?;
            let cmd = CommandKind::Amend(matching_core::Amend {
                id: OrderId(u64::try_from(row.engine_order_id).map_err(ApiError::internal)?),
                account: matching_core::AccountId(principal.engine_account),
                price: Some(new_limit as u64),
                qty: None,
            });
            gridbook_ledger::events::enqueue_outbox(
                c,
                &gridbook_wire::subjects::market_cmd(&row.market),
                &serde_json::to_value(cmd).map_err(ApiError::internal)?,
            )?;
            tracing::info!(
                job = %row.id, user = %principal.user_id, engine_order_id = row.engine_order_id,
                old_limit = before.terms.limit_price, new_limit, open_units = before.quantity_open,
                extra_hold = before.quantity_open * (after.unit_reserve - before.unit_reserve),
                "job limit raised"
            );
            let esc = escrow_of(c, row.order_id)?;
            job_out_in(c, row, esc)
        })
    })
    .await?;
    Ok(HttpResponse::Ok().json(out))
}

/// The per-unit difference a raise holds (for the error message; per open unit).
fn e_extra(old: i64, new: i64, fee_bps: i32) -> String {
    let u = |p| gridbook_ledger::settlement::unit_reserve(p, fee_bps.max(0) as u32).ok();
    match (u(old), u(new)) {
        (Some(a), Some(b)) => (b - a).to_string(),
        _ => "more".into(),
    }
}

/// Cancel a job that is queued or running (see the module doc for what happens to running
/// assignments).
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    responses((status = 200, body = JobOut), (status = 404, body = crate::error::ErrorResponse),
        (status = 409, description = "`not_cancellable`: the job already finished", body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn cancel(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    principal.require_role(&[Role::Studio])?;
    principal.require_scope(Scope::Jobs)?;
    let id = id.into_inner();
    let out = crate::db::run(&state.db, move |c| {
        c.transaction(|c| {
            let row = load_job(c, principal.user_id, id, true)?;
            if row.cancel_requested_at.is_some() {
                let esc = escrow_of(c, row.order_id)?;
                return job_out_in(c, row, esc);
            }
            if !matches!(
                row.status,
                JobStatus::Queued | JobStatus::Running | JobStatus::Validating
            ) {
                return Err(ApiError::conflict(
                    "not_cancellable",
                    format!("the job is {}; only queued or running jobs can be cancelled", row.status),
                ));
            }
            let now = Utc::now();
            let row: JobRow = diesel::update(jobs::table.find(id))
                .set((jobs::cancel_requested_at.eq(now), jobs::updated_at.eq(now)))
                .returning(JobRow::as_returning())
                .get_result(c)?;
            let cmd = CommandKind::Cancel(Cancel {
                id: OrderId(u64::try_from(row.engine_order_id).map_err(ApiError::internal)?),
                account: matching_core::AccountId(principal.engine_account),
            });
            gridbook_ledger::events::enqueue_outbox(
                c,
                &gridbook_wire::subjects::market_cmd(&row.market),
                &serde_json::to_value(cmd).map_err(ApiError::internal)?,
            )?;
            // Re-bids of failed units (the settlement worker's) are the job's bid too; one
            // already closed answers with a rejection the worker ignores.
            for rebid in orders::rebids_of_job(c, row.id)? {
                let cmd = CommandKind::Cancel(Cancel {
                    id: OrderId(rebid),
                    account: matching_core::AccountId(principal.engine_account),
                });
                gridbook_ledger::events::enqueue_outbox(
                    c,
                    &gridbook_wire::subjects::market_cmd(&row.market),
                    &serde_json::to_value(cmd).map_err(ApiError::internal)?,
                )?;
            }
            tracing::info!(job = %row.id, user = %principal.user_id, engine_order_id = row.engine_order_id, "job cancel requested");
            let esc = escrow_of(c, row.order_id)?;
            job_out_in(c, row, esc)
        })
    })
    .await?;
    Ok(HttpResponse::Ok().json(out))
}

async fn job_file(
    state: &AppState,
    principal: Principal,
    id: Uuid,
    which: fn(&JobRow) -> Option<Uuid>,
    what: &'static str,
) -> ApiResult<HttpResponse> {
    principal.require_scope(Scope::Read)?;
    let owner = principal.user_id;
    let file = crate::db::run(&state.db, move |c| {
        let job = load_job(c, owner, id, false)?;
        let Some(fid) = which(&job) else {
            // A finished job without the file has nothing to put in it (no failed item, or
            // no output at all): an empty file, not "not ready" forever.
            if job.status.is_terminal() {
                return Ok(None);
            }
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_ready",
                format!("the job's {what} file is not ready (status {})", job.status),
            ));
        };
        Ok(Some(
            files::table
                .find(fid)
                .select(crate::files::FileRow::as_select())
                .first(c)?,
        ))
    })
    .await?;
    match file {
        Some(file) => crate::files::stream_object(state, &file).await,
        None => Ok(HttpResponse::Ok().content_type("application/jsonl").finish()),
    }
}

/// The output file (JSONL keyed by `custom_id`) once the job has one.
#[utoipa::path(get, path = "/v1/jobs/{id}/output", tag = "jobs",
    responses((status = 200, content_type = "application/jsonl", body = String),
        (status = 404, description = "`not_found`, or `not_ready` (the job has not finished; a finished job without such a file answers an empty body)", body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn output(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    job_file(
        &state,
        principal,
        id.into_inner(),
        |j| j.output_file,
        "output",
    )
    .await
}

/// The error file (JSONL, one line per failed item) once the job has one.
#[utoipa::path(get, path = "/v1/jobs/{id}/errors", tag = "jobs",
    responses((status = 200, content_type = "application/jsonl", body = String),
        (status = 404, description = "`not_found`, or `not_ready` (the job has not finished; a finished job without such a file answers an empty body)", body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn errors(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    job_file(
        &state,
        principal,
        id.into_inner(),
        |j| j.error_file,
        "error",
    )
    .await
}

/// Largest output file the image route reads to find one image.
pub const MAX_IMAGE_SCAN_BYTES: usize = 512 << 20;

/// One image of a render job's output, by `custom_id`, as `image/png` (the output line's
/// `image_png_b64`, decoded).
#[utoipa::path(get, path = "/v1/jobs/{id}/images/{custom_id}", tag = "jobs",
    params(("id" = Uuid, Path), ("custom_id" = String, Path)),
    responses((status = 200, content_type = "image/png", body = Vec<u8>),
        (status = 404, description = "`not_found` (job, or no image for that custom_id), or `not_ready`", body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn image(
    state: web::Data<AppState>,
    principal: Principal,
    path: web::Path<(Uuid, String)>,
) -> ApiResult<HttpResponse> {
    use base64::Engine as _;
    use tokio::io::AsyncReadExt as _;
    principal.require_scope(Scope::Read)?;
    let (id, custom_id) = path.into_inner();
    let owner = principal.user_id;
    let file = crate::db::run(&state.db, move |c| {
        let job = load_job(c, owner, id, false)?;
        let Some(fid) = job.output_file else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_ready",
                format!("the job's output file is not ready (status {})", job.status),
            ));
        };
        Ok(files::table
            .find(fid)
            .select(crate::files::FileRow::as_select())
            .first(c)?)
    })
    .await?;
    if file.bytes as usize > MAX_IMAGE_SCAN_BYTES {
        return Err(ApiError::unprocessable(
            "output_too_large",
            "the output file is too large to serve single images; download /output",
        ));
    }
    let store = crate::files::bucket(&state).await?;
    let mut object = store.get(&file.sha256).await.map_err(ApiError::unavailable)?;
    let mut text = Vec::with_capacity(file.bytes.max(0) as usize);
    object
        .read_to_end(&mut text)
        .await
        .map_err(ApiError::unavailable)?;
    let png = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .find(|v| v.get("custom_id").and_then(|c| c.as_str()) == Some(custom_id.as_str()))
        .and_then(|v| {
            let b64 = v.get("image_png_b64")?.as_str()?.to_owned();
            base64::engine::general_purpose::STANDARD.decode(b64).ok()
        })
        .ok_or_else(|| ApiError::not_found("image"))?;
    Ok(HttpResponse::Ok().content_type("image/png").body(png))
}

/// The OpenAPI paths of this module (merged by `openapi::document`).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(create, list, get, assignments, amend, cancel, output, errors, image),
    tags((name = "jobs", description = "batch jobs: escrowed bids on a market, progress, cancel, output"))
)]
pub struct ApiDoc;
