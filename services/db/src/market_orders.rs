//! `market_orders`: the engine's order ids (u64) mapped to the marketplace (escrow order, ledger
//! account, provider node, job). The API inserts a row in the transaction that reserves the
//! escrow and queues the order command, so the row exists before the engine can emit an event
//! for the order; the settlement worker reads rows and marks bids accepted.

use diesel::prelude::*;
use matching_core::Side;
use uuid::Uuid;

use crate::schema::market_orders;
use crate::{DbError, Result};

/// One engine order as the marketplace knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MarketOrder {
    pub engine_order_id: u64,
    pub market: String,
    pub side: Side,
    /// Bids: the escrow order id; asks: the marketplace's order id.
    pub order_id: Uuid,
    /// Bids: the studio's account; asks: the provider's payout account.
    pub account_id: Uuid,
    /// Asks: the node that runs the work.
    pub node_id: Option<Uuid>,
    pub job_id: Option<Uuid>,
    /// The event sequence of the engine's `accepted` for this order, once seen.
    pub accepted_seq: Option<u64>,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = market_orders)]
#[diesel(check_for_backend(diesel::pg::Pg))]
struct Row {
    engine_order_id: i64,
    market: String,
    side: String,
    order_id: Uuid,
    account_id: Uuid,
    node_id: Option<Uuid>,
    job_id: Option<Uuid>,
    accepted_seq: Option<i64>,
}

fn side_str(s: Side) -> &'static str {
    match s {
        Side::Bid => "bid",
        Side::Ask => "ask",
    }
}

fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| DbError::Refused(format!("{what} {v} exceeds i64")))
}

impl Row {
    fn into_order(self) -> Result<MarketOrder> {
        let bad = |what: &str| DbError::Refused(format!("market_orders: bad {what}"));
        Ok(MarketOrder {
            engine_order_id: u64::try_from(self.engine_order_id).map_err(|_| bad("id"))?,
            market: self.market,
            side: match self.side.as_str() {
                "bid" => Side::Bid,
                "ask" => Side::Ask,
                _ => return Err(bad("side")),
            },
            order_id: self.order_id,
            account_id: self.account_id,
            node_id: self.node_id,
            job_id: self.job_id,
            accepted_seq: self.accepted_seq.and_then(|s| u64::try_from(s).ok()),
        })
    }
}

/// The next engine order id (sequence `market_order_ids`).
pub fn next_engine_order_id(conn: &mut PgConnection) -> Result<u64> {
    let id: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "nextval('market_order_ids')",
    ))
    .get_result(conn)?;
    Ok(id as u64)
}

/// Inserts the mapping of one engine order (the API does this in the transaction that reserves
/// the escrow and queues the order command). Idempotent for an identical row.
pub fn insert(conn: &mut PgConnection, o: &MarketOrder) -> Result<()> {
    let row = Row {
        engine_order_id: to_i64(o.engine_order_id, "engine order id")?,
        market: o.market.clone(),
        side: side_str(o.side).to_owned(),
        order_id: o.order_id,
        account_id: o.account_id,
        node_id: o.node_id,
        job_id: o.job_id,
        accepted_seq: None,
    };
    conn.transaction(|c| {
        let n = diesel::insert_into(market_orders::table)
            .values(&row)
            .on_conflict_do_nothing()
            .execute(c)?;
        if n == 0 {
            let existing = get(c, o.engine_order_id)?;
            let same = existing.as_ref().is_some_and(|e| {
                MarketOrder {
                    accepted_seq: None,
                    ..e.clone()
                } == MarketOrder {
                    accepted_seq: None,
                    ..o.clone()
                }
            });
            if !same {
                return Err(DbError::Refused(format!(
                    "market order {} exists with different content",
                    o.engine_order_id
                )));
            }
        }
        Ok(())
    })
}

pub fn get(conn: &mut PgConnection, engine_order_id: u64) -> Result<Option<MarketOrder>> {
    let Ok(id) = i64::try_from(engine_order_id) else {
        return Ok(None);
    };
    market_orders::table
        .find(id)
        .select(Row::as_select())
        .first(conn)
        .optional()?
        .map(Row::into_order)
        .transpose()
}

/// The orders of `market` among `ids` (ids beyond i64 cannot be ours and are ignored).
pub fn load(conn: &mut PgConnection, market: &str, ids: &[u64]) -> Result<Vec<MarketOrder>> {
    let ids: Vec<i64> = ids.iter().filter_map(|&i| i64::try_from(i).ok()).collect();
    if ids.is_empty() {
        return Ok(vec![]);
    }
    market_orders::table
        .filter(market_orders::market.eq(market))
        .filter(market_orders::engine_order_id.eq_any(ids))
        .select(Row::as_select())
        .load(conn)?
        .into_iter()
        .map(Row::into_order)
        .collect()
}

/// Records the engine's `accepted` event for an order (first one wins).
pub fn mark_accepted(conn: &mut PgConnection, engine_order_id: u64, seq: u64) -> Result<()> {
    diesel::update(
        market_orders::table
            .find(to_i64(engine_order_id, "engine order id")?)
            .filter(market_orders::accepted_seq.is_null()),
    )
    .set(market_orders::accepted_seq.eq(to_i64(seq, "event seq")?))
    .execute(conn)?;
    Ok(())
}

/// The engine command that places a job's bid (the API's first bid and the settlement worker's
/// re-bids alike): a limit bid of `units` lots at `limit_price` ticks for the studio's engine
/// account, good till `expires_at_ms` (the job's deadline).
pub fn place_bid_command(
    engine_order_id: u64,
    engine_account: u64,
    limit_price: u64,
    units: u64,
    expires_at_ms: u64,
) -> matching_core::CommandKind {
    use matching_core::{AccountId, CommandKind, OrderId, Place, TimeInForce};
    CommandKind::Place(Place {
        id: OrderId(engine_order_id),
        account: AccountId(engine_account),
        owner: None,
        side: Side::Bid,
        price: Some(limit_price),
        qty: units,
        tif: TimeInForce::Gtd {
            expires_at: expires_at_ms,
        },
        post_only: false,
        budget: None,
        stp: None,
    })
}

/// Where a job bid's next `qty` units start: engine order `engine_order_id` covers the job's
/// units from its `unit_start` and hands them out in order. Records that `qty` more are taken
/// (a fill, or a refused fill's release) and returns the first of them. In the caller's
/// transaction, which settles one market's events in order.
pub fn take_units(conn: &mut PgConnection, engine_order_id: u64, qty: u64) -> Result<u64> {
    let id = to_i64(engine_order_id, "engine order id")?;
    let qty = to_i64(qty, "units")?;
    let end: Option<i64> = diesel::update(market_orders::table.find(id))
        .set(market_orders::units_taken.eq(market_orders::units_taken + qty))
        .returning(market_orders::unit_start + market_orders::units_taken)
        .get_result(conn)
        .optional()?;
    let end = end.ok_or_else(|| DbError::Refused(format!("market order {engine_order_id} missing")))?;
    Ok((end - qty).max(0) as u64)
}

/// A re-bid: the units of failed assignment `reoffer_of` (its `unit_start`), offered again for
/// the `reoffer`-th time on the job's escrow order `bid.order_id`.
pub fn insert_rebid(
    conn: &mut PgConnection,
    bid: &MarketOrder,
    unit_start: u64,
    reoffer: u32,
    reoffer_of: Uuid,
) -> Result<()> {
    if bid.side != Side::Bid || bid.job_id.is_none() || reoffer == 0 {
        return Err(DbError::Refused("a re-bid is a job's bid, offered again".into()));
    }
    diesel::insert_into(market_orders::table)
        .values((
            market_orders::engine_order_id.eq(to_i64(bid.engine_order_id, "engine order id")?),
            market_orders::market.eq(&bid.market),
            market_orders::side.eq(side_str(Side::Bid)),
            market_orders::order_id.eq(bid.order_id),
            market_orders::account_id.eq(bid.account_id),
            market_orders::job_id.eq(bid.job_id),
            market_orders::unit_start.eq(to_i64(unit_start, "unit start")?),
            market_orders::reoffer.eq(i32::try_from(reoffer).unwrap_or(i32::MAX)),
            market_orders::reoffer_of.eq(Some(reoffer_of)),
        ))
        .execute(conn)?;
    Ok(())
}

/// How many times the units of engine order `engine_order_id` had been offered again (0: the
/// API's first bid, or an order that is not ours).
pub fn reoffer_count(conn: &mut PgConnection, engine_order_id: u64) -> Result<u32> {
    let Ok(id) = i64::try_from(engine_order_id) else {
        return Ok(0);
    };
    let n: Option<i32> = market_orders::table
        .find(id)
        .select(market_orders::reoffer)
        .first(conn)
        .optional()?;
    Ok(n.unwrap_or(0).max(0) as u32)
}

/// For a re-bid, the units it still holds on the book (its failed assignment's units less what
/// its fills took); `None` for any other order. A rejected or stuck re-bid releases only these,
/// never the units of the job's other bids on the same escrow order.
pub fn rebid_units_left(conn: &mut PgConnection, engine_order_id: u64) -> Result<Option<u64>> {
    use crate::schema::job_assignments;
    let Ok(id) = i64::try_from(engine_order_id) else {
        return Ok(None);
    };
    let row: Option<(i64, i64)> = market_orders::table
        .inner_join(job_assignments::table.on(market_orders::reoffer_of.eq(job_assignments::id.nullable())))
        .filter(market_orders::engine_order_id.eq(id))
        .select((job_assignments::units, market_orders::units_taken))
        .first(conn)
        .optional()?;
    Ok(row.map(|(units, taken)| (units - taken).max(0) as u64))
}

/// How many units engine order `engine_order_id` has handed out (0 when it is not ours).
pub fn units_taken(conn: &mut PgConnection, engine_order_id: u64) -> Result<u64> {
    let Ok(id) = i64::try_from(engine_order_id) else {
        return Ok(0);
    };
    let n: Option<i64> = market_orders::table
        .find(id)
        .select(market_orders::units_taken)
        .first(conn)
        .optional()?;
    Ok(n.unwrap_or(0).max(0) as u64)
}

/// The engine order ids of a job's re-bids (failed units offered again), oldest first.
pub fn rebids_of_job(conn: &mut PgConnection, job: Uuid) -> Result<Vec<u64>> {
    Ok(market_orders::table
        .filter(market_orders::job_id.eq(job))
        .filter(market_orders::reoffer_of.is_not_null())
        .order(market_orders::engine_order_id.asc())
        .select(market_orders::engine_order_id)
        .load::<i64>(conn)?
        .into_iter()
        .map(|i| i.max(0) as u64)
        .collect())
}
