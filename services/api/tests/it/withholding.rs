//! The withholding window through the API (`GET /v1/earnings`, `GET /v1/balance`): a worker
//! with W = 1 withholds a verified assignment's pay until the node's next verified assignment,
//! and the provider sees withheld vs available. Real parts: agent, engine, worker, API.

use gridbook_testkit::{Stack, StackOptions};
use serde_json::json;

use crate::journey::{json_of, start_provider, submit_job, wait_for_job};

const RENDER: &str = "RENDER-TERRAIN-128";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn withhold_the_provider_sees_withheld_and_available_pay() {
    let stack = Stack::start_with("withholding", StackOptions { withhold_assignments: 1, ..StackOptions::default() }).await;
    let app = &stack.app;
    // One tile is one unit, at the ask's price 7: each job is one assignment paying 7.
    let (provider, _agent) = start_provider(&stack, RENDER, 7, 10).await;
    let tile = |i: u32| json!({"custom_id": format!("tile-{i}"), "seed": 2000 + i, "difficulty": 30}).to_string() + "\n";

    let earnings = |e: &serde_json::Value| {
        ["earned", "withheld", "released", "forfeited", "available", "balance"].map(|k| e[k].as_i64().unwrap_or(-1))
    };
    for (i, want) in [(0u32, [7, 7, 0, 0, 0, 0]), (1, [14, 7, 7, 0, 7, 7])] {
        // A studio per job (its Idempotency-Key is per studio and market).
        let studio = app.signup("studio").await;
        app.credit(&studio, 1_000).await;
        let job_id = submit_job(app, &studio, RENDER, &tile(i), 20, 1).await;
        let (job, seen) = wait_for_job(app, &studio, &job_id).await;
        assert_eq!(job["status"], "completed", "statuses {seen:?}: {job}");
        // The assignment settles in the same transaction as its job's counts, before the job
        // completes, so the figures are final here.
        let e = json_of(app.get_as(&provider, "/v1/earnings").await).await;
        assert_eq!(earnings(&e), want, "after job {i}: {e}");
        // GET /v1/balance agrees: withheld pay is neither available nor posted to the
        // provider's account.
        let b = app.balance(&provider).await;
        assert_eq!((b["available"].as_i64(), b["posted"].as_i64()), (Some(want[4]), Some(want[5])), "{b}");
    }
    {
        use diesel::RunQueryDsl;
        let mut c = app.db.conn();
        diesel::sql_query("SELECT ledger_check_invariants()").execute(&mut c).expect("ledger invariants");
    }
}
