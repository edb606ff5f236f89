//! `loadtest book`: the pure order-book core on exchange-core's published mix, and the same
//! workload through the `orderbook-rs` crate in the same run.
//!
//! Workload (deterministic from `--seed`): a book pre-filled with `--orders` resting orders over
//! about `--levels` price levels (bids below the centre, asks above), then a stream of
//! 9% GTC (non-crossing), 3% IOC (crossing, sized to the best level so the book stays near its
//! size), 6% cancel and 82% amend-price (move a live order to another price on its side). The
//! stream is generated once through `matching-core` (so it knows which orders are still live)
//! and stored compactly; every measured run replays it on a fresh book. Accounts are unique per
//! order, so self-trade prevention never fires and both engines see the same book.
//!
//! Runs: (1) throughput, single thread, no per-op timing; (2) latency, paced at `--rate`
//! ops/s, each op timed from its scheduled start (so a stall delays the following ops and
//! shows in their latency) and, separately, its service time, into one HdrHistogram per op
//! type; (3) throughput of orderbook-rs on the same ops (`add_limit_order` GTC/IOC,
//! `cancel_order`, and its native modify `update_order(OrderUpdate::UpdatePrice)` for
//! amend-price, which it implements as cancel-then-add). Nothing here is asserted: it prints.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use matching_core::{
    AccountId, Amend, Cancel, Command, CommandKind, Event, EventKind, MarketConfig, OrderBook,
    OrderId, Place, Side, TimeInForce,
};

#[derive(clap::Args)]
pub struct Args {
    /// Operations in the matching-core throughput run.
    #[arg(long, default_value_t = 10_000_000)]
    ops: usize,
    /// Operations in the orderbook-rs throughput run (default: --ops / 10).
    #[arg(long)]
    peer_ops: Option<usize>,
    /// Seed of the workload generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Paced rate of the latency run, operations per second.
    #[arg(long, default_value_t = 1_000_000)]
    rate: u64,
    /// Operations in the latency run (default: min(--ops, 2,000,000)).
    #[arg(long)]
    latency_ops: Option<usize>,
    /// Resting orders before the run.
    #[arg(long, default_value_t = 1_000)]
    orders: usize,
    /// Price levels the resting orders spread over (half bids, half asks).
    #[arg(long, default_value_t = 750)]
    levels: u64,
}

const CENTER: u64 = 100_000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Gtc,
    Ioc,
    Cancel,
    Move,
}

const KINDS: [Kind; 4] = [Kind::Gtc, Kind::Ioc, Kind::Cancel, Kind::Move];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Gtc => "place GTC",
            Kind::Ioc => "place IOC",
            Kind::Cancel => "cancel",
            Kind::Move => "amend-price",
        }
    }
}

/// One operation, compact (16 bytes) so that millions fit in memory.
#[derive(Clone, Copy)]
struct Op {
    id: u32,
    price: u32,
    qty: u32,
    kind: Kind,
    bid: bool,
}

impl Op {
    fn side(self) -> Side {
        if self.bid { Side::Bid } else { Side::Ask }
    }

    fn command(self, seq: u64) -> Command {
        let id = OrderId(self.id as u64);
        let account = AccountId(self.id as u64);
        let kind = match self.kind {
            Kind::Gtc | Kind::Ioc => CommandKind::Place(Place {
                id,
                account,
                owner: None,
                side: self.side(),
                price: Some(self.price as u64),
                qty: self.qty as u64,
                tif: if self.kind == Kind::Gtc {
                    TimeInForce::Gtc
                } else {
                    TimeInForce::Ioc
                },
                post_only: false,
                budget: None,
                stp: None,
            }),
            Kind::Cancel => CommandKind::Cancel(Cancel { id, account }),
            Kind::Move => CommandKind::Amend(Amend {
                id,
                account,
                price: Some(self.price as u64),
                qty: None,
            }),
        };
        Command {
            seq,
            time: seq,
            kind,
        }
    }
}

/// xorshift64*: the benchmark's own deterministic randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn market() -> MarketConfig {
    MarketConfig {
        min_price: 1,
        max_price: 2 * CENTER,
        max_orders: 1 << 20,
        ..MarketConfig::default()
    }
}

struct Workload {
    prefill: Vec<Op>,
    ops: Vec<Op>,
}

/// Live orders of the generator's book: swap-remove vector + position map.
#[derive(Default)]
struct Live {
    orders: Vec<(u32, bool, u32)>,
    pos: HashMap<u32, usize>,
}

impl Live {
    fn add(&mut self, id: u32, bid: bool, price: u32) {
        self.pos.insert(id, self.orders.len());
        self.orders.push((id, bid, price));
    }
    fn remove(&mut self, id: u32) {
        if let Some(i) = self.pos.remove(&id) {
            self.orders.swap_remove(i);
            if let Some(&(moved, _, _)) = self.orders.get(i) {
                self.pos.insert(moved, i);
            }
        }
    }
}

fn generate(args: &Args, n: usize) -> anyhow::Result<Workload> {
    let mut rng = Rng(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let half = (args.levels / 2).max(1);
    let own_price = |rng: &mut Rng, bid: bool| -> u32 {
        let off = 1 + rng.below(half);
        (if bid { CENTER - off } else { CENTER + off }) as u32
    };
    let mut book = OrderBook::new(market())?;
    let mut live = Live::default();
    let mut events: Vec<Event> = Vec::new();
    let mut next_id = 1u32;
    let mut seq = 0u64;
    let mut apply = |book: &mut OrderBook, live: &mut Live, op: Op, seq: &mut u64| {
        *seq += 1;
        events.clear();
        book.apply(&op.command(*seq), &mut events);
        for e in &events {
            match e.kind {
                EventKind::Fill {
                    maker,
                    maker_left: 0,
                    ..
                } => live.remove(maker.0 as u32),
                EventKind::Cancelled { id, .. } => live.remove(id.0 as u32),
                _ => {}
            }
        }
        match op.kind {
            Kind::Gtc if book.order(OrderId(op.id as u64)).is_some() => {
                live.add(op.id, op.bid, op.price)
            }
            Kind::Move => {
                if let Some(&i) = live.pos.get(&op.id) {
                    live.orders[i].2 = op.price;
                }
            }
            _ => {}
        }
    };
    // Pre-fill: one order on each of the `levels` prices first (so the book really spans them),
    // the rest at random prices of the same range.
    let mut prefill = Vec::with_capacity(args.orders);
    for k in 0..args.orders as u64 {
        let (bid, price) = if k < 2 * half {
            let bid = k % 2 == 0;
            let off = 1 + k / 2;
            (bid, (if bid { CENTER - off } else { CENTER + off }) as u32)
        } else {
            let bid = rng.below(2) == 0;
            (bid, own_price(&mut rng, bid))
        };
        let op = Op {
            id: next_id,
            price,
            qty: 1 + rng.below(100) as u32,
            kind: Kind::Gtc,
            bid,
        };
        next_id += 1;
        apply(&mut book, &mut live, op, &mut seq);
        prefill.push(op);
    }
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let r = rng.below(100);
        let kind = match r {
            0..9 => Kind::Gtc,
            9..12 => Kind::Ioc,
            12..18 => Kind::Cancel,
            _ => Kind::Move,
        };
        let kind = if live.orders.is_empty() && matches!(kind, Kind::Cancel | Kind::Move) {
            Kind::Gtc
        } else {
            kind
        };
        let op = match kind {
            Kind::Gtc => {
                let bid = rng.below(2) == 0;
                let op = Op {
                    id: next_id,
                    price: own_price(&mut rng, bid),
                    qty: 1 + rng.below(100) as u32,
                    kind,
                    bid,
                };
                next_id += 1;
                op
            }
            Kind::Ioc => {
                let bid = rng.below(2) == 0;
                let best = book.depth(if bid { Side::Ask } else { Side::Bid }, 1);
                let qty = match best.first() {
                    Some(l) if live.orders.len() > args.orders => l.qty,
                    Some(l) => (l.qty / 2).max(1),
                    None => 1,
                };
                let price = if bid { CENTER + half } else { CENTER - half };
                let op = Op {
                    id: next_id,
                    price: price as u32,
                    qty: qty as u32,
                    kind,
                    bid,
                };
                next_id += 1;
                op
            }
            Kind::Cancel | Kind::Move => {
                let (id, bid, cur) = live.orders[rng.below(live.orders.len() as u64) as usize];
                let mut price = own_price(&mut rng, bid);
                if price == cur {
                    price = if bid {
                        (price - 1).max((CENTER - half) as u32)
                    } else {
                        (price + 1).min((CENTER + half) as u32)
                    };
                    if price == cur {
                        price = if bid { cur + 1 } else { cur - 1 };
                    }
                }
                Op {
                    id,
                    price,
                    qty: 0,
                    kind,
                    bid,
                }
            }
        };
        apply(&mut book, &mut live, op, &mut seq);
        ops.push(op);
    }
    Ok(Workload { prefill, ops })
}

fn fresh_book(w: &Workload) -> anyhow::Result<(OrderBook, u64)> {
    let mut book = OrderBook::new(market())?;
    let mut out = Vec::new();
    let mut seq = 0;
    for op in &w.prefill {
        seq += 1;
        book.apply(&op.command(seq), &mut out);
        out.clear();
    }
    Ok((book, seq))
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds")
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let n = args.ops;
    let peer_n = args.peer_ops.unwrap_or(n / 10).min(n);
    let lat_n = args.latency_ops.unwrap_or(n.min(2_000_000)).min(n);
    let t = Instant::now();
    let w = generate(&args, n)?;
    let mut counts = [0usize; 4];
    for op in &w.ops {
        counts[KINDS.iter().position(|k| *k == op.kind).unwrap_or(0)] += 1;
    }
    let (book0, _) = fresh_book(&w)?;
    println!(
        "loadtest book — seed {}, generated in {:.1?}",
        args.seed,
        t.elapsed()
    );
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "  machine: {cpus} CPUs, load average {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  pre-fill: {} resting orders over {} levels (bids {}, asks {})",
        book0.len(),
        book0.depth(Side::Bid, usize::MAX).len() + book0.depth(Side::Ask, usize::MAX).len(),
        book0.depth(Side::Bid, usize::MAX).len(),
        book0.depth(Side::Ask, usize::MAX).len()
    );
    print!("  mix of {n} ops:");
    for (k, c) in KINDS.iter().zip(counts) {
        print!(" {} {:.1}%", k.name(), 100.0 * c as f64 / n.max(1) as f64);
    }
    println!();

    // (1) Throughput, matching-core.
    let (mut book, mut seq) = fresh_book(&w)?;
    let mut out: Vec<Event> = Vec::with_capacity(64);
    let mut n_events = 0usize;
    let start = Instant::now();
    for op in &w.ops {
        seq += 1;
        book.apply(&op.command(seq), &mut out);
        n_events += out.len();
        out.clear();
    }
    let core_s = start.elapsed().as_secs_f64();
    black_box(n_events);
    let core_rate = n as f64 / core_s;
    println!();
    println!(
        "matching-core throughput: {n} ops in {core_s:.3} s = {:.0} ops/s (one thread)",
        core_rate
    );
    println!(
        "  {n_events} events; book after: {} orders, {} bid / {} ask levels",
        book.len(),
        book.depth(Side::Bid, usize::MAX).len(),
        book.depth(Side::Ask, usize::MAX).len()
    );

    // (2) Latency at a paced rate, matching-core.
    let (mut book, mut seq) = fresh_book(&w)?;
    let mut resp: Vec<Histogram<u64>> = (0..4).map(|_| hist()).collect();
    let mut serv: Vec<Histogram<u64>> = (0..4).map(|_| hist()).collect();
    let interval_ns = 1e9 / args.rate.max(1) as f64;
    let start = Instant::now();
    for (i, op) in w.ops[..lat_n].iter().enumerate() {
        let scheduled = start + Duration::from_nanos((i as f64 * interval_ns) as u64);
        let mut now = Instant::now();
        while now < scheduled {
            std::hint::spin_loop();
            now = Instant::now();
        }
        seq += 1;
        book.apply(&op.command(seq), &mut out);
        out.clear();
        let done = Instant::now();
        let k = KINDS.iter().position(|k| *k == op.kind).unwrap_or(0);
        resp[k].record((done - scheduled).as_nanos().max(1) as u64)?;
        serv[k].record((done - now).as_nanos().max(1) as u64)?;
    }
    let lat_s = start.elapsed().as_secs_f64();
    println!();
    println!(
        "matching-core latency: {lat_n} ops paced at {} ops/s (achieved {:.0} ops/s); ns, from the scheduled start (service time in brackets)",
        args.rate,
        lat_n as f64 / lat_s
    );
    println!(
        "  {:<12} {:>9} {:>14} {:>16} {:>16} {:>18} {:>14}",
        "op", "count", "p50", "p99", "p99.9", "max", "ops/s (1/mean)"
    );
    let mut all_r = hist();
    let mut all_s = hist();
    for (i, k) in KINDS.iter().enumerate() {
        let (r, s) = (&resp[i], &serv[i]);
        all_r.add(r)?;
        all_s.add(s)?;
        print_row(k.name(), r, s);
    }
    print_row("all", &all_r, &all_s);
    let stalls = all_s.count_between(50_000, u64::MAX);
    println!(
        "  {stalls} ops took over 50 µs of service time: the thread was descheduled (a shared or \
         loaded machine); each such stall delays the ops scheduled behind it"
    );

    // (3) Throughput, orderbook-rs, same ops.
    println!();
    let peer_rate = peer_throughput(&w, peer_n);
    println!(
        "orderbook-rs 0.15 throughput: {peer_n} ops = {:.0} ops/s (amend-price = update_order(UpdatePrice), cancel-then-add inside)",
        peer_rate.0
    );
    println!(
        "  {} of its calls returned an error (e.g. cancel/move of an order it had already filled)",
        peer_rate.1
    );
    println!();
    println!(
        "ratio matching-core / orderbook-rs: {:.1}x",
        core_rate / peer_rate.0
    );
    Ok(())
}

fn print_row(name: &str, r: &Histogram<u64>, s: &Histogram<u64>) {
    if r.is_empty() {
        println!("  {name:<12} {:>9}", 0);
        return;
    }
    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
    println!(
        "  {:<12} {:>9} {:>14} {:>16} {:>16} {:>18} {:>14.0}",
        name,
        r.len(),
        format!("{} [{}]", q(r, 0.5), q(s, 0.5)),
        format!("{} [{}]", q(r, 0.99), q(s, 0.99)),
        format!("{} [{}]", q(r, 0.999), q(s, 0.999)),
        format!("{} [{}]", r.max(), s.max()),
        1e9 / s.mean()
    );
}

/// Throughput of orderbook-rs on the first `n` ops; returns (ops/s, errors).
fn peer_throughput(w: &Workload, n: usize) -> (f64, usize) {
    use orderbook_rs::{DefaultOrderBook, Id, Side as PSide, TimeInForce as PTif};
    use pricelevel::{OrderUpdate, Price};
    let book = DefaultOrderBook::new("BENCH");
    let side = |op: &Op| if op.bid { PSide::Buy } else { PSide::Sell };
    for op in &w.prefill {
        let _ = book.add_limit_order(
            Id::from_u64(op.id as u64),
            op.price as u128,
            op.qty as u64,
            side(op),
            PTif::Gtc,
            None,
        );
    }
    let mut errors = 0usize;
    let start = Instant::now();
    for op in &w.ops[..n] {
        let id = Id::from_u64(op.id as u64);
        let ok = match op.kind {
            Kind::Gtc => book
                .add_limit_order(
                    id,
                    op.price as u128,
                    op.qty as u64,
                    side(op),
                    PTif::Gtc,
                    None,
                )
                .is_ok(),
            Kind::Ioc => book
                .add_limit_order(
                    id,
                    op.price as u128,
                    op.qty as u64,
                    side(op),
                    PTif::Ioc,
                    None,
                )
                .is_ok(),
            Kind::Cancel => book.cancel_order(id).is_ok(),
            Kind::Move => book
                .update_order(OrderUpdate::UpdatePrice {
                    order_id: id,
                    new_price: Price::new(op.price as u128),
                })
                .is_ok(),
        };
        if !ok {
            errors += 1;
        }
    }
    let s = start.elapsed().as_secs_f64();
    black_box(&book);
    (n as f64 / s, errors)
}
