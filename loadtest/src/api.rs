//! `loadtest api`: order placement through HTTP — `POST /v1/jobs` (API-key auth, escrow hold,
//! `market_orders` + `jobs` rows and the engine's Place command in the outbox, one PostgreSQL
//! transaction, `Idempotency-Key`) and the outbox publisher shipping the command to NATS
//! JetStream. Issue target: ≥ 5,000 placements/s with p99 ≤ 50 ms on this machine.
//!
//! The stack (default): a private nats-server (`GRIDBOOK_NATS_SERVER_BIN`, `sync_interval:
//! always` as xtask's), `target/release/matching-engine` on `dev.toml`'s markets, a fresh
//! database `gridbook_loadtest_<pid>_<mode>` on the server at `GRIDBOOK_DATABASE_URL` (dropped at
//! the end), the API in this process (`Application::build`, port 0) and the settlement worker in
//! this process (its outbox publisher is the "→ NATS" part). `--nats-url` uses a running
//! nats-server instead of a private one; `--no-engine` leaves the engine out.
//!
//! Set-up (not measured): S studios sign up over HTTP, log in and create API keys; an admin
//! (created as `gridbook-api create-admin` does) credits them over `POST /v1/admin/credits`; each
//! uploads one small JSONL file for the market. Measured: open-loop load at each target rate for
//! D seconds from C keep-alive connections. Request i is due at `start + i/R`; its latency runs
//! from that due time to the response (coordinated-omission-safe: a request that waits for a free
//! connection is charged the wait). A core-NATS subscription on `market.<M>.cmd` timestamps each
//! Place command as it reaches NATS; "201 → NATS" is that time minus the client's 201.
//!
//! `eval "$(cargo xtask env)" && cargo build --release -p matching-engine && \
//!  cargo run --release -p loadtest -- api [--rate 500,1000,2000,5000] [--synchronous-commit on,off]`
//!
//! Figures are printed, never asserted.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures::StreamExt;
use gridbook_ledger::diesel::{self, RunQueryDsl};
use gridbook_testkit::{Engine, EngineConfig, Markets, Nats, NatsOptions};
use hdrhistogram::Histogram;
use matching_core::CommandKind;
use serde_json::{Value, json};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// Target rates, placements/s, measured one after another (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = [500u64, 1_000, 2_000, 5_000])]
    rate: Vec<u64>,
    /// Seconds per rate.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent keep-alive HTTP connections (one sender task each).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Studios (each with its own API key, ledger account and input file).
    #[arg(long, default_value_t = 32)]
    studios: usize,
    #[arg(long, default_value = "EMBED-MINILM-L6")]
    market: String,
    /// Lines of each studio's input file (10 → 1 unit in EMBED-MINILM-L6).
    #[arg(long, default_value_t = 10)]
    file_lines: usize,
    /// Limit price per unit, minor units.
    #[arg(long, default_value_t = 100)]
    limit_price: i64,
    /// PostgreSQL `synchronous_commit` of the test database, one full run per value
    /// (comma-separated: `on`, `off` or `on,off`). `on` is what Gridbook runs with (WAL fsync per
    /// commit); `off` is diagnostic only (a crash may lose the last acknowledged orders).
    #[arg(long, value_delimiter = ',', default_values_t = ["on".to_string()])]
    synchronous_commit: Vec<String>,
    /// PostgreSQL server (any database on it); a fresh database is created there.
    /// Defaults to $GRIDBOOK_DATABASE_URL.
    #[arg(long)]
    database_url: Option<String>,
    /// A running nats-server with JetStream; default: start a private one
    /// ($GRIDBOOK_NATS_SERVER_BIN, fsync per write like xtask's).
    #[arg(long)]
    nats_url: Option<String>,
    /// Do not start the matching engine (the commands stream is created here instead).
    #[arg(long)]
    no_engine: bool,
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    #[arg(long, default_value = "matching-engine/engine/config/dev.toml")]
    engine_config: PathBuf,
    /// The API's actix workers (default: the API's own default).
    #[arg(long)]
    workers: Option<usize>,
    /// The API's database pool size (default: the API's own default).
    #[arg(long)]
    db_pool_size: Option<u32>,
    /// The settlement worker's outbox polling interval (its default is 100 ms).
    #[arg(long, default_value_t = 100)]
    outbox_interval_ms: u64,
    /// Threads of the load generator's runtime (also runs the NATS subscriber).
    #[arg(long, default_value_t = 1)]
    generator_threads: usize,
    /// Keep the database afterwards.
    #[arg(long)]
    keep: bool,
}

const PASSWORD: &str = "loadtest password 0123456789";
const RATE_LIMIT: u32 = 1_000_000;

pub fn run(args: Args) -> anyhow::Result<()> {
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("api-main")
        .enable_all()
        .build()?;
    let mut first = true;
    for mode in args.synchronous_commit.clone() {
        anyhow::ensure!(
            mode == "on" || mode == "off",
            "--synchronous-commit takes on and/or off, not {mode:?}"
        );
        if !first {
            println!();
        }
        first = false;
        main.block_on(run_mode(&args, &mode))?;
    }
    // The in-process API's actix workers have no stop handle here; the process exit ends them.
    main.shutdown_background();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The stack

/// What this run started (a private nats-server, the engine), stopped on drop.
#[derive(Default)]
struct Procs {
    nats: Option<Nats>,
    engine: Option<Engine>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

struct Studio {
    key: String,
    file: String,
}

async fn json_of(r: reqwest::Response, what: &str) -> anyhow::Result<Value> {
    let status = r.status();
    let text = r.text().await?;
    anyhow::ensure!(status.is_success(), "{what}: HTTP {status}: {text}");
    Ok(serde_json::from_str(&text)?)
}

/// Logs in `email` (cookie session) and returns a new API key with every scope of the role.
async fn key_for(base: &str, email: &str) -> anyhow::Result<String> {
    let browser = reqwest::Client::builder().cookie_store(true).build()?;
    json_of(
        browser
            .post(format!("{base}/v1/sessions"))
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await?,
        "log-in",
    )
    .await?;
    let k = json_of(
        browser
            .post(format!("{base}/v1/keys"))
            .json(&json!({"name": "loadtest"}))
            .send()
            .await?,
        "create key",
    )
    .await?;
    Ok(k["key"].as_str().context("no key in the response")?.to_owned())
}

fn corpus(lines: usize, tag: usize) -> String {
    (0..lines)
        .map(|i| json!({"custom_id": format!("s{tag}-{i}"), "input": format!("load test line {i} of studio {tag}")}).to_string() + "\n")
        .collect()
}

/// S studios with keys, funded by an admin over HTTP, each with one uploaded input file.
async fn set_up(a: &Args, base: &str, db_url: &str, run_tag: &str) -> anyhow::Result<Vec<Studio>> {
    let http = reqwest::Client::new();
    let admin_email = format!("admin-{run_tag}@loadtest.example.com");
    {
        let (url, email) = (db_url.to_owned(), admin_email.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut c = gridbook_db::connect(&url)?;
            gridbook_api::accounts::create_admin(&mut c, &email, PASSWORD)
                .map_err(|e| anyhow::anyhow!("create admin: {e:?}"))?;
            Ok(())
        })
        .await??;
    }
    let admin_key = key_for(base, &admin_email).await?;
    // Enough for every placement of the whole sweep, many times over.
    let credit: i64 = 1_000_000_000;
    let mut studios = Vec::with_capacity(a.studios);
    // A few at a time: sign-up and log-in hash passwords (argon2id) on the API's blocking pool.
    for chunk in (0..a.studios).collect::<Vec<_>>().chunks(4) {
        let futs = chunk.iter().map(|&i| {
            let (http, admin_key) = (http.clone(), admin_key.clone());
            let email = format!("studio{i}-{run_tag}@loadtest.example.com");
            let market = a.market.clone();
            let text = corpus(a.file_lines, i);
            async move {
                let user = json_of(
                    http.post(format!("{base}/v1/accounts"))
                        .json(&json!({"email": email, "password": PASSWORD, "role": "studio"}))
                        .send()
                        .await?,
                    "sign-up",
                )
                .await?;
                let key = key_for(base, &email).await?;
                json_of(
                    http.post(format!("{base}/v1/admin/credits"))
                        .header("Authorization", format!("Bearer {admin_key}"))
                        .json(&json!({"user_id": user["id"], "amount": credit, "reference": format!("loadtest-{run_tag}-{i}")}))
                        .send()
                        .await?,
                    "admin credit",
                )
                .await?;
                let file = json_of(
                    http.post(format!("{base}/v1/files?purpose=batch&market={market}"))
                        .header("Authorization", format!("Bearer {key}"))
                        .header("Content-Type", "application/jsonl")
                        .body(text)
                        .send()
                        .await?,
                    "upload",
                )
                .await?;
                anyhow::Ok(Studio {
                    key: format!("Bearer {key}"),
                    file: file["id"].as_str().context("no file id")?.to_owned(),
                })
            }
        });
        for s in futures::future::join_all(futs).await {
            studios.push(s?);
        }
    }
    Ok(studios)
}

// ---------------------------------------------------------------------------------------------
// CPU accounting (/proc, clock ticks of 10 ms)

const TICKS_PER_SEC: f64 = 100.0;

fn stat_ticks(path: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm) ": state is field 3, utime 14, stime 15 → indexes 11, 12 here.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

#[derive(Clone, Default)]
struct Cpu {
    api: u64,
    settle: u64,
    generator: u64,
    postgres: u64,
    nats: u64,
    engine: u64,
    busy: u64,
    total: u64,
}

fn sample_cpu(nats_pid: Option<u32>, engine_pid: Option<u32>) -> Cpu {
    let mut c = Cpu::default();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let ticks = stat_ticks(&t.path().join("stat")).unwrap_or(0);
            if name.starts_with("loadgen") {
                c.generator += ticks;
            } else if name.starts_with("settle") {
                c.settle += ticks;
            }
        }
    }
    // The API is the rest of this process. The process's own counter keeps the time of threads
    // that have exited (idle blocking-pool threads do), which a sum over live threads would lose.
    c.api = stat_ticks(Path::new("/proc/self/stat"))
        .unwrap_or(0)
        .saturating_sub(c.generator + c.settle);
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let name = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            if name.trim() == "postgres" {
                c.postgres += stat_ticks(&p.path().join("stat")).unwrap_or(0);
            }
        }
    }
    let of = |pid: Option<u32>| pid.and_then(|p| stat_ticks(Path::new(&format!("/proc/{p}/stat"))));
    c.nats = of(nats_pid).unwrap_or(0);
    c.engine = of(engine_pid).unwrap_or(0);
    if let Ok(s) = std::fs::read_to_string("/proc/stat")
        && let Some(line) = s.lines().next()
    {
        let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        c.total = total;
        c.busy = total - idle;
    }
    c
}

fn cores(ticks: u64, secs: f64) -> f64 {
    ticks as f64 / TICKS_PER_SEC / secs
}

// ---------------------------------------------------------------------------------------------
// The measured run

struct Sent {
    hist: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
    unsent: u64,
    /// (job id, when the 201 arrived, µs since the epoch)
    placed: Vec<(String, u64)>,
    last_done: Instant,
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    http: reqwest::Client,
    url: String,
    studios: Arc<Vec<Studio>>,
    market: String,
    limit_price: i64,
    rate: u64,
    seconds: u64,
    connections: usize,
    tag: String,
) -> anyhow::Result<(Sent, Instant)> {
    let total = rate * seconds;
    let deadline = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let start = Instant::now() + Duration::from_millis(20);
    // Requests still unsent this long after the start are counted as unsent, not sent late.
    let give_up = start + Duration::from_secs(seconds * 2 + 5);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (http, url, studios, market, deadline, next, tag) = (
            http.clone(),
            url.clone(),
            studios.clone(),
            market.clone(),
            deadline.clone(),
            next.clone(),
            tag.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut s = Sent {
                hist: Histogram::new_with_bounds(1, 600_000_000, 3)?,
                ok: 0,
                errors: BTreeMap::new(),
                unsent: 0,
                placed: Vec::new(),
                last_done: start,
            };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                if Instant::now() > give_up {
                    s.unsent += 1;
                    continue;
                }
                tokio::time::sleep_until(due.into()).await;
                let st = &studios[(i as usize) % studios.len()];
                let body = format!(
                    r#"{{"market":"{market}","input_file":"{}","limit_price":{limit_price},"deadline":"{deadline}"}}"#,
                    st.file
                );
                let r = http
                    .post(&url)
                    .header("Authorization", &st.key)
                    .header("Idempotency-Key", format!("{tag}-{i}"))
                    .header("Content-Type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let outcome = match r {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        match resp.bytes().await {
                            Ok(b) => Ok((status, b)),
                            Err(e) => Err(format!("body: {e}")),
                        }
                    }
                    Err(e) => Err(if e.is_connect() {
                        "connect".to_owned()
                    } else if e.is_timeout() {
                        "timeout".to_owned()
                    } else {
                        "transport".to_owned()
                    }),
                };
                let done = Instant::now();
                s.last_done = done;
                s.hist
                    .saturating_record(done.duration_since(due).as_micros().max(1) as u64);
                match outcome {
                    Ok((201, b)) => {
                        s.ok += 1;
                        let id = serde_json::from_slice::<Value>(&b)
                            .ok()
                            .and_then(|v| v["id"].as_str().map(str::to_owned));
                        if let Some(id) = id {
                            s.placed.push((id, now_us()));
                        }
                    }
                    Ok((status, b)) => {
                        let code = serde_json::from_slice::<Value>(&b)
                            .ok()
                            .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                            .unwrap_or_default();
                        *s.errors.entry(format!("{status} {code}")).or_default() += 1;
                    }
                    Err(e) => *s.errors.entry(e).or_default() += 1,
                }
            }
            anyhow::Ok(s)
        }));
    }
    let mut all = Sent {
        hist: Histogram::new_with_bounds(1, 600_000_000, 3)?,
        ok: 0,
        errors: BTreeMap::new(),
        unsent: 0,
        placed: Vec::new(),
        last_done: start,
    };
    for t in tasks {
        let s = t.await??;
        all.hist.add(&s.hist)?;
        all.ok += s.ok;
        all.unsent += s.unsent;
        for (k, v) in s.errors {
            *all.errors.entry(k).or_default() += v;
        }
        all.placed.extend(s.placed);
        all.last_done = all.last_done.max(s.last_done);
    }
    Ok((all, start))
}

/// Engine order id of every job in the database (id → engine order id).
fn engine_ids(db_url: &str) -> anyhow::Result<HashMap<String, u64>> {
    use diesel::sql_types::{Nullable, Text};
    let mut c = gridbook_db::connect(db_url)?;
    let s: Option<String> = diesel::select(diesel::dsl::sql::<Nullable<Text>>(
        "(SELECT string_agg(id::text || ' ' || engine_order_id::text, ',') FROM jobs)",
    ))
    .get_result(&mut c)?;
    Ok(s.unwrap_or_default()
        .split(',')
        .filter_map(|p| {
            let (id, e) = p.split_once(' ')?;
            Some((id.to_owned(), e.parse().ok()?))
        })
        .collect())
}

fn ms(us: u64) -> f64 {
    us as f64 / 1_000.0
}

#[derive(Default)]
struct Arrivals {
    /// engine order id → when its Place command reached NATS (µs since the epoch)
    at: Mutex<HashMap<u64, u64>>,
    count: AtomicU64,
}

async fn run_mode(a: &Args, mode: &str) -> anyhow::Result<()> {
    let server = a
        .database_url
        .clone()
        .or_else(|| std::env::var("GRIDBOOK_DATABASE_URL").ok())
        .context("--database-url or GRIDBOOK_DATABASE_URL is required (eval \"$(cargo xtask env)\")")?;
    let run_tag = format!("{}_{mode}", std::process::id());
    let name = format!("gridbook_loadtest_{run_tag}");
    let db_url = gridbook_db::with_database(&server, &name);
    {
        let mut admin = gridbook_db::connect(&server).context("connect to PostgreSQL")?;
        diesel::sql_query(format!("CREATE DATABASE \"{name}\"")).execute(&mut admin)?;
        if mode == "off" {
            diesel::sql_query(format!("ALTER DATABASE \"{name}\" SET synchronous_commit = off"))
                .execute(&mut admin)?;
        }
    }
    let dir = std::env::temp_dir().join(format!("gridbook-loadtest-api-{run_tag}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let settle_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("settle")
        .enable_all()
        .build()?;
    let gen_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.generator_threads.max(1))
        .thread_name("loadgen")
        .enable_all()
        .build()?;
    let mut procs = Procs::default();
    let result = measure(a, mode, &db_url, &run_tag, &dir, &mut procs, &settle_rt, &gen_rt).await;
    settle_rt.shutdown_background();
    gen_rt.shutdown_background();
    drop(procs);
    if !a.keep {
        let mut admin = gridbook_db::connect(&server)?;
        diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)?;
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("kept database {name} and {}", dir.display());
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn measure(
    a: &Args,
    mode: &str,
    db_url: &str,
    run_tag: &str,
    dir: &Path,
    procs: &mut Procs,
    settle_rt: &tokio::runtime::Runtime,
    gen_rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    // NATS and the engine.
    let (access, nats_pid) = match &a.nats_url {
        Some(u) => (gridbook_testkit::NatsAccess::with_env_keys(u), None),
        None => {
            // A private nats-server with JetStream: fsync before every acknowledgement, like xtask's.
            let options = NatsOptions { sync_always: true, dir: Some(dir.to_owned()) };
            let nats = Nats::try_start("loadtest-api", options)
                .await
                .context("a private nats-server, or pass --nats-url")?;
            let started = (nats.access(), nats.pid());
            procs.nats = Some(nats);
            started
        }
    };
    let nats_url = access.url.clone();
    let engine_config = std::fs::canonicalize(&a.engine_config)
        .with_context(|| format!("{} (run from the workspace root)", a.engine_config.display()))?;
    let engine_bin = a.bin_dir.join("matching-engine");
    let mut engine_pid = None;
    let engine_note = if a.no_engine {
        "not started (--no-engine)".to_owned()
    } else if !engine_bin.exists() {
        format!(
            "not started: {} is missing (cargo build --release -p matching-engine)",
            engine_bin.display()
        )
    } else {
        let engine = Engine::try_start(
            &access,
            EngineConfig {
                markets: Markets::File(engine_config.clone()),
                bin: Some(engine_bin.clone()),
                dir: Some(dir.to_owned()),
                ..EngineConfig::default()
            },
        )
        .context("starting matching-engine")?;
        engine_pid = engine.pid();
        procs.engine = Some(engine);
        format!("{} (consumes the commands, emits events)", engine_bin.display())
    };
    let nats = access.try_connect(gridbook_testkit::Service::Api).await.context("connect to NATS")?;
    let js = async_nats::jetstream::new(nats.clone());
    {
        use gridbook_wire::{streams, subjects};
        let started = Instant::now();
        loop {
            if js.get_stream(streams::COMMANDS).await.is_ok() {
                break;
            }
            if engine_pid.is_none() {
                js.get_or_create_stream(streams::config(
                    streams::COMMANDS,
                    subjects::ALL_MARKET_CMDS,
                    streams::DEFAULT_MAX_AGE,
                    streams::DEFAULT_REPLICAS,
                ))
                .await
                .map_err(|e| anyhow::anyhow!("create the commands stream: {e}"))?;
                break;
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "the engine did not create {} (see {})",
                streams::COMMANDS,
                dir.join("engine.log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // The API, in this process.
    let defaults = gridbook_api::Settings::default();
    let settings = gridbook_api::Settings {
        bind: "127.0.0.1:0".into(),
        database_url: db_url.to_owned(),
        nats_url: nats_url.clone(),
        nats_auth: gridbook_api::node_access::NatsAuthSettings {
            nkey_file: access.nkey_file(gridbook_testkit::Service::Api),
            ..Default::default()
        },
        markets_file: engine_config.clone(),
        secure_cookies: false,
        rate_limit: gridbook_api::settings::RateLimit {
            per_second: RATE_LIMIT,
            burst: RATE_LIMIT,
        },
        workers: a.workers.unwrap_or(defaults.workers),
        db_pool_size: a.db_pool_size.unwrap_or(defaults.db_pool_size),
        ..defaults
    };
    let (workers, pool) = (settings.workers, settings.db_pool_size);
    let app = gridbook_api::Application::build(settings).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    tokio::spawn(app.run_until_stopped());

    // The settlement worker (outbox publisher + event consumer), in this process.
    let s = gridbook_settlement::Settings {
        database_url: db_url.to_owned(),
        nats_url: nats_url.clone(),
        nats_nkey_file: access.nkey_file(gridbook_testkit::Service::Settlement),
        consumer: format!("settlement_loadtest_{run_tag}"),
        outbox_interval_ms: a.outbox_interval_ms,
        ..Default::default()
    };
    settle_rt.spawn(async move {
        if let Err(e) = gridbook_settlement::run(s).await {
            eprintln!("settlement worker stopped: {e}");
        }
    });

    let t = Instant::now();
    let studios = Arc::new(set_up(a, &base, db_url, run_tag).await?);
    let setup_secs = t.elapsed().as_secs_f64();

    // Place commands as they reach NATS.
    let arrivals = Arc::new(Arrivals::default());
    {
        let mut sub = nats
            .subscribe(gridbook_wire::subjects::market_cmd(&a.market))
            .await?;
        let arrivals = arrivals.clone();
        gen_rt.spawn(async move {
            while let Some(m) = sub.next().await {
                let t = now_us();
                if let Ok(CommandKind::Place(p)) = serde_json::from_slice::<CommandKind>(&m.payload) {
                    arrivals.at.lock().unwrap().insert(p.id.0, t);
                    arrivals.count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    nats.flush().await?;

    println!(
        "api load test (POST /v1/jobs → escrow + outbox → NATS), synchronous_commit {mode}{}",
        if mode == "off" {
            " (DIAGNOSTIC ONLY: a crash may lose acknowledged orders)"
        } else {
            " (PostgreSQL default: WAL fsync per commit)"
        }
    );
    println!(
        "  stack: API in-process ({workers} actix workers, db pool {pool}, rate limits raised to {RATE_LIMIT}/s per key and per IP so they stay out of the way, no tracing subscriber), \
settlement worker in-process (outbox every {} ms or when woken), nats-server {} (fsync per write), engine {engine_note}",
        a.outbox_interval_ms,
        if nats_pid.is_some() { "private" } else { "at --nats-url" },
    );
    println!(
        "  load: {} studios, {}-line files in {} at limit {}, {} keep-alive connections, open loop {} s per rate, latency from the scheduled send; set-up {:.1} s (not measured)",
        a.studios, a.file_lines, a.market, a.limit_price, a.connections, a.seconds, setup_secs
    );
    println!(
        "  {} cores on this machine, shared by the API, PostgreSQL, NATS, the engine and the generator",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!();
    println!(
        "{:>7} {:>9} {:>7} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8}   {:>8} {:>8} {:>8} {:>7}",
        "target", "placed/s", "201s", "errors", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms", "→NATS50", "→NATS99", "→NATSmax", "drain s"
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.connections)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()?;
    let url = format!("{base}/v1/jobs");
    let mut best: Option<(u64, f64, f64)> = None;
    let mut notes = Vec::new();
    let mut cpu_lines = Vec::new();
    for (k, &rate) in a.rate.iter().enumerate() {
        let before = sample_cpu(nats_pid, engine_pid);
        let arrived0 = arrivals.count.load(Ordering::Relaxed);
        let tag = format!("lt{run_tag}r{k}");
        let (sent, start) = gen_rt
            .spawn(drive(
                http.clone(),
                url.clone(),
                studios.clone(),
                a.market.clone(),
                a.limit_price,
                rate,
                a.seconds,
                a.connections,
                tag,
            ))
            .await??;
        let after = sample_cpu(nats_pid, engine_pid);
        let elapsed = sent.last_done.duration_since(start).as_secs_f64().max(1e-3);
        // Wait for the outbox to drain (every 201 on NATS), at most 60 s.
        let drain_start = Instant::now();
        let expected = arrived0 + sent.ok;
        while arrivals.count.load(Ordering::Relaxed) < expected
            && drain_start.elapsed() < Duration::from_secs(60)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let drain = drain_start.elapsed().as_secs_f64();
        let ids = {
            let u = db_url.to_owned();
            tokio::task::spawn_blocking(move || engine_ids(&u)).await??
        };
        let mut lag = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        let mut missing = 0u64;
        let mut early = 0u64;
        {
            let at = arrivals.at.lock().unwrap();
            for (id, resp) in &sent.placed {
                match ids.get(id).and_then(|e| at.get(e)) {
                    Some(&t) => {
                        if t < *resp {
                            early += 1;
                        }
                        lag.saturating_record(t.saturating_sub(*resp).max(1));
                    }
                    None => missing += 1,
                }
            }
        }
        let h = &sent.hist;
        let errors: u64 = sent.errors.values().sum::<u64>() + sent.unsent;
        let placed_per_s = sent.ok as f64 / elapsed;
        let p99 = ms(h.value_at_quantile(0.99));
        let lag_q = |q: f64| if lag.is_empty() { f64::NAN } else { ms(lag.value_at_quantile(q)) };
        println!(
            "{:>7} {:>9.0} {:>7} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}   {:>8.1} {:>8.1} {:>8.1} {:>7.1}",
            rate,
            placed_per_s,
            sent.ok,
            errors,
            ms(h.value_at_quantile(0.50)),
            ms(h.value_at_quantile(0.90)),
            p99,
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
            lag_q(0.50),
            lag_q(0.99),
            if lag.is_empty() { f64::NAN } else { ms(lag.max()) },
            drain,
        );
        if !sent.errors.is_empty() || sent.unsent > 0 {
            let mut e: Vec<String> = sent.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            if sent.unsent > 0 {
                e.push(format!("not sent (still queued {} s after the start): {}", a.seconds * 2 + 5, sent.unsent));
            }
            notes.push(format!("  {rate}/s errors: {}", e.join(", ")));
        }
        if missing > 0 || early > 0 {
            notes.push(format!(
                "  {rate}/s →NATS: {missing} placed orders not seen on NATS within the drain wait; {early} seen before their 201 reached the client (counted as ~0)"
            ));
        }
        let secs = (after.total.saturating_sub(before.total)) as f64 / TICKS_PER_SEC
            / std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0);
        let secs = secs.max(1e-3);
        let per = |d: u64| {
            if sent.ok == 0 { f64::NAN } else { d as f64 / TICKS_PER_SEC * 1_000.0 / sent.ok as f64 }
        };
        let (api_t, pg_t) = (after.api.saturating_sub(before.api), after.postgres.saturating_sub(before.postgres));
        let d = |x: u64, y: u64| x.saturating_sub(y);
        let all_t = api_t + pg_t + d(after.settle, before.settle) + d(after.generator, before.generator)
            + d(after.nats, before.nats) + d(after.engine, before.engine);
        cpu_lines.push(format!(
            "{:>7} {:>7.2} {:>7.2} {:>7.2} {:>8.2} {:>6.2} {:>7.2} {:>10.2}   {:>7.2} {:>7.2} {:>7.2} {:>9.0}",
            rate,
            cores(api_t, secs),
            cores(d(after.settle, before.settle), secs),
            cores(d(after.generator, before.generator), secs),
            cores(pg_t, secs),
            cores(d(after.nats, before.nats), secs),
            cores(d(after.engine, before.engine), secs),
            cores(d(after.busy, before.busy), secs),
            per(api_t),
            per(pg_t),
            per(all_t),
            // What the machine's cores could place if the stack had them all, at this cost.
            if sent.ok == 0 { f64::NAN } else {
                std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0) * 1_000.0 / per(all_t)
            },
        ));
        if p99 <= 50.0 && errors == 0 && best.is_none_or(|(_, r, _)| placed_per_s > r) {
            best = Some((rate, placed_per_s, p99));
        }
    }
    for n in &notes {
        println!("{n}");
    }
    println!();
    println!("CPU during each rate's window, in cores (of the machine's total):");
    println!(
        "{:>7} {:>7} {:>7} {:>7} {:>8} {:>6} {:>7} {:>10}   {:>7} {:>7} {:>7} {:>9}",
        "target", "API", "settle", "loadgen", "postgres", "nats", "engine", "machine",
        "API ms", "PG ms", "all ms", "ceiling/s"
    );
    for l in &cpu_lines {
        println!("{l}");
    }
    println!(
        "  (API = this process's other threads: actix workers, their blocking pool with the diesel calls; postgres = every postgres process on the machine, other users' too;\n   machine = all busy CPU, other users' builds included; \"… ms\" = CPU milliseconds per placement; ceiling/s = cores ÷ all ms: placements/s if the stack had every core)"
    );
    println!();
    match best {
        Some((rate, got, p99)) => println!(
            "target ≥ 5,000 placements/s with p99 ≤ 50 ms: best rate with p99 ≤ 50 ms and no errors here: {got:.0}/s (target rate {rate}/s, p99 {p99:.1} ms) → {}",
            if got >= 5_000.0 * 0.98 { "met" } else { "NOT met" }
        ),
        None => println!(
            "target ≥ 5,000 placements/s with p99 ≤ 50 ms: no rate in this sweep had p99 ≤ 50 ms without errors → NOT met"
        ),
    }
    Ok(())
}
