//! Identity clusters as the API sees them (`gridbook_db::identity`): every request a provider
//! makes for a node — registering it, getting its credential, posting an ask — marks the
//! provider with the network the request came from; a node's agent reports a hardware
//! fingerprint at registration. Accounts sharing a mark are one cluster: the engine's
//! anti-whale owner of their asks, and the unit of the probation cap.
//!
//! The network is the TCP peer's, unless `identity.trust_forwarded_for` (only behind a proxy
//! the operator runs, which sets `X-Forwarded-For`): a client-sent header is otherwise ignored,
//! so nobody can claim another's network.
//!
//! `GET /v1/cluster`: the caller's own cluster (its owner id, how many accounts, its own marks).

use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use gridbook_db::identity;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::ApiResult;
use crate::schema::identity_marks;
use crate::state::AppState;

/// `identity.*` settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct IdentitySettings {
    /// Link accounts whose requests come from one network (/24, /48).
    pub link_networks: bool,
    /// Link accounts whose nodes report one hardware fingerprint.
    pub link_fingerprints: bool,
    /// Take the client address from the first `X-Forwarded-For` entry (only behind a proxy
    /// of the operator's that sets it).
    pub trust_forwarded_for: bool,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            link_networks: true,
            link_fingerprints: true,
            trust_forwarded_for: false,
        }
    }
}

/// The network mark of the request's client, if it gives one.
pub fn network_of_request(settings: &IdentitySettings, req: &HttpRequest) -> Option<String> {
    if !settings.link_networks {
        return None;
    }
    let forwarded = settings
        .trust_forwarded_for
        .then(|| {
            req.headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .and_then(|v| v.trim().parse::<std::net::IpAddr>().ok())
        })
        .flatten();
    identity::network_of(forwarded.or_else(|| req.peer_addr().map(|a| a.ip()))?)
}

/// What a request tells of `user` acting for `node`: its network (and a fingerprint), recorded
/// inside the caller's transaction.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub network: Option<String>,
    pub fingerprint: Option<String>,
}

impl Seen {
    pub fn of(settings: &IdentitySettings, req: &HttpRequest) -> Self {
        Seen {
            network: network_of_request(settings, req),
            fingerprint: None,
        }
    }

    pub fn record(&self, c: &mut PgConnection, user: Uuid, node: Option<Uuid>) -> QueryResult<()> {
        if let Some(n) = &self.network {
            identity::record(c, user, node, identity::NETWORK, n)?;
        }
        if let Some(f) = &self.fingerprint {
            identity::record(c, user, node, identity::FINGERPRINT, f)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MarkOut {
    /// `network` or `fingerprint`.
    pub kind: String,
    pub value: String,
    pub first_seen_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterOut {
    /// The anti-whale owner of your asks on the engine (the cluster's smallest engine account).
    pub owner: u64,
    /// Accounts in your cluster, yours included (who they are is not shown).
    pub accounts: usize,
    /// What the market saw of you that links accounts.
    pub marks: Vec<MarkOut>,
}

/// Your identity cluster: the anti-whale owner of your asks and what links it.
#[utoipa::path(get, path = "/v1/cluster", tag = "nodes",
    responses((status = 200, body = ClusterOut)), security(("api_key" = []), ("session" = [])))]
pub async fn cluster(state: web::Data<AppState>, principal: Principal) -> ApiResult<HttpResponse> {
    principal.require_provider(false)?;
    let user = principal.user_id;
    let out = crate::db::run(&state.db, move |c| {
        let accounts = identity::cluster_users(c, user)?.len();
        let owner = identity::cluster_owner(c, user)?;
        let marks: Vec<(String, String, DateTime<Utc>)> = identity_marks::table
            .filter(identity_marks::user_id.eq(user))
            .order(identity_marks::id)
            .limit(1_000)
            .select((identity_marks::kind, identity_marks::value, identity_marks::first_seen_at))
            .load(c)?;
        Ok(ClusterOut {
            owner,
            accounts,
            marks: marks
                .into_iter()
                .map(|(kind, value, first_seen_at)| MarkOut { kind, value, first_seen_at })
                .collect(),
        })
    })
    .await?;
    Ok(HttpResponse::Ok().json(out))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/cluster").route(web::get().to(cluster)));
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(cluster))]
pub struct ApiDoc;
