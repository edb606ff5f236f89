//! `loadtest calibrate-images`: the image tolerance of the verifier
//! (`executor::registry::IMAGE_MAX_MEAN_ABS_DIFF`), calibrated on honest renders of the real
//! pipelines, and how far plausible cheats land.
//!
//! The reference side of every pair is the verifier's own executor (`registry::Reference`: CPU,
//! one intra-op thread, terrain one item per model call). The honest side renders the same
//! input lines with the executor library under a configuration an honest provider could use:
//! ONNX Runtime intra-op threads 1 (a fresh runtime and session: run-to-run determinism), 2 and
//! 0 (ONNX Runtime's default), and for terrain `batch_size` 4 (four items per model call). The
//! graph optimisation level is not a setting of the executor (`runtime.rs` always uses `All`),
//! so it is not varied. Every render goes through `registry::Loaded` (the line parsed by the
//! workload, `Workload::run`), the code path of `executor run`, the agent and the verifier.
//!
//! Per pair: `registry::mean_abs_diff` (the verifier's figure: mean |Δ| per 8-bit RGBA channel),
//! the max |Δ| per channel, and whether the PNG bytes are identical. Dishonest renders of the
//! same items — another seed, another difficulty (terrain), fewer steps or another prompt (SD) —
//! are compared with the same reference.
//!
//! `RENDER-SD15-512` runs on `executor/fixtures/tiny-sd`: a STRUCTURAL FIXTURE with random
//! weights, not Stable Diffusion; its figures show the pipeline's arithmetic across
//! configurations, not what real SD 1.5 weights do.
//!
//! `loadtest verification-overhead`: the extra compute the verifier spends per assignment, as a
//! share of the work, measured with the same reference setup on both sides (the work: the whole
//! assignment's items run through `registry::Reference`; the re-run: the `sample_items` the
//! verifier draws, `gridbook_settlement::verify::sample`, run through it again).
//!
//! Nothing is asserted: both print what they measured.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use executor::registry::{self, Loaded, Options, Reference, WorkloadKind};
use executor::runtime::{Provider, Runtime, RuntimeConfig};
use executor::terrain::TerrainConfig;
use executor::workload::Workload;
use gridbook_settlement::verify;
use serde_json::{Map, Value, json};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Terrain items (seeds) per configuration.
    #[arg(long, default_value_t = 50)]
    terrain_seeds: usize,
    /// SD items (seeds) per configuration.
    #[arg(long, default_value_t = 50)]
    sd_seeds: usize,
    /// The SD pipeline directory (default: the tiny random-weight fixture).
    #[arg(long)]
    sd_model_dir: Option<PathBuf>,
    /// Floor of the proposed bound (mean |Δ| out of 255): the margin for what this run cannot
    /// measure (CPU vs CUDA), used when the honest pairs here are bit-identical. 2.0 = the
    /// verifier's bound before this calibration.
    #[arg(long, default_value_t = 2.0)]
    floor: f64,
}

#[derive(clap::Args, Debug)]
pub struct OverheadArgs {
    /// Items of one EMBED-MINILM-L6 assignment (1 unit = 1,000 items).
    #[arg(long, default_value_t = 1_000)]
    embed_items: usize,
    /// Items the verifier re-runs (services/settlement DEFAULT_SAMPLE_ITEMS).
    #[arg(long, default_value_t = verify::DEFAULT_SAMPLE_ITEMS)]
    sample_items: usize,
    /// Timed repetitions (the median is printed).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// The SD pipeline directory (default: the tiny random-weight fixture).
    #[arg(long)]
    sd_model_dir: Option<PathBuf>,
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../executor/fixtures/tiny-sd")
}

type Line = (String, Map<String, Value>);

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("object literal"),
    }
}

/// Runs `lines` through a loaded workload; the PNG of each item and the wall time of the run.
fn render(w: &mut Loaded, lines: &[Line]) -> anyhow::Result<(Vec<Vec<u8>>, Duration)> {
    let inputs = lines
        .iter()
        .map(|(id, f)| {
            w.parse(id, f)
                .map_err(|e| anyhow!("{id}: {}: {}", e.field, e.message))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let t = Instant::now();
    let outs = w.run(&inputs, &|_| {})?;
    let el = t.elapsed();
    let pngs = outs
        .into_iter()
        .zip(lines)
        .map(|(o, (id, _))| {
            let o = o.map_err(|e| anyhow!("{id}: {e}"))?;
            o.artifact
                .or_else(|| registry::png_of(&o.record))
                .ok_or_else(|| anyhow!("{id}: no image"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((pngs, el))
}

/// A workload of `kind` on its own fresh CPU runtime with `threads` intra-op threads.
fn load(kind: WorkloadKind, threads: usize, opts: &Options) -> anyhow::Result<Loaded> {
    let rt = Runtime::new(RuntimeConfig {
        dylib_path: None,
        provider: Provider::Cpu,
        intra_threads: threads,
    })?;
    // The runtime's session cache is not needed after loading: the workload holds its sessions.
    Ok(Loaded::load(kind, &rt, opts)?)
}

#[derive(Clone, Copy)]
struct Pair {
    mean: f64,
    max: u8,
    identical: bool,
}

fn pair(a: &[u8], b: &[u8]) -> anyhow::Result<Pair> {
    let mean = registry::mean_abs_diff(a, b).map_err(|e| anyhow!(e))?;
    let dec = |p: &[u8]| {
        image::load_from_memory_with_format(p, image::ImageFormat::Png).map(|i| i.to_rgba8())
    };
    let (x, y) = (dec(a)?, dec(b)?);
    let max = x
        .as_raw()
        .iter()
        .zip(y.as_raw())
        .map(|(p, q)| p.abs_diff(*q))
        .max()
        .unwrap_or(0);
    Ok(Pair {
        mean,
        max,
        identical: a == b,
    })
}

fn pairs(a: &[Vec<u8>], b: &[Vec<u8>]) -> anyhow::Result<Vec<Pair>> {
    a.iter().zip(b).map(|(x, y)| pair(x, y)).collect()
}

/// Nearest-rank quantile of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let r = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[r - 1]
}

fn sorted_means(ps: &[Pair]) -> Vec<f64> {
    let mut v: Vec<f64> = ps.iter().map(|p| p.mean).collect();
    v.sort_by(f64::total_cmp);
    v
}

fn honest_row(label: &str, ps: &[Pair], per_render: Duration) {
    let m = sorted_means(ps);
    let ident = ps.iter().filter(|p| p.identical).count();
    let maxd = ps.iter().map(|p| p.max).max().unwrap_or(0);
    println!(
        "| {label:<34} | {:>5} | {:<19} | {:>10.4} | {:>8.4} | {:>9.4} | {:>6} | {:>8.1} |",
        ps.len(),
        format!(
            "{ident}/{} ({:.1}%)",
            ps.len(),
            100.0 * ident as f64 / ps.len().max(1) as f64
        ),
        m.last().copied().unwrap_or(f64::NAN),
        quantile(&m, 0.99),
        m.iter().sum::<f64>() / m.len().max(1) as f64,
        maxd,
        per_render.as_secs_f64() * 1e3,
    );
}

fn honest_header() {
    println!(
        "| {:<34} | {:>5} | {:<19} | {:>10} | {:>8} | {:>9} | {:>6} | {:>8} |",
        "honest configuration vs reference",
        "pairs",
        "bit-identical",
        "worst mean",
        "p99 mean",
        "avg mean",
        "max|Δ|",
        "ms/image"
    );
    println!(
        "|{:-<36}|{:-<7}|{:-<21}|{:-<12}|{:-<10}|{:-<11}|{:-<8}|{:-<10}|",
        "", "", "", "", "", "", "", ""
    );
}

fn cheat_header() {
    println!(
        "| {:<34} | {:>5} | {:>9} | {:>9} | {:>9} | {:>6} | {:>15} |",
        "dishonest render vs reference",
        "pairs",
        "min mean",
        "p50 mean",
        "max mean",
        "max|Δ|",
        "pass at bound"
    );
    println!(
        "|{:-<36}|{:-<7}|{:-<11}|{:-<11}|{:-<11}|{:-<8}|{:-<17}|",
        "", "", "", "", "", "", ""
    );
}

fn cheat_row(label: &str, ps: &[Pair], bound: f64) {
    let m = sorted_means(ps);
    let pass = m.iter().filter(|&&d| d <= bound).count();
    println!(
        "| {label:<34} | {:>5} | {:>9.3} | {:>9.3} | {:>9.3} | {:>6} | {:<15} |",
        ps.len(),
        m.first().copied().unwrap_or(f64::NAN),
        quantile(&m, 0.5),
        m.last().copied().unwrap_or(f64::NAN),
        ps.iter().map(|p| p.max).max().unwrap_or(0),
        format!("{pass}/{} at {bound}", ps.len()),
    );
}

/// The bound the record proposes and its false-positive estimate, printed.
fn summary(workload: &str, honest: &[Pair], floor: f64, sample_items: usize) -> f64 {
    let m = sorted_means(honest);
    let worst = m.last().copied().unwrap_or(0.0);
    let rule = (2.0 * worst).max(floor);
    let current = registry::IMAGE_MAX_MEAN_ABS_DIFF;
    let n = m.len();
    let ident = honest.iter().filter(|p| p.identical).count();
    println!();
    println!(
        "{workload}: {n} honest pairs, {ident} bit-identical ({:.1}%)",
        100.0 * ident as f64 / n.max(1) as f64
    );
    println!(
        "  worst honest mean |Δ| {worst:.4}, p99 {:.4}; rule max(2 × worst, floor {floor}) = {rule:.4}; current bound {current}",
        quantile(&m, 0.99)
    );
    for bound in [rule, current] {
        let above = m.iter().filter(|&&d| d > bound).count();
        if above == 0 {
            let p = 3.0 / n.max(1) as f64;
            println!(
                "  at bound {bound:.4}: 0 of {n} honest pairs above it → false-positive rate per item ≤ {:.2}% (rule of three, 95%), per assignment of {sample_items} sampled items ≤ {:.2}%",
                100.0 * p,
                100.0 * (1.0 - (1.0 - p).powi(sample_items as i32))
            );
        } else {
            let p = above as f64 / n as f64;
            println!(
                "  at bound {bound:.4}: {above} of {n} honest pairs above it → false-positive rate per item {:.2}%, per assignment of {sample_items} sampled items {:.2}%",
                100.0 * p,
                100.0 * (1.0 - (1.0 - p).powi(sample_items as i32))
            );
        }
    }
    rule
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let sample_items = verify::DEFAULT_SAMPLE_ITEMS;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("# calibrate-images");
    println!(
        "machine: CPU only ({cpus} logical CPUs visible), ONNX Runtime from ORT_DYLIB_PATH={}",
        std::env::var("ORT_DYLIB_PATH").unwrap_or_default()
    );
    println!(
        "reference: registry::Reference (CPU, 1 intra-op thread, terrain batch 1); verifier bound IMAGE_MAX_MEAN_ABS_DIFF = {}",
        registry::IMAGE_MAX_MEAN_ABS_DIFF
    );
    println!("cross-device (CPU vs CUDA): NOT measured in this run (no GPU)\n");

    // ---------------------------------------------------------------- RENDER-TERRAIN-128
    let n = args.terrain_seeds;
    let line = |i: usize, seed: u64, difficulty: u64| -> Line {
        (
            format!("t{i}"),
            obj(json!({"seed": seed, "difficulty": difficulty})),
        )
    };
    let seed_of = |i: usize| 1_000 + i as u64 * 7_919;
    let diff_of = |i: usize| 1 + (i as u64 * 37) % 100;
    let lines: Vec<Line> = (0..n).map(|i| line(i, seed_of(i), diff_of(i))).collect();

    let mut reference = Reference::new();
    let refw = reference.workload(WorkloadKind::Terrain)?;
    let (ref_png, ref_t) = render(refw, &lines).context("terrain reference")?;
    let t_ref = ref_t / n.max(1) as u32;
    println!(
        "## RENDER-TERRAIN-128 (real model terrain-128), {n} items (seed, difficulty 1–100); reference {:.1} ms/image",
        t_ref.as_secs_f64() * 1e3
    );
    println!(
        "model: {}",
        refw.manifest()
            .models
            .values()
            .next()
            .cloned()
            .unwrap_or_default()
    );
    println!();

    let configs: [(&str, usize, usize); 5] = [
        ("threads 1, batch 1 (fresh session)", 1, 1),
        ("threads 2, batch 1", 2, 1),
        ("threads 0 (ORT default), batch 1", 0, 1),
        ("threads 1, batch 4", 1, 4),
        ("threads 2, batch 4", 2, 4),
    ];
    let mut honest_all = Vec::new();
    let mut rows = Vec::new();
    for (label, threads, batch) in configs {
        let opts = Options {
            terrain: TerrainConfig {
                batch_size: batch,
                ..TerrainConfig::default()
            },
            ..Options::default()
        };
        match load(WorkloadKind::Terrain, threads, &opts).and_then(|mut w| render(&mut w, &lines)) {
            Ok((png, t)) => {
                let ps = pairs(&png, &ref_png)?;
                honest_all.extend_from_slice(&ps);
                rows.push((label.to_owned(), Ok(ps), t / n.max(1) as u32));
            }
            Err(e) => rows.push((label.to_owned(), Err(e.to_string()), Duration::ZERO)),
        }
    }
    honest_header();
    for (label, ps, t) in &rows {
        match ps {
            Ok(ps) => honest_row(label, ps, *t),
            Err(e) => println!("| {label:<34} | failed: {e} |"),
        }
    }
    honest_row("all honest pairs", &honest_all, t_ref);
    let terrain_rule = summary("RENDER-TERRAIN-128", &honest_all, args.floor, sample_items);

    // Cheats, through the reference's own workload (CPU, 1 thread, batch 1).
    let cheats: Vec<(&str, Vec<Line>)> = vec![
        (
            "another seed, same difficulty",
            (0..n)
                .map(|i| line(i, seed_of(i) + 1, diff_of(i)))
                .collect(),
        ),
        (
            "same seed, difficulty ±1",
            (0..n)
                .map(|i| {
                    let d = diff_of(i);
                    line(i, seed_of(i), if d == 100 { 99 } else { d + 1 })
                })
                .collect(),
        ),
        (
            "same seed, difficulty ±10",
            (0..n)
                .map(|i| {
                    let d = diff_of(i);
                    line(i, seed_of(i), if d > 90 { d - 10 } else { d + 10 })
                })
                .collect(),
        ),
        (
            "same seed, difficulty 1 (easiest)",
            (0..n)
                .map(|i| line(i, seed_of(i), if diff_of(i) == 1 { 2 } else { 1 }))
                .collect(),
        ),
    ];
    println!();
    cheat_header();
    let refw = reference.workload(WorkloadKind::Terrain)?;
    for (label, cl) in &cheats {
        let (png, _) = render(refw, cl)?;
        cheat_row(
            label,
            &pairs(&png, &ref_png)?,
            registry::IMAGE_MAX_MEAN_ABS_DIFF,
        );
    }
    println!(
        "(terrain is one model call per image whatever the difficulty: no cheaper render exists; the cheats above re-use or mislabel a render)"
    );

    // ---------------------------------------------------------------- RENDER-SD15-512 (fixture)
    let sd_dir = args.sd_model_dir.clone().unwrap_or_else(fixture_dir);
    let m = args.sd_seeds;
    let adj = [
        "beautiful",
        "black",
        "blue",
        "bright",
        "dark",
        "golden",
        "green",
        "large",
        "old",
        "red",
    ];
    let noun = [
        "bird", "boat", "car", "castle", "cat", "dog", "fish", "horse", "house",
    ];
    let place = ["forest", "lake", "city", "mountain", "night", "morning"];
    let prompt = |i: usize| {
        format!(
            "a {} {} in the {}",
            adj[i % adj.len()],
            noun[(i / 3) % noun.len()],
            place[(i / 7) % place.len()]
        )
    };
    let sd_line = |i: usize, p: String, seed: u64, steps: Option<u64>| -> Line {
        let mut f = obj(json!({"prompt": p, "seed": seed}));
        if let Some(s) = steps {
            f.insert("steps".into(), json!(s));
        }
        (format!("s{i}"), f)
    };
    let sd_seed = |i: usize| 5_000 + i as u64 * 104_729;
    let sd_lines: Vec<Line> = (0..m)
        .map(|i| sd_line(i, prompt(i), sd_seed(i), None))
        .collect();
    let sd_opts = Options {
        sd_model_dir: Some(sd_dir.clone()),
        ..Options::default()
    };
    let mut sd_ref = Reference::with_options(sd_opts.clone());
    let sdw = sd_ref.workload(WorkloadKind::Sd)?;
    let (sd_ref_png, sd_t) = render(sdw, &sd_lines).context("sd reference")?;
    println!();
    println!(
        "## RENDER-SD15-512 on {} — STRUCTURAL FIXTURE, random weights, NOT Stable Diffusion; {m} items, default steps/size of the fixture; reference {:.1} ms/image",
        sd_dir.display(),
        (sd_t / m.max(1) as u32).as_secs_f64() * 1e3
    );
    println!();
    let mut sd_honest = Vec::new();
    let mut sd_rows = Vec::new();
    for (label, threads) in [
        ("threads 1 (fresh session)", 1),
        ("threads 2", 2),
        ("threads 0 (ORT default)", 0),
    ] {
        match load(WorkloadKind::Sd, threads, &sd_opts).and_then(|mut w| render(&mut w, &sd_lines))
        {
            Ok((png, t)) => {
                let ps = pairs(&png, &sd_ref_png)?;
                sd_honest.extend_from_slice(&ps);
                sd_rows.push((label, Ok(ps), t / m.max(1) as u32));
            }
            Err(e) => sd_rows.push((label, Err(e.to_string()), Duration::ZERO)),
        }
    }
    honest_header();
    for (label, ps, t) in &sd_rows {
        match ps {
            Ok(ps) => honest_row(label, ps, *t),
            Err(e) => println!("| {label:<34} | failed: {e} |"),
        }
    }
    honest_row("all honest pairs", &sd_honest, sd_t / m.max(1) as u32);
    let sd_rule = summary(
        "RENDER-SD15-512 (fixture)",
        &sd_honest,
        args.floor,
        sample_items,
    );
    let sd_cheats: Vec<(&str, Vec<Line>)> = vec![
        (
            "another seed, same prompt",
            (0..m)
                .map(|i| sd_line(i, prompt(i), sd_seed(i) + 1, None))
                .collect(),
        ),
        (
            "same seed, half the steps (2)",
            (0..m)
                .map(|i| sd_line(i, prompt(i), sd_seed(i), Some(2)))
                .collect(),
        ),
        (
            "same seed, one step",
            (0..m)
                .map(|i| sd_line(i, prompt(i), sd_seed(i), Some(1)))
                .collect(),
        ),
        (
            "same seed, another prompt",
            (0..m)
                .map(|i| sd_line(i, prompt(i + 1), sd_seed(i), None))
                .collect(),
        ),
    ];
    println!();
    cheat_header();
    let sdw = sd_ref.workload(WorkloadKind::Sd)?;
    for (label, cl) in &sd_cheats {
        let (png, _) = render(sdw, cl)?;
        cheat_row(
            label,
            &pairs(&png, &sd_ref_png)?,
            registry::IMAGE_MAX_MEAN_ABS_DIFF,
        );
    }

    println!();
    println!(
        "proposed bounds: terrain {terrain_rule:.4}, sd fixture {sd_rule:.4} (max(2 × worst honest, floor {})); the verifier's bound stays one constant for both kinds",
        args.floor
    );
    println!(
        "not measured: CPU vs CUDA (run this scenario on a GPU node with an honest side on --device cuda to add it)"
    );
    Ok(())
}

// -------------------------------------------------------------------- verification-overhead

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn timed<T>(
    repeats: usize,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(Duration, T)> {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        last = Some(f()?);
        times.push(t.elapsed());
    }
    Ok((median(times), last.expect("at least one run")))
}

/// A one-image assignment's work and its re-run are the same computation: timed alternately
/// (work, re-run, work, …) so that load from other processes falls on both; the two medians.
fn interleaved(
    repeats: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(Duration, Duration)> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..repeats.max(1) {
        for v in [&mut a, &mut b] {
            let t = Instant::now();
            f()?;
            v.push(t.elapsed());
        }
    }
    Ok((median(a), median(b)))
}

pub fn overhead(args: OverheadArgs) -> anyhow::Result<()> {
    let k = args.sample_items;
    println!("# verification-overhead");
    println!(
        "both sides: registry::Reference (CPU, 1 intra-op thread), {} logical CPUs visible; embed: median of {} runs of the 1,000 items, of max(5, that) runs of the re-run; renders: median of max(9, that) alternated runs each; the re-run is the verifier's {k} sampled items (verify::sample)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.repeats
    );
    println!();
    println!(
        "| {:<44} | {:>6} | {:>11} | {:>6} | {:>11} | {:>9} |",
        "workload (assignment)", "items", "work ms", "re-run", "re-run ms", "overhead"
    );
    println!(
        "|{:-<46}|{:-<8}|{:-<13}|{:-<8}|{:-<13}|{:-<11}|",
        "", "", "", "", "", ""
    );

    // EMBED-MINILM-L6: 1 unit = 1,000 items.
    let n = args.embed_items;
    let texts = executor::bench::corpus(n, 7);
    let mut reference = Reference::new();
    let w = reference.workload(WorkloadKind::Embed)?;
    let inputs = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let id = format!("e{i}");
            w.parse(&id, &obj(json!({ "input": t })))
                .map_err(|e| anyhow!("{id}: {}", e.message))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    w.run(&inputs[..8], &|_| {})?; // warm-up
    let (t_work, outs) = timed(args.repeats, || Ok(w.run(&inputs, &|_| {})?))?;
    let picked = verify::sample(n, k, 0x5eed_u128 << 64 | 42);
    let sample: Vec<_> = picked.iter().map(|&i| inputs[i].clone()).collect();
    let (t_rerun, re) = timed(args.repeats.max(5), || Ok(w.run(&sample, &|_| {})?))?;
    let mut min_cos = 1.0f32;
    for (&i, r) in picked.iter().zip(&re) {
        let a = outs[i].as_ref().map_err(|e| anyhow!("{e}"))?;
        let b = r.as_ref().map_err(|e| anyhow!("{e}"))?;
        let (a, b) = (
            registry::embedding_of(&a.record).context("embedding")?,
            registry::embedding_of(&b.record).context("embedding")?,
        );
        min_cos = min_cos.min(executor::embed::cosine(&a, &b));
    }
    let pct = |re: Duration, work: Duration| 100.0 * re.as_secs_f64() / work.as_secs_f64();
    println!(
        "| {:<44} | {:>6} | {:>11.1} | {:>6} | {:>11.2} | {:>8.2}% |",
        "EMBED-MINILM-L6, 1 unit (bench::corpus texts)",
        n,
        t_work.as_secs_f64() * 1e3,
        k,
        t_rerun.as_secs_f64() * 1e3,
        pct(t_rerun, t_work)
    );

    // RENDER-TERRAIN-128: 1 unit = 1 image; the verifier re-runs min(k, images).
    let w = reference.workload(WorkloadKind::Terrain)?;
    let one = |i: u64| -> anyhow::Result<_> {
        w.parse("t", &obj(json!({"seed": 42 + i, "difficulty": 60})))
            .map_err(|e| anyhow!("{}", e.message))
    };
    let item = one(0)?;
    w.run(std::slice::from_ref(&item), &|_| {})?; // warm-up
    let (t_img, t_img_re) = interleaved(args.repeats.max(9), || {
        w.run(std::slice::from_ref(&item), &|_| {})?;
        Ok(())
    })?;
    println!(
        "| {:<44} | {:>6} | {:>11.1} | {:>6} | {:>11.1} | {:>8.1}% |",
        "RENDER-TERRAIN-128, 1 unit (1 image)",
        1,
        t_img.as_secs_f64() * 1e3,
        1,
        t_img_re.as_secs_f64() * 1e3,
        pct(t_img_re, t_img)
    );

    // SD on the fixture (structural, random weights): the pipeline's overhead only.
    let sd_dir = args.sd_model_dir.clone().unwrap_or_else(fixture_dir);
    let mut sd_ref = Reference::with_options(Options {
        sd_model_dir: Some(sd_dir),
        ..Options::default()
    });
    let w = sd_ref.workload(WorkloadKind::Sd)?;
    let item = w
        .parse(
            "s",
            &obj(json!({"prompt": "a red boat on the lake", "seed": 42})),
        )
        .map_err(|e| anyhow!("{}", e.message))?;
    w.run(std::slice::from_ref(&item), &|_| {})?;
    let (t_sd, t_sd_re) = interleaved(args.repeats.max(9), || {
        w.run(std::slice::from_ref(&item), &|_| {})?;
        Ok(())
    })?;
    println!(
        "| {:<44} | {:>6} | {:>11.1} | {:>6} | {:>11.1} | {:>8.1}% |",
        "RENDER-SD15-512 fixture (NOT SD), 1 image",
        1,
        t_sd.as_secs_f64() * 1e3,
        1,
        t_sd_re.as_secs_f64() * 1e3,
        pct(t_sd_re, t_sd)
    );
    println!();
    println!(
        "embed: min cosine of the {k} re-run items vs the same items in the 1,000-item run: {min_cos:.6} (bound {})",
        registry::EMBED_MIN_COSINE
    );
    println!(
        "renders: an assignment of u images re-runs min({k}, u): overhead = min({k}, u) × {:.1} ms / (u × {:.1} ms) → u = 1: {:.0}%, u = 4: {:.0}%, u = 16: {:.0}%, u = 100: {:.0}% (terrain, from the per-image time above)",
        t_img_re.as_secs_f64() * 1e3,
        t_img.as_secs_f64() * 1e3,
        pct(t_img_re, t_img),
        pct(t_img_re * 4, t_img * 4),
        pct(t_img_re * 4, t_img * 16),
        pct(t_img_re * 4, t_img * 100),
    );
    Ok(())
}
