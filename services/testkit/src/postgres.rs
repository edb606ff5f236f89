//! A private PostgreSQL server (Debian's binaries, `/usr/lib/postgresql/<v>/bin`) in a folder of
//! the test, on a free port: for the tests that stop and crash the database itself, which the
//! shared server the other tests use must never do. Run as the `postgres` user when the test
//! runs as root (PostgreSQL refuses root), as `cargo xtask services` does.
//!
//! [`PgPair`]: a primary and a streaming-replication standby with synchronous commit (an
//! acknowledged commit is flushed on both), for the failover tests: kill the primary with
//! SIGKILL, promote the standby, reach whichever is writable through one multi-host URL.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
        let pg = Postgres::unstarted(dir)?;
        pg.run("initdb", |c| {
            c.arg("-D").arg(&pg.data).args(["-A", "trust", "-U", "postgres", "--no-sync"]);
        })?;
        pg.start_again()?;
        Ok(pg)
    }

    /// The folder (owned by `postgres` when running as root) and a free port, nothing started.
    fn unstarted(dir: &Path) -> anyhow::Result<Postgres> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        if is_root() {
            let st = Command::new("chown").arg("-R").arg("postgres:postgres").arg(dir).status()?;
            anyhow::ensure!(st.success(), "chown postgres {}", dir.display());
        }
        Ok(Postgres { bin: bin_dir()?, data: dir.join("data"), dir: dir.to_owned(), port: free_port() })
    }

    /// Appends `lines` to `data/postgresql.conf` (later lines win).
    fn configure(&self, lines: &str) -> anyhow::Result<()> {
        use std::io::Write as _;
        let conf = self.data.join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .with_context(|| format!("opening {}", conf.display()))?;
        writeln!(f, "\n# gridbook_testkit::PgPair\n{lines}").with_context(|| format!("writing {}", conf.display()))
    }

    /// Runs one SQL statement with `psql` on database `postgres`; returns its unaligned,
    /// tuples-only output, trimmed.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let out = self
            .command("psql")
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-p"])
            .arg(self.port.to_string())
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql on port {} ({sql}): {}", self.port, String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The postmaster's process id (the first line of `data/postmaster.pid`).
    pub fn postmaster_pid(&self) -> anyhow::Result<u32> {
        let file = self.data.join("postmaster.pid");
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        text.lines().next().and_then(|l| l.trim().parse().ok()).with_context(|| format!("no pid in {}", file.display()))
    }

    /// SIGKILL to the postmaster and every process it started, at once: what a machine that
    /// loses power does to the server (no shutdown checkpoint, no goodbye to the clients and
    /// the standby). The next start would run crash recovery.
    pub fn kill9(&self) -> anyhow::Result<()> {
        let pid = self.postmaster_pid()?;
        let mut pids = vec![pid];
        pids.extend(children_of(pid));
        let st = Command::new("kill")
            .arg("-KILL")
            .args(pids.iter().map(|p| p.to_string()))
            .status()
            .context("running kill")?;
        anyhow::ensure!(st.success(), "kill -KILL {pids:?} failed");
        // Wait until the postmaster is gone (it is not our child: poll /proc).
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() {
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
                .unwrap_or(true);
            if zombie {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "postmaster {pid} still alive 10 s after SIGKILL");
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
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

/// The processes whose parent is `pid` (from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| s.rsplit(')').next()?.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

/// The standby's name in `synchronous_standby_names` (its walreceiver's `application_name`).
pub const STANDBY_NAME: &str = "standby";

/// A primary and a hot standby streaming from it, with synchronous commit: the primary has
/// `synchronous_standby_names = 'standby'` and `synchronous_commit = on`, so a commit returns
/// only once its WAL is flushed on the standby too (remote flush). The standby was made with
/// `pg_basebackup -R` through a physical replication slot, by the replication role
/// `replicator` (its own `pg_hba.conf` rule). The standby's own configuration says
/// `synchronous_standby_names = ''`: once promoted it runs alone, asynchronously, until a new
/// standby is attached (otherwise its first commit would wait for ever). Both stopped on drop.
#[derive(Debug)]
pub struct PgPair {
    pub primary: Postgres,
    pub standby: Postgres,
    database: String,
}

impl PgPair {
    /// Starts the primary in `dir/primary`, creates `database` on it, clones the standby into
    /// `dir/standby` and waits until the standby streams with `sync_state = 'sync'`.
    pub fn start(dir: &Path, database: &str) -> anyhow::Result<PgPair> {
        let primary = Postgres::unstarted(&dir.join("primary"))?;
        primary.run("initdb", |c| {
            c.arg("-D").arg(&primary.data).args(["-A", "trust", "-U", "postgres", "--no-sync"]);
        })?;
        let hba = primary.data.join("pg_hba.conf");
        std::fs::write(
            &hba,
            "local all all trust\n\
             host all all 127.0.0.1/32 trust\n\
             host replication replicator 127.0.0.1/32 trust\n",
        )
        .with_context(|| format!("writing {}", hba.display()))?;
        primary.configure(&format!(
            "wal_level = replica\nmax_wal_senders = 4\nmax_replication_slots = 4\n\
             synchronous_commit = on\nwal_sender_timeout = 5s\ncluster_name = 'primary'"
        ))?;
        primary.start_again()?;
        primary.psql("CREATE ROLE replicator WITH REPLICATION LOGIN")?;
        primary.psql(&format!("CREATE DATABASE \"{database}\""))?;

        let standby = Postgres::unstarted(&dir.join("standby"))?;
        let dsn = format!("host=127.0.0.1 port={} user=replicator application_name={STANDBY_NAME}", primary.port);
        standby.run("pg_basebackup", |c| {
            c.arg("-d").arg(&dsn).arg("-D").arg(&standby.data).args([
                "-R",
                "-X",
                "stream",
                "-C",
                "-S",
                STANDBY_NAME,
                "-c",
                "fast",
            ]);
        })?;
        standby.configure(&format!(
            "cluster_name = '{STANDBY_NAME}'\nsynchronous_standby_names = ''\nhot_standby = on"
        ))?;
        standby.start_again()?;
        // Only now synchronous: before the standby streamed, every commit would have waited.
        primary.psql(&format!("ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'"))?;
        primary.psql("SELECT pg_reload_conf()")?;
        let pair = PgPair { primary, standby, database: database.to_owned() };
        pair.wait_sync(Duration::from_secs(30))?;
        Ok(pair)
    }

    /// Waits until the primary reports the standby streaming as its synchronous standby.
    pub fn wait_sync(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let sql = format!(
            "SELECT state || '/' || sync_state FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}'"
        );
        loop {
            let got = self.primary.psql(&sql)?;
            if got == "streaming/sync" {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("standby not a streaming synchronous standby after {timeout:?} (pg_stat_replication: {got:?}); logs {} and {}", self.primary.log().display(), self.standby.log().display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The URL a service is given: both hosts, primary first, and
    /// `target_session_attrs=read-write`, so libpq (which diesel uses) tries them in order
    /// and keeps the first that accepts writes: the primary, or the standby once promoted.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{}?target_session_attrs=read-write&connect_timeout=2",
            self.primary.port, self.standby.port, self.database
        )
    }

    /// SIGKILL to the primary's postmaster and all its processes (see [`Postgres::kill9`]).
    pub fn kill9_primary(&self) -> anyhow::Result<()> {
        self.primary.kill9()
    }

    /// `pg_ctl promote -w` on the standby, then waits until it is out of recovery (accepts
    /// writes). Returns how long the promotion took.
    pub fn promote_standby(&self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        self.standby.run("pg_ctl", |c| {
            c.arg("-D").arg(&self.standby.data).args(["-w", "-t", "60", "promote"]);
        })?;
        let deadline = t + Duration::from_secs(60);
        while self.standby.psql("SELECT pg_is_in_recovery()")? != "f" {
            anyhow::ensure!(Instant::now() < deadline, "standby still in recovery 60 s after pg_ctl promote");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(t.elapsed())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.crash();
    }
}
