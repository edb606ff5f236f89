//! What every Gridbook binary sets up once: typed configuration and tracing.
//!
//! Configuration is layered: built-in defaults (the `Default` of the settings type), then an
//! optional TOML file, then environment variables with the `GRIDBOOK_` prefix (nested keys
//! joined by `__`, e.g. `GRIDBOOK_NATS_URL`, `GRIDBOOK_ENGINE__SNAPSHOT_EVERY`). Later layers win.

use std::path::Path;

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Serialize, de::DeserializeOwned};

/// A configuration that could not be read, naming the key and the source that was wrong.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

/// Load settings of type `T`: defaults, then `file` (if given; it must exist), then `GRIDBOOK_*`.
pub fn load_config<T>(file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(file) = file {
        if !file.exists() {
            return Err(ConfigError(Box::new(figment::Error::from(format!(
                "configuration file {} does not exist",
                file.display()
            )))));
        }
        figment = figment.merge(Toml::file(file));
    }
    figment
        .merge(Env::prefixed("GRIDBOOK_").split("__"))
        .extract()
        .map_err(|e| ConfigError(Box::new(e)))
}

/// Install the global `tracing` subscriber once per process.
///
/// `RUST_LOG` picks levels (default `info`); `GRIDBOOK_LOG_FORMAT=json` switches to one JSON
/// object per line for log shippers. Calling it twice is harmless (the second call is ignored).
pub fn init_tracing(service: &'static str) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("GRIDBOOK_LOG_FORMAT").is_ok_and(|v| v == "json");
    let result = if json {
        fmt().json().with_env_filter(filter).with_writer(std::io::stderr).try_init()
    } else {
        fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init()
    };
    if result.is_ok() {
        tracing::info!(service, "tracing initialised");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    struct Settings {
        listen_addr: String,
        engine: Engine,
    }

    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    struct Engine {
        snapshot_every: u64,
    }

    #[test]
    fn file_then_environment_layers_override_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "listen_addr = \"file:1\"\n[engine]\nsnapshot_every = 5\n")?;
            jail.set_env("GRIDBOOK_ENGINE__SNAPSHOT_EVERY", "9");
            let s: Settings = load_config(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(s.listen_addr, "file:1");
            assert_eq!(s.engine.snapshot_every, 9);
            Ok(())
        });
    }

    #[test]
    fn a_missing_file_and_a_bad_value_are_clear_errors() {
        figment::Jail::expect_with(|jail| {
            let e = load_config::<Settings>(Some(Path::new("nope.toml"))).unwrap_err().to_string();
            assert!(e.contains("nope.toml") && e.contains("does not exist"), "{e}");
            jail.set_env("GRIDBOOK_ENGINE__SNAPSHOT_EVERY", "many");
            let e = load_config::<Settings>(None).unwrap_err().to_string();
            assert!(e.to_lowercase().contains("engine.snapshot_every") && e.contains("GRIDBOOK_"), "{e}");
            Ok(())
        });
    }
}
