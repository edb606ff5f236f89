//! `executor bench`: the node's throughput per workload, and the Python baseline in the same run.
//!
//! Embeddings: a fixed corpus of mixed-length English-like sentences, generated
//! deterministically from a seed ([`corpus`]), run through the real MiniLM in three ways —
//! the executor's token-budget batching, and equal batches of 32 (sorted, and in input order)
//! — and through `executor/bench/ort_baseline.py` (Python `onnxruntime`, same model, same
//! tokenizer file, same intra-op thread count; batches of 32 in input order and sorted).
//! Every figure covers tokenise + run + mean-pool + normalise, median of `repeats` runs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::embed::{Batching, Embedder, padding_stats, plan_batches};
use crate::error::{ExecutorError, Result};
use crate::rng::Rng;

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "had",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "market",
    "price",
    "order",
    "render",
    "model",
    "image",
    "terrain",
    "mountain",
    "river",
    "weather",
    "sunny",
    "cloud",
    "compute",
    "batch",
    "provider",
    "studio",
    "graphics",
    "network",
    "latency",
    "region",
    "payment",
    "escrow",
    "ledger",
    "token",
    "embedding",
    "sentence",
    "similarity",
    "search",
    "query",
    "document",
    "customer",
    "support",
    "invoice",
    "shipping",
    "delivery",
    "product",
    "review",
    "excellent",
    "terrible",
    "quickly",
    "slowly",
    "yesterday",
    "tomorrow",
    "morning",
    "evening",
    "stadium",
    "football",
    "player",
    "coach",
    "season",
    "championship",
    "recipe",
    "chocolate",
    "kitchen",
    "garden",
    "flowers",
    "children",
    "school",
    "teacher",
    "student",
    "history",
    "science",
    "physics",
    "chemistry",
    "biology",
    "language",
    "translation",
    "computer",
    "keyboard",
    "screen",
    "battery",
    "wireless",
    "charging",
    "camera",
    "photograph",
    "holiday",
    "beach",
    "vacation",
    "airport",
    "flight",
    "delayed",
    "hotel",
    "restaurant",
    "delicious",
    "unfortunately",
    "however",
    "therefore",
    "because",
    "although",
    "interesting",
    "important",
    "government",
    "policy",
    "economy",
    "inflation",
    "interest",
    "rates",
    "central",
    "bank",
    "announced",
    "decision",
    "analysts",
    "expected",
    "results",
    "quarterly",
    "revenue",
    "growth",
    "percent",
    "company",
    "employees",
    "announcement",
    "technology",
];

/// `n` sentences of mixed length (about 55% short, 30% medium, 15% long), deterministic in `seed`.
pub fn corpus(n: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let u = rng.uniform();
            let (lo, hi): (u64, u64) = if u < 0.55 {
                (3, 18)
            } else if u < 0.85 {
                (18, 60)
            } else {
                (60, 200)
            };
            let len = (lo + rng.next_u64() % (hi - lo)) as usize;
            let mut s = String::new();
            for k in 0..len {
                let w = WORDS[(rng.next_u64() % WORDS.len() as u64) as usize];
                if k == 0 {
                    let mut c = w.chars();
                    if let Some(f) = c.next() {
                        s.extend(f.to_uppercase());
                        s.push_str(c.as_str());
                    }
                } else {
                    s.push(if rng.uniform() < 0.08 { ',' } else { ' ' });
                    if s.ends_with(',') {
                        s.push(' ');
                    }
                    s.push_str(w);
                }
            }
            s.push('.');
            s
        })
        .collect()
}

/// One measured configuration.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EmbedFigure {
    pub side: String,
    pub mode: String,
    pub sentences: usize,
    pub seconds: f64,
    pub sentences_per_s: f64,
    pub real_tokens: usize,
    pub padded_tokens: usize,
    pub tokens_per_s: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times tokenise + embed of `texts` with `batching` (median of `repeats`).
pub fn measure_embed(
    embedder: &Embedder,
    texts: &[String],
    batching: Batching,
    mode: &str,
    repeats: usize,
) -> Result<EmbedFigure> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let lengths: Vec<usize> = embedder
        .tokenize(&refs)?
        .iter()
        .map(|e| e.ids.len())
        .collect();
    let (real, padded) = padding_stats(&lengths, &plan_batches(&lengths, batching));
    let mut times = Vec::new();
    for _ in 0..repeats.max(1) {
        let t0 = Instant::now();
        let enc = embedder.tokenize(&refs)?;
        let out = embedder.embed_encoded(&enc, batching, &|_| {})?;
        std::hint::black_box(out);
        times.push(t0.elapsed().as_secs_f64());
    }
    let secs = median(times);
    Ok(EmbedFigure {
        side: "rust".into(),
        mode: mode.into(),
        sentences: texts.len(),
        seconds: secs,
        sentences_per_s: texts.len() as f64 / secs,
        real_tokens: real,
        padded_tokens: padded,
        tokens_per_s: real as f64 / secs,
    })
}

/// Where the Python baseline lives and how to run it.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub python: PathBuf,
    pub script: PathBuf,
    pub model: PathBuf,
    pub tokenizer: PathBuf,
    pub threads: usize,
    pub batch: usize,
    pub repeats: usize,
    pub max_len: usize,
}

#[derive(serde::Deserialize)]
struct PyLine {
    mode: String,
    sentences: usize,
    seconds: f64,
    sentences_per_s: f64,
    real_tokens: usize,
    padded_tokens: usize,
    tokens_per_s: f64,
}

/// Writes the corpus as JSONL (`{"custom_id", "input"}`), the file both sides read.
pub fn write_corpus(path: &Path, texts: &[String]) -> Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).map_err(|e| ExecutorError::io(path, e))?,
    );
    for (i, t) in texts.iter().enumerate() {
        let line = serde_json::json!({"custom_id": format!("c{i}"), "input": t});
        writeln!(f, "{line}").map_err(|e| ExecutorError::io(path, e))?;
    }
    f.flush().map_err(|e| ExecutorError::io(path, e))
}

/// Runs the Python baseline on the corpus file.
pub fn run_baseline(b: &Baseline, corpus_path: &Path) -> Result<Vec<EmbedFigure>> {
    if !b.python.is_file() {
        return Err(ExecutorError::Baseline(format!(
            "{} not found: create it with `python3 -m venv .gridbook/venv && .gridbook/venv/bin/pip install -r executor/bench/requirements.txt`",
            b.python.display()
        )));
    }
    let out = Command::new(&b.python)
        .arg(&b.script)
        .arg("--model")
        .arg(&b.model)
        .arg("--tokenizer")
        .arg(&b.tokenizer)
        .arg("--corpus")
        .arg(corpus_path)
        .args([
            "--threads",
            &b.threads.to_string(),
            "--batch",
            &b.batch.to_string(),
        ])
        .args([
            "--repeats",
            &b.repeats.to_string(),
            "--max-len",
            &b.max_len.to_string(),
        ])
        .output()
        .map_err(|e| ExecutorError::Baseline(format!("{}: {e}", b.python.display())))?;
    if !out.status.success() {
        return Err(ExecutorError::Baseline(format!(
            "exit {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| {
            let p: PyLine = serde_json::from_str(l)
                .map_err(|e| ExecutorError::Baseline(format!("bad output line {l:?}: {e}")))?;
            Ok(EmbedFigure {
                side: "python".into(),
                mode: format!("{}{}", p.mode, b.batch),
                sentences: p.sentences,
                seconds: p.seconds,
                sentences_per_s: p.sentences_per_s,
                real_tokens: p.real_tokens,
                padded_tokens: p.padded_tokens,
                tokens_per_s: p.tokens_per_s,
            })
        })
        .collect()
}

/// Prints a table of figures.
pub fn format_table(figs: &[EmbedFigure]) -> String {
    let mut s = format!(
        "{:<7} {:<28} {:>10} {:>9} {:>12} {:>9}\n",
        "side", "mode", "sent/s", "seconds", "real tok/s", "padding"
    );
    for f in figs {
        let pad = if f.padded_tokens > 0 {
            1.0 - f.real_tokens as f64 / f.padded_tokens as f64
        } else {
            0.0
        };
        s += &format!(
            "{:<7} {:<28} {:>10.1} {:>9.2} {:>12.0} {:>8.1}%\n",
            f.side,
            f.mode,
            f.sentences_per_s,
            f.seconds,
            f.tokens_per_s,
            pad * 100.0
        );
    }
    s
}

/// Collapses per-round figures into one per (side, mode): the round with the median time.
pub fn median_figures(rounds: &[EmbedFigure]) -> Vec<EmbedFigure> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for f in rounds {
        let k = (f.side.clone(), f.mode.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(side, mode)| {
            let mut v: Vec<&EmbedFigure> = rounds
                .iter()
                .filter(|f| f.side == side && f.mode == mode)
                .collect();
            v.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
            v[v.len() / 2].clone()
        })
        .collect()
}
