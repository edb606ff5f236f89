//! `token_orders`: the orders of a token market (`GRID-CREDITS`), placed by the API for a user
//! or by the settlement worker for the protocol's buyback. One row maps the engine order id
//! (from `market_order_ids`, like every engine order of ours) to the order's escrow (`id`: the
//! `escrow_orders` row of a buy, the `token_escrow_orders` row of a sell), its owner and the
//! two ledger accounts its fills move; it is inserted in the transaction that reserves the escrow
//! and queues the Place in the outbox, so it exists before the engine can emit an event for it.
//! The worker keeps `filled`, `status` and `accepted_seq` current from the engine's events.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use matching_core::{AccountId, Cancel, CommandKind, OrderId, Place, Side, TimeInForce};
use uuid::Uuid;

use crate::schema::token_orders;
use crate::status::{TokenOrderStatus, TokenSide, TokenTimeInForce};
use crate::{DbError, Result};

/// The engine account of the protocol's own orders (the buyback): never a user's, whose engine
/// accounts come from the sequence `engine_account_ids` (1, 2, …), so the engine's self-trade
/// prevention treats the protocol as an account of its own.
pub const PROTOCOL_ENGINE_ACCOUNT: u64 = i64::MAX as u64;

/// One row of `token_orders`.
#[derive(Queryable, Selectable, Insertable, Clone, Debug, PartialEq, Eq)]
#[diesel(table_name = token_orders)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct TokenOrderRow {
    /// The escrow order id.
    pub id: Uuid,
    pub engine_order_id: i64,
    pub market: String,
    /// The user; `None` for the protocol's order of `epoch`.
    pub owner: Option<Uuid>,
    pub epoch: Option<i64>,
    pub side: TokenSide,
    /// Credits' minor units per whole token (engine ticks).
    pub price: i64,
    /// Whole tokens (engine lots).
    pub quantity: i64,
    pub filled: i64,
    pub time_in_force: TokenTimeInForce,
    pub client_order_id: Option<String>,
    /// The credits account the order pays from (buy) or is paid into (sell).
    pub credit_account_id: Uuid,
    /// The token account the order receives into (buy) or delivers from (sell).
    pub token_account_id: Uuid,
    pub engine_account: i64,
    pub status: TokenOrderStatus,
    pub accepted_seq: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TokenOrderRow {
    /// The engine's side of the order.
    pub fn engine_side(&self) -> Side {
        match self.side {
            TokenSide::Buy => Side::Bid,
            TokenSide::Sell => Side::Ask,
        }
    }

    /// The engine order id as the engine spells it.
    pub fn engine_id(&self) -> Result<u64> {
        u64::try_from(self.engine_order_id)
            .map_err(|_| DbError::Refused(format!("token order {}: bad engine order id", self.id)))
    }

    /// Lots not yet filled.
    pub fn open(&self) -> i64 {
        (self.quantity - self.filled).max(0)
    }

    /// The engine command that places it.
    pub fn place_command(&self) -> Result<CommandKind> {
        let bad = |what: &str| DbError::Refused(format!("token order {}: {what} out of range", self.id));
        Ok(CommandKind::Place(Place {
            id: OrderId(self.engine_id()?),
            account: AccountId(u64::try_from(self.engine_account).map_err(|_| bad("engine account"))?),
            // A token market has no anti-whale cap: the owner is the account.
            owner: None,
            side: self.engine_side(),
            price: Some(u64::try_from(self.price).map_err(|_| bad("price"))?),
            qty: u64::try_from(self.quantity).map_err(|_| bad("quantity"))?,
            tif: match self.time_in_force {
                TokenTimeInForce::Gtc => TimeInForce::Gtc,
                TokenTimeInForce::Ioc => TimeInForce::Ioc,
            },
            post_only: false,
            budget: None,
            // The market's mode (cancel the newest): an account never trades with itself.
            stp: None,
        }))
    }

    /// The engine command that cancels it.
    pub fn cancel_command(&self) -> Result<CommandKind> {
        Ok(CommandKind::Cancel(Cancel {
            id: OrderId(self.engine_id()?),
            account: AccountId(
                u64::try_from(self.engine_account)
                    .map_err(|_| DbError::Refused(format!("token order {}: bad engine account", self.id)))?,
            ),
        }))
    }
}

/// Inserts an order (the caller's transaction also reserves its escrow and queues its Place).
pub fn insert(conn: &mut PgConnection, row: &TokenOrderRow) -> Result<TokenOrderRow> {
    Ok(diesel::insert_into(token_orders::table)
        .values(row)
        .returning(TokenOrderRow::as_returning())
        .get_result(conn)?)
}

/// One order by its id (the escrow order id).
pub fn get(conn: &mut PgConnection, id: Uuid, lock: bool) -> Result<Option<TokenOrderRow>> {
    let q = token_orders::table.find(id).select(TokenOrderRow::as_select());
    Ok(if lock { q.for_update().first(conn).optional()? } else { q.first(conn).optional()? })
}

/// The protocol's order of `epoch`, if one was placed.
pub fn of_epoch(conn: &mut PgConnection, epoch: i64) -> Result<Option<TokenOrderRow>> {
    Ok(token_orders::table
        .filter(token_orders::epoch.eq(epoch))
        .select(TokenOrderRow::as_select())
        .first(conn)
        .optional()?)
}

/// The orders of `market` among engine order ids `ids`, by engine order id (ids beyond i64
/// cannot be ours and are ignored).
pub fn load(conn: &mut PgConnection, market: &str, ids: &[u64]) -> Result<BTreeMap<u64, TokenOrderRow>> {
    let ids: Vec<i64> = ids.iter().filter_map(|&i| i64::try_from(i).ok()).collect();
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows: Vec<TokenOrderRow> = token_orders::table
        .filter(token_orders::market.eq(market))
        .filter(token_orders::engine_order_id.eq_any(ids))
        .select(TokenOrderRow::as_select())
        .load(conn)?;
    Ok(rows.into_iter().map(|r| (r.engine_order_id as u64, r)).collect())
}

/// Records the engine's `accepted` for an order (first one wins).
pub fn mark_accepted(conn: &mut PgConnection, id: Uuid, seq: u64) -> Result<()> {
    let seq = i64::try_from(seq).map_err(|_| DbError::Refused(format!("event seq {seq} exceeds i64")))?;
    diesel::update(token_orders::table.find(id).filter(token_orders::accepted_seq.is_null()))
        .set(token_orders::accepted_seq.eq(seq))
        .execute(conn)?;
    Ok(())
}

/// Adds `qty` filled lots to an order (`filled` when all are); returns the row after.
pub fn add_filled(conn: &mut PgConnection, id: Uuid, qty: i64) -> Result<TokenOrderRow> {
    let row = get(conn, id, true)?.ok_or_else(|| DbError::Refused(format!("token order {id} missing")))?;
    let filled = row
        .filled
        .checked_add(qty)
        .filter(|f| *f <= row.quantity)
        .ok_or_else(|| DbError::Refused(format!("token order {id}: {qty} more lots exceed its {}", row.quantity)))?;
    let status = if filled == row.quantity { TokenOrderStatus::Filled } else { row.status };
    Ok(diesel::update(token_orders::table.find(id))
        .set((
            token_orders::filled.eq(filled),
            token_orders::status.eq(status),
            token_orders::updated_at.eq(diesel::dsl::now),
        ))
        .returning(TokenOrderRow::as_returning())
        .get_result(conn)?)
}

/// Closes an order the engine closed (`Cancelled` or `Rejected`); an order already `filled`
/// stays so.
pub fn close(conn: &mut PgConnection, id: Uuid, status: TokenOrderStatus) -> Result<()> {
    diesel::update(
        token_orders::table
            .find(id)
            .filter(token_orders::status.ne(TokenOrderStatus::Filled)),
    )
    .set((token_orders::status.eq(status), token_orders::updated_at.eq(diesel::dsl::now)))
    .execute(conn)?;
    Ok(())
}
