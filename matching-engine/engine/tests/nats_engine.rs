//! The engine over a real nats-server with JetStream (`cargo xtask test` starts it and sets
//! `GRIDBOOK_NATS_URL`). Each test uses its own market, so tests run in parallel on one server.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use async_nats::jetstream::{self, message::PublishMessage as Publish};
use futures::StreamExt;
use gridbook_wire::{
    market::{EventFrame, L2Snapshot, MarketStats},
    streams, subjects,
};
use matching_core::{
    AccountId, Amend, Cancel, CommandKind, Event, EventKind, MarketConfig, OrderId, Place, Side, TimeInForce,
};
use gridbook_testkit::replay::{clean_replay, published_frames, read_subject};
use gridbook_testkit::{Engine, EngineConfig, Market};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn unique_market(tag: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("T-{tag}-{}-{}", std::process::id(), nanos % 1_000_000_000_000)
}

fn market_config(market: &str) -> MarketConfig {
    MarketConfig {
        market: matching_core::MarketId(market.into()),
        min_price: 1,
        max_price: 1_000,
        max_qty: 1_000,
        fee_bps: 100,
        max_orders: 100_000,
        max_levels: 1_000,
        ..MarketConfig::default()
    }
}

/// The real engine binary on the shared server, serving `market` alone with a 3-second lease.
fn start_engine(market: &str, snapshot_every: u64, engine_id: &str) -> Engine {
    let m = market_config(market);
    let spec = Market {
        market: market.to_owned(),
        min_price: m.min_price,
        max_price: m.max_price,
        max_qty: m.max_qty,
        fee_bps: m.fee_bps,
        max_orders: Some(m.max_orders.into()),
        max_levels: Some(m.max_levels.into()),
    };
    Engine::start(
        &gridbook_testkit::NatsAccess::shared(),
        EngineConfig {
            engine_id: Some(engine_id.to_owned()),
            snapshot_every: Some(snapshot_every),
            batch_max: Some(64),
            lease_secs: Some(3),
            bin: Some(env!("CARGO_BIN_EXE_matching-engine").into()),
            ..EngineConfig::markets(vec![spec])
        },
    )
}

/// A deterministic random command mix: places (some crossing), cancels, amends, a few
/// duplicates and one undecodable message.
fn command_mix(market: &str, n: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    let mut live: Vec<(u64, u64)> = vec![];
    for i in 0..n as u64 {
        let id = i + 1;
        let roll = rng.random_range(0..100);
        let kind = if roll < 60 || live.is_empty() {
            let side = if rng.random_bool(0.5) { Side::Bid } else { Side::Ask };
            let account = rng.random_range(1..6);
            let base = if side == Side::Bid { 495 } else { 505 };
            let price = (base as i64 + rng.random_range(-12..=12)) as u64;
            let tif = match rng.random_range(0..10) {
                0 => TimeInForce::Ioc,
                1 => TimeInForce::Fok,
                _ => TimeInForce::Gtc,
            };
            live.push((id, account));
            CommandKind::Place(Place {
                id: OrderId(id),
                account: AccountId(account),
                owner: None,
                side,
                price: Some(price),
                qty: rng.random_range(1..20),
                tif,
                post_only: false,
                budget: None,
                stp: None,
            })
        } else if roll < 80 {
            let (oid, acc) = live.swap_remove(rng.random_range(0..live.len()));
            CommandKind::Cancel(Cancel { id: OrderId(oid), account: AccountId(acc) })
        } else {
            let (oid, acc) = live[rng.random_range(0..live.len())];
            CommandKind::Amend(Amend {
                id: OrderId(oid),
                account: AccountId(acc),
                price: Some(rng.random_range(490..=510)),
                qty: Some(rng.random_range(1..20)),
            })
        };
        // message ids are stream-wide: scope them by market
        let msg_id = format!("{market}.cmd-{i}");
        out.push((msg_id.clone(), serde_json::to_vec(&kind).unwrap()));
        if i % 97 == 5 {
            // the same message resent: JetStream's duplicate window drops it
            out.push((msg_id, serde_json::to_vec(&kind).unwrap()));
        }
        if i % 211 == 7
            && let CommandKind::Place(_) = kind
        {
            // the same place resent under another message id: the engine's own idempotency
            out.push((format!("{market}.resend-{i}"), serde_json::to_vec(&kind).unwrap()));
        }
        if i == n as u64 / 2 {
            out.push((format!("{market}.garbage"), b"{this is not a command".to_vec()));
        }
    }
    out
}

/// Publishes in chunks of 50; every third chunk travels as one JSON-array message.
async fn publish_all(js: &jetstream::Context, market: &str, cmds: &[(String, Vec<u8>)], pace: Duration) {
    let subject = subjects::market_cmd(market);
    for (n, chunk) in cmds.chunks(50).enumerate() {
        let mut acks = vec![];
        let decodable = chunk.iter().all(|(_, p)| serde_json::from_slice::<CommandKind>(p).is_ok());
        if n % 3 == 2 && decodable {
            let array = format!("[{}]", chunk.iter().map(|(_, p)| String::from_utf8_lossy(p).into_owned()).collect::<Vec<_>>().join(","));
            js.send_publish(subject.clone(), Publish::build().payload(array.into_bytes().into()).message_id(format!("{}-batch", chunk[0].0)))
                .await
                .unwrap()
                .await
                .unwrap();
            tokio::time::sleep(pace).await;
            continue;
        }
        for (id, payload) in chunk {
            acks.push(
                js.send_publish(subject.clone(), Publish::build().payload(payload.clone().into()).message_id(id))
                    .await
                    .unwrap(),
            );
        }
        for a in acks {
            a.await.unwrap();
        }
        tokio::time::sleep(pace).await;
    }
}

async fn wait_until_caught_up(js: &jetstream::Context, market: &str, last_cmd: u64, within: Duration) -> EventFrame {
    let stream = js.get_stream(streams::EVENTS).await.unwrap();
    let deadline = Instant::now() + within;
    loop {
        if let Ok(m) = stream.get_last_raw_message_by_subject(&subjects::market_evt(market)).await {
            let frames: Vec<EventFrame> = serde_json::from_slice(&m.payload).unwrap();
            let frame = frames.last().unwrap().clone();
            if frame.stream_seq >= last_cmd {
                return frame;
            }
        }
        assert!(Instant::now() < deadline, "engine did not catch up with command {last_cmd} in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_streams(js: &jetstream::Context) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while js.get_stream(streams::COMMANDS).await.is_err() {
        assert!(Instant::now() < deadline, "engine did not create its streams");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn last_command_seq(js: &jetstream::Context, market: &str) -> u64 {
    let stream = js.get_stream(streams::COMMANDS).await.unwrap();
    let last = stream.get_last_raw_message_by_subject(&subjects::market_cmd(market)).await.unwrap();
    // the last command may produce no frame only if it was dropped; our mixes end with a place
    last.sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_nothing_and_duplicates_nothing() {
    let market = unique_market("KILL");
    let client = gridbook_testkit::NatsAccess::shared().try_connect(gridbook_testkit::Service::Api).await.unwrap();
    let js = jetstream::new(client);
    let mut engine = start_engine(&market, 150, &format!("test-{market}"));
    // the engine creates the streams; wait for them
    wait_for_streams(&js).await;
    let mut cmds = command_mix(&market, 3_000, 42);
    // finish with a plain place so the last command always has a frame
    cmds.push((
        format!("{market}.final"),
        serde_json::to_vec(&CommandKind::Place(Place {
            id: OrderId(10_000_000),
            account: AccountId(9),
            owner: None,
            side: Side::Bid,
            price: Some(1),
            qty: 1,
            tif: TimeInForce::Gtc,
            post_only: false,
            budget: None,
            stp: None,
        }))
        .unwrap(),
    ));
    let publisher = {
        let (js, market, cmds) = (js.clone(), market.clone(), cmds.clone());
        tokio::spawn(async move { publish_all(&js, &market, &cmds, Duration::from_millis(40)).await })
    };
    let mut rng = StdRng::seed_from_u64(7);
    let mut kills = 0;
    while !publisher.is_finished() || kills < 4 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..700))).await;
        engine.kill9();
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..200))).await;
        engine.respawn();
        if kills >= 8 {
            break;
        }
    }
    publisher.await.unwrap();
    let last_cmd = last_command_seq(&js, &market).await;
    wait_until_caught_up(&js, &market, last_cmd, Duration::from_secs(60)).await;

    let frames = published_frames(&js, &market).await;
    let published: Vec<Event> = frames.iter().flat_map(|f| f.events.iter().copied()).collect();
    let commands = read_subject(&js, streams::COMMANDS, &subjects::market_cmd(&market)).await;
    let replayed = clean_replay(market_config(&market), &commands);
    assert!(kills >= 4, "the engine was killed {kills} times");
    assert_eq!(published.len(), replayed.len(), "event count differs from a clean replay");
    assert!(published == replayed, "published events differ from a clean replay");
    let places = replayed.iter().filter(|e| matches!(e.kind, EventKind::Accepted { .. })).count();
    let distinct_places = cmds
        .iter()
        .filter_map(|(_, p)| match serde_json::from_slice::<CommandKind>(p) {
            Ok(CommandKind::Place(p)) => Some(p.id),
            _ => None,
        })
        .collect::<HashSet<_>>()
        .len();
    let rejected_places = replayed
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Rejected { .. }))
        .count();
    assert!(places <= distinct_places, "a resent place was placed twice");
    assert!(places + rejected_places >= distinct_places, "a place was lost");
    eprintln!("kill -9 x{kills}: {} command messages, {} frames, {} events identical to a clean replay", commands.len(), frames.len(), published.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_joining_mid_stream_resynchronises_to_the_engine_book() {
    let market = unique_market("FEED");
    let client = gridbook_testkit::NatsAccess::shared().try_connect(gridbook_testkit::Service::Api).await.unwrap();
    let js = jetstream::new(client.clone());
    let _engine = start_engine(&market, 1_000, &format!("test-{market}"));
    wait_for_streams(&js).await;
    let cmds = command_mix(&market, 2_000, 99);
    let (first_half, second_half) = cmds.split_at(800);
    publish_all(&js, &market, first_half, Duration::ZERO).await;

    // join mid-stream: subscribe first, then ask for a snapshot, then apply newer frames
    let mut live = client.subscribe(subjects::market_evt(&market)).await.unwrap();
    let publisher = {
        let (js, market, rest) = (js.clone(), market.clone(), second_half.to_vec());
        tokio::spawn(async move { publish_all(&js, &market, &rest, Duration::from_millis(5)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let snap = request_l2(&client, &market).await;
    let mut book = Ladder::from(&snap);
    let mut applied_to = snap.seq;
    publisher.await.unwrap();
    let last_cmd = last_command_seq(&js, &market).await;
    let last_frame = wait_until_caught_up(&js, &market, last_cmd, Duration::from_secs(60)).await;
    while applied_to < last_frame.last {
        let msg = tokio::time::timeout(Duration::from_secs(10), live.next()).await.expect("frame").unwrap();
        for frame in serde_json::from_slice::<Vec<EventFrame>>(&msg.payload).unwrap() {
            if frame.last <= applied_to {
                continue; // older than the snapshot
            }
            assert_eq!(frame.first, applied_to + 1, "gap in the live feed");
            book.apply(&frame);
            applied_to = frame.last;
        }
    }
    let end = request_l2(&client, &market).await;
    assert_eq!(end.seq, applied_to);
    assert_eq!(book, Ladder::from(&end), "the client's book differs from the engine's");
    assert!(!end.bids.is_empty() && !end.asks.is_empty());

    let stats: MarketStats = serde_json::from_slice(
        &client.request(subjects::market_stats(&market), "".into()).await.unwrap().payload,
    )
    .unwrap();
    assert_eq!(stats.seq, end.seq);
    assert!(stats.volume_24h > 0 && stats.last_price.is_some() && !stats.candles.is_empty());
}

async fn request_l2(client: &async_nats::Client, market: &str) -> L2Snapshot {
    let reply = client.request(subjects::market_snapshot(market), "".into()).await.unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

/// A client-side L2 book: price → (qty, orders) per side.
#[derive(Debug, PartialEq, Eq)]
struct Ladder {
    bids: std::collections::BTreeMap<u64, (u64, u32)>,
    asks: std::collections::BTreeMap<u64, (u64, u32)>,
}

impl Ladder {
    fn from(s: &L2Snapshot) -> Ladder {
        Ladder {
            bids: s.bids.iter().map(|l| (l.price, (l.qty, l.orders))).collect(),
            asks: s.asks.iter().map(|l| (l.price, (l.qty, l.orders))).collect(),
        }
    }
    fn apply(&mut self, f: &EventFrame) {
        for e in &f.events {
            if let EventKind::Delta { side, price, qty, orders } = e.kind {
                let m = if side == Side::Bid { &mut self.bids } else { &mut self.asks };
                if qty == 0 {
                    m.remove(&price);
                } else {
                    m.insert(price, (qty, orders));
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_engine_waits_for_the_lease_and_takes_over_when_the_first_dies() {
    let market = unique_market("LEASE");
    let client = gridbook_testkit::NatsAccess::shared().try_connect(gridbook_testkit::Service::Api).await.unwrap();
    let js = jetstream::new(client);
    let mut first = start_engine(&market, 100, "engine-a");
    wait_for_streams(&js).await;
    let cmds = command_mix(&market, 900, 5);
    publish_all(&js, &market, &cmds[..300], Duration::ZERO).await;
    wait_until_caught_up(&js, &market, last_command_seq(&js, &market).await, Duration::from_secs(30)).await;

    let _second = start_engine(&market, 100, "engine-b");
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish_all(&js, &market, &cmds[300..600], Duration::ZERO).await;
    wait_until_caught_up(&js, &market, last_command_seq(&js, &market).await, Duration::from_secs(30)).await;

    first.kill9();
    publish_all(&js, &market, &cmds[600..], Duration::ZERO).await;
    // the lease (3 s in this test) lapses, then engine-b recovers and goes on
    wait_until_caught_up(&js, &market, last_command_seq(&js, &market).await, Duration::from_secs(30)).await;

    let frames = published_frames(&js, &market).await;
    let published: Vec<Event> = frames.iter().flat_map(|f| f.events.iter().copied()).collect();
    let commands = read_subject(&js, streams::COMMANDS, &subjects::market_cmd(&market)).await;
    assert!(published == clean_replay(market_config(&market), &commands), "events differ from a clean replay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gtd_order_expires_in_a_quiet_market_without_another_command() {
    use matching_core::{AccountId, OrderId, Place, TimeInForce};
    let market = unique_market("GTD");
    let client = gridbook_testkit::NatsAccess::shared().try_connect(gridbook_testkit::Service::Api).await.unwrap();
    let js = jetstream::new(client.clone());
    let _engine = start_engine(&market, 1_000, &format!("test-{market}"));
    wait_for_streams(&js).await;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let place = CommandKind::Place(Place {
        id: OrderId(7),
        account: AccountId(1),
        owner: None,
        side: Side::Bid,
        price: Some(10),
        qty: 3,
        tif: TimeInForce::Gtd { expires_at: now_ms + 1_500 },
        post_only: false,
        budget: None,
        stp: None,
    });
    let mut live = client.subscribe(subjects::market_evt(&market)).await.unwrap();
    js.publish(subjects::market_cmd(&market), serde_json::to_vec(&place).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    // No other command is sent: the engine's own tick must expire the order.
    let expired = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(msg) = live.next().await {
            for frame in serde_json::from_slice::<Vec<EventFrame>>(&msg.payload).unwrap() {
                for e in frame.events {
                    if let EventKind::Expired { id, qty } = e.kind {
                        return (id, qty, frame.time);
                    }
                }
            }
        }
        panic!("event subscription ended")
    })
    .await
    .expect("the GTD order did not expire");
    assert_eq!((expired.0, expired.1), (OrderId(7), 3));
    assert!(expired.2 >= now_ms + 1_500, "expired at {} before its time {}", expired.2, now_ms + 1_500);
    assert!(request_l2(&client, &market).await.bids.is_empty());
    // The tick is an ordinary command in the stream: a clean replay gives the same events.
    let commands = read_subject(&js, streams::COMMANDS, &subjects::market_cmd(&market)).await;
    assert_eq!(commands.len(), 2, "the place and one expiry tick");
}
