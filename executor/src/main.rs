//! `executor` CLI: local runs, benchmarks and the provider agent. The logic lives in the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};
use executor::agent::config::AgentSettings;
use executor::embed::{Batching, EmbedConfig, Embedder};
use executor::models::{ModelsDir, pinned};
use executor::registry::{self, WorkloadKind};
use executor::runtime::{Provider, Runtime, RuntimeConfig};
use executor::sd::{SdPipeline, SdWorkload};
use executor::terrain::{TerrainConfig, TerrainRenderer};
use executor::workload::Workload;
use executor::{bench, local};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "executor",
    version,
    about = "Gridbook provider executor (ONNX Runtime workloads)"
)]
struct Cli {
    /// ONNX Runtime shared library (default: $ORT_DYLIB_PATH).
    #[arg(long, global = true)]
    ort_dylib: Option<PathBuf>,
    /// Models directory (default: $GRIDBOOK_MODELS_DIR).
    #[arg(long, global = true)]
    models_dir: Option<PathBuf>,
    /// Execution provider: cpu, cuda or cuda:<device id>. CUDA never falls back to the CPU.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    /// CUDA memory arena limit in MiB.
    #[arg(long, global = true)]
    gpu_mem_limit_mib: Option<usize>,
    /// Intra-op threads per session (0 = one per physical core).
    #[arg(long, global = true, default_value_t = 0)]
    threads: usize,
    #[command(subcommand)]
    command: Cmd,
}

/// `--workload`: one of the registry's kinds, by name.
fn workload_kind() -> impl TypedValueParser<Value = WorkloadKind> {
    PossibleValuesParser::new(WorkloadKind::ALL.map(WorkloadKind::as_str)).map(|s| {
        s.parse::<WorkloadKind>()
            .expect("one of the possible values")
    })
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a JSONL file locally and write the output, errors and commitment files.
    Run {
        /// The workload kind (the SD one needs --sd-model-dir).
        #[arg(long, value_parser = workload_kind())]
        workload: WorkloadKind,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// Embeddings: padded tokens per model call.
        #[arg(long, default_value_t = 1024)]
        max_batch_tokens: usize,
        /// Embeddings: inputs per model call.
        #[arg(long, default_value_t = 64)]
        max_batch_size: usize,
        /// Terrain: images per model call (1 keeps each render independent of its batch).
        #[arg(long, default_value_t = 1)]
        render_batch: usize,
        /// SD: model directory (SD 1.5 ONNX export layout + tokenizer.json + gridbook-sd.json).
        #[arg(long)]
        sd_model_dir: Option<PathBuf>,
        /// Output and error lines: `gridbook` (`{"custom_id", …}`) or `openai-batch` (OpenAI's
        /// Batch envelope: `{"id","custom_id","response":{"status_code","body"},"error"}`).
        #[arg(long, default_value = "gridbook", value_parser = ["gridbook", "openai-batch"])]
        format: String,
        /// Start over even when a progress file says an earlier run of this output was
        /// interrupted (by default the run resumes after the last chunk it wrote).
        #[arg(long)]
        no_resume: bool,
        /// Items per streamed chunk at most (0 = the workload's bound: 1024 embeddings or
        /// terrain renders, 8 SD renders). Memory grows with it; output is written per chunk.
        #[arg(long, default_value_t = 0)]
        chunk_items: usize,
    },
    /// Measure throughput per workload (and the Python onnxruntime baseline for embeddings).
    Bench {
        /// Sentences in the generated corpus.
        #[arg(long, default_value_t = 1024)]
        sentences: usize,
        #[arg(long, default_value_t = 1)]
        repeats: usize,
        #[arg(long, default_value_t = 20261126)]
        seed: u64,
        /// Python interpreter with onnxruntime (see executor/bench/requirements.txt).
        #[arg(long, default_value = ".gridbook/venv/bin/python")]
        python: PathBuf,
        #[arg(long, default_value = "executor/bench/ort_baseline.py")]
        baseline_script: PathBuf,
        /// Skip the Python baseline.
        #[arg(long)]
        no_baseline: bool,
        /// Terrain images to render (0 = skip).
        #[arg(long, default_value_t = 8)]
        terrain_images: usize,
        /// SD images to render (0 = skip).
        #[arg(long, default_value_t = 4)]
        sd_images: usize,
        /// SD model directory for the benchmark (default: the tiny random-weight fixture).
        #[arg(long, default_value = "executor/fixtures/tiny-sd")]
        sd_model_dir: PathBuf,
        /// SD steps per image.
        #[arg(long, default_value_t = 20)]
        sd_steps: u64,
        #[arg(long, default_value_t = 1024)]
        max_batch_tokens: usize,
        #[arg(long, default_value_t = 64)]
        max_batch_size: usize,
    },
    /// Load the runtime and the models, verify their hashes and print the node's set-up.
    Info,
    /// Run the provider agent: register + challenge (with --api), keep asks, take assignments
    /// from NATS, run them, publish results. SIGINT/SIGTERM stop it gracefully.
    Agent {
        /// Marketplace API base URL (overrides `api_url` in the node config).
        #[arg(long)]
        api: Option<String>,
        /// NATS server URL (overrides `nats_url` / GRIDBOOK_NATS_URL).
        #[arg(long)]
        nats: Option<String>,
        /// File holding the provider API key (`gbk_…`); else $GRIDBOOK_API_KEY. Never logged.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Node configuration (TOML, see executor/README.md); GRIDBOOK_* variables override it.
        #[arg(long)]
        node_config: Option<PathBuf>,
    },
}

/// Exits 1 with `error: …` on stderr, each cause said once (a cause whose text the message
/// already carries is not repeated).
fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `e` and its causes joined by ": ", skipping a cause already contained in what precedes it.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn real_main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut provider: Provider = cli.device.parse()?;
    if let (Provider::Cuda { memory_limit, .. }, Some(mib)) = (&mut provider, cli.gpu_mem_limit_mib)
    {
        *memory_limit = Some(mib << 20);
    }
    let rt = Runtime::new(RuntimeConfig {
        dylib_path: cli.ort_dylib.clone(),
        provider,
        intra_threads: cli.threads,
    })
    .context("starting ONNX Runtime")?;
    let models = || -> anyhow::Result<ModelsDir> {
        Ok(match &cli.models_dir {
            Some(d) => ModelsDir::new(d),
            None => ModelsDir::from_env()?,
        })
    };
    match cli.command {
        Cmd::Run {
            workload,
            input,
            output,
            max_batch_tokens,
            max_batch_size,
            render_batch,
            sd_model_dir,
            format,
            no_resume,
            chunk_items,
        } => {
            let format = if format == "openai-batch" {
                local::OutputFormat::OpenAiBatch
            } else {
                local::OutputFormat::Gridbook
            };
            let opts = registry::Options {
                models_dir: cli.models_dir.clone(),
                sd_model_dir,
                embed: EmbedConfig {
                    batching: Batching::TokenBudget {
                        max_batch_tokens,
                        max_batch_size,
                    },
                    ..EmbedConfig::default()
                },
                terrain: TerrainConfig {
                    batch_size: render_batch,
                    ..TerrainConfig::default()
                },
            };
            let mut w = registry::Loaded::load(workload, &rt, &opts)?;
            let opts = local::RunOptions {
                format,
                resume: !no_resume,
                chunk_items,
            };
            run_local(&mut w, &input, &output, &opts)
        }
        Cmd::Bench {
            sentences,
            repeats,
            seed,
            python,
            baseline_script,
            no_baseline,
            terrain_images,
            sd_images,
            sd_model_dir,
            sd_steps,
            max_batch_tokens,
            max_batch_size,
        } => {
            let models = models()?;
            let threads = if cli.threads == 0 {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            } else {
                cli.threads
            };
            let embedder = Embedder::load(&rt, &models, EmbedConfig::default())?;
            let texts = bench::corpus(sentences, seed);
            let corpus_path = std::env::temp_dir()
                .join(format!("gridbook-bench-corpus-{seed}-{sentences}.jsonl"));
            bench::write_corpus(&corpus_path, &texts)?;
            println!(
                "EMBED-MINILM-L6: {sentences} sentences (seed {seed}), {threads} intra-op threads, ORT {} {}, median of {} alternating rounds",
                rt.ort_version(),
                rt.provider().label(),
                repeats.max(1)
            );
            let budget = Batching::TokenBudget {
                max_batch_tokens,
                max_batch_size,
            };
            let rust_modes: [(Batching, String); 3] = [
                (
                    budget,
                    format!("token-budget {max_batch_tokens}/{max_batch_size}"),
                ),
                (
                    Batching::Fixed {
                        size: 32,
                        sorted: true,
                    },
                    "sorted32".into(),
                ),
                (
                    Batching::Fixed {
                        size: 32,
                        sorted: false,
                    },
                    "naive32".into(),
                ),
            ];
            let baseline = bench::Baseline {
                python,
                script: baseline_script,
                model: models.model_dir("minilm-l6").join("model.onnx"),
                tokenizer: models.model_dir("minilm-l6").join("tokenizer.json"),
                threads,
                batch: 32,
                repeats: 1,
                max_len: embedder.config().max_seq_len,
            };
            // Rounds alternate the order (Rust first, then Python first, ...) so that a change in
            // machine load hits both sides alike; each figure is the median over rounds.
            let spin = spinner("benchmarking");
            let mut rounds: Vec<bench::EmbedFigure> = Vec::new();
            for round in 0..repeats.max(1) {
                let rust_round = |rounds: &mut Vec<bench::EmbedFigure>| -> anyhow::Result<()> {
                    for (b, name) in &rust_modes {
                        spin.set_message(format!("round {}: rust {name}", round + 1));
                        rounds.push(bench::measure_embed(&embedder, &texts, *b, name, 1)?);
                    }
                    Ok(())
                };
                if round % 2 == 1 && !no_baseline {
                    spin.set_message(format!("round {}: python onnxruntime baseline", round + 1));
                    rounds.extend(bench::run_baseline(&baseline, &corpus_path)?);
                    rust_round(&mut rounds)?;
                } else {
                    rust_round(&mut rounds)?;
                    if !no_baseline {
                        spin.set_message(format!(
                            "round {}: python onnxruntime baseline",
                            round + 1
                        ));
                        rounds.extend(bench::run_baseline(&baseline, &corpus_path)?);
                    }
                }
            }
            let figs = bench::median_figures(&rounds);
            spin.finish_and_clear();
            print!("{}", bench::format_table(&figs));
            let get = |side: &str, mode: &str| {
                figs.iter()
                    .find(|f| f.side == side && f.mode == mode)
                    .map(|f| f.sentences_per_s)
            };
            if let (Some(py_naive), Some(py_sorted)) =
                (get("python", "naive32"), get("python", "sorted32"))
            {
                let ours = figs
                    .iter()
                    .find(|f| f.side == "rust" && f.mode.starts_with("token-budget"))
                    .map_or(0.0, |f| f.sentences_per_s);
                println!(
                    "ratio rust token-budget / python naive32  = {:.2}x  (target >= 1.3x)",
                    ours / py_naive
                );
                println!(
                    "ratio rust token-budget / python sorted32 = {:.2}x",
                    ours / py_sorted
                );
                if let Some(rs) = get("rust", "sorted32") {
                    println!(
                        "ratio rust sorted32 / python sorted32     = {:.2}x  (equal batches, target >= 1.0x)",
                        rs / py_sorted
                    );
                }
                if let Some(rn) = get("rust", "naive32") {
                    println!(
                        "ratio rust naive32 / python naive32       = {:.2}x  (equal batches)",
                        rn / py_naive
                    );
                }
            }
            if terrain_images > 0 {
                let r = TerrainRenderer::load(&rt, &models, TerrainConfig::default())?;
                r.render(&[(0, Some(50))], &|_| {})?; // warm-up
                let reqs: Vec<(u64, Option<u64>)> = (0..terrain_images as u64)
                    .map(|s| (s, Some(1 + s % 100)))
                    .collect();
                let t0 = std::time::Instant::now();
                r.render(&reqs, &|_| {})?;
                let secs = t0.elapsed().as_secs_f64();
                println!(
                    "RENDER-TERRAIN-128: {terrain_images} images in {secs:.2} s = {:.2} images/s (batch 1, incl. PNG encoding)",
                    terrain_images as f64 / secs
                );
            }
            if sd_images > 0 {
                let w = SdWorkload {
                    pipeline: SdPipeline::load(&rt, &sd_model_dir)
                        .with_context(|| format!("SD model dir {}", sd_model_dir.display()))?,
                };
                let input = |i: usize| -> anyhow::Result<_> {
                    let fields = serde_json::json!({
                        "prompt": format!("a mountain lake at dawn, variation {i}"),
                        "seed": i, "steps": sd_steps,
                    });
                    let map = fields.as_object().cloned().unwrap_or_default();
                    w.parse(&format!("b{i}"), &map)
                        .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))
                };
                w.pipeline.render_png(&input(0)?)?; // warm-up
                let inputs: Vec<_> = (0..sd_images).map(input).collect::<anyhow::Result<_>>()?;
                let t0 = std::time::Instant::now();
                for i in &inputs {
                    w.pipeline.render_png(i)?;
                }
                let secs = t0.elapsed().as_secs_f64();
                let (wd, ht) = inputs.first().map_or((0, 0), |i| (i.width, i.height));
                println!(
                    "RENDER-SD15-512 ({}): {sd_images} images of {wd}x{ht}, {sd_steps} steps, in {secs:.2} s = {:.2} images/s ({:.1} ms/step, incl. PNG encoding)",
                    sd_model_dir.display(),
                    sd_images as f64 / secs,
                    secs * 1000.0 / (sd_images as f64 * sd_steps as f64)
                );
            }
            Ok(())
        }
        Cmd::Agent {
            api,
            nats,
            key_file,
            node_config,
        } => {
            let mut settings: AgentSettings =
                gridbook_support::load_config(node_config.as_deref())?;
            if api.is_some() {
                settings.api_url = api;
            }
            if let Some(n) = nats {
                settings.nats_url = n;
            }
            settings.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
            let key = match &key_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("reading the API key file {}", f.display()))?
                        .trim()
                        .to_owned(),
                ),
                None => std::env::var("GRIDBOOK_API_KEY").ok(),
            };
            let models = match (&cli.models_dir, &settings.models_dir) {
                (Some(d), _) | (None, Some(d)) => ModelsDir::new(d),
                (None, None) => ModelsDir::from_env()?,
            };
            let workloads = std::sync::Arc::new(
                executor::agent::workloads::Workloads::load(
                    &rt,
                    &models,
                    settings.markets.keys().map(String::as_str),
                    settings.sd_model_dir.as_deref(),
                )
                .context("loading the models")?,
            );
            let tokio_rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            tokio_rt.block_on(async move {
                let (tx, rx) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    wait_for_signal().await;
                    tracing::info!("shutdown requested: no new assignments, cancelling asks");
                    let _ = tx.send(true);
                });
                executor::agent::run(settings, key, workloads, rx).await
            })?;
            Ok(())
        }
        Cmd::Info => {
            println!(
                "ONNX Runtime {} ({})",
                rt.ort_version(),
                rt.provider().ort_name()
            );
            if let Some(g) = rt.gpu_name() {
                println!("GPU: {g}");
            }
            let models = models()?;
            for &(name, sha) in pinned::ALL {
                let spec = models.spec(name, sha)?;
                match executor::models::verify(&spec) {
                    Ok(h) => println!("{name}: ok sha256 {h}"),
                    Err(e) => println!("{name}: {e}"),
                }
            }
            Ok(())
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn spinner(msg: &'static str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_message(msg);
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb
}

/// Runs a file locally; fails (exit 1) when no item succeeded — an empty file, or every line
/// refused or failed — after writing the error file. The first errors go to stderr.
fn run_local<W: Workload>(
    w: &mut W,
    input: &std::path::Path,
    output: &std::path::Path,
    opts: &local::RunOptions,
) -> anyhow::Result<()> {
    let pb = ProgressBar::new(0);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {pos}/{len} items {per_sec} eta {eta}",
        )?
        .progress_chars("=> "),
    );
    pb.set_message(w.id());
    let report = local::run_file_with(w, input, output, opts, &|n| pb.inc(n), &|total| {
        pb.set_length(total)
    })
    .with_context(|| format!("running {} on {}", w.id(), input.display()))?;
    pb.finish_and_clear();
    if let Some(lines) = report.resumed_lines {
        println!("resumed after input line {lines} (the interrupted run's last complete chunk)");
    }
    println!(
        "{}: {} ok, {} failed in {:.2} s; merkle root {}",
        report.manifest.workload,
        report.succeeded,
        report.failed,
        report.elapsed.as_secs_f64(),
        report.merkle_root
    );
    println!("output: {}", report.paths.output.display());
    println!("errors: {}", report.paths.errors.display());
    println!("commitment: {}", report.paths.commitment.display());
    for e in &report.first_errors {
        let field = e.field.as_deref().map(|f| format!(" {f}:")).unwrap_or_default();
        let id = e.custom_id.as_deref().map(|c| format!(" ({c})")).unwrap_or_default();
        eprintln!("line {}{id}:{field} {}", e.line, e.message);
    }
    if report.failed > report.first_errors.len() {
        eprintln!("… and {} more in {}", report.failed - report.first_errors.len(), report.paths.errors.display());
    }
    if report.succeeded == 0 {
        anyhow::bail!(if report.failed == 0 {
            format!("{} has no input lines", input.display())
        } else {
            format!("no item succeeded: all {} lines failed (see {})", report.failed, report.paths.errors.display())
        });
    }
    Ok(())
}
