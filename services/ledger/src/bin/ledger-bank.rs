//! Bank test worker: N threads doing random, idempotent ledger operations (transfers, holds,
//! posts, voids, expiries, linked batches) against the database given on the command line.
//! Every operation's ids and content derive from `seed + worker + counter`, so a restarted
//! process (after `kill -9`) re-sends the last operations and checks that each retry returns the
//! original result, recorded in `bank_journal` in the same transaction as the ledger effect.
//! Mismatches go to `bank_failures`; the test asserts it is empty.
//!
//! Usage: ledger-bank --database-url URL [--workers 4] [--ops 400] [--seed 7] [--accounts 8]

use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use gridbook_ledger::{
    AccountCode, AccountFlags, AccountId, LedgerError, NewAccount, NewTransfer, TransferId, store,
};

const LEDGER: &str = "BANK";
pub const FUNDING: i64 = 10_000;

struct Args {
    url: String,
    workers: u32,
    ops: u64,
    seed: u64,
    accounts: u32,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        url: String::new(),
        workers: 4,
        ops: 400,
        seed: 7,
        accounts: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--database-url" => a.url = v,
            "--workers" => a.workers = v.parse()?,
            "--ops" => a.ops = v.parse()?,
            "--seed" => a.seed = v.parse()?,
            "--accounts" => a.accounts = v.parse()?,
            _ => bail!("unknown argument {k}"),
        }
    }
    if a.url.is_empty() {
        bail!("--database-url is required");
    }
    Ok(a)
}

/// splitmix64: a deterministic stream per (seed, worker, seq).
struct Rng(u64);
impl Rng {
    fn new(seed: u64, worker: u32, seq: u64) -> Self {
        Rng(seed ^ ((worker as u64) << 48) ^ seq.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
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

pub fn account(i: u32) -> AccountId {
    AccountId::derived(&["bank", "account", &i.to_string()])
}
pub fn operator() -> AccountId {
    AccountId::derived(&["bank", "operator"])
}
fn tid(seed: u64, w: u32, seq: u64, part: &str) -> TransferId {
    TransferId::derived(&[
        "bank",
        &seed.to_string(),
        &w.to_string(),
        &seq.to_string(),
        part,
    ])
}

enum Op {
    Batch(Vec<NewTransfer>),
    Sweep,
}

fn op(a: &Args, start: DateTime<Utc>, w: u32, seq: u64) -> Op {
    let mut r = Rng::new(a.seed, w, seq);
    let pick2 = |r: &mut Rng| {
        let x = r.below(a.accounts as u64) as u32;
        let y = (x + 1 + r.below(a.accounts as u64 - 1) as u32) % a.accounts;
        (account(x), account(y))
    };
    let kind = r.below(100);
    let t = tid(a.seed, w, seq, "t");
    Op::Batch(match kind {
        0..40 => {
            let (x, y) = pick2(&mut r);
            vec![NewTransfer::posted(
                t,
                x,
                y,
                1 + r.below(800) as i64,
                "bank_transfer",
            )]
        }
        40..60 => {
            let (x, y) = pick2(&mut r);
            let expires = (r.below(3) == 0)
                .then(|| start + chrono::Duration::milliseconds(500 + r.below(15_000) as i64));
            vec![NewTransfer::pending(
                t,
                x,
                y,
                1 + r.below(800) as i64,
                expires,
                "bank_hold",
            )]
        }
        60..75 => {
            let pending = tid(a.seed, w, recent_hold(a, w, seq, r.below(3)), "t");
            let amount = (r.below(2) == 0).then(|| 1 + r.below(600) as i64);
            vec![NewTransfer::post(t, pending, amount, "bank_post")]
        }
        75..85 => {
            vec![NewTransfer::void(
                t,
                tid(a.seed, w, recent_hold(a, w, seq, r.below(3)), "t"),
                "bank_void",
            )]
        }
        85..95 => (0..3)
            .map(|i| {
                let (x, y) = pick2(&mut r);
                NewTransfer::posted(
                    tid(a.seed, w, seq, &format!("l{i}")),
                    x,
                    y,
                    1 + r.below(1_000) as i64,
                    "bank_linked",
                )
            })
            .collect(),
        _ => return Op::Sweep,
    })
}

/// The `skip`-th most recent earlier operation of this worker that created a hold (so posts and
/// voids mostly hit real pending transfers; some still race or find them resolved).
fn recent_hold(a: &Args, w: u32, seq: u64, skip: u64) -> u64 {
    let mut found = 0;
    for back in 1..=24 {
        let Some(s) = seq.checked_sub(back) else {
            break;
        };
        if (40..60).contains(&Rng::new(a.seed, w, s).below(100)) {
            if found == skip {
                return s;
            }
            found += 1;
        }
    }
    seq.saturating_sub(1)
}

fn setup(conn: &mut PgConnection, a: &Args) -> anyhow::Result<DateTime<Utc>> {
    for stmt in [
        "CREATE TABLE IF NOT EXISTS bank_meta (id int PRIMARY KEY, start_at timestamptz NOT NULL)",
        "CREATE TABLE IF NOT EXISTS bank_journal (worker int, seq bigint, outcome jsonb NOT NULL, PRIMARY KEY (worker, seq))",
        "CREATE TABLE IF NOT EXISTS bank_failures (at timestamptz DEFAULT now(), detail text NOT NULL)",
        "CREATE TABLE IF NOT EXISTS bank_rechecks (worker int NOT NULL, n bigint NOT NULL)",
        "INSERT INTO bank_meta VALUES (1, date_trunc('milliseconds', now())) ON CONFLICT DO NOTHING",
    ] {
        diesel::sql_query(stmt).execute(conn)?;
    }
    #[derive(QueryableByName)]
    struct Start {
        #[diesel(sql_type = diesel::sql_types::Timestamptz)]
        start_at: DateTime<Utc>,
    }
    let start: Start =
        diesel::sql_query("SELECT start_at FROM bank_meta WHERE id = 1").get_result(conn)?;
    let mut news = vec![NewAccount {
        id: operator(),
        ledger: LEDGER.into(),
        code: AccountCode::Operator,
        flags: AccountFlags::NONE,
        reference: None,
    }];
    news.extend((0..a.accounts).map(|i| NewAccount::new(account(i), LEDGER, AccountCode::Studio)));
    store::create_accounts(conn, &news)?;
    let funding: Vec<NewTransfer> = (0..a.accounts)
        .map(|i| {
            NewTransfer::posted(
                TransferId::derived(&["bank", "fund", &i.to_string()]),
                operator(),
                account(i),
                FUNDING,
                "deposit",
            )
        })
        .collect();
    store::create_transfers(conn, &funding)?;
    Ok(start.start_at)
}

#[derive(QueryableByName)]
struct JournalRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    seq: i64,
    #[diesel(sql_type = diesel::sql_types::Jsonb)]
    outcome: serde_json::Value,
}

fn journal(conn: &mut PgConnection, w: u32, from: i64, to: i64) -> anyhow::Result<Vec<JournalRow>> {
    Ok(diesel::sql_query("SELECT seq, outcome FROM bank_journal WHERE worker = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq")
        .bind::<diesel::sql_types::Integer, _>(w as i32)
        .bind::<diesel::sql_types::BigInt, _>(from)
        .bind::<diesel::sql_types::BigInt, _>(to)
        .load(conn)?)
}

fn fail(conn: &mut PgConnection, detail: String) {
    eprintln!("FAILURE: {detail}");
    let _ = diesel::sql_query("INSERT INTO bank_failures (detail) VALUES ($1)")
        .bind::<diesel::sql_types::Text, _>(detail)
        .execute(conn);
}

/// Re-sends a committed operation and checks the result is the original one.
fn recheck(
    conn: &mut PgConnection,
    a: &Args,
    start: DateTime<Utc>,
    w: u32,
    row: &JournalRow,
) -> anyhow::Result<bool> {
    let Some(original) = row.outcome.get("ok") else {
        return Ok(false);
    };
    let Op::Batch(reqs) = op(a, start, w, row.seq as u64) else {
        return Ok(false);
    };
    match store::create_transfers(conn, &reqs) {
        Ok(ts) if serde_json::to_value(&ts)? == *original => {}
        other => fail(
            conn,
            format!(
                "worker {w} seq {}: retry returned {other:?}, original {original}",
                row.seq
            ),
        ),
    }
    diesel::sql_query("INSERT INTO bank_rechecks VALUES ($1, 1)")
        .bind::<diesel::sql_types::Integer, _>(w as i32)
        .execute(conn)?;
    Ok(true)
}

fn worker(a: &Args, start: DateTime<Utc>, w: u32) -> anyhow::Result<(u64, u64)> {
    let mut conn = gridbook_db::connect(&a.url)?;
    let last: Vec<JournalRow> = journal(&mut conn, w, 0, i64::MAX)?;
    let next = last.last().map(|r| r.seq + 1).unwrap_or(0);
    let mut rechecked = 0;
    // After a restart: re-send the last committed operations.
    for row in last.iter().rev().take(10) {
        rechecked += recheck(&mut conn, a, start, w, row)? as u64;
    }
    let mut done = 0;
    for seq in next as u64..a.ops {
        let outcome = match op(a, start, w, seq) {
            Op::Sweep => {
                let n = store::expire_pending(&mut conn, Utc::now(), 100)?.len();
                serde_json::json!({ "sweep": n })
            }
            Op::Batch(reqs) => {
                let r = conn.transaction::<_, LedgerError, _>(|c| {
                    let ts = store::create_transfers(c, &reqs)?;
                    let v = serde_json::json!({ "ok": ts });
                    diesel::sql_query("INSERT INTO bank_journal VALUES ($1, $2, $3)")
                        .bind::<diesel::sql_types::Integer, _>(w as i32)
                        .bind::<diesel::sql_types::BigInt, _>(seq as i64)
                        .bind::<diesel::sql_types::Jsonb, _>(&v)
                        .execute(c)?;
                    Ok(ts)
                });
                match r {
                    Ok(_) => {
                        done += 1;
                        // Now and then re-send an earlier committed operation.
                        if seq % 7 == 0 && seq > 20 {
                            for row in journal(&mut conn, w, seq as i64 - 20, seq as i64)?
                                .iter()
                                .take(1)
                            {
                                rechecked += recheck(&mut conn, a, start, w, row)? as u64;
                            }
                        }
                        continue;
                    }
                    Err(
                        e @ (LedgerError::Database(_) | LedgerError::Conflict),
                    ) => {
                        return Err(e.into());
                    }
                    Err(e) => serde_json::json!({ "rejected": e.code() }),
                }
            }
        };
        diesel::sql_query("INSERT INTO bank_journal VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind::<diesel::sql_types::Integer, _>(w as i32)
            .bind::<diesel::sql_types::BigInt, _>(seq as i64)
            .bind::<diesel::sql_types::Jsonb, _>(&outcome)
            .execute(&mut conn)?;
        done += 1;
        if seq % 50 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok((done, rechecked))
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    let mut conn = gridbook_db::connect(&a.url)?;
    gridbook_db::run_migrations(&mut conn).map_err(|e| anyhow::anyhow!("{e}"))?;
    let start = setup(&mut conn, &a)?;
    let results: Vec<anyhow::Result<(u64, u64)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..a.workers)
            .map(|w| {
                s.spawn({
                    let a = &a;
                    move || worker(a, start, w)
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
    let (mut done, mut rechecked) = (0, 0);
    for r in results {
        let (d, c) = r?;
        done += d;
        rechecked += c;
    }
    println!("{{\"ops\": {done}, \"retries_checked\": {rechecked}}}");
    Ok(())
}
