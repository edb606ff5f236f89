//! Failed work is redone, not refunded (issue 12), and every verification leaves a record.
//!
//! When an assignment fails (a check of its result failed, the node reported it could not run
//! it, or it is overdue), ONE transaction — the one that marks it `failed` — does all of this:
//!
//! - **the node**: its open asks are cancelled (engine Cancels queued in the outbox *before* the
//!   re-bid's Place, so the engine removes them first and the re-bid cannot land on them). A
//!   failure its own result proves (wrong output, bad hashes, a Merkle root that does not match,
//!   a sampled item that disagrees: `FailedCheck::is_proven_cheat`) also **suspends** it: its
//!   credentials are revoked, so it can no longer connect, get a grant for any assignment (the
//!   API re-checks the node's status on every grant use) or post an ask. Its
//!   reliability score moves towards 0 either way (`reliability`; a proven cheat sets it to 0).
//! - **the units** ([`fate`]): offered again as a new bid of the same job from the same escrow
//!   order (`escrow::reoffer`: the holds voided, the units back in the open reservation; a new
//!   engine order id from `market_order_ids`, a `market_orders` re-bid row for the same escrow
//!   order covering the assignment's units, the Place in the outbox) at the **job's limit
//!   price** with the **job's deadline** — unless the job's cancel was requested, fewer than
//!   [`REOFFER_MIN_REMAINING_MS`] are left before its deadline, or these units have been offered
//!   again `max_reoffers` times already: then they are refunded as before (`escrow::void`). A
//!   re-offer the studio's balance cannot cover (the price improvement of the failed fill was
//!   released to it, and is reserved again) is refunded too.
//! - **the record**: an `assignment_verifications` row (outcome, which check failed, the seed,
//!   the sampled ids, per item both sides' hashes and the figure, both manifests, what became of
//!   the units and of the node). A failed row is the dispute record.
//!
//! A passed assignment writes its row too (the seed, the sample and the figures): studios and
//! providers read both through the API (`GET /v1/assignments/{id}/verification`).
//!
//! The pay of a passed assignment is withheld for the node's next `withhold_assignments`
//! verified assignments, and a proven cheat forfeits what the node still has withheld
//! ([`crate::withhold`]).

use diesel::prelude::*;
use gridbook_db::market_orders::{self as orders, MarketOrder};
use gridbook_db::nodes;
use gridbook_db::status::{FailedCheck, NodeAction, UnitsRemedy, VerificationOutcome};
use gridbook_ledger::{LedgerError, escrow, events};
use gridbook_wire::subjects;
use matching_core::Side;
use serde_json::Value;
use tracing::{info, warn};
use uuid::Uuid;

use crate::error::{Result, SettlementError};
use crate::jobs::{self, AssignmentRow, Resolution};
use crate::schema::{assignment_verifications, job_assignments, jobs as jobs_t, users};
use crate::verify::{Evidence, ItemFigure};

/// Times the units of one assignment may be offered again by default (`max_reoffers`).
pub const DEFAULT_MAX_REOFFERS: u32 = 2;
/// A re-bid needs at least this long before the job's deadline to be matched and run; with
/// less, failed units are refunded.
pub const REOFFER_MIN_REMAINING_MS: u64 = 60_000;

/// How failed work is redone and how long verified pay is withheld (settings `max_reoffers`,
/// `withhold_assignments`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedoPolicy {
    /// How many times the same units may go back to the book (0: never, refund at once).
    pub max_reoffers: u32,
    /// The withholding window W ([`crate::withhold`]): a verified assignment's pay is released
    /// after W more verified assignments of the node (0: paid at once).
    pub withhold_assignments: u32,
}

impl Default for RedoPolicy {
    fn default() -> Self {
        RedoPolicy {
            max_reoffers: DEFAULT_MAX_REOFFERS,
            withhold_assignments: crate::withhold::DEFAULT_WITHHOLD_ASSIGNMENTS,
        }
    }
}

/// What becomes of a failed assignment's units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Offered again, for the `reoffer`-th time (1 = the first re-bid).
    Reoffer { reoffer: u32 },
    Refund(RefundReason),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefundReason {
    /// The studio asked to cancel the job.
    Cancelled,
    /// Too little time is left before the job's deadline (or it has passed).
    DeadlineNear,
    /// These units were offered again `max_reoffers` times already.
    MaxReoffers,
}

impl RefundReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundReason::Cancelled => "the job's cancel was requested",
            RefundReason::DeadlineNear => "too little time is left before the job's deadline",
            RefundReason::MaxReoffers => "these units were already offered again max_reoffers times",
        }
    }
}

/// The fate of a failed assignment whose units had been offered again `reoffers_so_far` times
/// (0: they came from the job's first bid), at `now_ms`.
pub fn fate(
    policy: RedoPolicy,
    reoffers_so_far: u32,
    cancel_requested: bool,
    deadline_ms: u64,
    now_ms: u64,
) -> Fate {
    if cancel_requested {
        Fate::Refund(RefundReason::Cancelled)
    } else if now_ms.saturating_add(REOFFER_MIN_REMAINING_MS) > deadline_ms {
        Fate::Refund(RefundReason::DeadlineNear)
    } else if reoffers_so_far >= policy.max_reoffers {
        Fate::Refund(RefundReason::MaxReoffers)
    } else {
        Fate::Reoffer {
            reoffer: reoffers_so_far + 1,
        }
    }
}

/// What a failure does to the node that failed.
pub fn node_action(check: FailedCheck) -> NodeAction {
    if check.is_proven_cheat() {
        NodeAction::Suspended
    } else {
        NodeAction::AsksCancelled
    }
}

/// One verification as recorded (`assignment_verifications`).
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// `None`: passed.
    pub failed_check: Option<FailedCheck>,
    pub detail: String,
    pub evidence: Evidence,
    pub output_sha256: Option<String>,
    pub merkle_root: Option<String>,
    pub node_manifest: Option<Value>,
    pub verified_items: u64,
    /// Who re-ran the sample.
    pub rerun: RerunInfo,
}

/// Who re-ran an assignment's sample (`assignment_verifications.rerun_by` and its companions).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RerunInfo {
    pub by: RerunBy,
    /// The verifying node and its task, when another node re-ran it.
    pub verifier_node: Option<Uuid>,
    pub task: Option<Uuid>,
    /// Why the market re-ran it itself.
    pub note: Option<String>,
}

/// `assignment_verifications.rerun_by`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RerunBy {
    /// Another provider's node (`crate::crosscheck`).
    Node,
    /// The market's own runtime.
    #[default]
    Market,
    /// Nobody: a check before the sample failed (or the node failed, or was late).
    None,
}

impl RerunBy {
    pub fn as_str(self) -> &'static str {
        match self {
            RerunBy::Node => "node",
            RerunBy::Market => "market",
            RerunBy::None => "none",
        }
    }
}

/// What settling an assignment did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    pub remedy: UnitsRemedy,
    pub reoffer_engine_order_id: Option<u64>,
    pub node_action: NodeAction,
}

/// Settles a verified assignment in the caller's transaction: `completed`, the verified units
/// paid (`escrow::complete`; none verified: voided) and that pay withheld for the node's next
/// `withhold_assignments` verified assignments (releasing the payouts whose window passed,
/// [`crate::withhold::on_pass`]), its record. `None`: it was no longer `assigned`.
pub fn settle_pass(
    c: &mut PgConnection,
    a: &AssignmentRow,
    res: &Resolution,
    rec: &Record,
    policy: RedoPolicy,
) -> Result<Option<Settled>> {
    if !jobs::resolve_assignment(c, a.id, res, true)? {
        return Ok(None);
    }
    let paid = jobs::verified_units(a.units, a.item_count, res.items_ok);
    if paid > 0 {
        escrow::complete(c, a.id, paid as i64)?;
        let w = crate::withhold::on_pass(c, a.node_id, a.id, policy.withhold_assignments)?;
        if w.withheld > 0 || !w.released.is_empty() {
            info!(assignment.id = %a.id, node.id = %a.node_id, withheld = w.withheld,
                released = w.released.iter().map(|r| r.1).sum::<i64>(), "pay withheld");
        }
    } else {
        escrow::void(c, a.id)?;
    }
    let settled = Settled {
        remedy: if paid > 0 {
            UnitsRemedy::Paid
        } else {
            UnitsRemedy::Refunded
        },
        reoffer_engine_order_id: None,
        node_action: NodeAction::Nothing,
    };
    insert_record(c, a, rec, &settled)?;
    Ok(Some(settled))
}

/// Settles a failed assignment in the caller's transaction (see the module doc): `failed`, the
/// node's asks cancelled (and the node suspended for a proven cheat), the units re-offered or
/// refunded ([`fate`]), its record. `None`: it was no longer `assigned`.
pub fn settle_failure(
    c: &mut PgConnection,
    a: &AssignmentRow,
    res: &Resolution,
    rec: &Record,
    policy: RedoPolicy,
    now_ms: u64,
) -> Result<Option<Settled>> {
    let check = rec
        .failed_check
        .ok_or_else(|| SettlementError::Refused("a failure names its check".into()))?;
    // The job's row lock orders this against the API's cancel (which locks it too and cancels
    // the re-bids it sees).
    let (owner, market, order_id, deadline, cancel_requested): (
        Uuid,
        String,
        Uuid,
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
    ) = jobs_t::table
        .find(a.job_id)
        .select((
            jobs_t::owner,
            jobs_t::market,
            jobs_t::order_id,
            jobs_t::deadline,
            jobs_t::cancel_requested_at,
        ))
        .for_update()
        .first(c)?;
    let (unit_start, bid): (i64, Option<i64>) = job_assignments::table
        .find(a.id)
        .select((job_assignments::unit_start, job_assignments::bid_engine_order_id))
        .first(c)?;
    let so_far = match bid {
        Some(b) => orders::reoffer_count(c, b.max(0) as u64)?,
        None => 0,
    };
    let deadline_ms = deadline.timestamp_millis().max(0) as u64;
    let mut fate = fate(policy, so_far, cancel_requested.is_some(), deadline_ms, now_ms);
    if !jobs::resolve_assignment(c, a.id, res, matches!(fate, Fate::Refund(_)))? {
        return Ok(None);
    }

    // The node: its open asks go first (in the outbox before the re-bid), for a proven cheat
    // the node itself.
    let action = node_action(check);
    let account = nodes::owner_engine_account(c, a.node_id)?.unwrap_or_default();
    let only_market = match action {
        NodeAction::Suspended => {
            nodes::suspend(c, a.node_id)?;
            // A proven cheat's reliability score is 0 at once.
            jobs::set_reliability(c, a.node_id, crate::reliability::Outcome::ProvenCheat)?;
            None
        }
        _ => Some(market.as_str()),
    };
    for (m, cmd) in nodes::cancel_open_asks(c, a.node_id, only_market, account)? {
        events::enqueue_outbox(c, &subjects::market_cmd(&m), &serde_json::to_value(cmd)?)?;
    }

    // The units.
    let mut rebid = None;
    if let Fate::Reoffer { reoffer } = fate {
        match c.transaction(|c| escrow::reoffer(c, a.id)) {
            Ok(order) => {
                let engine_order_id = orders::next_engine_order_id(c)?;
                orders::insert_rebid(
                    c,
                    &MarketOrder {
                        engine_order_id,
                        market: market.clone(),
                        side: Side::Bid,
                        order_id,
                        account_id: order.terms.studio_account.0,
                        node_id: None,
                        job_id: Some(a.job_id),
                        accepted_seq: None,
                    },
                    unit_start.max(0) as u64,
                    reoffer,
                    a.id,
                )?;
                let studio_engine_account: i64 = users::table
                    .find(owner)
                    .select(users::engine_account)
                    .first(c)?;
                let cmd = orders::place_bid_command(
                    engine_order_id,
                    studio_engine_account.max(0) as u64,
                    order.terms.limit_price.max(0) as u64,
                    a.units,
                    deadline_ms,
                );
                events::enqueue_outbox(c, &subjects::market_cmd(&market), &serde_json::to_value(cmd)?)?;
                info!(assignment.id = %a.id, job.id = %a.job_id, engine_order_id, reoffer,
                    units = a.units, "failed units offered again on the book");
                rebid = Some(engine_order_id);
            }
            Err(e) if is_transient(&e) => return Err(e.into()),
            Err(e) => {
                warn!(assignment.id = %a.id, job.id = %a.job_id, error = %e,
                    "failed units cannot be offered again (the studio's balance does not cover the released improvement): refunded");
                fate = Fate::Refund(RefundReason::MaxReoffers);
                let failed = a.item_count.saturating_sub(res.items_ok.min(a.item_count)) as i32;
                diesel::update(jobs_t::table.find(a.job_id))
                    .set(jobs_t::items_failed.eq(jobs_t::items_failed + failed))
                    .execute(c)?;
            }
        }
    }
    if rebid.is_none() {
        escrow::void(c, a.id)?;
        if let Fate::Refund(why) = fate {
            info!(assignment.id = %a.id, job.id = %a.job_id, why = why.as_str(), "failed units refunded");
        }
    }
    // A proven cheat forfeits the node's withheld pay to the verification fund (after the
    // escrow's movements, so the provider's account is locked before the node's window, in
    // the order a pass takes them).
    if action == NodeAction::Suspended {
        let lost = crate::withhold::forfeit(c, a.node_id, a.id)?;
        if lost > 0 {
            info!(assignment.id = %a.id, node.id = %a.node_id, forfeited = lost,
                "withheld pay forfeited to the verification fund");
        }
    }
    let settled = Settled {
        remedy: if rebid.is_some() {
            UnitsRemedy::Reoffered
        } else {
            UnitsRemedy::Refunded
        },
        reoffer_engine_order_id: rebid,
        node_action: action,
    };
    insert_record(c, a, rec, &settled)?;
    Ok(Some(settled))
}

fn is_transient(e: &LedgerError) -> bool {
    crate::error::is_transient_ledger(e)
}

fn insert_record(c: &mut PgConnection, a: &AssignmentRow, rec: &Record, s: &Settled) -> Result<()> {
    let items: Vec<&ItemFigure> = rec.evidence.items.iter().collect();
    diesel::insert_into(assignment_verifications::table)
        .values((
            assignment_verifications::assignment_id.eq(a.id),
            assignment_verifications::job_id.eq(a.job_id),
            assignment_verifications::node_id.eq(a.node_id),
            assignment_verifications::market.eq(&a.market),
            assignment_verifications::outcome.eq(if rec.failed_check.is_some() {
                VerificationOutcome::Failed
            } else {
                VerificationOutcome::Passed
            }),
            assignment_verifications::failed_check.eq(rec.failed_check),
            assignment_verifications::detail.eq(&rec.detail),
            assignment_verifications::sample_seed.eq(&rec.evidence.seed),
            assignment_verifications::sampled_items.eq(serde_json::to_value(&rec.evidence.sampled)?),
            assignment_verifications::item_figures.eq(serde_json::to_value(items)?),
            assignment_verifications::output_sha256.eq(&rec.output_sha256),
            assignment_verifications::merkle_root.eq(&rec.merkle_root),
            assignment_verifications::node_manifest.eq(&rec.node_manifest),
            assignment_verifications::reference_manifest.eq(&rec.evidence.reference_manifest),
            assignment_verifications::verified_items.eq(rec.verified_items.min(i32::MAX as u64) as i32),
            assignment_verifications::remedy.eq(s.remedy),
            assignment_verifications::reoffer_engine_order_id
                .eq(s.reoffer_engine_order_id.map(|e| e as i64)),
            assignment_verifications::node_action.eq(s.node_action),
            assignment_verifications::rerun_by.eq(rec.rerun.by.as_str()),
            assignment_verifications::verifier_node_id.eq(rec.rerun.verifier_node),
            assignment_verifications::verification_task_id.eq(rec.rerun.task),
            assignment_verifications::rerun_note.eq(&rec.rerun.note),
            assignment_verifications::canary_figures.eq(serde_json::to_value(&rec.evidence.canaries)?),
        ))
        .on_conflict_do_nothing()
        .execute(c)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RedoPolicy = RedoPolicy { max_reoffers: 2, withhold_assignments: 6 };
    const HOUR: u64 = 3_600_000;

    #[test]
    fn failed_units_go_back_to_the_book_at_most_max_reoffers_times() {
        assert_eq!(fate(P, 0, false, HOUR, 0), Fate::Reoffer { reoffer: 1 });
        assert_eq!(fate(P, 1, false, HOUR, 0), Fate::Reoffer { reoffer: 2 });
        assert_eq!(fate(P, 2, false, HOUR, 0), Fate::Refund(RefundReason::MaxReoffers));
        let never = RedoPolicy { max_reoffers: 0, ..P };
        assert_eq!(fate(never, 0, false, HOUR, 0), Fate::Refund(RefundReason::MaxReoffers));
    }

    #[test]
    fn a_cancelled_job_or_a_near_deadline_refunds() {
        assert_eq!(fate(P, 0, true, HOUR, 0), Fate::Refund(RefundReason::Cancelled));
        let deadline = 10 * HOUR;
        assert_eq!(
            fate(P, 0, false, deadline, deadline - REOFFER_MIN_REMAINING_MS),
            Fate::Reoffer { reoffer: 1 }
        );
        assert_eq!(
            fate(P, 0, false, deadline, deadline - REOFFER_MIN_REMAINING_MS + 1),
            Fate::Refund(RefundReason::DeadlineNear)
        );
        assert_eq!(fate(P, 0, false, deadline, deadline + 1), Fate::Refund(RefundReason::DeadlineNear));
    }

    #[test]
    fn a_proven_cheat_suspends_the_node_and_a_missed_result_cancels_its_asks() {
        for check in FailedCheck::ALL {
            let want = match check {
                FailedCheck::NodeFailed | FailedCheck::Overdue => NodeAction::AsksCancelled,
                _ => NodeAction::Suspended,
            };
            assert_eq!(node_action(*check), want, "{check}");
        }
    }
}
