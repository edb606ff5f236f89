use std::path::PathBuf;
use std::sync::OnceLock;

use executor::models::ModelsDir;
use executor::runtime::{Provider, Runtime, RuntimeConfig};

pub fn ort_dylib() -> PathBuf {
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "ORT_DYLIB_PATH is not set: export ORT_DYLIB_PATH=$PWD/.gridbook/lib/libonnxruntime.so \
             (installed by the project's set-up command) to run the executor tests"
        ),
    }
}

pub fn models() -> ModelsDir {
    match std::env::var_os("GRIDBOOK_MODELS_DIR") {
        Some(p) if !p.is_empty() => ModelsDir::new(PathBuf::from(p)),
        _ => panic!(
            "GRIDBOOK_MODELS_DIR is not set: export GRIDBOOK_MODELS_DIR=$PWD/.gridbook/models \
             (installed by the project's set-up command) to run the executor tests"
        ),
    }
}

/// One CPU runtime shared by the tests (ONNX Runtime allows one environment per process).
pub fn cpu() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        Runtime::new(RuntimeConfig {
            dylib_path: Some(ort_dylib()),
            provider: Provider::Cpu,
            intra_threads: 1,
        })
        .expect("CPU runtime starts")
    })
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

pub fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "gridbook-executor-it-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}
