//! The withholding window (`gridbook_settlement::withhold`): a node's pay for a verified
//! assignment is withheld for its next W verified assignments, then released; a proven cheat
//! forfeits what is still withheld to the ledger's verification fund. The engine is the pure
//! book (`Sim`), the effects the worker's own functions (`redo::settle_pass` /
//! `settle_failure`), on a real PostgreSQL; amounts exact to the unit.

use diesel::prelude::*;
use gridbook_db::schema::node_withholdings as nw;
use gridbook_db::status::{AssignmentStatus, FailedCheck, NodeAction, UnitsRemedy};
use gridbook_ledger::{AccountCode, AccountId, escrow};
use gridbook_settlement::dead_letter::Source;
use gridbook_settlement::decide::CONSUMER;
use gridbook_settlement::jobs::{self as sjobs, AssignmentRow, Resolution};
use gridbook_settlement::redo::{self, RedoPolicy, Record};
use gridbook_settlement::settle;
use gridbook_settlement::verify::Evidence;
use gridbook_settlement::withhold;
use matching_core::Side;
use uuid::Uuid;

use crate::dead_letters::{job, node, user};
use crate::*;

fn resolution(a: &AssignmentRow, completed: bool) -> Resolution {
    Resolution {
        completed,
        items_ok: if completed { a.item_count } else { 0 },
        items_failed: if completed { 0 } else { a.item_count },
        output_sha256: Some("ab".repeat(32)),
        merkle_root: Some("cd".repeat(32)),
        manifest: None,
        detail: if completed { "verified".into() } else { "failed".into() },
    }
}

fn record(a: &AssignmentRow, check: Option<FailedCheck>) -> Record {
    Record {
        failed_check: check,
        detail: check.map_or("verified".to_owned(), |c| format!("failed: {c}")),
        evidence: Evidence::default(),
        output_sha256: Some("ab".repeat(32)),
        merkle_root: Some("cd".repeat(32)),
        node_manifest: None,
        verified_items: if check.is_none() { a.item_count } else { 0 },
        rerun: Default::default(),
    }
}

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis() as u64
}

/// A studio's job of `prices.len()` units at limit 120 filled by one ask of 1 unit per price
/// from one node: one assignment per unit, in price order (the bid takes the cheapest first).
struct Setup {
    db: gridbook_db::testing::TestDb,
    studio: AccountId,
    provider: AccountId,
    node: Uuid,
    live: Vec<AssignmentRow>,
    money: i64,
}

async fn setup(tag: &str, prices: &[u64]) -> Setup {
    let db = fresh_db();
    let c = &mut db.conn();
    let market = unique_market(tag);
    let js = jetstream().await;
    escrow::ensure_system_accounts(c, LEDGER).unwrap();
    let studio = funded(c, AccountCode::Studio, 10_000);
    let provider = funded(c, AccountCode::Provider, 0);
    let studio_user = user(c, "studio", studio);
    let provider_user = user(c, "provider", provider);
    let node = node(c, provider_user);
    let money = money_in_platform(c);
    let deadline = chrono::Utc::now() + chrono::Duration::hours(1);
    let job = job(c, &js, &market, studio_user, studio, prices.len() as u32, 120, deadline).await;
    let mut sim = Sim::new(&market);
    for &p in prices {
        let ask = provider_ask(c, &market, provider, node);
        sim.place(ask, 2, Side::Ask, p, 1);
    }
    sim.apply(gridbook_db::market_orders::place_bid_command(
        job.engine_order_id as u64,
        1,
        120,
        prices.len() as u64,
        deadline.timestamp_millis() as u64,
    ));
    let source = Source {
        stream: gridbook_wire::streams::EVENTS.into(),
        subject: gridbook_wire::subjects::market_evt(&market),
        stream_seq: None,
    };
    settle::settle_message(c, CONSUMER, &source, &sim.frames, &Default::default()).unwrap();
    let mut live: Vec<AssignmentRow> = sjobs::assignments_of(c, job.id).unwrap();
    live.sort_by_key(|a| a.item_start);
    assert_eq!(live.len(), prices.len());
    assert!(live.iter().all(|a| a.status == AssignmentStatus::Assigned && a.units == 1 && a.node_id == node));
    drop(js);
    Setup { db, studio, provider, node, live, money }
}

fn balance(c: &mut PgConnection, a: AccountId) -> i128 {
    gridbook_ledger::store::get_account(c, a).map_or(0, |x| x.balances.posted())
}

fn available(c: &mut PgConnection, a: AccountId) -> i128 {
    gridbook_ledger::store::get_account(c, a).unwrap().balances.available()
}

fn states(c: &mut PgConnection, node: Uuid) -> Vec<(i64, i64, i64, String)> {
    nw::table
        .filter(nw::node_id.eq(node))
        .order(nw::seq)
        .select((nw::seq, nw::release_at, nw::amount, nw::state))
        .load(c)
        .unwrap()
}

fn pass(c: &mut PgConnection, a: &AssignmentRow, policy: RedoPolicy) {
    let s = c
        .transaction(|c| redo::settle_pass(c, a, &resolution(a, true), &record(a, None), policy))
        .unwrap()
        .expect("resolved once");
    assert_eq!((s.remedy, s.node_action), (UnitsRemedy::Paid, NodeAction::Nothing));
}

/// W = 3, five verified assignments paying 100..104: each pay is withheld and released exactly
/// when the third later one settles; the provider's available balance is what was released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withhold_an_honest_nodes_pay_is_released_after_w_more_verified_assignments() {
    let s = setup("WITHHOLD", &[100, 101, 102, 103, 104]).await;
    let c = &mut s.db.conn();
    let policy = RedoPolicy { max_reoffers: 2, withhold_assignments: 3 };
    let held_account = withhold::withheld_account_id(LEDGER, s.node);
    // (provider's posted = available, the node's withheld account) after each settlement.
    let want = [(0, 100), (0, 201), (0, 303), (100, 306), (201, 309)];
    for (a, (provider, held)) in s.live.iter().zip(want) {
        pass(c, a, policy);
        assert_eq!((balance(c, s.provider), balance(c, held_account)), (provider, held), "after {}", a.item_start);
        assert_eq!(available(c, s.provider), provider);
        assert_healthy(c);
    }
    // Settling the same assignment again does nothing.
    let again = c.transaction(|c| redo::settle_pass(c, &s.live[4], &resolution(&s.live[4], true), &record(&s.live[4], None), policy)).unwrap();
    assert!(again.is_none());
    assert_eq!((balance(c, s.provider), balance(c, held_account)), (201, 309));
    assert_eq!(
        states(c, s.node),
        vec![
            (1, 4, 100, "released".into()),
            (2, 5, 101, "released".into()),
            (3, 6, 102, "withheld".into()),
            (4, 7, 103, "withheld".into()),
            (5, 8, 104, "withheld".into()),
        ]
    );
    // The release of the first pay names the fourth assignment.
    let by: Option<Uuid> = nw::table.find(s.live[0].id).select(nw::resolved_by).first(c).unwrap();
    assert_eq!(by, Some(s.live[3].id));
    // The studio paid exactly the 5 verified units at their prices plus fees:
    // 510 + Σ⌈p × 2.5 %⌉ = 510 + 5 × 3.
    assert_eq!(balance(c, s.studio), 10_000 - 525);
    let fee = balance(c, AccountId::system(LEDGER, AccountCode::ProtocolFee.as_str()));
    assert_eq!(fee, 15);
    // Every transfer of the window is there once, with its derived id.
    assert_eq!(count(c, "SELECT count(*) AS n FROM ledger_transfers WHERE code = 'withhold'"), 5);
    assert_eq!(count(c, "SELECT count(*) AS n FROM ledger_transfers WHERE code = 'withhold_release'"), 2);
    assert_eq!(money_in_platform(c), s.money);
}

/// W = 3: two verified assignments (100 + 101 withheld), then one the node reports it could
/// not run (no check happened: nothing forfeited, the window does not move), then a proven
/// cheat: the 201 withheld go to the verification fund, the provider ends with nothing, money
/// is neither created nor destroyed and the studio is charged only for the verified units.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withhold_a_node_caught_cheating_forfeits_exactly_what_is_withheld() {
    let s = setup("FORFEIT", &[100, 101, 102, 103]).await;
    let c = &mut s.db.conn();
    let policy = RedoPolicy { max_reoffers: 2, withhold_assignments: 3 };
    let held_account = withhold::withheld_account_id(LEDGER, s.node);
    let fund = withhold::verification_fund_id(LEDGER);
    pass(c, &s.live[0], policy);
    pass(c, &s.live[1], policy);
    assert_eq!((balance(c, s.provider), balance(c, held_account)), (0, 201));

    let fail = |c: &mut PgConnection, a: &AssignmentRow, check: FailedCheck| {
        c.transaction(|c| redo::settle_failure(c, a, &resolution(a, false), &record(a, Some(check)), policy, now_ms()))
            .unwrap()
            .expect("resolved once")
    };
    let r = fail(c, &s.live[2], FailedCheck::NodeFailed);
    assert_eq!((r.remedy, r.node_action), (UnitsRemedy::Reoffered, NodeAction::AsksCancelled));
    assert_eq!((balance(c, s.provider), balance(c, held_account), balance(c, fund)), (0, 201, 0));

    let studio_before = balance(c, s.studio);
    let r = fail(c, &s.live[3], FailedCheck::SampleMismatch);
    assert_eq!((r.remedy, r.node_action), (UnitsRemedy::Reoffered, NodeAction::Suspended));
    assert_eq!((balance(c, s.provider), balance(c, held_account), balance(c, fund)), (0, 0, 201));
    assert_eq!(available(c, s.provider), 0);
    // The studio: only the re-offer's re-reservation of the cheated fill's improvement
    // (123 − 103 − ⌈2.575⌉ = 17); nothing of the forfeit.
    assert_eq!(balance(c, s.studio), studio_before - 17);
    assert_eq!(
        states(c, s.node),
        vec![(1, 4, 100, "forfeited".into()), (2, 5, 101, "forfeited".into())]
    );
    let by: Vec<Option<Uuid>> = nw::table.filter(nw::node_id.eq(s.node)).select(nw::resolved_by).load(c).unwrap();
    assert_eq!(by, vec![Some(s.live[3].id); 2], "the forfeits name the cheated assignment");
    assert_eq!(count(c, "SELECT count(*) AS n FROM ledger_transfers WHERE code = 'withhold_forfeit'"), 2);
    // The fund is the ledger's system account of its code.
    let acct = gridbook_ledger::store::get_account(c, fund).unwrap();
    assert_eq!(acct.code, AccountCode::VerificationFund);
    assert_healthy(c);
    assert_eq!(money_in_platform(c), s.money);
    // Re-settling the cheat does nothing (no second forfeit).
    let again = c.transaction(|c| redo::settle_failure(c, &s.live[3], &resolution(&s.live[3], false), &record(&s.live[3], Some(FailedCheck::SampleMismatch)), policy, now_ms())).unwrap();
    assert!(again.is_none());
    assert_eq!(balance(c, fund), 201);
    // The two failed units are back in the order's open reservation.
    let order_id = order_of(c, s.live[0].job_id);
    let order = escrow::get_order(c, order_id).unwrap();
    assert_eq!(order.quantity_open, 2);
}

fn order_of(c: &mut PgConnection, job: Uuid) -> Uuid {
    use gridbook_db::schema::jobs;
    jobs::table.find(job).select(jobs::order_id).first(c).unwrap()
}
