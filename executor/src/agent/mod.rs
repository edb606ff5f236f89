//! The provider agent: what makes a node earn on the market.
//!
//! * [`config`] — settings (`node.toml` + `GRIDBOOK_*`).
//! * [`state`] — the state file: node id, open asks, recently finished assignments.
//! * [`api`] — the marketplace HTTP API client (register, challenge, asks, book).
//! * [`pricing`] — pure ask pricing policies (`fixed`, `follow`).
//! * [`workloads`] — the models a node serves, and running an assignment's lines through the
//!   local-mode streaming path ([`crate::local::run_to_writer`], output spooled to a file and uploaded streamed), so outputs equal local mode's.
//! * [`node`] — the NATS side: heartbeats, the assignment consumer, cancellations, results.
//!
//! Start-up ([`bootstrap`]): register when no node id is known (stored in the state file), answer
//! the embedding challenge with the real model — warm the model up, register, embed all the
//! challenge's items, commit to them (one leaf each), reveal the items the market samples — and
//! fail loudly if the answer fails. Then [`node::run_node`] and [`pricing_loop`] run until the
//! shutdown signal.

pub mod api;
pub mod config;
pub mod node;
pub mod pricing;
pub mod state;
pub mod workloads;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use uuid::Uuid;

use self::api::{ApiClient, ApiError, ChallengeAnswer, ChallengeCommitment, RegisterNode};
use self::config::AgentSettings;
use self::pricing::{Action, OwnAsk, Policy};
use self::state::{AskState, NodeState};
use self::workloads::Workloads;
use crate::error::ExecutorError;

/// Everything that stops the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    #[error("invalid agent configuration: {0}")]
    Config(String),
    #[error("hardware challenge failed: {0}")]
    ChallengeFailed(String),
}

impl AgentError {
    pub fn nats(e: impl std::fmt::Display) -> Self {
        Self::Nats(e.to_string())
    }
}

/// The state shared by the agent's tasks, saved to its file after every change.
pub struct SharedState {
    pub path: std::path::PathBuf,
    inner: Mutex<NodeState>,
}

impl SharedState {
    pub fn load(path: &Path) -> Result<Arc<Self>, AgentError> {
        Ok(Arc::new(Self {
            path: path.to_owned(),
            inner: Mutex::new(NodeState::load(path)?),
        }))
    }

    /// Reads or changes the state; a change is written to the file (atomically) before returning.
    pub fn update<T>(&self, f: impl FnOnce(&mut NodeState) -> T) -> Result<T, AgentError> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let before = g.clone();
        let out = f(&mut g);
        if *g != before {
            g.save(&self.path)?;
        }
        Ok(out)
    }

    pub fn read<T>(&self, f: impl FnOnce(&NodeState) -> T) -> T {
        f(&self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Registers the node when no id is known yet and answers its challenge; returns the node id.
/// A failed challenge is an error (the node must not trade).
/// What identifies this machine to the market: sha256 of the OS's machine id
/// (`/etc/machine-id`, else `/var/lib/dbus/machine-id`) and the device the node runs on. The
/// market links accounts whose nodes report one fingerprint into one identity cluster (its
/// anti-whale owner); the id itself is never sent. `None` when the machine has no id.
pub fn hardware_fingerprint(device: &str) -> Option<String> {
    use sha2::Digest;
    let id = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())?;
    let mut h = sha2::Sha256::new();
    h.update(b"gridbook-hardware-v1\0");
    h.update(id.as_bytes());
    h.update(b"\0");
    h.update(device.as_bytes());
    Some(hex::encode(h.finalize()))
}

pub async fn bootstrap(
    api: &ApiClient,
    settings: &AgentSettings,
    state: &SharedState,
    workloads: &Arc<Workloads>,
) -> Result<Uuid, AgentError> {
    if let Some(id) = settings.node_id {
        state.update(|s| s.node_id = Some(id))?;
    }
    let (known, passed) = state.read(|s| (s.node_id, s.challenge_passed));
    if let (Some(id), true) = (known, passed) {
        tracing::info!(node_id = %id, "node registered, challenge passed earlier");
        return Ok(id);
    }
    if let Some(id) = known {
        // Registered but the challenge was not passed: the API gives the nonce only at
        // registration, so the node must be registered again.
        return Err(AgentError::ChallengeFailed(format!(
            "node {id} has not passed its challenge; remove node_id from the state file ({}) to register again",
            state.path.display()
        )));
    }
    // The market's clock starts at the registration: pay the model's first-run costs before.
    let w = workloads.clone();
    let warm = tokio::task::spawn_blocking(move || w.warm_up())
        .await
        .map_err(|e| AgentError::Config(format!("warm-up task: {e}")))??;
    tracing::info!(elapsed_ms = warm.as_millis() as u64, "challenge model warmed up");
    let reg = api
        .register(&RegisterNode {
            name: &settings.name,
            gpu_model: &settings.gpu_model,
            vram_mb: settings.vram_mb,
            region: &settings.region,
            hardware_fingerprint: hardware_fingerprint(workloads.gpu_name.as_deref().unwrap_or(&workloads.device)),
        })
        .await?;
    state.update(|s| {
        s.node_id = Some(reg.id);
        s.challenge_passed = reg.challenge_status.as_deref() == Some("passed");
    })?;
    tracing::info!(node_id = %reg.id, status = ?reg.status, "node registered");
    if state.read(|s| s.challenge_passed) {
        return Ok(reg.id);
    }
    let Some(ch) = reg.challenge else {
        return Err(AgentError::ChallengeFailed(
            "the API returned no challenge for the new node".into(),
        ));
    };
    if ch.workload != crate::challenge::WORKLOAD.as_str() {
        return Err(AgentError::ChallengeFailed(format!(
            "unsupported challenge workload {:?}",
            ch.workload
        )));
    }
    if ch.items == 0 || ch.items > crate::challenge::MAX_ITEMS {
        return Err(AgentError::ChallengeFailed(format!(
            "challenge asks for {} items (1..={})",
            ch.items,
            crate::challenge::MAX_ITEMS
        )));
    }
    let w = workloads.clone();
    let nonce = ch.nonce.clone();
    let (embeddings, elapsed) = tokio::task::spawn_blocking(move || w.challenge(&nonce, ch.items))
        .await
        .map_err(|e| AgentError::Config(format!("challenge task: {e}")))??;
    let leaves = crate::challenge::leaves(&embeddings);
    tracing::info!(
        items = ch.items,
        class = %ch.class,
        bound_ms = ch.bound_ms,
        elapsed_ms = elapsed.as_millis() as u64,
        "challenge computed"
    );
    let device = match &workloads.gpu_name {
        Some(g) => format!("{} ({g})", workloads.device),
        None => workloads.device.clone(),
    };
    let drawn = api
        .commit_challenge(reg.id, &ChallengeCommitment { nonce: &ch.nonce, leaves: &leaves, device: &device })
        .await?;
    if drawn.sample.len() > crate::challenge::MAX_SAMPLE {
        return Err(AgentError::ChallengeFailed(format!(
            "the market sampled {} items (at most {})",
            drawn.sample.len(),
            crate::challenge::MAX_SAMPLE
        )));
    }
    let mut revealed = Vec::with_capacity(drawn.sample.len());
    for &i in &drawn.sample {
        let e = embeddings.get(i).ok_or_else(|| {
            AgentError::ChallengeFailed(format!("the market sampled item {i} of a challenge of {} items", ch.items))
        })?;
        revealed.push(e.clone());
    }
    let verdict = api
        .answer_challenge(
            reg.id,
            &ChallengeAnswer {
                nonce: &ch.nonce,
                embeddings: &revealed,
                elapsed_ms: elapsed.as_millis() as u64,
                device: &device,
            },
        )
        .await?;
    if verdict.challenge_status != "passed" {
        return Err(AgentError::ChallengeFailed(format!(
            "the market answered {:?}: {}",
            verdict.challenge_status,
            serde_json::Value::Object(verdict.rest)
        )));
    }
    state.update(|s| s.challenge_passed = true)?;
    let timing = verdict.rest.get("challenge_timing").and_then(|v| v.as_str()).unwrap_or("unknown");
    let measured = verdict.rest.get("challenge_ms").and_then(serde_json::Value::as_i64);
    if timing == "fits" {
        tracing::info!(node_id = %reg.id, timing, measured_ms = ?measured, "challenge passed");
    } else {
        // Right but slow: the node trades within the probation caps and never leaves probation.
        tracing::warn!(node_id = %reg.id, timing, measured_ms = ?measured, bound_ms = ch.bound_ms, class = %ch.class,
            "challenge passed but not within the class's time bound: the node stays on probation");
    }
    Ok(reg.id)
}

/// One round of the pricing loop for one market: read the book if the policy needs it, decide,
/// and place / amend the ask. A vanished ask (404) is forgotten and placed again next round.
pub async fn price_once(
    api: &ApiClient,
    node: Uuid,
    market: &str,
    policy: &Policy,
    state: &SharedState,
    pending_keys: &mut HashMap<String, String>,
) -> Result<Action, AgentError> {
    let own = state.read(|s| {
        s.asks.get(market).map(|a| OwnAsk {
            price: a.price,
            qty: a.qty,
        })
    });
    let best_ask = match policy {
        Policy::Fixed { .. } => None,
        Policy::Follow { .. } => api.book_top(market).await?.asks.first().map(|l| l.price),
    };
    let action = pricing::decide(pricing::target(policy, best_ask, own), own);
    match action {
        Action::Keep => {}
        Action::Place { price, qty } => {
            // The same key across retries of one placement, so a lost response never places two.
            let key = pending_keys
                .entry(market.to_owned())
                .or_insert_with(|| format!("ask-{node}-{market}-{}", Uuid::new_v4()))
                .clone();
            let created = api.place_ask(node, market, price, qty, &key).await?;
            pending_keys.remove(market);
            tracing::info!(market, ask_id = %created.id, price, qty, "ask placed");
            state.update(|s| {
                s.asks.insert(
                    market.to_owned(),
                    AskState {
                        id: created.id,
                        price,
                        qty,
                    },
                )
            })?;
        }
        Action::Amend { price, qty } => {
            let Some(id) = state.read(|s| s.asks.get(market).map(|a| a.id.clone())) else {
                return Ok(Action::Keep);
            };
            match api.amend_ask(&id, price, qty).await {
                Ok(_) => {
                    tracing::info!(market, ask_id = %id, ?price, ?qty, "ask amended");
                    state.update(|s| {
                        if let Some(a) = s.asks.get_mut(market) {
                            a.price = price.unwrap_or(a.price);
                            a.qty = qty.unwrap_or(a.qty);
                        }
                    })?;
                }
                Err(e) if e.ask_gone() => {
                    tracing::info!(market, ask_id = %id, error = %e, "ask gone (filled or expired); placing a new one next round");
                    state.update(|s| s.asks.remove(market))?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(action)
}

/// Keeps one ask per configured market until `shutdown`, then cancels them (DELETE).
pub async fn pricing_loop(
    api: ApiClient,
    node: Uuid,
    markets: Vec<(String, Policy)>,
    state: Arc<SharedState>,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let mut pending = HashMap::new();
    let mut tick = tokio::time::interval(poll.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut shutdown) => break,
        }
        for (market, policy) in &markets {
            if let Err(e) = price_once(&api, node, market, policy, &state, &mut pending).await {
                tracing::warn!(market = %market, error = %e, "pricing round failed; retrying next round");
            }
        }
    }
    cancel_asks(&api, &state).await;
    Ok(())
}

/// Cancels every ask in the state (best effort: failures are logged, the ask stays recorded).
pub async fn cancel_asks(api: &ApiClient, state: &SharedState) {
    let asks: Vec<(String, String)> = state.read(|s| {
        s.asks
            .iter()
            .map(|(m, a)| (m.clone(), a.id.clone()))
            .collect()
    });
    for (market, id) in asks {
        match api.cancel_ask(&id).await {
            Ok(_) => tracing::info!(market = %market, ask_id = %id, "ask cancelled"),
            Err(e) if e.ask_gone() => {
                tracing::info!(market = %market, ask_id = %id, "ask already gone")
            }
            Err(e) => {
                tracing::warn!(market = %market, ask_id = %id, error = %e, "could not cancel ask");
                continue;
            }
        }
        if let Err(e) = state.update(|s| s.asks.remove(&market)) {
            tracing::warn!(error = %e, "could not save the state file");
        }
    }
}

/// The whole agent: bootstrap (when an API is configured), then the node and pricing loops
/// until `shutdown` turns true (SIGINT/SIGTERM in the binary).
pub async fn run(
    settings: AgentSettings,
    api_key: Option<String>,
    workloads: Arc<Workloads>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    settings.validate().map_err(AgentError::Config)?;
    let state = SharedState::load(&settings.state_file)?;
    let url = settings
        .api_url
        .as_deref()
        .ok_or_else(|| AgentError::Config("api_url (--api) is required".into()))?;
    let key = api_key.filter(|k| !k.trim().is_empty()).ok_or_else(|| {
        AgentError::Config("an API key is required: --key-file FILE or GRIDBOOK_API_KEY".into())
    })?;
    let api = ApiClient::new(url, &key)?;
    let node_id = bootstrap(&api, &settings, &state, &workloads).await?;
    let credentials = node::Credentials::new(api.clone(), node_id);
    let pricing = Some(api).map(|api| {
        let markets: Vec<(String, Policy)> = settings
            .markets
            .iter()
            .map(|(m, p)| (m.clone(), *p))
            .collect();
        tokio::spawn(pricing_loop(
            api,
            node_id,
            markets,
            state.clone(),
            Duration::from_secs(settings.pricing_poll_secs),
            shutdown.clone(),
        ))
    });
    let node = node::run_node(&settings, node_id, credentials, workloads, state, shutdown).await;
    if let Some(p) = pricing {
        if node.is_err() {
            // The node cannot go on (e.g. it was deleted): its asks are the market's to close.
            p.abort();
        } else {
            match p.await {
                Ok(r) => r?,
                Err(e) => tracing::error!(error = %e, "pricing task panicked"),
            }
        }
    }
    node
}

/// Resolves once the shutdown flag is true (or its sender is gone). Holds no guard across awaits.
pub async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}
