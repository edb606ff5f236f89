//! Typed errors with stable snake_case codes (`LedgerError::code`) that the API renders.

use crate::ids::{AccountId, TransferId};

/// Why the ledger refused an operation. Rejections never leave a partial effect.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("amount must be positive")]
    AmountMustBePositive,
    #[error("debit and credit account are the same ({0})")]
    SameAccount(AccountId),
    #[error("account {0} not found")]
    AccountNotFound(AccountId),
    #[error("account {0} already exists with different content")]
    AccountExistsWithDifferentContent(AccountId),
    #[error("accounts are on different ledgers")]
    LedgerMismatch,
    #[error("transfer {0} already exists with different content")]
    ExistsWithDifferentContent(TransferId),
    #[error("pending transfer {0} not found")]
    PendingNotFound(TransferId),
    #[error("transfer {0} is not pending")]
    NotPending(TransferId),
    #[error("pending transfer {0} is already resolved")]
    PendingAlreadyResolved(TransferId),
    #[error("pending transfer {0} has expired")]
    PendingExpired(TransferId),
    #[error("post amount exceeds the pending amount")]
    ExceedsPendingAmount,
    #[error("account {0}: debits would exceed credits")]
    ExceedsCredits(AccountId),
    #[error("account {0}: credits would exceed debits")]
    ExceedsDebits(AccountId),
    #[error("arithmetic overflow")]
    Overflow,
    #[error("batch too large ({0} transfers, at most {max})", max = crate::store::MAX_BATCH)]
    BatchTooLarge(usize),
    #[error("transfer #{index} of the batch failed: {source}")]
    InBatch {
        index: usize,
        #[source]
        source: Box<LedgerError>,
    },
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("order {0} not found")]
    OrderNotFound(uuid::Uuid),
    #[error("order {0} already exists with different content")]
    OrderExistsWithDifferentContent(uuid::Uuid),
    #[error("order has {open} open units, {requested} requested")]
    InsufficientOpenQuantity { open: i64, requested: i64 },
    #[error("trade price above the order's limit price")]
    PriceAboveLimit,
    #[error("assignment {0} not found")]
    AssignmentNotFound(uuid::Uuid),
    #[error("assignment {0} already exists with different content")]
    AssignmentExistsWithDifferentContent(uuid::Uuid),
    #[error("assignment {0} is already resolved")]
    AssignmentAlreadyResolved(uuid::Uuid),
    #[error("a concurrent writer conflicted; retry")]
    Conflict,
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
}

impl LedgerError {
    /// A stable snake_case code for API responses and logs.
    pub fn code(&self) -> &'static str {
        use LedgerError::*;
        match self {
            AmountMustBePositive => "amount_must_be_positive",
            SameAccount(_) => "accounts_must_be_different",
            AccountNotFound(_) => "account_not_found",
            AccountExistsWithDifferentContent(_) => "account_exists_with_different_content",
            LedgerMismatch => "ledger_mismatch",
            ExistsWithDifferentContent(_) => "exists_with_different_content",
            PendingNotFound(_) => "pending_transfer_not_found",
            NotPending(_) => "pending_transfer_not_pending",
            PendingAlreadyResolved(_) => "pending_transfer_already_resolved",
            PendingExpired(_) => "pending_transfer_expired",
            ExceedsPendingAmount => "exceeds_pending_transfer_amount",
            ExceedsCredits(_) => "exceeds_credits",
            ExceedsDebits(_) => "exceeds_debits",
            Overflow => "overflow",
            BatchTooLarge(_) => "batch_too_large",
            InBatch { source, .. } => source.code(),
            Invalid(_) => "invalid_input",
            OrderNotFound(_) => "order_not_found",
            OrderExistsWithDifferentContent(_) => "order_exists_with_different_content",
            InsufficientOpenQuantity { .. } => "insufficient_open_quantity",
            PriceAboveLimit => "price_above_limit",
            AssignmentNotFound(_) => "assignment_not_found",
            AssignmentExistsWithDifferentContent(_) => "assignment_exists_with_different_content",
            AssignmentAlreadyResolved(_) => "assignment_already_resolved",
            Conflict => "conflict",
            Database(_) => "internal",
        }
    }

    /// The error without its batch wrapper.
    pub fn root(&self) -> &LedgerError {
        match self {
            LedgerError::InBatch { source, .. } => source.root(),
            e => e,
        }
    }

    pub(crate) fn in_batch(index: usize, e: LedgerError) -> Self {
        match e {
            e @ (LedgerError::Database(_) | LedgerError::Conflict) => e,
            e => LedgerError::InBatch {
                index,
                source: Box::new(e),
            },
        }
    }
}

pub type Result<T, E = LedgerError> = std::result::Result<T, E>;
