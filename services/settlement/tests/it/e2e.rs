//! End to end through the real processes: commands published on NATS (what the API's outbox
//! does) → the real `matching-engine` binary matches them → the real `settlement-worker`
//! binary moves the escrow and publishes the assignments. Real PostgreSQL, real JetStream.

use std::time::Duration;

use gridbook_ledger::AccountCode;
use gridbook_testkit::{Engine, EngineConfig, Market, TempDir};
use matching_core::{AccountId as EngAcct, Cancel, CommandKind, OrderId, Side};

use crate::crash::spawn_worker;
use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bid_matched_by_the_real_engine_is_settled_by_the_real_worker() {
    let db = fresh_db();
    let c = &mut db.conn();
    let market = unique_market("E2E");
    let js = jetstream().await;
    let tmp = TempDir::new("settlement-e2e");
    let dir = tmp.path();
    let mut engine = Engine::start(
        &gridbook_testkit::NatsAccess::shared(),
        EngineConfig {
            engine_id: Some(format!("e2e-{market}")),
            lease_secs: Some(3),
            dir: Some(dir.to_owned()),
            ..EngineConfig::markets(vec![Market::new(&market, FEE_BPS)])
        },
    );
    // The engine creates the command stream; on a fresh server nothing else has yet.
    let client = gridbook_testkit::NatsAccess::shared().try_connect(gridbook_testkit::Service::Api).await.expect("connect to NATS");
    engine.wait_serving(&client).await;
    let _worker = spawn_worker(db.url(), &market, &dir.join("worker.log"));

    // What the API does: accounts, the escrow reservation, the id mapping (one transaction there).
    let studio = funded(c, AccountCode::Studio, 1_000_000);
    let provider = funded(c, AccountCode::Provider, 0);
    let node = uuid::Uuid::now_v7();
    let platform_before = money_in_platform(c);
    let ask1 = provider_ask(c, &market, provider, node);
    let ask2 = provider_ask(c, &market, provider, node);
    let bid = escrowed_bid(c, &market, studio, 10, 120);

    // ...and the commands it queues: two asks alone, then the bid and its cancel as one array.
    let subject = subjects::market_cmd(&market);
    let messages = [
        serde_json::to_vec(&gtc(ask1, 2, Side::Ask, 100, 3)).unwrap(),
        serde_json::to_vec(&gtc(ask2, 2, Side::Ask, 110, 4)).unwrap(),
        serde_json::to_vec(&vec![
            gtc(bid, 1, Side::Bid, 120, 10),
            CommandKind::Cancel(Cancel { id: OrderId(bid), account: EngAcct(1) }),
        ])
        .unwrap(),
    ];
    for (i, payload) in messages.into_iter().enumerate() {
        let msg = PublishMessage::build().payload(payload.into()).message_id(format!("{market}.cmd.{i}"));
        js.send_publish(subject.clone(), msg).await.unwrap().await.unwrap();
    }

    // Fills at the asks' prices (3 @ 100, 4 @ 110); improvement and the cancelled 3 go back:
    // the studio keeps 1,000,000 − (300 + ⌈7.5⌉) − (440 + ⌈11⌉) = 999,241 posted.
    let start = std::time::Instant::now();
    loop {
        let assignments = assignments_of(&js, node).await;
        if assignments.len() == 2 && posted(c, studio) == 999_241 {
            let mut got: Vec<(u64, u64)> = assignments.iter().map(|(_, a)| (a.qty, a.price)).collect();
            got.sort();
            assert_eq!(got, [(3, 100), (4, 110)]);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "not settled in time: {} assignments, studio posted {} (worker log: {})",
            assignments.len(),
            posted(c, studio),
            dir.join("worker.log").display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_healthy(c);
    assert_eq!(money_in_platform(c), platform_before, "money was created or destroyed");
}
