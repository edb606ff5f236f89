//! The market catalogue (the engine's `[[markets]]` joined with `gridbook_wire::catalog`) and
//! the trader routes (REST snapshot/trades/candles, WebSocket feed).

use std::collections::BTreeMap;
use std::path::Path;

use matching_core::MarketConfig;
use serde::Deserialize;

/// One market as the API serves it.
#[derive(Clone, Debug)]
pub struct Market {
    pub config: MarketConfig,
    pub work: gridbook_wire::catalog::Work,
}

/// All markets, by symbol.
#[derive(Clone, Debug, Default)]
pub struct Markets {
    pub by_symbol: BTreeMap<String, Market>,
}

#[derive(Deserialize)]
struct EngineFile {
    markets: Vec<MarketConfig>,
}

impl Markets {
    /// Reads the engine's configuration file. A market without a known workload is an error
    /// (the API could not run its jobs).
    pub fn load(path: &Path) -> anyhow::Result<Markets> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let file: EngineFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut by_symbol = BTreeMap::new();
        for config in file.markets {
            let symbol = config.market.0.clone();
            let work = gridbook_wire::catalog::work(&symbol).ok_or_else(|| {
                anyhow::anyhow!("{}: market {symbol} has no known workload", path.display())
            })?;
            by_symbol.insert(symbol, Market { config, work });
        }
        Ok(Markets { by_symbol })
    }

    pub fn get(&self, symbol: &str) -> Option<&Market> {
        self.by_symbol.get(symbol)
    }
}

/// Trader routes (mounted under `/v1`).
pub fn configure(_cfg: &mut actix_web::web::ServiceConfig) {}
