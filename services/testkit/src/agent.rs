//! The executor agent (the provider node) in this process, on the test's runtime.

use std::sync::Arc;
use std::time::Duration;

use executor::agent::config::AgentSettings;
use executor::agent::workloads::Workloads;
use executor::agent::{AgentError, SharedState, node};
use tokio::sync::watch;
use uuid::Uuid;

/// The workloads of `markets` (plus the challenge's embeddings) on a default runtime
/// (`ORT_DYLIB_PATH`) with the models in `GRIDBOOK_MODELS_DIR`.
pub fn load_workloads(markets: &[&str]) -> Arc<Workloads> {
    let rt = executor::runtime::Runtime::new(executor::runtime::RuntimeConfig::default())
        .expect("ONNX Runtime (ORT_DYLIB_PATH)");
    let models = executor::models::ModelsDir::from_env().expect("GRIDBOOK_MODELS_DIR");
    let sd = crate::tiny_sd_fixture();
    Arc::new(Workloads::load(&rt, &models, markets.iter().copied(), Some(&sd)).expect("models"))
}

/// A running agent task; asked to stop (and detached) when dropped.
pub struct Agent {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<Result<(), AgentError>>>,
}

impl Agent {
    /// The whole agent (`executor::agent::run`): registers its node over HTTP with `api_key`,
    /// answers the challenge, keeps its asks and runs its assignments.
    pub fn start(settings: AgentSettings, api_key: Option<String>, workloads: Arc<Workloads>) -> Agent {
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(executor::agent::run(settings, api_key, workloads, shutdown));
        Agent { stop, task: Some(task) }
    }

    /// Only the assignment consumer (`node::run_node`) of a registered node whose id is known:
    /// it gets its NATS credential from `settings.api_url` with its owner's `api_key`.
    pub fn start_node(settings: AgentSettings, node_id: Uuid, api_key: &str, workloads: Arc<Workloads>) -> Agent {
        let (stop, shutdown) = watch::channel(false);
        let state = SharedState::load(&settings.state_file).expect("the agent's state file");
        let api = executor::agent::api::ApiClient::new(settings.api_url.as_deref().expect("api_url"), api_key)
            .expect("an API client");
        let credentials = node::Credentials::new(api, node_id);
        let task = tokio::spawn(async move {
            node::run_node(&settings, node_id, credentials, workloads, state, shutdown).await
        });
        Agent { stop, task: Some(task) }
    }

    /// Whether the task has ended (by itself: nothing asked it to stop yet).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Waits for the task to end and returns its result (a panic in it is resumed here).
    pub async fn join(mut self) -> Result<(), AgentError> {
        let task = self.task.take().expect("the agent task");
        match task.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("the agent task: {e}"),
        }
    }

    /// Asks the agent to stop (graceful shutdown) and waits up to `within`; `None` when it did
    /// not end in time.
    pub async fn stop(self, within: Duration) -> Option<Result<(), AgentError>> {
        let _ = self.stop.send(true);
        tokio::time::timeout(within, self.join()).await.ok()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
