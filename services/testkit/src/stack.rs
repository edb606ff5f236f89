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
    /// Changes to the API's settings (after the stack's own). Default: none.
    pub api: Option<fn(&mut gridbook_api::Settings)>,
    /// The worker's withholding window (`withhold_assignments`). Default 0: pay reaches the
    /// provider's available balance at once, so tests about other things see it; the
    /// withholding tests set a window.
    pub withhold_assignments: u32,
    /// Changes to the worker's settings (after the stack's own). Default: none.
    pub worker: Option<fn(&mut gridbook_settlement::Settings)>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            engine: EngineConfig { lease_secs: Some(3), ..EngineConfig::dev() },
            settlement: true,
            sd_model_dir: Some(crate::tiny_sd_fixture()),
            api: None,
            withhold_assignments: 0,
            worker: None,
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
            &nats.access(),
            EngineConfig { dir: Some(dir.path().join("engine")), ..options.engine },
        );
        engine.wait_serving(&nats.client).await;
        let url = nats.url.clone();
        let keys = nats.keys.clone();
        // The API answers the server's auth callout and may kick revoked nodes, as under
        // `cargo xtask run`.
        let app = TestApp::spawn_with(move |s| {
            s.nats_url = url;
            s.nats_auth.nkey_file = Some(keys.seed_file(crate::Service::Api));
            s.nats_auth.issuer_file = Some(keys.issuer_file());
            s.nats_auth.sys_nkey_file = Some(keys.seed_file(crate::Service::Sys));
            if let Some(tweak) = options.api {
                tweak(s);
            }
        })
        .await;
        let worker = options.settlement.then(|| {
            let mut settings = gridbook_settlement::Settings {
                database_url: app.db.url().to_owned(),
                nats_url: nats.url.clone(),
                nats_nkey_file: Some(nats.keys.seed_file(crate::Service::Settlement)),
                outbox_interval_ms: 50,
                sd_model_dir: options.sd_model_dir.clone(),
                models_kek_file: Some(crate::test_kek_file()),
                withhold_assignments: options.withhold_assignments,
                // Epoch closes move fees between accounts on the hour: a test that wants them
                // turns them on (`StackOptions::worker`), so no other test's figures depend on
                // the clock.
                close_epochs: false,
                ..Default::default()
            };
            if let Some(tweak) = options.worker {
                tweak(&mut settings);
            }
            InProcessWorker::spawn(settings)
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

/// An assignment a test hands to a node itself, playing the settlement worker's part: a real job
/// (uploaded and submitted through the API by `studio`), a real `job_assignments` row for
/// `node` over items `[item_start, item_start + item_count)`, and the message the worker would
/// publish. The node's grant, input and output then go through the real API.
pub struct SeededAssignment {
    pub msg: gridbook_wire::node::AssignmentMsg,
    pub job_id: uuid::Uuid,
}

impl Stack {
    /// See [`SeededAssignment`]. `jsonl` is the job's whole input file (the studio is credited
    /// enough to submit it).
    pub async fn seed_assignment(
        &self,
        studio: &TestUser,
        node: uuid::Uuid,
        market: &str,
        jsonl: &str,
        item_start: u64,
        item_count: u64,
    ) -> SeededAssignment {
        use gridbook_db::diesel::{self, RunQueryDsl};
        let app = &self.app;
        app.credit(studio, 100_000_000).await;
        let file: serde_json::Value = app
            .http
            .post(app.url(&format!("/v1/files?purpose=batch&market={market}")))
            .header("Authorization", studio.bearer())
            .header("Content-Type", "application/jsonl")
            .body(jsonl.to_owned())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let deadline = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
        let job: serde_json::Value = app
            .http
            .post(app.url("/v1/jobs"))
            .header("Authorization", studio.bearer())
            .json(&serde_json::json!({"market": market, "input_file": file["id"], "limit_price": 100, "deadline": deadline}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let job_id: uuid::Uuid = job["id"].as_str().unwrap_or_else(|| panic!("job: {job}")).parse().unwrap();
        let sha = file["sha256"].as_str().unwrap_or_else(|| panic!("file: {file}")).to_owned();
        let id = uuid::Uuid::now_v7();
        let mut c = app.db.conn();
        diesel::sql_query(
            "INSERT INTO job_assignments (id, job_id, node_id, market, unit_start, units, item_start, item_count, price, status, deadline)
             VALUES ($1, $2, $3, $4, 0, 1, $5, $6, 100, 'assigned', now() + interval '1 hour')",
        )
        .bind::<diesel::sql_types::Uuid, _>(id)
        .bind::<diesel::sql_types::Uuid, _>(job_id)
        .bind::<diesel::sql_types::Uuid, _>(node)
        .bind::<diesel::sql_types::Text, _>(market)
        .bind::<diesel::sql_types::Integer, _>(item_start as i32)
        .bind::<diesel::sql_types::Integer, _>(item_count as i32)
        .execute(&mut c)
        .expect("insert the assignment");
        let msg = gridbook_wire::node::AssignmentMsg {
            assignment_id: id,
            market: market.to_owned(),
            event_seq: 1,
            job_id: Some(job_id),
            node_id: node,
            order_id: uuid::Uuid::new_v4(),
            qty: 1,
            price: 100,
            bid_engine_order_id: 1,
            ask_engine_order_id: 2,
            work: Some(gridbook_wire::node::WorkSpec {
                input_sha256: sha,
                item_start,
                item_count,
                unit_start: 0,
                deadline_ms: 0,
                model: None,
            }),
        };
        SeededAssignment { msg, job_id }
    }

    /// Registers a node for `provider` through the API (no agent): its id.
    pub async fn register_node(&self, provider: &TestUser, name: &str) -> uuid::Uuid {
        let r: serde_json::Value = self
            .app
            .http
            .post(self.app.url("/v1/nodes"))
            .header("Authorization", provider.bearer())
            .json(&serde_json::json!({"name": name, "gpu_model": "cpu", "vram_mb": 0, "region": "test"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["id"].as_str().unwrap_or_else(|| panic!("register: {r}")).parse().unwrap()
    }
}
