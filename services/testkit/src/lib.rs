//! Starts Gridbook's services for integration tests and load tests, each in one call, on free
//! ports, with its log in a file whose path an assertion can print, stopped on drop.
//!
//! - Always (light: the engine's own tests use only this): [`free_port`], [`Proc`] (a child
//!   process killed with SIGKILL and reaped on drop), [`binary`] (a workspace binary next to the
//!   test executable), [`TempDir`], a private nats-server with JetStream ([`Nats`]) or a
//!   three-node cluster of them ([`NatsCluster`]), the real
//!   `matching-engine` binary ([`Engine`], [`EngineConfig`]), the `settlement-worker` binary
//!   ([`spawn_worker`], [`WorkerConfig`]) and a private PostgreSQL server ([`Postgres`], for
//!   tests that crash the database).
//! - Feature `agent`: the executor agent in this process ([`Agent`]).
//! - Feature `api`: the API in this process with a fresh PostgreSQL database ([`TestApp`],
//!   [`TestUser`], [`TestDb`]), the settlement worker in this process ([`InProcessWorker`]) and
//!   [`Stack`], which composes nats + engine + worker + API (+ agent).
//!
//! Folders (`TempDir`) are removed on drop unless the thread is panicking, so a failing test
//! leaves its logs behind for the path it printed.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;

mod engine;
mod nats;
mod postgres;
pub mod replay;
mod worker;

#[cfg(feature = "agent")]
mod agent;
#[cfg(feature = "api")]
mod app;
#[cfg(feature = "api")]
mod stack;

pub use engine::{Engine, EngineConfig, Market, Markets};
pub use nats::{CLUSTER_SIZE, KeyDir, Nats, NatsAccess, NatsCluster, NatsOptions, Service};
pub use postgres::{PgPair, Postgres, STANDBY_NAME};
pub use worker::{WorkerConfig, spawn_worker};

#[cfg(feature = "agent")]
pub use agent::{Agent, load_workloads};
#[cfg(feature = "api")]
pub use app::{TEST_PASSWORD, TestApp, TestUser, error_code, nats_url, test_settings, unique_email};
#[cfg(feature = "api")]
pub use gridbook_db::testing::TestDb;
#[cfg(feature = "api")]
pub use stack::{Stack, StackOptions};
#[cfg(feature = "api")]
pub use worker::InProcessWorker;
/// The settlement crate the stack's worker runs, for tests that call its hooks directly (the
/// protocol's buyback order, `settlement::token`).
#[cfg(feature = "api")]
pub use gridbook_settlement as settlement;

/// A TCP port on 127.0.0.1 that was free a moment ago (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The workspace root (where `Cargo.toml` and `matching-engine/engine/config/dev.toml` are).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `matching-engine/engine/config/dev.toml`: the markets a local `cargo xtask run` serves.
pub fn dev_markets_file() -> PathBuf {
    workspace_root().join("matching-engine/engine/config/dev.toml")
}

/// The workspace binary `name` next to the running test executable (`target/<profile>/<name>`;
/// the test itself is `target/<profile>/deps/<test>-<hash>`). `cargo test --workspace`, which
/// `cargo xtask test` runs, builds every binary first; panics with how to build it otherwise.
/// The SD pipeline tests use: `executor/fixtures/tiny-sd`, a STRUCTURAL FIXTURE with random
/// weights (the file layout and tensor names of an SD 1.5 ONNX export, 64×64, 4 steps). It is
/// not Stable Diffusion; it lets the SD code path run end to end in seconds on a CPU.
pub fn tiny_sd_fixture() -> PathBuf {
    workspace_root().join("executor/fixtures/tiny-sd")
}

/// The private models' key-encryption key every API and settlement worker of this test
/// process shares (`models_kek_file`): a fresh random key in the temp folder, made once.
pub fn test_kek_file() -> PathBuf {
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("gridbook-test-models-{}.kek", std::process::id()));
        let _ = std::fs::remove_file(&path);
        gridbook_sealed::Kek::load_or_create(&path).unwrap_or_else(|e| panic!("{e}"));
        path
    })
    .clone()
}

pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test executable sits in target/<profile>/deps")
        .join(name);
    let package = match name {
        "settlement-worker" => "gridbook-settlement",
        other => other,
    };
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build -p {package}`, or run `cargo xtask test`)",
        bin.display()
    );
    bin
}

/// A folder of its own under the system temp folder, removed on drop unless the thread is
/// panicking (a failed test keeps its logs) or [`TempDir::keep`] was called.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// `<tmp>/gridbook-<tag>-<pid>-<n>`, created empty.
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let tag: String = tag
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
            .collect();
        let path = std::env::temp_dir().join(format!(
            "gridbook-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TempDir { path, keep: false }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the folder in place after drop and returns its path.
    pub fn keep(mut self) -> PathBuf {
        self.keep = true;
        self.path.clone()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A child process, killed with SIGKILL and reaped when dropped (also when a test fails). Its
/// stdout and stderr go to [`Proc::log`] (appended, so restarts share one log).
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `command` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, command: &mut Command, log: &Path) -> anyhow::Result<Proc> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", command.get_program()))?;
        Ok(Proc { name: name.to_owned(), child: Some(child), log: log.to_owned() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id while it runs (not yet killed here).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Where its stdout and stderr go.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Its exit status if it has ended by itself; `None` while it runs or after [`Proc::kill`].
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGKILL and wait (idempotent).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
