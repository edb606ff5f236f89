//! Where the CLI keeps its API key: `$XDG_CONFIG_HOME/gridbook/credentials.toml`, else
//! `~/.config/gridbook/credentials.toml`; the folder 0700, the file 0600 (written to a temporary
//! file of that mode in the same folder, then renamed over the old one, so it is never readable
//! by others, not even for a moment).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

pub const DEFAULT_API: &str = "http://127.0.0.1:8080";
pub const FILE_NAME: &str = "credentials.toml";

/// What `gridbook login` stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The API the key belongs to.
    pub api: String,
    /// `gbk_<prefix>_<secret>`.
    pub key: String,
    pub key_id: String,
    pub email: String,
    pub role: String,
}

/// The folder of the CLI's files: `$XDG_CONFIG_HOME/gridbook` or `$HOME/.config/gridbook`.
pub fn config_dir() -> anyhow::Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        let x = PathBuf::from(x);
        // The XDG spec: a relative path is invalid and must be ignored.
        if x.is_absolute() {
            return Ok(x.join("gridbook"));
        }
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("gridbook")),
        None => bail!("neither XDG_CONFIG_HOME nor HOME is set: cannot find the config folder"),
    }
}

pub fn credentials_path() -> anyhow::Result<PathBuf> {
    Ok(config_dir()?.join(FILE_NAME))
}

/// The stored credentials, `None` when there is no file.
pub fn load() -> anyhow::Result<Option<Credentials>> {
    let path = credentials_path()?;
    load_from(&path)
}

pub fn load_from(path: &Path) -> anyhow::Result<Option<Credentials>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let c: Credentials = toml::from_str(&text).with_context(|| {
        format!(
            "{} is not a credentials file (run `gridbook login` again)",
            path.display()
        )
    })?;
    Ok(Some(c))
}

/// Writes `c` to the credentials file with mode 0600 (its folder 0700); returns the path.
pub fn store(c: &Credentials) -> anyhow::Result<PathBuf> {
    let path = credentials_path()?;
    store_at(&path, c)?;
    Ok(path)
}

pub fn store_at(path: &Path, c: &Credentials) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .context("the credentials path has no folder")?;
    create_private_dir(dir)?;
    let text = toml::to_string(c).context("encoding the credentials")?;
    let tmp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
    let mut f = open_private(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let written = f
        .write_all(b"# Written by `gridbook login`. Keep it private (mode 0600).\n")
        .and_then(|()| f.write_all(text.as_bytes()))
        .and_then(|()| f.sync_all());
    drop(f);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// Removes the credentials file; `false` when there was none.
pub fn remove() -> anyhow::Result<bool> {
    let path = credentials_path()?;
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_mode_0600() {
        let dir =
            std::env::temp_dir().join(format!("gridbook-cli-config-{}", uuid::Uuid::new_v4()));
        let path = dir.join("gridbook").join(FILE_NAME);
        let c = Credentials {
            api: "http://127.0.0.1:1".into(),
            key: "gbk_a_b".into(),
            key_id: "k".into(),
            email: "a@example.com".into(),
            role: "studio".into(),
        };
        store_at(&path, &c).unwrap();
        assert_eq!(load_from(&path).unwrap(), Some(c.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            let mode = std::fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o700);
        }
        // Overwriting keeps the mode and leaves no temporary file behind.
        store_at(
            &path,
            &Credentials {
                role: "provider".into(),
                ..c
            },
        )
        .unwrap();
        assert_eq!(load_from(&path).unwrap().unwrap().role, "provider");
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_file_is_none() {
        let p = std::env::temp_dir().join(format!("gridbook-cli-none-{}", uuid::Uuid::new_v4()));
        assert_eq!(load_from(&p).unwrap(), None);
    }
}
