//! The cost estimate `jobs submit` shows before it submits: what the job's bid would take from
//! the asks on the book now (price-time priority: cheapest first, only at or below the limit),
//! the fee on that, what would rest on the book at the limit, and what the API reserves.
//!
//! The rules are the ledger's (`gridbook_ledger::settlement`): a unit reserves
//! `limit + ⌈limit × fee_bps / 10 000⌉`; a fill costs `qty × trade price` plus
//! `⌈cost × fee_bps / 10 000⌉`; the trade price is the resting ask's. It is an estimate: the book
//! moves, the anti-whale rule may pass over some asks, and fees are rounded per fill.

use serde::Serialize;

const BPS: i128 = 10_000;

/// ⌈amount × bps / 10 000⌉ (the ledger's fee rounding).
pub fn fee(amount: i64, bps: u32) -> i64 {
    let x = i128::from(amount) * i128::from(bps);
    i64::try_from((x + BPS - 1).div_euclid(BPS)).unwrap_or(i64::MAX)
}

/// What one unit reserves: limit + ⌈limit × fee⌉.
pub fn unit_reserve(limit: i64, bps: u32) -> i64 {
    limit.saturating_add(fee(limit, bps))
}

/// Units of a file of `lines` lines in a market of `items_per_unit` lines a unit.
pub fn units_for(lines: u64, items_per_unit: u64) -> u64 {
    lines.div_ceil(items_per_unit.max(1))
}

/// One ask level of the book.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Level {
    pub price: u64,
    pub qty: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Estimate {
    pub lines: u64,
    pub items_per_unit: u64,
    pub units: u64,
    pub limit_price: i64,
    pub fee_bps: u32,
    /// The cheapest ask now, if any.
    pub best_ask: Option<u64>,
    /// Units the asks at or below the limit cover now.
    pub fill_units: u64,
    /// Σ qty × ask price of those units.
    pub fill_cost: i64,
    /// The fee on `fill_cost`.
    pub fill_fee: i64,
    /// Units that would rest on the book at the limit until sellers come or the deadline.
    pub rest_units: u64,
    /// What those would cost at most: rest_units × unit_reserve.
    pub rest_max: i64,
    /// limit + ⌈limit × fee⌉.
    pub unit_reserve: i64,
    /// units × unit_reserve: taken from the balance when the job is submitted; what is not
    /// spent goes back.
    pub reserved: i64,
}

impl Estimate {
    /// The most the job can cost: the fills now plus the rest at the limit.
    pub fn max_cost(&self) -> i64 {
        self.fill_cost
            .saturating_add(self.fill_fee)
            .saturating_add(self.rest_max)
    }
}

/// Walks `asks` (any order) up to `limit` for `units`.
pub fn estimate(
    lines: u64,
    items_per_unit: u64,
    limit: i64,
    fee_bps: u32,
    asks: &[Level],
) -> Estimate {
    let units = units_for(lines, items_per_unit);
    let mut asks: Vec<Level> = asks.iter().copied().filter(|l| l.qty > 0).collect();
    asks.sort_by_key(|l| l.price);
    let mut left = units;
    let mut cost: i64 = 0;
    for l in &asks {
        if left == 0 || i64::try_from(l.price).map_or(true, |p| p > limit) {
            break;
        }
        let take = left.min(l.qty);
        cost = cost.saturating_add((take as i64).saturating_mul(l.price as i64));
        left -= take;
    }
    let unit_reserve = unit_reserve(limit, fee_bps);
    Estimate {
        lines,
        items_per_unit,
        units,
        limit_price: limit,
        fee_bps,
        best_ask: asks.first().map(|l| l.price),
        fill_units: units - left,
        fill_cost: cost,
        fill_fee: fee(cost, fee_bps),
        rest_units: left,
        rest_max: (left as i64).saturating_mul(unit_reserve),
        unit_reserve,
        reserved: (units as i64).saturating_mul(unit_reserve),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lv(price: u64, qty: u64) -> Level {
        Level { price, qty }
    }

    #[test]
    fn walks_the_cheapest_asks_up_to_the_limit() {
        // 2,500 lines of 1,000 a unit = 3 units; asks 2 at 40, 5 at 60, 9 at 150; limit 100.
        let e = estimate(2_500, 1_000, 100, 250, &[lv(60, 5), lv(150, 9), lv(40, 2)]);
        assert_eq!(e.units, 3);
        assert_eq!(e.best_ask, Some(40));
        assert_eq!((e.fill_units, e.fill_cost), (3, 2 * 40 + 60));
        assert_eq!(e.fill_fee, 4); // ⌈140 × 2.5 %⌉ = ⌈3.5⌉
        assert_eq!((e.rest_units, e.rest_max), (0, 0));
        assert_eq!(e.unit_reserve, 103); // 100 + ⌈2.5⌉
        assert_eq!(e.reserved, 309);
        assert_eq!(e.max_cost(), 144);
    }

    #[test]
    fn what_the_book_cannot_cover_rests_at_the_limit() {
        let e = estimate(1_500, 1_000, 100, 250, &[lv(120, 5)]);
        assert_eq!(
            (e.units, e.fill_units, e.fill_cost, e.fill_fee),
            (2, 0, 0, 0)
        );
        assert_eq!((e.rest_units, e.rest_max), (2, 206));
        assert_eq!(e.best_ask, Some(120));
        let e = estimate(10, 1_000, 100, 0, &[]);
        assert_eq!(
            (e.units, e.rest_units, e.reserved, e.best_ask),
            (1, 1, 100, None)
        );
    }

    #[test]
    fn fee_rounds_up_like_the_ledger() {
        assert_eq!(fee(0, 250), 0);
        assert_eq!(fee(1, 250), 1);
        assert_eq!(fee(400, 250), 10);
        assert_eq!(fee(401, 250), 11);
        assert_eq!(unit_reserve(40, 250), 41);
        assert_eq!(units_for(1, 1_000), 1);
        assert_eq!(units_for(1_000, 1_000), 1);
        assert_eq!(units_for(1_001, 1_000), 2);
    }
}
