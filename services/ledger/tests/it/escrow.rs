use gridbook_db::testing::TestDb;
use gridbook_ledger::escrow::{self, Bid};
use gridbook_ledger::settlement::AssignmentStatus;
use gridbook_ledger::*;

use crate::{assert_healthy, funded};

fn bal(c: &mut diesel::PgConnection, a: AccountId) -> i128 {
    store::get_account(c, a).unwrap().balances.posted()
}

#[test]
fn bid_fill_complete_void_release_end_to_end() {
    let db = TestDb::new();
    let c = &mut db.conn();
    escrow::ensure_system_accounts(c, "USD").unwrap();
    let studio = funded(c, "USD", AccountCode::Studio, 1_000_000);
    let p1 = funded(c, "USD", AccountCode::Provider, 0);
    let p2 = funded(c, "USD", AccountCode::Provider, 0);
    let fee_acct = AccountId::system("USD", "protocol_fee");
    let order_id = uuid::Uuid::now_v7();
    // 100 units at ≤ 1,000 minor units, 2.5% fee → 1,025 per unit reserved.
    let bid = Bid {
        order_id,
        studio_account: studio,
        quantity: 100,
        limit_price: 1_000,
        fee_bps: 250,
    };
    let o = escrow::reserve_bid(c, &bid).unwrap();
    assert_eq!(o.unit_reserve, 1_025);
    assert_eq!(escrow::reserve_bid(c, &bid).unwrap(), o, "idempotent");
    assert_eq!(
        store::get_account(c, studio).unwrap().balances.available(),
        1_000_000 - 102_500
    );
    let mut other = bid.clone();
    other.quantity = 99;
    assert_eq!(
        escrow::reserve_bid(c, &other).unwrap_err().code(),
        "order_exists_with_different_content"
    );

    // Fill 40 at 900: holds 36,000 + 900 fee, releases 41,000 − 36,900 = 4,100.
    let f1 = uuid::Uuid::now_v7();
    let a1 = escrow::on_fill(c, order_id, f1, p1, 40, 900).unwrap();
    assert_eq!(
        escrow::on_fill(c, order_id, f1, p1, 40, 900).unwrap(),
        a1,
        "idempotent"
    );
    assert_eq!(bal(c, studio), 1_000_000 - 102_500 + 4_100);
    assert_eq!(
        escrow::on_fill(c, order_id, uuid::Uuid::now_v7(), p2, 61, 900)
            .unwrap_err()
            .code(),
        "insufficient_open_quantity"
    );
    assert_eq!(
        escrow::on_fill(c, order_id, uuid::Uuid::now_v7(), p2, 1, 1_001)
            .unwrap_err()
            .code(),
        "price_above_limit"
    );
    // Fill 30 at 1,000 (no improvement beyond fee rounding).
    let f2 = uuid::Uuid::now_v7();
    escrow::on_fill(c, order_id, f2, p2, 30, 1_000).unwrap();

    // 30 of 40 verified: provider 27,000, fee 675; the rest (9,000 + 225) back to the studio.
    let done = escrow::complete(c, f1, 30).unwrap();
    assert_eq!(
        (done.status, done.verified_units),
        (AssignmentStatus::Completed, Some(30))
    );
    assert_eq!(escrow::complete(c, f1, 30).unwrap(), done, "idempotent");
    assert_eq!(
        escrow::complete(c, f1, 29).unwrap_err().code(),
        "assignment_already_resolved"
    );
    assert_eq!(bal(c, p1), 27_000);
    assert_eq!(bal(c, fee_acct), 675);
    // The second assignment fails verification: void back to the studio.
    assert_eq!(
        escrow::void(c, f2).unwrap().status,
        AssignmentStatus::Voided
    );
    // Cancel: the 30 unfilled units return.
    let o = escrow::release_unfilled(c, order_id, uuid::Uuid::from_u128(5), 30).unwrap();
    assert_eq!(o.quantity_open, 0);
    assert_eq!(
        escrow::release_unfilled(c, order_id, uuid::Uuid::from_u128(5), 30).unwrap(),
        o,
        "idempotent"
    );
    let escrow_acct = settlement::escrow_account_id(order_id);
    assert_eq!(
        bal(c, escrow_acct),
        0,
        "escrow empty once everything resolved"
    );
    assert_eq!(bal(c, studio), 1_000_000 - 27_000 - 675);
    assert_eq!(
        store::get_account(c, studio)
            .unwrap()
            .balances
            .debits_pending,
        0
    );
    assert_healthy(c);
}

#[test]
fn escrow_calls_compose_with_processed_events_and_outbox_in_one_transaction() {
    use diesel::Connection;
    let db = TestDb::new();
    let c = &mut db.conn();
    let studio = funded(c, "USD", AccountCode::Studio, 10_000);
    let prov = funded(c, "USD", AccountCode::Provider, 0);
    let order_id = uuid::Uuid::now_v7();
    escrow::reserve_bid(
        c,
        &Bid {
            order_id,
            studio_account: studio,
            quantity: 10,
            limit_price: 100,
            fee_bps: 100,
        },
    )
    .unwrap();
    let fill = uuid::Uuid::now_v7();
    for _ in 0..2 {
        // A redelivered event: the second delivery is a no-op.
        c.transaction::<_, LedgerError, _>(|c| {
            if events::record_processed_event(c, "settlement", &fill.to_string())? {
                let a = escrow::on_fill(c, order_id, fill, prov, 5, 90)?;
                events::enqueue_outbox(
                    c,
                    "assignment.created",
                    &serde_json::to_value(&a).unwrap(),
                )?;
            }
            Ok(())
        })
        .unwrap();
    }
    assert_eq!(events::fetch_unpublished(c, 10).unwrap().len(), 1);
    // A failing effect rolls back the processed-event record too.
    let bad = uuid::Uuid::now_v7();
    let r = c.transaction::<_, LedgerError, _>(|c| {
        events::record_processed_event(c, "settlement", &bad.to_string())?;
        escrow::on_fill(c, order_id, bad, prov, 6, 90)?; // only 5 open
        Ok(())
    });
    assert_eq!(r.unwrap_err().code(), "insufficient_open_quantity");
    assert!(
        c.transaction::<_, LedgerError, _>(|c| events::record_processed_event(
            c,
            "settlement",
            &bad.to_string()
        ))
        .unwrap()
    );
    assert_healthy(c);
}
