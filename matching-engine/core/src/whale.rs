//! The anti-whale rule: a deliberate, documented exception to price-time priority.
//!
//! Every fill counts its quantity once towards the window's total `T` and towards the *ask
//! side's owner* (the provider identity or cluster id given with the ask; its account by
//! default). The window holds the fills of the last `whale_window` units of command time:
//! a fill at time `t0` counts while `now < t0 + whale_window`.
//!
//! Before each fill of `q` lots to owner `O` (window volume `V`), the book computes the most
//! `O` may fill now:
//!
//! ```text
//! allow = max( whale_min_volume − T            (saturating: the quiet-market allowance),
//!              ⌊(cap·T − 10000·V) / (10000 − cap)⌋  (0 when cap·T ≤ 10000·V) )
//! ```
//!
//! i.e. once the window holds `whale_min_volume`, a fill never lifts an owner's share above
//! `cap` basis points: `(V + q)·10000 ≤ cap·(T + q)`. The fill is limited to `allow`.
//!
//! - A resting ask whose owner has `allow = 0` keeps its place in the queue but is skipped by
//!   incoming bids, which go on to the next ask (possibly at a worse price) — and may therefore
//!   rest at a price that crosses the skipped ask. The book can be crossed only in this way.
//! - An incoming ask whose owner has `allow = 0` stops matching; its remainder is cancelled
//!   (`whale_cap`), since resting it would cross the book.
//!
//! Owner totals live in a hash map used for lookups only; the window itself is a FIFO in fill
//! order, so nothing depends on hash iteration order.

use std::collections::{HashMap, VecDeque};

use crate::FxBuild;
use crate::types::{OwnerId, Qty, WindowEntry};

#[derive(Clone, Debug, Default)]
pub(crate) struct Whale {
    cap_bps: u64,
    window: u64,
    min_volume: u64,
    entries: VecDeque<WindowEntry>,
    per_owner: HashMap<OwnerId, u64, FxBuild>,
    total: u64,
}

impl Whale {
    pub fn new(cap_bps: u32, window: u64, min_volume: u64) -> Self {
        Whale {
            cap_bps: cap_bps as u64,
            window,
            min_volume,
            ..Default::default()
        }
    }

    pub fn evict(&mut self, now: u64) {
        while let Some(e) = self.entries.front() {
            if e.time.saturating_add(self.window) > now {
                break;
            }
            let e = self.entries.pop_front().expect("front exists");
            self.total -= e.qty;
            let v = self.per_owner.get_mut(&e.owner).expect("owner counted");
            *v -= e.qty;
            if *v == 0 {
                self.per_owner.remove(&e.owner);
            }
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
        *self.per_owner.entry(owner).or_insert(0) += qty;
        self.total += qty;
    }

    /// The most `owner` may fill now; `extra_owner`/`extra_total` are fills not yet recorded
    /// (used by the FOK dry run).
    pub fn allow(&self, owner: OwnerId, extra_owner: u64, extra_total: u64) -> u64 {
        let t = (self.total + extra_total) as u128;
        let v = (self.per_owner.get(&owner).copied().unwrap_or(0) + extra_owner) as u128;
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
}
