//! In-process bounds of one API process, shared by its workers through `app_data`
//! (`web::Data<Bounds>`), one set per [`crate::Application`]:
//! - [`UploadSlots`]: uploads in progress per account (`limits.uploads_per_account`, beyond: 429
//!   `too_many_uploads`) and in total (`limits.uploads_total`, beyond: 503 `uploads_busy`); a
//!   slot is taken before the body is read and freed when the handler ends, whatever the outcome.
//! - [`HashSlots`]: argon2id computations at once (`limits.password_hashes`, default twice the
//!   cores) with a short queue (`limits.password_queue`); beyond it sign-up and log-in answer 503
//!   `busy` with Retry-After, so concurrent log-ins cannot grow memory (19 MiB per hash).
//! - [`LoginBackoff`]: per-account log-in back-off (`settings.login`), in memory: see its doc.
//!
//! Everything here is in memory and per process: with several API processes each one enforces
//! its own bounds (the back-off then allows that many times the guesses). That is the price of
//! not writing to PostgreSQL on every failed log-in.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::settings::{Limits, Login};

/// The bounds of one API process.
pub struct Bounds {
    pub uploads: UploadSlots,
    pub hashes: HashSlots,
    pub logins: LoginBackoff,
}

impl Bounds {
    pub fn new(limits: &Limits, login: &Login) -> Bounds {
        Bounds {
            uploads: UploadSlots::new(limits.uploads_per_account, limits.uploads_total),
            hashes: HashSlots::new(limits.password_hashes(), limits.password_queue),
            logins: LoginBackoff::new(login.clone()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent counters; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Uploads

/// Upload slots per account and in total.
pub struct UploadSlots {
    per_account: usize,
    total: usize,
    state: Mutex<UploadState>,
}

#[derive(Default)]
struct UploadState {
    total: usize,
    by_account: HashMap<Uuid, usize>,
}

/// A held upload slot; dropping it frees the slot.
pub struct UploadSlot<'a> {
    slots: &'a UploadSlots,
    account: Uuid,
}

impl UploadSlots {
    pub fn new(per_account: usize, total: usize) -> UploadSlots {
        UploadSlots {
            per_account: per_account.max(1),
            total: total.max(1),
            state: Mutex::new(UploadState::default()),
        }
    }

    /// Takes a slot for `account` or refuses at once (never waits).
    pub fn acquire(&self, account: Uuid) -> ApiResult<UploadSlot<'_>> {
        let mut s = lock(&self.state);
        let mine = s.by_account.get(&account).copied().unwrap_or(0);
        if mine >= self.per_account {
            return Err(ApiError::too_many(
                "too_many_uploads",
                format!(
                    "at most {} uploads at once per account; wait for one to finish",
                    self.per_account
                ),
                1,
            ));
        }
        if s.total >= self.total {
            return Err(ApiError::busy(
                "uploads_busy",
                format!(
                    "the server is receiving {} uploads already; retry shortly",
                    self.total
                ),
                2,
            ));
        }
        s.total += 1;
        *s.by_account.entry(account).or_insert(0) += 1;
        Ok(UploadSlot {
            slots: self,
            account,
        })
    }

    /// Uploads in progress now (all accounts).
    pub fn in_progress(&self) -> usize {
        lock(&self.state).total
    }
}

impl Drop for UploadSlot<'_> {
    fn drop(&mut self) {
        let mut s = lock(&self.slots.state);
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.by_account.get_mut(&self.account) {
            *n -= 1;
            if *n == 0 {
                s.by_account.remove(&self.account);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Password hashes

/// At most `permits` argon2 computations at once, at most `permits + queue` admitted (running or
/// waiting); the rest are refused with 503 `busy`.
pub struct HashSlots {
    permits: Arc<tokio::sync::Semaphore>,
    admitted: Arc<AtomicUsize>,
    max_admitted: usize,
}

/// A place among the admitted (running or queued) hashes; dropping it gives the place back, also
/// when the request is dropped while queued. Taken with [`HashSlots::admit`] before any other
/// work, so a refused log-in costs nothing.
pub struct HashTicket {
    admitted: Arc<AtomicUsize>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Drop for HashTicket {
    fn drop(&mut self) {
        self.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HashSlots {
    pub fn new(permits: usize, queue: usize) -> HashSlots {
        let permits = permits.max(1);
        HashSlots {
            permits: Arc::new(tokio::sync::Semaphore::new(permits)),
            admitted: Arc::new(AtomicUsize::new(0)),
            max_admitted: permits + queue,
        }
    }

    /// A place in the queue, or 503 `busy` with Retry-After when running + queued hashes are
    /// at `password_hashes + password_queue`.
    pub fn admit(&self) -> ApiResult<HashTicket> {
        let before = self.admitted.fetch_add(1, Ordering::AcqRel);
        let ticket = HashTicket {
            admitted: self.admitted.clone(),
            permits: self.permits.clone(),
        };
        if before >= self.max_admitted {
            drop(ticket);
            tracing::warn!(max = self.max_admitted, "password hashing queue full");
            return Err(ApiError::busy(
                "busy",
                "too many log-ins and sign-ups are being processed; retry shortly",
                1,
            ));
        }
        Ok(ticket)
    }

    /// [`Self::admit`], then [`HashTicket::run`].
    pub async fn run<T, F>(&self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.admit()?.run(f).await
    }
}

impl HashTicket {
    /// Waits for a hash slot, then runs the blocking `f` (a hash or a verification) on the
    /// blocking pool. The slot and the ticket are held by the blocking task itself, so a client
    /// that disconnects cannot free them while its hash still runs.
    pub async fn run<T, F>(self, f: F) -> ApiResult<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(ApiError::internal)?;
        actix_web::rt::task::spawn_blocking(move || {
            let _held = (self, permit);
            f()
        })
        .await
        .map_err(ApiError::internal)
    }
}

// ---------------------------------------------------------------------------------------------
// Log-in back-off

/// Per-account log-in back-off, keyed by the normalised email (known or not, so the answer says
/// nothing about whether an account exists).
///
/// Rule: failures count while each comes within `window_secs` of the previous one. From the
/// `max_failures`-th failure on, the email is locked for `base_delay_secs × 2^(failures −
/// max_failures)` (at most `max_delay_secs`); a log-in while locked is 429 `login_locked` with
/// Retry-After and no password is checked. Attempts in flight count against the remaining
/// budget, so concurrent guesses cannot overshoot it (after a lock, one attempt at a time). A
/// successful log-in forgets the email.
///
/// Memory: only emails with failures or attempts in flight are kept; past `max_tracked`, stale
/// entries are dropped, then entries that are not locked. Kept in memory rather than in
/// PostgreSQL: one API process needs no table and no write per failed log-in; several processes
/// each keep their own counts (see the module doc).
pub struct LoginBackoff {
    cfg: Login,
    map: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug, Default)]
struct Entry {
    failures: u32,
    last_failure: Option<Instant>,
    locked_until: Option<Instant>,
    in_flight: u32,
}

impl Entry {
    fn is_clean(&self) -> bool {
        self.failures == 0 && self.in_flight == 0
    }
    fn stale(&self, now: Instant, window: Duration) -> bool {
        self.in_flight == 0
            && self.locked_until.is_none_or(|t| t <= now)
            && self
                .last_failure
                .is_none_or(|t| now.duration_since(t) > window)
    }
}

/// One log-in attempt admitted by [`LoginBackoff::begin`]; report its outcome with
/// [`Attempt::failed`] or [`Attempt::succeeded`] (dropping it counts as neither).
pub struct Attempt<'a> {
    backoff: &'a LoginBackoff,
    key: Option<String>,
}

fn ceil_secs(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

impl LoginBackoff {
    pub fn new(cfg: Login) -> LoginBackoff {
        LoginBackoff {
            cfg,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.cfg.window_secs)
    }

    /// Admits an attempt for `email`, or 429 `login_locked` with Retry-After.
    pub fn begin(&self, email: &str) -> ApiResult<Attempt<'_>> {
        if email.is_empty() || self.cfg.max_failures == 0 {
            return Ok(Attempt {
                backoff: self,
                key: None,
            });
        }
        let now = Instant::now();
        let window = self.window();
        let mut map = lock(&self.map);
        if map.len() >= self.cfg.max_tracked.max(1) && !map.contains_key(email) {
            map.retain(|_, e| !e.stale(now, window));
            if map.len() >= self.cfg.max_tracked.max(1) {
                map.retain(|_, e| e.in_flight > 0 || e.locked_until.is_some_and(|t| t > now));
                tracing::warn!(
                    kept = map.len(),
                    "log-in back-off table full; forgot unlocked emails"
                );
            }
        }
        let e = map.entry(email.to_owned()).or_default();
        if e.in_flight == 0 && e.stale(now, window) {
            *e = Entry::default();
        }
        if let Some(until) = e.locked_until
            && until > now
        {
            let secs = ceil_secs(until - now);
            tracing::info!(retry_after = secs, "log-in refused: account backing off");
            return Err(locked(secs));
        }
        let budget = self.cfg.max_failures.saturating_sub(e.failures).max(1);
        if e.in_flight >= budget {
            return Err(locked(1));
        }
        e.in_flight += 1;
        Ok(Attempt {
            backoff: self,
            key: Some(email.to_owned()),
        })
    }

    fn finish(&self, key: &str, outcome: Option<bool>) {
        let now = Instant::now();
        let mut map = lock(&self.map);
        let Some(e) = map.get_mut(key) else { return };
        e.in_flight = e.in_flight.saturating_sub(1);
        match outcome {
            Some(true) => {
                e.failures = 0;
                e.last_failure = None;
                e.locked_until = None;
            }
            Some(false) => {
                e.failures = e.failures.saturating_add(1);
                e.last_failure = Some(now);
                if e.failures >= self.cfg.max_failures {
                    let doublings = (e.failures - self.cfg.max_failures).min(30);
                    let delay = self
                        .cfg
                        .base_delay_secs
                        .max(1)
                        .saturating_mul(1u64 << doublings)
                        .min(self.cfg.max_delay_secs.max(1));
                    e.locked_until = Some(now + Duration::from_secs(delay));
                }
            }
            None => {}
        }
        if e.is_clean() {
            map.remove(key);
        }
    }

    /// Forgets stale entries (called every 30 s by the app).
    pub fn retain_recent(&self) {
        let (now, window) = (Instant::now(), self.window());
        let mut map = lock(&self.map);
        map.retain(|_, e| !e.stale(now, window));
        map.shrink_to_fit();
    }

    /// Emails tracked now.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn locked(secs: u64) -> ApiError {
    ApiError::too_many(
        "login_locked",
        format!("too many failed log-ins for this account; retry in {secs} s"),
        secs,
    )
}

impl Attempt<'_> {
    /// A wrong password (or unknown email).
    pub fn failed(mut self) {
        if let Some(k) = self.key.take() {
            self.backoff.finish(&k, Some(false));
        }
    }
    /// A correct password: the email's failures are forgotten.
    pub fn succeeded(mut self) {
        if let Some(k) = self.key.take() {
            self.backoff.finish(&k, Some(true));
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.backoff.finish(&k, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Login {
        Login {
            max_failures: 3,
            window_secs: 60,
            base_delay_secs: 10,
            max_delay_secs: 25,
            max_tracked: 2,
        }
    }

    #[test]
    fn locks_after_max_failures_and_doubles() {
        let b = LoginBackoff::new(cfg());
        for _ in 0..3 {
            b.begin("a@x.io").unwrap().failed();
        }
        let e = b.begin("a@x.io").err().unwrap();
        assert_eq!(e.code, "login_locked");
        assert_eq!(e.retry_after, Some(10));
        // Other emails are unaffected.
        b.begin("b@x.io").unwrap().succeeded();
        // Pretend the lock expired: the next failure doubles it, capped at 25.
        lock(&b.map).get_mut("a@x.io").unwrap().locked_until = None;
        b.begin("a@x.io").unwrap().failed();
        assert_eq!(b.begin("a@x.io").err().unwrap().retry_after, Some(20));
        lock(&b.map).get_mut("a@x.io").unwrap().locked_until = None;
        b.begin("a@x.io").unwrap().failed();
        assert_eq!(b.begin("a@x.io").err().unwrap().retry_after, Some(25));
        // A success resets.
        lock(&b.map).get_mut("a@x.io").unwrap().locked_until = None;
        b.begin("a@x.io").unwrap().succeeded();
        assert!(b.is_empty());
    }

    #[test]
    fn in_flight_attempts_use_the_budget() {
        let b = LoginBackoff::new(cfg());
        let a1 = b.begin("a@x.io").unwrap();
        let a2 = b.begin("a@x.io").unwrap();
        let a3 = b.begin("a@x.io").unwrap();
        assert!(b.begin("a@x.io").is_err());
        drop(a1);
        let a4 = b.begin("a@x.io").unwrap();
        drop((a2, a3, a4));
        assert!(b.is_empty());
    }

    #[test]
    fn table_is_bounded() {
        let b = LoginBackoff::new(cfg());
        for e in ["a@x.io", "b@x.io", "c@x.io", "d@x.io"] {
            b.begin(e).unwrap().failed();
        }
        assert!(b.len() <= 2, "{}", b.len());
    }

    #[test]
    fn upload_slots_per_account_and_total() {
        let s = UploadSlots::new(2, 3);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let a1 = s.acquire(a).unwrap();
        let _a2 = s.acquire(a).unwrap();
        assert_eq!(s.acquire(a).err().unwrap().code, "too_many_uploads");
        let _b1 = s.acquire(b).unwrap();
        assert_eq!(s.acquire(b).err().unwrap().code, "uploads_busy");
        drop(a1);
        let _b2 = s.acquire(b).unwrap();
        assert_eq!(s.in_progress(), 3);
    }
}
