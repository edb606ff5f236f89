//! Typed errors of the settlement worker.

use gridbook_ledger::LedgerError;

#[derive(Debug, thiserror::Error)]
pub enum SettlementError {
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("{0}")]
    Db(#[from] gridbook_db::DbError),
    #[error("database connection: {0}")]
    Connection(#[from] diesel::ConnectionError),
    #[error("a database task panicked or was cancelled")]
    TaskFailed,
    #[error("NATS: {0}")]
    Nats(String),
    /// The object store answered that the object does not exist (not a time-out or a dropped
    /// connection, which are `Nats`).
    #[error("NATS: {0}")]
    ObjectMissing(String),
    #[error("event cannot settle: {0}")]
    Refused(String),
    /// The event (or result) cannot settle for a reason the dead letter names.
    #[error("{why}")]
    Unsettleable {
        reason: gridbook_db::status::DeadLetterReason,
        why: String,
    },
    #[error("encoding: {0}")]
    Encode(#[from] serde_json::Error),
}

impl SettlementError {
    pub(crate) fn nats(e: impl std::fmt::Display) -> Self {
        SettlementError::Nats(e.to_string())
    }

    /// Worth retrying the whole message (the database or the network, not the event's content).
    pub fn is_transient(&self) -> bool {
        match self {
            SettlementError::Ledger(e) => is_transient_ledger(e),
            SettlementError::Db(gridbook_db::DbError::Refused(_)) => false,
            SettlementError::Db(gridbook_db::DbError::Query(e)) | SettlementError::Database(e) => {
                !breaks_a_constraint(e)
            }
            SettlementError::Db(_)
            | SettlementError::Connection(_)
            | SettlementError::TaskFailed
            | SettlementError::Nats(_)
            | SettlementError::ObjectMissing(_) => true,
            SettlementError::Encode(_)
            | SettlementError::Refused(_)
            | SettlementError::Unsettleable { .. } => false,
        }
    }
}

/// A statement the data refuses (a row it names does not exist, a CHECK fails): retrying the
/// same event gives the same answer, so it is refused, not retried.
pub fn breaks_a_constraint(e: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind as K, Error};
    matches!(
        e,
        Error::DatabaseError(K::ForeignKeyViolation | K::CheckViolation | K::NotNullViolation, _)
    )
}

/// Ledger errors that say nothing about the event (retry) versus business refusals (the event
/// cannot settle as it is: log it loudly and move on).
pub fn is_transient_ledger(e: &LedgerError) -> bool {
    matches!(
        e.root(),
        LedgerError::Database(_) | LedgerError::Conflict
    )
}

pub type Result<T, E = SettlementError> = std::result::Result<T, E>;
