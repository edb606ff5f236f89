//! The economics end to end on real parts (agent, engine, worker, API, PostgreSQL, NATS): a
//! verified job's fees, epochs closed on the worker's own schedule (4-second epochs), the
//! provider rewarded in credits and GRID from measured inputs (its heartbeats' uptime, its
//! reliability, its verified work), the provider selling GRID on the `GRID-CREDITS` market, the
//! treasury buying it back at a limit fixed from the last trades and burning it, and the public
//! books (`/v1/protocol/…`) that let anyone recompute all of it: every fee in exactly one epoch,
//! the supply identity, the ledger's invariants, no credit created or destroyed.

use std::time::{Duration, Instant};

use gridbook_testkit::{Stack, StackOptions};
use serde_json::{Value, json};

use crate::journey::{json_of, start_provider, submit_job, wait_for_job};

const RENDER: &str = "RENDER-TERRAIN-128";
const UNIT: i64 = 1_000_000;

async fn public(app: &gridbook_testkit::TestApp, path: &str) -> Value {
    json_of(app.http.get(app.url(path)).send().await.unwrap()).await
}

async fn wait_for(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<Value>) -> Value {
    let started = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(started.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn economics_fees_rewards_grid_market_buyback_and_burn_reconcile() {
    let stack = Stack::start_with(
        "economics",
        StackOptions {
            worker: Some(|w| {
                w.close_epochs = true;
                w.epoch_secs = 4;
                w.epoch_check_secs = 1;
                w.epoch_grace_secs = 0;
            }),
            ..StackOptions::default()
        },
    )
    .await;
    let app = &stack.app;

    // 1. A verified job: 10 tiles at 1,000 each, a 25-credit fee per tile.
    let (provider, _agent) = start_provider(&stack, RENDER, 1_000, 10).await;
    let studio = app.signup("studio").await;
    app.credit(&studio, 100_000).await;
    let tiles: String = (0..10)
        .map(|i| json!({"custom_id": format!("t{i}"), "seed": 500 + i, "difficulty": 30}).to_string() + "\n")
        .collect();
    let job_id = submit_job(app, &studio, RENDER, &tiles, 1_000, 10).await;
    let (job, seen) = wait_for_job(app, &studio, &job_id).await;
    assert_eq!(job["status"], "completed", "statuses {seen:?}: {job}");

    // Studios see the market's supply in aggregate (no node named): its verified assignment.
    let m = public(app, &format!("/v1/markets/{RENDER}")).await;
    let agg = &m["providers"];
    assert_eq!((agg["verified_24h_passed"].as_i64(), agg["verified_24h_failed"].as_i64()), (Some(1), Some(0)), "{m}");
    assert!(public(app, "/v1/markets").await["markets"][0]["providers"].is_null(), "not in the list");

    // 2. An epoch close rewards the node in GRID (emission) and credits (the fees' share).
    let grid = wait_for("the provider's GRID reward", 90, async || {
        let b = json_of(app.get_as(&provider, "/v1/token/balance").await).await;
        (b["available"].as_i64().unwrap_or(0) > 0).then_some(b)
    })
    .await;
    let rewarded = grid["available"].as_i64().unwrap();
    let epochs = public(app, "/v1/protocol/epochs?limit=500").await;
    let with_reward: Vec<&Value> = epochs["data"].as_array().unwrap().iter().filter(|e| e["grid_rewarded"].as_i64() > Some(0)).collect();
    assert!(!with_reward.is_empty(), "{epochs}");
    let n = with_reward[0]["epoch"].as_i64().unwrap();
    let report = public(app, &format!("/v1/protocol/epochs/{n}")).await;
    let line = &report["rewards"][0];
    assert!(line["input"]["uptime_bps"].as_u64() > Some(0), "heartbeats measured: {report}");
    assert!(line["input"]["quality_bps"].as_u64() > Some(0), "{report}");
    assert!(line["input"]["work"].as_i64() > Some(0), "{report}");
    // One cluster alone takes at most the cap (25 %) of the pool.
    let pool = report["pools"].as_array().unwrap().iter().find(|p| p["ledger"] == "GRID").unwrap();
    assert!(line["grid"].as_i64().unwrap() <= pool["available"].as_i64().unwrap() / 4, "{report}");

    // 3. The provider sells 100 GRID at 50; a trader buys 10: the trade sets the price.
    let r = app.post_as(&provider, "/v1/token/orders", &json!({"side": "sell", "price": 50, "quantity": 100, "time_in_force": "gtc"})).await;
    let sell = json_of(r).await;
    let trader = app.signup("trader").await;
    app.credit(&trader, 10_000).await;
    let r = app.post_as(&trader, "/v1/token/orders", &json!({"side": "buy", "price": 50, "quantity": 10, "time_in_force": "ioc"})).await;
    json_of(r).await;
    wait_for("the trader's GRID", 60, async || {
        let b = json_of(app.get_as(&trader, "/v1/token/balance").await).await;
        (b["available"].as_i64() == Some(10 * UNIT)).then_some(b)
    })
    .await;

    // 4. A later close bids the treasury's credits at the VWAP (50) + 2 %; the fills land in the
    // treasury and the next close burns them.
    let supply = wait_for("a burn", 90, async || {
        let s = public(app, "/v1/protocol/supply").await;
        (s["burned"].as_i64() > Some(0)).then_some(s)
    })
    .await;
    let burned = supply["burned"].as_i64().unwrap();
    assert_eq!(burned % UNIT, 0, "whole GRID bought: {supply}");
    let epochs = public(app, "/v1/protocol/epochs?limit=500").await;
    let bought: Vec<&Value> = epochs["data"].as_array().unwrap().iter().filter(|e| e["buyback_limit_price"] == 51).collect();
    assert!(!bought.is_empty(), "a buyback at limit 51: {epochs}");
    // Everything the provider sold beyond the trader's 10 went to the treasury, which holds it
    // until a close burns it (polled until the figures are read between two events).
    let sell_id = sell["id"].as_str().unwrap().to_owned();
    wait_for("the treasury's GRID = what it bought", 60, async || {
        let o = json_of(app.get_as(&provider, &format!("/v1/token/orders/{sell_id}")).await).await;
        let s = public(app, "/v1/protocol/supply").await;
        let bought = (o["filled"].as_i64().unwrap_or(0) - 10) * UNIT;
        (bought > 0 && s["buyback_treasury"].as_i64().unwrap() + s["burned"].as_i64().unwrap() == bought).then_some(o)
    })
    .await;

    // 5. The books reconcile. Let the last fees be swept, then: every fee in one epoch, each
    // epoch's fee lines summing to its revenue.
    let fees = wait_for("every fee attributed", 30, async || {
        let f = public(app, "/v1/protocol/fees").await;
        (f["unattributed"] == 0).then_some(f)
    })
    .await;
    // The job's fee (one fill of 10,000: 250) and the trader's (⌈500 × 2.5 %⌉ = 13); the
    // protocol's own buy pays none.
    assert_eq!(fees["revenue"].as_i64().unwrap(), 250 + 13, "{fees}");
    let epochs = public(app, "/v1/protocol/epochs?limit=500").await;
    let mut attributed = 0;
    for e in epochs["data"].as_array().unwrap() {
        let (epoch, revenue) = (e["epoch"].as_i64().unwrap(), e["fee_revenue"].as_i64().unwrap());
        attributed += revenue;
        if revenue > 0 {
            let rec = public(app, &format!("/v1/protocol/epochs/{epoch}/fees?limit=500")).await;
            let sum: i64 = rec["data"].as_array().unwrap().iter().map(|l| l["amount"].as_i64().unwrap()).sum();
            assert_eq!(sum, revenue, "epoch {epoch}: {rec}");
        }
    }
    assert_eq!(attributed, fees["attributed"].as_i64().unwrap());
    assert_eq!(fees["attributed"], fees["revenue"]);
    let supply = public(app, "/v1/protocol/supply").await;
    let figure = |k: &str| supply[k].as_i64().unwrap();
    assert_eq!(figure("minted"), figure("max_supply"));
    assert_eq!(
        figure("reserve") + figure("rewards_pool") + figure("buyback_treasury") + figure("burned") + figure("circulating"),
        figure("minted"),
        "{supply}"
    );
    let provider_grid = json_of(app.get_as(&provider, "/v1/token/balance").await).await;
    assert!(provider_grid["available"].as_i64().unwrap() + provider_grid["held"].as_i64().unwrap() >= rewarded - 10 * UNIT - burned);
    {
        use diesel::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Sum {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut c = app.db.conn();
        diesel::sql_query("SELECT ledger_check_invariants()").execute(&mut c).expect("ledger invariants");
        // Credits: everything outside the operator's account is what the operator put in.
        let inside: Sum = diesel::sql_query(
            "SELECT coalesce(sum(credits_posted - debits_posted), 0)::bigint AS n FROM ledger_accounts \
             WHERE ledger = 'USD' AND code <> 'operator'",
        )
        .get_result(&mut c)
        .unwrap();
        assert_eq!(inside.n, 110_000);
    }
}
