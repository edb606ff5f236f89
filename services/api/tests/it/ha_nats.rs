//! The market on a three-node NATS cluster (issue 14): every part a real process (API, engine,
//! settlement worker, executor agent, a private PostgreSQL) connected with the three servers'
//! URLs, every stream, key-value bucket and object store created with three replicas. During a
//! running embedding job, `kill -9` the server leading `GRIDBOOK_EVENTS`, restart it, then
//! `kill -9` the server leading `GRIDBOOK_COMMANDS` (often another one) and restart it.
//!
//! Afterwards: the job completed with every `custom_id` once; the ledger's invariant audit is
//! clean and no money appeared or vanished; every order the market acknowledged (each row of
//! `market_orders`) reached the engine (an `Accepted` or `Rejected` event names it) and the
//! outbox is drained; the engine's frames are gapless and its events equal a clean replay of
//! the commands it stored; and the three replicas of every stream hold the same messages
//! again (each replica current). Printed: how long each stream took to elect a new leader.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gridbook_db::diesel::{self, RunQueryDsl};
use gridbook_testkit::{replay, Engine, EngineConfig, NatsCluster, NatsOptions, Proc, Service, TempDir, WorkerConfig};
use gridbook_wire::{streams, subjects};
use matching_core::EventKind;
use serde_json::{Value, json};

use crate::chaos::{credits_by_code, funded_studio, get, json_of, private_database, signup, submit_job, without_shared_services};

const MARKET: &str = "EMBED-MINILM-L6";
const LINES: usize = 4_000;
const CREDIT: i64 = 1_000_000;

/// Every stream Gridbook creates on a market that runs a job, with the streams behind its
/// buckets.
fn all_streams() -> Vec<String> {
    vec![
        streams::COMMANDS.into(),
        streams::EVENTS.into(),
        streams::ASSIGNMENTS.into(),
        streams::RESULTS.into(),
        streams::object_store_stream(streams::FILES_BUCKET),
        streams::object_store_stream(streams::SNAPSHOTS_BUCKET),
        streams::kv_stream("gridbook_engine_leases"),
    ]
}

async fn stream_info(js: &async_nats::jetstream::Context, name: &str) -> Option<async_nats::jetstream::stream::Info> {
    let mut s = tokio::time::timeout(Duration::from_secs(3), js.get_stream(name)).await.ok()?.ok()?;
    tokio::time::timeout(Duration::from_secs(3), s.info()).await.ok()?.ok().cloned()
}

/// The server (`n<i>`) leading stream `name`'s replicas.
async fn leader_of(js: &async_nats::jetstream::Context, name: &str) -> usize {
    let started = Instant::now();
    loop {
        if let Some(leader) = stream_info(js, name).await.and_then(|i| i.cluster).and_then(|c| c.leader)
            && let Some(i) = leader.strip_prefix('n').and_then(|n| n.parse().ok())
        {
            return i;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{name} has no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until stream `name` has a leader other than server `gone`; how long that took.
async fn new_leader(js: &async_nats::jetstream::Context, name: &str, gone: usize) -> Duration {
    let started = Instant::now();
    let gone = format!("n{gone}");
    loop {
        if let Some(leader) = stream_info(js, name).await.and_then(|i| i.cluster).and_then(|c| c.leader)
            && leader != gone
        {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{name}: no new leader after {gone} died");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until every replica of every stream is current with its leader (after a restart the
/// returning server catches up from the others).
async fn wait_replicas_current(js: &async_nats::jetstream::Context) {
    let started = Instant::now();
    for name in all_streams() {
        loop {
            let info = stream_info(js, &name).await;
            let cluster = info.as_ref().and_then(|i| i.cluster.clone());
            let ok = cluster.as_ref().is_some_and(|c| {
                c.leader.is_some() && c.replicas.len() == 2 && c.replicas.iter().all(|p| p.current && !p.offline)
            });
            if ok {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{name}: replicas not current: {cluster:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn spawn_api(dir: &Path, config: &Path) -> Proc {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gridbook-api"));
    c.arg("run").arg("--config").arg(config).env("RUST_LOG", "warn");
    without_shared_services(&mut c);
    Proc::spawn("gridbook-api", &mut c, &dir.join("api.log")).unwrap()
}

async fn wait_api(api: &mut Proc, url: &str, dir: &Path) {
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        if let Some(st) = api.exited() {
            panic!("the API exited ({st}); see {}", dir.join("api.log").display());
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the API is not ready; see {}", dir.join("api.log").display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_alive(procs: &mut [(&mut Proc, PathBuf)]) {
    for (p, log) in procs.iter_mut() {
        if let Some(st) = p.exited() {
            panic!("{} exited by itself ({st}); see {}", p.name(), log.display());
        }
    }
}

fn corpus() -> String {
    (0..LINES)
        .map(|i| json!({"custom_id": format!("h-{i:05}"), "input": format!("cluster sentence {i} about {}", ["leaders", "replicas", "routes", "quorum"][i % 4])}).to_string() + "\n")
        .collect()
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_nats_servers_of_a_three_node_cluster_during_a_job_loses_nothing() {
    let tmp = TempDir::new("ha-nats");
    let dir = tmp.path().to_owned();
    let (pg, db_url) = private_database(&dir);
    let mut cluster = NatsCluster::start("ha", NatsOptions { dir: Some(dir.join("nats")), sync_always: true }).await;
    let access = cluster.access();
    assert_eq!(access.replicas, 3);
    let js = cluster.jetstream();
    let mut engine = Engine::start(&access, EngineConfig { dir: Some(dir.join("engine")), lease_secs: Some(3), ..EngineConfig::dev() });
    engine.wait_serving(&cluster.client).await;

    let port = gridbook_testkit::free_port();
    let api_config = dir.join("api.toml");
    crate::chaos::api_config(&api_config, port, &db_url, &cluster.url(), access.replicas, &cluster.keys, 8);
    let api_url = format!("http://127.0.0.1:{port}");
    let mut api = spawn_api(&dir, &api_config);

    let worker_config = WorkerConfig {
        database_url: db_url.clone(),
        nats_url: cluster.url(),
        nkey_file: access.nkey_file(Service::Settlement),
        outbox_interval_ms: Some(50),
        ack_wait_secs: Some(3),
        env: vec![
            ("GRIDBOOK_NATS_REPLICAS".into(), access.replicas.to_string()),
            ("GRIDBOOK_CLOSE_EPOCHS".into(), "false".into()),
            ("GRIDBOOK_WITHHOLD_ASSIGNMENTS".into(), "0".into()),
        ],
        ..WorkerConfig::default()
    };
    let mut worker = gridbook_testkit::spawn_worker(&worker_config, &dir.join("worker.log"));
    wait_api(&mut api, &api_url, &dir).await;

    // The provider's agent, with the three URLs too.
    let provider = signup(&api_url, "provider").await;
    let key_file = dir.join("provider.key");
    std::fs::write(&key_file, &provider.key).unwrap();
    let node_config = dir.join("node.toml");
    std::fs::write(
        &node_config,
        format!(
            "api_url = \"{api_url}\"\nnats_url = \"{}\"\nstate_file = \"{}\"\nname = \"ha-node\"\ngpu_model = \"cpu\"\nvram_mb = 0\nregion = \"test\"\nheartbeat_secs = 1\npricing_poll_secs = 1\ngrace_secs = 1\n\n[markets.{MARKET}]\nkind = \"fixed\"\nprice = 40\nqty = 1\n",
            cluster.url(),
            dir.join("node-state.json").display()
        ),
    )
    .unwrap();
    let mut agent = {
        let mut c = Command::new(gridbook_testkit::binary("executor"));
        c.args(["agent", "--key-file", &key_file.display().to_string(), "--node-config", &node_config.display().to_string()])
            .env("RUST_LOG", "info");
        without_shared_services(&mut c);
        Proc::spawn("executor agent", &mut c, &dir.join("agent.log")).unwrap()
    };
    let logs = |d: &Path| [d.join("api.log"), d.join("worker.log"), d.join("agent.log")];
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        let book: Value = match http.get(format!("{api_url}/v1/markets/{MARKET}/book")).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        if book["asks"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        let [a, w, g] = logs(&dir);
        assert_alive(&mut [(&mut api, a), (&mut worker, w), (&mut agent, g)]);
        assert!(started.elapsed() < Duration::from_secs(120), "no ask on the book: {book}; see {}", dir.join("agent.log").display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The studio's job: 4,000 lines, 4 units, one assignment at a time.
    let studio = funded_studio(&api_url, &db_url, CREDIT).await;
    let job_id = submit_job(&api_url, &studio, corpus()).await;

    // Every stream and bucket has three replicas (the files bucket, the snapshots, the leases
    // included), now that the job's first messages exist.
    for name in all_streams() {
        let info = stream_info(&js, &name).await.unwrap_or_else(|| panic!("stream {name} is missing"));
        assert_eq!(info.config.num_replicas, 3, "{name} has {} replicas", info.config.num_replicas);
    }

    // Round 1: the events stream's leader; round 2: the commands stream's leader.
    for (round, stream) in [streams::EVENTS, streams::COMMANDS].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let victim = leader_of(&js, stream).await;
        let killed = Instant::now();
        cluster.kill9(victim);
        let elected = new_leader(&js, stream, victim).await;
        // The market keeps running on two servers for a while.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let status = json_of(get(&api_url, &studio, &format!("/v1/jobs/{job_id}")).await).await["status"].clone();
        cluster.restart(victim).await.unwrap();
        eprintln!(
            "round {round}: killed n{victim} (leader of {stream}); {stream} had a new leader in {} ms; job {status} on two servers; n{victim} back after {} ms",
            elected.as_millis(),
            killed.elapsed().as_millis()
        );
        let [a, w, g] = logs(&dir);
        assert_alive(&mut [(&mut api, a), (&mut worker, w), (&mut agent, g)]);
    }

    // The job completes.
    let started = Instant::now();
    let job = loop {
        let [a, w, g] = logs(&dir);
        assert_alive(&mut [(&mut api, a), (&mut worker, w), (&mut agent, g)]);
        let j = json_of(get(&api_url, &studio, &format!("/v1/jobs/{job_id}")).await).await;
        if ["completed", "failed", "expired", "cancelled", "rejected"].contains(&j["status"].as_str().unwrap()) {
            break j;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "job stuck: {j}; logs in {}", dir.display());
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("job finished {:.1} s after the last round: {}", started.elapsed().as_secs_f64(), job["request_counts"]);
    assert_eq!(job["status"], "completed", "{job}; logs in {}", dir.display());
    assert_eq!(job["request_counts"]["completed"], LINES as u64, "{job}");

    let out = get(&api_url, &studio, &format!("/v1/jobs/{job_id}/output")).await.text().await.unwrap();
    let mut seen = HashSet::new();
    for line in out.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let id = v["custom_id"].as_str().unwrap().to_owned();
        assert_eq!(v["embedding"].as_array().map(Vec::len), Some(384), "{id}");
        assert!(seen.insert(id.clone()), "{id} appears twice in the output");
    }
    let expected: HashSet<String> = (0..LINES).map(|i| format!("h-{i:05}")).collect();
    assert_eq!(seen, expected, "the output's custom_ids are not the input's");

    // The ledger.
    let c = &mut gridbook_db::connect(&db_url).unwrap();
    let violations = gridbook_ledger::store::check_invariants(c).unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    let by_code = credits_by_code(c);
    let posted = |code: &str| by_code.get(code).map_or(0, |v| v.0);
    assert_eq!(posted("operator"), -CREDIT, "money entered other than by the deposit: {by_code:?}");
    assert!(by_code.values().all(|v| v.1 == 0), "holds left pending after the job: {by_code:?}");
    assert_eq!(posted("escrow"), 0, "escrow not empty after the job: {by_code:?}");
    let earned: Count = diesel::sql_query(
        "SELECT coalesce(sum(price * units), 0)::bigint AS n FROM job_assignments WHERE status = 'completed' AND job_id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(job_id.parse::<uuid::Uuid>().unwrap())
    .get_result(c)
    .unwrap();
    assert_eq!(posted("provider"), earned.n, "the provider was not paid exactly its completed assignments");
    assert_eq!(CREDIT - posted("studio"), earned.n + posted("protocol_fee"), "the studio paid other than price + fee: {by_code:?}");

    // The engine: gapless frames equal to a clean replay of the stored commands.
    let frames = replay::published_frames(&js, MARKET).await;
    let commands = replay::read_subject(&js, streams::COMMANDS, &subjects::market_cmd(MARKET)).await;
    let published: Vec<matching_core::Event> = frames.iter().flat_map(|f| f.events.clone()).collect();
    let replayed = replay::clean_replay(replay::market_config_from(&gridbook_testkit::dev_markets_file(), MARKET), &commands);
    assert_eq!(published.len(), replayed.len(), "event count differs from a clean replay of {} commands", commands.len());
    assert!(published == replayed, "published events differ from a clean replay");

    // No acknowledged command lost: every order the market recorded reached the engine, and
    // the outbox has nothing left to publish.
    let mut reached = HashSet::new();
    for e in &published {
        match &e.kind {
            EventKind::Accepted { id, .. } | EventKind::Rejected { id: Some(id), .. } => {
                reached.insert(id.0 as i64);
            }
            _ => {}
        }
    }
    #[derive(diesel::QueryableByName)]
    struct OrderId {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        engine_order_id: i64,
    }
    let orders: Vec<OrderId> = diesel::sql_query("SELECT engine_order_id FROM market_orders WHERE market = $1")
        .bind::<diesel::sql_types::Text, _>(MARKET)
        .load(c)
        .unwrap();
    assert!(!orders.is_empty());
    for o in &orders {
        assert!(reached.contains(&o.engine_order_id), "order {} never reached the engine", o.engine_order_id);
    }
    let unpublished: Count = diesel::sql_query("SELECT count(*)::bigint AS n FROM outbox WHERE published_at IS NULL").get_result(c).unwrap();
    assert_eq!(unpublished.n, 0, "outbox rows left unpublished");

    // The three replicas agree again.
    wait_replicas_current(&js).await;
    eprintln!(
        "{} frames from {} command messages equal a clean replay; {} orders all reached the engine; every replica current",
        frames.len(),
        commands.len(),
        orders.len()
    );

    // A provider's node deleted on a cluster is cut off wherever it is connected: the API asks
    // every server for the node's connections and kicks each on its own server (the agent's
    // server is the client's random pick among three, often not the API's).
    let nodes = json_of(get(&api_url, &provider, "/v1/nodes").await).await;
    let node_id = nodes["data"][0]["id"].as_str().expect("the provider's node").to_owned();
    let sys = cluster.access().try_connect(Service::Sys).await.unwrap();
    let before = node_connections(&sys, &node_id).await;
    assert_eq!(before.0, 3, "every server answers CONNZ: {before:?}");
    assert!(before.1 >= 1, "the agent is connected before the delete: {before:?}");
    let r = http.delete(format!("{api_url}/v1/nodes/{node_id}")).bearer_auth(&provider.key).send().await.unwrap();
    assert!(r.status().is_success(), "DELETE /v1/nodes/{node_id}: {}", r.status());
    let started = Instant::now();
    loop {
        let now = node_connections(&sys, &node_id).await;
        if now.1 == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the deleted node is still connected: {now:?} (before {before:?})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("deleted node cut off on every server ({} connection(s) on n{}) in {} ms", before.1, before.2, started.elapsed().as_millis());
    drop((agent, worker, api, engine, cluster, pg));
}

/// (servers that answered, connections of `node-<node>` over all of them, the index `n<i>` of
/// the last server holding one), from every server's CONNZ through the system account.
async fn node_connections(sys: &async_nats::Client, node: &str) -> (usize, usize, usize) {
    use futures::StreamExt;
    let user = format!("node-{node}");
    let inbox = sys.new_inbox();
    let mut sub = sys.subscribe(inbox.clone()).await.unwrap();
    let q = json!({"user": user, "auth": true});
    sys.publish_with_reply("$SYS.REQ.SERVER.PING.CONNZ", inbox, q.to_string().into()).await.unwrap();
    let (mut servers, mut conns, mut on) = (0, 0, usize::MAX);
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
        servers += 1;
        let v: Value = serde_json::from_slice(&m.payload).unwrap();
        let here = v["data"]["connections"].as_array().into_iter().flatten().filter(|c| c["authorized_user"] == user.as_str()).count();
        if here > 0 {
            conns += here;
            on = v["server"]["name"].as_str().and_then(|n| n.strip_prefix('n')).and_then(|n| n.parse().ok()).unwrap_or(usize::MAX);
        }
        if servers == 3 {
            break;
        }
    }
    (servers, conns, on)
}
