//! The NATS edge of job results: the verifier consumer on `job.*.result` (stream
//! `GRIDBOOK_RESULTS`) and the finisher that voids overdue assignments and assembles finished
//! jobs' output and error files.
//!
//! Per result, in order: decode → the assignment must be `assigned` to the sending node →
//! verify ([`crate::verify`]: completeness, per-item hashes, Merkle root, sampled re-run) → ONE
//! transaction: the assignment `completed` (escrow posted for the verified units: provider share
//! + protocol fee, the rest back to the studio) or `failed` (escrow voided back to the studio),
//! the job's item counts, the node's reputation → ack. A redelivered result finds the assignment
//! no longer `assigned` and is acked without effect. When the verifier itself cannot run (model
//! or runtime missing) the result is nak'ed and retried: nothing is paid unchecked.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{
    self, AckKind, Context,
    consumer::{PullConsumer, pull},
    object_store::ObjectStore,
};
use diesel::Connection;
use futures::StreamExt;
use gridbook_db::status::{AssignmentStatus, FailedCheck, JobStatus, JobTimeInForce};
use gridbook_ledger::escrow;
use gridbook_wire::node::{CancelMsg, Outcome, ResultMsg};
use gridbook_wire::{catalog, streams, subjects};
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;
use tracing::{debug, error, info, warn};

use crate::Settings;
use crate::db::Db;
use crate::dead_letter::{self, Source};
use crate::decide::DeadLetterReason;
use crate::error::{Result, SettlementError};
use crate::jobs::{self, AssignmentRow, JobWork, NewFile, Resolution};
use crate::{canary, crosscheck};
use crate::redo::{self, RedoPolicy, RerunBy, RerunInfo};
use crate::verify::{self, VerifyError};

/// Durable consumer of `GRIDBOOK_RESULTS`.
pub const VERIFIER_CONSUMER: &str = "verifier";

/// The market's re-run executor with its sample policy, shared by the verifier's tasks.
pub type SharedVerifier = Arc<Mutex<verify::Verifier>>;
/// Largest object (input or output file) the worker reads into memory.
pub const MAX_OBJECT_BYTES: usize = 512 << 20;

/// Creates `GRIDBOOK_RESULTS` and the files bucket when missing.
pub async fn ensure(js: &Context, replicas: usize) -> Result<ObjectStore> {
    streams::ensure_node_streams(js, replicas).await.map_err(SettlementError::Nats)?;
    streams::set_up_files_bucket(js, replicas).await.map_err(SettlementError::Nats)
}

/// The `gridbook_files` object store (`gridbook_wire::streams::ensure_files_bucket`: created
/// when missing).
pub async fn files_bucket(js: &Context, replicas: usize) -> Result<ObjectStore> {
    streams::ensure_files_bucket(js, replicas)
        .await
        .map_err(SettlementError::nats)
}

/// Reads object `name` whole (at most [`MAX_OBJECT_BYTES`]).
pub async fn read_object(store: &ObjectStore, name: &str) -> Result<Vec<u8>> {
    let mut obj = store.get(name).await.map_err(|e| {
        let why = format!("object {name}: {e}");
        if e.kind() == async_nats::jetstream::object_store::GetErrorKind::NotFound {
            SettlementError::ObjectMissing(why)
        } else {
            SettlementError::Nats(why)
        }
    })?;
    let size = obj.info().size;
    if size > MAX_OBJECT_BYTES {
        return Err(SettlementError::Refused(format!(
            "object {name} is {size} bytes, over the limit of {MAX_OBJECT_BYTES}"
        )));
    }
    let mut buf = Vec::with_capacity(size);
    obj.read_to_end(&mut buf)
        .await
        .map_err(|e| SettlementError::Nats(format!("object {name}: {e}")))?;
    Ok(buf)
}

/// Stores `bytes` under their sha256 (hex); returns the name.
pub async fn put_object(store: &ObjectStore, bytes: Vec<u8>) -> Result<String> {
    use sha2::Digest;
    let name = hex::encode(sha2::Sha256::digest(&bytes));
    if store.info(&name).await.is_ok() {
        return Ok(name);
    }
    let mut reader = std::io::Cursor::new(bytes);
    store
        .put(name.as_str(), &mut reader)
        .await
        .map_err(|e| SettlementError::Nats(format!("put {name}: {e}")))?;
    Ok(name)
}

/// Consumes results until the subscription fails (the caller restarts it). Every second it also
/// decides the verification tasks whose node did not answer in time (`crate::crosscheck`).
pub async fn run_verifier(settings: &Settings, js: &Context, finished: &Notify) -> Result<()> {
    let store = ensure(js, settings.nats_replicas).await?;
    let stream = js
        .get_stream(streams::RESULTS)
        .await
        .map_err(SettlementError::nats)?;
    let consumer: PullConsumer = stream
        .get_or_create_consumer(
            VERIFIER_CONSUMER,
            pull::Config {
                durable_name: Some(VERIFIER_CONSUMER.into()),
                filter_subject: subjects::ALL_NODE_RESULTS.into(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(settings.ack_wait_secs.max(30)),
                max_deliver: settings.max_deliver,
                ..Default::default()
            },
        )
        .await
        .map_err(SettlementError::nats)?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(8)
        .messages()
        .await
        .map_err(SettlementError::nats)?;
    let mut db = Db::new(&settings.database_url);
    let mut v = verify::Verifier::with_sd_model_dir(settings.sample_policy()?, settings.sd_model_dir.clone());
    if let Some(f) = &settings.models_kek_file {
        let kek = gridbook_sealed::Kek::load(f).map_err(|e| SettlementError::Refused(e.to_string()))?;
        v.set_models_kek(Arc::new(kek));
    }
    let verifier: SharedVerifier = Arc::new(Mutex::new(v));
    let ctx = ResultCtx { policy: settings.redo_policy(), tasks: settings.task_policy() };
    let nats = js.client();
    let mut expiry = tokio::time::interval(Duration::from_secs(1));
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!(consumer = VERIFIER_CONSUMER, verify_on_nodes = ctx.tasks.enabled, "verifying job results");
    loop {
        let msg = tokio::select! {
            msg = messages.next() => msg,
            _ = expiry.tick() => {
                match expire_tasks(&mut db, &store, &verifier, ctx, &nats).await {
                    Ok(n) if n > 0 => finished.notify_one(),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "deciding late verification tasks failed; retrying"),
                }
                continue;
            }
        };
        let Some(msg) = msg else { break };
        let msg = msg.map_err(SettlementError::nats)?;
        let info = msg.info().ok();
        let source = Source {
            stream: info
                .as_ref()
                .map(|i| i.stream.to_owned())
                .unwrap_or_else(|| streams::RESULTS.to_owned()),
            subject: msg.subject.to_string(),
            stream_seq: info.as_ref().map(|i| i.stream_sequence),
        };
        match handle_result(&mut db, &store, &verifier, ctx, &source, &msg.payload).await {
            Ok(done) => {
                if done {
                    finished.notify_one();
                }
                msg.ack().await.map_err(SettlementError::nats)?;
            }
            Err(e) => {
                warn!(subject = %msg.subject, error = %e, "result not settled yet; retrying later");
                msg.ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await
                    .map_err(SettlementError::nats)?;
            }
        }
    }
    Err(SettlementError::Nats("result subscription ended".into()))
}

/// What the verifier applies to every result: the redo policy of failed units and where
/// samples are re-run.
#[derive(Clone, Copy, Debug)]
pub struct ResultCtx {
    pub policy: RedoPolicy,
    pub tasks: crosscheck::TaskPolicy,
}

/// The assignment's resolution and its verification record from a verdict (pure).
fn resolution_of(
    a: &AssignmentRow,
    verdict: std::result::Result<verify::Verified, verify::Failure>,
    out: (&str, &str),
    node_manifest: &serde_json::Value,
    rerun: RerunInfo,
) -> (Resolution, redo::Record) {
    let (output_sha256, merkle_root) = (Some(out.0.to_owned()), Some(out.1.to_owned()));
    match verdict {
        Ok(v) => {
            let detail = format!(
                "verified: {} of {} items; sample seed {}, re-ran {:?} ({})",
                v.ok,
                a.item_count,
                v.seed,
                v.sampled,
                match rerun.by {
                    RerunBy::Node => "on another provider's node",
                    _ => "on the market's runtime",
                }
            );
            let res = Resolution {
                completed: true,
                items_ok: v.ok,
                items_failed: a.item_count - v.ok.min(a.item_count),
                output_sha256: output_sha256.clone(),
                merkle_root: merkle_root.clone(),
                manifest: Some(node_manifest.clone()),
                detail: detail.clone(),
            };
            let rec = redo::Record {
                failed_check: None,
                detail,
                evidence: verify::Evidence {
                    seed: Some(v.seed),
                    sampled: v.sampled,
                    items: v.items,
                    reference_manifest: Some(v.reference_manifest),
                    canaries: v.canaries,
                },
                output_sha256,
                merkle_root,
                node_manifest: Some(node_manifest.clone()),
                verified_items: v.ok,
                rerun,
            };
            (res, rec)
        }
        Err(f) => {
            // A failure before the sample was drawn re-ran nothing.
            let rerun = if f.evidence.seed.is_none() && f.check != FailedCheck::SampleMismatch {
                RerunInfo { by: RerunBy::None, ..rerun }
            } else {
                rerun
            };
            failed_resolution(a, f.check, format!("verification failed: {f}"), f.evidence, Some(out), node_manifest, rerun)
        }
    }
}

/// A failed assignment's resolution and record (pure).
fn failed_resolution(
    a: &AssignmentRow,
    check: FailedCheck,
    detail: String,
    evidence: verify::Evidence,
    out: Option<(&str, &str)>,
    node_manifest: &serde_json::Value,
    rerun: RerunInfo,
) -> (Resolution, redo::Record) {
    let res = Resolution {
        completed: false,
        items_ok: 0,
        items_failed: a.item_count,
        output_sha256: out.map(|o| o.0.to_owned()),
        merkle_root: out.map(|o| o.1.to_owned()),
        manifest: Some(node_manifest.clone()),
        detail: detail.clone(),
    };
    let rec = redo::Record {
        failed_check: Some(check),
        detail,
        evidence,
        output_sha256: res.output_sha256.clone(),
        merkle_root: res.merkle_root.clone(),
        node_manifest: Some(node_manifest.clone()),
        verified_items: 0,
        rerun,
    };
    (res, rec)
}

/// Settles one result message from `source`. `Ok(true)`: an assignment was resolved;
/// `Ok(false)`: nothing to do (a duplicate; a sample sent to another node; or refused —
/// undecodable, for an unknown assignment, from a node that does not hold it — and recorded as
/// a dead letter); `Err`: retry later. A result for a verification task (`crate::crosscheck`)
/// decides the assignment under check.
pub async fn handle_result(
    db: &mut Db,
    store: &ObjectStore,
    verifier: &SharedVerifier,
    ctx: ResultCtx,
    source: &Source,
    payload: &[u8],
) -> Result<bool> {
    let r: ResultMsg = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => {
            let why = format!("undecodable result: {e}");
            return refuse_result(db, source, DeadLetterReason::Undecodable, why, payload).await;
        }
    };
    let id = r.assignment_id;
    let Some(a) = db.with(move |c| jobs::load_assignment(c, id)).await? else {
        if let Some(task) = db.with(move |c| crosscheck::load_task(c, id)).await? {
            return handle_task_result(db, store, verifier, ctx, source, payload, &r, task).await;
        }
        let why = format!("result for assignment {id}, which does not exist");
        return refuse_result(db, source, DeadLetterReason::UnknownAssignment, why, payload).await;
    };
    if a.status != AssignmentStatus::Assigned {
        debug!(assignment.id = %id, status = %a.status, "result for a resolved assignment ignored");
        return Ok(false);
    }
    // Who sent it is the subject (`node.<id>.result`, which only that node may publish on), never
    // a field of the message.
    let sender = subjects::node_of(&source.subject);
    if sender != Some(a.node_id) || a.job_id != r.job_id {
        let why = format!(
            "result for assignment {id} on {} (job {}); node {} of job {} holds it",
            source.subject, r.job_id, a.node_id, a.job_id
        );
        return refuse_result(db, source, DeadLetterReason::ForeignResult, why, payload).await;
    }
    let job_id = a.job_id;
    let job = job_of(db, job_id).await?;
    let none = RerunInfo { by: RerunBy::None, ..RerunInfo::default() };
    let (resolution, record) = match &r.outcome {
        Outcome::Failed { reason } => failed_resolution(
            &a,
            FailedCheck::NodeFailed,
            format!("the node failed: {reason}"),
            verify::Evidence::default(),
            None,
            &r.manifest,
            none,
        ),
        Outcome::Completed {
            output_sha256,
            merkle_root,
            ..
        } if a.upload_sha256.as_deref() != Some(output_sha256.as_str()) => failed_resolution(
            &a,
            FailedCheck::WrongOutput,
            format!(
                "verification failed: the result names output {output_sha256}, but the node uploaded {} for this assignment",
                a.upload_sha256.as_deref().unwrap_or("nothing")
            ),
            verify::Evidence::default(),
            Some((output_sha256, merkle_root)),
            &r.manifest,
            none,
        ),
        Outcome::Completed {
            output_sha256,
            merkle_root,
            items_ok: _,
            items_failed,
        } => {
            let checked = verify_completed(
                db,
                store,
                verifier,
                ctx.tasks,
                &job,
                &a,
                output_sha256,
                merkle_root,
                *items_failed,
                &r.manifest,
            )
            .await?;
            match checked {
                Checked::SentToNode => return Ok(false),
                Checked::Verdict(verdict, rerun) => {
                    resolution_of(&a, verdict, (output_sha256, merkle_root), &r.manifest, rerun)
                }
            }
        }
    };
    settle(db, &a, resolution, record, ctx.policy, None).await
}

/// ONE transaction: the assignment passes or fails (`crate::redo`) and, when its sample was out
/// with another node, the task closes (the verifier paid or judged). `Ok(true)` when the
/// assignment was resolved.
async fn settle(
    db: &mut Db,
    a: &AssignmentRow,
    resolution: Resolution,
    record: redo::Record,
    policy: RedoPolicy,
    task: Option<(crosscheck::TaskRow, crosscheck::Close)>,
) -> Result<bool> {
    let (res, rec, row) = (resolution.clone(), record, a.clone());
    let now = now_ms();
    let (settled, paid) = db
        .with(move |c| {
            c.transaction(|c| {
                let settled = if res.completed {
                    redo::settle_pass(c, &row, &res, &rec, policy)?
                } else {
                    redo::settle_failure(c, &row, &res, &rec, policy, now)?
                };
                if settled.is_some() && rec.failed_check == Some(FailedCheck::Canary) {
                    // The node was told it failed a canary: it knows them now.
                    let ids: Vec<uuid::Uuid> = row.canaries.iter().map(|s| s.id).collect();
                    canary::retire(c, &ids)?;
                }
                let paid = match &task {
                    Some((t, close)) => crosscheck::close_task(c, t, close)?,
                    None => None,
                };
                Ok((settled, paid))
            })
        })
        .await?;
    if let Some(s) = &settled {
        info!(assignment.id = %a.id, job.id = %a.job_id, completed = resolution.completed,
            items_ok = resolution.items_ok, remedy = %s.remedy, node_action = %s.node_action,
            verifier_paid = ?paid, detail = %resolution.detail, "assignment resolved");
    }
    Ok(settled.is_some())
}

/// A verifying node's answer to its task: the sender must be the task's node; then the
/// assignment under check is decided ([`crosscheck::decide`]).
#[allow(clippy::too_many_arguments)]
async fn handle_task_result(
    db: &mut Db,
    store: &ObjectStore,
    verifier: &SharedVerifier,
    ctx: ResultCtx,
    source: &Source,
    payload: &[u8],
    r: &ResultMsg,
    task: crosscheck::TaskRow,
) -> Result<bool> {
    let sender = subjects::node_of(&source.subject);
    if sender != Some(task.node_id) || task.job_id != r.job_id {
        let why = format!(
            "result for verification task {} on {} (job {}); node {} of job {} holds it",
            task.id, source.subject, r.job_id, task.node_id, task.job_id
        );
        return refuse_result(db, source, DeadLetterReason::ForeignResult, why, payload).await;
    }
    if task.status != "assigned" {
        debug!(task.id = %task.id, status = %task.status, "result for a closed verification task ignored");
        return Ok(false);
    }
    let answer = match &r.outcome {
        Outcome::Failed { reason } => TaskAnswer::None(format!("the verifying node failed: {reason}")),
        Outcome::Completed { output_sha256, .. } if task.upload_sha256.as_deref() != Some(output_sha256.as_str()) => {
            TaskAnswer::None(format!(
                "the verifying node's result names output {output_sha256}, but it uploaded {}",
                task.upload_sha256.as_deref().unwrap_or("nothing")
            ))
        }
        Outcome::Completed { output_sha256, merkle_root, items_failed, .. } => match read_object(store, output_sha256).await {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => TaskAnswer::Output { text, merkle_root: merkle_root.clone(), reported_failed: *items_failed, sha256: output_sha256.clone() },
                Err(_) => TaskAnswer::None("the verifying node's output is not UTF-8".into()),
            },
            Err(SettlementError::Refused(why)) => TaskAnswer::None(format!("the verifying node's output: {why}")),
            Err(e) => return Err(e),
        },
    };
    decide_task(db, store, verifier, ctx, task, answer, Some(r.manifest.clone()), false).await
}

/// A verifying node's answer as the worker read it (owned; see [`crosscheck::Answer`]).
enum TaskAnswer {
    Output { text: String, merkle_root: String, reported_failed: u64, sha256: String },
    None(String),
}

/// Decides the assignment under check from its task's answer (or its absence, `expired`) and
/// settles both in one transaction. `Ok(true)`: the assignment was resolved.
#[allow(clippy::too_many_arguments)]
async fn decide_task(
    db: &mut Db,
    store: &ObjectStore,
    verifier: &SharedVerifier,
    ctx: ResultCtx,
    task: crosscheck::TaskRow,
    answer: TaskAnswer,
    verifier_manifest: Option<serde_json::Value>,
    expired: bool,
) -> Result<bool> {
    let aid = task.assignment_id;
    let Some(a) = db.with(move |c| jobs::load_assignment(c, aid)).await? else {
        return Err(SettlementError::Refused(format!("verification task {}: assignment {aid} missing", task.id)));
    };
    if a.status != AssignmentStatus::Verifying {
        // Resolved another way (cannot happen: only the task decides a verifying assignment).
        warn!(task.id = %task.id, assignment.id = %aid, status = %a.status, "verification task for an assignment no longer under check");
    }
    let job_id = a.job_id;
    let job = job_of(db, job_id).await?;
    let Some(work) = catalog::work(&job.market) else {
        return Err(SettlementError::Refused(format!("market {} has no workload", job.market)));
    };
    let input = read_object(store, &job.input_sha256).await?;
    let output = read_object(store, &task.output_sha256).await?;
    let result_sha = match &answer {
        TaskAnswer::Output { sha256, .. } => Some(sha256.clone()),
        TaskAnswer::None(_) => None,
    };
    let slots = a.canaries.clone();
    // Their answers were stored when the result was first checked.
    let canaries = db.with(move |c| canary::load(c, &slots)).await?;
    let (t, verifier, manifest) = (task.clone(), verifier.clone(), verifier_manifest.clone());
    let (start, count, market, kind) = (a.item_start, a.item_count, job.market.clone(), work.kind);
    let decision = tokio::task::spawn_blocking(move || -> std::result::Result<crosscheck::TaskDecision, VerifyError> {
        let input = String::from_utf8(input).map_err(|_| VerifyError::Unavailable("input file is not UTF-8".into()))?;
        let output = String::from_utf8(output).map_err(|_| VerifyError::Unavailable("output file is not UTF-8".into()))?;
        let mut v = verifier.lock().map_err(|_| VerifyError::Unavailable("verifier poisoned".into()))?;
        let items: Vec<u64> = t.items.iter().flatten().map(|&i| i.max(0) as u64).collect();
        let answer = match &answer {
            TaskAnswer::Output { text, merkle_root, reported_failed, .. } => crosscheck::Answer::Output {
                text,
                merkle_root,
                reported_failed: *reported_failed,
            },
            TaskAnswer::None(why) => crosscheck::Answer::None(why.clone()),
        };
        crosscheck::decide(
            &mut v,
            &verify::Committed {
                model: None,
                assignment: t.assignment_id,
                market: &market,
                kind,
                input: &input,
                start,
                count,
                output: &output,
                output_sha256: &t.output_sha256,
                merkle_root: &t.merkle_root,
                reported_failed: t.reported_failed.max(0) as u64,
                canaries: &canaries,
            },
            &items,
            answer,
            expired,
            manifest.as_ref(),
        )
    })
    .await
    .map_err(|_| SettlementError::TaskFailed)?
    .map_err(|e| SettlementError::Nats(e.to_string()))?;
    let rerun = RerunInfo {
        by: if decision.market_rerun { RerunBy::Market } else { RerunBy::Node },
        verifier_node: Some(task.node_id),
        task: Some(task.id),
        note: decision.market_rerun.then(|| decision.detail.clone()),
    };
    let node_manifest = task.node_manifest.clone().unwrap_or(serde_json::Value::Null);
    let (resolution, record) =
        resolution_of(&a, decision.verdict, (&task.output_sha256, &task.merkle_root), &node_manifest, rerun);
    info!(task.id = %task.id, assignment.id = %a.id, verifier.node = %task.node_id, outcome = decision.outcome.as_str(),
        market_rerun = decision.market_rerun, verifier_correct = ?decision.verifier_correct, "verification task decided");
    let close = crosscheck::Close {
        outcome: decision.outcome,
        market_rerun: decision.market_rerun,
        verifier_correct: decision.verifier_correct,
        result_sha256: result_sha,
        result_manifest: verifier_manifest,
        detail: decision.detail,
        blame_verifier: decision.blame_verifier,
    };
    settle(db, &a, resolution, record, ctx.policy, Some((task, close))).await
}

/// Decides the verification tasks past their deadline (the market re-runs their samples) and
/// tells their nodes to stop. Returns how many assignments were resolved.
async fn expire_tasks(
    db: &mut Db,
    store: &ObjectStore,
    verifier: &SharedVerifier,
    ctx: ResultCtx,
    nats: &async_nats::Client,
) -> Result<usize> {
    let late = db.with(|c| crosscheck::expired_tasks(c, 16)).await?;
    let mut resolved = 0;
    for t in late {
        let (id, node) = (t.id, t.node_id);
        let why = format!("the verifying node did not answer within {} s", ctx.tasks.timeout_secs);
        if decide_task(db, store, verifier, ctx, t, TaskAnswer::None(why), None, true).await? {
            resolved += 1;
        }
        warn!(task.id = %id, node.id = %node, "verification task expired: the market re-ran the sample");
        let msg = CancelMsg { assignment_ids: vec![id], reason: "verification task expired".into() };
        let _ = nats
            .publish(subjects::node_cancel(&node.to_string()), serde_json::to_vec(&msg)?.into())
            .await;
    }
    Ok(resolved)
}

/// The job an assignment belongs to (`Refused` when it is missing: it cannot be).
async fn job_of(db: &mut Db, job_id: uuid::Uuid) -> Result<JobWork> {
    db.with(move |c| jobs::load_job(c, job_id))
        .await?
        .ok_or_else(|| SettlementError::Refused(format!("job {job_id} missing")))
}

/// Records a refused result message as a dead letter (once per message) and returns
/// `Ok(false)`: the message is acked. It touches no escrow: the assignment, if any, stays with
/// its node until its own result or its deadline.
async fn refuse_result(
    db: &mut Db,
    source: &Source,
    reason: DeadLetterReason,
    why: String,
    payload: &[u8],
) -> Result<bool> {
    let (source, payload) = (source.clone(), payload.to_vec());
    db.with(move |c| {
        dead_letter::record_message(c, VERIFIER_CONSUMER, &source, reason, &why, &payload)
    })
    .await?;
    Ok(false)
}

/// What checking a completed result came to.
enum Checked {
    /// The verdict (`Err`: the node's result is wrong) and who re-ran the sample.
    Verdict(std::result::Result<verify::Verified, verify::Failure>, RerunInfo),
    /// The sample went to another node as a verification task: its answer decides.
    SentToNode,
}

/// Checks a completed result: the commitment checks, then the sample — sent to another
/// provider's node when one is eligible (`crate::crosscheck`), else re-run by the market. `Err`
/// when the market could not check (retry).
#[allow(clippy::too_many_arguments)]
async fn verify_completed(
    db: &mut Db,
    store: &ObjectStore,
    verifier: &SharedVerifier,
    tasks: crosscheck::TaskPolicy,
    job: &JobWork,
    a: &AssignmentRow,
    output_sha256: &str,
    merkle_root: &str,
    reported_failed: u64,
    node_manifest: &serde_json::Value,
) -> Result<Checked> {
    let fail = |check, why: String| {
        Checked::Verdict(
            Err(verify::Failure { check, why, evidence: verify::Evidence::default() }),
            RerunInfo { by: RerunBy::None, ..RerunInfo::default() },
        )
    };
    let Some(work) = catalog::work(&job.market) else {
        return Ok(fail(FailedCheck::OutputFormat, format!("market {} has no workload", job.market)));
    };
    let input = read_object(store, &job.input_sha256).await?;
    let output = match read_object(store, output_sha256).await {
        Ok(o) => o,
        Err(SettlementError::Refused(why)) => return Ok(fail(FailedCheck::OutputFormat, why)),
        Err(SettlementError::ObjectMissing(why)) => {
            // The node publishes its result after the upload, so a missing object is a lie.
            return Ok(fail(FailedCheck::WrongOutput, why));
        }
        // The store timed out or the connection dropped: the market could not read the output,
        // which says nothing about the node's work. Retry the result later (an honest node is
        // never failed, unpaid or suspended for the market's own blip).
        Err(e) => return Err(e),
    };
    // Who may re-run the sample: another provider's node, unless the job's model is private (its
    // weights are not handed to a second node) or none is eligible.
    let (candidates, note) = if !tasks.enabled {
        (Vec::new(), "re-runs on other nodes are off (GRIDBOOK_VERIFY_ON_NODES=false)")
    } else if job.model.is_some() {
        (Vec::new(), "the job runs a private model: the market re-ran the sample itself")
    } else {
        let (market, node) = (job.market.clone(), a.node_id);
        let c = db.with(move |c| crosscheck::eligible_verifiers(c, &market, node)).await?;
        (c, "no eligible node (active, another owner and cluster, online, asking in the market)")
    };
    let model = match &job.model {
        // Fetched and opened only when the verifier does not keep it loaded already.
        Some(m) if verifier
            .lock()
            .map_err(|_| SettlementError::Nats("verifier poisoned".into()))?
            .has_private(work.kind, &m.sha256) =>
        {
            Some(verify::PrivateModel { sha256: m.sha256.clone(), plaintext: None })
        }
        Some(m) => Some(open_private_model(db, store, verifier, m).await?),
        None => None,
    };
    let (start, count, assignment) = (a.item_start, a.item_count, a.id);
    let slots = a.canaries.clone();
    let mut canaries = db.with(move |c| canary::load(c, &slots)).await?;
    let (root, out_name, market) = (merkle_root.to_owned(), output_sha256.to_owned(), job.market.clone());
    let shared = verifier.clone();
    let kind = work.kind;
    let to_node = !candidates.is_empty();
    type Step = std::result::Result<std::result::Result<verify::Verified, verify::Prepared>, VerifyError>;
    // The step, and the canary answers computed on the way (kept whatever the step found).
    let (step, fresh) = tokio::task::spawn_blocking(move || -> (Step, Vec<verify::NewAnswer>) {
        let Ok(input) = String::from_utf8(input) else {
            return (Err(VerifyError::Unavailable("input file is not UTF-8".into())), Vec::new());
        };
        let Ok(output) = String::from_utf8(output) else {
            return (Err(VerifyError::mismatch(FailedCheck::OutputFormat, "output file is not UTF-8".into())), Vec::new());
        };
        let Ok(mut v) = shared.lock() else {
            return (Err(VerifyError::Unavailable("verifier poisoned".into())), Vec::new());
        };
        // The canaries' known answers, computed by the market the first time they are checked.
        let fresh = match v.answer_canaries(kind, &mut canaries) {
            Ok(f) => f,
            Err(e) => return (Err(e), Vec::new()),
        };
        let step = v
            .prepare(&verify::Committed {
                model: model.as_ref(),
                assignment,
                market: &market,
                kind,
                input: &input,
                start,
                count,
                output: &output,
                output_sha256: &out_name,
                merkle_root: &root,
                reported_failed,
                canaries: &canaries,
            })
            .and_then(|p| if to_node { Ok(Err(p)) } else { v.rerun_prepared(kind, model.as_ref(), &p).map(Ok) });
        (step, fresh)
    })
    .await
    .map_err(|_| SettlementError::TaskFailed)?;
    if !fresh.is_empty() {
        db.with(move |c| canary::store_answers(c, &fresh)).await?;
    }
    let market_rerun = RerunInfo { by: RerunBy::Market, note: Some(note.to_owned()), ..RerunInfo::default() };
    match step {
        Ok(Ok(v)) => {
            info!(assignment.id = %assignment, seed = %v.seed, sampled = ?v.sampled, "sample re-run agreed");
            Ok(Checked::Verdict(Ok(v), market_rerun))
        }
        Ok(Err(prepared)) => {
            let chosen = crosscheck::choose(&candidates, &prepared.seed).expect("candidates is not empty");
            let price_of = a.id;
            let price: i64 = db
                .with(move |c| {
                    use diesel::prelude::*;
                    use gridbook_db::schema::job_assignments;
                    Ok(job_assignments::table.find(price_of).select(job_assignments::price).first(c)?)
                })
                .await?;
            let price = price.max(0) as u64;
            let t = crosscheck::NewTask {
                id: uuid::Uuid::new_v4(),
                verifier: chosen,
                item_numbers: prepared.item_numbers.clone(),
                output_sha256: output_sha256.to_owned(),
                merkle_root: merkle_root.to_owned(),
                node_manifest: node_manifest.clone(),
                reported_failed,
                seed_hex: prepared.seed_hex(),
                price,
                pay: crosscheck::task_pay(price, prepared.pairs.len() as u64, job.items_per_unit),
                deadline_ms: now_ms() + tasks.timeout_secs.saturating_mul(1000),
            };
            let (row, work, task) = (a.clone(), job.clone(), t.clone());
            let sent = db.with(move |c| c.transaction(|c| crosscheck::dispatch(c, &row, &work, &task))).await?;
            if sent {
                info!(assignment.id = %assignment, task.id = %t.id, verifier.node = %chosen, items = ?t.item_numbers,
                    pay = t.pay, "sample sent to another node for its re-run");
            }
            Ok(Checked::SentToNode)
        }
        // `resolution_of` records a failure before the sample as re-run by nobody.
        Err(VerifyError::Mismatch(f)) => Ok(Checked::Verdict(Err(*f), market_rerun)),
        Err(VerifyError::Unavailable(why)) => Err(SettlementError::Nats(why)),
    }
}

/// Opens a job's private model for the re-run: its sealed object from the files store, its
/// data key unwrapped with the market's KEK (`models_kek_file`), decrypted in memory. `Err`
/// (retry later) when the worker has no KEK or the store cannot be read.
async fn open_private_model(
    db: &mut Db,
    store: &ObjectStore,
    verifier: &SharedVerifier,
    m: &gridbook_wire::node::ModelRef,
) -> Result<verify::PrivateModel> {
    let kek = verifier
        .lock()
        .map_err(|_| SettlementError::Nats("verifier poisoned".into()))?
        .models_kek()
        .ok_or_else(|| {
            SettlementError::Nats(format!(
                "the job runs private model {}, and this worker has no models_kek_file to open it",
                m.id
            ))
        })?;
    let id = m.id;
    let row = db
        .with(move |c| {
            use diesel::prelude::*;
            use gridbook_db::schema::models;
            Ok(models::table
                .find(id)
                .select(gridbook_db::rows::ModelRow::as_select())
                .first(c)?)
        })
        .await?;
    if row.sha256 != m.sha256 {
        return Err(SettlementError::Refused(format!(
            "model {} is {} but the job pinned {}",
            m.id, row.sha256, m.sha256
        )));
    }
    let sealed = read_object(store, &row.object).await?;
    let aad = gridbook_sealed::model_aad(row.id.as_bytes(), &row.sha256);
    let plaintext = tokio::task::spawn_blocking(move || {
        let key = kek.unwrap(&row.wrapped_key, &aad)?;
        let mut buf = sealed;
        gridbook_sealed::open(&key, &row.nonce, &mut buf, &aad)?;
        Ok::<_, gridbook_sealed::SealError>(buf)
    })
    .await
    .map_err(|_| SettlementError::TaskFailed)?
    .map_err(|e| SettlementError::Refused(format!("private model {}: {e}", m.id)))?;
    Ok(verify::PrivateModel { sha256: m.sha256.clone(), plaintext: Some(plaintext) })
}

/// Voids overdue assignments and finishes idle jobs, every second or when woken.
pub async fn run_finisher(
    settings: &Settings,
    js: &Context,
    nats: &async_nats::Client,
    wake: &Notify,
) -> Result<()> {
    let store = files_bucket(js, settings.nats_replicas).await?;
    let mut db = Db::new(&settings.database_url);
    loop {
        void_overdue(&mut db, nats, settings.redo_policy()).await?;
        let jobs = db.with(|c| jobs::idle_unfinished_jobs(c, 64)).await?;
        for job in jobs {
            let order = job.order_id;
            let open = db
                .with(move |c| Ok(escrow::get_order(c, order)?.quantity_open))
                .await?;
            if open > 0 {
                // The engine expires the bid at the job's deadline; units still open long after
                // it were left by an event that never settled (a dead-lettered message): give
                // them back so the job can finish.
                if !jobs::open_units_are_stuck(job.deadline_ms, now_ms()) {
                    continue;
                }
                let job_id = job.id;
                let released = db.with(move |c| jobs::release_stuck_units(c, job_id, order)).await?;
                warn!(job.id = %job.id, order.id = %order, units = released,
                    "bid still had open units long after the job's deadline: released to the studio");
            }
            if let Err(e) = finish_job(&mut db, &store, &job).await {
                error!(job.id = %job.id, error = %e, "finishing a job failed; retrying");
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn now_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

async fn void_overdue(db: &mut Db, nats: &async_nats::Client, policy: RedoPolicy) -> Result<()> {
    let overdue = db.with(|c| jobs::overdue_assignments(c, 64)).await?;
    for a in overdue {
        let id = a.id;
        let detail = "no result before the deadline".to_owned();
        let res = Resolution {
            completed: false,
            items_ok: 0,
            items_failed: a.item_count,
            output_sha256: None,
            merkle_root: None,
            manifest: None,
            detail: detail.clone(),
        };
        let rec = redo::Record {
            failed_check: Some(FailedCheck::Overdue),
            detail,
            evidence: verify::Evidence::default(),
            output_sha256: None,
            merkle_root: None,
            node_manifest: None,
            verified_items: 0,
            rerun: RerunInfo { by: RerunBy::None, ..RerunInfo::default() },
        };
        let row = a.clone();
        let now = now_ms();
        let settled = db
            .with(move |c| c.transaction(|c| redo::settle_failure(c, &row, &res, &rec, policy, now)))
            .await?;
        let voided = settled.is_some();
        if voided {
            let remedy = settled.map(|s| s.remedy.as_str()).unwrap_or_default();
            warn!(assignment.id = %id, node.id = %a.node_id, remedy, "assignment overdue: voided");
            let msg = CancelMsg {
                assignment_ids: vec![id],
                reason: "deadline passed".into(),
            };
            let _ = nats
                .publish(
                    subjects::node_cancel(&a.node_id.to_string()),
                    serde_json::to_vec(&msg)?.into(),
                )
                .await;
        }
    }
    Ok(())
}

/// A verified assignment's output lines as the studio gets them (pure): the node was served
/// positions (`catalog::served_id`), so each line's custom_id becomes the studio's again
/// (`ids`: the job's custom_ids in input order), and the market's canaries are dropped. Returns
/// `(studio custom_id, line)` in output order.
pub fn studio_lines(
    text: &str,
    item_start: u64,
    item_count: u64,
    canaries: &[catalog::CanarySlot],
    ids: &[String],
) -> std::result::Result<Vec<(String, String)>, String> {
    use catalog::{ServedLine, served_lines, served_position};
    let layout = served_lines(item_count, canaries)?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |why: &str| format!("line {}: {why}", n + 1);
        let mut obj: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        let served = obj.get("custom_id").and_then(|v| v.as_str()).ok_or_else(|| bad("no custom_id"))?;
        let at = served_position(served).ok_or_else(|| bad("its custom_id is not a served position"))?;
        match layout.get(at as usize) {
            Some(ServedLine::Item(i)) => {
                let id = ids.get((item_start + i) as usize).ok_or_else(|| bad("past the job's items"))?.clone();
                obj.insert("custom_id".into(), serde_json::Value::String(id.clone()));
                out.push((id, serde_json::Value::Object(obj).to_string()));
            }
            Some(ServedLine::Canary(_)) => {}
            None => return Err(bad("its position is past the assignment's lines")),
        }
    }
    Ok(out)
}

/// Assembles the output file (the verified lines of completed assignments, in input order) and
/// the error file (one line per input item without a verified output, saying why), stores both
/// and finishes the job.
pub async fn finish_job(db: &mut Db, store: &ObjectStore, job: &JobWork) -> Result<()> {
    let job_id = job.id;
    if job.status != JobStatus::Verifying {
        db.with(move |c| jobs::set_status(c, job_id, JobStatus::Verifying))
            .await?;
    }
    let assignments = db.with(move |c| jobs::assignments_of(c, job_id)).await?;
    let input = String::from_utf8(read_object(store, &job.input_sha256).await?)
        .map_err(|_| SettlementError::Refused("input file is not UTF-8".into()))?;
    let ids: Vec<String> = catalog::items(input.as_bytes())
        .map(|l| {
            serde_json::from_slice::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("custom_id")?.as_str().map(str::to_owned))
                .unwrap_or_default()
        })
        .collect();
    // Why each item has no output (default: never run — the bid was cancelled or expired).
    let not_run = if job.cancel_requested {
        ("not_run", "the job was cancelled before this item was assigned".to_owned())
    } else if let Some(why) = &job.reject_reason {
        ("not_run", format!("the market rejected the job's bid ({why}); you were refunded"))
    } else if job.time_in_force == JobTimeInForce::Ioc {
        ("not_run", "the job is immediate-or-cancel and the book had no unit for this item at once; you were refunded".to_owned())
    } else {
        ("not_run", "no provider took this item before the job's bid closed".to_owned())
    };
    let mut reason: Vec<Option<(&str, String)>> = vec![Some(not_run); ids.len()];
    // Units whose fill was refused (a dead letter) went back to the studio unrun.
    let refused = db.with(move |c| dead_letter::released_units_of_job(c, job_id)).await?;
    for (unit_start, units) in refused {
        if let Some(items) =
            catalog::items_of_units(job.items_per_unit, unit_start, units, ids.len() as u64)
        {
            for r in &mut reason[items.start as usize..items.end as usize] {
                *r = Some(("fill_refused", "a fill of this item could not be settled (recorded as a dead letter); it was not run and you were refunded".into()));
            }
        }
    }
    // Failed assignments first: units offered again after a failure were completed by a later
    // assignment, whose output wins.
    for a in assignments.iter().filter(|a| a.status != AssignmentStatus::Completed) {
        let range = a.item_start as usize..(a.item_start + a.item_count).min(ids.len() as u64) as usize;
        for r in &mut reason[range] {
            *r = Some(("assignment_failed", "the provider's result for this item was not delivered or did not verify; you were refunded".into()));
        }
    }
    let mut out = Vec::new();
    let mut out_lines = 0u64;
    for a in assignments.iter().filter(|a| a.status == AssignmentStatus::Completed) {
        let range = a.item_start as usize..(a.item_start + a.item_count).min(ids.len() as u64) as usize;
        if a.status == AssignmentStatus::Completed {
            let sha = a.output_sha256.clone().unwrap_or_default();
            let text = String::from_utf8(read_object(store, &sha).await?)
                .map_err(|_| SettlementError::Refused("output file is not UTF-8".into()))?;
            let mut produced = std::collections::HashSet::new();
            let lines = studio_lines(&text, a.item_start, a.item_count, &a.canaries, &ids)
                .map_err(|why| SettlementError::Refused(format!("assignment {}'s output: {why}", a.id)))?;
            for (id, line) in lines {
                produced.insert(id);
                out.extend_from_slice(line.as_bytes());
                out.push(b'\n');
                out_lines += 1;
            }
            for i in range {
                reason[i] = if produced.contains(&ids[i]) {
                    None
                } else {
                    Some(("item_failed", "the provider reported this item as failed".into()))
                };
            }
        }
    }
    let mut errors = Vec::new();
    let mut error_lines = 0u64;
    for (id, r) in ids.iter().zip(&reason) {
        if let Some((code, message)) = r {
            let line = serde_json::json!({"custom_id": id, "error": {"code": code, "message": message}});
            errors.extend_from_slice(line.to_string().as_bytes());
            errors.push(b'\n');
            error_lines += 1;
        }
    }
    let (counts_c, _) = db.with(move |c| jobs::counts(c, job_id)).await?;
    let deadline_passed = jobs::ms_to_time(job.deadline_ms) <= chrono::Utc::now();
    let order = if job.reject_reason.is_some() {
        jobs::OrderKind::Rejected
    } else if job.time_in_force == JobTimeInForce::Ioc {
        // Every item some assignment covered (a failed one's units were re-offered as a re-bid,
        // whose assignment covers the same items).
        let mut filled = vec![false; job.items as usize];
        for a in &assignments {
            let end = (a.item_start + a.item_count).min(job.items);
            for f in filled.iter_mut().take(end as usize).skip(a.item_start as usize) {
                *f = true;
            }
        }
        jobs::OrderKind::Ioc {
            filled_items: filled.iter().filter(|f| **f).count() as u64,
        }
    } else {
        jobs::OrderKind::Resting
    };
    let status = jobs::final_status(job.items, counts_c, job.cancel_requested, deadline_passed, order);
    let (out_bytes, err_bytes) = (out.len() as u64, errors.len() as u64);
    let out_sha = if out_lines > 0 {
        Some(put_object(store, out).await?)
    } else {
        None
    };
    let err_sha = if error_lines > 0 {
        Some(put_object(store, errors).await?)
    } else {
        None
    };
    let (owner, order_id) = (job.owner, job.order_id);
    let done = db
        .with(move |c| {
            let output = out_sha.as_deref().map(|s| NewFile {
                owner,
                purpose: "batch_output",
                sha256: s,
                bytes: out_bytes,
                lines: out_lines,
                filename: format!("{job_id}.output.jsonl"),
            });
            let errors = err_sha.as_deref().map(|s| NewFile {
                owner,
                purpose: "batch_error",
                sha256: s,
                bytes: err_bytes,
                lines: error_lines,
                filename: format!("{job_id}.errors.jsonl"),
            });
            jobs::finish(c, job_id, order_id, &assignments, status, output, errors)
        })
        .await?;
    if done {
        info!(job.id = %job_id, status = status.as_str(), output_lines = out_lines, error_lines, "job finished");
    } else {
        debug!(job.id = %job_id, "job changed while its files were assembled (or was finished); later");
    }
    Ok(())
}

/// Most distinct nodes remembered between two heartbeat flushes (more are dropped until the
/// next flush: a heartbeat every few seconds makes up for it).
pub const HEARTBEAT_BATCH: usize = 10_000;

/// Records node heartbeats (`node.*.heartbeat`, core NATS, queue group `heartbeats` so several
/// workers share them): once a second, `last_heartbeat_at = now()` for the nodes heard from.
pub async fn run_heartbeats(settings: &Settings, nats: &async_nats::Client) -> Result<()> {
    let mut sub = nats
        .queue_subscribe(subjects::ALL_NODE_HEARTBEATS, "heartbeats".into())
        .await
        .map_err(SettlementError::nats)?;
    let mut db = Db::new(&settings.database_url);
    let mut seen = std::collections::BTreeSet::new();
    let mut flush = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else {
                    return Err(SettlementError::Nats("heartbeat subscription ended".into()));
                };
                // The subject names the node (only that node may publish on it).
                let node = subjects::node_of(&msg.subject);
                match (node, serde_json::from_slice::<gridbook_wire::node::HeartbeatMsg>(&msg.payload)) {
                    (Some(node), Ok(_)) => {
                        if seen.len() < HEARTBEAT_BATCH {
                            seen.insert(node);
                        }
                    }
                    (None, _) => debug!(subject = %msg.subject, "heartbeat on a subject that names no node ignored"),
                    (_, Err(e)) => debug!(subject = %msg.subject, error = %e, "undecodable heartbeat ignored"),
                }
            }
            _ = flush.tick() => {
                if !seen.is_empty() {
                    let ids: Vec<_> = std::mem::take(&mut seen).into_iter().collect();
                    db.with(move |c| jobs::touch_nodes(c, &ids)).await?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::CanarySlot;

    #[test]
    fn the_studio_gets_its_own_ids_back_and_never_a_canary() {
        let ids: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        // Items 1..3 of the job (b, c) were served with a canary at position 1: i0 = b, i1 =
        // canary, i2 = c; the node reported i2 failed.
        let slots = [CanarySlot { at: 1, id: uuid::Uuid::nil() }];
        let text = "{\"custom_id\":\"i0\",\"embedding\":[1.0],\"sha256\":\"x\"}\n\n{\"custom_id\":\"i1\",\"embedding\":[0.5],\"sha256\":\"y\"}\n";
        let lines = studio_lines(text, 1, 2, &slots, &ids).unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].0, "b");
        let v: serde_json::Value = serde_json::from_str(&lines[0].1).unwrap();
        assert_eq!(v, serde_json::json!({"custom_id": "b", "embedding": [1.0], "sha256": "x"}));
        // Without canaries every position is an item.
        let all = studio_lines("{\"custom_id\":\"i1\",\"e\":1}", 2, 2, &[], &ids).unwrap();
        assert_eq!(all[0].0, "d");
        for bad in ["{\"custom_id\":\"b\"}", "{\"custom_id\":\"i3\"}", "{}", "not json"] {
            assert!(studio_lines(bad, 1, 2, &slots, &ids).is_err(), "{bad}");
        }
    }
}
