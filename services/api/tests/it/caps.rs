//! Per-account caps under concurrency: the attack created 115 live keys and 108 nodes against
//! caps of 100 by sending the creations at once (each request counted before any other had
//! inserted). Creations of one account now serialise on the account's row.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use gridbook_testkit::{TestApp, TestUser};

async fn statuses(answers: Vec<reqwest::Response>) -> BTreeMap<u16, usize> {
    let mut by = BTreeMap::new();
    for r in answers {
        let status = r.status().as_u16();
        if status == 409 {
            let v: Value = r.json().await.unwrap();
            assert!(
                matches!(
                    v["error"]["code"].as_str(),
                    Some("too_many_keys" | "too_many_nodes")
                ),
                "{v}"
            );
        }
        *by.entry(status).or_insert(0) += 1;
    }
    by
}

async fn post_many(
    app: &TestApp,
    user: &TestUser,
    path: &str,
    bodies: Vec<Value>,
) -> Vec<reqwest::Response> {
    futures::future::join_all(bodies.iter().map(|b| app.post_as(user, path, b))).await
}

#[tokio::test]
async fn the_key_cap_holds_under_concurrent_creations() {
    let app = TestApp::spawn().await;
    // The user already holds one key (the testkit's).
    let user = app.signup("studio").await;
    let cap = gridbook_api::accounts::MAX_KEYS_PER_USER as usize;
    let bodies = (0..cap + 30)
        .map(|i| json!({"name": format!("k{i}"), "scopes": ["read"]}))
        .collect();
    let by = statuses(post_many(&app, &user, "/v1/keys", bodies).await).await;
    assert_eq!(by.get(&201).copied().unwrap_or(0), cap - 1, "{by:?}");
    assert_eq!(by.get(&409).copied().unwrap_or(0), 31, "{by:?}");
    let r = app.get_as(&user, "/v1/keys").await;
    let v: Value = r.json().await.unwrap();
    let live = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["revoked_at"].is_null())
        .count();
    assert_eq!(live, cap);
}

#[tokio::test]
async fn the_node_cap_holds_under_concurrent_registrations() {
    let app = TestApp::spawn().await;
    let provider = app.signup("provider").await;
    let cap = app.app.settings.limits.nodes_per_provider as usize;
    let bodies = (0..cap + 30)
        .map(|i| json!({"name": format!("n{i}"), "gpu_model": "RTX 4090", "vram_mb": 24000, "region": "eu-west"}))
        .collect();
    let by = statuses(post_many(&app, &provider, "/v1/nodes", bodies).await).await;
    assert_eq!(by.get(&201).copied().unwrap_or(0), cap, "{by:?}");
    assert_eq!(by.get(&409).copied().unwrap_or(0), 30, "{by:?}");
    let r = app.get_as(&provider, "/v1/nodes?limit=100").await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), cap.min(100));
    assert!(v["next_before"].is_null(), "more than {cap} nodes: {v}");
}
