//! Candles (1 minute) and 24-hour figures derived from fills. Pure: the market task feeds it
//! every frame in sequence order, and it is part of the engine snapshot so that a restart
//! continues it exactly.

use std::collections::VecDeque;

use gridbook_wire::market::{Candle, MarketStats};
use matching_core::{Event, EventKind};
use serde::{Deserialize, Serialize};

const MINUTE_MS: u64 = 60_000;
/// 24 hours of one-minute candles: the bound on what is kept.
pub const MAX_CANDLES: usize = 1_440;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Oldest first; only minutes that had trades.
    candles: VecDeque<Candle>,
    last_price: Option<u64>,
}

impl Stats {
    /// Account for one command's events at command time `time_ms`.
    pub fn apply(&mut self, time_ms: u64, events: &[Event]) {
        for e in events {
            if let EventKind::Fill { price, qty, .. } = e.kind {
                self.trade(time_ms, price, qty);
            }
        }
    }

    fn trade(&mut self, time_ms: u64, price: u64, qty: u64) {
        self.last_price = Some(price);
        let start = time_ms - time_ms % MINUTE_MS;
        match self.candles.back_mut() {
            Some(c) if c.start == start => {
                c.high = c.high.max(price);
                c.low = c.low.min(price);
                c.close = price;
                c.volume = c.volume.saturating_add(qty);
                c.trades += 1;
            }
            _ => {
                self.candles.push_back(Candle {
                    start,
                    open: price,
                    high: price,
                    low: price,
                    close: price,
                    volume: qty,
                    trades: 1,
                });
                if self.candles.len() > MAX_CANDLES {
                    self.candles.pop_front();
                }
            }
        }
    }

    /// Figures for the 24 hours before `now_ms` (command time of the latest frame).
    pub fn report(&self, market: &str, seq: u64, now_ms: u64) -> MarketStats {
        let since = now_ms.saturating_sub(24 * 60 * MINUTE_MS);
        let day: Vec<Candle> = self.candles.iter().filter(|c| c.start + MINUTE_MS > since).copied().collect();
        MarketStats {
            market: market.to_string(),
            seq,
            last_price: self.last_price,
            volume_24h: day.iter().map(|c| c.volume).sum(),
            trades_24h: day.iter().map(|c| c.trades).sum(),
            high_24h: day.iter().map(|c| c.high).max(),
            low_24h: day.iter().map(|c| c.low).min(),
            candles: day,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use matching_core::{AccountId, OrderId, Side};

    fn fill(price: u64, qty: u64) -> Event {
        Event {
            seq: 1,
            cmd: 1,
            kind: EventKind::Fill {
                maker: OrderId(1),
                taker: OrderId(2),
                maker_account: AccountId(1),
                taker_account: AccountId(2),
                taker_side: Side::Bid,
                price,
                qty,
                fee: 0,
                maker_left: 0,
                taker_left: 0,
            },
        }
    }

    #[test]
    fn candles_roll_per_minute_and_the_day_window_drops_old_ones() {
        let mut s = Stats::default();
        s.apply(60_000, &[fill(10, 2), fill(12, 1)]);
        s.apply(119_999, &[fill(9, 1)]);
        s.apply(120_000, &[fill(11, 5)]);
        let r = s.report("M", 4, 120_000);
        assert_eq!(r.candles.len(), 2);
        assert_eq!(
            r.candles[0],
            Candle { start: 60_000, open: 10, high: 12, low: 9, close: 9, volume: 4, trades: 3 }
        );
        assert_eq!((r.volume_24h, r.trades_24h, r.last_price), (9, 4, Some(11)));
        assert_eq!((r.high_24h, r.low_24h), (Some(12), Some(9)));
        let later = s.report("M", 4, 120_000 + 24 * 60 * 60_000);
        assert_eq!(later.candles.len(), 1, "the first minute left the 24 h window");
        assert_eq!(later.volume_24h, 5);
    }

    #[test]
    fn candles_are_bounded() {
        let mut s = Stats::default();
        for m in 0..(MAX_CANDLES as u64 + 10) {
            s.apply(m * 60_000, &[fill(1, 1)]);
        }
        assert_eq!(s.candles.len(), MAX_CANDLES);
    }
}
