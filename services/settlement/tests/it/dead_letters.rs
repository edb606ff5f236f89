//! What settlement refuses is recorded once as a dead letter, acked, and leaves no escrow open:
//! the attack (an ask placed straight on NATS fills a studio's job bid) through a private
//! nats-server, the real engine binary and the real worker binary; garbage on the events subject
//! through the in-process worker; units left open long after a job's deadline.

use std::time::{Duration, Instant};

use diesel::prelude::*;
use gridbook_db::rows::JobRow;
use gridbook_db::status::JobStatus;
use gridbook_ledger::{AccountCode, AccountId, escrow};
use gridbook_settlement::dead_letter::{self, DeadLetterRow, Source};
use gridbook_settlement::decide::{CONSUMER, DeadLetterEscrow, DeadLetterReason};
use gridbook_settlement::results;
use gridbook_testkit::{Engine, EngineConfig, Market, Nats, TempDir, WorkerConfig};
use gridbook_wire::node::{Outcome as NodeOutcome, ResultMsg};
use matching_core::{CommandKind, EventKind, OrderId, Place, Side, TimeInForce};
use uuid::Uuid;

use crate::*;

#[derive(diesel::QueryableByName)]
struct Def {
    #[diesel(sql_type = diesel::sql_types::Text)]
    def: String,
}

/// The text values the CHECK constraint on `dead_letters.<column>` allows.
fn allowed(c: &mut PgConnection, column: &str) -> Vec<String> {
    let defs: Vec<Def> = diesel::sql_query(
        "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint \
         WHERE conrelid = 'dead_letters'::regclass AND contype = 'c'",
    )
    .load(c)
    .unwrap();
    let def = defs
        .into_iter()
        .map(|d| d.def)
        .find(|d| d.starts_with(&format!("CHECK (({column} = ANY")))
        .unwrap_or_else(|| panic!("no CHECK on dead_letters.{column}"));
    def.split('\'')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_dead_letter_enums_spell_exactly_what_the_check_constraints_allow() {
    let db = fresh_db();
    let c = &mut db.conn();
    let reasons: Vec<&str> = DeadLetterReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(allowed(c, "reason"), reasons);
    let actions: Vec<&str> = DeadLetterEscrow::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(allowed(c, "escrow_action"), actions);
}

#[test]
fn a_refused_message_is_recorded_once_with_its_processed_event() {
    let db = fresh_db();
    let c = &mut db.conn();
    let source = Source {
        stream: streams::EVENTS.into(),
        subject: subjects::market_evt("M"),
        stream_seq: Some(41),
    };
    let payload = b"\xff\x00garbage";
    let first = dead_letter::record_message(
        c,
        CONSUMER,
        &source,
        DeadLetterReason::Undecodable,
        "x",
        payload,
    );
    assert!(first.unwrap(), "recorded the first time");
    let again = dead_letter::record_message(
        c,
        CONSUMER,
        &source,
        DeadLetterReason::Undecodable,
        "x",
        payload,
    );
    assert!(!again.unwrap(), "a redelivery records nothing");
    assert_eq!(dead_letter::list(c, 10).unwrap().len(), 1);
    assert_eq!(
        count(
            c,
            "SELECT count(*) AS n FROM processed_events WHERE event_id = 'GRIDBOOK_EVENTS#41'"
        ),
        1
    );
    // A dead letter cannot exist without its processed event.
    let orphan = diesel::sql_query(
        "INSERT INTO dead_letters (id, consumer, event_id, stream, subject, reason, detail, payload, escrow_action) \
         VALUES (gen_random_uuid(), 'settlement', 'nowhere', 's', 's', 'undecodable', '', ''::bytea, 'untouched')",
    )
    .execute(c);
    assert!(
        orphan.is_err(),
        "the foreign key refuses an orphan dead letter"
    );
}

/// Garbage bytes and a frame naming an invalid market on the events subject: each becomes a
/// dead letter with its bytes as received, is acked, and the worker settles the next valid
/// event (a cancel releasing its bid's reservation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_events_subject_is_dead_lettered_acked_and_the_next_event_settles() {
    let db = fresh_db();
    let c = &mut db.conn();
    let market = unique_market("GARBAGE");
    let js = jetstream().await;
    escrow::ensure_system_accounts(c, LEDGER).unwrap();
    let studio = funded(c, AccountCode::Studio, 100_000);
    let money = money_in_platform(c);
    let bid = escrowed_bid(c, &market, studio, 10, 120);
    assert_eq!(posted(c, studio), 100_000 - 1_230);

    let worker = tokio::spawn(gridbook_settlement::run(settings(db.url(), &market)));
    let subject = subjects::market_evt(&market);
    let garbage: &[u8] = b"\x00\xff\xfe not json at all \x13";
    let bad_market = br#"[{"market":"not a symbol","stream_seq":1,"cmd":1,"time":1,"first":1,"last":0,"events":[],"best_bid":null,"best_ask":null}]"#;
    let mut seqs = vec![];
    for payload in [garbage, bad_market.as_slice()] {
        let ack = js
            .publish(subject.clone(), payload.to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
        seqs.push(ack.sequence);
    }
    let mut sim = Sim::new(&market);
    sim.place(bid, 1, Side::Bid, 120, 10);
    sim.cancel(bid, 1);
    publish(&js, &sim.frames, 2, "").await;

    wait_until(Duration::from_secs(20), "the cancel to settle", || {
        posted(c, studio) == 100_000
    })
    .await;
    wait_drained(&js, &market).await;
    let mut dead = dead_letter::list(c, 10).unwrap();
    dead.sort_by_key(|d| d.stream_seq);
    assert_eq!(dead.len(), 2, "{dead:?}");
    let expect = [
        (DeadLetterReason::Undecodable, garbage),
        (DeadLetterReason::Malformed, bad_market.as_slice()),
    ];
    for ((d, (reason, payload)), seq) in dead.iter().zip(expect).zip(&seqs) {
        assert_eq!(d.reason, reason);
        assert_eq!(d.payload, payload, "the bytes as received");
        assert_eq!(
            (d.stream.as_str(), d.subject.as_str()),
            (streams::EVENTS, subject.as_str())
        );
        assert_eq!(d.stream_seq, Some(*seq as i64));
        assert_eq!(d.event_id, format!("{}#{seq}", streams::EVENTS));
        assert_eq!(
            (d.event_seq, d.escrow_action),
            (None, DeadLetterEscrow::Untouched)
        );
    }
    assert_healthy(c);
    assert_eq!(money_in_platform(c), money);
    worker.abort();
    delete_consumer(&js, &market).await;
}

/// A users row for a ledger account (what the API's signup creates).
pub fn user(c: &mut PgConnection, role: &str, account: AccountId) -> Uuid {
    let id = Uuid::now_v7();
    diesel::sql_query(
        "INSERT INTO users (id, email, password_hash, role, account_id) VALUES ($1, $2, 'x', $3, $4)",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .bind::<diesel::sql_types::Text, _>(format!("{id}@example.test"))
    .bind::<diesel::sql_types::Text, _>(role)
    .bind::<diesel::sql_types::Uuid, _>(account.0)
    .execute(c)
    .unwrap();
    id
}

pub fn node(c: &mut PgConnection, owner: Uuid) -> Uuid {
    let id = Uuid::now_v7();
    diesel::sql_query(
        "INSERT INTO nodes (id, owner, name, gpu_model, vram_mb, region, status, challenge_nonce, challenge_status) \
         VALUES ($1, $2, 'n', 'g', 0, 'r', 'active', 'nonce', 'passed')",
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .bind::<diesel::sql_types::Uuid, _>(owner)
    .execute(c)
    .unwrap();
    id
}

/// A studio's job as the API creates it (input object stored, `files` row, escrow reservation,
/// `market_orders` row, `jobs` row): `items` lines, one unit each. Returns the job row.
pub async fn job(
    c: &mut PgConnection,
    js: &jetstream::Context,
    market: &str,
    owner: Uuid,
    studio: AccountId,
    items: u32,
    limit: i64,
    deadline: chrono::DateTime<chrono::Utc>,
) -> JobRow {
    let input: String = (0..items)
        .map(|i| format!("{{\"custom_id\":\"i{i}\",\"input\":\"line {i}\"}}\n"))
        .collect();
    let store = results::files_bucket(js, 1).await.unwrap();
    let sha = results::put_object(&store, input.clone().into_bytes())
        .await
        .unwrap();
    let file = Uuid::now_v7();
    diesel::sql_query(
        "INSERT INTO files (id, owner, purpose, sha256, bytes, lines, market) VALUES ($1, $2, 'batch', $3, $4, $5, $6)",
    )
    .bind::<diesel::sql_types::Uuid, _>(file)
    .bind::<diesel::sql_types::Uuid, _>(owner)
    .bind::<diesel::sql_types::Text, _>(&sha)
    .bind::<diesel::sql_types::BigInt, _>(input.len() as i64)
    .bind::<diesel::sql_types::Integer, _>(items as i32)
    .bind::<diesel::sql_types::Text, _>(market)
    .execute(c)
    .unwrap();
    let engine_order_id = orders::next_engine_order_id(c).unwrap();
    let (order_id, job_id) = (Uuid::now_v7(), Uuid::now_v7());
    escrow::reserve_bid(
        c,
        &escrow::Bid {
            order_id,
            studio_account: studio,
            quantity: items as i64,
            limit_price: limit,
            fee_bps: FEE_BPS,
        },
    )
    .unwrap();
    orders::insert(
        c,
        &orders::MarketOrder {
            engine_order_id,
            market: market.to_owned(),
            side: Side::Bid,
            order_id,
            account_id: studio.0,
            node_id: None,
            job_id: Some(job_id),
            accepted_seq: None,
        },
    )
    .unwrap();
    let now = chrono::Utc::now();
    let row = JobRow {
        id: job_id,
        owner,
        market: market.to_owned(),
        input_file: file,
        status: JobStatus::Queued,
        items: items as i32,
        items_per_unit: 1,
        units: items as i64,
        limit_price: limit,
        fee_bps: FEE_BPS as i32,
        deadline,
        order_id,
        engine_order_id: engine_order_id as i64,
        items_completed: 0,
        items_failed: 0,
        output_file: None,
        error_file: None,
        cancel_requested_at: None,
        created_at: now,
        updated_at: now,
        finished_at: None,
        metadata: None,
        model_id: None,
        model_sha256: None,
        time_in_force: gridbook_db::status::JobTimeInForce::Gtc,
        reject_reason: None,
    };
    diesel::insert_into(gridbook_db::schema::jobs::table)
        .values(&row)
        .execute(c)
        .unwrap();
    row
}

pub fn job_status(c: &mut PgConnection, id: Uuid) -> JobStatus {
    use gridbook_db::schema::jobs;
    jobs::table.find(id).select(jobs::status).first(c).unwrap()
}

/// The job's error file, one `(custom_id, code)` per line.
async fn error_lines(
    c: &mut PgConnection,
    js: &jetstream::Context,
    job: Uuid,
) -> Vec<(String, String)> {
    use gridbook_db::schema::{files, jobs};
    let sha: String = jobs::table
        .inner_join(files::table.on(jobs::error_file.eq(files::id.nullable())))
        .filter(jobs::id.eq(job))
        .select(files::sha256)
        .first(c)
        .unwrap();
    let store = results::files_bucket(js, 1).await.unwrap();
    let text = String::from_utf8(results::read_object(&store, &sha).await.unwrap()).unwrap();
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["custom_id"].as_str().unwrap().to_owned(),
                v["error"]["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn send(js: &jetstream::Context, subject: &str, cmd: &CommandKind, msg_id: Option<String>) {
    let mut m = PublishMessage::build().payload(serde_json::to_vec(cmd).unwrap().into());
    if let Some(id) = msg_id {
        m = m.message_id(id);
    }
    js.send_publish(subject.to_owned(), m)
        .await
        .unwrap()
        .await
        .unwrap();
}

/// The attack, end to end: a stranger publishes a Place ask straight on the command subject
/// (no `market_orders` row, no escrow, no node) below a provider's ask; a studio's 4-unit job
/// bid takes the stranger's 3 lots first and the provider's 1 lot after. The worker refuses the
/// stranger's fill as a dead letter and gives its 3 units back to the studio; the provider's
/// fill takes the job's last unit; a result forged by another node is refused too; the
/// provider's real (failed) result resolves its assignment, and the job finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_ask_on_nats_that_fills_a_job_bid_is_dead_lettered_its_units_released_and_the_job_finishes()
 {
    let db = fresh_db();
    let c = &mut db.conn();
    let market = unique_market("ATTACK");
    let tmp = TempDir::new("settlement-attack");
    let dir = tmp.path();
    let nats = Nats::start("settlement-attack").await;
    let js = nats.jetstream();
    let mut engine = Engine::start(
        &nats.access(),
        EngineConfig {
            engine_id: Some(format!("attack-{market}")),
            lease_secs: Some(3),
            dir: Some(dir.join("engine")),
            ..EngineConfig::markets(vec![Market::new(&market, FEE_BPS)])
        },
    );
    engine.wait_serving(&nats.client).await;
    let log = dir.join("worker.log");
    let _worker = gridbook_testkit::spawn_worker(
        &WorkerConfig {
            database_url: db.url().to_owned(),
            nats_url: nats.url.clone(),
            nkey_file: nats.access().nkey_file(gridbook_testkit::Service::Settlement),
            outbox_interval_ms: Some(20),
            ack_wait_secs: Some(2),
            // The provider's failed unit is refunded at once (not offered again): this test is
            // about the refused fill; re-offers are `redo.rs`'s.
            max_reoffers: Some(0),
            bin: Some(env!("CARGO_BIN_EXE_settlement-worker").into()),
            ..WorkerConfig::default()
        },
        &log,
    );
    // The result stream exists before the test publishes on it (the worker creates it too).
    results::ensure(&js, 1).await.unwrap();

    escrow::ensure_system_accounts(c, LEDGER).unwrap();
    let studio = funded(c, AccountCode::Studio, 1_000_000);
    let provider = funded(c, AccountCode::Provider, 0);
    let studio_user = user(c, "studio", studio);
    let provider_user = user(c, "provider", provider);
    let provider_node = node(c, provider_user);
    let money = money_in_platform(c);
    let deadline = chrono::Utc::now() + chrono::Duration::hours(1);
    let job = job(c, &js, &market, studio_user, studio, 4, 120, deadline).await;
    let ask = provider_ask(c, &market, provider, provider_node);
    assert_eq!(posted(c, studio), 1_000_000 - 4 * 123);

    let cmd_subject = subjects::market_cmd(&market);
    // The provider's ask, as the API's outbox sends it.
    send(
        &js,
        &cmd_subject,
        &gtc(ask, 2, Side::Ask, 100, 1),
        Some(format!("{market}.ask")),
    )
    .await;
    // The attacker: a raw Place ask on the command subject, an id nobody issued.
    const STRANGER: u64 = 7_000_000_000_000;
    send(
        &js,
        &cmd_subject,
        &gtc(STRANGER, 666, Side::Ask, 90, 3),
        None,
    )
    .await;
    // The job's bid, as the API's outbox sends it (GTD at the job's deadline).
    let bid = CommandKind::Place(Place {
        id: OrderId(job.engine_order_id as u64),
        account: matching_core::AccountId(1),
        owner: None,
        side: Side::Bid,
        price: Some(120),
        qty: 4,
        tif: TimeInForce::Gtd {
            expires_at: deadline.timestamp_millis() as u64,
        },
        post_only: false,
        budget: None,
        stp: None,
    });
    send(&js, &cmd_subject, &bid, Some(format!("{market}.bid"))).await;

    let settled = |c: &mut PgConnection| {
        dead_letter::list(c, 10).unwrap().len() == 1
            && count(c, "SELECT count(*) AS n FROM job_assignments") == 1
    };
    let start = Instant::now();
    while !settled(c) {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "the fills did not settle; worker log: {}, engine log: {}",
            log.display(),
            engine.log().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The dead letter: the stranger's fill, its reason, its place and the 3 units released.
    let d: DeadLetterRow = dead_letter::list(c, 10).unwrap().remove(0);
    assert_eq!(d.reason, DeadLetterReason::UnknownOrder, "{}", d.detail);
    assert_eq!(d.escrow_action, DeadLetterEscrow::Released);
    assert_eq!((d.order_id, d.job_id), (Some(job.order_id), Some(job.id)));
    assert_eq!((d.unit_start, d.units), (Some(0), 3));
    assert_eq!(
        (d.stream.as_str(), d.subject.as_str()),
        (streams::EVENTS, subjects::market_evt(&market).as_str())
    );
    assert!(d.stream_seq.is_some_and(|s| s > 0));
    assert_eq!(d.market.as_deref(), Some(market.as_str()));
    assert_eq!(d.event_id, format!("{market}.{}", d.event_seq.unwrap()));
    let ev: matching_core::Event = serde_json::from_slice(&d.payload).unwrap();
    let EventKind::Fill {
        maker, qty, price, ..
    } = ev.kind
    else {
        panic!("the dead letter holds the fill: {ev:?}")
    };
    assert_eq!((maker, qty, price), (OrderId(STRANGER), 3, 90));
    // The studio's escrow for those units is released; the provider's fill holds one unit at
    // 100 (+ ⌈2.5⌉ fee), its price improvement back: 1,000,000 − 103.
    let order = escrow::get_order(c, job.order_id).unwrap();
    assert_eq!(order.quantity_open, 0, "no unit is left open");
    assert_eq!(posted(c, studio), 1_000_000 - 103);
    // The provider's fill took the job's next unit: the last one, line 3.
    let (unit_start, units, item_start): (i64, i64, i32) = {
        use gridbook_db::schema::job_assignments as a;
        a::table
            .select((a::unit_start, a::units, a::item_start))
            .first(c)
            .unwrap()
    };
    assert_eq!((unit_start, units, item_start), (3, 1, 3));
    assert_healthy(c);
    assert_eq!(money_in_platform(c), money);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("dead letter") && logged.contains("unknown_order"),
        "a warning names the reason: {logged}"
    );

    // A result forged by another node is refused (recorded, acked); the provider's own result
    // (it could not run the work) resolves the assignment and the studio is refunded.
    let assignment: Uuid = {
        use gridbook_db::schema::job_assignments as a;
        a::table.select(a::id).first(c).unwrap()
    };
    let result = ResultMsg {
        assignment_id: assignment,
        job_id: job.id,
        outcome: NodeOutcome::Failed {
            reason: "no GPU today".into(),
        },
        manifest: serde_json::json!({}),
        elapsed_ms: 1,
    };
    // Who sent a result is its subject (`node.<id>.result`): the other node's subject first.
    for node_id in [Uuid::now_v7(), provider_node] {
        js.publish(
            subjects::node_result(&node_id.to_string()),
            serde_json::to_vec(&result).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let start = Instant::now();
    while !job_status(c, job.id).is_terminal() {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "the job did not finish (status {}); worker log: {}",
            job_status(c, job.id),
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(job_status(c, job.id), JobStatus::Failed);
    let mut dead = dead_letter::list(c, 10).unwrap();
    dead.sort_by_key(|d| d.created_at);
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(
        (
            dead[1].reason,
            dead[1].consumer.as_str(),
            dead[1].stream.as_str()
        ),
        (
            DeadLetterReason::ForeignResult,
            results::VERIFIER_CONSUMER,
            streams::RESULTS
        )
    );
    assert_eq!(
        error_lines(c, &js, job.id).await,
        [
            ("i0".to_owned(), "fill_refused".to_owned()),
            ("i1".to_owned(), "fill_refused".to_owned()),
            ("i2".to_owned(), "fill_refused".to_owned()),
            ("i3".to_owned(), "assignment_failed".to_owned()),
        ]
    );
    // Nobody was paid for unrun work; every unit's money is back with the studio.
    assert_eq!(posted(c, studio), 1_000_000);
    assert_eq!(posted(c, provider), 0);
    assert_healthy(c);
    assert_eq!(money_in_platform(c), money);
}

/// Units still open long after a job's deadline (the engine's expiry never settled: say its
/// message was dead-lettered) are released by the finisher, and the job finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_left_open_long_after_the_deadline_are_released_and_the_job_finishes() {
    let db = fresh_db();
    let c = &mut db.conn();
    let market = unique_market("STUCK");
    let js = jetstream().await;
    escrow::ensure_system_accounts(c, LEDGER).unwrap();
    let studio = funded(c, AccountCode::Studio, 10_000);
    let owner = user(c, "studio", studio);
    let money = money_in_platform(c);
    let deadline = chrono::Utc::now()
        - chrono::Duration::milliseconds(gridbook_settlement::jobs::STUCK_AFTER_DEADLINE_MS as i64)
        - chrono::Duration::minutes(1);
    let stuck = job(c, &js, &market, owner, studio, 2, 100, deadline).await;
    // A second job whose deadline has just passed: its open units are not stuck yet.
    let fresh_deadline = chrono::Utc::now() - chrono::Duration::seconds(1);
    let recent = job(c, &js, &market, owner, studio, 1, 100, fresh_deadline).await;
    assert_eq!(posted(c, studio), 10_000 - 3 * 103);

    let worker = tokio::spawn(gridbook_settlement::run(settings(db.url(), &market)));
    wait_until(Duration::from_secs(20), "the stuck job to finish", || {
        job_status(c, stuck.id).is_terminal()
    })
    .await;
    assert_eq!(job_status(c, stuck.id), JobStatus::Expired);
    // One more round of the finisher (it runs every second) for the other job.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        escrow::get_order(c, stuck.order_id).unwrap().quantity_open,
        0
    );
    assert_eq!(
        error_lines(c, &js, stuck.id).await,
        [
            ("i0".to_owned(), "not_run".to_owned()),
            ("i1".to_owned(), "not_run".to_owned())
        ]
    );
    assert!(
        !job_status(c, recent.id).is_terminal(),
        "the engine may still expire it"
    );
    assert_eq!(
        escrow::get_order(c, recent.order_id).unwrap().quantity_open,
        1
    );
    assert_eq!(posted(c, studio), 10_000 - 103);
    assert_healthy(c);
    assert_eq!(money_in_platform(c), money);
    worker.abort();
    delete_consumer(&js, &market).await;
}
