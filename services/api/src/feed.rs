//! Live market data: one feed task per configured market keeps the L2 book, the trade tape and
//! the set of WebSocket subscribers, and forwards every engine event message to them.
//!
//! Upstream: a **core NATS subscription** on `market.<M>.evt`, plus the engine's
//! `api.market.<M>.snapshot` request. Why not an ordered JetStream consumer: the feed never needs
//! history (a snapshot is the state; replaying the events stream from the start would be slower
//! and unbounded), a core subscription has the lowest latency and no server-side state, and the
//! gapless event sequence already tells us when something was lost (the client library drops
//! messages when the subscription's buffer overflows): then the feed asks for a fresh snapshot.
//! The protocol is the one the engine documents: subscribe, then request the snapshot, drop
//! frames with `last <= snapshot.seq`, apply frames whose `first == last_seq + 1`, resync on any
//! other `first`.
//!
//! Downstream: every subscriber has a bounded queue ([`CLIENT_QUEUE`] messages). Fan-out uses
//! `try_send`; a subscriber whose queue is full is removed at once and told why
//! ([`SLOW_CONSUMER`]), so a client that stops reading costs at most its queue. Messages are
//! serialised once and shared (`ByteString` is reference-counted), so 1,000 clients hold one copy
//! of each message, not 1,000.
//!
//! Feeds start for every configured market when the API starts (there are few markets, and the
//! trade tape should cover the time before the first viewer).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytestring::ByteString;
use futures::StreamExt;
use gridbook_wire::market::{EventFrame, L2Snapshot, MarketStats};
use gridbook_wire::subjects;
use matching_core::{EventKind, Level, Side};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use utoipa::ToSchema;

use crate::markets::Markets;

/// Messages one WebSocket client may have queued before it is dropped as a slow consumer.
pub const CLIENT_QUEUE: usize = 1_024;
/// Trades kept per market for the tape (REST `trades` and the WebSocket snapshot).
pub const TRADES_KEPT: usize = 200;
/// Most WebSocket clients per market; more get 503 `too_many_clients`.
pub const MAX_CLIENTS_PER_MARKET: usize = 10_000;
/// How long the feed waits for the engine's snapshot reply.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait between two snapshot attempts while the engine does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The close reason a client dropped for not reading gets.
pub const SLOW_CONSUMER: &str = "slow consumer: the client's queue of 1024 messages was full";

/// One trade of the tape.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
pub struct Trade {
    /// Event sequence of the fill.
    pub seq: u64,
    /// Command time, ms since the Unix epoch.
    pub time: u64,
    /// Price in ticks.
    pub price: u64,
    /// Quantity in lots.
    pub qty: u64,
    /// The taker's side: `bid` = a buyer lifted an ask, `ask` = a seller hit a bid.
    #[schema(value_type = String, example = "bid")]
    pub taker_side: Side,
}

/// One price level of the L2 book.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
pub struct BookLevel {
    pub price: u64,
    pub qty: u64,
    pub orders: u32,
}

impl From<Level> for BookLevel {
    fn from(l: Level) -> Self {
        BookLevel { price: l.price, qty: l.qty, orders: l.orders }
    }
}

/// A level change: the level's new total; `qty: 0` removes it.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
pub struct Change {
    #[schema(value_type = String, example = "ask")]
    pub side: Side,
    pub price: u64,
    pub qty: u64,
    pub orders: u32,
}

/// Best bid and offer.
#[derive(Clone, Copy, Debug, Default, Serialize, ToSchema)]
pub struct Bbo {
    pub bid: Option<u64>,
    pub ask: Option<u64>,
}

/// WebSocket message `{"type":"snapshot",...}`: the whole book after event `seq`. Sent first on
/// connect, and again whenever the server had to resynchronise (it replaces the book).
#[derive(Serialize, ToSchema)]
pub struct WsSnapshot {
    /// Always `snapshot`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub market: String,
    pub seq: u64,
    /// Time of the last command applied, ms since the Unix epoch (0 before the first).
    pub time: u64,
    /// Best first.
    pub bids: Vec<BookLevel>,
    /// Best first.
    pub asks: Vec<BookLevel>,
    /// Oldest first, at most 200.
    pub trades: Vec<Trade>,
    pub bbo: Bbo,
}

/// WebSocket message `{"type":"delta",...}`: events `first..=last`; `first` is always the
/// previous message's `seq`/`last` + 1, otherwise the client missed something and must
/// reconnect (or wait for the next `snapshot`).
#[derive(Serialize, ToSchema)]
pub struct WsDelta {
    /// Always `delta`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub market: String,
    pub first: u64,
    pub last: u64,
    /// Command time of the last frame, ms since the Unix epoch (the engine's clock).
    pub time: u64,
    /// Apply in order.
    pub changes: Vec<Change>,
    /// Oldest first.
    pub trades: Vec<Trade>,
    pub bbo: Bbo,
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<ByteString>,
    kick: oneshot::Sender<&'static str>,
}

#[derive(Default)]
struct Book {
    synced: bool,
    seq: u64,
    time: u64,
    bids: BTreeMap<u64, (u64, u32)>,
    asks: BTreeMap<u64, (u64, u32)>,
    trades: VecDeque<Trade>,
    bbo: Bbo,
}

impl Book {
    fn levels(&self, side: Side, depth: usize) -> Vec<BookLevel> {
        let map = |(p, (q, o)): (&u64, &(u64, u32))| BookLevel { price: *p, qty: *q, orders: *o };
        match side {
            Side::Bid => self.bids.iter().rev().take(depth).map(map).collect(),
            Side::Ask => self.asks.iter().take(depth).map(map).collect(),
        }
    }
}

struct Inner {
    book: Book,
    subs: Vec<Subscriber>,
}

/// One market's feed state, shared by its task and the HTTP handlers.
pub struct MarketFeed {
    pub market: String,
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    /// Messages queued to clients, in total.
    pub delivered: AtomicU64,
    /// Clients dropped as slow consumers, in total.
    pub dropped_slow: AtomicU64,
    /// Resynchronisations (gaps upstream), in total.
    pub resyncs: AtomicU64,
}

/// A client's end: its bounded queue and the reason it was dropped, if it is. Dropping it
/// unsubscribes.
pub struct Subscription {
    pub rx: mpsc::Receiver<ByteString>,
    pub kicked: oneshot::Receiver<&'static str>,
    id: u64,
    feed: Arc<MarketFeed>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut inner = self.feed.lock();
        inner.subs.retain(|s| s.id != self.id);
    }
}

/// The book as REST serves it.
#[derive(Serialize, ToSchema)]
pub struct BookView {
    pub market: String,
    /// The event sequence this book reflects.
    pub seq: u64,
    pub bids: Vec<BookLevel>,
    pub asks: Vec<BookLevel>,
}

impl MarketFeed {
    fn new(market: String) -> Self {
        MarketFeed {
            market,
            inner: Mutex::new(Inner { book: Book::default(), subs: Vec::new() }),
            next_id: AtomicU64::new(1),
            delivered: AtomicU64::new(0),
            dropped_slow: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data; keep serving it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a client. When the feed is in sync its first queued message is the snapshot;
    /// otherwise the snapshot follows as soon as the feed is.
    pub fn subscribe(self: &Arc<Self>) -> Result<Subscription, crate::ApiError> {
        let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
        let (kick, kicked) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        if inner.subs.len() >= MAX_CLIENTS_PER_MARKET {
            return Err(crate::ApiError::new(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "too_many_clients",
                format!("this market already streams to {MAX_CLIENTS_PER_MARKET} clients; retry later"),
            ));
        }
        if inner.book.synced {
            let _ = tx.try_send(self.snapshot_message(&inner.book));
        }
        inner.subs.push(Subscriber { id, tx, kick });
        Ok(Subscription { rx, kicked, id, feed: self.clone() })
    }

    pub fn clients(&self) -> usize {
        self.lock().subs.len()
    }

    /// The book, `depth` levels a side, if the feed is in sync.
    pub fn book(&self, depth: usize) -> Option<BookView> {
        let inner = self.lock();
        inner.book.synced.then(|| BookView {
            market: self.market.clone(),
            seq: inner.book.seq,
            bids: inner.book.levels(Side::Bid, depth),
            asks: inner.book.levels(Side::Ask, depth),
        })
    }

    /// The last `limit` trades, newest first, and the sequence they are current to.
    pub fn trades(&self, limit: usize) -> (u64, bool, Vec<Trade>) {
        let inner = self.lock();
        let trades = inner.book.trades.iter().rev().take(limit).copied().collect();
        (inner.book.seq, inner.book.synced, trades)
    }

    /// Best bid/offer and the sequence, if in sync.
    pub fn bbo(&self) -> Option<(u64, Bbo)> {
        let inner = self.lock();
        inner.book.synced.then_some((inner.book.seq, inner.book.bbo))
    }

    fn snapshot_message(&self, book: &Book) -> ByteString {
        let msg = WsSnapshot {
            kind: "snapshot",
            market: self.market.clone(),
            seq: book.seq,
            time: book.time,
            bids: book.levels(Side::Bid, usize::MAX),
            asks: book.levels(Side::Ask, usize::MAX),
            trades: book.trades.iter().copied().collect(),
            bbo: book.bbo,
        };
        ByteString::from(serde_json::to_string(&msg).expect("snapshot serialises"))
    }

    /// Queues `msg` to every client; drops those whose queue is full.
    fn broadcast(&self, inner: &mut Inner, msg: ByteString) {
        let mut dropped = 0u64;
        let mut delivered = 0u64;
        let subs = std::mem::take(&mut inner.subs);
        for sub in subs {
            match sub.tx.try_send(msg.clone()) {
                Ok(()) => {
                    delivered += 1;
                    inner.subs.push(sub);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    dropped += 1;
                    let _ = sub.kick.send(SLOW_CONSUMER);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        self.delivered.fetch_add(delivered, Ordering::Relaxed);
        if dropped > 0 {
            self.dropped_slow.fetch_add(dropped, Ordering::Relaxed);
            warn!(market = %self.market, dropped, "dropped slow WebSocket clients");
        }
    }

    /// Replaces the book with the engine's snapshot and sends it to every client.
    fn reset(&self, snap: L2Snapshot, time: u64) {
        let mut inner = self.lock();
        let book = &mut inner.book;
        book.bids = snap.bids.iter().map(|l| (l.price, (l.qty, l.orders))).collect();
        book.asks = snap.asks.iter().map(|l| (l.price, (l.qty, l.orders))).collect();
        book.seq = snap.seq;
        book.time = book.time.max(time);
        book.bbo = Bbo {
            bid: book.bids.keys().next_back().copied(),
            ask: book.asks.keys().next().copied(),
        };
        // Trades before the snapshot that we never saw stay unseen; the tape keeps what it has.
        book.trades.retain(|t| t.seq <= snap.seq);
        book.synced = true;
        let msg = self.snapshot_message(&inner.book);
        self.broadcast(&mut inner, msg);
        info!(market = %self.market, seq = snap.seq, clients = inner.subs.len(), "feed in sync");
    }

    /// Applies one event message; `Err` on a gap (the feed is then out of sync).
    fn apply(&self, frames: &[EventFrame]) -> Result<(), Gap> {
        let mut inner = self.lock();
        if !inner.book.synced {
            return Err(Gap { expected: 0, got: 0 });
        }
        let mut changes = Vec::new();
        let mut trades = Vec::new();
        let mut first = None;
        let mut gap = None;
        for f in frames {
            let book = &mut inner.book;
            if f.last <= book.seq {
                continue; // already in the snapshot
            }
            if f.first != book.seq + 1 {
                gap = Some(Gap { expected: book.seq + 1, got: f.first });
                break;
            }
            first.get_or_insert(f.first);
            for e in &f.events {
                match e.kind {
                    EventKind::Delta { side, price, qty, orders } => {
                        let m = match side {
                            Side::Bid => &mut book.bids,
                            Side::Ask => &mut book.asks,
                        };
                        if qty == 0 {
                            m.remove(&price);
                        } else {
                            m.insert(price, (qty, orders));
                        }
                        changes.push(Change { side, price, qty, orders });
                    }
                    EventKind::Fill { taker_side, price, qty, .. } => {
                        let t = Trade { seq: e.seq, time: f.time, price, qty, taker_side };
                        if book.trades.len() == TRADES_KEPT {
                            book.trades.pop_front();
                        }
                        book.trades.push_back(t);
                        trades.push(t);
                    }
                    _ => {}
                }
            }
            book.seq = f.last;
            book.time = f.time;
            book.bbo = Bbo { bid: f.best_bid, ask: f.best_ask };
        }
        if let Some(first) = first {
            let book = &inner.book;
            let msg = WsDelta {
                kind: "delta",
                market: self.market.clone(),
                first,
                last: book.seq,
                time: book.time,
                changes,
                trades,
                bbo: book.bbo,
            };
            let text = ByteString::from(serde_json::to_string(&msg).expect("delta serialises"));
            self.broadcast(&mut inner, text);
        }
        match gap {
            Some(g) => {
                inner.book.synced = false;
                Err(g)
            }
            None => Ok(()),
        }
    }
}

#[derive(Debug)]
struct Gap {
    expected: u64,
    got: u64,
}

/// Every market's feed.
#[derive(Clone, Default)]
pub struct Feeds {
    by_market: Arc<HashMap<String, Arc<MarketFeed>>>,
}

impl Feeds {
    /// Starts one feed task per market of the catalogue (on the current tokio runtime).
    pub fn start(nats: async_nats::Client, markets: &Markets) -> Feeds {
        let mut by_market = HashMap::new();
        for symbol in markets.by_symbol.keys() {
            let feed = Arc::new(MarketFeed::new(symbol.clone()));
            tokio::spawn(run(feed.clone(), nats.clone()));
            by_market.insert(symbol.clone(), feed);
        }
        Feeds { by_market: Arc::new(by_market) }
    }

    pub fn get(&self, market: &str) -> Option<&Arc<MarketFeed>> {
        self.by_market.get(market)
    }
}

/// Asks the engine for the L2 snapshot of `market`.
pub async fn request_snapshot(nats: &async_nats::Client, market: &str) -> anyhow::Result<L2Snapshot> {
    let reply = tokio::time::timeout(SNAPSHOT_TIMEOUT, nats.request(subjects::market_snapshot(market), "".into()))
        .await
        .map_err(|_| anyhow::anyhow!("no snapshot reply within {SNAPSHOT_TIMEOUT:?}"))??;
    Ok(serde_json::from_slice(&reply.payload)?)
}

/// Asks the engine for the candles and 24 h figures of `market`.
pub async fn request_stats(nats: &async_nats::Client, market: &str) -> anyhow::Result<MarketStats> {
    let reply = tokio::time::timeout(SNAPSHOT_TIMEOUT, nats.request(subjects::market_stats(market), "".into()))
        .await
        .map_err(|_| anyhow::anyhow!("no stats reply within {SNAPSHOT_TIMEOUT:?}"))??;
    Ok(serde_json::from_slice(&reply.payload)?)
}

async fn run(feed: Arc<MarketFeed>, nats: async_nats::Client) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if let Err(e) = run_once(&feed, &nats).await {
            warn!(market = %feed.market, error = %e, "market feed restarting");
        }
        feed.lock().book.synced = false;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn run_once(feed: &MarketFeed, nats: &async_nats::Client) -> anyhow::Result<()> {
    // Subscribe first, then ask for the snapshot: no frame can fall between the two.
    let mut sub = nats.subscribe(subjects::market_evt(&feed.market)).await?;
    let mut want_snapshot = true;
    let mut backoff = Duration::from_millis(100);
    let mut warned = false;
    loop {
        while want_snapshot {
            match request_snapshot(nats, &feed.market).await {
                Ok(snap) => {
                    feed.reset(snap, 0);
                    want_snapshot = false;
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    if warned {
                        debug!(market = %feed.market, error = %e, "engine snapshot unavailable");
                    } else {
                        warn!(market = %feed.market, error = %e, "engine snapshot unavailable; retrying");
                        warned = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        let Some(msg) = sub.next().await else {
            anyhow::bail!("subscription to {} ended", subjects::market_evt(&feed.market));
        };
        let frames: Vec<EventFrame> = match serde_json::from_slice(&msg.payload) {
            Ok(f) => f,
            Err(e) => {
                warn!(market = %feed.market, error = %e, "undecodable event message skipped");
                continue;
            }
        };
        if let Err(gap) = feed.apply(&frames) {
            feed.resyncs.fetch_add(1, Ordering::Relaxed);
            warn!(market = %feed.market, expected = gap.expected, got = gap.got, "gap in the event feed; resynchronising");
            want_snapshot = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use matching_core::Event;

    fn frame(first: u64, events: Vec<EventKind>) -> EventFrame {
        let n = events.len() as u64;
        EventFrame {
            market: "M".into(),
            stream_seq: first,
            cmd: first,
            time: 1_000 + first,
            first,
            last: first + n - 1,
            events: events
                .into_iter()
                .enumerate()
                .map(|(i, kind)| Event { seq: first + i as u64, cmd: first, kind })
                .collect(),
            best_bid: Some(10),
            best_ask: None,
        }
    }

    fn delta(side: Side, price: u64, qty: u64) -> EventKind {
        EventKind::Delta { side, price, qty, orders: 1 }
    }

    #[test]
    fn deltas_apply_in_order_and_a_gap_unsyncs() {
        let feed = Arc::new(MarketFeed::new("M".into()));
        feed.reset(L2Snapshot { market: "M".into(), seq: 4, bids: vec![], asks: vec![] }, 0);
        let mut sub = feed.subscribe().unwrap();
        let snap = sub.rx.try_recv().unwrap();
        assert!(snap.contains("\"type\":\"snapshot\"") && snap.contains("\"seq\":4"));
        // an old frame is skipped, the next one applies
        feed.apply(&[frame(3, vec![delta(Side::Bid, 9, 1), delta(Side::Bid, 9, 0)]), frame(5, vec![delta(Side::Bid, 10, 3)])])
            .unwrap();
        let d = sub.rx.try_recv().unwrap();
        assert!(d.contains("\"first\":5") && d.contains("\"last\":5"), "{d}");
        assert_eq!(feed.book(10).unwrap().bids[0].qty, 3);
        // a gap
        assert!(feed.apply(&[frame(9, vec![delta(Side::Bid, 10, 0)])]).is_err());
        assert!(feed.book(10).is_none());
    }

    #[test]
    fn a_full_queue_drops_the_client_with_the_reason() {
        let feed = Arc::new(MarketFeed::new("M".into()));
        feed.reset(L2Snapshot { market: "M".into(), seq: 0, bids: vec![], asks: vec![] }, 0);
        let mut slow = feed.subscribe().unwrap();
        let mut fast = feed.subscribe().unwrap();
        for i in 1..=(CLIENT_QUEUE as u64 + 5) {
            feed.apply(&[frame(i, vec![delta(Side::Ask, 20, i)])]).unwrap();
            while fast.rx.try_recv().is_ok() {}
        }
        assert_eq!(slow.kicked.try_recv().unwrap(), SLOW_CONSUMER);
        assert_eq!(feed.clients(), 1);
        assert_eq!(feed.dropped_slow.load(Ordering::Relaxed), 1);
        assert!(fast.kicked.try_recv().is_err());
    }

    #[test]
    fn the_tape_is_bounded() {
        let feed = Arc::new(MarketFeed::new("M".into()));
        feed.reset(L2Snapshot { market: "M".into(), seq: 0, bids: vec![], asks: vec![] }, 0);
        for i in 1..=(TRADES_KEPT as u64 + 50) {
            let fill = EventKind::Fill {
                maker: matching_core::OrderId(1),
                taker: matching_core::OrderId(2),
                maker_account: matching_core::AccountId(1),
                taker_account: matching_core::AccountId(2),
                taker_side: Side::Bid,
                price: 100 + i,
                qty: 1,
                fee: 0,
                maker_left: 0,
                taker_left: 0,
            };
            feed.apply(&[frame(i, vec![fill])]).unwrap();
        }
        let (seq, synced, trades) = feed.trades(10_000);
        assert!(synced);
        assert_eq!(seq, TRADES_KEPT as u64 + 50);
        assert_eq!(trades.len(), TRADES_KEPT);
        assert_eq!(trades[0].price, 100 + TRADES_KEPT as u64 + 50, "newest first");
    }
}
