//! Bank test worker: N threads doing random, idempotent ledger operations (transfers, holds,
//! posts, voids, expiries, linked batches) against the database given on the command line.
//! Every operation's ids and content derive from `seed + worker + counter`, so a restarted
//! process (after `kill -9`) re-sends the last operations and checks that each retry returns the
//! original result, recorded in `bank_journal` in the same transaction as the ledger effect.
//! Mismatches go to `bank_failures`; the test asserts it is empty.
//!
//!
//! For the failover test (`--reconnect-secs N`, `--acked FILE`): a worker whose connection
//! breaks (the primary died) reconnects through the same URL (a multi-host URL with
//! `target_session_attrs=read-write` reaches the promoted standby) for up to N seconds and
//! continues exactly as a restarted process would: the operation in flight has an unknown
//! outcome, which the journal resolves (its row commits in the same transaction as the ledger
//! effect: present = committed, absent = not, so it runs again with the same ids). Every
//! outcome the database acknowledged is appended to FILE as one JSON line
//! `{"w", "seq", "at_us", "server", "outcome"}` (`at_us`: microseconds since the Unix epoch,
//! when the commit returned; `server`: the port of the server the session reached), so the test can check each acknowledged one against the new primary.
//! Without `--reconnect-secs` a database error ends the worker, as before.
//!
//! Usage: ledger-bank --database-url URL [--workers 4] [--ops 400] [--seed 7] [--accounts 8]
//!        [--reconnect-secs 0] [--acked FILE]

use std::io::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
    reconnect_secs: u64,
    acked: Option<Mutex<std::fs::File>>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        url: String::new(),
        workers: 4,
        ops: 400,
        seed: 7,
        accounts: 8,
        reconnect_secs: 0,
        acked: None,
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
            "--reconnect-secs" => a.reconnect_secs = v.parse()?,
            "--acked" => {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&v)
                    .with_context(|| format!("opening --acked file {v}"))?;
                a.acked = Some(Mutex::new(f));
            }
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
    Batch(&'static str, Vec<NewTransfer>),
    Sweep,
}

/// What one (worker, seq) does, before any id or time is attached: the workload's plan. It is
/// shaped so that most operations succeed (small amounts against a funding of 10,000, so balances
/// stay well above zero) and every hold resolves: a hold either carries a short expiry
/// (`expiring`) or is resolved by a later post or void of the same worker, matched
/// last-in-first-out (`target`); posts and voids (23 %) outnumber resolvable holds (17.6 %),
/// so the stack keeps emptying and a hold does not sit unresolved tying up its payer's
/// balance. The few a run leaves unmatched are voided by the final close-out.
#[derive(Clone, Copy)]
enum Step {
    Transfer {
        x: u32,
        y: u32,
        amount: i64,
    },
    Hold {
        x: u32,
        y: u32,
        amount: i64,
        expiring: bool,
    },
    Post {
        partial: u64,
    },
    Void,
    Linked {
        pairs: [(u32, u32, i64); 3],
    },
    Sweep,
}

/// How many earlier operations a post or void looks back for its hold.
const MATCH_WINDOW: u64 = 64;
/// Expiring holds time out `HOLD_TTL_MS` after the moment their seq is expected to run
/// (`start + seq × EXPECTED_MS_PER_OP`): ids, amounts and expiries derive from the seq alone, so a
/// retry after `kill -9` sends the same request. A hold that runs later than its expiry (a slow
/// machine) is refused as `invalid_input` and counted; nothing else depends on it.
const HOLD_TTL_MS: i64 = 1_500;
const EXPECTED_MS_PER_OP: i64 = 6;

fn step(a: &Args, w: u32, seq: u64) -> Step {
    let mut r = Rng::new(a.seed, w, seq);
    let pick2 = |r: &mut Rng| {
        let x = r.below(a.accounts as u64) as u32;
        let y = (x + 1 + r.below(a.accounts as u64 - 1) as u32) % a.accounts;
        (x, y)
    };
    match r.below(100) {
        0..35 => {
            let (x, y) = pick2(&mut r);
            Step::Transfer {
                x,
                y,
                amount: 1 + r.below(100) as i64,
            }
        }
        35..57 => {
            let (x, y) = pick2(&mut r);
            Step::Hold {
                x,
                y,
                amount: 1 + r.below(200) as i64,
                expiring: r.below(5) == 0,
            }
        }
        57..70 => Step::Post { partial: r.next() },
        70..80 => Step::Void,
        80..92 => {
            let mut pairs = [(0, 0, 0); 3];
            for p in &mut pairs {
                let (x, y) = pick2(&mut r);
                *p = (x, y, 1 + r.below(150) as i64);
            }
            Step::Linked { pairs }
        }
        _ => Step::Sweep,
    }
}

/// The hold a post or void at `seq` resolves: the most recent earlier non-expiring hold of this
/// worker that no post or void in between took (a stack, walked backwards). `None` when the
/// window holds none; the operation then sweeps instead.
fn target(a: &Args, w: u32, seq: u64) -> Option<u64> {
    let mut taken = 0u64;
    for back in 1..=MATCH_WINDOW {
        let s = seq.checked_sub(back)?;
        match step(a, w, s) {
            Step::Post { .. } | Step::Void => taken += 1,
            Step::Hold {
                expiring: false, ..
            } if taken == 0 => return Some(s),
            Step::Hold {
                expiring: false, ..
            } => taken -= 1,
            _ => {}
        }
    }
    None
}

fn op(a: &Args, start: DateTime<Utc>, w: u32, seq: u64) -> Op {
    let t = tid(a.seed, w, seq, "t");
    let resolve = |partial: Option<u64>| -> Option<NewTransfer> {
        let s = target(a, w, seq)?;
        let pending = tid(a.seed, w, s, "t");
        Some(match (partial, step(a, w, s)) {
            (Some(p), Step::Hold { amount, .. }) => {
                // Half the posts take part of the hold, never more than it.
                let part = (p % 2 == 0).then(|| 1 + (p / 2 % amount as u64) as i64);
                NewTransfer::post(t, pending, part, "bank_post")
            }
            _ => NewTransfer::void(t, pending, "bank_void"),
        })
    };
    match step(a, w, seq) {
        Step::Transfer { x, y, amount } => Op::Batch(
            "transfer",
            vec![NewTransfer::posted(
                t,
                account(x),
                account(y),
                amount,
                "bank_transfer",
            )],
        ),
        Step::Hold {
            x,
            y,
            amount,
            expiring,
        } => {
            let expires = expiring.then(|| {
                start
                    + chrono::Duration::milliseconds(seq as i64 * EXPECTED_MS_PER_OP + HOLD_TTL_MS)
            });
            let name = if expiring { "hold_expiring" } else { "hold" };
            Op::Batch(
                name,
                vec![NewTransfer::pending(
                    t,
                    account(x),
                    account(y),
                    amount,
                    expires,
                    "bank_hold",
                )],
            )
        }
        Step::Post { partial } => match resolve(Some(partial)) {
            Some(req) => Op::Batch("post", vec![req]),
            None => Op::Sweep,
        },
        Step::Void => match resolve(None) {
            Some(req) => Op::Batch("void", vec![req]),
            None => Op::Sweep,
        },
        Step::Linked { pairs } => Op::Batch(
            "linked",
            pairs
                .iter()
                .enumerate()
                .map(|(i, &(x, y, amount))| {
                    NewTransfer::posted(
                        tid(a.seed, w, seq, &format!("l{i}")),
                        account(x),
                        account(y),
                        amount,
                        "bank_linked",
                    )
                })
                .collect(),
        ),
        Step::Sweep => Op::Sweep,
    }
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

/// The port of the server this connection reached (with a multi-host URL: which host).
fn server_port(conn: &mut PgConnection) -> anyhow::Result<i32> {
    #[derive(QueryableByName)]
    struct Port {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        port: i32,
    }
    let p: Port = diesel::sql_query("SELECT inet_server_port() AS port").get_result(conn)?;
    Ok(p.port)
}

/// Appends an acknowledged outcome to `--acked` (one `write` of one line, so lines of several
/// workers never interleave and a line written survives the process's `kill -9`).
fn acked(a: &Args, server: i32, w: u32, seq: u64, outcome: &serde_json::Value) -> anyhow::Result<()> {
    let Some(file) = &a.acked else { return Ok(()) };
    let at_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros();
    let line = serde_json::json!({ "w": w, "seq": seq, "at_us": at_us as u64, "server": server, "outcome": outcome });
    let mut f = file
        .lock()
        .map_err(|_| anyhow::anyhow!("the --acked file's lock is poisoned"))?;
    f.write_all(format!("{line}\n").as_bytes())
        .context("writing the --acked file")
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
    let Op::Batch(_, reqs) = op(a, start, w, row.seq as u64) else {
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

/// One worker: sessions until its ops are done. A session that fails on the database is
/// retried on a new connection while `--reconnect-secs` allows (counted from the first failure
/// since the last acknowledged commit).
fn worker(a: &Args, start: DateTime<Utc>, w: u32) -> anyhow::Result<(u64, u64)> {
    let (mut done, mut rechecked) = (0, 0);
    let mut outage: Option<Instant> = None;
    loop {
        match session(a, start, w, &mut done, &mut rechecked, &mut outage) {
            Ok(()) => return Ok((done, rechecked)),
            Err(e) if a.reconnect_secs > 0 => {
                let since = *outage.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(a.reconnect_secs) {
                    return Err(e.context(format!(
                        "worker {w}: no database for {} s (--reconnect-secs)",
                        a.reconnect_secs
                    )));
                }
                eprintln!("worker {w}: {e:#}; reconnecting");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e),
        }
    }
}

/// From a fresh connection: the journal says where this worker stands (an operation whose
/// commit was in flight when the last connection broke is there exactly when it committed),
/// the last committed operations are re-sent and checked, and the rest runs.
fn session(
    a: &Args,
    start: DateTime<Utc>,
    w: u32,
    done: &mut u64,
    rechecked: &mut u64,
    outage: &mut Option<Instant>,
) -> anyhow::Result<()> {
    let mut conn = gridbook_db::connect(&a.url)?;
    let server = if a.acked.is_some() { server_port(&mut conn)? } else { 0 };
    let last: Vec<JournalRow> = journal(&mut conn, w, 0, i64::MAX)?;
    let next = last.last().map(|r| r.seq + 1).unwrap_or(0);
    // After a restart: re-send the last committed operations.
    for row in last.iter().rev().take(10) {
        *rechecked += recheck(&mut conn, a, start, w, row)? as u64;
    }
    for seq in next as u64..a.ops {
        let outcome = match op(a, start, w, seq) {
            Op::Sweep => {
                let n = store::expire_pending(&mut conn, Utc::now(), 100)?.len();
                serde_json::json!({ "sweep": n })
            }
            Op::Batch(name, reqs) => {
                let r = conn.transaction::<_, LedgerError, _>(|c| {
                    let ts = store::create_transfers(c, &reqs)?;
                    let v = serde_json::json!({ "op": name, "ok": ts });
                    diesel::sql_query("INSERT INTO bank_journal VALUES ($1, $2, $3)")
                        .bind::<diesel::sql_types::Integer, _>(w as i32)
                        .bind::<diesel::sql_types::BigInt, _>(seq as i64)
                        .bind::<diesel::sql_types::Jsonb, _>(&v)
                        .execute(c)?;
                    Ok(v)
                });
                match r {
                    Ok(v) => {
                        acked(a, server, w, seq, &v)?;
                        *outage = None;
                        *done += 1;
                        // Now and then re-send an earlier committed operation.
                        if seq % 7 == 0 && seq > 20 {
                            for row in journal(&mut conn, w, seq as i64 - 20, seq as i64)?
                                .iter()
                                .take(1)
                            {
                                *rechecked += recheck(&mut conn, a, start, w, row)? as u64;
                            }
                        }
                        continue;
                    }
                    Err(e @ (LedgerError::Database(_) | LedgerError::Conflict)) => {
                        return Err(e.into());
                    }
                    Err(e) => serde_json::json!({ "op": name, "rejected": e.code() }),
                }
            }
        };
        diesel::sql_query("INSERT INTO bank_journal VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind::<diesel::sql_types::Integer, _>(w as i32)
            .bind::<diesel::sql_types::BigInt, _>(seq as i64)
            .bind::<diesel::sql_types::Jsonb, _>(&outcome)
            .execute(&mut conn)?;
        acked(a, server, w, seq, &outcome)?;
        *outage = None;
        *done += 1;
        if seq % 50 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(())
}

/// The end of the run: every hold whose expiry has passed is expired, and every hold still
/// pending after that (a resolvable hold whose post or void fell outside a worker's ops) is
/// voided, with an id derived from the hold, so a close-out repeated after `kill -9` voids
/// nothing twice. Returns (expired now, voided).
fn close_out(conn: &mut PgConnection, a: &Args) -> anyhow::Result<(usize, usize)> {
    let mut expired = 0;
    loop {
        let n = store::expire_pending(conn, chrono::Utc::now(), 100)?.len();
        if n == 0 {
            break;
        }
        expired += n;
    }
    #[derive(QueryableByName)]
    struct Open {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        id: uuid::Uuid,
    }
    let open: Vec<Open> = diesel::sql_query(
        "SELECT p.id FROM ledger_transfers p WHERE p.kind = 'pending' AND p.ledger = $1
           AND NOT EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.pending_id = p.id)",
    )
    .bind::<diesel::sql_types::Text, _>(LEDGER)
    .load(conn)?;
    let voids: Vec<NewTransfer> = open
        .iter()
        .map(|o| {
            NewTransfer::void(
                TransferId::derived(&["bank", &a.seed.to_string(), "close", &o.id.to_string()]),
                TransferId(o.id),
                "bank_close",
            )
        })
        .collect();
    // One at a time: an expiring hold may time out between the query and its void (it is
    // then already resolved, which is fine).
    let mut closed = 0;
    for v in &voids {
        match store::create_transfers(conn, std::slice::from_ref(v)) {
            Ok(_) => closed += 1,
            Err(LedgerError::PendingAlreadyResolved(_) | LedgerError::PendingExpired(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok((expired, closed))
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
    // A connection of its own: the first one may have died with a primary meanwhile.
    let mut conn = gridbook_db::connect(&a.url)?;
    let (expired, closed) = close_out(&mut conn, &a)?;
    println!(
        "{{\"ops\": {done}, \"retries_checked\": {rechecked}, \"expired_at_close\": {expired}, \"closed_out\": {closed}}}"
    );
    Ok(())
}
