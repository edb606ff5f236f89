//! What the engine published, and what a clean replay of its commands gives: the check that
//! no crash, restart or failover changed a market's history (the engine's kill -9 and lease
//! tests, and the whole-stack chaos test).

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::AckPolicy, consumer::DeliverPolicy, consumer::pull};
use futures::StreamExt;
use gridbook_wire::market::EventFrame;
use gridbook_wire::{streams, subjects};
use matching_core::{Command, CommandKind, Event, MarketConfig, OrderBook};

/// Every message of `subject` in `stream`, in order, read with an ephemeral consumer.
pub async fn read_subject(js: &jetstream::Context, stream: &str, subject: &str) -> Vec<jetstream::Message> {
    let stream = js.get_stream(stream).await.unwrap();
    let info = stream.get_info().await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: subject.into(),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let last = info.state.last_sequence;
    let mut out = vec![];
    let mut messages = consumer.messages().await.unwrap();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(2), messages.next()).await;
        let Ok(Some(msg)) = next else { break };
        let msg = msg.unwrap();
        let seq = msg.info().unwrap().stream_sequence;
        out.push(msg);
        if seq >= last {
            break;
        }
    }
    out
}

/// What a clean, single-process replay of the stored commands produces (the engine's rules:
/// seq = stream sequence, time = stream time in ms, never decreasing; undecodable messages and
/// re-used place ids are dropped).
pub fn clean_replay(config: MarketConfig, commands: &[jetstream::Message]) -> Vec<Event> {
    let mut book = OrderBook::new(config).unwrap();
    let mut seen = HashSet::new();
    let (mut last_time, mut out) = (0u64, vec![]);
    let mut seq = 0;
    for msg in commands {
        let info = msg.info().unwrap();
        let kinds = if msg.payload.first() == Some(&b'[') {
            match serde_json::from_slice::<Vec<CommandKind>>(&msg.payload) {
                Ok(k) => k,
                Err(_) => continue,
            }
        } else {
            match serde_json::from_slice::<CommandKind>(&msg.payload) {
                Ok(k) => vec![k],
                Err(_) => continue,
            }
        };
        last_time = last_time.max(info.published.timestamp_millis() as u64);
        for kind in kinds {
            if let CommandKind::Place(p) = &kind
                && !seen.insert(p.id.0)
            {
                continue;
            }
            seq += 1;
            book.apply(&Command { seq, time: last_time, kind }, &mut out);
        }
    }
    out
}

/// Every frame the engine published for `market`, checked gapless and duplicate-free (two
/// writers or a lost publish would break the sequence).
pub async fn published_frames(js: &jetstream::Context, market: &str) -> Vec<EventFrame> {
    let frames: Vec<EventFrame> = read_subject(js, streams::EVENTS, &subjects::market_evt(market))
        .await
        .iter()
        .flat_map(|m| serde_json::from_slice::<Vec<EventFrame>>(&m.payload).unwrap())
        .collect();
    let mut expected_first = 1;
    for f in &frames {
        assert_eq!(f.first, expected_first, "event frames have a gap or a duplicate at cmd {}", f.cmd);
        assert_eq!(f.events.len() as u64, f.last - f.first + 1);
        expected_first = f.last + 1;
    }
    frames
}

/// `market`'s configuration as the engine reads it from `file` (its `[[markets]]` entries).
pub fn market_config_from(file: &Path, market: &str) -> MarketConfig {
    #[derive(serde::Deserialize)]
    struct File {
        markets: Vec<MarketConfig>,
    }
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let f: File = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    f.markets
        .into_iter()
        .find(|m| m.market.0 == market)
        .unwrap_or_else(|| panic!("{} has no market {market}", file.display()))
}
