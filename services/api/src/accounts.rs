//! Sign-up, log-in/out, `GET /v1/me` and API keys.
//!
//! - `POST /v1/accounts` {email, password, role: studio|provider|trader} → 201 user. Admins
//!   cannot sign up: they are created with `gridbook-api create-admin --email E` (password from
//!   `GRIDBOOK_ADMIN_PASSWORD` or stdin), which calls [`create_admin`].
//! - `POST /v1/sessions` {email, password} → 200 + cookie `gridbook_session`;
//!   `DELETE /v1/sessions` → 204 (logout).
//! - `POST /v1/keys` {name, scopes} → 201 with the key shown once; `GET /v1/keys`;
//!   `DELETE /v1/keys/{id}` → 204 (revoke; 404 for another user's key).
//!
//! Every user gets a ledger account on [`crate::money::LEDGER`] in the same transaction as the
//! user row (code `provider` for providers, `studio` otherwise: both credit-normal, so the
//! balance can never go negative).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use gridbook_ledger::{AccountCode, AccountId, NewAccount};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::{self, Credential, Principal, Role, Scope};
use crate::db;
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::idempotency::{self, IdempotencyKey};
use crate::schema::{api_keys, users};
use crate::state::AppState;

pub const PASSWORD_MIN: usize = 12;
pub const PASSWORD_MAX: usize = 256;
pub const KEY_NAME_MAX: usize = 100;
/// At most this many live (unrevoked) keys per user.
pub const MAX_KEYS_PER_USER: i64 = 100;

/// Routes of this module (mounted under `/v1` by `app`).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/accounts").route(web::post().to(sign_up)))
        .service(
            web::resource("/sessions")
                .route(web::post().to(log_in))
                .route(web::delete().to(log_out)),
        )
        .service(web::resource("/me").route(web::get().to(me)))
        .service(
            web::resource("/keys")
                .route(web::post().to(create_key))
                .route(web::get().to(list_keys)),
        )
        .service(web::resource("/keys/{id}").route(web::delete().to(revoke_key)));
}

// ---------------------------------------------------------------------------------------------
// Users

/// A user as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub role: Role,
    /// The user's ledger account (credits).
    #[schema(value_type = Uuid)]
    pub account_id: AccountId,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SignUp {
    /// Stored lower-case; 3 to 254 characters.
    pub email: String,
    /// 12 to 256 characters.
    pub password: String,
    /// `studio`, `provider` or `trader` (admins cannot sign up).
    pub role: String,
}

/// Normalises (trim, lower-case) and validates an email address; 400 `invalid_request` with
/// `field = "email"`.
pub fn normalize_email(email: &str) -> ApiResult<String> {
    let e = email.trim().to_lowercase();
    let bad = |m: &str| ApiError::invalid("email", m.to_owned());
    if e.len() < 3 || e.len() > 254 {
        return Err(bad("email must be 3 to 254 characters"));
    }
    if !e.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("email must be printable ASCII without spaces"));
    }
    let (local, domain) = e
        .split_once('@')
        .ok_or_else(|| bad("email must contain @"))?;
    if local.is_empty() || local.len() > 64 || domain.contains('@') {
        return Err(bad("email must be local@domain"));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2
        || labels.iter().any(|l| {
            l.is_empty()
                || l.len() > 63
                || l.starts_with('-')
                || l.ends_with('-')
                || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
    {
        return Err(bad("email must have a domain such as example.com"));
    }
    Ok(e)
}

/// 400 `invalid_request` (`field = "password"`) unless 12..=256 characters.
pub fn validate_password(password: &str) -> ApiResult<()> {
    let n = password.chars().count();
    if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&n) {
        return Err(ApiError::invalid(
            "password",
            format!("password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters"),
        ));
    }
    Ok(())
}

fn ledger_code(role: Role) -> AccountCode {
    match role {
        Role::Provider => AccountCode::Provider,
        Role::Studio | Role::Trader | Role::Admin => AccountCode::Studio,
    }
}

/// Creates a user and their ledger account in one transaction (nested: also works inside the
/// caller's). `email` must already be normalised ([`normalize_email`]), `password_hash` an
/// argon2id PHC string ([`auth::hash_password`]). A taken email is 409 `email_taken`.
pub fn create_user(
    conn: &mut PgConnection,
    email: &str,
    password_hash: &str,
    role: Role,
) -> ApiResult<User> {
    conn.transaction::<User, ApiError, _>(|c| {
        let taken: bool = diesel::select(diesel::dsl::exists(
            users::table.filter(users::email.eq(email)),
        ))
        .get_result(c)?;
        if taken {
            return Err(email_taken());
        }
        let id = Uuid::now_v7();
        let mut account = NewAccount::new(AccountId::new(), crate::money::LEDGER, ledger_code(role));
        account.reference = Some(id);
        let account = gridbook_ledger::store::create_account(c, &account)?;
        let created_at: DateTime<Utc> = diesel::insert_into(users::table)
            .values((
                users::id.eq(id),
                users::email.eq(email),
                users::password_hash.eq(password_hash),
                users::role.eq(role.as_str()),
                users::account_id.eq(account.id.0),
            ))
            .returning(users::created_at)
            .get_result(c)
            .map_err(|e| match e {
                diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::UniqueViolation,
                    _,
                ) => email_taken(),
                e => ApiError::from(e),
            })?;
        Ok(User {
            id,
            email: email.to_owned(),
            role,
            account_id: account.id,
            created_at,
        })
    })
}

/// Locks the user's row (`SELECT … FOR UPDATE`) until the caller's transaction ends, so that
/// count-then-insert caps on the user's objects (live API keys, nodes) hold under concurrent
/// requests: a second creation waits for the first to commit and then counts its row.
pub fn lock_user(conn: &mut PgConnection, user_id: Uuid) -> ApiResult<()> {
    users::table
        .find(user_id)
        .select(users::id)
        .for_update()
        .first::<Uuid>(conn)
        .optional()?
        .ok_or_else(|| ApiError::not_found("user"))?;
    Ok(())
}

fn email_taken() -> ApiError {
    ApiError::conflict("email_taken", "an account with this email already exists").with_field("email")
}

/// Creates an admin (the `create-admin` CLI subcommand and tests): validates, hashes (blocking:
/// call from a blocking context), creates.
pub fn create_admin(conn: &mut PgConnection, email: &str, password: &str) -> ApiResult<User> {
    let email = normalize_email(email)?;
    validate_password(password)?;
    let hash = auth::hash_password(password)?;
    create_user(conn, &email, &hash, Role::Admin)
}

/// Sign up as a studio, provider or trader.
#[utoipa::path(
    post, path = "/v1/accounts", tag = "identity",
    request_body = SignUp,
    responses(
        (status = 201, description = "The new user (sign-up is idempotent by email: a repeat is 409)", body = User),
        (status = 400, description = "invalid email, password or role (`field` names it)", body = ErrorResponse),
        (status = 409, description = "`email_taken`", body = ErrorResponse),
    )
)]
pub async fn sign_up(
    state: web::Data<AppState>,
    bounds: web::Data<crate::limits::Bounds>,
    body: web::Json<SignUp>,
) -> ApiResult<HttpResponse> {
    let SignUp {
        email,
        password,
        role,
    } = body.into_inner();
    let email = normalize_email(&email)?;
    validate_password(&password)?;
    let role = match Role::parse(&role) {
        Some(Role::Admin) => {
            return Err(ApiError::forbidden("admin accounts cannot sign up").with_field("role"));
        }
        Some(r) => r,
        None => {
            return Err(ApiError::invalid(
                "role",
                "role must be studio, provider or trader",
            ));
        }
    };
    // Hash off the async executor, without holding a database connection, in a bounded slot.
    let hash = auth::hash_password_blocking(&bounds.hashes, password).await?;
    let user = db::run(&state.db, move |c| create_user(c, &email, &hash, role)).await?;
    tracing::info!(user.id = %user.id, user.role = user.role.as_str(), "user signed up");
    Ok(HttpResponse::Created().json(user))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LogIn {
    pub email: String,
    pub password: String,
}

/// Log in: sets the session cookie `gridbook_session` (HttpOnly, SameSite=Strict, Secure).
///
/// Bounded twice: per account, after `login.max_failures` wrong passwords the email backs off
/// (429 `login_locked`, Retry-After doubling per further failure; a success resets), and per
/// process, at most `limits.password_hashes` verifications run with `limits.password_queue`
/// waiting (beyond: 503 `busy`, Retry-After).
#[utoipa::path(
    post, path = "/v1/sessions", tag = "identity",
    request_body = LogIn,
    responses(
        (status = 200, description = "Logged in; Set-Cookie: gridbook_session", body = User),
        (status = 401, description = "`invalid_credentials` (unknown email or wrong password)", body = ErrorResponse),
        (status = 429, description = "`login_locked`: too many failures for this account (Retry-After), or `rate_limited`", body = ErrorResponse),
        (status = 503, description = "`busy`: too many log-ins being processed (Retry-After)", body = ErrorResponse),
    )
)]
pub async fn log_in(
    state: web::Data<AppState>,
    bounds: web::Data<crate::limits::Bounds>,
    body: web::Json<LogIn>,
) -> ApiResult<HttpResponse> {
    let LogIn { email, password } = body.into_inner();
    let hours = state.settings.session_hours;
    let email = normalize_email(&email).unwrap_or_default();
    // Before any database or hashing work: a backing-off account, or a full hashing queue,
    // costs nothing.
    let attempt = bounds.logins.begin(&email)?;
    let hash_slot = bounds.hashes.admit()?;
    let lookup = email.clone();
    let row: Option<(Uuid, String, String, Uuid, DateTime<Utc>)> = db::run(&state.db, move |c| {
        Ok(users::table
            .filter(users::email.eq(&lookup))
            .select((
                users::id,
                users::password_hash,
                users::role,
                users::account_id,
                users::created_at,
            ))
            .first(c)
            .optional()?)
    })
    .await?;
    // Verify on the blocking pool; against a dummy hash when the user is unknown, so both
    // cases cost the same time.
    let phc = row.as_ref().map(|r| r.1.clone());
    let ok = hash_slot
        .run(move || auth::verify_password(&password, phc.as_deref()))
        .await?;
    let Some((id, _, role, account_id, created_at)) = row.filter(|_| ok) else {
        attempt.failed();
        tracing::info!("log-in refused");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong email or password",
        ));
    };
    attempt.succeeded();
    let role = Role::parse(&role).ok_or_else(|| ApiError::internal("bad role in users"))?;
    let token = db::run(&state.db, move |c| auth::create_session(c, id, hours)).await?;
    let user = User {
        id,
        email,
        role,
        account_id: AccountId(account_id),
        created_at,
    };
    tracing::info!(user.id = %user.id, "session started");
    Ok(HttpResponse::Ok()
        .cookie(auth::session_cookie(
            token,
            hours,
            state.settings.secure_cookies,
        ))
        .json(user))
}

/// Log out: deletes the session and clears the cookie.
#[utoipa::path(
    delete, path = "/v1/sessions", tag = "identity",
    responses(
        (status = 204, description = "Logged out"),
        (status = 401, description = "not logged in", body = ErrorResponse),
    )
)]
pub async fn log_out(
    p: Principal,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> ApiResult<HttpResponse> {
    if p.credential == Credential::Session
        && let Some(token) = req.cookie(auth::SESSION_COOKIE).map(|c| c.value().to_owned())
    {
        db::run(&state.db, move |c| auth::delete_session(c, &token)).await?;
    }
    Ok(HttpResponse::NoContent()
        .cookie(auth::expired_session_cookie(state.settings.secure_cookies))
        .finish())
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Me {
    pub id: Uuid,
    pub email: String,
    pub role: Role,
    #[schema(value_type = Uuid)]
    pub account_id: AccountId,
    /// The account id the matching engine knows.
    pub engine_account: u64,
    /// `session` or `api_key`.
    pub auth: String,
    /// What this credential may do (a session: every scope of the role).
    pub scopes: Vec<Scope>,
}

/// Who am I?
#[utoipa::path(
    get, path = "/v1/me", tag = "identity",
    responses((status = 200, body = Me), (status = 401, body = ErrorResponse)),
    security(("api_key" = []), ("session" = []))
)]
pub async fn me(p: Principal) -> ApiResult<HttpResponse> {
    let (auth, scopes) = match &p.credential {
        Credential::Session => ("session", auth::allowed_scopes(p.role).to_vec()),
        Credential::ApiKey { scopes, .. } => ("api_key", scopes.clone()),
    };
    Ok(HttpResponse::Ok().json(Me {
        id: p.user_id,
        email: p.email,
        role: p.role,
        account_id: p.account_id,
        engine_account: p.engine_account,
        auth: auth.to_owned(),
        scopes,
    }))
}

// ---------------------------------------------------------------------------------------------
// API keys

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreateKey {
    /// 1 to 100 characters.
    pub name: String,
    /// `read`, `jobs` (studios), `nodes` (providers), `admin` (admins). Absent: every scope the
    /// role allows.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

/// A key as listed (never the secret).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyInfo {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A new key: `key` is shown once (`gbk_<prefix>_<secret>`). A replay of the same request under
/// the same Idempotency-Key returns the same object with `key: null` (the secret is not stored).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    pub id: Uuid,
    pub name: String,
    pub prefix: String,
    pub key: Option<String>,
    pub scopes: Vec<Scope>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyInfo>,
}

fn parse_scopes(role: Role, scopes: Option<Vec<String>>) -> ApiResult<Vec<Scope>> {
    let allowed = auth::allowed_scopes(role);
    let Some(list) = scopes else {
        let mut all = allowed.to_vec();
        all.sort_by_key(|s| s.as_str());
        return Ok(all);
    };
    if list.is_empty() || list.len() > 8 {
        return Err(ApiError::invalid("scopes", "give 1 to 4 scopes"));
    }
    let mut out = Vec::new();
    for s in &list {
        let scope = Scope::parse(s).ok_or_else(|| {
            ApiError::invalid("scopes", "scopes are read, jobs, nodes, trade and admin")
        })?;
        if !allowed.contains(&scope) {
            return Err(ApiError::forbidden(format!(
                "a {} may not hold the scope {}",
                role.as_str(),
                scope.as_str()
            ))
            .with_field("scopes"));
        }
        if !out.contains(&scope) {
            out.push(scope);
        }
    }
    out.sort_by_key(|s| s.as_str());
    Ok(out)
}

/// An API key may only hand out (or revoke) scopes it holds itself.
fn require_scopes(p: &Principal, scopes: &[Scope]) -> ApiResult<()> {
    for s in scopes {
        p.require_scope(*s)?;
    }
    Ok(())
}

/// Create an API key. Honours `Idempotency-Key`.
#[utoipa::path(
    post, path = "/v1/keys", tag = "identity",
    request_body = CreateKey,
    params(("Idempotency-Key" = Option<String>, Header, description = "optional; 1-255 characters; replays the first response")),
    responses(
        (status = 201, body = CreatedKey),
        (status = 400, body = ErrorResponse),
        (status = 403, description = "a scope the role (or the calling key) does not hold", body = ErrorResponse),
        (status = 422, description = "`idempotency_key_reused`", body = ErrorResponse),
    ),
    security(("api_key" = []), ("session" = []))
)]
pub async fn create_key(
    p: Principal,
    idem: IdempotencyKey,
    state: web::Data<AppState>,
    body: web::Json<CreateKey>,
) -> ApiResult<HttpResponse> {
    let name = body.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > KEY_NAME_MAX {
        return Err(ApiError::invalid("name", "name must be 1 to 100 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid("name", "name must not contain control characters"));
    }
    let scopes = parse_scopes(p.role, body.scopes.clone())?;
    require_scopes(&p, &scopes)?;
    let request = idempotency::Request::new(&p, idem, "POST /v1/keys", &*body)?;
    let user_id = p.user_id;
    let outcome = db::run(&state.db, move |c| {
        idempotency::run_stored_as(
            c,
            request,
            |c| {
                // The cap holds under concurrency: creations of one user serialise here.
                lock_user(c, user_id)?;
                let live: i64 = api_keys::table
                    .filter(api_keys::user_id.eq(user_id))
                    .filter(api_keys::revoked_at.is_null())
                    .count()
                    .get_result(c)?;
                if live >= MAX_KEYS_PER_USER {
                    return Err(ApiError::conflict(
                        "too_many_keys",
                        format!("at most {MAX_KEYS_PER_USER} live keys; revoke one"),
                    ));
                }
                let k = auth::create_api_key(c, user_id, &name, &scopes)?;
                let created_at: DateTime<Utc> = api_keys::table
                    .find(k.id)
                    .select(api_keys::created_at)
                    .first(c)?;
                Ok((
                    StatusCode::CREATED,
                    CreatedKey {
                        id: k.id,
                        name,
                        prefix: k.prefix,
                        key: Some(k.key),
                        scopes,
                        created_at,
                    },
                ))
            },
            |v| {
                let mut v = v.clone();
                if let Some(o) = v.as_object_mut() {
                    o.insert("key".into(), serde_json::Value::Null);
                }
                v
            },
        )
    })
    .await?;
    if !outcome.replayed {
        tracing::info!(user.id = %user_id, key.id = %outcome.body["id"], "API key created");
    }
    Ok(outcome.into_response())
}

type KeyRow = (
    Uuid,
    String,
    String,
    Vec<Option<String>>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
);

/// List the caller's API keys (never the secrets), newest first.
#[utoipa::path(
    get, path = "/v1/keys", tag = "identity",
    responses((status = 200, body = KeyList), (status = 401, body = ErrorResponse)),
    security(("api_key" = []), ("session" = []))
)]
pub async fn list_keys(p: Principal, state: web::Data<AppState>) -> ApiResult<HttpResponse> {
    p.require_scope(Scope::Read)?;
    let user_id = p.user_id;
    let rows: Vec<KeyRow> = db::run(&state.db, move |c| {
        Ok(api_keys::table
            .filter(api_keys::user_id.eq(user_id))
            .order(api_keys::created_at.desc())
            .limit(1000)
            .select((
                api_keys::id,
                api_keys::name,
                api_keys::prefix,
                api_keys::scopes,
                api_keys::created_at,
                api_keys::last_used_at,
                api_keys::revoked_at,
            ))
            .load(c)?)
    })
    .await?;
    let keys = rows
        .into_iter()
        .map(
            |(id, name, prefix, scopes, created_at, last_used_at, revoked_at)| KeyInfo {
                id,
                name,
                prefix,
                scopes: scopes.iter().flatten().filter_map(|s| Scope::parse(s)).collect(),
                created_at,
                last_used_at,
                revoked_at,
            },
        )
        .collect();
    Ok(HttpResponse::Ok().json(KeyList { keys }))
}

/// Revoke one of the caller's keys (idempotent). Another user's key is 404.
#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "identity",
    params(("id" = Uuid, Path)),
    responses((status = 204), (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)),
    security(("api_key" = []), ("session" = []))
)]
pub async fn revoke_key(
    p: Principal,
    path: web::Path<Uuid>,
    state: web::Data<AppState>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    let user_id = p.user_id;
    let scopes: Vec<Option<String>> = db::run(&state.db, move |c| {
        api_keys::table
            .filter(api_keys::id.eq(id))
            .filter(api_keys::user_id.eq(user_id))
            .select(api_keys::scopes)
            .first(c)
            .optional()?
            .ok_or_else(|| ApiError::not_found("key"))
    })
    .await?;
    let scopes: Vec<Scope> = scopes.iter().flatten().filter_map(|s| Scope::parse(s)).collect();
    require_scopes(&p, &scopes)?;
    db::run(&state.db, move |c| {
        diesel::update(
            api_keys::table
                .filter(api_keys::id.eq(id))
                .filter(api_keys::user_id.eq(user_id))
                .filter(api_keys::revoked_at.is_null()),
        )
        .set(api_keys::revoked_at.eq(Utc::now()))
        .execute(c)?;
        Ok(())
    })
    .await?;
    tracing::info!(user.id = %user_id, key.id = %id, "API key revoked");
    Ok(HttpResponse::NoContent().finish())
}
