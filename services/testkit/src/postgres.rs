//! A private PostgreSQL server (Debian's binaries, `/usr/lib/postgresql/<v>/bin`) in a folder of
//! the test, on a free port: for the tests that stop and crash the database itself, which the
//! shared server the other tests use must never do. Run as the `postgres` user when the test
//! runs as root (PostgreSQL refuses root), as `cargo xtask services` does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::free_port;

/// The server; stopped (immediately) on drop.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    dir: PathBuf,
    pub port: u16,
}

fn bin_dir() -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: install PostgreSQL (cargo xtask services start does)")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((v, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, p)| p).context("no PostgreSQL version under /usr/lib/postgresql has pg_ctl")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

impl Postgres {
    /// `initdb` in `dir/data` (trust authentication, user `postgres`, no fsync at initdb only)
    /// and a start on a free port; waits until it accepts connections.
    pub fn start(dir: &Path) -> anyhow::Result<Postgres> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if is_root() {
            let st = Command::new("chown").arg("-R").arg("postgres:postgres").arg(dir).status()?;
            anyhow::ensure!(st.success(), "chown postgres {}", dir.display());
        }
        let pg = Postgres { bin: bin_dir()?, data: dir.join("data"), dir: dir.to_owned(), port: free_port() };
        pg.run("initdb", |c| {
            c.arg("-D").arg(&pg.data).args(["-A", "trust", "-U", "postgres", "--no-sync"]);
        })?;
        pg.start_again()?;
        Ok(pg)
    }

    fn command(&self, bin: &str) -> Command {
        let exe = self.bin.join(bin);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe).current_dir("/");
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, bin: &str, args: impl FnOnce(&mut Command)) -> anyhow::Result<()> {
        let mut c = self.command(bin);
        args(&mut c);
        let out = c.stdin(Stdio::null()).output().with_context(|| format!("running {bin}"))?;
        if !out.status.success() {
            bail!("{bin} failed ({}): {}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Starts the server (again, after [`Postgres::crash`]); waits until it accepts connections
    /// (crash recovery included).
    pub fn start_again(&self) -> anyhow::Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=on",
            self.port,
            self.dir.display()
        );
        self.run("pg_ctl", |c| {
            c.arg("-D").arg(&self.data).args(["-o", &opts, "-l"]).arg(self.log()).args(["-w", "-t", "60", "start"]);
        })
    }

    /// Stops the server the way a power cut would (`pg_ctl stop -m immediate`: every backend
    /// quits at once, no checkpoint; the next start replays the WAL).
    pub fn crash(&self) -> anyhow::Result<()> {
        self.run("pg_ctl", |c| {
            c.arg("-D").arg(&self.data).args(["-m", "immediate", "-w", "stop"]);
        })
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.crash();
    }
}
