//! Epoch closes (`gridbook_settlement::protocol`) end to end through the ledger on a real
//! PostgreSQL: verified work made by the worker's own settlement path (the pure book as the
//! engine), fees swept exactly once, the rule's shares, the GRID emission out of the bounded
//! supply, rewards by work × reliability × uptime under the cluster cap (two accounts linked by a
//! network are one cluster), rollover, the burn, idempotence and conservation — amounts exact.

use diesel::prelude::*;
use gridbook_db::status::{AssignmentStatus, NodeAction, UnitsRemedy};
use gridbook_ledger::epoch::Rule;
use gridbook_ledger::{AccountCode, AccountId, NewTransfer, TransferId, store, supply, token};
use gridbook_settlement::dead_letter::Source;
use gridbook_settlement::decide::CONSUMER;
use gridbook_settlement::jobs::{self as sjobs, AssignmentRow, Resolution};
use gridbook_settlement::protocol::{self, EpochPolicy};
use gridbook_settlement::redo::{self, RedoPolicy, Record};
use gridbook_settlement::settle;
use gridbook_settlement::verify::Evidence;
use matching_core::Side;
use uuid::Uuid;

use crate::dead_letters::{job, node, user};
use crate::*;

/// `units` one-unit assignments of a studio job at `price` each, filled by `node`'s asks and
/// verified and passed by the worker's own path (`settle::settle_message`, `redo::settle_pass`;
/// paid at once: no withholding window). Shared with `probation.rs`.
pub(crate) async fn verified_work(
    c: &mut PgConnection,
    js: &async_nats::jetstream::Context,
    studio: (Uuid, AccountId),
    provider: AccountId,
    node: Uuid,
    units: u32,
    price: u64,
) {
    let market = unique_market("EPOCH");
    let deadline = chrono::Utc::now() + chrono::Duration::hours(1);
    let job = job(c, js, &market, studio.0, studio.1, units, price as i64, deadline).await;
    let mut sim = Sim::new(&market);
    for _ in 0..units {
        let ask = provider_ask(c, &market, provider, node);
        sim.place(ask, 2, Side::Ask, price, 1);
    }
    sim.apply(gridbook_db::market_orders::place_bid_command(
        job.engine_order_id as u64,
        1,
        price,
        units as u64,
        deadline.timestamp_millis() as u64,
    ));
    let source = Source {
        stream: gridbook_wire::streams::EVENTS.into(),
        subject: gridbook_wire::subjects::market_evt(&market),
        stream_seq: None,
    };
    settle::settle_message(c, CONSUMER, &source, &sim.frames, &Default::default()).unwrap();
    let live: Vec<AssignmentRow> = sjobs::assignments_of(c, job.id).unwrap();
    assert_eq!(live.len(), units as usize);
    let policy = RedoPolicy { max_reoffers: 0, withhold_assignments: 0 };
    for a in &live {
        assert_eq!(a.status, AssignmentStatus::Assigned);
        let r = Resolution {
            completed: true,
            items_ok: a.item_count,
            items_failed: 0,
            output_sha256: Some("ab".repeat(32)),
            merkle_root: Some("cd".repeat(32)),
            manifest: None,
            detail: "verified".into(),
        };
        let rec = Record {
            failed_check: None,
            detail: "verified".into(),
            evidence: Evidence::default(),
            output_sha256: Some("ab".repeat(32)),
            merkle_root: Some("cd".repeat(32)),
            node_manifest: None,
            verified_items: a.item_count,
            rerun: Default::default(),
        };
        let s = c.transaction(|c| redo::settle_pass(c, a, &r, &rec, policy)).unwrap().expect("settled once");
        assert_eq!((s.remedy, s.node_action), (UnitsRemedy::Paid, NodeAction::Nothing));
    }
}

fn posted(c: &mut PgConnection, a: AccountId) -> i128 {
    store::get_account(c, a).map_or(0, |x| x.balances.posted())
}

fn link_by_network(c: &mut PgConnection, users: &[Uuid]) {
    for u in users {
        diesel::sql_query("INSERT INTO identity_marks (user_id, kind, value) VALUES ($1, 'network', '203.0.113.0/24')")
            .bind::<diesel::sql_types::Uuid, _>(*u)
            .execute(c)
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_share_fees_emit_reward_by_measured_inputs_cap_clusters_roll_over_and_burn() {
    let db = fresh_db();
    let c = &mut db.conn();
    let js = jetstream().await;
    gridbook_ledger::escrow::ensure_system_accounts(c, LEDGER).unwrap();
    let studio_acct = funded(c, AccountCode::Studio, 1_000_000);
    let studio = (user(c, "studio", studio_acct), studio_acct);
    // Providers: A and A' are two accounts on one network (one cluster); B; C (half uptime);
    // D (suspended after its work: a proven cheat earns nothing).
    let mut provs = Vec::new();
    for _ in 0..5 {
        let acct = funded(c, AccountCode::Provider, 0);
        let u = user(c, "provider", acct);
        let n = node(c, u);
        provs.push((u, acct, n));
    }
    // Report lines are sorted by node id: so is `provs`.
    provs.sort_by_key(|p| p.2);
    link_by_network(c, &[provs[0].0, provs[1].0]);
    for (_, acct, n) in &provs {
        verified_work(c, &js, studio, *acct, *n, 4, 1_000).await;
    }
    let money = money_in_platform(c);
    let fee_account = AccountId::system(LEDGER, AccountCode::ProtocolFee.as_str());
    // 20 units at 1,000 with a 2.5 % fee: 25 each.
    assert_eq!(posted(c, fee_account), 500);
    let paid_for_work: Vec<i128> = provs.iter().map(|p| posted(c, p.1)).collect();
    assert_eq!(paid_for_work, vec![4_000; 5]);

    let rule = Rule {
        epoch_secs: 600,
        buyback_share_bps: 5_000,
        rewards_share_bps: 3_000,
        emission_bps: 2,
        cluster_cap_bps: 5_000,
        buyback_slippage_bps: 200,
    };
    let policy = EpochPolicy { rule: rule.clone(), enabled: true, check_secs: 1, grace_secs: 0, uptime_retention_days: 30 };
    let now = chrono::Utc::now();
    let n = rule.epoch_of(now) - 1;
    let (start, _) = rule.window(n);
    // Uptime: every minute of the epoch for all but C, half of them for C.
    for m in 0..10 {
        let t = start + chrono::Duration::minutes(m);
        let heard: Vec<Uuid> = provs.iter().enumerate().filter(|(i, _)| *i != 2 || m % 2 == 0).map(|(_, p)| p.2).collect();
        protocol::record_uptime(c, &heard, t).unwrap();
        // A heartbeat twice in a minute is one minute.
        protocol::record_uptime(c, &heard, t + chrono::Duration::seconds(30)).unwrap();
    }
    // Reliability: all at 10,000 except D, suspended.
    diesel::sql_query("UPDATE nodes SET reputation = 10000").execute(c).unwrap();
    diesel::sql_query("UPDATE nodes SET status = 'suspended' WHERE id = $1")
        .bind::<diesel::sql_types::Uuid, _>(provs[4].2)
        .execute(c)
        .unwrap();

    let r = protocol::close_epoch(c, &policy, n, now).unwrap();
    assert_eq!((r.epoch, r.fee_transfers, r.fee_revenue, r.work_assignments), (n, 20, 500, 20));
    assert_eq!((r.buyback_allocation, r.rewards_allocation), (250, 150));
    assert_eq!(r.emission, supply::MAX_SUPPLY / 5_000);
    let inputs: Vec<(i64, u32, u32)> = r.rewards.iter().map(|l| (l.input.work, l.input.quality_bps, l.input.uptime_bps)).collect();
    let mut want_inputs = vec![(4_000, 10_000, 10_000); 5];
    want_inputs[2].2 = 5_000;
    want_inputs[4].1 = 0;
    assert_eq!(inputs, want_inputs);
    assert_eq!(r.rewards[0].input.cluster, r.rewards[1].input.cluster, "A and A' are one cluster");
    // Weights A 4000, A' 4000, C 2000, B 4000, D 0: the A cluster (8000 of 14000 = 57 %) is
    // capped at 50 %; B and C share the other half 2:1; D gets nothing.
    let credits: Vec<i64> = r.rewards.iter().map(|l| l.credits).collect();
    assert_eq!(credits, vec![37, 37, 25, 50, 0]);
    let e = supply::MAX_SUPPLY / 5_000;
    let grid: Vec<i64> = r.rewards.iter().map(|l| l.grid).collect();
    assert_eq!(grid, vec![e / 4, e / 4, e / 2 / 3, e / 2 * 2 / 3, 0]);
    assert_eq!(r.pools[0].rolled_over, 1);
    assert_eq!(r.pools[1].rolled_over, e - grid.iter().sum::<i64>());
    // Each reward is a ledger transfer into the owner's accounts.
    for (i, p) in provs.iter().enumerate() {
        assert_eq!(posted(c, p.1), 4_000 + credits[i] as i128, "provider {i}");
        assert_eq!(posted(c, token::user_account(p.0)), grid[i] as i128, "provider {i} GRID");
    }
    let usd = |code: AccountCode| AccountId::system(LEDGER, code.as_str());
    assert_eq!(posted(c, usd(AccountCode::BuybackTreasury)), 250);
    assert_eq!(posted(c, usd(AccountCode::RewardsPool)), 1);
    assert_eq!(posted(c, fee_account), 100);
    assert!(r.buyback.reference_price.is_none(), "no GRID trade yet: {:?}", r.buyback);
    assert_eq!(r.buyback.budget, 250);
    assert_eq!(count(c, &format!("SELECT count(*) AS n FROM epoch_rewards WHERE epoch = {n}")), 10);

    // Closing again changes nothing and returns the same report.
    let transfers = count(c, "SELECT count(*) AS n FROM ledger_transfers");
    assert_eq!(protocol::close_epoch(c, &policy, n, now + chrono::Duration::hours(1)).unwrap(), r);
    assert_eq!(count(c, "SELECT count(*) AS n FROM ledger_transfers"), transfers);
    assert_eq!(protocol::report(c, n).unwrap().as_ref(), Some(&r));

    // Next epoch: one more verified unit by B (its fee is swept here, once; B was heard one
    // minute of ten); B sends 3 GRID into the buyback treasury as a bought fill would, and the
    // close burns them.
    verified_work(c, &js, studio, provs[3].1, provs[3].2, 1, 1_000).await;
    protocol::record_uptime(c, &[provs[3].2], now).unwrap();
    let b_grid = token::user_account(provs[3].0);
    let treasury = supply::account(AccountCode::BuybackTreasury);
    store::create_transfer(c, &NewTransfer::posted(TransferId::new(), b_grid, treasury, 3 * token::UNIT, "test_fill")).unwrap();
    let r2 = protocol::close_epoch(c, &policy, n + 1, now).unwrap();
    assert_eq!((r2.fee_transfers, r2.fee_revenue, r2.work_assignments), (1, 25, 1));
    assert_eq!(r2.burned, 3 * token::UNIT);
    assert!(r2.burn_transfer.is_some());
    // Only B worked: alone it takes the cap (50 %) of the pool (7 credits of this epoch's fees
    // plus the 1 rolled over); the rest rolls over again.
    assert_eq!(r2.rewards.len(), 1);
    assert_eq!(r2.rewards[0].input.uptime_bps, 1_000);
    assert_eq!(r2.pools[0].available, 1 + 7);
    assert_eq!(r2.rewards[0].credits, 4);
    let s = supply::supply(c).unwrap();
    assert_eq!(s.burned, 3 * token::UNIT);
    assert_eq!(s.reserve + s.rewards_pool + s.buyback_treasury + s.burned + s.circulating, supply::MAX_SUPPLY);
    assert_eq!(s.reserve, supply::MAX_SUPPLY - r.emission - r2.emission);

    // Nothing created or destroyed; the ledger's invariants hold.
    assert_eq!(money_in_platform(c), money);
    assert_healthy(c);
}
