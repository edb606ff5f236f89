//! The hardware challenge: a node proves it runs the real embedding model, at the speed of the
//! device class it declared, by embedding `N` texts generated from a nonce the market chose.
//! Commit, then sample: the node first commits to every answer (one hash per item), the market
//! times that commitment itself and only then draws the `k` items it checks.
//!
//! * [`DeviceClass`] / [`CLASSES`] — what the node declares at registration (`gpu_model`,
//!   `vram_mb`) picks its class ([`DeviceClass::of`]); the class fixes the challenge's size `N`,
//!   the sample `k` and the time bound, in ms, that the **market** measures from issuing the
//!   nonce (the registration) to receiving the commitment. The CPU bound was measured
//!   (`loadtest challenge-timing`, loadtest/README.md); the GPU bound is DERIVED from published
//!   H100 figures, not measured (see [`CLASSES`]).
//! * [`inputs`] — deterministic, varied English-like sentences from the nonce: the seed is the
//!   first 8 bytes (little-endian) of sha256(nonce), fed to [`crate::rng::Rng`]; each text is
//!   1–3 sentences of 4–18 words drawn from fixed word lists (so lengths, and so token counts,
//!   vary). The same nonce always gives the same texts, on every platform; item `i` is the same
//!   in every challenge of at least `i + 1` items ([`inputs_at`]).
//! * [`leaf`] / [`leaves`] — the commitment: sha256 of each embedding's canonical bytes
//!   ([`crate::commitment::embedding_bytes`]), in item order.
//! * [`sample_indices`] — `k` distinct items drawn uniformly from `N` with the caller's random
//!   source (the market uses the OS CSPRNG, after the commitment arrived).
//! * [`run`] / [`run_at`] — embed the challenge's texts (all of them, or only some) with an
//!   [`Embedder`] and time the run.
//! * [`verify`] / [`verify_sample`] — the market's check: each revealed embedding hashes to its
//!   committed leaf (exact), has the reference's dimension, finite values and cosine ≥
//!   [`MIN_COSINE`] with the market's own run of that item; the first bad item named.
//! * [`timing`] — the verdict on the market's figure: [`Timing::Fits`] or [`Timing::TooSlow`].
//!
//! A node that computed only a share `f` of the items honestly (and committed to anything for
//! the rest) passes the sample with probability about `f^k` (exactly `C(fN, k) / C(N, k)`,
//! which is at most `f^k`): half the items faked with `k = 16` is caught with probability
//! `1 − 2^-16`. So a node that passes had computed (nearly) all `N` items when it committed,
//! and the market's clock on the commitment measures that work.

use std::time::{Duration, Instant};

use gridbook_wire::catalog::WorkloadKind;

use crate::commitment::{Hash, embedding_bytes, sha256};
use crate::embed::{Embedder, cosine};
use crate::error::Result;
use crate::rng::Rng;

/// The workload the challenge runs (its name is the challenge's `workload` field).
pub const WORKLOAD: WorkloadKind = WorkloadKind::Embed;
/// Per-item agreement the market requires (product.md: embeddings agree to cosine ≥ 0.999).
pub const MIN_COSINE: f32 = 0.999;
/// Most items a challenge may ask for (bounds the node's work and the commitment's size).
pub const MAX_ITEMS: usize = 4_096;
/// Most items a sample may reveal (bounds the answer's size and the market's re-run).
pub const MAX_SAMPLE: usize = 64;

/// What a node's declared hardware makes it: the class decides its challenge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceClass {
    /// No GPU declared: `gpu_model` empty, `cpu` or `none` (any case), or `vram_mb` 0.
    Cpu,
    /// Anything else.
    Gpu,
}

/// How a class's time bound was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoundBasis {
    /// From a run of `loadtest challenge-timing` on a machine of the class (loadtest/README.md).
    Measured,
    /// Computed from published figures for hardware that was not at hand; to be replaced by a
    /// measurement.
    Derived,
}

/// One class of the table: its challenge and its bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClassSpec {
    pub class: DeviceClass,
    /// Items `N` the node embeds and commits to.
    pub items: usize,
    /// Items `k` the market samples and re-runs.
    pub sample: usize,
    /// Most milliseconds, by the market's clock, from issuing the nonce (the registration's
    /// response) to receiving the commitment, for the timing to fit.
    pub bound_ms: u64,
    pub basis: BoundBasis,
}

/// The device classes (loadtest/README.md, "Hardware challenge timing", has the runs behind
/// them).
///
/// * `cpu` — 256 items, bound **MEASURED**: `loadtest challenge-timing` (2026-12-03; 2 vCPU
///   Intel Xeon VM, ORT 1.31.1 CPU, the executor's `Embedder` through the agent's `Workloads`,
///   dev profile with dependencies at opt-level 2), 20 runs of 256 items each: min 1,098 ms,
///   median 1,287 ms, max 1,394 ms (≈ 200 items/s). The bound is 5× the slowest run, rounded
///   up: 7,000 ms. It also covers the same run beside a concurrent cargo build on those 2 cores
///   (max 4,004 ms) and on one intra-op thread (max 2,425 ms), with room left for the two HTTP
///   round trips (the registration's response, the ~17 KB commitment).
/// * `gpu` — 4,096 items ([`MAX_ITEMS`]), bound **DERIVED, NOT MEASURED** (no GPU was at hand):
///   the design notes (`shared/design/onnx-runtime.md`, outside this repository) measured MiniLM-L6 on one H100 with ORT's CUDA EP at
///   15,960–47,170 sequences/s (seq 128; the challenge's texts are shorter). At the slowest of
///   those, 4,096 items take 257 ms; ×8 for a smaller GPU or a less tuned setup (≈ 2,000
///   sequences/s) is 2,048 ms; plus about 1,000 ms for the round trips and the ~270 KB
///   commitment: 3,000 ms (rounded). The same 4,096 items take ≈ 20.6 s on the 2-core runner
///   above, so a CPU that declares a GPU is `too_slow` unless it embeds ≈ 1,400 items/s, about
///   7× that runner: the class is a throughput class, and a CPU that fast delivers it. Replace
///   this with a measured bound when a GPU is lent (`loadtest challenge-timing --class gpu
///   --device cuda:0`).
pub const CLASSES: [ClassSpec; 2] = [
    ClassSpec {
        class: DeviceClass::Cpu,
        items: 256,
        sample: 16,
        bound_ms: 7_000,
        basis: BoundBasis::Measured,
    },
    ClassSpec {
        class: DeviceClass::Gpu,
        items: MAX_ITEMS,
        sample: 16,
        bound_ms: 3_000,
        basis: BoundBasis::Derived,
    },
];

impl DeviceClass {
    /// The class of what a node declares at registration.
    pub fn of(gpu_model: &str, vram_mb: i64) -> Self {
        let m = gpu_model.trim();
        if vram_mb <= 0 || m.is_empty() || m.eq_ignore_ascii_case("cpu") || m.eq_ignore_ascii_case("none") {
            DeviceClass::Cpu
        } else {
            DeviceClass::Gpu
        }
    }

    /// Its name (`cpu`, `gpu`): the challenge's `class` field and `nodes.challenge_class`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Cpu => "cpu",
            DeviceClass::Gpu => "gpu",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        CLASSES.iter().map(|c| c.class).find(|c| c.as_str() == s)
    }

    /// Its row of [`CLASSES`].
    pub fn spec(self) -> &'static ClassSpec {
        CLASSES
            .iter()
            .find(|c| c.class == self)
            .expect("every class has a row in CLASSES")
    }
}

impl std::fmt::Display for DeviceClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The timing verdict of a challenge whose answer was right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// The commitment arrived within the class's bound.
    Fits,
    /// It arrived later: the node does not deliver its class's throughput.
    TooSlow,
}

impl Timing {
    pub fn as_str(self) -> &'static str {
        match self {
            Timing::Fits => "fits",
            Timing::TooSlow => "too_slow",
        }
    }
}

/// The verdict on `measured_ms` (the market's figure) against `bound_ms`; the bound itself fits.
pub fn timing(measured_ms: u64, bound_ms: u64) -> Timing {
    if measured_ms <= bound_ms {
        Timing::Fits
    } else {
        Timing::TooSlow
    }
}

const SUBJECTS: &[&str] = &[
    "the engineer",
    "a small studio",
    "our team",
    "the old farmer",
    "my neighbour",
    "the weather service",
    "a young pianist",
    "the city council",
    "this startup",
    "the research group",
    "a tired student",
    "the museum",
    "every provider",
    "the captain",
    "a quiet librarian",
    "the night shift",
    "her grandmother",
    "the mountain village",
];
const VERBS: &[&str] = &[
    "builds",
    "paints",
    "measures",
    "forgets",
    "describes",
    "repairs",
    "sells",
    "renders",
    "explains",
    "imagines",
    "collects",
    "observes",
    "questions",
    "celebrates",
    "delivers",
    "translates",
    "ignores",
    "studies",
    "plants",
    "designs",
];
const ADJECTIVES: &[&str] = &[
    "bright",
    "careful",
    "ancient",
    "noisy",
    "gentle",
    "expensive",
    "green",
    "curious",
    "broken",
    "silent",
    "enormous",
    "delicate",
    "rapid",
    "cheap",
    "frozen",
    "golden",
    "strange",
    "reliable",
    "crowded",
    "narrow",
];
const OBJECTS: &[&str] = &[
    "bridge",
    "garden",
    "database",
    "violin",
    "map of the coast",
    "river",
    "spreadsheet",
    "cathedral",
    "bicycle",
    "terrain model",
    "recipe",
    "telescope",
    "market",
    "letter",
    "train station",
    "forest path",
    "graphics card",
    "harbour",
    "novel",
    "storm",
];
const TAILS: &[&str] = &[
    "before sunrise",
    "after the long winter",
    "with great patience",
    "for the third time",
    "in the rain",
    "without any help",
    "near the old harbour",
    "during the festival",
    "as the lights went out",
    "because nobody else would",
    "every other Tuesday",
    "while the kettle boiled",
    "on a budget",
    "at the edge of town",
    "under a grey sky",
];
const CONNECTIVES: &[&str] = &[
    "and", "but", "although", "so", "while", "because", "yet", "then",
];

fn pick<'a>(rng: &mut Rng, words: &[&'a str]) -> &'a str {
    words[(rng.next_u64() % words.len() as u64) as usize]
}

fn sentence(rng: &mut Rng) -> String {
    let mut s = String::new();
    let subject = pick(rng, SUBJECTS);
    let mut first = subject.chars();
    if let Some(c) = first.next() {
        s.extend(c.to_uppercase());
        s.push_str(first.as_str());
    }
    s.push(' ');
    s.push_str(pick(rng, VERBS));
    s.push_str(" the ");
    if rng.next_u64().is_multiple_of(2) {
        s.push_str(pick(rng, ADJECTIVES));
        s.push(' ');
    }
    s.push_str(pick(rng, OBJECTS));
    // Optional clauses vary the length (and so the token count) of the text.
    let extra = rng.next_u64() % 3;
    for _ in 0..extra {
        match rng.next_u64() % 2 {
            0 => {
                s.push(' ');
                s.push_str(pick(rng, TAILS));
            }
            _ => {
                s.push_str(", ");
                s.push_str(pick(rng, CONNECTIVES));
                s.push(' ');
                s.push_str(pick(rng, SUBJECTS));
                s.push(' ');
                s.push_str(pick(rng, VERBS));
                s.push_str(" a ");
                s.push_str(pick(rng, ADJECTIVES));
                s.push(' ');
                s.push_str(pick(rng, OBJECTS));
            }
        }
    }
    s.push(if rng.next_u64().is_multiple_of(5) {
        '?'
    } else {
        '.'
    });
    s
}

/// The seed of a nonce: the first 8 bytes (little-endian) of sha256(nonce).
pub fn seed(nonce: &str) -> u64 {
    let h = crate::commitment::sha256(nonce.as_bytes());
    u64::from_le_bytes(h[..8].try_into().expect("8 bytes"))
}

/// `items` deterministic English-like texts (1–3 sentences each) seeded from `nonce`. Item `i`
/// starts with `#<i>` so that no two texts are equal.
pub fn inputs(nonce: &str, items: usize) -> Vec<String> {
    let mut rng = Rng::new(seed(nonce));
    (0..items)
        .map(|i| {
            let n = 1 + rng.next_u64() % 3;
            let mut text = format!("#{i}");
            for _ in 0..n {
                text.push(' ');
                text.push_str(&sentence(&mut rng));
            }
            text
        })
        .collect()
}

/// The texts of items `indices` (in that order) of the challenge of `nonce`. Each index must be
/// below [`MAX_ITEMS`]; a larger one is an error naming it.
pub fn inputs_at(nonce: &str, indices: &[usize]) -> std::result::Result<Vec<String>, String> {
    let Some(&last) = indices.iter().max() else {
        return Ok(Vec::new());
    };
    if last >= MAX_ITEMS {
        return Err(format!("item {last} is beyond the largest challenge ({MAX_ITEMS} items)"));
    }
    let all = inputs(nonce, last + 1);
    Ok(indices.iter().map(|&i| all[i].clone()).collect())
}

/// The commitment to one item: sha256 of the embedding's canonical bytes (little-endian f32).
pub fn leaf(embedding: &[f32]) -> Hash {
    sha256(&embedding_bytes(embedding))
}

/// The commitment to a whole answer: [`leaf`] of each embedding, lowercase hex, in item order.
pub fn leaves(embeddings: &[Vec<f32>]) -> Vec<String> {
    embeddings.iter().map(|e| hex::encode(leaf(e))).collect()
}

/// `k` distinct indices below `n`, drawn uniformly (a partial Fisher–Yates shuffle; each bounded
/// draw by rejection, so without modulo bias) from `random`, in draw order. `k` is clipped to
/// `n`. The market passes the OS CSPRNG; tests pass a seeded generator.
pub fn sample_indices(n: usize, k: usize, mut random: impl FnMut() -> u64) -> Vec<usize> {
    let k = k.min(n);
    let mut pool: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let span = (n - i) as u64;
        // The largest multiple of `span` that fits in u64: draws at or above it are rejected.
        let zone = u64::MAX - (u64::MAX % span);
        let r = loop {
            let x = random();
            if x < zone {
                break x % span;
            }
        };
        pool.swap(i, i + r as usize);
    }
    pool.truncate(k);
    pool
}

/// Checks a node's answer against the reference embeddings: same number of items, same
/// dimension per item, finite values and cosine ≥ [`MIN_COSINE`] per item. The error names the
/// first item at fault.
pub fn verify(reference: &[Vec<f32>], answer: &[Vec<f32>]) -> std::result::Result<(), String> {
    if reference.len() != answer.len() {
        return Err(format!(
            "expected {} embeddings, got {}",
            reference.len(),
            answer.len()
        ));
    }
    for (i, (r, a)) in reference.iter().zip(answer).enumerate() {
        check_item(i, r, a)?;
    }
    Ok(())
}

/// One item of an answer against its reference; the error names item `i`.
fn check_item(i: usize, r: &[f32], a: &[f32]) -> std::result::Result<(), String> {
    if r.len() != a.len() {
        return Err(format!(
            "item {i}: expected {} dimensions, got {}",
            r.len(),
            a.len()
        ));
    }
    if let Some(j) = a.iter().position(|x| !x.is_finite()) {
        return Err(format!("item {i}: value {j} is not a finite number"));
    }
    let c = cosine(r, a);
    // NaN compares as neither, so it fails too.
    if c.is_nan() || c < MIN_COSINE {
        return Err(format!(
            "item {i}: cosine similarity {c:.6} with the reference is below {MIN_COSINE}"
        ));
    }
    Ok(())
}

/// One sampled item: its index in the challenge and the leaf the node committed to for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sampled {
    pub index: usize,
    pub leaf: Hash,
}

/// The market's check of a revealed sample: as many embeddings as `sample`, each hashing to its
/// committed leaf (exact: [`leaf`]), then each within [`MIN_COSINE`] of `reference` (the
/// market's own run of the same items, in sample order). The error names the first item at
/// fault by its index in the challenge.
pub fn verify_sample(
    sample: &[Sampled],
    reference: &[Vec<f32>],
    revealed: &[Vec<f32>],
) -> std::result::Result<(), String> {
    if revealed.len() != sample.len() || reference.len() != sample.len() {
        return Err(format!(
            "expected {} embeddings (the sample), got {}",
            sample.len(),
            revealed.len()
        ));
    }
    // Every leaf first: a revealed vector that is not the committed one is caught whatever the
    // reference says.
    for (s, a) in sample.iter().zip(revealed) {
        if leaf(a) != s.leaf {
            return Err(format!(
                "item {}: the revealed embedding does not hash to the leaf committed for it",
                s.index
            ));
        }
    }
    for ((s, r), a) in sample.iter().zip(reference).zip(revealed) {
        check_item(s.index, r, a)?;
    }
    Ok(())
}

/// Runs the challenge: embeds [`inputs`]`(nonce, items)` and returns the embeddings (input
/// order) and the time the embedding took (tokenise + run + pool).
pub fn run(embedder: &Embedder, nonce: &str, items: usize) -> Result<(Vec<Vec<f32>>, Duration)> {
    let texts = inputs(nonce, items.min(MAX_ITEMS));
    embed_timed(embedder, &texts)
}

/// Embeds only items `indices` of the challenge of `nonce` (in that order): the market's
/// reference run of a sample.
pub fn run_at(embedder: &Embedder, nonce: &str, indices: &[usize]) -> Result<(Vec<Vec<f32>>, Duration)> {
    let texts = inputs_at(nonce, indices).map_err(crate::error::ExecutorError::Config)?;
    embed_timed(embedder, &texts)
}

fn embed_timed(embedder: &Embedder, texts: &[String]) -> Result<(Vec<Vec<f32>>, Duration)> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let started = Instant::now();
    let out = embedder.embed(&refs)?;
    Ok((out, started.elapsed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_deterministic_and_depend_on_the_nonce() {
        let a = inputs("nonce-1", 32);
        assert_eq!(a, inputs("nonce-1", 32));
        assert_eq!(a.len(), 32);
        assert_ne!(a, inputs("nonce-2", 32));
        // A prefix of a longer challenge is the shorter challenge.
        assert_eq!(&inputs("nonce-1", 64)[..32], &a[..]);
    }

    #[test]
    fn inputs_are_varied() {
        let a = inputs("vary", 200);
        let distinct: std::collections::HashSet<&String> = a.iter().collect();
        assert_eq!(distinct.len(), 200);
        let words: Vec<usize> = a.iter().map(|t| t.split_whitespace().count()).collect();
        let (min, max) = (*words.iter().min().unwrap(), *words.iter().max().unwrap());
        assert!(min <= 8 && max >= 30, "word counts {min}..{max}");
        assert!(
            a.iter()
                .all(|t| t.is_ascii() && (t.ends_with('.') || t.ends_with('?')))
        );
    }

    #[test]
    fn verify_accepts_equal_and_near_equal() {
        let r = vec![vec![1.0, 0.0, 0.0], vec![0.0, 0.6, 0.8]];
        assert_eq!(verify(&r, &r), Ok(()));
        let near = vec![vec![1.0, 0.01, 0.0], vec![0.0, 0.6, 0.81]];
        assert_eq!(verify(&r, &near), Ok(()));
    }

    #[test]
    fn verify_names_the_first_bad_item() {
        let r = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![1.0, 1.0]];
        let bad = vec![vec![1.0, 0.0], vec![1.0, 0.0], vec![-1.0, 1.0]];
        let e = verify(&r, &bad).unwrap_err();
        assert!(e.starts_with("item 1:"), "{e}");
        let e = verify(&r, &r[..2]).unwrap_err();
        assert!(e.contains("expected 3 embeddings, got 2"), "{e}");
        let e = verify(&r, &[vec![1.0, 0.0], vec![0.0, 1.0, 0.0], vec![1.0, 1.0]]).unwrap_err();
        assert!(e.starts_with("item 1: expected 2 dimensions, got 3"), "{e}");
        let e = verify(&r, &[vec![1.0, 0.0], vec![0.0, f32::NAN], vec![1.0, 1.0]]).unwrap_err();
        assert!(e.starts_with("item 1: value 1"), "{e}");
        let e = verify(&r, &[vec![1.0, 0.0], vec![0.0, 1.0], vec![0.0, 0.0]]).unwrap_err();
        assert!(e.starts_with("item 2: cosine"), "{e}");
    }

    #[test]
    fn the_declared_hardware_picks_the_class() {
        for (model, vram) in [("cpu", 0), ("CPU", 16_000), ("none", 8_000), ("None", 1), ("", 24_000), ("  ", 1), ("RTX 4090", 0)] {
            assert_eq!(DeviceClass::of(model, vram), DeviceClass::Cpu, "{model:?} {vram}");
        }
        for (model, vram) in [("RTX 4090", 24_576), ("H100", 81_920), ("cpu-less accelerator", 1)] {
            assert_eq!(DeviceClass::of(model, vram), DeviceClass::Gpu, "{model:?} {vram}");
        }
        for c in CLASSES {
            assert_eq!(c.class.spec(), &c);
            assert_eq!(DeviceClass::parse(c.class.as_str()), Some(c.class));
            assert!(c.items <= MAX_ITEMS && c.sample <= MAX_SAMPLE && c.sample <= c.items && c.sample > 0);
            assert!(c.bound_ms > 0);
        }
        assert_eq!(DeviceClass::parse("tpu"), None);
        // What the migration's CHECK on `nodes.challenge_class` allows (gridbook-db's test
        // holds the same list).
        let names: Vec<&str> = CLASSES.iter().map(|c| c.class.as_str()).collect();
        assert_eq!(names, ["cpu", "gpu"]);
        // The GPU bound is derived from published figures, never presented as a measurement.
        assert_eq!(DeviceClass::Gpu.spec().basis, BoundBasis::Derived);
        assert_eq!(DeviceClass::Cpu.spec().basis, BoundBasis::Measured);
    }

    #[test]
    fn timing_fits_up_to_the_bound() {
        assert_eq!(timing(0, 10), Timing::Fits);
        assert_eq!(timing(10, 10), Timing::Fits);
        assert_eq!(timing(11, 10), Timing::TooSlow);
        assert_eq!(Timing::TooSlow.as_str(), "too_slow");
    }

    #[test]
    fn inputs_at_picks_items_of_the_full_challenge() {
        let all = inputs("pick", 300);
        let got = inputs_at("pick", &[299, 0, 17]).unwrap();
        assert_eq!(got, vec![all[299].clone(), all[0].clone(), all[17].clone()]);
        assert!(inputs_at("pick", &[]).unwrap().is_empty());
        let e = inputs_at("pick", &[MAX_ITEMS]).unwrap_err();
        assert!(e.contains(&MAX_ITEMS.to_string()), "{e}");
    }

    #[test]
    fn samples_are_distinct_in_range_and_uniform() {
        let mut rng = Rng::new(7);
        let mut hits = vec![0u32; 256];
        for _ in 0..4_000 {
            let s = sample_indices(256, 16, || rng.next_u64());
            assert_eq!(s.len(), 16);
            let distinct: std::collections::HashSet<_> = s.iter().collect();
            assert_eq!(distinct.len(), 16);
            for i in s {
                hits[i] += 1;
            }
        }
        // 4,000 × 16 / 256 = 250 per index expected; every index is drawn, none wildly often.
        let (lo, hi) = (*hits.iter().min().unwrap(), *hits.iter().max().unwrap());
        assert!(lo > 150 && hi < 350, "{lo}..{hi}");
        // k ≥ n is every index once.
        let mut all = sample_indices(5, 9, || rng.next_u64());
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
        assert!(sample_indices(0, 3, || rng.next_u64()).is_empty());
    }

    #[test]
    fn verify_sample_checks_the_leaf_then_the_reference() {
        let r = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let sample: Vec<Sampled> = [(7, &r[0]), (3, &r[1])]
            .iter()
            .map(|(i, v)| Sampled { index: *i, leaf: leaf(v) })
            .collect();
        assert_eq!(verify_sample(&sample, &r, &r), Ok(()));
        // Near-equal to the reference but not the committed vector: caught by the leaf.
        let near = vec![vec![1.0, 0.0], vec![0.0, 0.999_999]];
        let e = verify_sample(&sample, &r, &near).unwrap_err();
        assert!(e.starts_with("item 3: the revealed embedding does not hash"), "{e}");
        // Committed to a wrong vector and revealed it: caught by the reference, named by index.
        let wrong = vec![vec![1.0, 0.0], vec![1.0, 0.0]];
        let lying: Vec<Sampled> = [(7, &wrong[0]), (3, &wrong[1])]
            .iter()
            .map(|(i, v)| Sampled { index: *i, leaf: leaf(v) })
            .collect();
        let e = verify_sample(&lying, &r, &wrong).unwrap_err();
        assert!(e.starts_with("item 3: cosine"), "{e}");
        let e = verify_sample(&sample, &r, &r[..1]).unwrap_err();
        assert!(e.contains("expected 2 embeddings"), "{e}");
        assert_eq!(leaves(&r), vec![hex::encode(leaf(&r[0])), hex::encode(leaf(&r[1]))]);
        assert_eq!(leaves(&r)[0].len(), 64);
    }
}
