//! Property tests and a long-running fuzz over random command sequences.
//!
//! After every command: the book's structural invariants hold (`check_invariants`: levels,
//! priority order inside a level, bounds, not crossed unless the anti-whale rule is on);
//! quantity is conserved (placed = 2×filled + resting + cancelled + expired + amended away,
//! and the events alone reproduce the book's L3 quantities); the fills of one taker come in
//! price-time priority. Over the whole sequence: replay gives byte-identical events, and a
//! snapshot (through JSON) + restore continues exactly like the original.
//!
//! `GRIDBOOK_FUZZ_COMMANDS=50000000 cargo test --release -p matching-core fuzz` runs longer.

#![allow(clippy::manual_is_multiple_of)] // `x % n == 0` reads better for decoding randomness

use std::collections::BTreeMap;

use matching_core::*;
use proptest::prelude::*;

/// Raw randomness for one command; decoded by [`decode`] (so proptest can shrink it).
type Raw = [u32; 6];

fn config(variant: u32) -> MarketConfig {
    let whale = variant & 1 == 1;
    MarketConfig {
        min_price: 80,
        max_price: 120,
        max_qty: 50,
        fee_bps: 10,
        whale_cap_bps: if whale { 3000 } else { 0 },
        whale_window: if whale { 50 } else { 0 },
        whale_min_volume: 20,
        max_orders: if variant & 2 == 2 { 12 } else { 30 },
        max_levels: if variant & 2 == 2 { 8 } else { 20 },
        stp: match (variant >> 2) % 3 {
            0 => StpMode::CancelNewest,
            1 => StpMode::CancelOldest,
            _ => StpMode::CancelBoth,
        },
        ..MarketConfig::default()
    }
}

fn decode(r: Raw, seq: &mut u64, time: &mut u64) -> Command {
    *time += (r[0] / 100 % 4) as u64;
    *seq += 1;
    let cmd_seq = if r[0] % 211 == 0 { *seq - 1 } else { *seq };
    let id = OrderId(1 + (r[1] % 40) as u64);
    let account = AccountId(1 + (r[2] % 4) as u64);
    let stp = match r[5] / 100 % 4 {
        0 => None,
        1 => Some(StpMode::CancelNewest),
        2 => Some(StpMode::CancelOldest),
        _ => Some(StpMode::CancelBoth),
    };
    let price = if r[4] % 89 == 0 {
        200
    } else {
        90 + (r[4] % 21) as u64
    };
    let qty = if r[1] % 97 == 0 {
        0
    } else {
        1 + (r[1] / 40 % 20) as u64
    };
    let kind = match r[0] % 100 {
        0..45 => {
            let side = if (r[3] >> 1) & 1 == 0 {
                Side::Bid
            } else {
                Side::Ask
            };
            let market = r[5] % 10 == 0;
            let (tif, post_only) = match r[5] / 10 % 10 {
                _ if market => (
                    if r[5] % 20 == 0 {
                        TimeInForce::Fok
                    } else {
                        TimeInForce::Ioc
                    },
                    false,
                ),
                6 => (
                    TimeInForce::Gtd {
                        expires_at: *time + 1 + (r[4] % 20) as u64,
                    },
                    false,
                ),
                7 => (TimeInForce::Ioc, false),
                8 => (TimeInForce::Fok, false),
                9 => (TimeInForce::Gtc, true),
                _ => (TimeInForce::Gtc, false),
            };
            let budget =
                (market && side == Side::Bid && r[2] % 7 != 0).then_some((r[2] % 3000) as u64);
            CommandKind::Place(Place {
                id,
                account,
                owner: (r[3] % 2 == 0).then_some(OwnerId(1 + (r[2] / 4 % 3) as u64)),
                side,
                price: (!market).then_some(price),
                qty,
                tif,
                post_only,
                budget,
                stp,
            })
        }
        45..60 => CommandKind::Cancel(Cancel { id, account }),
        60..90 => CommandKind::Amend(Amend {
            id,
            account,
            price: (r[4] % 3 != 0 && r[5] % 17 != 0).then_some(price),
            qty: (r[4] % 3 != 1 && r[5] % 17 != 0).then_some(qty),
        }),
        _ => CommandKind::Expire {},
    };
    Command {
        seq: cmd_seq,
        time: *time,
        kind,
    }
}

fn commands(raws: &[Raw]) -> Vec<Command> {
    let (mut seq, mut time) = (0, 0);
    raws.iter()
        .map(|r| decode(*r, &mut seq, &mut time))
        .collect()
}

/// Quantity bookkeeping rebuilt from events alone.
#[derive(Default)]
struct Ledger {
    remaining: BTreeMap<OrderId, u64>,
    placed: u64,
    filled: u64,
    cancelled: u64,
    expired: u64,
    reduced: u64,
}

impl Ledger {
    fn take(&mut self, id: OrderId, q: u64, left: u64) -> Result<(), String> {
        let r = self
            .remaining
            .get_mut(&id)
            .ok_or(format!("fill of unknown {id:?}"))?;
        if *r < q || *r - q != left {
            return Err(format!("fill of {id:?}: had {r}, filled {q}, left {left}"));
        }
        *r = left;
        Ok(())
    }

    fn apply(&mut self, events: &[Event]) -> Result<(), String> {
        for e in events {
            match e.kind {
                EventKind::Accepted { id, qty, .. } => {
                    self.placed += qty;
                    self.remaining.insert(id, qty);
                }
                EventKind::Fill {
                    maker,
                    taker,
                    qty,
                    maker_left,
                    taker_left,
                    ..
                } => {
                    if qty == 0 {
                        return Err("empty fill".into());
                    }
                    self.take(maker, qty, maker_left)?;
                    self.take(taker, qty, taker_left)?;
                    self.filled += qty;
                }
                EventKind::Cancelled { id, qty, .. } | EventKind::Expired { id, qty } => {
                    if self.remaining.remove(&id) != Some(qty) {
                        return Err(format!("cancel/expire of {id:?} with wrong qty {qty}"));
                    }
                    if matches!(e.kind, EventKind::Expired { .. }) {
                        self.expired += qty
                    } else {
                        self.cancelled += qty
                    }
                }
                EventKind::Amended { id, qty, .. } => {
                    let r = self.remaining.get_mut(&id).ok_or("amend of unknown")?;
                    if qty < *r {
                        self.reduced += *r - qty;
                    } else {
                        self.placed += qty - *r;
                    }
                    *r = qty;
                }
                EventKind::Rejected { .. } | EventKind::Delta { .. } => {}
            }
        }
        self.remaining.retain(|_, r| *r > 0);
        Ok(())
    }
}

fn l3(book: &OrderBook) -> BTreeMap<OrderId, RestingOrder> {
    book.orders(Side::Bid)
        .into_iter()
        .chain(book.orders(Side::Ask))
        .map(|o| (o.id, o))
        .collect()
}

/// Runs `cmds` checking the per-command invariants; returns the events as JSONL.
fn run_checked(cfg: &MarketConfig, cmds: &[Command]) -> Result<String, String> {
    let mut book = OrderBook::new(cfg.clone()).map_err(|e| e.to_string())?;
    let mut ledger = Ledger::default();
    let mut out = Vec::new();
    let mut jsonl = String::new();
    let mut next_seq = 1;
    let mut before = l3(&book);
    for (n, cmd) in cmds.iter().enumerate() {
        out.clear();
        book.apply(cmd, &mut out);
        let ctx = |e: String| format!("command #{n} {cmd:?}: {e}");
        if out.is_empty() && !matches!(cmd.kind, CommandKind::Expire {}) {
            return Err(ctx("no event".into()));
        }
        for e in &out {
            if e.seq != next_seq || e.cmd != cmd.seq {
                return Err(ctx(format!(
                    "event seq {} / cmd {} unexpected",
                    e.seq, e.cmd
                )));
            }
            next_seq += 1;
            jsonl += &serde_json::to_string(e).unwrap();
            jsonl.push('\n');
        }
        book.check_invariants().map_err(ctx)?;
        ledger.apply(&out).map_err(ctx)?;
        let after = l3(&book);
        let resting: u64 = after.values().map(|o| o.qty).sum();
        let now: BTreeMap<_, _> = after.iter().map(|(id, o)| (*id, o.qty)).collect();
        if now != ledger.remaining {
            return Err(ctx(format!(
                "events say {:?}, book has {now:?}",
                ledger.remaining
            )));
        }
        if ledger.placed
            != 2 * ledger.filled + resting + ledger.cancelled + ledger.expired + ledger.reduced
        {
            return Err(ctx("quantity not conserved".into()));
        }
        // Price-time priority of the fills of one taker.
        let mut last: Option<(Side, u64, u64)> = None;
        for e in &out {
            if let EventKind::Fill {
                maker,
                taker_side,
                price,
                ..
            } = e.kind
            {
                let m = before
                    .get(&maker)
                    .ok_or_else(|| ctx(format!("maker {maker:?} was not resting")))?;
                let key = match taker_side {
                    Side::Bid => price,
                    Side::Ask => u64::MAX - price,
                };
                if let Some((s, k, p)) = last
                    && s == taker_side
                    && (k, p) >= (key, m.priority)
                {
                    return Err(ctx("fills out of price-time order".into()));
                }
                last = Some((taker_side, key, m.priority));
            }
        }
        before = after;
    }
    Ok(jsonl)
}

fn events_jsonl(book: &mut OrderBook, cmds: &[Command]) -> String {
    let mut out = Vec::new();
    for c in cmds {
        book.apply(c, &mut out);
    }
    out.iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect()
}

/// Runs every check; returns the events (JSONL).
fn check_all(variant: u32, raws: &[Raw], split: usize) -> Result<String, String> {
    let cfg = config(variant);
    let cmds = commands(raws);
    let first = run_checked(&cfg, &cmds)?;
    // Replay: byte-identical.
    let again = events_jsonl(&mut OrderBook::new(cfg.clone()).unwrap(), &cmds);
    if first != again {
        return Err("replay differs".into());
    }
    // Snapshot at `split`, through JSON, restore, continue.
    let split = split % (cmds.len() + 1);
    let mut a = OrderBook::new(cfg).unwrap();
    let head = events_jsonl(&mut a, &cmds[..split]);
    let json = serde_json::to_string(&a.snapshot()).unwrap();
    let snap: Snapshot = serde_json::from_str(&json).unwrap();
    let mut b = OrderBook::restore(&snap).map_err(|e| e.to_string())?;
    if b.snapshot() != a.snapshot() {
        return Err("restored snapshot differs".into());
    }
    let tail_a = events_jsonl(&mut a, &cmds[split..]);
    let tail_b = events_jsonl(&mut b, &cmds[split..]);
    if tail_a != tail_b || head + &tail_a != first {
        return Err("restored book diverges".into());
    }
    if a.snapshot() != b.snapshot() {
        return Err("final snapshots differ".into());
    }
    Ok(first)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_replay_and_snapshot(
        variant in 0u32..12,
        raws in prop::collection::vec(any::<Raw>(), 0..300),
        split in any::<usize>(),
    ) {
        if let Err(e) = check_all(variant, &raws, split) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// splitmix64: the fuzz's own deterministic randomness.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Outcomes the fuzz must reach (counted in its event log, so a weak generator shows).
const NEEDLES: [&str; 12] = [
    "\"fill\"",
    "\"amended\"",
    "\"expired\"",
    "self_trade",
    "whale_cap",
    "\"budget\"",
    "fok_unfillable",
    "post_only_would_cross",
    "book_full",
    "too_many_levels",
    "out_of_sequence",
    "kept_priority\":true",
];

/// Long random runs with every per-command invariant checked, in books of 20,000 commands
/// (each with replay and snapshot checks). `GRIDBOOK_FUZZ_COMMANDS` sets the total.
#[test]
fn fuzz_random_commands() {
    let total: usize = std::env::var("GRIDBOOK_FUZZ_COMMANDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let seed: u64 = std::env::var("GRIDBOOK_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut rng = SplitMix(seed);
    let mut done = 0;
    let mut round = 0u32;
    let mut seen = [0usize; NEEDLES.len()];
    while done < total {
        let n = (total - done).min(20_000);
        let raws: Vec<Raw> = (0..n)
            .map(|_| {
                let (a, b, c) = (rng.next(), rng.next(), rng.next());
                [
                    a as u32,
                    (a >> 32) as u32,
                    b as u32,
                    (b >> 32) as u32,
                    c as u32,
                    (c >> 32) as u32,
                ]
            })
            .collect();
        let split = rng.next() as usize;
        match check_all(round % 12, &raws, split) {
            Err(e) => panic!("seed {seed} round {round}: {e}"),
            Ok(jsonl) => {
                for (i, needle) in NEEDLES.iter().enumerate() {
                    seen[i] += jsonl.matches(needle).count();
                }
            }
        }
        done += n;
        round += 1;
    }
    eprintln!("fuzz: {done} random commands, all invariants held (seed {seed})");
    for (needle, n) in NEEDLES.iter().zip(seen) {
        eprintln!("  {n:>9} × {needle}");
        assert!(n > 0, "the generator never produced {needle}");
    }
}

/// A snapshot that breaks the book's rules is refused, never half-restored.
#[test]
fn restore_rejects_bad_snapshots() {
    let cfg = config(0);
    let cmds = commands(&[
        [1, 2, 3, 0, 5, 11],
        [2, 7, 3, 2, 9, 11],
        [3, 9, 1, 0, 1, 11],
    ]);
    let mut book = OrderBook::new(cfg).unwrap();
    events_jsonl(&mut book, &cmds);
    let good = book.snapshot();
    assert!(OrderBook::restore(&good).is_ok());
    let order = RestingOrder {
        id: OrderId(99),
        account: AccountId(1),
        owner: OwnerId(1),
        side: Side::Bid,
        price: 100,
        qty: 1,
        priority: 1,
        tif: TimeInForce::Gtc,
        post_only: false,
        stp: None,
    };
    let bad = |f: &dyn Fn(&mut Snapshot)| {
        let mut s = good.clone();
        f(&mut s);
        OrderBook::restore(&s).err()
    };
    let bid_list = |o: RestingOrder| move |s: &mut Snapshot| s.bids = vec![o];
    assert!(
        bad(&bid_list(RestingOrder {
            price: 500,
            ..order
        }))
        .is_some(),
        "price out of range"
    );
    assert!(
        bad(&bid_list(RestingOrder { qty: 0, ..order })).is_some(),
        "empty order"
    );
    assert!(
        bad(&bid_list(RestingOrder {
            side: Side::Ask,
            ..order
        }))
        .is_some(),
        "wrong side"
    );
    assert!(
        bad(&bid_list(RestingOrder {
            tif: TimeInForce::Ioc,
            ..order
        }))
        .is_some(),
        "IOC resting"
    );
    assert!(
        bad(&|s| s.bids = vec![order, order]).is_some(),
        "duplicate id"
    );
    assert!(
        bad(&|s| s.bids = vec![
            order,
            RestingOrder {
                id: OrderId(98),
                price: 101,
                ..order
            }
        ])
        .is_some(),
        "order"
    );
    assert!(bad(&|s| s.config.min_price = 0).is_some(), "config");
    assert!(bad(&bid_list(order)).is_none());
}
