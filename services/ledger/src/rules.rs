//! Pure rules: no I/O, no clock (time comes in as `now`), no randomness. `store` feeds them the
//! locked account rows and writes what they return; property tests drive them directly.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::error::{LedgerError, Result};
use crate::ids::{AccountId, TransferId};
use crate::model::{Amount, Balances, NewTransfer, Transfer, TransferKind, TransferOp};

/// What the rules need to know of an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountState {
    pub ledger: String,
    pub flags: crate::model::AccountFlags,
    pub balances: Balances,
}

/// A pending transfer and whether it has been resolved (posted, voided or expired).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingState {
    pub transfer: Transfer,
    pub resolved: bool,
}

fn add(a: Amount, b: Amount) -> Result<Amount> {
    a.checked_add(b).ok_or(LedgerError::Overflow)
}

/// Checks an account's flags against its balances.
pub fn check_limits(id: AccountId, a: &AccountState) -> Result<()> {
    let b = &a.balances;
    if a.flags.debits_must_not_exceed_credits
        && (b.debits_pending as i128 + b.debits_posted as i128) > b.credits_posted as i128
    {
        return Err(LedgerError::ExceedsCredits(id));
    }
    if a.flags.credits_must_not_exceed_debits
        && (b.credits_pending as i128 + b.credits_posted as i128) > b.debits_posted as i128
    {
        return Err(LedgerError::ExceedsDebits(id));
    }
    Ok(())
}

/// The balance effect of one transfer: (pending delta, posted delta), applied to the debit side of
/// the debit account and the credit side of the credit account alike — so Σ debits = Σ credits.
pub fn effect(
    kind: TransferKind,
    amount: Amount,
    pending_amount: Option<Amount>,
) -> Result<(Amount, Amount)> {
    Ok(match kind {
        TransferKind::Posted => (0, amount),
        TransferKind::Pending => (amount, 0),
        TransferKind::Post => (-pending_amount.ok_or(LedgerError::Overflow)?, amount),
        TransferKind::Void | TransferKind::Expire => {
            (-pending_amount.ok_or(LedgerError::Overflow)?, 0)
        }
    })
}

/// Applies one transfer request to the account states (in place) and returns the transfer to
/// store. On error nothing is changed. `pendings` must hold every pending transfer the request
/// resolves; a pending created here is added to it, a resolved one marked.
/// `existing` is the stored transfer with the same id, if any (idempotency).
pub fn apply(
    req: &NewTransfer,
    existing: Option<&Transfer>,
    accounts: &mut BTreeMap<AccountId, AccountState>,
    pendings: &mut BTreeMap<TransferId, PendingState>,
    now: DateTime<Utc>,
) -> Result<Applied> {
    if let Some(t) = existing {
        let pending_amount = req
            .pending_id()
            .and_then(|p| pendings.get(&p))
            .map(|p| p.transfer.amount);
        return if same_content(t, req, pending_amount) {
            Ok(Applied::Existing(t.clone()))
        } else {
            Err(LedgerError::ExistsWithDifferentContent(req.id))
        };
    }
    let (kind, debit, credit, amount, pending_id, expires_at, pending_amount) = match &req.op {
        TransferOp::Posted {
            debit,
            credit,
            amount,
        } => (
            TransferKind::Posted,
            *debit,
            *credit,
            *amount,
            None,
            None,
            None,
        ),
        TransferOp::Pending {
            debit,
            credit,
            amount,
            expires_at,
        } => {
            if let Some(e) = expires_at
                && *e <= now
            {
                return Err(LedgerError::Invalid(
                    "pending transfer expires in the past".into(),
                ));
            }
            (
                TransferKind::Pending,
                *debit,
                *credit,
                *amount,
                None,
                *expires_at,
                None,
            )
        }
        TransferOp::Post { pending, .. } | TransferOp::Void { pending } => {
            let amount = match &req.op {
                TransferOp::Post { amount, .. } => *amount,
                _ => None,
            };
            let p = pendings
                .get(pending)
                .ok_or(LedgerError::PendingNotFound(*pending))?;
            if p.transfer.kind != TransferKind::Pending {
                return Err(LedgerError::NotPending(*pending));
            }
            if p.resolved {
                return Err(LedgerError::PendingAlreadyResolved(*pending));
            }
            let is_post = matches!(req.op, TransferOp::Post { .. });
            if is_post && p.transfer.expires_at.is_some_and(|e| now > e) {
                return Err(LedgerError::PendingExpired(*pending));
            }
            let amount = if is_post {
                amount.unwrap_or(p.transfer.amount)
            } else {
                p.transfer.amount
            };
            if amount > p.transfer.amount {
                return Err(LedgerError::ExceedsPendingAmount);
            }
            let kind = if is_post {
                TransferKind::Post
            } else {
                TransferKind::Void
            };
            (
                kind,
                p.transfer.debit_account,
                p.transfer.credit_account,
                amount,
                Some(*pending),
                None,
                Some(p.transfer.amount),
            )
        }
    };
    let transfer = build(
        req.id,
        kind,
        debit,
        credit,
        amount,
        pending_id,
        expires_at,
        &req.code,
        req.reference,
        now,
        pending_amount,
        accounts,
    )?;
    if let Some(p) = pending_id {
        pendings.get_mut(&p).expect("checked above").resolved = true;
    }
    if kind == TransferKind::Pending {
        pendings.insert(
            transfer.id,
            PendingState {
                transfer: transfer.clone(),
                resolved: false,
            },
        );
    }
    Ok(Applied::Created(transfer))
}

/// Resolves an expired pending transfer (the ledger's own "void" after the timeout).
pub fn expire(
    id: TransferId,
    pending: TransferId,
    accounts: &mut BTreeMap<AccountId, AccountState>,
    pendings: &mut BTreeMap<TransferId, PendingState>,
    now: DateTime<Utc>,
) -> Result<Transfer> {
    let p = pendings
        .get(&pending)
        .ok_or(LedgerError::PendingNotFound(pending))?;
    if p.transfer.kind != TransferKind::Pending {
        return Err(LedgerError::NotPending(pending));
    }
    if p.resolved {
        return Err(LedgerError::PendingAlreadyResolved(pending));
    }
    if p.transfer.expires_at.is_none_or(|e| now < e) {
        return Err(LedgerError::Invalid(
            "pending transfer has not expired".into(),
        ));
    }
    let pt = p.transfer.clone();
    let t = build(
        id,
        TransferKind::Expire,
        pt.debit_account,
        pt.credit_account,
        pt.amount,
        Some(pending),
        None,
        "expire",
        pt.reference,
        now,
        Some(pt.amount),
        accounts,
    )?;
    pendings.get_mut(&pending).expect("checked above").resolved = true;
    Ok(t)
}

/// The outcome of applying one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// New: to be inserted.
    Created(Transfer),
    /// An idempotent retry: the original transfer, no effect.
    Existing(Transfer),
}

impl Applied {
    pub fn transfer(&self) -> &Transfer {
        match self {
            Applied::Created(t) | Applied::Existing(t) => t,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn build(
    id: TransferId,
    kind: TransferKind,
    debit: AccountId,
    credit: AccountId,
    amount: Amount,
    pending_id: Option<TransferId>,
    expires_at: Option<DateTime<Utc>>,
    code: &str,
    reference: Option<uuid::Uuid>,
    now: DateTime<Utc>,
    pending_amount: Option<Amount>,
    accounts: &mut BTreeMap<AccountId, AccountState>,
) -> Result<Transfer> {
    if amount <= 0 {
        return Err(LedgerError::AmountMustBePositive);
    }
    if debit == credit {
        return Err(LedgerError::SameAccount(debit));
    }
    if code.is_empty()
        || code.len() > 32
        || !code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
    {
        return Err(LedgerError::Invalid(format!(
            "transfer code {code:?} must be snake_case, at most 32 bytes"
        )));
    }
    let d = accounts
        .get(&debit)
        .ok_or(LedgerError::AccountNotFound(debit))?;
    let c = accounts
        .get(&credit)
        .ok_or(LedgerError::AccountNotFound(credit))?;
    if d.ledger != c.ledger {
        return Err(LedgerError::LedgerMismatch);
    }
    let ledger = d.ledger.clone();
    let (pend, post) = effect(kind, amount, pending_amount)?;
    let mut nd = d.clone();
    nd.balances.debits_pending = add(nd.balances.debits_pending, pend)?;
    nd.balances.debits_posted = add(nd.balances.debits_posted, post)?;
    let mut nc = c.clone();
    nc.balances.credits_pending = add(nc.balances.credits_pending, pend)?;
    nc.balances.credits_posted = add(nc.balances.credits_posted, post)?;
    if nd.balances.debits_pending < 0 || nc.balances.credits_pending < 0 {
        return Err(LedgerError::Overflow); // corrupted pending state; never expected
    }
    check_limits(debit, &nd)?;
    check_limits(credit, &nc)?;
    accounts.insert(debit, nd);
    accounts.insert(credit, nc);
    Ok(Transfer {
        id,
        seq: 0,
        kind,
        debit_account: debit,
        credit_account: credit,
        ledger,
        amount,
        pending_id,
        expires_at,
        code: code.to_owned(),
        reference,
        created_at: now,
    })
}

/// Does a stored transfer have the content of this request? (Idempotency.)
pub fn same_content(t: &Transfer, req: &NewTransfer, pending_amount: Option<Amount>) -> bool {
    if t.id != req.id || t.code != req.code || t.reference != req.reference {
        return false;
    }
    match &req.op {
        TransferOp::Posted {
            debit,
            credit,
            amount,
        } => {
            t.kind == TransferKind::Posted
                && t.debit_account == *debit
                && t.credit_account == *credit
                && t.amount == *amount
        }
        TransferOp::Pending {
            debit,
            credit,
            amount,
            expires_at,
        } => {
            t.kind == TransferKind::Pending
                && t.debit_account == *debit
                && t.credit_account == *credit
                && t.amount == *amount
                && t.expires_at == *expires_at
        }
        TransferOp::Post { pending, amount } => {
            t.kind == TransferKind::Post
                && t.pending_id == Some(*pending)
                && match amount {
                    Some(a) => t.amount == *a,
                    None => pending_amount == Some(t.amount),
                }
        }
        TransferOp::Void { pending } => {
            t.kind == TransferKind::Void && t.pending_id == Some(*pending)
        }
    }
}

/// Applies a linked batch: all succeed or none (states are only replaced on success).
pub fn apply_batch(
    reqs: &[NewTransfer],
    existing: &BTreeMap<TransferId, Transfer>,
    accounts: &mut BTreeMap<AccountId, AccountState>,
    pendings: &mut BTreeMap<TransferId, PendingState>,
    now: DateTime<Utc>,
) -> Result<Vec<Applied>> {
    let mut acc = accounts.clone();
    let mut pen = pendings.clone();
    let mut out = Vec::with_capacity(reqs.len());
    let mut seen = std::collections::BTreeSet::new();
    for (i, r) in reqs.iter().enumerate() {
        if !seen.insert(r.id) {
            return Err(LedgerError::in_batch(
                i,
                LedgerError::Invalid(format!("transfer id {} twice in one batch", r.id)),
            ));
        }
        out.push(
            apply(r, existing.get(&r.id), &mut acc, &mut pen, now)
                .map_err(|e| LedgerError::in_batch(i, e))?,
        );
    }
    *accounts = acc;
    *pendings = pen;
    Ok(out)
}

/// An in-memory ledger built from the same rules: used by property tests (and as a model).
#[derive(Clone, Debug, Default)]
pub struct MemLedger {
    pub accounts: BTreeMap<AccountId, AccountState>,
    pub pendings: BTreeMap<TransferId, PendingState>,
    pub transfers: BTreeMap<TransferId, Transfer>,
}

impl MemLedger {
    pub fn open(&mut self, id: AccountId, ledger: &str, flags: crate::model::AccountFlags) {
        self.accounts.entry(id).or_insert(AccountState {
            ledger: ledger.to_owned(),
            flags,
            balances: Balances::default(),
        });
    }
    pub fn execute(&mut self, reqs: &[NewTransfer], now: DateTime<Utc>) -> Result<Vec<Transfer>> {
        let applied = apply_batch(
            reqs,
            &self.transfers,
            &mut self.accounts,
            &mut self.pendings,
            now,
        )?;
        Ok(applied
            .into_iter()
            .map(|a| {
                if let Applied::Created(t) = &a {
                    self.transfers.insert(t.id, t.clone());
                }
                a.transfer().clone()
            })
            .collect())
    }
    /// Σ debits = Σ credits per ledger, pending and posted; every flag respected.
    pub fn check(&self) -> std::result::Result<(), String> {
        let mut sums: BTreeMap<&str, [i128; 4]> = BTreeMap::new();
        for (id, a) in &self.accounts {
            check_limits(*id, a).map_err(|e| e.to_string())?;
            let s = sums.entry(&a.ledger).or_default();
            let b = &a.balances;
            for (k, v) in [
                b.debits_pending,
                b.debits_posted,
                b.credits_pending,
                b.credits_posted,
            ]
            .into_iter()
            .enumerate()
            {
                if v < 0 {
                    return Err(format!("negative balance field on {id}"));
                }
                s[k] += v as i128;
            }
        }
        for (l, s) in sums {
            if s[0] != s[2] || s[1] != s[3] {
                return Err(format!("ledger {l}: debits {s:?} do not match credits"));
            }
        }
        Ok(())
    }
}
