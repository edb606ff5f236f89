//! `loadtest ledger`: transfers/s and per-transaction latency (p50/p99) of the escrow ledger on
//! PostgreSQL — one transfer per transaction and 100 per transaction, over many accounts
//! ("spread") and over a few hot accounts ("hot"). Runs in its own fresh database, dropped after.

use std::time::{Duration, Instant};

use anyhow::Context;
use gridbook_ledger::diesel::{self, RunQueryDsl};
use gridbook_ledger::{AccountCode, AccountId, NewAccount, NewTransfer, TransferId, store};
use hdrhistogram::Histogram;

#[derive(clap::Args)]
pub struct Args {
    /// PostgreSQL server (any database on it); a fresh database is created there.
    /// Defaults to $GRIDBOOK_DATABASE_URL.
    #[arg(long)]
    database_url: Option<String>,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent client connections (threads).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Accounts in the spread scenarios.
    #[arg(long, default_value_t = 10_000)]
    accounts: usize,
    /// Accounts in the hot scenarios.
    #[arg(long, default_value_t = 4)]
    hot: usize,
    /// Transfers per transaction in the batch scenarios.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// PostgreSQL `synchronous_commit` for the measured sessions. `on` (the default) is what the
    /// ledger runs with; `off` shows how much of the time is the commit's WAL flush (diagnostic only:
    /// a crash could lose the last acknowledged transfers).
    #[arg(long, default_value = "on")]
    synchronous_commit: String,
    /// Keep the database afterwards.
    #[arg(long)]
    keep: bool,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pair(&mut self, n: usize) -> (usize, usize) {
        let a = (self.next() % n as u64) as usize;
        let b = (a + 1 + (self.next() % (n as u64 - 1)) as usize) % n;
        (a, b)
    }
}

fn setup(url: &str, n: usize, tag: &str) -> anyhow::Result<Vec<AccountId>> {
    let mut c = gridbook_db::connect(url)?;
    let op = NewAccount::system("USD", AccountCode::Operator);
    store::create_account(&mut c, &op)?;
    let ids: Vec<AccountId> = (0..n)
        .map(|i| AccountId::derived(&["loadtest", tag, &i.to_string()]))
        .collect();
    for chunk in ids.chunks(1_000) {
        let news: Vec<NewAccount> = chunk
            .iter()
            .map(|id| NewAccount::new(*id, "USD", AccountCode::Studio))
            .collect();
        store::create_accounts(&mut c, &news)?;
        let fund: Vec<NewTransfer> = chunk
            .iter()
            .map(|id| {
                NewTransfer::posted(TransferId::new(), op.id, *id, 1_000_000_000_000, "deposit")
            })
            .collect();
        store::create_transfers(&mut c, &fund)?;
    }
    Ok(ids)
}

struct Figures {
    transfers: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
    errors: u64,
}

fn scenario(url: &str, a: &Args, accounts: &[AccountId], batch: usize) -> anyhow::Result<Figures> {
    let deadline = Duration::from_secs(a.seconds);
    let start = Instant::now();
    let results: Vec<anyhow::Result<(u64, u64, Histogram<u64>)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..a.workers)
            .map(|w| {
                s.spawn(move || -> anyhow::Result<(u64, u64, Histogram<u64>)> {
                    let mut c = gridbook_db::connect(url)?;
                    let sync = if a.synchronous_commit == "off" {
                        "off"
                    } else {
                        "on"
                    };
                    diesel::sql_query(format!("SET synchronous_commit = {sync}"))
                        .execute(&mut c)?;
                    let mut rng =
                        Rng(0x9E37_79B9_7F4A_7C15
                            ^ (w as u64 + 1).wrapping_mul(0x1234_5678_9abc_def1));
                    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                    let (mut done, mut errors) = (0u64, 0u64);
                    while start.elapsed() < deadline {
                        let reqs: Vec<NewTransfer> = (0..batch)
                            .map(|_| {
                                let (x, y) = rng.pair(accounts.len());
                                NewTransfer::posted(
                                    TransferId::new(),
                                    accounts[x],
                                    accounts[y],
                                    1 + (rng.next() % 1_000) as i64,
                                    "loadtest",
                                )
                            })
                            .collect();
                        let t = Instant::now();
                        match store::create_transfers(&mut c, &reqs) {
                            Ok(ts) => done += ts.len() as u64,
                            Err(_) => errors += 1,
                        }
                        hist.record(t.elapsed().as_micros().max(1) as u64)?;
                    }
                    Ok((done, errors, hist))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("worker panicked")))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut f = Figures {
        transfers: 0,
        elapsed,
        hist: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        errors: 0,
    };
    for r in results {
        let (d, e, h) = r?;
        f.transfers += d;
        f.errors += e;
        f.hist.add(h)?;
    }
    Ok(f)
}

pub fn run(mut a: Args) -> anyhow::Result<()> {
    if a.database_url.is_none() {
        a.database_url = std::env::var("GRIDBOOK_DATABASE_URL").ok();
    }
    let server = a
        .database_url
        .clone()
        .context("--database-url or GRIDBOOK_DATABASE_URL is required")?;
    let name = format!("gridbook_loadtest_{}", uuid_like());
    let url = gridbook_db::with_database(&server, &name);
    {
        let mut admin = gridbook_db::connect(&server).context("connect to the server")?;
        diesel::sql_query(format!("CREATE DATABASE \"{name}\"")).execute(&mut admin)?;
    }
    let result = (|| -> anyhow::Result<()> {
        let mut c = gridbook_db::connect(&url)?;
        gridbook_db::run_migrations(&mut c)?;
        let spread = setup(&url, a.accounts, "spread")?;
        let hot = setup(&url, a.hot, "hot")?;
        println!(
            "ledger load test: {} workers, {} s per scenario, {} spread accounts, {} hot accounts, batch {}, synchronous_commit {}",
            a.workers, a.seconds, a.accounts, a.hot, a.batch, a.synchronous_commit
        );
        println!(
            "{:<26} {:>12} {:>10} {:>11} {:>11} {:>8}",
            "scenario", "transfers/s", "tx/s", "p50 (µs)", "p99 (µs)", "errors"
        );
        for (label, accts, batch) in [
            ("single/tx, spread", &spread, 1),
            ("single/tx, hot", &hot, 1),
            ("batch/tx, spread", &spread, a.batch),
            ("batch/tx, hot", &hot, a.batch),
        ] {
            let f = scenario(&url, &a, accts, batch)?;
            let secs = f.elapsed.as_secs_f64();
            println!(
                "{:<26} {:>12.0} {:>10.0} {:>11} {:>11} {:>8}",
                format!("{label} ({batch})"),
                f.transfers as f64 / secs,
                f.hist.len() as f64 / secs,
                f.hist.value_at_quantile(0.50),
                f.hist.value_at_quantile(0.99),
                f.errors
            );
        }
        let v = store::check_invariants(&mut c)?;
        println!(
            "invariants after the run: {}",
            if v.is_empty() {
                "all hold".to_string()
            } else {
                format!("{v:?}")
            }
        );
        anyhow::ensure!(v.is_empty(), "invariants broken");
        Ok(())
    })();
    if !a.keep {
        let mut admin = gridbook_db::connect(&server)?;
        diesel::sql_query(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&mut admin)?;
    }
    result
}

fn uuid_like() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:x}_{}", t.as_nanos(), std::process::id())
}
