//! Escrow of a token market (GRID for credits), settled delivery-versus-payment.
//!
//! **Buy** (credits): reserved exactly like a job's bid (`escrow::reserve_bid`: buyer → the
//! order's escrow account, `quantity × (limit + ⌈limit × fee⌉)`, an `escrow_orders` row). A
//! fill of `q` lots at `p` pays at once, all posted ([`buy_fill`]): escrow → seller `q·p`,
//! escrow → protocol fee `⌈q·p·f⌉`, escrow → buyer the price improvement
//! `q·unit_reserve − q·p − ⌈q·p·f⌉`. Cancels and expiry release with `escrow::release_unfilled`.
//! A token fill is no assignment: no `escrow_assignments` row, nothing held for verification.
//!
//! **Sell** (tokens): the seller's open lots are held by ONE pending transfer seller → the
//! order's token escrow account ([`sell_escrow_account_id`]), so the seller sees them as held,
//! not spent. A fill of `q` lots ([`sell_fill`]) posts `q × units_per_lot` of that hold (the
//! rest returns to the seller), holds the rest again with a new pending transfer, and delivers
//! the posted tokens escrow → buyer. A release of `q` lots ([`sell_release`]: cancel, expiry,
//! a refused event) voids the hold and holds what stays open again. The current hold's id is
//! in `token_escrow_orders.hold_id`.
//!
//! Every transfer id is derived from the order, fill or release id (UUIDv5), so each call is
//! idempotent; the pure functions below make the transfers and the `db` edge at the bottom loads,
//! locks (the order's row first, then the accounts) and writes. Nothing here creates or destroys
//! a unit: every amount moves between two accounts of one ledger (property-tested).

use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{LedgerError, Result};
use crate::ids::{AccountId, TransferId};
use crate::model::{AccountCode, Amount, NewAccount, NewTransfer};
use crate::schema::{escrow_orders, token_escrow_orders};
use crate::settlement::{OrderState, cost, fee};
use crate::store;

fn tid(parts: &[&str]) -> TransferId {
    TransferId::derived(parts)
}

/// The token escrow account of sell order `order_id`.
pub fn sell_escrow_account_id(order_id: Uuid) -> AccountId {
    AccountId::derived(&["token-escrow", &order_id.to_string()])
}

// ------------------------------------------------------------------------------------ sells

/// The terms of a sell order, fixed when it is placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SellTerms {
    pub order_id: Uuid,
    /// The seller's token account (delivers the tokens).
    pub seller_account: AccountId,
    /// The order's token escrow account ([`sell_escrow_account_id`]).
    pub escrow_account: AccountId,
    /// The token's ledger (`GRID`).
    pub ledger: String,
    /// Ledger base units per lot (one whole token).
    pub units_per_lot: i64,
    /// Lots offered.
    pub quantity: i64,
}

/// A sell order's escrow state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SellState {
    pub terms: SellTerms,
    /// Lots still held and neither delivered nor released.
    pub quantity_open: i64,
    /// The pending transfer holding them (`None` when nothing is open).
    pub hold: Option<TransferId>,
}

impl SellState {
    /// Base units held now.
    pub fn held_units(&self) -> Result<Amount> {
        cost(self.quantity_open, self.terms.units_per_lot)
    }
}

/// The hold that placing sell order `order_id` creates.
pub fn first_hold_id(order_id: Uuid) -> TransferId {
    tid(&["token-order", &order_id.to_string(), "hold"])
}

/// The transfer that delivers fill `fill_id` of a sell order to its buyer (its presence says
/// the fill was applied).
pub fn delivery_id(fill_id: Uuid) -> TransferId {
    tid(&["token-fill", &fill_id.to_string(), "deliver"])
}

/// The void of the hold that release `release_id` makes (its presence says the release was
/// applied).
pub fn release_void_id(release_id: Uuid) -> TransferId {
    tid(&["token-release", &release_id.to_string(), "void"])
}

/// Placing a sell: hold `quantity × units_per_lot` of the seller's tokens (pending transfer
/// seller → escrow).
pub fn sell_reserve(terms: SellTerms) -> Result<(SellState, Vec<NewTransfer>)> {
    if terms.quantity <= 0 || terms.units_per_lot <= 0 {
        return Err(LedgerError::AmountMustBePositive);
    }
    if terms.seller_account == terms.escrow_account {
        return Err(LedgerError::SameAccount(terms.seller_account));
    }
    let amount = cost(terms.quantity, terms.units_per_lot)?;
    let hold = first_hold_id(terms.order_id);
    let t = NewTransfer::pending(
        hold,
        terms.seller_account,
        terms.escrow_account,
        amount,
        None,
        "token_sell_hold",
    )
    .with_reference(terms.order_id);
    Ok((
        SellState {
            quantity_open: terms.quantity,
            hold: Some(hold),
            terms,
        },
        vec![t],
    ))
}

/// Holds `open` lots again after hold `prior` was resolved (`None` when nothing stays open).
fn rehold(
    s: &SellState,
    id: TransferId,
    open: i64,
    reference: Uuid,
) -> Result<Option<NewTransfer>> {
    if open == 0 {
        return Ok(None);
    }
    let t = &s.terms;
    Ok(Some(
        NewTransfer::pending(
            id,
            t.seller_account,
            t.escrow_account,
            cost(open, t.units_per_lot)?,
            None,
            "token_sell_hold",
        )
        .with_reference(reference),
    ))
}

/// A fill of `qty` lots of a sell order for `buyer` (its token account): post that part of the
/// hold, hold the rest again, deliver escrow → buyer.
pub fn sell_fill(
    s: &SellState,
    fill_id: Uuid,
    buyer: AccountId,
    qty: i64,
) -> Result<(SellState, Vec<NewTransfer>)> {
    if qty <= 0 {
        return Err(LedgerError::AmountMustBePositive);
    }
    let hold = match s.hold {
        Some(h) if qty <= s.quantity_open => h,
        _ => {
            return Err(LedgerError::InsufficientOpenQuantity {
                open: s.quantity_open,
                requested: qty,
            });
        }
    };
    let t = &s.terms;
    if buyer == t.seller_account || buyer == t.escrow_account {
        return Err(LedgerError::SameAccount(buyer));
    }
    let f = fill_id.to_string();
    let units = cost(qty, t.units_per_lot)?;
    let open = s.quantity_open - qty;
    let mut transfers = vec![
        NewTransfer::post(
            tid(&["token-fill", &f, "post_hold"]),
            hold,
            Some(units),
            "token_sell_post",
        )
        .with_reference(fill_id),
    ];
    let next_hold = tid(&["token-fill", &f, "hold"]);
    let re = rehold(s, next_hold, open, fill_id)?;
    let has_rehold = re.is_some();
    transfers.extend(re);
    transfers.push(
        NewTransfer::posted(
            delivery_id(fill_id),
            t.escrow_account,
            buyer,
            units,
            "token_deliver",
        )
        .with_reference(fill_id),
    );
    let mut next = s.clone();
    next.quantity_open = open;
    next.hold = has_rehold.then_some(next_hold);
    Ok((next, transfers))
}

/// Releases `qty` open lots back to the seller (`release_id`: the cancel/expiry event, or a
/// refused event): void the hold, hold what stays open again.
pub fn sell_release(
    s: &SellState,
    release_id: Uuid,
    qty: i64,
) -> Result<(SellState, Vec<NewTransfer>)> {
    if qty <= 0 {
        return Err(LedgerError::AmountMustBePositive);
    }
    let hold = match s.hold {
        Some(h) if qty <= s.quantity_open => h,
        _ => {
            return Err(LedgerError::InsufficientOpenQuantity {
                open: s.quantity_open,
                requested: qty,
            });
        }
    };
    let r = release_id.to_string();
    let open = s.quantity_open - qty;
    let mut transfers = vec![
        NewTransfer::void(release_void_id(release_id), hold, "token_sell_release")
            .with_reference(release_id),
    ];
    let next_hold = tid(&["token-release", &r, "hold"]);
    let re = rehold(s, next_hold, open, release_id)?;
    let has_rehold = re.is_some();
    transfers.extend(re);
    let mut next = s.clone();
    next.quantity_open = open;
    next.hold = has_rehold.then_some(next_hold);
    Ok((next, transfers))
}

// ------------------------------------------------------------------------------------- buys

/// What a buy fill moved (credits' minor units).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuyFill {
    /// To the seller: `qty × price`.
    pub gross: Amount,
    /// To the protocol fee account: `⌈gross × fee_bps / 10⁴⌉`.
    pub fee: Amount,
    /// Back to the buyer: what the fill's lots reserved beyond gross + fee.
    pub improvement: Amount,
}

/// The transfer that pays fill `fill_id` of a buy to its seller (its presence says the fill was
/// applied).
pub fn payment_id(fill_id: Uuid) -> TransferId {
    tid(&["token-fill", &fill_id.to_string(), "pay_seller"])
}

/// A fill of `qty` lots at `price` of a buy order (its credits escrow, reserved by
/// `escrow::reserve_bid`) against `seller` (the seller's credits account): all posted at once.
pub fn buy_fill(
    order: &OrderState,
    fill_id: Uuid,
    seller: AccountId,
    qty: i64,
    price: Amount,
) -> Result<(OrderState, BuyFill, Vec<NewTransfer>)> {
    if qty <= 0 || price <= 0 {
        return Err(LedgerError::AmountMustBePositive);
    }
    let t = &order.terms;
    if price > t.limit_price {
        return Err(LedgerError::PriceAboveLimit);
    }
    if qty > order.quantity_open {
        return Err(LedgerError::InsufficientOpenQuantity {
            open: order.quantity_open,
            requested: qty,
        });
    }
    if seller == t.studio_account || seller == t.escrow_account || seller == t.fee_account {
        return Err(LedgerError::SameAccount(seller));
    }
    let f = fill_id.to_string();
    let gross = cost(qty, price)?;
    let fee = fee(gross, t.fee_bps)?;
    let improvement = cost(qty, order.unit_reserve)? - gross - fee;
    if improvement < 0 {
        return Err(LedgerError::Invalid(format!(
            "fill {fill_id} costs more than its lots reserved"
        )));
    }
    let mut transfers = vec![
        NewTransfer::posted(
            payment_id(fill_id),
            t.escrow_account,
            seller,
            gross,
            "token_pay_seller",
        )
        .with_reference(fill_id),
    ];
    if fee > 0 {
        transfers.push(
            NewTransfer::posted(
                tid(&["token-fill", &f, "fee"]),
                t.escrow_account,
                t.fee_account,
                fee,
                "token_fee",
            )
            .with_reference(fill_id),
        );
    }
    if improvement > 0 {
        transfers.push(
            NewTransfer::posted(
                tid(&["token-fill", &f, "improvement"]),
                t.escrow_account,
                t.studio_account,
                improvement,
                "escrow_release_improvement",
            )
            .with_reference(fill_id),
        );
    }
    let mut next = order.clone();
    next.quantity_open -= qty;
    Ok((
        next,
        BuyFill {
            gross,
            fee,
            improvement,
        },
        transfers,
    ))
}

// -------------------------------------------------------------------------------- db edge

/// A sell order to hold tokens for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sell {
    pub order_id: Uuid,
    /// The seller's token account (`token::user_account`).
    pub seller_account: AccountId,
    pub units_per_lot: i64,
    /// Lots.
    pub quantity: i64,
}

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = token_escrow_orders)]
#[diesel(check_for_backend(diesel::pg::Pg))]
struct SellRow {
    order_id: Uuid,
    seller_account_id: Uuid,
    escrow_account_id: Uuid,
    ledger: String,
    units_per_lot: i64,
    quantity: i64,
    quantity_open: i64,
    hold_id: Option<Uuid>,
}

impl SellRow {
    fn state(self) -> SellState {
        SellState {
            terms: SellTerms {
                order_id: self.order_id,
                seller_account: AccountId(self.seller_account_id),
                escrow_account: AccountId(self.escrow_account_id),
                ledger: self.ledger,
                units_per_lot: self.units_per_lot,
                quantity: self.quantity,
            },
            quantity_open: self.quantity_open,
            hold: self.hold_id.map(TransferId),
        }
    }
    fn from_state(s: &SellState) -> Self {
        let t = &s.terms;
        SellRow {
            order_id: t.order_id,
            seller_account_id: t.seller_account.0,
            escrow_account_id: t.escrow_account.0,
            ledger: t.ledger.clone(),
            units_per_lot: t.units_per_lot,
            quantity: t.quantity,
            quantity_open: s.quantity_open,
            hold_id: s.hold.map(|h| h.0),
        }
    }
}

fn load_sell(conn: &mut PgConnection, order_id: Uuid, lock: bool) -> Result<SellState> {
    let q = token_escrow_orders::table
        .find(order_id)
        .select(SellRow::as_select());
    let row = if lock {
        q.for_update().first(conn).optional()?
    } else {
        q.first(conn).optional()?
    };
    Ok(row.ok_or(LedgerError::OrderNotFound(order_id))?.state())
}

/// A sell order's escrow state.
pub fn get_sell(conn: &mut PgConnection, order_id: Uuid) -> Result<SellState> {
    load_sell(conn, order_id, false)
}

fn store_sell(conn: &mut PgConnection, s: &SellState) -> Result<()> {
    diesel::update(token_escrow_orders::table.find(s.terms.order_id))
        .set((
            token_escrow_orders::quantity_open.eq(s.quantity_open),
            token_escrow_orders::hold_id.eq(s.hold.map(|h| h.0)),
        ))
        .execute(conn)?;
    Ok(())
}

/// Placing a sell: holds its tokens from the seller's account into the order's token escrow
/// account. Idempotent by order id. Fails without effect (`ExceedsCredits` of the seller's
/// account) when the seller's available tokens do not cover it.
pub fn reserve_sell(conn: &mut PgConnection, sell: &Sell) -> Result<SellState> {
    store::with_retry(conn, |c| {
        let seller = store::get_account(c, sell.seller_account)?;
        let terms = SellTerms {
            order_id: sell.order_id,
            seller_account: sell.seller_account,
            escrow_account: sell_escrow_account_id(sell.order_id),
            ledger: seller.ledger.clone(),
            units_per_lot: sell.units_per_lot,
            quantity: sell.quantity,
        };
        if let Some(existing) = token_escrow_orders::table
            .find(sell.order_id)
            .select(SellRow::as_select())
            .first(c)
            .optional()?
        {
            let existing = existing.state();
            return if existing.terms == terms {
                Ok(existing)
            } else {
                Err(LedgerError::OrderExistsWithDifferentContent(sell.order_id))
            };
        }
        let (state, transfers) = sell_reserve(terms)?;
        let mut escrow = NewAccount::new(
            state.terms.escrow_account,
            &seller.ledger,
            AccountCode::Escrow,
        );
        escrow.reference = Some(sell.order_id);
        store::create_account(c, &escrow)?;
        store::create_transfers(c, &transfers)?;
        diesel::insert_into(token_escrow_orders::table)
            .values(SellRow::from_state(&state))
            .execute(c)?;
        Ok(state)
    })
}

/// A fill of `qty` lots of sell order `order_id`, delivered to `buyer` (a token account).
/// Idempotent by fill id (a repeat with the same content returns the order as it is).
pub fn on_sell_fill(
    conn: &mut PgConnection,
    order_id: Uuid,
    fill_id: Uuid,
    buyer: AccountId,
    qty: i64,
) -> Result<SellState> {
    store::with_retry(conn, |c| {
        let s = load_sell(c, order_id, true)?;
        if let Some(t) = store::get_transfer(c, delivery_id(fill_id))? {
            let same = t.debit_account == s.terms.escrow_account
                && t.credit_account == buyer
                && cost(qty, s.terms.units_per_lot).ok() == Some(t.amount);
            return if same {
                Ok(s)
            } else {
                Err(LedgerError::ExistsWithDifferentContent(t.id))
            };
        }
        let (next, transfers) = sell_fill(&s, fill_id, buyer, qty)?;
        store::create_transfers(c, &transfers)?;
        store_sell(c, &next)?;
        Ok(next)
    })
}

/// Releases `qty` open lots of sell order `order_id` to the seller; `release_id` makes it
/// idempotent.
pub fn release_sell(
    conn: &mut PgConnection,
    order_id: Uuid,
    release_id: Uuid,
    qty: i64,
) -> Result<SellState> {
    store::with_retry(conn, |c| {
        let s = load_sell(c, order_id, true)?;
        if store::get_transfer(c, release_void_id(release_id))?.is_some() {
            return Ok(s);
        }
        let (next, transfers) = sell_release(&s, release_id, qty)?;
        store::create_transfers(c, &transfers)?;
        store_sell(c, &next)?;
        Ok(next)
    })
}

/// A fill of `qty` lots at `price` of buy order `order_id` (an `escrow_orders` row), paid to
/// `seller` (a credits account). Idempotent by fill id: a repeat with the same content answers
/// what the fill moved and moves nothing.
pub fn on_buy_fill(
    conn: &mut PgConnection,
    order_id: Uuid,
    fill_id: Uuid,
    seller: AccountId,
    qty: i64,
    price: Amount,
) -> Result<BuyFill> {
    store::with_retry(conn, |c| {
        // The order's row first (as every escrow call locks it), then the accounts.
        escrow_orders::table
            .find(order_id)
            .select(escrow_orders::order_id)
            .for_update()
            .first::<Uuid>(c)
            .optional()?
            .ok_or(LedgerError::OrderNotFound(order_id))?;
        let order = crate::escrow::get_order(c, order_id)?;
        if let Some(t) = store::get_transfer(c, payment_id(fill_id))? {
            let gross = cost(qty, price)?;
            if t.debit_account != order.terms.escrow_account
                || t.credit_account != seller
                || t.amount != gross
            {
                return Err(LedgerError::ExistsWithDifferentContent(t.id));
            }
            let fee = fee(gross, order.terms.fee_bps)?;
            let improvement = cost(qty, order.unit_reserve)? - gross - fee;
            return Ok(BuyFill {
                gross,
                fee,
                improvement,
            });
        }
        let (next, fill, transfers) = buy_fill(&order, fill_id, seller, qty, price)?;
        store::create_transfers(c, &transfers)?;
        diesel::update(escrow_orders::table.find(order_id))
            .set(escrow_orders::quantity_open.eq(next.quantity_open))
            .execute(c)?;
        Ok(fill)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AccountFlags;
    use crate::rules::MemLedger;
    use crate::settlement::{OrderTerms, reserve};
    use proptest::prelude::*;

    const UNIT: i64 = crate::token::UNIT;

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn acct(n: u128) -> AccountId {
        AccountId(Uuid::from_u128(n))
    }

    /// A ledger with the seller holding `tokens` base units (funded from an unbounded supply
    /// account) and the buyer `credits`.
    struct World {
        mem: MemLedger,
        supply: AccountId,
        operator: AccountId,
        seller: AccountId,
        seller_credits: AccountId,
        buyers: Vec<(AccountId, AccountId)>,
        fee: AccountId,
    }

    fn world(tokens: i64, credits: i64, buyers: usize) -> World {
        let mut mem = MemLedger::default();
        let (supply, operator, seller, seller_credits, fee) =
            (acct(1), acct(2), acct(3), acct(4), acct(5));
        mem.open(supply, "GRID", AccountFlags::NONE);
        mem.open(operator, "USD", AccountFlags::NONE);
        mem.open(seller, "GRID", AccountFlags::CREDIT_NORMAL);
        mem.open(seller_credits, "USD", AccountFlags::CREDIT_NORMAL);
        mem.open(fee, "USD", AccountFlags::CREDIT_NORMAL);
        let mut list = Vec::new();
        for i in 0..buyers as u128 {
            let (usd, grid) = (acct(100 + i), acct(200 + i));
            mem.open(usd, "USD", AccountFlags::CREDIT_NORMAL);
            mem.open(grid, "GRID", AccountFlags::CREDIT_NORMAL);
            if credits > 0 {
                let t = NewTransfer::posted(TransferId::new(), operator, usd, credits, "deposit");
                mem.execute(&[t], now()).unwrap();
            }
            list.push((usd, grid));
        }
        if tokens > 0 {
            let t = NewTransfer::posted(TransferId::new(), supply, seller, tokens, "mint");
            mem.execute(&[t], now()).unwrap();
        }
        World {
            mem,
            supply,
            operator,
            seller,
            seller_credits,
            buyers: list,
            fee,
        }
    }

    fn posted(mem: &MemLedger, a: AccountId) -> i128 {
        mem.accounts[&a].balances.posted()
    }

    fn sell_terms(w: &World, qty: i64) -> SellTerms {
        let order_id = Uuid::from_u128(900);
        SellTerms {
            order_id,
            seller_account: w.seller,
            escrow_account: sell_escrow_account_id(order_id),
            ledger: "GRID".into(),
            units_per_lot: UNIT,
            quantity: qty,
        }
    }

    #[test]
    fn a_sell_holds_delivers_part_and_releases_the_rest() {
        let mut w = world(10 * UNIT, 0, 1);
        let t = sell_terms(&w, 6);
        w.mem
            .open(t.escrow_account, "GRID", AccountFlags::CREDIT_NORMAL);
        let (s, tr) = sell_reserve(t).unwrap();
        w.mem.execute(&tr, now()).unwrap();
        assert_eq!(w.mem.accounts[&w.seller].balances.debits_pending, 6 * UNIT);
        assert_eq!(
            w.mem.accounts[&w.seller].balances.available(),
            4 * UNIT as i128
        );
        let buyer = w.buyers[0].1;
        let (s, tr) = sell_fill(&s, Uuid::from_u128(1), buyer, 2).unwrap();
        w.mem.execute(&tr, now()).unwrap();
        assert_eq!(posted(&w.mem, buyer), 2 * UNIT as i128);
        assert_eq!(w.mem.accounts[&w.seller].balances.debits_pending, 4 * UNIT);
        assert_eq!(posted(&w.mem, s.terms.escrow_account), 0);
        let (s, tr) = sell_release(&s, Uuid::from_u128(2), 4).unwrap();
        w.mem.execute(&tr, now()).unwrap();
        assert_eq!((s.quantity_open, s.hold), (0, None));
        assert_eq!(
            w.mem.accounts[&w.seller].balances.available(),
            8 * UNIT as i128
        );
        assert_eq!(w.mem.accounts[&w.seller].balances.debits_pending, 0);
        // Nothing more to fill or release.
        assert!(sell_fill(&s, Uuid::from_u128(3), buyer, 1).is_err());
        assert!(sell_release(&s, Uuid::from_u128(4), 1).is_err());
        w.mem.check().unwrap();
    }

    #[test]
    fn a_sell_beyond_the_sellers_tokens_is_refused_and_a_self_delivery_too() {
        let mut w = world(UNIT, 0, 1);
        let t = sell_terms(&w, 2);
        w.mem
            .open(t.escrow_account, "GRID", AccountFlags::CREDIT_NORMAL);
        let (s, tr) = sell_reserve(t.clone()).unwrap();
        let before = w.mem.accounts.clone();
        assert!(matches!(
            w.mem.execute(&tr, now()).unwrap_err().root(),
            LedgerError::ExceedsCredits(a) if *a == w.seller
        ));
        assert_eq!(w.mem.accounts, before, "a refused hold moves nothing");
        assert!(matches!(
            sell_fill(&s, Uuid::from_u128(1), w.seller, 1),
            Err(LedgerError::SameAccount(_))
        ));
    }

    #[test]
    fn a_buy_fill_pays_the_seller_the_fee_and_returns_the_improvement() {
        let mut w = world(0, 10_000, 1);
        let (buyer, _) = w.buyers[0];
        let order_id = Uuid::from_u128(7);
        let terms = OrderTerms {
            order_id,
            studio_account: buyer,
            escrow_account: crate::settlement::escrow_account_id(order_id),
            fee_account: w.fee,
            ledger: "USD".into(),
            quantity: 5,
            limit_price: 100,
            fee_bps: 250,
        };
        w.mem
            .open(terms.escrow_account, "USD", AccountFlags::CREDIT_NORMAL);
        let (o, tr) = reserve(terms).unwrap();
        w.mem.execute(&tr, now()).unwrap();
        // 5 × (100 + ⌈2.5⌉) = 515 reserved.
        assert_eq!(posted(&w.mem, buyer), 10_000 - 515);
        let (o, f, tr) = buy_fill(&o, Uuid::from_u128(8), w.seller_credits, 3, 90).unwrap();
        w.mem.execute(&tr, now()).unwrap();
        assert_eq!(
            f,
            BuyFill {
                gross: 270,
                fee: 7,
                improvement: 3 * 103 - 270 - 7
            }
        );
        assert_eq!(posted(&w.mem, w.seller_credits), 270);
        assert_eq!(posted(&w.mem, w.fee), 7);
        assert_eq!(o.quantity_open, 2);
        assert!(matches!(
            buy_fill(&o, Uuid::from_u128(9), w.seller_credits, 1, 101),
            Err(LedgerError::PriceAboveLimit)
        ));
        assert!(matches!(
            buy_fill(&o, Uuid::from_u128(9), buyer, 1, 90),
            Err(LedgerError::SameAccount(_))
        ));
        assert!(matches!(
            buy_fill(&o, Uuid::from_u128(9), w.seller_credits, 3, 90),
            Err(LedgerError::InsufficientOpenQuantity { .. })
        ));
        w.mem.check().unwrap();
    }

    #[derive(Clone, Debug)]
    enum Step {
        /// A fill of (lots, buyer index, price).
        Fill(i64, usize, i64),
        /// A release of lots.
        Release(i64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (1i64..6, 0usize..3, 1i64..=100).prop_map(|(q, b, p)| Step::Fill(q, b, p)),
            1 => (1i64..6).prop_map(Step::Release),
        ]
    }

    proptest! {
        /// Any sequence of fills (against buy orders of several buyers) and releases of one
        /// sell order: no base unit of either ledger is created or destroyed, every flag holds,
        /// the seller's held tokens are exactly its open lots, the buyers receive exactly what
        /// was filled, and each buyer paid exactly gross + fee.
        #[test]
        fn token_escrow_never_creates_or_destroys_a_unit(
            held in 0i64..12,
            quantity in 1i64..10,
            steps in proptest::collection::vec(step(), 0..16),
        ) {
            let mut w = world(held * UNIT, 1_000_000, 3);
            let t = sell_terms(&w, quantity);
            w.mem.open(t.escrow_account, "GRID", AccountFlags::CREDIT_NORMAL);
            let (mut s, tr) = sell_reserve(t).unwrap();
            if w.mem.execute(&tr, now()).is_err() {
                // Not enough tokens: refused whole, nothing moved.
                prop_assert!(quantity > held);
                prop_assert_eq!(posted(&w.mem, w.seller), (held * UNIT) as i128);
                prop_assert_eq!(w.mem.accounts[&w.seller].balances.debits_pending, 0);
                return Ok(());
            }
            // Each buyer has one buy order of 6 lots at limit 100.
            let mut buys = Vec::new();
            for (i, (usd, _)) in w.buyers.clone().into_iter().enumerate() {
                let order_id = Uuid::from_u128(500 + i as u128);
                let terms = OrderTerms {
                    order_id,
                    studio_account: usd,
                    escrow_account: crate::settlement::escrow_account_id(order_id),
                    fee_account: w.fee,
                    ledger: "USD".into(),
                    quantity: 6,
                    limit_price: 100,
                    fee_bps: 250,
                };
                w.mem.open(terms.escrow_account, "USD", AccountFlags::CREDIT_NORMAL);
                let (o, tr) = reserve(terms).unwrap();
                w.mem.execute(&tr, now()).unwrap();
                buys.push(o);
            }
            let mut delivered = [0i64; 3];
            let mut paid = [0i64; 3];
            for (n, st) in steps.into_iter().enumerate() {
                let id = Uuid::from_u128(10_000 + n as u128);
                match st {
                    Step::Fill(q, b, p) => {
                        let sold = sell_fill(&s, id, w.buyers[b].1, q);
                        let bought = buy_fill(&buys[b], id, w.seller_credits, q, p);
                        if let (Ok((s2, mut tr)), Ok((o2, f, tr2))) = (sold, bought) {
                            tr.extend(tr2);
                            w.mem.execute(&tr, now()).unwrap();
                            s = s2;
                            buys[b] = o2;
                            delivered[b] += q;
                            paid[b] += f.gross + f.fee;
                        } else {
                            prop_assert!(q > s.quantity_open || q > buys[b].quantity_open);
                        }
                    }
                    Step::Release(q) => match sell_release(&s, id, q) {
                        Ok((s2, tr)) => {
                            w.mem.execute(&tr, now()).unwrap();
                            s = s2;
                        }
                        Err(_) => prop_assert!(q > s.quantity_open),
                    },
                }
                w.mem.check().map_err(TestCaseError::fail)?;
                prop_assert_eq!(w.mem.accounts[&w.seller].balances.debits_pending, s.held_units().unwrap());
                prop_assert_eq!(s.hold.is_some(), s.quantity_open > 0);
            }
            // Release what is left of the buys: each buyer is down exactly what it paid.
            for (b, o) in buys.iter().enumerate() {
                if o.quantity_open > 0 {
                    let (_, tr) = crate::settlement::release_unfilled(o, Uuid::from_u128(77_000 + b as u128), o.quantity_open).unwrap();
                    w.mem.execute(&tr, now()).unwrap();
                }
                prop_assert_eq!(posted(&w.mem, w.buyers[b].0), (1_000_000 - paid[b]) as i128);
                prop_assert_eq!(posted(&w.mem, w.buyers[b].1), (delivered[b] * UNIT) as i128);
                prop_assert_eq!(posted(&w.mem, o.terms.escrow_account), 0);
            }
            // Conservation: GRID in = GRID everywhere; credits likewise.
            let grid: i128 = [w.seller, s.terms.escrow_account].iter().chain(w.buyers.iter().map(|(_, g)| g))
                .map(|a| posted(&w.mem, *a)).sum();
            prop_assert_eq!(grid, -posted(&w.mem, w.supply));
            prop_assert_eq!(posted(&w.mem, s.terms.escrow_account), 0);
            let usd: i128 = [w.seller_credits, w.fee].iter().chain(w.buyers.iter().map(|(u, _)| u))
                .chain(buys.iter().map(|o| &o.terms.escrow_account))
                .map(|a| posted(&w.mem, *a)).sum();
            prop_assert_eq!(usd, -posted(&w.mem, w.operator));
            let total: i64 = delivered.iter().sum();
            prop_assert_eq!(posted(&w.mem, w.seller), ((held - total) * UNIT) as i128);
        }
    }
}
