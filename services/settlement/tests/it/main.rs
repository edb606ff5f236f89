//! One integration-test binary. Needs a PostgreSQL server (`GRIDBOOK_DATABASE_URL`; each test
//! gets a fresh database from a migrated template) and a NATS server with JetStream
//! (`GRIDBOOK_NATS_URL`); `cargo xtask test` exports both. Each test uses its own market name, so
//! tests share the NATS server safely.

mod canary;
mod cheating;
mod crosscheck;
mod crash;
mod dead_letters;
mod e2e;
mod epochs;
mod flow;
mod lease;
mod probation;
mod redo;
mod settle;
mod withhold;

use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self, Context,
    consumer::{PullConsumer, pull},
    message::PublishMessage,
};
use diesel::RunQueryDsl;
use futures::StreamExt;
use gridbook_ledger::escrow::{self, Bid};
use gridbook_ledger::{AccountCode, AccountId, NewAccount, NewTransfer, TransferId, store};
use gridbook_db::market_orders as orders;
use gridbook_settlement::{Settings, decide::AssignmentMsg};
use gridbook_wire::{headers, market::EventFrame, streams, subjects};
use matching_core::{
    AccountId as EngAcct, Cancel, Command, CommandKind, Event, MarketConfig, MarketId, OrderBook,
    OrderId, Place, Side, TimeInForce,
};

pub const NATS_URL_VAR: &str = "GRIDBOOK_NATS_URL";
pub const LEDGER: &str = "USD";
pub const FEE_BPS: u32 = 250;

pub fn nats_url() -> String {
    std::env::var(NATS_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{NATS_URL_VAR} is not set: these tests need a NATS server with JetStream, e.g. \
             {NATS_URL_VAR}=nats://127.0.0.1:44222 (cargo xtask test sets it)"
        )
    })
}

/// A market name of this test alone.
pub fn unique_market(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("SETTLE-{tag}-{}-{nanos}", std::process::id())
}

pub async fn jetstream() -> Context {
    let client = gridbook_testkit::NatsAccess::shared().try_connect(gridbook_testkit::Service::Api)
        .await
        .expect("connect to NATS");
    let js = jetstream::new(client);
    gridbook_settlement::worker::ensure_streams(&js, gridbook_wire::streams::DEFAULT_REPLICAS)
        .await
        .expect("ensure streams");
    js
}

/// Settings for a worker that takes only `market`'s events into the database at `db_url`.
pub fn settings(db_url: &str, market: &str) -> Settings {
    Settings {
        database_url: db_url.to_owned(),
        nats_url: nats_url(),
        nats_nkey_file: gridbook_testkit::NatsAccess::shared().nkey_file(gridbook_testkit::Service::Settlement),
        consumer: consumer_name(market),
        filter_subject: subjects::market_evt(market),
        outbox_interval_ms: 50,
        ..Settings::default()
    }
}

pub fn consumer_name(market: &str) -> String {
    format!("settle-{market}")
}

pub async fn delete_consumer(js: &Context, market: &str) {
    let _ = js
        .delete_consumer_from_stream(consumer_name(market), streams::EVENTS)
        .await;
}

/// The pure engine, driven like the engine's shell does: one frame per command.
pub struct Sim {
    pub market: String,
    book: OrderBook,
    time: u64,
    pub frames: Vec<EventFrame>,
}

impl Sim {
    pub fn new(market: &str) -> Self {
        let config = MarketConfig {
            market: MarketId(market.to_owned()),
            max_price: 1_000,
            fee_bps: FEE_BPS,
            ..MarketConfig::default()
        };
        Sim {
            market: market.to_owned(),
            book: OrderBook::new(config).unwrap(),
            time: 1_000,
            frames: vec![],
        }
    }

    /// Applies one command; returns its events (also kept as a frame).
    pub fn apply(&mut self, kind: CommandKind) -> Vec<Event> {
        let cmd = self.book.last_seq() + 1;
        self.time += 10;
        let mut events = vec![];
        self.book.apply(
            &Command {
                seq: cmd,
                time: self.time,
                kind,
            },
            &mut events,
        );
        if let (Some(first), Some(last)) = (events.first(), events.last()) {
            self.frames.push(EventFrame {
                market: self.market.clone(),
                stream_seq: cmd,
                cmd,
                time: self.time,
                first: first.seq,
                last: last.seq,
                events: events.clone(),
                best_bid: self.book.best_bid(),
                best_ask: self.book.best_ask(),
            });
        }
        events
    }

    pub fn place(&mut self, id: u64, account: u64, side: Side, price: u64, qty: u64) -> Vec<Event> {
        self.apply(gtc(id, account, side, price, qty))
    }

    pub fn cancel(&mut self, id: u64, account: u64) -> Vec<Event> {
        self.apply(CommandKind::Cancel(Cancel {
            id: OrderId(id),
            account: EngAcct(account),
        }))
    }
}

/// A GTC limit order.
pub fn gtc(id: u64, account: u64, side: Side, price: u64, qty: u64) -> CommandKind {
    CommandKind::Place(Place {
        id: OrderId(id),
        account: EngAcct(account),
        owner: None,
        side,
        price: Some(price),
        qty,
        tif: TimeInForce::Gtc,
        post_only: false,
        budget: None,
        stp: None,
    })
}

/// Publishes `frames` like the engine: `per_message` frames per message, `Nats-Msg-Id` =
/// `<market>.<first event seq>` + `suffix` (a suffix makes JetStream keep a republished copy).
pub async fn publish(js: &Context, frames: &[EventFrame], per_message: usize, suffix: &str) {
    for chunk in frames.chunks(per_message) {
        let (first, last) = (chunk[0].first, chunk[chunk.len() - 1].last);
        let market = &chunk[0].market;
        let msg = PublishMessage::build()
            .payload(serde_json::to_vec(chunk).unwrap().into())
            .message_id(format!("{market}.{first}{suffix}"))
            .header(headers::LAST_SEQ, last.to_string());
        js.send_publish(subjects::market_evt(market), msg)
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// Opens an account funded with `amount` from the operator account.
pub fn funded(conn: &mut diesel::PgConnection, code: AccountCode, amount: i64) -> AccountId {
    let op = NewAccount::system(LEDGER, AccountCode::Operator);
    store::create_account(conn, &op).unwrap();
    let id = AccountId::new();
    store::create_account(conn, &NewAccount::new(id, LEDGER, code)).unwrap();
    if amount > 0 {
        store::create_transfer(
            conn,
            &NewTransfer::posted(TransferId::new(), op.id, id, amount, "deposit"),
        )
        .unwrap();
    }
    id
}

/// What the API does for a bid: an engine order id, the escrow reservation and the mapping.
pub fn escrowed_bid(
    conn: &mut diesel::PgConnection,
    market: &str,
    studio: AccountId,
    qty: i64,
    limit: i64,
) -> u64 {
    let engine_id = orders::next_engine_order_id(conn).unwrap();
    let order_id = uuid::Uuid::now_v7();
    escrow::reserve_bid(
        conn,
        &Bid {
            order_id,
            studio_account: studio,
            quantity: qty,
            limit_price: limit,
            fee_bps: FEE_BPS,
        },
    )
    .unwrap();
    orders::insert(
        conn,
        &orders::MarketOrder {
            engine_order_id: engine_id,
            market: market.to_owned(),
            side: Side::Bid,
            order_id,
            account_id: studio.0,
            node_id: None,
            job_id: None,
            accepted_seq: None,
        },
    )
    .unwrap();
    engine_id
}

/// A provider's ask on `node`.
pub fn provider_ask(
    conn: &mut diesel::PgConnection,
    market: &str,
    provider: AccountId,
    node: uuid::Uuid,
) -> u64 {
    let engine_id = orders::next_engine_order_id(conn).unwrap();
    orders::insert(
        conn,
        &orders::MarketOrder {
            engine_order_id: engine_id,
            market: market.to_owned(),
            side: Side::Ask,
            order_id: uuid::Uuid::now_v7(),
            account_id: provider.0,
            node_id: Some(node),
            job_id: None,
            accepted_seq: None,
        },
    )
    .unwrap();
    engine_id
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

pub fn count(conn: &mut diesel::PgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<Count>(conn).unwrap().n
}

/// Polls `done` until it holds or `timeout` passes.
pub async fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the test's consumer has acked everything published so far.
pub async fn wait_drained(js: &Context, market: &str) {
    let start = Instant::now();
    loop {
        let stream = js.get_stream(streams::EVENTS).await.unwrap();
        if let Ok(mut c) = stream
            .get_consumer::<pull::Config>(&consumer_name(market))
            .await
        {
            let info = c.info().await.unwrap();
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "consumer did not drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every assignment message stored for `node`, with its `Nats-Msg-Id`.
pub async fn assignments_of(js: &Context, node: uuid::Uuid) -> Vec<(String, AssignmentMsg)> {
    let stream = js.get_stream(streams::ASSIGNMENTS).await.unwrap();
    let consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            filter_subject: subjects::node_assign(&node.to_string()),
            ack_policy: jetstream::consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(10),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = vec![];
    loop {
        let mut batch = consumer.fetch().max_messages(500).messages().await.unwrap();
        let before = out.len();
        while let Some(m) = batch.next().await {
            let m = m.unwrap();
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::MSG_ID))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            out.push((id, serde_json::from_slice(&m.payload).unwrap()));
        }
        if out.len() == before {
            return out;
        }
    }
}

pub fn assert_healthy(conn: &mut diesel::PgConnection) {
    let v = store::check_invariants(conn).unwrap();
    assert!(v.is_empty(), "ledger invariants broken: {v:?}");
}

/// Σ posted balance of every account but the operator's: the money deposited into the platform.
pub fn money_in_platform(conn: &mut diesel::PgConnection) -> i64 {
    count(
        conn,
        &format!(
            "SELECT coalesce(sum(credits_posted - debits_posted), 0)::bigint AS n FROM ledger_accounts \
             WHERE id <> '{}'",
            AccountId::system(LEDGER, AccountCode::Operator.as_str())
        ),
    )
}

pub fn posted(conn: &mut diesel::PgConnection, a: AccountId) -> i128 {
    store::get_account(conn, a).unwrap().balances.posted()
}

/// A fresh database for one test. Migrations run once more on it: a template made by a build
/// whose embedded migrations predate a new migration folder would otherwise lack its tables
/// (the worker binary runs them at start-up too).
pub fn fresh_db() -> gridbook_db::testing::TestDb {
    let db = gridbook_db::testing::TestDb::new();
    gridbook_db::run_migrations(&mut db.conn()).expect("migrate the test database");
    db
}
