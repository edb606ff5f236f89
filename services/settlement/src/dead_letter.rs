//! Dead letters: the engine events and result messages the worker refuses, recorded in
//! `dead_letters` in the transaction that records them in `processed_events` — so each is
//! recorded exactly once, the message is acked (never redelivered for ever, never dropped
//! silently), and what was done about the escrow it touched is written beside it.
//!
//! Two kinds: one refused event of a decodable message (`settle` writes it, its
//! `processed_events` row is the event's `<market>.<seq>`), or a whole message that cannot be
//! read (undecodable, an invalid market symbol, a result nobody holds: [`record_message`], its
//! row `<stream>#<stream seq>`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use gridbook_ledger::events;
use tracing::warn;
use uuid::Uuid;

use crate::error::Result;
use crate::schema::dead_letters;
use gridbook_db::status::{DeadLetterEscrow, DeadLetterReason};

/// Where a message came from: its JetStream stream, subject and stream sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub stream: String,
    pub subject: String,
    /// `None` only for a message that did not come through a JetStream consumer (tests).
    pub stream_seq: Option<u64>,
}

impl Source {
    /// The `processed_events.event_id` of the whole message: `<stream>#<stream seq>` (a
    /// market symbol never holds `#`, so it never meets an event's `<market>.<seq>`).
    pub fn message_id(&self, payload: &[u8]) -> String {
        match self.stream_seq {
            Some(seq) => format!("{}#{seq}", self.stream),
            None => {
                use sha2::Digest;
                format!(
                    "{}#sha256:{}",
                    self.stream,
                    hex::encode(sha2::Sha256::digest(payload))
                )
            }
        }
    }
}

/// One dead letter to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    pub source: Source,
    /// The refused event (`None`: the whole message).
    pub event_seq: Option<u64>,
    pub market: Option<String>,
    pub reason: DeadLetterReason,
    pub detail: String,
    /// The message bytes as received, or the refused event as JSON.
    pub payload: Vec<u8>,
    pub escrow: Escrow,
}

/// What was done about the escrow: `Released` = `units` units from `unit_start` of escrow
/// order `order_id` (of job `job_id`) went back to the studio.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Escrow {
    pub order_id: Option<Uuid>,
    pub job_id: Option<Uuid>,
    pub unit_start: Option<u64>,
    pub units: u64,
}

impl Escrow {
    pub fn action(&self) -> DeadLetterEscrow {
        if self.units > 0 && self.order_id.is_some() && self.unit_start.is_some() {
            DeadLetterEscrow::Released
        } else {
            DeadLetterEscrow::Untouched
        }
    }
}

/// One row of `dead_letters`, as read back.
#[derive(Queryable, Selectable, Clone, Debug, PartialEq, serde::Serialize)]
#[diesel(table_name = dead_letters)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct DeadLetterRow {
    pub id: Uuid,
    pub consumer: String,
    pub event_id: String,
    pub stream: String,
    pub subject: String,
    pub stream_seq: Option<i64>,
    pub event_seq: Option<i64>,
    pub market: Option<String>,
    pub reason: DeadLetterReason,
    pub detail: String,
    pub payload: Vec<u8>,
    pub escrow_action: DeadLetterEscrow,
    pub order_id: Option<Uuid>,
    pub job_id: Option<Uuid>,
    pub unit_start: Option<i64>,
    pub units: i64,
    pub created_at: DateTime<Utc>,
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Inserts the dead letter of `event_id`, whose `processed_events` row the caller recorded in
/// this transaction (a foreign key holds them together), and logs it as a warning: the reason,
/// the source and the escrow action, never the payload.
pub fn insert(
    conn: &mut PgConnection,
    consumer: &str,
    event_id: &str,
    d: &DeadLetter,
) -> Result<()> {
    let action = d.escrow.action();
    diesel::insert_into(dead_letters::table)
        .values((
            dead_letters::id.eq(Uuid::now_v7()),
            dead_letters::consumer.eq(consumer),
            dead_letters::event_id.eq(event_id),
            dead_letters::stream.eq(&d.source.stream),
            dead_letters::subject.eq(&d.source.subject),
            dead_letters::stream_seq.eq(d.source.stream_seq.map(i64_of)),
            dead_letters::event_seq.eq(d.event_seq.map(i64_of)),
            dead_letters::market.eq(&d.market),
            dead_letters::reason.eq(d.reason),
            dead_letters::detail.eq(&d.detail),
            dead_letters::payload.eq(&d.payload),
            dead_letters::escrow_action.eq(action),
            dead_letters::order_id.eq(d.escrow.order_id),
            dead_letters::job_id.eq(d.escrow.job_id),
            dead_letters::unit_start.eq(d.escrow.unit_start.map(i64_of)),
            dead_letters::units.eq(i64_of(d.escrow.units)),
        ))
        .execute(conn)?;
    warn!(
        reason = d.reason.as_str(),
        consumer,
        event.id = event_id,
        stream = %d.source.stream,
        subject = %d.source.subject,
        stream_seq = ?d.source.stream_seq,
        event_seq = ?d.event_seq,
        escrow = action.as_str(),
        order.id = ?d.escrow.order_id,
        job.id = ?d.escrow.job_id,
        units = d.escrow.units,
        detail = %d.detail,
        "refused: recorded as a dead letter and acked"
    );
    Ok(())
}

/// Records a whole refused message (nothing of it applied, no escrow touched): its
/// `processed_events` row `<stream>#<stream seq>` and its dead letter, in one transaction.
/// `false` when it was recorded before (a redelivery): nothing new.
pub fn record_message(
    conn: &mut PgConnection,
    consumer: &str,
    source: &Source,
    reason: DeadLetterReason,
    detail: &str,
    payload: &[u8],
) -> Result<bool> {
    conn.transaction(|c| {
        let event_id = source.message_id(payload);
        if !events::record_processed_event(c, consumer, &event_id)? {
            return Ok(false);
        }
        insert(
            c,
            consumer,
            &event_id,
            &DeadLetter {
                source: source.clone(),
                event_seq: None,
                market: None,
                reason,
                detail: detail.to_owned(),
                payload: payload.to_vec(),
                escrow: Escrow::default(),
            },
        )?;
        Ok(true)
    })
}

/// The newest dead letters first (at most `limit`).
pub fn list(conn: &mut PgConnection, limit: i64) -> Result<Vec<DeadLetterRow>> {
    Ok(dead_letters::table
        .order((dead_letters::created_at.desc(), dead_letters::id.desc()))
        .limit(limit)
        .select(DeadLetterRow::as_select())
        .load(conn)?)
}

/// The unit ranges `(unit_start, units)` of a job that dead letters released to the studio.
pub fn released_units_of_job(conn: &mut PgConnection, job: Uuid) -> Result<Vec<(u64, u64)>> {
    let rows: Vec<(Option<i64>, i64)> = dead_letters::table
        .filter(dead_letters::job_id.eq(job))
        .filter(dead_letters::escrow_action.eq(DeadLetterEscrow::Released))
        .select((dead_letters::unit_start, dead_letters::units))
        .load(conn)?;
    Ok(rows
        .into_iter()
        .filter_map(|(s, n)| Some((u64::try_from(s?).ok()?, u64::try_from(n).ok()?)))
        .collect())
}
