//! gridbook-ledger: Gridbook's double-entry escrow ledger on PostgreSQL.
//!
//! - `model`: accounts, balances, transfers (integer minor units, `i64`).
//! - `rules`: pure transfer rules (validate against account states → new balances or a typed
//!   error), linked batches, and `MemLedger`, an in-memory model for property tests.
//! - `settlement`: pure escrow rules (reserve, fill, complete, void, release) → transfers.
//! - `store`: diesel at the edge — accounts, transfers, expiry, statements, invariant checks.
//! - `escrow`: the escrow API on top of `store` + `settlement`.
//! - `events`: processed-events (exactly-once consumption) and the transactional outbox.
//! - `epoch`: buyback-and-burn with a report, the rewards-pool payout hook.
//!
//! Every operation takes `&mut PgConnection` and runs in a (nested) transaction, so a caller can
//! put processed-event + ledger effect + outbox into one transaction.

pub mod epoch;
pub mod error;
pub mod escrow;
pub mod events;
pub mod ids;
pub mod model;
pub mod rules;
mod schema;
pub mod settlement;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{LedgerError, Result};
pub use ids::{AccountId, TransferId};
pub use model::*;

use diesel::PgConnection;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

/// All of Gridbook's migrations (the workspace's `migrations/` folder).
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations");

/// Runs pending migrations (called at start-up). Returns the versions applied.
pub fn run_migrations(conn: &mut PgConnection) -> Result<Vec<String>> {
    let applied = conn
        .run_pending_migrations(MIGRATIONS)
        .map_err(|e| LedgerError::Migration(e.to_string()))?;
    Ok(applied.into_iter().map(|v| v.to_string()).collect())
}

/// The diesel this crate is built with (for callers that share connections with it).
pub use diesel;

/// `url` with its database name replaced (`postgres://u@h:p/db?x` → `.../name?x`).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..path_start], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Connects to PostgreSQL.
pub fn connect(url: &str) -> Result<PgConnection> {
    use diesel::Connection;
    Ok(PgConnection::establish(url)?)
}
