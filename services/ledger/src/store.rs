//! diesel at the edge: loads the rows the rules need (accounts locked in ascending id order),
//! calls `rules`, writes the result. Every function takes the caller's connection and runs in a
//! (nested) transaction — a savepoint when the caller already has one open.
//!
//! Concurrency: READ COMMITTED, with every account a batch touches locked by one
//! `SELECT … ORDER BY id FOR UPDATE` (a fixed global order, so two batches never deadlock on
//! accounts). Reads taken before the lock (idempotency look-up, pending transfers) can be stale;
//! the database backstops them with unique constraints (transfer id; one resolution per pending
//! transfer), and a unique violation, deadlock or serialization failure retries the batch.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SubsecRound, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::error::{LedgerError, Result};
use crate::ids::{AccountId, TransferId};
use crate::model::*;
use crate::rules::{self, AccountState, Applied, PendingState};
use crate::schema::{ledger_accounts, ledger_transfers};

/// At most this many transfers in one linked batch.
pub const MAX_BATCH: usize = 8_000;
const RETRIES: usize = 5;

#[derive(Queryable, Selectable, Insertable, Clone, Debug)]
#[diesel(table_name = ledger_accounts)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct AccountRow {
    id: uuid::Uuid,
    ledger: String,
    code: String,
    debits_must_not_exceed_credits: bool,
    credits_must_not_exceed_debits: bool,
    debits_pending: i64,
    debits_posted: i64,
    credits_pending: i64,
    credits_posted: i64,
    reference: Option<uuid::Uuid>,
    created_at: DateTime<Utc>,
}

impl AccountRow {
    fn into_account(self) -> Result<Account> {
        Ok(Account {
            id: AccountId(self.id),
            ledger: self.ledger,
            code: AccountCode::parse(&self.code)?,
            flags: AccountFlags {
                debits_must_not_exceed_credits: self.debits_must_not_exceed_credits,
                credits_must_not_exceed_debits: self.credits_must_not_exceed_debits,
            },
            balances: Balances {
                debits_pending: self.debits_pending,
                debits_posted: self.debits_posted,
                credits_pending: self.credits_pending,
                credits_posted: self.credits_posted,
            },
            reference: self.reference,
            created_at: self.created_at,
        })
    }
    fn state(&self) -> AccountState {
        AccountState {
            ledger: self.ledger.clone(),
            flags: AccountFlags {
                debits_must_not_exceed_credits: self.debits_must_not_exceed_credits,
                credits_must_not_exceed_debits: self.credits_must_not_exceed_debits,
            },
            balances: Balances {
                debits_pending: self.debits_pending,
                debits_posted: self.debits_posted,
                credits_pending: self.credits_pending,
                credits_posted: self.credits_posted,
            },
        }
    }
}

#[derive(Queryable, QueryableByName, Selectable, Clone, Debug)]
#[diesel(table_name = ledger_transfers)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub(crate) struct TransferRow {
    id: uuid::Uuid,
    seq: i64,
    kind: String,
    debit_account_id: uuid::Uuid,
    credit_account_id: uuid::Uuid,
    ledger: String,
    amount: i64,
    pending_id: Option<uuid::Uuid>,
    expires_at: Option<DateTime<Utc>>,
    code: String,
    reference: Option<uuid::Uuid>,
    created_at: DateTime<Utc>,
}

impl TransferRow {
    fn into_transfer(self) -> Result<Transfer> {
        Ok(Transfer {
            id: TransferId(self.id),
            seq: self.seq,
            kind: TransferKind::parse(&self.kind)?,
            debit_account: AccountId(self.debit_account_id),
            credit_account: AccountId(self.credit_account_id),
            ledger: self.ledger,
            amount: self.amount,
            pending_id: self.pending_id.map(TransferId),
            expires_at: self.expires_at,
            code: self.code,
            reference: self.reference,
            created_at: self.created_at,
        })
    }
}

#[derive(Insertable)]
#[diesel(table_name = ledger_transfers)]
struct InsertTransfer<'a> {
    id: uuid::Uuid,
    kind: &'a str,
    debit_account_id: uuid::Uuid,
    credit_account_id: uuid::Uuid,
    ledger: &'a str,
    amount: i64,
    pending_id: Option<uuid::Uuid>,
    expires_at: Option<DateTime<Utc>>,
    code: &'a str,
    reference: Option<uuid::Uuid>,
    created_at: DateTime<Utc>,
}

impl<'a> From<&'a Transfer> for InsertTransfer<'a> {
    fn from(t: &'a Transfer) -> Self {
        InsertTransfer {
            id: t.id.0,
            kind: t.kind.as_str(),
            debit_account_id: t.debit_account.0,
            credit_account_id: t.credit_account.0,
            ledger: &t.ledger,
            amount: t.amount,
            pending_id: t.pending_id.map(|p| p.0),
            expires_at: t.expires_at,
            code: &t.code,
            reference: t.reference,
            created_at: t.created_at,
        }
    }
}

/// Is this error worth retrying the whole batch for (a lost race)?
fn is_retryable(e: &LedgerError) -> bool {
    match e {
        LedgerError::Database(DieselError::DatabaseError(kind, info)) => {
            matches!(
                kind,
                DatabaseErrorKind::UniqueViolation | DatabaseErrorKind::SerializationFailure
            ) || info.message().contains("deadlock detected")
        }
        _ => false,
    }
}

/// Runs `f` in a (nested) transaction, retrying lost races.
pub(crate) fn with_retry<T>(
    conn: &mut PgConnection,
    mut f: impl FnMut(&mut PgConnection) -> Result<T>,
) -> Result<T> {
    for attempt in 0.. {
        match conn.transaction(|c| f(c)) {
            Err(e) if is_retryable(&e) => {
                if attempt + 1 >= RETRIES {
                    tracing::warn!(error = %e, "ledger batch kept conflicting");
                    return Err(LedgerError::Conflict);
                }
            }
            r => return r,
        }
    }
    unreachable!()
}

/// The transaction's clock, truncated to PostgreSQL's microseconds.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Creates an account; idempotent (same id and content → the stored account).
pub fn create_account(conn: &mut PgConnection, new: &NewAccount) -> Result<Account> {
    create_accounts(conn, std::slice::from_ref(new)).map(|mut v| v.remove(0))
}

/// Creates accounts (all or none); each idempotent.
pub fn create_accounts(conn: &mut PgConnection, news: &[NewAccount]) -> Result<Vec<Account>> {
    conn.transaction(|c| {
        let rows: Vec<_> = news
            .iter()
            .map(|n| {
                (
                    ledger_accounts::id.eq(n.id.0),
                    ledger_accounts::ledger.eq(&n.ledger),
                    ledger_accounts::code.eq(n.code.as_str()),
                    ledger_accounts::debits_must_not_exceed_credits
                        .eq(n.flags.debits_must_not_exceed_credits),
                    ledger_accounts::credits_must_not_exceed_debits
                        .eq(n.flags.credits_must_not_exceed_debits),
                    ledger_accounts::reference.eq(n.reference),
                )
            })
            .collect();
        if n_bad_flags(news) {
            return Err(LedgerError::Invalid(
                "an account cannot have both balance flags".into(),
            ));
        }
        diesel::insert_into(ledger_accounts::table)
            .values(&rows)
            .on_conflict_do_nothing()
            .execute(c)?;
        let found = get_accounts(c, &news.iter().map(|n| n.id).collect::<Vec<_>>())?;
        news.iter()
            .map(|n| {
                let a = found.get(&n.id).ok_or(LedgerError::AccountNotFound(n.id))?;
                if a.ledger != n.ledger
                    || a.code != n.code
                    || a.flags != n.flags
                    || a.reference != n.reference
                {
                    return Err(LedgerError::AccountExistsWithDifferentContent(n.id));
                }
                Ok(a.clone())
            })
            .collect()
    })
}

fn n_bad_flags(news: &[NewAccount]) -> bool {
    news.iter()
        .any(|n| n.flags.debits_must_not_exceed_credits && n.flags.credits_must_not_exceed_debits)
}

pub fn get_account(conn: &mut PgConnection, id: AccountId) -> Result<Account> {
    ledger_accounts::table
        .find(id.0)
        .select(AccountRow::as_select())
        .first(conn)
        .optional()?
        .ok_or(LedgerError::AccountNotFound(id))?
        .into_account()
}

pub fn get_accounts(
    conn: &mut PgConnection,
    ids: &[AccountId],
) -> Result<BTreeMap<AccountId, Account>> {
    let ids: Vec<uuid::Uuid> = ids.iter().map(|i| i.0).collect();
    ledger_accounts::table
        .filter(ledger_accounts::id.eq_any(ids))
        .select(AccountRow::as_select())
        .load(conn)?
        .into_iter()
        .map(|r| r.into_account().map(|a| (a.id, a)))
        .collect()
}

pub fn get_transfer(conn: &mut PgConnection, id: TransferId) -> Result<Option<Transfer>> {
    ledger_transfers::table
        .find(id.0)
        .select(TransferRow::as_select())
        .first(conn)
        .optional()?
        .map(TransferRow::into_transfer)
        .transpose()
}

/// Creates one transfer (idempotent by id).
pub fn create_transfer(conn: &mut PgConnection, t: &NewTransfer) -> Result<Transfer> {
    create_transfers(conn, std::slice::from_ref(t)).map(|mut v| v.remove(0))
}

/// Creates a linked batch: every transfer succeeds or none does (`InBatch { index, .. }` names the
/// first failure). Transfers already stored with the same content are returned unchanged.
pub fn create_transfers(conn: &mut PgConnection, reqs: &[NewTransfer]) -> Result<Vec<Transfer>> {
    if reqs.is_empty() {
        return Ok(Vec::new());
    }
    if reqs.len() > MAX_BATCH {
        return Err(LedgerError::BatchTooLarge(reqs.len()));
    }
    with_retry(conn, |c| create_transfers_once(c, reqs))
}

/// Loads the rows with these ids plus every resolution of the given pending ids.
fn load_related(
    conn: &mut PgConnection,
    ids: &[uuid::Uuid],
    pending_ids: &[uuid::Uuid],
) -> Result<(BTreeMap<TransferId, Transfer>, BTreeSet<TransferId>)> {
    // Two index look-ups (an `OR` of both would make PostgreSQL scan the table).
    let mut rows: Vec<TransferRow> = if ids.is_empty() {
        Vec::new()
    } else {
        ledger_transfers::table
            .filter(ledger_transfers::id.eq_any(ids))
            .select(TransferRow::as_select())
            .load(conn)?
    };
    if !pending_ids.is_empty() {
        rows.extend(
            ledger_transfers::table
                .filter(
                    ledger_transfers::pending_id
                        .assume_not_null()
                        .eq_any(pending_ids),
                )
                .select(TransferRow::as_select())
                .load(conn)?,
        );
    }
    let mut by_id = BTreeMap::new();
    let mut resolved = BTreeSet::new();
    for r in rows {
        let t = r.into_transfer()?;
        if let Some(p) = t.pending_id {
            resolved.insert(p);
        }
        by_id.insert(t.id, t);
    }
    Ok((by_id, resolved))
}

/// Locks the accounts in ascending id order and returns their states.
fn lock_accounts(
    conn: &mut PgConnection,
    ids: &BTreeSet<AccountId>,
) -> Result<BTreeMap<AccountId, AccountState>> {
    let ids: Vec<uuid::Uuid> = ids.iter().map(|i| i.0).collect();
    let rows: Vec<AccountRow> = ledger_accounts::table
        .filter(ledger_accounts::id.eq_any(ids))
        .order(ledger_accounts::id.asc())
        .for_update()
        .select(AccountRow::as_select())
        .load(conn)?;
    Ok(rows.iter().map(|r| (AccountId(r.id), r.state())).collect())
}

fn insert(conn: &mut PgConnection, created: &[Transfer]) -> Result<BTreeMap<TransferId, i64>> {
    if created.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows: Vec<InsertTransfer<'_>> = created.iter().map(InsertTransfer::from).collect();
    let seqs: Vec<(uuid::Uuid, i64)> = diesel::insert_into(ledger_transfers::table)
        .values(&rows)
        .returning((ledger_transfers::id, ledger_transfers::seq))
        .get_results(conn)?;
    Ok(seqs.into_iter().map(|(i, s)| (TransferId(i), s)).collect())
}

fn create_transfers_once(conn: &mut PgConnection, reqs: &[NewTransfer]) -> Result<Vec<Transfer>> {
    let mut ids: Vec<uuid::Uuid> = reqs.iter().map(|r| r.id.0).collect();
    let pending_ids: Vec<uuid::Uuid> = reqs
        .iter()
        .filter_map(|r| r.pending_id())
        .map(|p| p.0)
        .collect();
    ids.extend(&pending_ids);
    // Before locking, read what decides which accounts to lock: the pending transfers resolved
    // here (immutable rows). Plain transfers skip this round trip.
    let (stored, _) = if pending_ids.is_empty() {
        Default::default()
    } else {
        load_related(conn, &ids, &[])?
    };

    // Every request already stored: an idempotent retry, no locks needed.
    if !stored.is_empty() && reqs.iter().all(|r| stored.contains_key(&r.id)) {
        let mut no_accounts = BTreeMap::new();
        let mut pendings = pendings_of(reqs, &stored, &BTreeSet::new());
        return rules::apply_batch(reqs, &stored, &mut no_accounts, &mut pendings, now())
            .map(|v| v.into_iter().map(|a| a.transfer().clone()).collect());
    }

    // Which accounts: the request's own, or its pending transfer's (stored or earlier in the batch).
    let mut accounts = BTreeSet::new();
    let in_batch: BTreeMap<TransferId, &NewTransfer> = reqs.iter().map(|r| (r.id, r)).collect();
    for r in reqs {
        match &r.op {
            TransferOp::Posted { debit, credit, .. }
            | TransferOp::Pending { debit, credit, .. } => {
                accounts.insert(*debit);
                accounts.insert(*credit);
            }
            TransferOp::Post { pending, .. } | TransferOp::Void { pending } => {
                if let Some(p) = stored.get(pending) {
                    accounts.insert(p.debit_account);
                    accounts.insert(p.credit_account);
                } else if let Some(TransferOp::Pending { debit, credit, .. }) =
                    in_batch.get(pending).map(|p| &p.op)
                {
                    accounts.insert(*debit);
                    accounts.insert(*credit);
                }
            }
        }
    }
    let mut states = lock_accounts(conn, &accounts)?;
    // Under the locks: fresh idempotency and resolution state (a race that slipped between the
    // two reads is caught by the unique constraints and retried).
    let (stored, resolved) = load_related(conn, &ids, &pending_ids)?;
    let mut pendings = pendings_of(reqs, &stored, &resolved);
    let now = now();
    let applied = rules::apply_batch(reqs, &stored, &mut states, &mut pendings, now)?;
    let created: Vec<Transfer> = applied
        .iter()
        .filter_map(|a| {
            if let Applied::Created(t) = a {
                Some(t.clone())
            } else {
                None
            }
        })
        .collect();
    let seqs = insert(conn, &created)?;
    Ok(applied
        .into_iter()
        .map(|a| match a {
            Applied::Created(mut t) => {
                t.seq = seqs[&t.id];
                t
            }
            Applied::Existing(t) => t,
        })
        .collect())
}

fn pendings_of(
    reqs: &[NewTransfer],
    stored: &BTreeMap<TransferId, Transfer>,
    resolved: &BTreeSet<TransferId>,
) -> BTreeMap<TransferId, PendingState> {
    reqs.iter()
        .filter_map(|r| r.pending_id())
        .filter_map(|p| stored.get(&p))
        .map(|t| {
            (
                t.id,
                PendingState {
                    transfer: t.clone(),
                    resolved: resolved.contains(&t.id),
                },
            )
        })
        .collect()
}

/// Expires up to `limit` pending transfers whose timeout is at or before `now`; each expiry is a
/// transfer with an id derived from the pending id, so concurrent sweepers agree. Returns the
/// expiries this call created.
pub fn expire_pending(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Transfer>> {
    let now = now.trunc_subsecs(6);
    let candidates: Vec<TransferRow> = diesel::sql_query(
        "SELECT p.* FROM ledger_transfers p
         WHERE p.kind = 'pending' AND p.expires_at IS NOT NULL AND p.expires_at <= $1
           AND NOT EXISTS (SELECT 1 FROM ledger_transfers r WHERE r.pending_id = p.id)
         ORDER BY p.expires_at, p.id LIMIT $2",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(now)
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .load(conn)?;
    if candidates.is_empty() {
        return Ok(Vec::new());
    }
    let candidates: Vec<Transfer> = candidates
        .into_iter()
        .map(TransferRow::into_transfer)
        .collect::<Result<_>>()?;
    with_retry(conn, |c| {
        let accounts: BTreeSet<AccountId> = candidates
            .iter()
            .flat_map(|t| [t.debit_account, t.credit_account])
            .collect();
        let mut states = lock_accounts(c, &accounts)?;
        let pids: Vec<uuid::Uuid> = candidates.iter().map(|t| t.id.0).collect();
        let (_, resolved) = load_related(c, &[], &pids)?;
        let mut pendings: BTreeMap<TransferId, PendingState> = candidates
            .iter()
            .map(|t| {
                (
                    t.id,
                    PendingState {
                        transfer: t.clone(),
                        resolved: resolved.contains(&t.id),
                    },
                )
            })
            .collect();
        let mut created = Vec::new();
        for p in &candidates {
            let id = TransferId::derived(&["expire", &p.id.to_string()]);
            match rules::expire(id, p.id, &mut states, &mut pendings, now) {
                Ok(t) => created.push(t),
                Err(LedgerError::PendingAlreadyResolved(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let seqs = insert(c, &created)?;
        Ok(created
            .into_iter()
            .map(|mut t| {
                t.seq = seqs[&t.id];
                t
            })
            .collect())
    })
}

/// A balance statement for the API.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Statement {
    pub account: Account,
    /// Posted credits − posted debits.
    pub posted_balance: i128,
    /// Posted balance − pending debits (what a credit-normal account can spend).
    pub available_balance: i128,
    pub pending_debits: i64,
    pub pending_credits: i64,
    /// The last transfer reflected (history cursor).
    pub last_seq: Option<i64>,
}

pub fn balance_statement(conn: &mut PgConnection, id: AccountId) -> Result<Statement> {
    conn.transaction(|c| {
        let account = get_account(c, id)?;
        let last_seq: Option<i64> = ledger_transfers::table
            .filter(
                ledger_transfers::debit_account_id
                    .eq(id.0)
                    .or(ledger_transfers::credit_account_id.eq(id.0)),
            )
            .select(diesel::dsl::max(ledger_transfers::seq))
            .first(c)?;
        let b = account.balances;
        Ok(Statement {
            posted_balance: b.posted(),
            available_balance: b.available(),
            pending_debits: b.debits_pending,
            pending_credits: b.credits_pending,
            account,
            last_seq,
        })
    })
}

/// Transfer history of an account, oldest first, after the `after_seq` cursor (at most `limit`).
pub fn account_history(
    conn: &mut PgConnection,
    id: AccountId,
    after_seq: Option<i64>,
    limit: i64,
) -> Result<Vec<Transfer>> {
    ledger_transfers::table
        .filter(
            ledger_transfers::debit_account_id
                .eq(id.0)
                .or(ledger_transfers::credit_account_id.eq(id.0)),
        )
        .filter(ledger_transfers::seq.gt(after_seq.unwrap_or(0)))
        .order(ledger_transfers::seq.asc())
        .limit(limit.clamp(1, 1000))
        .select(TransferRow::as_select())
        .load(conn)?
        .into_iter()
        .map(TransferRow::into_transfer)
        .collect()
}

#[derive(QueryableByName, Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub invariant: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub detail: String,
}

/// Runs the database's invariant audit (`ledger_check_invariants()`); empty = healthy.
pub fn check_invariants(conn: &mut PgConnection) -> Result<Vec<Violation>> {
    Ok(diesel::sql_query("SELECT invariant, detail FROM ledger_check_invariants()").load(conn)?)
}
