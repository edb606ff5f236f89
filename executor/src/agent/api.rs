//! The marketplace HTTP API as the agent uses it (provider key, scope `nodes`): register the
//! node, answer its challenge, get the node's NATS credential, place/amend/cancel asks, read the
//! top of a book; and with the node's credential, an assignment's grant, input and output. The
//! key and every token are sent as `Authorization: Bearer …` and never logged (`ApiClient`'s
//! `Debug` hides the key; [`NodeCredential`]'s and [`Grant`]'s hide theirs).

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// An API call that failed: transport, or the API's `{"error":{"code","message","field"}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("API request {what} failed: {message}")]
    Transport { what: String, message: String },
    #[error("API {what}: HTTP {status} {code}: {message}{}", field.as_deref().map(|f| format!(" (field {f})")).unwrap_or_default())]
    Status {
        what: String,
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
    },
    #[error("API {what}: unexpected response: {message}")]
    Decode { what: String, message: String },
}

impl ApiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Worth trying again: the request did not reach the market or its answer was lost
    /// (transport), or the market was busy or failing for a moment (408, 429, 5xx). A 4xx
    /// that judges the request itself (401, 403, 404, 409 `assignment_closed`, 413, …) is final.
    pub fn is_transient(&self) -> bool {
        match self {
            ApiError::Transport { .. } => true,
            ApiError::Status { status, .. } => matches!(status, 408 | 429) || *status >= 500,
            ApiError::Decode { .. } => false,
        }
    }

    /// The ask no longer rests in the book (unknown, or `409 ask_not_open`: filled, cancelled,
    /// expired). Any other 409 (e.g. `probation_cap`) leaves it open.
    pub fn ask_gone(&self) -> bool {
        match self {
            ApiError::Status { status, code, .. } => {
                matches!(status, 404 | 410) || (*status == 409 && code == "ask_not_open")
            }
            _ => false,
        }
    }
}

/// `POST /v1/nodes` body.
#[derive(Clone, Debug, Serialize)]
pub struct RegisterNode<'a> {
    pub name: &'a str,
    pub gpu_model: &'a str,
    pub vram_mb: u64,
    pub region: &'a str,
    /// sha256 of what identifies this machine ([`super::hardware_fingerprint`]); the market links
    /// accounts whose nodes report the same one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardware_fingerprint: Option<String>,
}

/// The challenge the API hands out at registration: commit to `items` embeddings, then reveal
/// the `sample` the market draws; the market times the commitment against `bound_ms` of `class`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ChallengeSpec {
    pub nonce: String,
    pub workload: String,
    pub items: usize,
    #[serde(default)]
    pub sample: usize,
    #[serde(default)]
    pub class: String,
    #[serde(default)]
    pub bound_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Registered {
    pub id: Uuid,
    #[serde(default)]
    pub status: Option<String>,
    pub challenge: Option<ChallengeSpec>,
    #[serde(default)]
    pub challenge_status: Option<String>,
}

/// `POST /v1/nodes/{id}/challenge/commitment` body: one leaf per item
/// ([`crate::challenge::leaves`]), in item order.
#[derive(Clone, Debug, Serialize)]
pub struct ChallengeCommitment<'a> {
    pub nonce: &'a str,
    pub leaves: &'a [String],
    pub device: &'a str,
}

/// The market's answer to a commitment: the items to reveal, in this order.
#[derive(Clone, Debug, Deserialize)]
pub struct ChallengeSample {
    pub sample: Vec<usize>,
}

/// `POST /v1/nodes/{id}/challenge` body: the sampled items' embeddings, in sample order.
#[derive(Clone, Debug, Serialize)]
pub struct ChallengeAnswer<'a> {
    pub nonce: &'a str,
    pub embeddings: &'a [Vec<f32>],
    pub elapsed_ms: u64,
    pub device: &'a str,
}

#[derive(Clone, Debug, Deserialize)]
pub struct ChallengeVerdict {
    pub challenge_status: String,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct AskCreated {
    #[serde(deserialize_with = "id_string")]
    pub id: String,
}

/// One price level (prices and quantities as JSON numbers or numeric strings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct Level {
    #[serde(deserialize_with = "lenient_u64")]
    pub price: u64,
    #[serde(deserialize_with = "lenient_u64")]
    pub qty: u64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Book {
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub bids: Vec<Level>,
    #[serde(default)]
    pub asks: Vec<Level>,
}

fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| serde::de::Error::custom(format!("{n} is not a non-negative integer"))),
        Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        v => Err(serde::de::Error::custom(format!(
            "expected a number, got {v}"
        ))),
    }
}

fn id_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Number(n) => Ok(n.to_string()),
        v => Err(serde::de::Error::custom(format!("expected an id, got {v}"))),
    }
}

/// The API client. Requests time out after [`ApiClient::TIMEOUT`].
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The node's NATS credential (`POST /v1/nodes/{id}/credentials`).
#[derive(Clone, Deserialize)]
pub struct NodeCredential {
    pub token: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

impl std::fmt::Debug for NodeCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCredential").field("expires_at", &self.expires_at).finish_non_exhaustive()
    }
}

/// One assignment's data grant (`POST /v1/assignments/{id}/grant`).
#[derive(Clone, Deserialize)]
pub struct Grant {
    pub token: String,
    pub input_url: String,
    pub output_url: String,
    pub items: u64,
    pub max_output_bytes: u64,
    /// The job's private model, when it runs one.
    #[serde(default)]
    pub model: Option<GrantModel>,
}

/// Where an assignment's private model and its key are (the grant is their bearer).
#[derive(Clone, Debug, Deserialize)]
pub struct GrantModel {
    pub id: Uuid,
    pub sha256: String,
    /// Size of the sealed model.
    pub bytes: u64,
    pub url: String,
    pub key_url: String,
}

/// A private model's data key, released for one open assignment. `Debug` hides the key.
#[derive(Clone, Deserialize)]
pub struct ModelKey {
    pub model_id: Uuid,
    pub sha256: String,
    pub algorithm: String,
    pub key_b64: String,
    pub nonce_b64: String,
}

impl std::fmt::Debug for ModelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelKey").field("model_id", &self.model_id).field("sha256", &self.sha256).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant").field("input_url", &self.input_url).field("items", &self.items).finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Uploaded {
    pub sha256: String,
}

impl ApiClient {
    pub const TIMEOUT: Duration = Duration::from_secs(30);
    /// Downloads and uploads of assignment data may take longer than a call.
    pub const DATA_TIMEOUT: Duration = Duration::from_secs(600);

    pub fn new(base: &str, key: &str) -> Result<Self, ApiError> {
        let http = reqwest::Client::builder()
            .timeout(Self::TIMEOUT)
            .build()
            .map_err(|e| ApiError::Transport {
                what: "client".into(),
                message: e.to_string(),
            })?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            key: key.trim().to_owned(),
            http,
        })
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ApiError> {
        let body = self.send_raw(what, req.bearer_auth(&self.key)).await?;
        let body: &[u8] = if body.is_empty() { b"null" } else { &body };
        serde_json::from_slice(body).map_err(|e| ApiError::Decode {
            what: what.into(),
            message: e.to_string(),
        })
    }

    /// Sends an authorised request; the body of a 2xx answer, or the API's error.
    async fn send_raw(&self, what: &str, req: reqwest::RequestBuilder) -> Result<bytes::Bytes, ApiError> {
        let resp = req
            .send()
            .await
            .map_err(|e| ApiError::Transport {
                what: what.into(),
                message: e.without_url().to_string(),
            })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| ApiError::Transport {
            what: what.into(),
            message: e.to_string(),
        })?;
        if !status.is_success() {
            let err = serde_json::from_slice::<Value>(&body).ok();
            let e = err.as_ref().and_then(|v| v.get("error"));
            let s = |k: &str| {
                e.and_then(|e| e.get(k))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            return Err(ApiError::Status {
                what: what.into(),
                status: status.as_u16(),
                code: s("code").unwrap_or_else(|| "unknown".into()),
                message: s("message").unwrap_or_else(|| {
                    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
                }),
                field: s("field"),
            });
        }
        Ok(body)
    }

    /// A fresh NATS credential for `node` (provider key).
    pub async fn node_credential(&self, node: Uuid) -> Result<NodeCredential, ApiError> {
        self.send(
            "POST /v1/nodes/{id}/credentials",
            self.http.post(self.url(&format!("/v1/nodes/{node}/credentials"))),
        )
        .await
    }

    /// The grant to one assignment's data (the node's credential as bearer).
    pub async fn grant(&self, credential: &NodeCredential, assignment: Uuid) -> Result<Grant, ApiError> {
        let what = "POST /v1/assignments/{id}/grant";
        let body = self
            .send_raw(
                what,
                self.http
                    .post(self.url(&format!("/v1/assignments/{assignment}/grant")))
                    .bearer_auth(&credential.token),
            )
            .await?;
        serde_json::from_slice(&body).map_err(|e| ApiError::Decode { what: what.into(), message: e.to_string() })
    }

    /// The assignment's input lines, at most `max` bytes.
    pub async fn input(&self, grant: &Grant, max: u64) -> Result<Vec<u8>, ApiError> {
        let what = "GET /v1/assignments/{id}/input";
        let body = self
            .send_raw(
                what,
                self.http.get(self.url(&grant.input_url)).bearer_auth(&grant.token).timeout(Self::DATA_TIMEOUT),
            )
            .await?;
        if body.len() as u64 > max {
            return Err(ApiError::Decode {
                what: what.into(),
                message: format!("the input is {} bytes, over the node's limit of {max}", body.len()),
            });
        }
        Ok(body.to_vec())
    }

    /// Uploads the assignment's output; returns the name the market stored it under.
    pub async fn output(&self, grant: &Grant, bytes: Vec<u8>) -> Result<Uploaded, ApiError> {
        let what = "PUT /v1/assignments/{id}/output";
        let body = self
            .send_raw(
                what,
                self.http
                    .put(self.url(&grant.output_url))
                    .bearer_auth(&grant.token)
                    .header("Content-Type", "application/x-ndjson")
                    .timeout(Self::DATA_TIMEOUT)
                    .body(bytes),
            )
            .await?;
        serde_json::from_slice(&body).map_err(|e| ApiError::Decode { what: what.into(), message: e.to_string() })
    }

    /// Uploads the assignment's output from a file, streamed (the file is never read into
    /// memory); returns the name the market stored it under.
    pub async fn output_file(&self, grant: &Grant, path: &std::path::Path) -> Result<Uploaded, ApiError> {
        let what = "PUT /v1/assignments/{id}/output";
        let io = |e: std::io::Error| ApiError::Transport {
            what: what.into(),
            message: format!("reading the output file {}: {e}", path.display()),
        };
        let file = tokio::fs::File::open(path).await.map_err(io)?;
        let len = file.metadata().await.map_err(io)?.len();
        let body = self
            .send_raw(
                what,
                self.http
                    .put(self.url(&grant.output_url))
                    .bearer_auth(&grant.token)
                    .header("Content-Type", "application/x-ndjson")
                    .header("Content-Length", len)
                    .timeout(Self::DATA_TIMEOUT)
                    .body(reqwest::Body::from(file)),
            )
            .await?;
        serde_json::from_slice(&body).map_err(|e| ApiError::Decode { what: what.into(), message: e.to_string() })
    }

    /// The assignment's private model, sealed (at most `max` bytes).
    pub async fn model(&self, grant: &Grant, max: u64) -> Result<Vec<u8>, ApiError> {
        let what = "GET /v1/assignments/{id}/model";
        let m = grant.model.as_ref().ok_or_else(|| ApiError::Decode {
            what: what.into(),
            message: "the grant names no model".into(),
        })?;
        if m.bytes > max {
            return Err(ApiError::Decode {
                what: what.into(),
                message: format!("the model is {} bytes, over the node's limit of {max}", m.bytes),
            });
        }
        let body = self
            .send_raw(what, self.http.get(self.url(&m.url)).bearer_auth(&grant.token).timeout(Self::DATA_TIMEOUT))
            .await?;
        if body.len() as u64 > max {
            return Err(ApiError::Decode {
                what: what.into(),
                message: format!("the model is {} bytes, over the node's limit of {max}", body.len()),
            });
        }
        Ok(body.to_vec())
    }

    /// The key of the assignment's private model (released to this assignment only).
    pub async fn model_key(&self, grant: &Grant) -> Result<ModelKey, ApiError> {
        let what = "GET /v1/assignments/{id}/model-key";
        let m = grant.model.as_ref().ok_or_else(|| ApiError::Decode {
            what: what.into(),
            message: "the grant names no model".into(),
        })?;
        let body = self
            .send_raw(what, self.http.get(self.url(&m.key_url)).bearer_auth(&grant.token))
            .await?;
        serde_json::from_slice(&body).map_err(|e| ApiError::Decode { what: what.into(), message: e.to_string() })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn register(&self, body: &RegisterNode<'_>) -> Result<Registered, ApiError> {
        self.send(
            "POST /v1/nodes",
            self.http.post(self.url("/v1/nodes")).json(body),
        )
        .await
    }

    /// Commits to the challenge's answer; the market draws the sample to reveal.
    pub async fn commit_challenge(
        &self,
        node: Uuid,
        body: &ChallengeCommitment<'_>,
    ) -> Result<ChallengeSample, ApiError> {
        self.send(
            "POST /v1/nodes/{id}/challenge/commitment",
            self.http
                .post(self.url(&format!("/v1/nodes/{node}/challenge/commitment")))
                .json(body),
        )
        .await
    }

    /// Reveals the sampled embeddings; the market's verdict is the node.
    pub async fn answer_challenge(
        &self,
        node: Uuid,
        body: &ChallengeAnswer<'_>,
    ) -> Result<ChallengeVerdict, ApiError> {
        self.send(
            "POST /v1/nodes/{id}/challenge",
            self.http
                .post(self.url(&format!("/v1/nodes/{node}/challenge")))
                .json(body),
        )
        .await
    }

    /// Places an ask; `idempotency_key` makes a retry return the same ask.
    pub async fn place_ask(
        &self,
        node: Uuid,
        market: &str,
        price: u64,
        qty: u64,
        idempotency_key: &str,
    ) -> Result<AskCreated, ApiError> {
        self.send(
            "POST /v1/asks",
            self.http
                .post(self.url("/v1/asks"))
                .header("Idempotency-Key", idempotency_key)
                .json(&serde_json::json!({ "node_id": node, "market": market, "price": price, "qty": qty })),
        )
        .await
    }

    pub async fn amend_ask(
        &self,
        id: &str,
        price: Option<u64>,
        qty: Option<u64>,
    ) -> Result<Value, ApiError> {
        let mut body = serde_json::Map::new();
        if let Some(p) = price {
            body.insert("price".into(), p.into());
        }
        if let Some(q) = qty {
            body.insert("qty".into(), q.into());
        }
        self.send(
            "PATCH /v1/asks/{id}",
            self.http
                .patch(self.url(&format!("/v1/asks/{id}")))
                .json(&body),
        )
        .await
    }

    pub async fn cancel_ask(&self, id: &str) -> Result<Value, ApiError> {
        self.send(
            "DELETE /v1/asks/{id}",
            self.http.delete(self.url(&format!("/v1/asks/{id}"))),
        )
        .await
    }

    pub async fn book_top(&self, market: &str) -> Result<Book, ApiError> {
        self.send(
            "GET /v1/markets/{m}/book",
            self.http
                .get(self.url(&format!("/v1/markets/{market}/book")))
                .query(&[("depth", "1")]),
        )
        .await
    }
}
