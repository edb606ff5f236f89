//! Verification of a node's result (product.md, "Trust without staking").
//!
//! 1. Completeness and commitment (pure, [`check`]): the output file has exactly one line per
//!    input line of the assignment that the node did not report as failed, in input order, each
//!    line's item hash is recomputed from its content (embedding bytes, or the PNG), and the
//!    Merkle root over `(custom_id, hash)` equals the root the node committed to.
//! 2. Commit, then sample ([`sample_seed`], [`SamplePolicy`]): the items to re-run are drawn
//!    from HMAC-SHA256 of the node's commitment (assignment id, Merkle root, output object)
//!    under the market's verification secret. The node has committed before the seed exists,
//!    and without the secret it cannot compute the seed, so it cannot know which items will be
//!    checked. The number of items is market configuration (`sample_items`, per market).
//! 3. Re-execution ([`Verifier::rerun`]): the sampled items run again on the market's own
//!    executor (`executor::registry::Reference`, CPU) and are compared by the workload registry
//!    (`executor::registry::compare`): embeddings must agree to cosine ≥ `EMBED_MIN_COSINE`
//!    (0.999), images to a mean absolute pixel difference ≤ `IMAGE_MAX_MEAN_ABS_DIFF` (2/255).
//!
//! [`Verifier::verify`] runs all three (blocking; the results edge calls it on the blocking pool).
//! Either way it returns the evidence ([`Evidence`]: the seed, the sampled ids, per sampled item
//! both sides' hashes and the comparison figure, the reference's manifest); a failure also says
//! which check failed ([`Failure`], `FailedCheck`). The results edge stores it in
//! `assignment_verifications` (the dispute record when it failed) and re-offers failed units
//! (`crate::redo`). The re-run may also happen on *another provider node* (`crate::crosscheck`:
//! [`Verifier::prepare`] draws the sample, [`judge`] compares the two nodes' lines, the market's
//! runtime decides a disagreement).
//!
//! The node is served its lines by position (`gridbook_wire::catalog::served_id`), with the
//! market's canaries (`crate::canary`) mixed in: [`Verifier::prepare`] checks the commitment
//! against that layout, fails a wrong or missing canary (`FailedCheck::Canary`) against its
//! known answer ([`Verifier::answer_canaries`] computes it the first time), draws the sample
//! among the job's own items only, and names the sampled items by the studio's ids again.

use executor::commitment::{self, Commitment, Hash};
use gridbook_wire::catalog::served_id;
use executor::registry::{self, WorkloadKind, embedding_of, png_of};
use executor::workload::Workload;
use serde_json::{Map, Value};

use std::collections::BTreeMap;

use gridbook_db::status::FailedCheck;
use serde::{Deserialize, Serialize};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

/// Items re-run per assignment when the market configures nothing else (all of them when the
/// assignment has fewer).
pub const DEFAULT_SAMPLE_ITEMS: usize = 4;

/// How many items of an assignment are re-run, and the secret the sample is drawn with.
#[derive(Clone)]
pub struct SamplePolicy {
    secret: Vec<u8>,
    default_items: usize,
    by_market: BTreeMap<String, usize>,
}

impl std::fmt::Debug for SamplePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("SamplePolicy")
            .field("default_items", &self.default_items)
            .field("by_market", &self.by_market)
            .finish_non_exhaustive()
    }
}

impl SamplePolicy {
    /// `secret`: at least 32 bytes.
    pub fn new(
        secret: Vec<u8>,
        default_items: usize,
        by_market: BTreeMap<String, usize>,
    ) -> Result<Self, String> {
        if secret.len() < 32 {
            return Err(format!(
                "the verification secret has {} bytes; it needs at least 32",
                secret.len()
            ));
        }
        if default_items == 0 || by_market.values().any(|&k| k == 0) {
            return Err("sample_items must be at least 1".into());
        }
        Ok(SamplePolicy {
            secret,
            default_items,
            by_market,
        })
    }

    /// Items re-run per assignment of `market`.
    pub fn items(&self, market: &str) -> usize {
        self.by_market
            .get(market)
            .copied()
            .unwrap_or(self.default_items)
    }

    /// The seed of one committed result ([`sample_seed`] under this policy's secret).
    pub fn seed(&self, assignment: Uuid, merkle_root: &str, output_sha256: &str) -> [u8; 32] {
        sample_seed(&self.secret, assignment, merkle_root, output_sha256)
    }
}

/// HMAC-SHA256 under `secret` of the node's commitment: the assignment id, the Merkle root and
/// the output object it published (domain-separated, length-prefixed fields).
pub fn sample_seed(
    secret: &[u8],
    assignment: Uuid,
    merkle_root: &str,
    output_sha256: &str,
) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"gridbook/verification-sample/v1");
    for field in [
        assignment.as_bytes().as_slice(),
        merkle_root.as_bytes(),
        output_sha256.as_bytes(),
    ] {
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field);
    }
    mac.finalize().into_bytes().into()
}

/// The first 16 bytes of a seed, as [`sample`] takes it.
pub fn seed_u128(seed: &[u8; 32]) -> u128 {
    u128::from_be_bytes(seed[..16].try_into().expect("16 bytes"))
}

/// One input line: its custom_id and its other fields.
pub type InputItem = (String, Map<String, Value>);

/// Items `[start, start + count)` of a JSONL input file (`gridbook_wire::catalog::select_items`:
/// 0-based, blank lines not counted — as the executor and the API count them).
pub fn input_items(text: &str, start: u64, count: u64) -> Result<Vec<InputItem>, String> {
    let lines = gridbook_wire::catalog::select_items(text.as_bytes(), start, count)?;
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in (start..).zip(lines) {
        let mut obj: Map<String, Value> =
            serde_json::from_slice(line).map_err(|e| format!("input item {}: {e}", i + 1))?;
        let id = match obj.remove("custom_id") {
            Some(Value::String(s)) => s,
            _ => return Err(format!("input item {}: no custom_id", i + 1)),
        };
        out.push((id, obj));
    }
    Ok(out)
}

/// One line of a node's output file.
#[derive(Clone, Debug)]
pub struct OutputLine {
    pub custom_id: String,
    pub hash: Hash,
    pub record: Map<String, Value>,
}

/// Recomputes an output line's item hash from its content.
fn content_hash(record: &Map<String, Value>) -> Result<Hash, String> {
    if let Some(v) = embedding_of(record) {
        return Ok(commitment::sha256(&commitment::embedding_bytes(&v)));
    }
    if let Some(png) = png_of(record) {
        return Ok(commitment::sha256(&png));
    }
    Err("the line carries neither an `embedding` nor a `*png_b64` image".into())
}

/// Parses a node's output file: `{"custom_id", "sha256", <content>}` per line.
pub fn parse_output(text: &str) -> Result<Vec<OutputLine>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |m: String| format!("output line {}: {m}", i + 1);
        let mut obj: Map<String, Value> =
            serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let custom_id = match obj.remove("custom_id") {
            Some(Value::String(s)) => s,
            _ => return Err(bad("no custom_id".into())),
        };
        let claimed = obj
            .remove("sha256")
            .and_then(|v| v.as_str().and_then(|s| hex::decode(s).ok()))
            .and_then(|b| Hash::try_from(b).ok())
            .ok_or_else(|| bad("no sha256".into()))?;
        let hash = content_hash(&obj).map_err(bad)?;
        if hash != claimed {
            return Err(bad(format!(
                "sha256 {} does not match its content ({})",
                hex::encode(claimed),
                hex::encode(hash)
            )));
        }
        out.push(OutputLine {
            custom_id,
            hash,
            record: obj,
        });
    }
    Ok(out)
}

/// What [`check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    /// Inputs with an output line.
    pub ok: usize,
    /// Inputs without one (the node reported them failed).
    pub missing: usize,
}

/// Completeness and commitment: outputs are a subsequence of the inputs (by custom_id, input
/// order, no duplicates), `missing` equals the node's reported failures, and the Merkle root
/// over the outputs equals `claimed_root`.
pub fn check(
    inputs: &[InputItem],
    outputs: &[OutputLine],
    claimed_root: &str,
    reported_failed: u64,
) -> Result<Checked, String> {
    let mut next = 0;
    for o in outputs {
        let pos = inputs[next..]
            .iter()
            .position(|(id, _)| *id == o.custom_id)
            .ok_or_else(|| {
                format!(
                    "output custom_id {:?} is not an input of the assignment (or is out of order / repeated)",
                    o.custom_id
                )
            })?;
        next += pos + 1;
    }
    let missing = inputs.len() - outputs.len();
    if missing as u64 != reported_failed {
        return Err(format!(
            "{missing} items have no output but the node reported {reported_failed} failed"
        ));
    }
    let leaves: Vec<(String, Hash)> = outputs
        .iter()
        .map(|o| (o.custom_id.clone(), o.hash))
        .collect();
    let root = Commitment::build(&leaves).merkle_root;
    if root != claimed_root {
        return Err(format!(
            "Merkle root {claimed_root} does not match the outputs ({root})"
        ));
    }
    Ok(Checked {
        ok: outputs.len(),
        missing,
    })
}

/// `k` distinct indices below `n`, chosen deterministically from `seed` (all when `n ≤ k`).
pub fn sample(n: usize, k: usize, seed: u128) -> Vec<usize> {
    if n <= k {
        return (0..n).collect();
    }
    let mut x = (seed as u64) ^ ((seed >> 64) as u64) ^ 0x9e37_79b9_7f4a_7c15;
    let mut picked = std::collections::BTreeSet::new();
    while picked.len() < k {
        // splitmix64
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        picked.insert((z % n as u64) as usize);
    }
    picked.into_iter().collect()
}

/// The market's own executor for re-runs (`executor::registry::Reference`: CPU, workloads
/// loaded on first use).
pub struct Verifier {
    reference: registry::Reference,
    policy: SamplePolicy,
    /// The key-encryption key of private models (`models_kek_file`).
    models_kek: Option<std::sync::Arc<gridbook_sealed::Kek>>,
}

impl Verifier {
    /// Models from `GRIDBOOK_MODELS_DIR`; no SD pipeline (SD results are then unverifiable).
    pub fn new(policy: SamplePolicy) -> Self {
        Verifier {
            reference: registry::Reference::new(),
            policy,
            models_kek: None,
        }
    }

    /// With the SD pipeline's directory, so `sd` results can be re-run.
    pub fn with_sd_model_dir(
        policy: SamplePolicy,
        sd_model_dir: Option<std::path::PathBuf>,
    ) -> Self {
        Verifier {
            reference: registry::Reference::with_options(registry::Options {
                sd_model_dir,
                ..Default::default()
            }),
            policy,
            models_kek: None,
        }
    }

    /// Lets the verifier open private models (the worker's `models_kek_file`).
    pub fn set_models_kek(&mut self, kek: std::sync::Arc<gridbook_sealed::Kek>) {
        self.models_kek = Some(kek);
    }

    /// Whether the private model `sha256` is loaded for `kind` (see [`PrivateModel::plaintext`]).
    pub fn has_private(&self, kind: WorkloadKind, sha256: &str) -> bool {
        self.reference.has_private(kind, sha256)
    }

    pub fn models_kek(&self) -> Option<std::sync::Arc<gridbook_sealed::Kek>> {
        self.models_kek.clone()
    }

    /// The sample policy this verifier draws with.
    pub fn policy(&self) -> &SamplePolicy {
        &self.policy
    }

    /// Runs `items` (input lines) with the market's workload of `kind` — or the job's private
    /// model — and returns the reference's outputs in order (an item that fails to run is an
    /// `Err` with the reason) and its manifest. Blocking (model calls).
    pub fn reference_outputs(
        &mut self,
        kind: WorkloadKind,
        model: Option<&PrivateModel>,
        items: &[InputItem],
    ) -> Result<(Vec<Result<executor::workload::ItemOutput, String>>, Value), VerifyError> {
        let w = match model {
            // The job's private model, exactly the bytes its sha256 pins.
            Some(m) => self
                .reference
                .private_workload(kind, &m.sha256, || {
                    m.plaintext
                        .clone()
                        .ok_or_else(|| format!("private model {} is no longer loaded", m.sha256))
                }),
            None => self.reference.workload(kind),
        }
        .map_err(|e| VerifyError::Unavailable(e.to_string()))?;
        let reference_manifest = serde_json::to_value(w.manifest()).unwrap_or(Value::Null);
        let mut inputs = Vec::with_capacity(items.len());
        for (id, fields) in items {
            inputs.push(w.parse(id, fields).map_err(|e| {
                VerifyError::mismatch(
                    FailedCheck::SampleMismatch,
                    format!("input {id}: {}: {}", e.field, e.message),
                )
            })?);
        }
        let outs = w
            .run(&inputs, &|_| {})
            .map_err(|e| VerifyError::Unavailable(e.to_string()))?
            .into_iter()
            .map(|r| r.map_err(|e| e.to_string()))
            .collect();
        Ok((outs, reference_manifest))
    }

    /// Re-runs `items` with the workload of `kind` and compares each with the node's line
    /// (`executor::registry::compare` decides; the figures are the evidence). `Err` when any
    /// item disagrees, with the figures of all of them.
    pub fn rerun(
        &mut self,
        kind: WorkloadKind,
        model: Option<&PrivateModel>,
        items: &[(InputItem, OutputLine)],
    ) -> Result<Rerun, VerifyError> {
        let inputs: Vec<InputItem> = items.iter().map(|(i, _)| i.clone()).collect();
        let (ours, reference_manifest) = self.reference_outputs(kind, model, &inputs)?;
        let nodes: Vec<&OutputLine> = items.iter().map(|(_, o)| o).collect();
        let figures = judge(kind, &nodes, &ours);
        let first_bad = figures.iter().find(|f| !f.ok).and_then(|f| f.error.clone());
        match first_bad {
            None => Ok(Rerun {
                items: figures,
                reference_manifest,
            }),
            Some(why) => Err(VerifyError::Mismatch(Box::new(Failure {
                check: FailedCheck::SampleMismatch,
                why,
                evidence: Evidence {
                    items: figures,
                    reference_manifest: Some(reference_manifest),
                    ..Evidence::default()
                },
            }))),
        }
    }
}

/// Compares a node's lines with reference outputs of the same items, in order (pure): one
/// figure per item, `ok` where `executor::registry::compare` accepts it. The reference is the
/// market's re-run or another node's answer (see [`as_reference`]).
pub fn judge(
    kind: WorkloadKind,
    node: &[&OutputLine],
    reference: &[Result<executor::workload::ItemOutput, String>],
) -> Vec<ItemFigure> {
    node.iter()
        .zip(reference.iter().map(Some).chain(std::iter::repeat(None)))
        .map(|(node, ours)| match ours {
            Some(Ok(ours)) => {
                let verdict = registry::compare(kind, &node.custom_id, &node.record, ours);
                let mut f = ItemFigure::of(node, ours);
                if let Err(why) = verdict {
                    f.ok = false;
                    f.error = Some(why);
                }
                f
            }
            Some(Err(e)) => ItemFigure::unanswered(node, format!("the re-run of {} failed: {e}", node.custom_id)),
            None => ItemFigure::unanswered(node, format!("the re-run has no output for {}", node.custom_id)),
        })
        .collect()
}

/// Another node's output line as a reference output for [`judge`].
pub fn as_reference(line: &OutputLine) -> executor::workload::ItemOutput {
    executor::workload::ItemOutput {
        record: line.record.clone(),
        hash: line.hash,
        artifact: png_of(&line.record),
    }
}

/// What a re-run of the sample found.
#[derive(Clone, Debug, PartialEq)]
pub struct Rerun {
    pub items: Vec<ItemFigure>,
    /// How the market's reference produced its outputs (`executor::commitment::Manifest`).
    pub reference_manifest: Value,
}

/// One sampled item, both sides: the node's item hash, the reference's, and the comparison
/// figure (cosine for embeddings, mean |Δ| per RGBA channel out of 255 for images).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemFigure {
    pub custom_id: String,
    pub node_sha256: String,
    pub reference_sha256: Option<String>,
    pub cosine: Option<f64>,
    pub mean_abs_diff: Option<f64>,
    pub ok: bool,
    /// Why it disagrees.
    pub error: Option<String>,
}

impl ItemFigure {
    /// A sampled item the reference has no output for: it fails with `error`.
    fn unanswered(node: &OutputLine, error: String) -> Self {
        ItemFigure {
            custom_id: node.custom_id.clone(),
            node_sha256: hex::encode(node.hash),
            reference_sha256: None,
            cosine: None,
            mean_abs_diff: None,
            ok: false,
            error: Some(error),
        }
    }

    fn of(node: &OutputLine, ours: &executor::workload::ItemOutput) -> Self {
        let mut f = ItemFigure {
            custom_id: node.custom_id.clone(),
            node_sha256: hex::encode(node.hash),
            reference_sha256: Some(hex::encode(ours.hash)),
            cosine: None,
            mean_abs_diff: None,
            ok: true,
            error: None,
        };
        if let (Some(a), Some(b)) = (embedding_of(&node.record), embedding_of(&ours.record)) {
            if a.len() == b.len() {
                f.cosine = Some(f64::from(executor::embed::cosine(&a, &b)));
            }
        } else if let (Some(a), Some(b)) = (
            png_of(&node.record),
            ours.artifact.clone().or_else(|| png_of(&ours.record)),
        ) {
            f.mean_abs_diff = registry::mean_abs_diff(&a, &b).ok();
        }
        f
    }
}

/// The evidence of one verification, passed or failed (what `assignment_verifications` keeps).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evidence {
    /// The sample seed (hex), once the commitment checked out.
    pub seed: Option<String>,
    /// The custom_ids re-run.
    pub sampled: Vec<String>,
    pub items: Vec<ItemFigure>,
    pub reference_manifest: Option<Value>,
    /// The canaries checked, with their figures (kept in the dispute record, never served to
    /// providers: it would tell them the pool).
    pub canaries: Vec<ItemFigure>,
}

/// Why a result failed, which check, and the evidence gathered up to it.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub check: FailedCheck,
    pub why: String,
    pub evidence: Evidence,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)?;
        if let Some(seed) = &self.evidence.seed {
            write!(f, " (sample seed {seed}, re-ran {:?})", self.evidence.sampled)?;
        }
        Ok(())
    }
}

/// The check a failure of [`parse_output`] or [`check`] names.
pub fn classify(why: &str) -> FailedCheck {
    if why.contains("does not match its content") {
        FailedCheck::ItemHash
    } else if why.contains("Merkle root") {
        FailedCheck::MerkleRoot
    } else if why.contains("have no output") || why.contains("is not an input of the assignment") {
        FailedCheck::MissingItems
    } else {
        FailedCheck::OutputFormat
    }
}

/// What a passing verification found: the verified items and the evidence of the sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    pub ok: u64,
    /// The sample seed (hex): recomputable by whoever holds the market secret.
    pub seed: String,
    /// The custom_ids that were re-run.
    pub sampled: Vec<String>,
    /// Per sampled item, both sides and the figure.
    pub items: Vec<ItemFigure>,
    pub reference_manifest: Value,
    /// The canaries checked, each against its known answer.
    pub canaries: Vec<ItemFigure>,
}

/// A job's private model, opened in memory for the re-run (never written to disk).
pub struct PrivateModel {
    /// The sha256 the job pinned; the plaintext must hash to it.
    pub sha256: String,
    /// `None` when the verifier keeps the model loaded already ([`Verifier::has_private`]), so it
    /// was not fetched again; should it have been dropped meanwhile, the re-run is retried.
    pub plaintext: Option<Vec<u8>>,
}

/// A canary's known answer: the market's output record (without `custom_id`; a render's PNG
/// in `png_b64`) and its item hash.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub record: Map<String, Value>,
    pub hash: Hash,
}

impl Answer {
    fn output(&self) -> executor::workload::ItemOutput {
        executor::workload::ItemOutput {
            record: self.record.clone(),
            hash: self.hash,
            artifact: png_of(&self.record),
        }
    }
}

/// One canary of an assignment (`crate::canary`): where it was served, its input and, once the
/// market computed it, its answer.
#[derive(Clone, Debug)]
pub struct Canary {
    /// 0-based position among the served lines.
    pub at: u64,
    pub id: Uuid,
    pub input: Map<String, Value>,
    pub answer: Option<Answer>,
}

/// An answer the market's runtime just computed, for the pool (`canary::store_answers`).
#[derive(Clone, Debug)]
pub struct NewAnswer {
    pub id: Uuid,
    pub answer: Answer,
    pub manifest: Value,
}

/// One committed result of an assignment, as the node published it.
pub struct Committed<'a> {
    /// The job's private model, when it runs one (the re-run uses it, not the market's).
    pub model: Option<&'a PrivateModel>,
    pub assignment: Uuid,
    pub market: &'a str,
    pub kind: WorkloadKind,
    /// The job's input file and the assignment's items `[start, start + count)`.
    pub input: &'a str,
    pub start: u64,
    pub count: u64,
    /// The node's output file, its object name and Merkle root, and its reported failures.
    pub output: &'a str,
    pub output_sha256: &'a str,
    pub merkle_root: &'a str,
    pub reported_failed: u64,
    /// The canaries the node was served among the items (ascending positions), answers known.
    pub canaries: &'a [Canary],
}

/// A committed result whose completeness and commitment checked out, with its sample drawn
/// (what [`Verifier::prepare`] returns): the sampled items, to be re-run by another node or by
/// the market.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Items with an output line (the verified items if the sample agrees).
    pub ok: u64,
    pub seed: [u8; 32],
    /// Per sampled item: its input line and the node's output line, in input order.
    pub pairs: Vec<(InputItem, OutputLine)>,
    /// The sampled items' 0-based numbers in the job's input, ascending.
    pub item_numbers: Vec<u64>,
    /// The canaries checked (all agreed with their known answers).
    pub canaries: Vec<ItemFigure>,
}

impl Prepared {
    pub fn sampled(&self) -> Vec<String> {
        self.pairs.iter().map(|(_, o)| o.custom_id.clone()).collect()
    }

    pub fn seed_hex(&self) -> String {
        hex::encode(self.seed)
    }

    /// The passing verdict once the sample agreed, with `figures` and the manifest of whoever
    /// re-ran it.
    pub fn verified(&self, figures: Vec<ItemFigure>, reference_manifest: Value) -> Verified {
        Verified {
            ok: self.ok,
            seed: self.seed_hex(),
            sampled: self.sampled(),
            items: figures,
            reference_manifest,
            canaries: self.canaries.clone(),
        }
    }
}

impl Verifier {
    /// Computes the known answers of `canaries` that have none yet, with the market's workload
    /// of `kind` (blocking: model calls), fills them in and returns them for the pool. `Err`
    /// (retry later) when the market cannot run them.
    pub fn answer_canaries(&mut self, kind: WorkloadKind, canaries: &mut [Canary]) -> Result<Vec<NewAnswer>, VerifyError> {
        let todo: Vec<usize> = (0..canaries.len()).filter(|&i| canaries[i].answer.is_none()).collect();
        if todo.is_empty() {
            return Ok(Vec::new());
        }
        let items: Vec<InputItem> = todo
            .iter()
            .map(|&i| (served_id(canaries[i].at), canaries[i].input.clone()))
            .collect();
        let (outs, manifest) = self.reference_outputs(kind, None, &items).map_err(|e| match e {
            VerifyError::Mismatch(f) => VerifyError::Unavailable(format!("a canary of the pool does not parse: {}", f.why)),
            e => e,
        })?;
        let mut fresh = Vec::with_capacity(todo.len());
        for (&i, out) in todo.iter().zip(outs) {
            let c = &mut canaries[i];
            let out = out.map_err(|e| VerifyError::Unavailable(format!("canary {}: the market's run failed: {e}", c.id)))?;
            let mut record = out.record;
            record.remove("custom_id");
            if let Some(png) = out.artifact.filter(|_| png_of(&record).is_none()) {
                use base64::Engine as _;
                record.insert("png_b64".into(), Value::from(base64::engine::general_purpose::STANDARD.encode(png)));
            }
            let answer = Answer { record, hash: out.hash };
            c.answer = Some(answer.clone());
            fresh.push(NewAnswer { id: c.id, answer, manifest: manifest.clone() });
        }
        Ok(fresh)
    }

    /// Checks completeness and the commitment against the lines the node was served (the
    /// assignment's items and its canaries, named by position), each canary against its known
    /// answer, then draws the sample among the job's items from the commitment
    /// ([`SamplePolicy::seed`]). The sampled pairs carry the studio's custom_ids. Pure (no model
    /// call).
    pub fn prepare(&self, r: &Committed<'_>) -> Result<Prepared, VerifyError> {
        use gridbook_wire::catalog::{CanarySlot, ServedLine, served_lines, served_position};
        let policy = &self.policy;
        let inputs = input_items(r.input, r.start, r.count).map_err(VerifyError::Unavailable)?;
        let slots: Vec<CanarySlot> = r.canaries.iter().map(|c| CanarySlot { at: c.at, id: c.id }).collect();
        let lines = served_lines(r.count, &slots).map_err(VerifyError::Unavailable)?;
        let served: Vec<InputItem> = lines
            .iter()
            .enumerate()
            .map(|(p, l)| {
                let fields = match *l {
                    ServedLine::Item(i) => inputs[i as usize].1.clone(),
                    ServedLine::Canary(c) => r.canaries[c].input.clone(),
                };
                (served_id(p as u64), fields)
            })
            .collect();
        let outputs =
            parse_output(r.output).map_err(|why| VerifyError::mismatch(classify(&why), why))?;
        check(&served, &outputs, r.merkle_root, r.reported_failed)
            .map_err(|why| VerifyError::mismatch(classify(&why), why))?;
        // One lookup per canary (an assignment may hold thousands of lines and canaries).
        let by_id: std::collections::HashMap<&str, &OutputLine> =
            outputs.iter().map(|o| (o.custom_id.as_str(), o)).collect();
        let mut canaries = Vec::with_capacity(r.canaries.len());
        for c in r.canaries {
            let answer = c.answer.as_ref().ok_or_else(|| {
                VerifyError::Unavailable(format!("canary {} has no known answer yet", c.id))
            })?;
            let id = served_id(c.at);
            let figure = match by_id.get(id.as_str()) {
                Some(line) => judge(r.kind, &[*line], &[Ok(answer.output())]).remove(0),
                None => ItemFigure {
                    custom_id: id.clone(),
                    node_sha256: String::new(),
                    reference_sha256: Some(hex::encode(answer.hash)),
                    cosine: None,
                    mean_abs_diff: None,
                    ok: false,
                    error: Some(format!("{id} has no output (the node reported it failed)")),
                },
            };
            canaries.push(figure);
        }
        if let Some(bad) = canaries.iter().find(|f| !f.ok) {
            return Err(VerifyError::Mismatch(Box::new(Failure {
                check: FailedCheck::Canary,
                why: format!(
                    "a canary (an item whose answer the market knows) is wrong: {}",
                    bad.error.as_deref().unwrap_or("it disagrees")
                ),
                evidence: Evidence { canaries, ..Evidence::default() },
            })));
        }
        // The job's own items with an output, by their index in the assignment.
        let real: Vec<(usize, &OutputLine)> = outputs
            .iter()
            .filter_map(|o| match lines.get(served_position(&o.custom_id)? as usize)? {
                ServedLine::Item(i) => Some((*i as usize, o)),
                ServedLine::Canary(_) => None,
            })
            .collect();
        let seed = policy.seed(r.assignment, r.merkle_root, r.output_sha256);
        let picks = sample(real.len(), policy.items(r.market), seed_u128(&seed));
        let mut pairs = Vec::with_capacity(picks.len());
        let mut item_numbers = Vec::with_capacity(picks.len());
        for i in picks {
            let (at, line) = real[i];
            let mut o = line.clone();
            o.custom_id = inputs[at].0.clone();
            item_numbers.push(r.start + at as u64);
            pairs.push((inputs[at].clone(), o));
        }
        Ok(Prepared {
            ok: real.len() as u64,
            seed,
            pairs,
            item_numbers,
            canaries,
        })
    }

    /// Re-runs a prepared sample on the market's own runtime and compares.
    pub fn rerun_prepared(
        &mut self,
        kind: WorkloadKind,
        model: Option<&PrivateModel>,
        p: &Prepared,
    ) -> Result<Verified, VerifyError> {
        // A failed comparison carries the evidence: the seed, the items re-run, the figures.
        let rerun = self.rerun(kind, model, &p.pairs).map_err(|e| match e {
            VerifyError::Mismatch(mut f) => {
                f.evidence.seed = Some(p.seed_hex());
                f.evidence.sampled = p.sampled();
                f.evidence.canaries = p.canaries.clone();
                VerifyError::Mismatch(f)
            }
            other => other,
        })?;
        Ok(p.verified(rerun.items, rerun.reference_manifest))
    }

    /// [`prepare`](Self::prepare), then [`rerun_prepared`](Self::rerun_prepared). Blocking
    /// (model calls).
    pub fn verify(&mut self, r: &Committed<'_>) -> Result<Verified, VerifyError> {
        let p = self.prepare(r)?;
        self.rerun_prepared(r.kind, r.model, &p)
    }
}

/// Why a result did not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The node's result is wrong: it fails and is not paid.
    #[error("{0}")]
    Mismatch(Box<Failure>),
    /// The market could not check (runtime or model missing): retried later, never paid
    /// unchecked.
    #[error("verifier unavailable: {0}")]
    Unavailable(String),
}

impl VerifyError {
    /// A failure of `check` with no evidence beyond its reason.
    pub fn mismatch(check: FailedCheck, why: String) -> Self {
        VerifyError::Mismatch(Box::new(Failure {
            check,
            why,
            evidence: Evidence::default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn emb_line(id: &str, v: &[f32]) -> String {
        let h = commitment::sha256(&commitment::embedding_bytes(v));
        json!({"custom_id": id, "sha256": hex::encode(h), "embedding": v}).to_string()
    }

    fn inputs(ids: &[&str]) -> Vec<InputItem> {
        ids.iter().map(|i| (i.to_string(), Map::new())).collect()
    }

    fn root(lines: &[OutputLine]) -> String {
        Commitment::build(
            &lines
                .iter()
                .map(|o| (o.custom_id.clone(), o.hash))
                .collect::<Vec<_>>(),
        )
        .merkle_root
    }

    #[test]
    fn a_complete_honest_output_checks() {
        let text = [emb_line("a", &[0.6, 0.8]), emb_line("b", &[1.0, 0.0])].join("\n");
        let out = parse_output(&text).unwrap();
        let r = root(&out);
        assert_eq!(
            check(&inputs(&["a", "b"]), &out, &r, 0).unwrap(),
            Checked { ok: 2, missing: 0 }
        );
    }

    #[test]
    fn tampering_is_caught() {
        // A hash that does not match the content.
        let mut v: Value = serde_json::from_str(&emb_line("a", &[0.6, 0.8])).unwrap();
        v["embedding"] = json!([0.8, 0.6]);
        assert!(
            parse_output(&v.to_string())
                .unwrap_err()
                .contains("does not match")
        );
        // A root that does not match the outputs.
        let out = parse_output(&emb_line("a", &[0.6, 0.8])).unwrap();
        assert!(
            check(&inputs(&["a"]), &out, &"00".repeat(32), 0)
                .unwrap_err()
                .contains("Merkle")
        );
        // An output for an item not assigned, a repeated one, unreported gaps.
        let r = root(&out);
        assert!(check(&inputs(&["b"]), &out, &r, 0).is_err());
        let two = parse_output(&[emb_line("a", &[1.0]), emb_line("a", &[1.0])].join("\n")).unwrap();
        assert!(check(&inputs(&["a", "b"]), &two, &root(&two), 0).is_err());
        assert!(
            check(&inputs(&["a", "b"]), &out, &r, 0)
                .unwrap_err()
                .contains("reported 0")
        );
        assert_eq!(check(&inputs(&["a", "b"]), &out, &r, 1).unwrap().missing, 1);
    }

    #[test]
    fn each_failure_of_the_commitment_names_its_check() {
        let mut v: Value = serde_json::from_str(&emb_line("a", &[0.6, 0.8])).unwrap();
        v["embedding"] = json!([0.8, 0.6]);
        let why = parse_output(&v.to_string()).unwrap_err();
        assert_eq!(classify(&why), FailedCheck::ItemHash);
        assert_eq!(classify(&parse_output("not json").unwrap_err()), FailedCheck::OutputFormat);
        let out = parse_output(&emb_line("a", &[0.6, 0.8])).unwrap();
        let why = check(&inputs(&["a"]), &out, &"00".repeat(32), 0).unwrap_err();
        assert_eq!(classify(&why), FailedCheck::MerkleRoot);
        let r = root(&out);
        let why = check(&inputs(&["a", "b"]), &out, &r, 0).unwrap_err();
        assert_eq!(classify(&why), FailedCheck::MissingItems);
        let why = check(&inputs(&["b"]), &out, &r, 0).unwrap_err();
        assert_eq!(classify(&why), FailedCheck::MissingItems);
        // The message of a failure names the seed and the sample once there is one.
        let mut f = Failure {
            check: FailedCheck::SampleMismatch,
            why: "cosine 0.1 < 0.999".into(),
            evidence: Evidence::default(),
        };
        assert_eq!(f.to_string(), "cosine 0.1 < 0.999");
        f.evidence.seed = Some("ab".into());
        f.evidence.sampled = vec!["a".into()];
        assert_eq!(f.to_string(), "cosine 0.1 < 0.999 (sample seed ab, re-ran [\"a\"])");
    }

    #[test]
    fn input_ranges_skip_blank_lines_and_must_be_whole() {
        let text =
            "{\"custom_id\":\"a\",\"input\":\"x\"}\n\n{\"custom_id\":\"b\",\"input\":\"y\"}\n";
        let items = input_items(text, 1, 1).unwrap();
        assert_eq!(items[0].0, "b");
        assert!(input_items(text, 1, 2).is_err());
    }

    #[test]
    fn the_sample_seed_depends_on_the_secret_and_every_part_of_the_commitment() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let k = [7u8; 32];
        let base = sample_seed(&k, a, "root", "out");
        assert_eq!(
            base,
            sample_seed(&k, a, "root", "out"),
            "reproducible with the secret"
        );
        for other in [
            sample_seed(&[8u8; 32], a, "root", "out"),
            sample_seed(&k, b, "root", "out"),
            sample_seed(&k, a, "root2", "out"),
            sample_seed(&k, a, "root", "out2"),
            // Length prefixes: moving a byte between fields changes the seed.
            sample_seed(&k, a, "roo", "tout"),
        ] {
            assert_ne!(base, other);
        }
        // The old rule (seed = the assignment id, known to the node before it commits) is gone.
        assert_ne!(seed_u128(&base), a.as_u128());
    }

    #[test]
    fn the_policy_refuses_short_secrets_and_empty_samples_and_reads_per_market_sizes() {
        assert!(SamplePolicy::new(vec![0; 31], 4, BTreeMap::new()).is_err());
        assert!(SamplePolicy::new(vec![0; 32], 0, BTreeMap::new()).is_err());
        let by = BTreeMap::from([("RENDER-TERRAIN-128".to_owned(), 1)]);
        let p = SamplePolicy::new(vec![0; 32], 8, by).unwrap();
        assert_eq!(p.items("EMBED-MINILM-L6"), 8);
        assert_eq!(p.items("RENDER-TERRAIN-128"), 1);
        assert!(
            !format!("{p:?}").contains("secret: "),
            "the secret is never printed"
        );
    }

    #[test]
    fn samples_are_deterministic_distinct_and_bounded() {
        assert_eq!(sample(3, 4, 7), vec![0, 1, 2]);
        let s = sample(1000, 4, 42);
        assert_eq!(s.len(), 4);
        assert_eq!(s, sample(1000, 4, 42));
        assert!(s.iter().all(|&i| i < 1000));
        assert_ne!(s, sample(1000, 4, 43));
    }
}
