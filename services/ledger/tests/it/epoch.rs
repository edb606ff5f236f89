use gridbook_ledger::epoch::{self, BuybackRule, FixedPrice, RewardsPolicy};
use gridbook_ledger::escrow::{self, Bid};
use gridbook_db::testing::TestDb;
use gridbook_ledger::*;
use rust_decimal::Decimal;

use crate::{assert_healthy, funded};

struct Equal(Vec<AccountId>);
impl RewardsPolicy for Equal {
    fn payouts(&self, _epoch: i64, pool: i64) -> Result<Vec<(AccountId, i64)>> {
        Ok(self
            .0
            .iter()
            .map(|a| (*a, pool / self.0.len() as i64))
            .collect())
    }
}

#[test]
fn buyback_burn_and_rewards() {
    let db = TestDb::new();
    let c = &mut db.conn();
    let studio = funded(c, "USD", AccountCode::Studio, 1_000_000);
    let prov = funded(c, "USD", AccountCode::Provider, 0);
    let order_id = uuid::Uuid::now_v7();
    escrow::reserve_bid(
        c,
        &Bid {
            order_id,
            studio_account: studio,
            quantity: 100,
            limit_price: 1_000,
            fee_bps: 1_000,
        },
    )
    .unwrap();
    let f = uuid::Uuid::now_v7();
    escrow::on_fill(c, order_id, f, prov, 100, 1_000).unwrap();
    escrow::complete(c, f, 100).unwrap(); // fee 10,000
    let rule = BuybackRule {
        currency_ledger: "USD".into(),
        token_ledger: "GRID".into(),
        share_bps: 5_000,
        rewards_share_bps: 2_000,
        token_decimals: 6,
    };
    // 1 GRID = 250 cents.
    let r = epoch::buyback_and_burn(c, 1, &rule, &FixedPrice(Decimal::from(250))).unwrap();
    assert_eq!(
        (
            r.fee_available_before,
            r.buyback_spend,
            r.rewards_allocation
        ),
        (10_000, 5_000, 2_000)
    );
    assert_eq!(
        r.tokens_bought, 20_000_000,
        "5,000 cents / 250 cents per token = 20 GRID"
    );
    assert_eq!(r.transfers.len(), 5);
    assert_eq!(
        epoch::buyback_and_burn(c, 1, &rule, &FixedPrice(Decimal::from(1))).unwrap(),
        r,
        "idempotent by epoch"
    );
    let burned = store::get_account(c, AccountId::system("GRID", "burned")).unwrap();
    assert_eq!(burned.balances.posted(), 20_000_000);
    assert_eq!(
        store::get_account(c, AccountId::system("USD", "protocol_fee"))
            .unwrap()
            .balances
            .posted(),
        3_000
    );
    let p2 = funded(c, "USD", AccountCode::Provider, 0);
    let paid = epoch::pay_rewards(c, 1, "USD", &Equal(vec![prov, p2])).unwrap();
    assert_eq!(paid.iter().map(|t| t.amount).sum::<i64>(), 2_000);
    assert!(
        epoch::pay_rewards(c, 1, "USD", &Equal(vec![prov, p2]))
            .unwrap()
            .is_empty(),
        "the pool is empty: nothing paid twice"
    );
    assert_healthy(c);
}
