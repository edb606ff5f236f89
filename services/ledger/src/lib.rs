//! gridbook-ledger: Gridbook's double-entry escrow ledger on PostgreSQL.
//!
//! - `model`: accounts, balances, transfers (integer minor units, `i64`).
//! - `rules`: pure transfer rules (validate against account states → new balances or a typed
//!   error), linked batches, and `MemLedger`, an in-memory model for property tests.
//! - `settlement`: pure escrow rules (reserve, fill, complete, void, release) → transfers.
//! - `store`: diesel at the edge — accounts, transfers, expiry, statements, invariant checks.
//! - `escrow`: the escrow API on top of `store` + `settlement`.
//! - `events`: processed-events (exactly-once consumption) and the transactional outbox.
//! - `epoch`: the published economic rule and its pure math (fee shares, emission, reward split).
//! - `supply`: the bounded GRID supply (genesis, figures).
//! - `token`: the GRID token's constants and each user's GRID account.
//! - `token_escrow`: a token market's escrow: buys as job bids, sells held by a pending transfer,
//!   fills delivered versus payment.
//!
//! Tables, migrations and connections come from `gridbook-db`. Every operation takes
//! `&mut PgConnection` and runs in a (nested) transaction, so a caller can put processed-event +
//! ledger effect + outbox into one transaction.

pub mod epoch;
pub mod error;
pub mod escrow;
pub mod events;
pub mod ids;
pub mod model;
pub mod rules;
pub mod settlement;
pub mod store;
pub mod supply;
pub mod token;
pub mod token_escrow;

/// The tables, declared once in `gridbook-db`.
use gridbook_db::schema;

pub use error::{LedgerError, Result};
pub use ids::{AccountId, TransferId};
pub use model::*;

/// The diesel this crate is built with (for callers that share connections with it).
pub use diesel;
