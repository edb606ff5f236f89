//! `loadtest sybil`: what identity clusters change for the anti-whale cap, on the real matching
//! core (`matching-core`, the engine's book) with the dev market's cap (25 % of a rolling
//! window). Pure: no NATS, no database; the API's part — which owner an ask carries — is
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

fn run_one(s: &Scenario, clustered: bool, min_owners: u32, rounds: u64) -> Shares {
    let config = MarketConfig {
        market: MarketId("SYBIL".into()),
        whale_cap_bps: 2_500,
        whale_window: 10_000,
        whale_min_volume: 20,
        whale_min_owners: min_owners,
        ..MarketConfig::default()
    };
    let mut book = OrderBook::new(config).expect("config");
    let (mut seq, mut next_id) = (0u64, 1u64);
    let mut out: Vec<Event> = Vec::new();
    let (mut op_vol, mut honest_vol, mut offered) = (0u64, 0u64, 0u64);
    let mut volume: std::collections::BTreeMap<u64, u64> = Default::default();
    // Accounts: 1..=honest are honest providers, then the operator's, then the studio.
    let operator_first = s.honest + 1;
    let studio = s.honest + s.operator + 1;
    let owner_of = |account: u64| -> u64 {
        if clustered && account >= operator_first { operator_first } else { account }
    };
    let mut apply = |kind: CommandKind, out: &mut Vec<Event>| {
        seq += 1;
        book.apply(&Command { seq, time: seq, kind }, out);
    };
    for _ in 0..rounds {
        let mut asks = Vec::new();
        for account in 1..studio {
            let id = next_id;
            next_id += 1;
            let price = if account >= operator_first { 99 } else { 100 };
            apply(
                CommandKind::Place(Place {
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
                }),
                &mut out,
            );
            asks.push((id, account));
        }
        offered += asks.len() as u64;
        out.clear();
        let bid = next_id;
        next_id += 1;
        apply(
            CommandKind::Place(Place {
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
            }),
            &mut out,
        );
        for e in out.drain(..) {
            if let EventKind::Fill { maker_account, qty, .. } = e.kind {
                *volume.entry(maker_account.0).or_default() += qty;
                if maker_account.0 >= operator_first {
                    op_vol += qty;
                } else {
                    honest_vol += qty;
                }
            }
        }
        for (id, account) in asks {
            apply(CommandKind::Cancel(Cancel { id: OrderId(id), account: AccountId(account) }), &mut out);
        }
        out.clear();
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
    Shares {
        operator: op_vol as f64 / matched.max(1) as f64,
        honest: honest_vol as f64 / matched.max(1) as f64,
        matched,
        offered,
        operator_reward: reward(true),
        honest_reward: reward(false),
        worst_gap,
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let scenarios = [
        Scenario { name: "1 honest provider vs 100 identities of one operator", honest: 1, operator: 100 },
        Scenario { name: "20 small providers vs a 50-node farm", honest: 20, operator: 50 },
        Scenario { name: "5 small providers vs a 5-node farm", honest: 5, operator: 5 },
    ];
    println!("anti-whale cap 25 % of a rolling window (min volume 20), {} rounds per row; each round every node offers 1 lot (the operator's at 99, the others at 100), a studio IOC takes half of them", args.rounds);
    println!();
    println!("| scenario | owner = | whale_min_owners | operator's share | the others' share | matched / offered | operator's reward | the others' reward | rolled over | worst node gap to formula |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for s in &scenarios {
        for (clustered, label) in [(false, "account"), (true, "cluster")] {
            for min_owners in [0u32, 4] {
                let r = run_one(s, clustered, min_owners, args.rounds);
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
