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
    /// Results of one job's assignments.
    pub fn job_result(job: &str) -> String {
        format!("job.{job}.result")
    }
    pub const ALL_MARKET_CMDS: &str = "market.*.cmd";
    pub const ALL_MARKET_EVTS: &str = "market.*.evt";
}

pub mod streams {
    /// Order commands, all markets; limits retention so a snapshot + replay can re-read them.
    pub const COMMANDS: &str = "GRIDBOOK_COMMANDS";
    /// Engine events, all markets; kept for replay and audits.
    pub const EVENTS: &str = "GRIDBOOK_EVENTS";
    /// Key-value bucket holding the engine's latest book snapshot per market.
    pub const SNAPSHOTS_BUCKET: &str = "gridbook_snapshots";
    /// Object store bucket for job input and output files, keyed by sha256.
    pub const FILES_BUCKET: &str = "gridbook_files";
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
