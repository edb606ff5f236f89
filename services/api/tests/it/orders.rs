//! Orders beyond a plain limit (issue 15), through the real stack: a job's time in force.
//! IOC runs what the book fills at once and releases the rest; FOK fills every unit at once or
//! ends `rejected` (`fok_unfillable`) with the whole reservation released. Money is exact and
//! the ledger's invariants hold.

use std::time::Duration;

use gridbook_testkit::{Stack, TestApp, TestUser};
use serde_json::{Value, json};

use crate::journey::{json_of, start_provider, wait_for_job};

const RENDER: &str = "RENDER-TERRAIN-128";

fn tiles(n: usize, tag: &str) -> String {
    (0..n)
        .map(|i| json!({"custom_id": format!("{tag}-{i}"), "seed": 1000 + i, "difficulty": 30}).to_string() + "\n")
        .collect()
}

async fn submit(app: &TestApp, studio: &TestUser, text: &str, limit: u64, tif: &str) -> Value {
    submit_in(app, studio, RENDER, text, limit, tif).await
}

async fn submit_in(app: &TestApp, studio: &TestUser, market: &str, text: &str, limit: u64, tif: &str) -> Value {
    let file = crate::journey::upload(app, studio, market, text).await;
    let deadline = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    json_of(
        app.http
            .post(app.url("/v1/jobs"))
            .header("Authorization", studio.bearer())
            .header("Idempotency-Key", format!("orders-{tif}-{}", uuid::Uuid::now_v7()))
            .json(&json!({"market": market, "input_file": file["id"], "limit_price": limit,
                          "deadline": deadline, "time_in_force": tif}))
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn check_invariants(app: &TestApp) {
    use diesel::RunQueryDsl;
    let mut c = app.db.conn();
    diesel::sql_query("SELECT ledger_check_invariants()")
        .execute(&mut c)
        .expect("ledger invariants");
}

/// ⌈notional × bps / 10,000⌉: the ledger's fee of one assignment.
fn fee(notional: i64, bps: i64) -> i64 {
    (notional * bps + 9_999) / 10_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fok_is_rejected_whole_and_ioc_runs_the_part_the_book_fills() {
    let stack = Stack::start("orders-tif").await;
    let app = &stack.app;
    // 2 units at 7 on the book (1 tile per unit).
    let (provider, agent) = start_provider(&stack, RENDER, 7, 2).await;
    let studio = app.signup("studio").await;
    app.credit(&studio, 10_000).await;

    // An unknown time in force is a 400 naming the field.
    let bad = app
        .http
        .post(app.url("/v1/jobs"))
        .header("Authorization", studio.bearer())
        .header("Idempotency-Key", "orders-bad")
        .json(&json!({"market": RENDER, "input_file": uuid::Uuid::nil(), "limit_price": 20,
                      "deadline": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
                      "time_in_force": "gtd"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400, "{}", bad.text().await.unwrap());

    // FOK for 4 units against 2: rejected, nothing ran, everything released.
    let fok = submit(app, &studio, &tiles(4, "fok"), 20, "fok").await;
    assert_eq!((fok["status"].as_str(), fok["time_in_force"].as_str()), (Some("queued"), Some("fok")), "{fok}");
    let (job, seen) = wait_for_job(app, &studio, fok["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "rejected", "statuses {seen:?}: {job}");
    assert_eq!(job["reject_reason"], "fok_unfillable", "{job}");
    assert_eq!(job["request_counts"]["completed"], 0, "{job}");
    assert_eq!(job["escrow"]["released"], job["escrow"]["reserved"], "{job}");
    let s = app.balance(&studio).await;
    assert_eq!((s["available"].as_i64(), s["held"].as_i64()), (Some(10_000), Some(0)), "studio {s}");
    check_invariants(app);

    // IOC for 4 units against 2: the 2 run at the ask's 7, the other 2 are released at once.
    let ioc = submit(app, &studio, &tiles(4, "ioc"), 20, "ioc").await;
    let bps = ioc["fee_bps"].as_i64().unwrap();
    let (job, seen) = wait_for_job(app, &studio, ioc["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "completed", "statuses {seen:?}: {job}");
    assert_eq!(job["request_counts"]["completed"], 2, "{job}");
    assert!(job.get("reject_reason").is_none(), "{job}");
    let errors = app.get_as(&studio, &format!("/v1/jobs/{}/errors", job["id"].as_str().unwrap())).await.text().await.unwrap();
    assert_eq!(errors.lines().count(), 2, "{errors}");
    assert!(errors.contains("immediate-or-cancel"), "{errors}");
    let assignments = json_of(app.get_as(&provider, "/v1/assignments").await).await;
    let assignments = assignments["data"].as_array().unwrap().clone();
    let units: i64 = assignments.iter().map(|a| a["units"].as_i64().unwrap_or(0)).sum();
    assert_eq!(units, 2, "{assignments:?}");
    let fees: i64 = assignments.iter().map(|a| fee(a["units"].as_i64().unwrap() * 7, bps)).sum();
    let s = app.balance(&studio).await;
    assert_eq!((s["available"].as_i64(), s["held"].as_i64()), (Some(10_000 - 14 - fees), Some(0)), "studio {s}");
    let p = app.balance(&provider).await;
    assert_eq!(p["available"].as_i64(), Some(14), "provider {p}");
    check_invariants(app);
    let _ = agent.stop(Duration::from_secs(60)).await;
}

/// limit + ⌈limit × bps / 10,000⌉: what one unit reserves.
fn unit_reserve(limit: i64, bps: i64) -> i64 {
    limit + fee(limit, bps)
}

async fn patch_limit(app: &TestApp, studio: &TestUser, job: &str, limit: i64) -> (u16, Value) {
    let r = app
        .http
        .patch(app.url(&format!("/v1/jobs/{job}")))
        .header("Authorization", studio.bearer())
        .json(&json!({"limit_price": limit}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, serde_json::from_str(&r.text().await.unwrap()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_raised_limit_holds_the_difference_and_fills_and_a_raise_not_covered_changes_nothing() {
    let stack = Stack::start("orders-raise").await;
    let app = &stack.app;
    // 2 units at 30 on the book; the job bids 20 for 2 tiles, below it: it waits.
    let (provider, agent) = start_provider(&stack, RENDER, 30, 2).await;
    let studio = app.signup("studio").await;
    let probe = submit_probe_bps(app).await;
    // Exactly enough for 2 units at a limit of 30.
    let funds = 2 * unit_reserve(30, probe);
    app.credit(&studio, funds).await;
    let job = submit(app, &studio, &tiles(2, "raise"), 20, "gtc").await;
    let id = job["id"].as_str().unwrap().to_owned();
    let bps = job["fee_bps"].as_i64().unwrap();
    assert_eq!(bps, probe);
    assert_eq!(job["escrow"]["open"].as_i64(), Some(2 * unit_reserve(20, bps)), "{job}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let j = json_of(app.get_as(&studio, &format!("/v1/jobs/{id}")).await).await;
    assert_eq!(j["status"], "queued", "below the ask, the bid waits: {j}");

    // Lowering names the field; the same limit changes nothing.
    let (st, e) = patch_limit(app, &studio, &id, 19).await;
    assert_eq!((st, e["error"]["field"].as_str()), (400, Some("limit_price")), "{e}");
    let (st, same) = patch_limit(app, &studio, &id, 20).await;
    assert_eq!((st, same["limit_price"].as_i64()), (200, Some(20)), "{same}");

    // A raise the balance cannot cover: 409, and nothing changes.
    let before = app.balance(&studio).await;
    let (st, e) = patch_limit(app, &studio, &id, 40).await;
    assert_eq!((st, e["error"]["code"].as_str(), e["error"]["field"].as_str()), (409, Some("insufficient_funds"), Some("limit_price")), "{e}");
    let j = json_of(app.get_as(&studio, &format!("/v1/jobs/{id}")).await).await;
    assert_eq!((j["limit_price"].as_i64(), j["status"].as_str()), (Some(20), Some("queued")), "{j}");
    assert_eq!(j["escrow"]["open"].as_i64(), Some(2 * unit_reserve(20, bps)), "{j}");
    assert_eq!(app.balance(&studio).await, before);
    check_invariants(app);

    // A raise it covers: the further hold is exactly 2 × (reserve(30) − reserve(20)).
    let (st, j) = patch_limit(app, &studio, &id, 30).await;
    assert_eq!((st, j["limit_price"].as_i64()), (200, Some(30)), "{j}");
    let extra = 2 * (unit_reserve(30, bps) - unit_reserve(20, bps));
    assert_eq!(j["escrow"]["open"].as_i64(), Some(2 * unit_reserve(30, bps)), "{j}");
    let after = app.balance(&studio).await;
    assert_eq!(after["available"].as_i64(), Some(before["available"].as_i64().unwrap() - extra), "{after}");

    // The engine re-prices the bid: it takes the ask at 30 and the job completes.
    let (job, seen) = wait_for_job(app, &studio, &id).await;
    assert_eq!(job["status"], "completed", "statuses {seen:?}: {job}");
    let assignments = json_of(app.get_as(&provider, "/v1/assignments").await).await;
    let assignments = assignments["data"].as_array().unwrap().clone();
    let fees: i64 = assignments.iter().map(|a| fee(a["units"].as_i64().unwrap() * 30, bps)).sum();
    let s = app.balance(&studio).await;
    assert_eq!((s["available"].as_i64(), s["held"].as_i64()), (Some(funds - 60 - fees), Some(0)), "studio {s}");
    assert_eq!(app.balance(&provider).await["available"].as_i64(), Some(60));
    // Finished: nothing to raise any more.
    let (st, e) = patch_limit(app, &studio, &id, 31).await;
    assert_eq!((st, e["error"]["code"].as_str()), (409, Some("not_amendable")), "{e}");
    check_invariants(app);
    let _ = agent.stop(Duration::from_secs(60)).await;
}

/// The market's fee in basis points, as the API states it.
async fn submit_probe_bps(app: &TestApp) -> i64 {
    let m = json_of(app.http.get(app.url(&format!("/v1/markets/{RENDER}"))).send().await.unwrap()).await;
    m["fee_bps"].as_i64().or_else(|| m["config"]["fee_bps"].as_i64()).unwrap_or_else(|| panic!("no fee_bps: {m}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_post_only_ask_that_would_cross_closes_with_its_reason() {
    const EMBED: &str = "EMBED-MINILM-L6";
    let stack = Stack::start("orders-post-only").await;
    let app = &stack.app;
    // A studio's bid rests at 50 (no ask yet).
    let studio = app.signup("studio").await;
    app.credit(&studio, 10_000).await;
    let job = submit_in(app, &studio, EMBED, &(json!({"custom_id": "a", "input": "hello"}).to_string() + "\n"), 50, "gtc").await;
    let job_id = job["id"].as_str().unwrap().to_owned();

    let provider = app.signup("provider").await;
    let node = crate::provider::passed_node(app, &provider).await;
    // An unknown STP mode is a 400 naming nothing but the body; a known one is kept.
    let bad = app
        .post_as(&provider, "/v1/asks", &json!({"node_id": node, "market": EMBED, "price": 40, "qty": 1, "stp": "cancel_all"}))
        .await;
    assert_eq!(bad.status(), 400, "{}", bad.text().await.unwrap());
    // Post-only at 40 would take the bid at 50: the engine rejects it, the ask closes.
    let r = app
        .post_as(&provider, "/v1/asks", &json!({"node_id": node, "market": EMBED, "price": 40, "qty": 1,
                                                 "post_only": true, "stp": "cancel_oldest"}))
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let ask = json_of(r).await;
    assert_eq!((ask["post_only"].as_bool(), ask["stp"].as_str()), (Some(true), Some("cancel_oldest")), "{ask}");
    let ask_id = ask["id"].as_str().unwrap().to_owned();
    let started = std::time::Instant::now();
    let closed = loop {
        let a = json_of(app.get_as(&provider, &format!("/v1/asks/{ask_id}")).await).await;
        if a["status"] == "closed" {
            break a;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the ask stays {a}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(closed["close_reason"], "post_only_would_cross", "{closed}");
    // Nothing traded: the job still waits, its reservation whole; a post-only ask that rests
    // (above the bid) stays open.
    let j = json_of(app.get_as(&studio, &format!("/v1/jobs/{job_id}")).await).await;
    assert_eq!((j["status"].as_str(), j["escrow"]["held"].as_i64()), (Some("queued"), Some(0)), "{j}");
    let r = app
        .post_as(&provider, "/v1/asks", &json!({"node_id": node, "market": EMBED, "price": 60, "qty": 1, "post_only": true}))
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let resting = json_of(r).await;
    let started = std::time::Instant::now();
    loop {
        let book = json_of(app.http.get(app.url(&format!("/v1/markets/{EMBED}/book"))).send().await.unwrap()).await;
        if book["asks"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no ask on the book: {book}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let a = json_of(app.get_as(&provider, &format!("/v1/asks/{}", resting["id"].as_str().unwrap())).await).await;
    assert_eq!((a["status"].as_str(), a.get("close_reason")), (Some("open"), None), "{a}");
    check_invariants(app);
}
