//! Pure decisions: one engine event + the marketplace's view of the orders it names → the
//! effect to apply, as data. No I/O here; `settle` applies effects to the database.
//!
//! Units: the engine's integer price ticks and quantity lots map one-to-one onto the ledger:
//! 1 lot = 1 unit of work in the escrow, 1 tick = 1 minor unit per lot. The API therefore
//! reserves a bid with `limit_price` = the engine limit price in ticks, `quantity` = lots and
//! `fee_bps` = the market config's `fee_bps`. The ledger charges its own fee (⌈notional × bps⌉
//! per assignment); the engine's `fee` field (rounded down, informational) is not used.

use std::collections::BTreeMap;

use gridbook_ledger::AccountId;
use matching_core::{Event, EventKind, RejectReason, Side};
use uuid::Uuid;

use gridbook_db::market_orders::MarketOrder;
pub use gridbook_db::status::{DeadLetterEscrow, DeadLetterReason};

/// Name of this worker in `processed_events`.
pub const CONSUMER: &str = "settlement";

/// Namespace of the ids the worker derives (UUIDv5): the same event always yields the same id.
const NAMESPACE: Uuid = Uuid::from_u128(0x3f6d_8a42_1c7e_4b90_9e25_5a0b_c1d7_e834);

/// `processed_events.event_id` of one engine event.
pub fn event_id(market: &str, seq: u64) -> String {
    format!("{market}.{seq}")
}

/// The escrow assignment id (= fill id) of the fill event `seq` in `market`.
pub fn fill_id(market: &str, seq: u64) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("fill/{market}/{seq}").as_bytes())
}

/// The release id of the cancel/expiry/rejection/amend event `seq` in `market`.
pub fn release_id(market: &str, seq: u64) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("release/{market}/{seq}").as_bytes())
}

/// The release id of the escrow a refused event `seq` of `market` gives back
/// ([`Remedy`]): its own namespace, so it never meets a cancel's or an expiry's release.
pub fn refused_release_id(market: &str, seq: u64) -> Uuid {
    Uuid::new_v5(&NAMESPACE, format!("refused/{market}/{seq}").as_bytes())
}

pub use gridbook_wire::node::AssignmentMsg;

/// What one event does to the ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// An event kind the ledger does not care about for an order of ours: nothing to do.
    /// `why` is for the debug log.
    Skip { why: &'static str },
    /// The engine accepted one of our bids: remember it (no ledger effect).
    MarkAccepted { engine_order_id: u64 },
    /// A fill of our bid: move the reservation to an assignment and tell the node.
    Assign {
        order_id: Uuid,
        provider: AccountId,
        assignment: AssignmentMsg,
    },
    /// Cancel or expiry of `qty` unfilled lots of our bid (engine order `bid`).
    Release {
        order_id: Uuid,
        bid: u64,
        release_id: Uuid,
        qty: i64,
    },
    /// A rejected place: release everything engine order `bid` still holds open. `reason` is
    /// the engine's, recorded on the job whose own bid it was (`jobs.reject_reason`).
    ReleaseAllOpen {
        order_id: Uuid,
        bid: u64,
        release_id: Uuid,
        reason: RejectReason,
    },
    /// An amend of our bid to `remaining` lots at `price`: release what it gave up.
    ReleaseDownTo {
        order_id: Uuid,
        bid: u64,
        release_id: Uuid,
        remaining: i64,
        price: u64,
    },
    /// The event names our order but cannot settle: recorded as processed with a dead letter,
    /// and the escrow it took is given back ([`Refusal::remedy`]).
    Refuse(Refusal),
}

/// Why an event is refused, and what becomes of the escrow it touched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: DeadLetterReason,
    pub why: String,
    pub remedy: Remedy,
}

/// What to do about the escrow a refused event touched, so that nothing reserved stays open
/// for ever (the finisher only finishes a job whose bid has no open unit).
///
/// A fill the worker refuses has still taken its units off the engine's book: the bid rests
/// with fewer lots than its reservation holds open. Those units are **released** back to the
/// studio (not re-offered): the escrow's open quantity again equals what the engine still
/// holds, the job can finish, and a refused fill can never come back (a re-offer could be
/// taken by the same stranger again, and would need a second engine order for one escrow
/// order, which `market_orders` does not allow). The released units are the fill's place in
/// the job (`quantity − quantity_open` before the release, like an assignment's), so the
/// next fill takes the units after them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remedy {
    /// Nothing of ours was taken, or nothing must change.
    Untouched,
    /// Release up to `qty` open units of the bid (engine order `bid`): what a refused fill took
    /// from it.
    ReleaseUnits {
        order_id: Uuid,
        bid: u64,
        release_id: Uuid,
        qty: i64,
    },
    /// Release every unit engine order `bid` still holds open: the engine closed the order
    /// (cancel, expiry). A job's bid may be several engine orders on one escrow order (re-bids
    /// of failed units): only this one's units go back.
    ReleaseAllOpen {
        order_id: Uuid,
        bid: u64,
        release_id: Uuid,
    },
}

impl Remedy {
    /// The escrow order it releases from.
    pub fn order_id(&self) -> Option<Uuid> {
        match *self {
            Remedy::Untouched => None,
            Remedy::ReleaseUnits { order_id, .. } | Remedy::ReleaseAllOpen { order_id, .. } => {
                Some(order_id)
            }
        }
    }

    /// Units to release when engine order `bid` holds `open` units open (never more than are
    /// open, so the remedy itself never fails a ledger rule).
    pub fn units(&self, open: i64) -> i64 {
        let open = open.max(0);
        match *self {
            Remedy::Untouched => 0,
            Remedy::ReleaseUnits { qty, .. } => qty.clamp(0, open),
            Remedy::ReleaseAllOpen { .. } => open,
        }
    }
}

/// The remedy when `effect` (decided for event `seq` of `market`) could not be applied: a fill
/// gives back the units it took from the bid; a cancel or expiry releases whatever is still
/// open (the engine closed the order); a failed amend leaves the reservation as it is (the
/// order stays on the book; a later fill beyond the reservation is refused in turn).
pub fn remedy_after_failure(market: &str, seq: u64, effect: &Effect) -> Remedy {
    let release_id = refused_release_id(market, seq);
    match effect {
        Effect::Assign {
            order_id,
            assignment,
            ..
        } => Remedy::ReleaseUnits {
            order_id: *order_id,
            bid: assignment.bid_engine_order_id,
            release_id,
            qty: i64::try_from(assignment.qty).unwrap_or(i64::MAX),
        },
        Effect::Release { order_id, bid, .. } | Effect::ReleaseAllOpen { order_id, bid, .. } => {
            Remedy::ReleaseAllOpen {
                order_id: *order_id,
                bid: *bid,
                release_id,
            }
        }
        Effect::ReleaseDownTo { .. }
        | Effect::Skip { .. }
        | Effect::MarkAccepted { .. } => Remedy::Untouched,
        Effect::Refuse(r) => r.remedy,
    }
}

fn refuse(reason: DeadLetterReason, why: String, remedy: Remedy) -> Option<Effect> {
    Some(Effect::Refuse(Refusal {
        reason,
        why,
        remedy,
    }))
}

/// What an event does to a provider's ask as the marketplace shows it (`asks` table): its open
/// quantity after a fill, or closed with the reason the provider reads (`asks.close_reason`):
/// `filled`, `cancelled`, `expired`, `self_trade`, or the engine's rejection of its place in
/// snake_case (e.g. `post_only_would_cross`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AskChange {
    Left(u64),
    Closed(&'static str),
}

/// The snake_case name of an engine rejection (its serde spelling).
pub fn reject_reason_str(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::OutOfSequence => "out_of_sequence",
        RejectReason::InvalidQuantity => "invalid_quantity",
        RejectReason::QuantityOutOfRange => "quantity_out_of_range",
        RejectReason::PriceOutOfRange => "price_out_of_range",
        RejectReason::InvalidTimeInForce => "invalid_time_in_force",
        RejectReason::InvalidExpiry => "invalid_expiry",
        RejectReason::MissingBudget => "missing_budget",
        RejectReason::BudgetNotAllowed => "budget_not_allowed",
        RejectReason::DuplicateOrderId => "duplicate_order_id",
        RejectReason::UnknownOrder => "unknown_order",
        RejectReason::NotOwner => "not_owner",
        RejectReason::PostOnlyWouldCross => "post_only_would_cross",
        RejectReason::FokUnfillable => "fok_unfillable",
        RejectReason::BookFull => "book_full",
        RejectReason::TooManyLevels => "too_many_levels",
        RejectReason::NothingToAmend => "nothing_to_amend",
    }
}

/// The change `ev` makes to one of our asks, with the ask's id (`asks.id` = `order_id`).
pub fn ask_change(ev: &Event, orders: &BTreeMap<u64, MarketOrder>) -> Option<(Uuid, AskChange)> {
    let ask = |id: u64| orders.get(&id).filter(|o| o.side == Side::Ask);
    match ev.kind {
        EventKind::Fill {
            maker,
            taker,
            taker_side,
            maker_left,
            taker_left,
            ..
        } => {
            let (id, left) = match taker_side {
                Side::Bid => (maker.0, maker_left),
                Side::Ask => (taker.0, taker_left),
            };
            let o = ask(id)?;
            Some((
                o.order_id,
                if left == 0 {
                    AskChange::Closed("filled")
                } else {
                    AskChange::Left(left)
                },
            ))
        }
        EventKind::Cancelled { id, reason, .. } => Some((
            ask(id.0)?.order_id,
            AskChange::Closed(match reason {
                matching_core::CancelReason::SelfTrade => "self_trade",
                _ => "cancelled",
            }),
        )),
        EventKind::Expired { id, .. } => Some((ask(id.0)?.order_id, AskChange::Closed("expired"))),
        EventKind::Rejected {
            id: Some(id),
            reason,
            ..
        } if !rejects_existing_order(reason) => Some((
            ask(id.0)?.order_id,
            AskChange::Closed(reject_reason_str(reason)),
        )),
        _ => None,
    }
}

/// The engine order ids an event names (what to look up in `market_orders`).
pub fn order_ids(ev: &Event) -> Vec<u64> {
    match ev.kind {
        EventKind::Fill { maker, taker, .. } => vec![maker.0, taker.0],
        EventKind::Accepted { id, .. }
        | EventKind::Cancelled { id, .. }
        | EventKind::Expired { id, .. }
        | EventKind::Amended { id, .. }
        | EventKind::Rejected { id: Some(id), .. } => vec![id.0],
        EventKind::Rejected { id: None, .. } | EventKind::Delta { .. } => vec![],
    }
}

/// Rejection reasons that a place never gets (only an amend or a cancel): such a rejection says
/// nothing about the reservation.
pub(crate) fn rejects_existing_order(reason: RejectReason) -> bool {
    matches!(
        reason,
        RejectReason::UnknownOrder | RejectReason::NotOwner | RejectReason::NothingToAmend
    )
}

/// Decides the effect of event `ev` of `market`. `orders` holds the `market_orders` rows of this
/// market for the ids the event names. `None`: the event kind never has a ledger effect.
pub fn decide(market: &str, ev: &Event, orders: &BTreeMap<u64, MarketOrder>) -> Option<Effect> {
    let bid = |id: u64| orders.get(&id).filter(|o| o.side == Side::Bid);
    let skip = |why| Some(Effect::Skip { why });
    match ev.kind {
        EventKind::Delta { .. } | EventKind::Rejected { id: None, .. } => None,
        EventKind::Accepted { id, .. } => match bid(id.0) {
            Some(o) if o.accepted_seq.is_none() => Some(Effect::MarkAccepted {
                engine_order_id: id.0,
            }),
            _ => None,
        },
        EventKind::Fill {
            maker,
            taker,
            taker_side,
            price,
            qty,
            ..
        } => {
            let (bid_id, ask_id) = match taker_side {
                Side::Ask => (maker.0, taker.0),
                Side::Bid => (taker.0, maker.0),
            };
            let ours_ask = orders.get(&ask_id).filter(|o| o.side == Side::Ask);
            let Some(b) = bid(bid_id) else {
                if ours_ask.is_some() {
                    // Our provider's ask taken by a bid without escrow: no one pays for it.
                    return refuse(
                        DeadLetterReason::UnknownOrder,
                        format!(
                            "fill of ask {ask_id} against bid {bid_id}, which is not in market_orders (no escrow)"
                        ),
                        Remedy::Untouched,
                    );
                }
                return skip("fill of a bid not in market_orders");
            };
            // The fill took these units off the bid on the book: a refusal gives them back.
            let give_back = Remedy::ReleaseUnits {
                order_id: b.order_id,
                bid: bid_id,
                release_id: refused_release_id(market, ev.seq),
                qty: i64::try_from(qty).unwrap_or(i64::MAX),
            };
            let Some(a) = ours_ask else {
                return refuse(
                    DeadLetterReason::UnknownOrder,
                    format!(
                        "fill of bid {bid_id} against ask {ask_id}, which is not in market_orders"
                    ),
                    give_back,
                );
            };
            let Some(node_id) = a.node_id else {
                return refuse(
                    DeadLetterReason::NoEscrow,
                    format!("ask {ask_id} has no node"),
                    give_back,
                );
            };
            if i64::try_from(qty).is_err() || i64::try_from(price).is_err() {
                return refuse(
                    DeadLetterReason::InvalidEvent,
                    "fill quantity or price exceeds i64".into(),
                    give_back,
                );
            }
            Some(Effect::Assign {
                order_id: b.order_id,
                provider: AccountId(a.account_id),
                assignment: AssignmentMsg {
                    assignment_id: fill_id(market, ev.seq),
                    market: market.to_owned(),
                    event_seq: ev.seq,
                    job_id: b.job_id,
                    node_id,
                    order_id: b.order_id,
                    qty,
                    price,
                    bid_engine_order_id: bid_id,
                    ask_engine_order_id: ask_id,
                    work: None,
                },
            })
        }
        EventKind::Cancelled { id, qty, .. } | EventKind::Expired { id, qty } => {
            let Some(b) = bid(id.0) else {
                return skip("cancel/expiry of an order that is not our bid");
            };
            if qty == 0 {
                return skip("cancel/expiry of zero lots");
            }
            match i64::try_from(qty) {
                Ok(qty) => Some(Effect::Release {
                    order_id: b.order_id,
                    bid: id.0,
                    release_id: release_id(market, ev.seq),
                    qty,
                }),
                Err(_) => refuse(
                    DeadLetterReason::InvalidEvent,
                    "cancelled quantity exceeds i64".into(),
                    Remedy::ReleaseAllOpen {
                        order_id: b.order_id,
                        bid: id.0,
                        release_id: refused_release_id(market, ev.seq),
                    },
                ),
            }
        }
        EventKind::Rejected {
            id: Some(id),
            reason,
        } => {
            let Some(b) = bid(id.0) else {
                return skip("rejection of an order that is not our bid");
            };
            // Once accepted, a rejection naming the order is an amend or cancel that failed.
            if b.accepted_seq.is_some() || rejects_existing_order(reason) {
                return skip("rejected amend/cancel of our bid");
            }
            Some(Effect::ReleaseAllOpen {
                order_id: b.order_id,
                bid: id.0,
                release_id: release_id(market, ev.seq),
                reason,
            })
        }
        EventKind::Amended { id, price, qty, .. } => {
            let Some(b) = bid(id.0) else {
                return skip("amend of an order that is not our bid");
            };
            match i64::try_from(qty) {
                Ok(remaining) => Some(Effect::ReleaseDownTo {
                    order_id: b.order_id,
                    bid: id.0,
                    release_id: release_id(market, ev.seq),
                    remaining,
                    price,
                }),
                Err(_) => refuse(
                    DeadLetterReason::InvalidEvent,
                    "amended quantity exceeds i64".into(),
                    Remedy::Untouched,
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use matching_core::{AccountId as EngAcct, CancelReason, OrderId};

    fn orders() -> BTreeMap<u64, MarketOrder> {
        let mk = |id: u64, side, node: Option<Uuid>, accepted| MarketOrder {
            engine_order_id: id,
            market: "M".into(),
            side,
            order_id: Uuid::from_u128(id as u128),
            account_id: Uuid::from_u128(1000 + id as u128),
            node_id: node,
            job_id: None,
            accepted_seq: accepted,
        };
        [
            (1, mk(1, Side::Bid, None, Some(1))),
            (2, mk(2, Side::Ask, Some(Uuid::from_u128(7)), Some(2))),
            (3, mk(3, Side::Bid, None, None)),
        ]
        .into_iter()
        .collect()
    }

    fn ev(seq: u64, kind: EventKind) -> Event {
        Event { seq, cmd: 1, kind }
    }

    fn fill(maker: u64, taker: u64, taker_side: Side) -> EventKind {
        EventKind::Fill {
            maker: OrderId(maker),
            taker: OrderId(taker),
            maker_account: EngAcct(1),
            taker_account: EngAcct(2),
            taker_side,
            price: 90,
            qty: 4,
            fee: 0,
            maker_left: 0,
            taker_left: 0,
        }
    }

    #[test]
    fn a_fill_assigns_the_bid_to_the_asks_node_at_the_trade_price() {
        for (maker, taker, side) in [(1, 2, Side::Ask), (2, 1, Side::Bid)] {
            let Some(Effect::Assign {
                order_id,
                provider,
                assignment,
            }) = decide("M", &ev(9, fill(maker, taker, side)), &orders())
            else {
                panic!("expected an assignment")
            };
            assert_eq!(order_id, Uuid::from_u128(1));
            assert_eq!(provider, AccountId(Uuid::from_u128(1002)));
            assert_eq!((assignment.qty, assignment.price), (4, 90));
            assert_eq!(assignment.node_id, Uuid::from_u128(7));
            assert_eq!(assignment.assignment_id, fill_id("M", 9));
            assert_ne!(fill_id("M", 9), fill_id("N", 9));
        }
    }

    #[test]
    fn asks_follow_their_fills_and_close_when_done() {
        let o = orders();
        // Ask 2 rests (maker) and keeps 3 lots, then is taken completely, then an ask is
        // cancelled; bids and foreign orders change no ask.
        let mut partial = fill(2, 1, Side::Bid);
        if let EventKind::Fill { maker_left, .. } = &mut partial {
            *maker_left = 3;
        }
        assert_eq!(
            ask_change(&ev(1, partial), &o),
            Some((Uuid::from_u128(2), AskChange::Left(3)))
        );
        assert_eq!(
            ask_change(&ev(2, fill(1, 2, Side::Ask)), &o),
            Some((Uuid::from_u128(2), AskChange::Closed("filled")))
        );
        let cancel = EventKind::Cancelled {
            id: OrderId(2),
            qty: 3,
            reason: matching_core::CancelReason::User,
        };
        assert_eq!(
            ask_change(&ev(3, cancel), &o),
            Some((Uuid::from_u128(2), AskChange::Closed("cancelled")))
        );
        let bid_cancel = EventKind::Cancelled {
            id: OrderId(1),
            qty: 3,
            reason: matching_core::CancelReason::User,
        };
        assert_eq!(ask_change(&ev(4, bid_cancel), &o), None);
        assert_eq!(ask_change(&ev(5, fill(50, 51, Side::Bid)), &o), None);
    }

    #[test]
    fn foreign_orders_are_skipped_and_a_foreign_ask_is_refused() {
        let o = orders();
        assert!(matches!(
            decide("M", &ev(1, fill(50, 51, Side::Bid)), &o),
            Some(Effect::Skip { .. })
        ));
        assert!(matches!(
            decide("M", &ev(1, fill(50, 1, Side::Bid)), &o),
            Some(Effect::Refuse(Refusal { reason: DeadLetterReason::UnknownOrder, .. }))
        ));
        let delta = EventKind::Delta {
            side: Side::Bid,
            price: 1,
            qty: 1,
            orders: 1,
        };
        assert_eq!(decide("M", &ev(1, delta), &o), None);
    }

    #[test]
    fn reject_reasons_are_spelled_as_the_engine_serializes_them() {
        use RejectReason::*;
        for r in [
            OutOfSequence, InvalidQuantity, QuantityOutOfRange, PriceOutOfRange, InvalidTimeInForce,
            InvalidExpiry, MissingBudget, BudgetNotAllowed, DuplicateOrderId, UnknownOrder, NotOwner,
            BookFull, TooManyLevels, PostOnlyWouldCross, FokUnfillable, NothingToAmend,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), reject_reason_str(r), "{r:?}");
        }
    }

    #[test]
    fn rejections_release_only_a_never_accepted_place() {
        let o = orders();
        let rej = |id, reason| EventKind::Rejected {
            id: Some(OrderId(id)),
            reason,
        };
        assert!(matches!(
            decide("M", &ev(5, rej(3, RejectReason::PriceOutOfRange)), &o),
            Some(Effect::ReleaseAllOpen { .. })
        ));
        // accepted earlier: a failed amend
        assert!(matches!(
            decide("M", &ev(5, rej(1, RejectReason::PriceOutOfRange)), &o),
            Some(Effect::Skip { .. })
        ));
        // a cancel racing the place
        assert!(matches!(
            decide("M", &ev(5, rej(3, RejectReason::UnknownOrder)), &o),
            Some(Effect::Skip { .. })
        ));
    }

    #[test]
    fn cancels_release_their_quantity() {
        let c = EventKind::Cancelled {
            id: OrderId(1),
            qty: 3,
            reason: CancelReason::User,
        };
        assert_eq!(
            decide("M", &ev(8, c), &orders()),
            Some(Effect::Release {
                order_id: Uuid::from_u128(1),
                bid: 1,
                release_id: release_id("M", 8),
                qty: 3
            })
        );
        let c = EventKind::Expired {
            id: OrderId(2),
            qty: 3,
        };
        assert!(matches!(
            decide("M", &ev(8, c), &orders()),
            Some(Effect::Skip { .. })
        ));
    }

    #[test]
    fn a_fill_of_our_bid_against_an_unknown_ask_gives_the_units_back_to_the_bid() {
        // The attack: an ask placed straight on NATS (id 50, not in market_orders) takes 4 lots
        // of our bid 1, as maker or as taker.
        for (maker, taker, side) in [(50, 1, Side::Bid), (1, 50, Side::Ask)] {
            let got = decide("M", &ev(12, fill(maker, taker, side)), &orders());
            let Some(Effect::Refuse(r)) = got else {
                panic!("expected a refusal, got {got:?}")
            };
            assert_eq!(r.reason, DeadLetterReason::UnknownOrder);
            assert!(r.why.contains("ask 50"), "{}", r.why);
            assert_eq!(
                r.remedy,
                Remedy::ReleaseUnits {
                    order_id: Uuid::from_u128(1),
                    bid: 1,
                    release_id: refused_release_id("M", 12),
                    qty: 4
                }
            );
        }
    }

    #[test]
    fn our_ask_taken_by_a_bid_without_escrow_is_refused_and_touches_no_escrow() {
        let got = decide("M", &ev(3, fill(2, 51, Side::Bid)), &orders());
        let Some(Effect::Refuse(r)) = got else {
            panic!("expected a refusal, got {got:?}")
        };
        assert_eq!(r.reason, DeadLetterReason::UnknownOrder);
        assert_eq!(r.remedy, Remedy::Untouched);
    }

    #[test]
    fn an_ask_without_a_node_is_refused_and_the_bid_gets_its_units_back() {
        let mut o = orders();
        o.get_mut(&2).unwrap().node_id = None;
        let got = decide("M", &ev(4, fill(2, 1, Side::Bid)), &o);
        let Some(Effect::Refuse(r)) = got else {
            panic!("expected a refusal, got {got:?}")
        };
        assert_eq!(r.reason, DeadLetterReason::NoEscrow);
        assert_eq!(r.remedy.order_id(), Some(Uuid::from_u128(1)));
        assert_eq!(r.remedy.units(10), 4);
    }

    #[test]
    fn a_failed_effect_releases_what_the_engine_no_longer_holds() {
        let o = orders();
        // A fill that fails to apply (e.g. outside the job): its 4 units go back.
        let assign = decide("M", &ev(9, fill(2, 1, Side::Bid)), &o).unwrap();
        assert_eq!(
            remedy_after_failure("M", 9, &assign),
            Remedy::ReleaseUnits {
                order_id: Uuid::from_u128(1),
                bid: 1,
                release_id: refused_release_id("M", 9),
                qty: 4
            }
        );
        // A cancel or expiry: the order is gone from the book, so all that is open goes back.
        let cancel = Effect::Release {
            order_id: Uuid::from_u128(1),
            bid: 1,
            release_id: release_id("M", 8),
            qty: 3,
        };
        let r = remedy_after_failure("M", 8, &cancel);
        assert_eq!(
            r,
            Remedy::ReleaseAllOpen {
                order_id: Uuid::from_u128(1),
                bid: 1,
                release_id: refused_release_id("M", 8)
            }
        );
        assert_ne!(refused_release_id("M", 8), release_id("M", 8));
        assert_eq!(r.units(2), 2);
        // A failed amend leaves the reservation as it is: the order still rests.
        let amend = Effect::ReleaseDownTo {
            order_id: Uuid::from_u128(1),
            bid: 1,
            release_id: release_id("M", 7),
            remaining: 8,
            price: 100,
        };
        assert_eq!(remedy_after_failure("M", 7, &amend), Remedy::Untouched);
    }

    #[test]
    fn a_remedy_never_releases_more_than_is_open() {
        let r = Remedy::ReleaseUnits {
            order_id: Uuid::from_u128(1),
            bid: 1,
            release_id: Uuid::from_u128(2),
            qty: 4,
        };
        assert_eq!(r.units(10), 4);
        assert_eq!(r.units(3), 3);
        assert_eq!(r.units(0), 0);
        assert_eq!(r.units(-1), 0);
        assert_eq!(Remedy::Untouched.units(10), 0);
        assert_eq!(Remedy::Untouched.order_id(), None);
    }
}
