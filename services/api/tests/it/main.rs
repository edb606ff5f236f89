//! Integration tests: the real app (bound to port 0) against real PostgreSQL (a fresh database
//! per test) and the real NATS server (`GRIDBOOK_NATS_URL`); `cargo xtask test` provides both.
//! The harness (`TestApp`, `Stack`: private nats-server, engine, worker, agent) is
//! `gridbook-testkit`.

mod market;
mod identity;
mod studio;
mod provider;
mod authz;
mod malformed;
mod journey;
mod withholding;
mod economics;
mod attacks;
mod raw;
mod uploads;
mod timeouts;
mod logins;
mod caps;
mod nul;
mod errors;
mod openapi;
mod private_models;
mod clusters;
mod crosscheck;
mod token;
mod orders;
mod chaos;
mod ha_nats;
mod bulk;
mod ha_services;
