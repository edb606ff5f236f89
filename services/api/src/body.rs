//! The body guard: one middleware (`app` wraps every route in it) that bounds how long a request
//! body may take and checks the text of JSON bodies and query strings before any handler runs.
//!
//! - Timeouts: every request body is read through [`TimedPayload`]: while the reader waits for
//!   the client, a stall of `http.body_idle_timeout_secs` without a byte, or a body that has not
//!   ended `http.body_timeout_secs` after it started, ends the stream with a `TimedOut` error,
//!   which handlers and extractors answer with 408 `request_timeout` ([`payload_error`]) and the
//!   connection is closed. WebSocket upgrades are left alone (their stream is the socket).
//! - NUL: JSON bodies (up to [`Guard::json_cap`] bytes, the largest JSON limit of any route) are
//!   read here, parsed once and walked by [`crate::validate::json`]; query strings by
//!   [`crate::validate::query`]; a NUL anywhere is 400 naming the field. Bodies that are not
//!   valid JSON are passed on untouched, so the route's extractor gives its usual error.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::{HttpMessage, web};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;

/// What `dev::Payload` wraps for a custom stream.
type BoxedStream = Pin<Box<dyn Stream<Item = Result<Bytes, PayloadError>>>>;

/// The guard's configuration (in `app_data`).
#[derive(Clone, Debug)]
pub struct Guard {
    pub idle: Duration,
    pub total: Duration,
    /// JSON bodies up to this size are checked here; larger ones are refused by the route's
    /// own limit (which is never larger).
    pub json_cap: usize,
}

impl Guard {
    pub fn new(settings: &crate::settings::Settings) -> Guard {
        Guard {
            idle: Duration::from_secs(settings.http.body_idle_timeout_secs.max(1)),
            total: Duration::from_secs(settings.http.body_timeout_secs.max(1)),
            json_cap: settings
                .limits
                .json_bytes
                .max(crate::nodes::CHALLENGE_BODY_BYTES),
        }
    }
}

/// The error of a body that stalled or took too long.
fn timed_out(what: String) -> PayloadError {
    PayloadError::Io(io::Error::new(io::ErrorKind::TimedOut, what))
}

/// 408 `request_timeout` for a timed-out body, 400 `invalid_body` otherwise.
pub fn payload_error(e: &PayloadError) -> ApiError {
    if let PayloadError::Io(io) = e
        && io.kind() == io::ErrorKind::TimedOut
    {
        return ApiError::timeout(format!("{io}; nothing was stored"));
    }
    ApiError::new(
        actix_web::http::StatusCode::BAD_REQUEST,
        "invalid_body",
        format!("reading the body: {e}"),
    )
}

/// A request body with an idle timeout and an overall deadline. The idle timer runs only while
/// the reader waits for the client (a reader that is busy elsewhere does not make the client
/// late); the deadline starts at the first read.
pub struct TimedPayload {
    inner: Payload,
    idle: Duration,
    total: Duration,
    idle_timer: Option<Pin<Box<Sleep>>>,
    deadline: Option<Pin<Box<Sleep>>>,
    done: bool,
}

impl TimedPayload {
    pub fn new(inner: Payload, idle: Duration, total: Duration) -> TimedPayload {
        TimedPayload {
            inner,
            idle,
            total,
            idle_timer: None,
            deadline: None,
            done: false,
        }
    }
}

impl Stream for TimedPayload {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.deadline.is_none() {
            this.deadline = Some(Box::pin(tokio::time::sleep(this.total)));
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.idle_timer = None;
                // The deadline still applies to a body that keeps trickling.
                if let Some(d) = this.deadline.as_mut()
                    && d.as_mut().poll(cx).is_ready()
                {
                    this.done = true;
                    return Poll::Ready(Some(Err(timed_out(format!(
                        "the request body did not arrive within {} s",
                        this.total.as_secs()
                    )))));
                }
                return Poll::Ready(Some(Ok(chunk)));
            }
            Poll::Ready(other) => {
                this.done = other.is_none();
                return Poll::Ready(other);
            }
            Poll::Pending => {}
        }
        let idle = this.idle;
        let timer = this
            .idle_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + idle)));
        if timer.as_mut().poll(cx).is_ready() {
            this.done = true;
            return Poll::Ready(Some(Err(timed_out(format!(
                "the request body stalled: no data for {} s",
                idle.as_secs()
            )))));
        }
        if let Some(d) = this.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            this.done = true;
            return Poll::Ready(Some(Err(timed_out(format!(
                "the request body did not arrive within {} s",
                this.total.as_secs()
            )))));
        }
        Poll::Pending
    }
}

fn is_upgrade(req: &ServiceRequest) -> bool {
    req.headers().contains_key(header::UPGRADE)
}

/// A JSON media type as `web::Json` accepts it by default: subtype `json` or suffix `+json`.
fn is_json(req: &ServiceRequest) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .and_then(|m| m.trim().split_once('/'))
        .is_some_and(|(_, sub)| {
            let sub = sub.to_ascii_lowercase();
            sub == "json" || sub.ends_with("+json")
        })
}

fn declared_length(req: &ServiceRequest) -> Option<u64> {
    req.headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// The middleware (see the module doc). Without a [`Guard`] in `app_data` it does nothing.
pub async fn body_guard(
    mut req: ServiceRequest,
    next: actix_web::middleware::Next<actix_web::body::BoxBody>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let Some(guard) = req.app_data::<web::Data<Guard>>().cloned() else {
        return next.call(req).await;
    };
    if let Err(e) = crate::validate::query(req.query_string()) {
        return Ok(req.error_response(e));
    }
    if is_upgrade(&req) {
        return next.call(req).await;
    }
    let mut timed = TimedPayload::new(req.take_payload(), guard.idle, guard.total);
    let scan =
        is_json(&req) && declared_length(&req).is_none_or(|n| n > 0 && n <= guard.json_cap as u64);
    if !scan {
        req.set_payload(Payload::from(Box::pin(timed) as BoxedStream));
        return next.call(req).await;
    }
    let mut buf = web::BytesMut::new();
    let mut overflow = false;
    while let Some(chunk) = timed.next().await {
        match chunk {
            Ok(c) => {
                buf.extend_from_slice(&c);
                if buf.len() > guard.json_cap {
                    overflow = true;
                    break;
                }
            }
            Err(e) => return Ok(req.error_response(payload_error(&e))),
        }
    }
    let buf = buf.freeze();
    if overflow {
        // Too large to check here: the route's limit refuses it (413).
        let rest = futures::stream::once(async move { Ok(buf) }).chain(timed);
        req.set_payload(Payload::from(Box::pin(rest) as BoxedStream));
        return next.call(req).await;
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&buf)
        && let Err(e) = crate::validate::json(&v)
    {
        tracing::info!(field = ?e.field, "request refused: NUL in a JSON field");
        return Ok(req.error_response(e));
    }
    req.extensions_mut().insert(BufferedJson(buf.clone()));
    req.set_payload(Payload::from(buf));
    next.call(req).await
}

/// The JSON body as the guard read it (request extensions), so that the JSON error handler can
/// name the field of a type error (`validate::json_path_at`).
#[derive(Clone, Debug)]
pub struct BufferedJson(pub Bytes);

// ---------------------------------------------------------------------------------------------
// Uploads (files and models): the pieces both handlers share
// ---------------------------------------------------------------------------------------------

/// The request's media type (`Content-Type` before any `;`), lowercase.
pub fn media_type(req: &actix_web::HttpRequest) -> Option<String> {
    req.headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

/// Whether the request announces a body longer than `limit` (refused before reading it).
pub fn announces_more_than(req: &actix_web::HttpRequest, limit: usize) -> bool {
    req.headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|len| len > limit as u64)
}

/// Reads the whole body, at most `limit` bytes (else `too_large(limit)`), and its sha256 (hex,
/// hashed on the blocking pool).
pub async fn read_limited(
    payload: &mut actix_web::web::Payload,
    limit: usize,
    too_large: fn(usize) -> crate::error::ApiError,
) -> crate::error::ApiResult<(bytes::Bytes, String)> {
    use futures::StreamExt;
    use sha2::Digest;
    let mut body = actix_web::web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| payload_error(&e))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        body.extend_from_slice(&chunk);
    }
    let body = body.freeze();
    let hashed = body.clone();
    let sha256 = actix_web::rt::task::spawn_blocking(move || hex::encode(sha2::Sha256::digest(&hashed)))
        .await
        .map_err(crate::error::ApiError::internal)?;
    Ok((body, sha256))
}
