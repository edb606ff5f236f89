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
    /// Cancel or expiry of `qty` unfilled lots of our bid.
    Release {
        order_id: Uuid,
        release_id: Uuid,
        qty: i64,
    },
    /// A rejected place: release everything still open.
    ReleaseAllOpen { order_id: Uuid, release_id: Uuid },
    /// An amend of our bid to `remaining` lots at `price`: release what it gave up.
    ReleaseDownTo {
        order_id: Uuid,
        release_id: Uuid,
        remaining: i64,
        price: u64,
    },
    /// The event names our order but cannot settle (logged as an error, recorded as processed).
    Refuse { why: String },
}

/// What an event does to a provider's ask as the marketplace shows it (`asks` table): its open
/// quantity after a fill, or closed (filled, cancelled, expired, or its place rejected).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AskChange {
    Left(u64),
    Closed,
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
                    AskChange::Closed
                } else {
                    AskChange::Left(left)
                },
            ))
        }
        EventKind::Cancelled { id, .. } | EventKind::Expired { id, .. } => {
            Some((ask(id.0)?.order_id, AskChange::Closed))
        }
        EventKind::Rejected {
            id: Some(id),
            reason,
            ..
        } if !rejects_existing_order(reason) => Some((ask(id.0)?.order_id, AskChange::Closed)),
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
fn rejects_existing_order(reason: RejectReason) -> bool {
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
            let Some(b) = bid(bid_id) else {
                return skip("fill of a bid not in market_orders");
            };
            let Some(a) = orders.get(&ask_id).filter(|o| o.side == Side::Ask) else {
                return Some(Effect::Refuse {
                    why: format!(
                        "fill of bid {bid_id} against ask {ask_id}, which is not in market_orders"
                    ),
                });
            };
            let Some(node_id) = a.node_id else {
                return Some(Effect::Refuse {
                    why: format!("ask {ask_id} has no node"),
                });
            };
            if i64::try_from(qty).is_err() || i64::try_from(price).is_err() {
                return Some(Effect::Refuse {
                    why: "fill quantity or price exceeds i64".into(),
                });
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
                    release_id: release_id(market, ev.seq),
                    qty,
                }),
                Err(_) => Some(Effect::Refuse {
                    why: "cancelled quantity exceeds i64".into(),
                }),
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
                release_id: release_id(market, ev.seq),
            })
        }
        EventKind::Amended { id, price, qty, .. } => {
            let Some(b) = bid(id.0) else {
                return skip("amend of an order that is not our bid");
            };
            match i64::try_from(qty) {
                Ok(remaining) => Some(Effect::ReleaseDownTo {
                    order_id: b.order_id,
                    release_id: release_id(market, ev.seq),
                    remaining,
                    price,
                }),
                Err(_) => Some(Effect::Refuse {
                    why: "amended quantity exceeds i64".into(),
                }),
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
            Some((Uuid::from_u128(2), AskChange::Closed))
        );
        let cancel = EventKind::Cancelled {
            id: OrderId(2),
            qty: 3,
            reason: matching_core::CancelReason::User,
        };
        assert_eq!(
            ask_change(&ev(3, cancel), &o),
            Some((Uuid::from_u128(2), AskChange::Closed))
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
            Some(Effect::Refuse { .. })
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
}
