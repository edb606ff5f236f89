//! Partial fills, a cancel, a rejected place and foreign traffic through the real worker (in
//! process), then the same messages republished: every effect once.

use std::time::Duration;

use gridbook_ledger::escrow;
use gridbook_ledger::settlement::AssignmentStatus;
use gridbook_ledger::{AccountCode, AccountId};
use gridbook_settlement::decide::fill_id;
use matching_core::{EventKind, Side};
use uuid::Uuid;

use crate::*;

fn fills(events: &[matching_core::Event]) -> Vec<(u64, u64, u64)> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Fill { price, qty, .. } => Some((e.seq, price, qty)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_fills_assign_at_the_trade_price_cancels_release_and_republished_events_settle_once()
 {
    let db = fresh_db();
    let c = &mut db.conn();
    let market = unique_market("FLOW");
    let js = jetstream().await;

    escrow::ensure_system_accounts(c, LEDGER).unwrap();
    let studio = funded(c, AccountCode::Studio, 1_000_000);
    let (p1, p2) = (
        funded(c, AccountCode::Provider, 0),
        funded(c, AccountCode::Provider, 0),
    );
    let (n1, n2) = (Uuid::now_v7(), Uuid::now_v7());
    let money = money_in_platform(c);
    // 10 lots at ≤ 120 ticks, 2.5 % fee: 123 per lot reserved.
    let bid = escrowed_bid(c, &market, studio, 10, 120);
    // Above the market's max_price: the engine rejects the place.
    let rejected = escrowed_bid(c, &market, studio, 2, 2_000);
    let a1 = provider_ask(c, &market, p1, n1);
    let a2 = provider_ask(c, &market, p2, n2);
    assert_eq!(posted(c, studio), 1_000_000 - 1_230 - 4_100);

    let mut sim = Sim::new(&market);
    // Load-test traffic without market_orders rows trades among itself: skipped.
    sim.place(9_000_001, 90, Side::Ask, 50, 2);
    sim.place(9_000_002, 91, Side::Bid, 60, 2);
    sim.place(a1, 2, Side::Ask, 100, 3);
    sim.place(a2, 3, Side::Ask, 110, 4);
    let f = fills(&sim.place(bid, 1, Side::Bid, 120, 10));
    assert_eq!(
        f.iter().map(|x| (x.1, x.2)).collect::<Vec<_>>(),
        vec![(100, 3), (110, 4)]
    );
    sim.place(rejected, 1, Side::Bid, 2_000, 2);
    sim.cancel(bid, 1);

    let worker = tokio::spawn(gridbook_settlement::run(settings(db.url(), &market)));
    // An undecodable message is acked and does not block the rest.
    js.publish(subjects::market_evt(&market), "not an event frame".into())
        .await
        .unwrap()
        .await
        .unwrap();
    publish(&js, &sim.frames, 2, "").await;

    let check = |c: &mut diesel::PgConnection| {
        // 2 fills + 1 rejected place + 1 cancel; the foreign fill is not recorded; the
        // undecodable message is, once, with its dead letter.
        assert_eq!(
            count(c, "SELECT count(*) AS n FROM processed_events WHERE event_id NOT LIKE '%#%'"),
            4
        );
        assert_eq!(
            count(c, "SELECT count(*) AS n FROM dead_letters WHERE reason = 'undecodable' \
                AND payload = convert_to('not an event frame', 'UTF8')"),
            1
        );
        assert_eq!(count(c, "SELECT count(*) AS n FROM dead_letters"), 1);
        assert_eq!(count(c, "SELECT count(*) AS n FROM escrow_assignments"), 2);
        assert_eq!(count(c, "SELECT count(*) AS n FROM outbox"), 2);
        // Reserved 1,230 + 4,100; fills release the improvement (1,230/10×3 − 300 − 8 = 61,
        // 492 − 440 − 11 = 41), the cancel 3 × 123, the rejected place all 4,100.
        assert_eq!(posted(c, studio), 1_000_000 - 1_230 + 61 + 41 + 369);
        let a = escrow::get_assignment(c, fill_id(&market, f[0].0)).unwrap();
        assert_eq!(
            (a.provider_account, a.quantity, a.trade_price),
            (p1, 3, 100)
        );
        let b = escrow::get_assignment(c, fill_id(&market, f[1].0)).unwrap();
        assert_eq!(
            (b.provider_account, b.quantity, b.trade_price),
            (p2, 4, 110)
        );
        assert_eq!(
            store::get_account(c, p1).unwrap().balances.credits_pending,
            300
        );
        assert_eq!(escrow::get_order(c, a.order_id).unwrap().quantity_open, 0);
        assert_healthy(c);
        assert_eq!(money_in_platform(c), money);
    };
    let published = |c: &mut diesel::PgConnection| {
        count(c, "SELECT count(*) AS n FROM processed_events WHERE event_id NOT LIKE '%#%'") == 4
            && count(
                c,
                "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL",
            ) == 0
            && count(c, "SELECT count(*) AS n FROM outbox") == 2
    };
    wait_until(Duration::from_secs(20), "settlement", || published(c)).await;
    wait_drained(&js, &market).await;
    check(c);

    // The same messages again under new message ids (JetStream keeps them): no new effect.
    publish(&js, &sim.frames, 1, ".again").await;
    wait_drained(&js, &market).await;
    check(c);
    for (node, (seq, price, qty)) in [(n1, f[0]), (n2, f[1])] {
        let msgs = assignments_of(&js, node).await;
        assert_eq!(msgs.len(), 1, "one assignment message for node {node}");
        let (msg_id, m) = &msgs[0];
        assert_eq!(m.assignment_id, fill_id(&market, seq));
        assert_eq!((m.qty, m.price, m.node_id), (qty, price, node));
        assert_eq!(
            (m.bid_engine_order_id, m.market.as_str()),
            (bid, market.as_str())
        );
        let outbox_id: Uuid = msg_id.parse().expect("Nats-Msg-Id is the outbox id");
        assert_eq!(
            count(
                c,
                &format!(
                    "SELECT count(*) AS n FROM outbox WHERE id = '{outbox_id}' AND payload->>'assignment_id' = '{}'",
                    m.assignment_id
                )
            ),
            1
        );
    }

    // Verified completion pays the provider and the fee; a failure voids back to the studio.
    let a = escrow::complete(c, fill_id(&market, f[0].0), 3).unwrap();
    assert_eq!(a.status, AssignmentStatus::Completed);
    escrow::void(c, fill_id(&market, f[1].0)).unwrap();
    assert_eq!(posted(c, p1), 300);
    assert_eq!(posted(c, p2), 0);
    assert_eq!(posted(c, AccountId::system(LEDGER, "protocol_fee")), 8);
    assert_eq!(posted(c, studio), 1_000_000 - 300 - 8);
    assert_healthy(c);
    assert_eq!(money_in_platform(c), money);

    worker.abort();
    delete_consumer(&js, &market).await;
}
