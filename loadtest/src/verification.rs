//! `loadtest verification`: how often the verifier catches a cheating node, simulated with the
//! settlement worker's own sampling code (`gridbook_settlement::verify::{sample, SamplePolicy}`),
//! beside the formula. No model runs here: a sampled faked item is a caught cheat (the
//! comparison itself is tested against the real model in `services/settlement/tests/it/cheating.rs`).
//!
//! Cheaters fake `f × n` of an assignment's `n` items (rounded, at least one):
//! - `random`: faked items chosen at random;
//! - `knows-old-rule`: faked items chosen among those the old rule (seed = assignment id, known to
//!   the node before it commits) would not re-run.
//!
//! Printed per row: detection under the old rule and under commit-then-sample (HMAC of the
//! commitment under a secret the node does not know), the with-replacement formula
//! `1 − (1 − f)^m`, the exact hypergeometric `1 − C(n−k, m) / C(n, m)`, and the expected gain of
//! cheating per assignment as a share of its payout when compute costs `cost-share` of the
//! payout: `f × cost_share − detection` (caught = not paid).
//!
//! The second table is the withholding window (`gridbook_settlement::withhold`, `--withhold` W,
//! default the worker's `withhold_assignments`): the expected profit of cheating over honest
//! work, in units of one assignment's pay, simulated through the same sampling code and the
//! window's own release rule (`withhold::Window`), beside the formulas (p = the simulated
//! detection per assignment):
//! - `career`: a fresh identity that fakes `f` of every assignment until it is caught (then it
//!   is suspended): without a window `f·γ/p − 1`; with it `f·γ/p − 1 − (1−p)(1−(1−p)^W)/p` (the
//!   caught assignment plus what is still withheld, up to W payouts);
//! - `hit and run`: an identity that worked W assignments honestly (its window full) and fakes
//!   one: without a window `f·γ − p`; with it `f·γ − p·(1 + W)`.

use std::collections::BTreeMap;

use clap::Args as ClapArgs;
use gridbook_settlement::verify::{self, SamplePolicy};
use uuid::Uuid;

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Items per assignment (1,000 = one unit of EMBED-MINILM-L6).
    #[arg(long, default_value_t = 1_000)]
    items: usize,
    /// Sample sizes to try (items re-run per assignment).
    #[arg(long, value_delimiter = ',', default_value = "4,16")]
    sample: Vec<usize>,
    /// Fractions of items faked.
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.05,0.10,0.50")]
    fake: Vec<f64>,
    /// Simulated assignments per row.
    #[arg(long, default_value_t = 20_000)]
    trials: u64,
    /// The node's compute cost as a share of the assignment's payout.
    #[arg(long, default_value_t = 0.5)]
    cost_share: f64,
    /// The withholding window W (verified assignments a payout is withheld for).
    #[arg(long, default_value_t = gridbook_settlement::withhold::DEFAULT_WITHHOLD_ASSIGNMENTS)]
    withhold: u32,
    /// Simulated cheater identities per row of the withholding table.
    #[arg(long, default_value_t = 20_000)]
    careers: u64,
}

/// One assignment of a cheater faking `k` random items of `n`, sampled as the worker samples
/// (an HMAC of a fresh commitment): caught?
fn caught(rng: &mut Rng, policy: &SamplePolicy, n: usize, k: usize) -> bool {
    let assignment = rng.uuid();
    let root = format!("{:016x}{:016x}", rng.next(), rng.next());
    let out = format!("{:016x}{:016x}", rng.next(), rng.next());
    let seed = verify::seed_u128(&policy.seed(assignment, &root, &out));
    let sample = verify::sample(n, policy.items("M"), seed);
    let faked = fake_set(rng, n, k, &[]);
    sample.iter().any(|&i| faked[i])
}

/// Pay of one assignment in the window model (an integer ledger amount; profits are printed
/// in units of it).
const PAY: i64 = 1_000_000;

/// Mean profit over honest work, in units of one assignment's pay, of `careers` identities
/// that fake `k` of `n` items of every assignment until caught, with window `w` (0: none).
fn career_profit(rng: &mut Rng, policy: &SamplePolicy, n: usize, k: usize, gamma: f64, w: u32, careers: u64) -> f64 {
    let f = k as f64 / n as f64;
    let mut total = 0.0;
    for _ in 0..careers {
        let mut window = gridbook_settlement::withhold::Window::new(w);
        let mut assignments = 0u64;
        loop {
            assignments += 1;
            if caught(rng, policy, n, k) || assignments >= 1_000_000 {
                window.forfeit();
                break;
            }
            window.pass(PAY);
        }
        // Received − compute spent − what honest work would have earned on the same
        // assignments (honest pay still withheld at the end is released later: it counts).
        let received = window.released as f64 / PAY as f64;
        let n_a = assignments as f64;
        total += received - (1.0 - f) * gamma * n_a - (1.0 - gamma) * n_a;
    }
    total / careers as f64
}

/// Mean profit of faking one assignment after `w` honest ones (the window full): `f·γ` saved,
/// and when caught the assignment's pay and everything withheld lost.
fn hit_and_run_profit(rng: &mut Rng, policy: &SamplePolicy, n: usize, k: usize, gamma: f64, w: u32, trials: u64) -> f64 {
    let f = k as f64 / n as f64;
    let mut total = 0.0;
    for _ in 0..trials {
        let mut window = gridbook_settlement::withhold::Window::new(w);
        for _ in 0..w {
            window.pass(PAY);
        }
        let lost = if caught(rng, policy, n, k) { PAY + window.forfeit() } else { 0 };
        total += f * gamma - lost as f64 / PAY as f64;
    }
    total / trials as f64
}

/// splitmix64: the simulation's own reproducible randomness (seeded per row).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn uuid(&mut self) -> Uuid {
        Uuid::from_u64_pair(self.next(), self.next())
    }
}

/// `k` distinct items of `0..n`, none of them in `avoid` (when there are enough).
fn fake_set(rng: &mut Rng, n: usize, k: usize, avoid: &[usize]) -> Vec<bool> {
    let mut faked = vec![false; n];
    let free = n - avoid.len().min(n);
    let k = k.min(if avoid.is_empty() { n } else { free });
    let mut chosen = 0;
    while chosen < k {
        let i = rng.below(n);
        if !faked[i] && !avoid.contains(&i) {
            faked[i] = true;
            chosen += 1;
        }
    }
    faked
}

/// 1 − C(n−k, m) / C(n, m).
fn hypergeometric(n: usize, k: usize, m: usize) -> f64 {
    if m > n - k {
        return 1.0;
    }
    let mut miss = 1.0;
    for i in 0..m {
        miss *= (n - k - i) as f64 / (n - i) as f64;
    }
    1.0 - miss
}

pub fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(a.items > 0 && a.trials > 0, "--items and --trials must be positive");
    println!(
        "verification sampling: {} items per assignment, {} simulated assignments per row, compute = {:.0}% of pay",
        a.items,
        a.trials,
        a.cost_share * 100.0
    );
    println!(
        "{:>6} {:>4} {:>7} | {:>18} {:>18} {:>14} | {:>11} {:>12} | {:>14} {:>14}",
        "f", "m", "faked", "old rule, knows it", "new rule, same", "new, random", "1-(1-f)^m", "exact hyper.", "gain old rule", "gain new rule"
    );
    for &m in &a.sample {
        anyhow::ensure!(m > 0, "sample sizes must be positive");
        for &f in &a.fake {
            anyhow::ensure!((0.0..=1.0).contains(&f), "fractions must be within 0..1");
            let k = ((f * a.items as f64).round() as usize).max(1);
            let mut rng = Rng(0x6772_6964 ^ (m as u64) << 32 ^ k as u64);
            let mut secret = [0u8; 32];
            for chunk in secret.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next().to_be_bytes());
            }
            let policy = SamplePolicy::new(secret.to_vec(), m, BTreeMap::new()).map_err(anyhow::Error::msg)?;
            let (mut old_caught, mut new_caught, mut random_caught) = (0u64, 0u64, 0u64);
            for _ in 0..a.trials {
                let assignment = rng.uuid();
                // The old rule, which the node could compute from the assignment id.
                let old = verify::sample(a.items, m, assignment.as_u128());
                let smart = fake_set(&mut rng, a.items, k, &old);
                old_caught += old.iter().any(|&i| smart[i]) as u64;
                // Commit, then sample: the seed is an HMAC of what the node committed to.
                let root = format!("{:016x}{:016x}", rng.next(), rng.next());
                let out = format!("{:016x}{:016x}", rng.next(), rng.next());
                let seed = verify::seed_u128(&policy.seed(assignment, &root, &out));
                let new = verify::sample(a.items, policy.items("M"), seed);
                new_caught += new.iter().any(|&i| smart[i]) as u64;
                let random = fake_set(&mut rng, a.items, k, &[]);
                random_caught += new.iter().any(|&i| random[i]) as u64;
            }
            let p = |c: u64| c as f64 / a.trials as f64;
            let formula = 1.0 - (1.0 - f).powi(m as i32);
            let exact = hypergeometric(a.items, k, m);
            let gain = |d: f64| f * a.cost_share - d;
            println!(
                "{:>6.2} {:>4} {:>7} | {:>18.4} {:>18.4} {:>14.4} | {:>11.4} {:>12.4} | {:>+14.4} {:>+14.4}",
                f,
                m,
                k,
                p(old_caught),
                p(new_caught),
                p(random_caught),
                formula,
                exact,
                gain(p(old_caught)),
                gain(p(new_caught)),
            );
        }
    }
    println!(
        "gain = f × cost_share − detection, as a share of one assignment's pay (> 0: cheating pays). \
         Without a withholding window a caught cheat loses only that assignment."
    );
    withholding_table(&a)
}

fn withholding_table(a: &Args) -> anyhow::Result<()> {
    use gridbook_settlement::withhold::min_window;
    let (w, gamma) = (a.withhold, a.cost_share);
    println!();
    println!(
        "withholding window W = {w} verified assignments; profit of cheating over honest work, in units of one \
         assignment's pay; compute = {:.0}% of pay; {} identities per row",
        gamma * 100.0,
        a.careers
    );
    println!(
        "{:>6} {:>4} {:>8} {:>6} {:>6} | {:>22} {:>22} | {:>22} {:>22}",
        "f", "m", "p (sim)", "1/p", "W≥1/p", "career, no window", "career, window W", "hit and run, no win.", "hit and run, window W"
    );
    for &m in &a.sample {
        for &f in &a.fake {
            let k = ((f * a.items as f64).round() as usize).max(1);
            let mut rng = Rng(0x7769_7468 ^ (m as u64) << 32 ^ k as u64);
            let mut secret = [0u8; 32];
            for chunk in secret.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next().to_be_bytes());
            }
            let policy = SamplePolicy::new(secret.to_vec(), m, BTreeMap::new()).map_err(anyhow::Error::msg)?;
            let fk = k as f64 / a.items as f64;
            let hits = (0..a.trials).filter(|_| caught(&mut rng, &policy, a.items, k)).count();
            let p = hits as f64 / a.trials as f64;
            let career_none = career_profit(&mut rng, &policy, a.items, k, gamma, 0, a.careers);
            let career_w = career_profit(&mut rng, &policy, a.items, k, gamma, w, a.careers);
            let hit_none = hit_and_run_profit(&mut rng, &policy, a.items, k, gamma, 0, a.careers);
            let hit_w = hit_and_run_profit(&mut rng, &policy, a.items, k, gamma, w, a.careers);
            let held = (1.0 - p) * (1.0 - (1.0 - p).powi(w as i32)) / p;
            let cell = |sim: f64, formula: f64| format!("{sim:+.3} ({formula:+.3})");
            println!(
                "{:>6.2} {:>4} {:>8.4} {:>6.2} {:>6} | {:>22} {:>22} | {:>22} {:>22}",
                f,
                m,
                p,
                1.0 / p,
                if w as f64 >= 1.0 / p { "yes" } else { "no" },
                cell(career_none, fk * gamma / p - 1.0),
                cell(career_w, fk * gamma / p - 1.0 - held),
                cell(hit_none, fk * gamma - p),
                cell(hit_w, fk * gamma - p * (1.0 + w as f64)),
            );
        }
    }
    println!(
        "simulated (formula with the simulated p). career: fakes f of every assignment until caught, \
         f·γ/p − 1 − (1−p)(1−(1−p)^W)/p; hit and run: W honest assignments, then one faked, f·γ − p·(1+W). \
         Smallest W ≥ 1/p at m = 4: f = 1% → {}, 5% → {}, 10% → {}, 50% → {}.",
        min_window(0.01, 4),
        min_window(0.05, 4),
        min_window(0.10, 4),
        min_window(0.50, 4)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exact_detection_probability_matches_small_cases() {
        // 1 faked of 4, sample 1: caught 1/4; sample covering every honest item: always caught.
        assert!((hypergeometric(4, 1, 1) - 0.25).abs() < 1e-12);
        assert_eq!(hypergeometric(4, 1, 4), 1.0);
        assert!((hypergeometric(10, 5, 2) - (1.0 - (5.0 * 4.0) / (10.0 * 9.0))).abs() < 1e-12);
    }

    #[test]
    fn a_cheater_who_avoids_the_old_sample_never_fakes_it() {
        let mut rng = Rng(1);
        let avoid = [1, 3];
        let faked = fake_set(&mut rng, 6, 10, &avoid);
        assert!(!faked[1] && !faked[3]);
        assert_eq!(faked.iter().filter(|&&x| x).count(), 4);
    }
}
