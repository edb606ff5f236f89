//! `Idempotency-Key` for every POST that creates something (Stripe's design).
//!
//! The header is optional but honoured on every creating POST: `Idempotency-Key: <1..=255
//! visible ASCII characters>`, scoped to the caller (user). The first request under a key
//! stores `(user, key, route, sha256 of the request, status, response JSON)` in
//! `idempotency_keys` **in the same transaction** as what it creates, so either both exist or
//! neither does. Afterwards:
//! - the same key with the same request (same route, same body) replays the stored response:
//!   same status, same JSON body, plus the header `Idempotent-Replayed: true`; nothing is
//!   created again;
//! - the same key with a different request (other body or other route) is refused with 422
//!   `idempotency_key_reused`;
//! - two concurrent requests with the same key serialise on a transaction-scoped advisory lock
//!   (`pg_advisory_xact_lock`), so the second one waits and then replays the first's response.
//!
//! Errors are not stored: a request that failed (4xx/5xx) created nothing and may be retried
//! under the same key.
//!
//! How a handler uses it (other modules: files, jobs, nodes):
//!
//! ```text
//! async fn create_thing(
//!     p: Principal,
//!     idem: IdempotencyKey,                // the header, validated (400 if malformed)
//!     state: web::Data<AppState>,
//!     body: web::Json<CreateThing>,        // must be Serialize for request_hash
//! ) -> ApiResult<HttpResponse> {
//!     let request = idempotency::Request::new(&p, idem, "POST /v1/things", &*body)?;
//!     let outcome = db::run(&state.db, move |c| {
//!         idempotency::run(c, request, |c| {
//!             // ... create the rows, ledger effects, outbox (all inside this transaction) ...
//!             Ok((StatusCode::CREATED, thing_json))   // any Serialize
//!         })
//!     })
//!     .await?;
//!     Ok(outcome.into_response())
//! }
//! ```
//!
//! Uploads (`POST /v1/files`) hash their query and the file's sha256 with [`hash_json`] into
//! [`Request::from_hash`], answer replays early with [`peek`] (before checking and storing the
//! file again) and create the row through [`run`]. The lower-level
//! pair [`check`] + [`store`] is public for handlers that manage their own transaction: call
//! `check` first inside the transaction (it takes the lock), then `store` before commit.

use std::future::{Ready, ready};

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, HttpResponse, dev::Payload};
use diesel::prelude::*;
use serde::Serialize;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{ApiError, ApiResult};
use crate::schema::idempotency_keys;

pub const HEADER: &str = "Idempotency-Key";
pub const REPLAYED_HEADER: &str = "Idempotent-Replayed";
pub const MAX_KEY_LEN: usize = 255;

/// The `Idempotency-Key` header of a request (`None` when absent). A malformed header (empty,
/// longer than 255, not visible ASCII, repeated) is 400 `invalid_request` with `field`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(pub Option<String>);

pub fn parse_header(req: &HttpRequest) -> ApiResult<IdempotencyKey> {
    let mut values = req.headers().get_all(HEADER);
    let Some(first) = values.next() else {
        return Ok(IdempotencyKey(None));
    };
    let bad = |m: &str| ApiError::invalid(HEADER, m.to_owned());
    if values.next().is_some() {
        return Err(bad("send the Idempotency-Key header at most once"));
    }
    let s = first
        .to_str()
        .map_err(|_| bad("Idempotency-Key must be visible ASCII"))?;
    if s.is_empty() || s.len() > MAX_KEY_LEN {
        return Err(bad("Idempotency-Key must be 1 to 255 characters"));
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("Idempotency-Key must be visible ASCII without spaces"));
    }
    Ok(IdempotencyKey(Some(s.to_owned())))
}

impl FromRequest for IdempotencyKey {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(parse_header(req))
    }
}

/// sha256 of raw request bytes (uploads).
pub fn hash_bytes(bytes: &[u8]) -> Vec<u8> {
    crate::auth::sha256(bytes)
}

/// sha256 of the request as parsed and re-serialised (so whitespace and key order of the JSON
/// the client sent do not matter; serde_json's maps are sorted).
pub fn hash_json<T: Serialize + ?Sized>(value: &T) -> ApiResult<Vec<u8>> {
    let v = serde_json::to_value(value).map_err(ApiError::internal)?;
    let bytes = serde_json::to_vec(&v).map_err(ApiError::internal)?;
    Ok(hash_bytes(&bytes))
}

/// What `run` needs to know about a creating request. `key: None` (no header) means "no
/// idempotency": `run` just runs the creation in a transaction.
#[derive(Clone, Debug)]
pub struct Request {
    pub user_id: Uuid,
    pub key: Option<String>,
    /// A stable name of the route, e.g. `POST /v1/jobs`.
    pub route: String,
    pub request_hash: Vec<u8>,
}

impl Request {
    pub fn new<T: Serialize + ?Sized>(
        principal: &Principal,
        key: IdempotencyKey,
        route: &str,
        body: &T,
    ) -> ApiResult<Request> {
        Ok(Request::from_hash(principal.user_id, key, route, hash_json(body)?))
    }
    pub fn from_hash(user_id: Uuid, key: IdempotencyKey, route: &str, hash: Vec<u8>) -> Request {
        Request {
            user_id,
            key: key.0,
            route: route.to_owned(),
            request_hash: hash,
        }
    }
}

/// A response to send: created now or replayed.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub status: StatusCode,
    pub body: serde_json::Value,
    pub replayed: bool,
}

impl Outcome {
    pub fn into_response(self) -> HttpResponse {
        let mut b = HttpResponse::build(self.status);
        if self.replayed {
            b.insert_header((REPLAYED_HEADER, "true"));
        }
        b.json(self.body)
    }
}

/// Looks the key up inside the caller's transaction, after taking the key's advisory lock
/// (held until the transaction ends). `Some` = replay this; `Err` 422 = the key was used for a
/// different request.
pub fn check(
    conn: &mut PgConnection,
    user_id: Uuid,
    key: &str,
    route: &str,
    request_hash: &[u8],
) -> ApiResult<Option<(StatusCode, serde_json::Value)>> {
    let lock_name = format!("idempotency/{user_id}/{key}");
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind::<diesel::sql_types::Text, _>(lock_name)
        .execute(conn)?;
    let row: Option<(String, Vec<u8>, i16, serde_json::Value)> = idempotency_keys::table
        .find((user_id, key))
        .select((
            idempotency_keys::route,
            idempotency_keys::request_hash,
            idempotency_keys::status,
            idempotency_keys::response,
        ))
        .first(conn)
        .optional()?;
    match row {
        None => Ok(None),
        Some((r, h, status, response)) if r == route && h == request_hash => {
            let status = u16::try_from(status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or_else(|| ApiError::internal("bad status in idempotency_keys"))?;
            Ok(Some((status, response)))
        }
        Some(_) => Err(ApiError::unprocessable(
            "idempotency_key_reused",
            "this Idempotency-Key was already used for a different request",
        )
        .with_field(HEADER)),
    }
}

/// An early, read-only look at the request's key in a short transaction of its own, for
/// handlers that do expensive work before their creating transaction (uploads: checking and
/// storing a file): `Some` replays the stored response, `Err` 422 refuses a reused key, `None`
/// (also without a key) means "go on". [`run`] checks again under the lock before creating, so
/// this is an optimisation, never the guarantee.
pub async fn peek(pool: &crate::db::DbPool, request: &Request) -> ApiResult<Option<Outcome>> {
    let Some(key) = request.key.clone() else {
        return Ok(None);
    };
    let (user_id, route, hash) = (
        request.user_id,
        request.route.clone(),
        request.request_hash.clone(),
    );
    let stored = crate::db::run(pool, move |c| {
        c.transaction::<_, ApiError, _>(|c| check(c, user_id, &key, &route, &hash))
    })
    .await?;
    Ok(stored.map(|(status, body)| Outcome {
        status,
        body,
        replayed: true,
    }))
}

/// Stores the response of a creation under the key (same transaction as the creation).
pub fn store(
    conn: &mut PgConnection,
    user_id: Uuid,
    key: &str,
    route: &str,
    request_hash: &[u8],
    status: StatusCode,
    response: &serde_json::Value,
) -> ApiResult<()> {
    diesel::insert_into(idempotency_keys::table)
        .values((
            idempotency_keys::user_id.eq(user_id),
            idempotency_keys::key.eq(key),
            idempotency_keys::route.eq(route),
            idempotency_keys::request_hash.eq(request_hash),
            idempotency_keys::status.eq(i16::try_from(status.as_u16()).unwrap_or(200)),
            idempotency_keys::response.eq(response),
        ))
        .execute(conn)?;
    Ok(())
}

/// Runs `create` in a transaction honouring the request's idempotency key: replays a stored
/// response, refuses a reused key, or creates and stores the response, all in one commit.
pub fn run<T, F>(conn: &mut PgConnection, request: Request, create: F) -> ApiResult<Outcome>
where
    T: Serialize,
    F: FnOnce(&mut PgConnection) -> ApiResult<(StatusCode, T)>,
{
    run_stored_as(conn, request, create, |v| v.clone())
}

/// Like [`run`], but stores `to_store(response)` instead of the response itself (a response that
/// carries a secret, such as a new API key, is stored without it: a replay then says which
/// object was created but cannot show the secret again).
pub fn run_stored_as<T, F, S>(
    conn: &mut PgConnection,
    request: Request,
    create: F,
    to_store: S,
) -> ApiResult<Outcome>
where
    T: Serialize,
    F: FnOnce(&mut PgConnection) -> ApiResult<(StatusCode, T)>,
    S: FnOnce(&serde_json::Value) -> serde_json::Value,
{
    conn.transaction::<Outcome, ApiError, _>(|c| {
        if let Some(key) = &request.key
            && let Some((status, body)) =
                check(c, request.user_id, key, &request.route, &request.request_hash)?
        {
            return Ok(Outcome {
                status,
                body,
                replayed: true,
            });
        }
        let (status, value) = create(c)?;
        let body = serde_json::to_value(&value).map_err(ApiError::internal)?;
        if let Some(key) = &request.key {
            store(
                c,
                request.user_id,
                key,
                &request.route,
                &request.request_hash,
                status,
                &to_store(&body),
            )?;
        }
        Ok(Outcome {
            status,
            body,
            replayed: false,
        })
    })
}
