//! The bounded GRID supply against a real PostgreSQL: genesis mints the cap once, nothing can
//! mint beyond it, and burned tokens never move.

use gridbook_db::testing::TestDb;
use gridbook_ledger::supply::{self, MAX_SUPPLY};
use gridbook_ledger::*;

use crate::assert_healthy;

#[test]
fn genesis_mints_the_cap_once_and_the_database_refuses_more_or_an_unburn() {
    let db = TestDb::new();
    let c = &mut db.conn();
    assert_eq!(
        supply::supply(c).unwrap().minted,
        0,
        "nothing exists before genesis"
    );
    supply::genesis(c).unwrap();
    supply::genesis(c).unwrap();
    let s = supply::supply(c).unwrap();
    assert_eq!(
        (s.minted, s.reserve, s.burned, s.circulating),
        (MAX_SUPPLY, MAX_SUPPLY, 0, 0)
    );

    // Any further mint out of the token supply account, by any code path, is refused by the
    // database's constraint — even one base unit.
    let reserve = supply::account(AccountCode::EmissionReserve);
    let mint = supply::account(AccountCode::TokenSupply);
    let extra = NewTransfer::posted(TransferId::new(), mint, reserve, 1, "mint");
    let e = store::create_transfer(c, &extra).unwrap_err();
    assert!(e.to_string().contains("grid_supply_bounded"), "{e}");

    // No other GRID account may be one that can go negative (a mint by another name).
    let e = store::create_account(c, &NewAccount::system(token::LEDGER, AccountCode::Operator))
        .unwrap_err();
    assert!(
        e.to_string().contains("grid_only_supply_may_go_negative"),
        "{e}"
    );

    // Tokens reach a holder only out of the reserve; burned ones can never be debited.
    let holder = token::ensure_user_account(c, uuid::Uuid::now_v7()).unwrap();
    let burned = supply::account(AccountCode::Burned);
    store::create_transfers(
        c,
        &[
            NewTransfer::posted(TransferId::new(), reserve, holder, 5 * token::UNIT, "grant"),
            NewTransfer::posted(TransferId::new(), holder, burned, 2 * token::UNIT, "burn"),
        ],
    )
    .unwrap();
    let unburn = NewTransfer::posted(TransferId::new(), burned, holder, 1, "unburn");
    let e = store::create_transfer(c, &unburn).unwrap_err();
    assert!(e.to_string().contains("burned_never_debited"), "{e}");
    // A holder cannot spend more than it holds.
    let over = NewTransfer::posted(TransferId::new(), holder, reserve, 3 * token::UNIT + 1, "x");
    assert!(store::create_transfer(c, &over).is_err());

    let s = supply::supply(c).unwrap();
    assert_eq!(s.burned, 2 * token::UNIT);
    assert_eq!(s.circulating, 3 * token::UNIT);
    assert_eq!(s.reserve + s.circulating + s.burned, MAX_SUPPLY);
    assert_healthy(c);
}
