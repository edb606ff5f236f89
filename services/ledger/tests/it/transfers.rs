use diesel::RunQueryDsl;
use gridbook_db::testing::TestDb;
use gridbook_ledger::*;

use crate::{assert_healthy, funded};

#[test]
fn posted_transfer_moves_money_and_is_idempotent() {
    let db = TestDb::new();
    let c = &mut db.conn();
    let a = funded(c, "USD", AccountCode::Studio, 1_000);
    let b = funded(c, "USD", AccountCode::Provider, 0);
    let req = NewTransfer::posted(TransferId::new(), a, b, 300, "payment");
    let t1 = store::create_transfer(c, &req).unwrap();
    let t2 = store::create_transfer(c, &req).unwrap();
    assert_eq!(t1, t2, "a retry returns the original transfer");
    assert_eq!(store::get_account(c, a).unwrap().balances.posted(), 700);
    assert_eq!(store::get_account(c, b).unwrap().balances.posted(), 300);
    let mut other = req.clone();
    other.op = TransferOp::Posted {
        debit: a,
        credit: b,
        amount: 301,
    };
    assert_eq!(
        store::create_transfer(c, &other).unwrap_err().code(),
        "exists_with_different_content"
    );
    let hist = store::account_history(c, a, None, 10).unwrap();
    assert_eq!(hist.len(), 2);
    let st = store::balance_statement(c, a).unwrap();
    assert_eq!(
        (st.posted_balance, st.available_balance, st.last_seq),
        (700, 700, Some(t1.seq))
    );
    assert_healthy(c);
}

#[test]
fn rejections_are_typed_and_leave_no_effect() {
    let db = TestDb::new();
    let c = &mut db.conn();
    let a = funded(c, "USD", AccountCode::Studio, 100);
    let b = funded(c, "USD", AccountCode::Provider, 0);
    // Another ledger (GRID itself allows no operator account: `supply`).
    let g = funded(c, "EUR", AccountCode::Provider, 0);
    let code = |c: &mut diesel::PgConnection, t: NewTransfer| {
        store::create_transfer(c, &t).unwrap_err().code()
    };
    assert_eq!(
        code(c, NewTransfer::posted(TransferId::new(), a, b, 101, "x")),
        "exceeds_credits"
    );
    assert_eq!(
        code(c, NewTransfer::posted(TransferId::new(), a, b, 0, "x")),
        "amount_must_be_positive"
    );
    assert_eq!(
        code(c, NewTransfer::posted(TransferId::new(), a, a, 1, "x")),
        "accounts_must_be_different"
    );
    assert_eq!(
        code(c, NewTransfer::posted(TransferId::new(), a, g, 1, "x")),
        "ledger_mismatch"
    );
    assert_eq!(
        code(
            c,
            NewTransfer::posted(TransferId::new(), a, AccountId::new(), 1, "x")
        ),
        "account_not_found"
    );
    assert_eq!(
        code(
            c,
            NewTransfer::post(TransferId::new(), TransferId::new(), None, "x")
        ),
        "pending_transfer_not_found"
    );
    assert_eq!(store::get_account(c, a).unwrap().balances.posted(), 100);
    assert_healthy(c);
}

#[test]
fn two_phase_post_partial_void_and_at_most_once() {
    let db = TestDb::new();
    let c = &mut db.conn();
    let a = funded(c, "USD", AccountCode::Studio, 1_000);
    let b = funded(c, "USD", AccountCode::Provider, 0);
    let p = store::create_transfer(
        c,
        &NewTransfer::pending(TransferId::new(), a, b, 600, None, "hold"),
    )
    .unwrap();
    let acc = store::get_account(c, a).unwrap();
    assert_eq!(
        (acc.balances.debits_pending, acc.balances.available()),
        (600, 400)
    );
    // Only 400 left to spend.
    assert_eq!(
        store::create_transfer(c, &NewTransfer::posted(TransferId::new(), a, b, 401, "x"))
            .unwrap_err()
            .code(),
        "exceeds_credits"
    );
    assert_eq!(
        store::create_transfer(
            c,
            &NewTransfer::post(TransferId::new(), p.id, Some(601), "x")
        )
        .unwrap_err()
        .code(),
        "exceeds_pending_transfer_amount"
    );
    let post = NewTransfer::post(TransferId::new(), p.id, Some(250), "settle");
    store::create_transfer(c, &post).unwrap();
    store::create_transfer(c, &post).unwrap(); // idempotent
    assert_eq!(
        store::create_transfer(c, &NewTransfer::void(TransferId::new(), p.id, "x"))
            .unwrap_err()
            .code(),
        "pending_transfer_already_resolved"
    );
    let a2 = store::get_account(c, a).unwrap().balances;
    assert_eq!(
        (a2.debits_pending, a2.posted()),
        (0, 750),
        "the remainder returned"
    );
    let p2 = store::create_transfer(
        c,
        &NewTransfer::pending(TransferId::new(), a, b, 100, None, "hold"),
    )
    .unwrap();
    store::create_transfer(c, &NewTransfer::void(TransferId::new(), p2.id, "cancel")).unwrap();
    assert_eq!(store::get_account(c, a).unwrap().balances.available(), 750);
    // The database refuses a second resolution even when the application is bypassed.
    let err = diesel::sql_query(format!(
        "INSERT INTO ledger_transfers (id, kind, debit_account_id, credit_account_id, ledger, amount, pending_id, code, created_at)
         VALUES (gen_random_uuid(), 'void', '{a}', '{b}', 'USD', 100, '{}', 'x', now())", p2.id)).execute(c);
    assert!(err.is_err());
    assert_healthy(c);
}

#[test]
fn pending_transfers_expire() {
    let db = TestDb::new();
    let c = &mut db.conn();
    let a = funded(c, "USD", AccountCode::Studio, 1_000);
    let b = funded(c, "USD", AccountCode::Provider, 0);
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(1_500);
    let p = store::create_transfer(
        c,
        &NewTransfer::pending(TransferId::new(), a, b, 500, Some(soon), "hold"),
    )
    .unwrap();
    assert!(
        store::expire_pending(c, chrono::Utc::now(), 10)
            .unwrap()
            .is_empty()
    );
    std::thread::sleep(std::time::Duration::from_millis(1_600));
    assert_eq!(
        store::create_transfer(c, &NewTransfer::post(TransferId::new(), p.id, None, "x"))
            .unwrap_err()
            .code(),
        "pending_transfer_expired"
    );
    let ex = store::expire_pending(c, chrono::Utc::now(), 10).unwrap();
    assert_eq!(ex.len(), 1);
    assert_eq!(ex[0].kind, TransferKind::Expire);
    assert!(
        store::expire_pending(c, chrono::Utc::now(), 10)
            .unwrap()
            .is_empty(),
        "expires once"
    );
    assert_eq!(
        store::get_account(c, a).unwrap().balances.available(),
        1_000
    );
    assert_healthy(c);
}

#[test]
fn linked_batch_all_or_nothing() {
    let db = TestDb::new();
    let c = &mut db.conn();
    let a = funded(c, "USD", AccountCode::Studio, 100);
    let b = funded(c, "USD", AccountCode::Provider, 0);
    let ok = NewTransfer::posted(TransferId::new(), a, b, 60, "x");
    let too_much = NewTransfer::posted(TransferId::new(), a, b, 60, "x");
    let err = store::create_transfers(c, &[ok.clone(), too_much]).unwrap_err();
    assert!(
        matches!(err, LedgerError::InBatch { index: 1, .. }),
        "{err:?}"
    );
    assert_eq!(err.code(), "exceeds_credits");
    assert!(
        store::get_transfer(c, ok.id).unwrap().is_none(),
        "the first one rolled back too"
    );
    // A pending and its post in one batch.
    let p = NewTransfer::pending(TransferId::new(), a, b, 80, None, "hold");
    let post = NewTransfer::post(TransferId::new(), p.id, Some(30), "settle");
    let ts = store::create_transfers(c, &[p.clone(), post.clone()]).unwrap();
    assert_eq!(ts.len(), 2);
    assert_eq!(store::get_account(c, b).unwrap().balances.posted(), 30);
    assert_eq!(
        store::create_transfers(c, &[p, post]).unwrap(),
        ts,
        "batch retry is idempotent"
    );
    assert_healthy(c);
}

#[test]
fn database_refuses_what_the_rules_refuse() {
    let db = TestDb::new();
    let c = &mut db.conn();
    let a = funded(c, "USD", AccountCode::Studio, 100);
    let b = funded(c, "USD", AccountCode::Provider, 0);
    let raw =
        |c: &mut diesel::PgConnection, sql: String| diesel::sql_query(sql).execute(c).is_err();
    let ins = |kind: &str, d: AccountId, cr: AccountId, amt: i64| {
        format!(
        "INSERT INTO ledger_transfers (id, kind, debit_account_id, credit_account_id, ledger, amount, code, created_at)
         VALUES (gen_random_uuid(), '{kind}', '{d}', '{cr}', 'USD', {amt}, 'x', now())")
    };
    assert!(raw(c, ins("posted", a, b, 101)), "overdraft");
    assert!(raw(c, ins("posted", a, a, 1)), "same account");
    assert!(raw(c, ins("posted", a, b, 0)), "non-positive amount");
    assert!(
        raw(
            c,
            format!(
                "UPDATE ledger_accounts SET credits_posted = credits_posted + 1 WHERE id = '{a}'"
            )
        ),
        "balances move only by transfers"
    );
    assert!(
        raw(c, "UPDATE ledger_transfers SET amount = 1".into()),
        "immutable"
    );
    assert!(raw(c, "DELETE FROM ledger_transfers".into()), "immutable");
    assert!(
        !raw(c, ins("posted", a, b, 10)),
        "a valid raw insert still balances"
    );
    assert_eq!(store::get_account(c, b).unwrap().balances.posted(), 10);
    assert_healthy(c);
}

#[test]
fn concurrent_transfers_on_hot_accounts_conserve_money() {
    let db = TestDb::new();
    let c = &mut db.conn();
    let accts: Vec<AccountId> = (0..3)
        .map(|_| funded(c, "USD", AccountCode::Studio, 10_000))
        .collect();
    std::thread::scope(|s| {
        for w in 0..4u64 {
            let (db, accts) = (&db, &accts);
            s.spawn(move || {
                let c = &mut db.conn();
                for i in 0..100u64 {
                    let x = ((w + i) % 3) as usize;
                    let y = ((w + i + 1 + i % 2) % 3) as usize;
                    let t = NewTransfer::posted(
                        TransferId::new(),
                        accts[x],
                        accts[y],
                        1 + (i as i64 * 37) % 500,
                        "x",
                    );
                    // Batches with opposite account orders: sorted locking keeps them deadlock-free.
                    let u = NewTransfer::posted(
                        TransferId::new(),
                        accts[y],
                        accts[x],
                        1 + (i as i64 * 11) % 300,
                        "x",
                    );
                    match store::create_transfers(c, &[t, u]) {
                        Ok(_) => {}
                        Err(e) => assert_eq!(e.code(), "exceeds_credits", "{e}"),
                    }
                }
            });
        }
    });
    let total: i128 = accts
        .iter()
        .map(|a| store::get_account(c, *a).unwrap().balances.posted())
        .sum();
    assert_eq!(total, 30_000);
    assert_healthy(c);
}
