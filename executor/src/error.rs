//! The executor library's error type. `anyhow` is used only in `main.rs`.

use std::path::PathBuf;

/// Everything that can go wrong in the executor library.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error(
        "ONNX Runtime library not configured: set ORT_DYLIB_PATH to libonnxruntime.so \
         (the project's set-up command installs it at .gridbook/lib/libonnxruntime.so)"
    )]
    OrtLibraryNotConfigured,

    #[error("ONNX Runtime library not found at {path} (ORT_DYLIB_PATH)")]
    OrtLibraryMissing { path: PathBuf },

    #[error("failed to load ONNX Runtime from {path}: {message}")]
    OrtLoad { path: PathBuf, message: String },

    #[error(
        "execution provider {provider} could not be initialised: {message}. \
         The node asked for {provider} and will not fall back to the CPU; \
         check the GPU, the CUDA/cuDNN libraries and that ORT_DYLIB_PATH points at the onnxruntime-gpu build"
    )]
    ExecutionProvider { provider: String, message: String },

    #[error("invalid execution provider {0:?}: expected `cpu`, `cuda` or `cuda:<device id>`")]
    InvalidProvider(String),

    #[error("model file {path} not found ({hint})")]
    ModelMissing { path: PathBuf, hint: String },

    #[error(
        "model hash mismatch for {path}: expected sha256 {expected}, found {actual}; refusing to load"
    )]
    ModelHashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    #[error("invalid sha256 {0:?}: expected 64 lowercase hex digits")]
    InvalidSha256(String),

    #[error("model {model}: {message}")]
    ModelContract { model: String, message: String },

    #[error("ONNX Runtime error: {0}")]
    Ort(#[from] ort::Error),

    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("PNG encoding failed: {0}")]
    Png(String),

    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("cannot resume from {path}: {message}; run with --no-resume to start over")]
    Resume { path: PathBuf, message: String },

    #[error("the run was cancelled")]
    Cancelled,

    #[error("benchmark baseline failed: {0}")]
    Baseline(String),
}

impl ExecutorError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = ExecutorError> = std::result::Result<T, E>;
