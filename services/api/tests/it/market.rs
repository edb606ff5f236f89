//! Live market data through the real processes: a private nats-server (JetStream), the real
//! `matching-engine` binary serving the dev markets, and the API's feed; WebSocket clients rebuild
//! the engine's exact book, a client that never reads is dropped with the reason, REST agrees.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use gridbook_testkit::{EngineConfig, StackOptions, TestApp};
use gridbook_wire::market::{L2Snapshot, MarketStats};
use gridbook_wire::subjects;
use matching_core::{AccountId, Amend, Cancel, CommandKind, OrderId, Place, Side, TimeInForce};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

const MARKET: &str = "EMBED-MINILM-L6";

/// A private nats-server (so the dev market names cannot collide with anything else on the
/// shared server), the real engine serving `dev.toml`'s markets on it, and the API; no
/// settlement worker (these commands have no orders in the database).
struct Stack(gridbook_testkit::Stack);

impl Stack {
    async fn start(tag: &str) -> Stack {
        let options = StackOptions { engine: EngineConfig::dev(), settlement: false, sd_model_dir: None, api: None, withhold_assignments: 0, worker: None };
        Stack(gridbook_testkit::Stack::start_with(&format!("api-market-{tag}"), options).await)
    }

    async fn engine_l2(&self) -> Option<L2Snapshot> {
        let reply = tokio::time::timeout(
            Duration::from_secs(2),
            self.0.nats.client.request(subjects::market_snapshot(MARKET), "".into()),
        )
        .await
        .ok()?
        .ok()?;
        Some(serde_json::from_slice(&reply.payload).unwrap())
    }

    async fn engine_stats(&self) -> MarketStats {
        let reply = self.0.nats.client.request(subjects::market_stats(MARKET), "".into()).await.unwrap();
        serde_json::from_slice(&reply.payload).unwrap()
    }

    /// Publishes one message (one command or an array) and waits for JetStream's ack.
    async fn publish(&self, payload: Vec<u8>) {
        self.0
            .nats
            .jetstream()
            .publish(subjects::market_cmd(MARKET), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// A deterministic random command mix around 500 (places, some crossing; cancels; amends).
struct Mix {
    state: u64,
    next_id: u64,
    live: Vec<(u64, u64)>,
}

impl Mix {
    fn new(seed: u64, first_id: u64) -> Mix {
        Mix { state: seed.wrapping_mul(6364136223846793005).wrapping_add(1), next_id: first_id, live: vec![] }
    }
    fn below(&mut self, n: u64) -> u64 {
        self.state = self.state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.state >> 33) % n
    }
    fn next(&mut self) -> CommandKind {
        let roll = self.below(100);
        if roll < 65 || self.live.is_empty() {
            let side = if self.below(2) == 0 { Side::Bid } else { Side::Ask };
            let account = 1 + self.below(5);
            let base: u64 = if side == Side::Bid { 495 } else { 505 };
            let price = base + self.below(25) - 12;
            let tif = if self.below(10) == 0 { TimeInForce::Ioc } else { TimeInForce::Gtc };
            let id = self.next_id;
            self.next_id += 1;
            self.live.push((id, account));
            CommandKind::Place(Place {
                id: OrderId(id),
                account: AccountId(account),
                owner: None,
                side,
                price: Some(price),
                qty: 1 + self.below(20),
                tif,
                post_only: false,
                budget: None,
                stp: None,
            })
        } else if roll < 85 {
            let i = self.below(self.live.len() as u64) as usize;
            let (id, account) = self.live.swap_remove(i);
            CommandKind::Cancel(Cancel { id: OrderId(id), account: AccountId(account) })
        } else {
            let i = self.below(self.live.len() as u64) as usize;
            let (id, account) = self.live[i];
            CommandKind::Amend(Amend {
                id: OrderId(id),
                account: AccountId(account),
                price: Some(490 + self.below(21)),
                qty: Some(1 + self.below(20)),
            })
        }
    }
}

/// A resting bid at the lowest price: when a client sees its level, everything before it is in.
fn sentinel(id: u64, qty: u64) -> CommandKind {
    CommandKind::Place(Place {
        id: OrderId(id),
        account: AccountId(99),
        owner: None,
        side: Side::Bid,
        price: Some(1),
        qty,
        tif: TimeInForce::Gtc,
        post_only: false,
        budget: None,
        stp: None,
    })
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client's view: the book it rebuilt and every trade it saw.
#[derive(Default)]
struct Client {
    seq: u64,
    bids: BTreeMap<u64, (u64, u32)>,
    asks: BTreeMap<u64, (u64, u32)>,
    trades: Vec<Value>,
    deltas: u64,
    snapshots: u64,
}

fn levels(v: &Value) -> BTreeMap<u64, (u64, u32)> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|l| (l["price"].as_u64().unwrap(), (l["qty"].as_u64().unwrap(), l["orders"].as_u64().unwrap() as u32)))
        .collect()
}

impl Client {
    fn apply(&mut self, text: &str) {
        let m: Value = serde_json::from_str(text).unwrap();
        match m["type"].as_str().unwrap() {
            "snapshot" => {
                self.snapshots += 1;
                self.seq = m["seq"].as_u64().unwrap();
                self.bids = levels(&m["bids"]);
                self.asks = levels(&m["asks"]);
                self.trades = m["trades"].as_array().unwrap().clone();
            }
            "delta" => {
                assert!(self.snapshots > 0, "a delta before the snapshot");
                let first = m["first"].as_u64().unwrap();
                assert_eq!(first, self.seq + 1, "gap in the WebSocket feed");
                self.deltas += 1;
                self.seq = m["last"].as_u64().unwrap();
                for c in m["changes"].as_array().unwrap() {
                    let book = if c["side"] == "bid" { &mut self.bids } else { &mut self.asks };
                    let (price, qty) = (c["price"].as_u64().unwrap(), c["qty"].as_u64().unwrap());
                    if qty == 0 {
                        book.remove(&price);
                    } else {
                        book.insert(price, (qty, c["orders"].as_u64().unwrap() as u32));
                    }
                }
                self.trades.extend(m["trades"].as_array().unwrap().iter().cloned());
            }
            other => panic!("unexpected message type {other}"),
        }
    }

    /// Reads until the bid level at price 1 holds `qty` (the sentinel arrived).
    async fn read_until_sentinel(&mut self, ws: &mut Ws, qty: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.bids.get(&1).map(|l| l.0) != Some(qty) {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = tokio::time::timeout(left, ws.next())
                .await
                .expect("the sentinel did not arrive within 60 s")
                .expect("the WebSocket ended")
                .unwrap();
            match msg {
                Message::Text(t) => self.apply(&t),
                Message::Close(c) => panic!("closed by the server: {c:?}"),
                _ => {}
            }
        }
    }
}

fn same_book(engine: &L2Snapshot, bids: &BTreeMap<u64, (u64, u32)>, asks: &BTreeMap<u64, (u64, u32)>) -> bool {
    let e_bids: BTreeMap<u64, (u64, u32)> = engine.bids.iter().map(|l| (l.price, (l.qty, l.orders))).collect();
    let e_asks: BTreeMap<u64, (u64, u32)> = engine.asks.iter().map(|l| (l.price, (l.qty, l.orders))).collect();
    &e_bids == bids && &e_asks == asks
}

async fn connect(app: &TestApp, market: &str) -> Ws {
    let url = format!("ws://127.0.0.1:{}/v1/markets/{market}/ws", app.port);
    tokio_tungstenite::connect_async(url).await.expect("WebSocket connect").0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_rebuilds_the_engine_book_and_rest_agrees() {
    let stack = Stack::start("book").await;
    let app = &stack.0.app;
    let mut mix = Mix::new(7, 1);

    // Some history before the client joins (the snapshot carries it).
    for _ in 0..60 {
        stack.publish(serde_json::to_vec(&mix.next()).unwrap()).await;
    }
    let mut ws = connect(&app, MARKET).await;
    let mut client = Client::default();
    // Then a few hundred more, single commands and arrays, while it listens.
    for round in 0..60 {
        if round % 3 == 0 {
            let batch: Vec<CommandKind> = (0..5).map(|_| mix.next()).collect();
            stack.publish(serde_json::to_vec(&batch).unwrap()).await;
        } else {
            for _ in 0..3 {
                stack.publish(serde_json::to_vec(&mix.next()).unwrap()).await;
            }
        }
    }
    stack.publish(serde_json::to_vec(&sentinel(1_000_000, 7)).unwrap()).await;
    client.read_until_sentinel(&mut ws, 7).await;

    let engine = stack.engine_l2().await.expect("engine snapshot");
    assert_eq!(client.seq, engine.seq, "the client is not at the engine's sequence");
    assert!(same_book(&engine, &client.bids, &client.asks), "the client's book differs from the engine's");
    assert!(client.deltas >= 20, "only {} deltas", client.deltas);
    assert!(!engine.asks.is_empty() && engine.bids.len() > 1);
    assert!(!client.trades.is_empty(), "no trades in a crossing mix");

    // REST: the book (full depth) is the engine's, with its sequence.
    let book: Value = app.http.get(app.url(&format!("/v1/markets/{MARKET}/book?depth=1000"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(book["seq"].as_u64(), Some(engine.seq));
    assert!(same_book(&engine, &levels(&book["bids"]), &levels(&book["asks"])));
    let top: Value = app.http.get(app.url(&format!("/v1/markets/{MARKET}/book?depth=1"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(top["bids"].as_array().unwrap().len(), 1);
    assert_eq!(top["bids"][0]["price"], book["bids"][0]["price"]);
    let bad = app.http.get(app.url(&format!("/v1/markets/{MARKET}/book?depth=0"))).send().await.unwrap();
    assert_eq!(bad.status(), 400);

    // REST: the tape is the client's trades, newest first.
    let trades: Value = app.http.get(app.url(&format!("/v1/markets/{MARKET}/trades?limit=20"))).send().await.unwrap().json().await.unwrap();
    let rest: Vec<Value> = trades["trades"].as_array().unwrap().clone();
    let mine: Vec<Value> = client.trades.iter().rev().take(rest.len()).cloned().collect();
    assert!(!rest.is_empty());
    assert_eq!(rest, mine, "REST trades differ from the WebSocket's");

    // REST: candles are the engine's stats; every trade the client saw is in the 24 h volume.
    let candles: Value = app.http.get(app.url(&format!("/v1/markets/{MARKET}/candles"))).send().await.unwrap().json().await.unwrap();
    let stats = stack.engine_stats().await;
    assert_eq!(candles["seq"].as_u64(), Some(stats.seq));
    assert_eq!(candles["volume_24h"].as_u64(), Some(stats.volume_24h));
    assert_eq!(candles["last_price"].as_u64(), stats.last_price);
    assert!(!candles["candles"].as_array().unwrap().is_empty());
    let seen: u64 = client.trades.iter().map(|t| t["qty"].as_u64().unwrap()).sum();
    assert!(stats.volume_24h >= seen && seen > 0);
    assert_eq!(client.trades.last().unwrap()["price"].as_u64(), stats.last_price);

    // REST: the catalogue, one market, unknown markets (404 JSON, also for the WebSocket).
    let list: Value = app.http.get(app.url("/v1/markets")).send().await.unwrap().json().await.unwrap();
    let symbols: Vec<&str> = list["markets"].as_array().unwrap().iter().map(|m| m["symbol"].as_str().unwrap()).collect();
    assert_eq!(symbols, ["EMBED-MINILM-L6", "GRID-CREDITS", "RENDER-SD15-512", "RENDER-TERRAIN-128"]);
    let one: Value = app.http.get(app.url(&format!("/v1/markets/{MARKET}"))).send().await.unwrap().json().await.unwrap();
    assert_eq!(one["workload"], "embed");
    assert_eq!(one["items_per_unit"], 1000);
    assert_eq!(one["tick_size"], "0.0001");
    assert_eq!(one["fee_bps"], 250);
    assert_eq!(one["whale_cap_bps"], 2500);
    assert_eq!(one["seq"].as_u64(), Some(engine.seq));
    assert_eq!(one["bbo"]["bid"].as_u64(), engine.bids.first().map(|l| l.price));
    assert_eq!(one["ws_clients"], 1);
    for path in ["/v1/markets/NOPE", "/v1/markets/NOPE/book", "/v1/markets/NOPE/trades", "/v1/markets/NOPE/candles", "/v1/markets/NOPE/ws"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
    let err = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/v1/markets/NOPE/ws", app.port)).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status(), 404),
        other => panic!("expected a 404, got {other}"),
    }

    // A second client joining now starts from the same book.
    let mut late = connect(&app, MARKET).await;
    let mut second = Client::default();
    stack.publish(serde_json::to_vec(&sentinel(1_000_001, 5)).unwrap()).await;
    second.read_until_sentinel(&mut late, 12).await;
    client.read_until_sentinel(&mut ws, 12).await;
    assert_eq!(second.seq, client.seq);
    assert!(second.bids == client.bids && second.asks == client.asks);
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_while_others_keep_receiving() {
    let stack = Stack::start("slow").await;
    let app = &stack.0.app;
    let mut fast = connect(&app, MARKET).await;
    // The slow client: a tiny receive buffer, and it does not read.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(format!("127.0.0.1:{}", app.port).parse().unwrap()).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{}/v1/markets/{MARKET}/ws", app.port), stream)
        .await
        .unwrap();
    let clients = |app: &TestApp| {
        let (http, url) = (app.http.clone(), app.url(&format!("/v1/markets/{MARKET}")));
        async move { http.get(url).send().await.unwrap().json::<Value>().await.unwrap()["ws_clients"].as_u64().unwrap() }
    };
    let start = Instant::now();
    while clients(&app).await < 2 {
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Many small event messages (one command each) until the server gives up on the slow one;
    // the fast client reads all along and sees every delta, in sequence.
    let mut fast_client = Client::default();
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            match fast.next().await {
                Some(Ok(Message::Text(t))) => {
                    fast_client.apply(&t);
                    n += 1;
                    if fast_client.bids.get(&1).map(|l| l.0) == Some(3) {
                        return (fast_client, n);
                    }
                }
                Some(Ok(Message::Close(c))) => panic!("the fast client was closed: {c:?}"),
                Some(Ok(_)) => {}
                other => panic!("the fast client's stream ended: {other:?}"),
            }
        }
    });
    let mut mix = Mix::new(11, 1);
    let mut published = 0;
    while clients(&app).await > 1 {
        for _ in 0..100 {
            stack.publish(serde_json::to_vec(&mix.next()).unwrap()).await;
        }
        published += 100;
        assert!(published <= 30_000, "the slow client was never dropped");
    }
    stack.publish(serde_json::to_vec(&sentinel(5_000_000, 3)).unwrap()).await;
    let (fast_client, received) = tokio::time::timeout(Duration::from_secs(60), reader).await.expect("fast client").unwrap();
    assert!(received > crate::market::QUEUE as u64, "the fast client got only {received} messages");
    let engine = stack.engine_l2().await.unwrap();
    assert_eq!(fast_client.seq, engine.seq);
    assert!(same_book(&engine, &fast_client.bids, &fast_client.asks));

    // The slow client now reads its backlog: it ends with a close frame that says why.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut backlog = 0u64;
    let reason = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, slow.next()).await.expect("no close frame within 30 s") {
            Some(Ok(Message::Text(_))) => backlog += 1,
            Some(Ok(Message::Close(Some(frame)))) => break frame.reason.to_string(),
            Some(Ok(Message::Close(None))) => panic!("closed without a reason"),
            Some(Ok(_)) => {}
            other => panic!("the slow client's stream ended without a close frame: {other:?}"),
        }
    };
    assert!(reason.contains("slow consumer"), "close reason: {reason}");
    assert!(backlog < received, "the slow client got everything ({backlog})");
}

/// The per-client queue bound the slow-consumer test must exceed.
pub const QUEUE: usize = gridbook_api::feed::CLIENT_QUEUE;
