//! gridbook-api: the marketplace's HTTP API (actix-web).
//!
//! Every user reaches Gridbook through it: studios upload JSONL files and submit jobs, providers
//! register nodes and post asks, traders read markets and stream the book over a WebSocket.
//! Money lives in PostgreSQL (the ledger); orders reach the matching engine through the ledger's
//! outbox (published by the settlement worker), never directly from a handler.
//!
//! Code map:
//! - `app`: `Application::build(settings)` binds (port 0 in tests) and wires everything.
//! - `settings`: typed settings (defaults → TOML → `GRIDBOOK_*`).
//! - `state`: `AppState` shared by handlers (database pool, JetStream, markets, settings).
//! - `error`: `ApiError`, the one JSON error shape with a stable snake_case `code`.
//! - `db`: the r2d2 pool and `db::run` (diesel on the blocking pool).
//! - `auth`: passwords (argon2id), sessions (cookies), API keys, the `Principal` extractor.
//! - `idempotency`: `Idempotency-Key` handling for POSTs that create something.
//! - `accounts`, `money`: sign-up, log-in, keys, deposits, balance, statement.
//! - `files`, `jobs`: JSONL uploads to the object store, batch jobs and their escrowed bids.
//! - `nodes`: provider nodes and the hardware challenge; `asks`: a node's offers on a market;
//!   `assignments`: the work a provider's nodes were given, and earnings.
//! - `token`: the GRID token market — orders (escrowed credits or GRID), cancels, the GRID
//!   balance.
//! - `markets`: the market catalogue and the trader REST + WebSocket routes.
//! - `feed`: live market data: per-market book, tape and bounded WebSocket fan-out.
//! - `protocol`: public protocol books — GRID supply, fee revenue, epoch reports, the fee
//!   reconciliation.
//! - `openapi`: the OpenAPI document, served at `/openapi.json`.
//! - `body`: the body guard middleware (body timeouts → 408, NUL checks of JSON and queries).
//! - `validate`: the one NUL check of every text that reaches PostgreSQL.
//! - `limits`: per-process bounds (uploads per account and in total, password hashes, per-account
//!   log-in back-off).

pub mod accounts;
pub mod app;
pub mod asks;
pub mod assignments;
pub mod auth;
pub mod body;
pub mod db;
pub mod dead_letters;
pub mod error;
pub mod feed;
pub mod files;
pub mod health;
pub mod idempotency;
pub mod identity;
pub mod jobs;
pub mod limits;
pub mod markets;
pub mod models;
pub mod money;
pub mod node_access;
pub mod nodes;
pub mod openapi;
pub mod protocol;
pub mod settings;
pub mod state;
pub mod token;
pub mod validate;
pub mod verification;

/// The tables, declared once in `gridbook-db`.
use gridbook_db::schema;

pub use app::Application;
pub use error::ApiError;
pub use settings::Settings;
