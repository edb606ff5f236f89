//! The whole marketplace for end-to-end tests: a private nats-server, the real `matching-engine`
//! binary serving the configured markets, the settlement worker and the API pointed at them,
//! and on request a provider's executor agent.

use std::path::{Path, PathBuf};

use executor::agent::config::AgentSettings;
use executor::agent::pricing::Policy;

use crate::{Agent, Engine, EngineConfig, InProcessWorker, Nats, NatsOptions, TempDir, TestApp, TestUser, load_workloads};

/// What [`Stack::start_with`] starts.
#[derive(Clone, Debug)]
pub struct StackOptions {
    /// Default: dev.toml's markets with a 3-second lease (a test's engine is the only one on
    /// its server). Its `dir` is the stack's.
    pub engine: EngineConfig,
    /// The settlement worker in this process (outbox every 50 ms). Default: on.
    pub settlement: bool,
    /// The SD pipeline the worker verifies `RENDER-SD15-512` with. Default: the tiny fixture
    /// ([`crate::tiny_sd_fixture`]), the same one [`Stack::start_agent`]'s agents run.
    pub sd_model_dir: Option<PathBuf>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            engine: EngineConfig { lease_secs: Some(3), ..EngineConfig::dev() },
            settlement: true,
            sd_model_dir: Some(crate::tiny_sd_fixture()),
        }
    }
}

/// nats + engine + settlement worker + API; stopped on drop (worker, API, engine, nats-server)
/// and its folder removed unless the test failed.
pub struct Stack {
    worker: Option<InProcessWorker>,
    pub app: TestApp,
    pub engine: Engine,
    pub nats: Nats,
    tag: String,
    dir: TempDir,
}

impl Stack {
    pub async fn start(tag: &str) -> Stack {
        Self::start_with(tag, StackOptions::default()).await
    }

    /// Starts nats-server, then the engine (and waits until it serves every market), then the
    /// API and the worker.
    pub async fn start_with(tag: &str, options: StackOptions) -> Stack {
        let dir = TempDir::new(tag);
        let nats = Nats::start_with(
            tag,
            NatsOptions { dir: Some(dir.path().join("nats")), ..NatsOptions::default() },
        )
        .await;
        let mut engine = Engine::start(
            &nats.url,
            EngineConfig { dir: Some(dir.path().join("engine")), ..options.engine },
        );
        engine.wait_serving(&nats.client).await;
        let url = nats.url.clone();
        let app = TestApp::spawn_with(move |s| s.nats_url = url).await;
        let worker = options.settlement.then(|| {
            InProcessWorker::spawn(gridbook_settlement::Settings {
                database_url: app.db.url().to_owned(),
                nats_url: nats.url.clone(),
                outbox_interval_ms: 50,
                sd_model_dir: options.sd_model_dir.clone(),
                ..Default::default()
            })
        });
        Stack { worker, app, engine, nats, tag: tag.to_owned(), dir }
    }

    /// The stack's folder (nats-server's and the engine's files, agents' state files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the processes log, for an assertion's message.
    pub fn logs(&self) -> String {
        format!("nats-server: {}, matching-engine: {}", self.nats.log().display(), self.engine.log().display())
    }

    /// Whether the in-process settlement worker stopped (it should run as long as the stack).
    pub fn worker_stopped(&self) -> bool {
        self.worker.as_ref().is_some_and(InProcessWorker::is_finished)
    }

    /// An agent on this stack serving `market` with `policy`: this API and NATS, a state file
    /// in the stack's folder, a CPU node named `<tag>-node`, 1-second heartbeats and pricing.
    pub fn agent_settings(&self, market: &str, policy: Policy) -> AgentSettings {
        let dir = self.dir().join(format!("agent-{market}"));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let mut settings = AgentSettings {
            api_url: Some(self.app.address.clone()),
            nats_url: self.nats.url.clone(),
            state_file: dir.join("state.json"),
            name: format!("{}-node", self.tag),
            gpu_model: "cpu".into(),
            region: "test".into(),
            heartbeat_secs: 1,
            pricing_poll_secs: 1,
            ..AgentSettings::default()
        };
        settings.markets = [(market.to_owned(), policy)].into_iter().collect();
        settings
    }

    /// The executor agent (real runtime and models) of `provider` serving `market` with `policy`;
    /// it registers its node with the provider's key. It does not wait for anything.
    pub fn start_agent(&self, provider: &TestUser, market: &str, policy: Policy) -> Agent {
        let settings = self.agent_settings(market, policy);
        Agent::start(settings, Some(provider.key.clone()), load_workloads(&[market]))
    }
}
