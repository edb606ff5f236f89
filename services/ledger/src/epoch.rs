//! Epochs: the published economic rule and its math, pure (the settlement worker's `protocol`
//! module applies it to the database at each epoch close).
//!
//! At the close of epoch N (a fixed window of [`Rule::epoch_secs`]):
//! - **Fees → shares.** The protocol fees first seen at this close (`F`) are split:
//!   [`Rule::buyback_share_bps`] of `F` to the buyback treasury, [`Rule::rewards_share_bps`] of
//!   `F` to the credits rewards pool; the rest stays in the protocol fee account ([`allocate`]).
//! - **Emission.** [`Rule::emission_bps`] of what is left in the GRID emission reserve moves to
//!   the GRID rewards pool ([`emission`]): a geometric schedule out of a bounded supply.
//! - **Rewards.** Each pool is split among the nodes that did verified work in the epoch, by
//!   `work × quality × availability` ([`weight`]), where no identity cluster receives more than
//!   [`Rule::cluster_cap_bps`] of the pool; what a capped cluster cannot take goes to the others
//!   in proportion (water-filling), and what nobody may take rolls over in the pool ([`split`]).
//! - **Buyback.** The treasury's credits bid for GRID on the GRID market at most
//!   [`buyback_limit`] (the epoch's volume-weighted price plus a published slippage), a price
//!   fixed before the order exists; the GRID it buys is burned at the next close.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{LedgerError, Result};
use crate::model::Amount;

/// The published rule (every field is in the epoch report, so a report can be recomputed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Length of an epoch; epoch N is `[N × epoch_secs, (N + 1) × epoch_secs)` in Unix seconds.
    pub epoch_secs: i64,
    /// Share of the epoch's fee revenue that buys GRID back (and burns it).
    pub buyback_share_bps: u32,
    /// Share of the epoch's fee revenue that funds the credits rewards pool.
    pub rewards_share_bps: u32,
    /// Share of the GRID emission reserve emitted into the GRID rewards pool each epoch.
    pub emission_bps: u32,
    /// Most of a pool one identity cluster receives in an epoch.
    pub cluster_cap_bps: u32,
    /// The buyback's limit price: the reference price plus this much.
    pub buyback_slippage_bps: u32,
}

impl Default for Rule {
    fn default() -> Self {
        Self {
            epoch_secs: 3_600,
            buyback_share_bps: 5_000,
            rewards_share_bps: 3_000,
            emission_bps: 2,
            cluster_cap_bps: 2_500,
            buyback_slippage_bps: 200,
        }
    }
}

impl Rule {
    /// Refuses a rule that could not be applied (shares above 100 %, an empty epoch).
    pub fn validate(&self) -> Result<()> {
        let bad = |why: &str| Err(LedgerError::Invalid(format!("economics rule: {why}")));
        if self.epoch_secs < 1 {
            return bad("epoch_secs must be at least 1");
        }
        if self.epoch_secs > 60 && self.epoch_secs % 60 != 0 {
            // Uptime is counted in whole minutes of the epoch.
            return bad("epoch_secs above 60 must be whole minutes");
        }
        if self.buyback_share_bps as u64 + self.rewards_share_bps as u64 > 10_000 {
            return bad("buyback_share_bps + rewards_share_bps exceed 10000");
        }
        if self.emission_bps > 10_000 {
            return bad("emission_bps exceeds 10000");
        }
        if self.cluster_cap_bps == 0 || self.cluster_cap_bps > 10_000 {
            return bad("cluster_cap_bps must be in 1..=10000");
        }
        if self.buyback_slippage_bps > 10_000 {
            return bad("buyback_slippage_bps exceeds 10000");
        }
        Ok(())
    }

    /// The epoch that contains `t`.
    pub fn epoch_of(&self, t: DateTime<Utc>) -> i64 {
        t.timestamp().div_euclid(self.epoch_secs)
    }

    /// Epoch `epoch`'s window `[start, end)`.
    pub fn window(&self, epoch: i64) -> (DateTime<Utc>, DateTime<Utc>) {
        let at = |s: i64| {
            Utc.timestamp_opt(s, 0)
                .single()
                .unwrap_or(DateTime::<Utc>::MAX_UTC)
        };
        (
            at(epoch.saturating_mul(self.epoch_secs)),
            at(epoch.saturating_add(1).saturating_mul(self.epoch_secs)),
        )
    }

    /// Minutes in an epoch (at least 1): the denominator of uptime (an epoch under a minute
    /// counts the minute it falls in; one above is whole minutes, `validate`).
    pub fn epoch_minutes(&self) -> i64 {
        (self.epoch_secs / 60).max(1)
    }
}

fn bps_of(amount: Amount, bps: u32) -> Amount {
    // amount ≥ 0 and bps ≤ 10,000: the result fits.
    ((amount.max(0) as i128 * bps as i128) / 10_000) as Amount
}

/// How the epoch's fee revenue `fees` is split, given what the fee account can still spend
/// (`available`, which verification payments may have reduced): `(buyback, rewards)`, each
/// its share of `fees`, scaled down together when `available` does not cover both.
pub fn allocate(fees: Amount, available: Amount, rule: &Rule) -> (Amount, Amount) {
    let (b, r) = (
        bps_of(fees, rule.buyback_share_bps),
        bps_of(fees, rule.rewards_share_bps),
    );
    let available = available.max(0);
    if b + r <= available {
        return (b, r);
    }
    let total = (b + r) as i128;
    let b2 = (b as i128 * available as i128 / total) as Amount;
    let r2 = (r as i128 * available as i128 / total) as Amount;
    (b2, r2)
}

/// GRID emitted this epoch out of `reserve` base units left.
pub fn emission(reserve: Amount, rule: &Rule) -> Amount {
    bps_of(reserve, rule.emission_bps)
}

/// The buyback's limit: `reference × (1 + slippage)`, rounded down, at least 1.
pub fn buyback_limit(reference: i64, rule: &Rule) -> i64 {
    let v = reference.max(1) as i128 * (10_000 + rule.buyback_slippage_bps as i128) / 10_000;
    v.clamp(1, i64::MAX as i128) as i64
}

/// One node's reward inputs for an epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInput {
    pub node: uuid::Uuid,
    /// The node's identity cluster (the engine's anti-whale owner of its provider).
    pub cluster: u64,
    /// Credits of verified work in the epoch (verified units × trade price).
    pub work: Amount,
    /// Reliability score, basis points (0 after a proven cheat).
    pub quality_bps: u32,
    /// Share of the epoch's minutes in which the node's heartbeat was heard, basis points.
    pub uptime_bps: u32,
}

/// `work × quality_bps × uptime_bps`, exact (at most 9.2 × 10²⁶: no rounding, so a node with
/// little work still weighs; `split` scales the weights of one split down together when their
/// sum would not leave room for the products).
pub fn weight(n: &NodeInput) -> i128 {
    n.work.max(0) as i128 * n.quality_bps.min(10_000) as i128 * n.uptime_bps.min(10_000) as i128
}

/// Splits `pool` among `nodes` (one amount per node, in order). Each cluster's share is
/// proportional to its weight, capped at `cap_bps` of the pool; the cap's excess goes to the
/// uncapped clusters in proportion, repeatedly (water-filling); within a cluster each node gets
/// its weight's share. Every amount is rounded down; `pool − Σ` rolls over. Never pays more
/// than `pool`, never a cluster more than the cap.
pub fn split(pool: Amount, nodes: &[NodeInput], cap_bps: u32) -> Result<Vec<Amount>> {
    let pool = pool.max(0) as i128;
    let cap = pool * cap_bps.min(10_000) as i128 / 10_000;
    // Weights shifted right together until their sum fits in 62 bits, so `amount × weight`
    // (amount < 2^63) never overflows; the shift is the same for every node, so the shares are
    // the formula's to the rounding of the low bits.
    let total: i128 = nodes
        .iter()
        .map(weight)
        .try_fold(0i128, |a, w| a.checked_add(w))
        .ok_or(LedgerError::Overflow)?;
    let shift = (128 - total.leading_zeros()).saturating_sub(62);
    let weight = |n: &NodeInput| weight(n) >> shift;
    let mut cluster_w: BTreeMap<u64, i128> = BTreeMap::new();
    for n in nodes {
        let w = weight(n);
        if w > 0 {
            let e = cluster_w.entry(n.cluster).or_default();
            *e = e.checked_add(w).ok_or(LedgerError::Overflow)?;
        }
    }
    let share = |amount: i128, w: i128, total: i128| -> Result<i128> {
        Ok(amount.checked_mul(w).ok_or(LedgerError::Overflow)? / total)
    };
    let mut alloc: BTreeMap<u64, i128> = BTreeMap::new();
    let mut open: Vec<u64> = cluster_w.keys().copied().collect();
    let mut remaining = pool;
    while !open.is_empty() {
        let total: i128 = open.iter().map(|c| cluster_w[c]).sum();
        let mut over = Vec::new();
        for c in &open {
            if share(remaining, cluster_w[c], total)? > cap {
                over.push(*c);
            }
        }
        if over.is_empty() {
            for c in &open {
                alloc.insert(*c, share(remaining, cluster_w[c], total)?);
            }
            break;
        }
        for c in &over {
            alloc.insert(*c, cap);
            remaining -= cap;
        }
        open.retain(|c| !over.contains(c));
    }
    nodes
        .iter()
        .map(|n| {
            let w = weight(n);
            if w == 0 {
                return Ok(0);
            }
            let a = share(alloc[&n.cluster], w, cluster_w[&n.cluster])?;
            Amount::try_from(a).map_err(|_| LedgerError::Overflow)
        })
        .collect()
}

/// One node's reward line in a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewardLine {
    pub input: NodeInput,
    pub weight: String,
    pub credits: Amount,
    pub grid: Amount,
    pub credits_transfer: Option<uuid::Uuid>,
    pub grid_transfer: Option<uuid::Uuid>,
}

/// A pool before and after its split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolFigures {
    pub ledger: String,
    pub available: Amount,
    pub paid: Amount,
    pub rolled_over: Amount,
}

/// The buyback the close placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuybackFigures {
    /// Credits per whole GRID the limit was computed from, and where it came from.
    pub reference_price: Option<i64>,
    pub reference: String,
    pub limit_price: Option<i64>,
    /// Credits the treasury had to spend (fee included).
    pub budget: Amount,
    /// The engine order id of the IOC buy, if one was placed.
    pub engine_order_id: Option<u64>,
    pub order_id: Option<uuid::Uuid>,
    pub quantity: i64,
}

/// What one close did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochReport {
    pub epoch: i64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub closed_at: DateTime<Utc>,
    pub rule: Rule,
    /// Protocol-fee credits attributed to this epoch (their ids: `GET /v1/protocol/epochs/{n}/fees`).
    pub fee_transfers: i64,
    pub fee_revenue: Amount,
    pub fee_available: Amount,
    pub buyback_allocation: Amount,
    pub rewards_allocation: Amount,
    pub emission: Amount,
    /// Completed assignments counted as work in this epoch.
    pub work_assignments: i64,
    pub pools: Vec<PoolFigures>,
    pub rewards: Vec<RewardLine>,
    pub burned: Amount,
    pub burn_transfer: Option<uuid::Uuid>,
    pub buyback: BuybackFigures,
    /// Every transfer this close made, in order.
    pub transfers: Vec<uuid::Uuid>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use uuid::Uuid;

    fn node(i: u128, cluster: u64, work: i64, q: u32, u: u32) -> NodeInput {
        NodeInput {
            node: Uuid::from_u128(i),
            cluster,
            work,
            quality_bps: q,
            uptime_bps: u,
        }
    }

    #[test]
    fn fees_split_by_the_published_shares_and_never_beyond_what_is_there() {
        let rule = Rule::default();
        assert_eq!(allocate(10_000, 10_000, &rule), (5_000, 3_000));
        // Verification pay spent part of the fees: both shares shrink together.
        assert_eq!(allocate(10_000, 4_000, &rule), (2_500, 1_500));
        assert_eq!(allocate(0, 100, &rule), (0, 0));
        assert_eq!(emission(1_000_000_000_000_000, &rule), 200_000_000_000);
        assert_eq!(buyback_limit(1_000, &rule), 1_020);
        assert!(
            Rule {
                buyback_share_bps: 6_000,
                rewards_share_bps: 5_000,
                ..rule.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            Rule {
                cluster_cap_bps: 0,
                ..rule.clone()
            }
            .validate()
            .is_err()
        );
        assert!(
            Rule {
                epoch_secs: 0,
                ..rule
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn epochs_are_fixed_windows() {
        let rule = Rule {
            epoch_secs: 600,
            ..Rule::default()
        };
        let t = Utc.timestamp_opt(1_800_000_123, 0).unwrap();
        let e = rule.epoch_of(t);
        let (s, end) = rule.window(e);
        assert!(s <= t && t < end);
        assert_eq!((end - s).num_seconds(), 600);
        assert_eq!(rule.window(e + 1).0, end);
        assert_eq!(rule.epoch_minutes(), 10);
    }

    #[test]
    fn work_quality_and_uptime_all_count_and_the_cap_redistributes() {
        // Little work still weighs (1 credit at a new node's score, heard one minute in 60).
        assert_eq!(
            split(1_000, &[node(5, 5, 80, 5_313, 166)], 10_000).unwrap(),
            vec![1_000]
        );
        // Two clusters, equal work: the one with half the uptime gets a third.
        let a = node(1, 1, 1_000, 10_000, 10_000);
        let b = node(2, 2, 1_000, 10_000, 5_000);
        assert_eq!(
            split(9_000, &[a.clone(), b.clone()], 10_000).unwrap(),
            vec![6_000, 3_000]
        );
        // A cheat (quality 0) and a node with no work get nothing.
        let cheat = node(3, 3, 5_000, 0, 10_000);
        let idle = node(4, 4, 0, 10_000, 10_000);
        assert_eq!(
            split(900, &[a.clone(), cheat, idle], 10_000).unwrap(),
            vec![900, 0, 0]
        );
        // A farm of 100 nodes in one cluster against 4 small providers: the farm gets the cap
        // (25 %), the rest share 75 % equally.
        let mut nodes: Vec<NodeInput> = (0..100)
            .map(|i| node(100 + i, 9, 1_000, 10_000, 10_000))
            .collect();
        for i in 0..4u64 {
            nodes.push(node(i as u128 + 10, 10 + i, 1_000, 10_000, 10_000));
        }
        let paid = split(1_000_000, &nodes, 2_500).unwrap();
        let farm: i64 = paid[..100].iter().sum();
        assert_eq!(farm, 250_000);
        assert_eq!(&paid[100..], &[187_500; 4]);
        // Alone, a cluster takes at most the cap; the rest rolls over.
        assert_eq!(split(1_000, &[a], 2_500).unwrap(), vec![250]);
    }

    fn arb_nodes() -> impl Strategy<Value = Vec<NodeInput>> {
        prop::collection::vec(
            (0u64..6, 0i64..1_000_000_000, 0u32..=10_000, 0u32..=10_000),
            0..40,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (c, w, q, u))| node(i as u128, c, w, q, u))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn split_never_overpays_respects_the_cap_and_follows_the_formula(
            pool in 0i64..1_000_000_000_000_000,
            nodes in arb_nodes(),
            cap_bps in 1u32..=10_000,
        ) {
            let paid = split(pool, &nodes, cap_bps).unwrap();
            prop_assert_eq!(paid.len(), nodes.len());
            let sum: i128 = paid.iter().map(|a| *a as i128).sum();
            prop_assert!(sum <= pool as i128);
            prop_assert!(paid.iter().all(|a| *a >= 0));
            let cap = pool as i128 * cap_bps as i128 / 10_000;
            let mut by_cluster: BTreeMap<u64, (i128, i128)> = BTreeMap::new();
            for (n, a) in nodes.iter().zip(&paid) {
                let e = by_cluster.entry(n.cluster).or_default();
                e.0 += *a as i128;
                e.1 += weight(n);
                if weight(n) == 0 { prop_assert_eq!(*a, 0); }
            }
            for (paid_c, _) in by_cluster.values() {
                prop_assert!(*paid_c <= cap);
            }
            // Within a cluster, amounts follow weights (to rounding: one unit per node).
            for (n, a) in nodes.iter().zip(&paid) {
                let (paid_c, w_c) = by_cluster[&n.cluster];
                if w_c > 0 {
                    let exact = paid_c * weight(n) / w_c;
                    prop_assert!((exact - *a as i128).abs() <= nodes.len() as i128, "{exact} vs {a}");
                }
            }
            // Nothing that could be paid is left: either every cluster got its cap, or the pool is
            // spent to rounding.
            let open = by_cluster.values().filter(|(_, w)| *w > 0).count() as i128;
            if open > 0 && open * cap >= pool as i128 {
                prop_assert!(pool as i128 - sum <= 2 * nodes.len() as i128 + open, "{pool} {sum}");
            }
        }
    }
}
