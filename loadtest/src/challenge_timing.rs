//! `loadtest challenge-timing`: the reference timings behind the hardware challenge's class
//! bounds (`executor::challenge::CLASSES`).
//!
//! It runs a class's challenge the way the provider agent does (`executor::agent::workloads::
//! Workloads` on the runtime the agent starts — CPU, ONNX Runtime's default threads unless
//! `--threads` — and `Workloads::challenge`: the `N` items of a fresh nonce, tokenised, run and
//! pooled by the executor's `Embedder`), after one warm-up run as the agent does before it
//! registers, `--runs` times with a new nonce each, and prints min / median / max ms, the
//! commitment's size, and the class's bound with its basis. The timing is the embedding alone;
//! the market's clock also covers the HTTP round trips, which the bound leaves room for.
//!
//! Nothing is asserted: it prints what it measured.

use std::time::Instant;

use anyhow::Context;
use executor::agent::workloads::Workloads;
use executor::challenge::{self, BoundBasis, DeviceClass};
use executor::models::ModelsDir;
use executor::runtime::{Provider, Runtime, RuntimeConfig};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The class whose challenge runs (`cpu`, `gpu`).
    #[arg(long, default_value = "cpu")]
    class: String,
    /// Timed runs (each with its own nonce).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// `cpu` or `cuda:<id>` (as `executor --device`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Intra-op threads (0 = ONNX Runtime's default, as the agent).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let class = DeviceClass::parse(&args.class)
        .with_context(|| format!("unknown class {:?} (cpu, gpu)", args.class))?;
    let spec = class.spec();
    let provider: Provider = args.device.parse()?;
    let rt = Runtime::new(RuntimeConfig {
        dylib_path: None,
        provider,
        intra_threads: args.threads,
    })
    .context("starting ONNX Runtime (ORT_DYLIB_PATH)")?;
    let models = ModelsDir::from_env().context("GRIDBOOK_MODELS_DIR")?;
    let load = Instant::now();
    let workloads = Workloads::load(&rt, &models, std::iter::empty(), None)
        .context("loading the embedding model")?;
    let load_ms = load.elapsed().as_millis();
    let warm = Instant::now();
    workloads.warm_up()?;
    let warm_ms = warm.elapsed().as_millis();
    let mut ms: Vec<u128> = Vec::with_capacity(args.runs);
    let mut leaf_bytes = 0;
    for r in 0..args.runs.max(1) {
        let nonce = format!("challenge-timing-{r}");
        let started = Instant::now();
        let (embeddings, _) = workloads.challenge(&nonce, spec.items)?;
        let leaves = challenge::leaves(&embeddings);
        ms.push(started.elapsed().as_millis());
        leaf_bytes = serde_json::to_vec(&leaves)?.len();
    }
    let in_order = ms.clone();
    ms.sort_unstable();
    let median = ms[ms.len() / 2];
    let (min, max) = (ms[0], ms[ms.len() - 1]);
    let rate = spec.items as f64 * 1_000.0 / median.max(1) as f64;
    println!(
        "challenge-timing: class {class}, {} items, sample {}, device {}, threads {}, ORT {}",
        spec.items,
        spec.sample,
        workloads.device,
        args.threads,
        rt.ort_version()
    );
    println!("  model load {load_ms} ms, warm-up {warm_ms} ms");
    println!(
        "  {} runs (embed + leaves): min {min} ms, median {median} ms, max {max} ms ({rate:.0} items/s at the median)",
        ms.len()
    );
    println!("  each run, ms: {in_order:?}");
    println!("  commitment body ≈ {} bytes of leaves", leaf_bytes);
    let basis = match spec.basis {
        BoundBasis::Measured => "measured",
        BoundBasis::Derived => "DERIVED from published figures, not measured",
    };
    println!(
        "  class bound {} ms ({basis}); slowest run / bound = {:.2}",
        spec.bound_ms,
        max as f64 / spec.bound_ms as f64
    );
    // The other classes' challenges at this rate: what this machine would measure if it
    // declared them.
    for other in challenge::CLASSES.iter().filter(|c| c.class != class) {
        let est = other.items as f64 * 1_000.0 / rate;
        println!(
            "  at this rate the {} class's {} items would take ≈ {est:.0} ms (its bound {} ms)",
            other.class, other.items, other.bound_ms
        );
    }
    Ok(())
}
