//! A worker that takes over the event consumer from a holder that died mid-batch settles the
//! dead holder's unacked messages before the newer ones (`worker::await_earlier_deliveries`):
//! a market's events settle in stream order across a failover.
//!
//! The dead holder is this test: it pulls the first two messages (an ask, then the bid that
//! fills 3 of its 10 units) on the worker's durable consumer and never acks them; the third (the
//! bid's cancel, releasing the 7 units left) is still undelivered. A worker that pulled at once
//! would settle the cancel before the fill (checked by the settle times of `processed_events`;
//! without the wait this test fails on that order). The money ends right either way here (the
//! cancel releases what its event says is left), so the order is the thing checked.

use gridbook_settlement::dead_letter;

use crate::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successor_settles_the_dead_holders_unacked_events_before_newer_ones() {
    let db = fresh_db();
    let c = &mut db.conn();
    let market = unique_market("LEASE");
    let js = jetstream().await;
    escrow::ensure_system_accounts(c, LEDGER).unwrap();
    let studio = funded(c, AccountCode::Studio, 100_000);
    let provider = funded(c, AccountCode::Provider, 0);
    let money = money_in_platform(c);
    let bid = escrowed_bid(c, &market, studio, 10, 120);
    let ask = provider_ask(c, &market, provider, uuid::Uuid::now_v7());

    let mut sim = Sim::new(&market);
    sim.place(ask, 2, Side::Ask, 100, 3);
    sim.place(bid, 1, Side::Bid, 120, 10);
    sim.cancel(bid, 1);
    assert_eq!(sim.frames.len(), 3);

    let mut s = settings(db.url(), &market);
    s.ack_wait_secs = 2;
    s.lease_poll_ms = 100;
    // The dead holder: the worker's own durable consumer, two messages pulled and never acked.
    let consumer: PullConsumer = js
        .get_stream(streams::EVENTS)
        .await
        .unwrap()
        .get_or_create_consumer(
            &s.consumer,
            pull::Config {
                durable_name: Some(s.consumer.clone()),
                filter_subject: s.filter_subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(s.ack_wait_secs),
                max_deliver: s.max_deliver,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    publish(&js, &sim.frames, 1, "").await;
    let mut taken = consumer.fetch().max_messages(2).messages().await.unwrap();
    let mut held = vec![];
    while let Some(m) = taken.next().await {
        held.push(m.unwrap());
    }
    assert_eq!(held.len(), 2, "the dead holder took the first two messages");
    drop(taken);

    let worker = tokio::spawn(gridbook_settlement::run(s));
    // Recorded as processed: the fill and the cancel (an ask's placement moves no money).
    wait_until(Duration::from_secs(30), "the fill and the cancel to settle", || {
        count(c, &format!("SELECT count(*)::bigint AS n FROM processed_events WHERE event_id LIKE '{market}.%'")) >= 2
    })
    .await;
    wait_drained(&js, &market).await;
    // In stream order: the fill (the dead holder's second message) before the cancel (the
    // third, never delivered to it). A successor that pulled at once would settle the cancel
    // first (the release of what the event says is left is the same either way, so only the
    // order shows it).
    #[derive(diesel::QueryableByName)]
    struct Seq {
        #[diesel(sql_type = diesel::sql_types::Text)]
        event_id: String,
    }
    let order: Vec<u64> = diesel::sql_query(format!(
        "SELECT event_id FROM processed_events WHERE event_id LIKE '{market}.%' ORDER BY processed_at, event_id"
    ))
    .load::<Seq>(c)
    .unwrap()
    .into_iter()
    .map(|r| r.event_id.rsplit('.').next().unwrap().parse().unwrap())
    .collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(order, sorted, "events settled out of stream order (seq by settle time)");
    let dead = dead_letter::list(c, 10).unwrap();
    assert!(dead.is_empty(), "events settled out of order: {dead:?}");
    let filled = count(c, "SELECT coalesce(sum(quantity), 0)::bigint AS n FROM escrow_assignments");
    assert_eq!(filled, 3, "the fill of 3 units settled once, before the cancel");
    assert_eq!(count(c, "SELECT count(*)::bigint AS n FROM escrow_assignments"), 1);
    let order = orders::get(c, bid).unwrap().expect("the bid's market order").order_id;
    assert_eq!(escrow::get_order(c, order).unwrap().quantity_open, 0, "the cancel released the 7 units left");
    assert_healthy(c);
    assert_eq!(money_in_platform(c), money);
    worker.abort();
    delete_consumer(&js, &market).await;
}
