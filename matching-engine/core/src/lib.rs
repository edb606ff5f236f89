//! `matching-core`: Gridbook's order book as a pure state machine.
//!
//! [`OrderBook::apply`] takes one [`Command`] (which carries its own `seq` and `time`) and
//! appends the resulting [`Event`]s to a caller-provided buffer. There is no I/O, no async, no
//! clock, no randomness and no iteration over hash maps here: the same commands from the same
//! state give byte-identical events, which `matching-engine replay` and the tests rely on.
//!
//! - Prices are integer ticks in `min_price..=max_price`, quantities integer lots; the decimal
//!   `tick_size`/`lot_size` of [`MarketConfig`] are for the edges that parse and print.
//! - Price-time priority; a trade executes at the resting order's price. The one deliberate
//!   exception is the anti-whale rule (module `whale`), a priority rule and never a veto: an
//!   incoming bid first takes the asks of owners under their cap share of the window's matched
//!   volume (a capped owner's asks keep their place but are passed over), then whatever it still
//!   crosses. After every command the book is not crossed.
//! - Every command is answered: `accepted` (+ fills, cancels, deltas) or `rejected` with a
//!   typed [`RejectReason`]. Overload (`max_orders`, `max_levels`, judged on what would rest
//!   after matching) and out-of-range input are rejections, never panics; a rejected command
//!   changes nothing.
//! - [`OrderBook::snapshot`] / [`OrderBook::restore`] round-trip exactly, including the next
//!   event sequence number and the anti-whale window.
//!
//! Serde: the derives on [`Command`], [`Event`], [`MarketConfig`] and [`Snapshot`] are always
//! on; they are the JSONL format of the replay tool and the engine's logs (see `types`).

mod book;
mod ladder;
mod types;
pub mod whale;

pub use book::OrderBook;
pub use types::*;

/// A fixed, deterministic hasher (the FxHash function) for `OrderId`/`OwnerId` lookups. Maps
/// built with it are never iterated.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct FxHasher {
    hash: u64,
}

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u64(&mut self, i: u64) {
        self.hash = (self.hash.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub(crate) type FxBuild = std::hash::BuildHasherDefault<FxHasher>;
