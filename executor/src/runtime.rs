//! ONNX Runtime: loading the library, choosing the execution provider, caching sessions.
//!
//! * The library is loaded at run time (`ort` feature `load-dynamic`) from `ORT_DYLIB_PATH`
//!   (or an explicit path); nothing is downloaded at build time.
//! * ONNX Runtime allows one environment per process, so it lives in a process-wide cell;
//!   a [`Runtime`] carries the execution-provider choice and the session cache.
//! * CUDA is registered with `error_on_failure`: a node that asks for a GPU and cannot use it
//!   fails at start-up ([`Runtime::new`] builds a session for a tiny probe model) instead of
//!   silently running on the CPU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use ort::environment::Environment;
use ort::ep;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};

use crate::error::{ExecutorError, Result};
use crate::models::{self, ModelSpec, Sha256Hex};

/// Environment variable naming the ONNX Runtime shared library.
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// A one-node ONNX model (`Identity` on `float[1]`) used to check the execution provider at start-up.
const PROBE_MODEL: &[u8] = include_bytes!("../fixtures/probe.onnx");

/// Which execution provider runs the models.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Provider {
    #[default]
    Cpu,
    Cuda {
        device_id: i32,
        /// Arena limit in bytes (`gpu_mem_limit`); `None` = ONNX Runtime's default (no limit).
        memory_limit: Option<usize>,
    },
}

impl Provider {
    /// The ONNX Runtime name of the provider (`CPUExecutionProvider`, `CUDAExecutionProvider`).
    pub fn ort_name(&self) -> &'static str {
        match self {
            Provider::Cpu => "CPUExecutionProvider",
            Provider::Cuda { .. } => "CUDAExecutionProvider",
        }
    }

    /// Short label for manifests: `cpu`, `cuda:0`.
    pub fn label(&self) -> String {
        match self {
            Provider::Cpu => "cpu".into(),
            Provider::Cuda { device_id, .. } => format!("cuda:{device_id}"),
        }
    }

    /// The dispatch registered on session builders. CUDA always uses `error_on_failure`.
    pub fn dispatch(&self) -> ep::ExecutionProviderDispatch {
        match self {
            // ort's CPU EP defaults to no arena; ONNX Runtime's own default (and Python's) uses one,
            // and without it every intermediate tensor is a malloc/free. Keep it equal to the Python baseline.
            Provider::Cpu => ep::CPU::default()
                .with_arena_allocator(true)
                .build()
                .error_on_failure(),
            Provider::Cuda {
                device_id,
                memory_limit,
            } => {
                let mut cuda = ep::CUDA::default().with_device_id(*device_id);
                if let Some(limit) = memory_limit {
                    cuda = cuda.with_memory_limit(*limit);
                }
                cuda.build().error_on_failure()
            }
        }
    }
}

impl FromStr for Provider {
    type Err = ExecutorError;
    /// `cpu`, `cuda` (device 0) or `cuda:<id>`. The memory limit is set separately.
    fn from_str(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(Provider::Cpu),
            "cuda" | "gpu" => Ok(Provider::Cuda {
                device_id: 0,
                memory_limit: None,
            }),
            _ => match t.strip_prefix("cuda:") {
                Some(id) => id
                    .parse::<i32>()
                    .ok()
                    .filter(|id| *id >= 0)
                    .map(|device_id| Provider::Cuda {
                        device_id,
                        memory_limit: None,
                    })
                    .ok_or_else(|| ExecutorError::InvalidProvider(s.to_owned())),
                None => Err(ExecutorError::InvalidProvider(s.to_owned())),
            },
        }
    }
}

/// Runtime configuration (from the CLI or, later, the agent's settings).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The ONNX Runtime library; `None` = `ORT_DYLIB_PATH`.
    pub dylib_path: Option<PathBuf>,
    pub provider: Provider,
    /// Intra-op threads per session (0 = ONNX Runtime's default: one per physical core).
    pub intra_threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            dylib_path: None,
            provider: Provider::Cpu,
            intra_threads: 0,
        }
    }
}

impl RuntimeConfig {
    pub fn resolve_dylib(&self) -> Result<PathBuf> {
        let path = match &self.dylib_path {
            Some(p) => p.clone(),
            None => match std::env::var_os(ORT_DYLIB_ENV) {
                Some(v) if !v.is_empty() => PathBuf::from(v),
                _ => return Err(ExecutorError::OrtLibraryNotConfigured),
            },
        };
        if !path.is_file() {
            return Err(ExecutorError::OrtLibraryMissing { path });
        }
        Ok(path)
    }
}

struct GlobalEnv {
    env: Environment,
    dylib: PathBuf,
    version: String,
}

static ENV: Mutex<Option<Arc<GlobalEnv>>> = Mutex::new(None);

/// Loads ONNX Runtime once per process. Later calls reuse it (and warn if asked for another path).
fn global_env(dylib: &Path) -> Result<Arc<GlobalEnv>> {
    let mut guard = ENV.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(env) = guard.as_ref() {
        if env.dylib != dylib {
            tracing::warn!(loaded = %env.dylib.display(), requested = %dylib.display(),
                "ONNX Runtime is already loaded in this process; keeping the first library");
        }
        return Ok(env.clone());
    }
    let builder = ort::init_from(dylib).map_err(|e| ExecutorError::OrtLoad {
        path: dylib.to_owned(),
        message: e.to_string(),
    })?;
    let env = builder
        .with_name("gridbook-executor")
        .with_telemetry(false)
        .build()
        .map_err(|e| ExecutorError::OrtLoad {
            path: dylib.to_owned(),
            message: e.to_string(),
        })?;
    let version = ort_version(dylib, ort::info());
    tracing::info!(dylib = %dylib.display(), ort.version = %version, "ONNX Runtime loaded");
    let g = Arc::new(GlobalEnv {
        env,
        dylib: dylib.to_owned(),
        version,
    });
    *guard = Some(g.clone());
    Ok(g)
}

/// The ONNX Runtime version: from the library's real file name (`libonnxruntime.so.1.31.1`, as
/// the wheels ship it), else from the build info (`git-branch=rel-1.31.1`), else the build info.
pub fn ort_version(dylib: &Path, info: &str) -> String {
    let real = std::fs::canonicalize(dylib).unwrap_or_else(|_| dylib.to_owned());
    let from_name = real.file_name().and_then(|n| n.to_str()).and_then(|n| {
        let v = n.split_once(".so.").map(|(_, v)| v)?;
        (v.split('.').count() == 3 && v.split('.').all(|p| p.parse::<u32>().is_ok()))
            .then(|| v.to_owned())
    });
    from_name
        .or_else(|| {
            info.split([',', ' '])
                .find_map(|p| p.trim().strip_prefix("git-branch=rel-"))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("unknown ({})", info.trim()))
}

/// A loaded, verified model session. `run` takes `&mut self`, so callers lock it for a batch.
pub type SharedSession = Arc<Mutex<Session>>;

/// ONNX Runtime with one execution-provider choice and a cache of sessions keyed by model hash.
pub struct Runtime {
    env: Arc<GlobalEnv>,
    config: RuntimeConfig,
    /// Keyed by (expected hash, file path): a session is only reused for the file it was verified from.
    sessions: Mutex<HashMap<(Sha256Hex, PathBuf), SharedSession>>,
    gpu_name: Option<String>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .field("ort_version", &self.env.version)
            .finish()
    }
}

impl Runtime {
    /// Loads ONNX Runtime and checks that the execution provider works by building a session
    /// for a probe model: asking for CUDA where there is none is an error here, at start-up.
    pub fn new(config: RuntimeConfig) -> Result<Self> {
        let dylib = config.resolve_dylib()?;
        let env = global_env(&dylib)?;
        let gpu_name = match config.provider {
            Provider::Cpu => None,
            Provider::Cuda { device_id, .. } => gpu_name(device_id),
        };
        let rt = Self {
            env,
            config,
            sessions: Mutex::new(HashMap::new()),
            gpu_name,
        };
        let mut probe = rt
            .builder()?
            .commit_from_memory(PROBE_MODEL)
            .map_err(|e| rt.ep_error(e))?;
        let x = ort::value::Tensor::from_array(([1usize], vec![1.0f32]))?;
        probe.run(ort::inputs![x]).map_err(|e| rt.ep_error(e))?;
        tracing::info!(provider = %rt.config.provider.label(), threads = rt.config.intra_threads, "execution provider ready");
        Ok(rt)
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }
    pub fn provider(&self) -> &Provider {
        &self.config.provider
    }
    pub fn ort_version(&self) -> &str {
        &self.env.version
    }
    pub fn gpu_name(&self) -> Option<&str> {
        self.gpu_name.as_deref()
    }

    fn ep_error(&self, e: impl std::fmt::Display) -> ExecutorError {
        let message = e.to_string().trim_end_matches('.').to_owned();
        ExecutorError::ExecutionProvider {
            provider: self.config.provider.ort_name().to_owned(),
            message,
        }
    }

    fn builder(&self) -> Result<SessionBuilder> {
        let mut b = Session::builder(&self.env.env)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(ort::Error::<()>::from)?
            .with_inter_threads(1)
            .map_err(ort::Error::<()>::from)?;
        if self.config.intra_threads > 0 {
            b = b
                .with_intra_threads(self.config.intra_threads)
                .map_err(ort::Error::<()>::from)?;
        }
        b.with_execution_providers([self.config.provider.dispatch()])
            .map_err(|e| self.ep_error(ort::Error::<()>::from(e)))
    }

    /// Verifies the model's sha256, then returns the cached session or builds one.
    pub fn session(&self, spec: &ModelSpec) -> Result<SharedSession> {
        let key = (spec.sha256.clone(), spec.path.clone());
        if let Some(s) = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(s.clone());
        }
        let hash = models::verify(spec)?;
        let started = std::time::Instant::now();
        let session = self.builder()?.commit_from_file(&spec.path).map_err(|e| {
            match self.config.provider {
                Provider::Cpu => ExecutorError::Ort(e),
                Provider::Cuda { .. } => self.ep_error(e),
            }
        })?;
        tracing::info!(model = %spec.name, sha256 = %hash, ms = started.elapsed().as_millis() as u64, "session ready");
        let shared = Arc::new(Mutex::new(session));
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, shared.clone());
        Ok(shared)
    }

    /// A session of model bytes held only in memory (a studio's private model, decrypted in
    /// memory, never written to disk here). The bytes' sha256 must be `expected`. Not cached by
    /// the runtime: the caller bounds how many private sessions it keeps.
    pub fn session_from_memory(
        &self,
        name: &str,
        bytes: &[u8],
        expected: &Sha256Hex,
    ) -> Result<SharedSession> {
        let actual = Sha256Hex::from_digest(&crate::commitment::sha256(bytes));
        if &actual != expected {
            return Err(ExecutorError::ModelHashMismatch {
                path: PathBuf::from(format!("<{name} in memory>")),
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        let started = std::time::Instant::now();
        let session = self
            .builder()?
            .commit_from_memory(bytes)
            .map_err(|e| match self.config.provider {
                Provider::Cpu => ExecutorError::Ort(e),
                Provider::Cuda { .. } => self.ep_error(e),
            })?;
        tracing::info!(model = %name, sha256 = %actual, ms = started.elapsed().as_millis() as u64, "in-memory session ready");
        Ok(Arc::new(Mutex::new(session)))
    }

    /// Number of cached sessions (for tests and metrics).
    pub fn cached_sessions(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// Best-effort GPU model name from the NVIDIA driver's procfs (no NVML dependency).
fn gpu_name(device_id: i32) -> Option<String> {
    let mut dirs: Vec<_> = std::fs::read_dir("/proc/driver/nvidia/gpus")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    let info = std::fs::read_to_string(
        dirs.get(usize::try_from(device_id).ok()?)?
            .join("information"),
    )
    .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Model:").map(|m| m.trim().to_owned()))
}

/// Locks a shared session, recovering from a poisoned mutex (a panicked batch leaves the session usable).
pub fn lock(session: &SharedSession) -> std::sync::MutexGuard<'_, Session> {
    session.lock().unwrap_or_else(|p| p.into_inner())
}

/// Cancellation of a running workload: an ONNX Runtime [`RunOptions`](ort::session::RunOptions)
/// whose terminate flag aborts the model call in progress (and every later call made with it),
/// plus a flag checked between model calls. Shared between the thread that runs and the one
/// that cancels.
pub struct RunControl {
    options: ort::session::RunOptions,
    cancelled: std::sync::atomic::AtomicBool,
}

impl RunControl {
    pub fn new() -> Result<Arc<Self>> {
        Ok(Arc::new(Self {
            options: ort::session::RunOptions::new()?,
            cancelled: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    /// Asks the run to stop: the model call in progress returns an error as soon as ONNX
    /// Runtime checks the flag (between kernels), and no further call starts.
    pub fn cancel(&self) {
        self.cancelled
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = self.options.terminate() {
            tracing::warn!(error = %e, "could not set the ONNX Runtime terminate flag");
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `Err(Cancelled)` once [`cancel`](Self::cancel) was called.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(ExecutorError::Cancelled)
        } else {
            Ok(())
        }
    }

    pub fn options(&self) -> &ort::session::RunOptions {
        &self.options
    }
}

/// Runs a session, with the control's run options when there is one; an ONNX Runtime error
/// after a cancel is reported as [`ExecutorError::Cancelled`].
pub fn run_session<'s, 'i, 'v: 'i, const N: usize>(
    session: &'s mut Session,
    inputs: impl Into<ort::session::SessionInputs<'i, 'v, N>>,
    control: Option<&'s RunControl>,
) -> Result<ort::session::SessionOutputs<'s>> {
    match control {
        None => Ok(session.run(inputs)?),
        Some(c) => {
            c.check()?;
            session.run_with_options(inputs, c.options()).map_err(|e| {
                if c.is_cancelled() {
                    ExecutorError::Cancelled
                } else {
                    ExecutorError::Ort(e)
                }
            })
        }
    }
}
