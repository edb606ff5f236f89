//! Studio journeys: upload a JSONL file (good and bad), create a job with and without funds,
//! escrow and the outbox Place command, Idempotency-Key replay, cancel.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use gridbook_testkit::{TestApp, TestUser, error_code};

pub const EMBED: &str = "EMBED-MINILM-L6";

pub async fn upload(
    app: &TestApp,
    user: &TestUser,
    market: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    app.http
        .post(app.url(&format!("/v1/files?purpose=batch&market={market}")))
        .header("Authorization", user.bearer())
        .header("Content-Type", "application/jsonl")
        .body(body)
        .send()
        .await
        .expect("POST /v1/files")
}

/// `n` valid embed lines.
pub fn embed_lines(n: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "{{\"custom_id\":\"req-{i}\",\"input\":\"sentence number {i}\"}}\n"
        ));
    }
    s.into_bytes()
}

/// Runs blocking SQL against the test's database.
pub async fn with_db<T: Send + 'static>(
    app: &TestApp,
    f: impl FnOnce(&mut diesel::PgConnection) -> T + Send + 'static,
) -> T {
    let pool = app.app.db.clone();
    tokio::task::spawn_blocking(move || f(&mut pool.get().expect("db connection")))
        .await
        .unwrap()
}

/// Every outbox message, oldest first: (subject, payload).
pub async fn outbox(app: &TestApp) -> Vec<(String, Value)> {
    with_db(app, |c| {
        gridbook_ledger::events::fetch_unpublished(c, 1000)
            .expect("outbox")
            .into_iter()
            .map(|m| (m.subject, m.payload))
            .collect()
    })
    .await
}

#[derive(diesel::QueryableByName)]
struct N {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

pub async fn count(app: &TestApp, sql: &'static str) -> i64 {
    use diesel::RunQueryDsl;
    with_db(app, move |c| {
        diesel::sql_query(sql).get_result::<N>(c).expect(sql).n
    })
    .await
}

pub async fn engine_account(app: &TestApp, user: &TestUser) -> u64 {
    use diesel::RunQueryDsl;
    let id = user.id;
    with_db(app, move |c| {
        diesel::sql_query("SELECT engine_account AS n FROM users WHERE id = $1")
            .bind::<diesel::sql_types::Uuid, _>(id)
            .get_result::<N>(c)
            .unwrap()
            .n as u64
    })
    .await
}

fn deadline_in_hours(h: i64) -> chrono::DateTime<chrono::Utc> {
    // Whole milliseconds, so the engine's expires_at compares exactly.
    let t = chrono::Utc::now() + chrono::Duration::hours(h);
    chrono::DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap()
}

async fn file_id(app: &TestApp, user: &TestUser, lines: usize) -> String {
    let r = upload(app, user, EMBED, embed_lines(lines)).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

#[actix_web::test]
async fn upload_good_file_is_stored_under_its_sha256_and_readable_back() {
    let app = TestApp::spawn().await;
    let studio = app.signup("studio").await;
    let body = embed_lines(3);
    let sha = hex::encode(Sha256::digest(&body));

    let r = upload(&app, &studio, EMBED, body.clone()).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let f: Value = r.json().await.unwrap();
    assert_eq!(f["sha256"], sha);
    assert_eq!(f["bytes"], body.len());
    assert_eq!(f["lines"], 3);
    assert_eq!(f["purpose"], "batch");
    assert_eq!(f["market"], EMBED);
    let id = f["id"].as_str().unwrap();

    // The object store holds it under the sha256.
    let store = app
        .app
        .js
        .get_object_store(gridbook_wire::streams::FILES_BUCKET)
        .await
        .unwrap();
    assert_eq!(store.info(&sha).await.unwrap().size, body.len());

    // Metadata, list and content, owner only.
    let r = app.get_as(&studio, &format!("/v1/files/{id}")).await;
    assert_eq!(r.status(), 200);
    let r = app
        .get_as(&studio, &format!("/v1/files/{id}/content"))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
    let list: Value = app.get_as(&studio, "/v1/files").await.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!(list["data"][0]["id"], id);

    let other = app.signup("studio").await;
    for path in [format!("/v1/files/{id}"), format!("/v1/files/{id}/content")] {
        let r = app.get_as(&other, &path).await;
        assert_eq!(r.status(), 404);
        assert_eq!(error_code(r).await, "not_found");
    }

    // The same content again: a second file row, the object reused.
    let r = upload(&app, &studio, EMBED, body.clone()).await;
    assert_eq!(r.status(), 201);
    let f2: Value = r.json().await.unwrap();
    assert_ne!(f2["id"], f["id"]);
    assert_eq!(f2["sha256"], sha);
}

#[actix_web::test]
async fn upload_bad_file_lists_problems_by_line_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let studio = app.signup("studio").await;
    let body = concat!(
        "{\"custom_id\":\"a\",\"input\":\"fine\"}\n",
        "{\"custom_id\":\"b\",\"input\":\"fine\"\n",
        "{\"custom_id\":\"a\",\"input\":\"dup\"}\n",
        "{\"custom_id\":\"c\",\"text\":\"wrong field\"}\n",
        "{\"custom_id\":\"\",\"input\":\"empty id\"}\n",
        "{\"custom_id\":\"d\",\"input\":\"fine\"}\n",
        "\n",
        "[\"not an object\"]\n",
    )
    .as_bytes()
    .to_vec();
    let sha = hex::encode(Sha256::digest(&body));
    let r = upload(&app, &studio, EMBED, body).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_file");
    let details = v["error"]["details"].as_array().unwrap();
    let lines: Vec<u64> = details
        .iter()
        .map(|d| d["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![2, 3, 4, 5, 7, 8], "{details:?}");
    let msg = |i: usize| details[i]["message"].as_str().unwrap().to_owned();
    assert!(msg(0).contains("invalid JSON"), "{}", msg(0));
    assert!(msg(1).contains("duplicate"), "{}", msg(1));
    assert!(msg(2).contains("input: missing"), "{}", msg(2));
    assert!(msg(3).contains("custom_id"), "{}", msg(3));
    assert!(msg(4).contains("blank"), "{}", msg(4));
    assert!(msg(5).contains("JSON object"), "{}", msg(5));

    // Nothing stored: no row, no object.
    assert_eq!(count(&app, "SELECT count(*) AS n FROM files").await, 0);
    let store = app
        .app
        .js
        .get_object_store(gridbook_wire::streams::FILES_BUCKET)
        .await
        .unwrap();
    assert!(store.info(&sha).await.is_err());

    // Unknown market, wrong purpose, wrong content type.
    let r = upload(&app, &studio, "NOPE", embed_lines(1)).await;
    assert_eq!(r.status(), 400);
    let r = app
        .http
        .post(app.url(&format!("/v1/files?purpose=batch&market={EMBED}")))
        .header("Authorization", studio.bearer())
        .header("Content-Type", "image/png")
        .body(embed_lines(1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // Providers cannot upload.
    let provider = app.signup("provider").await;
    assert_eq!(
        upload(&app, &provider, EMBED, embed_lines(1))
            .await
            .status(),
        403
    );
}

#[actix_web::test]
async fn upload_over_the_size_limit_is_413() {
    let app = TestApp::spawn_with(|s| s.limits.file_bytes = 1_000).await;
    let studio = app.signup("studio").await;
    let r = upload(&app, &studio, EMBED, embed_lines(100)).await;
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(r).await, "payload_too_large");
    assert_eq!(count(&app, "SELECT count(*) AS n FROM files").await, 0);
}

#[actix_web::test]
async fn job_without_funds_is_refused_and_creates_nothing() {
    let app = TestApp::spawn().await;
    let studio = app.signup("studio").await;
    let file = file_id(&app, &studio, 10).await;
    let before = app.balance(&studio).await;
    let r = app
        .post_as(
            &studio,
            "/v1/jobs",
            &json!({"market": EMBED, "input_file": file, "limit_price": 100, "deadline": deadline_in_hours(2)}),
        )
        .await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "insufficient_funds");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("103"),
        "{v}"
    );
    assert_eq!(count(&app, "SELECT count(*) AS n FROM jobs").await, 0);
    assert_eq!(
        count(&app, "SELECT count(*) AS n FROM market_orders").await,
        0
    );
    assert_eq!(
        count(&app, "SELECT count(*) AS n FROM escrow_orders").await,
        0
    );
    assert!(outbox(&app).await.is_empty());
    assert_eq!(app.balance(&studio).await, before);
}

#[actix_web::test]
async fn job_reserves_escrow_and_queues_the_place_command() {
    let app = TestApp::spawn().await;
    let studio = app.signup("studio").await;
    app.credit(&studio, 1_000_000).await;
    // 2,500 lines of a 1,000-lines-per-unit market = 3 units.
    let file = file_id(&app, &studio, 2_500).await;
    let deadline = deadline_in_hours(3);
    let r = app
        .post_as(
            &studio,
            "/v1/jobs",
            &json!({"market": EMBED, "input_file": file, "limit_price": 100, "deadline": deadline,
                    "metadata": {"project": "docs"}}),
        )
        .await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let job: Value = r.json().await.unwrap();
    assert_eq!(job["status"], "queued");
    assert_eq!(job["units"], 3);
    assert_eq!(
        job["request_counts"],
        json!({"total": 2500, "completed": 0, "failed": 0, "running": 0, "queued": 2500})
    );
    assert_eq!(job["progress"], 0.0);
    assert_eq!(job["metadata"], json!({"project": "docs"}));
    // unit reserve = 100 + ⌈100 × 250 / 10⁴⌉ = 103; 3 units.
    assert_eq!(job["escrow"]["reserved"], 309);
    assert_eq!(job["escrow"]["open"], 309);
    assert_eq!(job["escrow"]["spent"], 0);
    assert_eq!(job["escrow"]["released"], 0);

    // The ledger agrees.
    let job_id: uuid::Uuid = job["id"].as_str().unwrap().parse().unwrap();
    let (order, engine_order_id) = with_db(&app, move |c| {
        use diesel::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct R {
            #[diesel(sql_type = diesel::sql_types::Uuid)]
            order_id: uuid::Uuid,
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            engine_order_id: i64,
        }
        let r: R = diesel::sql_query("SELECT order_id, engine_order_id FROM jobs WHERE id = $1")
            .bind::<diesel::sql_types::Uuid, _>(job_id)
            .get_result(c)
            .unwrap();
        (
            gridbook_ledger::escrow::get_order(c, r.order_id).unwrap(),
            r.engine_order_id,
        )
    })
    .await;
    assert_eq!(order.terms.quantity, 3);
    assert_eq!(order.unit_reserve, 103);
    assert_eq!(order.quantity_open, 3);
    assert_eq!(order.terms.studio_account.0, studio.account_id);
    let bal = app.balance(&studio).await;
    assert_eq!(bal["available"], 1_000_000 - 309);
    assert_eq!(bal["held"], 309);

    // The outbox holds exactly the Place for the engine.
    let account = engine_account(&app, &studio).await;
    let msgs = outbox(&app).await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0].0, format!("market.{EMBED}.cmd"));
    assert_eq!(
        msgs[0].1,
        json!({"place": {"id": engine_order_id, "account": account, "side": "bid", "price": 100,
               "qty": 3, "tif": {"gtd": {"expires_at": deadline.timestamp_millis()}}}})
    );
    let cmd: matching_core::CommandKind = serde_json::from_value(msgs[0].1.clone()).unwrap();
    assert!(matches!(cmd, matching_core::CommandKind::Place(_)));
    // The market order row maps the engine id to the escrow order and the job.
    assert_eq!(
        count(
            &app,
            "SELECT count(*) AS n FROM market_orders WHERE side = 'bid' AND job_id IS NOT NULL"
        )
        .await,
        1
    );

    // Read back; list; another studio sees nothing.
    let r = app.get_as(&studio, &format!("/v1/jobs/{job_id}")).await;
    assert_eq!(r.status(), 200);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["escrow"]["reserved"], 309);
    let list: Value = app.get_as(&studio, "/v1/jobs").await.json().await.unwrap();
    assert_eq!(list["data"][0]["id"], job["id"]);
    let other = app.signup("studio").await;
    assert_eq!(
        app.get_as(&other, &format!("/v1/jobs/{job_id}"))
            .await
            .status(),
        404
    );
    // No output yet.
    let r = app
        .get_as(&studio, &format!("/v1/jobs/{job_id}/output"))
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(r).await, "not_ready");
    let r = app
        .get_as(&studio, &format!("/v1/jobs/{job_id}/errors"))
        .await;
    assert_eq!(error_code(r).await, "not_ready");
}

#[actix_web::test]
async fn job_requests_are_checked() {
    let app = TestApp::spawn().await;
    let studio = app.signup("studio").await;
    app.credit(&studio, 1_000_000).await;
    let file = file_id(&app, &studio, 5).await;
    let ok = json!({"market": EMBED, "input_file": file, "limit_price": 100, "deadline": deadline_in_hours(1)});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    for (body, status, field) in [
        // Fields a client must not set.
        (with("status", json!("completed")), 400, None),
        (with("fee_bps", json!(0)), 400, None),
        (with("limit_price", json!(0)), 400, Some("limit_price")),
        (
            with("limit_price", json!(100_001)),
            400,
            Some("limit_price"),
        ),
        (
            with(
                "deadline",
                json!(chrono::Utc::now() - chrono::Duration::hours(1)),
            ),
            400,
            Some("deadline"),
        ),
        (
            with(
                "deadline",
                json!(chrono::Utc::now() + chrono::Duration::days(8)),
            ),
            400,
            Some("deadline"),
        ),
        (
            with("market", json!("RENDER-TERRAIN-128")),
            400,
            Some("input_file"),
        ),
        (
            with("input_file", json!(uuid::Uuid::now_v7())),
            404,
            Some("input_file"),
        ),
    ] {
        let r = app.post_as(&studio, "/v1/jobs", &body).await;
        assert_eq!(r.status(), status, "{body}");
        let v: Value = r.json().await.unwrap();
        if let Some(f) = field {
            assert_eq!(v["error"]["field"], f, "{v}");
        }
    }
    assert_eq!(count(&app, "SELECT count(*) AS n FROM jobs").await, 0);
    assert!(outbox(&app).await.is_empty());
}

#[actix_web::test]
async fn idempotency_key_replays_the_job_and_reserves_once() {
    let app = TestApp::spawn().await;
    let studio = app.signup("studio").await;
    app.credit(&studio, 10_000).await;
    let file = file_id(&app, &studio, 10).await;
    let body = json!({"market": EMBED, "input_file": file, "limit_price": 1000, "deadline": deadline_in_hours(1)});
    let send = || async {
        app.http
            .post(app.url("/v1/jobs"))
            .header("Authorization", studio.bearer())
            .header("Idempotency-Key", "job-1")
            .json(&body)
            .send()
            .await
            .unwrap()
    };
    let first = send().await;
    assert_eq!(first.status(), 201);
    let a: Value = first.json().await.unwrap();
    let second = send().await;
    assert_eq!(second.status(), 201);
    assert_eq!(second.headers().get("Idempotent-Replayed").unwrap(), "true");
    let b: Value = second.json().await.unwrap();
    assert_eq!(a["id"], b["id"]);
    assert_eq!(count(&app, "SELECT count(*) AS n FROM jobs").await, 1);
    assert_eq!(
        count(&app, "SELECT count(*) AS n FROM escrow_orders").await,
        1
    );
    assert_eq!(outbox(&app).await.len(), 1);
    // 1 unit × (1000 + 25).
    assert_eq!(app.balance(&studio).await["available"], 10_000 - 1_025);
}

#[actix_web::test]
async fn cancel_queues_the_engine_cancel_once() {
    let app = TestApp::spawn().await;
    let studio = app.signup("studio").await;
    app.credit(&studio, 10_000).await;
    let file = file_id(&app, &studio, 10).await;
    let r = app
        .post_as(
            &studio,
            "/v1/jobs",
            &json!({"market": EMBED, "input_file": file, "limit_price": 10, "deadline": deadline_in_hours(1)}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_str().unwrap();

    let other = app.signup("studio").await;
    let r = app
        .post_as(&other, &format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(r.status(), 404);

    let r = app
        .post_as(&studio, &format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let c: Value = r.json().await.unwrap();
    assert!(c["cancel_requested_at"].is_string(), "{c}");
    let account = engine_account(&app, &studio).await;
    let msgs = outbox(&app).await;
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    let place_id = msgs[0].1["place"]["id"].clone();
    assert_eq!(msgs[1].0, format!("market.{EMBED}.cmd"));
    assert_eq!(
        msgs[1].1,
        json!({"cancel": {"id": place_id, "account": account}})
    );
    // Again: answered, nothing new queued.
    let r = app
        .post_as(&studio, &format!("/v1/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(outbox(&app).await.len(), 2);
    // The reservation stays until the engine's `cancelled` event is settled by the worker.
    let j: Value = app
        .get_as(&studio, &format!("/v1/jobs/{id}"))
        .await
        .json()
        .await
        .unwrap();
    // 1 unit × (10 + ⌈10 × 250 / 10⁴⌉).
    assert_eq!(j["escrow"]["open"], 11);
}

#[actix_web::test]
async fn the_openapi_document_lists_files_jobs_nodes_and_asks() {
    let app = TestApp::spawn().await;
    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/v1/files",
        "/v1/files/{id}/content",
        "/v1/jobs",
        "/v1/jobs/{id}/cancel",
        "/v1/nodes/{id}/challenge",
        "/v1/nodes/{id}/challenge/commitment",
        "/v1/asks/{id}",
        "/v1/earnings",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["schemas"]["CreateJob"].is_object());
}
