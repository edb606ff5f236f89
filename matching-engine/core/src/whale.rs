//! The anti-whale rule: a deliberate, documented exception to price-time priority. The cap is a
//! **priority rule, never a veto**: it decides which owner's ask a bid takes first, never whether
//! a bid and an ask that cross trade. So the book is never left crossed and a bid never waits
//! while an ask it accepts rests.
//!
//! Every fill counts its quantity once towards the window's total `T` and towards the *ask
//! side's owner* (the provider identity or cluster id given with the ask; its account by
//! default). The window holds the fills of the last `whale_window` units of command time:
//! a fill at time `t0` counts while `now < t0 + whale_window`.
//!
//! The most owner `O` (window volume `V`) may fill now without passing its cap:
//!
//! ```text
//! allow = max( whale_min_volume − T            (saturating: the quiet-market allowance),
//!              ⌊(cap·T − 10000·V) / (10000 − cap)⌋  (0 when cap·T ≤ 10000·V) )
//! ```
//!
//! i.e. once the window holds `whale_min_volume`, a fill within `allow` never lifts an owner's
//! share above `cap` basis points: `(V + q)·10000 ≤ cap·(T + q)`.
//!
//! **When the cap is in force.** For a command, if the rule is enabled (`whale_enabled`) and, when
//! the command arrives (after the window's eviction), at least `whale_min_owners` distinct owners
//! are *active*: with matched volume in the window or with a resting ask. Counting resting asks
//! means an owner who has not traded yet still counts, so a newcomer can switch the cap on; a
//! whale can only lower the count by leaving. The decision is made once per command.
//!
//! **An incoming bid** (a place, or an amend that reprices a bid) matches in two phases:
//! 1. *Priority phase*: price-time priority over the crossing asks; an ask whose owner has
//!    `allow = 0` keeps its place but is passed over, and each fill is limited to its owner's
//!    `allow` at that moment (as the cap rule always did).
//! 2. *No-veto phase*, only if phase 1 passed over crossing asks and the bid still has quantity
//!    (and, for a market bid, budget: a budget that ran short at a dearer ask may still pay for a
//!    cheaper one passed over): the bid takes the crossing asks that are left, in plain
//!    price-time priority, cap ignored.
//!
//!    So an owner at its cap is passed over only in favour of another owner's ask at a price
//!    the bid accepts; when it is the only crossing supply left, the capped volume trades.
//!
//! **An incoming ask** is never capped: the book was not crossed before it came, so no other
//! owner's ask is acceptable to the bids it meets; it is the only crossing supply. (Before issue
//! 16 its remainder was cancelled, `whale_cap`, and a skipped resting ask could leave a bid
//! resting across it until the window rolled over.)
//!
//! What the cap guarantees, then: no fill of phase 1 lifts an owner above its cap; over-cap
//! volume flows only to a bid that the priority phase, having offered it every crossing ask of an
//! owner under its cap (at that owner's allowance when its ask came up), could not complete.
//!
//! Owner totals live in a hash map used for lookups only (and counted, never iterated in the
//! engine); the window itself is a FIFO in fill order, so nothing depends on hash order.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::FxBuild;
use crate::types::{OwnerId, Qty, WindowEntry};

/// What the rule knows about one active owner. An owner with neither is forgotten.
#[derive(Clone, Copy, Debug, Default)]
struct OwnerStat {
    /// Matched volume in the window (as the ask side).
    window: u64,
    /// Resting asks.
    resting: u32,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Whale {
    cap_bps: u64,
    window: u64,
    min_volume: u64,
    min_owners: usize,
    entries: VecDeque<WindowEntry>,
    per_owner: HashMap<OwnerId, OwnerStat, FxBuild>,
    total: u64,
}

impl Whale {
    pub fn new(cap_bps: u32, window: u64, min_volume: u64, min_owners: u32) -> Self {
        Whale {
            cap_bps: cap_bps as u64,
            window,
            min_volume,
            min_owners: min_owners as usize,
            ..Default::default()
        }
    }

    fn forget_if_idle(&mut self, owner: OwnerId) {
        if let Some(st) = self.per_owner.get(&owner)
            && st.window == 0
            && st.resting == 0
        {
            self.per_owner.remove(&owner);
        }
    }

    pub fn evict(&mut self, now: u64) {
        while let Some(e) = self.entries.front() {
            if e.time.saturating_add(self.window) > now {
                break;
            }
            let e = self.entries.pop_front().expect("front exists");
            self.total -= e.qty;
            let st = self.per_owner.get_mut(&e.owner).expect("owner counted");
            st.window -= e.qty;
            self.forget_if_idle(e.owner);
        }
    }

    pub fn record(&mut self, now: u64, owner: OwnerId, qty: Qty) {
        match self.entries.back_mut() {
            Some(e) if e.time == now && e.owner == owner => e.qty += qty,
            _ => self.entries.push_back(WindowEntry {
                time: now,
                owner,
                qty,
            }),
        }
        self.per_owner.entry(owner).or_default().window += qty;
        self.total += qty;
    }

    /// An ask of `owner` joined the book.
    pub fn add_resting(&mut self, owner: OwnerId) {
        self.per_owner.entry(owner).or_default().resting += 1;
    }

    /// An ask of `owner` left the book.
    pub fn remove_resting(&mut self, owner: OwnerId) {
        let st = self.per_owner.get_mut(&owner).expect("resting ask counted");
        st.resting -= 1;
        self.forget_if_idle(owner);
    }

    /// Whether the cap applies now: enough distinct active owners.
    pub fn in_force(&self) -> bool {
        self.per_owner.len() >= self.min_owners
    }

    /// The most `owner` may fill now; `extra_owner`/`extra_total` are fills not yet recorded
    /// (used by the dry run).
    pub fn allow(&self, owner: OwnerId, extra_owner: u64, extra_total: u64) -> u64 {
        let t = (self.total + extra_total) as u128;
        let v = (self.per_owner.get(&owner).map_or(0, |s| s.window) + extra_owner) as u128;
        let base = (self.min_volume as u128).saturating_sub(t);
        let cap = self.cap_bps as u128;
        let capq = if cap * t > 10_000 * v {
            (cap * t - 10_000 * v) / (10_000 - cap)
        } else {
            0
        };
        base.max(capq).min(u64::MAX as u128) as u64
    }

    pub fn entries(&self) -> impl Iterator<Item = &WindowEntry> {
        self.entries.iter()
    }

    /// For `OrderBook::check_invariants`: the totals agree with the window's entries and the
    /// resting counts with `resting_asks` (the book's asks per owner).
    pub fn check(&self, resting_asks: &BTreeMap<OwnerId, u32>) -> Result<(), String> {
        let mut window: BTreeMap<OwnerId, u64> = BTreeMap::new();
        for e in &self.entries {
            *window.entry(e.owner).or_default() += e.qty;
        }
        if window.values().sum::<u64>() != self.total {
            return Err("anti-whale window total wrong".into());
        }
        let mut active = 0usize;
        for (owner, &v) in &window {
            let st = self.per_owner.get(owner).copied().unwrap_or_default();
            if st.window != v {
                return Err(format!("anti-whale volume of {owner:?} wrong"));
            }
            active += 1;
        }
        for (owner, &n) in resting_asks {
            let st = self.per_owner.get(owner).copied().unwrap_or_default();
            if st.resting != n {
                return Err(format!("anti-whale resting count of {owner:?} wrong"));
            }
            if !window.contains_key(owner) {
                active += 1;
            }
        }
        if active != self.per_owner.len() {
            return Err("anti-whale active owners wrong".into());
        }
        Ok(())
    }
}
