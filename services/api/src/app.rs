//! `Application::build(settings)`: migrations, NATS, the HTTP server bound (port 0 in tests).

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use tracing::info;

use crate::error::ApiError;
use crate::markets::Markets;
use crate::settings::Settings;
use crate::state::AppState;

pub struct Application {
    port: u16,
    server: Server,
    pub state: AppState,
}

/// Bad JSON, bad query strings and bad paths answer with the API's JSON error, naming what is
/// wrong and where: serde's message carries the position (and the field when one is missing or
/// unknown); a type error also gets `field`, the path of the value at that position. Errors of
/// other extractors and of routing (405, 404) are turned into the same shape by `json_errors`.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(|err, req| {
            use actix_web::error::JsonPayloadError as E;
            let e = match &err {
                E::OverflowKnownLength { length, limit } => ApiError::new(
                    actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("body of {length} bytes exceeds the limit of {limit}"),
                ),
                E::Overflow { limit } => ApiError::new(
                    actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("body exceeds the limit of {limit} bytes"),
                ),
                E::ContentType => ApiError::new(
                    actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    "send Content-Type: application/json",
                ),
                E::Payload(p) => crate::body::payload_error(p),
                E::Deserialize(e) => {
                    let base = ApiError::new(
                        actix_web::http::StatusCode::BAD_REQUEST,
                        "invalid_json",
                        format!("request body: {e}"),
                    );
                    // A type error names the field it found (the body guard kept the body).
                    let field = e.is_data().then(|| {
                        use actix_web::HttpMessage;
                        req.extensions()
                            .get::<crate::body::BufferedJson>()
                            .and_then(|b| crate::validate::json_path_at(&b.0, e.line(), e.column()))
                    });
                    match field.flatten() {
                        Some(f) => base.with_field(f),
                        None => base,
                    }
                }
                other => ApiError::new(
                    actix_web::http::StatusCode::BAD_REQUEST,
                    "invalid_json",
                    format!("request body: {other}"),
                ),
            };
            e.into()
        })
}

/// The parameter a query or path error is about: the one serde names (missing or unknown
/// field), else the only parameter whose value cannot be what the message says was expected
/// (an integer, a number, a UUID, a boolean). `None` when that is ambiguous.
pub fn locate_param(message: &str, params: &[(String, String)]) -> Option<String> {
    for marker in ["unknown field `", "missing field `"] {
        if let Some(rest) = message.split(marker).nth(1)
            && let Some((name, _)) = rest.split_once('`')
        {
            return Some(name.to_owned());
        }
    }
    let m = message.to_ascii_lowercase();
    let fails: fn(&str) -> bool = if m.contains("invalid digit")
        || m.contains("number too")
        || m.contains("integer")
    {
        |v| v.parse::<i128>().is_err()
    } else if m.contains("float") {
        |v| v.parse::<f64>().is_err()
    } else if m.contains("uuid") {
        |v| uuid::Uuid::parse_str(v).is_err()
    } else if m.contains("`true` or `false`") {
        |v| v.parse::<bool>().is_err()
    } else {
        return None;
    };
    let mut bad = params.iter().filter(|(_, v)| fails(v));
    match (bad.next(), bad.next()) {
        (Some((k, _)), None) => Some(k.clone()),
        _ => None,
    }
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, req| {
        let message = err.to_string();
        let params = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
            .map(|q| q.into_inner())
            .unwrap_or_default();
        let e = ApiError::new(
            actix_web::http::StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("query string: {message}"),
        );
        match locate_param(&message, &params) {
            Some(p) => {
                let mut e = e.with_field(p.clone());
                e.message = format!("query string: parameter `{p}`: {message}");
                e.into()
            }
            None => e.into(),
        }
    })
}

pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err, req| {
        let message = err.to_string();
        let params: Vec<(String, String)> = req
            .match_info()
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let e = ApiError::new(
            actix_web::http::StatusCode::NOT_FOUND,
            "not_found",
            format!("path: {message}"),
        );
        match locate_param(&message, &params) {
            Some(p) => {
                let mut e = e.with_field(p.clone());
                e.message = format!("path: segment `{p}`: {message}");
                e.into()
            }
            None => e.into(),
        }
    })
}

/// Every route of the API (the OpenAPI test walks exactly these): the probes and the document at
/// the root, the rest under `/v1`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(crate::health::configure)
        .configure(crate::openapi::configure)
        .service(
            web::scope("/v1")
                .configure(crate::accounts::configure)
                .configure(crate::money::configure)
                .configure(crate::files::configure)
                .configure(crate::models::configure)
                .configure(crate::jobs::configure)
                .configure(crate::nodes::configure)
                .configure(crate::identity::configure)
                .configure(crate::node_access::configure)
                .configure(crate::dead_letters::configure)
                .configure(crate::asks::configure)
                .configure(crate::assignments::configure)
                .configure(crate::verification::configure)
                .configure(crate::protocol::configure)
                .configure(crate::token::configure)
                .configure(crate::markets::configure),
        );
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let markets = Arc::new(Markets::load(&settings.markets_file)?);
        let db = crate::db::pool(
            &settings.database_url,
            settings.db_pool_size,
            Duration::from_secs(5),
        )?;
        {
            let db = db.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let mut c = db.get()?;
                gridbook_db::run_migrations(&mut c)?;
                // The operator account credits come from (idempotent).
                gridbook_ledger::escrow::ensure_system_accounts(&mut c, crate::money::LEDGER)?;
                Ok(())
            })
            .await??;
        }
        let nats = gridbook_wire::connect::service_options("gridbook-api", settings.nats_auth.nkey_file.as_deref())
            .map_err(anyhow::Error::msg)?
            .connect(gridbook_wire::connect::servers(&settings.nats_url).map_err(anyhow::Error::msg)?)
            .await?;
        let js = async_nats::jetstream::new(nats.clone());
        let node_access = Arc::new(crate::node_access::NodeAccess::build(&settings).await?);
        let models_kek = match &settings.models_kek_file {
            Some(f) => Some(Arc::new(gridbook_sealed::Kek::load(f)?)),
            None => {
                tracing::warn!("no models_kek_file: private models are off");
                None
            }
        };
        let state = AppState {
            db,
            nats,
            js,
            markets,
            settings: Arc::new(settings.clone()),
            node_access: node_access.clone(),
            models_kek,
            aggregates: Default::default(),
        };
        if let Some(issuer) = &node_access.issuer {
            let (state, issuer) = (state.clone(), Arc::new(issuer.clone()));
            tokio::spawn(async move {
                if let Err(e) = crate::node_access::run_callout(state, issuer).await {
                    tracing::error!(error = %e, "the NATS auth callout stopped");
                }
            });
        }
        crate::files::ensure_bucket(&state).await?;
        // Nodes cannot create streams: the ones they use exist before any node connects.
        gridbook_wire::streams::ensure_node_streams(&state.js, settings.nats_replicas).await.map_err(anyhow::Error::msg)?;
        let feeds = web::Data::new(crate::feed::Feeds::start(state.nats.clone(), &state.markets));
        let web_dir = settings.web_dir.clone().filter(|d| d.is_dir());

        let listener = TcpListener::bind(&settings.bind)?;
        let port = listener.local_addr()?.port();
        let data = web::Data::new(state.clone());
        let json_limit = settings.limits.json_bytes;
        let limiters = web::Data::new(RateLimiters::new(&settings.rate_limit));
        {
            // Bounded memory: forget idle keys every 30 s; stops when the server is gone.
            let weak = Arc::downgrade(&limiters.clone().into_inner());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(30));
                loop {
                    tick.tick().await;
                    match weak.upgrade() {
                        Some(l) => l.retain_recent(),
                        None => break,
                    }
                }
            });
        }
        let bounds = web::Data::new(crate::limits::Bounds::new(&settings.limits, &settings.login));
        {
            // Forget stale log-in back-off entries every 30 s; stops when the server is gone.
            let weak = Arc::downgrade(&bounds.clone().into_inner());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(30));
                loop {
                    tick.tick().await;
                    match weak.upgrade() {
                        Some(b) => b.logins.retain_recent(),
                        None => break,
                    }
                }
            });
        }
        let guard = web::Data::new(crate::body::Guard::new(&settings));
        let http = settings.http.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(feeds.clone())
                .app_data(bounds.clone())
                .app_data(guard.clone())
                .app_data(json_config(json_limit))
                .app_data(query_config())
                .app_data(path_config())
                // Other bodies (web::Bytes, String) are bounded too; streaming uploads
                // (web::Payload) enforce their own limit.
                .app_data(web::PayloadConfig::new(json_limit))
                .app_data(limiters.clone())
                // Innermost first: the body guard (timeouts, NUL), rate limits, then JSON
                // errors for everything, then the request id header, all inside the tracing
                // span.
                .wrap(actix_web::middleware::from_fn(crate::body::body_guard))
                .wrap(actix_web::middleware::from_fn(rate_limit))
                .wrap(actix_web::middleware::from_fn(json_errors))
                .wrap(actix_web::middleware::from_fn(request_id))
                .wrap(tracing_actix_web::TracingLogger::default())
                .configure(routes)
                .configure(|cfg| {
                    // The trader UI (static files), when `web_dir` is set and exists.
                    if let Some(dir) = &web_dir {
                        cfg.service(actix_files::Files::new("/", dir).index_file("index.html"));
                    }
                })
                .default_service(web::to(|| async {
                    Err::<actix_web::HttpResponse, _>(ApiError::not_found("route"))
                }))
        })
        .workers(settings.workers.max(1))
        // Explicit connection timeouts (settings.http): a client that does not send its request
        // head in time, or idles on a kept-alive connection, is disconnected. Body stalls are
        // the body guard's (408).
        .client_request_timeout(Duration::from_millis(http.request_head_timeout_ms.max(1)))
        .client_disconnect_timeout(Duration::from_millis(http.disconnect_timeout_ms.max(1)))
        .keep_alive(Duration::from_secs(http.keep_alive_secs.max(1)))
        .listen(listener)?
        .run();
        info!(port, "gridbook-api listening");
        Ok(Application {
            port,
            server,
            state,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

// ---------------------------------------------------------------------------------------------
// Middleware: request ids, JSON errors everywhere, rate limits.

/// Keyed rate limiters (governor, GCRA): one per client IP, one per presented credential (API
/// key or session cookie, keyed by a sha256 prefix so no secret is kept in memory). Checked
/// before routing, so a flood never reaches the database. Memory is bounded by
/// [`RateLimiters::retain_recent`], which a background task calls every 30 s.
pub struct RateLimiters {
    per_ip: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    per_credential: governor::DefaultKeyedRateLimiter<[u8; 16]>,
}

impl RateLimiters {
    pub fn new(settings: &crate::settings::RateLimit) -> RateLimiters {
        use std::num::NonZeroU32;
        let per_second = NonZeroU32::new(settings.per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(settings.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = governor::Quota::per_second(per_second).allow_burst(burst);
        RateLimiters {
            per_ip: governor::RateLimiter::keyed(quota),
            per_credential: governor::RateLimiter::keyed(quota),
        }
    }

    /// `Err(wait)` when the IP or the credential is over its quota.
    pub fn check(&self, ip: Option<std::net::IpAddr>, credential: Option<&[u8]>) -> Result<(), Duration> {
        use governor::clock::Clock;
        if let Some(ip) = ip
            && let Err(not_until) = self.per_ip.check_key(&ip)
        {
            return Err(not_until.wait_time_from(self.per_ip.clock().now()));
        }
        if let Some(cred) = credential {
            let digest = crate::auth::sha256(cred);
            let mut key = [0u8; 16];
            key.copy_from_slice(&digest[..16]);
            if let Err(not_until) = self.per_credential.check_key(&key) {
                return Err(not_until.wait_time_from(self.per_credential.clock().now()));
            }
        }
        Ok(())
    }

    /// Forgets keys whose state is back to "full burst available" (bounded memory).
    pub fn retain_recent(&self) {
        self.per_ip.retain_recent();
        self.per_ip.shrink_to_fit();
        self.per_credential.retain_recent();
        self.per_credential.shrink_to_fit();
    }

    pub fn len(&self) -> usize {
        self.per_ip.len() + self.per_credential.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// 429 `rate_limited` with `Retry-After` (whole seconds, at least 1). The limiters live in
/// `app_data` (`web::Data<RateLimiters>`).
async fn rate_limit(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<actix_web::body::BoxBody>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let Some(limiters) = req.app_data::<web::Data<RateLimiters>>().cloned() else {
        return next.call(req).await;
    };
    let ip = req.peer_addr().map(|a| a.ip());
    let credential: Option<Vec<u8>> = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec())
        .or_else(|| {
            req.cookie(crate::auth::SESSION_COOKIE)
                .map(|c| c.value().as_bytes().to_vec())
        });
    match limiters.check(ip, credential.as_deref()) {
        Ok(()) => next.call(req).await,
        Err(wait) => {
            let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
            tracing::info!(retry_after = secs, "rate limited");
            let res = actix_web::ResponseError::error_response(&ApiError::too_many(
                "rate_limited",
                format!("too many requests; retry in {secs} s"),
                secs,
            ));
            Ok(req.into_response(res))
        }
    }
}

fn code_for(status: actix_web::http::StatusCode) -> &'static str {
    use actix_web::http::StatusCode as S;
    match status {
        S::BAD_REQUEST => "bad_request",
        S::UNAUTHORIZED => "unauthorized",
        S::FORBIDDEN => "forbidden",
        S::NOT_FOUND => "not_found",
        S::METHOD_NOT_ALLOWED => "method_not_allowed",
        S::NOT_ACCEPTABLE => "not_acceptable",
        S::REQUEST_TIMEOUT => "request_timeout",
        S::CONFLICT => "conflict",
        S::LENGTH_REQUIRED => "length_required",
        S::PAYLOAD_TOO_LARGE => "payload_too_large",
        S::URI_TOO_LONG => "uri_too_long",
        S::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        S::UNPROCESSABLE_ENTITY => "unprocessable",
        S::TOO_MANY_REQUESTS => "rate_limited",
        S::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        S::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    }
}

/// Every 4xx/5xx answers with the API's JSON error shape, also those produced by actix itself
/// (a `web::Bytes` body over the limit, a 405, a bad header): a response that is not JSON
/// already is replaced by `{"error": {"code", "message"}}`, keeping its status and headers
/// such as `Retry-After` and `Allow`. 5xx texts are not passed on (they may hold internals).
async fn json_errors(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<actix_web::body::BoxBody>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let res = next.call(req).await?;
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return Ok(res);
    }
    let is_json = res
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return Ok(res);
    }
    let (req, res) = res.into_parts();
    let headers = res.headers().clone();
    let text = actix_web::body::to_bytes_limited(res.into_body(), 2048)
        .await
        .ok()
        .and_then(|b| b.ok())
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .filter(|t| !t.trim().is_empty() && status.is_client_error());
    let message = text.unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase()
    });
    let mut new = actix_web::ResponseError::error_response(&ApiError::new(
        status,
        code_for(status),
        message,
    ));
    for (name, value) in headers.iter() {
        if name != actix_web::http::header::CONTENT_TYPE
            && name != actix_web::http::header::CONTENT_LENGTH
        {
            new.headers_mut().insert(name.clone(), value.clone());
        }
    }
    Ok(actix_web::dev::ServiceResponse::new(req, new))
}

/// `X-Request-Id` on every response: the id `TracingLogger` gave the request's span, so a
/// client can quote it and an operator can find the logs.
async fn request_id(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<actix_web::body::BoxBody>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    use actix_web::HttpMessage;
    let id = req
        .extensions()
        .get::<tracing_actix_web::RequestId>()
        .map(|id| id.to_string());
    let mut res = next.call(req).await?;
    if let Some(v) = id.and_then(|id| actix_web::http::header::HeaderValue::from_str(&id).ok()) {
        res.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static("x-request-id"),
            v,
        );
    }
    Ok(res)
}
