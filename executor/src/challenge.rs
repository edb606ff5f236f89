//! The hardware challenge: a node proves it runs the real embedding model by embedding
//! `items` texts generated from a nonce the market chose, and the market checks the answer
//! against its own reference run.
//!
//! * [`inputs`] — deterministic, varied English-like sentences from the nonce: the seed is the
//!   first 8 bytes (little-endian) of sha256(nonce), fed to [`crate::rng::Rng`]; each text is
//!   1–3 sentences of 4–18 words drawn from fixed word lists (so lengths, and so token counts,
//!   vary). The same nonce always gives the same texts, on every platform.
//! * [`run`] — embeds them with an [`Embedder`] and times the run.
//! * [`verify`] — the market's check: same count, same dimension, cosine ≥ [`MIN_COSINE`] per
//!   item, the first bad item named.

use std::time::{Duration, Instant};

use gridbook_wire::catalog::WorkloadKind;

use crate::embed::{Embedder, cosine};
use crate::error::Result;
use crate::rng::Rng;

/// The workload the challenge runs (its name is the challenge's `workload` field).
pub const WORKLOAD: WorkloadKind = WorkloadKind::Embed;
/// Per-item agreement the market requires (product.md: embeddings agree to cosine ≥ 0.999).
pub const MIN_COSINE: f32 = 0.999;
/// Most items a challenge may ask for (bounds the node's work and the answer's size).
pub const MAX_ITEMS: usize = 4_096;

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
    }
    Ok(())
}

/// Runs the challenge: embeds [`inputs`]`(nonce, items)` and returns the embeddings (input
/// order) and the time the embedding took (tokenise + run + pool).
pub fn run(embedder: &Embedder, nonce: &str, items: usize) -> Result<(Vec<Vec<f32>>, Duration)> {
    let texts = inputs(nonce, items.min(MAX_ITEMS));
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
}
