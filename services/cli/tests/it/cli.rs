//! Runs the built `gridbook` binary with a config folder of its own.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use gridbook_testkit::TempDir;
use tokio::io::AsyncWriteExt as _;

/// The binary under one test's config folder.
pub struct Gridbook {
    dir: TempDir,
    /// Sent as `GRIDBOOK_API` when set.
    pub api: Option<String>,
    /// Sent as `GRIDBOOK_API_KEY` when set.
    pub key: Option<String>,
}

/// What one run printed, and how it ended.
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    /// Asserts success; the stdout.
    pub fn expect_ok(&self) -> &str {
        assert!(self.ok(), "gridbook failed: {self:?}");
        &self.stdout
    }
    /// Asserts a non-zero exit; the stderr.
    pub fn expect_err(&self) -> &str {
        assert!(
            !self.ok() && self.code.is_some(),
            "gridbook should have failed: {self:?}"
        );
        &self.stderr
    }
    /// The stdout as JSON (panics with the output otherwise).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

impl Gridbook {
    pub fn new(tag: &str, api: &str) -> Gridbook {
        Gridbook {
            dir: TempDir::new(&format!("cli-{tag}")),
            api: Some(api.to_owned()),
            key: None,
        }
    }

    pub fn with_key(mut self, key: &str) -> Gridbook {
        self.key = Some(key.to_owned());
        self
    }

    /// `$XDG_CONFIG_HOME` of the runs.
    pub fn config_home(&self) -> &Path {
        self.dir.path()
    }

    pub fn credentials_file(&self) -> PathBuf {
        self.config_home().join("gridbook").join("credentials.toml")
    }

    /// A file in the test's folder.
    pub fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub async fn run(&self, args: &[&str]) -> Out {
        self.run_with_stdin(args, None).await
    }

    pub async fn run_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gridbook"));
        cmd.args(args)
            .env("XDG_CONFIG_HOME", self.dir.path())
            .env("HOME", self.dir.path())
            .env_remove("GRIDBOOK_API")
            .env_remove("GRIDBOOK_API_KEY")
            .env_remove("GRIDBOOK_EMAIL")
            .env_remove("GRIDBOOK_PASSWORD")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(a) = &self.api {
            cmd.env("GRIDBOOK_API", a);
        }
        if let Some(k) = &self.key {
            cmd.env("GRIDBOOK_API_KEY", k);
        }
        let mut child = cmd.spawn().expect("run the gridbook binary");
        if let Some(text) = stdin {
            let mut w = child.stdin.take().unwrap();
            w.write_all(text.as_bytes()).await.unwrap();
            drop(w);
        }
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(300),
            child.wait_with_output(),
        )
        .await
        .unwrap_or_else(|_| panic!("gridbook {args:?} ran for 5 minutes"))
        .unwrap();
        let out = Out {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        // GRIDBOOK_CLI_TEST_ECHO=1 shows every run (with --nocapture).
        if std::env::var_os("GRIDBOOK_CLI_TEST_ECHO").is_some() {
            eprintln!(
                "$ gridbook {}\n{}{}[exit {:?}]\n",
                args.join(" "),
                out.stdout,
                out.stderr,
                out.code
            );
        }
        out
    }
}

/// `n` embedding lines `{"custom_id":"req-00000","input":...}`.
pub fn corpus(n: usize) -> String {
    let subjects = [
        "The weather",
        "A small cat",
        "The stadium",
        "Our new GPU",
        "This recipe",
        "The river",
    ];
    let ends = [
        "lovely today",
        "far too loud",
        "oddly quiet",
        "faster than before",
        "a bit salty",
        "cold in winter",
    ];
    (0..n)
        .map(|i| {
            let text = format!("{} is {} (item {i})", subjects[i % 6], ends[(i / 6) % 6]);
            serde_json::json!({"custom_id": format!("req-{i:05}"), "input": text}).to_string()
                + "\n"
        })
        .collect()
}
