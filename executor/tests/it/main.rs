//! Executor integration tests (one binary). Tests that need ONNX Runtime or the real models read
//! `ORT_DYLIB_PATH` and `GRIDBOOK_MODELS_DIR` and panic with a clear message when they are unset.

mod agent;
mod agent_api;
mod challenge;
mod commitment;
mod common;
mod embed;
mod local;
mod private;
mod runtime;
mod sd;
mod stream;
mod terrain;
