//! Row types that more than one crate reads or writes.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use crate::schema::jobs;
use crate::status::JobStatus;

/// One row of `jobs`: a studio's batch job (the API creates it; the settlement worker moves it
/// through its states and fills in the counts and files).
#[derive(Queryable, Selectable, Insertable, Clone, Debug, PartialEq)]
#[diesel(table_name = jobs)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct JobRow {
    pub id: Uuid,
    pub owner: Uuid,
    pub market: String,
    pub input_file: Uuid,
    pub status: JobStatus,
    /// Input lines.
    pub items: i32,
    /// Input lines one unit of the market covers.
    pub items_per_unit: i32,
    pub units: i64,
    /// Minor units per unit.
    pub limit_price: i64,
    pub fee_bps: i32,
    pub deadline: DateTime<Utc>,
    /// The escrow order of the job's bid.
    pub order_id: Uuid,
    pub engine_order_id: i64,
    pub items_completed: i32,
    pub items_failed: i32,
    pub output_file: Option<Uuid>,
    pub error_file: Option<Uuid>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub metadata: Option<serde_json::Value>,
    /// The studio's private model the job runs (`models`), and its sha256 pinned at submission.
    pub model_id: Option<Uuid>,
    pub model_sha256: Option<String>,
    /// How long the job's bid may wait (`gtc`: until the deadline; `ioc`; `fok`).
    pub time_in_force: crate::status::JobTimeInForce,
    /// The engine's reason when it rejected the job's own bid (e.g. `fok_unfillable`).
    pub reject_reason: Option<String>,
}

/// One row of `models`: a studio's private model, sealed in the files store (object `object`)
/// under a data key that only the KEK unwraps (`wrapped_key`); see `gridbook-sealed`.
#[derive(Queryable, Selectable, Insertable, Clone, Debug, PartialEq)]
#[diesel(table_name = crate::schema::models)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct ModelRow {
    pub id: Uuid,
    pub owner: Uuid,
    pub market: String,
    pub name: String,
    /// sha256 of the plaintext `.onnx`.
    pub sha256: String,
    pub bytes: i64,
    pub object: String,
    pub nonce: Vec<u8>,
    pub wrapped_key: Vec<u8>,
    pub created_at: DateTime<Utc>,
}
