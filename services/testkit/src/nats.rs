//! A private nats-server with JetStream: its own port and store folder, so the durable
//! consumers, streams and market leases of one test never meet another's. It runs with the
//! market's authentication (`gridbook-natsauth`: service nkeys generated into its folder, the
//! auth callout for everyone else), exactly as `cargo xtask` configures its server; nothing
//! connects anonymously. [`NatsCluster`] is three such servers routed into one cluster, for the
//! tests that kill one of them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
pub use gridbook_natsauth::keys::{KeyDir, Service};

use crate::{Proc, TempDir, free_port};

/// A NATS server and the market's keys for it: what a service needs to connect.
#[derive(Clone, Debug)]
pub struct NatsAccess {
    /// One server's URL, or a cluster's URLs separated by commas
    /// (`gridbook_wire::connect::servers`).
    pub url: String,
    /// The folder of seeds (`gridbook-natsauth`); `None` for a server without authentication.
    pub keys: Option<KeyDir>,
    /// The replica count the services create streams and buckets with (`nats_replicas`): 1 on
    /// a single server, 3 on a [`NatsCluster`].
    pub replicas: usize,
}

const NATS_KEYS_VAR: &str = "GRIDBOOK_NATS_KEYS";
const NATS_REPLICAS_VAR: &str = "GRIDBOOK_NATS_REPLICAS";

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
    /// without authentication) and the replica count in `GRIDBOOK_NATS_REPLICAS` (1 when
    /// unset; `cargo xtask env` sets 3 for its cluster).
    pub fn with_env_keys(url: &str) -> NatsAccess {
        let replicas = std::env::var(NATS_REPLICAS_VAR)
            .ok()
            .map(|n| n.parse().unwrap_or_else(|_| panic!("{NATS_REPLICAS_VAR}={n:?} is not a number")))
            .unwrap_or(gridbook_wire::streams::DEFAULT_REPLICAS);
        NatsAccess {
            url: url.to_owned(),
            keys: std::env::var_os(NATS_KEYS_VAR).map(|d| KeyDir::open(Path::new(&d))),
            replicas,
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
        let servers = gridbook_wire::connect::servers(&self.url).map_err(|e| {
            async_nats::ConnectError::with_source(async_nats::ConnectErrorKind::ServerParse, e)
        })?;
        self.options(service).connect(servers).await
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
        let access = NatsAccess { url: url.clone(), keys: Some(keys.clone()), replicas: 1 };
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
        NatsAccess { url: self.url.clone(), keys: Some(self.keys.clone()), replicas: 1 }
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

/// The servers of a [`NatsCluster`].
pub const CLUSTER_SIZE: usize = 3;

/// One server of a [`NatsCluster`]: its ports, folder and process (`None` after a kill).
struct ClusterNode {
    port: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

/// Three nats-servers on loopback ports routed into one cluster (`cluster { }` with routes to
/// the other two), each with JetStream, its own store (`n<i>/js/`), config and log, and the
/// market's authentication (the same keys, the same auth callout as [`Nats`]). Every service
/// connects with the three URLs ([`NatsCluster::url`]) and creates its streams with
/// [`CLUSTER_SIZE`] replicas ([`NatsAccess::replicas`]). Killed on drop.
pub struct NatsCluster {
    /// Connected as the API, to any of the servers (it moves on when its server dies).
    pub client: async_nats::Client,
    pub keys: KeyDir,
    nodes: Vec<ClusterNode>,
    dir: PathBuf,
    bin: String,
    _tmp: Option<TempDir>,
}

impl NatsCluster {
    /// [`NatsCluster::try_start`], panicking on failure.
    pub async fn start(tag: &str, options: NatsOptions) -> NatsCluster {
        match Self::try_start(tag, options).await {
            Ok(c) => c,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Starts the three servers and waits until the cluster has a JetStream meta leader and
    /// places a stream on all three (a probe stream, deleted again).
    pub async fn try_start(tag: &str, options: NatsOptions) -> anyhow::Result<NatsCluster> {
        let bin = std::env::var("GRIDBOOK_NATS_SERVER_BIN").context(
            "GRIDBOOK_NATS_SERVER_BIN is not set: this starts its own nats-servers \
             (eval \"$(cargo xtask env)\", or cargo xtask test)",
        )?;
        let (dir, tmp) = match options.dir {
            Some(d) => {
                std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
                (d, None)
            }
            None => {
                let t = TempDir::new(&format!("nats-cluster-{tag}"));
                (t.path().to_owned(), Some(t))
            }
        };
        let keys = KeyDir::ensure(&dir.join("keys"))?;
        let auth = keys.server_config()?;
        let ports: Vec<(u16, u16)> = (0..CLUSTER_SIZE).map(|_| (free_port(), free_port())).collect();
        let sync = if options.sync_always { "  sync_interval: always\n" } else { "" };
        let mut nodes = Vec::with_capacity(CLUSTER_SIZE);
        for (i, (port, route_port)) in ports.iter().enumerate() {
            let node_dir = dir.join(format!("n{i}"));
            std::fs::create_dir_all(&node_dir).with_context(|| format!("creating {}", node_dir.display()))?;
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, r))| format!("nats-route://127.0.0.1:{r}"))
                .collect();
            std::fs::write(
                node_dir.join("nats.conf"),
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{port}\nmax_payload: 8MB\n\
                     jetstream {{\n  store_dir: \"{}\"\n{sync}}}\n\
                     cluster {{\n  name: gridbook\n  listen: 127.0.0.1:{route_port}\n  routes: [{}]\n}}\n{auth}",
                    node_dir.join("js").display(),
                    routes.join(", ")
                ),
            )?;
            nodes.push(ClusterNode { port: *port, dir: node_dir, proc: None });
        }
        for node in &mut nodes {
            node.proc = Some(spawn_node(&bin, node)?);
        }
        let url = urls(&nodes);
        let access = NatsAccess { url: url.clone(), keys: Some(keys.clone()), replicas: CLUSTER_SIZE };
        let start = Instant::now();
        let client = loop {
            match access.try_connect(Service::Api).await {
                Ok(c) => break c,
                Err(e) => {
                    check_running(&mut nodes)?;
                    anyhow::ensure!(
                        start.elapsed() < Duration::from_secs(20),
                        "the NATS cluster on {url} did not start: {e}; see the logs in {}",
                        dir.display()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let mut cluster = NatsCluster { client, keys, nodes, dir, bin, _tmp: tmp };
        for i in 0..CLUSTER_SIZE {
            cluster.wait_accepting(i).await?;
        }
        cluster.wait_jetstream().await?;
        Ok(cluster)
    }

    /// The three servers' URLs, comma-separated (every service's `nats_url`).
    pub fn url(&self) -> String {
        urls(&self.nodes)
    }

    /// The URL of server `i` alone.
    pub fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// The URLs, the keys and [`CLUSTER_SIZE`] replicas.
    pub fn access(&self) -> NatsAccess {
        NatsAccess { url: self.url(), keys: Some(self.keys.clone()), replicas: CLUSTER_SIZE }
    }

    pub fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client.clone())
    }

    /// The cluster's folder: `keys/`, and `n<i>/` with each server's config, store and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Server `i`'s log.
    pub fn log(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("nats.log")
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].proc.as_ref().and_then(Proc::pid)
    }

    /// SIGKILL server `i` (idempotent); the other two keep the cluster's quorum.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            p.kill();
        }
    }

    /// Starts server `i` again on its port, configuration and store (after [`Self::kill9`]; a
    /// no-op while it runs), and waits until it accepts connections and the cluster has a
    /// meta leader again. Its streams catch up from the other replicas by themselves.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.nodes[i].proc.is_none() {
            let proc = spawn_node(&self.bin, &self.nodes[i])?;
            self.nodes[i].proc = Some(proc);
        }
        self.wait_accepting(i).await?;
        self.wait_jetstream().await
    }

    /// Waits until server `i` alone takes a connection.
    async fn wait_accepting(&mut self, i: usize) -> anyhow::Result<()> {
        let one = NatsAccess { url: self.node_url(i), keys: Some(self.keys.clone()), replicas: CLUSTER_SIZE };
        let start = Instant::now();
        loop {
            match one.try_connect(Service::Api).await {
                Ok(c) => {
                    drop(c);
                    return Ok(());
                }
                Err(e) => {
                    check_running(&mut self.nodes)?;
                    anyhow::ensure!(
                        start.elapsed() < Duration::from_secs(30),
                        "nats-server n{i} on {} did not start: {e}; see {}",
                        one.url,
                        self.log(i).display()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Waits until JetStream has a meta leader and a stream with [`CLUSTER_SIZE`] replicas can
    /// be placed (created and deleted again) — before that, a service's first stream would be
    /// refused.
    async fn wait_jetstream(&mut self) -> anyhow::Result<()> {
        let js = self.jetstream();
        let start = Instant::now();
        let probe = "GRIDBOOK_TESTKIT_PROBE";
        loop {
            let placed = js
                .create_stream(async_nats::jetstream::stream::Config {
                    name: probe.into(),
                    subjects: vec!["gridbook.testkit.probe".into()],
                    storage: async_nats::jetstream::stream::StorageType::Memory,
                    num_replicas: CLUSTER_SIZE,
                    ..Default::default()
                })
                .await;
            match placed {
                Ok(_) => {
                    js.delete_stream(probe).await.map_err(|e| anyhow::anyhow!("deleting {probe}: {e}"))?;
                    return Ok(());
                }
                Err(e) => {
                    check_running(&mut self.nodes)?;
                    anyhow::ensure!(
                        start.elapsed() < Duration::from_secs(30),
                        "the NATS cluster on {} has no JetStream meta leader: {e}; see the logs in {}",
                        self.url(),
                        self.dir.display()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

fn urls(nodes: &[ClusterNode]) -> String {
    nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
}

fn spawn_node(bin: &str, node: &ClusterNode) -> anyhow::Result<Proc> {
    Proc::spawn("nats-server", Command::new(bin).arg("-c").arg(node.dir.join("nats.conf")), &node.dir.join("nats.log"))
}

/// An error naming the log of a server that exited by itself.
fn check_running(nodes: &mut [ClusterNode]) -> anyhow::Result<()> {
    for (i, n) in nodes.iter_mut().enumerate() {
        if let Some(status) = n.proc.as_mut().and_then(Proc::exited) {
            anyhow::bail!("nats-server n{i} exited ({status}); see {}", n.dir.join("nats.log").display());
        }
    }
    Ok(())
}
