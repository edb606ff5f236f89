//! The one place that names NATS subjects, streams, consumers and buckets, and defines the
//! messages that travel on them. Services and the engine import names from here; no other
//! crate spells a subject.
//!
//! Naming: dotted, scope first, verb last (`market.<market>.cmd`).

pub mod subjects {
    /// Order commands for one market (API/outbox → engine).
    pub fn market_cmd(market: &str) -> String {
        format!("market.{market}.cmd")
    }
    /// Sequenced events for one market (engine → settlement, market data).
    pub fn market_evt(market: &str) -> String {
        format!("market.{market}.evt")
    }
    /// Request/reply: the L2 snapshot of one market with the sequence it reflects.
    pub fn market_snapshot(market: &str) -> String {
        format!("api.market.{market}.snapshot")
    }
    /// Assignments for one provider node.
    pub fn node_assign(node: &str) -> String {
        format!("node.{node}.assign")
    }
    /// Heartbeats from one provider node.
    pub fn node_heartbeat(node: &str) -> String {
        format!("node.{node}.heartbeat")
    }
    /// Request/reply: candles and 24 h figures of one market.
    pub fn market_stats(market: &str) -> String {
        format!("api.market.{market}.stats")
    }
    /// Results of one job's assignments.
    pub fn job_result(job: &str) -> String {
        format!("job.{job}.result")
    }
    pub const ALL_MARKET_CMDS: &str = "market.*.cmd";
    pub const ALL_MARKET_EVTS: &str = "market.*.evt";
    pub const ALL_NODE_ASSIGNS: &str = "node.*.assign";
}

pub mod streams {
    use std::time::Duration;

    use async_nats::jetstream::stream;

    /// JetStream drops a resent `Nats-Msg-Id` within this window.
    pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
    /// How long streams keep messages unless configured otherwise.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

    /// The one configuration of every Gridbook stream: file storage, limits retention, the
    /// duplicate window above.
    pub fn config(name: &str, subject: &str, max_age: Duration) -> stream::Config {
        stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        }
    }

    /// Order commands, all markets; limits retention so a snapshot + replay can re-read them.
    pub const COMMANDS: &str = "GRIDBOOK_COMMANDS";
    /// Engine events, all markets; kept for replay and audits.
    pub const EVENTS: &str = "GRIDBOOK_EVENTS";
    /// Assignments to provider nodes (`node.*.assign`), published from the ledger's outbox.
    pub const ASSIGNMENTS: &str = "GRIDBOOK_ASSIGNMENTS";
    /// Object store holding the engine's latest snapshot per market.
    pub const SNAPSHOTS_BUCKET: &str = "gridbook_snapshots";
    /// Object store bucket for job input and output files, keyed by sha256.
    pub const FILES_BUCKET: &str = "gridbook_files";
}

/// NATS header names Gridbook sets.
pub mod headers {
    /// Deduplication id JetStream honours within the stream's duplicate window.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// On an event frame: the sequence of its last event (for cheap recovery look-ups).
    pub const LAST_SEQ: &str = "Gridbook-Last-Seq";
}

/// Messages on `market.<market>.*`.
pub mod market {
    use matching_core::{Event, Level, Price, Qty};
    use serde::{Deserialize, Serialize};

    /// What a client publishes on `market.<market>.cmd`: one command, or a JSON array of at
    /// most [`MAX_COMMANDS_PER_MESSAGE`] commands (one JetStream write, and so one fsync, for
    /// many commands). Commands carry no `seq` or `time`: the engine numbers them per market in
    /// stream order and takes the time from the JetStream timestamp (ms). Set `Nats-Msg-Id` to
    /// a unique id per message; the engine also drops a place whose order id it has seen.
    pub type CommandMsg = matching_core::CommandKind;

    /// The most commands one message on `market.<market>.cmd` may carry.
    pub const MAX_COMMANDS_PER_MESSAGE: usize = 4_096;

    /// All events of one command. The engine publishes frames on `market.<market>.evt` as a
    /// JSON array ([`EventMessage`]) per message, with `Nats-Msg-Id = <market>.<first event
    /// seq>` and header `Gridbook-Last-Seq`. Event sequences are gapless per market: a frame's
    /// `first` is the previous frame's `last + 1`, which is how a client detects a gap.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct EventFrame {
        pub market: String,
        /// JetStream sequence of the message that carried the command.
        pub stream_seq: u64,
        /// The command's number in this market (the `cmd` of its events).
        pub cmd: u64,
        /// Command time, milliseconds since the Unix epoch.
        pub time: u64,
        pub first: u64,
        pub last: u64,
        pub events: Vec<Event>,
        /// Best bid and offer after the command.
        pub best_bid: Option<Price>,
        pub best_ask: Option<Price>,
    }

    /// One message on `market.<market>.evt`: consecutive frames, oldest first.
    pub type EventMessage = Vec<EventFrame>;

    /// Reply to `api.market.<market>.snapshot`: the L2 book after event `seq`. Apply frames with
    /// `first > seq` on top of it.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct L2Snapshot {
        pub market: String,
        pub seq: u64,
        /// Best first.
        pub bids: Vec<Level>,
        /// Best first.
        pub asks: Vec<Level>,
    }

    /// One minute of trades. Prices in ticks, volume in lots.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Candle {
        /// Start of the minute, ms since the Unix epoch.
        pub start: u64,
        pub open: Price,
        pub high: Price,
        pub low: Price,
        pub close: Price,
        pub volume: Qty,
        pub trades: u64,
    }

    /// Reply to `api.market.<market>.stats`: the last 24 h as of event `seq`.
    #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MarketStats {
        pub market: String,
        pub seq: u64,
        pub last_price: Option<Price>,
        pub volume_24h: Qty,
        pub trades_24h: u64,
        pub high_24h: Option<Price>,
        pub low_24h: Option<Price>,
        /// Oldest first, at most 1,440.
        pub candles: Vec<Candle>,
    }
}

/// Validates a market symbol for use in a subject: upper-case letters, digits and `-`, at most
/// 64 characters (subjects must not contain `.`, `*`, `>` or whitespace).
pub fn valid_market_symbol(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_scope_first_verb_last() {
        assert_eq!(subjects::market_cmd("EMBED-MINILM-L6"), "market.EMBED-MINILM-L6.cmd");
        assert_eq!(subjects::market_evt("X"), "market.X.evt");
        assert_eq!(subjects::node_assign("n1"), "node.n1.assign");
    }

    #[test]
    fn market_symbols_cannot_break_subjects() {
        assert!(valid_market_symbol("RENDER-SD15-512"));
        for bad in ["", "a.b", "A*", "A>", "A B", "lower", &"X".repeat(65)] {
            assert!(!valid_market_symbol(bad), "{bad:?}");
        }
    }
}
