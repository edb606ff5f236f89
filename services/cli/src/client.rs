//! The API over HTTP: JSON in and out, the API's error shape turned into [`ApiFailure`], safe
//! retries (GETs, and POSTs that carry an Idempotency-Key) on a dropped connection or a 503.

use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

/// An error answer of the API: `{"error":{"code","message","field","details"}}`.
#[derive(Debug, Clone)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
    /// Per-line problems of an uploaded file.
    pub details: Vec<(u64, String)>,
    pub retry_after: Option<u64>,
    /// The error object as the API sent it (what `--json` prints).
    pub body: Value,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(field) = &self.field {
            write!(f, " (field {field})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiFailure {}

impl ApiFailure {
    /// Reads an error response; a body that is not the API's JSON error still says what came.
    pub async fn from_response(r: Response) -> ApiFailure {
        let status = r.status();
        let retry_after = r
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let text = r.text().await.unwrap_or_default();
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        match parsed
            .as_ref()
            .and_then(|v| v.get("error"))
            .filter(|e| e.is_object())
        {
            Some(e) => ApiFailure {
                status,
                code: e["code"].as_str().unwrap_or("unknown").to_owned(),
                message: e["message"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("HTTP {status}")),
                field: e["field"].as_str().map(str::to_owned),
                details: e["details"]
                    .as_array()
                    .map(|d| {
                        d.iter()
                            .map(|x| {
                                (
                                    x["line"].as_u64().unwrap_or(0),
                                    x["message"].as_str().unwrap_or("").to_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                retry_after,
                body: parsed.clone().unwrap_or(Value::Null),
            },
            None => {
                let snippet: String = text.chars().take(300).collect();
                let message = if snippet.trim().is_empty() {
                    format!("the API answered HTTP {status} with no body")
                } else {
                    format!("the API answered HTTP {status}: {}", snippet.trim())
                };
                ApiFailure {
                    status,
                    code: format!("http_{}", status.as_u16()),
                    body: serde_json::json!({"error": {"code": format!("http_{}", status.as_u16()), "message": message}}),
                    message,
                    field: None,
                    details: Vec::new(),
                    retry_after,
                }
            }
        }
    }

    /// A hint for a person on what to do next, when there is an obvious one.
    pub fn hint(&self) -> Option<String> {
        match (self.status.as_u16(), self.code.as_str()) {
            (401, _) => Some(
                "log in again with `gridbook login` (or set GRIDBOOK_API_KEY to a valid key)"
                    .into(),
            ),
            (_, "insufficient_funds") => Some("see `gridbook balance`".into()),
            (429 | 503, _) => self
                .retry_after
                .map(|s| format!("the API asks to retry in {s} s")),
            _ => None,
        }
    }
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

/// Attempts for a request that is safe to repeat.
const ATTEMPTS: u32 = 3;

impl Client {
    pub fn new(base: &str, key: Option<String>) -> anyhow::Result<Client> {
        let base = base.trim().trim_end_matches('/').to_owned();
        if base.starts_with("https://") {
            bail!(
                "this build of gridbook speaks plain HTTP only (the workspace's reqwest has no TLS): \
                 use an http:// address, e.g. through a local TLS-terminating proxy"
            );
        }
        if !base.starts_with("http://") {
            bail!("--api must be an http:// address, not {base:?}");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("gridbook-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("building the HTTP client")?;
        Ok(Client { http, base, key })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A request with the API key (when there is one).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self.http.request(method, self.url(path));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    /// A request without the API key (log-in with a session cookie instead).
    pub fn plain(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path))
    }

    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    fn require_key(&self) -> anyhow::Result<()> {
        if self.key.is_none() {
            bail!("not logged in: run `gridbook login` (or set GRIDBOOK_API_KEY)");
        }
        Ok(())
    }

    /// Sends what `build` makes; repeats it (up to [`ATTEMPTS`]) on a connection failure or a
    /// 503 when `retry`. Error answers become [`ApiFailure`].
    pub async fn send(
        &self,
        retry: bool,
        build: impl Fn() -> RequestBuilder,
    ) -> anyhow::Result<Response> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = !retry || attempt >= ATTEMPTS;
            match build().send().await {
                Ok(r) if r.status().is_success() => return Ok(r),
                Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE && !last => {
                    let wait = r
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(1)
                        .min(5);
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                }
                Ok(r) => return Err(ApiFailure::from_response(r).await.into()),
                Err(e) if !last && (e.is_connect() || e.is_timeout() || e.is_request()) => {
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                }
                Err(e) => return Err(self.transport(e)),
            }
        }
    }

    fn transport(&self, e: reqwest::Error) -> anyhow::Error {
        let mut cause = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            cause = format!("{cause}: {s}");
            src = s.source();
        }
        anyhow::anyhow!(
            "cannot reach the API at {}: {cause} (is it running? set --api or GRIDBOOK_API)",
            self.base
        )
    }

    pub async fn json(r: Response) -> anyhow::Result<Value> {
        let status = r.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let text = r.text().await.context("reading the API's answer")?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| {
            format!(
                "the API's answer (HTTP {status}) is not JSON: {}",
                text.chars().take(200).collect::<String>()
            )
        })
    }

    /// GET `path` with the key; JSON.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.require_key()?;
        Self::json(self.send(true, || self.request(Method::GET, path)).await?).await
    }

    /// GET `path` without needing a key (public market data); JSON.
    pub async fn get_public(&self, path: &str) -> anyhow::Result<Value> {
        Self::json(self.send(true, || self.http.get(self.url(path))).await?).await
    }

    /// A JSON request with the key. With an Idempotency-Key it is retried safely.
    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<Value> {
        self.require_key()?;
        let retry = idempotency_key.is_some();
        let r = self
            .send(retry, || {
                let mut r = self.request(method.clone(), path);
                if let Some(k) = idempotency_key {
                    r = r.header("Idempotency-Key", k);
                }
                if let Some(b) = body {
                    r = r.json(b);
                }
                r
            })
            .await?;
        Self::json(r).await
    }

    /// POST JSON with an Idempotency-Key (created per call; the retries reuse it).
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        let key = new_idempotency_key();
        self.send_json(Method::POST, path, Some(body), Some(&key))
            .await
    }
}

/// A fresh Idempotency-Key: `gridbook-cli-<uuid>`.
pub fn new_idempotency_key() -> String {
    format!("gridbook-cli-{}", uuid::Uuid::new_v4().simple())
}
