//! The engine's typed settings: defaults, then a TOML file, then `GRIDBOOK_*` variables.

use matching_core::MarketConfig;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct EngineSettings {
    /// `GRIDBOOK_NATS_URL`.
    pub nats_url: String,
    /// `GRIDBOOK_NATS_NKEY_FILE`: the engine's nkey seed (`engine.nk`, see `gridbook-natsauth`);
    /// unset: connect without credentials (a server without authentication).
    pub nats_nkey_file: Option<std::path::PathBuf>,
    /// `GRIDBOOK_NATS_REPLICAS`: copies of every stream and bucket the engine creates (1 on a
    /// single server, 3 on a three-node cluster; `gridbook_wire::streams::DEFAULT_REPLICAS`).
    pub nats_replicas: usize,
    /// Names this process in logs.
    pub engine_id: String,
    /// The markets this process is the single writer of. Assign each market to exactly one
    /// engine process.
    pub markets: Vec<MarketConfig>,
    /// Write an engine snapshot after this many commands (bounds replay time after a crash).
    pub snapshot_every: u64,
    /// Most commands applied between two publish-ack waits.
    pub batch_max: usize,
    /// How many recent order ids the engine remembers to drop resent places.
    pub recent_ids: usize,
    /// How long the commands and events streams keep messages, in hours.
    pub retention_hours: u64,
    /// A market's writer lease lapses this many seconds after its holder stopped renewing.
    pub lease_secs: u64,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            nats_url: "nats://127.0.0.1:44222".into(),
            nats_nkey_file: None,
            nats_replicas: gridbook_wire::streams::DEFAULT_REPLICAS,
            engine_id: "engine-1".into(),
            markets: vec![],
            snapshot_every: 50_000,
            batch_max: 512,
            recent_ids: 100_000,
            retention_hours: 24 * 7,
            lease_secs: 10,
        }
    }
}
