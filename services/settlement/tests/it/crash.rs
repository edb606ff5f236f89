//! The real `settlement-worker` binary killed with SIGKILL several times while event messages
//! flow: after a final restart every fill settled once, every release once, every assignment
//! was published once, and no money appeared or vanished.

use std::time::Duration;

use gridbook_ledger::escrow;
use gridbook_ledger::settlement;
use gridbook_ledger::{AccountCode, AccountId};
use gridbook_settlement::decide::fill_id;
use gridbook_testkit::{Proc, WorkerConfig};
use matching_core::{EventKind, Side};
use uuid::Uuid;

use crate::*;

/// The `settlement-worker` binary taking only `market`'s events, its output appended to `log`;
/// SIGKILL on drop (also when the test fails) or `kill()`.
pub fn spawn_worker(db_url: &str, market: &str, log: &std::path::Path) -> Proc {
    gridbook_testkit::spawn_worker(
        &WorkerConfig {
            database_url: db_url.to_owned(),
            nats_url: nats_url(),
            nkey_file: gridbook_testkit::NatsAccess::shared().nkey_file(gridbook_testkit::Service::Settlement),
            consumer: Some(consumer_name(market)),
            filter_subject: Some(subjects::market_evt(market)),
            outbox_interval_ms: Some(20),
            ack_wait_secs: Some(2),
            max_reoffers: None,
            bin: Some(env!("CARGO_BIN_EXE_settlement-worker").into()),
            ..WorkerConfig::default()
        },
        log,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_settles_every_fill_once() {
    const BIDS: usize = 24;
    let db = fresh_db();
    let c = &mut db.conn();
    let market = unique_market("CRASH");
    let js = jetstream().await;
    let log = std::env::temp_dir().join(format!("{market}.log"));

    escrow::ensure_system_accounts(c, LEDGER).unwrap();
    let studio = funded(c, AccountCode::Studio, 10_000_000);
    let providers: Vec<(AccountId, Uuid)> = (0..4)
        .map(|_| (funded(c, AccountCode::Provider, 0), Uuid::now_v7()))
        .collect();
    let money = money_in_platform(c);
    let unit_reserve = settlement::unit_reserve(120, FEE_BPS).unwrap();

    // Each round: three asks rest, an escrowed bid of 10 lots takes them at their prices; when
    // the asks leave some of the bid open, a cancel releases the rest.
    let mut sim = Sim::new(&market);
    let mut expected_studio = 10_000_000i64;
    let mut fills_expected = vec![];
    let mut releases = 0;
    for r in 0..BIDS {
        let bid = escrowed_bid(c, &market, studio, 10, 120);
        expected_studio -= 10 * unit_reserve;
        let mut asked = 0;
        for k in 0..3 {
            let (acct, node) = providers[(r + k) % providers.len()];
            let ask = provider_ask(c, &market, acct, node);
            let qty = 1 + ((r + k) % 3) as u64;
            asked += qty;
            sim.place(
                ask,
                100 + k as u64,
                Side::Ask,
                100 + ((r * 7 + k * 3) % 21) as u64,
                qty,
            );
        }
        for e in sim.place(bid, 1, Side::Bid, 120, 10) {
            if let EventKind::Fill { price, qty, .. } = e.kind {
                let (qty, price) = (qty as i64, price as i64);
                let gross = qty * price;
                expected_studio +=
                    qty * unit_reserve - gross - settlement::fee(gross, FEE_BPS).unwrap();
                fills_expected.push((e.seq, qty, price));
            }
        }
        if asked < 10 {
            sim.cancel(bid, 1);
            expected_studio += (10 - asked as i64) * unit_reserve;
            releases += 1;
        }
    }
    assert_eq!(fills_expected.len(), 3 * BIDS);
    assert!(releases > 0);

    // Publish while killing the worker with SIGKILL three times, then let a last one finish.
    let mut child = spawn_worker(db.url(), &market, &log);
    let frames = sim.frames.clone();
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            for chunk in frames.chunks(3) {
                publish(&js, chunk, 3, "").await;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    // Kill on progress, not on a timer (a slow start-up must not turn the kills into no-ops):
    // once a fifth, a half and three quarters of the effects are settled.
    let effects = (fills_expected.len() + releases) as i64;
    let mut mid_run_kills = 0;
    for threshold in [effects / 5, effects / 2, effects * 3 / 4] {
        let start = std::time::Instant::now();
        while count(c, "SELECT count(*) AS n FROM processed_events") < threshold {
            assert!(start.elapsed() < Duration::from_secs(60), "the worker made no progress to {threshold} events");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill();
        let done = count(c, "SELECT count(*) AS n FROM processed_events");
        eprintln!("killed the worker with {done} of {effects} events settled");
        mid_run_kills += usize::from(done > 0 && done < effects);
        child = spawn_worker(db.url(), &market, &log);
    }
    publisher.await.unwrap();
    assert!(mid_run_kills > 0, "no kill landed while messages flowed");

    wait_until(
        Duration::from_secs(30),
        "settlement after the crashes",
        || {
            count(c, "SELECT count(*) AS n FROM processed_events") == effects
                && count(
                    c,
                    "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL",
                ) == 0
        },
    )
    .await;
    wait_drained(&js, &market).await;
    child.kill();

    assert_eq!(
        count(c, "SELECT count(*) AS n FROM escrow_assignments"),
        fills_expected.len() as i64
    );
    assert_eq!(
        count(c, "SELECT count(*) AS n FROM outbox"),
        fills_expected.len() as i64
    );
    for &(seq, qty, price) in &fills_expected {
        let a = escrow::get_assignment(c, fill_id(&market, seq)).unwrap();
        assert_eq!((a.quantity, a.trade_price), (qty, price), "fill {seq}");
    }
    assert_eq!(posted(c, studio), expected_studio as i128);
    assert_eq!(
        count(
            c,
            "SELECT coalesce(sum(quantity_open), 0)::bigint AS n FROM escrow_orders"
        ),
        0
    );
    assert_healthy(c);
    assert_eq!(money_in_platform(c), money);

    // Each assignment reached its node exactly once.
    let mut seen = std::collections::BTreeSet::new();
    for (_, node) in &providers {
        for (_, m) in assignments_of(&js, *node).await {
            assert_eq!(m.node_id, *node);
            assert!(
                seen.insert(m.assignment_id),
                "assignment {} published twice",
                m.assignment_id
            );
        }
    }
    let want: std::collections::BTreeSet<_> = fills_expected
        .iter()
        .map(|f| fill_id(&market, f.0))
        .collect();
    assert_eq!(seen, want);

    delete_consumer(&js, &market).await;
    let _ = std::fs::remove_file(&log);
}
