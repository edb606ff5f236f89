//! Identity: passwords (argon2id), browser sessions (cookie `gridbook_session`, HttpOnly,
//! Secure, SameSite=Strict), API keys (`Authorization: Bearer gbk_<prefix>_<secret>`), and the
//! [`Principal`] extractor every authenticated handler takes.
//!
//! Secrets are never stored or logged: sessions and API keys are looked up by the sha256 of
//! their secret (256 random bits, so a fast hash suffices); passwords by argon2id with OWASP's
//! parameters (m = 19456 KiB, t = 2, p = 1), always on the blocking pool and never more at once
//! than `limits.password_hashes` ([`hash_password`] and [`verify_password`] are blocking
//! functions: handlers call them through [`crate::limits::HashSlots::run`], e.g.
//! [`hash_password_blocking`], never directly in an async handler).
//!
//! Rate limits per caller are enforced by the middleware in `app` (per presented credential and
//! per client IP) before a request reaches the extractor, so a flood never reaches the database.

use std::future::Future;
use std::pin::Pin;

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use diesel::prelude::*;
use gridbook_ledger::AccountId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::schema::{api_keys, sessions, users};
use crate::state::AppState;

pub const SESSION_COOKIE: &str = "gridbook_session";
pub const KEY_PREFIX: &str = "gbk_";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Studio,
    Provider,
    Trader,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Studio => "studio",
            Role::Provider => "provider",
            Role::Trader => "trader",
            Role::Admin => "admin",
        }
    }
    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "studio" => Role::Studio,
            "provider" => Role::Provider,
            "trader" => Role::Trader,
            "admin" => Role::Admin,
            _ => return None,
        })
    }
}

/// What an API key may do. A session may do everything its role may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read own objects and market data.
    Read,
    /// Upload files, create and cancel jobs.
    Jobs,
    /// Register nodes, answer challenges, post/amend/cancel asks.
    Nodes,
    /// Admin: credit accounts.
    Admin,
    /// Place and cancel orders on a token market (`/v1/token/orders`).
    Trade,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Jobs => "jobs",
            Scope::Nodes => "nodes",
            Scope::Admin => "admin",
            Scope::Trade => "trade",
        }
    }
    pub fn parse(s: &str) -> Option<Scope> {
        Some(match s {
            "read" => Scope::Read,
            "jobs" => Scope::Jobs,
            "nodes" => Scope::Nodes,
            "admin" => Scope::Admin,
            "trade" => Scope::Trade,
            _ => return None,
        })
    }
}

/// How the request authenticated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    Session,
    ApiKey { key_id: Uuid, scopes: Vec<Scope> },
}

/// The authenticated caller. Handlers take it as an argument; a request without valid
/// credentials never reaches them (401 `unauthorized`).
#[derive(Clone, Debug)]
pub struct Principal {
    pub user_id: Uuid,
    pub email: String,
    pub role: Role,
    pub account_id: AccountId,
    pub engine_account: u64,
    pub credential: Credential,
}

impl Principal {
    /// 403 unless the caller has one of `roles`.
    pub fn require_role(&self, roles: &[Role]) -> ApiResult<()> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the role {}",
                roles
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )))
        }
    }
    /// 403 unless the caller is a provider with the `nodes` scope (`write`) or with `read` or
    /// `nodes` (a key with `nodes` may also read what it writes).
    pub fn require_provider(&self, write: bool) -> ApiResult<()> {
        self.require_role(&[Role::Provider])?;
        if write {
            self.require_scope(Scope::Nodes)
        } else {
            self.require_scope(Scope::Read)
                .or_else(|_| self.require_scope(Scope::Nodes))
        }
    }
    /// 403 unless a key has `scope` (sessions have every scope).
    pub fn require_scope(&self, scope: Scope) -> ApiResult<()> {
        match &self.credential {
            Credential::Session => Ok(()),
            Credential::ApiKey { scopes, .. } if scopes.contains(&scope) => Ok(()),
            Credential::ApiKey { .. } => Err(ApiError::forbidden(format!(
                "this API key lacks the scope {}",
                scope.as_str()
            ))),
        }
    }
}

pub fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// Scopes an API key of `role` may carry: `read` for everyone, `jobs` for studios, `nodes` for
/// providers, `trade` (token orders) for studios, providers and traders, `admin` for admins.
pub fn allowed_scopes(role: Role) -> &'static [Scope] {
    match role {
        Role::Studio => &[Scope::Read, Scope::Jobs, Scope::Trade],
        Role::Provider => &[Scope::Read, Scope::Nodes, Scope::Trade],
        Role::Trader => &[Scope::Read, Scope::Trade],
        Role::Admin => &[Scope::Read, Scope::Admin],
    }
}

fn argon2() -> argon2::Argon2<'static> {
    // OWASP Password Storage Cheat Sheet: argon2id, m = 19 MiB, t = 2, p = 1.
    let params = argon2::Params::new(19_456, 2, 1, None).unwrap_or(argon2::Params::DEFAULT);
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
}

/// Hashes a password to an argon2id PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
/// Blocking (tens of milliseconds): call it on the blocking pool.
pub fn hash_password(password: &str) -> ApiResult<String> {
    use argon2::password_hash::PasswordHasher;
    argon2()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| ApiError::internal(format!("argon2 hash: {e}")))
}

/// [`hash_password`] on the blocking pool, in one of the process's hash slots (503 `busy` when
/// they and their queue are full).
pub async fn hash_password_blocking(
    slots: &crate::limits::HashSlots,
    password: String,
) -> ApiResult<String> {
    slots.run(move || hash_password(&password)).await?
}

/// A hash of a random password, verified against when the user does not exist so that an
/// unknown email costs the same time as a wrong password.
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    hash_password(&random_hex(16)).unwrap_or_default()
});

/// Verifies `password` against a PHC string (`None`: against a dummy hash, then false).
/// Blocking: call it on the blocking pool.
pub fn verify_password(password: &str, phc: Option<&str>) -> bool {
    use argon2::password_hash::PasswordVerifier;
    let hash: &str = phc.unwrap_or(DUMMY_HASH.as_str());
    let ok = argon2().verify_password(password.as_bytes(), hash).is_ok();
    ok && phc.is_some()
}

/// `n` random bytes from the operating system, hex-encoded.
pub fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    // getrandom only fails when the OS has no entropy source; nothing sensible can go on then.
    if let Err(e) = getrandom::fill(&mut buf) {
        panic!("the operating system's random number generator failed: {e}");
    }
    hex::encode(buf)
}

/// Starts a browser session: stores the sha256 of a fresh 256-bit token and returns the token
/// (the cookie's value).
pub fn create_session(conn: &mut PgConnection, user_id: Uuid, hours: u64) -> ApiResult<String> {
    // Forget this user's expired sessions (keeps the table small without a sweeper).
    diesel::delete(
        sessions::table
            .filter(sessions::user_id.eq(user_id))
            .filter(sessions::expires_at.le(chrono::Utc::now())),
    )
    .execute(conn)?;
    let token = random_hex(32);
    let expires = chrono::Utc::now()
        + chrono::Duration::hours(i64::try_from(hours.clamp(1, 24 * 365)).unwrap_or(24));
    diesel::insert_into(sessions::table)
        .values((
            sessions::token_hash.eq(sha256(token.as_bytes())),
            sessions::user_id.eq(user_id),
            sessions::expires_at.eq(expires),
        ))
        .execute(conn)?;
    Ok(token)
}

/// Ends a session (no-op for an unknown token).
pub fn delete_session(conn: &mut PgConnection, token: &str) -> ApiResult<()> {
    diesel::delete(sessions::table.filter(sessions::token_hash.eq(sha256(token.as_bytes()))))
        .execute(conn)?;
    Ok(())
}

/// The session cookie: HttpOnly, SameSite=Strict, Path=/, Max-Age, Secure unless
/// `settings.secure_cookies` is false.
pub fn session_cookie(token: String, hours: u64, secure: bool) -> actix_web::cookie::Cookie<'static> {
    actix_web::cookie::Cookie::build(SESSION_COOKIE, token)
        .http_only(true)
        .secure(secure)
        .same_site(actix_web::cookie::SameSite::Strict)
        .path("/")
        .max_age(actix_web::cookie::time::Duration::hours(
            i64::try_from(hours.clamp(1, 24 * 365)).unwrap_or(24),
        ))
        .finish()
}

/// A cookie that deletes the session cookie in the browser.
pub fn expired_session_cookie(secure: bool) -> actix_web::cookie::Cookie<'static> {
    let mut c = session_cookie(String::new(), 1, secure);
    c.make_removal();
    c
}

/// A freshly generated API key: the full key is returned once and never stored.
pub struct NewKey {
    pub id: Uuid,
    pub prefix: String,
    /// `gbk_<prefix>_<secret>`: the secret is 32 random bytes, hex.
    pub key: String,
}

/// Creates an API key for `user_id` (scopes must already be checked against the role).
pub fn create_api_key(
    conn: &mut PgConnection,
    user_id: Uuid,
    name: &str,
    scopes: &[Scope],
) -> ApiResult<NewKey> {
    let id = Uuid::now_v7();
    let prefix = random_hex(6);
    let secret = random_hex(32);
    diesel::insert_into(api_keys::table)
        .values((
            api_keys::id.eq(id),
            api_keys::user_id.eq(user_id),
            api_keys::name.eq(name),
            api_keys::prefix.eq(&prefix),
            api_keys::secret_hash.eq(sha256(secret.as_bytes())),
            api_keys::scopes.eq(scopes.iter().map(|s| s.as_str().to_owned()).collect::<Vec<_>>()),
        ))
        .execute(conn)?;
    let key = format!("{KEY_PREFIX}{prefix}_{secret}");
    Ok(NewKey { id, prefix, key })
}

#[derive(Queryable)]
struct UserRow {
    id: Uuid,
    email: String,
    role: String,
    account_id: Uuid,
    engine_account: i64,
}

fn principal(row: UserRow, credential: Credential) -> ApiResult<Principal> {
    Ok(Principal {
        user_id: row.id,
        email: row.email,
        role: Role::parse(&row.role).ok_or_else(|| ApiError::internal("bad role in users"))?,
        account_id: AccountId(row.account_id),
        engine_account: u64::try_from(row.engine_account)
            .map_err(|_| ApiError::internal("bad engine_account"))?,
        credential,
    })
}

const USER_COLUMNS: (
    users::id,
    users::email,
    users::role,
    users::account_id,
    users::engine_account,
) = (
    users::id,
    users::email,
    users::role,
    users::account_id,
    users::engine_account,
);

/// Looks up a session token (the cookie's value).
pub fn principal_from_session(conn: &mut PgConnection, token: &str) -> ApiResult<Principal> {
    let now = chrono::Utc::now();
    let row: Option<UserRow> = sessions::table
        .inner_join(users::table)
        .filter(sessions::token_hash.eq(sha256(token.as_bytes())))
        .filter(sessions::expires_at.gt(now))
        .select(USER_COLUMNS)
        .first(conn)
        .optional()?;
    let row = row.ok_or_else(|| ApiError::unauthorized("session expired or unknown; log in"))?;
    principal(row, Credential::Session)
}

/// Splits `gbk_<prefix>_<secret>`.
pub fn parse_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (prefix, secret) = rest.split_once('_')?;
    if prefix.is_empty() || secret.is_empty() || prefix.len() > 32 || secret.len() > 128 {
        return None;
    }
    Some((prefix, secret))
}

/// Looks up an API key; a revoked or unknown key is 401.
pub fn principal_from_key(conn: &mut PgConnection, key: &str) -> ApiResult<Principal> {
    let bad = || ApiError::unauthorized("invalid or revoked API key");
    let (prefix, secret) = parse_key(key).ok_or_else(bad)?;
    let row: Option<(Uuid, Vec<u8>, Vec<Option<String>>, UserRow)> = api_keys::table
        .inner_join(users::table)
        .filter(api_keys::prefix.eq(prefix))
        .filter(api_keys::revoked_at.is_null())
        .select((
            api_keys::id,
            api_keys::secret_hash,
            api_keys::scopes,
            USER_COLUMNS,
        ))
        .first(conn)
        .optional()?;
    let (key_id, hash, scopes, user) = row.ok_or_else(bad)?;
    // Constant-time comparison of the digests.
    let given = sha256(secret.as_bytes());
    let diff = given.iter().zip(&hash).fold(0u8, |a, (x, y)| a | (x ^ y));
    if diff != 0 || hash.len() != given.len() {
        return Err(bad());
    }
    let scopes = scopes.iter().flatten().filter_map(|s| Scope::parse(s)).collect();
    principal(user, Credential::ApiKey { key_id, scopes })
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let bearer = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .map(|v| {
                v.to_str()
                    .ok()
                    .and_then(|s| s.strip_prefix("Bearer "))
                    .map(str::to_owned)
            });
        let cookie = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned());
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::internal("AppState missing"))?;
            match (bearer, cookie) {
                (Some(Some(key)), _) => {
                    crate::db::run(&state.db, move |c| principal_from_key(c, &key)).await
                }
                (Some(None), _) => Err(ApiError::unauthorized(
                    "Authorization must be `Bearer gbk_<prefix>_<secret>`",
                )),
                (None, Some(token)) => {
                    crate::db::run(&state.db, move |c| principal_from_session(c, &token)).await
                }
                (None, None) => Err(ApiError::unauthorized(
                    "log in (session cookie) or send an API key (Authorization: Bearer …)",
                )),
            }
        })
    }
}
