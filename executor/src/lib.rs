//! Gridbook executor: runs market workloads with ONNX Runtime.
//!
//! Code map:
//! * [`runtime`] — loads ONNX Runtime (`ORT_DYLIB_PATH`), picks the execution provider (CPU, or
//!   CUDA with `error_on_failure`), caches one session per model hash.
//! * [`models`] — models addressed by sha256; verification before loading.
//! * [`workload`] — the `Workload` trait and `run_items` (inputs → outputs + commitment).
//! * [`registry`] — the one place that knows every workload kind: parse and check a line, load
//!   the models, run (as a `Workload`), compare two outputs of an item; the market's own CPU
//!   executor ([`registry::Reference`]). The CLI, the agent, the API and the verifier go through it.
//! * [`embed`], [`terrain`], [`sd`] — the workloads.
//! * [`commitment`] — per-item hashes, Merkle root, manifest.
//! * [`local`] — local mode: JSONL in, JSONL (+ PNG files) out, error file, commitment file.
//! * [`agent`] — the provider agent: registration + challenge, asks, NATS assignments, results.
//! * [`challenge`] — the nonce-bound hardware challenge (inputs, run, verify).
//! * [`bench`] — throughput benchmark against the Python `onnxruntime` baseline.
//!
//! Invariant: only [`agent`] talks to the network; everything else is local computation.

pub mod agent;
pub mod bench;
pub mod challenge;
pub mod commitment;
pub mod embed;
pub mod error;
pub mod local;
pub mod models;
pub mod png;
pub mod registry;
pub mod rng;
pub mod runtime;
pub mod sd;
pub mod terrain;
pub mod workload;

pub use error::{ExecutorError, Result};
