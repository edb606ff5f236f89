//! A private nats-server with JetStream: its own port and store folder, so the durable
//! consumers, streams and market leases of one test never meet another's. It runs with the
//! market's authentication (`gridbook-natsauth`: service nkeys generated into its folder, the
//! auth callout for everyone else), exactly as `cargo xtask` configures its server; nothing
//! connects anonymously.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
pub use gridbook_natsauth::keys::{KeyDir, Service};

use crate::{Proc, TempDir, free_port};

/// A NATS server and the market's keys for it: what a service needs to connect.
#[derive(Clone, Debug)]
pub struct NatsAccess {
    pub url: String,
    /// The folder of seeds (`gridbook-natsauth`); `None` for a server without authentication.
    pub keys: Option<KeyDir>,
}

const NATS_KEYS_VAR: &str = "GRIDBOOK_NATS_KEYS";

impl NatsAccess {
    /// The shared server of `cargo xtask test` (`GRIDBOOK_NATS_URL`) with its keys
    /// (`GRIDBOOK_NATS_KEYS`, which `cargo xtask env` and `cargo xtask test` export).
    pub fn shared() -> NatsAccess {
        let url = std::env::var("GRIDBOOK_NATS_URL").unwrap_or_else(|_| {
            panic!("GRIDBOOK_NATS_URL is not set: these tests need the NATS server cargo xtask test starts")
        });
        Self::with_env_keys(&url)
    }

    /// A server at `url` with the keys in `GRIDBOOK_NATS_KEYS` (none when unset: a server
    /// without authentication).
    pub fn with_env_keys(url: &str) -> NatsAccess {
        NatsAccess {
            url: url.to_owned(),
            keys: std::env::var_os(NATS_KEYS_VAR).map(|d| KeyDir::open(Path::new(&d))),
        }
    }

    /// The seed file of `service`, if the server has authentication.
    pub fn nkey_file(&self, service: Service) -> Option<PathBuf> {
        self.keys.as_ref().map(|k| k.seed_file(service))
    }

    /// Connection options for `service` (its nkey when the server has authentication).
    pub fn options(&self, service: Service) -> async_nats::ConnectOptions {
        let file = self.nkey_file(service);
        gridbook_wire::connect::service_options(&format!("test-{service:?}"), file.as_deref())
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A client connected as `service`.
    pub async fn connect(&self, service: Service) -> async_nats::Client {
        self.try_connect(service)
            .await
            .unwrap_or_else(|e| panic!("connecting to NATS at {} as {service:?}: {e}", self.url))
    }

    pub async fn try_connect(&self, service: Service) -> Result<async_nats::Client, async_nats::ConnectError> {
        self.options(service).connect(&self.url).await
    }
}

/// How [`Nats`] configures the server. The default is what the tests use: JetStream with
/// `max_payload: 8MB` and the server's periodic fsync.
#[derive(Clone, Debug, Default)]
pub struct NatsOptions {
    /// `sync_interval: always`: JetStream fsyncs before every acknowledgement, as xtask's server
    /// (the load tests measure with it).
    pub sync_always: bool,
    /// The folder for `nats.conf`, the store (`js/`) and `nats.log`; kept by the caller. Default:
    /// a [`TempDir`] of its own, removed on drop.
    pub dir: Option<PathBuf>,
}

/// A running nats-server (`GRIDBOOK_NATS_SERVER_BIN`) and a client connected to it; the server
/// is killed on drop.
pub struct Nats {
    pub url: String,
    /// Connected as the API (a market service: it may do anything).
    pub client: async_nats::Client,
    pub keys: KeyDir,
    dir: PathBuf,
    proc: Proc,
    _tmp: Option<TempDir>,
}

impl Nats {
    /// A server with the default options; panics when it cannot start (with its log's path).
    pub async fn start(tag: &str) -> Nats {
        Self::start_with(tag, NatsOptions::default()).await
    }

    /// [`Nats::try_start`], panicking on failure.
    pub async fn start_with(tag: &str, options: NatsOptions) -> Nats {
        match Self::try_start(tag, options).await {
            Ok(n) => n,
            Err(e) => panic!("{e:#}"),
        }
    }

    pub async fn try_start(tag: &str, options: NatsOptions) -> anyhow::Result<Nats> {
        let bin = std::env::var("GRIDBOOK_NATS_SERVER_BIN").context(
            "GRIDBOOK_NATS_SERVER_BIN is not set: this starts its own nats-server \
             (eval \"$(cargo xtask env)\", or cargo xtask test)",
        )?;
        let (dir, tmp) = match options.dir {
            Some(d) => {
                std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
                (d, None)
            }
            None => {
                let t = TempDir::new(&format!("nats-{tag}"));
                (t.path().to_owned(), Some(t))
            }
        };
        let port = free_port();
        let sync = if options.sync_always { "  sync_interval: always\n" } else { "" };
        let keys = KeyDir::ensure(&dir.join("keys"))?;
        std::fs::write(
            dir.join("nats.conf"),
            format!(
                "listen: 127.0.0.1:{port}\nmax_payload: 8MB\njetstream {{\n  store_dir: \"{}\"\n{sync}}}\n{}",
                dir.join("js").display(),
                keys.server_config()?
            ),
        )?;
        let log = dir.join("nats.log");
        let mut proc = Proc::spawn("nats-server", Command::new(&bin).arg("-c").arg(dir.join("nats.conf")), &log)?;
        let url = format!("nats://127.0.0.1:{port}");
        let access = NatsAccess { url: url.clone(), keys: Some(keys.clone()) };
        let start = Instant::now();
        let client = loop {
            match access.try_connect(Service::Api).await {
                Ok(c) => break c,
                Err(e) => {
                    if let Some(status) = proc.exited() {
                        anyhow::bail!("nats-server on {url} exited ({status}); see {}", log.display());
                    }
                    anyhow::ensure!(
                        start.elapsed() < Duration::from_secs(20),
                        "nats-server on {url} did not start: {e}; see {}",
                        log.display()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        Ok(Nats { url, client, keys, dir, proc, _tmp: tmp })
    }

    /// The URL and the keys of this server.
    pub fn access(&self) -> NatsAccess {
        NatsAccess { url: self.url.clone(), keys: Some(self.keys.clone()) }
    }

    pub fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client.clone())
    }

    /// The server's folder (config, store, log); other parts of a test may put files here.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log(&self) -> &Path {
        self.proc.log()
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// SIGKILL the server and start it again on the same port, configuration and store (what
    /// JetStream had acknowledged is recovered from `js/`); clients reconnect by themselves.
    /// Waits until it accepts a connection again.
    pub async fn kill9_and_restart(&mut self) -> anyhow::Result<()> {
        self.proc.kill();
        let bin = std::env::var("GRIDBOOK_NATS_SERVER_BIN").context("GRIDBOOK_NATS_SERVER_BIN is not set")?;
        let log = self.proc.log().to_owned();
        self.proc = Proc::spawn("nats-server", Command::new(&bin).arg("-c").arg(self.dir.join("nats.conf")), &log)?;
        let start = Instant::now();
        let access = self.access();
        while let Err(e) = access.try_connect(Service::Api).await {
            if let Some(status) = self.proc.exited() {
                anyhow::bail!("nats-server on {} exited after a restart ({status}); see {}", self.url, log.display());
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(30),
                "nats-server on {} did not come back: {e}; see {}",
                self.url,
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}
