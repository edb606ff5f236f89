//! The `Workload` trait and the runner that turns input items into outputs plus a commitment.
//!
//! The runner is independent of where items come from: local mode reads a JSONL file
//! ([`crate::local`]), the market agent hands it the items of an assignment (through the same
//! code path), the verifier a sample of them. Which workload runs a kind of work is decided in
//! [`crate::registry`] (its `Loaded` is a `Workload` over every kind).

use serde_json::{Map, Value};

use crate::commitment::{Commitment, Hash, Manifest};
#[allow(unused_imports)] // named in docs
use crate::error::ExecutorError;
use crate::error::Result;
use crate::runtime::RunControl;

/// A field-level input error (`field` is the JSON field at fault).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// One produced output item.
#[derive(Debug, Clone)]
pub struct ItemOutput {
    /// Fields written to the output JSONL line besides `custom_id` (e.g. `embedding`).
    pub record: Map<String, Value>,
    /// sha256 of the canonical bytes (see [`crate::commitment`]).
    pub hash: Hash,
    /// A binary artifact (PNG bytes) stored next to the output file; its sha256 is `hash`.
    pub artifact: Option<Vec<u8>>,
}

/// A kind of work the executor can run for a market.
pub trait Workload {
    /// The parsed input of one item.
    type Input: Send;

    /// Market / workload id, e.g. `EMBED-MINILM-L6`.
    fn id(&self) -> &'static str;

    /// Parses one input object (the line's fields; `custom_id` already taken out and passed
    /// separately, e.g. to derive a seed).
    fn parse(
        &self,
        custom_id: &str,
        fields: &Map<String, Value>,
    ) -> Result<Self::Input, FieldError>;

    /// Runs items; returns exactly one result per input, in input order. An `Err` item fails
    /// only that item; an `Err` overall means the node could not run the batch at all. Under a
    /// [`RunControl`], cancelling it aborts the model call in progress (ONNX Runtime's terminate
    /// flag) and returns [`ExecutorError::Cancelled`]; the built-in workloads pass the control to
    /// every model call.
    fn run_controlled(
        &mut self,
        inputs: &[Self::Input],
        progress: &dyn Fn(u64),
        control: Option<&RunControl>,
    ) -> Result<Vec<Result<ItemOutput, String>>>;

    /// [`run_controlled`](Self::run_controlled) without cancellation.
    fn run(
        &mut self,
        inputs: &[Self::Input],
        progress: &dyn Fn(u64),
    ) -> Result<Vec<Result<ItemOutput, String>>> {
        self.run_controlled(inputs, progress, None)
    }

    /// How this workload produces outputs (model hashes, runtime, device ...).
    fn manifest(&self) -> Manifest;

    /// Items a streamed run ([`crate::local::run_stream`]) hands this workload per chunk at most:
    /// a chunk's inputs, their intermediate tensors and outputs are in memory together.
    fn stream_chunk_items(&self) -> usize {
        crate::local::DEFAULT_CHUNK_ITEMS
    }
}

/// Outputs of a batch, in input order, with their commitment and manifest.
#[derive(Debug)]
pub struct BatchResult {
    pub outputs: Vec<(String, Result<ItemOutput, String>)>,
    pub commitment: Commitment,
    pub manifest: Manifest,
}

/// Runs `(custom_id, input)` items and commits to the successful outputs (in input order).
pub fn run_items<W: Workload>(
    workload: &mut W,
    items: Vec<(String, W::Input)>,
    progress: &dyn Fn(u64),
) -> Result<BatchResult> {
    run_items_controlled(workload, items, progress, None)
}

/// [`run_items`] under an optional [`RunControl`] (cancellation).
pub fn run_items_controlled<W: Workload>(
    workload: &mut W,
    items: Vec<(String, W::Input)>,
    progress: &dyn Fn(u64),
    control: Option<&RunControl>,
) -> Result<BatchResult> {
    let (ids, inputs): (Vec<String>, Vec<W::Input>) = items.into_iter().unzip();
    let results = workload.run_controlled(&inputs, progress, control)?;
    assert_eq!(
        results.len(),
        ids.len(),
        "workload {} returned {} results for {} inputs",
        workload.id(),
        results.len(),
        ids.len()
    );
    let outputs: Vec<(String, Result<ItemOutput, String>)> = ids.into_iter().zip(results).collect();
    let committed: Vec<(String, Hash)> = outputs
        .iter()
        .filter_map(|(id, r)| r.as_ref().ok().map(|o| (id.clone(), o.hash)))
        .collect();
    Ok(BatchResult {
        commitment: Commitment::build(&committed),
        manifest: workload.manifest(),
        outputs,
    })
}

/// Looks a field up in the line object, then in its `body` object (OpenAI batch style).
pub fn field<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    fields.get(name).or_else(|| {
        fields
            .get("body")
            .and_then(Value::as_object)
            .and_then(|b| b.get(name))
    })
}

pub fn opt_u64(fields: &Map<String, Value>, name: &str) -> Result<Option<u64>, FieldError> {
    match field(fields, name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| FieldError::new(name, "expected a non-negative integer")),
    }
}

pub fn opt_f64(fields: &Map<String, Value>, name: &str) -> Result<Option<f64>, FieldError> {
    match field(fields, name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| FieldError::new(name, "expected a number")),
    }
}

pub fn opt_str<'a>(
    fields: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, FieldError> {
    match field(fields, name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| FieldError::new(name, "expected a string")),
    }
}

/// Seed for an item: the given one, or the first 8 bytes (little-endian) of sha256(custom_id).
pub fn item_seed(seed: Option<u64>, custom_id: &str) -> u64 {
    seed.unwrap_or_else(|| {
        let h = crate::commitment::sha256(custom_id.as_bytes());
        u64::from_le_bytes(h[..8].try_into().expect("8 bytes"))
    })
}
