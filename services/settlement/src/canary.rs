//! Canaries (issue 12): items with known answers that the market mixes into assignments.
//!
//! When a fill creates an assignment ([`place`], in the settlement transaction), the worker draws
//! how many canaries it gets ([`CanaryPolicy::count`]: `⌊n × rate + u⌋` for `n` items and a
//! uniform `u`, so `n × rate` on average, and at least one whenever the assignment has more
//! items than its verification sample — the node knows `n` from the trade, so it would
//! otherwise know when nothing but the sample checks it), picks them from the market's pool
//! (`canary_items`, topped up from [`generate`]) and their positions among the `n + k` lines at
//! random, and stores the layout (`job_assignments.canaries`, [`CanarySlot`]s).
//!
//! The API serves the lines in that layout, every one in the workload's canonical shape
//! (`executor::registry::served_fields`) and named by its position
//! (`gridbook_wire::catalog::served_id`), so neither an id, a position nor a line's shape tells a
//! canary apart. What can still tell one apart is its *content* (a market sentence among a
//! studio's Japanese product titles; a 64-bit terrain seed among a studio's small ones): the pool
//! is generated to look like ordinary inputs, and each canary is retired after
//! `max_uses` assignments (or once it caught a node) so a node cannot cheaply learn the pool.
//!
//! A canary's answer is computed once, by the market's own runtime, the first time a result
//! that holds it is verified (`verify::Verifier::answer_canaries`), and kept. The verifier
//! compares the node's canary lines with it (the same tolerances as the sample); a wrong or
//! missing canary fails the assignment (`FailedCheck::Canary`). Canaries are never charged to
//! the studio and never reach its output (the finisher drops them). Jobs with a private model get
//! none (the answers are the market model's) and `sd` markets neither (no pool: a re-run costs
//! seconds of GPU per image).

use std::collections::{BTreeMap, BTreeSet};

use diesel::prelude::*;
use executor::rng::Rng;
use gridbook_wire::catalog::{CanarySlot, WorkloadKind};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::Result;
use crate::schema::canary_items;

/// Canaries per item by default: 1 in 100 (FAR AI's whitepaper uses about 1 in 80–120).
pub const DEFAULT_CANARY_RATE: f64 = 0.01;
/// Live canaries kept per market (more when one assignment needs more).
pub const DEFAULT_POOL_SIZE: u32 = 64;
/// Assignments one canary is placed in before it is retired.
pub const DEFAULT_MAX_USES: u32 = 50;

/// How many canaries assignments get, and how the pool is kept.
#[derive(Clone, Debug, PartialEq)]
pub struct CanaryPolicy {
    /// Canaries per item (0: none), unless `rate_by_market` names the market.
    pub rate: f64,
    pub rate_by_market: BTreeMap<String, f64>,
    pub pool_size: u32,
    pub max_uses: u32,
    /// The verification sample per assignment (`sample_items*`): an assignment with more items
    /// than its sample always gets a canary.
    pub sample_items: usize,
    pub sample_items_by_market: BTreeMap<String, usize>,
}

impl Default for CanaryPolicy {
    fn default() -> Self {
        CanaryPolicy {
            rate: DEFAULT_CANARY_RATE,
            rate_by_market: BTreeMap::new(),
            pool_size: DEFAULT_POOL_SIZE,
            max_uses: DEFAULT_MAX_USES,
            sample_items: crate::verify::DEFAULT_SAMPLE_ITEMS,
            sample_items_by_market: BTreeMap::new(),
        }
    }
}

impl CanaryPolicy {
    /// No canaries at all.
    pub fn none() -> Self {
        CanaryPolicy { rate: 0.0, ..CanaryPolicy::default() }
    }

    /// `Err` for a rate outside `[0, 1]`, an empty pool or no uses.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (m, r) in std::iter::once(("default", &self.rate)).chain(self.rate_by_market.iter().map(|(m, r)| (m.as_str(), r))) {
            if !(0.0..=1.0).contains(r) {
                return Err(format!("canary_rate of {m} is {r}; it must be in 0..=1"));
            }
        }
        if self.pool_size == 0 || self.max_uses == 0 {
            return Err("canary_pool_size and canary_max_uses must be at least 1".into());
        }
        Ok(())
    }

    pub fn rate(&self, market: &str) -> f64 {
        self.rate_by_market.get(market).copied().unwrap_or(self.rate)
    }

    fn sample(&self, market: &str) -> usize {
        self.sample_items_by_market.get(market).copied().unwrap_or(self.sample_items)
    }

    /// Canaries for an assignment of `items` items of `market`, given a uniform `u` in [0, 1):
    /// `⌊items × rate + u⌋`, at least 1 when `items` exceeds the market's sample, at most
    /// `items`; 0 when the rate is 0.
    pub fn count(&self, market: &str, items: u64, u: f64) -> u64 {
        let rate = self.rate(market);
        if rate <= 0.0 || items == 0 {
            return 0;
        }
        let k = (items as f64 * rate + u.clamp(0.0, 1.0 - f64::EPSILON)).floor() as u64;
        let k = if items > self.sample(market) as u64 { k.max(1) } else { k };
        k.min(items)
    }
}

/// `k` distinct positions among `total` lines, ascending, drawn from `rng`.
pub fn positions(total: u64, k: u64, rng: &mut Rng) -> Vec<u64> {
    let k = k.min(total);
    let mut picked = BTreeSet::new();
    while (picked.len() as u64) < k {
        picked.insert(rng.next_u64() % total);
    }
    picked.into_iter().collect()
}

/// The pool's word lists: short, ordinary texts of the kinds people embed (support tickets,
/// product listings, questions, notes).
const NOUNS: &[&str] = &[
    "invoice", "laptop", "order", "package", "account", "password", "battery", "subscription",
    "refund", "printer", "router", "jacket", "camera", "headphones", "charger", "desk lamp",
    "coffee maker", "bicycle", "backpack", "phone case", "monitor", "keyboard", "sofa", "tent",
];
const ADJECTIVES: &[&str] = &[
    "new", "damaged", "blue", "wireless", "refurbished", "second-hand", "lightweight", "cheap",
    "waterproof", "premium", "broken", "compact", "vintage", "quiet", "portable", "large",
];
const VERBS: &[&str] = &[
    "reset", "return", "cancel", "update", "track", "replace", "install", "clean", "charge",
    "connect", "exchange", "repair",
];
const PLACES: &[&str] = &[
    "Berlin", "the warehouse", "Lisbon", "the office", "Osaka", "my apartment", "Toronto",
    "the store", "Nairobi", "the airport", "Melbourne", "the school",
];
const TEMPLATES: &[&str] = &[
    "How do I {verb} my {noun}?",
    "The {adj} {noun} stopped working after {n} days.",
    "{Adj} {noun} for sale, used {n} times, pickup in {place}.",
    "I want to {verb} the {noun} I bought last week.",
    "Where can I {verb} a {adj} {noun} near {place}?",
    "My {noun} arrived {adj} and I need to {verb} it.",
    "Order #{n}: {adj} {noun}, shipped to {place}.",
    "Is the {adj} {noun} worth it compared to the old one?",
    "Reminder: {verb} the {noun} before Friday.",
    "Customer in {place} asks whether the {noun} is {adj}.",
    "Best way to {verb} a {noun} without losing data?",
    "{n} units of the {adj} {noun} are back in stock in {place}.",
];

fn pick<'a>(rng: &mut Rng, list: &[&'a str]) -> &'a str {
    list[(rng.next_u64() % list.len() as u64) as usize]
}

/// One canary input for `kind`, in the served shape (`executor::registry::served_fields`), from
/// `seed`; `None` for kinds that have no pool (`sd`).
pub fn generate(kind: WorkloadKind, seed: u64) -> Option<Map<String, Value>> {
    let mut rng = Rng::new(seed);
    let mut m = Map::new();
    match kind {
        WorkloadKind::Embed => {
            let mut text = pick(&mut rng, TEMPLATES).to_owned();
            for (slot, list) in [("{noun}", NOUNS), ("{adj}", ADJECTIVES), ("{verb}", VERBS), ("{place}", PLACES)] {
                while text.contains(slot) {
                    text = text.replacen(slot, pick(&mut rng, list), 1);
                }
            }
            if text.contains("{Adj}") {
                let a = pick(&mut rng, ADJECTIVES);
                let mut c = a.chars();
                let cap: String = c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default();
                text = text.replace("{Adj}", &cap);
            }
            let n = 2 + rng.next_u64() % 9_000;
            text = text.replace("{n}", &n.to_string());
            m.insert("input".into(), Value::from(text));
        }
        WorkloadKind::Terrain => {
            // The shape of a line whose seed the API derived from a custom_id: a 64-bit seed.
            let seed = rng.next_u64();
            m.insert("seed".into(), Value::from(seed));
            m.insert("difficulty".into(), Value::from(1 + rng.next_u64() % executor::terrain::NUM_CLASSES));
        }
        WorkloadKind::Sd => return None,
    }
    Some(m)
}

/// A fresh random generator (the layout is never derivable from anything the node sees).
fn fresh_rng() -> Rng {
    Rng::new(Uuid::new_v4().as_u64_pair().0)
}

diesel::define_sql_function!(fn random() -> diesel::sql_types::Double);

/// Keeps at least `want` live canaries of `market` in the pool (new ones from [`generate`]).
fn top_up(c: &mut PgConnection, market: &str, kind: WorkloadKind, want: u64, rng: &mut Rng) -> Result<()> {
    let live: i64 = canary_items::table
        .filter(canary_items::market.eq(market))
        .filter(canary_items::retired.eq(false))
        .count()
        .get_result(c)?;
    let missing = want.saturating_sub(live.max(0) as u64);
    let rows: Vec<_> = (0..missing)
        .filter_map(|_| generate(kind, rng.next_u64()))
        .map(|input| {
            (
                canary_items::id.eq(Uuid::new_v4()),
                canary_items::market.eq(market),
                canary_items::input.eq(Value::Object(input)),
            )
        })
        .collect();
    if !rows.is_empty() {
        diesel::insert_into(canary_items::table).values(rows).execute(c)?;
    }
    Ok(())
}

/// Chooses the canaries of a new assignment of `items` items of `market` (in the caller's
/// transaction): their number ([`CanaryPolicy::count`]), distinct live canaries of the pool at
/// random (each use counted; retired at `max_uses`) and their positions at random. None for a
/// job with a private model, or a kind without a pool.
pub fn place(
    c: &mut PgConnection,
    policy: &CanaryPolicy,
    market: &str,
    kind: WorkloadKind,
    items: u64,
    private_model: bool,
) -> Result<Vec<CanarySlot>> {
    let mut rng = fresh_rng();
    let k = policy.count(market, items, rng.uniform());
    if k == 0 || private_model || generate(kind, 0).is_none() {
        return Ok(Vec::new());
    }
    top_up(c, market, kind, u64::from(policy.pool_size).max(k), &mut rng)?;
    let ids: Vec<Uuid> = canary_items::table
        .filter(canary_items::market.eq(market))
        .filter(canary_items::retired.eq(false))
        .order(random())
        .limit(k as i64)
        .select(canary_items::id)
        .load(c)?;
    diesel::update(canary_items::table.filter(canary_items::id.eq_any(&ids)))
        .set((
            canary_items::uses.eq(canary_items::uses + 1),
            canary_items::retired.eq((canary_items::uses + 1).ge(policy.max_uses.min(i32::MAX as u32) as i32)),
        ))
        .execute(c)?;
    let at = positions(items + ids.len() as u64, ids.len() as u64, &mut rng);
    Ok(at.into_iter().zip(ids).map(|(at, id)| CanarySlot { at, id }).collect())
}

/// The canaries of `slots` with their inputs and known answers (if computed), in slot order.
pub fn load(c: &mut PgConnection, slots: &[CanarySlot]) -> Result<Vec<crate::verify::Canary>> {
    type Row = (Uuid, Value, Option<Value>, Option<String>);
    let ids: Vec<Uuid> = slots.iter().map(|s| s.id).collect();
    let rows: BTreeMap<Uuid, Row> = canary_items::table
        .filter(canary_items::id.eq_any(&ids))
        .select((canary_items::id, canary_items::input, canary_items::answer, canary_items::answer_sha256))
        .load::<Row>(c)?
        .into_iter()
        .map(|r| (r.0, r))
        .collect();
    slots
        .iter()
        .map(|s| {
            let (_, input, answer, sha) = rows
                .get(&s.id)
                .cloned()
                .ok_or_else(|| crate::SettlementError::Refused(format!("canary {} is not in the pool", s.id)))?;
            let answer = match (answer, sha.and_then(|h| hex::decode(h).ok()).and_then(|b| <[u8; 32]>::try_from(b).ok())) {
                (Some(Value::Object(record)), Some(hash)) => Some(crate::verify::Answer { record, hash }),
                _ => None,
            };
            Ok(crate::verify::Canary {
                at: s.at,
                id: s.id,
                input: match input {
                    Value::Object(m) => m,
                    _ => Map::new(),
                },
                answer,
            })
        })
        .collect()
}

/// Stores answers the market's runtime computed (`verify::Verifier::answer_canaries`); an answer
/// already stored is kept.
pub fn store_answers(c: &mut PgConnection, answers: &[crate::verify::NewAnswer]) -> Result<()> {
    for a in answers {
        diesel::update(canary_items::table.find(a.id).filter(canary_items::answer.is_null()))
            .set((
                canary_items::answer.eq(Value::Object(a.answer.record.clone())),
                canary_items::answer_sha256.eq(hex::encode(a.answer.hash)),
                canary_items::answer_manifest.eq(&a.manifest),
            ))
            .execute(c)?;
    }
    Ok(())
}

/// Retires canaries a node was caught on (it now knows them).
pub fn retire(c: &mut PgConnection, ids: &[Uuid]) -> Result<usize> {
    Ok(diesel::update(canary_items::table.filter(canary_items::id.eq_any(ids)))
        .set(canary_items::retired.eq(true))
        .execute(c)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_the_rate_on_average_and_never_zero_above_the_sample() {
        let p = CanaryPolicy::default();
        assert_eq!(p.count("M", 0, 0.5), 0);
        // n ≤ sample (4): ⌊n × 0.01 + u⌋ — every item is re-run anyway.
        assert_eq!(p.count("M", 4, 0.0), 0);
        assert_eq!(p.count("M", 4, 0.97), 1);
        // n > sample: at least one.
        assert_eq!(p.count("M", 5, 0.0), 1);
        assert_eq!(p.count("M", 1000, 0.0), 10);
        assert_eq!(p.count("M", 1000, 0.999), 10);
        assert_eq!(p.count("M", 1050, 0.5), 11);
        // The mean over u is n × rate (for n × rate ≥ 1).
        let mean: f64 = (0..1000).map(|i| p.count("M", 250, i as f64 / 1000.0) as f64).sum::<f64>() / 1000.0;
        assert!((mean - 2.5).abs() < 0.01, "{mean}");
        let by = CanaryPolicy { rate_by_market: BTreeMap::from([("T".into(), 0.0), ("A".into(), 1.0)]), ..p.clone() };
        assert_eq!(by.count("T", 1000, 0.9), 0, "rate 0: none");
        assert_eq!(by.count("A", 3, 0.9), 3, "never more than the items");
        assert_eq!(CanaryPolicy::none().count("M", 1000, 0.9), 0);
        assert!(CanaryPolicy { rate: 1.5, ..p.clone() }.validate().is_err());
        assert!(CanaryPolicy { pool_size: 0, ..p.clone() }.validate().is_err());
        assert!(p.validate().is_ok());
    }

    #[test]
    fn positions_are_distinct_ascending_and_inside() {
        let mut rng = Rng::new(7);
        for (total, k) in [(1, 1), (5, 2), (1000, 10), (3, 3)] {
            let p = positions(total, k, &mut rng);
            assert_eq!(p.len() as u64, k);
            assert!(p.windows(2).all(|w| w[0] < w[1]));
            assert!(p.iter().all(|&x| x < total));
        }
    }

    #[test]
    fn generated_canaries_have_the_served_shape_of_their_kind() {
        for seed in 0..200 {
            for kind in [WorkloadKind::Embed, WorkloadKind::Terrain] {
                let g = generate(kind, seed).unwrap();
                // What the API would serve for this line is the line itself.
                let served = executor::registry::served_fields(kind, "i0", &g).unwrap();
                assert_eq!(served, g, "{kind} {seed}");
                if kind == WorkloadKind::Embed {
                    let t = g["input"].as_str().unwrap();
                    assert!(!t.contains('{') && t.len() > 10, "{t}");
                }
            }
        }
        assert_ne!(generate(WorkloadKind::Embed, 1), generate(WorkloadKind::Embed, 2));
        assert!(generate(WorkloadKind::Sd, 1).is_none());
    }
}
