//! The hardware challenge's teeth at settlement (issue 16): a node leaves probation after
//! `jobs::PROBATION_PASSES` verified assignments with the exit score only if its challenge's
//! timing, by the market's clock, fit its device class (`nodes.challenge_timing = 'fits'`). A
//! node that answered right but too slowly (`too_slow`), or whose challenge was never timed
//! (NULL: challenged before the timing existed), stays on probation however much verified work
//! it does. The work goes through the worker's own path: fills settled from the pure book's
//! events (`settle::settle_message`), each assignment passed by `redo::settle_pass`, which moves
//! the node's reliability (`jobs::set_reliability`).

use diesel::prelude::*;
use gridbook_db::schema::nodes;
use gridbook_db::status::NodeStatus;
use gridbook_ledger::AccountCode;
use gridbook_settlement::jobs::PROBATION_PASSES;
use uuid::Uuid;

use crate::dead_letters::user;
use crate::*;

/// A probation node that passed its challenge with `timing` (`'fits'`, `'too_slow'`, NULL).
fn probation_node(c: &mut PgConnection, owner: Uuid, timing: Option<&str>) -> Uuid {
    let id = Uuid::now_v7();
    diesel::sql_query(
        "INSERT INTO nodes (id, owner, name, gpu_model, vram_mb, region, status, challenge_nonce, \
         challenge_status, challenge_class, challenge_items, challenge_bound_ms, challenge_timing) \
         VALUES ($1, $2, 'n', 'RTX 4090', 24576, 'r', 'probation', 'nonce', 'passed', 'gpu', 4096, 3000, $3)",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .bind::<diesel::sql_types::Uuid, _>(owner)
    .bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(timing)
    .execute(c)
    .unwrap();
    id
}

fn status(c: &mut PgConnection, node: Uuid) -> (NodeStatus, i32) {
    nodes::table
        .find(node)
        .select((nodes::status, nodes::reputation))
        .first(c)
        .unwrap()
}

#[tokio::test]
async fn a_node_too_slow_for_its_class_never_leaves_probation() {
    let db = fresh_db();
    let c = &mut db.conn();
    let js = jetstream().await;
    gridbook_ledger::escrow::ensure_system_accounts(c, LEDGER).unwrap();
    let studio_acct = funded(c, AccountCode::Studio, 1_000_000);
    let studio = (user(c, "studio", studio_acct), studio_acct);
    let mut nodes_by_timing = Vec::new();
    for timing in [Some("fits"), Some("too_slow"), None] {
        let acct = funded(c, AccountCode::Provider, 0);
        let u = user(c, "provider", acct);
        nodes_by_timing.push((timing, acct, probation_node(c, u, timing)));
    }
    let passes = PROBATION_PASSES as u32;
    // One short of the required passes: everyone is still on probation.
    for (_, acct, n) in &nodes_by_timing {
        crate::epochs::verified_work(c, &js, studio, *acct, *n, passes - 1, 100).await;
        let (s, score) = status(c, *n);
        assert_eq!(s, NodeStatus::Probation);
        assert!(
            score >= gridbook_settlement::reliability::EXIT_SCORE,
            "{score}"
        );
    }
    // The tenth verified pass: only the node whose timing fit leaves probation.
    for (timing, acct, n) in &nodes_by_timing {
        crate::epochs::verified_work(c, &js, studio, *acct, *n, 1, 100).await;
        let expected = if *timing == Some("fits") {
            NodeStatus::Active
        } else {
            NodeStatus::Probation
        };
        assert_eq!(status(c, *n).0, expected, "timing {timing:?}");
    }
    // Many more passes change nothing for the slow and the untimed node.
    for (timing, acct, n) in nodes_by_timing.iter().skip(1) {
        crate::epochs::verified_work(c, &js, studio, *acct, *n, passes, 100).await;
        let (s, score) = status(c, *n);
        assert_eq!(s, NodeStatus::Probation, "timing {timing:?}");
        assert!(score > 8_000, "a record far above the exit score: {score}");
    }
    assert_healthy(c);
}
