//! `settle_message` straight on the database (no NATS): amends, rejections after acceptance,
//! fills against asks the marketplace does not know, and a message applied twice.

use gridbook_ledger::AccountCode;
use gridbook_ledger::escrow;
use gridbook_settlement::decide::CONSUMER;
use gridbook_settlement::settle::{Outcome, settle_message};
use matching_core::{Amend, CommandKind, OrderId, Side};

use crate::*;

#[test]
fn amends_release_what_they_give_up_and_unknown_asks_are_refused_without_effect() {
    let db = fresh_db();
    let c = &mut db.conn();
    let market = unique_market("DB");
    escrow::ensure_system_accounts(c, LEDGER).unwrap();
    let studio = funded(c, AccountCode::Studio, 100_000);
    let money = money_in_platform(c);
    let bid = escrowed_bid(c, &market, studio, 10, 120); // 10 × 123 reserved
    let amend = |qty: Option<u64>, price: Option<u64>| {
        CommandKind::Amend(Amend {
            id: OrderId(bid),
            account: matching_core::AccountId(1),
            price,
            qty,
        })
    };

    let mut sim = Sim::new(&market);
    sim.place(bid, 1, Side::Bid, 120, 10);
    sim.apply(amend(Some(6), None)); // gives up 4 lots
    sim.apply(amend(None, Some(5_000))); // rejected (price out of range): the bid stays
    sim.place(9_000_001, 9, Side::Ask, 110, 2); // an ask the marketplace does not know
    let frames = sim.frames.clone();

    let out = settle_message(c, CONSUMER, &frames).unwrap();
    // amend-down + the refused fill are recorded; the rejected amend is skipped.
    assert_eq!(
        out,
        Outcome {
            applied: 1,
            duplicates: 0,
            refused: 1,
            assignments: 0
        }
    );
    assert_eq!(posted(c, studio), 100_000 - 6 * 123);
    let order_id = orders::get(c, bid).unwrap().unwrap().order_id;
    let order = escrow::get_order(c, order_id).unwrap();
    assert_eq!(
        order.quantity_open, 6,
        "the refused fill left the reservation alone"
    );
    assert_eq!(count(c, "SELECT count(*) AS n FROM outbox"), 0);

    // The same message again: nothing new.
    let again = settle_message(c, CONSUMER, &frames).unwrap();
    assert_eq!(
        again,
        Outcome {
            applied: 0,
            duplicates: 2,
            refused: 0,
            assignments: 0
        }
    );
    assert_eq!(posted(c, studio), 100_000 - 6 * 123);

    // An amend above the reservation cannot be honoured: refused, reservation unchanged.
    let up = sim.frames.len();
    sim.apply(amend(Some(8), None));
    let out = settle_message(c, CONSUMER, &sim.frames[up..]).unwrap();
    assert_eq!(out.refused, 1);
    assert_eq!(posted(c, studio), 100_000 - 6 * 123);
    assert_healthy(c);
    assert_eq!(money_in_platform(c), money);
}
