//! Hundreds of generated bad requests across every POST/PATCH/GET/DELETE route of
//! `authz::ROUTES`: wrong types, missing fields, huge and negative numbers, invalid UTF-8, bodies
//! over the limit, bad JSON, wrong content types, bad path ids and bad queries. Every one must be
//! a 4xx with the JSON error shape `{"error":{"code","message"}}`, never a 5xx; afterwards the
//! state accepted before (a credited balance, a created key) is unchanged.

use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use crate::authz::{Obj, Objects, ROUTES, Route, allowed, fill, owner_role, seed_objects};
use gridbook_testkit::{TestApp, TestUser};

/// One generated request.
#[derive(Clone, Debug)]
struct Bad {
    what: String,
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Option<Vec<u8>>,
    idempotency_key: Option<String>,
}

/// Fields that may be absent or null (removing them is not an error).
const OPTIONAL: &[&str] = &["scopes", "metadata", "filename"];

fn type_wrong(v: &Value, optional: bool) -> Vec<String> {
    let mut out: Vec<String> = match v {
        Value::String(_) => vec!["1", "true", "[]", "{}", "-7.5"],
        Value::Number(_) => vec![
            "\"1\"",
            "1.5",
            "true",
            "[]",
            "{}",
            "99999999999999999999",
            "-99999999999999999999",
            "1e400",
            "\"NaN\"",
        ],
        Value::Array(_) => vec!["\"read\"", "1", "{}", "[1]", "[null]", "[[\"read\"]]"],
        Value::Bool(_) => vec!["\"true\"", "1"],
        Value::Object(_) => vec!["[]", "1", "\"x\""],
        Value::Null => vec![],
    }
    .into_iter()
    .map(str::to_owned)
    .collect();
    if !optional {
        out.push("null".to_owned());
    }
    out
}

fn replace_raw(body: &Value, field: &str, raw: &str) -> Vec<u8> {
    // Serialise with a placeholder, then splice in the raw (possibly invalid-for-serde) text.
    let mut b = body.clone();
    b[field] = json!("__RAW__");
    serde_json::to_string(&b)
        .unwrap()
        .replace("\"__RAW__\"", raw)
        .into_bytes()
}

fn generate(route: &Route, path: &str, body: Option<&str>, limit: usize) -> Vec<Bad> {
    let method = Method::from_bytes(route.method.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut push = |what: String, ct: Option<&'static str>, body: Option<Vec<u8>>, p: &str| {
        out.push(Bad {
            what,
            method: method.clone(),
            path: p.to_owned(),
            content_type: ct,
            body,
            idempotency_key: None,
        })
    };
    const JSON: Option<&str> = Some("application/json");

    // Bodies of JSON routes.
    if let Some(valid) = body {
        let valid: Value = serde_json::from_str(valid).unwrap();
        for raw in [
            "", "{", "}", "null", "[]", "123", "\"str\"", "{\"a\":", "{'a':1}", "{\"a\":1,}",
            "\u{0}", "[[[[[[", "{\"x\":1}{\"y\":2}",
        ] {
            push(format!("bad JSON {raw:?}"), JSON, Some(raw.as_bytes().to_vec()), path);
        }
        push("missing everything {}".into(), JSON, Some(b"{}".to_vec()), path);
        push(
            "invalid UTF-8".into(),
            JSON,
            Some(b"{\"name\":\"\xff\xfe\xfd\"}".to_vec()),
            path,
        );
        push(
            "invalid UTF-8 everywhere".into(),
            JSON,
            Some(vec![0xc3, 0x28, 0xa0, 0xa1, 0xff]),
            path,
        );
        push(
            "nested 10k deep (under the size limit, over serde's depth limit)".into(),
            JSON,
            Some(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes()),
            path,
        );
        push(
            "nested 60k deep".into(),
            JSON,
            Some(format!("{}{}", "[".repeat(60_000), "]".repeat(60_000)).into_bytes()),
            path,
        );
        let mut big = valid.clone();
        if let Some(o) = big.as_object_mut() {
            o.insert("padding".into(), json!("x".repeat(limit + 1)));
        }
        push(
            "body over the limit".into(),
            JSON,
            Some(serde_json::to_vec(&big).unwrap()),
            path,
        );
        push(
            "body of 2 MiB".into(),
            JSON,
            Some(vec![b' '; 2 * 1024 * 1024]),
            path,
        );
        let valid_bytes = serde_json::to_vec(&valid).unwrap();
        for ct in [
            None,
            Some("text/plain"),
            Some("application/xml"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
        ] {
            push(format!("content type {ct:?}"), ct, Some(valid_bytes.clone()), path);
        }
        if let Some(obj) = valid.as_object() {
            for (field, value) in obj {
                let optional = OPTIONAL.contains(&field.as_str());
                for raw in type_wrong(value, optional) {
                    push(
                        format!("{field} = {raw}"),
                        JSON,
                        Some(replace_raw(&valid, field, &raw)),
                        path,
                    );
                }
                if !optional {
                    let mut missing = valid.clone();
                    missing.as_object_mut().unwrap().remove(field);
                    push(
                        format!("missing {field}"),
                        JSON,
                        Some(serde_json::to_vec(&missing).unwrap()),
                        path,
                    );
                }
            }
        }
        push(
            "duplicate keys with a wrong type".into(),
            JSON,
            Some(
                format!(
                    "{}, {}",
                    serde_json::to_string(&valid).unwrap().trim_end_matches('}'),
                    "\"amount\": \"x\", \"name\": 5, \"price\": [], \"qty\": {}}"
                )
                .into_bytes(),
            ),
            path,
        );
    }

    // Bad path ids.
    if route.object != Obj::None {
        let segment = path
            .split('/')
            .find(|s| uuid::Uuid::parse_str(s).is_ok())
            .unwrap()
            .to_owned();
        for bad in [
            "not-a-uuid",
            "1",
            "-1",
            "%00",
            "%ff%fe",
            "..%2F..%2Fetc%2Fpasswd",
            "00000000-0000-0000-0000-00000000000g",
            &format!("{segment}x"),
            &"a".repeat(5000),
            "%E2%82%AC",
            "null",
            "{id}",
        ] {
            let p = path.replacen(&segment, bad, 1);
            let body = body.map(|b| b.as_bytes().to_vec());
            push(format!("path id {bad:.40}"), body.as_ref().map(|_| "application/json"), body, &p);
        }
        // Random, unknown id: 404.
        let p = path.replacen(&segment, &uuid::Uuid::new_v4().to_string(), 1);
        let body = body.map(|b| b.as_bytes().to_vec());
        push("unknown id".into(), body.as_ref().map(|_| "application/json"), body, &p);
    }

    // Bad queries on list routes that take pagination.
    if route.method == "GET" && route.object == Obj::None {
        let base = path.split('?').next().unwrap();
        if [
            "/v1/statement",
            "/v1/jobs",
            "/v1/files",
            "/v1/asks",
            "/v1/nodes",
            "/v1/assignments",
        ]
        .contains(&base)
        {
            for q in [
                "limit=abc",
                "limit=-1",
                "limit=0",
                "limit=99999999999999999999",
                "limit=1.5",
                "limit=1000000",
                "before=x",
                "before=-5",
                "before=99999999999999999999999",
                "limit=%ZZ",
                "limit=%FF",
            ] {
                push(format!("query {q}"), None, None, &format!("{base}?{q}"));
            }
        }
    }
    out
}

async fn send(app: &TestApp, who: &TestUser, bad: &Bad) -> (u16, String) {
    let mut b = app
        .http
        .request(bad.method.clone(), app.url(&bad.path))
        .header("Authorization", who.bearer());
    if let Some(ct) = bad.content_type {
        b = b.header("Content-Type", ct);
    }
    if let Some(k) = &bad.idempotency_key {
        b = b.header("Idempotency-Key", k.as_str());
    }
    if let Some(body) = &bad.body {
        b = b.body(body.clone());
    }
    match b.send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.text().await.unwrap_or_default())
        }
        // The server may close the connection on a body over the limit before reading it:
        // that is a refusal, not a crash; the status was sent.
        Err(e) => (0, format!("transport: {e}")),
    }
}

fn json_error_shape(text: &str) -> bool {
    serde_json::from_str::<Value>(text).is_ok_and(|v| {
        v["error"]["code"].as_str().is_some_and(|c| !c.is_empty())
            && v["error"]["message"].is_string()
    })
}

#[tokio::test]
async fn hundreds_of_malformed_requests_are_4xx_json_errors_and_change_nothing() {
    let app = TestApp::spawn().await;
    let limit = app.app.settings.limits.json_bytes;
    let mut users: Vec<(TestUser, Objects)> = Vec::new();
    for role in ["studio", "provider", "trader"] {
        let u = app.signup(role).await;
        let o = seed_objects(&app, &u).await;
        users.push((u, o));
    }
    let admin = app.admin().await;
    users.push((admin.clone(), Objects::default()));

    // State accepted before: a credit and a key.
    let studio = users[0].0.clone();
    app.credit(&studio, 123_456).await;
    let balance_before = app.balance(&studio).await;
    let keys_before: Value = app.get_as(&studio, "/v1/keys").await.json().await.unwrap();

    // Generate: each route is tried by a user allowed to call it (the owner of its object).
    let mut cases: Vec<(TestUser, Bad)> = Vec::new();
    for route in ROUTES {
        if !matches!(route.method, "GET" | "POST" | "PATCH" | "DELETE") {
            continue;
        }
        let role = match route.access {
            crate::authz::Access::Roles(rs) => rs[0],
            _ => owner_role(route.object).unwrap_or("studio"),
        };
        let Some((user, objects)) = users.iter().find(|(u, _)| u.role == role) else {
            continue;
        };
        if !allowed(route.access, &user.role) {
            continue;
        }
        let path = fill(route.path, user, objects);
        let body = route.body.map(|b| fill(b, user, objects));
        for bad in generate(route, &path, body.as_deref(), limit) {
            cases.push((user.clone(), bad));
        }
    }
    // Uploads: bad content, bad query.
    let up = |what: &str, path: &str, ct: Option<&'static str>, body: &[u8]| Bad {
        what: what.to_owned(),
        method: Method::POST,
        path: path.to_owned(),
        content_type: ct,
        body: Some(body.to_vec()),
        idempotency_key: None,
    };
    let ok_path = "/v1/files?purpose=batch&market=EMBED-MINILM-L6";
    let jsonl = Some("application/jsonl");
    for bad in [
        up("upload: empty", ok_path, jsonl, b""),
        up("upload: not JSON", ok_path, jsonl, b"hello\n"),
        up("upload: invalid UTF-8", ok_path, jsonl, b"{\"custom_id\":\"\xff\"}\n"),
        up("upload: no custom_id", ok_path, jsonl, b"{\"input\":\"x\"}\n"),
        up("upload: array line", ok_path, jsonl, b"[1,2]\n"),
        up("upload: xml", ok_path, Some("application/xml"), b"<a/>"),
        up("upload: no content type", ok_path, None, b"{\"custom_id\":\"a\",\"input\":\"x\"}\n"),
        up("upload: purpose", "/v1/files?purpose=x&market=EMBED-MINILM-L6", jsonl, b"{\"custom_id\":\"a\",\"input\":\"x\"}\n"),
        up("upload: market", "/v1/files?purpose=batch&market=NOPE", jsonl, b"{\"custom_id\":\"a\",\"input\":\"x\"}\n"),
        up("upload: no query", "/v1/files", jsonl, b"{\"custom_id\":\"a\",\"input\":\"x\"}\n"),
    ] {
        cases.push((studio.clone(), bad));
    }
    // Bad Idempotency-Key headers on a creating POST.
    for key in ["", &"k".repeat(256), "with space", "tab\there"] {
        cases.push((
            studio.clone(),
            Bad {
                what: format!("Idempotency-Key {key:.20?}"),
                method: Method::POST,
                path: "/v1/keys".into(),
                content_type: Some("application/json"),
                body: Some(br#"{"name":"idem","scopes":["read"]}"#.to_vec()),
                idempotency_key: Some(key.to_owned()),
            },
        ));
    }
    // Methods a route does not have, unknown routes.
    for (m, p) in [
        (Method::PUT, "/v1/keys"),
        (Method::PATCH, "/v1/balance"),
        (Method::DELETE, "/v1/accounts"),
        (Method::GET, "/v1/admin/credits"),
        (Method::GET, "/v1/nope"),
        (Method::POST, "/v1/statement"),
    ] {
        cases.push((
            studio.clone(),
            Bad {
                what: format!("{m} {p}"),
                method: m,
                path: p.into(),
                content_type: None,
                body: None,
                idempotency_key: None,
            },
        ));
    }
    assert!(cases.len() >= 300, "only {} cases generated", cases.len());

    let results: Vec<(String, u16, String)> = futures::stream::iter(cases.iter())
        .map(|(user, bad)| {
            let app = &app;
            async move {
                let (s, text) = send(app, user, bad).await;
                (
                    format!("{} {} [{}] as {}", bad.method, bad.path.chars().take(80).collect::<String>(), bad.what, user.role),
                    s,
                    text,
                )
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;

    let mut failures = Vec::new();
    for (what, s, text) in &results {
        let transport_refusal = *s == 0 && text.starts_with("transport");
        if transport_refusal {
            continue;
        }
        if !(400..500).contains(s) || !json_error_shape(text) {
            failures.push(format!("{what}: {s} {}", text.chars().take(200).collect::<String>()));
        }
    }
    let mut by_status = std::collections::BTreeMap::new();
    for (_, s, _) in &results {
        *by_status.entry(*s).or_insert(0usize) += 1;
    }
    println!("{} malformed requests by status: {by_status:?}", results.len());
    let refused = results.iter().filter(|r| r.1 == 0).count();
    assert!(
        refused * 10 < results.len(),
        "{refused} of {} requests got no response",
        results.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} malformed requests were not 4xx JSON errors:\n{}",
        failures.len(),
        results.len(),
        failures.join("\n")
    );

    // Nothing changed.
    assert_eq!(app.balance(&studio).await, balance_before);
    let keys_after: Value = app.get_as(&studio, "/v1/keys").await.json().await.unwrap();
    assert_eq!(keys_after, keys_before);
    let r = app.get_as(&studio, "/v1/me").await;
    assert_eq!(r.status(), 200, "the key still works");
}
