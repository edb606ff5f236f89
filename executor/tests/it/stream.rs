//! Local mode streamed (issue 17): bounded chunks, the commitment built incrementally, output
//! written while the run goes, a restart resuming from what was written.

use executor::commitment::{Commitment, Hash, Manifest};
use executor::embed::{EmbedConfig, EmbedWorkload, Embedder};
use executor::error::{ExecutorError, Result};
use executor::local::{OutputFormat, RunOptions, run_file_with};
use executor::runtime::RunControl;
use executor::workload::{FieldError, ItemOutput, Workload};
use serde_json::{Map, Value};

use crate::common;

fn workload() -> EmbedWorkload {
    EmbedWorkload {
        embedder: Embedder::load(common::cpu(), &common::models(), EmbedConfig::default()).unwrap(),
    }
}

/// `n` lines: mostly sentences, every 7th one refused (no input), a blank line now and then.
fn input_text(n: usize) -> String {
    let words = ["market", "compute", "the", "river", "bright", "order", "slow", "green", "node", "price"];
    let mut s = String::new();
    for i in 0..n {
        if i % 11 == 5 {
            s.push('\n');
        }
        if i % 7 == 3 {
            s.push_str(&format!("{{\"custom_id\":\"c{i}\"}}\n"));
        } else {
            let text: Vec<&str> = (0..(3 + i % 9)).map(|k| words[(i * 7 + k * 3) % words.len()]).collect();
            s.push_str(&serde_json::json!({"custom_id": format!("c{i}"), "input": text.join(" ")}).to_string());
            s.push('\n');
        }
    }
    s
}

fn opts(chunk_items: usize) -> RunOptions {
    RunOptions { format: OutputFormat::Gridbook, resume: true, chunk_items }
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The commitment file of a run in chunks of 4: its root is the one `Commitment::build` (the
/// whole-batch construction) gives over the output lines' `(custom_id, sha256)` in order, its
/// items are those lines, and the run's temporary files are gone.
#[test]
fn a_streamed_run_commits_the_root_of_the_whole_batch() {
    let dir = common::tmp_dir("stream-root");
    let input = dir.join("in.jsonl");
    std::fs::write(&input, input_text(60)).unwrap();
    let out = dir.join("out.jsonl");
    let mut w = workload();
    let report = run_file_with(&mut w, &input, &out, &opts(4), &|_| {}, &|_| {}).unwrap();
    let outputs = lines(&out);
    let errors = lines(&report.paths.errors);
    assert_eq!((report.succeeded, report.failed), (outputs.len(), errors.len()));
    assert_eq!(report.failed, (0..60).filter(|i| i % 7 == 3).count());
    // Outputs in input order, errors in line order.
    let ids: Vec<usize> = outputs.iter().map(|o| o["custom_id"].as_str().unwrap()[1..].parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let err_lines: Vec<u64> = errors.iter().map(|e| e["line"].as_u64().unwrap()).collect();
    assert!(err_lines.windows(2).all(|w| w[0] < w[1]), "{err_lines:?}");
    let items: Vec<(String, Hash)> = outputs
        .iter()
        .map(|o| {
            let h: Hash = hex::decode(o["sha256"].as_str().unwrap()).unwrap().try_into().unwrap();
            (o["custom_id"].as_str().unwrap().to_owned(), h)
        })
        .collect();
    let whole = Commitment::build(&items);
    let doc: Value = serde_json::from_slice(&std::fs::read(&report.paths.commitment).unwrap()).unwrap();
    let written: Commitment = serde_json::from_value(doc["commitment"].clone()).unwrap();
    assert_eq!(written, whole, "incremental commitment == whole-batch commitment");
    assert_eq!(report.merkle_root, whole.merkle_root);
    assert_eq!(written.recompute_root().unwrap(), whole.merkle_root);
    let _: Manifest = serde_json::from_value(doc["manifest"].clone()).unwrap();
    assert!(!report.paths.items.exists() && !report.paths.progress.exists());
    // The in-memory path of the agent gives the same bytes and root for the same lines.
    let run = executor::local::run_reader(
        &mut w,
        std::io::Cursor::new(std::fs::read(&input).unwrap()),
        0,
        executor::local::Artifacts::Inline,
        &|_| {},
        None,
    )
    .unwrap();
    assert_eq!(run.commitment.merkle_root, whole.merkle_root);
    assert_eq!(run.succeeded, report.succeeded);
}

/// An embedder that stops the run (as a kill would) at its `fail_at`-th model call.
struct Interrupted {
    inner: EmbedWorkload,
    calls: usize,
    fail_at: usize,
}

impl Workload for Interrupted {
    type Input = String;
    fn id(&self) -> &'static str {
        self.inner.id()
    }
    fn parse(&self, id: &str, fields: &Map<String, Value>) -> std::result::Result<String, FieldError> {
        self.inner.parse(id, fields)
    }
    fn run_controlled(
        &mut self,
        inputs: &[String],
        progress: &dyn Fn(u64),
        control: Option<&RunControl>,
    ) -> Result<Vec<std::result::Result<ItemOutput, String>>> {
        self.calls += 1;
        if self.calls == self.fail_at {
            return Err(ExecutorError::Cancelled);
        }
        self.inner.run_controlled(inputs, progress, control)
    }
    fn manifest(&self) -> Manifest {
        self.inner.manifest()
    }
}

/// A run stopped after a few chunks left their lines written and a progress file; the next run
/// resumes after them and the files end up byte-equal to an uninterrupted run's. A changed
/// input is refused; `resume: false` starts over.
#[test]
fn an_interrupted_run_resumes_from_what_it_wrote() {
    let dir = common::tmp_dir("stream-resume");
    let input = dir.join("in.jsonl");
    std::fs::write(&input, input_text(50)).unwrap();
    let clean = dir.join("clean.jsonl");
    let mut w = Interrupted { inner: workload(), calls: 0, fail_at: 0 };
    let clean_report = run_file_with(&mut w, &input, &clean, &opts(4), &|_| {}, &|_| {}).unwrap();
    assert_eq!(clean_report.resumed_lines, None);

    let out = dir.join("out.jsonl");
    w.calls = 0;
    w.fail_at = 5;
    let e = run_file_with(&mut w, &input, &out, &opts(4), &|_| {}, &|_| {}).unwrap_err();
    assert!(matches!(e, ExecutorError::Cancelled), "{e}");
    let paths = executor::local::OutputPaths::for_output(&out);
    assert!(paths.progress.exists(), "a progress file stays after an interruption");
    let written = lines(&out).len();
    assert!(written >= 4 * 3, "the first chunks' lines are written: {written}");
    assert!(!paths.commitment.exists());
    // A half-written line after the last complete chunk (a kill mid-write) is cut off.
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new().append(true).open(&out).unwrap();
        f.write_all(b"{\"custom_id\":\"half").unwrap();
    }

    w.fail_at = 0;
    let report = run_file_with(&mut w, &input, &out, &opts(4), &|_| {}, &|_| {}).unwrap();
    assert!(report.resumed_lines.unwrap() > 0, "{:?}", report.resumed_lines);
    assert_eq!((report.succeeded, report.failed), (clean_report.succeeded, clean_report.failed));
    assert_eq!(report.merkle_root, clean_report.merkle_root);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&clean).unwrap());
    assert_eq!(
        std::fs::read(&paths.errors).unwrap(),
        std::fs::read(&clean_report.paths.errors).unwrap()
    );
    assert_eq!(
        std::fs::read(&paths.commitment).unwrap(),
        std::fs::read(&clean_report.paths.commitment).unwrap()
    );

    // Interrupt again, then change the input's first line: refused, named, with the way out.
    let _ = std::fs::remove_file(&paths.commitment);
    w.calls = 0;
    w.fail_at = 3;
    run_file_with(&mut w, &input, &out, &opts(4), &|_| {}, &|_| {}).unwrap_err();
    let text = input_text(50).replacen("c0", "z0", 1);
    std::fs::write(&input, &text).unwrap();
    w.fail_at = 0;
    let e = run_file_with(&mut w, &input, &out, &opts(4), &|_| {}, &|_| {}).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ExecutorError::Resume { .. }) && msg.contains("--no-resume") && msg.contains("input"), "{msg}");
    let fresh = RunOptions { resume: false, ..opts(4) };
    let report = run_file_with(&mut w, &input, &out, &fresh, &|_| {}, &|_| {}).unwrap();
    assert_eq!(report.resumed_lines, None);
    assert_eq!(lines(&out)[0]["custom_id"], "z0");
}

/// `executor run` killed with SIGKILL after its first lines appeared: a rerun resumes, says so,
/// and writes what an uninterrupted run writes.
#[test]
fn executor_run_killed_mid_run_resumes() {
    let dir = common::tmp_dir("stream-kill");
    let input = dir.join("in.jsonl");
    std::fs::write(&input, input_text(400)).unwrap();
    let cmd = |out: &str| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_executor"));
        c.args(["run", "--workload", "embed", "--chunk-items", "8", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(dir.join(out))
            .env("RUST_LOG", "warn");
        c
    };
    let clean = cmd("clean.jsonl").output().unwrap();
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stderr));

    let out = dir.join("out.jsonl");
    let mut child = cmd("out.jsonl")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait (on the file, not a clock) for the output to be growing, then kill -9.
    loop {
        let n = std::fs::read(&out).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0);
        if n >= 24 {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("executor ended before it was killed: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let rerun = cmd("out.jsonl").output().unwrap();
    let stdout = String::from_utf8_lossy(&rerun.stdout);
    assert!(rerun.status.success(), "{}", String::from_utf8_lossy(&rerun.stderr));
    assert!(stdout.contains("resumed after input line"), "{stdout}");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(dir.join("clean.jsonl")).unwrap());
    assert_eq!(
        std::fs::read(dir.join("out.commitment.json")).unwrap(),
        std::fs::read(dir.join("clean.commitment.json")).unwrap()
    );
}

/// Many bad lines: stderr shows the first 5 with their line numbers and counts the rest.
#[test]
fn executor_run_prints_the_first_five_errors() {
    let dir = common::tmp_dir("stream-first-errors");
    let input = dir.join("in.jsonl");
    let text: String = (0..8).map(|i| format!("{{\"custom_id\":\"e{i}\"}}\n")).collect();
    std::fs::write(&input, text).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_executor"))
        .args(["run", "--workload", "embed", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(dir.join("out.jsonl"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    for i in 0..5 {
        assert!(stderr.contains(&format!("line {} (e{i}): input: missing", i + 1)), "{stderr}");
    }
    assert!(!stderr.contains("line 6 (e5)"), "{stderr}");
    assert!(stderr.contains("and 3 more"), "{stderr}");
    assert_eq!(stderr.matches("error: ").count(), 1, "{stderr}");
}
