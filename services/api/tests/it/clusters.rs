//! Identity clusters (issue 16): provider accounts seen from one network (/24) or reporting one
//! hardware fingerprint are one cluster — one anti-whale owner on the engine, one probation
//! cap — and a client cannot claim another's network with a header the API does not trust.

use gridbook_testkit::{TestApp, TestUser};
use serde_json::{Value, json};

use crate::provider::{passed_node, post_ask};

async fn json_of(r: reqwest::Response) -> Value {
    let status = r.status();
    let body = r.text().await.unwrap();
    assert!(status.is_success(), "HTTP {status}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// A credential for `node` asked for from `ip` (as the proxy reports it): marks the network.
async fn seen_from(app: &TestApp, p: &TestUser, node: &str, ip: &str) {
    let r = app
        .http
        .post(app.url(&format!("/v1/nodes/{node}/credentials")))
        .header("Authorization", p.bearer())
        .header("X-Forwarded-For", ip)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

async fn cluster(app: &TestApp, p: &TestUser) -> Value {
    json_of(app.get_as(p, "/v1/cluster").await).await
}

/// The `owner` of the Place commands queued for `user`'s asks.
fn ask_owners(app: &TestApp, engine_account: u64) -> Vec<u64> {
    use gridbook_db::diesel::{QueryDsl, RunQueryDsl};
    use gridbook_db::schema::outbox;
    let mut c = app.db.conn();
    let rows: Vec<Value> = outbox::table.order(outbox::created_at).select(outbox::payload).load(&mut c).unwrap();
    rows.iter()
        .filter_map(|p| p.get("place"))
        .filter(|p| p["side"] == "ask" && p["account"] == engine_account)
        .map(|p| p["owner"].as_u64().expect("an ask names its owner"))
        .collect()
}

fn engine_account(app: &TestApp, user: &TestUser) -> u64 {
    use gridbook_db::diesel::{ExpressionMethods, QueryDsl, RunQueryDsl};
    use gridbook_db::schema::users;
    let mut c = app.db.conn();
    let n: i64 = users::table.filter(users::id.eq(user.id)).select(users::engine_account).first(&mut c).unwrap();
    n as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_from_one_network_or_machine_are_one_owner_and_share_the_probation_cap() {
    let app = TestApp::spawn_with(|s| {
        s.identity.trust_forwarded_for = true;
        s.limits.probation_cluster_ask_qty = 150;
    })
    .await;
    // A and B come from one /24; C from another.
    let (a, b, c) = (app.signup("provider").await, app.signup("provider").await, app.signup("provider").await);
    let (na, nb, nc) = (passed_node(&app, &a).await, passed_node(&app, &b).await, passed_node(&app, &c).await);
    seen_from(&app, &a, &na, "203.0.113.5").await;
    seen_from(&app, &b, &nb, "203.0.113.77").await;
    seen_from(&app, &c, &nc, "198.51.100.1").await;
    let (ca, cb, cc) = (cluster(&app, &a).await, cluster(&app, &b).await, cluster(&app, &c).await);
    assert_eq!(ca["accounts"], 2, "{ca}");
    assert_eq!(ca["owner"], cb["owner"], "{ca} {cb}");
    assert_eq!(ca["marks"][0]["value"], "203.0.113.0/24", "{ca}");
    assert_eq!(cc["accounts"], 1, "{cc}");
    let (ea, eb, ec) = (engine_account(&app, &a), engine_account(&app, &b), engine_account(&app, &c));
    assert_eq!(ca["owner"], ea.min(eb), "the cluster's owner is its smallest engine account");
    assert_eq!(cc["owner"], ec);

    // Probation: each node may offer 100, but A's and B's probation nodes together only 150.
    assert_eq!(post_ask(&app, &a, &na, 40, 100).await.status(), 201);
    let r = post_ask(&app, &b, &nb, 40, 60).await;
    assert_eq!(r.status(), 409);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "probation_cap", "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("identity cluster (2 accounts"), "{e}");
    assert_eq!(post_ask(&app, &b, &nb, 40, 50).await.status(), 201);
    assert_eq!(post_ask(&app, &c, &nc, 40, 100).await.status(), 201, "C is its own cluster");

    // The engine sees one owner for A's and B's asks (the anti-whale cap counts them together).
    let owner = ea.min(eb);
    assert_eq!(ask_owners(&app, ea), [owner]);
    assert_eq!(ask_owners(&app, eb), [owner]);
    assert_eq!(ask_owners(&app, ec), [ec]);

    // One machine: D and E report one hardware fingerprint at registration.
    let fp = "ab".repeat(32);
    let (d, e) = (app.signup("provider").await, app.signup("provider").await);
    for p in [&d, &e] {
        let r = app
            .post_as(p, "/v1/nodes", &json!({"name": "n", "gpu_model": "RTX 4090", "vram_mb": 24000, "region": "eu", "hardware_fingerprint": fp}))
            .await;
        assert_eq!(r.status(), 201);
    }
    assert_eq!(cluster(&app, &d).await["accounts"], 2);
    let r = app
        .post_as(&d, "/v1/nodes", &json!({"name": "n", "gpu_model": "x", "vram_mb": 1, "region": "eu", "hardware_fingerprint": "not hex"}))
        .await;
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["field"], "hardware_fingerprint", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_for_header_is_ignored_unless_the_operator_trusts_its_proxy() {
    // Default settings: the TCP peer (loopback here, which marks nothing) decides, not a header.
    let app = TestApp::spawn().await;
    let (a, b) = (app.signup("provider").await, app.signup("provider").await);
    let (na, nb) = (passed_node(&app, &a).await, passed_node(&app, &b).await);
    seen_from(&app, &a, &na, "203.0.113.5").await;
    seen_from(&app, &b, &nb, "203.0.113.6").await;
    let ca = cluster(&app, &a).await;
    assert_eq!(ca["accounts"], 1, "a client-sent header linked accounts: {ca}");
    assert!(ca["marks"].as_array().unwrap().is_empty(), "{ca}");
    // Studios have no cluster.
    let s = app.signup("studio").await;
    assert_eq!(app.get_as(&s, "/v1/cluster").await.status(), 403);
}
