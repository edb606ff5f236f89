//! What the marketplace does to a provider node from more than one place: revoke its NATS
//! credentials, suspend it, cancel its open asks (the API on deletion and an admin's
//! suspension, the settlement worker when the node's assignment fails).

use chrono::Utc;
use diesel::prelude::*;
use matching_core::{Cancel, CommandKind, OrderId};
use uuid::Uuid;

use crate::Result;
use crate::schema::{asks, node_credentials, nodes, users};
use crate::status::{AskStatus, NodeStatus};

/// Revokes every credential of `node` (in the caller's transaction); returns how many.
pub fn revoke_credentials(c: &mut PgConnection, node: Uuid) -> QueryResult<usize> {
    diesel::update(
        node_credentials::table
            .filter(node_credentials::node_id.eq(node))
            .filter(node_credentials::revoked_at.is_null()),
    )
    .set(node_credentials::revoked_at.eq(Utc::now()))
    .execute(c)
}

/// Suspends `node` (unless deleted) and revokes its credentials: it can no longer connect to
/// NATS, get a grant for its assignments, or post asks. `true` when it was not suspended yet.
pub fn suspend(c: &mut PgConnection, node: Uuid) -> Result<bool> {
    let n = diesel::update(
        nodes::table
            .find(node)
            .filter(nodes::status.eq_any([NodeStatus::Probation, NodeStatus::Active])),
    )
    .set(nodes::status.eq(NodeStatus::Suspended))
    .execute(c)?;
    revoke_credentials(c, node)?;
    Ok(n > 0)
}

/// The engine account of a node's owner (what its asks were placed with).
pub fn owner_engine_account(c: &mut PgConnection, node: Uuid) -> Result<Option<u64>> {
    let acct: Option<i64> = nodes::table
        .inner_join(users::table)
        .filter(nodes::id.eq(node))
        .select(users::engine_account)
        .first(c)
        .optional()?;
    Ok(acct.map(|a| a.max(0) as u64))
}

/// Marks the open asks of `node` (in `market`, or all) `cancel_requested` and returns, per ask,
/// its market and the engine Cancel the caller queues in the same transaction (the worker closes
/// the ask on the engine's event). `engine_account`: the node owner's.
pub fn cancel_open_asks(
    c: &mut PgConnection,
    node: Uuid,
    market: Option<&str>,
    engine_account: u64,
) -> Result<Vec<(String, CommandKind)>> {
    let set = (asks::status.eq(AskStatus::CancelRequested), asks::updated_at.eq(Utc::now()));
    let open_of_node = asks::node_id.eq(node).and(asks::status.eq(AskStatus::Open));
    let ret = (asks::market, asks::engine_order_id);
    let open: Vec<(String, i64)> = match market {
        Some(m) => diesel::update(asks::table.filter(open_of_node.and(asks::market.eq(m))))
            .set(set)
            .returning(ret)
            .get_results(c)?,
        None => diesel::update(asks::table.filter(open_of_node))
            .set(set)
            .returning(ret)
            .get_results(c)?,
    };
    Ok(open
        .into_iter()
        .map(|(market, id)| {
            let cmd = CommandKind::Cancel(Cancel {
                id: OrderId(id.max(0) as u64),
                account: matching_core::AccountId(engine_account),
            });
            (market, cmd)
        })
        .collect())
}
