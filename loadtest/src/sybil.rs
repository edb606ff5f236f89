//! `loadtest sybil`: what identity clusters change for the anti-whale cap, on the real matching
//! core (`matching-core`, the engine's book) with the dev market's cap (25 % of a rolling
//! window). Pure: no NATS, no database; the API's part — which owner an ask carries — is
//! modelled by the mapping column (`account`: every account its own owner, as before clusters;
//! `cluster`: the operator's accounts are one owner, as `gridbook_db::identity` makes them when
//! they share a network or a machine).
//!
//! Each round every node posts a GTC ask of 1 lot (the operator's at 99, undercutting, the
//! others at 100), one studio IOC bid takes half of the lots on offer at up to 110, and the rest
//! of the asks are cancelled. Printed: each side's share of the matched volume, against the cap.
//! Reward shares are not printed: reward epochs are not built yet.

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
    Shares {
        operator: op_vol as f64 / matched.max(1) as f64,
        honest: honest_vol as f64 / matched.max(1) as f64,
        matched,
        offered,
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
    println!("| scenario | owner = | whale_min_owners | operator's share | the others' share | matched / offered |");
    println!("|---|---|---|---|---|---|");
    for s in &scenarios {
        for (clustered, label) in [(false, "account"), (true, "cluster")] {
            for min_owners in [0u32, 4] {
                let r = run_one(s, clustered, min_owners, args.rounds);
                println!(
                    "| {} | {label} | {min_owners} | {:.1} % | {:.1} % | {} / {} |",
                    s.name,
                    r.operator * 100.0,
                    r.honest * 100.0,
                    r.matched,
                    r.offered
                );
            }
        }
    }
    println!();
    println!("Without clusters each of the operator's accounts is its own owner, far under the cap, so the undercutting operator takes what it offers; as one cluster it is one owner, passed over at its cap whenever another owner offers an acceptable price (the cap is a priority rule; with whale_min_owners = 4 it applies only while 4 owners are active).");
    Ok(())
}
