//! Errors made by the HTTP layer itself, before a handler runs (the JSON, query, path and
//! payload extractors, routing, the body guard): each answers with the API's JSON error body,
//! `{"error":{"code","message","field"?}}`, saying what is wrong and where.

use serde_json::{Value, json};

use gridbook_testkit::TestApp;

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    auth: bool,
    status: u16,
    code: &'static str,
    /// Substrings the message must contain.
    says: &'static [&'static str],
    field: Option<&'static str>,
}

fn case(what: &'static str, method: &'static str, path: &str) -> Case {
    Case {
        what,
        method,
        path: path.to_owned(),
        content_type: None,
        body: Vec::new(),
        headers: Vec::new(),
        auth: true,
        status: 0,
        code: "",
        says: &[],
        field: None,
    }
}

impl Case {
    fn json(mut self, body: &str) -> Self {
        self.content_type = Some("application/json");
        self.body = body.as_bytes().to_vec();
        self
    }
    fn expect(mut self, status: u16, code: &'static str, says: &'static [&'static str]) -> Self {
        self.status = status;
        self.code = code;
        self.says = says;
        self
    }
    fn field(mut self, f: &'static str) -> Self {
        self.field = Some(f);
        self
    }
}

#[tokio::test]
async fn every_error_of_the_http_layer_has_a_json_body_saying_what_and_where() {
    let app = TestApp::spawn_with(|s| s.limits.file_bytes = 1_000).await;
    let studio = app.signup("studio").await;
    let limit = app.app.settings.limits.json_bytes;
    let cases = vec![
        case("truncated JSON", "POST", "/v1/keys")
            .json(r#"{"name":"#)
            .expect(400, "invalid_json", &["request body", "line 1 column"]),
        case("not an object", "POST", "/v1/keys")
            .json("[1,2]")
            .expect(400, "invalid_json", &["request body", "expected"]),
        case("missing field", "POST", "/v1/keys")
            .json("{}")
            .expect(400, "invalid_json", &["missing field `name`"]),
        case("wrong type names the field", "POST", "/v1/keys")
            .json(r#"{"name": 12}"#)
            .expect(400, "invalid_json", &["invalid type", "line 1 column"])
            .field("name"),
        case("wrong type of a number names it", "POST", "/v1/asks")
            .json(r#"{"node_id":"00000000-0000-0000-0000-000000000000","market":"EMBED-MINILM-L6","price":"ten","qty":1}"#)
            .expect(400, "invalid_json", &["invalid type", "line 1 column"])
            .field("price"),
        case("unknown field", "POST", "/v1/nodes")
            .json(r#"{"name":"n","gpu_model":"g","vram_mb":1,"region":"r","status":"active"}"#)
            .expect(400, "invalid_json", &["unknown field `status`"]),
        case("body over the JSON limit", "POST", "/v1/keys")
            .json(&format!(r#"{{"name":"{}"}}"#, "x".repeat(limit)))
            .expect(413, "payload_too_large", &["exceeds the limit"]),
        Case {
            content_type: Some("text/plain"),
            body: br#"{"name":"k"}"#.to_vec(),
            ..case("wrong content type", "POST", "/v1/keys")
        }
        .expect(415, "unsupported_media_type", &["Content-Type: application/json"]),
        case("no content type", "POST", "/v1/keys")
            .expect(415, "unsupported_media_type", &["Content-Type"]),
        case("bad id in the path", "GET", "/v1/jobs/not-a-uuid")
            .expect(404, "not_found", &["path", "`id`"])
            .field("id"),
        case("bad query value", "GET", "/v1/files?limit=ten")
            .expect(400, "invalid_query", &["query string", "`limit`"])
            .field("limit"),
        case("bad query value among good ones", "GET", "/v1/statement?limit=5&before=yesterday")
            .expect(400, "invalid_query", &["`before`"])
            .field("before"),
        case("unknown query parameter", "GET", "/v1/files?color=red")
            .expect(400, "invalid_query", &["unknown field `color`"])
            .field("color"),
        case("unknown route", "GET", "/v1/no-such-thing")
            .expect(404, "not_found", &["route not found"]),
        case("wrong method", "DELETE", "/v1/me")
            .expect(405, "method_not_allowed", &["method not allowed"]),
        case("wrong method on a market route", "POST", "/v1/markets")
            .expect(405, "method_not_allowed", &["method not allowed"]),
        case("wrong method on a probe", "POST", "/healthz")
            .expect(405, "method_not_allowed", &["method not allowed"]),
        Case {
            headers: vec![("Idempotency-Key", "x".repeat(300))],
            ..case("bad Idempotency-Key", "POST", "/v1/keys").json(r#"{"name":"k"}"#)
        }
        .expect(400, "invalid_request", &["1 to 255"])
        .field("Idempotency-Key"),
        Case {
            content_type: Some("application/jsonl"),
            body: vec![b'x'; 2_000],
            headers: vec![],
            ..case("upload over the file limit", "POST", "/v1/files?purpose=batch&market=EMBED-MINILM-L6")
        }
        .expect(413, "payload_too_large", &["limit"]),
        case("upload without a market", "POST", "/v1/files?purpose=batch")
            .expect(400, "invalid_query", &["missing field `market`"])
            .field("market"),
        Case {
            auth: false,
            ..case("no credentials", "GET", "/v1/me")
        }
        .expect(401, "unauthorized", &["log in"]),
    ];
    for c in &cases {
        let mut b = app.http.request(
            reqwest::Method::from_bytes(c.method.as_bytes()).unwrap(),
            app.url(&c.path),
        );
        if c.auth {
            b = b.header("Authorization", studio.bearer());
        }
        if let Some(ct) = c.content_type {
            b = b.header("Content-Type", ct);
        }
        for (k, v) in &c.headers {
            b = b.header(*k, v);
        }
        if !c.body.is_empty() || c.method != "GET" {
            b = b.body(c.body.clone());
        }
        let r = b.send().await.unwrap();
        let status = r.status().as_u16();
        let ctype = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let text = r.text().await.unwrap();
        assert_eq!(status, c.status, "{}: {text}", c.what);
        assert!(
            ctype.starts_with("application/json"),
            "{}: content type {ctype:?}",
            c.what
        );
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{}: body is not JSON: {text:?}", c.what));
        assert_eq!(v["error"]["code"], json!(c.code), "{}: {text}", c.what);
        let message = v["error"]["message"].as_str().unwrap_or_default();
        for s in c.says {
            assert!(
                message.contains(s),
                "{}: message {message:?} lacks {s:?}",
                c.what
            );
        }
        if let Some(f) = c.field {
            assert_eq!(v["error"]["field"], json!(f), "{}: {text}", c.what);
        }
    }
}

/// A JSON type error names the field by its path (the body guard keeps the parsed body, the
/// JSON error handler finds the field at serde's line and column).
#[tokio::test]
async fn a_json_type_error_names_the_nested_field() {
    let app = TestApp::spawn().await;
    let provider = app.signup("provider").await;
    let r = app
        .post_as(
            &provider,
            "/v1/nodes",
            &json!({"name": "n", "gpu_model": "g", "vram_mb": "lots", "region": "r"}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_json");
    assert_eq!(v["error"]["field"], "vram_mb", "{v}");
    let r = app
        .http
        .post(app.url("/v1/nodes/00000000-0000-0000-0000-000000000000/challenge"))
        .header("Authorization", provider.bearer())
        .header("Content-Type", "application/json")
        .body(r#"{"nonce":"00","embeddings":[[0.5],[0.25,"x"]],"elapsed_ms":1,"device":"cpu"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["field"], "embeddings[1][1]", "{v}");
    let r = app
        .http
        .post(app.url("/v1/nodes/00000000-0000-0000-0000-000000000000/challenge/commitment"))
        .header("Authorization", provider.bearer())
        .header("Content-Type", "application/json")
        .body(r#"{"nonce":"00","leaves":["ab",5],"device":"cpu"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["field"], "leaves[1]", "{v}");
}
