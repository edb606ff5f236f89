//! The real `matching-engine` binary (`matching-engine run --config …`) on a NATS server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use gridbook_wire::subjects;

use crate::{Proc, TempDir, binary, dev_markets_file};

/// Which markets the engine serves.
#[derive(Clone, Debug)]
pub enum Markets {
    /// `matching-engine/engine/config/dev.toml`'s.
    Dev,
    /// Those of this engine configuration file (used as it is when nothing is overridden).
    File(PathBuf),
    /// A generated configuration with these markets.
    List(Vec<Market>),
}

/// One `[[markets]]` entry of a generated configuration; the engine's defaults for the rest.
#[derive(Clone, Debug)]
pub struct Market {
    pub market: String,
    pub min_price: u64,
    pub max_price: u64,
    pub max_qty: u64,
    pub fee_bps: u32,
    pub max_orders: Option<u64>,
    pub max_levels: Option<u64>,
}

impl Market {
    /// Prices 1..=1,000, at most 1,000 lots an order.
    pub fn new(market: &str, fee_bps: u32) -> Market {
        Market {
            market: market.to_owned(),
            min_price: 1,
            max_price: 1_000,
            max_qty: 1_000,
            fee_bps,
            max_orders: None,
            max_levels: None,
        }
    }

    fn toml(&self) -> String {
        let mut s = format!(
            "\n[[markets]]\nmarket = \"{}\"\nmin_price = {}\nmax_price = {}\nmax_qty = {}\nfee_bps = {}\n",
            self.market, self.min_price, self.max_price, self.max_qty, self.fee_bps
        );
        if let Some(n) = self.max_orders {
            s.push_str(&format!("max_orders = {n}\n"));
        }
        if let Some(n) = self.max_levels {
            s.push_str(&format!("max_levels = {n}\n"));
        }
        s
    }
}

/// What the engine runs with. `None` leaves the configuration file's value (or the engine's
/// default).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub markets: Markets,
    pub engine_id: Option<String>,
    /// The market lease's TTL (a short one lets a second engine take over quickly).
    pub lease_secs: Option<u64>,
    pub snapshot_every: Option<u64>,
    pub batch_max: Option<u64>,
    /// The binary; default: [`binary`]`("matching-engine")`.
    pub bin: Option<PathBuf>,
    /// The folder for the generated `engine.toml` and `engine.log`; kept by the caller. Default:
    /// a [`TempDir`] of its own, removed on drop.
    pub dir: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            markets: Markets::Dev,
            engine_id: None,
            lease_secs: None,
            snapshot_every: None,
            batch_max: None,
            bin: None,
            dir: None,
        }
    }
}

impl EngineConfig {
    /// dev.toml's markets, as they are.
    pub fn dev() -> Self {
        Self::default()
    }

    /// A generated configuration serving `markets`.
    pub fn markets(markets: Vec<Market>) -> Self {
        EngineConfig { markets: Markets::List(markets), ..Self::default() }
    }

    fn overrides(&self) -> Vec<(&'static str, String)> {
        let mut o = vec![];
        if let Some(id) = &self.engine_id {
            o.push(("engine_id", format!("{id:?}")));
        }
        if let Some(n) = self.snapshot_every {
            o.push(("snapshot_every", n.to_string()));
        }
        if let Some(n) = self.batch_max {
            o.push(("batch_max", n.to_string()));
        }
        if let Some(n) = self.lease_secs {
            o.push(("lease_secs", n.to_string()));
        }
        o
    }

    /// The configuration file's text, or `None` when an existing file serves as it is.
    fn text(&self) -> anyhow::Result<Option<String>> {
        let overrides = self.overrides();
        let mut text: String = overrides.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        let base = match &self.markets {
            Markets::List(list) => {
                text.extend(list.iter().map(Market::toml));
                return Ok(Some(text));
            }
            Markets::Dev => dev_markets_file(),
            Markets::File(f) => f.clone(),
        };
        if overrides.is_empty() {
            return Ok(None);
        }
        let file = std::fs::read_to_string(&base).with_context(|| format!("reading {}", base.display()))?;
        // The file's own top-level values of the overridden keys give way (TOML allows a key once).
        let mut top_level = true;
        for line in file.lines() {
            let t = line.trim_start();
            top_level &= !t.starts_with('[');
            let overridden = top_level
                && overrides.iter().any(|(k, _)| {
                    t.strip_prefix(k).is_some_and(|rest| rest.trim_start().starts_with('='))
                });
            if !overridden {
                text.push_str(line);
                text.push('\n');
            }
        }
        Ok(Some(text))
    }
}

/// The names of the markets in an engine configuration's text.
fn market_names(text: &str) -> anyhow::Result<Vec<String>> {
    let table: toml::Table = toml::from_str(text)?;
    Ok(table
        .get("markets")
        .and_then(|m| m.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|m| m.get("market").and_then(|n| n.as_str()).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// A running `matching-engine run` process, killed with SIGKILL on drop.
pub struct Engine {
    proc: Option<Proc>,
    bin: PathBuf,
    config: PathBuf,
    nats: crate::NatsAccess,
    log: PathBuf,
    markets: Vec<String>,
    _tmp: Option<TempDir>,
}

impl Engine {
    /// [`Engine::try_start`], panicking on failure. It does not wait: see [`Engine::wait_serving`].
    pub fn start(nats: &crate::NatsAccess, config: EngineConfig) -> Engine {
        match Self::try_start(nats, config) {
            Ok(e) => e,
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Writes the configuration (unless an existing file serves as it is) and starts the engine
    /// on `nats` (as the engine service), with `RUST_LOG=warn` and its output in `engine.log`.
    pub fn try_start(nats: &crate::NatsAccess, config: EngineConfig) -> anyhow::Result<Engine> {
        let (dir, tmp) = match &config.dir {
            Some(d) => {
                std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                (d.clone(), None)
            }
            None => {
                let t = TempDir::new("engine");
                (t.path().to_owned(), Some(t))
            }
        };
        let (path, text) = match config.text()? {
            Some(text) => {
                let path = dir.join("engine.toml");
                std::fs::write(&path, &text)?;
                (path, text)
            }
            None => {
                let path = match &config.markets {
                    Markets::File(f) => f.clone(),
                    _ => dev_markets_file(),
                };
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                (path, text)
            }
        };
        let markets = market_names(&text).with_context(|| format!("engine configuration {}", path.display()))?;
        let bin = config.bin.clone().unwrap_or_else(|| binary("matching-engine"));
        let mut engine = Engine {
            proc: None,
            bin,
            config: path,
            nats: nats.clone(),
            log: dir.join("engine.log"),
            markets,
            _tmp: tmp,
        };
        engine.try_respawn()?;
        Ok(engine)
    }

    fn try_respawn(&mut self) -> anyhow::Result<()> {
        if self.proc.is_none() {
            let mut command = Command::new(&self.bin);
            command
                .args(["run", "--config"])
                .arg(&self.config)
                .env("GRIDBOOK_NATS_URL", &self.nats.url)
                .env("GRIDBOOK_NATS_REPLICAS", self.nats.replicas.to_string())
                .env("RUST_LOG", "warn");
            if let Some(f) = self.nats.nkey_file(crate::Service::Engine) {
                command.env("GRIDBOOK_NATS_NKEY_FILE", f);
            }
            let proc = Proc::spawn("matching-engine", &mut command, &self.log)?;
            self.proc = Some(proc);
        }
        Ok(())
    }

    /// Starts the process again after [`Engine::kill9`] (same configuration, same log).
    pub fn respawn(&mut self) {
        if let Err(e) = self.try_respawn() {
            panic!("{e:#}");
        }
    }

    /// SIGKILL and wait.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Waits until the engine answers a snapshot request for each of its markets (its market
    /// tasks run); panics after 30 s, or when the process ended, naming the log.
    pub async fn wait_serving(&mut self, client: &async_nats::Client) {
        let start = Instant::now();
        for market in self.markets.clone() {
            loop {
                let reply = tokio::time::timeout(
                    Duration::from_secs(2),
                    client.request(subjects::market_snapshot(&market), "".into()),
                )
                .await;
                if matches!(reply, Ok(Ok(_))) {
                    break;
                }
                if let Some(status) = self.proc.as_mut().and_then(Proc::exited) {
                    panic!("the engine exited ({status}); see {}", self.log.display());
                }
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "the engine did not start serving {market}; see {}",
                    self.log.display()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The configuration file it runs with.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The markets it serves.
    pub fn markets(&self) -> &[String] {
        &self.markets
    }
}
