//! The database edge: one event message → one PostgreSQL transaction holding, for every event
//! with a ledger effect, its `processed_events` row, the escrow effect and the outbox message —
//! or, for an event it refuses, its `processed_events` row, its dead letter and the release of
//! the escrow it took (`decide::Remedy`), so nothing reserved is left open by it.

use std::collections::{BTreeMap, BTreeSet};

use diesel::prelude::*;
use gridbook_ledger::{LedgerError, escrow, events};
use gridbook_wire::catalog::MarketKind;
use gridbook_wire::{market::EventFrame, subjects};
use matching_core::Event;
use tracing::debug;

use crate::dead_letter::{self, DeadLetter, Escrow, Source};
use crate::decide::{self, DeadLetterReason, Effect, Refusal, Remedy};
use crate::jobs;
use crate::error::{Result, SettlementError};
use gridbook_db::market_orders::{self as orders, MarketOrder};

/// What one message did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Events applied to the ledger for the first time.
    pub applied: usize,
    /// Events already processed (a redelivery or a republished message).
    pub duplicates: usize,
    /// Events that named our orders but could not settle (each recorded as a dead letter).
    pub refused: usize,
    /// Assignments created (and queued to their node).
    pub assignments: usize,
}

/// Settles the events of one message (from `source`) in one transaction (committed when this
/// returns `Ok`). Errors are transient (database, connection): the caller retries the whole
/// message.
pub fn settle_message(
    conn: &mut PgConnection,
    consumer: &str,
    source: &Source,
    frames: &[EventFrame],
    canaries: &crate::canary::CanaryPolicy,
) -> Result<Outcome> {
    conn.transaction(|c| {
        let mut views = load_views(c, frames)?;
        let mut out = Outcome::default();
        for frame in frames {
            // A token market has no workload, nodes or assignments: delivery versus payment
            // (`crate::token`). A compute market's events go through `decide` below.
            match gridbook_wire::catalog::kind(&frame.market) {
                Some(MarketKind::Token(pair)) => {
                    crate::token::settle_frame(c, consumer, source, frame, &pair, &mut out)?;
                    continue;
                }
                Some(MarketKind::Compute(_)) | None => {}
            }
            let empty = &mut BTreeMap::new();
            let view = views.get_mut(&frame.market).unwrap_or(empty);
            for ev in &frame.events {
                if let Some((ask, change)) = decide::ask_change(ev, view) {
                    jobs::update_ask(c, ask, change)?;
                }
                let Some(effect) = decide::decide(&frame.market, ev, view) else {
                    continue;
                };
                match &effect {
                    Effect::Skip { why } => {
                        debug!(market = %frame.market, event.seq = ev.seq, why, "event skipped");
                        continue;
                    }
                    Effect::MarkAccepted { engine_order_id } => {
                        orders::mark_accepted(c, *engine_order_id, ev.seq)?;
                        if let Some(o) = view.get_mut(engine_order_id) {
                            o.accepted_seq = Some(ev.seq);
                        }
                        continue;
                    }
                    _ => {}
                }
                let event_id = decide::event_id(&frame.market, ev.seq);
                if !events::record_processed_event(c, consumer, &event_id)? {
                    out.duplicates += 1;
                    continue;
                }
                let refusal = match effect {
                    Effect::Refuse(r) => r,
                    effect => {
                        // A savepoint per event: a refused event leaves no partial effect behind.
                        match c.transaction(|c| apply(c, &effect, frame.time, canaries)) {
                            Ok(assigned) => {
                                out.applied += 1;
                                out.assignments += usize::from(assigned);
                                continue;
                            }
                            Err(e) if e.is_transient() => return Err(e),
                            Err(e) => Refusal {
                                reason: reason_of(&e),
                                why: e.to_string(),
                                remedy: decide::remedy_after_failure(&frame.market, ev.seq, &effect),
                            },
                        }
                    }
                };
                out.refused += 1;
                dead_letter_event(c, consumer, source, &event_id, &frame.market, ev, refusal)?;
            }
        }
        Ok(out)
    })
}

/// The dead-letter reason of an effect that failed to apply (not transiently).
fn reason_of(e: &SettlementError) -> DeadLetterReason {
    match e {
        SettlementError::Unsettleable { reason, .. } => *reason,
        SettlementError::Ledger(l) => match l.root() {
            LedgerError::OrderNotFound(_) => DeadLetterReason::NoEscrow,
            _ => DeadLetterReason::LedgerRefused,
        },
        SettlementError::Database(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::ForeignKeyViolation,
            _,
        )) => DeadLetterReason::NoEscrow,
        _ => DeadLetterReason::InvalidEvent,
    }
}

/// Gives back the escrow a refused event took ([`Remedy`]) and records its dead letter, in the
/// caller's transaction (the one holding the event's `processed_events` row).
fn dead_letter_event(
    c: &mut PgConnection,
    consumer: &str,
    source: &Source,
    event_id: &str,
    market: &str,
    ev: &Event,
    refusal: Refusal,
) -> Result<()> {
    let mut detail = refusal.why;
    let escrow = match c.transaction(|c| give_back(c, &refusal.remedy)) {
        Ok(e) => e,
        Err(e) if e.is_transient() => return Err(e),
        Err(e) => {
            // Only a bid without an escrow order gets here: nothing of ours is reserved.
            detail.push_str(&format!("; escrow not released: {e}"));
            Escrow {
                order_id: refusal.remedy.order_id(),
                ..Escrow::default()
            }
        }
    };
    dead_letter::insert(
        c,
        consumer,
        event_id,
        &DeadLetter {
            source: source.clone(),
            event_seq: Some(ev.seq),
            market: Some(market.to_owned()),
            reason: refusal.reason,
            detail,
            payload: serde_json::to_vec(ev)?,
            escrow,
        },
    )
}

/// Units engine order `bid` of escrow order `order` still holds open: a re-bid its failed
/// assignment's units less what it gave out, the first bid the order's quantity less what it
/// gave out (never more than the order has open). An order not in `market_orders` has none of
/// its own: everything open.
fn bid_open(c: &mut PgConnection, order: &gridbook_ledger::settlement::OrderState, bid: u64) -> Result<i64> {
    let left = match orders::rebid_units_left(c, bid)? {
        Some(left) => i64::try_from(left).unwrap_or(i64::MAX),
        None => match orders::get(c, bid)? {
            Some(_) => order.terms.quantity - orders::units_taken(c, bid)? as i64,
            None => order.quantity_open,
        },
    };
    Ok(left.clamp(0, order.quantity_open.max(0)))
}

/// Applies a remedy: releases its units (never more than its engine order holds open) and says
/// which ones. The released units are that engine order's next ones (`market_orders::take_units`),
/// as a fill would have taken them, so later fills take the units after them.
fn give_back(c: &mut PgConnection, remedy: &Remedy) -> Result<Escrow> {
    let (order_id, bid, release_id) = match *remedy {
        Remedy::Untouched => return Ok(Escrow::default()),
        Remedy::ReleaseUnits {
            order_id,
            bid,
            release_id,
            ..
        }
        | Remedy::ReleaseAllOpen {
            order_id,
            bid,
            release_id,
        } => (order_id, bid, release_id),
    };
    let order = escrow::get_order(c, order_id)?;
    let units = remedy.units(bid_open(c, &order, bid)?);
    let mut unit_start = 0;
    if units > 0 {
        unit_start = orders::take_units(c, bid, units as u64)?;
        escrow::release_unfilled(c, order_id, release_id, units)?;
    }
    Ok(Escrow {
        order_id: Some(order_id),
        job_id: jobs::job_of_order(c, order_id)?,
        unit_start: (units > 0).then_some(unit_start),
        units: units as u64,
    })
}

/// The `market_orders` rows the message's events name, per market.
fn load_views(
    c: &mut PgConnection,
    frames: &[EventFrame],
) -> Result<BTreeMap<String, BTreeMap<u64, MarketOrder>>> {
    let mut ids: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for f in frames.iter().filter(|f| gridbook_wire::catalog::token(&f.market).is_none()) {
        let set = ids.entry(f.market.as_str()).or_default();
        for ev in &f.events {
            set.extend(decide::order_ids(ev));
        }
    }
    let mut views = BTreeMap::new();
    for (market, ids) in ids {
        let ids: Vec<u64> = ids.into_iter().collect();
        let rows = orders::load(c, market, &ids)?;
        views.insert(
            market.to_owned(),
            rows.into_iter().map(|o| (o.engine_order_id, o)).collect(),
        );
    }
    Ok(views)
}

/// Applies one ledger effect; `true` when it created an assignment. `time`: the command's time
/// (ms), from which an assignment's deadline is counted.
fn apply(c: &mut PgConnection, effect: &Effect, time: u64, canaries: &crate::canary::CanaryPolicy) -> Result<bool> {
    match effect {
        Effect::Skip { .. } | Effect::MarkAccepted { .. } => Ok(false),
        Effect::Refuse(r) => Err(SettlementError::Unsettleable {
            reason: r.reason,
            why: r.why.clone(),
        }),
        Effect::Assign {
            order_id,
            provider,
            assignment: a,
        } => {
            // A job's fill takes the bid's next units (see `jobs`): where they start is what
            // was filled before this fill.
            let mut a = a.clone();
            if let Some(job_id) = a.job_id {
                // The bid (the job's first, or a re-bid of failed units) hands out its units in
                // order from where it starts in the job.
                let unit_start = orders::take_units(c, a.bid_engine_order_id, a.qty)?;
                let job = jobs::load_job(c, job_id)?.ok_or_else(|| SettlementError::Unsettleable {
                    reason: DeadLetterReason::NoEscrow,
                    why: format!("fill of job {job_id}, which does not exist"),
                })?;
                let work = jobs::work_for_fill(&job, unit_start, a.qty, time).ok_or_else(|| {
                    SettlementError::Unsettleable {
                        reason: DeadLetterReason::InvalidEvent,
                        why: format!(
                            "fill of units {unit_start}+{} outside job {job_id} ({} units)",
                            a.qty, job.units
                        ),
                    }
                })?;
                // The market's canaries, mixed in among the items (`crate::canary`).
                let slots = match gridbook_wire::catalog::kind(&job.market) {
                    Some(MarketKind::Compute(w)) => crate::canary::place(c, canaries, &job.market, w.kind, work.item_count, job.model.is_some())?,
                    Some(MarketKind::Token(_)) => {
                        return Err(SettlementError::Unsettleable {
                            reason: DeadLetterReason::InvalidEvent,
                            why: format!("job {job_id} is in token market {}, which runs no work", job.market),
                        });
                    }
                    // A market the catalogue does not know has no canary pool.
                    None => Vec::new(),
                };
                jobs::insert_assignment(c, &a, &work, &slots)?;
                a.work = Some(work);
            }
            // `decide` checked that qty and price fit in i64.
            escrow::on_fill(
                c,
                *order_id,
                a.assignment_id,
                *provider,
                a.qty as i64,
                a.price as i64,
            )?;
            let subject = subjects::node_assign(&a.node_id.to_string());
            events::enqueue_outbox(c, &subject, &serde_json::to_value(&a)?)?;
            Ok(true)
        }
        Effect::Release {
            order_id,
            bid,
            release_id,
            qty,
        } => {
            escrow::release_unfilled(c, *order_id, *release_id, *qty)?;
            orders::take_units(c, *bid, *qty as u64)?;
            Ok(false)
        }
        Effect::ReleaseAllOpen {
            order_id,
            bid,
            release_id,
            reason,
        } => {
            let order = escrow::get_order(c, *order_id)?;
            let open = bid_open(c, &order, *bid)?;
            if open > 0 {
                escrow::release_unfilled(c, *order_id, *release_id, open)?;
                orders::take_units(c, *bid, open as u64)?;
            }
            crate::jobs::record_reject_reason(c, *bid, *reason)?;
            Ok(false)
        }
        Effect::ReleaseDownTo {
            order_id,
            bid,
            release_id,
            remaining,
            price,
        } => {
            let order = escrow::get_order(c, *order_id)?;
            let above_limit = i64::try_from(*price).map_or(true, |p| p > order.terms.limit_price);
            if above_limit || *remaining > order.quantity_open {
                return Err(SettlementError::Unsettleable {
                    reason: DeadLetterReason::InvalidEvent,
                    why: format!(
                        "amend to {remaining} lots at {price} exceeds the reservation ({} lots at ≤ {}); \
                         the API must not send such amends",
                        order.quantity_open, order.terms.limit_price
                    ),
                });
            }
            if *remaining < order.quantity_open {
                escrow::release_unfilled(
                    c,
                    *order_id,
                    *release_id,
                    order.quantity_open - remaining,
                )?;
                // The units given up count as handed out (before later fills' units).
                orders::take_units(c, *bid, (order.quantity_open - remaining) as u64)?;
            }
            Ok(false)
        }
    }
}
