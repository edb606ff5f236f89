//! `loadtest engine`: simulated studios (bids) and providers (asks) place, amend and cancel
//! orders over NATS JetStream into a real `matching-engine run` process that this scenario
//! starts; it measures sustained commands/s, end-to-end latency (command publish → its event
//! frame received by a subscriber) with HDR histograms, and the CPU used by the engine and by
//! nats-server.
//!
//! Run with the services up (`cargo xtask services start`):
//! `cargo build --release -p matching-engine && cargo run --release -p loadtest -- engine`
//!
//! `--compare-cluster` (issue 14) measures the same runs twice in one invocation, on a private
//! single nats-server and on a private three-server cluster (both `sync_interval: always`,
//! streams with 1 and 3 replicas), and prints the cluster's throughput as a share of the single
//! server's. On one machine the three servers share its cores and disk, so the figure is a
//! floor for a cluster on three machines, not a forecast.

use std::{
    path::PathBuf,
    process::{Child, Command as Proc},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage as Publish};
use futures::StreamExt;
use gridbook_wire::{market::EventFrame, streams, subjects};
use hdrhistogram::Histogram;
use matching_core::{AccountId, Amend, Cancel, CommandKind, OrderId, Place, Side, TimeInForce};

#[derive(clap::Args)]
pub struct Args {
    /// NATS server (default: GRIDBOOK_NATS_URL, else the xtask port).
    #[arg(long)]
    nats_url: Option<String>,
    /// Market counts to run one after another, e.g. `1,2,4`.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    markets: Vec<usize>,
    /// Commands per market per run.
    #[arg(long, default_value_t = 200_000)]
    commands: usize,
    /// Target commands/s over all markets (0 = as fast as the bounded pipeline allows).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Most command messages published but not yet acknowledged by JetStream, per market.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Commands per NATS message (1 = one message per command; the engine takes arrays of up
    /// to 4,096). With `sync_interval: always` every message costs an fsync.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Simulated studios and providers per market.
    #[arg(long, default_value_t = 50)]
    traders: u64,
    /// The engine binary (built with `cargo build --release -p matching-engine`).
    #[arg(long, default_value = "target/release/matching-engine")]
    engine_bin: PathBuf,
    /// nats-server's pid file, for its CPU use.
    #[arg(long, default_value = ".gridbook/nats/pid")]
    nats_pid_file: PathBuf,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Instead of the shared server: each run on a private single server, then on a private
    /// three-server cluster (3 replicas), with the ratio.
    #[arg(long)]
    compare_cluster: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(run_async(args))
}

async fn run_async(args: Args) -> anyhow::Result<()> {
    if args.compare_cluster {
        return compare_cluster(&args).await;
    }
    let url = args
        .nats_url
        .clone()
        .or_else(|| std::env::var("GRIDBOOK_NATS_URL").ok())
        .unwrap_or_else(|| "nats://127.0.0.1:44222".into());
    let access = gridbook_testkit::NatsAccess::with_env_keys(&url);
    let nats_pids: Vec<u32> = std::fs::read_to_string(&args.nats_pid_file).ok().and_then(|s| s.trim().parse().ok()).into_iter().collect();
    println!(
        "loadtest engine: {} commands per market, {} per message, rate {}, in-flight {} messages per market, {} traders per market",
        args.commands,
        args.batch,
        if args.rate == 0 { "unpaced".to_string() } else { format!("{}/s", args.rate) },
        args.in_flight,
        args.traders
    );
    println!(
        "{:>7} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "markets", "commands", "cmds/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "engine CPU", "nats CPU"
    );
    for &n in &args.markets {
        let r = one_run(&args, &access, &nats_pids, n).await?;
        print_row(&n.to_string(), &r);
    }
    println!("(CPU: share of one core over the run; the machine's cores are shared by the generator, the engine and nats-server)");
    Ok(())
}

fn print_row(label: &str, r: &RunResult) {
    println!(
        "{:>7} {:>12} {:>12.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.0}% {:>9.0}%",
        label,
        r.commands,
        r.commands as f64 / r.seconds,
        r.latency.value_at_quantile(0.50) as f64 / 1000.0,
        r.latency.value_at_quantile(0.99) as f64 / 1000.0,
        r.latency.value_at_quantile(0.999) as f64 / 1000.0,
        r.latency.max() as f64 / 1000.0,
        r.engine_cpu * 100.0,
        r.nats_cpu * 100.0,
    );
}

/// `--compare-cluster`: every market count on a private single server and on a private
/// three-server cluster, in this one process, then the cluster's commands/s over the single's.
async fn compare_cluster(args: &Args) -> anyhow::Result<()> {
    use gridbook_testkit::{CLUSTER_SIZE, Nats, NatsCluster, NatsOptions};
    let options = || NatsOptions { sync_always: true, dir: None };
    let single = Nats::try_start("loadtest-single", options()).await?;
    let cluster = NatsCluster::try_start("loadtest-cluster", options()).await?;
    let single_pids: Vec<u32> = single.pid().into_iter().collect();
    let cluster_pids: Vec<u32> = (0..CLUSTER_SIZE).filter_map(|i| cluster.pid(i)).collect();
    println!(
        "{:>7} {:>12} {:>12} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "markets", "commands", "cmds/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "engine CPU", "nats CPU"
    );
    for &n in &args.markets {
        let one = one_run(args, &single.access(), &single_pids, n).await?;
        print_row(&format!("{n} R1"), &one);
        let three = one_run(args, &cluster.access(), &cluster_pids, n).await?;
        print_row(&format!("{n} R3"), &three);
        let rate = |r: &RunResult| r.commands as f64 / r.seconds;
        println!(
            "{n} market(s): the {CLUSTER_SIZE}-server cluster (3 replicas) does {:.0} commands/s, {:.2}x the single server's {:.0}",
            rate(&three),
            rate(&three) / rate(&one),
            rate(&one)
        );
    }
    println!("(R1: one private nats-server; R3: three on this machine, sharing its cores and disk; nats CPU summed over the servers; both sync_interval: always)");
    Ok(())
}

struct RunResult {
    commands: u64,
    seconds: f64,
    /// microseconds
    latency: Histogram<u64>,
    engine_cpu: f64,
    nats_cpu: f64,
}

struct EngineProc(Child);
impl Drop for EngineProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn one_run(args: &Args, access: &gridbook_testkit::NatsAccess, nats_pids: &[u32], n_markets: usize) -> anyhow::Result<RunResult> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() % 1_000_000_000;
    let markets: Vec<String> = (0..n_markets).map(|i| format!("LOAD-{stamp}-{i}")).collect();
    let dir = std::env::temp_dir().join(format!("gridbook-loadtest-{stamp}"));
    std::fs::create_dir_all(&dir)?;
    let mut config = "engine_id = \"loadtest\"\nsnapshot_every = 100000\nbatch_max = 1024\n".to_string();
    for m in &markets {
        config.push_str(&format!(
            "\n[[markets]]\nmarket = \"{m}\"\nmin_price = 1\nmax_price = 100000\nmax_qty = 1000000\nfee_bps = 100\nmax_orders = 1000000\nmax_levels = 100000\n"
        ));
    }
    std::fs::write(dir.join("engine.toml"), config)?;
    // The engine and this generator connect as market services with the server's keys, as
    // under `cargo xtask run`.
    let mut command = Proc::new(&args.engine_bin);
    command
        .args(["run", "--config"])
        .arg(dir.join("engine.toml"))
        .env("GRIDBOOK_NATS_URL", &access.url)
        .env("GRIDBOOK_NATS_REPLICAS", access.replicas.to_string())
        .env("RUST_LOG", "warn");
    if let Some(f) = access.nkey_file(gridbook_testkit::Service::Engine) {
        command.env("GRIDBOOK_NATS_NKEY_FILE", f);
    }
    let engine = EngineProc(
        command
            .spawn()
            .with_context(|| format!("starting {} (build it with cargo build --release -p matching-engine)", args.engine_bin.display()))?,
    );
    let client = access.try_connect(gridbook_testkit::Service::Api).await?;
    let js = jetstream::ContextBuilder::new()
        .max_ack_inflight(args.in_flight * n_markets)
        .backpressure_on_inflight(true)
        .build(client.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    while js.get_stream(streams::COMMANDS).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the engine did not create its streams");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // let the market tasks subscribe

    // Receivers: (command stream seq, received at) per market, joined with publish times after.
    let received: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::new(Mutex::new(Vec::with_capacity(args.commands * n_markets)));
    let mut subs = vec![];
    for m in &markets {
        let mut sub = client.subscribe(subjects::market_evt(m)).await?;
        let received = received.clone();
        subs.push(tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let at = Instant::now();
                if let Ok(frames) = serde_json::from_slice::<Vec<EventFrame>>(&msg.payload) {
                    let mut r = received.lock().unwrap();
                    r.extend(frames.iter().map(|f| (f.stream_seq, at)));
                }
            }
        }));
    }

    let engine_pid = engine.0.id();
    let nats_ticks = || (!nats_pids.is_empty()).then(|| nats_pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>());
    let cpu0 = (cpu_ticks(engine_pid), nats_ticks());
    let start = Instant::now();
    let per_market_rate = args.rate as f64 / n_markets as f64;
    let mut publishers = vec![];
    for (i, m) in markets.iter().enumerate() {
        let (js, m) = (js.clone(), m.clone());
        let (count, traders, seed, in_flight, batch) = (args.commands, args.traders, args.seed + i as u64, args.in_flight, args.batch.max(1));
        publishers.push(tokio::spawn(async move { publish_market(js, m, count, traders, seed, per_market_rate, in_flight, batch).await }));
    }
    let mut sent: Vec<(u64, Instant)> = vec![];
    for p in publishers {
        sent.extend(p.await??);
    }
    // wait for every frame (every command in this scenario yields at least one event)
    let total = args.commands * n_markets;
    let wait_deadline = Instant::now() + Duration::from_secs(120);
    while received.lock().unwrap().len() < total {
        anyhow::ensure!(Instant::now() < wait_deadline, "engine did not deliver all frames");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last_at = received.lock().unwrap().iter().map(|(_, t)| *t).max().unwrap_or(start);
    let seconds = (last_at - start).as_secs_f64();
    let cpu1 = (cpu_ticks(engine_pid), nats_ticks());
    for s in subs {
        s.abort();
    }
    drop(engine);

    sent.sort_unstable_by_key(|(seq, _)| *seq);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for (seq, at) in received.lock().unwrap().iter() {
        if let Ok(i) = sent.binary_search_by_key(seq, |(s, _)| *s) {
            latency.record(at.saturating_duration_since(sent[i].1).as_micros().max(1) as u64)?;
        }
    }
    let hz = 100.0; // USER_HZ on Linux
    Ok(RunResult {
        commands: total as u64,
        seconds,
        latency,
        engine_cpu: (cpu1.0 - cpu0.0) as f64 / hz / seconds,
        nats_cpu: match (cpu0.1, cpu1.1) {
            (Some(a), Some(b)) => (b - a) as f64 / hz / seconds,
            _ => f64::NAN,
        },
    })
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// splitmix64: the generator's own deterministic randomness.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Studios bid, providers ask, around a mid of 10,000 ticks: 55% place (10% of them IOC),
/// 25% amend (price), 20% cancel; `batch` commands per message. Returns (stream seq, published
/// at) per message.
async fn publish_market(
    js: jetstream::Context,
    market: String,
    count: usize,
    traders: u64,
    seed: u64,
    rate: f64,
    in_flight: usize,
    batch: usize,
) -> anyhow::Result<Vec<(u64, Instant)>> {
    let subject = subjects::market_cmd(&market);
    let mut rng = Rng(seed);
    let mut live: Vec<(u64, u64, Side)> = vec![];
    let mut acks = std::collections::VecDeque::new();
    let mut out = Vec::with_capacity(count);
    let mut pending: Vec<CommandKind> = Vec::with_capacity(batch);
    let start = Instant::now();
    for i in 0..count as u64 {
        if rate > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now + Duration::from_millis(1) {
                tokio::time::sleep(due - now).await;
            }
        }
        let roll = rng.below(100);
        let kind = if roll < 55 || live.len() < 100 {
            let account = rng.below(traders) + 1;
            let side = if account % 2 == 0 { Side::Bid } else { Side::Ask };
            let offset = rng.below(50);
            let price = if side == Side::Bid { 10_000 - offset } else { 10_000 + offset - 10 };
            let tif = if rng.below(10) == 0 { TimeInForce::Ioc } else { TimeInForce::Gtc };
            let id = i + 1;
            if tif == TimeInForce::Gtc {
                live.push((id, account, side));
            }
            CommandKind::Place(Place {
                id: OrderId(id),
                account: AccountId(account),
                owner: None,
                side,
                price: Some(price),
                qty: rng.below(100) + 1,
                tif,
                post_only: false,
                budget: None,
                stp: None,
            })
        } else if roll < 80 {
            let (id, account, side) = live[rng.below(live.len() as u64) as usize];
            let offset = rng.below(50);
            let price = if side == Side::Bid { 10_000 - offset } else { 10_000 + offset - 10 };
            CommandKind::Amend(Amend { id: OrderId(id), account: AccountId(account), price: Some(price), qty: None })
        } else {
            let (id, account, _) = live.swap_remove(rng.below(live.len() as u64) as usize);
            CommandKind::Cancel(Cancel { id: OrderId(id), account: AccountId(account) })
        };
        pending.push(kind);
        if pending.len() < batch && i + 1 < count as u64 {
            continue;
        }
        let payload = if batch == 1 { serde_json::to_vec(&pending[0])? } else { serde_json::to_vec(&pending)? };
        pending.clear();
        let at = Instant::now();
        let ack = js
            .send_publish(subject.clone(), Publish::build().payload(payload.into()).message_id(format!("{market}.{i}")))
            .await?;
        acks.push_back((ack, at));
        while acks.len() >= in_flight {
            let (ack, at) = acks.pop_front().unwrap();
            out.push((ack.await?.sequence, at));
        }
    }
    for (ack, at) in acks {
        out.push((ack.await?.sequence, at));
    }
    Ok(out)
}
