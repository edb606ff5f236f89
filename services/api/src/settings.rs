//! Typed settings (`gridbook_support::load_config`: defaults, `--config` TOML, `GRIDBOOK_*`
//! variables with `__` for nesting, e.g. `GRIDBOOK_RATE_LIMIT__PER_SECOND=50`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// `host:port`; port 0 picks a free port (tests).
    pub bind: String,
    /// `GRIDBOOK_DATABASE_URL`. Never logged.
    pub database_url: String,
    pub nats_url: String,
    /// The engine's configuration file; the API serves the same `[[markets]]`.
    pub markets_file: PathBuf,
    pub db_pool_size: u32,
    pub workers: usize,
    /// Cookies carry `Secure` unless this is false (plain-HTTP local development only).
    pub secure_cookies: bool,
    pub session_hours: u64,
    pub limits: Limits,
    pub rate_limit: RateLimit,
    /// Directory of the trader web UI (`web/dist`), served at `/` when it exists.
    pub web_dir: Option<PathBuf>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Largest JSON body.
    pub json_bytes: usize,
    /// Largest uploaded JSONL file.
    pub file_bytes: usize,
    pub file_lines: usize,
    /// Largest single line of an uploaded file.
    pub line_bytes: usize,
    /// Most units a node on probation may offer in open asks at once (all markets).
    pub probation_ask_qty: u64,
    /// Most nodes one provider may register.
    pub nodes_per_provider: i64,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimit {
    /// Sustained requests per second per API key / session, and per client IP.
    pub per_second: u32,
    pub burst: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bind: "127.0.0.1:8080".into(),
            database_url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            nats_url: "nats://127.0.0.1:4222".into(),
            markets_file: "matching-engine/engine/config/dev.toml".into(),
            db_pool_size: 16,
            workers: 2,
            secure_cookies: true,
            session_hours: 24,
            limits: Limits::default(),
            rate_limit: RateLimit::default(),
            web_dir: None,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            json_bytes: 64 * 1024,
            file_bytes: 100 * 1024 * 1024,
            file_lines: 1_000_000,
            line_bytes: 64 * 1024,
            probation_ask_qty: 100,
            nodes_per_provider: 100,
        }
    }
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 100,
            burst: 200,
        }
    }
}
