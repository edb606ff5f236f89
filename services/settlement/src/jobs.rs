//! Jobs as the settlement worker moves them: a fill of a job's bid becomes a `job_assignments`
//! row (which input lines, which node, until when); a verified result completes it; when nothing
//! is open or running any more the job is finished (its output and error files assembled by
//! `results`).
//!
//! Units → lines: a market's unit covers `items_per_unit` input lines
//! (`gridbook_wire::catalog::items_of_units`).
//! Fills of one bid come in order and each takes the bid's next units: a job's bid may be
//! several engine orders on one escrow order (the API's first bid and re-bids of failed units,
//! `crate::redo`); each covers units from its `market_orders.unit_start` and hands them out in
//! order (`market_orders::take_units`).

use chrono::{DateTime, TimeZone, Utc};
use diesel::prelude::*;
use gridbook_wire::node::{AssignmentMsg, WorkSpec};
use uuid::Uuid;

use crate::error::{Result, SettlementError};
use crate::decide::AskChange;
use crate::schema::{asks, files, job_assignments, jobs, nodes};
use gridbook_db::rows::JobRow;
use gridbook_db::status::{AskStatus, AssignmentStatus, ChallengeTiming, JobStatus, JobTimeInForce, NodeStatus};

/// The longest a node may take for one assignment (from the fill) unless the job's deadline is
/// sooner; afterwards the assignment is voided and the studio refunded for it.
pub const ASSIGNMENT_TIMEOUT_MS: u64 = 60 * 60 * 1000;

/// What the worker needs of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobWork {
    pub id: Uuid,
    pub owner: Uuid,
    pub market: String,
    pub input_sha256: String,
    pub items: u64,
    pub items_per_unit: u64,
    pub units: u64,
    pub deadline_ms: u64,
    pub order_id: Uuid,
    pub status: JobStatus,
    pub cancel_requested: bool,
    /// The studio's private model, pinned at submission.
    pub model: Option<gridbook_wire::node::ModelRef>,
    /// How long the job's bid could wait (`ioc`: only what filled at once is wanted).
    pub time_in_force: JobTimeInForce,
    /// The engine's reason when it rejected the job's own bid.
    pub reject_reason: Option<String>,
}

/// The lines units `[unit_start, unit_start + units)` cover. `None` when the range lies outside
/// the job (a fill the job cannot have).
pub fn work_for_fill(
    job: &JobWork,
    unit_start: u64,
    units: u64,
    fill_time_ms: u64,
) -> Option<WorkSpec> {
    if units == 0 || unit_start.checked_add(units)? > job.units {
        return None;
    }
    let items =
        gridbook_wire::catalog::items_of_units(job.items_per_unit, unit_start, units, job.items)?;
    Some(WorkSpec {
        input_sha256: job.input_sha256.clone(),
        item_start: items.start,
        item_count: items.end - items.start,
        unit_start,
        deadline_ms: job
            .deadline_ms
            .min(fill_time_ms.saturating_add(ASSIGNMENT_TIMEOUT_MS)),
        model: job.model.clone(),
    })
}

/// Units of an assignment the studio pays for when `ok` of its `item_count` items verified:
/// proportional, rounded down (a unit is paid only when all its items are good on average).
pub fn verified_units(units: u64, item_count: u64, ok: u64) -> u64 {
    if item_count == 0 {
        return 0;
    }
    ((units as u128 * ok.min(item_count) as u128) / item_count as u128) as u64
}

/// The terminal state of a job with nothing open and nothing running.
///
/// `rejected`: the engine rejected the job's own bid (FOK unfillable, …), so nothing ran.
/// An IOC job asks only for what the book fills at once: it is `completed` when every item of the
/// units that filled (`filled_items`) completed, `rejected` when nothing filled.
pub fn final_status(
    items: u64,
    completed: u64,
    cancel_requested: bool,
    deadline_passed: bool,
    order: OrderKind,
) -> JobStatus {
    match order {
        OrderKind::Rejected if completed == 0 => return JobStatus::Rejected,
        OrderKind::Ioc { filled_items: 0 } if completed == 0 => return JobStatus::Rejected,
        OrderKind::Ioc { filled_items } if completed >= filled_items.min(items) => {
            return JobStatus::Completed;
        }
        _ => {}
    }
    if completed >= items {
        JobStatus::Completed
    } else if cancel_requested {
        JobStatus::Cancelled
    } else if deadline_passed {
        JobStatus::Expired
    } else {
        JobStatus::Failed
    }
}

/// What kind of bid a job's was, as [`final_status`] needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderKind {
    /// GTC (until the deadline), or FOK that filled: every item is wanted.
    Resting,
    /// The engine rejected the job's own bid.
    Rejected,
    /// IOC: only the items of the units that filled at once are wanted.
    Ioc { filled_items: u64 },
}

/// Records the engine's reason on the job whose own bid (`jobs.engine_order_id`) engine order
/// `bid` is (a re-bid's rejection is not the job's: it leaves the job as it is). Once.
pub fn record_reject_reason(
    conn: &mut PgConnection,
    bid: u64,
    reason: matching_core::RejectReason,
) -> Result<()> {
    let Ok(bid) = i64::try_from(bid) else {
        return Ok(());
    };
    let text = crate::decide::reject_reason_str(reason);
    let n = diesel::update(
        jobs::table
            .filter(jobs::engine_order_id.eq(bid))
            .filter(jobs::reject_reason.is_null()),
    )
    .set((jobs::reject_reason.eq(text), jobs::updated_at.eq(Utc::now())))
    .execute(conn)?;
    if n > 0 {
        tracing::info!(engine_order_id = bid, reason = text, "job's bid rejected by the engine");
    }
    Ok(())
}

/// How long after a job's deadline (when the engine expires its bid) units still open in its
/// escrow count as stuck: the engine's expiry (or a fill) never settled — its message was
/// dead-lettered — and the finisher releases them so the job can finish.
pub const STUCK_AFTER_DEADLINE_MS: u64 = 10 * 60 * 1000;

/// Whether a bid's open units are stuck at `now_ms` (see [`STUCK_AFTER_DEADLINE_MS`]).
pub fn open_units_are_stuck(deadline_ms: u64, now_ms: u64) -> bool {
    now_ms >= deadline_ms.saturating_add(STUCK_AFTER_DEADLINE_MS)
}

pub fn ms_to_time(ms: u64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms as i64)
        .single()
        .unwrap_or_else(Utc::now)
}

fn time_to_ms(t: DateTime<Utc>) -> u64 {
    t.timestamp_millis().max(0) as u64
}

fn job_from_row((r, input_sha256): (JobRow, String)) -> JobWork {
    JobWork {
        id: r.id,
        owner: r.owner,
        market: r.market,
        input_sha256,
        items: r.items.max(0) as u64,
        items_per_unit: r.items_per_unit.max(1) as u64,
        units: r.units.max(0) as u64,
        deadline_ms: time_to_ms(r.deadline),
        order_id: r.order_id,
        status: r.status,
        cancel_requested: r.cancel_requested_at.is_some(),
        model: r.model_id.zip(r.model_sha256).map(|(id, sha256)| gridbook_wire::node::ModelRef { id, sha256 }),
        time_in_force: r.time_in_force,
        reject_reason: r.reject_reason,
    }
}

/// The job, with its input file's sha256.
pub fn load_job(conn: &mut PgConnection, id: Uuid) -> Result<Option<JobWork>> {
    let row: Option<(JobRow, String)> = jobs::table
        .inner_join(files::table)
        .filter(jobs::id.eq(id))
        .select((JobRow::as_select(), files::sha256))
        .first(conn)
        .optional()?;
    Ok(row.map(job_from_row))
}

/// The job whose bid reserved escrow order `order_id`, if any.
pub fn job_of_order(conn: &mut PgConnection, order_id: Uuid) -> Result<Option<Uuid>> {
    Ok(jobs::table
        .filter(jobs::order_id.eq(order_id))
        .select(jobs::id)
        .first(conn)
        .optional()?)
}

/// Releases every unit still open on job `job`'s escrow order to the studio (one release per
/// job, so a repeat changes nothing); returns how many.
pub fn release_stuck_units(conn: &mut PgConnection, job: Uuid, order_id: Uuid) -> Result<i64> {
    conn.transaction(|c| {
        let open = gridbook_ledger::escrow::get_order(c, order_id)?.quantity_open;
        if open > 0 {
            let release_id = Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("gridbook/stuck/{job}").as_bytes());
            gridbook_ledger::escrow::release_unfilled(c, order_id, release_id, open)?;
        }
        Ok(open.max(0))
    })
}

/// Records a new assignment of `job` and moves a queued job to running. Idempotent by
/// assignment id.
pub fn insert_assignment(
    conn: &mut PgConnection,
    a: &AssignmentMsg,
    work: &WorkSpec,
    canaries: &[gridbook_wire::catalog::CanarySlot],
) -> Result<()> {
    let job_id = a
        .job_id
        .ok_or_else(|| SettlementError::Refused("assignment without a job".into()))?;
    let i32_of = |v: u64, what: &str| {
        i32::try_from(v).map_err(|_| SettlementError::Refused(format!("{what} exceeds i32")))
    };
    let i64_of = |v: u64, what: &str| {
        i64::try_from(v).map_err(|_| SettlementError::Refused(format!("{what} exceeds i64")))
    };
    diesel::insert_into(job_assignments::table)
        .values((
            job_assignments::id.eq(a.assignment_id),
            job_assignments::job_id.eq(job_id),
            job_assignments::node_id.eq(a.node_id),
            job_assignments::market.eq(&a.market),
            job_assignments::unit_start.eq(i64_of(work.unit_start, "unit_start")?),
            job_assignments::units.eq(i64_of(a.qty, "units")?),
            job_assignments::item_start.eq(i32_of(work.item_start, "item_start")?),
            job_assignments::item_count.eq(i32_of(work.item_count, "item_count")?),
            job_assignments::price.eq(i64_of(a.price, "price")?),
            job_assignments::status.eq(AssignmentStatus::Assigned),
            job_assignments::deadline.eq(ms_to_time(work.deadline_ms)),
            job_assignments::bid_engine_order_id.eq(Some(i64_of(a.bid_engine_order_id, "bid")?)),
            job_assignments::canaries.eq(serde_json::to_value(canaries)?),
        ))
        .on_conflict_do_nothing()
        .execute(conn)?;
    diesel::update(jobs::table.find(job_id).filter(jobs::status.eq(JobStatus::Queued)))
        .set((jobs::status.eq(JobStatus::Running), jobs::updated_at.eq(Utc::now())))
        .execute(conn)?;
    Ok(())
}

/// One assignment as the verifier needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssignmentRow {
    pub id: Uuid,
    pub job_id: Uuid,
    pub node_id: Uuid,
    pub market: String,
    pub units: u64,
    pub item_start: u64,
    pub item_count: u64,
    pub status: AssignmentStatus,
    pub output_sha256: Option<String>,
    /// What the node uploaded through its grant (`PUT /v1/assignments/{id}/output`): the only
    /// output its result may name.
    pub upload_sha256: Option<String>,
    /// The market's canaries among the lines the node was served (`crate::canary`).
    pub canaries: Vec<gridbook_wire::catalog::CanarySlot>,
}

type ARow = (Uuid, Uuid, Uuid, String, i64, i32, i32, AssignmentStatus, Option<String>, Option<String>, serde_json::Value);

fn assignment_from_row(r: ARow) -> Result<AssignmentRow> {
    Ok(AssignmentRow {
        id: r.0,
        job_id: r.1,
        node_id: r.2,
        market: r.3,
        units: r.4.max(0) as u64,
        item_start: r.5.max(0) as u64,
        item_count: r.6.max(0) as u64,
        status: r.7,
        output_sha256: r.8,
        upload_sha256: r.9,
        canaries: serde_json::from_value(r.10)?,
    })
}

const A_COLUMNS: (
    job_assignments::id,
    job_assignments::job_id,
    job_assignments::node_id,
    job_assignments::market,
    job_assignments::units,
    job_assignments::item_start,
    job_assignments::item_count,
    job_assignments::status,
    job_assignments::output_sha256,
    job_assignments::upload_sha256,
    job_assignments::canaries,
) = (
    job_assignments::id,
    job_assignments::job_id,
    job_assignments::node_id,
    job_assignments::market,
    job_assignments::units,
    job_assignments::item_start,
    job_assignments::item_count,
    job_assignments::status,
    job_assignments::output_sha256,
    job_assignments::upload_sha256,
    job_assignments::canaries,
);

pub fn load_assignment(conn: &mut PgConnection, id: Uuid) -> Result<Option<AssignmentRow>> {
    job_assignments::table
        .find(id)
        .select(A_COLUMNS)
        .first::<ARow>(conn)
        .optional()?
        .map(assignment_from_row)
        .transpose()
}

/// The assignments of a job, in item order.
pub fn assignments_of(conn: &mut PgConnection, job: Uuid) -> Result<Vec<AssignmentRow>> {
    job_assignments::table
        .filter(job_assignments::job_id.eq(job))
        .order(job_assignments::item_start.asc())
        .select(A_COLUMNS)
        .load::<ARow>(conn)?
        .into_iter()
        .map(assignment_from_row)
        .collect()
}

/// How a verified (or failed) assignment ends.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolution {
    pub completed: bool,
    pub items_ok: u64,
    pub items_failed: u64,
    pub output_sha256: Option<String>,
    pub merkle_root: Option<String>,
    pub manifest: Option<serde_json::Value>,
    pub detail: String,
}

/// Verified assignments that, with a reliability score of at least
/// `reliability::EXIT_SCORE`, take a new node off probation.
pub const PROBATION_PASSES: i64 = 10;

/// Moves node `node`'s reliability score by `outcome` (`reliability::update`, under the node's
/// row lock), then applies its teeth: off probation with `PROBATION_PASSES` verified
/// assignments, the exit score and a challenge timing of `fits` (a `too_slow` node trades within
/// the probation caps for good), back on probation below the demotion score (a suspended or
/// deleted node stays so).
pub fn set_reliability(
    conn: &mut PgConnection,
    node: Uuid,
    outcome: crate::reliability::Outcome,
) -> Result<()> {
    use crate::reliability;
    let (score, status, timing): (i32, NodeStatus, Option<ChallengeTiming>) = nodes::table
        .find(node)
        .select((nodes::reputation, nodes::status, nodes::challenge_timing))
        .for_update()
        .first(conn)?;
    let score = reliability::update(score, outcome);
    let passes: i64 = job_assignments::table
        .filter(job_assignments::node_id.eq(node))
        .filter(job_assignments::status.eq(AssignmentStatus::Completed))
        .count()
        .get_result(conn)?;
    let status = match status {
        NodeStatus::Probation
            if reliability::probation_exit(passes, score, PROBATION_PASSES, timing == Some(ChallengeTiming::Fits)) =>
        {
            NodeStatus::Active
        }
        NodeStatus::Active if reliability::demote(score) => NodeStatus::Probation,
        s => s,
    };
    diesel::update(nodes::table.find(node))
        .set((nodes::reputation.eq(score), nodes::status.eq(status)))
        .execute(conn)?;
    Ok(())
}

/// Applies an engine event's change to a provider's ask row. Monotone (the open quantity only
/// goes down, a closed ask stays closed), so a redelivered message changes nothing.
pub fn update_ask(conn: &mut PgConnection, ask: Uuid, change: AskChange) -> Result<()> {
    match change {
        AskChange::Left(left) => {
            let left = i64::try_from(left).unwrap_or(i64::MAX);
            diesel::update(asks::table.find(ask).filter(asks::qty.gt(left)))
                .set((asks::qty.eq(left), asks::updated_at.eq(Utc::now())))
                .execute(conn)?;
        }
        AskChange::Closed(reason) => {
            diesel::update(asks::table.find(ask).filter(asks::status.ne(AskStatus::Closed)))
                .set((
                    asks::status.eq(AskStatus::Closed),
                    asks::close_reason.eq(reason),
                    asks::updated_at.eq(Utc::now()),
                ))
                .execute(conn)?;
        }
    }
    Ok(())
}

/// Records heartbeats: `last_heartbeat_at = now()` for these nodes, and the minute they were
/// heard in (their uptime, `protocol::record_uptime`).
pub fn touch_nodes(conn: &mut PgConnection, ids: &[Uuid]) -> Result<usize> {
    let now = Utc::now();
    conn.transaction(|c| {
        crate::protocol::record_uptime(c, ids, now)?;
        Ok(diesel::update(nodes::table.filter(nodes::id.eq_any(ids)))
            .set(nodes::last_heartbeat_at.eq(Some(now)))
            .execute(c)?)
    })
}

/// Moves an `assigned` (or `verifying`) assignment to `completed` or `failed`, counts its items on the job and
/// adjusts the node's reputation. `false` when it was no longer `assigned` (nothing done).
/// `count_failed`: whether its unverified items count as failed on the job (not when they are
/// offered again: `crate::redo`).
pub fn resolve_assignment(
    conn: &mut PgConnection,
    id: Uuid,
    r: &Resolution,
    count_failed: bool,
) -> Result<bool> {
    let Some(a) = load_assignment(conn, id)? else {
        return Ok(false);
    };
    // `verifying`: its sample is out with another node (`crate::crosscheck`).
    let n = diesel::update(
        job_assignments::table
            .find(id)
            .filter(job_assignments::status.eq_any([AssignmentStatus::Assigned, AssignmentStatus::Verifying])),
    )
    .set((
        job_assignments::status.eq(if r.completed {
            AssignmentStatus::Completed
        } else {
            AssignmentStatus::Failed
        }),
        job_assignments::output_sha256.eq(&r.output_sha256),
        job_assignments::merkle_root.eq(&r.merkle_root),
        job_assignments::manifest.eq(&r.manifest),
        job_assignments::detail.eq(&r.detail),
        job_assignments::updated_at.eq(Utc::now()),
    ))
    .execute(conn)?;
    if n == 0 {
        return Ok(false);
    }
    let ok = r.items_ok.min(a.item_count) as i32;
    let failed = (a.item_count as i32) - ok;
    diesel::update(jobs::table.find(a.job_id))
        .set((
            jobs::items_completed.eq(jobs::items_completed + ok),
            jobs::items_failed.eq(jobs::items_failed + if count_failed { failed } else { 0 }),
            jobs::updated_at.eq(Utc::now()),
        ))
        .execute(conn)?;
    // The node's reliability score (`reliability`): a moving average of its outcomes.
    let outcome = if r.completed && failed == 0 {
        crate::reliability::Outcome::Passed
    } else {
        crate::reliability::Outcome::Failed
    };
    set_reliability(conn, a.node_id, outcome)?;
    Ok(true)
}

/// Assignments past their deadline that are still `assigned` (at most `limit`).
pub fn overdue_assignments(conn: &mut PgConnection, limit: i64) -> Result<Vec<AssignmentRow>> {
    job_assignments::table
        .filter(job_assignments::status.eq(AssignmentStatus::Assigned))
        .filter(job_assignments::deadline.lt(Utc::now()))
        .order(job_assignments::deadline.asc())
        .limit(limit)
        .select(A_COLUMNS)
        .load::<ARow>(conn)?
        .into_iter()
        .map(assignment_from_row)
        .collect()
}

/// Jobs that are not finished and have no running assignment (candidates to finish; the caller
/// checks that no unit of their bid is still open).
pub fn idle_unfinished_jobs(conn: &mut PgConnection, limit: i64) -> Result<Vec<JobWork>> {
    let rows: Vec<(JobRow, String)> = jobs::table
        .inner_join(files::table)
        .filter(jobs::status.ne_all(JobStatus::TERMINAL))
        .filter(diesel::dsl::not(diesel::dsl::exists(
            job_assignments::table
                .filter(job_assignments::job_id.eq(jobs::id))
                .filter(job_assignments::status.eq_any([AssignmentStatus::Assigned, AssignmentStatus::Verifying])),
        )))
        .order(jobs::updated_at.asc())
        .limit(limit)
        .select((JobRow::as_select(), files::sha256))
        .load(conn)?;
    Ok(rows.into_iter().map(job_from_row).collect())
}

pub fn set_status(conn: &mut PgConnection, job: Uuid, status: JobStatus) -> Result<()> {
    diesel::update(jobs::table.find(job))
        .set((jobs::status.eq(status), jobs::updated_at.eq(Utc::now())))
        .execute(conn)?;
    Ok(())
}

/// (items_completed, items_failed) of a job.
pub fn counts(conn: &mut PgConnection, job: Uuid) -> Result<(u64, u64)> {
    let (c, f): (i32, i32) = jobs::table
        .find(job)
        .select((jobs::items_completed, jobs::items_failed))
        .first(conn)?;
    Ok((c.max(0) as u64, f.max(0) as u64))
}

/// A file the worker produced (output or error file of a job).
pub struct NewFile<'a> {
    pub owner: Uuid,
    pub purpose: &'a str,
    pub sha256: &'a str,
    pub bytes: u64,
    pub lines: u64,
    pub filename: String,
}

/// Finishes a job: its files and its terminal status, once. `false` if it was already
/// finished, or if the job changed since the caller read `assignments` to build the files (a
/// fill added an assignment, or its bid still has open units): the caller tries again later.
///
/// The re-check runs under the job's row lock and reads the bid's open quantity before the
/// assignments: a fill takes open units and inserts its assignment in one transaction, so once
/// no unit is open every assignment is visible, and none can be added.
pub fn finish(
    conn: &mut PgConnection,
    job: Uuid,
    order_id: Uuid,
    assignments: &[AssignmentRow],
    status: JobStatus,
    output: Option<NewFile<'_>>,
    errors: Option<NewFile<'_>>,
) -> Result<bool> {
    conn.transaction(|c| {
        let current: JobStatus = jobs::table
            .find(job)
            .select(jobs::status)
            .for_update()
            .first(c)?;
        if current.is_terminal() {
            return Ok(false);
        }
        if gridbook_ledger::escrow::get_order(c, order_id)?.quantity_open > 0 {
            return Ok(false);
        }
        let now = assignments_of(c, job)?;
        let seen = |v: &[AssignmentRow]| -> Vec<(Uuid, AssignmentStatus)> {
            v.iter().map(|a| (a.id, a.status)).collect()
        };
        if seen(&now) != seen(assignments)
            || now.iter().any(|a| matches!(a.status, AssignmentStatus::Assigned | AssignmentStatus::Verifying))
        {
            return Ok(false);
        }
        let mut insert = |f: Option<NewFile<'_>>| -> Result<Option<Uuid>> {
            let Some(f) = f else { return Ok(None) };
            let id = Uuid::now_v7();
            diesel::insert_into(files::table)
                .values((
                    files::id.eq(id),
                    files::owner.eq(f.owner),
                    files::purpose.eq(f.purpose),
                    files::sha256.eq(f.sha256),
                    files::bytes.eq(f.bytes as i64),
                    files::lines.eq(f.lines.min(i32::MAX as u64) as i32),
                    files::filename.eq(Some(f.filename)),
                ))
                .execute(c)?;
            Ok(Some(id))
        };
        let out = insert(output)?;
        let err = insert(errors)?;
        diesel::update(jobs::table.find(job))
            .set((
                jobs::status.eq(status),
                jobs::output_file.eq(out),
                jobs::error_file.eq(err),
                jobs::updated_at.eq(Utc::now()),
                jobs::finished_at.eq(Some(Utc::now())),
            ))
            .execute(c)?;
        Ok(true)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(items: u64, ipu: u64) -> JobWork {
        JobWork {
            id: Uuid::nil(),
            owner: Uuid::nil(),
            market: "EMBED-MINILM-L6".into(),
            input_sha256: "ab".repeat(32),
            items,
            items_per_unit: ipu,
            units: items.div_ceil(ipu),
            deadline_ms: 10_000_000,
            order_id: Uuid::nil(),
            status: JobStatus::Queued,
            cancel_requested: false,
            model: None,
            time_in_force: JobTimeInForce::Gtc,
            reject_reason: None,
        }
    }

    #[test]
    fn fills_cover_the_lines_in_order_and_the_last_unit_is_partial() {
        let j = job(2_500, 1_000); // 3 units
        let a = work_for_fill(&j, 0, 2, 0).unwrap();
        assert_eq!((a.item_start, a.item_count), (0, 2_000));
        let b = work_for_fill(&j, 2, 1, 0).unwrap();
        assert_eq!((b.item_start, b.item_count), (2_000, 500));
        assert_eq!(work_for_fill(&j, 2, 2, 0), None, "beyond the job's units");
        assert_eq!(work_for_fill(&j, 0, 0, 0), None);
    }

    #[test]
    fn the_assignment_deadline_is_the_sooner_of_the_job_and_the_timeout() {
        let j = job(10, 1);
        assert_eq!(work_for_fill(&j, 0, 1, 0).unwrap().deadline_ms, ASSIGNMENT_TIMEOUT_MS);
        assert_eq!(
            work_for_fill(&j, 0, 1, 9_999_000).unwrap().deadline_ms,
            10_000_000
        );
    }

    #[test]
    fn pay_is_proportional_to_verified_items_rounded_down() {
        assert_eq!(verified_units(3, 2_500, 2_500), 3);
        assert_eq!(verified_units(3, 2_500, 2_499), 2);
        assert_eq!(verified_units(1, 500, 0), 0);
        assert_eq!(verified_units(5, 0, 0), 0);
    }

    #[test]
    fn open_units_count_as_stuck_only_well_after_the_deadline() {
        assert!(!open_units_are_stuck(1_000, 1_000));
        assert!(!open_units_are_stuck(1_000, 1_000 + STUCK_AFTER_DEADLINE_MS - 1));
        assert!(open_units_are_stuck(1_000, 1_000 + STUCK_AFTER_DEADLINE_MS));
        assert!(!open_units_are_stuck(u64::MAX, u64::MAX - 1));
    }

    #[test]
    fn final_status_prefers_completed_then_cancelled_then_expired() {
        let r = OrderKind::Resting;
        assert_eq!(final_status(10, 10, true, true, r), JobStatus::Completed);
        assert_eq!(final_status(10, 9, true, true, r), JobStatus::Cancelled);
        assert_eq!(final_status(10, 0, false, true, r), JobStatus::Expired);
        assert_eq!(final_status(10, 3, false, false, r), JobStatus::Failed);
        assert_eq!(final_status(10, 0, false, false, OrderKind::Rejected), JobStatus::Rejected);
        let ioc = |filled_items| OrderKind::Ioc { filled_items };
        assert_eq!(final_status(10, 4, false, false, ioc(4)), JobStatus::Completed);
        assert_eq!(final_status(10, 3, false, false, ioc(4)), JobStatus::Failed);
        assert_eq!(final_status(10, 0, false, false, ioc(0)), JobStatus::Rejected);
        assert_eq!(final_status(10, 10, false, false, ioc(10)), JobStatus::Completed);
    }
}
