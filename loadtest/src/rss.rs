//! `loadtest rss`: the executor's memory on a bulk file (issue 17: a 50 MB input runs within
//! 500 MB RSS, output appears while it runs).
//!
//! For each `--mb` size it writes a JSONL file of generated sentences of that size, runs the
//! `executor run --workload embed` binary on it as a child process, samples the child's
//! `/proc/PID/status` (`VmHWM`: peak resident set; `VmRSS`: now) every `--sample-ms`, notes when
//! the output file gets its first byte, and stops the child (SIGKILL) after `--seconds` if it
//! has not finished (on a 2-core CPU a 50 MB file of embeddings takes hours; the streamed
//! executor's memory is flat after its first chunks, so a bounded window shows the peak). With
//! `--baseline-executor` an older binary runs the same way in the same invocation.
//!
//! Prints, per binary and size: lines and items written, time to the first output byte, peak
//! RSS, the RSS at a quarter, half, three quarters and the end of the window (the trend), and
//! the figure line `peak RSS … MB  target 500 MB  ratio …`. Nothing is asserted.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Input sizes in MB (comma-separated), e.g. `5,50`.
    #[arg(long, value_delimiter = ',', default_value = "5,50")]
    mb: Vec<f64>,
    /// Longest a run may go before it is stopped (its peak so far is reported).
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// The executor binary (default: $CARGO_TARGET_DIR or target, release if built, else debug).
    #[arg(long)]
    executor: Option<PathBuf>,
    /// An older executor binary measured the same way in this run (the path before streaming).
    #[arg(long)]
    baseline_executor: Option<PathBuf>,
    /// Extra arguments for `executor run` (e.g. `--chunk-items=256`), comma-separated.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    executor_args: Vec<String>,
    /// Working folder for the generated inputs and the outputs.
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    sample_ms: u64,
    #[arg(long, default_value_t = 20261203)]
    seed: u64,
    /// The RSS target (MB) the figure is compared with.
    #[arg(long, default_value_t = 500.0)]
    target_mb: f64,
}

/// Writes about `mb` MB of `{"custom_id","input"}` lines of generated sentences; returns lines.
fn write_input(path: &Path, mb: f64, seed: u64) -> anyhow::Result<u64> {
    const WORDS: &[&str] = &[
        "the", "market", "clears", "compute", "orders", "at", "dawn", "while", "providers", "bid",
        "a", "river", "runs", "past", "quiet", "mountain", "towns", "under", "bright", "stars",
        "studios", "send", "large", "batches", "of", "sentences", "to", "embed", "each", "night",
        "prices", "move", "slowly", "when", "supply", "is", "plenty", "and", "demand", "falls",
    ];
    let target = (mb * 1_000_000.0) as u64;
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let mut x = seed | 1;
    let mut next = || {
        // xorshift64*: reproducible sentences without a dependency.
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let (mut written, mut lines) = (0u64, 0u64);
    let mut line = String::new();
    while written < target {
        line.clear();
        let n = 6 + next() % 20;
        let words: Vec<&str> = (0..n).map(|_| WORDS[(next() % WORDS.len() as u64) as usize]).collect();
        line.push_str(&format!("{{\"custom_id\":\"s{lines}\",\"input\":\"{}\"}}\n", words.join(" ")));
        w.write_all(line.as_bytes())?;
        written += line.len() as u64;
        lines += 1;
    }
    w.flush()?;
    Ok(lines)
}

/// `VmHWM` and `VmRSS` of a process, in kB.
fn mem_kb(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

fn default_executor() -> anyhow::Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("executor"))
        .find(|p| p.exists())
        .with_context(|| format!("no executor binary under {}: cargo build --release -p executor, or pass --executor", target.display()))
}

struct Measured {
    completed: bool,
    wall: Duration,
    first_byte: Option<Duration>,
    peak_kb: u64,
    /// (seconds since start, VmRSS kB)
    samples: Vec<(f64, u64)>,
    output_lines: usize,
}

fn measure(exe: &Path, extra: &[String], input: &Path, output: &Path, args: &Args) -> anyhow::Result<Measured> {
    for p in [output.to_owned(), executor::local::OutputPaths::for_output(output).progress] {
        let _ = std::fs::remove_file(p);
    }
    let started = Instant::now();
    let mut child = std::process::Command::new(exe)
        .args(["run", "--workload", "embed", "--input"])
        .arg(input)
        .arg("--output")
        .arg(output)
        .arg("--no-resume")
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let pid = child.id();
    let (mut peak_kb, mut samples, mut first_byte) = (0u64, Vec::new(), None);
    let limit = Duration::from_secs(args.seconds);
    let completed = loop {
        if let Some((hwm, rss)) = mem_kb(pid) {
            peak_kb = peak_kb.max(hwm);
            samples.push((started.elapsed().as_secs_f64(), rss));
        }
        if first_byte.is_none() && std::fs::metadata(output).is_ok_and(|m| m.len() > 0) {
            first_byte = Some(started.elapsed());
        }
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                anyhow::bail!("{} exited with {status}: {}", exe.display(), err.trim());
            }
            break true;
        }
        if started.elapsed() >= limit {
            child.kill()?;
            child.wait()?;
            break false;
        }
        std::thread::sleep(Duration::from_millis(args.sample_ms));
    };
    let wall = started.elapsed();
    if first_byte.is_none() && std::fs::metadata(output).is_ok_and(|m| m.len() > 0) {
        first_byte = Some(wall);
    }
    let output_lines = std::fs::read(output).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0);
    Ok(Measured { completed, wall, first_byte, peak_kb, samples, output_lines })
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let dir = args.dir.clone().unwrap_or_else(|| std::env::temp_dir().join("gridbook-loadtest-rss"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let exe = match &args.executor {
        Some(p) => p.clone(),
        None => default_executor()?,
    };
    let mut binaries = vec![("streamed", exe)];
    if let Some(b) = &args.baseline_executor {
        binaries.push(("baseline", b.clone()));
    }
    println!(
        "RSS of `executor run --workload embed` on generated sentences; window {} s per run, sampled every {} ms",
        args.seconds, args.sample_ms
    );
    for &mb in &args.mb {
        let input = dir.join(format!("in-{mb}mb.jsonl"));
        let lines = write_input(&input, mb, args.seed)?;
        let bytes = std::fs::metadata(&input)?.len();
        for (name, exe) in &binaries {
            let output = dir.join(format!("out-{name}-{mb}mb.jsonl"));
            let extra: &[String] = if *name == "streamed" { &args.executor_args } else { &[] };
            let m = measure(exe, extra, &input, &output, &args)?;
            let mbf = |kb: u64| kb as f64 / 1024.0;
            let at = |q: f64| {
                let t = m.wall.as_secs_f64() * q;
                m.samples.iter().rev().find(|(s, _)| *s <= t).map_or(0.0, |(_, kb)| mbf(*kb))
            };
            println!(
                "{name} {}: input {:.1} MB, {lines} lines; {} after {:.1} s, {} output lines; first output byte {}",
                exe.display(),
                bytes as f64 / 1e6,
                if m.completed { "completed" } else { "stopped" },
                m.wall.as_secs_f64(),
                m.output_lines,
                m.first_byte.map_or("never".into(), |d| format!("after {:.2} s", d.as_secs_f64())),
            );
            println!(
                "  RSS trend (MB) at 25/50/75/100% of the window: {:.0} / {:.0} / {:.0} / {:.0}",
                at(0.25),
                at(0.5),
                at(0.75),
                at(1.0)
            );
            let peak = mbf(m.peak_kb);
            println!(
                "  figure: peak RSS {peak:.0} MB ({mb} MB input)   target <= {:.0} MB   ratio {:.2} (<= 1 meets it)",
                args.target_mb,
                peak / args.target_mb
            );
        }
    }
    Ok(())
}
