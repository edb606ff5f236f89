//! The full journey through real parts: a provider's executor agent (real ONNX Runtime, the
//! real MiniLM model) registers its node over HTTP, passes the hardware challenge and posts an
//! ask; a studio funds its account, uploads a JSONL file and submits a job; the real
//! `matching-engine` binary matches the bid; the settlement worker assigns the lines to the node;
//! the agent fetches them from the object store, embeds them, uploads its output and reports;
//! the worker verifies (hashes, Merkle root, sampled re-run) and settles the escrow; the job
//! completes and the studio downloads an output file keyed by `custom_id`. Money is conserved.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use executor::agent::{self, config::AgentSettings, pricing::Policy, workloads::Workloads};
use serde_json::{Value, json};

use crate::stack::Stack;

const MARKET: &str = "EMBED-MINILM-L6";

fn corpus(n: usize) -> String {
    let subjects = ["The weather", "A small cat", "The stadium", "Our new GPU", "This recipe", "The river"];
    let verbs = ["looks", "feels", "sounds", "seems", "became", "stays"];
    let ends = ["lovely today", "far too loud", "oddly quiet", "faster than before", "a bit salty", "cold in winter"];
    (0..n)
        .map(|i| {
            let text = format!(
                "{} {} {} (item {i})",
                subjects[i % 6],
                verbs[(i / 6) % 6],
                ends[(i / 36) % 6]
            );
            json!({"custom_id": format!("req-{i:05}"), "input": text}).to_string() + "\n"
        })
        .collect()
}

async fn json_of(r: reqwest::Response) -> Value {
    let status = r.status();
    let body = r.text().await.unwrap();
    assert!(status.is_success(), "HTTP {status}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_studio_job_runs_on_a_provider_node_is_verified_paid_and_downloaded() {
    let stack = Stack::start("journey").await;
    let app = &stack.app;

    // The provider: an account, an API key, and the executor agent with a fixed ask.
    let provider = app.signup("provider").await;
    let dir = stack.nats.dir.join("agent");
    std::fs::create_dir_all(&dir).unwrap();
    let mut settings = AgentSettings {
        api_url: Some(app.address.clone()),
        nats_url: stack.nats.url.clone(),
        state_file: dir.join("state.json"),
        name: "journey-node".into(),
        gpu_model: "cpu".into(),
        region: "test".into(),
        heartbeat_secs: 1,
        pricing_poll_secs: 1,
        ..AgentSettings::default()
    };
    settings.markets = BTreeMap::from([(MARKET.to_owned(), Policy::Fixed { price: 40, qty: 5 })]);
    let rt = executor::runtime::Runtime::new(executor::runtime::RuntimeConfig::default())
        .expect("ONNX Runtime (ORT_DYLIB_PATH)");
    let models = executor::models::ModelsDir::from_env().expect("GRIDBOOK_MODELS_DIR");
    let workloads = Arc::new(Workloads::load(&rt, &models, [MARKET], None).expect("models"));
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let agent_task = tokio::spawn(agent::run(settings, Some(provider.key.clone()), workloads, shutdown));

    // The node registered, passed the challenge and its ask is on the book.
    let started = Instant::now();
    loop {
        let book = json_of(app.http.get(app.url(&format!("/v1/markets/{MARKET}/book"))).send().await.unwrap()).await;
        if book["asks"].as_array().is_some_and(|a| !a.is_empty()) {
            assert_eq!(book["asks"][0]["price"], 40);
            break;
        }
        assert!(!agent_task.is_finished(), "the agent stopped: {:?}", agent_task.await);
        assert!(started.elapsed() < Duration::from_secs(120), "no ask on the book: {book}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let nodes = json_of(app.get_as(&provider, "/v1/nodes").await).await;
    let nodes = nodes.get("data").unwrap_or(&nodes).clone();
    assert_eq!(nodes[0]["challenge_status"], "passed", "{nodes}");

    // The studio: funds, a file of 1,500 lines (2 units of 1,000), a job at up to 100 a unit.
    let studio = app.signup("studio").await;
    app.credit(&studio, 1_000_000).await;
    let text = corpus(1_500);
    let file = json_of(
        app.http
            .post(app.url(&format!("/v1/files?purpose=batch&market={MARKET}")))
            .header("Authorization", studio.bearer())
            .header("Content-Type", "application/jsonl")
            .body(text.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(file["lines"], 1_500);
    let deadline = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let job = json_of(
        app.http
            .post(app.url("/v1/jobs"))
            .header("Authorization", studio.bearer())
            .header("Idempotency-Key", "journey-job-1")
            .json(&json!({"market": MARKET, "input_file": file["id"], "limit_price": 100, "deadline": deadline}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let job_id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["status"], "queued");

    // It runs, is verified and completes.
    let mut seen = vec!["queued".to_owned()];
    let job = loop {
        let j = json_of(app.get_as(&studio, &format!("/v1/jobs/{job_id}")).await).await;
        let status = j["status"].as_str().unwrap().to_owned();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if ["completed", "failed", "expired", "cancelled"].contains(&status.as_str()) {
            break j;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "job stuck in {status}: {j}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(job["status"], "completed", "statuses {seen:?}: {job}");
    assert_eq!(job["request_counts"]["completed"], 1_500, "{job}");
    assert_eq!(job["request_counts"]["failed"], 0, "{job}");

    // The output file: one line per input, keyed by custom_id, 384-dim unit vectors.
    let out = app.get_as(&studio, &format!("/v1/jobs/{job_id}/output")).await;
    assert!(out.status().is_success(), "{}", out.status());
    let out = out.text().await.unwrap();
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1_500);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["custom_id"], format!("req-{i:05}"));
        let v: Vec<f64> = l["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(v.len(), 384);
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
    }
    let cos = |a: &Value, b: &Value| -> f64 {
        let a = a["embedding"].as_array().unwrap();
        let b = b["embedding"].as_array().unwrap();
        a.iter().zip(b).map(|(x, y)| x.as_f64().unwrap() * y.as_f64().unwrap()).sum()
    };
    // "The weather looks lovely today" vs "The weather feels lovely today" vs a stadium line.
    assert!(cos(&lines[0], &lines[6]) > cos(&lines[0], &lines[2]));

    // Money: the provider earned 2 units × 40; the studio paid that plus the fee and got the
    // rest of its reservation back; nothing is held; the ledger's invariants hold.
    let s = app.balance(&studio).await;
    let p = app.balance(&provider).await;
    let paid = 1_000_000 - s["available"].as_i64().unwrap();
    assert_eq!(p["available"].as_i64().unwrap(), 80, "provider {p}");
    assert_eq!(s["held"].as_i64().unwrap(), 0, "studio {s}");
    assert!(paid >= 80 && paid <= 80 + 80 * 250 / 10_000 + 2, "studio paid {paid}");
    {
        use diesel::RunQueryDsl;
        let mut c = app.db.conn();
        diesel::sql_query("SELECT ledger_check_invariants()")
            .execute(&mut c)
            .expect("ledger invariants");
    }

    // The provider's view: its assignments (completed, covering all 1,500 lines), earnings,
    // its ask's open quantity after the fills (5 − 2), and the heartbeats the worker recorded.
    let assignments = json_of(app.get_as(&provider, "/v1/assignments").await).await;
    let assignments = assignments["data"].as_array().unwrap().clone();
    assert!(!assignments.is_empty());
    assert!(assignments.iter().all(|a| a["status"] == "completed"), "{assignments:?}");
    let lines_done: i64 = assignments.iter().map(|a| a["item_count"].as_i64().unwrap()).sum();
    assert_eq!(lines_done, 1_500);
    let earnings = json_of(app.get_as(&provider, "/v1/earnings").await).await;
    assert_eq!((earnings["units"].as_i64(), earnings["earned"].as_i64()), (Some(2), Some(80)), "{earnings}");
    // The ask's open quantity as the marketplace shows it follows the engine's book (the
    // fill took 2 of 5; the fixed policy may have topped it up again since).
    let settled = Instant::now();
    loop {
        let asks = json_of(app.get_as(&provider, "/v1/asks").await).await;
        let book = json_of(app.http.get(app.url(&format!("/v1/markets/{MARKET}/book"))).send().await.unwrap()).await;
        assert_eq!(asks["data"][0]["status"], "open", "{asks}");
        if asks["data"][0]["qty"] == book["asks"][0]["qty"] {
            break;
        }
        assert!(settled.elapsed() < Duration::from_secs(20), "ask row {asks} ≠ book {book}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let node = json_of(app.get_as(&provider, "/v1/nodes").await).await;
    let node = node.get("data").unwrap_or(&node)[0].clone();
    assert!(node["last_heartbeat_at"].is_string(), "no heartbeat recorded: {node}");
    assert!(node["reputation"].as_i64().unwrap() > 5_000, "{node}");

    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(60), agent_task).await;
}
