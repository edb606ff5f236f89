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
    /// `GRIDBOOK_NATS_URL`: one server, or a cluster's servers separated by commas (the client
    /// reconnects to another when one goes).
    pub nats_url: String,
    /// `GRIDBOOK_NATS_REPLICAS`: copies of the streams and the files bucket the API creates (1
    /// on a single server, 3 on a three-node cluster; the same value in every service).
    pub nats_replicas: usize,
    /// NATS authentication: this API's nkey, the auth callout for provider nodes, node
    /// credentials and assignment grants (`GRIDBOOK_NATS_AUTH__*`; see `node_access`).
    pub nats_auth: crate::node_access::NatsAuthSettings,
    /// The engine's configuration file; the API serves the same `[[markets]]`.
    pub markets_file: PathBuf,
    pub db_pool_size: u32,
    pub workers: usize,
    /// Cookies carry `Secure` unless this is false (plain-HTTP local development only).
    pub secure_cookies: bool,
    pub session_hours: u64,
    pub limits: Limits,
    pub rate_limit: RateLimit,
    /// Connection and body timeouts (see [`Http`]).
    pub http: Http,
    /// Per-account log-in back-off (see [`Login`]).
    pub login: Login,
    /// Directory of the built web app (`web/build`, made by `npm run build` in `web/`; `cargo xtask run` builds it), served at `/` when it exists.
    pub web_dir: Option<PathBuf>,
    /// `GRIDBOOK_MODELS_KEK_FILE`: the key-encryption key of private models (64 hex digits,
    /// mode 0600; the settlement worker reads the same file). Unset: private models are off
    /// (503 `models_unavailable`).
    pub models_kek_file: Option<PathBuf>,
    /// Identity clusters: which marks link provider accounts (`GRIDBOOK_IDENTITY__*`).
    pub identity: crate::identity::IdentitySettings,
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
    /// Most units all probation nodes of one identity cluster may offer in open asks together.
    pub probation_cluster_ask_qty: u64,
    /// Most nodes one provider may register.
    pub nodes_per_provider: i64,
    /// Uploads one account may have in progress at once (beyond: 429 `too_many_uploads`).
    pub uploads_per_account: usize,
    /// Uploads buffered at once in this process, all accounts together (beyond: 503
    /// `uploads_busy` with Retry-After); upload memory is at most this × `file_bytes`.
    pub uploads_total: usize,
    /// Password hashes (argon2id, 19 MiB each) computed at once; 0 = twice the CPU cores.
    pub password_hashes: usize,
    /// Log-ins and sign-ups that may wait for a hash slot; beyond: 503 `busy` with Retry-After.
    pub password_queue: usize,
    /// Largest private model (`.onnx`) a studio may upload; it shares the upload slots, so
    /// upload memory is at most `uploads_total` × the larger of this and `file_bytes`.
    pub model_bytes: usize,
}

/// Timeouts of the HTTP server. A client that stalls is cut off instead of holding a worker,
/// a connection or an upload slot.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Http {
    /// Time a client has to send the request head (actix `client_request_timeout`); after it
    /// the connection is closed with 408.
    pub request_head_timeout_ms: u64,
    /// Time the server waits for a client to acknowledge the close of a connection (actix
    /// `client_disconnect_timeout`).
    pub disconnect_timeout_ms: u64,
    /// Idle keep-alive connections are closed after this.
    pub keep_alive_secs: u64,
    /// A request body (JSON or upload) that sends no byte for this long is aborted with 408
    /// `request_timeout`; nothing is stored.
    pub body_idle_timeout_secs: u64,
    /// The whole body of a request must arrive within this, however it trickles (408).
    pub body_timeout_secs: u64,
}

/// Per-account log-in back-off (in memory, per API process): after `max_failures` wrong
/// passwords for one email, with no more than `window_secs` between them, the account's log-in
/// answers 429 `login_locked` with Retry-After for `base_delay_secs`, doubling with every
/// further failure up to `max_delay_secs`. A successful log-in resets it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Login {
    pub max_failures: u32,
    pub window_secs: u64,
    pub base_delay_secs: u64,
    pub max_delay_secs: u64,
    /// Most emails tracked at once (bounded memory; see `limits::LoginBackoff`).
    pub max_tracked: usize,
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
            nats_replicas: gridbook_wire::streams::DEFAULT_REPLICAS,
            nats_auth: Default::default(),
            markets_file: "matching-engine/engine/config/dev.toml".into(),
            db_pool_size: 16,
            workers: 2,
            secure_cookies: true,
            session_hours: 24,
            limits: Limits::default(),
            rate_limit: RateLimit::default(),
            http: Http::default(),
            login: Login::default(),
            web_dir: None,
            models_kek_file: None,
            identity: Default::default(),
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
            probation_cluster_ask_qty: 200,
            nodes_per_provider: 100,
            uploads_per_account: 2,
            uploads_total: 8,
            password_hashes: 0,
            password_queue: 16,
            model_bytes: 200 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// `password_hashes`, with 0 resolved to twice the CPU cores.
    pub fn password_hashes(&self) -> usize {
        if self.password_hashes > 0 {
            self.password_hashes
        } else {
            2 * std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Http {
            request_head_timeout_ms: 5_000,
            disconnect_timeout_ms: 1_000,
            keep_alive_secs: 15,
            body_idle_timeout_secs: 10,
            body_timeout_secs: 300,
        }
    }
}

impl Default for Login {
    fn default() -> Self {
        Login {
            max_failures: 5,
            window_secs: 15 * 60,
            base_delay_secs: 2,
            max_delay_secs: 15 * 60,
            max_tracked: 100_000,
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
