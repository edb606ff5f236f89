//! The workloads a node serves, loaded once at start-up, and running an assignment's lines
//! through the local-mode code path ([`crate::local::run_reader`]): the output lines are the
//! bytes local mode writes for the same lines (renders carry the PNG inline as `image_png_b64`
//! instead of a file path, so the output object is self-contained).
//!
//! Each workload sits behind a mutex: assignments of one market run one at a time (the model
//! session is shared anyway); assignments of different markets run in parallel.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::embed::{EmbedConfig, EmbedWorkload, Embedder};
use crate::error::{ExecutorError, Result};
use crate::local::{Artifacts, JsonlRun, run_reader};
use crate::models::ModelsDir;
use crate::runtime::{RunControl, Runtime};
use crate::sd::{SdPipeline, SdWorkload};
use crate::terrain::{TerrainConfig, TerrainRenderer, TerrainWorkload};
use crate::workload::Workload;

pub struct Workloads {
    /// Always loaded: the hardware challenge runs it.
    pub embed: Mutex<EmbedWorkload>,
    pub terrain: Option<Mutex<TerrainWorkload>>,
    pub sd: Option<Mutex<SdWorkload>>,
    /// `cpu` or `cuda:<id>`.
    pub device: String,
    /// The GPU's model name when the driver reports it.
    pub gpu_name: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Workloads {
    /// Loads the embedding model, plus the models of the markets in `markets` (by `catalog`
    /// workload name). Missing or mismatching models fail here, not at the first assignment.
    pub fn load<'a>(
        rt: &Runtime,
        models: &ModelsDir,
        markets: impl IntoIterator<Item = &'a str>,
        sd_model_dir: Option<&Path>,
    ) -> Result<Self> {
        let mut terrain = None;
        let mut sd = None;
        for market in markets {
            let work = gridbook_wire::catalog::work(market)
                .ok_or_else(|| ExecutorError::Config(format!("unknown market {market:?}")))?;
            match work.workload {
                "embed" => {}
                "terrain" if terrain.is_none() => {
                    terrain = Some(Mutex::new(TerrainWorkload {
                        renderer: TerrainRenderer::load(rt, models, TerrainConfig::default())?,
                    }))
                }
                "sd" if sd.is_none() => {
                    let dir = sd_model_dir.ok_or_else(|| {
                        ExecutorError::Config(format!("market {market} needs sd_model_dir"))
                    })?;
                    sd = Some(Mutex::new(SdWorkload {
                        pipeline: SdPipeline::load(rt, dir)?,
                    }))
                }
                _ => {}
            }
        }
        Ok(Self {
            embed: Mutex::new(EmbedWorkload {
                embedder: Embedder::load(rt, models, EmbedConfig::default())?,
            }),
            terrain,
            sd,
            device: rt.provider().label(),
            gpu_name: rt.gpu_name().map(str::to_owned),
        })
    }

    /// Whether this node can run `market`.
    pub fn serves(&self, market: &str) -> bool {
        match gridbook_wire::catalog::work(market).map(|w| w.workload) {
            Some("embed") => true,
            Some("terrain") => self.terrain.is_some(),
            Some("sd") => self.sd.is_some(),
            _ => false,
        }
    }

    /// The manifest of `market`'s workload (for results that failed before running).
    pub fn manifest(&self, market: &str) -> Option<crate::commitment::Manifest> {
        match gridbook_wire::catalog::work(market).map(|w| w.workload) {
            Some("embed") => Some(lock(&self.embed).manifest()),
            Some("terrain") => self.terrain.as_ref().map(|w| lock(w).manifest()),
            Some("sd") => self.sd.as_ref().map(|w| lock(w).manifest()),
            _ => None,
        }
    }

    /// Runs the hardware challenge on the embedding model.
    pub fn challenge(&self, nonce: &str, items: usize) -> Result<(Vec<Vec<f32>>, Duration)> {
        let w = lock(&self.embed);
        crate::challenge::run(&w.embedder, nonce, items)
    }

    /// Runs JSONL items (already the assignment's lines) for `market`. `line_offset` numbers
    /// error lines within the job's file. Cancelling `control` returns `Cancelled`.
    pub fn run(
        &self,
        market: &str,
        jsonl: &[u8],
        line_offset: usize,
        progress: &dyn Fn(u64),
        control: &Arc<RunControl>,
    ) -> Result<JsonlRun> {
        fn go<W: Workload>(
            w: &Mutex<W>,
            jsonl: &[u8],
            line_offset: usize,
            progress: &dyn Fn(u64),
            control: &RunControl,
        ) -> Result<JsonlRun> {
            let mut w = lock(w);
            control.check()?;
            run_reader(
                &mut *w,
                std::io::Cursor::new(jsonl),
                line_offset,
                Artifacts::Inline,
                progress,
                &|_| {},
                Some(control),
            )
        }
        let not_served = || ExecutorError::Config(format!("this node does not serve {market}"));
        match gridbook_wire::catalog::work(market).map(|w| w.workload) {
            Some("embed") => go(&self.embed, jsonl, line_offset, progress, control),
            Some("terrain") => go(
                self.terrain.as_ref().ok_or_else(not_served)?,
                jsonl,
                line_offset,
                progress,
                control,
            ),
            Some("sd") => go(
                self.sd.as_ref().ok_or_else(not_served)?,
                jsonl,
                line_offset,
                progress,
                control,
            ),
            _ => Err(not_served()),
        }
    }
}

/// Lines `[start, start + count)` of a JSONL file, counting only non-blank lines (as the API's
/// and the verifier's parsers do), joined with `\n`. `Err` when the file has fewer.
pub fn select_items(text: &[u8], start: u64, count: u64) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut taken = 0u64;
    for line in text
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .skip(start as usize)
        .take(count as usize)
    {
        out.extend_from_slice(line);
        out.push(b'\n');
        taken += 1;
    }
    if taken != count {
        return Err(format!(
            "the input file has {taken} items from item {start}, the assignment needs {count}"
        ));
    }
    Ok(out)
}

/// Logs an assignment's progress at most every `every` (and at the end), from any thread.
pub struct ProgressLog {
    pub assignment: uuid::Uuid,
    pub total: u64,
    done: std::sync::atomic::AtomicU64,
    last: Mutex<Instant>,
    every: Duration,
}

impl ProgressLog {
    pub fn new(assignment: uuid::Uuid, total: u64, every: Duration) -> Self {
        Self {
            assignment,
            total,
            done: 0.into(),
            last: Mutex::new(Instant::now()),
            every,
        }
    }

    pub fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        let mut last = lock(&self.last);
        if done >= self.total || last.elapsed() >= self.every {
            *last = Instant::now();
            tracing::info!(assignment_id = %self.assignment, done, total = self.total,
                percent = (done * 100).checked_div(self.total).unwrap_or(100), "assignment progress");
        }
    }

    pub fn done(&self) -> u64 {
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_items_skips_blank_lines_and_checks_the_count() {
        let text = b"a\n\n b \nc\n   \nd";
        assert_eq!(select_items(text, 0, 2).unwrap(), b"a\n b \n");
        assert_eq!(select_items(text, 2, 2).unwrap(), b"c\nd\n");
        assert_eq!(select_items(text, 4, 0).unwrap(), b"");
        assert!(
            select_items(text, 3, 2)
                .unwrap_err()
                .contains("has 1 items")
        );
    }
}
