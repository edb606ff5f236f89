//! The agent's HTTP side (register, challenge, asks, book) against a small in-test fake of the
//! marketplace API that speaks the documented contract. When `services/api` serves `/v1/nodes`
//! and `/v1/asks`, the same calls run against the real app (see executor/README.md, "Agent").

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use executor::agent::api::ApiClient;
use executor::agent::config::AgentSettings;
use executor::agent::pricing::{Action, Policy};
use executor::agent::{AgentError, SharedState, bootstrap, cancel_asks, price_once};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::common;

#[derive(Default)]
struct Fake {
    calls: Vec<(String, String, Value, Option<String>)>,
    best_ask: Option<u64>,
    fail_challenge: bool,
    node: Option<Uuid>,
    /// The leaves of the node's commitment.
    leaves: Vec<String>,
    asks: HashMap<String, Value>,
}

const KEY: &str = "gbk_test_key";
/// The sample the fake draws from every commitment.
const SAMPLE: [usize; 4] = [3, 17, 0, 31];

async fn handle(
    fake: Arc<Mutex<Fake>>,
    method: &str,
    path: &str,
    body: Value,
    auth: Option<String>,
    idem: Option<String>,
) -> (u16, Value) {
    fake.lock()
        .unwrap()
        .calls
        .push((method.into(), path.into(), body.clone(), idem));
    if auth.as_deref() != Some(&format!("Bearer {KEY}")) {
        return (
            401,
            json!({"error": {"code": "unauthorized", "message": "bad key", "field": null}}),
        );
    }
    let parts: Vec<&str> = path
        .split('?')
        .next()
        .unwrap()
        .trim_matches('/')
        .split('/')
        .collect();
    match (method, parts.as_slice()) {
        ("POST", ["v1", "nodes"]) => {
            let id = Uuid::new_v4();
            fake.lock().unwrap().node = Some(id);
            (
                201,
                json!({"id": id, "status": "probation", "challenge": {"nonce": "n-42", "workload": "embed", "items": 32,
                    "sample": SAMPLE.len(), "class": "cpu", "bound_ms": 7000, "committed": false}, "challenge_status": "pending"}),
            )
        }
        ("POST", ["v1", "nodes", id, "challenge", "commitment"]) => {
            assert_eq!(
                Some(id.to_string()),
                fake.lock().unwrap().node.map(|n| n.to_string())
            );
            assert_eq!(body["nonce"], "n-42");
            assert_eq!(body["device"], "cpu");
            let leaves: Vec<String> = serde_json::from_value(body["leaves"].clone()).unwrap();
            assert_eq!(leaves.len(), 32);
            assert!(leaves.iter().all(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit())));
            fake.lock().unwrap().leaves = leaves;
            (200, json!({"sample": SAMPLE}))
        }
        ("POST", ["v1", "nodes", id, "challenge"]) => {
            assert_eq!(
                Some(id.to_string()),
                fake.lock().unwrap().node.map(|n| n.to_string())
            );
            let answer: Vec<Vec<f32>> = serde_json::from_value(body["embeddings"].clone()).unwrap();
            assert_eq!(body["nonce"], "n-42");
            assert!(body["elapsed_ms"].is_u64());
            assert_eq!(body["device"], "cpu");
            // The market's check: each revealed vector is the committed one, and right.
            let leaves = fake.lock().unwrap().leaves.clone();
            let sample: Vec<executor::challenge::Sampled> = SAMPLE
                .iter()
                .map(|&i| {
                    let mut leaf = [0u8; 32];
                    hex::decode_to_slice(&leaves[i], &mut leaf).unwrap();
                    executor::challenge::Sampled { index: i, leaf }
                })
                .collect();
            let reference = tokio::task::spawn_blocking(|| {
                let texts = executor::challenge::inputs_at("n-42", &SAMPLE).unwrap();
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                crate::embed::embedder().embed(&refs).unwrap()
            })
            .await
            .unwrap();
            let verdict = executor::challenge::verify_sample(&sample, &reference, &answer);
            let failed = fake.lock().unwrap().fail_challenge;
            match (verdict, failed) {
                (Ok(()), false) => (200, json!({"challenge_status": "passed", "challenge_timing": "fits", "challenge_ms": 900})),
                (Ok(()), true) => (
                    200,
                    json!({"challenge_status": "failed", "reason": "too slow"}),
                ),
                (Err(e), _) => (200, json!({"challenge_status": "failed", "reason": e})),
            }
        }
        ("POST", ["v1", "asks"]) => {
            let id = format!("ask-{}", fake.lock().unwrap().asks.len() + 1);
            fake.lock().unwrap().asks.insert(id.clone(), body.clone());
            (
                201,
                json!({"id": id, "market": body["market"], "price": body["price"], "qty": body["qty"]}),
            )
        }
        ("PATCH", ["v1", "asks", id]) | ("DELETE", ["v1", "asks", id]) => {
            if fake.lock().unwrap().asks.contains_key(*id) {
                if method == "DELETE" {
                    fake.lock().unwrap().asks.remove(*id);
                }
                (200, json!({"id": id}))
            } else {
                (
                    409,
                    json!({"error": {"code": "ask_not_open", "message": "the ask is filled", "field": null}}),
                )
            }
        }
        ("GET", ["v1", "markets", _m, "book"]) => {
            let asks: Vec<Value> = fake
                .lock()
                .unwrap()
                .best_ask
                .map(|p| json!({"price": p.to_string(), "qty": 3}))
                .into_iter()
                .collect();
            (200, json!({"seq": 7, "bids": [], "asks": asks}))
        }
        _ => (
            404,
            json!({"error": {"code": "not_found", "message": path, "field": null}}),
        ),
    }
}

/// A one-request-per-connection HTTP/1.1 server (enough for reqwest with `Connection: close`).
async fn serve(fake: Arc<Mutex<Fake>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let fake = fake.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let head_end = loop {
                    let n = sock.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let mut lines = head.lines();
                let mut first = lines.next().unwrap().split(' ');
                let (method, path) = (
                    first.next().unwrap().to_owned(),
                    first.next().unwrap().to_owned(),
                );
                let mut headers = HashMap::new();
                for l in lines {
                    if let Some((k, v)) = l.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .map_or(0, |v| v.parse().unwrap());
                while buf.len() < head_end + len {
                    let n = sock.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body: Value = if len == 0 {
                    Value::Null
                } else {
                    serde_json::from_slice(&buf[head_end..head_end + len]).unwrap()
                };
                let (status, out) = handle(
                    fake,
                    &method,
                    &path,
                    body,
                    headers.get("authorization").cloned(),
                    headers.get("idempotency-key").cloned(),
                )
                .await;
                let out = out.to_string();
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{out}",
                    out.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

fn settings(api: &str, state_file: std::path::PathBuf) -> AgentSettings {
    AgentSettings {
        api_url: Some(api.into()),
        state_file,
        ..AgentSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_answers_the_challenge_and_keeps_asks() {
    let fake = Arc::new(Mutex::new(Fake::default()));
    let url = serve(fake.clone()).await;
    let dir = common::tmp_dir("agent-api");
    let cfg = settings(&url, dir.join("state.json"));
    let api = ApiClient::new(&url, KEY).unwrap();
    assert!(
        !format!("{api:?}").contains(KEY),
        "the key is never printed"
    );
    let workloads = crate::agent::workloads();
    let state = SharedState::load(&cfg.state_file).unwrap();

    let node = bootstrap(&api, &cfg, &state, &workloads).await.unwrap();
    assert_eq!(Some(node), fake.lock().unwrap().node);
    let saved: Value = serde_json::from_slice(&std::fs::read(&cfg.state_file).unwrap()).unwrap();
    assert_eq!(saved["node_id"], json!(node));
    assert_eq!(saved["challenge_passed"], true);
    // A restart does not register again.
    let calls = fake.lock().unwrap().calls.len();
    let state2 = SharedState::load(&cfg.state_file).unwrap();
    assert_eq!(
        bootstrap(&api, &cfg, &state2, &workloads).await.unwrap(),
        node
    );
    assert_eq!(fake.lock().unwrap().calls.len(), calls);

    // Fixed: place once, then keep.
    let mut keys = HashMap::new();
    let fixed = Policy::Fixed { price: 100, qty: 4 };
    let a = price_once(&api, node, "EMBED-MINILM-L6", &fixed, &state, &mut keys)
        .await
        .unwrap();
    assert_eq!(a, Action::Place { price: 100, qty: 4 });
    let a = price_once(&api, node, "EMBED-MINILM-L6", &fixed, &state, &mut keys)
        .await
        .unwrap();
    assert_eq!(a, Action::Keep);
    // Follow: undercut the best ask, hold when it is ours, follow it down.
    let follow = Policy::Follow {
        floor: 50,
        ceiling: 200,
        undercut_ticks: 2,
        qty: 2,
    };
    fake.lock().unwrap().best_ask = Some(120);
    let a = price_once(&api, node, "RENDER-TERRAIN-128", &follow, &state, &mut keys)
        .await
        .unwrap();
    assert_eq!(a, Action::Place { price: 118, qty: 2 });
    fake.lock().unwrap().best_ask = Some(118);
    let a = price_once(&api, node, "RENDER-TERRAIN-128", &follow, &state, &mut keys)
        .await
        .unwrap();
    assert_eq!(a, Action::Keep);
    fake.lock().unwrap().best_ask = Some(110);
    let a = price_once(&api, node, "RENDER-TERRAIN-128", &follow, &state, &mut keys)
        .await
        .unwrap();
    assert_eq!(
        a,
        Action::Amend {
            price: Some(108),
            qty: None
        }
    );
    assert_eq!(state.read(|s| s.asks["RENDER-TERRAIN-128"].price), 108);
    {
        let f = fake.lock().unwrap();
        let posts: Vec<_> = f
            .calls
            .iter()
            .filter(|c| c.0 == "POST" && c.1 == "/v1/asks")
            .collect();
        assert_eq!(posts.len(), 2);
        assert!(
            posts.iter().all(|c| c.3.is_some()),
            "asks carry an Idempotency-Key"
        );
        assert_eq!(
            posts[0].2,
            json!({"node_id": node, "market": "EMBED-MINILM-L6", "price": 100, "qty": 4})
        );
    }
    // An ask that vanished (filled) is forgotten and placed again next round.
    fake.lock().unwrap().asks.clear();
    fake.lock().unwrap().best_ask = Some(100);
    let a = price_once(&api, node, "RENDER-TERRAIN-128", &follow, &state, &mut keys)
        .await
        .unwrap();
    assert!(matches!(a, Action::Amend { .. }));
    assert!(state.read(|s| !s.asks.contains_key("RENDER-TERRAIN-128")));
    let a = price_once(&api, node, "RENDER-TERRAIN-128", &follow, &state, &mut keys)
        .await
        .unwrap();
    assert_eq!(a, Action::Place { price: 98, qty: 2 });

    // Shutdown cancels every ask.
    cancel_asks(&api, &state).await;
    assert!(state.read(|s| s.asks.is_empty()));
    assert!(fake.lock().unwrap().calls.iter().any(|c| c.0 == "DELETE"));

    // A failed challenge stops the agent loudly; a wrong key is a typed API error.
    fake.lock().unwrap().fail_challenge = true;
    let cfg2 = settings(&url, dir.join("state2.json"));
    let state3 = SharedState::load(&cfg2.state_file).unwrap();
    let err = bootstrap(&api, &cfg2, &state3, &workloads)
        .await
        .unwrap_err();
    assert!(
        matches!(err, AgentError::ChallengeFailed(ref m) if m.contains("too slow")),
        "{err}"
    );
    let bad = ApiClient::new(&url, "gbk_wrong").unwrap();
    let err = bad.book_top("EMBED-MINILM-L6").await.unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert!(!err.to_string().contains("gbk_wrong"));
}
