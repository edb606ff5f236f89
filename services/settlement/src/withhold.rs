//! The stake-free deterrent (issue 12): a withholding window.
//!
//! A provider's pay for a verified assignment does not reach its available balance at once: it
//! is withheld until `W` (= `withhold_assignments`) further assignments **of the same node**
//! have been verified and paid, then released. A proven cheat (`FailedCheck::is_proven_cheat`:
//! the node's own result shows wrong work) forfeits everything the node still has withheld.
//! So a cheater who is caught loses not only the cheated assignment's pay but up to `W` earlier
//! payouts, and `W ≥ 1/p` (p: the chance one assignment's cheat is caught) makes that expected
//! loss at least one whole payout. The arithmetic is in ARCHITECTURE.md ("Why a sampled check
//! deters without a stake").
//!
//! **The clock** is the node's count of verified (paid) assignments (`node_settled_counts`):
//! only those were checked, so only they gave a cheat a chance to be caught. Failures that prove
//! nothing (the node reported it could not run the work, or it was overdue) neither advance the
//! window nor forfeit. The `i`-th verified assignment's pay is released when the `(i + W)`-th
//! settles ([`release_at`], [`releasable`]); at any time a node has at most its last `W`
//! payouts withheld. `W = 0` turns withholding off (paid at once).
//!
//! **The ledger** (every movement a posted transfer with an id derived from the assignment, in
//! the transaction that settles it):
//! - pass: `escrow::complete` posts the pay to the provider as before, then
//!   provider → the node's `withheld` account, the same amount (`withhold`);
//! - release: the node's `withheld` account → provider (`withhold_release`), for each payout
//!   whose window has passed;
//! - proven cheat: the node's `withheld` account → the ledger's `verification_fund` system
//!   account (`withhold_forfeit`), for each payout still withheld. The studios are not the
//!   destination: every studio paid exactly the units that passed their check (the cheated
//!   units are redone from the same reservation or refunded), so none of them is out of pocket;
//!   the forfeit pays for the checking that caught the cheat (re-runs, and the planned
//!   verification assignments paid at the market price). Nothing is created or destroyed:
//!   money only moves between accounts, and `ledger_check_invariants()` holds.
//!
//! `node_withholdings` says whose pay each withheld amount is, when it is released and what
//! became of it; `GET /v1/earnings` shows withheld / released / forfeited from it.

use diesel::prelude::*;
use gridbook_ledger::ids::{AccountId, TransferId};
use gridbook_ledger::model::{AccountCode, NewAccount, NewTransfer};
use gridbook_ledger::{escrow, settlement, store};
use uuid::Uuid;

use crate::error::Result;
use crate::schema::{node_settled_counts, node_withholdings};

/// The default window: `⌈1/p⌉` for a cheater faking 5 % of an assignment's items under the
/// default sample of 4 items (`verify::DEFAULT_SAMPLE_ITEMS`): p = 1 − 0.95⁴ ≈ 0.185,
/// 1/p ≈ 5.4 → 6 ([`min_window`]; a test keeps the two in step).
pub const DEFAULT_WITHHOLD_ASSIGNMENTS: u32 = 6;

/// The probability that one assignment in which a fraction `f` of the items is faked is caught
/// by a sample of `m` items (drawn with replacement; without replacement it is higher).
pub fn detection(f: f64, m: usize) -> f64 {
    1.0 - (1.0 - f.clamp(0.0, 1.0)).powi(m.min(i32::MAX as usize) as i32)
}

/// The smallest window `W ≥ 1/p` for a cheater faking `f` under a sample of `m` items (0 when
/// nothing can be caught: `f = 0` or `m = 0`).
pub fn min_window(f: f64, m: usize) -> u32 {
    let p = detection(f, m);
    if p <= 0.0 {
        return 0;
    }
    // A tiny epsilon so that an exact 1/p (e.g. p = 0.5) is not rounded up by float noise.
    ((1.0 / p) - 1e-9).ceil().max(1.0).min(u32::MAX as f64) as u32
}

/// The node's count of verified assignments at which the pay of its `seq`-th is released.
pub fn release_at(seq: u64, window: u32) -> u64 {
    seq.saturating_add(window as u64)
}

/// Which of the withheld payouts (`(id, release_at)`) are released once the node has `settled`
/// verified assignments.
pub fn releasable<T: Copy>(open: &[(T, u64)], settled: u64) -> Vec<T> {
    open.iter().filter(|(_, at)| *at <= settled).map(|(id, _)| *id).collect()
}

/// The window as a pure model (the simulation in `loadtest verification` and the tests): the
/// payouts of one node, withheld, released or forfeited by the same rule as the database.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub window: u32,
    pub settled: u64,
    /// `(release_at, amount)` still withheld.
    pub open: Vec<(u64, i64)>,
    pub released: i64,
    pub forfeited: i64,
}

impl Window {
    pub fn new(window: u32) -> Self {
        Window { window, ..Default::default() }
    }
    /// A verified assignment paying `amount`: returns what becomes available now (the amounts
    /// released by this settlement; with `W = 0`, this pay itself).
    pub fn pass(&mut self, amount: i64) -> i64 {
        self.settled += 1;
        if self.window == 0 {
            self.released += amount;
            return amount;
        }
        self.open.push((release_at(self.settled, self.window), amount));
        let keyed: Vec<(usize, u64)> = self.open.iter().enumerate().map(|(i, (at, _))| (i, *at)).collect();
        let go = releasable(&keyed, self.settled);
        let mut now = 0;
        for i in go.into_iter().rev() {
            now += self.open.remove(i).1;
        }
        self.released += now;
        now
    }
    /// What is withheld now.
    pub fn withheld(&self) -> i64 {
        self.open.iter().map(|(_, a)| a).sum()
    }
    /// A proven cheat: everything withheld is forfeited; returns the amount.
    pub fn forfeit(&mut self) -> i64 {
        let all = self.withheld();
        self.open.clear();
        self.forfeited += all;
        all
    }
}

/// The node's `withheld` account on `ledger`.
pub fn withheld_account_id(ledger: &str, node: Uuid) -> AccountId {
    AccountId::derived(&["withheld", ledger, &node.to_string()])
}

/// The `verification_fund` system account of `ledger`, where forfeits go.
pub fn verification_fund_id(ledger: &str) -> AccountId {
    AccountId::system(ledger, AccountCode::VerificationFund.as_str())
}

fn tid(kind: &str, assignment: Uuid) -> TransferId {
    TransferId::derived(&[kind, &assignment.to_string()])
}

/// What settling one verified assignment did to its node's window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Withheld {
    /// This assignment's pay, now withheld (0: withholding off or nothing paid).
    pub withheld: i64,
    /// Earlier payouts released by this settlement: (assignment, amount).
    pub released: Vec<(Uuid, i64)>,
}

#[derive(QueryableByName)]
struct OpenRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    assignment_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    release_at: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    amount: i64,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    provider_account_id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    withheld_account_id: Uuid,
}

/// The node's payouts still withheld, locked (the caller holds the node's count row).
fn open_rows(c: &mut PgConnection, node: Uuid) -> Result<Vec<OpenRow>> {
    Ok(diesel::sql_query(
        "SELECT assignment_id, release_at, amount, provider_account_id, withheld_account_id \
         FROM node_withholdings WHERE node_id = $1 AND state = 'withheld' \
         ORDER BY seq FOR UPDATE",
    )
    .bind::<diesel::sql_types::Uuid, _>(node)
    .load(c)?)
}

/// In the transaction that settled assignment `assignment` of `node` as verified, after
/// `escrow::complete` posted its pay: withholds that pay and releases the earlier payouts whose
/// window has passed. Call once per assignment (the caller's `resolve_assignment` guarantees it;
/// the transfer ids are derived from the assignment, so a retry cannot pay twice).
pub fn on_pass(c: &mut PgConnection, node: Uuid, assignment: Uuid, window: u32) -> Result<Withheld> {
    if window == 0 {
        return Ok(Withheld::default());
    }
    let asg = escrow::get_assignment(c, assignment)?;
    let Some(units) = asg.verified_units.filter(|&v| v > 0) else {
        return Ok(Withheld::default());
    };
    let pay = settlement::cost(units, asg.trade_price)?;
    let ledger = store::get_account(c, asg.provider_account)?.ledger;
    // The node's clock: one statement, which also locks its row until commit.
    let settled: i64 = diesel::insert_into(node_settled_counts::table)
        .values((node_settled_counts::node_id.eq(node), node_settled_counts::settled.eq(1i64)))
        .on_conflict(node_settled_counts::node_id)
        .do_update()
        .set(node_settled_counts::settled.eq(node_settled_counts::settled + 1))
        .returning(node_settled_counts::settled)
        .get_result(c)?;
    let withheld_account = withheld_account_id(&ledger, node);
    let mut account = NewAccount::new(withheld_account, &ledger, AccountCode::Withheld);
    account.reference = Some(node);
    store::create_account(c, &account)?;
    store::create_transfer(
        c,
        &NewTransfer::posted(tid("withhold", assignment), asg.provider_account, withheld_account, pay, "withhold")
            .with_reference(assignment),
    )?;
    diesel::insert_into(node_withholdings::table)
        .values((
            node_withholdings::assignment_id.eq(assignment),
            node_withholdings::node_id.eq(node),
            node_withholdings::ledger.eq(&ledger),
            node_withholdings::provider_account_id.eq(asg.provider_account.0),
            node_withholdings::withheld_account_id.eq(withheld_account.0),
            node_withholdings::amount.eq(pay),
            node_withholdings::seq.eq(settled),
            node_withholdings::release_at.eq(release_at(settled as u64, window) as i64),
        ))
        .execute(c)?;
    let open = open_rows(c, node)?;
    let keyed: Vec<(usize, u64)> = open.iter().enumerate().map(|(i, r)| (i, r.release_at.max(0) as u64)).collect();
    let mut released = Vec::new();
    for i in releasable(&keyed, settled as u64) {
        let r = &open[i];
        store::create_transfer(
            c,
            &NewTransfer::posted(
                tid("withhold_release", r.assignment_id),
                AccountId(r.withheld_account_id),
                AccountId(r.provider_account_id),
                r.amount,
                "withhold_release",
            )
            .with_reference(r.assignment_id),
        )?;
        diesel::update(node_withholdings::table.find(r.assignment_id))
            .set((
                node_withholdings::state.eq("released"),
                node_withholdings::resolved_by.eq(Some(assignment)),
                node_withholdings::resolved_at.eq(diesel::dsl::now),
            ))
            .execute(c)?;
        released.push((r.assignment_id, r.amount));
    }
    Ok(Withheld { withheld: pay, released })
}

/// In the transaction that failed assignment `cheat` of `node` for a proven cheat: everything
/// the node still has withheld goes to the ledger's `verification_fund`. Returns the amount
/// forfeited (per ledger summed: the amounts are in their own ledgers' units).
pub fn forfeit(c: &mut PgConnection, node: Uuid, cheat: Uuid) -> Result<i64> {
    // The node's count row first, as a pass takes it (a concurrent pass of the same node
    // cannot release what this forfeits).
    diesel::sql_query("SELECT settled FROM node_settled_counts WHERE node_id = $1 FOR UPDATE")
        .bind::<diesel::sql_types::Uuid, _>(node)
        .execute(c)?;
    let open = open_rows(c, node)?;
    let mut total = 0i64;
    for r in &open {
        let ledger = store::get_account(c, AccountId(r.withheld_account_id))?.ledger;
        let fund = verification_fund_id(&ledger);
        store::create_account(c, &NewAccount::system(&ledger, AccountCode::VerificationFund))?;
        store::create_transfer(
            c,
            &NewTransfer::posted(
                tid("withhold_forfeit", r.assignment_id),
                AccountId(r.withheld_account_id),
                fund,
                r.amount,
                "withhold_forfeit",
            )
            .with_reference(cheat),
        )?;
        diesel::update(node_withholdings::table.find(r.assignment_id))
            .set((
                node_withholdings::state.eq("forfeited"),
                node_withholdings::resolved_by.eq(Some(cheat)),
                node_withholdings::resolved_at.eq(diesel::dsl::now),
            ))
            .execute(c)?;
        total = total.saturating_add(r.amount);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::DEFAULT_SAMPLE_ITEMS;

    #[test]
    fn the_default_window_is_one_over_p_for_a_five_percent_cheater_at_the_default_sample() {
        assert_eq!(DEFAULT_SAMPLE_ITEMS, 4);
        let p = detection(0.05, DEFAULT_SAMPLE_ITEMS);
        assert!((p - 0.185_493_75).abs() < 1e-9, "{p}");
        assert_eq!(min_window(0.05, DEFAULT_SAMPLE_ITEMS), DEFAULT_WITHHOLD_ASSIGNMENTS);
        assert!(DEFAULT_WITHHOLD_ASSIGNMENTS as f64 >= 1.0 / p);
        // Other points: 1 % → 1/p ≈ 25.4, 10 % → 2.9, 50 % → 1.07; p = 1/2 exactly → 2.
        assert_eq!(min_window(0.01, 4), 26);
        assert_eq!(min_window(0.10, 4), 3);
        assert_eq!(min_window(0.50, 4), 2);
        assert_eq!(min_window(0.50, 1), 2);
        assert_eq!(min_window(1.0, 4), 1);
        assert_eq!(min_window(0.0, 4), 0);
    }

    #[test]
    fn a_payout_is_released_exactly_when_w_more_assignments_have_settled() {
        assert_eq!(release_at(1, 6), 7);
        let open = [("a", 7), ("b", 8), ("c", 9)];
        assert_eq!(releasable(&open, 6), Vec::<&str>::new());
        assert_eq!(releasable(&open, 7), vec!["a"]);
        assert_eq!(releasable(&open, 9), vec!["a", "b", "c"]);
    }

    #[test]
    fn the_window_model_withholds_the_last_w_payouts_and_conserves_money() {
        // Every window size 0..=7, every run of up to 20 payouts of distinct amounts, a forfeit
        // after any prefix: withheld = the last min(n, W) payouts; released + withheld (+
        // forfeited) = everything paid; a forfeit takes exactly what was withheld.
        for w in 0..=7u32 {
            for cheat_after in 0..=20usize {
                let mut win = Window::new(w);
                let mut paid = 0i64;
                let amounts: Vec<i64> = (0..20).map(|i| 10 + 7 * i as i64).collect();
                for (i, &a) in amounts.iter().enumerate() {
                    if i == cheat_after {
                        let before = win.withheld();
                        assert_eq!(win.forfeit(), before);
                        assert_eq!(win.withheld(), 0);
                        break;
                    }
                    let now = win.pass(a);
                    paid += a;
                    let n = i + 1;
                    let last: i64 = amounts[n.saturating_sub(w as usize)..n].iter().sum();
                    assert_eq!(win.withheld(), last, "w {w} n {n}");
                    // What this settlement released is the payout W back (if any).
                    let want = if w == 0 { a } else if n > w as usize { amounts[n - 1 - w as usize] } else { 0 };
                    assert_eq!(now, want, "w {w} n {n}");
                    assert_eq!(win.released + win.withheld() + win.forfeited, paid);
                }
                assert_eq!(win.released + win.withheld() + win.forfeited, paid);
            }
        }
    }

    #[test]
    fn accounts_are_one_per_ledger_and_node() {
        let n = Uuid::from_u128(7);
        assert_ne!(withheld_account_id("USD", n), withheld_account_id("GRID", n));
        assert_ne!(withheld_account_id("USD", n), withheld_account_id("USD", Uuid::from_u128(8)));
        assert_eq!(verification_fund_id("USD"), AccountId::system("USD", "verification_fund"));
    }
}
