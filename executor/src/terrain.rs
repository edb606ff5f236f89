//! `RENDER-TERRAIN-128`: one-step consistency diffusion of 128×128 terrain heightfields.
//!
//! Real model: `terrain_consistency_unet_difficulty100.onnx` from `adaptive-terrain-diffusion==0.4.2`
//! (`<models>/terrain-128/model.onnx`). Sampling mirrors the package's `TerrainGenerator.generate`
//! at native size: `noisy = N(0,1) * 80` (sigma_max), `sigma = 80`, `difficulty = (d - 1) / 99`
//! for a difficulty `d` in 1..=100; the output in [-1, 1] maps to heights
//! `0.1 * sinh(clip((x+1)/2, 0, 1) * asinh(22.1686 / 0.1))`, floored at 0, and is saved as a
//! 16-bit grayscale PNG scaled by the heightfield's range (as the package's PNG writer does);
//! the output line carries `max_height` to undo the scaling.
//!
//! Noise comes from [`crate::rng`] seeded per item (`seed`, or a hash of `custom_id`), so a render
//! is reproducible. Items run one per model call by default so the result does not depend on
//! which other items shared the batch.

use serde_json::{Map, Value};

use crate::commitment::{self, Manifest};
use crate::error::{ExecutorError, Result};
use crate::models::{ModelSpec, ModelsDir, pinned};
use crate::rng::Rng;
use crate::runtime::{self, RunControl, Runtime, SharedSession};
use crate::workload::{FieldError, ItemOutput, Workload, item_seed, opt_u64};

pub const WORKLOAD_ID: &str = "RENDER-TERRAIN-128";
pub const MODEL_DIR: &str = "terrain-128";
pub const SIZE: usize = 128;
pub const NUM_CLASSES: u64 = 100;
pub const SIGMA_MAX: f32 = 80.0;
pub const HEIGHT_RANGE: f32 = 22.168_64;
pub const ASINH_SCALE: f32 = 0.1;

#[derive(Debug, Clone)]
pub struct TerrainConfig {
    /// Items per model call. 1 (default) keeps every render independent of its batch-mates.
    pub batch_size: usize,
    pub model_sha256: String,
}

impl Default for TerrainConfig {
    fn default() -> Self {
        Self {
            batch_size: 1,
            model_sha256: pinned::TERRAIN_128.to_owned(),
        }
    }
}

/// A terrain request. A missing seed is derived from the custom_id; a missing difficulty is
/// drawn (1..=100) from the item's generator before the noise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerrainInput {
    pub seed: Option<u64>,
    pub difficulty: Option<u64>,
    /// Filled by the runner from the custom_id when `seed` is absent.
    pub derived_seed: u64,
}

/// A rendered heightfield.
#[derive(Debug, Clone)]
pub struct Terrain {
    pub seed: u64,
    pub difficulty: u64,
    /// Heights, row-major 128×128, min 0.
    pub heights: Vec<f32>,
    pub png: Vec<u8>,
}

pub struct TerrainRenderer {
    session: SharedSession,
    spec: ModelSpec,
    config: TerrainConfig,
    provider: String,
    device: String,
    ort_version: String,
    gpu_name: Option<String>,
}

impl TerrainRenderer {
    pub fn load(rt: &Runtime, models: &ModelsDir, config: TerrainConfig) -> Result<Self> {
        let spec = models.spec(MODEL_DIR, &config.model_sha256)?;
        let session = rt.session(&spec)?;
        {
            let s = runtime::lock(&session);
            let names: Vec<&str> = s.inputs().iter().map(|o| o.name()).collect();
            if names != ["noisy", "sigma", "difficulty"] {
                return Err(ExecutorError::ModelContract {
                    model: spec.name.clone(),
                    message: format!("inputs {names:?}, expected [noisy, sigma, difficulty]"),
                });
            }
        }
        Ok(Self {
            session,
            spec,
            config,
            provider: rt.provider().ort_name().to_owned(),
            device: rt.provider().label(),
            ort_version: rt.ort_version().to_owned(),
            gpu_name: rt.gpu_name().map(str::to_owned),
        })
    }

    /// Renders `(seed, difficulty)` requests; results in input order.
    pub fn render(
        &self,
        requests: &[(u64, Option<u64>)],
        progress: &dyn Fn(u64),
    ) -> Result<Vec<Terrain>> {
        self.render_controlled(requests, progress, None)
    }

    /// [`render`](Self::render) under an optional [`RunControl`] (cancellation).
    pub fn render_controlled(
        &self,
        requests: &[(u64, Option<u64>)],
        progress: &dyn Fn(u64),
        control: Option<&RunControl>,
    ) -> Result<Vec<Terrain>> {
        let mut out = Vec::with_capacity(requests.len());
        for chunk in requests.chunks(self.config.batch_size.max(1)) {
            let b = chunk.len();
            let mut noisy = Vec::with_capacity(b * SIZE * SIZE);
            let mut labels = Vec::with_capacity(b);
            let mut diffs = Vec::with_capacity(b);
            for &(seed, difficulty) in chunk {
                let mut rng = Rng::new(seed);
                let d = difficulty.unwrap_or_else(|| 1 + rng.next_u64() % NUM_CLASSES);
                diffs.push(d);
                labels.push((d - 1) as f32 / (NUM_CLASSES - 1) as f32);
                noisy.extend(rng.normals(SIZE * SIZE).into_iter().map(|z| z * SIGMA_MAX));
            }
            let inputs = ort::inputs![
                "noisy" => ort::value::Tensor::from_array(([b, 1, SIZE, SIZE], noisy))?,
                "sigma" => ort::value::Tensor::from_array(([b], vec![SIGMA_MAX; b]))?,
                "difficulty" => ort::value::Tensor::from_array(([b], labels))?,
            ];
            let mut session = runtime::lock(&self.session);
            let outputs = runtime::run_session(&mut session, inputs, control)?;
            let (shape, den) = outputs["denoised"].try_extract_tensor::<f32>()?;
            if shape.iter().product::<i64>() as usize != b * SIZE * SIZE {
                return Err(ExecutorError::ModelContract {
                    model: self.spec.name.clone(),
                    message: format!("denoised has shape {:?}", &**shape),
                });
            }
            for (i, (&(seed, _), d)) in chunk.iter().zip(diffs).enumerate() {
                let heights = to_heights(&den[i * SIZE * SIZE..(i + 1) * SIZE * SIZE]);
                let png = heights_png(&heights)?;
                out.push(Terrain {
                    seed,
                    difficulty: d,
                    heights,
                    png,
                });
            }
            drop(outputs);
            drop(session);
            progress(b as u64);
        }
        Ok(out)
    }
}

/// Model space [-1, 1] → heights (the package's `_from_model_space` with `zero_floor`).
pub fn to_heights(values: &[f32]) -> Vec<f32> {
    let normalizer = (HEIGHT_RANGE / ASINH_SCALE).asinh();
    let mut h: Vec<f32> = values
        .iter()
        .map(|&v| {
            (ASINH_SCALE * (((v + 1.0) * 0.5).clamp(0.0, 1.0) * normalizer).sinh())
                .clamp(0.0, HEIGHT_RANGE)
        })
        .collect();
    let min = h.iter().copied().fold(f32::INFINITY, f32::min);
    h.iter_mut().for_each(|x| *x -= min);
    h
}

/// 16-bit PNG scaled by the range (the package's PNG writer); flat fields are all zero.
pub fn heights_png(heights: &[f32]) -> Result<Vec<u8>> {
    let min = heights.iter().copied().fold(f32::INFINITY, f32::min);
    let max = heights.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let span = max - min;
    let px: Vec<u16> = heights
        .iter()
        .map(|&h| {
            if span > 0.0 {
                ((h - min) / span * 65535.0).round() as u16
            } else {
                0
            }
        })
        .collect();
    crate::png::gray16(&px, SIZE as u32, SIZE as u32)
}

/// Input lines: `{"custom_id": "r1", "seed": 42, "difficulty": 60}` (both optional; `prompt` is ignored).
pub struct TerrainWorkload {
    pub renderer: TerrainRenderer,
}

impl TerrainWorkload {
    pub fn parse_with_id(
        fields: &Map<String, Value>,
        custom_id: &str,
    ) -> Result<TerrainInput, FieldError> {
        let seed = opt_u64(fields, "seed")?;
        let difficulty = opt_u64(fields, "difficulty")?;
        if let Some(d) = difficulty
            && !(1..=NUM_CLASSES).contains(&d)
        {
            return Err(FieldError::new(
                "difficulty",
                format!("must be 1..={NUM_CLASSES}, got {d}"),
            ));
        }
        Ok(TerrainInput {
            seed,
            difficulty,
            derived_seed: item_seed(seed, custom_id),
        })
    }
}

impl Workload for TerrainWorkload {
    type Input = TerrainInput;

    fn id(&self) -> &'static str {
        WORKLOAD_ID
    }

    fn parse(
        &self,
        custom_id: &str,
        fields: &Map<String, Value>,
    ) -> Result<TerrainInput, FieldError> {
        Self::parse_with_id(fields, custom_id)
    }

    fn run_controlled(
        &mut self,
        inputs: &[TerrainInput],
        progress: &dyn Fn(u64),
        control: Option<&RunControl>,
    ) -> Result<Vec<Result<ItemOutput, String>>> {
        self.run_with(inputs, progress, control)
    }

    fn manifest(&self) -> Manifest {
        self.manifest_impl()
    }
}

impl TerrainWorkload {
    fn run_with(
        &mut self,
        inputs: &[TerrainInput],
        progress: &dyn Fn(u64),
        control: Option<&RunControl>,
    ) -> Result<Vec<Result<ItemOutput, String>>> {
        let reqs: Vec<(u64, Option<u64>)> = inputs
            .iter()
            .map(|i| (i.derived_seed, i.difficulty))
            .collect();
        let terrains = self.renderer.render_controlled(&reqs, progress, control)?;
        Ok(terrains
            .into_iter()
            .map(|t| {
                let max = t.heights.iter().copied().fold(0.0f32, f32::max);
                let mut record = Map::new();
                record.insert("seed".into(), Value::from(t.seed));
                record.insert("difficulty".into(), Value::from(t.difficulty));
                record.insert("max_height".into(), serde_json::json!(max));
                Ok(ItemOutput {
                    record,
                    hash: commitment::sha256(&t.png),
                    artifact: Some(t.png),
                })
            })
            .collect())
    }

    fn manifest_impl(&self) -> Manifest {
        let r = &self.renderer;
        Manifest {
            workload: WORKLOAD_ID.into(),
            models: [("model".to_owned(), r.spec.sha256.to_string())]
                .into_iter()
                .collect(),
            ort_version: r.ort_version.clone(),
            execution_provider: r.provider.clone(),
            device: r.device.clone(),
            dtype: "float32".into(),
            gpu_name: r.gpu_name.clone(),
            executor_version: env!("CARGO_PKG_VERSION").into(),
            parameters: serde_json::json!({
                "sigma": SIGMA_MAX, "steps": 1, "noise": "xoshiro256++/box-muller (crate::rng)",
                "batch_size": r.config.batch_size, "png": "gray16, scaled by range",
            }),
        }
    }
}
