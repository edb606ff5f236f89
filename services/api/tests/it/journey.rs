//! The full journey through real parts: a provider's executor agent (real ONNX Runtime, the
//! real MiniLM model) registers its node over HTTP, passes the hardware challenge and posts an
//! ask; a studio funds its account, uploads a JSONL file and submits a job; the real
//! `matching-engine` binary matches the bid; the settlement worker assigns the lines to the node;
//! the agent fetches them from the object store, embeds them, uploads its output and reports;
//! the worker verifies (hashes, Merkle root, sampled re-run) and settles the escrow; the job
//! completes and the studio downloads an output file keyed by `custom_id`. Money is conserved.

use std::time::{Duration, Instant};

use executor::agent::pricing::Policy;
use gridbook_testkit::{Agent, Stack, TestApp, TestUser};
use serde_json::{Value, json};

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

pub(crate) async fn json_of(r: reqwest::Response) -> Value {
    let status = r.status();
    let body = r.text().await.unwrap();
    assert!(status.is_success(), "HTTP {status}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_studio_job_runs_on_a_provider_node_is_verified_paid_and_downloaded() {
    let stack = Stack::start("journey").await;
    let app = &stack.app;

    // The provider: an account, an API key, and the executor agent with a fixed ask of 5 at 40.
    let (provider, agent) = start_provider(&stack, MARKET, 40, 5).await;
    let nodes = json_of(app.get_as(&provider, "/v1/nodes").await).await;
    let nodes = nodes.get("data").unwrap_or(&nodes).clone();
    assert_eq!(nodes[0]["challenge_status"], "passed", "{nodes}");

    // The studio: funds, a file of 1,500 lines (2 units of 1,000), a job at up to 100 a unit.
    let studio = app.signup("studio").await;
    app.credit(&studio, 1_000_000).await;
    let text = corpus(1_500);
    let job_id = submit_job(app, &studio, MARKET, &text, 100, 1_500).await;

    // It runs, is verified and completes.
    let (job, seen) = wait_for_job(app, &studio, &job_id).await;
    assert_eq!(job["status"], "completed", "statuses {seen:?}: {job}");
    assert_eq!(job["request_counts"]["completed"], 1_500, "{job}");
    assert_eq!(job["request_counts"]["failed"], 0, "{job}");
    assert_eq!((job["request_counts"]["running"].as_i64(), job["request_counts"]["queued"].as_i64()), (Some(0), Some(0)), "{job}");

    // The studio's view of how the book split the job: every assignment on the provider's
    // node, completed at its ask's price, covering the units and lines exactly once.
    let asg = json_of(app.get_as(&studio, &format!("/v1/jobs/{job_id}/assignments")).await).await;
    assert_eq!(asg["truncated"], false, "{asg}");
    let asg = asg["data"].as_array().unwrap_or_else(|| panic!("{asg}")).clone();
    assert!(asg.iter().all(|a| a["node_id"] == nodes[0]["id"] && a["status"] == "completed" && a["price"] == 40), "{asg:?}");
    let mut lines_covered: Vec<(i64, i64)> = asg.iter().map(|a| (a["item_start"].as_i64().unwrap(), a["item_count"].as_i64().unwrap())).collect();
    lines_covered.sort();
    let mut next = 0;
    for (start, count) in &lines_covered {
        assert_eq!(*start, next, "lines covered {lines_covered:?}");
        next += count;
    }
    assert_eq!(next, 1_500, "lines covered {lines_covered:?}");
    assert_eq!(asg.iter().map(|a| a["units"].as_i64().unwrap()).sum::<i64>(), 2, "{asg:?}");
    // Nobody else sees them.
    let other = app.signup("studio").await;
    assert_eq!(app.get_as(&other, &format!("/v1/jobs/{job_id}/assignments")).await.status(), 404);

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
    // Canaries: the market mixed its own known-answer items into both assignments (≈ 1 per 100
    // items, at least one each), the agent answered them under their served ids, each was
    // checked against its known answer, and none reached the studio's 1,500 lines above.
    {
        use diesel::prelude::*;
        use gridbook_db::schema::{assignment_verifications as av, job_assignments as ja};
        let mut c = app.db.conn();
        let job: uuid::Uuid = job_id.parse().unwrap();
        let placed: Vec<(Value, i32)> = ja::table.filter(ja::job_id.eq(job)).select((ja::canaries, ja::item_count)).load(&mut c).unwrap();
        let placed_n: usize = placed.iter().map(|(v, _)| v.as_array().unwrap().len()).sum();
        assert!(placed.iter().all(|(v, n)| v.as_array().unwrap().len() as i32 >= (*n / 100).max(1)), "{placed:?}");
        let figures: Vec<Value> = av::table.filter(av::job_id.eq(job)).select(av::canary_figures).load(&mut c).unwrap();
        let checked: Vec<&Value> = figures.iter().flat_map(|f| f.as_array().unwrap()).collect();
        assert_eq!(checked.len(), placed_n, "every canary was checked");
        assert!(checked.iter().all(|f| f["ok"] == true && f["cosine"].as_f64().unwrap() >= 0.999), "{checked:?}");
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

    let _ = agent.stop(Duration::from_secs(60)).await;
}

/// A provider account with a key, and its executor agent (in this process, real runtime and
/// models) serving `market` with a fixed ask; returns once the ask is on the engine's book.
pub(crate) async fn start_provider(stack: &Stack, market: &str, price: u64, qty: u64) -> (TestUser, Agent) {
    let app = &stack.app;
    let provider = app.signup("provider").await;
    let agent = stack.start_agent(&provider, market, Policy::Fixed { price, qty });

    // The node registered, passed the challenge and its ask is on the book.
    let started = Instant::now();
    loop {
        let book = json_of(app.http.get(app.url(&format!("/v1/markets/{market}/book"))).send().await.unwrap()).await;
        if book["asks"].as_array().is_some_and(|a| !a.is_empty()) {
            assert_eq!(book["asks"][0]["price"], price);
            break;
        }
        assert!(!agent.is_finished(), "the agent stopped: {:?}", agent.join().await);
        assert!(started.elapsed() < Duration::from_secs(120), "no ask on the book: {book}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (provider, agent)
}

/// A provider whose node passed the challenge (over HTTP) and has an ask of 5 units at 40 on
/// `MARKET`'s book, with no agent behind it: the test plays (or withholds) the node's part.
async fn provider_without_agent(app: &TestApp) -> (TestUser, String) {
    let provider = app.signup("provider").await;
    let node = crate::provider::passed_node(app, &provider).await;
    let r = crate::provider::post_ask(app, &provider, &node, 40, 5).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let started = Instant::now();
    loop {
        let book = json_of(app.http.get(app.url(&format!("/v1/markets/{MARKET}/book"))).send().await.unwrap()).await;
        if book["asks"].as_array().is_some_and(|a| !a.is_empty()) {
            return (provider, node);
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the ask never reached the book: {book}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Publishes `result` on `node.<node>.result` the way a node does: connected to the stack's
/// NATS with the node's own credential `token` (JetStream, waiting for the ack).
pub(crate) async fn publish_result_as_node(stack: &Stack, token: String, node: &str, result: &gridbook_wire::node::ResultMsg) {
    use gridbook_wire::subjects;
    let node_nats = async_nats::ConnectOptions::with_token(token)
        .custom_inbox_prefix(subjects::node_inbox_prefix(node))
        .connect(&stack.nats.url)
        .await
        .expect("the node connects with its credential");
    async_nats::jetstream::new(node_nats)
        .publish(subjects::node_result(node), serde_json::to_vec(result).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Uploads `text` as a batch file for `market`; returns the file.
pub(crate) async fn upload(app: &TestApp, studio: &TestUser, market: &str, text: &str) -> Value {
    json_of(
        app.http
            .post(app.url(&format!("/v1/files?purpose=batch&market={market}")))
            .header("Authorization", studio.bearer())
            .header("Content-Type", "application/jsonl")
            .body(text.to_owned())
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Uploads `text` for `market` and submits a job at `limit` per unit; returns the job id.
pub(crate) async fn submit_job(app: &TestApp, studio: &TestUser, market: &str, text: &str, limit: u64, lines: u64) -> String {
    let file = upload(app, studio, market, text).await;
    assert_eq!(file["lines"], lines);
    let deadline = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let job = json_of(
        app.http
            .post(app.url("/v1/jobs"))
            .header("Authorization", studio.bearer())
            .header("Idempotency-Key", format!("journey-{market}"))
            .json(&json!({"market": market, "input_file": file["id"], "limit_price": limit, "deadline": deadline}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(job["status"], "queued");
    job["id"].as_str().unwrap().to_owned()
}

/// Polls the job until it ends; returns it and the statuses seen on the way.
pub(crate) async fn wait_for_job(app: &TestApp, studio: &TestUser, job_id: &str) -> (Value, Vec<String>) {
    let started = Instant::now();
    let mut seen = vec!["queued".to_owned()];
    loop {
        let j = json_of(app.get_as(studio, &format!("/v1/jobs/{job_id}")).await).await;
        let status = j["status"].as_str().unwrap().to_owned();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if ["completed", "failed", "expired", "cancelled", "rejected"].contains(&status.as_str()) {
            return (j, seen);
        }
        assert!(started.elapsed() < Duration::from_secs(300), "job stuck in {status}: {j}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_render_job_comes_back_as_verified_png_images() {
    const RENDER: &str = "RENDER-TERRAIN-128";
    let stack = Stack::start("journey-render").await;
    let app = &stack.app;
    let (provider, agent) = start_provider(&stack, RENDER, 7, 10).await;
    let studio = app.signup("studio").await;
    app.credit(&studio, 10_000).await;
    let text: String = (0..3)
        .map(|i| json!({"custom_id": format!("tile-{i}"), "seed": 1000 + i, "difficulty": 30}).to_string() + "\n")
        .collect();
    let job_id = submit_job(app, &studio, RENDER, &text, 20, 3).await;
    let (job, seen) = wait_for_job(app, &studio, &job_id).await;
    assert_eq!(job["status"], "completed", "statuses {seen:?}: {job}");
    assert_eq!(job["request_counts"]["completed"], 3, "{job}");

    // Each output line carries its PNG (128×128), and the image endpoint serves it.
    let out = app.get_as(&studio, &format!("/v1/jobs/{job_id}/output")).await.text().await.unwrap();
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["custom_id"], format!("tile-{i}"));
        let png = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, l["image_png_b64"].as_str().unwrap()).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let img = app.get_as(&studio, &format!("/v1/jobs/{job_id}/images/tile-{i}")).await;
        assert_eq!(img.status(), 200);
        assert_eq!(img.headers()["content-type"], "image/png");
        assert_eq!(img.bytes().await.unwrap().as_ref(), png.as_slice());
    }
    let other = app.signup("studio").await;
    assert_eq!(app.get_as(&other, &format!("/v1/jobs/{job_id}/images/tile-0")).await.status(), 404);
    assert_eq!(app.get_as(&studio, &format!("/v1/jobs/{job_id}/images/nope")).await.status(), 404);

    // 3 images at the resting ask's 7: the provider earned 21.
    let p = app.balance(&provider).await;
    assert_eq!(p["available"].as_i64().unwrap(), 21, "provider {p}");
    let _ = agent.stop(Duration::from_secs(60)).await;
}

/// `RENDER-SD15-512` settles end to end: the agent runs the SD pipeline and the worker re-runs
/// a sample with the same pipeline. Both use the tiny random-weight fixture
/// (`gridbook_testkit::tiny_sd_fixture`: the SD code path, not Stable Diffusion); with real
/// weights the worker needs `GRIDBOOK_SD_MODEL_DIR`, or SD results are never paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_sd_job_is_rendered_verified_by_a_re_run_and_paid() {
    const SD: &str = "RENDER-SD15-512";
    let stack = Stack::start("journey-sd").await;
    let app = &stack.app;
    let (provider, agent) = start_provider(&stack, SD, 9, 10).await;
    let studio = app.signup("studio").await;
    app.credit(&studio, 10_000).await;
    let text: String = (0..2)
        .map(|i| {
            json!({"custom_id": format!("pic-{i}"), "prompt": format!("a red cube number {i}"), "seed": 7 + i,
                   "width": 64, "height": 64, "steps": 4})
            .to_string()
                + "\n"
        })
        .collect();
    let job_id = submit_job(app, &studio, SD, &text, 20, 2).await;
    let (job, seen) = wait_for_job(app, &studio, &job_id).await;
    assert_eq!(job["status"], "completed", "statuses {seen:?}: {job}");
    assert_eq!(job["request_counts"]["completed"], 2, "{job}");
    for i in 0..2 {
        let img = app.get_as(&studio, &format!("/v1/jobs/{job_id}/images/pic-{i}")).await;
        assert_eq!(img.status(), 200);
        assert_eq!(&img.bytes().await.unwrap()[1..4], b"PNG");
    }
    // The provider sees the verification evidence of its assignment.
    let asg = json_of(app.get_as(&provider, "/v1/assignments").await).await;
    let detail = asg["data"][0]["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.starts_with("verified: 2 of 2 items; sample seed "), "{asg}");
    // 2 images at the resting ask's 9: the provider earned 18.
    let p = app.balance(&provider).await;
    assert_eq!(p["available"].as_i64().unwrap(), 18, "provider {p}");
    let _ = agent.stop(Duration::from_secs(60)).await;
}

/// The failure path end to end: a provider's node takes an assignment and never answers. At the
/// assignment's deadline the worker voids it (the studio gets everything back), tells the node
/// on `node.<id>.cancel`, lowers the node's reputation, and the job ends `expired` with an error
/// line per item.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_assignment_without_a_result_is_voided_at_its_deadline_and_the_studio_refunded() {
    use futures::StreamExt;
    let stack = Stack::start("journey-overdue").await;
    let app = &stack.app;
    let (provider, node) = provider_without_agent(app).await;
    let mut cancels = stack.nats.client.subscribe(gridbook_wire::subjects::node_cancel(&node)).await.unwrap();

    let studio = app.signup("studio").await;
    app.credit(&studio, 10_000).await;
    let file = json_of(
        app.http
            .post(app.url(&format!("/v1/files?purpose=batch&market={MARKET}")))
            .header("Authorization", studio.bearer())
            .header("Content-Type", "application/jsonl")
            .body(corpus(10))
            .send()
            .await
            .unwrap(),
    )
    .await;
    // The earliest deadline the API accepts: the assignment's deadline is the job's.
    let deadline = chrono::Utc::now() + chrono::Duration::seconds(gridbook_api::jobs::MIN_DEADLINE_SECS + 2);
    let job = json_of(
        app.http
            .post(app.url("/v1/jobs"))
            .header("Authorization", studio.bearer())
            .json(&json!({"market": MARKET, "input_file": file["id"], "limit_price": 50, "deadline": deadline.to_rfc3339()}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let job_id = job["id"].as_str().unwrap_or_else(|| panic!("{job}")).to_owned();

    let (job, seen) = wait_for_job(app, &studio, &job_id).await;
    assert_eq!(job["status"], "expired", "statuses {seen:?}: {job}");
    assert!(seen.contains(&"running".to_owned()), "the job was assigned first: {seen:?}");
    assert_eq!(job["request_counts"]["completed"], 0, "{job}");

    // The node was told to stop, and its assignment is failed with the reason.
    let msg = tokio::time::timeout(Duration::from_secs(30), cancels.next())
        .await
        .expect("a cancel on node.<id>.cancel")
        .expect("the subscription is open");
    let cancel: gridbook_wire::node::CancelMsg = serde_json::from_slice(&msg.payload).unwrap();
    let asg = json_of(app.get_as(&provider, "/v1/assignments").await).await;
    assert_eq!(asg["data"].as_array().map(Vec::len), Some(1), "{asg}");
    assert_eq!(asg["data"][0]["status"], "failed", "{asg}");
    assert_eq!(asg["data"][0]["detail"], "no result before the deadline", "{asg}");
    assert_eq!(cancel.assignment_ids, vec![asg["data"][0]["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap()]);

    // Every item has an error line; the studio has all its money back, the provider nothing.
    let errors = app.get_as(&studio, &format!("/v1/jobs/{job_id}/errors")).await.text().await.unwrap();
    assert_eq!(errors.lines().count(), 10, "{errors}");
    assert!(errors.lines().all(|l| l.contains("assignment_failed")), "{errors}");
    let s = app.balance(&studio).await;
    assert_eq!((s["available"].as_i64(), s["held"].as_i64()), (Some(10_000), Some(0)), "studio {s}");
    let p = app.balance(&provider).await;
    assert_eq!(p["available"].as_i64(), Some(0), "provider {p}");
    let n = json_of(app.get_as(&provider, &format!("/v1/nodes/{node}")).await).await;
    // The reliability score moved 1/16 of the way to 0 (`reliability::update`).
    assert_eq!(n["reputation"], 5_000 - 313, "{n}");
}

/// A cheating node, end to end through the real engine, worker and object store: this test
/// plays the node. It takes its assignment from `node.<id>.assign`, reads the input, and instead
/// of running the model publishes the same made-up unit vector for every item — with hashes and
/// a Merkle root that are all consistent, so only the sampled re-run can tell. The worker
/// catches it: the assignment fails with the evidence (seed, items re-run, figures), the
/// provider is not paid, loses reputation and is suspended (its ask leaves the book), and the
/// units go back to the book as a re-bid of the same job; an honest node's agent takes them,
/// the job completes with every line embedded for real, and the studio pays exactly that
/// node's trade plus fee. Both sides read the outcome through the verification routes; nobody
/// else can.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_fakes_its_embeddings_is_caught_unpaid_suspended_and_its_units_redone_by_an_honest_node() {
    use executor::commitment::{self, Commitment};
    use futures::StreamExt;
    use gridbook_wire::node::{AssignmentMsg, Outcome, ResultMsg};
    use gridbook_wire::{catalog, subjects};

    // Canaries off: this test is about the sampled re-run (a cheater faking every line would
    // fail its canaries first; `settlement/tests/it/canary.rs` shows that with the real model).
    let options = gridbook_testkit::StackOptions {
        worker: Some(|w| w.canary_rate = 0.0),
        ..Default::default()
    };
    let stack = Stack::start_with("journey-cheat", options).await;
    let app = &stack.app;
    let (provider, node) = provider_without_agent(app).await;
    let mut assigns = stack.nats.client.subscribe(subjects::node_assign(&node)).await.unwrap();
    let studio = app.signup("studio").await;
    app.credit(&studio, 10_000).await;
    let job_id = submit_job(app, &studio, MARKET, &corpus(30), 50, 30).await;

    // The cheating node's side.
    let msg = tokio::time::timeout(Duration::from_secs(60), assigns.next()).await.expect("an assignment").unwrap();
    let a: AssignmentMsg = serde_json::from_slice(&msg.payload).unwrap();
    let work = a.work.clone().expect("a job's assignment carries its work");
    // It is a stranger: its credential, a grant for this assignment, only its lines.
    let cred = json_of(app.post_as(&provider, &format!("/v1/nodes/{node}/credentials"), &json!({})).await).await;
    let token = cred["token"].as_str().expect("a credential").to_owned();
    let grant = json_of(
        app.http
            .post(app.url(&format!("/v1/assignments/{}/grant", a.assignment_id)))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let gtoken = grant["token"].as_str().expect("a grant").to_owned();
    let input = app
        .http
        .get(app.url(grant["input_url"].as_str().unwrap()))
        .bearer_auth(&gtoken)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    // Every served line (named by position), as the node must answer them.
    let items: Vec<&[u8]> = catalog::items(&input).collect();
    assert_eq!(items.len() as u64, work.item_count, "no canaries at rate 0");
    let mut fake = vec![0.0f32; 384];
    fake[0] = 1.0;
    let (mut lines, mut leaves) = (String::new(), Vec::new());
    for line in items {
        let v: Value = serde_json::from_slice(line).unwrap();
        let id = v["custom_id"].as_str().unwrap().to_owned();
        let h = commitment::sha256(&commitment::embedding_bytes(&fake));
        lines.push_str(&json!({"custom_id": id, "sha256": hex::encode(h), "embedding": fake}).to_string());
        lines.push('\n');
        leaves.push((id, h));
    }
    let output_sha256 = hex::encode(commitment::sha256(lines.as_bytes()));
    let up = json_of(
        app.http
            .put(app.url(grant["output_url"].as_str().unwrap()))
            .bearer_auth(&gtoken)
            .body(lines.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(up["sha256"], output_sha256.as_str());
    let result = ResultMsg {
        assignment_id: a.assignment_id,
        job_id: a.job_id.unwrap(),
        outcome: Outcome::Completed {
            output_sha256,
            merkle_root: Commitment::build(&leaves).merkle_root,
            items_ok: leaves.len() as u64,
            items_failed: 0,
        },
        manifest: json!({"note": "a cheater's manifest"}),
        elapsed_ms: 1,
    };
    publish_result_as_node(&stack, token, &node, &result).await;
    let _ = job_id;

    // Caught: the assignment failed with the evidence, nothing paid, everything refunded.
    let started = Instant::now();
    let asg = loop {
        let asg = json_of(app.get_as(&provider, "/v1/assignments").await).await;
        if asg["data"][0]["status"] != "assigned" {
            break asg;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "never verified: {asg}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(asg["data"][0]["status"], "failed", "{asg}");
    let detail = asg["data"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("differs from the re-run") && detail.contains("sample seed "), "{detail}");
    let p = app.balance(&provider).await;
    assert_eq!(p["available"].as_i64(), Some(0), "the cheater is not paid: {p}");
    let n = json_of(app.get_as(&provider, &format!("/v1/nodes/{node}")).await).await;
    assert_eq!(n["reputation"], 0, "a proven cheat zeroes the reliability score: {n}");
    assert_eq!(n["status"], "suspended", "a proven cheat suspends the node: {n}");

    // The dispute record, as the studio and the provider read it.
    let asg_id = asg["data"][0]["id"].as_str().unwrap().to_owned();
    let route = format!("/v1/assignments/{asg_id}/verification");
    let v = json_of(app.get_as(&studio, &route).await).await;
    assert_eq!((v["outcome"].as_str(), v["failed_check"].as_str()), (Some("failed"), Some("sample_mismatch")), "{v}");
    assert_eq!((v["remedy"].as_str(), v["node_action"].as_str()), (Some("reoffered"), Some("suspended")), "{v}");
    assert!(v["sample_seed"].as_str().is_some_and(|s| s.len() == 64), "{v}");
    assert_eq!(v["sampled_items"].as_array().map(Vec::len), Some(4), "{v}");
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{v}");
    assert!(items.iter().any(|i| i["ok"] == false && i["cosine"].as_f64().unwrap() < 0.999), "{v}");
    assert!(items.iter().all(|i| i["node_sha256"].is_string() && i["reference_sha256"].is_string()), "{v}");
    assert_eq!(v["node_manifest"]["note"], "a cheater's manifest", "{v}");
    assert!(v["reference_manifest"]["execution_provider"].is_string(), "{v}");
    assert_eq!(v["merkle_root"], json!(Commitment::build(&leaves).merkle_root), "{v}");
    assert_eq!(json_of(app.get_as(&provider, &route).await).await["assignment_id"], json!(asg_id));
    let (other_studio, other_provider) = (app.signup("studio").await, app.signup("provider").await);
    for intruder in [&other_studio, &other_provider] {
        assert_eq!(app.get_as(intruder, &route).await.status(), 404, "{}", intruder.role);
        assert_eq!(app.get_as(intruder, &format!("/v1/jobs/{job_id}/verifications")).await.status(), 404);
    }
    assert_eq!(app.http.get(app.url(&route)).send().await.unwrap().status(), 401);

    // The cheater's ask left the book (cancelled before the re-bid was placed); the re-bid rests.
    let started = Instant::now();
    loop {
        let book = json_of(app.http.get(app.url(&format!("/v1/markets/{MARKET}/book"))).send().await.unwrap()).await;
        if book["asks"].as_array().is_some_and(|a| a.is_empty()) && book["bids"].as_array().is_some_and(|b| !b.is_empty()) {
            assert_eq!(book["bids"][0]["price"], 50, "the re-bid is at the job's limit: {book}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no re-bid alone on the book: {book}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // An honest node takes the units and the job completes.
    let (honest, agent) = start_provider(&stack, MARKET, 45, 5).await;
    let (job, seen) = wait_for_job(app, &studio, &job_id).await;
    assert_eq!(job["status"], "completed", "statuses {seen:?}: {job}");
    assert_eq!((job["request_counts"]["completed"].as_i64(), job["request_counts"]["failed"].as_i64()), (Some(30), Some(0)), "{job}");
    let out = app.get_as(&studio, &format!("/v1/jobs/{job_id}/output")).await.text().await.unwrap();
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 30);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["custom_id"], format!("req-{i:05}"));
        let v: Vec<f64> = l["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(v.len(), 384);
        assert!(v[0] < 0.99, "line {i} is the cheater's vector");
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
    }
    let errors = app.get_as(&studio, &format!("/v1/jobs/{job_id}/errors")).await;
    assert_eq!(errors.status(), 200, "a finished job answers its error file");
    assert_eq!(errors.text().await.unwrap(), "", "no error line: every line was redone");

    // Both outcomes for the studio: the failed one (re-offered) and the honest one (paid).
    let all = json_of(app.get_as(&studio, &format!("/v1/jobs/{job_id}/verifications")).await).await;
    let all = all["data"].as_array().unwrap().clone();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!((all[0]["outcome"].as_str(), all[0]["remedy"].as_str()), (Some("failed"), Some("reoffered")));
    assert_eq!((all[1]["outcome"].as_str(), all[1]["remedy"].as_str()), (Some("passed"), Some("paid")));
    assert_eq!(all[1]["verified_items"], 30);
    assert!(all[1]["items"].as_array().unwrap().iter().all(|i| i["ok"] == true && i["cosine"].as_f64().unwrap() >= 0.999));

    // Money: the cheater got nothing; the honest node its trade; the studio paid exactly that
    // trade plus the fee, and holds nothing; the ledger's invariants hold.
    let redone = json_of(app.get_as(&honest, "/v1/assignments").await).await;
    let price = redone["data"][0]["price"].as_i64().unwrap();
    let fee_bps = job["fee_bps"].as_i64().unwrap();
    let fee = (price * fee_bps + 9_999) / 10_000;
    assert_eq!(app.balance(&provider).await["available"].as_i64(), Some(0));
    assert_eq!(app.balance(&honest).await["available"].as_i64(), Some(price));
    let s = app.balance(&studio).await;
    assert_eq!((s["available"].as_i64(), s["held"].as_i64()), (Some(10_000 - price - fee), Some(0)), "studio {s}");
    {
        use diesel::RunQueryDsl;
        let mut c = app.db.conn();
        let broken = diesel::sql_query("SELECT * FROM ledger_check_invariants()").execute(&mut c).expect("ledger invariants");
        assert_eq!(broken, 0, "ledger invariants broken");
    }
    let _ = agent.stop(Duration::from_secs(60)).await;
}
