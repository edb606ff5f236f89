//! The sampled re-run on another provider's node: verification tasks (issue 12).
//!
//! When a node's result passes the commitment checks and its sample is drawn
//! (`verify::Verifier::prepare`), the sampled items go to a *different* provider node as a
//! verification task, instead of the market's own runtime:
//!
//! - **Who.** An eligible node ([`eligible_verifiers`]): `active` (off probation), another
//!   owner *and* another identity cluster than the first node (no shared network, hardware
//!   fingerprint or account link, `gridbook_db::identity`), an open ask in the market (it serves
//!   the market now), a heartbeat within [`ONLINE_SECS`]. One is drawn from the sample seed
//!   ([`choose`]), so neither node can predict or pick the pairing. A job with a private model
//!   is re-run by the market (its weights are not handed to a second node), and so is every
//!   result when no node is eligible; the record says why (`rerun_note`).
//! - **What it sees.** Only the sampled input lines (`GET /v1/assignments/{task}/input`
//!   through the usual grant), never the first node's output; it answers like any assignment
//!   (upload, `ResultMsg` on its own subject). Its AssignmentMsg has `qty` 0: it fills no ask.
//! - **Deciding.** Its lines are compared with the first node's ([`verify::judge`], the same
//!   tolerances as the market's re-run). Agreement on every item settles the assignment as
//!   verified. A disagreement, a verifier that failed, answered garbage or did not answer
//!   within `verification_task_secs` is decided by the market's own runtime (the fallback):
//!   the first node passes or fails against it, and the verifier is judged against it too.
//! - **Pay.** A verifier whose answer was right is paid `ceil(price × sampled / items per
//!   unit)` at the assignment's trade price ([`task_pay`]) from the protocol fee account (the
//!   verification fund when the fee account is short; unpaid, recorded, when both are), in the
//!   transaction that settles the assignment. A verifier proven wrong by the market's re-run is
//!   not paid, its score drops to 0 and it is suspended, like any node whose own result the
//!   market proves wrong; one that failed or was late loses score (a failed outcome) only.
//!
//! Not covered: two colluding nodes of one operator that evade the cluster rules (different
//! networks, machines and accounts) can agree on a wrong answer; the market re-runs only on
//! disagreement. See ARCHITECTURE.md, "What is trusted today".

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use gridbook_db::schema::{asks, nodes, users, verification_tasks};
use gridbook_db::status::{AskStatus, NodeStatus};
use gridbook_ledger::events;
use gridbook_ledger::ids::{AccountId, TransferId};
use gridbook_ledger::model::{AccountCode, NewAccount, NewTransfer};
use gridbook_ledger::store;
use gridbook_wire::node::{AssignmentMsg, WorkSpec};
use gridbook_wire::subjects;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Result;
use crate::verify;
use crate::jobs::{AssignmentRow, JobWork, ms_to_time};

/// A verifier must have sent a heartbeat within this many seconds.
pub const ONLINE_SECS: i64 = 60;

/// Whether results are re-run on other nodes, and how long a verifier has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskPolicy {
    pub enabled: bool,
    pub timeout_secs: u64,
}

impl Default for TaskPolicy {
    fn default() -> Self {
        TaskPolicy {
            enabled: true,
            timeout_secs: 120,
        }
    }
}

/// The verifier's pay: `ceil(price × sampled / items_per_unit)` minor units, the trade price of
/// the share of a unit it re-ran (pure).
pub fn task_pay(price: u64, sampled: u64, items_per_unit: u64) -> u64 {
    let per = items_per_unit.max(1) as u128;
    ((price as u128 * sampled as u128).div_ceil(per)).min(i64::MAX as u128) as u64
}

/// One of `candidates` (sorted by the caller), drawn from bytes 16..24 of the sample seed, which
/// no node can compute (pure).
pub fn choose(candidates: &[Uuid], seed: &[u8; 32]) -> Option<Uuid> {
    if candidates.is_empty() {
        return None;
    }
    let x = u64::from_be_bytes(seed[16..24].try_into().expect("8 bytes"));
    Some(candidates[(x % candidates.len() as u64) as usize])
}

/// The nodes that may re-run a sample of `first_node`'s assignment in `market`, sorted by id
/// (see the module doc).
pub fn eligible_verifiers(c: &mut PgConnection, market: &str, first_node: Uuid) -> Result<Vec<Uuid>> {
    let first_owner: Uuid = nodes::table.find(first_node).select(nodes::owner).first(c)?;
    // The first node's whole identity cluster, its owner included.
    let mut excluded = gridbook_db::identity::cluster_users(c, first_owner)?;
    excluded.push(first_owner);
    let online_since = Utc::now() - chrono::Duration::seconds(ONLINE_SECS);
    let mut ids: Vec<Uuid> = nodes::table
        .inner_join(asks::table.on(asks::node_id.eq(nodes::id)))
        .filter(nodes::status.eq(NodeStatus::Active))
        .filter(nodes::id.ne(first_node))
        .filter(nodes::owner.ne_all(&excluded))
        .filter(nodes::last_heartbeat_at.gt(online_since))
        .filter(asks::market.eq(market))
        .filter(asks::status.eq(AskStatus::Open))
        .select(nodes::id)
        .distinct()
        .load(c)?;
    ids.sort();
    // A verifier's own cluster must not be the first node's either (cluster_users above covers
    // links through any shared mark; the owner check covers accounts without marks).
    Ok(ids)
}

/// What a new verification task holds.
#[derive(Clone, Debug)]
pub struct NewTask {
    pub id: Uuid,
    pub verifier: Uuid,
    pub item_numbers: Vec<u64>,
    pub output_sha256: String,
    pub merkle_root: String,
    pub node_manifest: serde_json::Value,
    pub reported_failed: u64,
    pub seed_hex: String,
    pub price: u64,
    pub pay: u64,
    pub deadline_ms: u64,
}

/// In the caller's transaction: the assignment `assigned` → `verifying`, the task row, and the
/// verifier's AssignmentMsg in the outbox. `false`: the assignment was no longer `assigned`.
pub fn dispatch(c: &mut PgConnection, a: &AssignmentRow, job: &JobWork, t: &NewTask) -> Result<bool> {
    use gridbook_db::schema::job_assignments;
    use gridbook_db::status::AssignmentStatus;
    let n = diesel::update(
        job_assignments::table
            .find(a.id)
            .filter(job_assignments::status.eq(AssignmentStatus::Assigned)),
    )
    .set((
        job_assignments::status.eq(AssignmentStatus::Verifying),
        job_assignments::output_sha256.eq(&t.output_sha256),
        job_assignments::merkle_root.eq(&t.merkle_root),
        job_assignments::manifest.eq(&t.node_manifest),
        job_assignments::detail.eq(format!("verifying: the sample is re-run on another node (task {})", t.id)),
        job_assignments::updated_at.eq(Utc::now()),
    ))
    .execute(c)?;
    if n == 0 {
        return Ok(false);
    }
    let items: Vec<Option<i64>> = t.item_numbers.iter().map(|&i| Some(i as i64)).collect();
    diesel::insert_into(verification_tasks::table)
        .values((
            verification_tasks::id.eq(t.id),
            verification_tasks::assignment_id.eq(a.id),
            verification_tasks::job_id.eq(a.job_id),
            verification_tasks::market.eq(&a.market),
            verification_tasks::node_id.eq(t.verifier),
            verification_tasks::items.eq(&items),
            verification_tasks::output_sha256.eq(&t.output_sha256),
            verification_tasks::merkle_root.eq(&t.merkle_root),
            verification_tasks::node_manifest.eq(&t.node_manifest),
            verification_tasks::reported_failed.eq(t.reported_failed.min(i32::MAX as u64) as i32),
            verification_tasks::sample_seed.eq(&t.seed_hex),
            verification_tasks::price.eq(t.price.min(i64::MAX as u64) as i64),
            verification_tasks::pay.eq(t.pay.min(i64::MAX as u64) as i64),
            verification_tasks::status.eq("assigned"),
            verification_tasks::deadline.eq(ms_to_time(t.deadline_ms)),
        ))
        .execute(c)?;
    let first = t.item_numbers.first().copied().unwrap_or(0);
    let msg = AssignmentMsg {
        assignment_id: t.id,
        market: a.market.clone(),
        event_seq: 0,
        job_id: Some(a.job_id),
        node_id: t.verifier,
        order_id: t.id,
        // It fills no ask: the node's recorded ask stays as it is.
        qty: 0,
        price: t.price,
        bid_engine_order_id: 0,
        ask_engine_order_id: 0,
        work: Some(WorkSpec {
            input_sha256: job.input_sha256.clone(),
            item_start: first,
            item_count: t.item_numbers.len() as u64,
            unit_start: 0,
            deadline_ms: t.deadline_ms,
            model: None,
        }),
    };
    events::enqueue_outbox(c, &subjects::node_assign(&t.verifier.to_string()), &serde_json::to_value(&msg)?)?;
    Ok(true)
}

/// A verification task as the worker reads it back.
#[derive(Clone, Debug, PartialEq, Queryable, Selectable)]
#[diesel(table_name = verification_tasks)]
#[diesel(check_for_backend(diesel::pg::Pg))]
pub struct TaskRow {
    pub id: Uuid,
    pub assignment_id: Uuid,
    pub job_id: Uuid,
    pub market: String,
    pub node_id: Uuid,
    pub items: Vec<Option<i64>>,
    pub output_sha256: String,
    pub merkle_root: String,
    pub node_manifest: Option<serde_json::Value>,
    pub reported_failed: i32,
    pub sample_seed: String,
    pub price: i64,
    pub pay: i64,
    pub status: String,
    pub deadline: DateTime<Utc>,
    pub upload_sha256: Option<String>,
}

pub fn load_task(c: &mut PgConnection, id: Uuid) -> Result<Option<TaskRow>> {
    Ok(verification_tasks::table
        .find(id)
        .select(TaskRow::as_select())
        .first(c)
        .optional()?)
}

/// Open tasks past their deadline (at most `limit`).
pub fn expired_tasks(c: &mut PgConnection, limit: i64) -> Result<Vec<TaskRow>> {
    Ok(verification_tasks::table
        .filter(verification_tasks::status.eq("assigned"))
        .filter(verification_tasks::deadline.lt(Utc::now()))
        .order(verification_tasks::deadline.asc())
        .limit(limit)
        .select(TaskRow::as_select())
        .load(c)?)
}

/// How a task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskOutcome {
    Agreed,
    Disagreed,
    Failed,
    Expired,
}

impl TaskOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskOutcome::Agreed => "agreed",
            TaskOutcome::Disagreed => "disagreed",
            TaskOutcome::Failed => "failed",
            TaskOutcome::Expired => "expired",
        }
    }
}

/// What closing a task records.
#[derive(Clone, Debug)]
pub struct Close {
    pub outcome: TaskOutcome,
    pub market_rerun: bool,
    /// `Some(true)`: its answer was right (paid); `Some(false)`: the market proved it wrong;
    /// `None`: no answer to judge (failed, late).
    pub verifier_correct: Option<bool>,
    pub result_sha256: Option<String>,
    pub result_manifest: Option<serde_json::Value>,
    pub detail: String,
    /// A missing answer costs the verifier score (not when the market's sample changed).
    pub blame_verifier: bool,
}

/// In the caller's transaction: closes `t` (only if still `assigned`), pays a correct verifier
/// (see the module doc) and applies the verifier's reliability outcome. Returns what it paid;
/// `None` when the task was closed already.
pub fn close_task(c: &mut PgConnection, t: &TaskRow, close: &Close) -> Result<Option<i64>> {
    let status = match close.outcome {
        TaskOutcome::Expired => "expired",
        TaskOutcome::Failed => "failed",
        _ if close.verifier_correct == Some(false) => "failed",
        _ => "completed",
    };
    let n = diesel::update(
        verification_tasks::table
            .find(t.id)
            .filter(verification_tasks::status.eq("assigned")),
    )
    .set((
        verification_tasks::status.eq(status),
        verification_tasks::outcome.eq(close.outcome.as_str()),
        verification_tasks::market_rerun.eq(close.market_rerun),
        verification_tasks::verifier_correct.eq(close.verifier_correct),
        verification_tasks::result_sha256.eq(&close.result_sha256),
        verification_tasks::result_manifest.eq(&close.result_manifest),
        verification_tasks::detail.eq(&close.detail),
        verification_tasks::updated_at.eq(Utc::now()),
    ))
    .execute(c)?;
    if n == 0 {
        return Ok(None);
    }
    let mut paid = 0i64;
    match close.verifier_correct {
        Some(true) => {
            paid = pay_verifier(c, t)?;
        }
        Some(false) => {
            // Its answer is proven wrong by the market's own re-run: as for any node whose result
            // the market proves wrong, score 0, suspended, asks cancelled.
            gridbook_db::nodes::suspend(c, t.node_id)?;
            crate::jobs::set_reliability(c, t.node_id, crate::reliability::Outcome::ProvenCheat)?;
            let account = gridbook_db::nodes::owner_engine_account(c, t.node_id)?.unwrap_or_default();
            for (m, cmd) in gridbook_db::nodes::cancel_open_asks(c, t.node_id, None, account)? {
                events::enqueue_outbox(c, &subjects::market_cmd(&m), &serde_json::to_value(cmd)?)?;
            }
        }
        None if close.blame_verifier => {
            crate::jobs::set_reliability(c, t.node_id, crate::reliability::Outcome::Failed)?;
        }
        None => {}
    }
    Ok(Some(paid))
}

/// The transfer id of a task's pay.
pub fn pay_transfer_id(task: Uuid) -> TransferId {
    TransferId::derived(&["verification_pay", &task.to_string()])
}

/// Pays task `t`'s verifier `t.pay` from the protocol fee account of the assignment's ledger,
/// else the verification fund; 0 (recorded) when neither holds enough.
fn pay_verifier(c: &mut PgConnection, t: &TaskRow) -> Result<i64> {
    if t.pay <= 0 {
        return Ok(0);
    }
    let provider: Uuid = nodes::table
        .inner_join(users::table.on(users::id.eq(nodes::owner)))
        .filter(nodes::id.eq(t.node_id))
        .select(users::account_id)
        .first(c)?;
    let provider = AccountId(provider);
    let ledger = store::get_account(c, provider)?.ledger;
    let mut from = None;
    for code in [AccountCode::ProtocolFee, AccountCode::VerificationFund] {
        let id = AccountId::system(&ledger, code.as_str());
        store::create_account(c, &NewAccount::system(&ledger, code))?;
        // Lock the source row so two payments cannot both pass the balance check.
        diesel::sql_query("SELECT id FROM ledger_accounts WHERE id = $1 FOR UPDATE")
            .bind::<diesel::sql_types::Uuid, _>(id.0)
            .execute(c)?;
        if store::get_account(c, id)?.balances.available() >= t.pay as i128 {
            from = Some(id);
            break;
        }
    }
    let Some(from) = from else {
        tracing::warn!(task.id = %t.id, node.id = %t.node_id, pay = t.pay,
            "verifier not paid: the protocol fee account and the verification fund are short");
        return Ok(0);
    };
    let id = pay_transfer_id(t.id);
    store::create_transfer(
        c,
        &NewTransfer::posted(id, from, provider, t.pay, "verification_pay").with_reference(t.assignment_id),
    )?;
    diesel::update(verification_tasks::table.find(t.id))
        .set((verification_tasks::paid.eq(t.pay), verification_tasks::pay_transfer_id.eq(Some(id.0))))
        .execute(c)?;
    Ok(t.pay)
}

/// The verifying node's answer, as the worker read it.
pub enum Answer<'a> {
    /// Its output file, Merkle root and reported failures.
    Output {
        text: &'a str,
        merkle_root: &'a str,
        reported_failed: u64,
    },
    /// It failed, named another output than it uploaded, or did not answer in time: why.
    None(String),
}

/// What a task's answer decides (see the module doc).
#[derive(Debug)]
pub struct TaskDecision {
    /// The first node's verdict, with its evidence.
    pub verdict: std::result::Result<verify::Verified, verify::Failure>,
    pub outcome: TaskOutcome,
    pub market_rerun: bool,
    pub verifier_correct: Option<bool>,
    /// Whether the verifier is to blame for a missing answer (not when the market's sample
    /// changed under it, e.g. after a restart with a random secret).
    pub blame_verifier: bool,
    pub detail: String,
}

/// Decides an assignment under check from its verification task's answer (blocking: the
/// market's re-run on a disagreement). `committed`: the first node's result as the task holds
/// it; `task_items`: the items the task was given. `Err(Unavailable)`: the market cannot
/// re-run now (retry later).
pub fn decide(
    v: &mut verify::Verifier,
    committed: &verify::Committed<'_>,
    task_items: &[u64],
    answer: Answer<'_>,
    expired: bool,
    verifier_manifest: Option<&serde_json::Value>,
) -> std::result::Result<TaskDecision, verify::VerifyError> {
    use verify::{Failure, VerifyError, as_reference, judge};
    let kind = committed.kind;
    let prep = match v.prepare(committed) {
        Ok(p) => p,
        // It passed these checks before the task went out; a different verdict now means the
        // files changed under the market: retry rather than decide on it.
        Err(VerifyError::Mismatch(f)) => {
            return Err(VerifyError::Unavailable(format!("the committed result no longer checks out: {f}")));
        }
        Err(e) => return Err(e),
    };
    let first: Vec<&verify::OutputLine> = prep.pairs.iter().map(|(_, o)| o).collect();
    let same_sample = prep.item_numbers.as_slice() == task_items;
    // The verifier's lines for the sampled items, or why there are none.
    let lines: std::result::Result<Vec<verify::OutputLine>, String> = match answer {
        _ if !same_sample => Err("the sample drawn now differs from the task's (the verification secret changed)".into()),
        Answer::None(why) => Err(why),
        Answer::Output { text, merkle_root, reported_failed } => verify::parse_output(text)
            .and_then(|mut lines| {
                // The verifying node was served the sampled items by position, like any node.
                let served: Vec<verify::InputItem> = prep
                    .pairs
                    .iter()
                    .enumerate()
                    .map(|(p, (i, _))| (gridbook_wire::catalog::served_id(p as u64), i.1.clone()))
                    .collect();
                verify::check(&served, &lines, merkle_root, reported_failed)?;
                if lines.len() != served.len() {
                    return Err(format!("{} of the {} sampled items have no output", served.len() - lines.len(), served.len()));
                }
                for (line, (input, _)) in lines.iter_mut().zip(&prep.pairs) {
                    line.custom_id = input.0.clone();
                }
                Ok(lines)
            })
            .map_err(|why| format!("the verifying node's answer is unusable: {why}")),
    };
    if let Ok(lines) = &lines {
        let refs: Vec<std::result::Result<_, String>> = lines.iter().map(|l| Ok(as_reference(l))).collect();
        let figures = judge(kind, &first, &refs);
        if figures.iter().all(|f| f.ok) {
            let manifest = verifier_manifest.cloned().unwrap_or(serde_json::Value::Null);
            return Ok(TaskDecision {
                verdict: Ok(prep.verified(figures, manifest)),
                outcome: TaskOutcome::Agreed,
                market_rerun: false,
                verifier_correct: Some(true),
                blame_verifier: false,
                detail: "the verifying node's re-run agrees with every sampled item".into(),
            });
        }
    }
    // The market decides: its own re-run judges both nodes.
    let inputs: Vec<verify::InputItem> = prep.pairs.iter().map(|(i, _)| i.clone()).collect();
    let (ours, manifest) = v.reference_outputs(kind, committed.model, &inputs)?;
    let figures = judge(kind, &first, &ours);
    let verdict = match figures.iter().find(|f| !f.ok).and_then(|f| f.error.clone()) {
        None => Ok(prep.verified(figures, manifest.clone())),
        Some(why) => Err(Failure {
            check: gridbook_db::status::FailedCheck::SampleMismatch,
            why,
            evidence: verify::Evidence {
                seed: Some(prep.seed_hex()),
                sampled: prep.sampled(),
                items: figures,
                reference_manifest: Some(manifest.clone()),
                canaries: prep.canaries.clone(),
            },
        }),
    };
    let (outcome, verifier_correct, detail) = match &lines {
        Ok(lines) => {
            let theirs: Vec<&verify::OutputLine> = lines.iter().collect();
            let correct = judge(kind, &theirs, &ours).iter().all(|f| f.ok);
            let detail = if correct {
                "the nodes disagree; the market's re-run agrees with the verifying node"
            } else {
                "the nodes disagree; the market's re-run proves the verifying node wrong"
            };
            (TaskOutcome::Disagreed, Some(correct), detail.to_owned())
        }
        Err(why) => (
            if expired { TaskOutcome::Expired } else { TaskOutcome::Failed },
            None,
            format!("{why}; the market re-ran the sample itself"),
        ),
    };
    Ok(TaskDecision {
        verdict,
        outcome,
        market_rerun: true,
        verifier_correct,
        blame_verifier: same_sample,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pay_is_the_trade_price_of_the_share_of_a_unit_rounded_up() {
        assert_eq!(task_pay(100, 4, 1_000), 1);
        assert_eq!(task_pay(1_000, 4, 1_000), 4);
        assert_eq!(task_pay(1_001, 4, 1_000), 5);
        assert_eq!(task_pay(7, 1, 1), 7);
        assert_eq!(task_pay(0, 4, 1_000), 0);
        assert_eq!(task_pay(u64::MAX, u64::MAX, 1), i64::MAX as u64);
    }

    #[test]
    fn the_verifier_is_drawn_from_the_seed_among_all_candidates() {
        let c: Vec<Uuid> = (1..=3u128).map(Uuid::from_u128).collect();
        assert_eq!(choose(&[], &[0; 32]), None);
        let mut seen = std::collections::BTreeSet::new();
        for b in 0..=255u8 {
            let mut seed = [0u8; 32];
            seed[23] = b;
            let v = choose(&c, &seed).unwrap();
            assert!(c.contains(&v));
            seen.insert(v);
        }
        assert_eq!(seen.len(), 3, "every candidate can be drawn");
        // Bytes outside 16..24 do not move the draw (they seed the sample).
        let mut a = [7u8; 32];
        let b = a;
        a[0] = 1;
        assert_eq!(choose(&c, &a), choose(&c, &b));
    }
}
