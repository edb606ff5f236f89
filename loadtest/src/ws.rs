//! `loadtest ws`: many WebSocket clients on the API's market feed while commands flow into the
//! real engine at a fixed rate. Measures per-delta delivery lag (the command's engine time, i.e.
//! its JetStream publish timestamp, → the client received the delta) with an HDR histogram,
//! messages/s delivered, clients dropped, and checks that every client received every delta
//! after its snapshot (no gaps) up to the engine's final sequence.
//!
//! By default it starts its own stack: a private nats-server (`GRIDBOOK_NATS_SERVER_BIN`, with
//! `sync_interval: always` like xtask's), `target/release/matching-engine` on `dev.toml`'s
//! markets, and `target/release/gridbook-api` (needs `GRIDBOOK_DATABASE_URL` for its
//! migrations). With `--api` and `--nats-url` it uses running ones instead.
//!
//! `cargo build --release -p matching-engine -p gridbook-api && \
//!  cargo run --release -p loadtest -- ws --clients 1000 --rate 200 --seconds 20`

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures::StreamExt;
use gridbook_testkit::{Engine, EngineConfig, Markets, Nats, NatsOptions, Proc, TempDir, free_port};
use gridbook_wire::market::L2Snapshot;
use gridbook_wire::subjects;
use hdrhistogram::Histogram;
use matching_core::{AccountId, Cancel, CommandKind, OrderId, Place, Side, TimeInForce};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Args)]
pub struct Args {
    /// WebSocket clients.
    #[arg(long, default_value_t = 1_000)]
    clients: usize,
    /// Commands per second (one NATS message each, so one delta each).
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// How long commands flow.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long, default_value = "EMBED-MINILM-L6")]
    market: String,
    /// A running API (`http://host:port`); default: start one.
    #[arg(long)]
    api: Option<String>,
    /// The NATS server the engine listens on (with `--api`); default: start a private one.
    #[arg(long)]
    nats_url: Option<String>,
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    #[arg(long, default_value = "matching-engine/engine/config/dev.toml")]
    engine_config: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(run_async(args))
}

/// What `start_stack` started (a private nats-server, the engine, the API), stopped on drop.
#[derive(Default)]
struct Procs {
    _nats: Option<Nats>,
    _engine: Option<Engine>,
    _api: Option<Proc>,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

async fn start_stack(args: &Args) -> anyhow::Result<(String, gridbook_testkit::NatsAccess, Procs, PathBuf)> {
    let db = std::env::var("GRIDBOOK_DATABASE_URL").context("GRIDBOOK_DATABASE_URL (eval \"$(cargo xtask env)\")")?;
    // The logs stay in this folder after the run.
    let dir = TempDir::new("loadtest-ws").keep();
    let nats = Nats::try_start("loadtest-ws", NatsOptions { sync_always: true, dir: Some(dir.clone()) }).await?;
    let nats_url = nats.url.clone();
    let engine_config = std::fs::canonicalize(&args.engine_config)?;
    let engine = Engine::try_start(
        &nats.access(),
        EngineConfig {
            markets: Markets::File(engine_config.clone()),
            bin: Some(args.bin_dir.join("matching-engine")),
            dir: Some(dir.clone()),
            ..EngineConfig::default()
        },
    )
    .context("starting matching-engine (cargo build --release -p matching-engine)")?;
    let api_port = free_port();
    let api = Proc::spawn(
        "gridbook-api",
        Command::new(args.bin_dir.join("gridbook-api"))
            .arg("run")
            .env("GRIDBOOK_BIND", format!("127.0.0.1:{api_port}"))
            .env("GRIDBOOK_NATS_URL", &nats_url)
            .env("GRIDBOOK_NATS_AUTH__NKEY_FILE", nats.keys.seed_file(gridbook_testkit::Service::Api))
            .env("GRIDBOOK_DATABASE_URL", db)
            .env("GRIDBOOK_MARKETS_FILE", &engine_config)
            .env("GRIDBOOK_SECURE_COOKIES", "false")
            // 1,000 clients from one address: the per-IP request limit would refuse most.
            .env("GRIDBOOK_RATE_LIMIT__PER_SECOND", "100000")
            .env("GRIDBOOK_RATE_LIMIT__BURST", "100000")
            .env("RUST_LOG", "warn"),
        &dir.join("api.log"),
    )
    .context("starting gridbook-api (cargo build --release -p gridbook-api)")?;
    let access = nats.access();
    let procs = Procs { _nats: Some(nats), _engine: Some(engine), _api: Some(api) };
    Ok((format!("http://127.0.0.1:{api_port}"), access, procs, dir))
}

#[derive(Deserialize)]
struct WsMsg {
    #[serde(rename = "type")]
    kind: String,
    seq: Option<u64>,
    first: Option<u64>,
    last: Option<u64>,
    time: Option<u64>,
}

#[derive(Default)]
struct Totals {
    deltas: AtomicU64,
    gaps: AtomicU64,
    closed: AtomicU64,
}

async fn client(
    url: String,
    lag: Arc<Mutex<Histogram<u64>>>,
    totals: Arc<Totals>,
    last_seq: Arc<AtomicU64>,
    connected: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let (mut ws, _) = match tokio_tungstenite::connect_async(&url).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("connect failed: {e}");
            return Err(e.into());
        }
    };
    connected.fetch_add(1, Ordering::Relaxed);
    let mut seq: Option<u64> = None;
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2)?;
    let mut n = 0u64;
    while let Some(msg) = ws.next().await {
        let text = match msg? {
            Message::Text(t) => t,
            Message::Close(c) => {
                totals.closed.fetch_add(1, Ordering::Relaxed);
                eprintln!("client closed by the server: {c:?}");
                break;
            }
            _ => continue,
        };
        let received = now_us();
        let m: WsMsg = serde_json::from_str(&text)?;
        match m.kind.as_str() {
            "snapshot" => seq = m.seq,
            "delta" => {
                let (first, last) = (m.first.unwrap_or(0), m.last.unwrap_or(0));
                if seq.map(|s| s + 1) != Some(first) {
                    totals.gaps.fetch_add(1, Ordering::Relaxed);
                }
                seq = Some(last);
                n += 1;
                let sent = m.time.unwrap_or(0) * 1_000;
                local.saturating_record(received.saturating_sub(sent).max(1));
                if n % 64 == 0 {
                    lag.lock().unwrap().add(&local)?;
                    local.reset();
                    totals.deltas.fetch_add(64, Ordering::Relaxed);
                }
            }
            _ => {}
        }
        last_seq.store(seq.unwrap_or(0), Ordering::Relaxed);
    }
    lag.lock().unwrap().add(&local)?;
    totals.deltas.fetch_add(n % 64, Ordering::Relaxed);
    Ok(())
}

async fn run_async(args: Args) -> anyhow::Result<()> {
    let (api, access, _procs, dir) = match &args.api {
        Some(api) => (
            api.clone(),
            gridbook_testkit::NatsAccess::with_env_keys(
                &args.nats_url.clone().or_else(|| std::env::var("GRIDBOOK_NATS_URL").ok()).context("--nats-url")?,
            ),
            Procs::default(),
            PathBuf::new(),
        ),
        None => start_stack(&args).await?,
    };
    let nats = access.try_connect(gridbook_testkit::Service::Api).await?;
    let js = async_nats::jetstream::new(nats.clone());
    let http = reqwest::Client::new();
    // Wait for the API's feed to be in sync with the engine.
    let start = Instant::now();
    loop {
        let ok = async {
            let v: serde_json::Value = http.get(format!("{api}/v1/markets/{}", args.market)).send().await?.json().await?;
            anyhow::Ok(v["seq"].is_u64())
        }
        .await
        .unwrap_or(false);
        if ok {
            break;
        }
        anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "the API did not come up in sync (logs in {})", dir.display());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    println!(
        "loadtest ws: {} clients on {}, {} commands/s (one message each) for {} s",
        args.clients, args.market, args.rate, args.seconds
    );
    let ws_url = format!("{}/v1/markets/{}/ws", api.replacen("http", "ws", 1), args.market);
    let lag = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let totals = Arc::new(Totals::default());
    let connected = Arc::new(AtomicU64::new(0));
    let mut seqs = Vec::with_capacity(args.clients);
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let s = Arc::new(AtomicU64::new(0));
        seqs.push(s.clone());
        tasks.push(tokio::spawn(client(ws_url.clone(), lag.clone(), totals.clone(), s, connected.clone())));
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Baseline: the same lag for a plain NATS subscriber of the events (engine + JetStream's
    // fsync + NATS), so the API's own share shows.
    let baseline = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let mut evt = nats.subscribe(subjects::market_evt(&args.market)).await?;
    let base = baseline.clone();
    let baseline_task = tokio::spawn(async move {
        while let Some(msg) = evt.next().await {
            let received = now_us();
            if let Ok(frames) = serde_json::from_slice::<Vec<gridbook_wire::market::EventFrame>>(&msg.payload)
                && let Some(f) = frames.last()
            {
                base.lock().unwrap().saturating_record(received.saturating_sub(f.time * 1_000).max(1));
            }
        }
    });
    let start = Instant::now();
    while connected.load(Ordering::Relaxed) < args.clients as u64 {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(60), "only {} clients connected", connected.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("{} clients connected in {:.1} s", args.clients, start.elapsed().as_secs_f64());

    // Drive commands at a fixed rate: places around 500, a third of them crossing, and cancels.
    let subject = subjects::market_cmd(&args.market);
    let total = args.rate * args.seconds;
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let base_id = now_us();
    let mut live: std::collections::VecDeque<(u64, u64)> = Default::default();
    let mut acks = std::collections::VecDeque::new();
    let t0 = Instant::now();
    let delivered_before = totals.deltas.load(Ordering::Relaxed);
    for i in 0..total {
        let due = t0 + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let cmd = if live.len() > 200 || (i % 4 == 3 && !live.is_empty()) {
            let (id, account) = live.pop_front().unwrap();
            CommandKind::Cancel(Cancel { id: OrderId(id), account: AccountId(account) })
        } else {
            let side = if next() % 2 == 0 { Side::Bid } else { Side::Ask };
            let account = 1 + next() % 10;
            let offset = next() % 20;
            let price = match side {
                Side::Bid => 490 + offset,
                Side::Ask => 500 + offset - 10,
            };
            let id = base_id + i;
            live.push_back((id, account));
            CommandKind::Place(Place {
                id: OrderId(id),
                account: AccountId(account),
                owner: None,
                side,
                price: Some(price),
                qty: 1 + next() % 20,
                tif: TimeInForce::Gtc,
                post_only: false,
                budget: None,
                stp: None,
            })
        };
        acks.push_back(js.publish(subject.clone(), serde_json::to_vec(&cmd)?.into()).await?);
        while acks.len() > 64 {
            acks.pop_front().unwrap().await?;
        }
    }
    for a in acks {
        a.await?;
    }
    let drive = t0.elapsed().as_secs_f64();

    // Every client must reach the engine's final sequence.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reply = nats.request(subjects::market_snapshot(&args.market), "".into()).await?;
    let final_seq = serde_json::from_slice::<L2Snapshot>(&reply.payload)?.seq;
    let wait = Instant::now();
    let behind = loop {
        let behind = seqs.iter().filter(|s| s.load(Ordering::Relaxed) < final_seq).count();
        if behind == 0 || wait.elapsed() > Duration::from_secs(30) {
            break behind;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let settle = wait.elapsed().as_secs_f64();
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    let deltas = totals.deltas.load(Ordering::Relaxed) - delivered_before;
    let h = lag.lock().unwrap();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!("commands: {total} in {drive:.1} s ({:.0}/s); engine final event seq {final_seq}", total as f64 / drive);
    println!(
        "deltas delivered: {deltas} ({:.0} msgs/s over {:.1} s; {:.0} per client)",
        deltas as f64 / (drive + settle),
        drive + settle,
        deltas as f64 / args.clients as f64
    );
    println!(
        "lag (engine command time → client received, ms): p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} samples)",
        ms(0.50),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0,
        h.len()
    );
    baseline_task.abort();
    let b = baseline.lock().unwrap();
    println!(
        "baseline (same, plain NATS subscriber of the events, ms): p50 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  ({} messages)",
        b.value_at_quantile(0.50) as f64 / 1000.0,
        b.value_at_quantile(0.99) as f64 / 1000.0,
        b.value_at_quantile(0.999) as f64 / 1000.0,
        b.max() as f64 / 1000.0,
        b.len()
    );
    let gaps = totals.gaps.load(Ordering::Relaxed);
    let closed = totals.closed.load(Ordering::Relaxed);
    println!("gaps: {gaps}; clients dropped by the server: {closed}; clients short of the final sequence: {behind}");
    if gaps == 0 && closed == 0 && behind == 0 {
        println!("every client received every delta after its snapshot, in sequence");
    } else {
        println!("NOT every client received every delta");
    }
    Ok(())
}
