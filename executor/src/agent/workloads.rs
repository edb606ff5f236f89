//! The workloads a node serves, loaded once at start-up ([`crate::registry::Loaded`]), and
//! running an assignment's lines through the local-mode code path ([`crate::local::run_stream`], in memory or to a spool file):
//! the output lines are the bytes local mode writes for the same lines (renders carry the PNG
//! inline as `image_png_b64` instead of a file path, so the output object is self-contained).
//!
//! Each workload sits behind a mutex: assignments of one market run one at a time (the model
//! session is shared anyway); assignments of different markets run in parallel.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{ExecutorError, Result};
use crate::local::{Artifacts, JsonlRun, LineError, StreamedRun, run_reader, run_to_writer};
use crate::models::ModelsDir;
use crate::registry::{Loaded, Options, WorkloadKind};
use crate::runtime::{RunControl, Runtime, RuntimeConfig};
use crate::workload::Workload;

/// Studios' private models a node keeps loaded at once (each holds its weights in memory);
/// the least recently used is dropped for a new one.
pub const PRIVATE_MODELS_KEPT: usize = 2;

/// A private model loaded for a market's kind.
struct Private {
    sha256: String,
    kind: WorkloadKind,
    workload: Arc<Mutex<Loaded>>,
}

pub struct Workloads {
    /// By kind: the challenge's ([`crate::challenge::WORKLOAD`]) always, plus the configured
    /// markets'.
    loaded: BTreeMap<WorkloadKind, Mutex<Loaded>>,
    /// Private models, most recently used last (at most [`PRIVATE_MODELS_KEPT`]).
    private: Mutex<Vec<Private>>,
    /// How the private models' runtime is made (the node's own: same provider and threads),
    /// started on the first private model.
    rt_config: RuntimeConfig,
    private_rt: Mutex<Option<Arc<Runtime>>>,
    options: Options,
    /// `cpu` or `cuda:<id>`.
    pub device: String,
    /// The GPU's model name when the driver reports it.
    pub gpu_name: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Workloads {
    /// Loads the challenge's workload (embeddings), plus those of the markets in `markets` (by
    /// `catalog` market symbol). Missing or mismatching models fail here, not at the first
    /// assignment.
    pub fn load<'a>(
        rt: &Runtime,
        models: &ModelsDir,
        markets: impl IntoIterator<Item = &'a str>,
        sd_model_dir: Option<&Path>,
    ) -> Result<Self> {
        let mut kinds = vec![crate::challenge::WORKLOAD];
        for market in markets {
            let work = match gridbook_wire::catalog::kind(market) {
                Some(gridbook_wire::catalog::MarketKind::Compute(w)) => w,
                Some(gridbook_wire::catalog::MarketKind::Token(_)) => {
                    return Err(ExecutorError::Config(format!("{market} is a token market: it has no workload to load")));
                }
                None => return Err(ExecutorError::Config(format!("unknown market {market:?}"))),
            };
            kinds.push(work.kind);
        }
        let opts = Options {
            models_dir: Some(models.root.clone()),
            sd_model_dir: sd_model_dir.map(Path::to_owned),
            ..Options::default()
        };
        let mut loaded = BTreeMap::new();
        for kind in kinds {
            if let std::collections::btree_map::Entry::Vacant(slot) = loaded.entry(kind) {
                slot.insert(Mutex::new(Loaded::load(kind, rt, &opts)?));
            }
        }
        Ok(Self {
            loaded,
            private: Mutex::new(Vec::new()),
            rt_config: rt.config().clone(),
            private_rt: Mutex::new(None),
            options: opts,
            device: rt.provider().label(),
            gpu_name: rt.gpu_name().map(str::to_owned),
        })
    }

    /// The loaded workload of `kind`, if this node serves it.
    pub fn get(&self, kind: WorkloadKind) -> Option<&Mutex<Loaded>> {
        self.loaded.get(&kind)
    }

    fn for_market(&self, market: &str) -> Option<&Mutex<Loaded>> {
        self.get(gridbook_wire::catalog::work(market)?.kind)
    }

    /// Whether this node can run `market`.
    pub fn serves(&self, market: &str) -> bool {
        self.for_market(market).is_some()
    }

    /// The manifest of `market`'s workload (for results that failed before running).
    pub fn manifest(&self, market: &str) -> Option<crate::commitment::Manifest> {
        self.for_market(market).map(|w| lock(w).manifest())
    }

    /// Runs the hardware challenge on the embedding model.
    pub fn challenge(&self, nonce: &str, items: usize) -> Result<(Vec<Vec<f32>>, Duration)> {
        let missing = || ExecutorError::Config("the challenge's workload is not loaded".into());
        let w = lock(self.get(crate::challenge::WORKLOAD).ok_or_else(missing)?);
        crate::challenge::run(w.embedder().ok_or_else(missing)?, nonce, items)
    }

    /// Items of [`Self::warm_up`]'s run.
    pub const WARM_UP_ITEMS: usize = 32;

    /// One small challenge run on a local nonce, before registering: the first run of a session
    /// pays one-off costs (allocations, on CUDA kernel set-up) that the market's clock on the
    /// real challenge should not see.
    pub fn warm_up(&self) -> Result<Duration> {
        Ok(self.challenge("warm-up", Self::WARM_UP_ITEMS)?.1)
    }

    /// The private model `sha256` loaded for `market`'s kind, if kept (now the most recent).
    fn private(&self, market: &str, sha256: &str) -> Option<Arc<Mutex<Loaded>>> {
        let kind = gridbook_wire::catalog::work(market)?.kind;
        let mut kept = lock(&self.private);
        let i = kept
            .iter()
            .position(|p| p.sha256 == sha256 && p.kind == kind)?;
        let p = kept.remove(i);
        let w = p.workload.clone();
        kept.push(p);
        Some(w)
    }

    /// Whether the private model `sha256` is loaded for `market` (then its key need not be
    /// fetched again).
    pub fn has_private(&self, market: &str, sha256: &str) -> bool {
        self.private(market, sha256).is_some()
    }

    /// Loads a studio's private model (plaintext `bytes`, decrypted in memory) for `market`'s
    /// kind; the bytes must hash to `sha256`. Blocking (builds an ONNX Runtime session).
    pub fn load_private(&self, market: &str, sha256: &str, bytes: Vec<u8>) -> Result<()> {
        let kind = gridbook_wire::catalog::work(market)
            .ok_or_else(|| ExecutorError::Config(format!("unknown market {market:?}")))?
            .kind;
        let rt = {
            let mut slot = lock(&self.private_rt);
            match &*slot {
                Some(rt) => rt.clone(),
                None => {
                    let rt = Arc::new(Runtime::new(self.rt_config.clone())?);
                    *slot = Some(rt.clone());
                    rt
                }
            }
        };
        let w = Loaded::load_private(kind, &rt, &self.options, "private model", &bytes, sha256)?;
        drop(bytes);
        let mut kept = lock(&self.private);
        kept.retain(|p| !(p.sha256 == sha256 && p.kind == kind));
        if kept.len() >= PRIVATE_MODELS_KEPT {
            kept.remove(0);
        }
        kept.push(Private {
            sha256: sha256.to_owned(),
            kind,
            workload: Arc::new(Mutex::new(w)),
        });
        tracing::info!(market, sha256, "private model loaded");
        Ok(())
    }

    /// Runs `f` on `market`'s workload: the private model `model` (its sha256; loaded with
    /// [`Self::load_private`]) or the market's.
    fn with_workload<R>(&self, market: &str, model: Option<&str>, f: impl FnOnce(&mut Loaded) -> Result<R>) -> Result<R> {
        let private;
        let w = match model {
            Some(sha) => {
                private = self.private(market, sha).ok_or_else(|| {
                    ExecutorError::Config(format!("private model {sha} is not loaded"))
                })?;
                &*private
            }
            None => self.for_market(market).ok_or_else(|| {
                ExecutorError::Config(format!("this node does not serve {market}"))
            })?,
        };
        let mut w = lock(w);
        f(&mut w)
    }

    /// Runs JSONL items (already the assignment's lines) for `market`, on the private model
    /// `model` or the market's, in memory. `line_offset` numbers error lines within the job's
    /// file. Cancelling `control` returns `Cancelled`.
    pub fn run(
        &self,
        market: &str,
        model: Option<&str>,
        jsonl: &[u8],
        line_offset: usize,
        progress: &dyn Fn(u64),
        control: &Arc<RunControl>,
    ) -> Result<JsonlRun> {
        self.with_workload(market, model, |w| {
            control.check()?;
            run_reader(w, std::io::Cursor::new(jsonl), line_offset, Artifacts::Inline, progress, Some(control))
        })
    }

    /// [`Self::run`] streamed: the output lines are written to the file `output` chunk by
    /// chunk (the same bytes [`Self::run`] returns), errors go to `on_error` as they come, so
    /// memory holds one chunk of the run, not its whole output.
    #[allow(clippy::too_many_arguments)]
    pub fn run_to_file(
        &self,
        market: &str,
        model: Option<&str>,
        jsonl: &[u8],
        line_offset: usize,
        output: &Path,
        on_error: &dyn Fn(&LineError),
        progress: &dyn Fn(u64),
        control: &Arc<RunControl>,
    ) -> Result<(StreamedRun, crate::commitment::Manifest)> {
        self.with_workload(market, model, |w| {
            control.check()?;
            let f = std::fs::File::create(output).map_err(|e| ExecutorError::io(output, e))?;
            let run = run_to_writer(
                w,
                std::io::Cursor::new(jsonl),
                line_offset,
                Artifacts::Inline,
                std::io::BufWriter::with_capacity(1 << 16, f),
                on_error,
                progress,
                Some(control),
            )?;
            Ok((run, w.manifest()))
        })
    }
}

/// Items `[start, start + count)` of a JSONL file (`gridbook_wire::catalog::select_items`: the
/// non-blank lines, as the API and the verifier count them), joined with `\n`. `Err` when the
/// file has fewer.
pub fn select_items(text: &[u8], start: u64, count: u64) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for line in gridbook_wire::catalog::select_items(text, start, count)? {
        out.extend_from_slice(line);
        out.push(b'\n');
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
