//! The workload registry: the one place that knows every [`WorkloadKind`]. For each kind it
//! parses and checks an input line's fields ([`parse_fields`]; the API's upload check calls the
//! same function through [`check_fields`] / [`check_jsonl`]), loads its model(s)
//! ([`Loaded::load`]), runs items ([`Loaded`] is a [`Workload`], so it goes through
//! [`crate::local::run_reader`] / [`crate::workload::run_items`] like any workload) and compares
//! two outputs of one item ([`compare`]: the market's verifier).
//!
//! Every caller — the CLI (`executor run --workload`), the agent ([`crate::agent::workloads`]),
//! the API (upload check, node challenge) and the settlement worker's verifier — goes through
//! here, and dispatch is a `match` on the enum, so adding a kind means this file, the kind's
//! module and model entry ([`crate::models::pinned`]) and its `gridbook_wire::catalog` entry.
//!
//! [`Reference`] is the market's own executor: CPU, one thread, workloads loaded on first use
//! (the API's challenge reference and the verifier's re-runs).

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::commitment::Manifest;
use crate::embed::{EmbedConfig, EmbedWorkload, Embedder};
use crate::error::{ExecutorError, Result};
use crate::local::Parsed;
use crate::models::ModelsDir;
use crate::runtime::{Provider, RunControl, Runtime, RuntimeConfig};
use crate::sd::{LineParams, SdInput, SdPipeline, SdWorkload};
use crate::terrain::{TerrainConfig, TerrainInput, TerrainRenderer, TerrainWorkload};
use crate::workload::{FieldError, ItemOutput, Workload};

pub use gridbook_wire::catalog::WorkloadKind;

/// Embeddings of one item must agree to this cosine (product.md: cosine ≥ 0.999).
pub const EMBED_MIN_COSINE: f32 = 0.999;
/// Images of one item may differ by this mean absolute difference per 8-bit RGBA channel (out of
/// 255). Calibrated by `loadtest calibrate-images`, recorded in executor/README.md "Image
/// tolerance calibration": on the CPU, 1,900 honest pairs across intra-op threads 1/2/default and
/// terrain batch 1/4 were all bit-identical (worst 0); a re-used render (another seed) or fewer
/// SD steps land at ≥ 8.0; 0 honest pairs above 2.0 → false positives ≤ 0.3 % per item (rule
/// of three). CPU vs CUDA is not measured yet: the margin up to 2.0 is kept for it.
pub const IMAGE_MAX_MEAN_ABS_DIFF: f64 = 2.0;

/// The parsed input of one item, of any kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Embed(String),
    Terrain(TerrainInput),
    Sd(SdInput),
}

/// Parses and checks one input line's fields for `kind` (`custom_id` already taken out): the
/// parser of every run ([`Loaded`]'s [`Workload::parse`]) and of the API's upload check
/// ([`check_fields`]). Needs no model; `sd` is the SD pipeline's VAE factor and defaults.
pub fn parse_fields(
    kind: WorkloadKind,
    custom_id: &str,
    fields: &Map<String, Value>,
    sd: &LineParams,
) -> std::result::Result<Input, FieldError> {
    match kind {
        WorkloadKind::Embed => crate::embed::parse_input(fields).map(Input::Embed),
        WorkloadKind::Terrain => {
            TerrainWorkload::parse_with_id(fields, custom_id).map(Input::Terrain)
        }
        WorkloadKind::Sd => crate::sd::parse_input(custom_id, fields, sd).map(Input::Sd),
    }
}

/// The upload check of one line: [`parse_fields`] with the market's SD shape
/// ([`LineParams::SD15_512`]), so a line the API accepts is a line the executor runs.
pub fn check_fields(
    kind: WorkloadKind,
    custom_id: &str,
    fields: &Map<String, Value>,
) -> std::result::Result<(), FieldError> {
    parse_fields(kind, custom_id, fields, &LineParams::SD15_512).map(drop)
}

/// The fields a node is served for one input line (`custom_id` taken out): every parameter the
/// run depends on made explicit, in one canonical shape per kind — embeddings `{"input"}`,
/// terrain `{"seed", "difficulty"}` (the seed derived from the custom_id and the difficulty
/// drawn from it when the line had none), SD every parameter with its default filled in. So the
/// node computes the same output under any custom_id (the API serves positions, not the
/// studio's ids: `gridbook_wire::catalog::served_id`), and a line looks the same whatever form
/// the studio wrote — which lets the market mix in canary items that the node cannot tell apart
/// by shape. Needs no model.
pub fn served_fields(
    kind: WorkloadKind,
    custom_id: &str,
    fields: &Map<String, Value>,
) -> std::result::Result<Map<String, Value>, FieldError> {
    let mut out = Map::new();
    match parse_fields(kind, custom_id, fields, &LineParams::SD15_512)? {
        Input::Embed(text) => {
            out.insert("input".into(), Value::from(text));
        }
        Input::Terrain(t) => {
            let difficulty = t.difficulty.unwrap_or_else(|| {
                1 + crate::rng::Rng::new(t.derived_seed).next_u64() % crate::terrain::NUM_CLASSES
            });
            out.insert("seed".into(), Value::from(t.derived_seed));
            out.insert("difficulty".into(), Value::from(difficulty));
        }
        Input::Sd(i) => {
            out.insert("prompt".into(), Value::from(i.prompt));
            out.insert("negative_prompt".into(), Value::from(i.negative_prompt));
            out.insert("seed".into(), Value::from(i.seed));
            out.insert("steps".into(), Value::from(i.steps));
            out.insert("guidance_scale".into(), Value::from(i.guidance_scale));
            out.insert("width".into(), Value::from(i.width));
            out.insert("height".into(), Value::from(i.height));
        }
    }
    Ok(out)
}

/// Checks JSONL text for `kind` with the executor's line parser ([`crate::local::parse_jsonl`]:
/// JSON objects, unique `custom_id`s, UTF-8) and [`check_fields`]; nothing runs.
pub fn check_jsonl(kind: WorkloadKind, reader: impl std::io::BufRead) -> Parsed<()> {
    crate::local::parse_jsonl(&Checker(kind), reader)
}

/// A parse-only workload: [`crate::local::parse_jsonl`] calls `parse` for each line.
struct Checker(WorkloadKind);

impl Workload for Checker {
    type Input = ();

    fn id(&self) -> &'static str {
        self.0.as_str()
    }

    fn parse(
        &self,
        custom_id: &str,
        fields: &Map<String, Value>,
    ) -> std::result::Result<(), FieldError> {
        check_fields(self.0, custom_id, fields)
    }

    fn run_controlled(
        &mut self,
        _inputs: &[()],
        _progress: &dyn Fn(u64),
        _control: Option<&RunControl>,
    ) -> Result<Vec<std::result::Result<ItemOutput, String>>> {
        Err(ExecutorError::Config(
            "the checker only parses input lines".into(),
        ))
    }

    fn manifest(&self) -> Manifest {
        Manifest {
            workload: self.0.as_str().into(),
            models: Default::default(),
            ort_version: String::new(),
            execution_provider: String::new(),
            device: String::new(),
            dtype: String::new(),
            gpu_name: None,
            executor_version: String::new(),
            parameters: Value::Null,
        }
    }
}

/// Where models come from and how the workloads are set up.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The models directory (`<dir>/<model>/model.onnx`); `None`: `GRIDBOOK_MODELS_DIR`, read only
    /// by the kinds that need it.
    pub models_dir: Option<PathBuf>,
    /// The SD pipeline's directory (SD 1.5 ONNX export + `tokenizer.json` + `gridbook-sd.json`);
    /// the `sd` kind needs it.
    pub sd_model_dir: Option<PathBuf>,
    pub embed: EmbedConfig,
    pub terrain: TerrainConfig,
}

/// A loaded workload of any kind. It is a [`Workload`] whose inputs are [`Input`]s.
pub enum Loaded {
    Embed(EmbedWorkload),
    Terrain(TerrainWorkload),
    Sd(SdWorkload),
}

impl Loaded {
    /// Loads the model(s) of `kind` (hash-checked, see [`crate::models`]).
    pub fn load(kind: WorkloadKind, rt: &Runtime, opts: &Options) -> Result<Self> {
        let models = || match &opts.models_dir {
            Some(d) => Ok(ModelsDir::new(d)),
            None => ModelsDir::from_env(),
        };
        Ok(match kind {
            WorkloadKind::Embed => Loaded::Embed(EmbedWorkload {
                embedder: Embedder::load(rt, &models()?, opts.embed.clone())?,
            }),
            WorkloadKind::Terrain => Loaded::Terrain(TerrainWorkload {
                renderer: TerrainRenderer::load(rt, &models()?, opts.terrain.clone())?,
            }),
            WorkloadKind::Sd => {
                let dir = opts.sd_model_dir.as_deref().ok_or_else(|| {
                    ExecutorError::Config(
                        "the sd workload needs an SD model directory (--sd-model-dir, or sd_model_dir in the node config)"
                            .into(),
                    )
                })?;
                Loaded::Sd(SdWorkload {
                    pipeline: SdPipeline::load(rt, dir)?,
                })
            }
        })
    }

    /// The workload of `kind` on a studio's private model (`bytes`, plaintext in memory, must
    /// hash to `sha256`). Only embeddings take private models: a BERT-style encoder with the
    /// market's tokenizer and a 384-wide `last_hidden_state` (see [`Embedder::load_private`]).
    pub fn load_private(
        kind: WorkloadKind,
        rt: &Runtime,
        opts: &Options,
        name: &str,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<Self> {
        match kind {
            WorkloadKind::Embed => {
                let models = match &opts.models_dir {
                    Some(d) => ModelsDir::new(d),
                    None => ModelsDir::from_env()?,
                };
                Ok(Loaded::Embed(EmbedWorkload {
                    embedder: Embedder::load_private(
                        rt,
                        &models,
                        opts.embed.clone(),
                        name,
                        bytes,
                        sha256,
                    )?,
                }))
            }
            WorkloadKind::Terrain | WorkloadKind::Sd => Err(ExecutorError::Config(format!(
                "the {kind} workload does not take private models"
            ))),
        }
    }

    pub fn kind(&self) -> WorkloadKind {
        match self {
            Loaded::Embed(_) => WorkloadKind::Embed,
            Loaded::Terrain(_) => WorkloadKind::Terrain,
            Loaded::Sd(_) => WorkloadKind::Sd,
        }
    }

    /// The embedder, for the hardware challenge ([`crate::challenge`]).
    pub fn embedder(&self) -> Option<&Embedder> {
        match self {
            Loaded::Embed(w) => Some(&w.embedder),
            Loaded::Terrain(_) | Loaded::Sd(_) => None,
        }
    }

    /// What [`parse_fields`] needs of this workload's SD pipeline (the market's shape for kinds
    /// without one; they do not read it).
    fn line_params(&self) -> LineParams {
        match self {
            Loaded::Sd(w) => w.pipeline.config().line_params(),
            Loaded::Embed(_) | Loaded::Terrain(_) => LineParams::SD15_512,
        }
    }
}

/// Runs `inputs` (all of `w`'s kind) through `w`.
fn run_as<W: Workload>(
    w: &mut W,
    inputs: &[Input],
    pick: fn(&Input) -> Option<&W::Input>,
    progress: &dyn Fn(u64),
    control: Option<&RunControl>,
) -> Result<Vec<std::result::Result<ItemOutput, String>>>
where
    W::Input: Clone,
{
    let own = inputs
        .iter()
        .map(|i| {
            pick(i).cloned().ok_or_else(|| {
                ExecutorError::Config(format!("an input of another workload given to {}", w.id()))
            })
        })
        .collect::<Result<Vec<W::Input>>>()?;
    w.run_controlled(&own, progress, control)
}

impl Workload for Loaded {
    type Input = Input;

    fn id(&self) -> &'static str {
        match self {
            Loaded::Embed(w) => w.id(),
            Loaded::Terrain(w) => w.id(),
            Loaded::Sd(w) => w.id(),
        }
    }

    fn parse(
        &self,
        custom_id: &str,
        fields: &Map<String, Value>,
    ) -> std::result::Result<Input, FieldError> {
        parse_fields(self.kind(), custom_id, fields, &self.line_params())
    }

    fn run_controlled(
        &mut self,
        inputs: &[Input],
        progress: &dyn Fn(u64),
        control: Option<&RunControl>,
    ) -> Result<Vec<std::result::Result<ItemOutput, String>>> {
        match self {
            Loaded::Embed(w) => run_as(
                w,
                inputs,
                |i| match i {
                    Input::Embed(x) => Some(x),
                    _ => None,
                },
                progress,
                control,
            ),
            Loaded::Terrain(w) => run_as(
                w,
                inputs,
                |i| match i {
                    Input::Terrain(x) => Some(x),
                    _ => None,
                },
                progress,
                control,
            ),
            Loaded::Sd(w) => run_as(
                w,
                inputs,
                |i| match i {
                    Input::Sd(x) => Some(x),
                    _ => None,
                },
                progress,
                control,
            ),
        }
    }

    fn manifest(&self) -> Manifest {
        match self {
            Loaded::Embed(w) => w.manifest(),
            Loaded::Terrain(w) => w.manifest(),
            Loaded::Sd(w) => w.manifest(),
        }
    }

    fn stream_chunk_items(&self) -> usize {
        match self {
            Loaded::Embed(w) => w.stream_chunk_items(),
            Loaded::Terrain(w) => w.stream_chunk_items(),
            Loaded::Sd(w) => w.stream_chunk_items(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing two outputs of one item
// ---------------------------------------------------------------------------------------------

/// The embedding an output line's fields carry (`embedding`).
pub fn embedding_of(record: &Map<String, Value>) -> Option<Vec<f32>> {
    record
        .get("embedding")?
        .as_array()?
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32))
        .collect()
}

/// The PNG bytes a render output line's fields carry (base64 in a field named `*png_b64`).
pub fn png_of(record: &Map<String, Value>) -> Option<Vec<u8>> {
    record.iter().find_map(|(k, v)| {
        let s = v.as_str().filter(|_| k.ends_with("png_b64"))?;
        base64::engine::general_purpose::STANDARD.decode(s).ok()
    })
}

/// Compares two outputs of one item of `kind`: `node`, the fields of a node's output line
/// (besides `custom_id`), with `ours`, the market's own run of the same input. Embeddings must
/// agree to cosine ≥ [`EMBED_MIN_COSINE`], images to a mean absolute pixel difference ≤
/// [`IMAGE_MAX_MEAN_ABS_DIFF`] (out of 255). `Err` says how they differ.
pub fn compare(
    kind: WorkloadKind,
    custom_id: &str,
    node: &Map<String, Value>,
    ours: &ItemOutput,
) -> std::result::Result<(), String> {
    match kind {
        WorkloadKind::Embed => {
            let a = embedding_of(node).ok_or("the node's line has no embedding")?;
            compare_embeddings(custom_id, &a, ours)
        }
        WorkloadKind::Terrain | WorkloadKind::Sd => {
            if embedding_of(node).is_some() {
                return Err("the re-run produced no embedding where the node did".into());
            }
            compare_images(custom_id, node, ours)
        }
    }
}

fn compare_embeddings(
    custom_id: &str,
    a: &[f32],
    ours: &ItemOutput,
) -> std::result::Result<(), String> {
    let b =
        embedding_of(&ours.record).ok_or("the re-run produced no embedding where the node did")?;
    if a.len() != b.len() {
        return Err(format!(
            "embedding of {custom_id} has {} dims, expected {}",
            a.len(),
            b.len()
        ));
    }
    let cos = crate::embed::cosine(a, &b);
    if cos >= EMBED_MIN_COSINE {
        Ok(())
    } else {
        Err(format!(
            "embedding of {custom_id} differs from the re-run: cosine {cos:.5} < {EMBED_MIN_COSINE}"
        ))
    }
}

fn compare_images(
    custom_id: &str,
    node: &Map<String, Value>,
    ours: &ItemOutput,
) -> std::result::Result<(), String> {
    let a = png_of(node).ok_or("the node's line has no image")?;
    let b = ours
        .artifact
        .clone()
        .or_else(|| png_of(&ours.record))
        .ok_or("the re-run produced no image")?;
    let d = mean_abs_diff(&a, &b).map_err(|e| format!("image of {custom_id}: {e}"))?;
    if d <= IMAGE_MAX_MEAN_ABS_DIFF {
        Ok(())
    } else {
        Err(format!(
            "image of {custom_id} differs from the re-run: mean |Δ| {d:.2} > {IMAGE_MAX_MEAN_ABS_DIFF}"
        ))
    }
}

/// Mean absolute difference per RGBA channel of two PNGs of the same size (the figure
/// `compare` judges images by; the verifier records it as evidence).
pub fn mean_abs_diff(a: &[u8], b: &[u8]) -> std::result::Result<f64, String> {
    let load = |p: &[u8]| {
        image::load_from_memory_with_format(p, image::ImageFormat::Png)
            .map(|i| i.to_rgba8())
            .map_err(|e| e.to_string())
    };
    let (a, b) = (load(a)?, load(b)?);
    if a.dimensions() != b.dimensions() {
        return Err(format!("size {:?} ≠ {:?}", a.dimensions(), b.dimensions()));
    }
    let n = a.as_raw().len().max(1) as f64;
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y) as u64)
        .sum();
    Ok(sum as f64 / n)
}

// ---------------------------------------------------------------------------------------------
// The market's own executor
// ---------------------------------------------------------------------------------------------

/// The market's own executor (the API's challenge reference, the settlement worker's
/// verifier): ONNX Runtime on the CPU with one intra-op thread (`ORT_DYLIB_PATH`), models from
/// `GRIDBOOK_MODELS_DIR`, each workload loaded on first use and kept; a failed start or load is
/// retried on the next use. Blocking: use it on a blocking thread.
/// Private models the market's own executor keeps loaded at once (each holds its weights).
pub const PRIVATE_MODELS_KEPT: usize = 2;

pub struct Reference {
    rt: Option<Runtime>,
    loaded: BTreeMap<WorkloadKind, Loaded>,
    /// Private models by sha256, most recently used last, at most [`PRIVATE_MODELS_KEPT`].
    private: Vec<(String, Loaded)>,
    /// `None`: [`Options::default`] (models from `GRIDBOOK_MODELS_DIR`, no SD pipeline).
    options: Option<Options>,
}

impl Default for Reference {
    fn default() -> Self {
        Self::new()
    }
}

impl Reference {
    pub const fn new() -> Self {
        Self {
            rt: None,
            loaded: BTreeMap::new(),
            private: Vec::new(),
            options: None,
        }
    }

    /// A reference that loads its workloads with `options` (e.g. the SD pipeline's directory).
    pub fn with_options(options: Options) -> Self {
        Self {
            options: Some(options),
            ..Self::new()
        }
    }

    fn runtime(&mut self) -> Result<&Runtime> {
        if self.rt.is_none() {
            self.rt = Some(Runtime::new(RuntimeConfig {
                dylib_path: None,
                provider: Provider::Cpu,
                intra_threads: 1,
            })?);
        }
        Ok(self.rt.as_ref().expect("set above"))
    }

    /// The workload of `kind` on a private model whose plaintext `bytes()` gives (called only
    /// when the model is not kept already), hash-checked against `sha256`.
    pub fn private_workload(
        &mut self,
        kind: WorkloadKind,
        sha256: &str,
        bytes: impl FnOnce() -> std::result::Result<Vec<u8>, String>,
    ) -> Result<&mut Loaded> {
        if let Some(i) = self
            .private
            .iter()
            .position(|(s, w)| s == sha256 && w.kind() == kind)
        {
            let kept = self.private.remove(i);
            self.private.push(kept);
        } else {
            let plain = bytes().map_err(ExecutorError::Config)?;
            let opts = self.options.clone().unwrap_or_default();
            let w = Loaded::load_private(kind, self.runtime()?, &opts, "private model", &plain, sha256)?;
            drop(plain);
            if self.private.len() >= PRIVATE_MODELS_KEPT {
                self.private.remove(0);
            }
            tracing::info!(workload = %kind, sha256, "reference private model loaded");
            self.private.push((sha256.to_owned(), w));
        }
        Ok(&mut self.private.last_mut().expect("pushed above").1)
    }

    /// Whether the private model `sha256` is kept loaded for `kind` (then its bytes need not be
    /// fetched for [`Self::private_workload`]).
    pub fn has_private(&self, kind: WorkloadKind, sha256: &str) -> bool {
        self.private.iter().any(|(s, w)| s == sha256 && w.kind() == kind)
    }

    /// Whether `bytes` is a model `kind` can run as a private model (loaded and called once on
    /// the CPU, not kept); `Err` says what is wrong with it.
    pub fn check_private_model(
        &mut self,
        kind: WorkloadKind,
        bytes: &[u8],
    ) -> std::result::Result<(), String> {
        let sha = hex::encode(crate::commitment::sha256(bytes));
        let opts = self.options.clone().unwrap_or_default();
        let rt = self.runtime().map_err(|e| format!("the market's runtime is unavailable: {e}"))?;
        Loaded::load_private(kind, rt, &opts, "uploaded model", bytes, &sha)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// The workload of `kind`, loaded now if it is not yet.
    pub fn workload(&mut self, kind: WorkloadKind) -> Result<&mut Loaded> {
        use std::collections::btree_map::Entry;
        if self.rt.is_none() {
            self.runtime()?;
        }
        match self.loaded.entry(kind) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(slot) => {
                let rt = self.rt.as_ref().expect("set above");
                let w = match &self.options {
                    Some(o) => Loaded::load(kind, rt, o)?,
                    None => Loaded::load(kind, rt, &Options::default())?,
                };
                tracing::info!(workload = %kind, "reference workload loaded");
                Ok(slot.insert(w))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn served_fields_make_every_parameter_explicit_so_the_custom_id_no_longer_matters() {
        // Whatever form the studio wrote, the node gets one shape per kind, and parsing it under
        // any other custom_id (the served position) gives the run the same parameters.
        let effective = |kind, id: &str, f: &Map<String, Value>| match parse_fields(kind, id, f, &LineParams::SD15_512).unwrap() {
            Input::Embed(t) => json!({"input": t}),
            Input::Terrain(t) => json!({"seed": t.derived_seed,
                "difficulty": t.difficulty.unwrap_or_else(|| 1 + crate::rng::Rng::new(t.derived_seed).next_u64() % crate::terrain::NUM_CLASSES)}),
            Input::Sd(i) => json!([i.prompt, i.negative_prompt, i.seed, i.steps, i.guidance_scale, i.width, i.height]),
        };
        let cases = [
            (WorkloadKind::Embed, json!({"input": "hello"})),
            (WorkloadKind::Embed, json!({"body": {"input": "hello"}})),
            (WorkloadKind::Embed, json!({"input": ["hello"]})),
            (WorkloadKind::Terrain, json!({})),
            (WorkloadKind::Terrain, json!({"seed": 7})),
            (WorkloadKind::Terrain, json!({"difficulty": 30, "prompt": "ignored"})),
            (WorkloadKind::Sd, json!({"prompt": "a red fox"})),
            (WorkloadKind::Sd, json!({"prompt": "a red fox", "seed": 3, "steps": 2, "width": 256})),
        ];
        for (kind, line) in cases {
            let f = fields(line.clone());
            let served = served_fields(kind, "studio-7", &f).unwrap();
            assert_eq!(effective(kind, "i3", &served), effective(kind, "studio-7", &f), "{kind} {line}");
            let keys: Vec<&str> = served.keys().map(String::as_str).collect();
            let want: &[&str] = match kind {
                WorkloadKind::Embed => &["input"],
                WorkloadKind::Terrain => &["difficulty", "seed"],
                WorkloadKind::Sd => &["guidance_scale", "height", "negative_prompt", "prompt", "seed", "steps", "width"],
            };
            assert_eq!(keys, want, "{kind} {line}: one shape per kind");
        }
        assert_eq!(served_fields(WorkloadKind::Embed, "a", &fields(json!({"input": 3}))).unwrap_err().field, "input");
    }

    #[test]
    fn every_kind_parses_its_lines_without_a_model() {
        assert_eq!(
            parse_fields(
                WorkloadKind::Embed,
                "a",
                &fields(json!({"body": {"input": "hi"}})),
                &LineParams::SD15_512
            ),
            Ok(Input::Embed("hi".into()))
        );
        let e = check_fields(WorkloadKind::Embed, "a", &fields(json!({"input": 3}))).unwrap_err();
        assert_eq!(e, FieldError::new("input", "expected a string"));
        assert!(check_fields(WorkloadKind::Terrain, "a", &fields(json!({"seed": 1}))).is_ok());
        let e = check_fields(
            WorkloadKind::Terrain,
            "a",
            &fields(json!({"difficulty": 0})),
        )
        .unwrap_err();
        assert_eq!(e.field, "difficulty");
        assert!(check_fields(WorkloadKind::Sd, "a", &fields(json!({"prompt": "a cat"}))).is_ok());
        let e = check_fields(
            WorkloadKind::Sd,
            "a",
            &fields(json!({"prompt": "p", "height": 12})),
        )
        .unwrap_err();
        assert_eq!(e.field, "height");
        let Input::Sd(s) = parse_fields(
            WorkloadKind::Sd,
            "a",
            &fields(json!({"prompt": "p"})),
            &LineParams::SD15_512,
        )
        .unwrap() else {
            panic!("an SD input")
        };
        assert_eq!((s.width, s.height, s.steps), (512, 512, 50));
    }

    #[test]
    fn check_jsonl_is_the_executors_line_parser() {
        let text = "{\"custom_id\":\"a\",\"input\":\"x\"}\n{\"custom_id\":\"a\",\"input\":\"y\"}\n{\"custom_id\":\"b\"}\n";
        let p = check_jsonl(WorkloadKind::Embed, std::io::Cursor::new(text));
        assert_eq!(p.items.len(), 1);
        let msgs: Vec<_> = p
            .errors
            .iter()
            .map(|e| (e.line, e.message.as_str()))
            .collect();
        assert_eq!(msgs, [(2, "duplicate custom_id"), (3, "missing")]);
    }

    fn item(record: Value, artifact: Option<Vec<u8>>) -> ItemOutput {
        ItemOutput {
            record: fields(record),
            hash: [0; 32],
            artifact,
        }
    }

    #[test]
    fn embeddings_compare_by_cosine() {
        let ours = item(json!({"embedding": [1.0, 0.0]}), None);
        let same = fields(json!({"embedding": [1.0, 0.001]}));
        assert_eq!(compare(WorkloadKind::Embed, "a", &same, &ours), Ok(()));
        let other = fields(json!({"embedding": [0.9, 0.3]}));
        let e = compare(WorkloadKind::Embed, "a", &other, &ours).unwrap_err();
        assert!(
            e.contains("embedding of a differs from the re-run: cosine"),
            "{e}"
        );
        let short = fields(json!({"embedding": [1.0]}));
        assert!(
            compare(WorkloadKind::Embed, "a", &short, &ours)
                .unwrap_err()
                .contains("dims")
        );
        let image = fields(json!({"image_png_b64": ""}));
        assert!(compare(WorkloadKind::Embed, "a", &image, &ours).is_err());
    }

    #[test]
    fn images_compare_by_mean_abs_diff() {
        let png = |v: u8| crate::png::rgb8(&[v; 4 * 4 * 3], 4, 4).unwrap();
        let b64 = |p: &[u8]| base64::engine::general_purpose::STANDARD.encode(p);
        let ours = item(json!({}), Some(png(100)));
        // RGB difference 2 on 3 of 4 channels (alpha equal): mean 1.5 ≤ 2.
        let close = fields(json!({"image_png_b64": b64(&png(102))}));
        assert_eq!(compare(WorkloadKind::Terrain, "r", &close, &ours), Ok(()));
        let far = fields(json!({"image_png_b64": b64(&png(110))}));
        let e = compare(WorkloadKind::Sd, "r", &far, &ours).unwrap_err();
        assert!(
            e.contains("image of r differs from the re-run: mean |Δ| 7.50 > 2"),
            "{e}"
        );
        let emb = fields(json!({"embedding": [1.0]}));
        assert!(compare(WorkloadKind::Terrain, "r", &emb, &ours).is_err());
        // Our side inline (no artifact) works the same.
        let inline = item(json!({"image_png_b64": b64(&png(100))}), None);
        assert_eq!(compare(WorkloadKind::Terrain, "r", &close, &inline), Ok(()));
    }
}
