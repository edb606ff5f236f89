//! One market's single writer: commands in from JetStream, events out to JetStream.
//!
//! Recovery and live processing are one path. On start the task loads the market's latest
//! engine snapshot (book, the last command stream sequence it covers, recent order ids,
//! candles), reads the last event frame already in the events stream (`published`), and
//! (re)creates its durable pull consumer starting right after the snapshot. Every command is
//! applied in stream order; a frame whose events are already published (`last <= published`) is
//! not published again, so `kill -9` at any moment neither loses an accepted command nor
//! duplicates an event. A command is acked (ack-all) only after its frame's publish ack.
//!
//! The pure part — the book, the applied stream sequence, recent ids, candles, and turning one
//! command message into event frames — is `state::MarketState`; this module is its NATS shell
//! (consumer, lease, snapshots, publishing, expiry timer).
//!
//! Determinism: a command's `seq` is its number in this market (`book.last_seq() + 1`, in stream
//! order; the frame keeps the stream sequence in `stream_seq`), its `time` the JetStream
//! timestamp in ms (never earlier than the previous command's), so a replay from the stream
//! yields the same events byte for byte.

use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, pull},
    message::PublishMessage as Publish,
    object_store::ObjectStore,
};
use bytes::Bytes;
use futures::StreamExt;
use gridbook_wire::{
    headers,
    market::EventFrame,
    streams, subjects,
};
use matching_core::{CommandKind, MarketConfig};
use tokio::io::AsyncReadExt;
use tracing::info;

use crate::lease::Lease;
use crate::settings::EngineSettings;
use crate::state::{EngineSnapshot, MarketState};

/// Event messages stay well under nats-server's payload limit (1 MB by default).
const MAX_EVENT_MESSAGE_BYTES: usize = 512 * 1024;

struct Chunk {
    first: u64,
    last: u64,
    payload: Bytes,
}

/// Consecutive frames as JSON arrays of at most `max_bytes` (a single larger frame goes alone).
fn chunk_frames(frames: &[EventFrame], max_bytes: usize) -> anyhow::Result<Vec<Chunk>> {
    let mut chunks = vec![];
    let mut buf: Vec<u8> = Vec::new();
    let (mut first, mut last) = (0, 0);
    for f in frames {
        let json = serde_json::to_vec(f)?;
        if !buf.is_empty() && buf.len() + json.len() + 2 > max_bytes {
            buf.push(b']');
            chunks.push(Chunk { first, last, payload: Bytes::from(std::mem::take(&mut buf)) });
        }
        if buf.is_empty() {
            buf.push(b'[');
            first = f.first;
        } else {
            buf.push(b',');
        }
        buf.extend_from_slice(&json);
        last = f.last;
    }
    if !buf.is_empty() {
        buf.push(b']');
        chunks.push(Chunk { first, last, payload: Bytes::from(buf) });
    }
    Ok(chunks)
}

/// Shared NATS handles for all market tasks of one process.
#[derive(Clone)]
pub struct Nats {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub snapshots: ObjectStore,
    pub leases: async_nats::jetstream::kv::Store,
}

fn consumer_name(market: &str) -> String {
    format!("engine-{market}")
}

async fn load_snapshot(nats: &Nats, market: &str) -> anyhow::Result<Option<EngineSnapshot>> {
    let mut object = match nats.snapshots.get(market).await {
        Ok(o) => o,
        Err(e) if e.kind() == jetstream::object_store::GetErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("reading the engine snapshot"),
    };
    let mut buf = Vec::new();
    object.read_to_end(&mut buf).await.context("reading the engine snapshot")?;
    Ok(Some(serde_json::from_slice(&buf).context("decoding the engine snapshot")?))
}

async fn save_snapshot(nats: &Nats, market: &str, state: &MarketState) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec(&state.snapshot())?;
    nats.snapshots.put(market, &mut bytes.as_slice()).await.context("writing the engine snapshot")?;
    Ok(())
}

/// The last event sequence already in the events stream for this market (0 if none).
async fn last_published(nats: &Nats, market: &str) -> anyhow::Result<u64> {
    let stream = nats.js.get_stream(streams::EVENTS).await.context("events stream")?;
    match stream.get_last_raw_message_by_subject(&subjects::market_evt(market)).await {
        Ok(msg) => {
            let last = msg.headers.get(headers::LAST_SEQ).map(|v| v.as_str().to_owned());
            match last.and_then(|v| v.parse().ok()) {
                Some(seq) => Ok(seq),
                None => Ok(serde_json::from_slice::<Vec<EventFrame>>(&msg.payload)
                    .context("last event message")?
                    .last()
                    .map_or(0, |f| f.last)),
            }
        }
        Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
        Err(e) => Err(e).context("reading the last event frame"),
    }
}

/// Run one market until an error; the caller restarts it (recovery is the same path).
pub async fn run_market(nats: Nats, settings: EngineSettings, config: MarketConfig) -> anyhow::Result<()> {
    let market = config.market.0.clone();
    let mut lease = Lease::acquire(nats.leases.clone(), &market, &settings.engine_id).await?;
    let mut state = match load_snapshot(&nats, &market).await? {
        Some(snap) => MarketState::restore(snap, &config, settings.recent_ids)?,
        None => MarketState::new(config, settings.recent_ids)?,
    };
    let mut published = last_published(&nats, &market).await?;
    if published < state.last_event_seq() {
        bail!(
            "market {market}: events stream ends at {published} but the snapshot is at {}; \
             the events stream lost data",
            state.last_event_seq()
        );
    }
    info!(market = %market, applied = state.applied, published, "market recovered; resuming");

    let commands = nats.js.get_stream(streams::COMMANDS).await.context("commands stream")?;
    let name = consumer_name(&market);
    let _ = commands.delete_consumer(&name).await; // a fresh consumer = in-order delivery from the snapshot
    let consumer = commands
        .create_consumer(pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: subjects::market_cmd(&market),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: state.applied + 1 },
            ack_policy: AckPolicy::All,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: (settings.batch_max * 8) as i64,
            ..Default::default()
        })
        .await
        .context("creating the command consumer")?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(settings.batch_max)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .context("pulling commands")?
        .ready_chunks(settings.batch_max);

    let mut l2_requests = nats.client.subscribe(subjects::market_snapshot(&market)).await?;
    let mut stats_requests = nats.client.subscribe(subjects::market_stats(&market)).await?;
    let evt_subject = subjects::market_evt(&market);
    let mut expected_consumer_seq = 1u64;
    let mut since_snapshot = 0u64;
    let mut frames = Vec::with_capacity(settings.batch_max);
    // Renew at a third of the shorter of our TTL and the bucket's (whoever created it set it).
    let bucket_ttl = nats.leases.status().await.map(|s| s.max_age()).unwrap_or_default();
    let ttl = match bucket_ttl.is_zero() {
        true => Duration::from_secs(settings.lease_secs),
        false => bucket_ttl.min(Duration::from_secs(settings.lease_secs)),
    };
    // GTD orders expire on the first command at or after their time; in a quiet market the
    // engine sends itself `Expire {}` (through the command stream, so replay stays exact).
    let cmd_subject = subjects::market_cmd(&market);
    let mut expiry_not_before = tokio::time::Instant::now();
    let mut renew = tokio::time::interval(ttl / 3);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            batch = messages.next() => {
                let Some(batch) = batch else { bail!("command consumer closed") };
                let mut last_msg = None;
                frames.clear();
                for msg in batch {
                    let msg = msg.map_err(|e| anyhow::anyhow!("command delivery: {e}"))?;
                    let info = msg.info().map_err(|e| anyhow::anyhow!("command metadata: {e}"))?;
                    if info.consumer_sequence != expected_consumer_seq {
                        bail!("delivery gap: consumer sequence {} after {}", info.consumer_sequence, expected_consumer_seq - 1);
                    }
                    expected_consumer_seq += 1;
                    let published_ms = info.published.timestamp_millis().max(0) as u64;
                    state.apply(info.stream_sequence, published_ms, &msg.payload, &mut frames);
                    since_snapshot += 1;
                    last_msg = Some(msg);
                }
                // Frames already in the events stream (published before a crash) are not sent again.
                frames.retain(|f| f.last > published);
                let mut acks = Vec::new();
                for chunk in chunk_frames(&frames, MAX_EVENT_MESSAGE_BYTES)? {
                    let id = format!("{market}.{}", chunk.first);
                    let ack = nats.js.send_publish(
                        evt_subject.clone(),
                        Publish::build().payload(chunk.payload).message_id(id).header(headers::LAST_SEQ, chunk.last.to_string()),
                    ).await.context("publishing events")?;
                    acks.push((chunk.last, ack));
                }
                for (last, ack) in acks {
                    ack.await.context("event publish not acknowledged")?;
                    published = published.max(last);
                }
                if let Some(msg) = last_msg {
                    msg.ack().await.map_err(|e| anyhow::anyhow!("acking commands: {e}"))?;
                }
                if since_snapshot >= settings.snapshot_every {
                    save_snapshot(&nats, &market, &state).await?;
                    since_snapshot = 0;
                }
            }
            _ = renew.tick() => lease.renew().await?,
            _ = expiry_timer(state.book.next_expiry(), expiry_not_before) => {
                let at = state.book.next_expiry().unwrap_or_default();
                let tick = serde_json::to_vec(&CommandKind::Expire {})?;
                nats.js
                    .send_publish(cmd_subject.clone(), Publish::build().payload(tick.into()).message_id(format!("{market}.expire.{at}")))
                    .await
                    .context("publishing an expiry tick")?
                    .await
                    .context("expiry tick not acknowledged")?;
                // At most one tick a second for the same expiry (the command's time is the
                // server's timestamp, which may trail this clock by a little).
                expiry_not_before = tokio::time::Instant::now() + Duration::from_secs(1);
            }
            Some(req) = l2_requests.next() => {
                if let Some(reply) = req.reply {
                    nats.client.publish(reply, serde_json::to_vec(&state.l2())?.into()).await?;
                }
            }
            Some(req) = stats_requests.next() => {
                if let Some(reply) = req.reply {
                    let report = state.stats.report(&market, state.last_event_seq(), state.book.last_time());
                    nats.client.publish(reply, serde_json::to_vec(&report)?.into()).await?;
                }
            }
        }
    }
}

/// Completes when a GTD order is due (`at`, ms since the Unix epoch, plus a little slack) but
/// not before `not_before`; never when nothing expires.
async fn expiry_timer(at: Option<u64>, not_before: tokio::time::Instant) {
    let Some(at) = at else {
        return std::future::pending().await;
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let due = tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now_ms) + 20);
    tokio::time::sleep_until(due.max(not_before)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::{place, state};
    use matching_core::Side;

    #[test]
    fn frames_are_chunked_under_the_byte_limit_without_splitting_a_frame() {
        let mut s = state();
        let mut frames = vec![];
        for id in 1..=50 {
            s.apply(id, 0, &serde_json::to_vec(&place(id, Side::Bid, id)).unwrap(), &mut frames);
        }
        let chunks = chunk_frames(&frames, 2_000).unwrap();
        assert!(chunks.len() > 1);
        let mut next = 1;
        for c in &chunks {
            assert!(c.payload.len() <= 2_000 || serde_json::from_slice::<Vec<EventFrame>>(&c.payload).unwrap().len() == 1);
            let decoded: Vec<EventFrame> = serde_json::from_slice(&c.payload).unwrap();
            assert_eq!((decoded[0].first, decoded.last().unwrap().last), (c.first, c.last));
            assert_eq!(c.first, next);
            next = c.last + 1;
        }
        assert_eq!(next, s.last_event_seq() + 1);
    }
}

