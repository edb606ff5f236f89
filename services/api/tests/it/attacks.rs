//! Providers, studios and anonymous clients are strangers (issue 11): every attack found by
//! trying the product with only a provider account and the NATS URL, tried again against the
//! real stack (the market's nats-server with its auth callout, the engine, the worker, the API).
//! Each attempt must be refused, visible in the logs, and lose nothing already accepted.

use std::time::{Duration, Instant};

use futures::StreamExt;
use gridbook_testkit::{Stack, TestApp, TestUser};
use gridbook_wire::{streams, subjects};
use serde_json::{Value, json};

use crate::provider::{passed_node, post_ask};

const MARKET: &str = "EMBED-MINILM-L6";

async fn json_of(r: reqwest::Response) -> Value {
    r.json().await.unwrap()
}

async fn credential(app: &TestApp, provider: &TestUser, node: &str) -> String {
    let r = app
        .post_as(
            provider,
            &format!("/v1/nodes/{node}/credentials"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 201);
    json_of(r).await["token"].as_str().unwrap().to_owned()
}

/// A node's own connection: its credential as token, its inbox prefix; every server error
/// (permission violations) collected.
async fn connect_node(
    url: &str,
    node: &str,
    token: &str,
) -> (
    async_nats::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_token(token.to_owned())
        .custom_inbox_prefix(subjects::node_inbox_prefix(node))
        .event_callback(move |e| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(e.to_string());
            }
        })
        .connect(url)
        .await
        .expect("a node with a valid credential connects");
    (client, rx)
}

/// Waits for a server error event containing `what`.
async fn violation(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    what: &str,
) -> String {
    let start = Instant::now();
    loop {
        let left = Duration::from_secs(10).saturating_sub(start.elapsed());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(e)) if e.contains(what) => return e,
            Ok(Some(_)) => continue,
            _ => panic!("no server error containing {what:?} within 10 s"),
        }
    }
}

fn corpus(n: usize) -> String {
    (0..n)
        .map(|i| {
            json!({"custom_id": format!("v-{i}"), "input": format!("victim text {i}")}).to_string()
                + "\n"
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_valid_credentials_can_do_nothing_but_its_own_work() {
    let stack = Stack::start("attacks").await;
    let app = &stack.app;

    // The victims: a studio's job of 1,500 items (2 units of 1,000) of which provider B's node
    // took one unit (its ask of 1); the other unit's bid rests on the book.
    let victim_provider = app.signup("provider").await;
    let victim_node = passed_node(app, &victim_provider).await;
    assert_eq!(
        post_ask(app, &victim_provider, &victim_node, 40, 1)
            .await
            .status(),
        201
    );
    let studio = app.signup("studio").await;
    app.credit(&studio, 100_000).await;
    let file = json_of(
        app.http
            .post(app.url(&format!("/v1/files?purpose=batch&market={MARKET}")))
            .header("Authorization", studio.bearer())
            .header("Content-Type", "application/jsonl")
            .body(corpus(1500))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let deadline = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let job = json_of(
        app.post_as(&studio, "/v1/jobs", &json!({"market": MARKET, "input_file": file["id"], "limit_price": 50, "deadline": deadline}))
            .await,
    )
    .await;
    let job_id = job["id"].as_str().unwrap().to_owned();
    // Wait for the victim node's assignment (the fill) and the rest of the bid resting.
    let start = Instant::now();
    let victim_assignment = loop {
        let a = json_of(app.get_as(&victim_provider, "/v1/assignments").await).await;
        if let Some(id) = a["data"][0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no assignment: {a}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let book_before_first = ();
    let start = Instant::now();
    let book_before = loop {
        let b = json_of(
            app.http
                .get(app.url(&format!("/v1/markets/{MARKET}/book")))
                .send()
                .await
                .unwrap(),
        )
        .await;
        if b["bids"].as_array().is_some_and(|b| !b.is_empty()) {
            break b;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the rest of the bid never rested: {b}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = book_before_first;

    // The attacker: another provider's node, with a valid credential.
    let attacker = app.signup("provider").await;
    let node = passed_node(app, &attacker).await;
    let token = credential(app, &attacker, &node).await;
    let (nats, mut events) = connect_node(&stack.nats.url, &node, &token).await;
    let service = &stack.nats.client;

    // 1. Read every market's raw events.
    let mut evt = nats.subscribe(subjects::ALL_MARKET_EVTS).await.unwrap();
    violation(&mut events, "Permissions Violation for Subscription").await;
    service
        .publish(subjects::market_evt(MARKET), "probe".into())
        .await
        .unwrap();
    service.flush().await.unwrap();
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), evt.next()).await {
        panic!("a node received a market event on {}", m.subject);
    }

    // 2. Publish a command: cancel the studio's resting bid (engine ids are small integers).
    let cancel = json!({"Cancel": {"id": 1, "account": 1}});
    let cmds_before = stack
        .nats
        .jetstream()
        .get_stream(streams::COMMANDS)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    nats.publish(subjects::market_cmd(MARKET), cancel.to_string().into())
        .await
        .unwrap();
    violation(&mut events, "Permissions Violation for Publish").await;
    let cmds_after = stack
        .nats
        .jetstream()
        .get_stream(streams::COMMANDS)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(
        cmds_after, cmds_before,
        "the command never reached the stream"
    );

    // 3. The object store: neither list nor read.
    let njs = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(nats.clone());
    assert!(
        njs.get_object_store(streams::FILES_BUCKET).await.is_err(),
        "a node opened the files bucket"
    );
    assert!(
        njs.get_stream(streams::COMMANDS).await.is_err(),
        "a node read stream info"
    );

    // 4. Another node's subjects: subscribe, publish a result and a heartbeat for it.
    let _other = nats
        .subscribe(format!("node.{victim_node}.>"))
        .await
        .unwrap();
    violation(&mut events, "Permissions Violation for Subscription").await;
    let forged = json!({"assignment_id": victim_assignment, "job_id": job_id, "status": "failed", "reason": "forged", "manifest": {}, "elapsed_ms": 1});
    nats.publish(
        subjects::node_result(&victim_node),
        forged.to_string().into(),
    )
    .await
    .unwrap();
    violation(&mut events, "Permissions Violation for Publish").await;
    nats.publish(subjects::node_heartbeat(&victim_node), "{}".into())
        .await
        .unwrap();
    violation(&mut events, "Permissions Violation for Publish").await;
    let results = stack
        .nats
        .jetstream()
        .get_stream(streams::RESULTS)
        .await
        .unwrap();
    assert!(
        results
            .get_last_raw_message_by_subject(&subjects::node_result(&victim_node))
            .await
            .is_err(),
        "a forged result reached the results stream"
    );

    // 5. Another node's assignment data: a grant, its input, an upload.
    let r = app
        .http
        .post(app.url(&format!("/v1/assignments/{victim_assignment}/grant")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());
    let forged_grant = format!("gbg_{}", "00".repeat(72));
    let r = app
        .http
        .get(app.url(&format!("/v1/assignments/{victim_assignment}/input")))
        .bearer_auth(&forged_grant)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .http
        .put(app.url(&format!("/v1/assignments/{victim_assignment}/output")))
        .bearer_auth(&token)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a node credential is not a grant");

    // 6. The victim node's own grant works (the boundary is per node, not a wall for everyone),
    //    and only for its assignment.
    let victim_token = credential(app, &victim_provider, &victim_node).await;
    let g = json_of(
        app.http
            .post(app.url(&format!("/v1/assignments/{victim_assignment}/grant")))
            .bearer_auth(&victim_token)
            .send()
            .await
            .unwrap(),
    )
    .await;
    let gtoken = g["token"]
        .as_str()
        .expect("the assigned node gets a grant")
        .to_owned();
    let input = app
        .http
        .get(app.url(&format!("/v1/assignments/{victim_assignment}/input")))
        .bearer_auth(&gtoken)
        .send()
        .await
        .unwrap();
    assert_eq!(input.status(), 200);
    let lines = input.text().await.unwrap();
    assert_eq!(
        lines.lines().count() as u64,
        g["items"].as_u64().unwrap(),
        "only its shard: {lines}"
    );
    assert_eq!(
        lines.lines().count(),
        1000 + 10,
        "one unit's lines and its canaries (⌊1000 × 1 % + u⌋ = 10), not the whole job file"
    );
    // Lines are named by position, never by the studio's ids; the job's first item is among
    // them (the first line, unless a canary sits before it).
    assert!(!lines.contains("v-"), "the studio's custom_ids never reach the node");
    assert!(lines.lines().take(11).any(|l| l.contains(r#""input":"victim text 0""#)), "the assignment's first item");
    assert!(lines.lines().enumerate().all(|(p, l)| l.starts_with(&format!(r#"{{"custom_id":"i{p}","#))), "ids are positions");
    let r = app
        .http
        .get(app.url(&format!("/v1/assignments/{}/input", uuid::Uuid::now_v7())))
        .bearer_auth(&gtoken)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a grant is bound to its assignment");

    // 7. An expired credential: refused by NATS and by the API.
    let expired = credential(app, &attacker, &node).await;
    {
        use gridbook_db::diesel::{self, ExpressionMethods, QueryDsl, RunQueryDsl};
        use gridbook_db::schema::node_credentials as nc;
        use sha2::Digest;
        let hash = sha2::Sha256::digest(expired.as_bytes()).to_vec();
        diesel::update(nc::table.filter(nc::token_sha256.eq(hash)))
            .set((
                nc::created_at.eq(chrono::Utc::now() - chrono::Duration::hours(2)),
                nc::expires_at.eq(chrono::Utc::now() - chrono::Duration::hours(1)),
            ))
            .execute(&mut app.db.conn())
            .unwrap();
    }
    let refused = async_nats::ConnectOptions::with_token(expired.clone())
        .connect(&stack.nats.url)
        .await;
    assert!(refused.is_err(), "an expired credential connected");
    let r = app
        .http
        .post(app.url(&format!("/v1/assignments/{victim_assignment}/grant")))
        .bearer_auth(&expired)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // 8. A studio and an anonymous client: no NATS at all, no node routes.
    assert!(
        async_nats::ConnectOptions::with_token(studio.key.clone())
            .connect(&stack.nats.url)
            .await
            .is_err()
    );
    assert!(
        async_nats::connect(&stack.nats.url).await.is_err(),
        "an anonymous client connected"
    );
    let r = app
        .http
        .post(app.url(&format!("/v1/assignments/{victim_assignment}/grant")))
        .header("Authorization", studio.bearer())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .http
        .get(app.url(&format!("/v1/assignments/{victim_assignment}/input")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // 9. The node is deleted: its live connection is closed and it cannot come back.
    let r = app
        .http
        .delete(app.url(&format!("/v1/nodes/{node}")))
        .header("Authorization", attacker.bearer())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let start = Instant::now();
    while nats.connection_state() == async_nats::connection::State::Connected {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the deleted node's connection stayed open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        async_nats::ConnectOptions::with_token(token.clone())
            .connect(&stack.nats.url)
            .await
            .is_err(),
        "a deleted node's credential connected"
    );
    let r = app
        .post_as(
            &attacker,
            &format!("/v1/nodes/{node}/credentials"),
            &json!({}),
        )
        .await;
    assert_eq!(r.status(), 409, "a deleted node gets no new credential");

    // Nothing already accepted was lost: the studio's job, its resting bid and the victim's open
    // assignment are as they were.
    let j = json_of(app.get_as(&studio, &format!("/v1/jobs/{job_id}")).await).await;
    assert!(j["status"] == "queued" || j["status"] == "running", "{j}");
    let book = json_of(
        app.http
            .get(app.url(&format!("/v1/markets/{MARKET}/book")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(book["bids"], book_before["bids"], "the bid is untouched");
    let a = json_of(app.get_as(&victim_provider, "/v1/assignments").await).await;
    assert_eq!(a["data"][0]["status"], "assigned");

    // Every attempt is in the server's log.
    let log = std::fs::read_to_string(stack.nats.log()).unwrap();
    for what in [
        "Subscription Violation",
        "Publish Violation",
        "authentication error",
    ] {
        assert!(log.contains(what), "nats-server's log names {what:?}");
    }
}

/// What settlement refuses is recorded, and an admin can read it (nobody else can).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_read_the_dead_letters_settlement_recorded() {
    let stack = Stack::start("dead-letters").await;
    let app = &stack.app;
    // Garbage where the engine's events go (only a market service could publish it now).
    stack
        .nats
        .jetstream()
        .publish(subjects::market_evt(MARKET), "not an event frame".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let admin = app.admin().await;
    let start = Instant::now();
    let list = loop {
        let l = json_of(app.get_as(&admin, "/v1/admin/dead-letters").await).await;
        if l["data"].as_array().is_some_and(|d| !d.is_empty()) {
            break l;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no dead letter: {l}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let d = &list["data"][0];
    assert_eq!(d["reason"], "undecodable", "{d}");
    assert_eq!(d["subject"], subjects::market_evt(MARKET));
    assert_eq!(d["escrow_action"], "untouched");
    use base64::Engine as _;
    let payload = base64::engine::general_purpose::STANDARD.decode(d["payload_b64"].as_str().unwrap()).unwrap();
    assert_eq!(payload, b"not an event frame");
    let studio = app.signup("studio").await;
    assert_eq!(app.get_as(&studio, "/v1/admin/dead-letters").await.status(), 403);
}
