//! Providers are strangers: what a node may reach, and how it proves who it is.
//!
//! * **NATS credentials.** `POST /v1/nodes/{id}/credentials` (the node's owner) issues a
//!   `gbn_…` token (256 random bits; only its sha256 is stored in `node_credentials`) that
//!   expires after `nats_auth.credential_ttl_secs`. A node connects to NATS with it as its auth
//!   token; nats-server hands every connection that is not a market service to the **auth
//!   callout** this API runs ([`run_callout`], on `$SYS.REQ.USER.AUTH`), which looks the token
//!   up and answers with a user JWT (`gridbook_natsauth::callout`) carrying exactly
//!   `gridbook_wire::access::node(id)` — its own results, heartbeats and assignment consumer —
//!   and an expiry of at most `jwt_ttl_secs` (the server then closes the connection; the agent
//!   reconnects and is checked again). Anything else (no token, an unknown, expired or revoked
//!   one, a suspended or deleted node) is refused, and logged with the reason.
//! * **Revocation.** Deleting a node (`DELETE /v1/nodes/{id}`) or suspending it
//!   (`POST /v1/admin/nodes/{id}/suspend`) revokes its credentials and kicks its live
//!   connections through the system account (`CONNZ` by user `node-<id>`, then `KICK`).
//! * **Per-assignment data.** `POST /v1/assignments/{id}/grant` (the node's credential as
//!   bearer) returns a `gbg_…` grant: an HMAC-SHA256 over (assignment, node, expiry) under a
//!   key of this process, valid `grant_ttl_secs`. With it, `GET /v1/assignments/{id}/input`
//!   streams only the assignment's lines of the job's input — each in its workload's canonical
//!   shape (`executor::registry::served_fields`), named by its position
//!   (`catalog::served_id`), with the market's canaries at the positions the settlement worker
//!   chose (`job_assignments.canaries`) — and `PUT /v1/assignments/{id}/output`
//!   stores the node's output (sha256-named, recorded as the assignment's `upload_sha256`, the
//!   only output the verifier accepts for it). Every use re-checks in PostgreSQL that the
//!   assignment is still `assigned`, before its deadline, and the node's; after it ends the grant
//!   no longer works.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use futures::StreamExt;
use gridbook_db::status::{AssignmentStatus, NodeStatus};
use gridbook_natsauth::callout::{self, Grant};
use gridbook_wire::{access, catalog, consumers, streams, subjects};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::{Principal, Role};
use crate::error::{ApiError, ApiResult};
use crate::schema::{files, job_assignments, jobs, node_credentials, nodes};
use crate::state::AppState;

pub const CREDENTIAL_PREFIX: &str = "gbn_";
pub const GRANT_PREFIX: &str = "gbg_";
/// Live credentials kept per node; issuing another revokes the oldest.
pub const CREDENTIALS_PER_NODE: i64 = 4;
/// Authorization requests answered at once (each is one indexed query).
const CALLOUT_CONCURRENCY: usize = 64;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsAuthSettings {
    /// This API's nkey seed (`api.nk`). Unset: connect without credentials.
    pub nkey_file: Option<PathBuf>,
    /// The callout issuer's account seed (`issuer.nk`). Set: this API answers the server's
    /// authorization requests (exactly one API per server should).
    pub issuer_file: Option<PathBuf>,
    /// The system account's seed (`sys.nk`): kicking revoked nodes' live connections.
    pub sys_nkey_file: Option<PathBuf>,
    /// A node credential's lifetime.
    pub credential_ttl_secs: u64,
    /// Longest life of one NATS connection's grant (then the server closes it and the node
    /// reconnects through the callout again).
    pub jwt_ttl_secs: u64,
    /// An assignment grant's lifetime.
    pub grant_ttl_secs: u64,
    /// Largest output a node may upload for one assignment.
    pub max_output_bytes: u64,
}

impl Default for NatsAuthSettings {
    fn default() -> Self {
        NatsAuthSettings {
            nkey_file: None,
            issuer_file: None,
            sys_nkey_file: None,
            credential_ttl_secs: 24 * 3600,
            jwt_ttl_secs: 600,
            grant_ttl_secs: 900,
            max_output_bytes: 256 * 1024 * 1024,
        }
    }
}

/// What the API holds for node access: the callout's issuer, the system connection, the grant
/// key (random per process: grants are short-lived, a node asks again after a restart).
pub struct NodeAccess {
    pub issuer: Option<nkeys::KeyPair>,
    pub sys: Option<async_nats::Client>,
    grant_key: [u8; 32],
}

impl NodeAccess {
    pub async fn build(settings: &crate::settings::Settings) -> anyhow::Result<NodeAccess> {
        let a = &settings.nats_auth;
        let issuer = match &a.issuer_file {
            Some(f) => Some(gridbook_natsauth::keys::load_seed(f)?),
            None => None,
        };
        let sys = match &a.sys_nkey_file {
            Some(f) => Some(
                gridbook_wire::connect::service_options("gridbook-api-sys", Some(f))
                    .map_err(anyhow::Error::msg)?
                    .connect(gridbook_wire::connect::servers(&settings.nats_url).map_err(anyhow::Error::msg)?)
                    .await?,
            ),
            None => None,
        };
        let mut grant_key = [0u8; 32];
        getrandom::fill(&mut grant_key).map_err(|e| anyhow::anyhow!("random grant key: {e}"))?;
        Ok(NodeAccess {
            issuer,
            sys,
            grant_key,
        })
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/nodes/{id}/credentials").route(web::post().to(issue_credential)))
        .service(web::resource("/admin/nodes/{id}/suspend").route(web::post().to(suspend_node)))
        .service(web::resource("/assignments/{id}/grant").route(web::post().to(grant)))
        .service(web::resource("/assignments/{id}/input").route(web::get().to(input)))
        .service(web::resource("/assignments/{id}/model").route(web::get().to(model)))
        .service(web::resource("/assignments/{id}/model-key").route(web::get().to(model_key)))
        .service(
            web::resource("/assignments/{id}/output")
                .app_data(web::PayloadConfig::new(usize::MAX))
                .route(web::put().to(output)),
        );
}

fn sha256(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

fn random_token(prefix: &str) -> ApiResult<String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(ApiError::internal)?;
    Ok(format!("{prefix}{}", hex::encode(b)))
}

fn bearer<'a>(req: &'a HttpRequest, prefix: &str) -> ApiResult<&'a str> {
    let v = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::unauthorized(format!("send Authorization: Bearer {prefix}…")))?;
    if !v.starts_with(prefix) {
        return Err(ApiError::unauthorized(format!(
            "this route takes a {prefix}… credential"
        )));
    }
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NatsGrantOut {
    /// The user name the server shows for the node's connections.
    pub user: String,
    /// Set as the client's inbox prefix (replies arrive below the node's own subjects).
    pub inbox_prefix: String,
    /// The node's durable pull consumer on `stream`.
    pub consumer: String,
    pub stream: String,
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CredentialOut {
    pub node_id: Uuid,
    /// The NATS auth token (`gbn_…`); shown once. Also the bearer of
    /// `POST /v1/assignments/{id}/grant`.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub nats: NatsGrantOut,
}

/// The node's durable assignment consumer (idempotent). A node cannot create consumers itself.
pub async fn ensure_node_consumer(state: &AppState, node: Uuid) -> ApiResult<()> {
    let stream = state
        .js
        .get_or_create_stream(streams::config(
            streams::ASSIGNMENTS,
            subjects::ALL_NODE_ASSIGNS,
            streams::DEFAULT_MAX_AGE,
            state.settings.nats_replicas,
        ))
        .await
        .map_err(ApiError::internal)?;
    let name = consumers::node(&node.to_string());
    stream
        .get_or_create_consumer::<async_nats::jetstream::consumer::pull::Config>(
            &name,
            async_nats::jetstream::consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: subjects::node_assign(&node.to_string()),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 64,
                ..Default::default()
            },
        )
        .await
        .map_err(ApiError::internal)?;
    Ok(())
}

/// Issue a NATS credential for one of the caller's nodes (probation or active).
#[utoipa::path(post, path = "/v1/nodes/{id}/credentials", tag = "nodes",
    responses((status = 201, body = CredentialOut), (status = 404, body = crate::error::ErrorResponse),
        (status = 409, description = "`node_suspended` or `node_deleted`", body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn issue_credential(
    state: web::Data<AppState>,
    principal: Principal,
    http: HttpRequest,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    principal.require_provider(true)?;
    let (owner, id) = (principal.user_id, id.into_inner());
    let seen = crate::identity::Seen::of(&state.settings.identity, &http);
    let token = random_token(CREDENTIAL_PREFIX)?;
    let hash = sha256(token.as_bytes());
    let ttl = chrono::Duration::seconds(state.settings.nats_auth.credential_ttl_secs.max(1) as i64);
    let expires_at = crate::db::run(&state.db, move |c| {
        c.transaction(|c| {
            let node = crate::nodes::load_node(c, owner, id, true)?;
            refuse_closed(node.status)?;
            seen.record(c, owner, Some(id))?;
            let now = Utc::now();
            let expires_at = now + ttl;
            diesel::insert_into(node_credentials::table)
                .values((
                    node_credentials::id.eq(Uuid::now_v7()),
                    node_credentials::node_id.eq(id),
                    node_credentials::token_sha256.eq(&hash),
                    node_credentials::created_at.eq(now),
                    node_credentials::expires_at.eq(expires_at),
                ))
                .execute(c)?;
            // Bounded: keep the newest CREDENTIALS_PER_NODE live ones.
            let keep: Vec<Uuid> = node_credentials::table
                .filter(node_credentials::node_id.eq(id))
                .filter(node_credentials::revoked_at.is_null())
                .order(node_credentials::created_at.desc())
                .limit(CREDENTIALS_PER_NODE)
                .select(node_credentials::id)
                .load(c)?;
            diesel::update(
                node_credentials::table
                    .filter(node_credentials::node_id.eq(id))
                    .filter(node_credentials::revoked_at.is_null())
                    .filter(node_credentials::id.ne_all(keep)),
            )
            .set(node_credentials::revoked_at.eq(now))
            .execute(c)?;
            Ok(expires_at)
        })
    })
    .await?;
    ensure_node_consumer(&state, id).await?;
    tracing::info!(node = %id, user = %owner, %expires_at, "node credential issued");
    let node = id.to_string();
    let perms = access::node(&node);
    Ok(HttpResponse::Created().json(CredentialOut {
        node_id: id,
        token,
        expires_at,
        nats: NatsGrantOut {
            user: format!("node-{node}"),
            inbox_prefix: subjects::node_inbox_prefix(&node),
            consumer: consumers::node(&node),
            stream: streams::ASSIGNMENTS.into(),
            publish: perms.publish,
            subscribe: perms.subscribe,
        },
    }))
}

fn refuse_closed(status: NodeStatus) -> ApiResult<()> {
    match status {
        NodeStatus::Suspended => Err(ApiError::conflict(
            "node_suspended",
            "the node is suspended",
        )),
        NodeStatus::Deleted => Err(ApiError::conflict("node_deleted", "the node was deleted")),
        NodeStatus::Probation | NodeStatus::Active => Ok(()),
    }
}

/// The node a `gbn_…` token belongs to, if it may act now: (node, owner, credential expiry).
fn node_of_credential(
    c: &mut PgConnection,
    token: &str,
) -> Result<(Uuid, Uuid, DateTime<Utc>), String> {
    let hash = sha256(token.as_bytes());
    let row: Option<(Uuid, Uuid, DateTime<Utc>, Option<DateTime<Utc>>, NodeStatus)> =
        node_credentials::table
            .inner_join(nodes::table)
            .filter(node_credentials::token_sha256.eq(&hash))
            .select((
                nodes::id,
                nodes::owner,
                node_credentials::expires_at,
                node_credentials::revoked_at,
                nodes::status,
            ))
            .first(c)
            .optional()
            .map_err(|e| format!("lookup failed: {e}"))?;
    let Some((node, owner, expires_at, revoked_at, status)) = row else {
        return Err("unknown credential".into());
    };
    if revoked_at.is_some() {
        return Err(format!("credential of node {node} was revoked"));
    }
    if expires_at <= Utc::now() {
        return Err(format!("credential of node {node} expired at {expires_at}"));
    }
    match status {
        NodeStatus::Probation | NodeStatus::Active => Ok((node, owner, expires_at)),
        s => Err(format!("node {node} is {s}")),
    }
}

/// The calling node (`Authorization: Bearer gbn_…`).
async fn calling_node(state: &AppState, req: &HttpRequest) -> ApiResult<Uuid> {
    let token = bearer(req, CREDENTIAL_PREFIX)?.to_owned();
    let r = crate::db::run(&state.db, move |c| Ok(node_of_credential(c, &token))).await?;
    match r {
        Ok((node, _, _)) => Ok(node),
        Err(why) => {
            tracing::warn!(reason = %why, path = %req.path(), "node credential refused");
            Err(ApiError::unauthorized(why))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The auth callout
// ---------------------------------------------------------------------------------------------

/// Answers nats-server's authorization requests until the subscription ends. Bounded: at most
/// [`CALLOUT_CONCURRENCY`] answered at once.
pub async fn run_callout(state: AppState, issuer: Arc<nkeys::KeyPair>) -> anyhow::Result<()> {
    let mut sub = state
        .nats
        .queue_subscribe(callout::AUTH_SUBJECT, "gridbook-auth-callout".into())
        .await?;
    let slots = Arc::new(tokio::sync::Semaphore::new(CALLOUT_CONCURRENCY));
    tracing::info!("NATS auth callout running");
    while let Some(msg) = sub.next().await {
        let permit = slots.clone().acquire_owned().await?;
        let (state, issuer) = (state.clone(), issuer.clone());
        tokio::spawn(async move {
            answer(&state, &issuer, msg).await;
            drop(permit);
        });
    }
    Ok(())
}

async fn answer(state: &AppState, issuer: &nkeys::KeyPair, msg: async_nats::Message) {
    let Some(reply) = msg.reply.clone() else {
        return;
    };
    let request = match callout::decode_request(&msg.payload) {
        Ok(r) => r,
        Err(e) => {
            // Not from a server we trust (or garbled): nothing to answer to.
            tracing::warn!(error = %e, "authorization request refused: undecodable");
            return;
        }
    };
    let outcome = authorize(state, &request).await;
    let (host, cid) = (request.client.host.clone(), request.client.id);
    match &outcome {
        Ok(g) => {
            tracing::info!(user = %g.name, %host, cid, expires_at = g.expires_at, "NATS connection authorized")
        }
        Err(why) => {
            tracing::warn!(reason = %why, %host, cid, client = %request.client.name, "NATS connection refused")
        }
    }
    let token = match callout::respond(issuer, &request, outcome.as_ref().map_err(String::as_str)) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "signing the authorization response failed");
            return;
        }
    };
    if let Err(e) = state.nats.publish(reply, token.into()).await {
        tracing::warn!(error = %e, "authorization response not sent");
    }
}

async fn authorize(state: &AppState, request: &callout::AuthRequest) -> Result<Grant, String> {
    let token = request.connect.auth_token.clone();
    if !token.starts_with(CREDENTIAL_PREFIX) {
        return Err("no node credential presented (anonymous connections are not allowed)".into());
    }
    let found = crate::db::run(&state.db, move |c| Ok(node_of_credential(c, &token)))
        .await
        .map_err(|e| format!("lookup failed: {}", e.message))??;
    let (node, _owner, credential_expires) = found;
    let ttl = state.settings.nats_auth.jwt_ttl_secs.max(1) as i64;
    let expires_at = credential_expires
        .timestamp()
        .min(Utc::now().timestamp() + ttl);
    let perms = access::node(&node.to_string());
    Ok(Grant {
        name: format!("node-{node}"),
        account: gridbook_natsauth::ACCOUNT.into(),
        publish: perms.publish,
        subscribe: perms.subscribe,
        expires_at,
        max_subscriptions: 64,
        max_payload: 1024 * 1024,
    })
}

// ---------------------------------------------------------------------------------------------
// Revocation: delete, suspend, kick
// ---------------------------------------------------------------------------------------------

/// Revokes every credential of `node` (in the caller's transaction).
pub fn revoke_credentials(c: &mut PgConnection, node: Uuid) -> QueryResult<usize> {
    gridbook_db::nodes::revoke_credentials(c, node)
}

/// Closes the live NATS connections of `node` on every server of the cluster; returns how many
/// were kicked. `$SYS.REQ.SERVER.PING.CONNZ` is answered by each server for its own
/// connections, so the replies are gathered (the first within 5 s, then until 500 ms pass with
/// none, at most 64) and each connection is kicked on the server that holds it — a node on
/// another server than the API's system connection is kicked too. Without a system connection
/// nothing is kicked and the node's connections end when their grant expires (`jwt_ttl_secs`).
pub async fn kick_node(state: &AppState, node: Uuid) -> usize {
    let Some(sys) = &state.node_access.sys else {
        tracing::warn!(node = %node, "no NATS system connection: live connections end at their grant's expiry");
        return 0;
    };
    let user = format!("node-{node}");
    let q = serde_json::json!({"user": user, "auth": true, "limit": 4096});
    let replies = match gather(sys, "$SYS.REQ.SERVER.PING.CONNZ", q.to_string().into()).await {
        Ok(r) if !r.is_empty() => r,
        Ok(_) => {
            tracing::warn!(node = %node, "CONNZ: no server answered");
            return 0;
        }
        Err(e) => {
            tracing::warn!(node = %node, error = %e, "CONNZ failed");
            return 0;
        }
    };
    let mut kicked = 0;
    for reply in &replies {
        let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
        let server = v["server"]["id"].as_str().unwrap_or_default().to_owned();
        for conn in v["data"]["connections"].as_array().into_iter().flatten() {
            // The server filters by user; check again in case it ignored the filter.
            if conn["authorized_user"].as_str() != Some(user.as_str()) {
                continue;
            }
            let Some(cid) = conn["cid"].as_u64() else {
                continue;
            };
            let subject = format!("$SYS.REQ.SERVER.{server}.KICK");
            match tokio::time::timeout(
                Duration::from_secs(5),
                sys.request(subject, serde_json::json!({"cid": cid}).to_string().into()),
            )
            .await
            {
                Ok(Ok(_)) => kicked += 1,
                _ => tracing::warn!(node = %node, cid, %server, "KICK failed"),
            }
        }
    }
    tracing::info!(node = %node, kicked, servers = replies.len(), "node's NATS connections kicked");
    kicked
}

/// Publishes `payload` to `subject` with a private inbox as the reply and collects the answers
/// of every server: the first within 5 s, then more until 500 ms pass without one (at most 64).
async fn gather(
    sys: &async_nats::Client,
    subject: &str,
    payload: bytes::Bytes,
) -> Result<Vec<async_nats::Message>, String> {
    let inbox = sys.new_inbox();
    let mut sub = sys.subscribe(inbox.clone()).await.map_err(|e| e.to_string())?;
    sys.publish_with_reply(subject.to_owned(), inbox, payload).await.map_err(|e| e.to_string())?;
    sys.flush().await.map_err(|e| e.to_string())?;
    let mut replies = Vec::new();
    while replies.len() < 64 {
        let wait = if replies.is_empty() { Duration::from_secs(5) } else { Duration::from_millis(500) };
        match tokio::time::timeout(wait, sub.next()).await {
            Ok(Some(m)) => replies.push(m),
            _ => break,
        }
    }
    let _ = sub.unsubscribe().await;
    Ok(replies)
}

/// Delete one of the caller's nodes: its credentials are revoked, its live NATS connections
/// closed, its open asks cancelled; it can never connect or get work again. Its history stays.
#[utoipa::path(delete, path = "/v1/nodes/{id}", tag = "nodes",
    responses((status = 200, body = crate::nodes::NodeOut), (status = 404, body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn delete_node(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    principal.require_provider(true)?;
    let (owner, id) = (principal.user_id, id.into_inner());
    let row = crate::db::run(&state.db, move |c| {
        c.transaction(|c| {
            crate::nodes::load_node(c, owner, id, true)?;
            let row: crate::nodes::NodeRow = diesel::update(nodes::table.find(id))
                .set(nodes::status.eq(NodeStatus::Deleted))
                .returning(crate::nodes::NodeRow::as_returning())
                .get_result(c)?;
            let revoked = revoke_credentials(c, id)?;
            let cancelled = crate::asks::cancel_open_asks_of_node(c, id, principal.engine_account)?;
            tracing::info!(node = %id, user = %owner, revoked, cancelled, "node deleted");
            Ok(row)
        })
    })
    .await?;
    kick_node(&state, id).await;
    Ok(HttpResponse::Ok().json(crate::nodes::NodeOut::from(row)))
}

/// Suspend a node (admins): credentials revoked, live connections closed, no new asks.
#[utoipa::path(post, path = "/v1/admin/nodes/{id}/suspend", tag = "nodes",
    responses((status = 200, body = crate::nodes::NodeOut), (status = 404, body = crate::error::ErrorResponse)),
    security(("api_key" = []), ("session" = [])))]
pub async fn suspend_node(
    state: web::Data<AppState>,
    principal: Principal,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    principal.require_role(&[Role::Admin])?;
    let id = id.into_inner();
    let row = crate::db::run(&state.db, move |c| {
        c.transaction(|c| {
            let row: Option<crate::nodes::NodeRow> = diesel::update(
                nodes::table
                    .find(id)
                    .filter(nodes::status.ne(NodeStatus::Deleted)),
            )
            .set(nodes::status.eq(NodeStatus::Suspended))
            .returning(crate::nodes::NodeRow::as_returning())
            .get_result(c)
            .optional()?;
            let row = row.ok_or_else(|| ApiError::not_found("node"))?;
            let revoked = revoke_credentials(c, id)?;
            tracing::info!(node = %id, admin = %principal.user_id, revoked, "node suspended");
            Ok(row)
        })
    })
    .await?;
    kick_node(&state, id).await;
    Ok(HttpResponse::Ok().json(crate::nodes::NodeOut::from(row)))
}

// ---------------------------------------------------------------------------------------------
// Per-assignment grants and data
// ---------------------------------------------------------------------------------------------

type HmacSha256 = Hmac<Sha256>;

fn grant_mac(key: &[u8; 32], assignment: Uuid, node: Uuid, expires_ms: i64) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"gridbook-assignment-grant-v1");
    mac.update(assignment.as_bytes());
    mac.update(node.as_bytes());
    mac.update(&expires_ms.to_be_bytes());
    mac
}

fn make_grant(key: &[u8; 32], assignment: Uuid, node: Uuid, expires_ms: i64) -> String {
    let tag = grant_mac(key, assignment, node, expires_ms)
        .finalize()
        .into_bytes();
    let mut raw = Vec::with_capacity(72);
    raw.extend_from_slice(assignment.as_bytes());
    raw.extend_from_slice(node.as_bytes());
    raw.extend_from_slice(&expires_ms.to_be_bytes());
    raw.extend_from_slice(&tag);
    format!("{GRANT_PREFIX}{}", hex::encode(raw))
}

/// (node) of a valid, unexpired grant for `assignment`; Err says why not.
fn check_grant(key: &[u8; 32], token: &str, assignment: Uuid) -> Result<Uuid, String> {
    let raw = token
        .strip_prefix(GRANT_PREFIX)
        .and_then(|h| hex::decode(h).ok())
        .filter(|r| r.len() == 72)
        .ok_or("malformed grant")?;
    let a = Uuid::from_slice(&raw[0..16]).map_err(|_| "malformed grant")?;
    let node = Uuid::from_slice(&raw[16..32]).map_err(|_| "malformed grant")?;
    let expires_ms = i64::from_be_bytes(raw[32..40].try_into().map_err(|_| "malformed grant")?);
    grant_mac(key, a, node, expires_ms)
        .verify_slice(&raw[40..72])
        .map_err(|_| "grant signature does not verify")?;
    if a != assignment {
        return Err(format!("the grant is for assignment {a}, not {assignment}"));
    }
    if expires_ms <= Utc::now().timestamp_millis() {
        return Err("the grant expired".into());
    }
    Ok(node)
}

/// What the data routes need of an open assignment.
struct OpenAssignment {
    input_sha256: String,
    /// The job's workload (the served shape of its lines).
    kind: catalog::WorkloadKind,
    items: Items,
    /// Lines served: the items and the canaries.
    item_count: u64,
    /// The market's canaries: position among the served lines, served fields (ascending).
    canaries: Vec<(u64, serde_json::Map<String, serde_json::Value>)>,
    /// The job's private model and the sha256 the job pinned.
    model: Option<(Uuid, String)>,
}

/// Which items of the job's input an assignment gets (0-based, blank lines not counted).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Items {
    /// `[start, end)`: a job assignment.
    Range { start: u64, end: u64 },
    /// Ascending item numbers: a verification task's sample (`verification_tasks.items`).
    Set(Vec<u64>),
}

impl Items {
    fn contains(&self, i: u64) -> bool {
        match self {
            Items::Range { start, end } => (*start..*end).contains(&i),
            Items::Set(s) => s.binary_search(&i).is_ok(),
        }
    }
    /// One past the last item served.
    fn end(&self) -> u64 {
        match self {
            Items::Range { end, .. } => *end,
            Items::Set(s) => s.last().map_or(0, |l| l + 1),
        }
    }
}

/// A verification task (`verification_tasks`) that is `assigned` to `node` before its deadline:
/// the verifying node sees only the sampled input lines, never the first node's output.
fn open_task(c: &mut PgConnection, task: Uuid, node: Uuid) -> ApiResult<Option<OpenAssignment>> {
    use gridbook_db::schema::verification_tasks as vt;
    type Row = (Uuid, String, DateTime<Utc>, Vec<Option<i64>>, String, String);
    let row: Option<Row> = vt::table
        .inner_join(jobs::table.inner_join(files::table))
        .filter(vt::id.eq(task))
        .select((vt::node_id, vt::status, vt::deadline, vt::items, files::sha256, jobs::market))
        .first(c)
        .optional()?;
    let Some((owner_node, status, deadline, items, sha, market)) = row else {
        return Ok(None);
    };
    if owner_node != node {
        return Err(ApiError::forbidden("the assignment belongs to another node"));
    }
    if status != "assigned" {
        return Err(ApiError::conflict("assignment_closed", format!("the assignment is {status}")));
    }
    if deadline <= Utc::now() {
        return Err(ApiError::conflict("assignment_closed", "the assignment is past its deadline"));
    }
    let mut items: Vec<u64> = items.into_iter().flatten().map(|i| i.max(0) as u64).collect();
    items.sort_unstable();
    items.dedup();
    Ok(Some(OpenAssignment {
        input_sha256: sha,
        kind: kind_of(&market)?,
        item_count: items.len() as u64,
        items: Items::Set(items),
        canaries: Vec::new(),
        model: None,
    }))
}

/// The assignment (or verification task), if it is `assigned`, before its deadline, and `node`'s.
fn open_assignment(
    c: &mut PgConnection,
    assignment: Uuid,
    node: Uuid,
) -> ApiResult<OpenAssignment> {
    type Row = (Uuid, AssignmentStatus, DateTime<Utc>, i32, i32, String, Option<Uuid>, Option<String>, String, serde_json::Value);
    let row: Option<Row> = job_assignments::table
        .inner_join(jobs::table.inner_join(files::table))
        .filter(job_assignments::id.eq(assignment))
        .select((
            job_assignments::node_id,
            job_assignments::status,
            job_assignments::deadline,
            job_assignments::item_start,
            job_assignments::item_count,
            files::sha256,
            jobs::model_id,
            jobs::model_sha256,
            jobs::market,
            job_assignments::canaries,
        ))
        .first(c)
        .optional()?;
    let Some((owner_node, status, deadline, item_start, item_count, sha, model_id, model_sha, market, slots)) = row else {
        return open_task(c, assignment, node)?.ok_or_else(|| ApiError::not_found("assignment"));
    };
    if owner_node != node {
        return Err(ApiError::forbidden(
            "the assignment belongs to another node",
        ));
    }
    if status != AssignmentStatus::Assigned {
        return Err(ApiError::conflict(
            "assignment_closed",
            format!("the assignment is {status}"),
        ));
    }
    if deadline <= Utc::now() {
        return Err(ApiError::conflict(
            "assignment_closed",
            "the assignment is past its deadline",
        ));
    }
    let slots: Vec<catalog::CanarySlot> = serde_json::from_value(slots)
        .map_err(|e| ApiError::internal(format!("assignment {assignment}: its canaries do not read: {e}")))?;
    let canaries = canary_inputs(c, &slots)?;
    Ok(OpenAssignment {
        input_sha256: sha,
        kind: kind_of(&market)?,
        items: Items::Range { start: item_start as u64, end: item_start as u64 + item_count as u64 },
        item_count: item_count as u64 + canaries.len() as u64,
        canaries,
        model: model_id.zip(model_sha),
    })
}

fn kind_of(market: &str) -> ApiResult<catalog::WorkloadKind> {
    catalog::work(market)
        .map(|w| w.kind)
        .ok_or_else(|| ApiError::internal(format!("market {market} has no workload")))
}

/// The served fields of an assignment's canaries (`canary_items.input`), in slot order.
fn canary_inputs(
    c: &mut PgConnection,
    slots: &[catalog::CanarySlot],
) -> ApiResult<Vec<(u64, serde_json::Map<String, serde_json::Value>)>> {
    use gridbook_db::schema::canary_items;
    if slots.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = slots.iter().map(|s| s.id).collect();
    let rows: std::collections::HashMap<Uuid, serde_json::Value> = canary_items::table
        .filter(canary_items::id.eq_any(&ids))
        .select((canary_items::id, canary_items::input))
        .load::<(Uuid, serde_json::Value)>(c)?
        .into_iter()
        .collect();
    slots
        .iter()
        .map(|s| match rows.get(&s.id) {
            Some(serde_json::Value::Object(m)) => Ok((s.at, m.clone())),
            _ => Err(ApiError::internal(format!("canary {} is missing from the pool", s.id))),
        })
        .collect()
}

/// One served line: the fields in the workload's canonical shape under the position's id.
fn served_line(
    position: u64,
    fields: &serde_json::Map<String, serde_json::Value>,
    out: &mut Vec<u8>,
) {
    let mut obj = serde_json::Map::with_capacity(fields.len() + 1);
    obj.insert("custom_id".into(), serde_json::Value::String(catalog::served_id(position)));
    obj.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
    // A map of JSON values always serializes.
    serde_json::to_writer(&mut *out, &obj).expect("JSON");
    out.push(b'\n');
}

/// A job's input line as the node is served it (`executor::registry::served_fields`). The line
/// was checked at upload, so an error here means the stored file changed.
fn served_item(
    kind: catalog::WorkloadKind,
    position: u64,
    line: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let mut obj: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(line).map_err(|e| format!("an input line does not parse: {e}"))?;
    let id = match obj.remove("custom_id") {
        Some(serde_json::Value::String(s)) => s,
        _ => return Err("an input line has no custom_id".into()),
    };
    let fields = executor::registry::served_fields(kind, &id, &obj)
        .map_err(|e| format!("input line {id}: {}: {}", e.field, e.message))?;
    served_line(position, &fields, out);
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GrantOut {
    pub assignment_id: Uuid,
    /// `gbg_…`: the bearer of the input and output routes of this assignment only.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// `GET` it: the assignment's input lines (JSONL).
    pub input_url: String,
    pub items: u64,
    /// `PUT` the output JSONL there.
    pub output_url: String,
    pub max_output_bytes: u64,
    /// The job's private model: fetch it sealed from `url`, its key from `key_url`.
    pub model: Option<GrantModelOut>,
}

/// Where an assignment's private model and its key are.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GrantModelOut {
    pub id: Uuid,
    /// The sha256 the job pinned: load exactly this.
    pub sha256: String,
    /// Size of the sealed model (plaintext + 16).
    pub bytes: u64,
    pub url: String,
    pub key_url: String,
}

/// A private model's data key, released to one open assignment.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelKeyOut {
    pub model_id: Uuid,
    pub sha256: String,
    /// `xchacha20poly1305`; the associated data is `gridbook_sealed::model_aad(id, sha256)`.
    pub algorithm: String,
    pub key_b64: String,
    pub nonce_b64: String,
}

/// A short-lived grant to one open assignment's data (the node's credential as bearer).
#[utoipa::path(post, path = "/v1/assignments/{id}/grant", tag = "nodes",
    responses((status = 200, body = GrantOut), (status = 401, body = crate::error::ErrorResponse),
        (status = 403, description = "another node's assignment", body = crate::error::ErrorResponse),
        (status = 409, description = "`assignment_closed`", body = crate::error::ErrorResponse)),
    security(("node_credential" = [])))]
pub async fn grant(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let node = calling_node(&state, &req).await?;
    let id = id.into_inner();
    let open = crate::db::run(&state.db, move |c| open_assignment(c, id, node))
        .await
        .inspect_err(|e| tracing::warn!(node = %node, assignment = %id, code = e.code, "assignment grant refused"))?;
    let ttl = state.settings.nats_auth.grant_ttl_secs.max(1) as i64;
    let expires_at = Utc::now() + chrono::Duration::seconds(ttl);
    let token = make_grant(
        &state.node_access.grant_key,
        id,
        node,
        expires_at.timestamp_millis(),
    );
    let model = match &open.model {
        Some((model_id, sha)) => {
            let model_id = *model_id;
            let row = crate::db::run(&state.db, move |c| Ok(crate::models::load(c, model_id)?)).await?;
            Some(GrantModelOut {
                id: model_id,
                sha256: sha.clone(),
                bytes: row.bytes as u64 + gridbook_sealed::TAG_LEN as u64,
                url: format!("/v1/assignments/{id}/model"),
                key_url: format!("/v1/assignments/{id}/model-key"),
            })
        }
        None => None,
    };
    Ok(HttpResponse::Ok().json(GrantOut {
        model,
        assignment_id: id,
        token,
        expires_at,
        input_url: format!("/v1/assignments/{id}/input"),
        items: open.item_count,
        output_url: format!("/v1/assignments/{id}/output"),
        max_output_bytes: state.settings.nats_auth.max_output_bytes,
    }))
}

async fn granted(
    state: &AppState,
    req: &HttpRequest,
    id: Uuid,
) -> ApiResult<(Uuid, OpenAssignment)> {
    let token = bearer(req, GRANT_PREFIX)?;
    let node = check_grant(&state.node_access.grant_key, token, id).map_err(|why| {
        tracing::warn!(assignment = %id, reason = %why, path = %req.path(), "assignment grant refused");
        ApiError::unauthorized(why)
    })?;
    let open = crate::db::run(&state.db, move |c| open_assignment(c, id, node))
        .await
        .inspect_err(|e| tracing::warn!(node = %node, assignment = %id, code = e.code, "assignment data refused"))?;
    Ok((node, open))
}

/// The open assignment's private model row (the job's, with its pinned sha256), or 404
/// `no_model` when the job runs the market's model.
async fn assignment_model(state: &AppState, id: Uuid, open: &OpenAssignment) -> ApiResult<gridbook_db::rows::ModelRow> {
    let Some((model_id, pinned)) = open.model.clone() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no_model", "the assignment's job runs the market's model"));
    };
    let row = crate::db::run(&state.db, move |c| Ok(crate::models::load(c, model_id)?)).await?;
    if row.sha256 != pinned {
        // Cannot happen (models are immutable); refuse rather than hand out other bytes.
        tracing::error!(assignment = %id, model = %model_id, "model sha256 differs from the job's pin");
        return Err(ApiError::internal("the model differs from the one the job pinned"));
    }
    Ok(row)
}

/// The assignment's private model, sealed (XChaCha20-Poly1305 ciphertext), streamed.
#[utoipa::path(get, path = "/v1/assignments/{id}/model", tag = "nodes",
    responses((status = 200, description = "the sealed model", content_type = "application/octet-stream"),
        (status = 401, body = crate::error::ErrorResponse), (status = 404, description = "`no_model`", body = crate::error::ErrorResponse),
        (status = 409, body = crate::error::ErrorResponse)),
    security(("assignment_grant" = [])))]
pub async fn model(state: web::Data<AppState>, req: HttpRequest, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    let id = id.into_inner();
    let (node, open) = granted(&state, &req, id).await?;
    let row = assignment_model(&state, id, &open).await?;
    let store = streams::ensure_files_bucket(&state.js, state.settings.nats_replicas).await.map_err(ApiError::internal)?;
    let object = store.get(&row.object).await.map_err(ApiError::internal)?;
    tracing::info!(node = %node, assignment = %id, model = %row.id, "sealed model sent");
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .streaming(tokio_util::io::ReaderStream::new(object)))
}

/// The data key of the assignment's private model, released to this open assignment of this
/// node only; each release is recorded (`GET /v1/models/{id}/releases`).
#[utoipa::path(get, path = "/v1/assignments/{id}/model-key", tag = "nodes",
    responses((status = 200, body = ModelKeyOut),
        (status = 401, body = crate::error::ErrorResponse), (status = 404, description = "`no_model`", body = crate::error::ErrorResponse),
        (status = 409, body = crate::error::ErrorResponse), (status = 503, description = "`models_unavailable`", body = crate::error::ErrorResponse)),
    security(("assignment_grant" = [])))]
pub async fn model_key(state: web::Data<AppState>, req: HttpRequest, id: web::Path<Uuid>) -> ApiResult<HttpResponse> {
    use base64::Engine as _;
    let id = id.into_inner();
    let (node, open) = granted(&state, &req, id).await?;
    let row = assignment_model(&state, id, &open).await?;
    let kek = crate::models::kek(&state)?;
    let aad = gridbook_sealed::model_aad(row.id.as_bytes(), &row.sha256);
    let key = kek.unwrap(&row.wrapped_key, &aad).map_err(ApiError::internal)?;
    let model_id = row.id;
    crate::db::run(&state.db, move |c| Ok(crate::models::record_release(c, model_id, id, node)?)).await?;
    tracing::info!(node = %node, assignment = %id, model = %model_id, "model key released");
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(ModelKeyOut {
        model_id,
        sha256: row.sha256,
        algorithm: gridbook_sealed::ALGORITHM.into(),
        key_b64: b64.encode(key.as_bytes()),
        nonce_b64: b64.encode(&row.nonce),
    }))
}

/// The assignment's input: items `[item_start, item_start + item_count)` of the job's file (a
/// verification task: its sampled items), one per line, in input order, with the market's
/// canaries among them, streamed. Every line is `{"custom_id": "i<position>", <fields>}`, the
/// fields in the workload's canonical shape; the node answers under the same ids.
#[utoipa::path(get, path = "/v1/assignments/{id}/input", tag = "nodes",
    responses((status = 200, description = "JSONL: the assignment's items", content_type = "application/x-ndjson"),
        (status = 401, body = crate::error::ErrorResponse), (status = 409, body = crate::error::ErrorResponse)),
    security(("assignment_grant" = [])))]
pub async fn input(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<Uuid>,
) -> ApiResult<HttpResponse> {
    let id = id.into_inner();
    let (node, open) = granted(&state, &req, id).await?;
    let store = streams::ensure_files_bucket(&state.js, state.settings.nats_replicas)
        .await
        .map_err(ApiError::internal)?;
    let object = store
        .get(&open.input_sha256)
        .await
        .map_err(ApiError::internal)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(8);
    let (items, end, kind) = (open.items.clone(), open.items.end(), open.kind);
    let canaries = open.canaries.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut reader = tokio::io::BufReader::new(object);
        let mut line = Vec::new();
        let mut chunk = Vec::with_capacity(64 * 1024);
        let mut item = 0u64;
        // The next served position, and the next canary to place.
        let (mut position, mut next) = (0u64, 0usize);
        let fail = |why: String| std::io::Error::other(why);
        while item < end {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
            let content = line.strip_suffix(b"\n").unwrap_or(&line);
            if catalog::is_blank(content) {
                continue;
            }
            if items.contains(item) {
                while canaries.get(next).is_some_and(|(at, _)| *at == position) {
                    served_line(position, &canaries[next].1, &mut chunk);
                    (position, next) = (position + 1, next + 1);
                }
                if let Err(why) = served_item(kind, position, content, &mut chunk) {
                    tracing::error!(error = %why, "an assignment's input line cannot be served");
                    let _ = tx.send(Err(fail(why))).await;
                    return;
                }
                position += 1;
                if chunk.len() >= 64 * 1024
                    && tx
                        .send(Ok(std::mem::take(&mut chunk).into()))
                        .await
                        .is_err()
                {
                    return;
                }
            }
            item += 1;
        }
        if item < end {
            let _ = tx
                .send(Err(fail(format!("the input has {item} items, the assignment ends at {end}"))))
                .await;
            return;
        }
        // Canaries after the last item.
        for (at, fields) in &canaries[next..] {
            served_line(*at, fields, &mut chunk);
        }
        if !chunk.is_empty() {
            let _ = tx.send(Ok(chunk.into())).await;
        }
    });
    tracing::info!(node = %node, assignment = %id, items = open.item_count, "assignment input served");
    let body = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .insert_header(("Gridbook-Items", open.item_count.to_string()))
        .streaming(body))
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UploadOut {
    pub assignment_id: Uuid,
    /// The name the output is stored under; the node's result must name it.
    pub sha256: String,
    pub bytes: u64,
}

/// Store the assignment's output (the body, at most `max_output_bytes`). Uploading again while
/// the assignment is open replaces the recorded output.
#[utoipa::path(put, path = "/v1/assignments/{id}/output", tag = "nodes",
    responses((status = 200, body = UploadOut), (status = 401, body = crate::error::ErrorResponse),
        (status = 409, body = crate::error::ErrorResponse), (status = 413, body = crate::error::ErrorResponse)),
    security(("assignment_grant" = [])))]
pub async fn output(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<Uuid>,
    mut body: web::Payload,
) -> ApiResult<HttpResponse> {
    let id = id.into_inner();
    let (node, _open) = granted(&state, &req, id).await?;
    let max = state.settings.nats_auth.max_output_bytes;
    let mut buf = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::invalid("body", format!("reading the upload: {e}")))?;
        if (buf.len() + chunk.len()) as u64 > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "output_too_large",
                format!("an assignment's output may be at most {max} bytes"),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    let sha = hex::encode(sha256(&buf));
    let bytes = buf.len() as u64;
    let store = streams::ensure_files_bucket(&state.js, state.settings.nats_replicas)
        .await
        .map_err(ApiError::internal)?;
    if store.info(&sha).await.is_err() {
        let mut reader = std::io::Cursor::new(buf);
        store
            .put(sha.as_str(), &mut reader)
            .await
            .map_err(ApiError::internal)?;
    }
    let recorded = sha.clone();
    let updated = crate::db::run(&state.db, move |c| {
        use gridbook_db::schema::verification_tasks as vt;
        let n = diesel::update(
            job_assignments::table
                .find(id)
                .filter(job_assignments::node_id.eq(node))
                .filter(job_assignments::status.eq(AssignmentStatus::Assigned)),
        )
        .set(job_assignments::upload_sha256.eq(&recorded))
        .execute(c)?;
        if n > 0 {
            return Ok(n);
        }
        // A verification task's answer.
        Ok(diesel::update(
            vt::table
                .find(id)
                .filter(vt::node_id.eq(node))
                .filter(vt::status.eq("assigned")),
        )
        .set((vt::upload_sha256.eq(&recorded), vt::updated_at.eq(Utc::now())))
        .execute(c)?)
    })
    .await?;
    if updated == 0 {
        return Err(ApiError::conflict(
            "assignment_closed",
            "the assignment closed during the upload",
        ));
    }
    tracing::info!(node = %node, assignment = %id, %sha, bytes, "assignment output stored");
    Ok(HttpResponse::Ok().json(UploadOut {
        assignment_id: id,
        sha256: sha,
        bytes,
    }))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(issue_credential, delete_node, suspend_node, grant, input, model, model_key, output))]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_works_only_for_its_assignment_until_it_expires_and_cannot_be_forged() {
        let key = [7u8; 32];
        let (a, n) = (Uuid::new_v4(), Uuid::new_v4());
        let later = Utc::now().timestamp_millis() + 60_000;
        let g = make_grant(&key, a, n, later);
        assert_eq!(check_grant(&key, &g, a), Ok(n));
        assert!(
            check_grant(&key, &g, Uuid::new_v4())
                .unwrap_err()
                .contains("not")
        );
        assert!(
            check_grant(&[8u8; 32], &g, a)
                .unwrap_err()
                .contains("signature")
        );
        let past = make_grant(&key, a, n, Utc::now().timestamp_millis() - 1);
        assert_eq!(
            check_grant(&key, &past, a).unwrap_err(),
            "the grant expired"
        );
        // Another node's id spliced into a valid grant.
        let mut raw = hex::decode(g.strip_prefix(GRANT_PREFIX).unwrap()).unwrap();
        raw[16..32].copy_from_slice(Uuid::new_v4().as_bytes());
        let spliced = format!("{GRANT_PREFIX}{}", hex::encode(raw));
        assert!(
            check_grant(&key, &spliced, a)
                .unwrap_err()
                .contains("signature")
        );
        assert_eq!(
            check_grant(&key, "gbg_zz", a).unwrap_err(),
            "malformed grant"
        );
    }
}
