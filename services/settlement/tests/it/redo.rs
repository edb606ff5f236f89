//! Failed work is redone (`gridbook_settlement::redo`): a failed assignment's units go back to
//! the book as a re-bid of the same job from the same reservation, the node that failed cannot
//! take them again, the bound `max_reoffers` ends in a refund, and every verification leaves
//! its record. The engine is the pure book (`Sim`), the effects the worker's own functions, on
//! a real PostgreSQL; the overdue case runs the in-process worker's finisher.

use std::time::Duration;

use diesel::prelude::*;
use gridbook_db::schema::{assignment_verifications as av, asks, job_assignments as ja, jobs, market_orders as mo, nodes, outbox};
use gridbook_db::status::{AssignmentStatus, FailedCheck, NodeAction, NodeStatus, UnitsRemedy};
use gridbook_ledger::{AccountCode, escrow};
use gridbook_settlement::dead_letter::Source;
use gridbook_settlement::decide::CONSUMER;
use gridbook_settlement::jobs::{self as sjobs, AssignmentRow, Resolution};
use gridbook_settlement::redo::{self, RedoPolicy, Record};
use gridbook_settlement::settle;
use gridbook_settlement::verify::{Evidence, ItemFigure};
use matching_core::{Cancel, CommandKind, Side};
use serde_json::json;
use uuid::Uuid;

use crate::dead_letters::{job, node, user};
use crate::*;

fn source(market: &str) -> Source {
    Source {
        stream: gridbook_wire::streams::EVENTS.into(),
        subject: gridbook_wire::subjects::market_evt(market),
        stream_seq: None,
    }
}

/// Settles the frames the sim produced since `from` (one message); returns the new `from`.
fn settle_new(c: &mut PgConnection, sim: &Sim, from: usize) -> usize {
    settle::settle_message(c, CONSUMER, &source(&sim.market), &sim.frames[from..], &Default::default()).unwrap();
    sim.frames.len()
}

/// An open ask of `node` as the API keeps it (`asks` row + `market_orders` row).
fn open_ask(c: &mut PgConnection, market: &str, owner: Uuid, account: gridbook_ledger::AccountId, node: Uuid) -> u64 {
    let engine_id = provider_ask(c, market, account, node);
    diesel::sql_query(
        "INSERT INTO asks (id, owner, node_id, market, engine_order_id, price, qty, status) \
         VALUES ($1, $2, $3, $4, $5, 100, 2, 'open')",
    )
    .bind::<diesel::sql_types::Uuid, _>(Uuid::now_v7())
    .bind::<diesel::sql_types::Uuid, _>(owner)
    .bind::<diesel::sql_types::Uuid, _>(node)
    .bind::<diesel::sql_types::Text, _>(market)
    .bind::<diesel::sql_types::BigInt, _>(engine_id as i64)
    .execute(c)
    .unwrap();
    engine_id
}

fn assignments(c: &mut PgConnection, job: Uuid) -> Vec<AssignmentRow> {
    sjobs::assignments_of(c, job).unwrap()
}

fn failed_resolution(a: &AssignmentRow, detail: &str) -> Resolution {
    Resolution {
        completed: false,
        items_ok: 0,
        items_failed: a.item_count,
        output_sha256: Some("ab".repeat(32)),
        merkle_root: Some("cd".repeat(32)),
        manifest: Some(json!({"models": {"model": "fake"}, "execution_provider": "CUDAExecutionProvider"})),
        detail: detail.into(),
    }
}

fn record(check: Option<FailedCheck>, detail: &str, ok: bool) -> Record {
    Record {
        failed_check: check,
        detail: detail.into(),
        evidence: Evidence {
            seed: Some("5eed".repeat(16)),
            sampled: vec!["i0".into()],
            items: vec![ItemFigure {
                custom_id: "i0".into(),
                node_sha256: "11".repeat(32),
                reference_sha256: Some("22".repeat(32)),
                cosine: Some(if ok { 1.0 } else { 0.0123 }),
                mean_abs_diff: None,
                ok,
                error: (!ok).then(|| "cosine 0.01230 < 0.999".to_owned()),
            }],
            reference_manifest: Some(json!({"execution_provider": "CPUExecutionProvider"})),
            canaries: Vec::new(),
        },
        output_sha256: Some("ab".repeat(32)),
        merkle_root: Some("cd".repeat(32)),
        node_manifest: Some(json!({"models": {"model": "fake"}})),
        verified_items: 0,
        rerun: Default::default(),
    }
}

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis() as u64
}

/// The outbox's commands in publishing order.
fn outbox_commands(c: &mut PgConnection) -> Vec<CommandKind> {
    outbox::table
        .order((outbox::created_at.asc(), outbox::id.asc()))
        .select(outbox::payload)
        .load::<serde_json::Value>(c)
        .unwrap()
        .into_iter()
        .filter_map(|p| serde_json::from_value(p).ok())
        .collect()
}

/// A cheater takes 2 of a 4-unit job's units and is caught: it is suspended, its ask cancelled
/// before the re-bid reaches the book, the 2 units go back as a re-bid from the same escrow
/// order (reservation restored, no new order), an honest node takes the rest of the first bid
/// and the re-bid; the re-bid's assignment fails again and, `max_reoffers` (1) reached, is
/// refunded. The studio pays exactly the verified units at their trade price plus fee.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_cheaters_units_are_offered_again_from_the_same_reservation_until_max_reoffers() {
    let db = fresh_db();
    let c = &mut db.conn();
    let market = unique_market("REDO");
    let js = jetstream().await;
    escrow::ensure_system_accounts(c, LEDGER).unwrap();
    let studio = funded(c, AccountCode::Studio, 10_000);
    let (cheat_acct, honest_acct) = (funded(c, AccountCode::Provider, 0), funded(c, AccountCode::Provider, 0));
    let studio_user = user(c, "studio", studio);
    let (cheat_user, honest_user) = (user(c, "provider", cheat_acct), user(c, "provider", honest_acct));
    let (cheater, honest) = (node(c, cheat_user), node(c, honest_user));
    let money = money_in_platform(c);
    let deadline = chrono::Utc::now() + chrono::Duration::hours(1);
    let deadline_ms = deadline.timestamp_millis() as u64;
    let job = job(c, &js, &market, studio_user, studio, 4, 120, deadline).await;
    assert_eq!(posted(c, studio), 10_000 - 4 * 123);
    let policy = RedoPolicy { max_reoffers: 1, withhold_assignments: 0 };

    // The cheater's ask (2 at 100) takes units 0..2 of the job's bid.
    let mut sim = Sim::new(&market);
    let cheat_ask = open_ask(c, &market, cheat_user, cheat_acct, cheater);
    sim.place(cheat_ask, 2, Side::Ask, 100, 2);
    sim.apply(gridbook_db::market_orders::place_bid_command(job.engine_order_id as u64, 1, 120, 4, deadline_ms));
    let mut seen = settle_new(c, &sim, 0);
    let a = assignments(c, job.id).remove(0);
    assert_eq!((a.node_id, a.units, a.item_start), (cheater, 2, 0));
    let outbox_before = outbox_commands(c).len();

    // Caught by the sampled re-run.
    let detail = "verification failed: embedding of i0 differs from the re-run";
    let s = c
        .transaction(|c| {
            redo::settle_failure(c, &a, &failed_resolution(&a, detail), &record(Some(FailedCheck::SampleMismatch), detail, false), policy, now_ms())
        })
        .unwrap()
        .expect("resolved once");
    assert_eq!((s.remedy, s.node_action), (UnitsRemedy::Reoffered, NodeAction::Suspended));
    let rebid = s.reoffer_engine_order_id.expect("a re-bid");
    // A second settlement of the same assignment does nothing.
    assert!(c.transaction(|c| redo::settle_failure(c, &a, &failed_resolution(&a, detail), &record(Some(FailedCheck::SampleMismatch), detail, false), policy, now_ms())).unwrap().is_none());

    // The money: the units are open again in the SAME escrow order, the whole reservation held
    // (the improvement of the cheater's fill taken back), the cheater unpaid.
    let order = escrow::get_order(c, job.order_id).unwrap();
    assert_eq!(order.quantity_open, 4);
    assert_eq!(posted(c, studio), 10_000 - 4 * 123);
    assert_eq!(posted(c, cheat_acct), 0);
    assert_healthy(c);
    // The re-bid: a new engine order of the same job and escrow order, covering units 0..2.
    let (order_id, job_id, unit_start, reoffer, of): (Uuid, Option<Uuid>, i64, i32, Option<Uuid>) = mo::table
        .find(rebid as i64)
        .select((mo::order_id, mo::job_id, mo::unit_start, mo::reoffer, mo::reoffer_of))
        .first(c)
        .unwrap();
    assert_eq!((order_id, job_id, unit_start, reoffer, of), (job.order_id, Some(job.id), 0, 1, Some(a.id)));
    // The node: suspended, its ask cancelled — and the Cancel goes out before the re-bid's Place
    // (job's limit, job's deadline, the failed units).
    let status: NodeStatus = nodes::table.find(cheater).select(nodes::status).first(c).unwrap();
    assert_eq!(status, NodeStatus::Suspended);
    let ask_status: String = asks::table.filter(asks::engine_order_id.eq(cheat_ask as i64)).select(asks::status).first(c).unwrap();
    assert_eq!(ask_status, "cancel_requested");
    let cmds = outbox_commands(c).split_off(outbox_before);
    assert_eq!(cmds.len(), 2, "{cmds:?}");
    assert!(matches!(&cmds[0], CommandKind::Cancel(Cancel { id, .. }) if id.0 == cheat_ask), "{cmds:?}");
    let CommandKind::Place(p) = &cmds[1] else { panic!("{cmds:?}") };
    assert_eq!((p.id.0, p.side, p.price, p.qty), (rebid, Side::Bid, Some(120), 2));
    assert_eq!(p.tif, matching_core::TimeInForce::Gtd { expires_at: deadline_ms });
    // Not counted as failed: the units are not done with.
    let (done, failed): (i32, i32) = jobs::table.find(job.id).select((jobs::items_completed, jobs::items_failed)).first(c).unwrap();
    assert_eq!((done, failed), (0, 0));
    // The dispute record.
    let (outcome, check, seed, sampled, figures, node_manifest, reference_manifest, remedy, reoffer_id, action): (
        String, Option<String>, Option<String>, serde_json::Value, serde_json::Value, Option<serde_json::Value>, Option<serde_json::Value>, String, Option<i64>, String,
    ) = av::table
        .find(a.id)
        .select((av::outcome, av::failed_check, av::sample_seed, av::sampled_items, av::item_figures, av::node_manifest, av::reference_manifest, av::remedy, av::reoffer_engine_order_id, av::node_action))
        .first(c)
        .unwrap();
    assert_eq!((outcome.as_str(), check.as_deref()), ("failed", Some("sample_mismatch")));
    assert_eq!(seed, Some("5eed".repeat(16)));
    assert_eq!(sampled, json!(["i0"]));
    assert_eq!(figures[0]["cosine"], json!(0.0123));
    assert_eq!(figures[0]["node_sha256"], json!("11".repeat(32)));
    assert_eq!(figures[0]["reference_sha256"], json!("22".repeat(32)));
    assert!(node_manifest.is_some() && reference_manifest.is_some());
    assert_eq!((remedy.as_str(), reoffer_id, action.as_str()), ("reoffered", Some(rebid as i64), "suspended"));

    // The engine applies the outbox (the cancel finds the filled ask gone; the re-bid rests),
    // then an honest ask of 4 at 90 takes the first bid's last 2 units and the re-bid's 2, at
    // the resting bids' price (120).
    sim.apply(cmds[0].clone());
    sim.apply(cmds[1].clone());
    let honest_ask = open_ask(c, &market, honest_user, honest_acct, honest);
    sim.place(honest_ask, 3, Side::Ask, 90, 4);
    seen = settle_new(c, &sim, seen);
    let _ = seen;
    let mut live: Vec<AssignmentRow> = assignments(c, job.id).into_iter().filter(|x| x.status == AssignmentStatus::Assigned).collect();
    live.sort_by_key(|x| x.item_start);
    assert_eq!(live.iter().map(|x| (x.node_id, x.item_start, x.units)).collect::<Vec<_>>(), vec![(honest, 0, 2), (honest, 2, 2)]);
    let bid_of = |c: &mut PgConnection, id: Uuid| -> Option<i64> { ja::table.find(id).select(ja::bid_engine_order_id).first(c).unwrap() };
    assert_eq!(bid_of(c, live[0].id), Some(rebid as i64), "units 0..2 come from the re-bid");
    assert_eq!(bid_of(c, live[1].id), Some(job.engine_order_id), "units 2..4 from the first bid");
    assert_eq!(escrow::get_order(c, job.order_id).unwrap().quantity_open, 0);

    // Units 2..4 verify and are paid.
    let pass = Resolution { completed: true, items_ok: 2, items_failed: 0, detail: "verified".into(), ..failed_resolution(&live[1], "") };
    let mut rec = record(None, "verified", true);
    rec.verified_items = 2;
    let s = c.transaction(|c| redo::settle_pass(c, &live[1], &pass, &rec, policy)).unwrap().unwrap();
    assert_eq!((s.remedy, s.node_action), (UnitsRemedy::Paid, NodeAction::Nothing));
    // Units 0..2 fail again (the node says it could not run them): offered once already, the
    // bound is reached and they are refunded; the node only loses its open asks.
    let detail = "the node failed: out of memory";
    let s = c
        .transaction(|c| redo::settle_failure(c, &live[0], &failed_resolution(&live[0], detail), &record(Some(FailedCheck::NodeFailed), detail, false), policy, now_ms()))
        .unwrap()
        .unwrap();
    assert_eq!((s.remedy, s.reoffer_engine_order_id, s.node_action), (UnitsRemedy::Refunded, None, NodeAction::AsksCancelled));
    let status: NodeStatus = nodes::table.find(honest).select(nodes::status).first(c).unwrap();
    assert_eq!(status, NodeStatus::Active, "a node that reports a failure is not suspended");
    let (done, failed): (i32, i32) = jobs::table.find(job.id).select((jobs::items_completed, jobs::items_failed)).first(c).unwrap();
    assert_eq!((done, failed), (2, 2));

    // The studio paid exactly the verified units at their trade price plus fee: 2 × 120 + ⌈6⌉.
    assert_eq!(posted(c, studio), 10_000 - 246);
    assert_eq!(posted(c, honest_acct), 240);
    assert_eq!(posted(c, cheat_acct), 0);
    assert_eq!(escrow::get_order(c, job.order_id).unwrap().quantity_open, 0);
    assert_eq!(count(c, "SELECT count(*) AS n FROM assignment_verifications"), 3);
    assert_healthy(c);
    assert_eq!(money_in_platform(c), money);
}

/// An assignment whose node never answers is voided by the finisher at its deadline; while the
/// job has time left its units go back to the book (the node's asks cancelled, the node not
/// suspended), recorded as `overdue`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdue_assignments_units_are_offered_again_by_the_finisher() {
    let db = fresh_db();
    let c = &mut db.conn();
    let market = unique_market("OVERDUE");
    let js = jetstream().await;
    escrow::ensure_system_accounts(c, LEDGER).unwrap();
    let studio = funded(c, AccountCode::Studio, 10_000);
    let provider = funded(c, AccountCode::Provider, 0);
    let studio_user = user(c, "studio", studio);
    let provider_user = user(c, "provider", provider);
    let silent = node(c, provider_user);
    let money = money_in_platform(c);
    let deadline = chrono::Utc::now() + chrono::Duration::hours(1);
    let job = job(c, &js, &market, studio_user, studio, 2, 100, deadline).await;
    // The sim's clock starts in 1970: the fill's assignment is overdue at once (its deadline is
    // the fill time + 1 h), while the job's deadline is an hour away.
    let mut sim = Sim::new(&market);
    let ask = open_ask(c, &market, provider_user, provider, silent);
    sim.place(ask, 2, Side::Ask, 100, 1);
    sim.apply(gridbook_db::market_orders::place_bid_command(job.engine_order_id as u64, 1, 100, 2, deadline.timestamp_millis() as u64));
    settle_new(c, &sim, 0);
    let a = assignments(c, job.id).remove(0);
    // A second open ask of the node in the market, not filled: cancelled too.
    let other = open_ask(c, &market, provider_user, provider, silent);

    let worker = tokio::spawn(gridbook_settlement::run(settings(db.url(), &market)));
    wait_until(Duration::from_secs(20), "the finisher to void the overdue assignment", || {
        count(c, &format!("SELECT count(*) AS n FROM assignment_verifications WHERE assignment_id = '{}'", a.id)) == 1
    })
    .await;
    worker.abort();
    let (check, remedy, action, rebid): (Option<String>, String, String, Option<i64>) = av::table
        .find(a.id)
        .select((av::failed_check, av::remedy, av::node_action, av::reoffer_engine_order_id))
        .first(c)
        .unwrap();
    assert_eq!((check.as_deref(), remedy.as_str(), action.as_str()), (Some("overdue"), "reoffered", "asks_cancelled"));
    let rebid = rebid.expect("a re-bid");
    let (unit_start, of): (i64, Option<Uuid>) = mo::table.find(rebid).select((mo::unit_start, mo::reoffer_of)).first(c).unwrap();
    assert_eq!((unit_start, of), (0, Some(a.id)));
    let status: NodeStatus = nodes::table.find(silent).select(nodes::status).first(c).unwrap();
    assert_eq!(status, NodeStatus::Active);
    let other_status: String = asks::table.filter(asks::engine_order_id.eq(other as i64)).select(asks::status).first(c).unwrap();
    assert_eq!(other_status, "cancel_requested");
    // Both units open in the job's escrow order again; nothing paid, nothing lost.
    assert_eq!(escrow::get_order(c, job.order_id).unwrap().quantity_open, 2);
    assert_eq!(posted(c, studio), 10_000 - 2 * 103);
    assert_eq!(posted(c, provider), 0);
    assert_healthy(c);
    assert_eq!(money_in_platform(c), money);
    delete_consumer(&js, &market).await;
}
