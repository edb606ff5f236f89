//! The test harness: `TestApp::spawn()` builds the real application on port 0 with its own
//! database, and talks to it over HTTP with reqwest.

#![allow(dead_code)]

use std::path::PathBuf;

use gridbook_api::{Application, Settings};
use gridbook_ledger::testing::TestDb;

pub const NATS_URL_VAR: &str = "GRIDBOOK_NATS_URL";

pub fn nats_url() -> String {
    std::env::var(NATS_URL_VAR).unwrap_or_else(|_| {
        panic!("{NATS_URL_VAR} is not set: these tests need a NATS server with JetStream (cargo xtask test starts one)")
    })
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

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
    let mut s = Settings::default();
    s.bind = "127.0.0.1:0".into();
    s.database_url = db.url().to_owned();
    s.nats_url = nats_url();
    s.markets_file = workspace_root().join("matching-engine/engine/config/dev.toml");
    s.secure_cookies = false;
    s.db_pool_size = 8;
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
