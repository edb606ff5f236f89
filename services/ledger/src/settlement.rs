//! Settlement rules (pure): turn a bid, a fill, a completion, a failure or a cancellation into
//! ledger transfers. The settlement worker and the escrow API (`escrow`) only load state, call
//! these, and write what they return.
//!
//! Money path (all amounts in the order's currency, minor units):
//! - reserve: studio → order escrow account, `quantity × unit_reserve` where
//!   `unit_reserve = limit + ⌈limit × fee_bps / 10⁴⌉` (rounded up per unit, so every fill at any
//!   price ≤ limit is covered: `q·p + ⌈q·p·f⌉ ≤ q·unit_reserve`).
//! - fill of q at p: pending escrow → provider `q·p`; pending escrow → protocol fee `⌈q·p·f⌉`;
//!   posted escrow → studio, the improvement `q·unit_reserve − q·p − ⌈q·p·f⌉` (if > 0).
//! - complete with v verified units: post `v·p` to the provider and `⌈v·p·f⌉` as fee (the
//!   remainders return to escrow), then escrow → studio the returned amount. v = 0 is a void.
//! - void (failure, timeout): void both holds; escrow → studio the held amount.
//! - release unfilled (cancel, expiry): escrow → studio `q·unit_reserve` for q open units.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{LedgerError, Result};
use crate::ids::{AccountId, TransferId};
use crate::model::{Amount, NewTransfer};

pub const BPS: i128 = 10_000;

fn narrow(v: i128) -> Result<Amount> {
    Amount::try_from(v).map_err(|_| LedgerError::Overflow)
}

/// ⌈amount × bps / 10⁴⌉.
pub fn fee(amount: Amount, fee_bps: u32) -> Result<Amount> {
    let x = (amount as i128)
        .checked_mul(fee_bps as i128)
        .ok_or(LedgerError::Overflow)?;
    narrow((x + BPS - 1).div_euclid(BPS))
}

/// What one unit reserves: limit + ⌈limit × fee⌉.
pub fn unit_reserve(limit_price: Amount, fee_bps: u32) -> Result<Amount> {
    limit_price
        .checked_add(fee(limit_price, fee_bps)?)
        .ok_or(LedgerError::Overflow)
}

/// `qty × price` with overflow checking.
pub fn cost(qty: i64, price: Amount) -> Result<Amount> {
    narrow((qty as i128) * (price as i128))
}

/// The terms of a bid, fixed when it is placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderTerms {
    pub order_id: Uuid,
    pub studio_account: AccountId,
    /// The per-order escrow account (id derived from the order id).
    pub escrow_account: AccountId,
    pub fee_account: AccountId,
    pub ledger: String,
    pub quantity: i64,
    pub limit_price: Amount,
    pub fee_bps: u32,
}

/// An order's escrow state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    pub terms: OrderTerms,
    /// Units still reserved and neither filled nor released.
    pub quantity_open: i64,
    pub unit_reserve: Amount,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentStatus {
    Held,
    Completed,
    Voided,
}

/// One fill = one assignment: a shard of the job for one provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignmentState {
    pub id: Uuid,
    pub order_id: Uuid,
    pub provider_account: AccountId,
    pub quantity: i64,
    pub trade_price: Amount,
    pub provider_hold: TransferId,
    pub fee_hold: Option<TransferId>,
    pub status: AssignmentStatus,
    pub verified_units: Option<i64>,
}

/// The escrow account of an order.
pub fn escrow_account_id(order_id: Uuid) -> AccountId {
    AccountId::derived(&["escrow", &order_id.to_string()])
}

fn tid(parts: &[&str]) -> TransferId {
    TransferId::derived(parts)
}

/// Placing a bid: validate the terms and reserve `quantity × unit_reserve`.
pub fn reserve(terms: OrderTerms) -> Result<(OrderState, Vec<NewTransfer>)> {
    if terms.quantity <= 0 || terms.limit_price <= 0 {
        return Err(LedgerError::AmountMustBePositive);
    }
    if terms.fee_bps > 10_000 {
        return Err(LedgerError::Invalid("fee_bps must be at most 10000".into()));
    }
    let unit = unit_reserve(terms.limit_price, terms.fee_bps)?;
    let amount = cost(terms.quantity, unit)?;
    let o = terms.order_id.to_string();
    let t = NewTransfer::posted(
        tid(&["order", &o, "reserve"]),
        terms.studio_account,
        terms.escrow_account,
        amount,
        "escrow_reserve",
    )
    .with_reference(terms.order_id);
    Ok((
        OrderState {
            quantity_open: terms.quantity,
            unit_reserve: unit,
            terms,
        },
        vec![t],
    ))
}

/// A fill of `qty` at `trade_price`: holds for the assignment, the price improvement released.
pub fn fill(
    order: &OrderState,
    fill_id: Uuid,
    provider: AccountId,
    qty: i64,
    trade_price: Amount,
) -> Result<(OrderState, AssignmentState, Vec<NewTransfer>)> {
    if qty <= 0 || trade_price <= 0 {
        return Err(LedgerError::AmountMustBePositive);
    }
    if trade_price > order.terms.limit_price {
        return Err(LedgerError::PriceAboveLimit);
    }
    if qty > order.quantity_open {
        return Err(LedgerError::InsufficientOpenQuantity {
            open: order.quantity_open,
            requested: qty,
        });
    }
    if provider == order.terms.studio_account || provider == order.terms.escrow_account {
        return Err(LedgerError::SameAccount(provider));
    }
    let f = fill_id.to_string();
    let t = &order.terms;
    let gross = cost(qty, trade_price)?;
    let fee_hold = fee(gross, t.fee_bps)?;
    let reserved = cost(qty, order.unit_reserve)?;
    let improvement = reserved - gross - fee_hold;
    debug_assert!(improvement >= 0);
    let provider_hold = tid(&["fill", &f, "provider_hold"]);
    let mut transfers = vec![
        NewTransfer::pending(
            provider_hold,
            t.escrow_account,
            provider,
            gross,
            None,
            "escrow_hold_provider",
        )
        .with_reference(fill_id),
    ];
    let fee_hold_id = (fee_hold > 0).then(|| tid(&["fill", &f, "fee_hold"]));
    if let Some(id) = fee_hold_id {
        transfers.push(
            NewTransfer::pending(
                id,
                t.escrow_account,
                t.fee_account,
                fee_hold,
                None,
                "escrow_hold_fee",
            )
            .with_reference(fill_id),
        );
    }
    if improvement > 0 {
        transfers.push(
            NewTransfer::posted(
                tid(&["fill", &f, "improvement"]),
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
    let asg = AssignmentState {
        id: fill_id,
        order_id: t.order_id,
        provider_account: provider,
        quantity: qty,
        trade_price,
        provider_hold,
        fee_hold: fee_hold_id,
        status: AssignmentStatus::Held,
        verified_units: None,
    };
    Ok((next, asg, transfers))
}

/// Verified completion of `verified` units (0 ≤ verified ≤ quantity): post provider share and fee,
/// return the rest to the studio.
pub fn complete(
    order: &OrderState,
    asg: &AssignmentState,
    verified: i64,
) -> Result<(AssignmentState, Vec<NewTransfer>)> {
    if asg.status != AssignmentStatus::Held {
        return Err(LedgerError::AssignmentAlreadyResolved(asg.id));
    }
    if verified < 0 || verified > asg.quantity {
        return Err(LedgerError::Invalid(format!(
            "verified units {verified} outside 0..={}",
            asg.quantity
        )));
    }
    if verified == 0 {
        return void(order, asg);
    }
    let a = asg.id.to_string();
    let t = &order.terms;
    let gross = cost(asg.quantity, asg.trade_price)?;
    let fee_held = fee(gross, t.fee_bps)?;
    let pay = cost(verified, asg.trade_price)?;
    let fee_due = fee(pay, t.fee_bps)?;
    let mut transfers = vec![
        NewTransfer::post(
            tid(&["assignment", &a, "post_provider"]),
            asg.provider_hold,
            Some(pay),
            "settle_provider",
        )
        .with_reference(asg.id),
    ];
    if let Some(h) = asg.fee_hold {
        transfers.push(if fee_due > 0 {
            NewTransfer::post(
                tid(&["assignment", &a, "post_fee"]),
                h,
                Some(fee_due),
                "settle_fee",
            )
            .with_reference(asg.id)
        } else {
            NewTransfer::void(tid(&["assignment", &a, "void_fee"]), h, "settle_fee_void")
                .with_reference(asg.id)
        });
    }
    let refund = (gross - pay) + (fee_held - fee_due);
    if refund > 0 {
        transfers.push(
            NewTransfer::posted(
                tid(&["assignment", &a, "refund"]),
                t.escrow_account,
                t.studio_account,
                refund,
                "escrow_refund",
            )
            .with_reference(asg.id),
        );
    }
    let mut next = asg.clone();
    next.status = AssignmentStatus::Completed;
    next.verified_units = Some(verified);
    Ok((next, transfers))
}

/// Failure or timeout: void the holds and return the held amount to the studio.
pub fn void(
    order: &OrderState,
    asg: &AssignmentState,
) -> Result<(AssignmentState, Vec<NewTransfer>)> {
    if asg.status != AssignmentStatus::Held {
        return Err(LedgerError::AssignmentAlreadyResolved(asg.id));
    }
    let a = asg.id.to_string();
    let t = &order.terms;
    let gross = cost(asg.quantity, asg.trade_price)?;
    let fee_held = fee(gross, t.fee_bps)?;
    let mut transfers = vec![
        NewTransfer::void(
            tid(&["assignment", &a, "void_provider"]),
            asg.provider_hold,
            "escrow_void",
        )
        .with_reference(asg.id),
    ];
    if let Some(h) = asg.fee_hold {
        transfers.push(
            NewTransfer::void(tid(&["assignment", &a, "void_fee"]), h, "escrow_void")
                .with_reference(asg.id),
        );
    }
    transfers.push(
        NewTransfer::posted(
            tid(&["assignment", &a, "refund"]),
            t.escrow_account,
            t.studio_account,
            gross + fee_held,
            "escrow_refund",
        )
        .with_reference(asg.id),
    );
    let mut next = asg.clone();
    next.status = AssignmentStatus::Voided;
    next.verified_units = Some(0);
    Ok((next, transfers))
}

/// Failure with the work redone: the assignment's units go back to the order's open
/// reservation, to be offered again on the book from the same escrow order. Both holds are
/// voided (their amount stays in the escrow account) and the price improvement the fill
/// released is reserved again from the studio, so every open unit is again covered by
/// `unit_reserve` (the re-bid may fill at any price up to the limit): studio → escrow
/// `q·unit_reserve − q·p − ⌈q·p·f⌉`. The studio's net cost is unchanged by a re-offer: it still
/// pays only the units verified later, at their trade price plus fee. The transfer fails (no
/// effect) when the studio's balance no longer covers that improvement.
pub fn reoffer(
    order: &OrderState,
    asg: &AssignmentState,
) -> Result<(OrderState, AssignmentState, Vec<NewTransfer>)> {
    if asg.status != AssignmentStatus::Held {
        return Err(LedgerError::AssignmentAlreadyResolved(asg.id));
    }
    let t = &order.terms;
    let open = order
        .quantity_open
        .checked_add(asg.quantity)
        .filter(|&o| o <= t.quantity)
        .ok_or_else(|| {
            LedgerError::Invalid(format!(
                "re-offering {} units would open more than the order's {}",
                asg.quantity, t.quantity
            ))
        })?;
    let a = asg.id.to_string();
    let gross = cost(asg.quantity, asg.trade_price)?;
    let fee_held = fee(gross, t.fee_bps)?;
    let improvement = cost(asg.quantity, order.unit_reserve)? - gross - fee_held;
    let mut transfers = vec![
        NewTransfer::void(
            tid(&["assignment", &a, "reoffer_void_provider"]),
            asg.provider_hold,
            "escrow_reoffer_void",
        )
        .with_reference(asg.id),
    ];
    if let Some(h) = asg.fee_hold {
        transfers.push(
            NewTransfer::void(
                tid(&["assignment", &a, "reoffer_void_fee"]),
                h,
                "escrow_reoffer_void",
            )
            .with_reference(asg.id),
        );
    }
    if improvement > 0 {
        transfers.push(
            NewTransfer::posted(
                tid(&["assignment", &a, "reoffer_reserve"]),
                t.studio_account,
                t.escrow_account,
                improvement,
                "escrow_reoffer_reserve",
            )
            .with_reference(asg.id),
        );
    }
    let mut next_order = order.clone();
    next_order.quantity_open = open;
    let mut next = asg.clone();
    next.status = AssignmentStatus::Voided;
    next.verified_units = Some(0);
    Ok((next_order, next, transfers))
}

/// Raising a bid's limit to `new_limit` while `quantity_open` units wait: the open units'
/// reservation grows by `open × (unit_reserve(new) − unit_reserve(old))`, one further transfer
/// studio → escrow (id derived from the order and the new limit: the same raise is one transfer).
/// Assignments already held keep their holds (they were filled at ≤ the old limit); later fills,
/// releases and re-offers use the new `unit_reserve`, so every open unit stays covered at the
/// limit and the improvement of a fill below it goes back in full. No transfer when nothing is
/// open (the limit is recorded all the same).
pub fn raise_limit(
    order: &OrderState,
    new_limit: Amount,
) -> Result<(OrderState, Vec<NewTransfer>)> {
    let t = &order.terms;
    if new_limit <= t.limit_price {
        return Err(LedgerError::Invalid(format!(
            "a raise must be above the current limit {} (got {new_limit})",
            t.limit_price
        )));
    }
    let unit = unit_reserve(new_limit, t.fee_bps)?;
    let extra = cost(order.quantity_open, unit - order.unit_reserve)?;
    let o = t.order_id.to_string();
    let mut transfers = Vec::new();
    if extra > 0 {
        transfers.push(
            NewTransfer::posted(
                tid(&["order", &o, "raise", &new_limit.to_string()]),
                t.studio_account,
                t.escrow_account,
                extra,
                "escrow_reserve_raise",
            )
            .with_reference(t.order_id),
        );
    }
    let mut next = order.clone();
    next.terms.limit_price = new_limit;
    next.unit_reserve = unit;
    Ok((next, transfers))
}

/// Cancellation or expiry of `qty` unfilled units (`release_id`: the cancel/expiry event).
pub fn release_unfilled(
    order: &OrderState,
    release_id: Uuid,
    qty: i64,
) -> Result<(OrderState, Vec<NewTransfer>)> {
    if qty <= 0 {
        return Err(LedgerError::AmountMustBePositive);
    }
    if qty > order.quantity_open {
        return Err(LedgerError::InsufficientOpenQuantity {
            open: order.quantity_open,
            requested: qty,
        });
    }
    let t = &order.terms;
    let amount = cost(qty, order.unit_reserve)?;
    let r = release_id.to_string();
    let transfers = vec![
        NewTransfer::posted(
            tid(&["release", &r]),
            t.escrow_account,
            t.studio_account,
            amount,
            "escrow_release_unfilled",
        )
        .with_reference(release_id),
    ];
    let mut next = order.clone();
    next.quantity_open -= qty;
    Ok((next, transfers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AccountFlags;
    use crate::rules::MemLedger;

    const CREDIT_NORMAL: AccountFlags = AccountFlags::CREDIT_NORMAL;

    /// A studio with `funds`, a 3-unit bid at limit 100 (fee 250 bps), the ledger holding it.
    fn setup(funds: i64) -> (MemLedger, OrderState, AccountId, AccountId) {
        let mut l = MemLedger::default();
        let (studio, provider, op) = (AccountId::new(), AccountId::new(), AccountId::new());
        let order_id = Uuid::now_v7();
        let terms = OrderTerms {
            order_id,
            studio_account: studio,
            escrow_account: escrow_account_id(order_id),
            fee_account: AccountId::new(),
            ledger: "USD".into(),
            quantity: 3,
            limit_price: 100,
            fee_bps: 250,
        };
        for a in [studio, provider, terms.escrow_account, terms.fee_account] {
            l.open(a, "USD", CREDIT_NORMAL);
        }
        l.open(op, "USD", AccountFlags::NONE);
        let now = chrono::Utc::now();
        l.execute(
            &[NewTransfer::posted(
                TransferId::new(),
                op,
                studio,
                funds,
                "deposit",
            )],
            now,
        )
        .unwrap();
        let (order, t) = reserve(terms).unwrap();
        l.execute(&t, now).unwrap();
        (l, order, studio, provider)
    }

    fn posted(l: &MemLedger, a: AccountId) -> i128 {
        l.accounts[&a].balances.posted()
    }

    #[test]
    fn a_reoffer_puts_the_units_back_into_the_reservation_and_the_studio_pays_only_verified_work() {
        let (mut l, order, studio, provider) = setup(10_000);
        let now = chrono::Utc::now();
        let escrow = order.terms.escrow_account;
        assert_eq!(posted(&l, studio), 10_000 - 3 * 103);
        // A cheater fills 2 units at 60: the improvement 2·103 − 120 − 3 goes back at once.
        let (order, cheat, t) = fill(&order, Uuid::now_v7(), provider, 2, 60).unwrap();
        l.execute(&t, now).unwrap();
        assert_eq!(posted(&l, studio), 10_000 - 103 - 123);
        // Caught: the 2 units return to the open reservation, the improvement reserved again.
        let (order, voided, t) = reoffer(&order, &cheat).unwrap();
        l.execute(&t, now).unwrap();
        assert_eq!(order.quantity_open, 3);
        assert_eq!(voided.status, AssignmentStatus::Voided);
        assert_eq!(
            posted(&l, studio),
            10_000 - 3 * 103,
            "back to the whole reservation"
        );
        assert_eq!(
            posted(&l, escrow),
            3 * 103,
            "every open unit covered at the limit"
        );
        assert_eq!(posted(&l, provider), 0);
        assert!(reoffer(&order, &voided).is_err(), "once");
        // An honest node fills all 3 at 90 and is verified: the studio pays 3·90 + ⌈6.75⌉.
        let (order, honest, t) = fill(&order, Uuid::now_v7(), provider, 3, 90).unwrap();
        l.execute(&t, now).unwrap();
        let (_, t) = complete(&order, &honest, 3).unwrap();
        l.execute(&t, now).unwrap();
        assert_eq!(posted(&l, studio), 10_000 - 270 - 7);
        assert_eq!(posted(&l, provider), 270);
        assert_eq!(posted(&l, escrow), 0);
        l.check().unwrap();
    }

    #[test]
    fn a_reoffer_the_studio_cannot_cover_fails_and_never_opens_more_than_the_order() {
        // The studio holds exactly the reservation: after the fill's improvement came back it
        // spends it elsewhere, so re-reserving it fails (the caller refunds instead).
        let (mut l, order, studio, provider) = setup(3 * 103);
        let now = chrono::Utc::now();
        let (order, cheat, t) = fill(&order, Uuid::now_v7(), provider, 2, 60).unwrap();
        l.execute(&t, now).unwrap();
        let spent = posted(&l, studio) as i64;
        l.execute(
            &[NewTransfer::posted(
                TransferId::new(),
                studio,
                provider,
                spent,
                "elsewhere",
            )],
            now,
        )
        .unwrap();
        let (_, _, t) = reoffer(&order, &cheat).unwrap();
        assert!(
            l.clone().execute(&t, now).is_err(),
            "no credits for the improvement"
        );
        let (_, t) = void(&order, &cheat).unwrap();
        l.execute(&t, now).unwrap();
        l.check().unwrap();
        // Never more open than the order.
        let mut full = order.clone();
        full.quantity_open = 3;
        assert!(reoffer(&full, &cheat).is_err());
    }

    #[test]
    fn a_raise_holds_the_difference_for_the_open_units_and_no_credit_is_made_or_lost() {
        let (mut l, order, studio, provider) = setup(10_000);
        let now = chrono::Utc::now();
        let escrow = order.terms.escrow_account;
        // One unit fills at 90 under the old limit (100, unit reserve 103).
        let (order, first, t) = fill(&order, Uuid::now_v7(), provider, 1, 90).unwrap();
        l.execute(&t, now).unwrap();
        // Lowering or keeping the limit is not a raise.
        assert!(raise_limit(&order, 100).is_err());
        assert!(raise_limit(&order, 99).is_err());
        // Raise to 120 (unit reserve 123): 2 open units × 20 more.
        let before = posted(&l, studio);
        let (order, t) = raise_limit(&order, 120).unwrap();
        l.execute(&t, now).unwrap();
        assert_eq!((order.terms.limit_price, order.unit_reserve), (120, 123));
        assert_eq!(posted(&l, studio), before - 2 * 20);
        assert_eq!(
            posted(&l, escrow),
            2 * 123 + 90 + 3,
            "the open units covered at the new limit, plus the first fill's pending holds"
        );
        // A fill at 115 (above the old limit) is allowed now; its improvement is 123 − 115 − 3.
        let (order, second, t) = fill(&order, Uuid::now_v7(), provider, 1, 115).unwrap();
        l.execute(&t, now).unwrap();
        assert!(
            fill(&order, Uuid::now_v7(), provider, 1, 121).is_err(),
            "never above the limit"
        );
        // The last unit is released unfilled at the new reserve.
        let (order, t) = release_unfilled(&order, Uuid::now_v7(), 1).unwrap();
        l.execute(&t, now).unwrap();
        assert_eq!(order.quantity_open, 0);
        for (a, n) in [(&first, 1), (&second, 1)] {
            let (_, t) = complete(&order, a, n).unwrap();
            l.execute(&t, now).unwrap();
        }
        // The studio paid exactly the two trades and their fees: 90 + ⌈2.25⌉ + 115 + ⌈2.875⌉.
        assert_eq!(posted(&l, studio), 10_000 - (90 + 3) - (115 + 3));
        assert_eq!(posted(&l, provider), 90 + 115);
        assert_eq!(posted(&l, escrow), 0);
        l.check().unwrap();
    }

    #[test]
    fn a_raise_the_studio_cannot_cover_is_refused_by_the_ledger() {
        let (mut l, order, _studio, _) = setup(3 * 103 + 10);
        let now = chrono::Utc::now();
        let (_, t) = raise_limit(&order, 110).unwrap();
        assert!(
            l.execute(&t, now).is_err(),
            "3 × 10 more than the 10 available"
        );
        let (_, t) = raise_limit(&order, 103).unwrap(); // unit reserve 106: 3 × 3 = 9 more
        l.execute(&t, now).unwrap();
        l.check().unwrap();
    }

    proptest::proptest! {
        /// reserve → fills → raises → fills → release: money is neither created nor destroyed,
        /// the escrow ends empty, and the studio pays exactly Σ trade + fee.
        #[test]
        fn raises_between_fills_conserve_money(
            steps in proptest::collection::vec((0u8..3, 1i64..3, 1i64..60), 1..12),
        ) {
            let (mut l, mut order, studio, provider) = setup(1_000_000);
            let now = chrono::Utc::now();
            let mut paid = 0i64;
            let mut held = Vec::new();
            for (kind, qty, x) in steps {
                match kind {
                    0 if order.quantity_open > 0 => {
                        let qty = qty.min(order.quantity_open);
                        let price = 1 + (x - 1) % order.terms.limit_price;
                        let (next, a, t) = fill(&order, Uuid::now_v7(), provider, qty, price).unwrap();
                        l.execute(&t, now).unwrap();
                        paid += qty * price + fee(qty * price, 250).unwrap();
                        held.push(a);
                        order = next;
                    }
                    1 => {
                        let (next, t) = raise_limit(&order, order.terms.limit_price + x).unwrap();
                        l.execute(&t, now).unwrap();
                        order = next;
                    }
                    _ => {}
                }
                l.check().unwrap();
            }
            if order.quantity_open > 0 {
                let (next, t) = release_unfilled(&order, Uuid::now_v7(), order.quantity_open).unwrap();
                l.execute(&t, now).unwrap();
                order = next;
            }
            for a in &held {
                let (_, t) = complete(&order, a, a.quantity).unwrap();
                l.execute(&t, now).unwrap();
            }
            l.check().unwrap();
            proptest::prop_assert_eq!(posted(&l, order.terms.escrow_account), 0);
            proptest::prop_assert_eq!(posted(&l, studio), 1_000_000 - paid as i128);
        }
    }
}
