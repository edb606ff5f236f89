//! The node's NATS side. The node is a stranger to the market: it connects with the NATS
//! credential the API issued it (`POST /v1/nodes/{id}/credentials`, renewed before it expires,
//! presented again on every reconnect through the client's auth callback), and the server lets
//! it do only what `gridbook_wire::access::node` says: its own results and heartbeats, its own
//! assignment consumer, replies below `node.<id>.inbox`. It never touches an object store: an
//! assignment's input and output travel over HTTP with a grant for that assignment alone.
//!
//! * Heartbeats: [`HeartbeatMsg`] on `node.<id>.heartbeat` every `heartbeat_secs` (core NATS).
//! * Assignments: the durable pull consumer `node-<id>` on `GRIDBOOK_ASSIGNMENTS` that the API
//!   created (filter `node.<id>.assign`, explicit ack). One message is fetched only when a run
//!   slot is free (`max_concurrent`), so nothing waits un-acked in a local queue. Per message:
//!   undecodable / for another node → logged and acked; already finished (state file's bounded
//!   done-set) → acked, not run again; already running (a redelivery) → "in progress" and
//!   ignored (the running copy acks it). A running assignment sends "in progress" every third of
//!   the consumer's ack wait so JetStream does not redeliver it meanwhile.
//! * Running: a grant for the assignment (`POST /v1/assignments/{id}/grant`) → its input lines
//!   (`GET …/input`: only the assignment's items) → the market's workload (local-mode code
//!   path) → the output JSONL uploaded (`PUT …/output`) → [`ResultMsg`] on `node.<id>.result`
//!   with `Nats-Msg-Id: result.<assignment_id>`, publish ack awaited, THEN the assignment is
//!   acked and recorded as done. A run that fails reports `Outcome::Failed`. A result that
//!   cannot be published is not acked: the assignment is NAK'ed and retried (JetStream's
//!   duplicate window drops a second identical result).
//! * Cancellation: core NATS subscription on `node.<id>.cancel`; a running assignment's
//!   [`RunControl`] is cancelled (ONNX Runtime's terminate flag aborts the model call in
//!   progress), nothing is reported, the assignment is acked. A cancel that arrives before its
//!   assignment is remembered (bounded) and the assignment is acked unrun.
//! * Shutdown (the watch turns true): no new fetches; running assignments get `grace_secs` to
//!   finish and report; then they are stopped and NAK'ed so JetStream redelivers them (to this
//!   node after its restart) — nothing is reported for them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, AckKind, Context};
use futures::StreamExt;
use gridbook_wire::node::{AssignmentMsg, CancelMsg, HeartbeatMsg, ModelRef, Outcome, ResultMsg};
use gridbook_wire::{consumers, headers, streams, subjects};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::api::{ApiClient, ModelKey, NodeCredential};
use super::config::AgentSettings;
use super::workloads::{ProgressLog, Workloads, select_items};
use super::{AgentError, SharedState, stopped};
use crate::error::ExecutorError;
use crate::runtime::RunControl;

/// Cancels remembered for assignments that have not arrived (yet).
pub const EARLY_CANCELS: usize = 1_024;

/// The durable consumer name of a node.
pub fn consumer_name(node: Uuid) -> String {
    consumers::node(&node.to_string())
}

/// The node's NATS credential, renewed through the API when less than a fifth of its life (or
/// under a minute) is left. Shared by the NATS auth callback and the data grants.
pub struct Credentials {
    api: ApiClient,
    node: Uuid,
    current: tokio::sync::Mutex<Option<(NodeCredential, chrono::DateTime<chrono::Utc>)>>,
    /// Set when the API refuses the node a credential because it was deleted or suspended: the
    /// agent then stops instead of reconnecting forever.
    retired: Mutex<Option<String>>,
}

impl Credentials {
    pub fn new(api: ApiClient, node: Uuid) -> Arc<Credentials> {
        Arc::new(Credentials {
            api,
            node,
            current: tokio::sync::Mutex::new(None),
            retired: Mutex::new(None),
        })
    }

    /// Forget the cached credential (the server refused it): the next [`Credentials::get`]
    /// asks the API.
    pub fn invalidate(&self) {
        if let Ok(mut cur) = self.current.try_lock() {
            *cur = None;
        }
    }

    /// Why the node may not run any more (deleted or suspended), once the API said so.
    pub fn retired(&self) -> Option<String> {
        lock(&self.retired).clone()
    }

    /// A credential valid for a while yet.
    pub async fn get(&self) -> Result<NodeCredential, AgentError> {
        if let Some(why) = self.retired() {
            return Err(AgentError::Config(why));
        }
        let mut cur = self.current.lock().await;
        let now = chrono::Utc::now();
        if let Some((c, issued)) = cur.as_ref() {
            let life = c.expires_at - *issued;
            let left = c.expires_at - now;
            if left > life / 5 && left > chrono::Duration::seconds(60) {
                return Ok(c.clone());
            }
        }
        let c = match self.api.node_credential(self.node).await {
            Ok(c) => c,
            Err(e @ super::api::ApiError::Status { status: 409, .. }) => {
                let why = format!("node {} may not connect any more: {e}", self.node);
                tracing::error!(node_id = %self.node, error = %e, "the market retired this node; stopping");
                *lock(&self.retired) = Some(why.clone());
                return Err(AgentError::Config(why));
            }
            Err(e) => return Err(e.into()),
        };
        tracing::info!(node_id = %self.node, expires_at = %c.expires_at, "NATS credential issued");
        *cur = Some((c.clone(), now));
        Ok(c)
    }

    pub fn api(&self) -> &ApiClient {
        &self.api
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Running {
    control: Arc<RunControl>,
    /// Stopped because the agent shuts down (→ NAK) rather than by a cancel (→ ack).
    by_shutdown: AtomicBool,
}

struct Ctx {
    node: Uuid,
    js: Context,
    credentials: Arc<Credentials>,
    workloads: Arc<Workloads>,
    state: Arc<SharedState>,
    running: Mutex<HashMap<Uuid, Arc<Running>>>,
    early_cancels: Mutex<VecDeque<Uuid>>,
    done_capacity: usize,
    ack_wait: Duration,
    max_input_bytes: u64,
    max_model_bytes: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the node until `shutdown` turns true: heartbeats, cancellations and assignments.
pub async fn run_node(
    settings: &AgentSettings,
    node: Uuid,
    credentials: Arc<Credentials>,
    workloads: Arc<Workloads>,
    state: Arc<SharedState>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    settings.validate().map_err(AgentError::Config)?;
    state.update(|s| s.node_id = Some(node))?;
    credentials.get().await?;
    let auth = credentials.clone();
    let refused = credentials.clone();
    let client = async_nats::ConnectOptions::with_auth_callback(move |_nonce| {
        let auth = auth.clone();
        async move {
            let c = auth.get().await.map_err(async_nats::AuthError::new)?;
            let mut a = async_nats::Auth::new();
            a.token = Some(c.token);
            Ok(a)
        }
    })
    .event_callback(move |event| {
        let refused = refused.clone();
        async move {
            // Disconnected (a grant expired, a kick) or refused: the next attempt asks the API,
            // which also says when the node was deleted or suspended.
            match &event {
                async_nats::Event::Disconnected => refused.invalidate(),
                async_nats::Event::ServerError(e) if e.to_string().to_lowercase().contains("authoriz") => {
                    tracing::warn!(error = %e, "NATS refused the node's credential; asking the API again");
                    refused.invalidate();
                }
                _ => {}
            }
        }
    })
    .name(format!("node-{node}"))
    .custom_inbox_prefix(subjects::node_inbox_prefix(&node.to_string()))
    .connect(gridbook_wire::connect::servers(&settings.nats_url).map_err(AgentError::Config)?)
    .await
    .map_err(|e| AgentError::Nats(format!("connect {}: {e}", settings.nats_url)))?;
    let js = jetstream::new(client.clone());
    // The API created this consumer with the node's credential; a node cannot create one.
    let consumer: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(consumer_name(node), streams::ASSIGNMENTS)
        .await
        .map_err(|e| AgentError::Nats(format!("the node's assignment consumer: {e}")))?;
    let ack_wait = consumer.cached_info().config.ack_wait;
    let mut cancels = client
        .subscribe(subjects::node_cancel(&node.to_string()))
        .await
        .map_err(AgentError::nats)?;
    let ctx = Arc::new(Ctx {
        node,
        js,
        credentials,
        workloads: workloads.clone(),
        state,
        running: Mutex::new(HashMap::new()),
        early_cancels: Mutex::new(VecDeque::new()),
        done_capacity: settings.done_capacity,
        ack_wait,
        max_input_bytes: settings.max_input_bytes,
        max_model_bytes: settings.max_model_bytes,
    });
    tracing::info!(node_id = %node, device = %workloads.device, max_concurrent = settings.max_concurrent, "node online");

    // Heartbeats.
    let hb = {
        let ctx = ctx.clone();
        let client = client.clone();
        let every = settings.heartbeat();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped(&mut shutdown) => break,
                }
                let msg = HeartbeatMsg {
                    time_ms: now_ms(),
                    running: lock(&ctx.running).keys().copied().collect(),
                    device: ctx.workloads.device.clone(),
                    version: env!("CARGO_PKG_VERSION").into(),
                };
                let body = serde_json::to_vec(&msg).unwrap_or_default();
                if let Err(e) = client
                    .publish(subjects::node_heartbeat(&ctx.node.to_string()), body.into())
                    .await
                {
                    tracing::warn!(error = %e, "heartbeat not sent");
                }
            }
        })
    };

    // Cancellations.
    let cancel_task = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            while let Some(m) = cancels.next().await {
                let msg: CancelMsg = match serde_json::from_slice(&m.payload) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "undecodable cancel message ignored");
                        continue;
                    }
                };
                for id in msg.assignment_ids {
                    let running = lock(&ctx.running).get(&id).cloned();
                    match running {
                        Some(r) => {
                            tracing::info!(assignment_id = %id, reason = %msg.reason, "cancelling running assignment");
                            r.control.cancel();
                        }
                        None => {
                            tracing::info!(assignment_id = %id, reason = %msg.reason, "cancel for an assignment not running; remembered");
                            let mut early = lock(&ctx.early_cancels);
                            if !early.contains(&id) {
                                early.push_back(id);
                                while early.len() > EARLY_CANCELS {
                                    early.pop_front();
                                }
                            }
                        }
                    }
                }
            }
        })
    };

    // Assignments: fetch one message per free slot.
    let slots = Arc::new(Semaphore::new(settings.max_concurrent));
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut retired = None;
    'fetch: loop {
        while tasks.try_join_next().is_some() {}
        if let Some(why) = ctx.credentials.retired() {
            retired = Some(why);
            break 'fetch;
        }
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.map_err(AgentError::nats)?,
            _ = stopped(&mut shutdown) => break 'fetch,
        };
        let batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(2))
            .messages();
        let mut batch = tokio::select! {
            b = batch => match b {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "fetching assignments failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break 'fetch,
        };
        let mut permit = Some(permit);
        loop {
            let next = tokio::select! {
                n = batch.next() => n,
                _ = stopped(&mut shutdown) => break 'fetch,
            };
            match next {
                None => break,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "assignment fetch error");
                    break;
                }
                Some(Ok(msg)) => {
                    if let Some(p) = permit.take() {
                        if let Some(fut) = dispatch(&ctx, msg).await {
                            tasks.spawn(async move {
                                fut.await;
                                drop(p);
                            });
                        }
                    } else {
                        // Not expected (batch of one); leave it for redelivery.
                        let _ = msg.ack_with(AckKind::Nak(None)).await;
                    }
                }
            }
        }
    }

    // Shutdown: let running assignments finish within the grace period, then stop them.
    let grace = Duration::from_secs(settings.grace_secs);
    let n = lock(&ctx.running).len();
    if n > 0 {
        tracing::info!(
            running = n,
            grace_secs = settings.grace_secs,
            "shutting down: waiting for running assignments"
        );
    }
    let deadline = tokio::time::Instant::now() + grace;
    while !tasks.is_empty() {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(_) => {}
            Err(_) => {
                for (id, r) in lock(&ctx.running).iter() {
                    tracing::warn!(assignment_id = %id, "grace period over: stopping; it will be redelivered");
                    r.by_shutdown.store(true, Ordering::SeqCst);
                    r.control.cancel();
                }
                while tasks.join_next().await.is_some() {}
            }
        }
    }
    cancel_task.abort();
    if retired.is_some() {
        hb.abort();
    } else {
        let _ = hb.await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    tracing::info!(node_id = %node, "node stopped");
    match retired {
        Some(why) => Err(AgentError::Config(why)),
        None => Ok(()),
    }
}

/// Decides what to do with one assignment message; returns the run to spawn, if any.
async fn dispatch(
    ctx: &Arc<Ctx>,
    msg: jetstream::Message,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let a: AssignmentMsg = match serde_json::from_slice(&msg.payload) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(subject = %msg.subject, error = %e, "undecodable assignment acked without effect");
            ack(&msg, AckKind::Ack).await;
            return None;
        }
    };
    let id = a.assignment_id;
    if a.node_id != ctx.node {
        tracing::warn!(assignment_id = %id, for_node = %a.node_id, "assignment for another node acked without effect");
        ack(&msg, AckKind::Ack).await;
        return None;
    }
    if ctx.state.read(|s| s.is_done(&id)) {
        tracing::info!(assignment_id = %id, "redelivered assignment already finished: acked, not run again");
        ack(&msg, AckKind::Ack).await;
        return None;
    }
    if lock(&ctx.running).contains_key(&id) {
        tracing::info!(assignment_id = %id, "redelivered assignment is running: ignored");
        ack(&msg, AckKind::Progress).await;
        return None;
    }
    let early = {
        let mut e = lock(&ctx.early_cancels);
        e.iter().position(|x| *x == id).map(|i| e.remove(i))
    };
    if early.is_some() {
        tracing::info!(assignment_id = %id, "assignment cancelled before it arrived: acked, not run");
        finish_done(ctx, id);
        ack(&msg, AckKind::Ack).await;
        return None;
    }
    let control = match RunControl::new() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot create run options; leaving the assignment for redelivery");
            ack(&msg, AckKind::Nak(Some(Duration::from_secs(5)))).await;
            return None;
        }
    };
    let running = Arc::new(Running {
        control,
        by_shutdown: AtomicBool::new(false),
    });
    lock(&ctx.running).insert(id, running.clone());
    reduce_ask(ctx, &a);
    let ctx = ctx.clone();
    Some(async move {
        let msg = Arc::new(msg);
        // Keep JetStream from redelivering while the run takes longer than the ack wait.
        let keepalive = {
            let msg = msg.clone();
            let every = (ctx.ack_wait / 3).max(Duration::from_secs(1));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let _ = msg.ack_with(AckKind::Progress).await;
                }
            })
        };
        let end = execute(&ctx, &a, &running).await;
        keepalive.abort();
        match end {
            End::Report(result) => match publish_result(&ctx, &result).await {
                Ok(()) => {
                    finish_done(&ctx, id);
                    ack(&msg, AckKind::Ack).await;
                    match &result.outcome {
                        Outcome::Completed {
                            output_sha256,
                            merkle_root,
                            items_ok,
                            items_failed,
                        } => {
                            tracing::info!(assignment_id = %id, items_ok, items_failed, %output_sha256, %merkle_root, elapsed_ms = result.elapsed_ms, "assignment completed")
                        }
                        Outcome::Failed { reason } => {
                            tracing::warn!(assignment_id = %id, %reason, "assignment failed; reported")
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(assignment_id = %id, error = %e, "result not published; the assignment will be redelivered");
                    ack(&msg, AckKind::Nak(Some(Duration::from_secs(5)))).await;
                }
            },
            End::Nothing(why) => {
                tracing::info!(assignment_id = %id, why, "assignment acked without a result");
                finish_done(&ctx, id);
                ack(&msg, AckKind::Ack).await;
            }
            End::Shutdown => {
                ack(&msg, AckKind::Nak(None)).await;
            }
        }
        lock(&ctx.running).remove(&id);
    })
}

/// An assignment filled `qty` of the node's ask: lower the recorded ask so the pricing loop
/// tops it up again (or places a new one once it is used up).
fn reduce_ask(ctx: &Ctx, a: &AssignmentMsg) {
    let r = ctx.state.update(|s| {
        if let Some(ask) = s.asks.get_mut(&a.market) {
            ask.qty = ask.qty.saturating_sub(a.qty);
            if ask.qty == 0 {
                s.asks.remove(&a.market);
            }
        }
    });
    if let Err(e) = r {
        tracing::warn!(error = %e, "could not save the state file");
    }
}

fn finish_done(ctx: &Ctx, id: Uuid) {
    if let Err(e) = ctx.state.update(|s| s.mark_done(id, ctx.done_capacity)) {
        tracing::warn!(error = %e, "could not save the state file");
    }
}

async fn ack(msg: &jetstream::Message, kind: AckKind) {
    if let Err(e) = msg.ack_with(kind).await {
        tracing::warn!(error = %e, ?kind, "ack failed");
    }
}

enum End {
    Report(ResultMsg),
    Nothing(&'static str),
    Shutdown,
}

async fn execute(ctx: &Arc<Ctx>, a: &AssignmentMsg, running: &Arc<Running>) -> End {
    let started = Instant::now();
    let Some(job_id) = a.job_id else {
        return End::Nothing("the bid belongs to no job: nothing to run or report");
    };
    let manifest = || {
        ctx.workloads
            .manifest(&a.market)
            .and_then(|m| serde_json::to_value(m).ok())
            .unwrap_or(serde_json::Value::Null)
    };
    let report = |outcome: Outcome, manifest: serde_json::Value| {
        End::Report(ResultMsg {
            assignment_id: a.assignment_id,
            job_id,
            outcome,
            manifest,
            elapsed_ms: started.elapsed().as_millis() as u64,
        })
    };
    let failed = |reason: String| report(Outcome::Failed { reason }, manifest());
    let Some(work) = &a.work else {
        return End::Nothing("the assignment carries no work: nothing to run or report");
    };
    if !ctx.workloads.serves(&a.market) {
        return failed(format!("this node does not serve market {}", a.market));
    }
    if work.deadline_ms != 0 && now_ms() > work.deadline_ms {
        return End::Nothing("deadline passed before the run started (the market voids it)");
    }
    tracing::info!(assignment_id = %a.assignment_id, market = %a.market, job_id = %job_id,
        items = work.item_count, item_start = work.item_start,
        model = ?work.model.as_ref().map(|m| m.id), "assignment started");
    if let Some(m) = &work.model
        && let Err(e) = ensure_private_model(ctx, a, m).await
    {
        return failed(e);
    }
    let input = match with_retries("input", a.assignment_id, work.deadline_ms, &|| running.control.is_cancelled(), || fetch_input(ctx, a.assignment_id, ctx.max_input_bytes)).await {
        Ok(b) => b,
        Err(e) => return failed(e),
    };
    // The API sent the assignment's lines in order: its items with the market's canaries among
    // them (at least the items; every line is run and answered under its served id).
    let served = gridbook_wire::catalog::items(&input).count() as u64;
    if served < work.item_count {
        return failed(format!("the input has {served} lines; the assignment has {} items", work.item_count));
    }
    let items = match select_items(&input, 0, served) {
        Ok(i) => i,
        Err(e) => return failed(e),
    };
    drop(input);
    let progress = Arc::new(ProgressLog::new(
        a.assignment_id,
        served,
        Duration::from_secs(5),
    ));
    // The output is spooled to a file chunk by chunk and uploaded from it, streamed: the node
    // holds one chunk of the run, not the assignment's whole output.
    let spool = match Spool::create(a.assignment_id) {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    let run = {
        let workloads = ctx.workloads.clone();
        let control = running.control.clone();
        let market = a.market.clone();
        let progress = progress.clone();
        // Error lines are numbered in the served input (its positions, canaries included).
        let offset = 0;
        let model = work.model.as_ref().map(|m| m.sha256.clone());
        let path = spool.path().to_path_buf();
        let assignment_id = a.assignment_id;
        tokio::task::spawn_blocking(move || {
            let on_error = |e: &crate::local::LineError| {
                tracing::info!(assignment_id = %assignment_id, line = e.line, custom_id = ?e.custom_id, field = ?e.field, message = %e.message, "item failed");
            };
            workloads.run_to_file(&market, model.as_deref(), &items, offset, &path, &on_error, &|n| progress.add(n), &control)
        })
        .await
    };
    let (run, run_manifest) = match run {
        Ok(Ok(r)) => r,
        Ok(Err(ExecutorError::Cancelled)) => {
            return if running.by_shutdown.load(Ordering::SeqCst) {
                End::Shutdown
            } else {
                End::Nothing("cancelled by the market")
            };
        }
        Ok(Err(e)) => return failed(e.to_string()),
        Err(e) => return failed(format!("the run panicked: {e}")),
    };
    if running.control.is_cancelled() {
        // Cancelled after the last model call: still report nothing.
        return if running.by_shutdown.load(Ordering::SeqCst) {
            End::Shutdown
        } else {
            End::Nothing("cancelled by the market")
        };
    }
    let items_ok = run.succeeded as u64;
    let manifest = serde_json::to_value(&run_manifest).unwrap_or(serde_json::Value::Null);
    match with_retries("output", a.assignment_id, work.deadline_ms, &|| running.control.is_cancelled(), || deliver(ctx, a.assignment_id, spool.path(), &run.output_sha256)).await {
        Ok(sha) => report(
            Outcome::Completed {
                output_sha256: sha,
                merkle_root: run.merkle_root,
                items_ok,
                items_failed: served.saturating_sub(items_ok),
            },
            manifest,
        ),
        // The work is done but cannot be delivered: fail it (the market re-offers the units).
        Err(e) => failed(e),
    }
}

/// An assignment's spooled output file, removed when the assignment's run is over.
///
/// Created exclusively (`O_EXCL`, mode 0600) under a name with a random part: assignment ids
/// are derived from the market and the fill's sequence number, so two agents on one machine
/// (two deployments, or the tests' several stacks in one process) can run assignments with the
/// same id, and a fixed `gridbook-output-{id}.jsonl` let one run truncate the other's output
/// while it was being uploaded (stop 25's CI failure: the market stored a different sha256 than
/// the node hashed). An unpredictable name also leaves no path in the shared temp folder for
/// another local user to plant a link at.
struct Spool(tempfile::TempPath);

impl Spool {
    fn create(assignment: Uuid) -> Result<Self, String> {
        tempfile::Builder::new()
            .prefix(&format!("gridbook-output-{assignment}-"))
            .suffix(".jsonl")
            .tempfile()
            .map(|f| Spool(f.into_temp_path()))
            .map_err(|e| format!("creating the output spool file in {}: {e}", std::env::temp_dir().display()))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

/// Makes sure the assignment's private model is loaded: unless it is kept already, fetches the
/// sealed model and its key through a grant for this assignment, opens it in memory (never on
/// disk), checks its sha256 against the one the job pinned and loads it.
async fn ensure_private_model(ctx: &Arc<Ctx>, a: &AssignmentMsg, m: &ModelRef) -> Result<(), String> {
    if ctx.workloads.has_private(&a.market, &m.sha256) {
        return Ok(());
    }
    let api = ctx.credentials.api();
    let credential = ctx.credentials.get().await.map_err(|e| e.to_string())?;
    let grant = api.grant(&credential, a.assignment_id).await.map_err(|e| e.to_string())?;
    match &grant.model {
        Some(g) if g.id == m.id && g.sha256 == m.sha256 => {}
        other => {
            return Err(format!(
                "the grant names model {:?}, the assignment {} ({})",
                other.as_ref().map(|g| (g.id, &g.sha256)),
                m.id,
                m.sha256
            ));
        }
    }
    let sealed = api.model(&grant, ctx.max_model_bytes).await.map_err(|e| e.to_string())?;
    let key = api.model_key(&grant).await.map_err(|e| e.to_string())?;
    let (workloads, market, m) = (ctx.workloads.clone(), a.market.clone(), m.clone());
    tokio::task::spawn_blocking(move || {
        let plain = open_model(sealed, &key, &m)?;
        workloads
            .load_private(&market, &m.sha256, plain)
            .map_err(|e| format!("private model {}: {e}", m.id))
    })
    .await
    .map_err(|e| format!("loading the private model panicked: {e}"))?
}

/// Decrypts a sealed private model with the key the market released (in place, in memory).
fn open_model(mut sealed: Vec<u8>, key: &ModelKey, m: &ModelRef) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    if key.algorithm != gridbook_sealed::ALGORITHM {
        return Err(format!("unknown model sealing {:?}", key.algorithm));
    }
    if key.model_id != m.id || key.sha256 != m.sha256 {
        return Err(format!("the key released is for model {}, not {}", key.model_id, m.id));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let k = b64.decode(&key.key_b64).map_err(|e| format!("model key: {e}"))?;
    let nonce = b64.decode(&key.nonce_b64).map_err(|e| format!("model nonce: {e}"))?;
    let k = gridbook_sealed::DataKey::from_slice(&k).map_err(|e| e.to_string())?;
    gridbook_sealed::open(&k, &nonce, &mut sealed, &gridbook_sealed::model_aad(m.id.as_bytes(), &m.sha256))
        .map_err(|e| format!("private model {}: {e}", m.id))?;
    Ok(sealed)
}

/// Tries of one data transfer (input, output) before the assignment is reported failed.
const TRANSFER_TRIES: u32 = 5;
/// The wait before the second try; it doubles with each further one (1, 2, 4, 8 s).
const TRANSFER_FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// A failed try of a transfer: whether another try may succeed, and what went wrong.
struct TryError {
    transient: bool,
    message: String,
}

impl From<super::api::ApiError> for TryError {
    fn from(e: super::api::ApiError) -> Self {
        TryError { transient: e.is_transient(), message: e.to_string() }
    }
}

impl From<AgentError> for TryError {
    fn from(e: AgentError) -> Self {
        // Getting a credential fails for a moment when the API does; a retired node's does not.
        let transient = match &e {
            AgentError::Api(api) => api.is_transient(),
            AgentError::Nats(_) => true,
            AgentError::Executor(_) | AgentError::Config(_) | AgentError::ChallengeFailed(_) => false,
        };
        TryError { transient, message: e.to_string() }
    }
}

/// Runs `attempt` until it succeeds, fails for good, or [`TRANSFER_TRIES`] tries failed for a
/// moment (the market restarting, a busy store, a dropped connection): a node that did the
/// work does not lose it, and the units are not re-offered, for a blip. Stops trying once the
/// assignment's deadline passed or it was cancelled. Each try takes a fresh grant.
async fn with_retries<T, F, Fut>(
    what: &str,
    assignment_id: Uuid,
    deadline_ms: u64,
    cancelled: &(dyn Fn() -> bool + Sync),
    mut attempt: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, TryError>>,
{
    let mut backoff = TRANSFER_FIRST_BACKOFF;
    for try_no in 1..=TRANSFER_TRIES {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let past_deadline = deadline_ms != 0 && now_ms() + backoff.as_millis() as u64 > deadline_ms;
                if !e.transient || try_no == TRANSFER_TRIES || past_deadline || cancelled() {
                    return Err(if try_no > 1 { format!("{} (after {try_no} tries)", e.message) } else { e.message });
                }
                tracing::warn!(%assignment_id, what, try_no, retry_in_ms = backoff.as_millis() as u64,
                    error = %e.message, "transfer failed for a moment; trying again");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
    }
    unreachable!("the last try returns")
}

/// The assignment's input lines, through a grant for it.
async fn fetch_input(ctx: &Ctx, assignment: Uuid, max: u64) -> Result<Vec<u8>, TryError> {
    let api = ctx.credentials.api();
    let credential = ctx.credentials.get().await?;
    let grant = api.grant(&credential, assignment).await?;
    Ok(api.input(&grant, max).await?)
}

/// Uploads the output file (streamed) through a grant for the assignment; returns its sha256
/// (`sha`, hashed as it was written), checked against the name the market stored it under.
async fn deliver(ctx: &Ctx, assignment: Uuid, path: &std::path::Path, sha: &str) -> Result<String, TryError> {
    let api = ctx.credentials.api();
    let credential = ctx.credentials.get().await?;
    let grant = api.grant(&credential, assignment).await?;
    let stored = api.output_file(&grant, path).await?;
    if stored.sha256 != sha {
        return Err(TryError {
            transient: false,
            message: format!("the market stored the output as {}, its sha256 is {sha}", stored.sha256),
        });
    }
    Ok(sha.to_owned())
}

async fn publish_result(ctx: &Ctx, result: &ResultMsg) -> Result<(), AgentError> {
    let mut h = async_nats::HeaderMap::new();
    h.insert(
        headers::MSG_ID,
        format!("result.{}", result.assignment_id).as_str(),
    );
    let body = serde_json::to_vec(result).map_err(|e| AgentError::Nats(e.to_string()))?;
    ctx.js
        .publish_with_headers(
            subjects::node_result(&ctx.node.to_string()),
            h,
            body.into(),
        )
        .await
        .map_err(AgentError::nats)?
        .await
        .map_err(AgentError::nats)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn transient(m: &str) -> TryError {
        TryError { transient: true, message: m.into() }
    }

    /// Runs `with_retries` over a script of outcomes (one per try) and returns its result and
    /// how many tries it made. Tokio's clock is paused: the back-off sleeps advance it at once.
    async fn run(script: Vec<Result<u32, TryError>>, deadline_ms: u64, cancelled: bool) -> (Result<u32, String>, u32) {
        let tries = AtomicU32::new(0);
        let script = Mutex::new(VecDeque::from(script));
        let r = with_retries("output", Uuid::nil(), deadline_ms, &|| cancelled, || {
            tries.fetch_add(1, Ordering::SeqCst);
            let next = script.lock().unwrap().pop_front().expect("a try beyond the script");
            async move { next }
        })
        .await;
        (r, tries.load(Ordering::SeqCst))
    }

    /// Two runs of one assignment id (two agents on one machine: ids repeat across
    /// deployments) spool to two files: writing one never touches the other, and each file is
    /// removed when its run ends. With the old fixed name, the second run's create truncated
    /// the first run's output while it was uploaded.
    #[test]
    fn two_runs_of_the_same_assignment_id_spool_to_separate_private_files() {
        use std::os::unix::fs::PermissionsExt;
        let id = Uuid::from_u128(42);
        let a = Spool::create(id).unwrap();
        std::fs::write(a.path(), b"first node's output\n").unwrap();
        let b = Spool::create(id).unwrap();
        assert_ne!(a.path(), b.path());
        std::fs::write(b.path(), b"second\n").unwrap();
        assert_eq!(std::fs::read(a.path()).unwrap(), b"first node's output\n");
        let mode = std::fs::metadata(a.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the spool is readable by the node's user only");
        let (pa, pb) = (a.path().to_path_buf(), b.path().to_path_buf());
        drop(a);
        assert!(!pa.exists() && pb.exists());
        drop(b);
        assert!(!pb.exists());
    }

    #[tokio::test(start_paused = true)]
    async fn a_transfer_that_fails_for_a_moment_is_tried_again_and_a_final_refusal_is_not() {
        // Two blips, then the upload goes through: the third try's value.
        let (r, n) = run(vec![Err(transient("503 busy")), Err(transient("connection reset")), Ok(7)], 0, false).await;
        assert_eq!((r, n), (Ok(7), 3));
        // A refusal that judges the request (409 assignment_closed): one try, its message.
        let final_err = TryError { transient: false, message: "409 assignment_closed".into() };
        let (r, n) = run(vec![Err(final_err)], 0, false).await;
        assert_eq!((r, n), (Err("409 assignment_closed".into()), 1));
        // Failing for a moment every time: TRANSFER_TRIES tries, then the last error, counted.
        let script = (0..TRANSFER_TRIES).map(|_| Err(transient("503 busy"))).collect();
        let (r, n) = run(script, 0, false).await;
        assert_eq!(n, TRANSFER_TRIES);
        assert_eq!(r, Err(format!("503 busy (after {TRANSFER_TRIES} tries)")));
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_past_the_deadline_or_after_a_cancel() {
        // The deadline falls before the first back-off ends: the first error stands.
        let (r, n) = run(vec![Err(transient("503 busy"))], now_ms() + 10, false).await;
        assert_eq!((r, n), (Err("503 busy".into()), 1));
        // Cancelled by the market: nothing more is tried.
        let (r, n) = run(vec![Err(transient("503 busy"))], 0, true).await;
        assert_eq!((r, n), (Err("503 busy".into()), 1));
        // A deadline far away leaves room for the retries.
        let (r, n) = run(vec![Err(transient("503 busy")), Ok(1)], now_ms() + 3_600_000, false).await;
        assert_eq!((r, n), (Ok(1), 2));
    }
}
