//! Several instances of every service (issue 14): two API processes and two settlement-worker
//! processes serve one market together; during a running embedding job one API instance (the
//! studio's) and the worker that holds the single-writer lease are killed with `kill -9`.
//!
//! The studio uploads and submits through API A, the provider's executor agent works through
//! API B; after the kills the studio carries on through API B (and replays its submission there
//! under the same `Idempotency-Key`: the keys live in PostgreSQL, so any instance answers with
//! the first one's response). Worker A takes the lease first and worker B stands by; then A's
//! lease session is terminated by the server (`pg_terminate_backend`): A must stop its
//! single-writer duties ("lease lost"), B take the lease and A stand by. B, now the holder, is
//! the worker killed during the job, and A must take the lease back (its log lines, and
//! `pg_locks` naming its session).
//!
//! Afterwards: the job completed; every custom_id exactly once; every engine fill settled
//! exactly once (one escrow assignment and one job assignment per fill of the market); the
//! ledger's invariants hold and the money balances as in the chaos test; the outbox drained
//! once (every row published, and each stream holds exactly one message per outbox row of its
//! subjects, by `Nats-Msg-Id`). Printed: the failover times (kill → standby holds the lease →
//! next outbox publish → next fill settled).
//!
//! Every part is a real process: a private nats-server and PostgreSQL, the engine, the API
//! binary, the settlement-worker binary and the executor agent binary.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gridbook_db::diesel::{self, RunQueryDsl};
use gridbook_testkit::{replay, Engine, EngineConfig, Nats, NatsOptions, Proc, Service, TempDir, WorkerConfig};
use gridbook_wire::{streams, subjects};
use matching_core::EventKind;
use serde_json::{Value, json};

use crate::chaos::{api_config, credits_by_code, get, json_of, private_database, signup, upload, without_shared_services};

const MARKET: &str = "EMBED-MINILM-L6";
const LINES: usize = 4_000;
const CREDIT: i64 = 1_000_000;
/// The workers' lease poll (`GRIDBOOK_LEASE_POLL_MS`).
const LEASE_POLL_MS: u64 = 200;
/// How a worker names its lease session (`gridbook_settlement::lease::APPLICATION_PREFIX`,
/// then its instance id): the session of that name holding an advisory lock holds the lease.
const LEASE_SESSION: &str = "gridbook-settlement-lease";

fn spawn_api(dir: &Path, config: &Path, log: &str) -> Proc {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gridbook-api"));
    c.arg("run").arg("--config").arg(config).env("RUST_LOG", "warn");
    without_shared_services(&mut c);
    Proc::spawn("gridbook-api", &mut c, &dir.join(log)).unwrap()
}

async fn wait_ready(url: &str, api: &mut Proc) {
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        if let Some(st) = api.exited() {
            panic!("the API exited ({st}); see {}", api.log().display());
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the API is not ready; see {}", api.log().display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(diesel::QueryableByName)]
struct Name {
    #[diesel(sql_type = diesel::sql_types::Text)]
    name: String,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

#[derive(diesel::QueryableByName)]
struct At {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    t: Option<chrono::DateTime<chrono::Utc>>,
}

/// The `application_name` of the lease session holding the settlement lease, if any (a
/// standby's session holds no advisory lock).
fn lease_holder(c: &mut diesel::PgConnection) -> Option<String> {
    diesel::sql_query(
        "SELECT a.application_name AS name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted AND a.application_name LIKE $1",
    )
    .bind::<diesel::sql_types::Text, _>(format!("{LEASE_SESSION} %"))
    .load::<Name>(c)
    .ok()?
    .into_iter()
    .next()
    .map(|n| n.name)
}

fn holder_name(instance: &str) -> String {
    format!("{LEASE_SESSION} {instance}")
}

fn count(c: &mut diesel::PgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<Count>(c).unwrap().n
}

fn at(c: &mut diesel::PgConnection, sql: &str, after: chrono::DateTime<chrono::Utc>) -> Option<chrono::DateTime<chrono::Utc>> {
    diesel::sql_query(sql).bind::<diesel::sql_types::Timestamptz, _>(after).get_result::<At>(c).unwrap().t
}

fn corpus() -> String {
    (0..LINES)
        .map(|i| json!({"custom_id": format!("h-{i:05}"), "input": format!("replicated sentence {i} about {}", ["rivers", "GPUs", "bread", "weather", "trains"][i % 5])}).to_string() + "\n")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_apis_and_two_workers_survive_kill9_of_one_api_and_the_lease_holder() {
    let tmp = TempDir::new("ha-services");
    let dir = tmp.path().to_owned();
    let (pg, db_url) = private_database(&dir);
    let nats = Nats::start_with("ha-services", NatsOptions { dir: Some(dir.join("nats")), sync_always: true }).await;
    let mut engine = Engine::start(&nats.access(), EngineConfig { dir: Some(dir.join("engine")), lease_secs: Some(3), ..EngineConfig::dev() });
    engine.wait_serving(&nats.client).await;

    // Two API processes on one database and one NATS, configured by file.
    let mut urls = vec![];
    let mut apis = vec![];
    for name in ["a", "b"] {
        let port = gridbook_testkit::free_port();
        let config = dir.join(format!("api-{name}.toml"));
        api_config(&config, port, &db_url, &nats.url, 1, &nats.keys, 6);
        urls.push(format!("http://127.0.0.1:{port}"));
        apis.push(spawn_api(&dir, &config, &format!("api-{name}.log")));
    }
    let (api_a, api_b) = (urls[0].clone(), urls[1].clone());
    for (url, api) in urls.iter().zip(apis.iter_mut()) {
        wait_ready(url, api).await;
    }

    // Two workers: A first (it takes the lease), then B (it stands by).
    let worker_config = |instance: &str| WorkerConfig {
        database_url: db_url.clone(),
        nats_url: nats.url.clone(),
        nkey_file: nats.access().nkey_file(Service::Settlement),
        outbox_interval_ms: Some(50),
        ack_wait_secs: Some(3),
        env: vec![
            ("GRIDBOOK_CLOSE_EPOCHS".into(), "false".into()),
            ("GRIDBOOK_WITHHOLD_ASSIGNMENTS".into(), "0".into()),
            ("GRIDBOOK_VERIFICATION_SECRET".into(), "5e".repeat(32)),
            ("GRIDBOOK_LEASE_POLL_MS".into(), LEASE_POLL_MS.to_string()),
            ("GRIDBOOK_INSTANCE_ID".into(), instance.into()),
            ("RUST_LOG".into(), "warn,gridbook_settlement=info".into()),
        ],
        ..WorkerConfig::default()
    };
    let c = &mut gridbook_db::connect(&db_url).unwrap();
    let (log_a, log_b) = (dir.join("worker-a.log"), dir.join("worker-b.log"));
    let mut worker_a = gridbook_testkit::spawn_worker(&worker_config("worker-a"), &log_a);
    let started = Instant::now();
    while lease_holder(c) != Some(holder_name("worker-a")) {
        assert!(worker_a.exited().is_none(), "worker A exited; see {}", log_a.display());
        assert!(started.elapsed() < Duration::from_secs(60), "worker A never took the lease; see {}", log_a.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut worker_b = gridbook_testkit::spawn_worker(&worker_config("worker-b"), &log_b);
    let started = Instant::now();
    while !std::fs::read_to_string(&log_b).unwrap_or_default().contains("lease held by another instance; standing by") {
        assert!(worker_b.exited().is_none(), "worker B exited; see {}", log_b.display());
        assert!(started.elapsed() < Duration::from_secs(60), "worker B never stood by; see {}", log_b.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(lease_holder(c), Some(holder_name("worker-a")), "worker B took a lease worker A holds");

    // The holder loses its lease session (terminated by the server, as a failover or an
    // operator would): it stops its single-writer duties, worker B takes the lease, and A
    // stands by once it has a session again.
    let cut = Instant::now();
    diesel::sql_query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1")
        .bind::<diesel::sql_types::Text, _>(holder_name("worker-a"))
        .execute(c)
        .unwrap();
    let mut b_took = None;
    let mut a_stopped = None;
    loop {
        let a_log = std::fs::read_to_string(&log_a).unwrap_or_default();
        if a_stopped.is_none() && a_log.contains("lease lost") && a_log.contains("single-writer duties stopped") {
            a_stopped = Some(cut.elapsed());
        }
        if b_took.is_none() && lease_holder(c) == Some(holder_name("worker-b")) {
            b_took = Some(cut.elapsed());
        }
        if a_stopped.is_some() && b_took.is_some() && a_log.contains("lease held by another instance; standing by") {
            break;
        }
        assert!(cut.elapsed() < Duration::from_secs(30), "after its session was cut: A stopped {a_stopped:?}, B took {b_took:?}; see {}", dir.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "worker A's lease session terminated: A stopped its duties {} ms later, B holds the lease {} ms later (poll {LEASE_POLL_MS} ms)",
        a_stopped.unwrap().as_millis(),
        b_took.unwrap().as_millis()
    );
    // From here B holds the lease and A stands by.
    let (mut holder, mut standby, standby_log, standby_name) = (worker_b, worker_a, log_a.clone(), "worker-a");

    // The provider's agent works through API B: a fixed ask of 1 unit, re-posted as it fills,
    // so the job's 4 units run as separate assignments, before and after the kills.
    let provider = signup(&api_b, "provider").await;
    let key_file = dir.join("provider.key");
    std::fs::write(&key_file, &provider.key).unwrap();
    let node_config = dir.join("node.toml");
    std::fs::write(
        &node_config,
        format!(
            "api_url = \"{api_b}\"\nnats_url = \"{}\"\nstate_file = \"{}\"\nname = \"ha-node\"\ngpu_model = \"cpu\"\nvram_mb = 0\nregion = \"test\"\nheartbeat_secs = 1\npricing_poll_secs = 1\ngrace_secs = 1\n\n[markets.{MARKET}]\nkind = \"fixed\"\nprice = 40\nqty = 1\n",
            nats.url,
            dir.join("node-state.json").display()
        ),
    )
    .unwrap();
    let mut agent_cmd = Command::new(gridbook_testkit::binary("executor"));
    agent_cmd
        .args(["agent", "--key-file", &key_file.display().to_string(), "--node-config", &node_config.display().to_string()])
        .env("RUST_LOG", "info");
    without_shared_services(&mut agent_cmd);
    let mut agent = Proc::spawn("executor agent", &mut agent_cmd, &dir.join("agent.log")).unwrap();
    let http = reqwest::Client::new();
    let started = Instant::now();
    loop {
        // The book as API A sees it (the agent's ask went in through B).
        let book: Value = match http.get(format!("{api_a}/v1/markets/{MARKET}/book")).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        };
        if book["asks"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(agent.exited().is_none(), "the agent exited; see {}", dir.join("agent.log").display());
        assert!(started.elapsed() < Duration::from_secs(120), "no ask on the book: {book}; see {}", dir.join("agent.log").display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The studio, through API A: funded, 4,000 lines (4 units), a job under an Idempotency-Key.
    let studio = signup(&api_a, "studio").await;
    gridbook_api::money::credit_user(c, studio.id, CREDIT, "ha-deposit").unwrap();
    let file = upload(&api_a, &studio, corpus()).await;
    let deadline = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let submission = json!({"market": MARKET, "input_file": file["id"], "limit_price": 100, "deadline": deadline});
    let idem_key = format!("ha-{}", uuid::Uuid::new_v4());
    let job = json_of(
        http.post(format!("{api_a}/v1/jobs"))
            .bearer_auth(&studio.key)
            .header("Idempotency-Key", &idem_key)
            .json(&submission)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let job_id: uuid::Uuid = job["id"].as_str().unwrap().parse().unwrap();

    // Kill while the job runs: once its first assignment completed and more are to come.
    let started = Instant::now();
    loop {
        let done = count(c, &format!("SELECT count(*)::bigint AS n FROM job_assignments WHERE job_id = '{job_id}' AND status = 'completed'"));
        let status = count(c, &format!("SELECT count(*)::bigint AS n FROM jobs WHERE id = '{job_id}' AND status IN ('queued', 'running')"));
        assert_eq!(status, 1, "the job ended before the kills; see {}", dir.display());
        if done >= 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no assignment completed; see {}", dir.display());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let killed_at = diesel::sql_query("SELECT now() AS t").get_result::<At>(c).unwrap().t.unwrap();
    let kill = Instant::now();
    apis[0].kill();
    holder.kill();
    let standby_took = loop {
        if lease_holder(c) == Some(holder_name(standby_name)) {
            break kill.elapsed();
        }
        assert!(standby.exited().is_none(), "the standby worker exited; see {}", standby_log.display());
        assert!(kill.elapsed() < Duration::from_secs(30), "the standby worker did not take the lease over; holder {:?}; see {}", lease_holder(c), standby_log.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("kill -9 of API A and worker B (the lease holder); worker A holds the lease {} ms later", standby_took.as_millis());

    // The studio's submission replayed on API B under the same key: the same job, not a second.
    let replay = http
        .post(format!("{api_b}/v1/jobs"))
        .bearer_auth(&studio.key)
        .header("Idempotency-Key", &idem_key)
        .json(&submission)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.headers().get("Idempotent-Replayed").and_then(|v| v.to_str().ok()), Some("true"));
    let replayed = json_of(replay).await;
    assert_eq!(replayed["id"], job["id"], "the replay on the other instance created another job");

    // The job completes, followed through API B.
    let started = Instant::now();
    let job = loop {
        assert!(standby.exited().is_none(), "the standby worker exited; see {}", standby_log.display());
        assert!(apis[1].exited().is_none(), "API B exited; see {}", dir.join("api-b.log").display());
        assert!(agent.exited().is_none(), "the agent exited; see {}", dir.join("agent.log").display());
        let j = json_of(get(&api_b, &studio, &format!("/v1/jobs/{job_id}")).await).await;
        if ["completed", "failed", "expired", "cancelled", "rejected"].contains(&j["status"].as_str().unwrap()) {
            break j;
        }
        assert!(started.elapsed() < Duration::from_secs(180), "job stuck: {j}; logs in {}", dir.display());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    eprintln!("job finished {:.1} s after the kills: {}", kill.elapsed().as_secs_f64(), job["request_counts"]);
    assert_eq!(job["status"], "completed", "{job}; logs in {}", dir.display());
    assert_eq!(job["request_counts"]["completed"], LINES as u64, "{job}");

    // The failover's figures: the first outbox row published and the first fill settled after
    // the kills (database clock).
    let next_publish = at(c, "SELECT min(published_at) AS t FROM outbox WHERE published_at > $1", killed_at);
    let next_fill = at(c, "SELECT min(created_at) AS t FROM job_assignments WHERE created_at > $1", killed_at);
    let ms = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| (t - killed_at).num_milliseconds());
    eprintln!(
        "failover: lease {} ms, next outbox publish {:?} ms, next fill settled {:?} ms after the kill (poll {LEASE_POLL_MS} ms, ack_wait 3 s)",
        standby_took.as_millis(),
        ms(next_publish),
        ms(next_fill)
    );
    let carried = count(c, &format!("SELECT count(*)::bigint AS n FROM outbox WHERE created_at <= '{}' AND published_at > '{}'", killed_at.to_rfc3339(), killed_at.to_rfc3339()));
    let waited = std::fs::read_to_string(&standby_log).unwrap_or_default().contains("waiting for their redelivery");
    eprintln!("{carried} outbox rows written before the kill were published after it; the standby waited for earlier deliveries: {waited}");
    assert!(next_publish.is_some(), "nothing was published after the kills");
    assert!(next_fill.is_some(), "no fill was settled after the kills (the job's later units)");

    // The standby says it took over, naming itself.
    let b_log = std::fs::read_to_string(&standby_log).unwrap();
    assert_eq!(
        b_log.lines().filter(|l| l.contains("lease acquired") && l.contains(standby_name)).count(),
        2,
        "the standby's log has not two 'lease acquired' lines (at start, after the kill); see {}",
        standby_log.display()
    );

    // Every custom_id exactly once.
    let out = get(&api_b, &studio, &format!("/v1/jobs/{job_id}/output")).await.text().await.unwrap();
    let mut seen = HashSet::new();
    for line in out.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let id = v["custom_id"].as_str().unwrap().to_owned();
        assert_eq!(v["embedding"].as_array().map(Vec::len), Some(384), "{id}");
        assert!(seen.insert(id.clone()), "{id} appears twice in the output");
    }
    let expected: HashSet<String> = (0..LINES).map(|i| format!("h-{i:05}")).collect();
    assert_eq!(seen, expected, "the output's custom_ids are not the input's");

    // Every fill settled exactly once: one job assignment and one escrow assignment per fill.
    let js = nats.jetstream();
    let frames = replay::published_frames(&js, MARKET).await;
    let fills = frames.iter().flat_map(|f| &f.events).filter(|e| matches!(e.kind, EventKind::Fill { .. })).count() as i64;
    let assignments = count(c, &format!("SELECT count(*)::bigint AS n FROM job_assignments WHERE job_id = '{job_id}'"));
    let escrows = count(c, "SELECT count(*)::bigint AS n FROM escrow_assignments");
    let paired = count(c, "SELECT count(*)::bigint AS n FROM escrow_assignments e JOIN job_assignments a ON a.id = e.id");
    eprintln!("{fills} fills, {assignments} job assignments, {escrows} escrow assignments");
    assert!(fills >= 4, "the job's 4 units took {fills} fills");
    assert_eq!(assignments, fills, "job assignments per fill");
    assert_eq!(escrows, fills, "escrow assignments per fill");
    assert_eq!(paired, fills, "an escrow assignment without its job assignment");

    // The ledger: invariants, and the money as the chaos test checks it.
    let violations = gridbook_ledger::store::check_invariants(c).unwrap();
    assert!(violations.is_empty(), "{violations:?}");
    let by_code = credits_by_code(c);
    let posted = |code: &str| by_code.get(code).map_or(0, |v| v.0);
    assert_eq!(posted("operator"), -CREDIT, "money entered other than by the deposit: {by_code:?}");
    assert!(by_code.values().all(|v| v.1 == 0), "holds left pending after the job: {by_code:?}");
    assert_eq!(posted("escrow"), 0, "escrow not empty after the job: {by_code:?}");
    let earned = count(c, &format!("SELECT coalesce(sum(price * units), 0)::bigint AS n FROM job_assignments WHERE status = 'completed' AND job_id = '{job_id}'"));
    assert_eq!(posted("provider"), earned, "the provider was not paid exactly its completed assignments: {by_code:?}");
    assert_eq!(CREDIT - posted("studio"), earned + posted("protocol_fee"), "the studio paid other than price + fee: {by_code:?}");

    // The outbox drained once: every row published, and each stream holds exactly one message
    // per outbox row of its subjects (JetStream dropped the republished ones by Nats-Msg-Id).
    assert_eq!(count(c, "SELECT count(*)::bigint AS n FROM outbox WHERE published_at IS NULL"), 0, "outbox rows left unpublished");
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        id: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        subject: String,
    }
    let rows: Vec<Row> = diesel::sql_query("SELECT id::text AS id, subject FROM outbox").load(c).unwrap();
    let mut by_stream: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for r in &rows {
        let stream = if r.subject == subjects::market_cmd(MARKET) {
            streams::COMMANDS
        } else if r.subject.starts_with("node.") && r.subject.ends_with(".assign") {
            streams::ASSIGNMENTS
        } else {
            panic!("an outbox row on {}, which this test does not expect", r.subject)
        };
        by_stream.entry(stream).or_default().push(r.id.clone());
    }
    for (stream, filter) in [(streams::COMMANDS, subjects::market_cmd(MARKET)), (streams::ASSIGNMENTS, subjects::ALL_NODE_ASSIGNS.to_owned())] {
        let messages = replay::read_subject(&js, stream, &filter).await;
        let mut ids: Vec<String> = messages
            .iter()
            // The engine's own expiry ticks go through the command stream too, not the outbox.
            .filter(|m| !matches!(serde_json::from_slice::<matching_core::CommandKind>(&m.payload), Ok(matching_core::CommandKind::Expire { .. })))
            .map(|m| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_else(|| panic!("a message on {} without Nats-Msg-Id", m.subject))
            })
            .collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "{stream}: an outbox row published twice");
        let mut want = by_stream.remove(stream).unwrap_or_default();
        want.sort();
        assert_eq!(ids, want, "{stream}: the messages are not the outbox rows");
        eprintln!("{stream}: {n} messages, one per outbox row");
    }
    drop((agent, holder, standby, apis, engine, pg));
}
