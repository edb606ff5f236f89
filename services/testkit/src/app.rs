//! The API in this process: `TestApp::spawn()` builds the real application on port 0 with its
//! own database, and talks to it over HTTP with reqwest.

use gridbook_api::{Application, Settings};
use gridbook_db::testing::TestDb;

use crate::dev_markets_file;

const NATS_URL_VAR: &str = "GRIDBOOK_NATS_URL";

/// The shared NATS server (`GRIDBOOK_NATS_URL`, which `cargo xtask test` exports).
pub fn nats_url() -> String {
    std::env::var(NATS_URL_VAR).unwrap_or_else(|_| {
        panic!("{NATS_URL_VAR} is not set: these tests need a NATS server with JetStream (cargo xtask test starts one)")
    })
}

/// The API, running on this runtime, with its own database.
pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub db: TestDb,
    pub app: gridbook_api::state::AppState,
    /// A client without a cookie store (API-key requests).
    pub http: reqwest::Client,
}

/// Settings for a test: port 0, the test's database, plain-HTTP cookies, generous rate limits.
pub fn test_settings(db: &TestDb) -> Settings {
    let mut s = Settings {
        bind: "127.0.0.1:0".into(),
        database_url: db.url().to_owned(),
        nats_url: nats_url(),
        nats_auth: gridbook_api::node_access::NatsAuthSettings {
            nkey_file: crate::NatsAccess::shared().nkey_file(crate::Service::Api),
            ..Default::default()
        },
        markets_file: dev_markets_file(),
        secure_cookies: false,
        db_pool_size: 8,
        models_kek_file: Some(crate::test_kek_file()),
        ..Settings::default()
    };
    s.rate_limit.per_second = 10_000;
    s.rate_limit.burst = 10_000;
    s
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let db = TestDb::new();
        let mut settings = test_settings(&db);
        tweak(&mut settings);
        let app = Application::build(settings).await.expect("build the app");
        let port = app.port();
        let state = app.state.clone();
        tokio::spawn(app.run_until_stopped());
        TestApp {
            address: format!("http://127.0.0.1:{port}"),
            port,
            db,
            app: state,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A client that keeps cookies (browser sessions).
    pub fn browser(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .cookie_store(true)
            .build()
            .unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Users (identity helpers)

/// A signed-up user with an API key holding every scope of the role.
#[derive(Clone, Debug)]
pub struct TestUser {
    pub id: uuid::Uuid,
    pub email: String,
    pub password: String,
    pub role: String,
    /// `gbk_<prefix>_<secret>` with every scope the role allows.
    pub key: String,
    pub key_id: uuid::Uuid,
    pub account_id: uuid::Uuid,
}

impl TestUser {
    /// `Authorization` header value for this user's key.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.key)
    }
}

/// A fresh unique email.
pub fn unique_email(tag: &str) -> String {
    format!("{tag}-{}@example.com", uuid::Uuid::new_v4().simple())
}

pub const TEST_PASSWORD: &str = "correct horse battery staple";

impl TestApp {
    /// Signs up a user of `role` (`studio`, `provider`, `trader`) through the HTTP routes, logs in
    /// and creates an API key with every scope of the role.
    pub async fn signup(&self, role: &str) -> TestUser {
        let email = unique_email(role);
        let r = self
            .http
            .post(self.url("/v1/accounts"))
            .json(&serde_json::json!({"email": email, "password": TEST_PASSWORD, "role": role}))
            .send()
            .await
            .expect("POST /v1/accounts");
        assert_eq!(r.status(), 201, "sign-up: {}", r.text().await.unwrap_or_default());
        let user: serde_json::Value = r.json().await.unwrap();
        self.user_with_key(&user, &email, TEST_PASSWORD).await
    }

    /// A browser client logged in as `email`.
    pub async fn login(&self, email: &str, password: &str) -> reqwest::Client {
        let browser = self.browser();
        let r = browser
            .post(self.url("/v1/sessions"))
            .json(&serde_json::json!({"email": email, "password": password}))
            .send()
            .await
            .expect("POST /v1/sessions");
        assert_eq!(r.status(), 200, "log-in: {}", r.text().await.unwrap_or_default());
        browser
    }

    async fn user_with_key(&self, user: &serde_json::Value, email: &str, password: &str) -> TestUser {
        let browser = self.login(email, password).await;
        let r = browser
            .post(self.url("/v1/keys"))
            .json(&serde_json::json!({"name": "test key"}))
            .send()
            .await
            .expect("POST /v1/keys");
        assert_eq!(r.status(), 201, "create key: {}", r.text().await.unwrap_or_default());
        let key: serde_json::Value = r.json().await.unwrap();
        TestUser {
            id: user["id"].as_str().unwrap().parse().unwrap(),
            email: email.to_owned(),
            password: password.to_owned(),
            role: user["role"].as_str().unwrap().to_owned(),
            key: key["key"].as_str().unwrap().to_owned(),
            key_id: key["id"].as_str().unwrap().parse().unwrap(),
            account_id: user["account_id"].as_str().unwrap().parse().unwrap(),
        }
    }

    /// An admin (created as `gridbook-api create-admin` does, then logged in over HTTP) with an
    /// API key holding `read` and `admin`.
    pub async fn admin(&self) -> TestUser {
        let email = unique_email("admin");
        let pool = self.app.db.clone();
        let e = email.clone();
        let user = tokio::task::spawn_blocking(move || {
            let mut c = pool.get().expect("db connection");
            gridbook_api::accounts::create_admin(&mut c, &e, TEST_PASSWORD).expect("create admin")
        })
        .await
        .unwrap();
        let user = serde_json::to_value(&user).unwrap();
        self.user_with_key(&user, &email, TEST_PASSWORD).await
    }

    /// Credits `amount` minor units to `user` from the operator account (directly in the
    /// database, as `POST /v1/admin/credits` does). Returns the transfer id.
    pub async fn credit(&self, user: &TestUser, amount: i64) -> uuid::Uuid {
        let pool = self.app.db.clone();
        let id = user.id;
        tokio::task::spawn_blocking(move || {
            let mut c = pool.get().expect("db connection");
            let reference = format!("test-{}", uuid::Uuid::new_v4());
            gridbook_api::money::credit_user(&mut c, id, amount, &reference)
                .expect("credit")
                .transfer_id
        })
        .await
        .unwrap()
    }

    /// GET `path` with `user`'s API key.
    pub async fn get_as(&self, user: &TestUser, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .header("Authorization", user.bearer())
            .send()
            .await
            .expect("GET")
    }

    /// POST JSON to `path` with `user`'s API key.
    pub async fn post_as(
        &self,
        user: &TestUser,
        path: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header("Authorization", user.bearer())
            .json(body)
            .send()
            .await
            .expect("POST")
    }

    /// The user's balance (`GET /v1/balance`).
    pub async fn balance(&self, user: &TestUser) -> serde_json::Value {
        let r = self.get_as(user, "/v1/balance").await;
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }
}

/// Asserts the API's JSON error shape and returns the error code.
pub async fn error_code(r: reqwest::Response) -> String {
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{status}: error body is not JSON: {text:?}"));
    let code = v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{status}: no error.code in {text}"));
    assert!(
        v["error"]["message"].is_string(),
        "{status}: no error.message in {text}"
    );
    code.to_owned()
}
