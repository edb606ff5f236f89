//! The sampled re-run on another provider's node (issue 12), end to end on real parts: two
//! providers' executor agents (real ONNX Runtime, MiniLM), the engine, the worker and the API.
//!
//! Both agents run on this one machine, so their nodes report one hardware fingerprint and the
//! market links their owners into one identity cluster: the first job's sample is re-run by the
//! market itself ("no eligible node"). The test then deletes the second provider's fingerprint
//! mark, standing in for a second machine: the next job's sample goes to that node as a
//! verification task, it re-runs only the sampled lines, agrees, is paid from the protocol fee,
//! and the record says who re-ran it.

use std::time::{Duration, Instant};

use diesel::RunQueryDsl;
use executor::agent::pricing::Policy;
use gridbook_testkit::{Agent, Stack, TestUser, load_workloads};
use serde_json::{Value, json};

use crate::journey::{json_of, submit_job, wait_for_job};

const EMBED: &str = "EMBED-MINILM-L6";

/// A provider with its own agent (own state folder and node name) and a fixed ask on `EMBED`'s
/// book; returns its node id once the ask is on the book.
async fn provider(stack: &Stack, name: &str, price: u64) -> (TestUser, Agent, String) {
    let app = &stack.app;
    let user = app.signup("provider").await;
    let mut settings = stack.agent_settings(EMBED, Policy::Fixed { price, qty: 10 });
    let dir = stack.dir().join(format!("agent-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    settings.state_file = dir.join("state.json");
    settings.name = format!("crosscheck-{name}");
    let agent = Agent::start(settings, Some(user.key.clone()), load_workloads(&[EMBED]));
    let started = Instant::now();
    loop {
        let asks = json_of(app.get_as(&user, "/v1/asks").await).await;
        let open = asks["data"].as_array().or(asks.as_array()).and_then(|a| {
            a.iter().find(|x| x["status"] == "open" && x["price"] == price).cloned()
        });
        if let Some(ask) = open {
            let node = ask["node_id"].as_str().expect("the ask names its node").to_owned();
            return (user, agent, node);
        }
        assert!(!agent.is_finished(), "agent {name} stopped: {:?}", agent.join().await);
        assert!(started.elapsed() < Duration::from_secs(120), "no open ask for {name}: {asks}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sentences(job: usize) -> String {
    (0..8).map(|i| json!({"custom_id": format!("j{job}-s{i}"), "input": format!("job {job} sentence {i} about a lighthouse")}).to_string() + "\n").collect()
}

async fn only_verification(stack: &Stack, studio: &TestUser, job_id: &str) -> Value {
    let v = json_of(stack.app.get_as(studio, &format!("/v1/jobs/{job_id}/verifications")).await).await;
    let data = v["data"].as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(data.len(), 1, "one assignment: {v}");
    data[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crosscheck_a_sample_is_rerun_by_another_providers_node_and_it_is_paid() {
    let stack = Stack::start("crosscheck").await;
    let app = &stack.app;
    // A asks 100 per unit (1,000 sentences), B 150: the studio's limit of 120 fills only A, and
    // B's ask stays open (a verifier must be serving the market).
    let (_a, _agent_a, node_a) = provider(&stack, "a", 100).await;
    let (b, _agent_b, node_b) = provider(&stack, "b", 150).await;
    // Off probation, as nodes with a record of verified work are.
    {
        let mut c = app.db.conn();
        diesel::sql_query(format!("UPDATE nodes SET status = 'active' WHERE id IN ('{node_a}', '{node_b}')"))
            .execute(&mut c)
            .unwrap();
    }
    let balance_b = app.balance(&b).await["available"].as_i64().unwrap();

    // 1. One machine, one cluster: B may not check A; the market re-runs the sample.
    let studio = app.signup("studio").await;
    app.credit(&studio, 10_000).await;
    let job1 = submit_job(app, &studio, EMBED, &sentences(1), 120, 8).await;
    let (job, seen) = wait_for_job(app, &studio, &job1).await;
    assert_eq!(job["status"], "completed", "statuses {seen:?}: {job}");
    let v1 = only_verification(&stack, &studio, &job1).await;
    assert_eq!(v1["node_id"], node_a.as_str(), "{v1}");
    assert_eq!(v1["outcome"], "passed", "{v1}");
    assert_eq!(v1["rerun_by"], "market", "{v1}");
    assert!(v1["rerun_note"].as_str().unwrap_or_default().contains("no eligible node"), "{v1}");
    assert!(v1["verifier_node_id"].is_null(), "{v1}");

    // 2. B's owner on another machine: its sample goes to B.
    {
        let mut c = app.db.conn();
        let n = diesel::sql_query(format!("DELETE FROM identity_marks WHERE user_id = '{}' AND kind = 'fingerprint'", b.id))
            .execute(&mut c)
            .unwrap();
        assert_eq!(n, 1, "B's node reported one fingerprint");
    }
    let studio2 = app.signup("studio").await;
    app.credit(&studio2, 10_000).await;
    let job2 = submit_job(app, &studio2, EMBED, &sentences(2), 120, 8).await;
    let (job, seen) = wait_for_job(app, &studio2, &job2).await;
    assert_eq!(job["status"], "completed", "statuses {seen:?}: {job}");
    let v2 = only_verification(&stack, &studio2, &job2).await;
    assert_eq!(v2["node_id"], node_a.as_str(), "{v2}");
    assert_eq!(v2["outcome"], "passed", "{v2}");
    assert_eq!(v2["rerun_by"], "node", "{v2}");
    assert_eq!(v2["verifier_node_id"], node_b.as_str(), "{v2}");
    assert!(v2["rerun_note"].is_null(), "{v2}");
    assert_eq!(v2["sampled_items"].as_array().map(Vec::len), Some(4), "{v2}");
    assert!(v2["items"].as_array().unwrap().iter().all(|f| f["ok"] == true && f["cosine"].as_f64().unwrap() >= 0.999), "{v2}");
    // The studio gets every line, as with a market re-run.
    assert_eq!(job["request_counts"]["completed"], 8, "{job}");
    assert!(job["output_file"].is_string(), "{job}");

    // B sees its task: agreed, paid ceil(100 × 4 / 1000) = 1 from the protocol fee.
    let tasks = json_of(app.get_as(&b, "/v1/verification-tasks").await).await;
    let tasks = tasks.as_array().unwrap_or_else(|| panic!("{tasks}"));
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let t = &tasks[0];
    assert_eq!(t["id"], v2["verification_task_id"], "{t}");
    assert_eq!((t["status"].as_str(), t["outcome"].as_str()), (Some("completed"), Some("agreed")), "{t}");
    assert_eq!((t["items"].as_u64(), t["pay"].as_i64(), t["paid"].as_i64()), (Some(4), Some(1), Some(1)), "{t}");
    assert_eq!(t["market_rerun"], false, "{t}");
    assert_eq!(app.balance(&b).await["available"].as_i64(), Some(balance_b + 1), "B was paid 1");
    let e = json_of(app.get_as(&b, "/v1/earnings").await).await;
    assert_eq!((e["verification_tasks"].as_i64(), e["verification_pay"].as_i64(), e["earned"].as_i64()), (Some(1), Some(1), Some(0)), "{e}");
    // Tasks are a provider's page: a studio is refused; another provider sees none of B's.
    assert_eq!(app.get_as(&studio2, "/v1/verification-tasks").await.status(), 403);
    let stranger = app.signup("provider").await;
    assert_eq!(json_of(app.get_as(&stranger, "/v1/verification-tasks").await).await, json!([]));
    {
        let mut c = app.db.conn();
        diesel::sql_query("SELECT ledger_check_invariants()").execute(&mut c).expect("ledger invariants");
    }
}

/// The attack from the verifier's side: a stranger's node that is sent a sample and answers
/// with made-up vectors. It sees only the 4 sampled lines (and cannot open the first node's
/// assignment); the market's own re-run decides the disagreement: the first node is verified
/// and paid, the liar is not paid, its score drops to 0 and it is suspended.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crosscheck_a_verifier_that_lies_is_caught_by_the_market_unpaid_and_suspended() {
    use executor::commitment::{self, Commitment};
    use futures::StreamExt;
    use gridbook_wire::node::{AssignmentMsg, Outcome, ResultMsg};
    use gridbook_wire::{catalog, subjects};

    let stack = Stack::start("crosscheck-liar").await;
    let app = &stack.app;
    let (a, _agent_a, node_a) = provider(&stack, "a", 100).await;
    // The liar: a node that passed the challenge over HTTP, with an ask above the studio's
    // limit, and no agent: the test plays it.
    let liar = app.signup("provider").await;
    let node_b = crate::provider::passed_node(app, &liar).await;
    let r = crate::provider::post_ask(app, &liar, &node_b, 150, 5).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let mut assigns = stack.nats.client.subscribe(subjects::node_assign(&node_b)).await.unwrap();
    {
        // Off probation, and online (the test stands in for the liar's heartbeats).
        let mut c = app.db.conn();
        diesel::sql_query(format!(
            "UPDATE nodes SET status = 'active', last_heartbeat_at = now() + interval '10 minutes' WHERE id IN ('{node_a}', '{node_b}')"
        ))
        .execute(&mut c)
        .unwrap();
    }
    let studio = app.signup("studio").await;
    app.credit(&studio, 10_000).await;
    let job_id = submit_job(app, &studio, EMBED, &sentences(3), 120, 8).await;

    // The liar's side: its task arrives like an assignment, for no units.
    let msg = tokio::time::timeout(Duration::from_secs(120), assigns.next()).await.expect("a verification task").unwrap();
    let t: AssignmentMsg = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(t.qty, 0, "a task fills no ask: {t:?}");
    let work = t.work.clone().expect("a task carries its work");
    assert_eq!(work.item_count, 4, "{work:?}");
    let cred = json_of(app.post_as(&liar, &format!("/v1/nodes/{node_b}/credentials"), &json!({})).await).await;
    let token = cred["token"].as_str().expect("a credential").to_owned();
    let grant = json_of(app.http.post(app.url(&format!("/v1/assignments/{}/grant", t.assignment_id))).bearer_auth(&token).send().await.unwrap()).await;
    assert_eq!(grant["items"], 4, "{grant}");
    let gtoken = grant["token"].as_str().expect("a grant").to_owned();
    let input = app.http.get(app.url(grant["input_url"].as_str().unwrap())).bearer_auth(&gtoken).send().await.unwrap().bytes().await.unwrap();
    let items = catalog::select_items(&input, 0, 4).unwrap();
    assert_eq!(catalog::items(&input).count(), 4, "only the sampled lines: {}", String::from_utf8_lossy(&input));
    // The first node's assignment is not the liar's to open.
    let first: Vec<Value> = json_of(app.get_as(&a, "/v1/assignments").await).await["data"].as_array().unwrap().clone();
    let first_id = first[0]["id"].as_str().unwrap().to_owned();
    let r = app.http.post(app.url(&format!("/v1/assignments/{first_id}/grant"))).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());
    // Nor is the task anyone else's: another provider's node is refused, a studio's key is no
    // node credential, and anonymous callers get 401; the grant's token opens only this task.
    let other = app.signup("provider").await;
    let other_node = crate::provider::passed_node(app, &other).await;
    let other_cred = json_of(app.post_as(&other, &format!("/v1/nodes/{other_node}/credentials"), &json!({})).await).await;
    let task_grant = format!("/v1/assignments/{}/grant", t.assignment_id);
    let r = app.http.post(app.url(&task_grant)).bearer_auth(other_cred["token"].as_str().unwrap()).send().await.unwrap();
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());
    let r = app.http.post(app.url(&task_grant)).header("Authorization", studio.bearer()).send().await.unwrap();
    assert_eq!(r.status(), 401, "{}", r.text().await.unwrap());
    assert_eq!(app.http.post(app.url(&task_grant)).send().await.unwrap().status(), 401);
    assert_eq!(app.http.get(app.url(grant["input_url"].as_str().unwrap())).send().await.unwrap().status(), 401);
    let first_input = format!("/v1/assignments/{first_id}/input");
    assert_eq!(app.http.get(app.url(&first_input)).bearer_auth(&gtoken).send().await.unwrap().status(), 401);

    let mut fake = vec![0.0f32; 384];
    fake[0] = 1.0;
    let (mut lines, mut leaves) = (String::new(), Vec::new());
    let mut given = Vec::new();
    for line in items {
        let v: Value = serde_json::from_slice(line).unwrap();
        let id = v["custom_id"].as_str().unwrap().to_owned();
        let h = commitment::sha256(&commitment::embedding_bytes(&fake));
        lines.push_str(&json!({"custom_id": id, "sha256": hex::encode(h), "embedding": fake}).to_string());
        lines.push('\n');
        // Served by position (`i0`…), in the canonical shape: the text is what identifies it.
        given.push(v["input"].as_str().unwrap().to_owned());
        leaves.push((id, h));
    }
    let output_sha256 = hex::encode(commitment::sha256(lines.as_bytes()));
    let up = json_of(app.http.put(app.url(grant["output_url"].as_str().unwrap())).bearer_auth(&gtoken).body(lines).send().await.unwrap()).await;
    assert_eq!(up["sha256"], output_sha256.as_str(), "{up}");
    let result = ResultMsg {
        assignment_id: t.assignment_id,
        job_id: t.job_id.unwrap(),
        outcome: Outcome::Completed { output_sha256, merkle_root: Commitment::build(&leaves).merkle_root, items_ok: 4, items_failed: 0 },
        manifest: json!({"note": "a liar's manifest"}),
        elapsed_ms: 1,
    };
    crate::journey::publish_result_as_node(&stack, token, &node_b, &result).await;

    // The market decided: the first node is verified and paid; the job completes.
    let (job, seen) = wait_for_job(app, &studio, &job_id).await;
    assert_eq!(job["status"], "completed", "statuses {seen:?}: {job}");
    assert_eq!(job["request_counts"]["completed"], 8, "{job}");
    let v = only_verification(&stack, &studio, &job_id).await;
    assert_eq!((v["outcome"].as_str(), v["rerun_by"].as_str()), (Some("passed"), Some("market")), "{v}");
    assert_eq!(v["verifier_node_id"], node_b.as_str(), "{v}");
    assert!(v["rerun_note"].as_str().unwrap_or_default().contains("proves the verifying node wrong"), "{v}");
    let sampled: Vec<String> = serde_json::from_value(v["sampled_items"].clone()).unwrap();
    // The studio's ids `j<job>-s<i>` of the sentences `job <job> sentence <i> about a lighthouse`.
    let texts: Vec<String> = sampled
        .iter()
        .map(|id| {
            let (j, i) = id.trim_start_matches('j').split_once("-s").unwrap();
            format!("job {j} sentence {i} about a lighthouse")
        })
        .collect();
    assert_eq!(texts, given, "the task held exactly the sampled items, in order");
    assert!(app.balance(&a).await["available"].as_i64().unwrap() > 0, "the honest first node is paid");
    // The liar: unpaid, score 0, suspended, its ask gone.
    let tasks = json_of(app.get_as(&liar, "/v1/verification-tasks").await).await;
    let task = &tasks.as_array().unwrap()[0];
    assert_eq!((task["outcome"].as_str(), task["verifier_correct"].as_bool(), task["paid"].as_i64()), (Some("disagreed"), Some(false), Some(0)), "{task}");
    assert_eq!(task["market_rerun"], true, "{task}");
    assert_eq!(app.balance(&liar).await["available"].as_i64(), Some(0), "the liar is not paid");
    let e = json_of(app.get_as(&liar, "/v1/earnings").await).await;
    assert_eq!((e["verification_tasks"].as_i64(), e["verification_pay"].as_i64()), (Some(0), Some(0)), "{e}");
    let n = json_of(app.get_as(&liar, &format!("/v1/nodes/{node_b}")).await).await;
    assert_eq!((n["status"].as_str(), n["reputation"].as_i64()), (Some("suspended"), Some(0)), "{n}");
    let started = Instant::now();
    loop {
        let book = json_of(app.http.get(app.url(&format!("/v1/markets/{EMBED}/book"))).send().await.unwrap()).await;
        if book["asks"].as_array().unwrap().iter().all(|l| l["price"] != 150) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the liar's ask stays on the book: {book}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    {
        let mut c = app.db.conn();
        diesel::sql_query("SELECT ledger_check_invariants()").execute(&mut c).expect("ledger invariants");
    }
}
