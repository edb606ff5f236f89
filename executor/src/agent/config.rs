//! The agent's settings (`node.toml`, then `GRIDBOOK_*` environment variables, through
//! `gridbook_support::load_config`). The API key is not a setting: it comes from `--key-file` or
//! `GRIDBOOK_API_KEY` and is never logged or written anywhere.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::pricing::Policy;

/// Most assignments a node runs at once (a bound on memory and threads, whatever the config says).
pub const MAX_CONCURRENT_LIMIT: usize = 64;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentSettings {
    /// Marketplace HTTP API, e.g. `http://127.0.0.1:8080` (`--api`). Without it the agent runs
    /// offline: it needs `node_id` and posts no asks.
    pub api_url: Option<String>,
    /// NATS server (`--nats`, `GRIDBOOK_NATS_URL`).
    pub nats_url: String,
    /// The node id when it is known (registered elsewhere); otherwise the state file's, or the
    /// agent registers one and stores it there.
    pub node_id: Option<Uuid>,
    /// Where the agent keeps its node id, open asks and recently finished assignments (JSON).
    pub state_file: PathBuf,
    /// Registration: the node's name, GPU model, VRAM and region.
    pub name: String,
    pub gpu_model: String,
    pub vram_mb: u64,
    pub region: String,
    /// Seconds between heartbeats on `node.<id>.heartbeat`.
    pub heartbeat_secs: u64,
    /// Assignments run at once (1..=64).
    pub max_concurrent: usize,
    /// On SIGINT/SIGTERM: seconds to let running assignments finish before stopping them.
    pub grace_secs: u64,
    /// Seconds between book polls of the pricing loop.
    pub pricing_poll_secs: u64,
    /// Finished assignment ids remembered (state file) to ignore redeliveries.
    pub done_capacity: usize,
    /// Models directory (`GRIDBOOK_MODELS_DIR`).
    pub models_dir: Option<PathBuf>,
    /// `RENDER-SD15-512`: the SD model directory (only needed when that market is served).
    pub sd_model_dir: Option<PathBuf>,
    /// Largest input object the agent downloads.
    pub max_input_bytes: u64,
    /// Largest (sealed) private model the agent downloads.
    pub max_model_bytes: u64,
    /// Markets served and how each prices its ask.
    pub markets: BTreeMap<String, Policy>,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            api_url: None,
            nats_url: "nats://127.0.0.1:4222".into(),
            node_id: None,
            state_file: PathBuf::from("node-state.json"),
            name: "gridbook-node".into(),
            gpu_model: "cpu".into(),
            vram_mb: 0,
            region: "local".into(),
            heartbeat_secs: 5,
            max_concurrent: 1,
            grace_secs: 30,
            pricing_poll_secs: 10,
            done_capacity: 1_024,
            models_dir: None,
            sd_model_dir: None,
            max_input_bytes: 512 << 20,
            max_model_bytes: 1 << 30,
            markets: BTreeMap::new(),
        }
    }
}

impl AgentSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_concurrent == 0 || self.max_concurrent > MAX_CONCURRENT_LIMIT {
            return Err(format!(
                "max_concurrent must be 1..={MAX_CONCURRENT_LIMIT}, got {}",
                self.max_concurrent
            ));
        }
        if self.heartbeat_secs == 0 || self.done_capacity == 0 {
            return Err("heartbeat_secs and done_capacity must be positive".into());
        }
        for (market, policy) in &self.markets {
            match gridbook_wire::catalog::kind(market) {
                Some(gridbook_wire::catalog::MarketKind::Compute(_)) => {}
                Some(gridbook_wire::catalog::MarketKind::Token(_)) => {
                    return Err(format!("{market} is a token market: a node has no work to offer there"));
                }
                None => return Err(format!("unknown market {market:?}")),
            }
            policy.validate().map_err(|e| format!("{market}: {e}"))?;
        }
        if self.api_url.is_none() {
            return Err("api_url is required: the node gets its NATS credential and its assignments' data from the API".into());
        }
        Ok(())
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_node_config_loads_and_validates() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/node.example.toml");
        let s: AgentSettings = gridbook_support::load_config(Some(&path)).unwrap();
        s.validate().unwrap();
        assert_eq!(s.markets.len(), 2);
        assert_eq!(
            s.markets["RENDER-TERRAIN-128"],
            Policy::Follow {
                floor: 5,
                ceiling: 40,
                undercut_ticks: 1,
                qty: 50
            }
        );
        assert_eq!(s.max_concurrent, 1);
    }

    #[test]
    fn validation_names_the_problem() {
        let mut s = AgentSettings {
            max_concurrent: 0,
            ..AgentSettings::default()
        };
        assert!(s.validate().unwrap_err().contains("max_concurrent"));
        s.max_concurrent = 1;
        s.markets
            .insert("NOPE".into(), Policy::Fixed { price: 1, qty: 1 });
        assert!(s.validate().unwrap_err().contains("unknown market"));
        s.markets.clear();
        assert!(s.validate().unwrap_err().contains("api_url"));
    }
}
