//! Property tests of the pure rules (no database).

use chrono::{TimeZone, Utc};
use gridbook_ledger::rules::MemLedger;
use gridbook_ledger::settlement::{self, AssignmentStatus, OrderTerms};
use gridbook_ledger::*;
use proptest::prelude::*;

fn now(s: i64) -> chrono::DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Posted(usize, usize, i64),
    Pending(usize, usize, i64, bool),
    Post(usize, Option<i64>),
    Void(usize),
    Batch(Vec<(usize, usize, i64)>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..5usize, 0..5usize, -5..2_000i64).prop_map(|(a, b, x)| Op::Posted(a, b, x)),
        (0..5usize, 0..5usize, 1..2_000i64, any::<bool>())
            .prop_map(|(a, b, x, e)| Op::Pending(a, b, x, e)),
        (0..64usize, proptest::option::of(1..2_000i64)).prop_map(|(i, x)| Op::Post(i, x)),
        (0..64usize).prop_map(Op::Void),
        proptest::collection::vec((0..5usize, 0..5usize, 1..1_500i64), 1..4).prop_map(Op::Batch),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any sequence of requests: Σ debits = Σ credits, flags hold, failures change nothing,
    /// and a replay of every request returns the original transfer.
    #[test]
    fn transfers_conserve_money(ops in proptest::collection::vec(op(), 1..60)) {
        let mut l = MemLedger::default();
        let ids: Vec<AccountId> = (0..5).map(|i| AccountId::derived(&["p", &i.to_string()])).collect();
        let bank = AccountId::derived(&["bank"]);
        l.open(bank, "USD", AccountFlags::NONE);
        for a in &ids { l.open(*a, "USD", AccountFlags::CREDIT_NORMAL); }
        let fund: Vec<_> = ids.iter().enumerate().map(|(i, a)| NewTransfer::posted(TransferId::derived(&["f", &i.to_string()]), bank, *a, 3_000, "deposit")).collect();
        l.execute(&fund, now(0)).unwrap();
        let mut pendings = Vec::new();
        let mut done: Vec<(Vec<NewTransfer>, Vec<Transfer>)> = Vec::new();
        for (n, o) in ops.into_iter().enumerate() {
            let t = |k: usize| TransferId::derived(&["t", &n.to_string(), &k.to_string()]);
            let reqs = match o {
                Op::Posted(a, b, x) => vec![NewTransfer::posted(t(0), ids[a], ids[b], x, "x")],
                Op::Pending(a, b, x, e) => {
                    pendings.push(t(0));
                    vec![NewTransfer::pending(t(0), ids[a], ids[b], x, e.then(|| now(n as i64 + 5)), "x")]
                }
                Op::Post(i, x) if !pendings.is_empty() => vec![NewTransfer::post(t(0), pendings[i % pendings.len()], x, "x")],
                Op::Void(i) if !pendings.is_empty() => vec![NewTransfer::void(t(0), pendings[i % pendings.len()], "x")],
                Op::Batch(v) => v.into_iter().enumerate().map(|(k, (a, b, x))| NewTransfer::posted(t(k), ids[a], ids[b], x, "x")).collect(),
                _ => continue,
            };
            let before = l.accounts.clone();
            match l.execute(&reqs, now(n as i64)) {
                Ok(ts) => done.push((reqs, ts)),
                Err(_) => prop_assert_eq!(&before, &l.accounts, "a failed batch changed balances"),
            }
            prop_assert!(l.check().is_ok(), "{:?}", l.check());
            let user_total: i128 = ids.iter().map(|a| l.accounts[a].balances.posted()).sum();
            prop_assert_eq!(user_total, 15_000);
        }
        let snapshot = l.accounts.clone();
        for (reqs, ts) in done {
            prop_assert_eq!(l.execute(&reqs, now(1_000)).unwrap(), ts);
        }
        prop_assert_eq!(snapshot, l.accounts, "retries had no effect");
    }

    /// A fill at any price ≤ limit is covered by its share of the reservation, and completion
    /// splits the held amount exactly into provider share + fee + refund.
    #[test]
    fn escrow_arithmetic(limit in 1..1_000_000i64, fee_bps in 0..3_000u32, q in 1..10_000i64, p_frac in 0.0..=1.0f64, v_frac in 0.0..=1.0f64) {
        let p = ((limit as f64 * p_frac) as i64).clamp(1, limit);
        let unit = settlement::unit_reserve(limit, fee_bps).unwrap();
        let gross = settlement::cost(q, p).unwrap();
        let fee_held = settlement::fee(gross, fee_bps).unwrap();
        prop_assert!(gross + fee_held <= q * unit);
        // Reservation is at least the exact quantity × limit × (1 + fee).
        prop_assert!((q as i128) * (unit as i128) * 10_000 >= (q as i128) * (limit as i128) * (10_000 + fee_bps as i128));
        let v = ((q as f64 * v_frac) as i64).clamp(0, q);
        let pay = settlement::cost(v, p).unwrap();
        let fee_due = settlement::fee(pay, fee_bps).unwrap();
        prop_assert!(fee_due <= fee_held && pay <= gross);
    }
}

#[derive(Debug, Clone)]
enum EOp {
    Fill(i64, i64),
    Complete(usize, i64),
    Void(usize),
    Release(i64),
}

fn eop() -> impl Strategy<Value = EOp> {
    prop_oneof![
        (1..40i64, 1..=100i64).prop_map(|(q, pct)| EOp::Fill(q, pct)),
        (0..16usize, 0..=100i64).prop_map(|(i, pct)| EOp::Complete(i, pct)),
        (0..16usize).prop_map(EOp::Void),
        (1..40i64).prop_map(EOp::Release),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any sequence of fills, completions, voids and releases: the rules' transfers always apply
    /// (escrow never runs dry), money is conserved, and once everything is resolved the escrow
    /// account is empty and studio + providers + fee = the original funds.
    #[test]
    fn escrow_conserves_money(qty in 1..200i64, limit in 1..50_000i64, fee_bps in 0..2_500u32, ops in proptest::collection::vec(eop(), 0..40)) {
        let mut l = MemLedger::default();
        let bank = AccountId::derived(&["bank"]);
        let studio = AccountId::derived(&["studio"]);
        let fee_acct = AccountId::system("USD", "protocol_fee");
        let order_id = uuid::Uuid::from_u128(42);
        let escrow = settlement::escrow_account_id(order_id);
        let providers: Vec<AccountId> = (0..3).map(|i| AccountId::derived(&["prov", &i.to_string()])).collect();
        l.open(bank, "USD", AccountFlags::NONE);
        for a in [studio, fee_acct, escrow].iter().chain(&providers) { l.open(*a, "USD", AccountFlags::CREDIT_NORMAL); }
        let funds = 1_000_000_000_000i64;
        l.execute(&[NewTransfer::posted(TransferId::derived(&["fund"]), bank, studio, funds, "deposit")], now(0)).unwrap();
        let terms = OrderTerms { order_id, studio_account: studio, escrow_account: escrow, fee_account: fee_acct, ledger: "USD".into(), quantity: qty, limit_price: limit, fee_bps };
        let (mut order, ts) = settlement::reserve(terms).unwrap();
        l.execute(&ts, now(0)).unwrap();
        let mut asgs = Vec::new();
        for (n, o) in ops.into_iter().enumerate() {
            let r = match o {
                EOp::Fill(q, pct) => {
                    let p = (limit * pct / 100).max(1);
                    let fill = uuid::Uuid::from_u128(1_000 + n as u128);
                    settlement::fill(&order, fill, providers[n % 3], q, p).map(|(o2, a, ts)| { order = o2; asgs.push(a); ts })
                }
                EOp::Complete(i, pct) if !asgs.is_empty() => {
                    let k = i % asgs.len();
                    let v = asgs[k].quantity * pct / 100;
                    settlement::complete(&order, &asgs[k], v).map(|(a, ts)| { asgs[k] = a; ts })
                }
                EOp::Void(i) if !asgs.is_empty() => {
                    let k = i % asgs.len();
                    settlement::void(&order, &asgs[k]).map(|(a, ts)| { asgs[k] = a; ts })
                }
                EOp::Release(q) => settlement::release_unfilled(&order, uuid::Uuid::from_u128(9_000 + n as u128), q).map(|(o2, ts)| { order = o2; ts }),
                _ => continue,
            };
            if let Ok(ts) = r {
                l.execute(&ts, now(n as i64)).map_err(|e| TestCaseError::fail(format!("rule output rejected: {e}")))?;
            }
            prop_assert!(l.check().is_ok());
            let total: i128 = [studio, fee_acct, escrow].iter().chain(&providers).map(|a| l.accounts[a].balances.posted()).sum();
            prop_assert_eq!(total, funds as i128);
        }
        // Resolve everything: release the open units, void the held assignments.
        if order.quantity_open > 0 {
            let (_, ts) = settlement::release_unfilled(&order, uuid::Uuid::from_u128(77), order.quantity_open).unwrap();
            l.execute(&ts, now(999)).unwrap();
        }
        for a in asgs.iter().filter(|a| a.status == AssignmentStatus::Held) {
            let (_, ts) = settlement::void(&order, a).unwrap();
            l.execute(&ts, now(999)).unwrap();
        }
        let e = l.accounts[&escrow].balances;
        prop_assert_eq!((e.posted(), e.debits_pending, e.credits_pending), (0, 0, 0), "escrow empty at the end");
        let paid: i128 = providers.iter().map(|a| l.accounts[a].balances.posted()).sum();
        let fees = l.accounts[&fee_acct].balances.posted();
        prop_assert_eq!(l.accounts[&studio].balances.posted() + paid + fees, funds as i128);
    }
}
