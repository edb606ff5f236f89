//! Provider journeys: register a node, answer the hardware challenge (right and wrong), asks
//! refused before the challenge and placed after it (outbox Place), amend, cancel, the
//! probation cap, assignments and earnings.
//!
//! The right answer is computed with the executor crate (`executor::challenge` inputs embedded
//! by the executor's `Embedder` on CPU), through `gridbook_api::nodes::challenge_embeddings`, so
//! that this process keeps a single ONNX Runtime environment. It needs `ORT_DYLIB_PATH` and
//! `GRIDBOOK_MODELS_DIR` (set by `cargo xtask test` / `cargo xtask env`) and fails without them.

use serde_json::{Value, json};

use crate::studio::{EMBED, count, engine_account, outbox};
use gridbook_testkit::{TestApp, TestUser, error_code};

async fn register(app: &TestApp, p: &TestUser, name: &str) -> Value {
    let r = app
        .post_as(
            p,
            "/v1/nodes",
            &json!({"name": name, "gpu_model": "RTX 4090", "vram_mb": 24576, "region": "eu-west"}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

async fn answer(app: &TestApp, p: &TestUser, node: &str, body: &Value) -> reqwest::Response {
    app.post_as(p, &format!("/v1/nodes/{node}/challenge"), body)
        .await
}

fn reference(nonce: &str, items: usize) -> Vec<Vec<f32>> {
    gridbook_api::nodes::challenge_embeddings(nonce, items).unwrap_or_else(|e| {
        panic!(
            "the challenge needs ONNX Runtime and the MiniLM model (ORT_DYLIB_PATH, \
             GRIDBOOK_MODELS_DIR; `eval \"$(cargo xtask env)\"`): {e}"
        )
    })
}

pub(crate) async fn passed_node(app: &TestApp, p: &TestUser) -> String {
    let node = register(app, p, "passes").await;
    let nonce = node["challenge"]["nonce"].as_str().unwrap().to_owned();
    let embeddings = tokio::task::spawn_blocking(move || reference(&nonce, 32))
        .await
        .unwrap();
    let r = answer(
        app,
        p,
        node["id"].as_str().unwrap(),
        &json!({"nonce": node["challenge"]["nonce"], "embeddings": embeddings, "elapsed_ms": 12, "device": "cpu"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["challenge_status"], "passed", "{v}");
    node["id"].as_str().unwrap().to_owned()
}

pub(crate) async fn post_ask(
    app: &TestApp,
    p: &TestUser,
    node: &str,
    price: i64,
    qty: i64,
) -> reqwest::Response {
    app.post_as(
        p,
        "/v1/asks",
        &json!({"node_id": node, "market": EMBED, "price": price, "qty": qty}),
    )
    .await
}

#[actix_web::test]
async fn node_registration_and_the_hardware_challenge() {
    let app = TestApp::spawn().await;
    let p = app.signup("provider").await;

    let node = register(&app, &p, "gpu-box-1").await;
    assert_eq!(node["status"], "probation");
    assert_eq!(node["reputation"], 5000);
    assert_eq!(node["challenge_status"], "pending");
    assert_eq!(node["challenge"]["workload"], "embed");
    assert_eq!(node["challenge"]["items"], 32);
    let nonce = node["challenge"]["nonce"].as_str().unwrap().to_owned();
    assert_eq!(nonce.len(), 32);
    assert!(nonce.bytes().all(|b| b.is_ascii_hexdigit()));
    let id = node["id"].as_str().unwrap().to_owned();

    // Asks are refused before the challenge is passed.
    let r = post_ask(&app, &p, &id, 50, 10).await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "challenge_not_passed");

    // The right embeddings, computed with the executor crate.
    let n = nonce.clone();
    let embeddings = tokio::task::spawn_blocking(move || reference(&n, 32))
        .await
        .unwrap();
    assert_eq!(embeddings.len(), 32);
    assert_eq!(embeddings[0].len(), 384);

    // Wrong nonce: 400, nothing recorded.
    let r = answer(
        &app,
        &p,
        &id,
        &json!({"nonce": "00", "embeddings": embeddings, "elapsed_ms": 5, "device": "cpu"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["field"], "nonce");
    // Unknown fields are refused.
    let r = answer(&app, &p, &id, &json!({"nonce": nonce, "embeddings": embeddings, "elapsed_ms": 5, "device": "cpu", "passed": true})).await;
    assert_eq!(r.status(), 400);
    // Another provider cannot answer for it.
    let other = app.signup("provider").await;
    let r = answer(
        &app,
        &other,
        &id,
        &json!({"nonce": nonce, "embeddings": embeddings, "elapsed_ms": 5, "device": "cpu"}),
    )
    .await;
    assert_eq!(r.status(), 404);

    let r = answer(&app, &p, &id, &json!({"nonce": nonce, "embeddings": embeddings, "elapsed_ms": 812, "device": "cuda:0 RTX 4090"})).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["challenge_status"], "passed", "{v}");
    assert_eq!(v["challenge_ms"], 812);
    // Passing does not end probation, nor change reputation.
    assert_eq!(v["status"], "probation");
    assert_eq!(v["reputation"], 5000);
    assert!(v["challenge"].is_null());

    // Answering twice is a conflict.
    let r = answer(
        &app,
        &p,
        &id,
        &json!({"nonce": nonce, "embeddings": embeddings, "elapsed_ms": 5, "device": "cpu"}),
    )
    .await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "challenge_already_answered");

    // Garbage fails, with the reason.
    let bad = register(&app, &p, "gpu-box-2").await;
    let bad_id = bad["id"].as_str().unwrap();
    let garbage: Vec<Vec<f32>> = (0..32)
        .map(|i| {
            (0..384)
                .map(|j| (((i * 7 + j * 13) % 17) as f32) - 8.0)
                .collect()
        })
        .collect();
    let r = answer(&app, &p, bad_id, &json!({"nonce": bad["challenge"]["nonce"], "embeddings": garbage, "elapsed_ms": 1, "device": "cpu"})).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["challenge_status"], "failed", "{v}");
    assert!(
        v["challenge_detail"].as_str().unwrap().contains("item 0"),
        "{v}"
    );
    let r = post_ask(&app, &p, bad_id, 50, 10).await;
    assert_eq!(error_code(r).await, "challenge_not_passed");

    // Read back.
    let r = app.get_as(&p, &format!("/v1/nodes/{id}")).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["challenge_status"], "passed");
    assert!(v["last_heartbeat_at"].is_null());
    let list: Value = app.get_as(&p, "/v1/nodes").await.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 2);
    assert_eq!(
        app.get_as(&other, &format!("/v1/nodes/{id}"))
            .await
            .status(),
        404
    );

    // Studios cannot register nodes.
    let studio = app.signup("studio").await;
    let r = app
        .post_as(
            &studio,
            "/v1/nodes",
            &json!({"name": "x", "gpu_model": "y", "vram_mb": 1, "region": "z"}),
        )
        .await;
    assert_eq!(r.status(), 403);
}

#[actix_web::test]
async fn asks_place_amend_cancel_and_the_probation_cap() {
    let app = TestApp::spawn_with(|s| s.limits.probation_ask_qty = 100).await;
    let p = app.signup("provider").await;
    let node = passed_node(&app, &p).await;
    let account = engine_account(&app, &p).await;

    // Placed: a market_orders row (side ask, node, payout account) and the outbox Place (GTC).
    let r = post_ask(&app, &p, &node, 50, 40).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let ask: Value = r.json().await.unwrap();
    assert_eq!(ask["status"], "open");
    assert_eq!(ask["price"], 50);
    assert_eq!(ask["qty"], 40);
    let ask_id = ask["id"].as_str().unwrap().to_owned();
    let eid = ask["engine_order_id"].as_i64().unwrap();
    let msgs = outbox(&app).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0, format!("market.{EMBED}.cmd"));
    assert_eq!(
        msgs[0].1,
        // The anti-whale owner is the identity cluster: a lone account is its own.
        json!({"place": {"id": eid, "account": account, "owner": account, "side": "ask", "price": 50, "qty": 40, "tif": "gtc"}})
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) AS n FROM market_orders WHERE side = 'ask' AND node_id IS NOT NULL"
        )
        .await,
        1
    );

    // Probation cap: 40 open + 70 > 100.
    let r = post_ask(&app, &p, &node, 55, 70).await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "probation_cap");
    // Up to the cap is fine.
    let r = post_ask(&app, &p, &node, 55, 60).await;
    assert_eq!(r.status(), 201);
    let second: Value = r.json().await.unwrap();

    // Price outside the market's band; unknown fields.
    assert_eq!(post_ask(&app, &p, &node, 0, 1).await.status(), 400);
    let r = app
        .post_as(
            &p,
            "/v1/asks",
            &json!({"node_id": node, "market": EMBED, "price": 5, "qty": 1, "status": "open"}),
        )
        .await;
    assert_eq!(r.status(), 400);

    // Amend: the quantity counts against the cap (60 + 50 > 100), then a valid amend.
    let patch = |body: Value| {
        let url = app.url(&format!("/v1/asks/{ask_id}"));
        let bearer = p.bearer();
        let http = app.http.clone();
        async move {
            http.patch(url)
                .header("Authorization", bearer)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };
    let r = patch(json!({"qty": 50})).await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "probation_cap");
    let r = patch(json!({"price": 45, "qty": 30})).await;
    assert_eq!(r.status(), 200);
    let amended: Value = r.json().await.unwrap();
    assert_eq!(
        (amended["price"].as_i64(), amended["qty"].as_i64()),
        (Some(45), Some(30))
    );
    let msgs = outbox(&app).await;
    assert_eq!(msgs.len(), 3);
    assert_eq!(
        msgs[2].1,
        json!({"amend": {"id": eid, "account": account, "price": 45, "qty": 30}})
    );
    assert_eq!(patch(json!({})).await.status(), 400);

    // Cancel: status cancel_requested and the outbox Cancel; again = no new command.
    let del = || {
        let url = app.url(&format!("/v1/asks/{ask_id}"));
        let bearer = p.bearer();
        let http = app.http.clone();
        async move {
            http.delete(url)
                .header("Authorization", bearer)
                .send()
                .await
                .unwrap()
        }
    };
    let r = del().await;
    assert_eq!(r.status(), 200);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["status"], "cancel_requested");
    let msgs = outbox(&app).await;
    assert_eq!(msgs.len(), 4);
    assert_eq!(
        msgs[3].1,
        json!({"cancel": {"id": eid, "account": account}})
    );
    assert_eq!(del().await.status(), 200);
    assert_eq!(outbox(&app).await.len(), 4);
    let r = patch(json!({"qty": 1})).await;
    assert_eq!(error_code(r).await, "ask_not_open");

    // The cancelled ask no longer counts: 60 open + 40 = 100.
    assert_eq!(post_ask(&app, &p, &node, 52, 40).await.status(), 201);

    // Idempotent placement.
    let send = || async {
        app.http
            .post(app.url("/v1/asks"))
            .header("Authorization", p.bearer())
            .header("Idempotency-Key", "ask-1")
            .json(&json!({"node_id": node, "market": EMBED, "price": 60, "qty": 1}))
            .send()
            .await
            .unwrap()
    };
    // Over the cap (100 open): refused and not stored, so the same key can be retried later.
    assert_eq!(send().await.status(), 409);

    // Lists.
    let list: Value = app.get_as(&p, "/v1/asks").await.json().await.unwrap();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.contains(&second["id"].as_str().unwrap()));
    let other = app.signup("provider").await;
    assert_eq!(
        app.get_as(&other, &format!("/v1/asks/{ask_id}"))
            .await
            .status(),
        404
    );
    let r = post_ask(&app, &other, &node, 50, 1).await;
    assert_eq!(r.status(), 404);

    let a: Value = app
        .get_as(&p, "/v1/assignments")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(a["data"], json!([]));
    let e: Value = app.get_as(&p, "/v1/earnings").await.json().await.unwrap();
    assert_eq!(e["completed_assignments"], 0);
    assert_eq!(e["earned"], 0);
    assert_eq!(e["balance"], 0);
}

#[actix_web::test]
async fn idempotent_ask_places_once() {
    let app = TestApp::spawn().await;
    let p = app.signup("provider").await;
    let node = passed_node(&app, &p).await;
    let send = || async {
        app.http
            .post(app.url("/v1/asks"))
            .header("Authorization", p.bearer())
            .header("Idempotency-Key", "ask-1")
            .json(&json!({"node_id": node, "market": EMBED, "price": 60, "qty": 5}))
            .send()
            .await
            .unwrap()
    };
    let a: Value = send().await.json().await.unwrap();
    let r = send().await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers().get("Idempotent-Replayed").unwrap(), "true");
    let b: Value = r.json().await.unwrap();
    assert_eq!(a["id"], b["id"]);
    assert_eq!(count(&app, "SELECT count(*) AS n FROM asks").await, 1);
    assert_eq!(outbox(&app).await.len(), 1);
}
