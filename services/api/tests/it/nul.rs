//! NUL characters (U+0000), which PostgreSQL refuses in text and jsonb: every text a request can
//! bring to the database (JSON fields at any depth, query parameters, the lines of an uploaded
//! file) is checked in one place (`gridbook_api::validate`), and a NUL is 400 naming the field,
//! never a 500, and nothing is created.

use serde_json::{Value, json};

use crate::authz::ROUTES;
use crate::studio::{EMBED, count, embed_lines, upload};
use gridbook_testkit::TestApp;

async fn field_error(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let v: Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: not JSON: {text:?}"));
    (
        status,
        v["error"]["code"].as_str().unwrap_or_default().to_owned(),
        v["error"]["field"].as_str().unwrap_or_default().to_owned(),
    )
}

/// The three reported cases: job metadata, an upload's filename, a credit reference sent with
/// an Idempotency-Key. Each was a 500.
#[tokio::test]
async fn nul_in_metadata_filename_and_credit_reference_is_400_naming_the_field() {
    let app = TestApp::spawn().await;
    let studio = app.signup("studio").await;
    app.credit(&studio, 1_000_000).await;
    let r = upload(&app, &studio, EMBED, embed_lines(2)).await;
    assert_eq!(r.status(), 201);
    let file: Value = r.json().await.unwrap();

    let deadline = chrono::Utc::now() + chrono::Duration::hours(2);
    let r = app
        .http
        .post(app.url("/v1/jobs"))
        .header("Authorization", studio.bearer())
        .header("Idempotency-Key", "job-nul")
        .json(
            &json!({"market": EMBED, "input_file": file["id"], "limit_price": 10,
                      "deadline": deadline, "metadata": {"project": "ok", "note": "a\u{0}b"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        field_error(r).await,
        (400, "invalid_request".into(), "metadata.note".into())
    );
    assert_eq!(count(&app, "SELECT count(*) AS n FROM jobs").await, 0);

    let r = app
        .http
        .post(app.url(&format!(
            "/v1/files?purpose=batch&market={EMBED}&filename=in%00put.jsonl"
        )))
        .header("Authorization", studio.bearer())
        .header("Content-Type", "application/jsonl")
        .body(embed_lines(2))
        .send()
        .await
        .unwrap();
    assert_eq!(
        field_error(r).await,
        (400, "invalid_request".into(), "filename".into())
    );
    assert_eq!(count(&app, "SELECT count(*) AS n FROM files").await, 1);

    let admin = app.admin().await;
    let before = app.balance(&studio).await;
    let r = app
        .http
        .post(app.url("/v1/admin/credits"))
        .header("Authorization", admin.bearer())
        .header("Idempotency-Key", "credit-nul")
        .json(&json!({"user_id": studio.id, "amount": 5, "reference": "dep\u{0}osit-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        field_error(r).await,
        (400, "invalid_request".into(), "reference".into())
    );
    assert_eq!(app.balance(&studio).await, before);
    assert_eq!(
        count(&app, "SELECT count(*) AS n FROM idempotency_keys").await,
        0
    );
}

fn with_nul(v: &Value) -> Vec<(String, Value)> {
    // One variant per string field (top level and one level down): that field gets a NUL.
    let mut out = Vec::new();
    if let Value::Object(map) = v {
        for (k, item) in map {
            match item {
                Value::String(s) => {
                    let mut b = v.clone();
                    b[k] = json!(format!("{s}\u{0}"));
                    out.push((k.clone(), b));
                }
                Value::Array(items) => {
                    for (i, it) in items.iter().enumerate() {
                        if let Value::String(s) = it {
                            let mut b = v.clone();
                            b[k][i] = json!(format!("{s}\u{0}"));
                            out.push((format!("{k}[{i}]"), b));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// Every string field of every JSON route of `authz::ROUTES` (and the sign-up and log-in bodies
/// and a challenge answer's device): a NUL is 400 naming exactly that field, with or without
/// credentials, before anything else looks at the request.
#[tokio::test]
async fn nul_in_any_string_field_of_any_json_route_is_400_naming_it() {
    let app = TestApp::spawn().await;
    let provider = app.signup("provider").await;
    let mut routes: Vec<(&str, String, String)> = ROUTES
        .iter()
        .filter_map(|r| r.body.map(|b| (r.method, r.path.to_owned(), b.to_owned())))
        .collect();
    routes.push((
        "POST",
        "/v1/accounts".into(),
        r#"{"email":"a@example.com","password":"long enough password","role":"studio"}"#.into(),
    ));
    routes.push((
        "POST",
        "/v1/sessions".into(),
        r#"{"email":"a@example.com","password":"long enough password"}"#.into(),
    ));
    let nil = uuid::Uuid::nil().to_string();
    let mut checked = 0;
    for (method, path, body) in routes {
        let path = path
            .replace("{node}", &nil)
            .replace("{ask}", &nil)
            .replace("{job}", &nil)
            .replace("{key}", &nil);
        let body: Value =
            serde_json::from_str(&body.replace("{user}", &nil).replace("{file}", &nil)).unwrap();
        for (field, bad) in with_nul(&body) {
            let r = app
                .http
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    app.url(&path),
                )
                .header("Authorization", provider.bearer())
                .json(&bad)
                .send()
                .await
                .unwrap();
            assert_eq!(
                field_error(r).await,
                (400, "invalid_request".into(), field.clone()),
                "{method} {path} field {field}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} fields checked");
    // Nested fields are named by their path.
    let r = app
        .http
        .post(app.url("/v1/nodes/00000000-0000-0000-0000-000000000000/challenge"))
        .json(
            &json!({"nonce": "00", "embeddings": [[0.5]], "elapsed_ms": 1,
                      "device": "cuda:0", "extra": {"deep": ["x", "y\u{0}"]}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        field_error(r).await,
        (400, "invalid_request".into(), "extra.deep[1]".into())
    );
    assert_eq!(count(&app, "SELECT count(*) AS n FROM nodes").await, 0);
}

/// A NUL inside an uploaded line (it would reach PostgreSQL as a `custom_id` in assignment
/// details) is a per-line problem of the file; `\\u0000` (an escaped backslash) is fine.
#[tokio::test]
async fn nul_in_an_uploaded_line_is_an_invalid_file() {
    let app = TestApp::spawn().await;
    let studio = app.signup("studio").await;
    let body = b"{\"custom_id\":\"a\",\"input\":\"fine\"}\n{\"custom_id\":\"b\\u0000\",\"input\":\"x\"}\n{\"custom_id\":\"c\",\"input\":\"back\\\\u0000slash\"}\n".to_vec();
    let r = upload(&app, &studio, EMBED, body).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_file");
    let details = v["error"]["details"].as_array().unwrap();
    assert_eq!(details.len(), 1, "{v}");
    assert_eq!(details[0]["line"], 2);
    assert!(
        details[0]["message"]
            .as_str()
            .unwrap()
            .contains("custom_id"),
        "{v}"
    );
    assert_eq!(count(&app, "SELECT count(*) AS n FROM files").await, 0);
}
