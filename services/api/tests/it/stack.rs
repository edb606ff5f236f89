//! The whole marketplace for end-to-end tests: a private nats-server (JetStream, its own port
//! and folder, so durable consumers and market leases of one test never meet another's), the
//! real `matching-engine` binary serving the configured markets, the settlement worker, and the
//! API (TestApp) pointed at them.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{TestApp, workspace_root};

pub struct Proc(pub Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A nats-server with JetStream of its own.
pub struct PrivateNats {
    pub url: String,
    pub dir: PathBuf,
    _proc: Proc,
}

impl PrivateNats {
    pub async fn start(tag: &str) -> PrivateNats {
        let bin = std::env::var("GRIDBOOK_NATS_SERVER_BIN").unwrap_or_else(|_| {
            panic!("GRIDBOOK_NATS_SERVER_BIN is not set: `cargo xtask test` exports the nats-server it installed")
        });
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "gridbook-{tag}-{}-{port}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let proc = Proc(
            Command::new(bin)
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nats-server"),
        );
        let url = format!("nats://127.0.0.1:{port}");
        for _ in 0..100 {
            if async_nats::connect(&url).await.is_ok() {
                return PrivateNats {
                    url,
                    dir,
                    _proc: proc,
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("nats-server on {url} did not start");
    }
}

/// The engine binary next to this test binary (`cargo test --workspace` builds it).
pub fn engine_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("matching-engine");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p matching-engine`, or run `cargo xtask test`)",
        bin.display()
    );
    bin
}

/// Engine + settlement worker + API on a private NATS server.
pub struct Stack {
    pub nats: PrivateNats,
    pub app: TestApp,
    _engine: Proc,
    settlement: tokio::task::JoinHandle<()>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.settlement.abort();
    }
}

impl Stack {
    pub async fn start(tag: &str) -> Stack {
        let nats = PrivateNats::start(tag).await;
        let config = nats.dir.join("engine.toml");
        let dev = std::fs::read_to_string(
            workspace_root().join("matching-engine/engine/config/dev.toml"),
        )
        .unwrap();
        // The dev markets, a short lease (a test's engine is the only one on its server).
        std::fs::write(&config, format!("lease_secs = 3\n{dev}")).unwrap();
        let engine = Proc(
            Command::new(engine_binary())
                .args(["run", "--config"])
                .arg(&config)
                .env("GRIDBOOK_NATS_URL", &nats.url)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("start matching-engine"),
        );
        let url = nats.url.clone();
        let app = TestApp::spawn_with(move |s| s.nats_url = url).await;
        let settings = gridbook_settlement::Settings {
            database_url: app.db.url().to_owned(),
            nats_url: nats.url.clone(),
            outbox_interval_ms: 50,
            ..Default::default()
        };
        let settlement = tokio::spawn(async move {
            if let Err(e) = gridbook_settlement::run(settings).await {
                panic!("settlement worker: {e}");
            }
        });
        Stack {
            nats,
            app,
            _engine: engine,
            settlement,
        }
    }
}
