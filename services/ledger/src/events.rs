//! Exactly-once consumption (`processed_events`) and the transactional outbox. Call these with the
//! connection of the transaction that holds the ledger effect.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use uuid::Uuid;

use crate::error::Result;
use crate::schema::{outbox, processed_events};

/// Records that `consumer` processed `event_id`; `true` the first time, `false` for a duplicate
/// (then roll back or skip the effect).
pub fn record_processed_event(
    conn: &mut PgConnection,
    consumer: &str,
    event_id: &str,
) -> Result<bool> {
    let n = diesel::insert_into(processed_events::table)
        .values((
            processed_events::consumer.eq(consumer),
            processed_events::event_id.eq(event_id),
        ))
        .on_conflict_do_nothing()
        .execute(conn)?;
    Ok(n == 1)
}

#[derive(Queryable, Selectable, Clone, Debug, PartialEq, serde::Serialize)]
#[diesel(table_name = outbox)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct OutboxMessage {
    /// Publish with `Nats-Msg-Id` = this id.
    pub id: Uuid,
    pub subject: String,
    pub payload: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// Queues a message in the caller's transaction; returns its id.
pub fn enqueue_outbox(
    conn: &mut PgConnection,
    subject: &str,
    payload: &serde_json::Value,
) -> Result<Uuid> {
    let id = Uuid::now_v7();
    diesel::insert_into(outbox::table)
        .values((
            outbox::id.eq(id),
            outbox::subject.eq(subject),
            outbox::payload.eq(payload),
        ))
        .execute(conn)?;
    Ok(id)
}

/// The oldest unpublished messages (at most `limit`).
pub fn fetch_unpublished(conn: &mut PgConnection, limit: i64) -> Result<Vec<OutboxMessage>> {
    Ok(outbox::table
        .filter(outbox::published_at.is_null())
        .order((outbox::created_at.asc(), outbox::id.asc()))
        .limit(limit)
        .select(OutboxMessage::as_select())
        .load(conn)?)
}

/// Marks messages published (after JetStream acknowledged them); returns how many changed.
pub fn mark_published(conn: &mut PgConnection, ids: &[Uuid]) -> Result<usize> {
    Ok(diesel::update(
        outbox::table
            .filter(outbox::id.eq_any(ids))
            .filter(outbox::published_at.is_null()),
    )
    .set(outbox::published_at.eq(diesel::dsl::now))
    .execute(conn)?)
}
