//! Provider journeys: register a node, the hardware challenge (commit, then sample: right,
//! wrong, faked, too slow), asks refused before the challenge and placed after it (outbox
//! Place), amend, cancel, the probation cap, assignments and earnings.
//!
//! The right answer is computed with the executor crate (`executor::challenge` inputs embedded
//! by the executor's `Embedder` on CPU), through `gridbook_api::nodes::challenge_embeddings`, so
//! that this process keeps a single ONNX Runtime environment. It needs `ORT_DYLIB_PATH` and
//! `GRIDBOOK_MODELS_DIR` (set by `cargo xtask test` / `cargo xtask env`) and fails without them.
//! The two challenge steps of an honest node are one helper, [`pass_challenge`]; every test that
//! needs a node that passed uses it (through [`passed_node`]).

use serde_json::{Value, json};

use crate::studio::{EMBED, count, engine_account, outbox};
use executor::challenge::{self, DeviceClass};
use gridbook_testkit::{TestApp, TestUser, error_code};

/// What a CPU-class node declares (the class of the tests' nodes: 256 items, not a GPU's 4,096).
const CPU: (&str, i32) = ("cpu", 0);

async fn register_as(app: &TestApp, p: &TestUser, name: &str, (gpu_model, vram_mb): (&str, i32)) -> Value {
    let r = app
        .post_as(
            p,
            "/v1/nodes",
            &json!({"name": name, "gpu_model": gpu_model, "vram_mb": vram_mb, "region": "eu-west"}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

/// A CPU-class node, challenge pending.
async fn register(app: &TestApp, p: &TestUser, name: &str) -> Value {
    register_as(app, p, name, CPU).await
}

/// `POST /v1/nodes/{node}/challenge/commitment`.
pub(crate) async fn commit(app: &TestApp, p: &TestUser, node: &str, body: &Value) -> reqwest::Response {
    app.post_as(p, &format!("/v1/nodes/{node}/challenge/commitment"), body)
        .await
}

/// `POST /v1/nodes/{node}/challenge`.
pub(crate) async fn answer(app: &TestApp, p: &TestUser, node: &str, body: &Value) -> reqwest::Response {
    app.post_as(p, &format!("/v1/nodes/{node}/challenge"), body)
        .await
}

fn need_model(e: String) -> ! {
    panic!(
        "the challenge needs ONNX Runtime and the MiniLM model (ORT_DYLIB_PATH, \
         GRIDBOOK_MODELS_DIR; `eval \"$(cargo xtask env)\"`): {e}"
    )
}

/// The honest embeddings of every item of the challenge of `nonce` (off the async runtime).
async fn reference(nonce: &str, items: usize) -> Vec<Vec<f32>> {
    let nonce = nonce.to_owned();
    tokio::task::spawn_blocking(move || gridbook_api::nodes::challenge_embeddings(&nonce, items))
        .await
        .unwrap()
        .unwrap_or_else(|e| need_model(e))
}

/// The honest embeddings of items `indices` only, in that order.
async fn reference_at(nonce: &str, indices: &[usize]) -> Vec<Vec<f32>> {
    let (nonce, indices) = (nonce.to_owned(), indices.to_vec());
    tokio::task::spawn_blocking(move || gridbook_api::nodes::challenge_embeddings_at(&nonce, &indices))
        .await
        .unwrap()
        .unwrap_or_else(|e| need_model(e))
}

/// Commits `embeddings` (their leaves) for `node` (a registration's response) and returns the
/// drawn sample.
async fn commit_to(app: &TestApp, p: &TestUser, node: &Value, embeddings: &[Vec<f32>]) -> Vec<usize> {
    let r = commit(
        app,
        p,
        node["id"].as_str().unwrap(),
        &json!({"nonce": node["challenge"]["nonce"], "leaves": challenge::leaves(embeddings), "device": "cpu"}),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    serde_json::from_value(v["sample"].clone()).unwrap()
}

/// Reveals `embeddings[i]` for each sampled `i`; returns the node as the verdict left it.
async fn reveal(app: &TestApp, p: &TestUser, node: &Value, embeddings: &[Vec<f32>], sample: &[usize]) -> Value {
    let revealed: Vec<&Vec<f32>> = sample.iter().map(|&i| &embeddings[i]).collect();
    let r = answer(
        app,
        p,
        node["id"].as_str().unwrap(),
        &json!({"nonce": node["challenge"]["nonce"], "embeddings": revealed, "elapsed_ms": 12, "device": "cpu"}),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    r.json().await.unwrap()
}

/// An honest node's challenge, both steps: embeds every item, commits to their leaves, reveals
/// the sample. Returns the node as the verdict left it.
pub(crate) async fn pass_challenge(app: &TestApp, p: &TestUser, node: &Value) -> Value {
    let ch = &node["challenge"];
    let items = ch["items"].as_u64().unwrap() as usize;
    let embeddings = reference(ch["nonce"].as_str().unwrap(), items).await;
    let sample = commit_to(app, p, node, &embeddings).await;
    reveal(app, p, node, &embeddings, &sample).await
}

/// A CPU-class node of `p` that passed its challenge (its timing is not asserted: tests run in
/// parallel on small machines).
pub(crate) async fn passed_node(app: &TestApp, p: &TestUser) -> String {
    let node = register(app, p, "passes").await;
    let v = pass_challenge(app, p, &node).await;
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

/// Unit vectors that are not the model's answer (deterministic, varied).
fn garbage(n: usize, salt: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|i| {
            let v: Vec<f32> = (0..384).map(|j| ((((i + salt) * 7 + j * 13) % 17) as f32) - 8.0).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / norm).collect()
        })
        .collect()
}

#[actix_web::test]
async fn node_registration_and_the_hardware_challenge() {
    let app = TestApp::spawn().await;
    let p = app.signup("provider").await;
    let cpu = DeviceClass::Cpu.spec();

    let node = register(&app, &p, "cpu-box-1").await;
    assert_eq!(node["status"], "probation");
    assert_eq!(node["reputation"], 5000);
    assert_eq!(node["challenge_status"], "pending");
    let ch = &node["challenge"];
    assert_eq!(ch["workload"], "embed");
    assert_eq!(
        (ch["items"].as_u64(), ch["sample"].as_u64(), ch["class"].as_str(), ch["bound_ms"].as_u64(), ch["committed"].as_bool()),
        (Some(cpu.items as u64), Some(cpu.sample as u64), Some("cpu"), Some(cpu.bound_ms), Some(false))
    );
    assert_eq!((node["challenge_class"].as_str(), node["challenge_bound_ms"].as_u64()), (Some("cpu"), Some(cpu.bound_ms)));
    assert!(node["challenge_timing"].is_null() && node["challenge_ms"].is_null(), "{node}");
    let nonce = ch["nonce"].as_str().unwrap().to_owned();
    assert_eq!(nonce.len(), 32);
    assert!(nonce.bytes().all(|b| b.is_ascii_hexdigit()));
    let id = node["id"].as_str().unwrap().to_owned();
    // A declared GPU is the gpu class: the largest challenge, its (derived) bound.
    let gpu = register_as(&app, &p, "gpu-box", ("RTX 4090", 24_576)).await;
    let g = DeviceClass::Gpu.spec();
    assert_eq!(
        (gpu["challenge"]["class"].as_str(), gpu["challenge"]["items"].as_u64(), gpu["challenge"]["bound_ms"].as_u64()),
        (Some("gpu"), Some(g.items as u64), Some(g.bound_ms))
    );

    // Asks are refused before the challenge is passed.
    let r = post_ask(&app, &p, &id, 50, 10).await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "challenge_not_passed");

    // The right embeddings, computed with the executor crate.
    let embeddings = reference(&nonce, cpu.items).await;
    assert_eq!(embeddings.len(), cpu.items);
    assert_eq!(embeddings[0].len(), 384);
    let leaves = challenge::leaves(&embeddings);

    // Nothing to reveal before the commitment.
    let r = answer(&app, &p, &id, &json!({"nonce": nonce, "embeddings": [], "elapsed_ms": 5, "device": "cpu"})).await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "challenge_not_committed");
    // Refused commitments record nothing: a wrong nonce, unknown fields, not one leaf per
    // item, a leaf that is no sha256 (named), another provider's node.
    let field = |r: reqwest::Response| async move {
        let s = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        (s, v["error"]["field"].as_str().unwrap_or_default().to_owned())
    };
    let body = |nonce: &str, leaves: &[String]| json!({"nonce": nonce, "leaves": leaves, "device": "cpu"});
    assert_eq!(field(commit(&app, &p, &id, &body("00", &leaves)).await).await, (400, "nonce".into()));
    let r = commit(&app, &p, &id, &json!({"nonce": nonce, "leaves": leaves, "device": "cpu", "sample": [0]})).await;
    assert_eq!(r.status(), 400);
    assert_eq!(field(commit(&app, &p, &id, &body(&nonce, &leaves[1..])).await).await, (400, "leaves".into()));
    let mut bad = leaves.clone();
    bad[3] = "zz".repeat(32);
    assert_eq!(field(commit(&app, &p, &id, &body(&nonce, &bad)).await).await, (400, "leaves[3]".into()));
    bad[3] = leaves[3].to_uppercase();
    assert_eq!(field(commit(&app, &p, &id, &body(&nonce, &bad)).await).await, (400, "leaves[3]".into()));
    let other = app.signup("provider").await;
    assert_eq!(commit(&app, &other, &id, &body(&nonce, &leaves)).await.status(), 404);

    // The commitment: timed by the market, answered with the sample.
    let sample = commit_to(&app, &p, &node, &embeddings).await;
    assert_eq!(sample.len(), cpu.sample);
    let distinct: std::collections::HashSet<_> = sample.iter().collect();
    assert_eq!(distinct.len(), cpu.sample, "{sample:?}");
    assert!(sample.iter().all(|&i| i < cpu.items));
    // Once: a replay of the same commitment, or another one, is refused.
    let r = commit(&app, &p, &id, &body(&nonce, &leaves)).await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "challenge_already_committed");
    let committed: Value = app.get_as(&p, &format!("/v1/nodes/{id}")).await.json().await.unwrap();
    assert_eq!(committed["challenge"]["committed"], true, "{committed}");
    let measured = committed["challenge_ms"].as_i64().expect("the market's time is recorded at the commitment");
    assert!((0..cpu.bound_ms as i64).contains(&measured), "{measured}");

    // The reveal: a wrong nonce, unknown fields, not the sample's count, another provider.
    let revealed: Vec<&Vec<f32>> = sample.iter().map(|&i| &embeddings[i]).collect();
    let reveal_body = |nonce: &str, e: &[&Vec<f32>]| json!({"nonce": nonce, "embeddings": e, "elapsed_ms": 999_999, "device": "cpu"});
    assert_eq!(field(answer(&app, &p, &id, &reveal_body("00", &revealed)).await).await, (400, "nonce".into()));
    assert_eq!(field(answer(&app, &p, &id, &reveal_body(&nonce, &revealed[1..])).await).await, (400, "embeddings".into()));
    let r = answer(&app, &p, &id, &json!({"nonce": nonce, "embeddings": revealed, "elapsed_ms": 5, "device": "cpu", "passed": true})).await;
    assert_eq!(r.status(), 400);
    assert_eq!(answer(&app, &other, &id, &reveal_body(&nonce, &revealed)).await.status(), 404);

    let r = answer(&app, &p, &id, &json!({"nonce": nonce, "embeddings": revealed, "elapsed_ms": 999_999, "device": "cuda:0 RTX 4090"})).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["challenge_status"], "passed", "{v}");
    assert_eq!(v["challenge_timing"], "fits", "{v}");
    // The market's figure, not the node's.
    assert_eq!(v["challenge_ms"].as_i64(), Some(measured), "{v}");
    assert!(v["challenge_detail"].as_str().unwrap().contains("passed on cuda:0 RTX 4090"), "{v}");
    // Passing does not end probation, nor change reputation.
    assert_eq!(v["status"], "probation");
    assert_eq!(v["reputation"], 5000);
    assert!(v["challenge"].is_null());

    // Answering twice, or committing after the answer, is a conflict.
    let r = answer(&app, &p, &id, &reveal_body(&nonce, &revealed)).await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "challenge_already_answered");
    let r = commit(&app, &p, &id, &body(&nonce, &leaves)).await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "challenge_already_answered");

    // Garbage committed and revealed fails, naming the first sampled item.
    let bad = register(&app, &p, "cpu-box-2").await;
    let bad_id = bad["id"].as_str().unwrap();
    let junk = garbage(cpu.items, 0);
    let s = commit_to(&app, &p, &bad, &junk).await;
    let v = reveal(&app, &p, &bad, &junk, &s).await;
    assert_eq!(v["challenge_status"], "failed", "{v}");
    assert!(v["challenge_timing"].is_null(), "{v}");
    let detail = v["challenge_detail"].as_str().unwrap();
    assert!(detail.starts_with(&format!("item {}: cosine", s[0])), "{v}");
    let r = post_ask(&app, &p, bad_id, 50, 10).await;
    assert_eq!(error_code(r).await, "challenge_not_passed");

    // A revealed vector that is not the committed one fails, naming the item, even when it is
    // the right answer: this node committed to junk, then revealed the model's embeddings.
    let swap = register(&app, &p, "cpu-box-3").await;
    let s = commit_to(&app, &p, &swap, &garbage(cpu.items, 1)).await;
    let right = reference_at(swap["challenge"]["nonce"].as_str().unwrap(), &s).await;
    let r = answer(
        &app,
        &p,
        swap["id"].as_str().unwrap(),
        &json!({"nonce": swap["challenge"]["nonce"], "embeddings": right, "elapsed_ms": 1, "device": "cpu"}),
    )
    .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["challenge_status"], "failed", "{v}");
    assert_eq!(
        v["challenge_detail"].as_str().unwrap(),
        format!("item {}: the revealed embedding does not hash to the leaf committed for it", s[0]),
        "{v}"
    );

    // Read back.
    let r = app.get_as(&p, &format!("/v1/nodes/{id}")).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!((v["challenge_status"].as_str(), v["challenge_timing"].as_str()), (Some("passed"), Some("fits")));
    assert!(v["last_heartbeat_at"].is_null());
    let list: Value = app.get_as(&p, "/v1/nodes").await.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 4);
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

/// A node that computes only half of its challenge — the model's embeddings for the even items,
/// random unit vectors for the odd ones, and honest leaves for both (what it committed to is
/// what it reveals) — is caught by the sample unless all `k` drawn items are even. The draw is
/// `k = 16` distinct items of 256 from the market's CSPRNG, so the node escapes with probability
/// C(128, 16) / C(256, 16) ≈ 1.2 × 10⁻⁵, below (1/2)^k = (1/2)^16 ≈ 1.5 × 10⁻⁵: this test
/// fails by chance about once in 80,000 runs.
#[actix_web::test]
async fn a_node_that_fakes_half_its_items_is_caught_by_the_sample() {
    let app = TestApp::spawn().await;
    let p = app.signup("provider").await;
    let cpu = DeviceClass::Cpu.spec();
    let node = register(&app, &p, "half").await;
    let nonce = node["challenge"]["nonce"].as_str().unwrap();
    let even: Vec<usize> = (0..cpu.items).step_by(2).collect();
    let computed = reference_at(nonce, &even).await;
    let fake = garbage(cpu.items, 7);
    let embeddings: Vec<Vec<f32>> = (0..cpu.items)
        .map(|i| if i % 2 == 0 { computed[i / 2].clone() } else { fake[i].clone() })
        .collect();
    let sample = commit_to(&app, &p, &node, &embeddings).await;
    let v = reveal(&app, &p, &node, &embeddings, &sample).await;
    assert_eq!(v["challenge_status"], "failed", "sample {sample:?}: {v}");
    // The first faked item of the sample is named, as a wrong answer (its leaf matched).
    let first_fake = sample.iter().find(|&&i| i % 2 == 1).expect("an odd item in the sample");
    let detail = v["challenge_detail"].as_str().unwrap();
    assert!(detail.starts_with(&format!("item {first_fake}: cosine")), "{v}");
    let r = post_ask(&app, &p, node["id"].as_str().unwrap(), 50, 10).await;
    assert_eq!(error_code(r).await, "challenge_not_passed");
}

/// A commitment that arrives after the class's bound (by the market's clock: here the nonce is
/// made older than the bound in the database) passes a right answer as `too_slow`: the node
/// may post asks within the probation caps, as any probation node (it never leaves probation:
/// settlement's `probation` test).
#[actix_web::test]
async fn a_commitment_after_the_class_bound_passes_too_slow() {
    let app = TestApp::spawn_with(|s| s.limits.probation_ask_qty = 100).await;
    let p = app.signup("provider").await;
    let cpu = DeviceClass::Cpu.spec();
    let node = register(&app, &p, "slow").await;
    let id = node["id"].as_str().unwrap().to_owned();
    {
        use diesel::RunQueryDsl;
        let mut c = app.db.conn();
        diesel::sql_query(format!(
            "UPDATE nodes SET challenge_issued_at = challenge_issued_at - interval '{} milliseconds' WHERE id = '{id}'",
            cpu.bound_ms + 1_000
        ))
        .execute(&mut c)
        .unwrap();
    }
    let v = pass_challenge(&app, &p, &node).await;
    assert_eq!(v["challenge_status"], "passed", "{v}");
    assert_eq!(v["challenge_timing"], "too_slow", "{v}");
    let ms = v["challenge_ms"].as_i64().unwrap();
    assert!(ms > cpu.bound_ms as i64, "{ms}");
    assert_eq!(v["challenge_bound_ms"].as_i64(), Some(cpu.bound_ms as i64));
    assert!(v["challenge_detail"].as_str().unwrap().ends_with("too_slow"), "{v}");
    assert_eq!(v["status"], "probation");
    // It trades within the probation cap, not above it.
    let r = post_ask(&app, &p, &id, 50, 60).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let r = post_ask(&app, &p, &id, 50, 41).await;
    assert_eq!(error_code(r).await, "probation_cap");
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
