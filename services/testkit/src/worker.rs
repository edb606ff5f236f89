//! The settlement worker: the `settlement-worker` binary (a process a test can SIGKILL), or,
//! with feature `api`, `gridbook_settlement::run` in this process.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Proc, binary};

/// The `settlement-worker` binary's settings (`GRIDBOOK_*` variables); `None` leaves the
/// worker's default.
#[derive(Clone, Debug, Default)]
pub struct WorkerConfig {
    pub database_url: String,
    pub nats_url: String,
    /// The worker's nkey seed (`NatsAccess::nkey_file(Service::Settlement)`).
    pub nkey_file: Option<PathBuf>,
    /// The durable consumer on `GRIDBOOK_EVENTS`.
    pub consumer: Option<String>,
    /// The event subjects it takes (one market in tests).
    pub filter_subject: Option<String>,
    pub outbox_interval_ms: Option<u64>,
    pub ack_wait_secs: Option<u64>,
    /// `GRIDBOOK_MAX_REOFFERS`: times failed units may go back to the book (0: refund at once).
    pub max_reoffers: Option<u32>,
    /// The binary; default: [`binary`]`("settlement-worker")`.
    pub bin: Option<PathBuf>,
    /// Further `GRIDBOOK_*` variables (`("GRIDBOOK_CLOSE_EPOCHS", "false")`, …).
    pub env: Vec<(String, String)>,
}

/// Starts `settlement-worker run` with `RUST_LOG=warn`, its output appended to `log` (so the
/// runs of a test that restarts it share one log); SIGKILL on drop or [`Proc::kill`].
pub fn spawn_worker(config: &WorkerConfig, log: &Path) -> Proc {
    let bin = config.bin.clone().unwrap_or_else(|| binary("settlement-worker"));
    let mut command = Command::new(bin);
    command
        .arg("run")
        .env("GRIDBOOK_DATABASE_URL", &config.database_url)
        .env("GRIDBOOK_NATS_URL", &config.nats_url)
        .env("RUST_LOG", "warn");
    let optional = [
        ("GRIDBOOK_CONSUMER", config.consumer.clone()),
        ("GRIDBOOK_FILTER_SUBJECT", config.filter_subject.clone()),
        ("GRIDBOOK_OUTBOX_INTERVAL_MS", config.outbox_interval_ms.map(|n| n.to_string())),
        ("GRIDBOOK_ACK_WAIT_SECS", config.ack_wait_secs.map(|n| n.to_string())),
        ("GRIDBOOK_MAX_REOFFERS", config.max_reoffers.map(|n| n.to_string())),
        ("GRIDBOOK_NATS_NKEY_FILE", config.nkey_file.as_ref().map(|p| p.display().to_string())),
        ("GRIDBOOK_MODELS_KEK_FILE", Some(crate::test_kek_file().display().to_string())),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            command.env(k, v);
        }
    }
    command.envs(config.env.iter().map(|(k, v)| (k, v)));
    Proc::spawn("settlement-worker", &mut command, log).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `gridbook_settlement::run` on this runtime, aborted on drop. It panics (failing the test
/// when awaited, logging otherwise) if the worker stops with an error.
#[cfg(feature = "api")]
pub struct InProcessWorker(tokio::task::JoinHandle<()>);

#[cfg(feature = "api")]
impl InProcessWorker {
    pub fn spawn(settings: gridbook_settlement::Settings) -> InProcessWorker {
        InProcessWorker(tokio::spawn(async move {
            if let Err(e) = gridbook_settlement::run(settings).await {
                panic!("settlement worker: {e}");
            }
        }))
    }

    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

#[cfg(feature = "api")]
impl Drop for InProcessWorker {
    fn drop(&mut self) {
        self.0.abort();
    }
}
