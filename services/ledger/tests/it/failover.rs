//! The bank through a PostgreSQL failover: the `ledger-bank` workload runs against a primary
//! with a synchronous streaming standby (`gridbook_testkit::PgPair`) through the multi-host URL
//! (`…@127.0.0.1:P1,127.0.0.1:P2/bank?target_session_attrs=read-write`); mid-traffic the
//! primary is killed with SIGKILL (postmaster and every backend at once) and the standby is
//! promoted (`pg_ctl promote`, the documented manual step); the bank's workers reconnect
//! through the same URL and finish. Then, on the new primary: every outcome the bank saw
//! acknowledged (before the kill and after) is there as acknowledged, the ledger's invariants
//! hold, every account's posted balance equals the replay of the journal, no hold is left
//! pending, and every retry returned the original result. The failover time (kill → the
//! first acknowledged commit on the new primary) is printed, not asserted.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use diesel::RunQueryDsl;
use gridbook_ledger::*;
use gridbook_testkit::{PgPair, TempDir};

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

fn count(c: &mut diesel::PgConnection, sql: &str) -> i64 {
    diesel::sql_query(sql).get_result::<Count>(c).unwrap().n
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// One line of the `--acked` file.
struct Ack {
    at_us: u64,
    server: u16,
    outcome: serde_json::Value,
}

/// The `--acked` file: (worker, seq) → its acknowledgement.
fn read_acked(path: &std::path::Path) -> HashMap<(u32, u64), Ack> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("acked line {l:?}: {e}"));
            let w = v["w"].as_u64().unwrap() as u32;
            let seq = v["seq"].as_u64().unwrap();
            let ack = Ack {
                at_us: v["at_us"].as_u64().unwrap(),
                server: v["server"].as_u64().unwrap() as u16,
                outcome: v["outcome"].clone(),
            };
            ((w, seq), ack)
        })
        .collect()
}

const WORKERS: u32 = 4;
const OPS: u64 = 1_500;
const ACCOUNTS: u32 = 6;

#[test]
fn bank_survives_the_primary_killed_and_the_standby_promoted() {
    let tmp = TempDir::new("pg-failover");
    let pair = PgPair::start(tmp.path(), "bank").unwrap();
    let url = pair.url();
    eprintln!("pair: primary :{}, standby :{}; url {url}", pair.primary.port, pair.standby.port);

    let acked_file = tmp.path().join("acked.jsonl");
    let bank_log = tmp.path().join("bank.log");
    let bin = env!("CARGO_BIN_EXE_ledger-bank");
    let mut child = Command::new(bin)
        .args(["--database-url", &url])
        .args(["--workers", &WORKERS.to_string(), "--ops", &OPS.to_string()])
        .args(["--seed", "23", "--accounts", &ACCOUNTS.to_string()])
        .args(["--reconnect-secs", "30", "--acked"])
        .arg(&acked_file)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&bank_log).unwrap())
        .spawn()
        .unwrap();

    // Mid-traffic: once a quarter of the operations are acknowledged.
    let started = Instant::now();
    let kill_after = (WORKERS as u64 * OPS / 4) as usize;
    while read_acked(&acked_file).len() < kill_after {
        assert!(child.try_wait().unwrap().is_none(), "the bank ended before the kill; log {}", bank_log.display());
        assert!(started.elapsed() < Duration::from_secs(60), "the bank acknowledged < {kill_after} operations in 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed_at = now_us();
    let killed = Instant::now();
    pair.kill9_primary().unwrap();
    let kill_took = killed.elapsed();
    let promote = pair.promote_standby().unwrap();
    eprintln!(
        "primary killed after {:?} of traffic (kill -9 took {kill_took:?}); standby promoted in {promote:?}",
        started.elapsed()
    );

    let out = wait_with_timeout(child, Duration::from_secs(120), &bank_log);
    let log = std::fs::read_to_string(&bank_log).unwrap_or_default();
    assert!(out.status.success(), "the bank failed after the failover: {log}");
    let reconnects = log.lines().filter(|l| l.contains("reconnecting")).count();
    eprintln!(
        "bank: {} ({reconnects} reconnect attempts logged); ran {:?}",
        String::from_utf8_lossy(&out.stdout).trim(),
        started.elapsed()
    );

    // The new primary is the old standby, and the URL now leads there.
    let c = &mut gridbook_db::connect(&url).unwrap();
    #[derive(diesel::QueryableByName)]
    struct Port {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        port: i32,
    }
    let port: Port = diesel::sql_query("SELECT inet_server_port() AS port").get_result(c).unwrap();
    assert_eq!(port.port as u16, pair.standby.port, "the multi-host URL should reach the promoted standby");

    let acked = read_acked(&acked_file);
    // Acknowledged by the old primary (all before the kill) and by the new one.
    let by_old = acked.values().filter(|a| a.server == pair.primary.port).count();
    let by_new = acked.values().filter(|a| a.server == pair.standby.port).count();
    assert_eq!(by_old + by_new, acked.len(), "an acknowledgement from neither server");
    assert!(
        acked.values().filter(|a| a.server == pair.primary.port).all(|a| a.at_us <= killed_at + 50_000),
        "the old primary acknowledged a commit well after its kill"
    );
    let first_new = acked.values().filter(|a| a.server == pair.standby.port).map(|a| a.at_us).min();
    let failover_ms = first_new.map(|at| at.saturating_sub(killed_at) as f64 / 1000.0);
    eprintln!(
        "FAILOVER: kill -9 of the primary -> first acknowledged commit on the promoted standby: {} ms (pg_ctl promote -w: {promote:?}); {by_old} outcomes acknowledged by the old primary, {by_new} by the new",
        failover_ms.map_or("none".into(), |ms| format!("{ms:.0}")),
    );
    assert!(by_old >= kill_after, "acknowledged by the old primary: {by_old}");
    assert!(first_new.is_some(), "nothing was acknowledged after the failover");

    // Every acknowledged outcome is on the new primary, as acknowledged.
    #[derive(diesel::QueryableByName)]
    struct J {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        worker: i32,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        seq: i64,
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        outcome: serde_json::Value,
    }
    let journal: HashMap<(u32, u64), serde_json::Value> =
        diesel::sql_query("SELECT worker, seq, outcome FROM bank_journal")
            .load::<J>(c)
            .unwrap()
            .into_iter()
            .map(|j| ((j.worker as u32, j.seq as u64), j.outcome))
            .collect();
    let mut transfers_checked = 0;
    for ((w, seq), Ack { at_us, server, outcome }) in &acked {
        let stored = journal.get(&(*w, *seq)).unwrap_or_else(|| {
            panic!("worker {w} seq {seq}, acknowledged by :{server} {} ms before the kill, is not on the new primary", (killed_at as i64 - *at_us as i64) / 1000)
        });
        assert_eq!(stored, outcome, "worker {w} seq {seq}: the new primary's journal differs from what was acknowledged");
        if let Some(ok) = outcome.get("ok") {
            let ts: Vec<Transfer> = serde_json::from_value(ok.clone()).unwrap();
            for t in ts {
                assert_eq!(store::get_transfer(c, t.id).unwrap().as_ref(), Some(&t), "acknowledged transfer {} differs or is missing", t.id);
                transfers_checked += 1;
            }
        }
    }
    eprintln!("{} acknowledged outcomes ({transfers_checked} transfers) all on the new primary", acked.len());
    // The operations in flight at the kill whose commit reached the standby although the bank
    // never saw it acknowledged: the journal told the reconnected workers, which went on
    // after them instead of running them twice.
    let unacked: Vec<_> = journal.keys().filter(|k| !acked.contains_key(k)).collect();
    eprintln!("outcome unknown at the kill, found committed on the new primary: {unacked:?}");
    assert!(unacked.len() <= WORKERS as usize, "more unacknowledged commits than operations in flight: {unacked:?}");

    assert_eq!(journal.len() as u64, WORKERS as u64 * OPS, "every operation ran once");
    assert_eq!(count(c, "SELECT count(*) AS n FROM bank_failures"), 0, "a retry returned something else (see {})", bank_log.display());
    eprintln!("{} idempotent retries returned the original result", count(c, "SELECT count(*) AS n FROM bank_rechecks"));
    let v = store::check_invariants(c).unwrap();
    assert!(v.is_empty(), "invariants broken on the new primary: {v:?}");

    // Balances = the journal's replay: the deposits, then every journalled posted transfer and
    // post (the only kinds that move posted money; holds, voids and expiries move pending
    // money only, and none is left pending).
    let op = AccountId::derived(&["bank", "operator"]);
    let mut all: Vec<AccountId> = (0..ACCOUNTS).map(|i| AccountId::derived(&["bank", "account", &i.to_string()])).collect();
    let mut replay: HashMap<AccountId, i128> = all.iter().map(|a| (*a, 10_000)).collect();
    replay.insert(op, -(ACCOUNTS as i128) * 10_000);
    all.push(op);
    for outcome in journal.values() {
        let Some(ok) = outcome.get("ok") else { continue };
        for t in serde_json::from_value::<Vec<Transfer>>(ok.clone()).unwrap() {
            if matches!(t.kind, TransferKind::Posted | TransferKind::Post) {
                *replay.get_mut(&t.debit_account).unwrap() -= t.amount as i128;
                *replay.get_mut(&t.credit_account).unwrap() += t.amount as i128;
            }
        }
    }
    let accts = store::get_accounts(c, &all).unwrap();
    for a in &all {
        assert_eq!(accts[a].balances.posted(), replay[a], "account {a}: balance differs from the journal's replay");
        assert_eq!(accts[a].balances.debits_pending + accts[a].balances.credits_pending, 0, "account {a}: a hold left pending");
    }
    eprintln!("posted balances of {} accounts equal the journal's replay; nothing pending", all.len());
}

/// Waits for the bank (reading its stdout), killing it after `timeout`.
fn wait_with_timeout(mut child: std::process::Child, timeout: Duration, log: &std::path::Path) -> std::process::Output {
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t.elapsed() > timeout {
            let _ = child.kill();
            panic!("the bank did not finish {timeout:?} after the failover; log {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The services' side of a failover. The API holds an r2d2 pool built with r2d2's defaults
/// (`gridbook_api::db::pool`: `max_size`, `connection_timeout`, and the default
/// `test_on_check_out = true`, which runs `SELECT 1` on every check-out); the settlement
/// worker holds one connection and drops it after a transient error (`settlement::db::Db`),
/// reconnecting through the URL, as the bank's workers do above. Here, a pool built the
/// API's way with idle connections to the primary: after the kill and before the promotion a
/// check-out fails within `connection_timeout` (the API answers 503, nothing hangs); after the
/// promotion it returns a new connection to the promoted standby, which accepts writes.
#[test]
fn a_pool_built_like_the_apis_moves_to_the_promoted_standby() {
    use diesel::r2d2::{ConnectionManager, Pool};
    let tmp = TempDir::new("pg-failover-pool");
    let pair = PgPair::start(tmp.path(), "pooled").unwrap();
    let pool: Pool<ConnectionManager<diesel::PgConnection>> = Pool::builder()
        .max_size(4)
        .connection_timeout(Duration::from_secs(1))
        .build(ConnectionManager::new(pair.url()))
        .unwrap();
    #[derive(diesel::QueryableByName)]
    struct Port {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        port: i32,
    }
    let port = |c: &mut diesel::PgConnection| {
        diesel::sql_query("SELECT inet_server_port() AS port").get_result::<Port>(c).map(|p| p.port as u16)
    };
    {
        let mut held: Vec<_> = (0..4).map(|_| pool.get().unwrap()).collect();
        for c in &mut held {
            assert_eq!(port(c).unwrap(), pair.primary.port);
        }
        diesel::sql_query("CREATE TABLE t (x int)").execute(&mut *held[0]).unwrap();
    } // four idle connections to the primary back in the pool

    pair.kill9_primary().unwrap();
    let t = Instant::now();
    let before = pool.get();
    assert!(before.is_err(), "a check-out succeeded with the primary dead and the standby not promoted");
    eprintln!("check-out with no writable server: refused after {:?}", t.elapsed());

    let promote = pair.promote_standby().unwrap();
    let t = Instant::now();
    let mut c = pool.get().expect("a check-out after the promotion");
    eprintln!("promoted in {promote:?}; first check-out after it took {:?}", t.elapsed());
    assert_eq!(port(&mut c).unwrap(), pair.standby.port);
    diesel::sql_query("INSERT INTO t VALUES (1)").execute(&mut *c).unwrap();
    drop(c);
    // Every connection the pool hands out now is a new one to the promoted standby.
    let mut all: Vec<_> = (0..4).map(|_| pool.get().unwrap()).collect();
    for c in &mut all {
        assert_eq!(port(c).unwrap(), pair.standby.port);
    }
}

/// The other side of synchronous commit: with the standby dead the primary does not
/// acknowledge a commit (it waits; nothing is refused or lost), and the commit returns once
/// the standby is back and has flushed it.
#[test]
fn a_commit_waits_while_the_synchronous_standby_is_down() {
    let tmp = TempDir::new("pg-failover-standby");
    let pair = PgPair::start(tmp.path(), "waits").unwrap();
    pair.primary.psql("CREATE TABLE t (x int)").unwrap();
    pair.standby.kill9().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        s.spawn(|| tx.send(pair.primary.psql("INSERT INTO t VALUES (1)")).unwrap());
        let waited = Duration::from_secs(2);
        assert!(rx.recv_timeout(waited).is_err(), "a commit returned with the synchronous standby down");
        eprintln!("commit still waiting {waited:?} after the standby's kill -9");
        let t = Instant::now();
        pair.standby.start_again().unwrap();
        let r = rx.recv_timeout(Duration::from_secs(60)).expect("the commit returns once the standby is back");
        r.unwrap();
        eprintln!("standby restarted; the waiting commit returned {:?} after the restart began", t.elapsed());
    });
    assert_eq!(pair.standby.psql("SELECT count(*) FROM t").unwrap(), "1");
}
