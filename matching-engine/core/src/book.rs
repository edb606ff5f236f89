//! The order book: [`OrderBook::apply`] turns one [`Command`] into events.
//!
//! Structure: per side a dense ladder of price levels (see `ladder`); orders in a slab
//! (`Vec<Slot>` + free list) chained per level by intrusive doubly-linked lists in time order;
//! `OrderId → slot` in a hash map with a fixed hasher (lookups only, never iterated); GTD
//! expiries in a `BTreeMap` keyed by `(expires_at, id)`.

use std::collections::{BTreeMap, HashMap};

use crate::FxBuild;
use crate::ladder::{Ladder, NIL};
use crate::types::*;
use crate::whale::Whale;

#[derive(Clone, Debug)]
struct Slot {
    id: OrderId,
    account: AccountId,
    owner: OwnerId,
    price: Price,
    qty: Qty,
    priority: u64,
    tif: TimeInForce,
    prev: u32,
    next: u32,
    side: Side,
    post_only: bool,
    stp: Option<StpMode>,
}

/// The fields of an order an amend needs (copied out of the slab).
struct AmendFrom {
    id: OrderId,
    account: AccountId,
    owner: OwnerId,
    side: Side,
    price: Price,
    qty: Qty,
    stp: Option<StpMode>,
}

/// The incoming (taking) side of a match.
#[derive(Clone, Copy)]
struct Taker {
    id: OrderId,
    account: AccountId,
    owner: OwnerId,
    side: Side,
    limit: Price,
    qty: Qty,
    budget: Option<u64>,
    stp: StpMode,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    Done,
    NoMore,
    SelfTrade,
    Budget,
}

/// How `run_match` runs: for real (changing the book, emitting events) or as a dry run that
/// changes nothing and only computes how the match would end (FOK, bounds). One routine for
/// both, so a dry run always predicts exactly what the real match does.
enum Mode<'a> {
    Real(&'a mut Vec<Event>),
    Dry,
}

/// What a dry run has taken so far (lookups only, never iterated).
#[derive(Clone, Debug, Default)]
struct DryState {
    /// Slot → quantity taken from it (a self-trade cancel takes all of it).
    taken: HashMap<u32, u64, FxBuild>,
    /// Owner → fills not recorded in the anti-whale window.
    owner: HashMap<OwnerId, u64, FxBuild>,
    total: u64,
}

/// One market's book. Single-threaded, deterministic: the same commands from the same state give
/// the same events, byte for byte.
#[derive(Clone, Debug)]
pub struct OrderBook {
    cfg: MarketConfig,
    bids: Ladder,
    asks: Ladder,
    slots: Vec<Slot>,
    free: Vec<u32>,
    index: HashMap<OrderId, u32, FxBuild>,
    expiries: BTreeMap<(u64, OrderId), u32>,
    whale: Whale,
    whale_on: bool,
    next_event_seq: u64,
    next_priority: u64,
    last_seq: u64,
    last_time: u64,
    /// The command being applied.
    cmd: u64,
    now: u64,
    dry: DryState,
}

impl OrderBook {
    /// An empty book. The first command must have `seq >= 1`; the first event gets `seq` 1.
    pub fn new(config: MarketConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let n = (config.max_price - config.min_price + 1) as usize;
        Ok(OrderBook {
            bids: Ladder::new(n, true),
            asks: Ladder::new(n, false),
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::with_capacity_and_hasher(1024, FxBuild::default()),
            expiries: BTreeMap::new(),
            whale: Whale::new(
                config.whale_cap_bps,
                config.whale_window,
                config.whale_min_volume,
                config.whale_min_owners,
            ),
            whale_on: config.whale_enabled(),
            next_event_seq: 1,
            next_priority: 1,
            last_seq: 0,
            last_time: 0,
            cmd: 0,
            now: 0,
            dry: DryState::default(),
            cfg: config,
        })
    }

    pub fn config(&self) -> &MarketConfig {
        &self.cfg
    }

    /// Applies one command, appending its events to `out` (which is not cleared). Never panics
    /// on any input: every bad command becomes a `rejected` event.
    pub fn apply(&mut self, cmd: &Command, out: &mut Vec<Event>) {
        self.cmd = cmd.seq;
        if cmd.seq <= self.last_seq || cmd.time < self.last_time {
            self.emit(
                out,
                EventKind::Rejected {
                    id: cmd.kind.order_id(),
                    reason: RejectReason::OutOfSequence,
                },
            );
            return;
        }
        self.last_seq = cmd.seq;
        self.last_time = cmd.time;
        self.now = cmd.time;
        self.expire_due(out);
        if self.whale_on {
            self.whale.evict(self.now);
        }
        match &cmd.kind {
            CommandKind::Place(p) => self.place(p, out),
            CommandKind::Cancel(c) => self.cancel(c, out),
            CommandKind::Amend(a) => self.amend(a, out),
            CommandKind::Expire {} => {}
        }
    }

    // ---- views ----------------------------------------------------------------------------

    pub fn best_bid(&self) -> Option<Price> {
        self.bids.best.map(|i| self.cfg.min_price + i as u64)
    }

    pub fn best_ask(&self) -> Option<Price> {
        self.asks.best.map(|i| self.cfg.min_price + i as u64)
    }

    /// Number of resting orders.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The `seq` of the last command applied (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The `time` of the last command applied.
    /// The earliest expiry time (ms) of a resting GTD order: a command at or after it expires
    /// that order (the engine sends `Expire {}` when the market is otherwise quiet).
    pub fn next_expiry(&self) -> Option<u64> {
        self.expiries.first_key_value().map(|(&(at, _), _)| at)
    }

    pub fn last_time(&self) -> u64 {
        self.last_time
    }

    /// The next event sequence number this book will assign.
    pub fn next_event_seq(&self) -> u64 {
        self.next_event_seq
    }

    /// L2: up to `depth` non-empty levels of `side`, best first.
    pub fn depth(&self, side: Side, depth: usize) -> Vec<Level> {
        let lad = self.ladder(side);
        let mut v = Vec::new();
        let mut cur = lad.best;
        while let Some(i) = cur {
            if v.len() >= depth {
                break;
            }
            let l = &lad.levels[i as usize];
            v.push(Level {
                price: self.cfg.min_price + i as u64,
                qty: l.total,
                orders: l.count,
            });
            cur = lad.next_worse(i);
        }
        v
    }

    /// L3: every resting order of `side`, best price first, then time priority.
    pub fn orders(&self, side: Side) -> Vec<RestingOrder> {
        let lad = self.ladder(side);
        let mut v = Vec::new();
        let mut cur = lad.best;
        while let Some(i) = cur {
            let mut s = lad.levels[i as usize].head;
            while s != NIL {
                v.push(self.resting(s));
                s = self.slots[s as usize].next;
            }
            cur = lad.next_worse(i);
        }
        v
    }

    /// One resting order by id.
    pub fn order(&self, id: OrderId) -> Option<RestingOrder> {
        self.index.get(&id).map(|&s| self.resting(s))
    }

    fn resting(&self, s: u32) -> RestingOrder {
        let o = &self.slots[s as usize];
        RestingOrder {
            id: o.id,
            account: o.account,
            owner: o.owner,
            side: o.side,
            price: o.price,
            qty: o.qty,
            priority: o.priority,
            tif: o.tif,
            post_only: o.post_only,
            stp: o.stp,
        }
    }

    // ---- snapshot -------------------------------------------------------------------------

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            config: self.cfg.clone(),
            last_seq: self.last_seq,
            last_time: self.last_time,
            next_event_seq: self.next_event_seq,
            next_priority: self.next_priority,
            bids: self.orders(Side::Bid),
            asks: self.orders(Side::Ask),
            whale_window: self.whale.entries().copied().collect(),
        }
    }

    /// Rebuilds the book a snapshot was taken from: same orders in the same priority, same
    /// sequence counters, same anti-whale window; it emits the same events from then on.
    pub fn restore(snap: &Snapshot) -> Result<Self, RestoreError> {
        let mut b = OrderBook::new(snap.config.clone())?;
        b.last_seq = snap.last_seq;
        b.last_time = snap.last_time;
        b.now = snap.last_time;
        b.next_event_seq = snap.next_event_seq;
        b.next_priority = snap.next_priority;
        for (side, list) in [(Side::Bid, &snap.bids), (Side::Ask, &snap.asks)] {
            let mut last: Option<(Price, u64)> = None;
            for o in list {
                let ok = o.side == side
                    && (b.cfg.min_price..=b.cfg.max_price).contains(&o.price)
                    && o.qty > 0
                    && o.qty <= b.cfg.max_qty
                    && o.tif.rests()
                    && o.priority < snap.next_priority
                    && !b.index.contains_key(&o.id)
                    && b.index.len() < b.cfg.max_orders as usize
                    && match last {
                        None => true,
                        Some((lp, lprio)) => {
                            let better = match side {
                                Side::Bid => lp > o.price,
                                Side::Ask => lp < o.price,
                            };
                            better || (lp == o.price && lprio < o.priority)
                        }
                    };
                if !ok {
                    return Err(RestoreError::Order(o.id));
                }
                last = Some((o.price, o.priority));
                let s = b.alloc(Slot {
                    id: o.id,
                    account: o.account,
                    owner: o.owner,
                    price: o.price,
                    qty: o.qty,
                    priority: o.priority,
                    tif: o.tif,
                    prev: NIL,
                    next: NIL,
                    side,
                    post_only: o.post_only,
                    stp: o.stp,
                });
                b.link(s);
                b.index.insert(o.id, s);
                if let TimeInForce::Gtd { expires_at } = o.tif {
                    b.expiries.insert((expires_at, o.id), s);
                }
                if b.whale_on && side == Side::Ask {
                    b.whale.add_resting(o.owner);
                }
            }
        }
        for e in &snap.whale_window {
            b.whale.record(e.time, e.owner, e.qty);
        }
        Ok(b)
    }

    // ---- commands -------------------------------------------------------------------------

    fn place(&mut self, p: &Place, out: &mut Vec<Event>) {
        if let Err(reason) = self.check_place(p) {
            self.emit(
                out,
                EventKind::Rejected {
                    id: Some(p.id),
                    reason,
                },
            );
            return;
        }
        let limit = match (p.price, p.side) {
            (Some(px), _) => px,
            (None, Side::Bid) => self.cfg.max_price,
            (None, Side::Ask) => self.cfg.min_price,
        };
        let mut t = Taker {
            id: p.id,
            account: p.account,
            owner: p.owner.unwrap_or(OwnerId(p.account.0)),
            side: p.side,
            limit,
            qty: p.qty,
            budget: p.budget,
            stp: p.stp.unwrap_or(self.cfg.stp),
        };
        let refused = if p.tif == TimeInForce::Fok {
            let (_, left) = self.dry_run(&t);
            (left > 0).then_some(RejectReason::FokUnfillable)
        } else if let (true, Some(px)) = (p.tif.rests(), p.price) {
            self.check_rest_room(&t, px, None).err()
        } else {
            None
        };
        if let Some(reason) = refused {
            self.emit(
                out,
                EventKind::Rejected {
                    id: Some(p.id),
                    reason,
                },
            );
            return;
        }
        self.emit(
            out,
            EventKind::Accepted {
                id: p.id,
                account: p.account,
                side: p.side,
                price: p.price,
                qty: p.qty,
            },
        );
        let stop = self.run_match(&mut t, &mut Mode::Real(out));
        if t.qty == 0 {
            return;
        }
        let reason = match stop {
            Stop::NoMore if p.tif.rests() => {
                let s = self.alloc(Slot {
                    id: p.id,
                    account: p.account,
                    owner: t.owner,
                    price: limit,
                    qty: t.qty,
                    priority: 0,
                    tif: p.tif,
                    prev: NIL,
                    next: NIL,
                    side: p.side,
                    post_only: p.post_only,
                    stp: p.stp,
                });
                self.rest(s, true, out);
                return;
            }
            Stop::NoMore | Stop::Done => CancelReason::Unfilled,
            Stop::SelfTrade => CancelReason::SelfTrade,
            Stop::Budget => CancelReason::Budget,
        };
        self.emit(
            out,
            EventKind::Cancelled {
                id: p.id,
                qty: t.qty,
                reason,
            },
        );
    }

    fn check_place(&self, p: &Place) -> Result<(), RejectReason> {
        use RejectReason::*;
        if p.qty == 0 {
            return Err(InvalidQuantity);
        }
        if p.qty > self.cfg.max_qty {
            return Err(QuantityOutOfRange);
        }
        match p.price {
            Some(px) if px < self.cfg.min_price || px > self.cfg.max_price => {
                return Err(PriceOutOfRange);
            }
            None if p.tif.rests() => return Err(InvalidTimeInForce),
            _ => {}
        }
        if p.post_only && (!p.tif.rests() || p.price.is_none()) {
            return Err(InvalidTimeInForce);
        }
        match (p.price, p.side, p.budget) {
            (None, Side::Bid, None) => return Err(MissingBudget),
            (Some(_), _, Some(_)) | (None, Side::Ask, Some(_)) => return Err(BudgetNotAllowed),
            _ => {}
        }
        if let TimeInForce::Gtd { expires_at } = p.tif
            && expires_at <= self.now
        {
            return Err(InvalidExpiry);
        }
        if self.index.contains_key(&p.id) {
            return Err(DuplicateOrderId);
        }
        if let (true, Some(px)) = (p.tif.rests(), p.price)
            && p.post_only
            && self.crosses(p.side, px)
        {
            return Err(PostOnlyWouldCross);
        }
        Ok(())
    }

    /// The bounds (`max_orders`, `max_levels`), judged on what would rest after matching: would
    /// the remainder of taker `t`, resting at `price`, fit into the book as its match would
    /// leave it? `amend_from`: the level an amended order leaves (freed if it was alone there).
    ///
    /// Matching only removes orders and levels, so when the book has room now there is nothing to
    /// compute. Otherwise a dry run (`run_match` in `Mode::Dry`, the same code as the real match)
    /// tells whether anything would rest; a remainder rests only after a match that ran out of
    /// crossing liquidity (`Stop::NoMore`), which means every crossing opposite order is gone, so
    /// the book after matching is the book without the opposite levels that cross `price`.
    fn check_rest_room(
        &mut self,
        t: &Taker,
        price: Price,
        amend_from: Option<Price>,
    ) -> Result<(), RejectReason> {
        let max_orders = self.cfg.max_orders as usize;
        let max_levels = self.cfg.max_levels;
        let i = (price - self.cfg.min_price) as usize;
        let new_level = self.ladder(t.side).levels[i].count == 0;
        let freed = amend_from.is_some_and(|old| {
            self.ladder(t.side).levels[(old - self.cfg.min_price) as usize].count == 1
        });
        let orders = self.index.len() - usize::from(amend_from.is_some());
        let levels = self.bids.nonempty + self.asks.nonempty - u32::from(freed);
        if orders < max_orders && (!new_level || levels < max_levels) {
            return Ok(());
        }
        let (stop, left) = self.dry_run(t);
        if left == 0 || stop != Stop::NoMore {
            return Ok(()); // nothing would rest
        }
        let (gone_orders, gone_levels) = self.crossing_liquidity(t.side, price);
        if orders - gone_orders >= max_orders {
            return Err(RejectReason::BookFull);
        }
        if new_level && levels - gone_levels >= max_levels {
            return Err(RejectReason::TooManyLevels);
        }
        Ok(())
    }

    /// Orders and levels of the side opposite `side` that cross an order at `price`.
    fn crossing_liquidity(&self, side: Side, price: Price) -> (usize, u32) {
        let opp = self.ladder(side.opposite());
        let (mut orders, mut levels) = (0usize, 0u32);
        let mut cur = opp.best;
        while let Some(i) = cur {
            let px = self.cfg.min_price + i as u64;
            let crosses = match side {
                Side::Bid => px <= price,
                Side::Ask => px >= price,
            };
            if !crosses {
                break;
            }
            orders += opp.levels[i as usize].count as usize;
            levels += 1;
            cur = opp.next_worse(i);
        }
        (orders, levels)
    }

    /// Whether a `side` order at `price` would meet the best opposite level.
    fn crosses(&self, side: Side, price: Price) -> bool {
        match side {
            Side::Bid => self.best_ask().is_some_and(|a| price >= a),
            Side::Ask => self.best_bid().is_some_and(|b| price <= b),
        }
    }

    fn cancel(&mut self, c: &Cancel, out: &mut Vec<Event>) {
        let s = match self.lookup(c.id, c.account) {
            Ok(s) => s,
            Err(reason) => {
                self.emit(
                    out,
                    EventKind::Rejected {
                        id: Some(c.id),
                        reason,
                    },
                );
                return;
            }
        };
        let (side, price, qty) = {
            let o = &self.slots[s as usize];
            (o.side, o.price, o.qty)
        };
        self.unlink(s);
        self.release(s);
        self.emit(
            out,
            EventKind::Cancelled {
                id: c.id,
                qty,
                reason: CancelReason::User,
            },
        );
        self.delta(side, price, out);
    }

    fn lookup(&self, id: OrderId, account: AccountId) -> Result<u32, RejectReason> {
        match self.index.get(&id) {
            None => Err(RejectReason::UnknownOrder),
            Some(&s) if self.slots[s as usize].account != account => Err(RejectReason::NotOwner),
            Some(&s) => Ok(s),
        }
    }

    fn amend(&mut self, a: &Amend, out: &mut Vec<Event>) {
        let s = match self.check_amend(a) {
            Ok(s) => s,
            Err(reason) => {
                self.emit(
                    out,
                    EventKind::Rejected {
                        id: Some(a.id),
                        reason,
                    },
                );
                return;
            }
        };
        let o = {
            let o = &self.slots[s as usize];
            AmendFrom {
                id: o.id,
                account: o.account,
                owner: o.owner,
                side: o.side,
                price: o.price,
                qty: o.qty,
                stp: o.stp,
            }
        };
        let new_qty = a.qty.unwrap_or(o.qty);
        let new_price = a.price.unwrap_or(o.price);
        if new_price == o.price {
            if new_qty <= o.qty {
                // Reduce in place: keeps time priority.
                self.slots[s as usize].qty = new_qty;
                let i = (o.price - self.cfg.min_price) as usize;
                self.ladder_mut(o.side).levels[i].total -= o.qty - new_qty;
                self.emit(
                    out,
                    EventKind::Amended {
                        id: a.id,
                        price: o.price,
                        qty: new_qty,
                        kept_priority: true,
                    },
                );
                if new_qty != o.qty {
                    self.delta(o.side, o.price, out);
                }
            } else {
                // Increase: back of the queue.
                self.unlink(s);
                self.slots[s as usize].qty = new_qty;
                self.emit(
                    out,
                    EventKind::Amended {
                        id: a.id,
                        price: o.price,
                        qty: new_qty,
                        kept_priority: false,
                    },
                );
                self.rest(s, false, out);
            }
            return;
        }
        // Price change: leave the old level, match as a taker at the new price, rest the rest.
        let mut t = Taker {
            id: o.id,
            account: o.account,
            owner: o.owner,
            side: o.side,
            limit: new_price,
            qty: new_qty,
            budget: None,
            stp: o.stp.unwrap_or(self.cfg.stp),
        };
        if let Err(reason) = self.check_rest_room(&t, new_price, Some(o.price)) {
            self.emit(
                out,
                EventKind::Rejected {
                    id: Some(a.id),
                    reason,
                },
            );
            return;
        }
        self.unlink(s);
        self.emit(
            out,
            EventKind::Amended {
                id: a.id,
                price: new_price,
                qty: new_qty,
                kept_priority: false,
            },
        );
        self.delta(o.side, o.price, out);
        let stop = self.run_match(&mut t, &mut Mode::Real(out));
        if t.qty == 0 {
            self.release(s);
            return;
        }
        let reason = match stop {
            Stop::NoMore | Stop::Done | Stop::Budget => {
                let slot = &mut self.slots[s as usize];
                slot.price = new_price;
                slot.qty = t.qty;
                self.rest(s, false, out);
                return;
            }
            Stop::SelfTrade => CancelReason::SelfTrade,
        };
        self.release(s);
        self.emit(
            out,
            EventKind::Cancelled {
                id: o.id,
                qty: t.qty,
                reason,
            },
        );
    }

    fn check_amend(&self, a: &Amend) -> Result<u32, RejectReason> {
        use RejectReason::*;
        let s = self.lookup(a.id, a.account)?;
        if a.price.is_none() && a.qty.is_none() {
            return Err(NothingToAmend);
        }
        let o = &self.slots[s as usize];
        match a.qty {
            Some(0) => return Err(InvalidQuantity),
            Some(q) if q > self.cfg.max_qty => return Err(QuantityOutOfRange),
            _ => {}
        }
        if let Some(px) = a.price
            && px != o.price
        {
            if px < self.cfg.min_price || px > self.cfg.max_price {
                return Err(PriceOutOfRange);
            }
            if o.post_only && self.crosses(o.side, px) {
                return Err(PostOnlyWouldCross);
            }
        }
        Ok(s)
    }

    fn expire_due(&mut self, out: &mut Vec<Event>) {
        while let Some((&(at, id), &s)) = self.expiries.first_key_value() {
            if at > self.now {
                break;
            }
            let (side, price, qty) = {
                let o = &self.slots[s as usize];
                (o.side, o.price, o.qty)
            };
            self.unlink(s);
            self.release(s);
            self.emit(out, EventKind::Expired { id, qty });
            self.delta(side, price, out);
        }
    }

    // ---- matching -------------------------------------------------------------------------

    /// Matches `t` against the opposite side in price-time priority, with the anti-whale rule
    /// (module `whale`): when the cap is in force for an incoming bid, a priority phase that
    /// passes over asks of owners at their cap, then, if the bid still crosses what was passed
    /// over (its quantity or, for a market bid, its budget not used up), a no-veto phase in
    /// plain price-time priority. In `Mode::Real` it emits fills, STP
    /// cancels and one delta per touched level and pass; in `Mode::Dry` it changes nothing
    /// visible (only `self.dry`) and `t` ends as the real match would leave it.
    fn run_match(&mut self, t: &mut Taker, mode: &mut Mode<'_>) -> Stop {
        let capped = self.whale_on && t.side == Side::Bid && self.whale.in_force();
        let (stop, passed_over) = self.match_pass(t, mode, capped);
        // A budget that ran short at a dearer ask may still pay for a cheaper one passed over.
        if capped && passed_over && matches!(stop, Stop::NoMore | Stop::Budget) {
            return self.match_pass(t, mode, false).0;
        }
        stop
    }

    /// The dry run of `run_match` for `t`: how it would stop and what would be left of it.
    fn dry_run(&mut self, t: &Taker) -> (Stop, Qty) {
        self.dry.taken.clear();
        self.dry.owner.clear();
        self.dry.total = 0;
        let mut t = *t;
        let stop = self.run_match(&mut t, &mut Mode::Dry);
        (stop, t.qty)
    }

    /// One price-time pass over the crossing levels. `capped`: asks whose owner has no allowance
    /// left are passed over and fills are limited to the allowance. Returns how it stopped and
    /// whether it passed over crossing quantity because of the cap.
    fn match_pass(&mut self, t: &mut Taker, mode: &mut Mode<'_>, capped: bool) -> (Stop, bool) {
        let opp = t.side.opposite();
        let min = self.cfg.min_price;
        let mut passed_over = false;
        let mut lvl = self.ladder(opp).best;
        while let Some(i) = lvl {
            let price = min + i as u64;
            let crosses = match t.side {
                Side::Bid => price <= t.limit,
                Side::Ask => price >= t.limit,
            };
            if !crosses {
                return (Stop::NoMore, passed_over);
            }
            let mut s = self.ladder(opp).levels[i as usize].head;
            let mut touched = false;
            let mut stop = None;
            while s != NIL {
                let m = &self.slots[s as usize];
                let (next, m_id, m_account, m_owner) = (m.next, m.id, m.account, m.owner);
                let m_qty = match mode {
                    Mode::Real(_) => m.qty,
                    Mode::Dry => m.qty - self.dry.taken.get(&s).copied().unwrap_or(0),
                };
                if m_qty == 0 {
                    s = next; // taken earlier in this dry run
                    continue;
                }
                let mut q = t.qty.min(m_qty);
                if let Some(b) = t.budget {
                    let afford = b / price;
                    if afford == 0 {
                        stop = Some(Stop::Budget);
                        break;
                    }
                    q = q.min(afford);
                }
                let ask_owner = if t.side == Side::Bid {
                    m_owner
                } else {
                    t.owner
                };
                if capped {
                    let allow = match mode {
                        Mode::Real(_) => self.whale.allow(ask_owner, 0, 0),
                        Mode::Dry => self.whale.allow(
                            ask_owner,
                            self.dry.owner.get(&ask_owner).copied().unwrap_or(0),
                            self.dry.total,
                        ),
                    };
                    if allow == 0 {
                        passed_over = true; // capped ask: keeps its place, passed over
                        s = next;
                        continue;
                    }
                    if allow < q {
                        passed_over = true;
                        q = allow;
                    }
                }
                if m_account == t.account {
                    match t.stp {
                        StpMode::CancelOldest => {
                            self.stp_cancel(s, m_qty, mode);
                            touched = true;
                            s = next;
                            continue;
                        }
                        StpMode::CancelNewest => {
                            stop = Some(Stop::SelfTrade);
                            break;
                        }
                        StpMode::CancelBoth => {
                            self.stp_cancel(s, m_qty, mode);
                            touched = true;
                            stop = Some(Stop::SelfTrade);
                            break;
                        }
                    }
                }
                // Fill q at the maker's price.
                t.qty -= q;
                if let Some(b) = t.budget.as_mut() {
                    *b -= q * price;
                }
                let maker_left = m_qty - q;
                match mode {
                    Mode::Real(out) => {
                        self.slots[s as usize].qty = maker_left;
                        self.ladder_mut(opp).levels[i as usize].total -= q;
                        if self.whale_on {
                            self.whale.record(self.now, ask_owner, q);
                        }
                        let fee = ((price as u128 * q as u128 * self.cfg.fee_bps as u128) / 10_000)
                            as u64;
                        self.emit(
                            out,
                            EventKind::Fill {
                                maker: m_id,
                                taker: t.id,
                                maker_account: m_account,
                                taker_account: t.account,
                                taker_side: t.side,
                                price,
                                qty: q,
                                fee,
                                maker_left,
                                taker_left: t.qty,
                            },
                        );
                        if maker_left == 0 {
                            self.unlink(s);
                            self.release(s);
                        }
                    }
                    Mode::Dry => {
                        *self.dry.taken.entry(s).or_insert(0) += q;
                        *self.dry.owner.entry(ask_owner).or_insert(0) += q;
                        self.dry.total += q;
                    }
                }
                touched = true;
                if t.qty == 0 {
                    stop = Some(Stop::Done);
                    break;
                }
                if t.budget.is_some_and(|b| b < price) {
                    stop = Some(Stop::Budget); // not one more lot at this or any worse price
                    break;
                }
                s = next;
            }
            let next_lvl = self.ladder(opp).next_worse(i);
            if touched && let Mode::Real(out) = mode {
                self.delta(opp, price, out);
            }
            if let Some(st) = stop {
                return (st, passed_over);
            }
            lvl = next_lvl;
        }
        (Stop::NoMore, passed_over)
    }

    /// Self-trade prevention cancels resting order `s` (`qty` left on it).
    fn stp_cancel(&mut self, s: u32, qty: Qty, mode: &mut Mode<'_>) {
        match mode {
            Mode::Real(out) => {
                let id = self.slots[s as usize].id;
                self.unlink(s);
                self.release(s);
                self.emit(
                    out,
                    EventKind::Cancelled {
                        id,
                        qty,
                        reason: CancelReason::SelfTrade,
                    },
                );
            }
            Mode::Dry => {
                *self.dry.taken.entry(s).or_insert(0) += qty;
            }
        }
    }

    // ---- plumbing -------------------------------------------------------------------------

    fn emit(&mut self, out: &mut Vec<Event>, kind: EventKind) {
        out.push(Event {
            seq: self.next_event_seq,
            cmd: self.cmd,
            kind,
        });
        self.next_event_seq += 1;
    }

    fn delta(&mut self, side: Side, price: Price, out: &mut Vec<Event>) {
        let l = self.ladder(side).levels[(price - self.cfg.min_price) as usize];
        self.emit(
            out,
            EventKind::Delta {
                side,
                price,
                qty: l.total,
                orders: l.count,
            },
        );
    }

    fn ladder(&self, side: Side) -> &Ladder {
        match side {
            Side::Bid => &self.bids,
            Side::Ask => &self.asks,
        }
    }

    fn ladder_mut(&mut self, side: Side) -> &mut Ladder {
        match side {
            Side::Bid => &mut self.bids,
            Side::Ask => &mut self.asks,
        }
    }

    fn alloc(&mut self, slot: Slot) -> u32 {
        match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = slot;
                s
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        }
    }

    /// Gives slot `s` a fresh priority, appends it to its level, indexes it (when `new`: an
    /// amended order is indexed already), emits the delta.
    fn rest(&mut self, s: u32, new: bool, out: &mut Vec<Event>) {
        let o = &mut self.slots[s as usize];
        o.priority = self.next_priority;
        self.next_priority += 1;
        let (id, side, price, tif, owner) = (o.id, o.side, o.price, o.tif, o.owner);
        self.link(s);
        if new {
            self.index.insert(id, s);
            if let TimeInForce::Gtd { expires_at } = tif {
                self.expiries.insert((expires_at, id), s);
            }
            if self.whale_on && side == Side::Ask {
                self.whale.add_resting(owner);
            }
        }
        self.delta(side, price, out);
    }

    /// Appends slot `s` at the tail of its level.
    fn link(&mut self, s: u32) {
        let min = self.cfg.min_price;
        let Self {
            slots, bids, asks, ..
        } = self;
        let (side, price, qty) = {
            let o = &slots[s as usize];
            (o.side, o.price, o.qty)
        };
        let lad = if side == Side::Bid { bids } else { asks };
        let i = (price - min) as u32;
        let lv = &mut lad.levels[i as usize];
        let tail = lv.tail;
        slots[s as usize].prev = tail;
        slots[s as usize].next = NIL;
        if tail == NIL {
            lv.head = s;
        } else {
            slots[tail as usize].next = s;
        }
        lv.tail = s;
        lv.count += 1;
        lv.total += qty;
        if lv.count == 1 {
            lad.mark(i);
        }
    }

    /// Removes slot `s` from its level (the slot itself stays allocated and indexed).
    fn unlink(&mut self, s: u32) {
        let min = self.cfg.min_price;
        let Self {
            slots, bids, asks, ..
        } = self;
        let (side, price, qty, prev, next) = {
            let o = &slots[s as usize];
            (o.side, o.price, o.qty, o.prev, o.next)
        };
        let lad = if side == Side::Bid { bids } else { asks };
        let i = (price - min) as u32;
        let lv = &mut lad.levels[i as usize];
        if prev == NIL {
            lv.head = next;
        } else {
            slots[prev as usize].next = next;
        }
        if next == NIL {
            lv.tail = prev;
        } else {
            slots[next as usize].prev = prev;
        }
        lv.count -= 1;
        lv.total -= qty;
        if lv.count == 0 {
            lad.unmark(i);
        }
    }

    /// Forgets an unlinked order: index, expiry, slot.
    fn release(&mut self, s: u32) {
        let o = &self.slots[s as usize];
        let (id, side, owner) = (o.id, o.side, o.owner);
        if let TimeInForce::Gtd { expires_at } = o.tif {
            self.expiries.remove(&(expires_at, id));
        }
        if self.whale_on && side == Side::Ask {
            self.whale.remove_resting(owner);
        }
        self.index.remove(&id);
        self.free.push(s);
    }

    /// Checks the internal structure; for tests. Returns a description of the first violation.
    ///
    /// Checks: level lists, counts and totals; strictly increasing priority within a level;
    /// best prices; index and expiry consistency; the anti-whale rule's counts; and that the
    /// book is not crossed (best bid < best ask whenever both exist), anti-whale rule or not.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut seen = 0usize;
        for (side, lad) in [(Side::Bid, &self.bids), (Side::Ask, &self.asks)] {
            let mut nonempty = 0u32;
            let mut best: Option<u32> = None;
            for (i, lv) in lad.levels.iter().enumerate() {
                let price = self.cfg.min_price + i as u64;
                let (mut n, mut total, mut prev, mut prio) = (0u32, 0u64, NIL, 0u64);
                let mut s = lv.head;
                while s != NIL {
                    let o = &self.slots[s as usize];
                    if o.side != side || o.price != price || o.prev != prev || o.qty == 0 {
                        return Err(format!("bad order {:?} at {side:?} {price}", o.id));
                    }
                    if o.priority <= prio {
                        return Err(format!("priority not increasing at {side:?} {price}"));
                    }
                    if self.index.get(&o.id) != Some(&s) {
                        return Err(format!("index mismatch for {:?}", o.id));
                    }
                    prio = o.priority;
                    n += 1;
                    total += o.qty;
                    prev = s;
                    s = o.next;
                }
                if lv.tail != prev || n != lv.count || total != lv.total {
                    return Err(format!("level {side:?} {price} count/total/tail wrong"));
                }
                if n > 0 {
                    nonempty += 1;
                    best = match (side, best) {
                        (Side::Ask, None) => Some(i as u32),
                        (Side::Ask, b) => b,
                        (Side::Bid, _) => Some(i as u32),
                    };
                }
                seen += n as usize;
            }
            if nonempty != lad.nonempty || best != lad.best {
                return Err(format!("{side:?} nonempty/best wrong"));
            }
        }
        if seen != self.index.len() {
            return Err("index holds orders not in the book".into());
        }
        if self.index.len() > self.cfg.max_orders as usize
            || self.bids.nonempty + self.asks.nonempty > self.cfg.max_levels
        {
            return Err("bounds exceeded".into());
        }
        for (&(at, id), &s) in &self.expiries {
            let o = &self.slots[s as usize];
            if o.id != id || o.tif != (TimeInForce::Gtd { expires_at: at }) || at <= self.now {
                return Err(format!("expiry index wrong for {id:?}"));
            }
        }
        if let (Some(b), Some(a)) = (self.best_bid(), self.best_ask())
            && b >= a
        {
            return Err(format!("crossed book: bid {b} >= ask {a}"));
        }
        if self.whale_on {
            let mut resting = BTreeMap::new();
            for o in self.orders(Side::Ask) {
                *resting.entry(o.owner).or_insert(0u32) += 1;
            }
            self.whale.check(&resting)?;
        }
        Ok(())
    }
}
