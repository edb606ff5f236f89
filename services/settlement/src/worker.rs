//! The NATS edge: the durable pull consumer that settles engine events, and the outbox
//! publisher.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind, Context,
    consumer::{PullConsumer, pull},
    message::PublishMessage,
};
use futures::StreamExt;
use gridbook_ledger::events;
use gridbook_wire::{market::EventMessage, streams, subjects, valid_market_symbol};
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use crate::Settings;
use crate::db::Db;
use crate::dead_letter::{self, Source};
use crate::decide::DeadLetterReason;
use crate::decide::CONSUMER;
use crate::error::{Result, SettlementError};
use crate::settle::settle_message;

/// In-process retries of one message before it is nak'ed for later redelivery.
const MESSAGE_RETRIES: u32 = 8;

/// Makes sure the streams exist. `GRIDBOOK_EVENTS` belongs to the engine: it is created with the
/// engine's default configuration only when missing and never updated here (so a differently
/// configured engine is not overridden). `GRIDBOOK_ASSIGNMENTS` belongs to this worker and is
/// created or updated.
pub async fn ensure_streams(js: &Context, replicas: usize) -> Result<()> {
    streams::patiently(streams::EVENTS, || {
        js.get_or_create_stream(streams::config(streams::EVENTS, subjects::ALL_MARKET_EVTS, streams::DEFAULT_MAX_AGE, replicas))
    })
    .await
    .map_err(SettlementError::Nats)?;
    streams::ensure_node_streams(js, replicas).await.map_err(SettlementError::Nats)?;
    Ok(())
}

/// Consumes engine events until the subscription fails (the caller restarts it).
pub async fn run_consumer(settings: &Settings, js: &Context, wake: &Notify) -> Result<()> {
    let events = js
        .get_stream(streams::EVENTS)
        .await
        .map_err(SettlementError::nats)?;
    let consumer: PullConsumer = events
        .get_or_create_consumer(
            &settings.consumer,
            pull::Config {
                durable_name: Some(settings.consumer.clone()),
                filter_subject: settings.filter_subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(settings.ack_wait_secs.max(1)),
                max_deliver: settings.max_deliver,
                ..Default::default()
            },
        )
        .await
        .map_err(SettlementError::nats)?;
    await_earlier_deliveries(&consumer).await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(settings.fetch_batch)
        .messages()
        .await
        .map_err(SettlementError::nats)?;
    let mut db = Db::new(&settings.database_url);
    let canaries = Arc::new(settings.canary_policy()?);
    info!(consumer = %settings.consumer, filter = %settings.filter_subject, "settling engine events");
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(SettlementError::nats)?;
        handle(&mut db, &canaries, msg, settings.max_deliver, wake).await?;
    }
    Err(SettlementError::Nats("event subscription ended".into()))
}

/// Waits, before this process pulls, until messages delivered earlier and not acked are due
/// for redelivery. They were delivered to a consumer that is gone — a worker killed mid-batch,
/// the previous lease holder, or this process's last subscription — and JetStream gives them
/// out again only after the consumer's `ack_wait`; a pull before then would get (and settle) a
/// market's later events first. Once they are due, JetStream redelivers them ahead of anything
/// new, in stream order. Nothing pending (the usual start): no wait.
pub async fn await_earlier_deliveries(consumer: &PullConsumer) -> Result<()> {
    let info = consumer.get_info().await.map_err(SettlementError::nats)?;
    if info.num_ack_pending == 0 {
        return Ok(());
    }
    let wait = info.config.ack_wait + Duration::from_secs(1);
    info!(consumer = %info.name, pending = info.num_ack_pending, wait_ms = wait.as_millis() as u64,
        "messages delivered to an earlier consumer are not acked: waiting for their redelivery so each market's events settle in order");
    tokio::time::sleep(wait).await;
    Ok(())
}

async fn handle(
    db: &mut Db,
    canaries: &Arc<crate::canary::CanaryPolicy>,
    msg: jetstream::Message,
    max_deliver: i64,
    wake: &Notify,
) -> Result<()> {
    let info = msg.info().ok();
    let delivered = info.as_ref().map(|i| i.delivered).unwrap_or(1);
    let source = Source {
        stream: info
            .as_ref()
            .map(|i| i.stream.to_owned())
            .unwrap_or_else(|| streams::EVENTS.to_owned()),
        subject: msg.subject.to_string(),
        stream_seq: info.as_ref().map(|i| i.stream_sequence),
    };
    let frames = match serde_json::from_slice::<EventMessage>(&msg.payload) {
        Ok(f) if f.iter().all(|f| valid_market_symbol(&f.market)) => f,
        Ok(_) => {
            let why = "event message with an invalid market symbol".to_owned();
            return dead_letter_message(db, &msg, source, DeadLetterReason::Malformed, why).await;
        }
        Err(e) => {
            let why = format!("undecodable event message: {e}");
            return dead_letter_message(db, &msg, source, DeadLetterReason::Undecodable, why).await;
        }
    };
    let first = frames.first().map(|f| (f.market.clone(), f.first));
    let frames = Arc::new(frames);
    let source = Arc::new(source);
    let mut backoff = Duration::from_millis(100);
    for attempt in 1..=MESSAGE_RETRIES {
        let (f, s, p) = (frames.clone(), source.clone(), canaries.clone());
        match db.with(move |c| settle_message(c, CONSUMER, &s, &f, &p)).await {
            Ok(out) => {
                if out.assignments > 0 || out.refused > 0 {
                    wake.notify_one();
                }
                debug!(subject = %msg.subject, applied = out.applied, duplicates = out.duplicates,
                    refused = out.refused, assignments = out.assignments, "event message settled");
                return msg.ack().await.map_err(SettlementError::nats);
            }
            Err(e) => {
                warn!(subject = %msg.subject, attempt, error = %e, "settling an event message failed; retrying");
                let _ = msg.ack_with(AckKind::Progress).await;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    if delivered >= max_deliver {
        error!(subject = %msg.subject, ?first, delivered,
            "event message failed on its last delivery; it will not be redelivered and must be replayed by hand");
    }
    msg.ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
        .await
        .map_err(SettlementError::nats)
}

/// Records a message nothing of which can be applied as a dead letter (once: a redelivery
/// finds it recorded), then acks it. A database failure naks it for a later redelivery, so it
/// is never dropped unrecorded.
async fn dead_letter_message(
    db: &mut Db,
    msg: &jetstream::Message,
    source: Source,
    reason: DeadLetterReason,
    why: String,
) -> Result<()> {
    let payload = msg.payload.to_vec();
    let recorded = db
        .with(move |c| dead_letter::record_message(c, CONSUMER, &source, reason, &why, &payload))
        .await;
    match recorded {
        Ok(first) => {
            if !first {
                debug!(subject = %msg.subject, "refused message redelivered; already recorded");
            }
            msg.ack().await.map_err(SettlementError::nats)
        }
        Err(e) => {
            warn!(subject = %msg.subject, error = %e, "recording a dead letter failed; redelivering later");
            msg.ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await
                .map_err(SettlementError::nats)
        }
    }
}

/// Publishes up to `batch` unpublished outbox rows, oldest first, with `Nats-Msg-Id` = the row
/// id, and marks those JetStream acknowledged. Stops at the first failure (retried later; a
/// republish inside the duplicate window is dropped by JetStream). Returns how many it published.
pub async fn publish_outbox_once(db: &mut Db, js: &Context, batch: i64) -> Result<usize> {
    let rows = db
        .with(move |c| Ok(events::fetch_unpublished(c, batch)?))
        .await?;
    let mut acks = Vec::with_capacity(rows.len());
    for row in &rows {
        let payload = serde_json::to_vec(&row.payload)?;
        let publish = PublishMessage::build()
            .payload(payload.into())
            .message_id(row.id.to_string());
        match js.send_publish(row.subject.clone(), publish).await {
            Ok(ack) => acks.push((row.id, ack)),
            Err(e) => {
                warn!(outbox.id = %row.id, subject = %row.subject, error = %e, "outbox publish failed; will retry");
                break;
            }
        }
    }
    let mut done = Vec::with_capacity(acks.len());
    for (id, ack) in acks {
        match ack.await {
            Ok(_) => done.push(id),
            Err(e) => {
                warn!(outbox.id = %id, error = %e, "outbox publish not acknowledged; will retry");
                break;
            }
        }
    }
    let n = done.len();
    if n > 0 {
        db.with(move |c| Ok(events::mark_published(c, &done)?))
            .await?;
        debug!(published = n, "outbox messages published");
    }
    if n < rows.len() {
        return Err(SettlementError::Nats(format!(
            "published {n} of {} outbox messages",
            rows.len()
        )));
    }
    Ok(n)
}

/// Publishes the outbox every `outbox_interval_ms`, or at once when woken after a commit.
pub async fn run_outbox(settings: &Settings, js: &Context, wake: &Notify) -> Result<()> {
    let mut db = Db::new(&settings.database_url);
    let interval = Duration::from_millis(settings.outbox_interval_ms);
    loop {
        let n = publish_outbox_once(&mut db, js, settings.outbox_batch).await?;
        if n as i64 >= settings.outbox_batch {
            continue;
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
}
