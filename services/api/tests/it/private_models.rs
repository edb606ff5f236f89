//! Private models (issue 11): a studio uploads its own ONNX model; it is checked by the market's
//! runtime, stored sealed (never in plaintext), pinned by sha256 in the job, run by a real
//! executor agent that gets the key through its assignment's grant, and verified by the
//! settlement worker's re-run with the same model. Nobody else can see, use or unlock it.
//!
//! The private model here is MiniLM's own `model.onnx` with one extra, unknown protobuf field
//! appended (ONNX Runtime ignores unknown fields): a different file and sha256 with the same
//! weights. It proves which bytes were loaded (the sha256 in the node's manifest), not that a
//! different network ran.

use std::time::{Duration, Instant};

use executor::agent::pricing::Policy;
use gridbook_testkit::{Stack, TestApp, TestUser};
use serde_json::{Value, json};
use sha2::Digest;

use crate::provider::passed_node;

const MARKET: &str = "EMBED-MINILM-L6";

async fn json_of(r: reqwest::Response) -> Value {
    let status = r.status();
    let body = r.text().await.unwrap();
    assert!(status.is_success(), "HTTP {status}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    (status, body["error"].clone())
}

/// MiniLM's `model.onnx` plus an unknown length-delimited field (number 1000).
fn private_model_bytes() -> Vec<u8> {
    let dir = std::env::var("GRIDBOOK_MODELS_DIR").expect("GRIDBOOK_MODELS_DIR (cargo xtask test sets it)");
    let mut b = std::fs::read(std::path::Path::new(&dir).join("minilm-l6/model.onnx")).unwrap();
    let payload = b"gridbook test: a studio's private copy";
    // Tag (1000 << 3) | 2 = 8002 as a varint, then the length.
    b.extend_from_slice(&[0xC2, 0x3E, payload.len() as u8]);
    b.extend_from_slice(payload);
    b
}

async fn upload_model(app: &TestApp, studio: &TestUser, market: &str, bytes: Vec<u8>, ctype: &str) -> reqwest::Response {
    app.http
        .post(app.url(&format!("/v1/models?market={market}&name=my-encoder")))
        .header("Authorization", studio.bearer())
        .header("Content-Type", ctype)
        .body(bytes)
        .send()
        .await
        .unwrap()
}

async fn upload_file(app: &TestApp, studio: &TestUser, market: &str, text: String) -> String {
    let f = json_of(
        app.http
            .post(app.url(&format!("/v1/files?purpose=batch&market={market}")))
            .header("Authorization", studio.bearer())
            .header("Content-Type", "application/jsonl")
            .body(text)
            .send()
            .await
            .unwrap(),
    )
    .await;
    f["id"].as_str().unwrap().to_owned()
}

fn corpus(n: usize) -> String {
    (0..n)
        .map(|i| json!({"custom_id": format!("q-{i:04}"), "input": format!("private sentence number {i}")}).to_string() + "\n")
        .collect()
}

fn job_body(file: &str, model: &str, limit: u64) -> Value {
    let deadline = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    json!({"market": MARKET, "input_file": file, "limit_price": limit, "deadline": deadline, "model_id": model})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_uploads_are_checked_and_a_model_is_its_studios_alone() {
    let app = TestApp::spawn().await;
    let studio = app.signup("studio").await;
    app.credit(&studio, 100_000).await;

    // Not a model: refused, saying why, with the field.
    let (status, e) = error_of(upload_model(&app, &studio, MARKET, b"not an onnx file".to_vec(), "application/octet-stream").await).await;
    assert_eq!((status, e["code"].as_str()), (400, Some("invalid_model")), "{e}");
    assert_eq!(e["field"], "body", "{e}");
    assert!(e["message"].as_str().unwrap().contains("cannot run on EMBED-MINILM-L6"), "{e}");
    // A market whose workload takes no private model; a wrong content type; an empty body.
    let (status, e) = error_of(upload_model(&app, &studio, "RENDER-TERRAIN-128", b"x".to_vec(), "application/octet-stream").await).await;
    assert_eq!((status, e["field"].as_str()), (400, Some("market")), "{e}");
    let (status, _) = error_of(upload_model(&app, &studio, MARKET, b"x".to_vec(), "application/jsonl").await).await;
    assert_eq!(status, 415);
    let (status, e) = error_of(upload_model(&app, &studio, MARKET, Vec::new(), "application/octet-stream").await).await;
    assert_eq!((status, e["field"].as_str()), (400, Some("body")), "{e}");
    // Providers do not upload models.
    let provider = app.signup("provider").await;
    let (status, _) = error_of(upload_model(&app, &provider, MARKET, b"x".to_vec(), "application/octet-stream").await).await;
    assert_eq!(status, 403);

    // A real one is stored and listed, with the sha256 of what was sent.
    let bytes = private_model_bytes();
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    let model = json_of(upload_model(&app, &studio, MARKET, bytes.clone(), "application/octet-stream").await).await;
    assert_eq!(model["sha256"], sha.as_str(), "{model}");
    assert_eq!(model["bytes"], bytes.len() as u64);
    assert_eq!(model["sealing"], "xchacha20poly1305");
    let id = model["id"].as_str().unwrap().to_owned();
    let list = json_of(app.get_as(&studio, "/v1/models").await).await;
    assert_eq!(list["data"][0]["id"], id.as_str(), "{list}");

    // Another studio can neither see it nor use it in a job.
    let other = app.signup("studio").await;
    app.credit(&other, 100_000).await;
    assert_eq!(app.get_as(&other, &format!("/v1/models/{id}")).await.status(), 404);
    assert_eq!(app.get_as(&other, &format!("/v1/models/{id}/releases")).await.status(), 404);
    assert!(json_of(app.get_as(&other, "/v1/models").await).await["data"].as_array().unwrap().is_empty());
    let file = upload_file(&app, &other, MARKET, corpus(3)).await;
    let (status, e) = error_of(app.post_as(&other, "/v1/jobs", &job_body(&file, &id, 50)).await).await;
    assert_eq!((status, e["field"].as_str()), (404, Some("model_id")), "{e}");
    // Nothing was reserved for the refused job.
    assert_eq!(app.balance(&other).await["available"], 100_000);
    // Anonymous: nothing.
    assert_eq!(app.http.get(app.url(&format!("/v1/models/{id}"))).send().await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_private_model_is_sealed_at_rest_run_by_the_node_and_verified_with_it() {
    let stack = Stack::start("private-model").await;
    let app = &stack.app;
    let studio = app.signup("studio").await;
    app.credit(&studio, 1_000_000).await;

    let bytes = private_model_bytes();
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    assert_ne!(sha, executor::models::pinned::MINILM_L6_INT8);
    let model = json_of(upload_model(app, &studio, MARKET, bytes.clone(), "application/octet-stream").await).await;
    let model_id = model["id"].as_str().unwrap().to_owned();

    // At rest it is ciphertext: the object has the plaintext's size plus the AEAD tag, and no
    // 64-byte piece of the plaintext's head appears in it.
    let store = stack
        .nats
        .jetstream()
        .get_object_store(gridbook_wire::streams::FILES_BUCKET)
        .await
        .unwrap();
    let mut obj = store.get(format!("model-{model_id}")).await.unwrap();
    let mut sealed = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut obj, &mut sealed).await.unwrap();
    assert_eq!(sealed.len(), bytes.len() + 16);
    for at in [0usize, 4096, bytes.len() / 2] {
        let needle = &bytes[at..at + 64];
        assert!(!sealed.windows(64).any(|w| w == needle), "plaintext bytes at {at} found in the sealed object");
    }
    // And no object holds the plaintext under its sha256.
    assert!(store.get(&sha).await.is_err(), "the plaintext is stored under its sha256");

    // A provider's real agent; the job pins the model.
    let provider = app.signup("provider").await;
    // Asks of 1 unit (topped up after each fill): the 2 units are 2 assignments.
    let agent = stack.start_agent(&provider, MARKET, Policy::Fixed { price: 40, qty: 1 });
    let started = Instant::now();
    loop {
        let book = json_of(app.http.get(app.url(&format!("/v1/markets/{MARKET}/book"))).send().await.unwrap()).await;
        if book["asks"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(!agent.is_finished(), "the agent stopped");
        assert!(started.elapsed() < Duration::from_secs(120), "no ask on the book: {book}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let node_id = json_of(app.get_as(&provider, "/v1/nodes").await).await;
    let node_id = node_id.get("data").unwrap_or(&node_id)[0]["id"].as_str().unwrap().to_owned();

    // 1,001 lines = 2 units: two assignments, so the verifier's second re-run uses the model it
    // kept loaded (not fetched again).
    let file = upload_file(app, &studio, MARKET, corpus(1_001)).await;
    let job = json_of(app.post_as(&studio, "/v1/jobs", &job_body(&file, &model_id, 100)).await).await;
    assert_eq!(job["model_id"], model_id.as_str(), "{job}");
    assert_eq!(job["model_sha256"], sha.as_str(), "{job}");
    let job_id = job["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let job = loop {
        let j = json_of(app.get_as(&studio, &format!("/v1/jobs/{job_id}")).await).await;
        if ["completed", "failed", "expired", "cancelled"].contains(&j["status"].as_str().unwrap()) {
            break j;
        }
        assert!(started.elapsed() < Duration::from_secs(240), "job stuck: {j}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["request_counts"]["completed"], 1_001, "{job}");
    let out = app.get_as(&studio, &format!("/v1/jobs/{job_id}/output")).await.text().await.unwrap();
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1_001);
    assert!(lines.iter().all(|l| l["embedding"].as_array().is_some_and(|v| v.len() == 384)));

    // The node ran exactly the pinned bytes (its manifest), and the worker re-ran a sample with
    // them (the assignment verified and paid).
    let manifests: Vec<(String, Option<Value>)> = {
        use gridbook_db::diesel::{ExpressionMethods, QueryDsl, RunQueryDsl};
        use gridbook_db::schema::job_assignments as ja;
        let mut c = app.db.conn();
        ja::table
            .filter(ja::job_id.eq(uuid::Uuid::parse_str(&job_id).unwrap()))
            .select((ja::status, ja::manifest))
            .load(&mut c)
            .unwrap()
    };
    assert_eq!(manifests.len(), 2, "two assignments");
    for (status, m) in &manifests {
        assert_eq!(status, "completed");
        assert_eq!(m.as_ref().unwrap()["models"]["model"], sha.as_str(), "{m:?}");
    }
    // The first unit at the resting ask (40), the second at the resting bid (100): the re-posted
    // ask was the taker.
    assert_eq!(app.balance(&provider).await["available"], 140, "40 + 100");

    // The key went to that node only, once per assignment it ran, and the studio can see it.
    let releases = json_of(app.get_as(&studio, &format!("/v1/models/{model_id}/releases")).await).await;
    let releases = releases["data"].as_array().unwrap();
    assert!(!releases.is_empty(), "no key release recorded");
    assert!(releases.iter().all(|r| r["node_id"] == node_id.as_str()), "{releases:?}");
    let assignment = releases[0]["assignment_id"].as_str().unwrap().to_owned();

    // After the assignment ended, even its own node gets no grant (so no key) for it.
    let r = app.post_as(&provider, &format!("/v1/nodes/{node_id}/credentials"), &json!({})).await;
    let token = json_of(r).await["token"].as_str().unwrap().to_owned();
    let r = app
        .http
        .post(app.url(&format!("/v1/assignments/{assignment}/grant")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let (status, e) = error_of(r).await;
    assert_eq!((status, e["code"].as_str()), (409, Some("assignment_closed")), "{e}");
    // Another provider's node gets no grant for it either, and a made-up grant unlocks nothing.
    let attacker = app.signup("provider").await;
    let other_node = passed_node(app, &attacker).await;
    let r = app.post_as(&attacker, &format!("/v1/nodes/{other_node}/credentials"), &json!({})).await;
    let other_token = json_of(r).await["token"].as_str().unwrap().to_owned();
    let r = app
        .http
        .post(app.url(&format!("/v1/assignments/{assignment}/grant")))
        .bearer_auth(&other_token)
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 403 | 409), "{}", r.status());
    for path in ["model", "model-key"] {
        let r = app
            .http
            .get(app.url(&format!("/v1/assignments/{assignment}/{path}")))
            .bearer_auth(format!("gbg_{}", "00".repeat(72)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    {
        use gridbook_db::diesel::{self, RunQueryDsl};
        let mut c = app.db.conn();
        diesel::sql_query("SELECT ledger_check_invariants()").execute(&mut c).expect("ledger invariants");
    }
    let _ = agent.stop(Duration::from_secs(60)).await;
}
