//! A node's reliability score (`nodes.reputation`, basis points 0..=10,000), pure.
//!
//! An exponential moving average of its resolved assignments: each one moves the score a
//! fraction [`WEIGHT_DIV`]⁻¹ of the way to its outcome — 10,000 for a verified assignment
//! without a failed item, 0 for one that failed (a failed check, a node-reported failure, an
//! overdue one) — so older history decays geometrically (half-life ≈ 11 assignments) and one
//! bad result costs more the better the record was. A proven cheat sets it to 0 at once.
//!
//! Teeth ([`probation_exit`], [`demote`]): a node leaves probation only with at least
//! `jobs::PROBATION_PASSES` verified assignments *and* a score of at least [`EXIT_SCORE`] *and* a
//! hardware challenge whose timing fit its device class (`nodes.challenge_timing = 'fits'`, the
//! market's own clock: `executor::challenge`); an
//! active node whose score falls below [`DEMOTE_SCORE`] goes back on probation (its asks are
//! capped again). Not yet an input: uptime from heartbeats, canary results.

/// New nodes start here (the migration's default).
pub const START: i32 = 5_000;
/// Each resolved assignment moves the score 1/16 of the way to its outcome.
pub const WEIGHT_DIV: i32 = 16;
/// The lowest score with which a node leaves probation.
pub const EXIT_SCORE: i32 = 6_000;
/// Below this an active node is demoted to probation.
pub const DEMOTE_SCORE: i32 = 4_000;

/// What an assignment's resolution says about its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Verified, every item good.
    Passed,
    /// Anything else that is the node's doing (failed check, node failure, overdue, partial).
    Failed,
    /// A failure its own result proves (`FailedCheck::is_proven_cheat`).
    ProvenCheat,
}

/// The score after `outcome`.
pub fn update(score: i32, outcome: Outcome) -> i32 {
    let score = score.clamp(0, 10_000);
    let target = match outcome {
        Outcome::Passed => 10_000,
        Outcome::Failed => 0,
        Outcome::ProvenCheat => return 0,
    };
    // Round away from the score so a step always moves it (until it reaches the target).
    let delta = target - score;
    let step = if delta >= 0 {
        (delta + WEIGHT_DIV - 1) / WEIGHT_DIV
    } else {
        (delta - WEIGHT_DIV + 1) / WEIGHT_DIV
    };
    (score + step).clamp(0, 10_000)
}

/// Whether a probation node with `passes` verified assignments and `score` becomes active;
/// `timing_fits`: its hardware challenge came within its class's bound. A node whose timing
/// does not fit (too slow, or never timed) stays on probation whatever its record.
pub fn probation_exit(passes: i64, score: i32, required_passes: i64, timing_fits: bool) -> bool {
    timing_fits && passes >= required_passes && score >= EXIT_SCORE
}

/// Whether an active node with `score` goes back on probation.
pub fn demote(score: i32) -> bool {
    score < DEMOTE_SCORE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_moves_a_sixteenth_towards_each_outcome_and_a_cheat_zeroes_it() {
        assert_eq!(update(START, Outcome::Passed), 5_313);
        assert_eq!(update(START, Outcome::Failed), 4_687);
        assert_eq!(update(9_000, Outcome::ProvenCheat), 0);
        assert_eq!(update(10_000, Outcome::Passed), 10_000);
        assert_eq!(update(0, Outcome::Failed), 0);
        assert_eq!(update(9_999, Outcome::Passed), 10_000, "a step always moves it");
        // A new node needs 4 passes to reach the exit score; 10 are required anyway.
        let mut s = START;
        let mut n = 0;
        while s < EXIT_SCORE {
            s = update(s, Outcome::Passed);
            n += 1;
        }
        assert_eq!(n, 4);
    }

    #[test]
    fn old_history_decays_and_failures_cost_more_from_a_good_record() {
        // From a perfect record, 15 failures in a row demote an active node (each also cancels its
        // asks, and a proven cheat zeroes the score at once)…
        let mut s = 10_000;
        let mut n = 0;
        while !demote(s) {
            s = update(s, Outcome::Failed);
            n += 1;
        }
        assert_eq!(n, 15);
        // …and a long good run forgets an old failure: after 40 passes the score is back above 9,000.
        let mut s = update(10_000, Outcome::Failed);
        for _ in 0..40 {
            s = update(s, Outcome::Passed);
        }
        assert!(s > 9_000, "{s}");
        assert!(probation_exit(10, EXIT_SCORE, 10, true));
        assert!(!probation_exit(9, 10_000, 10, true));
        assert!(!probation_exit(10, EXIT_SCORE - 1, 10, true));
        // A node whose challenge was too slow for its class never leaves probation.
        assert!(!probation_exit(1_000, 10_000, 10, false));
    }
}
