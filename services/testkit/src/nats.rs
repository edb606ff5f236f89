//! A private nats-server with JetStream: its own port and store folder, so the durable
//! consumers, streams and market leases of one test never meet another's.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::{Proc, TempDir, free_port};

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
    pub client: async_nats::Client,
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
        std::fs::write(
            dir.join("nats.conf"),
            format!(
                "listen: 127.0.0.1:{port}\nmax_payload: 8MB\njetstream {{\n  store_dir: \"{}\"\n{sync}}}\n",
                dir.join("js").display()
            ),
        )?;
        let log = dir.join("nats.log");
        let mut proc = Proc::spawn("nats-server", Command::new(&bin).arg("-c").arg(dir.join("nats.conf")), &log)?;
        let url = format!("nats://127.0.0.1:{port}");
        let start = Instant::now();
        let client = loop {
            match async_nats::connect(&url).await {
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
        Ok(Nats { url, client, dir, proc, _tmp: tmp })
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
}
