//! `settle_message` straight on the database (no NATS): amends, rejections after acceptance,
//! fills against asks the marketplace does not know (dead-lettered, their units released), and a
//! message applied twice.

use gridbook_ledger::AccountCode;
use gridbook_ledger::escrow;
use gridbook_settlement::dead_letter::{self, Source};
use gridbook_settlement::decide::{CONSUMER, DeadLetterEscrow, DeadLetterReason};
use gridbook_settlement::settle::{Outcome, settle_message};
use matching_core::{Amend, CommandKind, OrderId, Side};

use crate::*;

#[test]
fn amends_release_what_they_give_up_and_a_fill_against_an_unknown_ask_is_dead_lettered_and_released() {
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
    let source = Source {
        stream: streams::EVENTS.into(),
        subject: subjects::market_evt(&market),
        stream_seq: Some(7),
    };

    let out = settle_message(c, CONSUMER, &source, &frames, &Default::default()).unwrap();
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
    // The stranger's fill took 2 of the 6 lots off the book: they go back to the studio.
    assert_eq!(posted(c, studio), 100_000 - 4 * 123);
    let order_id = orders::get(c, bid).unwrap().unwrap().order_id;
    let order = escrow::get_order(c, order_id).unwrap();
    assert_eq!(
        order.quantity_open, 4,
        "the refused fill's units are released, not left open"
    );
    assert_eq!(count(c, "SELECT count(*) AS n FROM outbox"), 0);
    let dead = dead_letter::list(c, 10).unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(d.reason, DeadLetterReason::UnknownOrder);
    assert_eq!(d.escrow_action, DeadLetterEscrow::Released);
    assert_eq!((d.order_id, d.unit_start, d.units), (Some(order_id), Some(4), 2));
    assert_eq!((d.stream.as_str(), d.stream_seq), (streams::EVENTS, Some(7)));
    assert_eq!(d.market.as_deref(), Some(market.as_str()));
    let ev: matching_core::Event = serde_json::from_slice(&d.payload).unwrap();
    assert_eq!(Some(ev.seq as i64), d.event_seq);
    assert!(
        matches!(ev.kind, matching_core::EventKind::Fill { maker: OrderId(9_000_001), .. }
            | matching_core::EventKind::Fill { taker: OrderId(9_000_001), .. }),
        "{ev:?}"
    );
    assert!(d.detail.contains("9000001"), "{}", d.detail);

    // The same message again: nothing new.
    let again = settle_message(c, CONSUMER, &source, &frames, &Default::default()).unwrap();
    assert_eq!(
        again,
        Outcome {
            applied: 0,
            duplicates: 2,
            refused: 0,
            assignments: 0
        }
    );
    assert_eq!(posted(c, studio), 100_000 - 4 * 123);
    assert_eq!(dead_letter::list(c, 10).unwrap().len(), 1, "recorded once");

    // An amend above the reservation cannot be honoured: refused, reservation unchanged.
    let up = sim.frames.len();
    sim.apply(amend(Some(8), None));
    let out = settle_message(c, CONSUMER, &source, &sim.frames[up..], &Default::default()).unwrap();
    assert_eq!(out.refused, 1);
    assert_eq!(posted(c, studio), 100_000 - 4 * 123);
    let dead = dead_letter::list(c, 10).unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(
        (dead[0].reason, dead[0].escrow_action, dead[0].units),
        (DeadLetterReason::InvalidEvent, DeadLetterEscrow::Untouched, 0),
        "the amend above the reservation leaves it as it is"
    );
    assert_healthy(c);
    assert_eq!(money_in_platform(c), money);
}
