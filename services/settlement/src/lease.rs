//! One holder of the single-writer duties among several workers: a PostgreSQL advisory lock on
//! a dedicated connection.
//!
//! Why PostgreSQL and not a JetStream KV lease like the engine's (`matching-engine`'s
//! `lease.rs`): every duty the lease guards (settling engine events in order, publishing the
//! outbox in order, finishing jobs, closing epochs) writes PostgreSQL, so the lock lives where
//! the writes go. A session-level advisory lock (`pg_try_advisory_lock`) belongs to one server
//! session: PostgreSQL releases it the moment that session ends — the worker's process dies
//! (`kill -9` closes its socket), its connection drops, the server restarts or fails over — with
//! no TTL to tune against clocks, and a worker that cannot reach the database could not write
//! anyway. Advisory locks are per database, so every market database has its own.
//!
//! The rules:
//! - every instance polls every `poll` (`Settings::lease_poll_ms`); a standby tries the lock, the
//!   holder checks that its session still holds it (`pg_locks`, by its own backend pid), each
//!   call bounded by `poll`;
//! - the holder's session is told to end itself when idle for [`ttl`] (`idle_session_timeout` =
//!   5 × poll): a holder that stalls or is cut off from the server loses the lock server-side
//!   within that bound, and a standby takes over at its next poll;
//! - a holder whose check fails or times out (so at most [`grace`] = 2 × poll after its last
//!   good one) reports the lease lost *before* the server can release it (2 × poll < 5 × poll),
//!   and the caller stops its single-writer tasks then;
//! - logs `lease acquired` / `lease lost` (info / warn) with `instance` and the lease `key`.
//!
//! What stays with the caller: a task stopped on `lease lost` may have a database call in
//! flight on tokio's blocking pool (it cannot be interrupted); every duty is idempotent (the
//! outbox by `Nats-Msg-Id`, events by `processed_events`, jobs under their row lock, epochs by
//! number under their own advisory lock), so such a call only repeats work.

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::{Result, SettlementError};

/// The advisory lock of the settlement worker's single-writer duties (ASCII "gridsett").
pub const SETTLEMENT_LEASE: i64 = 0x6772_6964_7365_7474;

/// Smallest and largest poll interval a worker accepts (`Settings::lease_poll_ms`).
pub const MIN_POLL_MS: u64 = 50;
pub const MAX_POLL_MS: u64 = 60_000;

/// The `application_name` prefix of a lease session (`pg_stat_activity` names the holder).
pub const APPLICATION_PREFIX: &str = "gridbook-settlement-lease";

/// `Err` naming the setting for a poll interval outside [`MIN_POLL_MS`]..=[`MAX_POLL_MS`].
pub fn validate_poll_ms(ms: u64) -> Result<Duration> {
    if !(MIN_POLL_MS..=MAX_POLL_MS).contains(&ms) {
        return Err(SettlementError::Refused(format!(
            "lease_poll_ms is {ms}; it must be between {MIN_POLL_MS} and {MAX_POLL_MS}"
        )));
    }
    Ok(Duration::from_millis(ms))
}

/// How long the holder's session may stay silent before the server ends it (and drops the lock).
pub fn ttl(poll: Duration) -> Duration {
    poll * 5
}

/// The longest a holder acts after its last successful check: one poll to the next check, and
/// that check's own bound.
pub fn grace(poll: Duration) -> Duration {
    poll * 2
}

/// The lease of one instance.
#[derive(Clone, Debug)]
pub struct Lease {
    pub database_url: String,
    pub key: i64,
    pub poll: Duration,
    /// Who this instance is in the logs and in `pg_stat_activity.application_name`.
    pub instance: String,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    ok: bool,
}

/// One blocking database step on the lease connection, bounded by `limit`. The connection comes
/// back only when the step answered in time (a late one is dropped with its task).
async fn step(
    conn: PgConnection,
    limit: Duration,
    f: impl FnOnce(&mut PgConnection) -> Result<bool> + Send + 'static,
) -> (Option<PgConnection>, Result<bool>) {
    let task = tokio::task::spawn_blocking(move || {
        let mut conn = conn;
        let r = f(&mut conn);
        (conn, r)
    });
    match tokio::time::timeout(limit, task).await {
        Ok(Ok((conn, r))) => {
            let keep = r.is_ok();
            (keep.then_some(conn), r)
        }
        Ok(Err(_)) => (None, Err(SettlementError::TaskFailed)),
        Err(_) => (None, Err(SettlementError::Refused(format!("the lease database call took longer than {limit:?}")))),
    }
}

/// Opens the lease session: named after the instance, ended by the server when idle for [`ttl`].
fn open(url: &str, instance: &str, ttl: Duration) -> Result<PgConnection> {
    let mut c = gridbook_db::connect(url)?;
    // `SET` takes no bind parameters; the name is quoted as a literal.
    let name = format!("{APPLICATION_PREFIX} {instance}").replace('\'', "''");
    diesel::sql_query(format!("SET application_name = '{name}'")).execute(&mut c)?;
    diesel::sql_query(format!("SET idle_session_timeout = {}", ttl.as_millis())).execute(&mut c)?;
    Ok(c)
}

fn try_lock(c: &mut PgConnection, key: i64) -> Result<bool> {
    Ok(diesel::sql_query("SELECT pg_try_advisory_lock($1) AS ok").bind::<BigInt, _>(key).get_result::<Flag>(c)?.ok)
}

/// Whether this session still holds `key` (a bigint advisory lock is classid = high 32 bits,
/// objid = low 32 bits, objsubid = 1 in `pg_locks`).
fn still_held(c: &mut PgConnection, key: i64) -> Result<bool> {
    Ok(diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND pid = pg_backend_pid() AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND classid::bigint = (($1 >> 32) & 4294967295) AND objid::bigint = ($1 & 4294967295) AND objsubid = 1) AS ok",
    )
    .bind::<BigInt, _>(key)
    .get_result::<Flag>(c)?
    .ok)
}

impl Lease {
    /// Runs forever: publishes `true` on `held` while this instance holds the lease, `false`
    /// otherwise. Never returns an error: a failing database is a lease not held (and retried).
    pub async fn run(self, held: watch::Sender<bool>) {
        let (poll, ttl) = (self.poll, ttl(self.poll));
        let mut conn: Option<PgConnection> = None;
        let mut last_ok = Instant::now();
        let mut told_standby = false;
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let holding = *held.borrow();
            let c = match conn.take() {
                Some(c) => c,
                None => {
                    let (url, instance) = (self.database_url.clone(), self.instance.clone());
                    let opened = tokio::time::timeout(poll.max(Duration::from_secs(1)), tokio::task::spawn_blocking(move || open(&url, &instance, ttl))).await;
                    match opened {
                        Ok(Ok(Ok(c))) => c,
                        other => {
                            let why = match other {
                                Ok(Ok(Err(e))) => e.to_string(),
                                Ok(Err(_)) | Ok(Ok(Ok(_))) => "the connecting task failed".to_owned(),
                                Err(_) => "connecting timed out".to_owned(),
                            };
                            if holding {
                                // A new session cannot hold the old one's lock: it is gone.
                                self.lost(&held, &why);
                            } else if !told_standby {
                                warn!(instance = %self.instance, key = self.key, error = %why, "lease database unreachable; retrying");
                                told_standby = true;
                            }
                            continue;
                        }
                    }
                }
            };
            let key = self.key;
            let (back, r) = if holding {
                step(c, poll, move |c| still_held(c, key)).await
            } else {
                step(c, poll, move |c| try_lock(c, key)).await
            };
            conn = back;
            match (holding, r) {
                (true, Ok(true)) => last_ok = Instant::now(),
                (true, Ok(false)) => {
                    conn = None;
                    self.lost(&held, "this session no longer holds the lock");
                }
                // The failed step dropped the session: the lock is no longer this instance's (the
                // old session's server side ends at the latest when idle for `ttl`).
                (true, Err(e)) => self.lost(&held, &format!("{e} (no check for {:?})", last_ok.elapsed())),
                (false, Ok(true)) => {
                    last_ok = Instant::now();
                    told_standby = false;
                    info!(instance = %self.instance, key = self.key, poll_ms = poll.as_millis() as u64,
                        "lease acquired: this instance runs the single-writer duties");
                    let _ = held.send(true);
                }
                (false, Ok(false)) => {
                    if !told_standby {
                        info!(instance = %self.instance, key = self.key, "lease held by another instance; standing by");
                        told_standby = true;
                    }
                }
                (false, Err(e)) => {
                    if !told_standby {
                        warn!(instance = %self.instance, key = self.key, error = %e, "trying the lease failed; retrying");
                        told_standby = true;
                    }
                }
            }
        }
    }

    fn lost(&self, held: &watch::Sender<bool>, why: &str) {
        warn!(instance = %self.instance, key = self.key, reason = why,
            "lease lost: stopping the single-writer duties");
        let _ = held.send(false);
    }
}

/// This process's default instance id: `<host>-<pid>`.
pub fn default_instance() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let host = if host.is_empty() { "host".to_owned() } else { host };
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poll_interval_is_bounded_and_the_holder_gives_up_before_the_server_does() {
        assert!(validate_poll_ms(MIN_POLL_MS - 1).is_err());
        assert!(validate_poll_ms(MAX_POLL_MS + 1).is_err());
        let poll = validate_poll_ms(1_000).unwrap();
        assert!(grace(poll) < ttl(poll));
    }
}
