//! One market's pure state: the book, the last command stream sequence applied, recently seen
//! order ids and candles. `MarketState::apply` turns one command message (stream sequence,
//! stream time, payload) into event frames; no I/O, no clock: the NATS shell (`market`) feeds it.

use std::collections::{HashSet, VecDeque};

use gridbook_wire::market::{EventFrame, L2Snapshot, MAX_COMMANDS_PER_MESSAGE};
use matching_core::{Command, CommandKind, Event, MarketConfig, OrderBook, Side, Snapshot};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::stats::Stats;

/// What the engine stores per market in the snapshot object store.
#[derive(Serialize, Deserialize)]
pub struct EngineSnapshot {
    pub book: Snapshot,
    /// Stream sequence of the last command applied to `book`.
    pub applied: u64,
    /// Recently placed order ids, oldest first (engine-level idempotency beyond the stream's
    /// duplicate window).
    pub recent: Vec<u64>,
    pub stats: Stats,
}

/// Order ids placed recently, bounded; never iterated except to write a snapshot (in order).
struct RecentIds {
    order: VecDeque<u64>,
    set: HashSet<u64>,
    cap: usize,
}

impl RecentIds {
    fn new(cap: usize, ids: Vec<u64>) -> Self {
        let mut r = RecentIds { order: VecDeque::new(), set: HashSet::new(), cap };
        for id in ids {
            r.insert(id);
        }
        r
    }
    /// True the first time an id is seen.
    fn insert(&mut self, id: u64) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

/// The pure part of the market task: applies command messages, builds frames. No I/O.
pub struct MarketState {
    market: String,
    pub book: OrderBook,
    /// Stream sequence of the last command message applied.
    pub applied: u64,
    recent: RecentIds,
    pub stats: Stats,
    events: Vec<Event>,
}

/// What became of one command message.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Already applied (a redelivery): ack only.
    Duplicate,
    /// Could not be decoded: logged, acked, nothing applied.
    Dropped,
    /// Applied; this many frames were appended (a command that produced no events has none; a
    /// place whose order id was seen before is dropped without events).
    Applied(usize),
}

impl MarketState {
    pub fn new(config: MarketConfig, recent_cap: usize) -> anyhow::Result<Self> {
        let market = config.market.0.clone();
        let book = OrderBook::new(config).map_err(|e| anyhow::anyhow!("market {market}: {e}"))?;
        Ok(Self::from_parts(market, book, 0, RecentIds::new(recent_cap, vec![]), Stats::default()))
    }

    pub fn restore(snap: EngineSnapshot, config: &MarketConfig, recent_cap: usize) -> anyhow::Result<Self> {
        if snap.book.config != *config {
            warn!(market = %config.market.0, "market configuration differs from the snapshot's; the snapshot's stays in force (changing a live market's rules needs a migration)");
        }
        let book = OrderBook::restore(&snap.book).map_err(|e| anyhow::anyhow!("restoring snapshot: {e}"))?;
        let market = snap.book.config.market.0.clone();
        Ok(Self::from_parts(market, book, snap.applied, RecentIds::new(recent_cap, snap.recent), snap.stats))
    }

    fn from_parts(market: String, book: OrderBook, applied: u64, recent: RecentIds, stats: Stats) -> Self {
        MarketState { market, book, applied, recent, stats, events: Vec::with_capacity(64) }
    }

    pub fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot {
            book: self.book.snapshot(),
            applied: self.applied,
            recent: self.recent.order.iter().copied().collect(),
            stats: self.stats.clone(),
        }
    }

    /// The last event sequence the book has produced.
    pub fn last_event_seq(&self) -> u64 {
        self.book.next_event_seq() - 1
    }

    /// Apply the message stored at `stream_seq`, published at `published_ms`: one command or an
    /// array of them. Each command is numbered `book.last_seq() + 1` and timed
    /// `max(published_ms, book.last_time())`. Frames go to `frames`.
    pub fn apply(&mut self, stream_seq: u64, published_ms: u64, payload: &[u8], frames: &mut Vec<EventFrame>) -> Outcome {
        if stream_seq <= self.applied {
            return Outcome::Duplicate;
        }
        self.applied = stream_seq;
        let commands = match decode_commands(payload) {
            Ok(c) => c,
            Err(e) => {
                warn!(market = %self.market, stream_seq, error = %e, "undecodable command message dropped");
                return Outcome::Dropped;
            }
        };
        let before = frames.len();
        let time = published_ms.max(self.book.last_time());
        for kind in commands {
            if let CommandKind::Place(p) = &kind
                && !self.recent.insert(p.id.0)
            {
                debug!(market = %self.market, order = p.id.0, "duplicate order id dropped");
                continue;
            }
            let cmd = self.book.last_seq() + 1;
            self.events.clear();
            self.book.apply(&Command { seq: cmd, time, kind }, &mut self.events);
            self.stats.apply(time, &self.events);
            let (Some(first), Some(last)) = (self.events.first(), self.events.last()) else { continue };
            frames.push(EventFrame {
                market: self.market.clone(),
                stream_seq,
                cmd,
                time,
                first: first.seq,
                last: last.seq,
                events: self.events.clone(),
                best_bid: self.book.best_bid(),
                best_ask: self.book.best_ask(),
            });
        }
        Outcome::Applied(frames.len() - before)
    }

    pub fn l2(&self) -> L2Snapshot {
        L2Snapshot {
            market: self.market.clone(),
            seq: self.last_event_seq(),
            bids: self.book.depth(Side::Bid, usize::MAX),
            asks: self.book.depth(Side::Ask, usize::MAX),
        }
    }

}

/// One command, or a JSON array of at most `MAX_COMMANDS_PER_MESSAGE`.
pub fn decode_commands(payload: &[u8]) -> anyhow::Result<Vec<CommandKind>> {
    if payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        let commands: Vec<CommandKind> = serde_json::from_slice(payload)?;
        anyhow::ensure!(
            commands.len() <= MAX_COMMANDS_PER_MESSAGE,
            "{} commands in one message; the most is {MAX_COMMANDS_PER_MESSAGE}",
            commands.len()
        );
        Ok(commands)
    } else {
        Ok(vec![serde_json::from_slice(payload)?])
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use matching_core::{AccountId, OrderId, Place, TimeInForce};

    pub(crate) fn place(id: u64, side: Side, price: u64) -> CommandKind {
        CommandKind::Place(Place {
            id: OrderId(id),
            account: AccountId(id),
            owner: None,
            side,
            price: Some(price),
            qty: 1,
            tif: TimeInForce::Gtc,
            post_only: false,
            budget: None,
            stp: None,
        })
    }

    pub(crate) fn state() -> MarketState {
        MarketState::new(MarketConfig { market: matching_core::MarketId("M".into()), ..MarketConfig::default() }, 2)
            .unwrap()
    }

    #[test]
    fn a_message_may_carry_one_command_or_an_array_numbered_in_order() {
        let mut s = state();
        let mut frames = vec![];
        let one = serde_json::to_vec(&place(1, Side::Bid, 10)).unwrap();
        assert_eq!(s.apply(5, 1_000, &one, &mut frames), Outcome::Applied(1));
        let many = serde_json::to_vec(&vec![place(2, Side::Ask, 10), place(3, Side::Bid, 9)]).unwrap();
        assert_eq!(s.apply(9, 900, &many, &mut frames), Outcome::Applied(2));
        assert_eq!(frames.iter().map(|f| (f.stream_seq, f.cmd)).collect::<Vec<_>>(), [(5, 1), (9, 2), (9, 3)]);
        assert_eq!(frames[1].time, 1_000, "time never goes back");
        for w in frames.windows(2) {
            assert_eq!(w[1].first, w[0].last + 1, "event sequences are gapless");
        }
    }

    #[test]
    fn redeliveries_garbage_and_resent_places_change_nothing() {
        let mut s = state();
        let mut frames = vec![];
        let p = serde_json::to_vec(&place(1, Side::Bid, 10)).unwrap();
        s.apply(1, 0, &p, &mut frames);
        let events = s.last_event_seq();
        assert_eq!(s.apply(1, 0, &p, &mut frames), Outcome::Duplicate);
        assert_eq!(s.apply(2, 0, b"{nope", &mut frames), Outcome::Dropped);
        assert_eq!(s.apply(3, 0, &p, &mut frames), Outcome::Applied(0), "same order id, new message");
        let too_many = serde_json::to_vec(&vec![place(9, Side::Bid, 1); MAX_COMMANDS_PER_MESSAGE + 1]).unwrap();
        assert_eq!(s.apply(4, 0, &too_many, &mut frames), Outcome::Dropped);
        assert_eq!(s.last_event_seq(), events);
        assert_eq!(s.applied, 4);
    }

    #[test]
    fn recent_ids_are_bounded_and_survive_a_snapshot() {
        let mut s = state();
        let mut frames = vec![];
        for id in 1..=3 {
            s.apply(id, 0, &serde_json::to_vec(&place(id, Side::Bid, 10 + id)).unwrap(), &mut frames);
        }
        let snap = s.snapshot();
        assert_eq!(snap.recent, [2, 3], "cap 2 keeps the newest");
        let cfg = snap.book.config.clone();
        let mut r = MarketState::restore(snap, &cfg, 2).unwrap();
        let again = serde_json::to_vec(&place(3, Side::Bid, 1)).unwrap();
        assert_eq!(r.apply(10, 0, &again, &mut frames), Outcome::Applied(0));
    }

}
