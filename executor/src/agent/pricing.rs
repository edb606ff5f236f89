//! Ask pricing policies (pure: no I/O, no clock). The agent's pricing loop reads the book, asks
//! [`target`] for the ask it wants, and [`decide`]s whether to place, amend or keep its ask.

use serde::{Deserialize, Serialize};

/// How a node prices its ask in one market. Prices are in ticks (minor units per unit of work),
/// quantities in lots (units).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Policy {
    /// One ask at a fixed price.
    Fixed { price: u64, qty: u64 },
    /// Follow the book: `best_ask − undercut_ticks`, clamped to `[floor, ceiling]`. When the node
    /// itself is the best ask it keeps its price (it does not undercut itself); with no other ask
    /// in the book it asks the ceiling.
    Follow {
        floor: u64,
        ceiling: u64,
        undercut_ticks: u64,
        qty: u64,
    },
}

impl Policy {
    /// Checks the policy's own consistency (positive quantity and price, floor ≤ ceiling).
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            Policy::Fixed { price, qty } => {
                if price == 0 || qty == 0 {
                    return Err("fixed: price and qty must be positive".into());
                }
            }
            Policy::Follow {
                floor,
                ceiling,
                qty,
                ..
            } => {
                if floor == 0 || qty == 0 {
                    return Err("follow: floor and qty must be positive".into());
                }
                if floor > ceiling {
                    return Err(format!("follow: floor {floor} is above ceiling {ceiling}"));
                }
            }
        }
        Ok(())
    }

    pub fn qty(&self) -> u64 {
        match *self {
            Policy::Fixed { qty, .. } | Policy::Follow { qty, .. } => qty,
        }
    }
}

/// The ask a node has resting now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnAsk {
    pub price: u64,
    pub qty: u64,
}

/// The ask a policy wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub price: u64,
    pub qty: u64,
}

/// The price and quantity the policy wants, given the best ask in the book (`None` = no asks)
/// and the node's own resting ask.
pub fn target(policy: &Policy, best_ask: Option<u64>, own: Option<OwnAsk>) -> Target {
    match *policy {
        Policy::Fixed { price, qty } => Target { price, qty },
        Policy::Follow {
            floor,
            ceiling,
            undercut_ticks,
            qty,
        } => {
            let raw = match (best_ask, own) {
                (None, _) => ceiling,
                // The best ask is (at least partly) ours: hold, do not chase ourselves down.
                (Some(best), Some(o)) if o.price == best => best,
                (Some(best), _) => best.saturating_sub(undercut_ticks),
            };
            Target {
                price: raw.clamp(floor, ceiling),
                qty,
            }
        }
    }
}

/// What to do with the node's ask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// No ask rests: place one.
    Place {
        price: u64,
        qty: u64,
    },
    /// Change the resting ask (only the fields that differ are `Some`).
    Amend {
        price: Option<u64>,
        qty: Option<u64>,
    },
    Keep,
}

pub fn decide(target: Target, own: Option<OwnAsk>) -> Action {
    match own {
        None => Action::Place {
            price: target.price,
            qty: target.qty,
        },
        Some(o) if o.price == target.price && o.qty == target.qty => Action::Keep,
        Some(o) => Action::Amend {
            price: (o.price != target.price).then_some(target.price),
            qty: (o.qty != target.qty).then_some(target.qty),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FOLLOW: Policy = Policy::Follow {
        floor: 80,
        ceiling: 150,
        undercut_ticks: 2,
        qty: 5,
    };

    #[test]
    fn fixed_ignores_the_book() {
        let p = Policy::Fixed { price: 100, qty: 3 };
        assert_eq!(target(&p, Some(50), None), Target { price: 100, qty: 3 });
        assert_eq!(target(&p, None, None), Target { price: 100, qty: 3 });
    }

    #[test]
    fn follow_undercuts_clamps_and_holds_when_best() {
        assert_eq!(target(&FOLLOW, Some(120), None).price, 118);
        assert_eq!(target(&FOLLOW, Some(81), None).price, 80, "floor");
        assert_eq!(
            target(&FOLLOW, Some(1), None).price,
            80,
            "floor, no underflow"
        );
        assert_eq!(target(&FOLLOW, Some(500), None).price, 150, "ceiling");
        assert_eq!(
            target(&FOLLOW, None, None).price,
            150,
            "empty book: ceiling"
        );
        let own = OwnAsk { price: 118, qty: 5 };
        assert_eq!(
            target(&FOLLOW, Some(118), Some(own)).price,
            118,
            "we are best: hold"
        );
        assert_eq!(
            target(&FOLLOW, Some(110), Some(own)).price,
            108,
            "undercut by someone"
        );
    }

    #[test]
    fn decide_places_amends_or_keeps() {
        let t = Target { price: 100, qty: 5 };
        assert_eq!(decide(t, None), Action::Place { price: 100, qty: 5 });
        assert_eq!(decide(t, Some(OwnAsk { price: 100, qty: 5 })), Action::Keep);
        assert_eq!(
            decide(t, Some(OwnAsk { price: 90, qty: 5 })),
            Action::Amend {
                price: Some(100),
                qty: None
            }
        );
        assert_eq!(
            decide(t, Some(OwnAsk { price: 100, qty: 2 })),
            Action::Amend {
                price: None,
                qty: Some(5)
            }
        );
    }

    #[test]
    fn validate_rejects_nonsense() {
        assert!(Policy::Fixed { price: 0, qty: 1 }.validate().is_err());
        assert!(
            Policy::Follow {
                floor: 10,
                ceiling: 5,
                undercut_ticks: 1,
                qty: 1
            }
            .validate()
            .is_err()
        );
        assert!(FOLLOW.validate().is_ok());
    }

    proptest! {
        #[test]
        fn follow_stays_within_bounds_and_never_raises_above_the_best(
            floor in 1u64..1_000,
            span in 0u64..1_000,
            undercut in 0u64..50,
            best in proptest::option::of(0u64..3_000),
            own in proptest::option::of(1u64..3_000),
        ) {
            let ceiling = floor + span;
            let p = Policy::Follow { floor, ceiling, undercut_ticks: undercut, qty: 1 };
            let own = own.map(|price| OwnAsk { price, qty: 1 });
            let t = target(&p, best, own);
            prop_assert!(t.price >= floor && t.price <= ceiling);
            if let Some(b) = best {
                // Never asks more than the best ask unless the floor forces it.
                prop_assert!(t.price <= b.max(floor));
                // Undercuts strictly unless it is the best already or at the floor.
                if own.map(|o| o.price) != Some(b) && b > floor + undercut && b <= ceiling + undercut {
                    prop_assert_eq!(t.price, b - undercut);
                }
            }
            // Applying the decision makes the ask equal the target; a second round keeps it.
            let applied = OwnAsk { price: t.price, qty: t.qty };
            prop_assert_eq!(decide(t, Some(applied)), Action::Keep);
        }

        #[test]
        fn follow_is_a_fixed_point_when_alone_at_the_top(
            floor in 1u64..1_000, span in 0u64..1_000, undercut in 0u64..50, best in 1u64..3_000,
        ) {
            // After the node moves to its target and becomes the best ask, the next poll keeps it.
            let p = Policy::Follow { floor, ceiling: floor + span, undercut_ticks: undercut, qty: 1 };
            let t1 = target(&p, Some(best), None);
            let me = OwnAsk { price: t1.price, qty: 1 };
            let new_best = t1.price.min(best);
            let t2 = target(&p, Some(new_best), Some(me));
            if new_best == t1.price {
                prop_assert_eq!(t2.price, t1.price);
            }
        }
    }
}
