//! Who may connect to Gridbook's NATS, and as what.
//!
//! Gridbook runs nats-server in server-configuration mode with the **auth callout**
//! (nats-server ≥ 2.10): the market's own services (engine, settlement worker, API) connect with
//! nkeys listed in the server's configuration and bypass the callout (`auth_users`); every other
//! connection — a provider node, a stranger — is handed by the server to the callout service
//! (run by the API), which looks the presented credential up in PostgreSQL and answers with a
//! user JWT that carries the connection's permissions and expiry, or with a refusal.
//!
//! Why the callout rather than decentralised JWT accounts: the source of truth for who a node is,
//! whether it is suspended or deleted, and when its credential expires is the marketplace's
//! database; with the callout every (re)connection is checked against it, revocation needs no
//! account-JWT re-signing or resolver push (the API kicks live connections through the system
//! account, and the issued JWT expires on its own), and no operator key has to live in a
//! running service.
//!
//! * [`keys`]: the service keys (`.gridbook/nats/` or a test's folder) and the server's auth
//!   configuration written from them.
//! * [`jwt`]: NATS JWTs (`ed25519-nkey`): encode with a key pair, decode and verify.
//! * [`callout`]: the authorization request the server sends and the response the callout
//!   returns (pure).

pub mod callout;
pub mod jwt;
pub mod keys;

/// The account every Gridbook principal (services and nodes) lives in; JetStream is enabled for
/// it.
pub const ACCOUNT: &str = "GRIDBOOK";
/// The system account (server events, `CONNZ`, `KICK`).
pub const SYSTEM_ACCOUNT: &str = "SYS";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("jwt: {0}")]
    Jwt(String),
    #[error("nkey: {0}")]
    Nkey(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl AuthError {
    fn jwt(s: impl Into<String>) -> AuthError {
        AuthError::Jwt(s.into())
    }
}
