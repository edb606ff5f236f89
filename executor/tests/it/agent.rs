//! The provider agent's node (its NATS side) against the real stack — a private nats-server
//! with the market's authentication, the real API (the node's credential, grants, input and
//! output) — the real ONNX Runtime and the real MiniLM model. The test plays the settlement
//! worker's part: it creates real assignments (`Stack::seed_assignment`) and publishes them,
//! cancels them, and reads the node's results.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use executor::agent::config::AgentSettings;
use executor::agent::node;
use executor::agent::pricing::Policy;
use executor::agent::workloads::Workloads;
use executor::commitment::{self, Commitment};
use futures::StreamExt;
use gridbook_testkit::{Stack, StackOptions, TestUser};
use gridbook_wire::node::{AssignmentMsg, CancelMsg, HeartbeatMsg, Outcome, ResultMsg};
use gridbook_wire::{streams, subjects};
use tokio::io::AsyncReadExt;
use uuid::Uuid;

use crate::common;

/// Generous bound so a broken agent fails the test instead of hanging it (not a timing claim).
const PATIENCE: Duration = Duration::from_secs(300);

/// The stack without a settlement worker (the test plays it), a studio, a provider and its
/// registered node, and a market-service client.
struct Fx {
    stack: Stack,
    studio: TestUser,
    provider: TestUser,
    node: Uuid,
    client: async_nats::Client,
}

async fn fixture(tag: &str) -> Fx {
    fixture_with(tag, StackOptions { settlement: false, ..StackOptions::default() }).await
}

async fn fixture_with(tag: &str, options: StackOptions) -> Fx {
    let stack = Stack::start_with(&format!("executor-{tag}"), options).await;
    let studio = stack.app.signup("studio").await;
    let provider = stack.app.signup("provider").await;
    let node = stack.register_node(&provider, &format!("{tag}-node")).await;
    let client = stack.nats.client.clone();
    Fx { stack, studio, provider, node, client }
}

impl Fx {
    fn agent(&self, settings: AgentSettings) -> Agent {
        Agent(gridbook_testkit::Agent::start_node(settings, self.node, &self.provider.key, workloads()))
    }

    fn settings(&self, state_file: PathBuf) -> AgentSettings {
        AgentSettings {
            api_url: Some(self.stack.app.address.clone()),
            nats_url: self.stack.nats.url.clone(),
            node_id: Some(self.node),
            state_file,
            heartbeat_secs: 1,
            markets: [("EMBED-MINILM-L6".to_owned(), Policy::Fixed { price: 100, qty: 1 })].into_iter().collect(),
            ..AgentSettings::default()
        }
    }

    async fn seed(&self, jsonl: &str, item_start: u64, item_count: u64) -> AssignmentMsg {
        self.stack
            .seed_assignment(&self.studio, self.node, "EMBED-MINILM-L6", jsonl, item_start, item_count)
            .await
            .msg
    }

    async fn results(&self) -> async_nats::Subscriber {
        self.client.subscribe(subjects::node_result(&self.node.to_string())).await.unwrap()
    }
}

/// Embed + the tiny SD fixture, loaded once on the shared CPU runtime.
pub fn workloads() -> Arc<Workloads> {
    static W: OnceLock<Arc<Workloads>> = OnceLock::new();
    W.get_or_init(|| {
        Arc::new(
            Workloads::load(
                common::cpu(),
                &common::models(),
                ["EMBED-MINILM-L6", "RENDER-SD15-512"],
                Some(&common::fixtures().join("tiny-sd")),
            )
            .expect("workloads load"),
        )
    })
    .clone()
}

/// The agent's assignment consumer for a known node, on the shared workloads.
struct Agent(gridbook_testkit::Agent);

impl Agent {
    async fn stop(self) {
        self.0
            .stop(PATIENCE)
            .await
            .expect("agent stops")
            .expect("agent ran without error");
    }
}

async fn publish_assignment(js: &jetstream::Context, a: &AssignmentMsg) {
    js.publish(
        subjects::node_assign(&a.node_id.to_string()),
        serde_json::to_vec(a).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

async fn next_result(sub: &mut async_nats::Subscriber) -> ResultMsg {
    let m = tokio::time::timeout(PATIENCE, sub.next())
        .await
        .expect("a result arrives")
        .expect("subscription open");
    serde_json::from_slice(&m.payload).expect("a ResultMsg")
}

async fn read_object(js: &jetstream::Context, name: &str) -> Vec<u8> {
    let store = js.get_object_store(streams::FILES_BUCKET).await.unwrap();
    let mut obj = store.get(name).await.unwrap();
    let mut buf = Vec::new();
    obj.read_to_end(&mut buf).await.unwrap();
    buf
}

/// Waits until the node's consumer has delivered `delivered` messages and none waits for an ack.
async fn wait_drained(js: &jetstream::Context, node: Uuid, delivered: u64) {
    let start = Instant::now();
    loop {
        let mut c: jetstream::consumer::PullConsumer = js
            .get_stream(streams::ASSIGNMENTS)
            .await
            .unwrap()
            .get_consumer(&node::consumer_name(node))
            .await
            .unwrap();
        let info = c.info().await.unwrap();
        if info.delivered.stream_sequence >= delivered
            && info.num_ack_pending == 0
            && info.num_pending == 0
        {
            return;
        }
        assert!(start.elapsed() < PATIENCE, "consumer not drained: {info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn texts(n: usize, seed: &str) -> Vec<String> {
    executor::challenge::inputs(seed, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_an_embed_assignment_like_local_mode_and_never_twice() {
    let fx = fixture("embed").await;
    let (client, node_id) = (fx.client.clone(), fx.node);
    let js = jetstream::new(client.clone());
    let dir = common::tmp_dir("agent-embed");

    // A job file of 60 items; the assignment covers items 5..55.
    let lines: Vec<String> = texts(60, "agent-embed")
        .into_iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"custom_id": format!("q{i}"), "input": t}).to_string())
        .collect();
    let mut file = String::new();
    for (i, l) in lines.iter().enumerate() {
        let _ = i;
        file.push_str(l);
        file.push('\n');
    }
    let a = fx.seed(&file, 5, 50).await;
    let job = a.job_id.unwrap();

    // Local mode on the same 50 lines as the node is served them (named by position,
    // `catalog::served_id`): the expected output.
    let local_in = dir.join("in.jsonl");
    let served: Vec<String> = texts(60, "agent-embed")[5..55]
        .iter()
        .enumerate()
        .map(|(p, t)| serde_json::json!({"custom_id": gridbook_wire::catalog::served_id(p as u64), "input": t}).to_string())
        .collect();
    std::fs::write(&local_in, served.join("\n") + "\n").unwrap();
    let local_out = dir.join("out.jsonl");
    {
        let w = workloads();
        let mut embed = w.get(executor::registry::WorkloadKind::Embed).unwrap().lock().unwrap();
        let r = executor::local::run_file(&mut *embed, &local_in, &local_out, executor::local::OutputFormat::Gridbook, &|_| {}, &|_| {})
            .unwrap();
        assert_eq!(r.succeeded, 50);
    }
    let expected = std::fs::read(&local_out).unwrap();

    let state_file = dir.join("state.json");
    let mut results = fx.results().await;
    let agent = fx.agent(fx.settings(state_file.clone()));

    publish_assignment(&js, &a).await;
    let r = next_result(&mut results).await;
    assert_eq!((r.assignment_id, r.job_id), (a.assignment_id, job));
    let Outcome::Completed {
        output_sha256,
        merkle_root,
        items_ok,
        items_failed,
    } = r.outcome.clone()
    else {
        panic!("expected completed, got {:?}", r.outcome)
    };
    assert_eq!((items_ok, items_failed), (50, 0));
    assert_eq!(r.manifest["workload"], "EMBED-MINILM-L6");
    let output = read_object(&js, &output_sha256).await;
    assert_eq!(hex::encode(commitment::sha256(&output)), output_sha256);
    assert_eq!(
        output, expected,
        "agent output equals local mode's for the same lines"
    );

    // Recompute the Merkle root from the output's content.
    let leaves: Vec<(String, commitment::Hash)> = output
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_slice(l).unwrap();
            let emb: Vec<f32> = v["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
            let h = commitment::sha256(&commitment::embedding_bytes(&emb));
            assert_eq!(v["sha256"], hex::encode(h));
            (v["custom_id"].as_str().unwrap().to_owned(), h)
        })
        .collect();
    assert_eq!(leaves.len(), 50);
    assert_eq!(leaves[0].0, "i0", "item 5 of the job is the assignment's first served line");
    assert_eq!(Commitment::build(&leaves).merkle_root, merkle_root);

    // The result is in GRIDBOOK_RESULTS under its Nats-Msg-Id.
    let stored = js
        .get_stream(streams::RESULTS)
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&subjects::node_result(&node_id.to_string()))
        .await
        .unwrap();
    let msg_id = stored.headers.get("Nats-Msg-Id").map(|v| v.to_string());
    assert_eq!(
        msg_id.as_deref(),
        Some(format!("result.{}", a.assignment_id).as_str())
    );

    // The API stored the output under that name for this assignment, and the node uploaded it.
    let upload: Option<String> = {
        use gridbook_db::diesel::{QueryDsl, RunQueryDsl};
        use gridbook_db::schema::job_assignments;
        job_assignments::table
            .find(a.assignment_id)
            .select(job_assignments::upload_sha256)
            .first(&mut fx.stack.app.db.conn())
            .unwrap()
    };
    assert_eq!(upload.as_deref(), Some(output_sha256.as_str()));

    // An assignment the market does not know (no grant for it): the node reports Failed.
    let mut missing = a.clone();
    missing.assignment_id = Uuid::new_v4();
    publish_assignment(&js, &missing).await;
    let r2 = next_result(&mut results).await;
    assert_eq!(r2.assignment_id, missing.assignment_id);
    assert!(
        matches!(&r2.outcome, Outcome::Failed { reason } if reason.contains("404")),
        "{:?}",
        r2.outcome
    );
    // Undecodable assignments are acked without effect.
    js.publish(
        subjects::node_assign(&node_id.to_string()),
        "not json".into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    wait_drained(&js, node_id, 3).await;
    agent.stop().await;

    // Restart with the same state file and redeliver the first assignment: not run again.
    let agent = fx.agent(fx.settings(state_file.clone()));
    publish_assignment(&js, &a).await;
    wait_drained(&js, node_id, 4).await;
    client.flush().await.unwrap();
    agent.stop().await;
    let again = tokio::time::timeout(Duration::from_millis(500), results.next()).await;
    assert!(
        again.is_err(),
        "a redelivered, finished assignment published a second result"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_file).unwrap()).unwrap();
    assert!(
        state["done"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(a.assignment_id))
    );
    drop(fx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_long_run_and_publishes_nothing() {
    let fx = fixture("cancel").await;
    let (client, node_id) = (fx.client.clone(), fx.node);
    let js = jetstream::new(client.clone());
    let dir = common::tmp_dir("agent-cancel");
    // Enough work for many minutes on a CPU.
    let n = 20_000;
    let file: String = texts(n, "agent-cancel")
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"custom_id": format!("c{i}"), "input": t}).to_string() + "\n"
        })
        .collect();
    let a = fx.seed(&file, 0, n as u64).await;
    let mut results = fx.results().await;
    let mut beats = client
        .subscribe(subjects::node_heartbeat(&node_id.to_string()))
        .await
        .unwrap();
    let agent = fx.agent(fx.settings(dir.join("state.json")));
    publish_assignment(&js, &a).await;

    // Wait until a heartbeat shows it running, then cancel it.
    let start = Instant::now();
    loop {
        let m = tokio::time::timeout(PATIENCE, beats.next())
            .await
            .unwrap()
            .unwrap();
        let hb: HeartbeatMsg = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(hb.device, "cpu");
        if hb.running.contains(&a.assignment_id) {
            break;
        }
        assert!(start.elapsed() < PATIENCE);
    }
    let cancelled_at = Instant::now();
    client
        .publish(
            subjects::node_cancel(&node_id.to_string()),
            serde_json::to_vec(&CancelMsg {
                assignment_ids: vec![a.assignment_id],
                reason: "job cancelled".into(),
            })
            .unwrap()
            .into(),
        )
        .await
        .unwrap();
    // It stops (a heartbeat without it) and the assignment is acked.
    loop {
        let m = tokio::time::timeout(PATIENCE, beats.next())
            .await
            .unwrap()
            .unwrap();
        let hb: HeartbeatMsg = serde_json::from_slice(&m.payload).unwrap();
        if hb.running.is_empty() {
            break;
        }
    }
    wait_drained(&js, node_id, 1).await;
    eprintln!(
        "cancelled run stopped within {} ms (heartbeats every 1 s)",
        cancelled_at.elapsed().as_millis()
    );
    agent.stop().await;
    client.flush().await.unwrap();
    let r = tokio::time::timeout(Duration::from_millis(500), results.next()).await;
    assert!(
        r.is_err(),
        "a cancelled assignment published a result: {r:?}"
    );
    let js_results = js
        .get_stream(streams::RESULTS)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(js_results, 0);
    drop(fx);
}

async fn wait_running(beats: &mut async_nats::Subscriber, id: Uuid) {
    loop {
        let m = tokio::time::timeout(PATIENCE, beats.next())
            .await
            .unwrap()
            .unwrap();
        let hb: HeartbeatMsg = serde_json::from_slice(&m.payload).unwrap();
        if hb.running.contains(&id) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_a_running_assignment_and_leaves_it_for_redelivery() {
    let fx = fixture("shutdown").await;
    let (client, node_id) = (fx.client.clone(), fx.node);
    let js = jetstream::new(client.clone());
    let dir = common::tmp_dir("agent-shutdown");
    let n = 20_000;
    let file: String = texts(n, "agent-shutdown")
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"custom_id": format!("s{i}"), "input": t}).to_string() + "\n"
        })
        .collect();
    let a = fx.seed(&file, 0, n as u64).await;
    let mut results = fx.results().await;
    let mut beats = client
        .subscribe(subjects::node_heartbeat(&node_id.to_string()))
        .await
        .unwrap();
    let mut cfg = fx.settings(dir.join("state.json"));
    cfg.grace_secs = 0;
    let agent = fx.agent(cfg.clone());
    publish_assignment(&js, &a).await;
    wait_running(&mut beats, a.assignment_id).await;
    agent.stop().await; // grace 0: stopped and NAK'ed

    // Not acked, not done: after a restart the same assignment runs again.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    assert!(
        !state["done"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(a.assignment_id))
    );
    let agent = fx.agent(cfg);
    wait_running(&mut beats, a.assignment_id).await;
    client
        .publish(
            subjects::node_cancel(&node_id.to_string()),
            serde_json::to_vec(&CancelMsg {
                assignment_ids: vec![a.assignment_id],
                reason: "test over".into(),
            })
            .unwrap()
            .into(),
        )
        .await
        .unwrap();
    wait_drained(&js, node_id, 1).await;
    agent.stop().await;
    client.flush().await.unwrap();
    let r = tokio::time::timeout(Duration::from_millis(500), results.next()).await;
    assert!(
        r.is_err(),
        "nothing is reported for a stopped or cancelled assignment"
    );
    drop(fx);
}

#[test]
fn run_control_terminates_a_model_call_in_progress() {
    use executor::embed::Batching;
    use executor::runtime::RunControl;
    let e = crate::embed::embedder();
    // One model call over 512 long texts (many seconds on a CPU).
    let long: Vec<String> = texts(512, "terminate")
        .into_iter()
        .map(|t| format!("{t} {t} {t} {t} {t} {t}"))
        .collect();
    let refs: Vec<&str> = long.iter().map(String::as_str).collect();
    let enc = e.tokenize(&refs).unwrap();
    let one_call = Batching::Fixed {
        size: enc.len(),
        sorted: true,
    };

    // Cancelled before it starts: no model call at all.
    let c = RunControl::new().unwrap();
    c.cancel();
    let r = e.embed_encoded_controlled(&enc, one_call, &|_| {}, Some(&c));
    assert!(
        matches!(r, Err(executor::ExecutorError::Cancelled)),
        "{r:?}"
    );

    // Cancelled from another thread while the one call runs: ONNX Runtime's terminate flag.
    let c = RunControl::new().unwrap();
    let c2 = c.clone();
    let started = Instant::now();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c2.cancel();
    });
    let r = e.embed_encoded_controlled(&enc, one_call, &|_| {}, Some(&c));
    canceller.join().unwrap();
    assert!(
        matches!(r, Err(executor::ExecutorError::Cancelled)),
        "{r:?}"
    );
    eprintln!(
        "terminated one model call after {} ms",
        started.elapsed().as_millis()
    );

    // The shared session still works with a fresh control.
    let c = RunControl::new().unwrap();
    let ok = e
        .embed_encoded_controlled(&enc[..2], Batching::default(), &|_| {}, Some(&c))
        .unwrap();
    assert_eq!(ok.len(), 2);
}

/// The server closes a node's connection when its NATS grant expires (here every 2 s); the agent
/// reconnects through the auth callout with its credential and keeps taking work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_working_across_the_expiry_of_its_nats_grant() {
    let fx = fixture_with(
        "expiry",
        StackOptions {
            settlement: false,
            api: Some(|s| s.nats_auth.jwt_ttl_secs = 2),
            ..StackOptions::default()
        },
    )
    .await;
    let js = jetstream::new(fx.client.clone());
    let dir = common::tmp_dir("agent-expiry");
    let mut results = fx.results().await;
    // The server announces every connection in the system account.
    let sys = fx.stack.nats.access().connect(gridbook_testkit::Service::Sys).await;
    let mut connects = sys.subscribe("$SYS.ACCOUNT.GRIDBOOK.CONNECT").await.unwrap();
    sys.flush().await.unwrap();
    let agent = fx.agent(fx.settings(dir.join("state.json")));
    let file: String = texts(3, "agent-expiry")
        .into_iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"custom_id": format!("e{i}"), "input": t}).to_string() + "\n")
        .collect();
    // Wait until the node has connected three times: the first grant and two after expiries.
    let node = fx.node.to_string();
    let mut seen = 0;
    while seen < 3 {
        let m = tokio::time::timeout(PATIENCE, connects.next())
            .await
            .expect("the node reconnects after its grant expires")
            .unwrap();
        if String::from_utf8_lossy(&m.payload).contains(&node) {
            seen += 1;
        }
    }
    let a = fx.seed(&file, 0, 3).await;
    publish_assignment(&js, &a).await;
    let r = next_result(&mut results).await;
    assert_eq!(r.assignment_id, a.assignment_id);
    assert!(matches!(r.outcome, Outcome::Completed { items_ok: 3, .. }), "{:?}", r.outcome);
    agent.stop().await;
    drop(fx);
}

/// Deleted by its owner while running: the server closes the connection, the API refuses a new
/// credential (409), and the agent stops with an error that says so instead of reconnecting
/// forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_node_stops_with_a_clear_error() {
    let fx = fixture("deleted").await;
    let dir = common::tmp_dir("agent-deleted");
    let mut beats = fx.client.subscribe(subjects::node_heartbeat(&fx.node.to_string())).await.unwrap();
    let agent = fx.agent(fx.settings(dir.join("state.json")));
    tokio::time::timeout(PATIENCE, beats.next()).await.expect("the node runs").unwrap();
    let r = fx
        .stack
        .app
        .http
        .delete(fx.stack.app.url(&format!("/v1/nodes/{}", fx.node)))
        .header("Authorization", fx.provider.bearer())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ended = tokio::time::timeout(PATIENCE, agent.0.join()).await.expect("the agent stops by itself");
    let e = ended.expect_err("a deleted node is an error");
    assert!(e.to_string().contains("may not connect any more"), "{e}");
    drop(fx);
}

