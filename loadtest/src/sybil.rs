//! `loadtest sybil`: what identity clusters change for the anti-whale cap and for rewards, with
//! the dev market's cap (25 % of a rolling window). By default on the in-process matching core
//! (`matching-core`, the engine's book: deterministic); with `--engine BIN` on a real
//! `matching-engine` process over NATS JetStream, one message per round. No database; the API's
//! part — which owner an ask carries — is
//! modelled by the mapping column (`account`: every account its own owner, as before clusters;
//! `cluster`: the operator's accounts are one owner, as `gridbook_db::identity` makes them when
//! they share a network or a machine).
//!
//! Each round every node posts a GTC ask of 1 lot (the operator's at 99, undercutting, the
//! others at 100), one studio IOC bid takes half of the lots on offer at up to 110, and the rest
//! of the asks are cancelled. Printed: each side's share of the matched volume, against the cap,
//! and its share of one epoch's reward pool when that volume is the epoch's verified work
//! (`gridbook_ledger::epoch::split`, the epoch closer's own function, cluster cap 25 %, full
//! quality and uptime), with the largest gap between a node's paid share and the published
//! formula's exact share (the reward-fairness check: within 1 %).

use matching_core::{
    AccountId, Cancel, Command, CommandKind, Event, EventKind, MarketConfig, MarketId, OrderBook,
    OrderId, OwnerId, Place, Side, TimeInForce,
};

#[derive(clap::Args)]
pub struct Args {
    /// Rounds per scenario.
    #[arg(long, default_value_t = 400)]
    rounds: u64,
    /// Match on a real `matching-engine` process over NATS JetStream instead of the in-process
    /// core: the binary to start (e.g. target/release/matching-engine). Needs the services
    /// (`cargo xtask services start`, `eval "$(cargo xtask env)"`).
    #[arg(long)]
    engine: Option<std::path::PathBuf>,
}

/// Where the commands go: the in-process core, or a real engine process (`EngineBook`).
trait Book {
    /// Applies one round's commands, in order, and returns their events.
    fn apply(&mut self, cmds: Vec<CommandKind>) -> anyhow::Result<Vec<Event>>;
}

struct CoreBook {
    book: OrderBook,
    seq: u64,
}

impl Book for CoreBook {
    fn apply(&mut self, cmds: Vec<CommandKind>) -> anyhow::Result<Vec<Event>> {
        let mut out = Vec::new();
        for kind in cmds {
            self.seq += 1;
            self.book.apply(&Command { seq: self.seq, time: self.seq, kind }, &mut out);
        }
        Ok(out)
    }
}

/// A `matching-engine run` process serving one market, fed one NATS message per round (the
/// round's commands as one array, as the API's outbox batches them); the round's events are
/// the event frames of that message (one per command).
struct EngineBook {
    rt: tokio::runtime::Runtime,
    js: async_nats::jetstream::Context,
    events: async_nats::Subscriber,
    market: String,
    round: u64,
    _engine: EngineProcess,
    _dir: gridbook_testkit::TempDir,
}

struct EngineProcess(std::process::Child);

impl Drop for EngineProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl EngineBook {
    fn start(bin: &std::path::Path, config: &MarketConfig, tag: &str) -> anyhow::Result<EngineBook> {
        use anyhow::Context as _;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let url = std::env::var("GRIDBOOK_NATS_URL").context("GRIDBOOK_NATS_URL (eval \"$(cargo xtask env)\")")?;
        let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
        let market = format!("SYBIL-{tag}-{stamp}");
        let dir = gridbook_testkit::TempDir::new("sybil-engine");
        let toml = format!(
            "engine_id = \"sybil-{stamp}\"\n\n[[markets]]\nmarket = \"{market}\"\nmin_price = 1\nmax_price = 1000\nmax_qty = 100000\nfee_bps = 0\n\
             whale_cap_bps = {}\nwhale_window = {}\nwhale_min_volume = {}\nwhale_min_owners = {}\nmax_orders = 1000000\nmax_levels = 100000\n",
            config.whale_cap_bps, config.whale_window, config.whale_min_volume, config.whale_min_owners
        );
        std::fs::write(dir.path().join("engine.toml"), toml)?;
        let access = gridbook_testkit::NatsAccess::with_env_keys(&url);
        let mut command = std::process::Command::new(bin);
        command.args(["run", "--config"]).arg(dir.path().join("engine.toml")).env("GRIDBOOK_NATS_URL", &url).env("RUST_LOG", "warn");
        if let Some(f) = access.nkey_file(gridbook_testkit::Service::Engine) {
            command.env("GRIDBOOK_NATS_NKEY_FILE", f);
        }
        let engine = EngineProcess(command.spawn().with_context(|| format!("starting {}", bin.display()))?);
        let (js, events) = rt.block_on(async {
            let client = access.try_connect(gridbook_testkit::Service::Api).await?;
            let js = async_nats::jetstream::new(client.clone());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while js.get_stream(gridbook_wire::streams::COMMANDS).await.is_err() {
                anyhow::ensure!(std::time::Instant::now() < deadline, "the engine did not create its streams");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let events = client.subscribe(gridbook_wire::subjects::market_evt(&market)).await?;
            tokio::time::sleep(std::time::Duration::from_millis(500)).await; // the market task subscribes
            anyhow::Ok((js, events))
        })?;
        Ok(EngineBook { rt, js, events, market, round: 0, _engine: engine, _dir: dir })
    }
}

impl Book for EngineBook {
    fn apply(&mut self, cmds: Vec<CommandKind>) -> anyhow::Result<Vec<Event>> {
        use futures::StreamExt;
        self.round += 1;
        let n = cmds.len();
        let (js, events, market, round) = (&self.js, &mut self.events, &self.market, self.round);
        self.rt.block_on(async move {
            let payload = serde_json::to_vec(&cmds)?;
            let msg = async_nats::jetstream::message::PublishMessage::build()
                .payload(payload.into())
                .message_id(format!("{market}.{round}"));
            let seq = js.send_publish(gridbook_wire::subjects::market_cmd(market), msg).await?.await?.sequence;
            let (mut frames, mut out) = (0, Vec::new());
            while frames < n {
                let msg = tokio::time::timeout(std::time::Duration::from_secs(30), events.next())
                    .await
                    .map_err(|_| anyhow::anyhow!("no event frames for round {round}"))?
                    .ok_or_else(|| anyhow::anyhow!("event subscription ended"))?;
                for f in serde_json::from_slice::<Vec<gridbook_wire::market::EventFrame>>(&msg.payload)? {
                    if f.stream_seq == seq {
                        frames += 1;
                        out.extend(f.events);
                    }
                }
            }
            anyhow::Ok(out)
        })
    }
}

struct Scenario {
    name: &'static str,
    /// Nodes of honest, independent providers (one account each).
    honest: u64,
    /// Nodes of the one operator, each under its own account.
    operator: u64,
}

struct Shares {
    operator: f64,
    honest: f64,
    matched: u64,
    offered: u64,
    /// Shares of the reward pool.
    operator_reward: f64,
    honest_reward: f64,
    /// Largest |paid share − formula share| of one node, as a fraction of the pool.
    worst_gap: f64,
}

/// The reward pool split in the simulation (credits' minor units).
const POOL: i64 = 1_000_000_000;
/// The reward cluster cap (`epoch::Rule::default().cluster_cap_bps`).
const REWARD_CAP_BPS: u32 = 2_500;

/// The published formula in exact (f64) arithmetic: clusters water-filled to the cap, nodes in
/// proportion within their cluster. Shares of the pool, per node.
fn formula_shares(nodes: &[(u64, f64)], cap: f64) -> Vec<f64> {
    use std::collections::BTreeMap;
    let mut w: BTreeMap<u64, f64> = BTreeMap::new();
    for (c, x) in nodes {
        if *x > 0.0 {
            *w.entry(*c).or_default() += x;
        }
    }
    let mut alloc: BTreeMap<u64, f64> = BTreeMap::new();
    let mut open: Vec<u64> = w.keys().copied().collect();
    let mut remaining = 1.0;
    while !open.is_empty() {
        let total: f64 = open.iter().map(|c| w[c]).sum();
        let over: Vec<u64> = open.iter().copied().filter(|c| remaining * w[c] / total > cap).collect();
        if over.is_empty() {
            for c in &open {
                alloc.insert(*c, remaining * w[c] / total);
            }
            break;
        }
        for c in &over {
            alloc.insert(*c, cap);
            remaining -= cap;
        }
        open.retain(|c| !over.contains(c));
    }
    nodes.iter().map(|(c, x)| if *x > 0.0 { alloc[c] * x / w[c] } else { 0.0 }).collect()
}

fn run_one(s: &Scenario, clustered: bool, min_owners: u32, rounds: u64, engine: Option<&std::path::Path>) -> anyhow::Result<Shares> {
    let config = MarketConfig {
        market: MarketId("SYBIL".into()),
        whale_cap_bps: 2_500,
        // The core's clock is the command sequence; the engine's is milliseconds.
        whale_window: if engine.is_some() { 1_000 } else { 10_000 },
        whale_min_volume: 20,
        whale_min_owners: min_owners,
        ..MarketConfig::default()
    };
    let mut book: Box<dyn Book> = match engine {
        Some(bin) => Box::new(EngineBook::start(bin, &config, if clustered { "C" } else { "A" })?),
        None => Box::new(CoreBook { book: OrderBook::new(config).map_err(|e| anyhow::anyhow!("config: {e:?}"))?, seq: 0 }),
    };
    let mut next_id = 1u64;
    let (mut op_vol, mut honest_vol, mut offered) = (0u64, 0u64, 0u64);
    let mut volume: std::collections::BTreeMap<u64, u64> = Default::default();
    // Accounts: 1..=honest are honest providers, then the operator's, then the studio.
    let operator_first = s.honest + 1;
    let studio = s.honest + s.operator + 1;
    let owner_of = |account: u64| -> u64 {
        if clustered && account >= operator_first { operator_first } else { account }
    };
    for _ in 0..rounds {
        // One round = one batch: every node's ask, the studio's IOC bid, the cancels.
        let mut cmds = Vec::new();
        let mut asks = Vec::new();
        for account in 1..studio {
            let id = next_id;
            next_id += 1;
            let price = if account >= operator_first { 99 } else { 100 };
            cmds.push(CommandKind::Place(Place {
                id: OrderId(id),
                account: AccountId(account),
                owner: Some(OwnerId(owner_of(account))),
                side: Side::Ask,
                price: Some(price),
                qty: 1,
                tif: TimeInForce::Gtc,
                post_only: false,
                budget: None,
                stp: None,
            }));
            asks.push((id, account));
        }
        offered += asks.len() as u64;
        let bid = next_id;
        next_id += 1;
        cmds.push(CommandKind::Place(Place {
            id: OrderId(bid),
            account: AccountId(studio),
            owner: None,
            side: Side::Bid,
            price: Some(110),
            qty: (asks.len() as u64 / 2).max(1),
            tif: TimeInForce::Ioc,
            post_only: false,
            budget: None,
            stp: None,
        }));
        for (id, account) in &asks {
            cmds.push(CommandKind::Cancel(Cancel { id: OrderId(*id), account: AccountId(*account) }));
        }
        for e in book.apply(cmds)? {
            if let EventKind::Fill { maker_account, qty, .. } = e.kind {
                *volume.entry(maker_account.0).or_default() += qty;
                if maker_account.0 >= operator_first {
                    op_vol += qty;
                } else {
                    honest_vol += qty;
                }
            }
        }
    }
    let matched = op_vol + honest_vol;
    // One epoch's rewards for that work: each node its matched volume × its price.
    let nodes: Vec<gridbook_ledger::epoch::NodeInput> = (1..studio)
        .map(|account| gridbook_ledger::epoch::NodeInput {
            node: uuid::Uuid::from_u128(account as u128),
            cluster: owner_of(account),
            work: (volume.get(&account).copied().unwrap_or(0) * if account >= operator_first { 99 } else { 100 }) as i64,
            quality_bps: 10_000,
            uptime_bps: 10_000,
        })
        .collect();
    let paid = gridbook_ledger::epoch::split(POOL, &nodes, REWARD_CAP_BPS).expect("split");
    let exact = formula_shares(
        &nodes.iter().map(|n| (n.cluster, gridbook_ledger::epoch::weight(n) as f64)).collect::<Vec<_>>(),
        REWARD_CAP_BPS as f64 / 10_000.0,
    );
    let worst_gap = paid
        .iter()
        .zip(&exact)
        .map(|(p, e)| (*p as f64 / POOL as f64 - e).abs())
        .fold(0.0, f64::max);
    let reward = |op: bool| -> f64 {
        nodes
            .iter()
            .zip(&paid)
            .filter(|(n, _)| (n.node.as_u128() as u64 >= operator_first) == op)
            .map(|(_, a)| *a as f64)
            .sum::<f64>()
            / POOL as f64
    };
    Ok(Shares {
        operator: op_vol as f64 / matched.max(1) as f64,
        honest: honest_vol as f64 / matched.max(1) as f64,
        matched,
        offered,
        operator_reward: reward(true),
        honest_reward: reward(false),
        worst_gap,
    })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let scenarios = [
        Scenario { name: "1 honest provider vs 100 identities of one operator", honest: 1, operator: 100 },
        Scenario { name: "20 small providers vs a 50-node farm", honest: 20, operator: 50 },
        Scenario { name: "5 small providers vs a 5-node farm", honest: 5, operator: 5 },
    ];
    match &args.engine {
        Some(bin) => println!("matching: a real {} process over NATS JetStream (one message per round), anti-whale window 1 s of wall clock", bin.display()),
        None => println!("matching: the in-process matching core (the engine's book), anti-whale window 10,000 commands"),
    }
    println!("anti-whale cap 25 % of a rolling window (min volume 20), {} rounds per row; each round every node offers 1 lot (the operator's at 99, the others at 100), a studio IOC takes half of them", args.rounds);
    println!();
    println!("| scenario | owner = | whale_min_owners | operator's share | the others' share | matched / offered | operator's reward | the others' reward | rolled over | worst node gap to formula |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for s in &scenarios {
        for (clustered, label) in [(false, "account"), (true, "cluster")] {
            for min_owners in [0u32, 4] {
                let r = run_one(s, clustered, min_owners, args.rounds, args.engine.as_deref())?;
                println!(
                    "| {} | {label} | {min_owners} | {:.1} % | {:.1} % | {} / {} | {:.1} % | {:.1} % | {:.1} % | {:.5} % |",
                    s.name,
                    r.operator * 100.0,
                    r.honest * 100.0,
                    r.matched,
                    r.offered,
                    r.operator_reward * 100.0,
                    r.honest_reward * 100.0,
                    (1.0 - r.operator_reward - r.honest_reward) * 100.0,
                    r.worst_gap * 100.0,
                );
                anyhow::ensure!(r.worst_gap <= 0.01, "reward shares off the published formula by {:.4} %", r.worst_gap * 100.0);
            }
        }
    }
    println!();
    println!("Rewards: one epoch's pool split by `epoch::split` with the reward cluster cap {} % (work = matched volume × price; quality and uptime full). A cluster above the cap gets the cap, the excess goes to the other clusters in proportion, and what no cluster may take rolls over to the next epoch.", REWARD_CAP_BPS / 100);
    println!("Without clusters each of the operator's accounts is its own owner, far under the cap, so the undercutting operator takes what it offers; as one cluster it is one owner, passed over at its cap whenever another owner offers an acceptable price (the cap is a priority rule; with whale_min_owners = 4 it applies only while 4 owners are active).");
    Ok(())
}
