//! The escrow API: `settlement` rules applied to the database. Each call is idempotent (ids of
//! every transfer are derived from the order / fill / assignment / release id) and runs in a
//! nested transaction, so the settlement worker can wrap processed-event + escrow effect + outbox
//! in one transaction. Lock order: escrow row (order or assignment) first, then accounts.

use diesel::prelude::*;
use uuid::Uuid;

use crate::error::{LedgerError, Result};
use crate::ids::{AccountId, TransferId};
use crate::model::{AccountCode, NewAccount};
use crate::schema::{escrow_assignments, escrow_orders};
use crate::settlement::{self, AssignmentState, AssignmentStatus, OrderState, OrderTerms};
use crate::store;

/// A bid to reserve for.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bid {
    pub order_id: Uuid,
    pub studio_account: AccountId,
    pub quantity: i64,
    /// Minor units per unit of work.
    pub limit_price: i64,
    pub fee_bps: u32,
}

/// Creates the system accounts of a credits ledger (idempotent): protocol fee, buyback treasury,
/// rewards pool, operator. (GRID's accounts come from `supply::genesis`.)
pub fn ensure_system_accounts(conn: &mut PgConnection, ledger: &str) -> Result<()> {
    let codes = [
        AccountCode::ProtocolFee,
        AccountCode::BuybackTreasury,
        AccountCode::RewardsPool,
        AccountCode::Operator,
    ];
    let news: Vec<NewAccount> = codes
        .into_iter()
        .map(|c| NewAccount::system(ledger, c))
        .collect();
    store::create_accounts(conn, &news).map(|_| ())
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = escrow_orders)]
#[diesel(check_for_backend(diesel::pg::Pg))]
struct OrderRow {
    order_id: Uuid,
    studio_account_id: Uuid,
    escrow_account_id: Uuid,
    fee_account_id: Uuid,
    ledger: String,
    quantity: i64,
    quantity_open: i64,
    limit_price: i64,
    fee_bps: i32,
    unit_reserve: i64,
}

impl OrderRow {
    fn state(self) -> OrderState {
        OrderState {
            terms: OrderTerms {
                order_id: self.order_id,
                studio_account: AccountId(self.studio_account_id),
                escrow_account: AccountId(self.escrow_account_id),
                fee_account: AccountId(self.fee_account_id),
                ledger: self.ledger,
                quantity: self.quantity,
                limit_price: self.limit_price,
                fee_bps: self.fee_bps as u32,
            },
            quantity_open: self.quantity_open,
            unit_reserve: self.unit_reserve,
        }
    }
    fn from_state(s: &OrderState) -> Self {
        let t = &s.terms;
        OrderRow {
            order_id: t.order_id,
            studio_account_id: t.studio_account.0,
            escrow_account_id: t.escrow_account.0,
            fee_account_id: t.fee_account.0,
            ledger: t.ledger.clone(),
            quantity: t.quantity,
            quantity_open: s.quantity_open,
            limit_price: t.limit_price,
            fee_bps: t.fee_bps as i32,
            unit_reserve: s.unit_reserve,
        }
    }
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = escrow_assignments)]
#[diesel(check_for_backend(diesel::pg::Pg))]
struct AssignmentRow {
    id: Uuid,
    order_id: Uuid,
    provider_account_id: Uuid,
    quantity: i64,
    trade_price: i64,
    provider_hold_id: Uuid,
    fee_hold_id: Option<Uuid>,
    state: String,
    verified_units: Option<i64>,
}

fn status_str(s: AssignmentStatus) -> &'static str {
    match s {
        AssignmentStatus::Held => "held",
        AssignmentStatus::Completed => "completed",
        AssignmentStatus::Voided => "voided",
    }
}

impl AssignmentRow {
    fn state(self) -> Result<AssignmentState> {
        Ok(AssignmentState {
            id: self.id,
            order_id: self.order_id,
            provider_account: AccountId(self.provider_account_id),
            quantity: self.quantity,
            trade_price: self.trade_price,
            provider_hold: TransferId(self.provider_hold_id),
            fee_hold: self.fee_hold_id.map(TransferId),
            status: match self.state.as_str() {
                "held" => AssignmentStatus::Held,
                "completed" => AssignmentStatus::Completed,
                "voided" => AssignmentStatus::Voided,
                s => {
                    return Err(LedgerError::Invalid(format!(
                        "unknown assignment state {s}"
                    )));
                }
            },
            verified_units: self.verified_units,
        })
    }
    fn from_state(a: &AssignmentState) -> Self {
        AssignmentRow {
            id: a.id,
            order_id: a.order_id,
            provider_account_id: a.provider_account.0,
            quantity: a.quantity,
            trade_price: a.trade_price,
            provider_hold_id: a.provider_hold.0,
            fee_hold_id: a.fee_hold.map(|t| t.0),
            state: status_str(a.status).to_owned(),
            verified_units: a.verified_units,
        }
    }
}

fn load_order(conn: &mut PgConnection, order_id: Uuid, lock: bool) -> Result<OrderState> {
    let q = escrow_orders::table
        .find(order_id)
        .select(OrderRow::as_select());
    let row = if lock {
        q.for_update().first(conn).optional()?
    } else {
        q.first(conn).optional()?
    };
    Ok(row.ok_or(LedgerError::OrderNotFound(order_id))?.state())
}

pub fn get_order(conn: &mut PgConnection, order_id: Uuid) -> Result<OrderState> {
    load_order(conn, order_id, false)
}

fn load_assignment(
    conn: &mut PgConnection,
    id: Uuid,
    lock: bool,
) -> Result<Option<AssignmentState>> {
    let q = escrow_assignments::table
        .find(id)
        .select(AssignmentRow::as_select());
    let row = if lock {
        q.for_update().first(conn).optional()?
    } else {
        q.first(conn).optional()?
    };
    row.map(AssignmentRow::state).transpose()
}

pub fn get_assignment(conn: &mut PgConnection, id: Uuid) -> Result<AssignmentState> {
    load_assignment(conn, id, false)?.ok_or(LedgerError::AssignmentNotFound(id))
}

/// Placing a bid: reserves `quantity × (limit + ⌈limit × fee⌉)` from the studio into the order's
/// escrow account. Idempotent by order id.
pub fn reserve_bid(conn: &mut PgConnection, bid: &Bid) -> Result<OrderState> {
    store::with_retry(conn, |c| {
        let studio = store::get_account(c, bid.studio_account)?;
        let ledger = studio.ledger.clone();
        let terms = OrderTerms {
            order_id: bid.order_id,
            studio_account: bid.studio_account,
            escrow_account: settlement::escrow_account_id(bid.order_id),
            fee_account: AccountId::system(&ledger, AccountCode::ProtocolFee.as_str()),
            ledger: ledger.clone(),
            quantity: bid.quantity,
            limit_price: bid.limit_price,
            fee_bps: bid.fee_bps,
        };
        if let Some(existing) = escrow_orders::table
            .find(bid.order_id)
            .select(OrderRow::as_select())
            .first(c)
            .optional()?
        {
            let existing = existing.state();
            return if existing.terms == terms {
                Ok(existing)
            } else {
                Err(LedgerError::OrderExistsWithDifferentContent(bid.order_id))
            };
        }
        let (state, transfers) = settlement::reserve(terms)?;
        store::create_account(c, &NewAccount::system(&ledger, AccountCode::ProtocolFee))?;
        let mut escrow = NewAccount::new(state.terms.escrow_account, &ledger, AccountCode::Escrow);
        escrow.reference = Some(bid.order_id);
        store::create_account(c, &escrow)?;
        store::create_transfers(c, &transfers)?;
        diesel::insert_into(escrow_orders::table)
            .values(OrderRow::from_state(&state))
            .execute(c)?;
        Ok(state)
    })
}

/// Raises the limit of bid `order_id` to `new_limit` (see [`settlement::raise_limit`]): the
/// further hold from the studio's available balance and the order's new `limit_price` /
/// `unit_reserve`, under the order's row lock, in the caller's transaction. Not enough credits →
/// `ExceedsCredits` and nothing changes. Returns the order before and after.
pub fn raise_limit(
    conn: &mut PgConnection,
    order_id: Uuid,
    new_limit: i64,
) -> Result<(OrderState, OrderState)> {
    store::with_retry(conn, |c| {
        let order = load_order(c, order_id, true)?;
        let (next, transfers) = settlement::raise_limit(&order, new_limit)?;
        store::create_transfers(c, &transfers)?;
        diesel::update(escrow_orders::table.find(order_id))
            .set((
                escrow_orders::limit_price.eq(next.terms.limit_price),
                escrow_orders::unit_reserve.eq(next.unit_reserve),
            ))
            .execute(c)?;
        Ok((order, next))
    })
}

/// A fill of `qty` units at `trade_price` for `provider`: creates the assignment (id = fill id)
/// with its holds and releases the price improvement. Idempotent by fill id.
pub fn on_fill(
    conn: &mut PgConnection,
    order_id: Uuid,
    fill_id: Uuid,
    provider: AccountId,
    qty: i64,
    trade_price: i64,
) -> Result<AssignmentState> {
    store::with_retry(conn, |c| {
        let order = load_order(c, order_id, true)?;
        if let Some(a) = load_assignment(c, fill_id, false)? {
            return if a.order_id == order_id
                && a.provider_account == provider
                && a.quantity == qty
                && a.trade_price == trade_price
            {
                Ok(a)
            } else {
                Err(LedgerError::AssignmentExistsWithDifferentContent(fill_id))
            };
        }
        let (next, asg, transfers) = settlement::fill(&order, fill_id, provider, qty, trade_price)?;
        store::create_transfers(c, &transfers)?;
        diesel::update(escrow_orders::table.find(order_id))
            .set(escrow_orders::quantity_open.eq(next.quantity_open))
            .execute(c)?;
        diesel::insert_into(escrow_assignments::table)
            .values(AssignmentRow::from_state(&asg))
            .execute(c)?;
        Ok(asg)
    })
}

fn resolve(
    conn: &mut PgConnection,
    assignment: Uuid,
    f: impl Fn(
        &OrderState,
        &AssignmentState,
    ) -> Result<(AssignmentState, Vec<crate::model::NewTransfer>)>,
    is_same: impl Fn(&AssignmentState) -> bool,
) -> Result<AssignmentState> {
    store::with_retry(conn, |c| {
        let asg = load_assignment(c, assignment, true)?
            .ok_or(LedgerError::AssignmentNotFound(assignment))?;
        if asg.status != AssignmentStatus::Held {
            return if is_same(&asg) {
                Ok(asg)
            } else {
                Err(LedgerError::AssignmentAlreadyResolved(assignment))
            };
        }
        let order = load_order(c, asg.order_id, false)?;
        let (next, transfers) = f(&order, &asg)?;
        store::create_transfers(c, &transfers)?;
        diesel::update(escrow_assignments::table.find(assignment))
            .set((
                escrow_assignments::state.eq(status_str(next.status)),
                escrow_assignments::verified_units.eq(next.verified_units),
                escrow_assignments::resolved_at.eq(diesel::dsl::now),
            ))
            .execute(c)?;
        Ok(next)
    })
}

/// Verified completion: posts `verified_units × price` to the provider and its fee to the protocol;
/// the rest returns to the studio. `verified_units = 0` voids. Idempotent.
pub fn complete(
    conn: &mut PgConnection,
    assignment: Uuid,
    verified_units: i64,
) -> Result<AssignmentState> {
    resolve(
        conn,
        assignment,
        |o, a| settlement::complete(o, a, verified_units),
        |a| {
            let want = if verified_units == 0 {
                AssignmentStatus::Voided
            } else {
                AssignmentStatus::Completed
            };
            a.status == want && a.verified_units == Some(verified_units)
        },
    )
}

/// Failure or timeout: voids the assignment's holds back to the studio. Idempotent.
pub fn void(conn: &mut PgConnection, assignment: Uuid) -> Result<AssignmentState> {
    resolve(conn, assignment, settlement::void, |a| {
        a.status == AssignmentStatus::Voided
    })
}

/// Failure with the work redone (`settlement::reoffer`): voids the assignment's holds and
/// puts its units back into the order's open reservation (the price improvement reserved again
/// from the studio). Returns the order after it. Fails without effect when the studio's balance
/// cannot cover the improvement (the caller then voids instead) or the assignment is resolved.
pub fn reoffer(conn: &mut PgConnection, assignment: Uuid) -> Result<OrderState> {
    store::with_retry(conn, |c| {
        // The order's row first (as a fill locks it), then the assignment's.
        let order_id = load_assignment(c, assignment, false)?
            .ok_or(LedgerError::AssignmentNotFound(assignment))?
            .order_id;
        let order = load_order(c, order_id, true)?;
        let asg = load_assignment(c, assignment, true)?
            .ok_or(LedgerError::AssignmentNotFound(assignment))?;
        let (next_order, next, transfers) = settlement::reoffer(&order, &asg)?;
        store::create_transfers(c, &transfers)?;
        diesel::update(escrow_assignments::table.find(assignment))
            .set((
                escrow_assignments::state.eq(status_str(next.status)),
                escrow_assignments::verified_units.eq(next.verified_units),
                escrow_assignments::resolved_at.eq(diesel::dsl::now),
            ))
            .execute(c)?;
        diesel::update(escrow_orders::table.find(asg.order_id))
            .set(escrow_orders::quantity_open.eq(next_order.quantity_open))
            .execute(c)?;
        Ok(next_order)
    })
}

/// Cancellation or expiry of `qty` unfilled units; `release_id` is the cancel/expiry event and
/// makes the call idempotent.
pub fn release_unfilled(
    conn: &mut PgConnection,
    order_id: Uuid,
    release_id: Uuid,
    qty: i64,
) -> Result<OrderState> {
    store::with_retry(conn, |c| {
        let order = load_order(c, order_id, true)?;
        let tid = TransferId::derived(&["release", &release_id.to_string()]);
        if let Some(t) = store::get_transfer(c, tid)? {
            let same = t.debit_account == order.terms.escrow_account
                && settlement::cost(qty, order.unit_reserve).ok() == Some(t.amount);
            return if same {
                Ok(order)
            } else {
                Err(LedgerError::ExistsWithDifferentContent(tid))
            };
        }
        let (next, transfers) = settlement::release_unfilled(&order, release_id, qty)?;
        store::create_transfers(c, &transfers)?;
        diesel::update(escrow_orders::table.find(order_id))
            .set(escrow_orders::quantity_open.eq(next.quantity_open))
            .execute(c)?;
        Ok(next)
    })
}
