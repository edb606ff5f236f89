//! The market's NATS keys, in one folder (`.gridbook/nats/keys` for `cargo xtask`, a test's own
//! folder for the testkit), each seed in its own file with mode 0600, never committed:
//!
//! | file | kind | who holds it |
//! |---|---|---|
//! | `issuer.nk` | account | the API's auth callout: signs node JWTs |
//! | `engine.nk`, `settlement.nk`, `api.nk` | user | the market services (bypass the callout) |
//! | `sys.nk` | user | the API: `CONNZ`/`KICK` in the system account (revoking live nodes) |
//!
//! [`KeyDir::server_config`] writes the nats-server `accounts` / `authorization` block from the
//! public keys.

use std::path::{Path, PathBuf};

use nkeys::KeyPair;

use crate::{ACCOUNT, AuthError, SYSTEM_ACCOUNT};

/// A principal the market runs itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Engine,
    Settlement,
    Api,
    /// The system-account user (server monitoring and kicks).
    Sys,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::Engine,
        Service::Settlement,
        Service::Api,
        Service::Sys,
    ];

    pub fn file_name(self) -> &'static str {
        match self {
            Service::Engine => "engine.nk",
            Service::Settlement => "settlement.nk",
            Service::Api => "api.nk",
            Service::Sys => "sys.nk",
        }
    }
}

pub const ISSUER_FILE: &str = "issuer.nk";

/// The folder of seeds.
#[derive(Clone, Debug)]
pub struct KeyDir {
    dir: PathBuf,
}

fn io(path: &Path, source: std::io::Error) -> AuthError {
    AuthError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads a seed file (first non-empty line) into a key pair.
pub fn load_seed(path: &Path) -> Result<KeyPair, AuthError> {
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    let seed = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    KeyPair::from_seed(seed).map_err(|e| AuthError::Nkey(format!("{}: {e}", path.display())))
}

fn write_secret(path: &Path, text: &str) -> Result<(), AuthError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| io(path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| io(path, e))
}

impl KeyDir {
    /// The folder, with every seed created (mode 0600) where missing; existing seeds are kept.
    pub fn ensure(dir: &Path) -> Result<KeyDir, AuthError> {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let kd = KeyDir {
            dir: dir.to_owned(),
        };
        let issuer = kd.issuer_file();
        if !issuer.exists() {
            let seed = KeyPair::new_account()
                .seed()
                .map_err(|e| AuthError::Nkey(e.to_string()))?;
            write_secret(&issuer, &format!("{seed}\n"))?;
        }
        for s in Service::ALL {
            let f = kd.seed_file(s);
            if !f.exists() {
                let seed = KeyPair::new_user()
                    .seed()
                    .map_err(|e| AuthError::Nkey(e.to_string()))?;
                write_secret(&f, &format!("{seed}\n"))?;
            }
        }
        Ok(kd)
    }

    /// An existing folder (nothing is created).
    pub fn open(dir: &Path) -> KeyDir {
        KeyDir {
            dir: dir.to_owned(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn seed_file(&self, s: Service) -> PathBuf {
        self.dir.join(s.file_name())
    }

    pub fn issuer_file(&self) -> PathBuf {
        self.dir.join(ISSUER_FILE)
    }

    pub fn public_key(&self, s: Service) -> Result<String, AuthError> {
        Ok(load_seed(&self.seed_file(s))?.public_key())
    }

    /// The nats-server configuration block: account `GRIDBOOK` (JetStream on) with the three
    /// service users, account `SYS` with the system user, and the auth callout for everyone
    /// else (issuer = `issuer.nk`'s public key, the services in `auth_users`). No connection is
    /// anonymous: a client without a valid credential is refused by the callout.
    pub fn server_config(&self) -> Result<String, AuthError> {
        let issuer = load_seed(&self.issuer_file())?.public_key();
        let engine = self.public_key(Service::Engine)?;
        let settlement = self.public_key(Service::Settlement)?;
        let api = self.public_key(Service::Api)?;
        let sys = self.public_key(Service::Sys)?;
        Ok(format!(
            r#"# Written by gridbook-natsauth from the seeds in {dir}: do not edit.
accounts {{
  {ACCOUNT} {{
    jetstream: enabled
    users: [
      {{ nkey: "{engine}" }}
      {{ nkey: "{settlement}" }}
      {{ nkey: "{api}" }}
    ]
  }}
  {SYSTEM_ACCOUNT} {{
    users: [ {{ nkey: "{sys}" }} ]
  }}
}}
system_account: {SYSTEM_ACCOUNT}
authorization {{
  auth_callout {{
    issuer: "{issuer}"
    account: {ACCOUNT}
    auth_users: [ "{engine}", "{settlement}", "{api}", "{sys}" ]
  }}
}}
"#,
            dir = self.dir.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_creates_private_seeds_once_and_the_config_names_their_public_keys() {
        let dir = std::env::temp_dir().join(format!("natsauth-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let kd = KeyDir::ensure(&dir).unwrap();
        let api = kd.public_key(Service::Api).unwrap();
        let again = KeyDir::ensure(&dir).unwrap();
        assert_eq!(
            again.public_key(Service::Api).unwrap(),
            api,
            "existing seeds are kept"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(kd.issuer_file())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let conf = kd.server_config().unwrap();
        assert!(conf.contains(&api));
        assert!(conf.contains(&load_seed(&kd.issuer_file()).unwrap().public_key()));
        for s in Service::ALL {
            let seed = std::fs::read_to_string(kd.seed_file(s)).unwrap();
            assert!(
                !conf.contains(seed.trim()),
                "no seed in the server's configuration"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
