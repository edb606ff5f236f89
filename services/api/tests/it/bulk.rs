//! A bulk job by the book (issue 15, "End-to-end journeys"): 10,000 inputs on
//! `EMBED-MINILM-L6` (1,000 items a unit, so 10 units) against three providers, each with its own
//! executor agent (real ONNX Runtime, the real MiniLM model) and a fixed ask at its own price.
//! The job's bid sweeps the book, so the units split over the three nodes; each runs its
//! assignments, the worker verifies and settles them, and the job completes.
//!
//! Checked: every `custom_id` exactly once in the output; the embeddings agree (cosine ≥ 0.999)
//! with a reference run of this process's own embedder (the executor library's path, as the
//! executor's tests run it) over an even sample of the inputs; at least three distinct nodes
//! completed assignments; the ledger: the studio paid exactly Σ price × units of the completed
//! assignments plus the fee, each provider holds exactly its own completed assignments'
//! price × units, the fee account the fee, no hold is left and nothing else moved; the ledger's
//! invariant audit is clean. The time from submission to completion is printed with what it
//! was spent on (first assignment, each assignment's run and verification, the reference run).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use executor::agent::config::AgentSettings;
use executor::agent::pricing::Policy;
use gridbook_db::diesel::{self, RunQueryDsl};
use gridbook_testkit::{Agent, Stack, TestUser};
use serde_json::{Value, json};

use crate::journey::{json_of, submit_job, wait_for_job};

const MARKET: &str = "EMBED-MINILM-L6";
const LINES: usize = 10_000;
/// The reference run embeds every `REFERENCE_EVERY`-th input (an even sample over all units).
const REFERENCE_EVERY: usize = 20;
const CREDIT: i64 = 1_000_000;
const LIMIT: u64 = 100;
/// (price, qty) of each provider's fixed ask: 4 + 4 + 4 ≥ 10 units, so the bid takes from all.
const ASKS: [(u64, u64); 3] = [(40, 4), (45, 4), (50, 4)];

fn corpus(n: usize) -> Vec<(String, String)> {
    let subjects = ["The weather", "A small cat", "The stadium", "Our new GPU", "This recipe", "The river", "My neighbour", "The train"];
    let verbs = ["looks", "feels", "sounds", "seems", "became", "stays", "was", "is"];
    let ends = [
        "lovely today",
        "far too loud for a quiet Sunday morning",
        "oddly quiet",
        "faster than before, or so the benchmark says",
        "a bit salty",
        "cold in winter and warm in summer",
        "late again",
        "exactly as the manual described",
    ];
    (0..n)
        .map(|i| {
            let text = format!("{} {} {} (note {i})", subjects[i % 8], verbs[(i / 8) % 8], ends[(i / 64) % 8]);
            (format!("bulk-{i:05}"), text)
        })
        .collect()
}

/// An agent's settings for one provider: its own state folder and node name.
fn settings_for(stack: &Stack, index: usize, price: u64, qty: u64) -> AgentSettings {
    let dir = stack.dir().join(format!("agent-bulk-{index}"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let mut s = stack.agent_settings(MARKET, Policy::Fixed { price, qty });
    s.state_file = dir.join("state.json");
    s.name = format!("bulk-node-{index}");
    s
}

/// Waits until the book shows an ask at `price` (the node registered, passed its challenge and
/// posted its ask).
async fn wait_for_ask(stack: &Stack, agent: &Agent, price: u64) {
    let app = &stack.app;
    let started = Instant::now();
    loop {
        let book = json_of(app.http.get(app.url(&format!("/v1/markets/{MARKET}/book"))).send().await.unwrap()).await;
        if book["asks"].as_array().is_some_and(|a| a.iter().any(|x| x["price"] == price)) {
            return;
        }
        assert!(!agent.is_finished(), "the agent asking {price} stopped");
        assert!(started.elapsed() < Duration::from_secs(120), "no ask at {price} on the book: {book}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(diesel::QueryableByName, Debug)]
struct Asg {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: uuid::Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    node_id: uuid::Uuid,
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    units: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    price: i64,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    item_count: i32,
    /// Seconds from the job's creation to this assignment's creation.
    #[diesel(sql_type = diesel::sql_types::Double)]
    after_s: f64,
    /// Seconds from the assignment's creation to its last update (its result settled).
    #[diesel(sql_type = diesel::sql_types::Double)]
    took_s: f64,
    /// Seconds from the assignment's creation to its verification record.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
    verified_s: Option<f64>,
    /// The verification's failed check and detail (why it failed), when it failed.
    /// (Read through `Debug`: the assertion messages print every assignment.)
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    #[allow(dead_code, reason = "printed through Debug in the assertion messages")]
    failed_check: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    #[allow(dead_code, reason = "printed through Debug in the assertion messages")]
    detail: Option<String>,
}

#[derive(diesel::QueryableByName)]
struct JobTimes {
    #[diesel(sql_type = diesel::sql_types::Double)]
    total_s: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ten_thousand_line_embedding_job_splits_over_three_providers_by_the_book_and_settles_exactly() {
    let stack = Stack::start("bulk").await;
    let app = &stack.app;

    // Three providers, one agent each (sharing this process's loaded models), asking 40/45/50.
    let workloads = gridbook_testkit::load_workloads(&[MARKET]);
    let mut providers: Vec<(TestUser, Agent, u64)> = Vec::new();
    for (i, (price, qty)) in ASKS.iter().enumerate() {
        let provider = app.signup("provider").await;
        let agent = Agent::start(settings_for(&stack, i, *price, *qty), Some(provider.key.clone()), workloads.clone());
        providers.push((provider, agent, *price));
    }
    for (_, agent, price) in &providers {
        wait_for_ask(&stack, agent, *price).await;
    }
    // Each provider's node id.
    let mut node_of = Vec::new();
    for (provider, _, _) in &providers {
        let nodes = json_of(app.get_as(provider, "/v1/nodes").await).await;
        let nodes = nodes.get("data").unwrap_or(&nodes).clone();
        assert_eq!(nodes.as_array().map(Vec::len), Some(1), "{nodes}");
        assert_eq!(nodes[0]["challenge_status"], "passed", "{nodes}");
        node_of.push(nodes[0]["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap());
    }

    // The nodes' results as they publish them (for their own run times, `elapsed_ms`).
    let mut results = Vec::new();
    for node in &node_of {
        let sub = stack.nats.client.subscribe(gridbook_wire::subjects::node_result(&node.to_string())).await.unwrap();
        results.push(sub);
    }

    // The studio: funds, 10,000 lines, one job at up to LIMIT a unit.
    let studio = app.signup("studio").await;
    app.credit(&studio, CREDIT).await;
    let items = corpus(LINES);
    let text: String = items.iter().map(|(id, t)| json!({"custom_id": id, "input": t}).to_string() + "\n").collect();
    let submitted = Instant::now();
    let job_id = submit_job(app, &studio, MARKET, &text, LIMIT, LINES as u64).await;

    // The job runs on the three nodes, is verified and completes.
    let (job, seen) = wait_for_job(app, &studio, &job_id).await;
    let wall = submitted.elapsed();
    assert_eq!(job["status"], "completed", "statuses {seen:?}: {job}");
    assert_eq!(job["request_counts"]["completed"], LINES as u64, "{job}");
    assert_eq!(job["request_counts"]["failed"], 0, "{job}");

    // The reference run in this process (its own runtime and embedder), after the job so that
    // it does not share the CPU with the nodes.
    let sample: Vec<(String, String)> = items.iter().step_by(REFERENCE_EVERY).cloned().collect();
    let (reference, reference_took) = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let rt = executor::runtime::Runtime::new(executor::runtime::RuntimeConfig::default()).expect("ONNX Runtime (ORT_DYLIB_PATH)");
        let models = executor::models::ModelsDir::from_env().expect("GRIDBOOK_MODELS_DIR");
        let e = executor::embed::Embedder::load(&rt, &models, executor::embed::EmbedConfig::default()).expect("the MiniLM embedder");
        let texts: Vec<&str> = sample.iter().map(|(_, t)| t.as_str()).collect();
        let v = e.embed(&texts).expect("the reference run");
        let map: HashMap<String, Vec<f32>> = sample.iter().map(|(id, _)| id.clone()).zip(v).collect();
        (map, t.elapsed())
    })
    .await
    .unwrap();

    // The output: every custom_id exactly once, 384-dim unit vectors, the sample within cosine
    // 0.999 of the reference run.
    let out = app.get_as(&studio, &format!("/v1/jobs/{job_id}/output")).await;
    assert!(out.status().is_success(), "{}", out.status());
    let out = out.text().await.unwrap();
    let mut ids = HashSet::new();
    let mut compared = 0;
    let mut worst = 1.0f64;
    for line in out.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let id = v["custom_id"].as_str().unwrap_or_else(|| panic!("no custom_id: {line}")).to_owned();
        let e: Vec<f64> = v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(e.len(), 384, "{id}");
        let norm = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "{id}: norm {norm}");
        if let Some(r) = reference.get(&id) {
            let dot: f64 = e.iter().zip(r).map(|(a, b)| a * f64::from(*b)).sum();
            let rn = r.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
            let cos = dot / (norm * rn);
            assert!(cos >= 0.999, "{id}: cosine {cos} to the reference run");
            worst = worst.min(cos);
            compared += 1;
        }
        assert!(ids.insert(id.clone()), "{id} appears twice in the output");
    }
    let expected: HashSet<String> = items.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids.len(), LINES, "output lines");
    assert_eq!(ids, expected, "the output's custom_ids are not the input's");
    assert_eq!(compared, reference.len(), "every sampled custom_id was compared");

    // The assignments: at least three distinct nodes completed some; the time they took.
    let job_uuid: uuid::Uuid = job_id.parse().unwrap();
    let c = &mut app.db.conn();
    let asgs: Vec<Asg> = diesel::sql_query(
        "SELECT a.id, a.node_id, a.status, a.units, a.price, a.item_count,
                extract(epoch FROM a.created_at - j.created_at)::float8 AS after_s,
                extract(epoch FROM a.updated_at - a.created_at)::float8 AS took_s,
                extract(epoch FROM v.created_at - a.created_at)::float8 AS verified_s,
                v.failed_check, CASE WHEN v.outcome = 'passed' THEN NULL ELSE v.detail END AS detail
         FROM job_assignments a JOIN jobs j ON j.id = a.job_id
         LEFT JOIN assignment_verifications v ON v.assignment_id = a.id WHERE a.job_id = $1 ORDER BY a.created_at",
    )
    .bind::<diesel::sql_types::Uuid, _>(job_uuid)
    .load(c)
    .unwrap();
    let completed: Vec<&Asg> = asgs.iter().filter(|a| a.status == "completed").collect();
    let nodes: HashSet<uuid::Uuid> = completed.iter().map(|a| a.node_id).collect();
    assert!(nodes.len() >= 3, "completed assignments on {} node(s): {asgs:?}", nodes.len());
    assert_eq!(completed.iter().map(|a| a.units).sum::<i64>(), (LINES / 1_000) as i64, "{asgs:?}");
    assert_eq!(completed.iter().map(|a| i64::from(a.item_count)).sum::<i64>(), LINES as i64, "{asgs:?}");

    // The ledger. Each provider holds exactly its own completed assignments' price × units.
    let earned_by = |node: uuid::Uuid| completed.iter().filter(|a| a.node_id == node).map(|a| a.price * a.units).sum::<i64>();
    let earned: i64 = completed.iter().map(|a| a.price * a.units).sum();
    for ((provider, _, price), node) in providers.iter().zip(&node_of) {
        let b = app.balance(provider).await;
        assert_eq!(b["available"].as_i64(), Some(earned_by(*node)), "provider asking {price}: {b}; {asgs:?}");
        assert_eq!(b["held"].as_i64(), Some(0), "provider asking {price}: {b}");
    }
    let violations = gridbook_ledger::store::check_invariants(c).unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    let by_code = crate::chaos::credits_by_code(c);
    let posted = |code: &str| by_code.get(code).map_or(0, |v| v.0);
    assert!(by_code.values().all(|v| v.1 == 0), "holds left pending after the job: {by_code:?}");
    let moved: Vec<&String> = by_code.iter().filter(|(_, v)| v.0 != 0).map(|(k, _)| k).collect();
    assert!(
        moved.iter().all(|k| ["operator", "studio", "provider", "protocol_fee"].contains(&k.as_str())),
        "money moved on other accounts: {by_code:?}"
    );
    assert_eq!(posted("operator"), -CREDIT, "money entered other than by the deposit: {by_code:?}");
    assert_eq!(posted("provider"), earned, "providers' accounts ≠ Σ price × units: {by_code:?}");
    let fee = posted("protocol_fee");
    let s = app.balance(&studio).await;
    assert_eq!(s["held"].as_i64(), Some(0), "studio {s}");
    let spent = CREDIT - s["available"].as_i64().unwrap();
    assert_eq!(CREDIT - posted("studio"), spent, "the studio's ledger account ≠ its balance: {by_code:?}");
    assert_eq!(spent, earned + fee, "the studio paid other than price × units + fee: {by_code:?}");
    // The fee is the market's rate on each settled amount, rounded up (`ledger::settlement::fee`):
    // at least the rate on the whole, at most the rate on each completed assignment rounded up.
    let bps = job["fee_bps"].as_i64().unwrap();
    let up = |n: i64| (n * bps + 9_999) / 10_000;
    let most: i64 = completed.iter().map(|a| up(a.price * a.units)).sum();
    assert!(fee >= up(earned) && fee <= most, "fee {fee} not in [{}, {most}] at {bps} bps", up(earned));

    // The figures. A node's own run time (download, embed, upload) from its result message.
    let mut elapsed_ms: HashMap<uuid::Uuid, u64> = HashMap::new();
    for sub in &mut results {
        use futures::StreamExt;
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            let r: gridbook_wire::node::ResultMsg = serde_json::from_slice(&m.payload).unwrap();
            elapsed_ms.insert(r.assignment_id, r.elapsed_ms);
        }
    }
    let times: JobTimes = diesel::sql_query(
        "SELECT extract(epoch FROM coalesce(finished_at, updated_at) - created_at)::float8 AS total_s FROM jobs WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(job_uuid)
    .get_result(c)
    .unwrap();
    eprintln!(
        "bulk: {LINES} lines, {} units, completed {:.1} s after submission (upload + submit + poll; DB created→finished {:.1} s)",
        LINES / 1_000,
        wall.as_secs_f64(),
        times.total_s
    );
    if let Some(first) = asgs.first() {
        eprintln!("bulk: first assignment {:.2} s after the job was created", first.after_s);
    }
    for a in &asgs {
        let who = node_of.iter().position(|n| *n == a.node_id).map_or("?".to_owned(), |i| format!("ask {}", ASKS[i].0));
        let run_s = elapsed_ms.get(&a.id).map(|ms| *ms as f64 / 1_000.0);
        let fmt = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.2} s"));
        eprintln!(
            "bulk: assignment on node {who}: {} units ({} items) at {} — {}; created +{:.2} s; node run {} ({} items/s); verified after {} (so verification ≈ {}); settled after {:.2} s",
            a.units,
            a.item_count,
            a.price,
            a.status,
            a.after_s,
            fmt(run_s),
            run_s.map_or("?".to_owned(), |r| format!("{:.0}", f64::from(a.item_count) / r.max(1e-3))),
            fmt(a.verified_s),
            fmt(a.verified_s.zip(run_s).map(|(v, r)| v - r)),
            a.took_s,
        );
    }
    for ((_, _, price), node) in providers.iter().zip(&node_of) {
        eprintln!("bulk: provider asking {price} earned {}", earned_by(*node));
    }
    eprintln!(
        "bulk: studio paid {spent} = providers {earned} + fee {fee} ({bps} bps); reference run of {} lines {:.1} s, worst cosine {worst:.6}",
        reference.len(),
        reference_took.as_secs_f64()
    );

    for (_, agent, _) in providers {
        let _ = agent.stop(Duration::from_secs(60)).await;
    }
}
