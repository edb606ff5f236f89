//! Identity and money: sign-up, sessions (cookie flags), API keys (scopes, revocation), admin
//! credits (idempotent), balance and statement, idempotency keys, rate limits, probes, OpenAPI.

use reqwest::StatusCode;
use serde_json::{Value, json};

use gridbook_testkit::{TEST_PASSWORD, TestApp, error_code, unique_email};

async fn sign_up(app: &TestApp, body: Value) -> reqwest::Response {
    app.http
        .post(app.url("/v1/accounts"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn sign_up_validates_normalises_and_refuses_duplicates() {
    let app = TestApp::spawn().await;
    let email = unique_email("Studio");
    let r = sign_up(
        &app,
        json!({"email": format!("  {}  ", email.to_uppercase()), "password": TEST_PASSWORD, "role": "studio"}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let user: Value = r.json().await.unwrap();
    assert_eq!(user["email"], email.to_lowercase());
    assert_eq!(user["role"], "studio");
    assert!(user["account_id"].is_string());

    // Same email in another case: 409 email_taken.
    let r = sign_up(
        &app,
        json!({"email": email.to_uppercase(), "password": TEST_PASSWORD, "role": "trader"}),
    )
    .await;
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "email_taken");

    // Field errors name the field.
    for (body, field) in [
        (json!({"email": "no-at-sign", "password": TEST_PASSWORD, "role": "studio"}), "email"),
        (json!({"email": "a@b", "password": TEST_PASSWORD, "role": "studio"}), "email"),
        (json!({"email": unique_email("x"), "password": "short", "role": "studio"}), "password"),
        (json!({"email": unique_email("x"), "password": "x".repeat(257), "role": "studio"}), "password"),
        (json!({"email": unique_email("x"), "password": TEST_PASSWORD, "role": "wizard"}), "role"),
    ] {
        let r = sign_up(&app, body.clone()).await;
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    // Admins cannot sign up.
    let r = sign_up(
        &app,
        json!({"email": unique_email("adm"), "password": TEST_PASSWORD, "role": "admin"}),
    )
    .await;
    assert_eq!(r.status(), 403);

    // The stored password is an argon2id PHC string with OWASP's parameters, never the password.
    let pool = app.app.db.clone();
    let e = email.to_lowercase();
    let stored: String = tokio::task::spawn_blocking(move || {
        use diesel::prelude::*;
        let mut c = pool.get().unwrap();
        diesel::sql_query("SELECT password_hash FROM users WHERE email = $1")
            .bind::<diesel::sql_types::Text, _>(e)
            .get_result::<PasswordHash>(&mut c)
            .unwrap()
            .password_hash
    })
    .await
    .unwrap();
    assert!(
        stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{stored}"
    );
    assert!(!stored.contains(TEST_PASSWORD));
}

#[derive(diesel::QueryableByName)]
struct PasswordHash {
    #[diesel(sql_type = diesel::sql_types::Text)]
    password_hash: String,
}

fn cookie_header(r: &reqwest::Response) -> String {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("gridbook_session="))
        .expect("a gridbook_session cookie")
}

#[tokio::test]
async fn log_in_sets_a_strict_http_only_cookie_and_log_out_ends_the_session() {
    let app = TestApp::spawn().await;
    let user = app.signup("trader").await;

    // Wrong password and unknown email: the same 401.
    for (email, password) in [
        (user.email.as_str(), "wrong password!!"),
        ("nobody@example.com", TEST_PASSWORD),
    ] {
        let r = app
            .http
            .post(app.url("/v1/sessions"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().get("set-cookie").is_none());
        assert_eq!(error_code(r).await, "invalid_credentials");
    }

    let r = app
        .http
        .post(app.url("/v1/sessions"))
        .json(&json!({"email": user.email.to_uppercase(), "password": TEST_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = cookie_header(&r);
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("Path=/"), "{cookie}");
    assert!(cookie.contains("Max-Age="), "{cookie}");
    assert!(!cookie.contains("Secure"), "secure_cookies=false: {cookie}");
    let token = cookie
        .trim_start_matches("gridbook_session=")
        .split(';')
        .next()
        .unwrap()
        .to_owned();

    let me = |token: String| {
        let app = &app;
        async move {
            app.http
                .get(app.url("/v1/me"))
                .header("Cookie", format!("gridbook_session={token}"))
                .send()
                .await
                .unwrap()
        }
    };
    let r = me(token.clone()).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["email"], user.email);
    assert_eq!(v["auth"], "session");

    let r = app
        .http
        .delete(app.url("/v1/sessions"))
        .header("Cookie", format!("gridbook_session={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(cookie_header(&r).contains("Max-Age=0"));
    let r = me(token).await;
    assert_eq!(r.status(), 401);

    // The key still works; garbage credentials do not.
    let r = app.get_as(&user, "/v1/me").await;
    assert_eq!(r.status(), 200);
    for auth in ["Bearer nonsense", "Basic abc", "Bearer gbk_abc_def"] {
        let r = app
            .http
            .get(app.url("/v1/me"))
            .header("Authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{auth}");
    }
}

#[tokio::test]
async fn secure_cookies_carry_the_secure_flag() {
    let app = TestApp::spawn_with(|s| s.secure_cookies = true).await;
    let email = unique_email("sec");
    let r = sign_up(
        &app,
        json!({"email": email, "password": TEST_PASSWORD, "role": "studio"}),
    )
    .await;
    assert_eq!(r.status(), 201);
    let r = app
        .http
        .post(app.url("/v1/sessions"))
        .json(&json!({"email": email, "password": TEST_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = cookie_header(&r);
    assert!(cookie.contains("Secure"), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
}

#[tokio::test]
async fn api_keys_are_shown_once_scoped_by_role_and_revocable() {
    let app = TestApp::spawn().await;
    let studio = app.signup("studio").await;
    let other = app.signup("studio").await;

    // Key shape and listing without secrets.
    assert!(studio.key.starts_with("gbk_"));
    let secret = studio.key.rsplit('_').next().unwrap().to_owned();
    assert_eq!(secret.len(), 64);
    let r = app.get_as(&studio, "/v1/keys").await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.contains(&secret), "listing leaks a secret");
    let list: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(list["keys"].as_array().unwrap().len(), 1);
    assert_eq!(list["keys"][0]["scopes"], json!(["jobs", "read", "trade"]));

    // Scopes beyond the role: 403; unknown scope: 400.
    for (scopes, status) in [
        (json!(["nodes"]), 403),
        (json!(["admin"]), 403),
        (json!(["root"]), 400),
        (json!([]), 400),
    ] {
        let r = app
            .post_as(&studio, "/v1/keys", &json!({"name": "k", "scopes": scopes}))
            .await;
        assert_eq!(r.status().as_u16(), status, "{scopes}");
    }

    // A read-only key can read but cannot mint a jobs key or revoke a jobs key.
    let r = app
        .post_as(&studio, "/v1/keys", &json!({"name": "reader", "scopes": ["read"]}))
        .await;
    assert_eq!(r.status(), 201);
    let reader: Value = r.json().await.unwrap();
    let reader_key = reader["key"].as_str().unwrap().to_owned();
    let reader_id = reader["id"].as_str().unwrap().to_owned();
    let as_reader = |method: reqwest::Method, path: &str| {
        app.http
            .request(method, app.url(path))
            .header("Authorization", format!("Bearer {reader_key}"))
    };
    let r = as_reader(reqwest::Method::GET, "/v1/balance").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = as_reader(reqwest::Method::POST, "/v1/keys")
        .json(&json!({"name": "escalate", "scopes": ["jobs"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = as_reader(reqwest::Method::DELETE, &format!("/v1/keys/{}", studio.key_id))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // Another user's key: 404, and it still works.
    let r = app
        .http
        .delete(app.url(&format!("/v1/keys/{reader_id}")))
        .header("Authorization", other.bearer())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = as_reader(reqwest::Method::GET, "/v1/me").send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Revoke: 204, then 401 for that key; revoking again is still 204.
    for _ in 0..2 {
        let r = app
            .http
            .delete(app.url(&format!("/v1/keys/{reader_id}")))
            .header("Authorization", studio.bearer())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let r = as_reader(reqwest::Method::GET, "/v1/me").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let list: Value = app.get_as(&studio, "/v1/keys").await.json().await.unwrap();
    let revoked = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == reader_id.as_str())
        .unwrap();
    assert!(revoked["revoked_at"].is_string());
}

#[tokio::test]
async fn admin_credit_is_idempotent_and_shows_in_balance_and_statement() {
    let app = TestApp::spawn().await;
    let admin = app.admin().await;
    let studio = app.signup("studio").await;

    let body = json!({"user_id": studio.id, "amount": 250_000, "reference": "wire-0001"});
    // Not an admin: 403.
    let r = app.post_as(&studio, "/v1/admin/credits", &body).await;
    assert_eq!(r.status(), 403);

    let post = |key: Option<&str>, body: Value| {
        let mut b = app
            .http
            .post(app.url("/v1/admin/credits"))
            .header("Authorization", admin.bearer())
            .json(&body);
        if let Some(k) = key {
            b = b.header("Idempotency-Key", k);
        }
        b.send()
    };
    let r = post(Some("credit-1"), body.clone()).await.unwrap();
    assert_eq!(r.status(), 201);
    assert!(r.headers().get("idempotent-replayed").is_none());
    let first: Value = r.json().await.unwrap();

    // Same key, same request: replayed, same body.
    let r = post(Some("credit-1"), body.clone()).await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(r.json::<Value>().await.unwrap(), first);

    // Same reference without a key: the same transfer (idempotent by reference).
    let r = post(None, body.clone()).await.unwrap();
    assert_eq!(r.status(), 201);
    let again: Value = r.json().await.unwrap();
    assert_eq!(again["transfer_id"], first["transfer_id"]);

    // Same key, different request: 422.
    let other = json!({"user_id": studio.id, "amount": 1, "reference": "wire-0002"});
    let r = post(Some("credit-1"), other).await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(error_code(r).await, "idempotency_key_reused");

    // Same reference, other content: 409.
    let r = post(
        None,
        json!({"user_id": studio.id, "amount": 9, "reference": "wire-0001"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(error_code(r).await, "reference_reused");

    // Unknown user: 404; bad amounts: 400.
    let r = post(
        None,
        json!({"user_id": uuid::Uuid::new_v4(), "amount": 5, "reference": "wire-x"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    for amount in [json!(0), json!(-5), json!(1_000_000_000_001i64), json!(1.5), json!("5")] {
        let r = post(
            None,
            json!({"user_id": studio.id, "amount": amount, "reference": "wire-y"}),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 400, "{amount}");
    }

    // Credited exactly once.
    let b = app.balance(&studio).await;
    assert_eq!(b["available"], 250_000);
    assert_eq!(b["held"], 0);
    assert_eq!(b["currency"], "credits");

    app.credit(&studio, 1_000).await;
    app.credit(&studio, 2_000).await;
    let b = app.balance(&studio).await;
    assert_eq!(b["available"], 253_000);

    // Statement: newest first, paginated with `before`.
    let r = app.get_as(&studio, "/v1/statement?limit=2").await;
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["amount"], 2_000);
    assert_eq!(entries[1]["amount"], 1_000);
    assert_eq!(entries[0]["direction"], "credit");
    assert_eq!(entries[0]["code"], "deposit");
    let before = page["next_before"].as_i64().unwrap();
    let page: Value = app
        .get_as(&studio, &format!("/v1/statement?limit=2&before={before}"))
        .await
        .json()
        .await
        .unwrap();
    let entries = page["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["amount"], 250_000);
    assert_eq!(entries[0]["transfer_id"], first["transfer_id"]);
    assert!(page["next_before"].is_null());

    // Another user's statement is empty.
    let trader = app.signup("trader").await;
    let page: Value = app
        .get_as(&trader, "/v1/statement")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["entries"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn a_key_created_with_an_idempotency_key_is_created_once() {
    let app = TestApp::spawn().await;
    let user = app.signup("provider").await;
    let post = |body: Value| {
        app.http
            .post(app.url("/v1/keys"))
            .header("Authorization", user.bearer())
            .header("Idempotency-Key", "make-key-1")
            .json(&body)
            .send()
    };
    let r = post(json!({"name": "ci", "scopes": ["read"]})).await.unwrap();
    assert_eq!(r.status(), 201);
    let first: Value = r.json().await.unwrap();
    assert!(first["key"].is_string());
    let r = post(json!({"name": "ci", "scopes": ["read"]})).await.unwrap();
    assert_eq!(r.status(), 201);
    let replay: Value = r.json().await.unwrap();
    assert_eq!(replay["id"], first["id"]);
    assert!(replay["key"].is_null(), "the secret is not stored for replays");
    let r = post(json!({"name": "other", "scopes": ["read"]})).await.unwrap();
    assert_eq!(r.status(), 422);
    // Malformed keys: 400.
    for bad in ["", &"k".repeat(256), "has space"] {
        let r = app
            .http
            .post(app.url("/v1/keys"))
            .header("Authorization", user.bearer())
            .header("Idempotency-Key", bad)
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad:?}");
    }
    let list: Value = app.get_as(&user, "/v1/keys").await.json().await.unwrap();
    assert_eq!(list["keys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn probes_and_openapi() {
    let app = TestApp::spawn().await;
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    // Errors carry a request id too, and every error is JSON (even actix's own 405).
    let r = app.http.put(app.url("/v1/keys")).send().await.unwrap();
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(r.status(), 405);
    assert_eq!(error_code(r).await, "method_not_allowed");
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "ready");
    let r = app.http.get(app.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value = r.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/accounts",
        "/v1/sessions",
        "/v1/keys",
        "/v1/keys/{id}",
        "/v1/admin/credits",
        "/v1/balance",
        "/v1/statement",
        "/healthz",
        "/readyz",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing from OpenAPI");
    }
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
    assert!(doc["components"]["schemas"]["ErrorResponse"].is_object());
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let app = TestApp::spawn_with(|s| {
        s.rate_limit.per_second = 1;
        s.rate_limit.burst = 5;
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let r = app.http.get(app.url("/healthz")).send().await.unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=2).contains(&retry), "{retry}");
            assert_eq!(error_code(r).await, "rate_limited");
            statuses.push(429);
        } else {
            statuses.push(r.status().as_u16());
        }
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.starts_with(&[200, 200, 200, 200, 200]), "{statuses:?}");
}

#[tokio::test]
async fn held_counts_open_escrow_and_available_excludes_it() {
    let app = TestApp::spawn().await;
    let studio = app.signup("studio").await;
    app.credit(&studio, 10_000).await;
    // Reserve a bid of 10 units at 300 with a 1% fee: 10 × (300 + 3) = 3030 held.
    let pool = app.app.db.clone();
    let account = gridbook_ledger::AccountId(studio.account_id);
    tokio::task::spawn_blocking(move || {
        let mut c = pool.get().unwrap();
        gridbook_ledger::escrow::reserve_bid(
            &mut c,
            &gridbook_ledger::escrow::Bid {
                order_id: uuid::Uuid::new_v4(),
                studio_account: account,
                quantity: 10,
                limit_price: 300,
                fee_bps: 100,
            },
        )
        .unwrap();
    })
    .await
    .unwrap();
    let b = app.balance(&studio).await;
    assert_eq!(b["available"], 10_000 - 3_030);
    assert_eq!(b["held"], 3_030);
    let page: Value = app
        .get_as(&studio, "/v1/statement")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["entries"][0]["direction"], "debit");
    assert_eq!(page["entries"][0]["amount"], 3_030);
    assert_eq!(page["entries"][0]["code"], "escrow_reserve");
}

/// `gridbook-api create-admin` (the only way to make an admin) creates a user who can log in.
#[tokio::test]
async fn the_create_admin_command_makes_an_admin_who_can_log_in() {
    let app = TestApp::spawn().await;
    let email = unique_email("ops");
    let run = |email: String, url: String| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_gridbook-api"))
                .args(["create-admin", "--email", &email])
                .env("GRIDBOOK_DATABASE_URL", url)
                .env("GRIDBOOK_ADMIN_PASSWORD", TEST_PASSWORD)
                .output()
                .expect("run gridbook-api create-admin")
        })
    };
    let out = run(email.clone(), app.db.url().to_owned()).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(TEST_PASSWORD));
    let browser = app.login(&email, TEST_PASSWORD).await;
    let me: Value = browser
        .get(app.url("/v1/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "admin");
    assert_eq!(me["scopes"], json!(["read", "admin"]));
    // A second run with the same email: refused.
    let out = run(email.clone(), app.db.url().to_owned()).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("email_taken"));
}

#[tokio::test]
async fn concurrent_requests_with_one_idempotency_key_create_once() {
    let app = TestApp::spawn().await;
    let user = app.signup("studio").await;
    let requests = (0..8).map(|_| {
        app.http
            .post(app.url("/v1/keys"))
            .header("Authorization", user.bearer())
            .header("Idempotency-Key", "race-1")
            .json(&json!({"name": "race", "scopes": ["read"]}))
            .send()
    });
    let responses = futures::future::join_all(requests).await;
    let mut ids = std::collections::BTreeSet::new();
    let mut with_secret = 0;
    for r in responses {
        let r = r.unwrap();
        assert_eq!(r.status(), 201);
        let v: Value = r.json().await.unwrap();
        ids.insert(v["id"].as_str().unwrap().to_owned());
        with_secret += usize::from(v["key"].is_string());
    }
    assert_eq!(ids.len(), 1, "one key created");
    assert_eq!(with_secret, 1, "the secret is shown once");
    let list: Value = app.get_as(&user, "/v1/keys").await.json().await.unwrap();
    assert_eq!(list["keys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn readyz_is_503_when_the_database_is_unreachable() {
    use diesel::{Connection, RunQueryDsl};
    let app = TestApp::spawn_with(|s| s.db_pool_size = 2).await;
    let name = app.db.name().to_owned();
    let server = gridbook_db::testing::server_url();
    let admin_sql = move |sql: String| {
        let server = server.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = diesel::PgConnection::establish(&server).unwrap();
            diesel::sql_query(sql).execute(&mut c).unwrap();
        })
    };
    admin_sql(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS false"))
        .await
        .unwrap();
    admin_sql(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await
    .unwrap();
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_ready");
    assert!(v["error"]["message"].as_str().unwrap().contains("database"));
    // Liveness does not depend on the database.
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    admin_sql(format!("ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    let mut ready = false;
    for _ in 0..50 {
        if app.http.get(app.url("/readyz")).send().await.unwrap().status() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "ready again once the database is back");
}
