//! One integration-test binary. Needs `GRIDBOOK_DATABASE_URL` (a PostgreSQL server); each test
//! gets its own fresh database from a migrated template (`TestDb`).

mod bank;
mod escrow;
mod events;
mod failover;
mod rules;
mod supply;
mod transfers;

use gridbook_ledger::{AccountCode, AccountId, NewAccount, NewTransfer, TransferId, store};

/// Opens a studio-like account funded with `amount` from the ledger's operator account.
pub fn funded(
    conn: &mut diesel::PgConnection,
    ledger: &str,
    code: AccountCode,
    amount: i64,
) -> AccountId {
    let op = NewAccount::system(ledger, AccountCode::Operator);
    store::create_account(conn, &op).unwrap();
    let id = AccountId::new();
    store::create_account(conn, &NewAccount::new(id, ledger, code)).unwrap();
    if amount > 0 {
        store::create_transfer(
            conn,
            &NewTransfer::posted(TransferId::new(), op.id, id, amount, "deposit"),
        )
        .unwrap();
    }
    id
}

pub fn assert_healthy(conn: &mut diesel::PgConnection) {
    let v = store::check_invariants(conn).unwrap();
    assert!(v.is_empty(), "invariants broken: {v:?}");
}
