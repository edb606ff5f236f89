use executor::ExecutorError;
use executor::models::{ModelSpec, Sha256Hex, pinned, sha256_file, verify};
use executor::runtime::{Provider, Runtime, RuntimeConfig, ort_version};

use crate::common;

#[test]
fn provider_selection_parses_cpu_and_cuda() {
    assert_eq!("cpu".parse::<Provider>().unwrap(), Provider::Cpu);
    assert_eq!(
        "CUDA".parse::<Provider>().unwrap(),
        Provider::Cuda {
            device_id: 0,
            memory_limit: None
        }
    );
    assert_eq!(
        "cuda:3".parse::<Provider>().unwrap(),
        Provider::Cuda {
            device_id: 3,
            memory_limit: None
        }
    );
    for bad in ["", "tpu", "cuda:", "cuda:-1", "cuda:x"] {
        assert!(
            matches!(
                bad.parse::<Provider>(),
                Err(ExecutorError::InvalidProvider(_))
            ),
            "{bad:?}"
        );
    }
    let cuda = Provider::Cuda {
        device_id: 1,
        memory_limit: Some(1 << 30),
    };
    assert_eq!(cuda.ort_name(), "CUDAExecutionProvider");
    assert_eq!(cuda.label(), "cuda:1");
    assert_eq!(cuda.dispatch().name(), "CUDAExecutionProvider");
    assert_eq!(Provider::Cpu.dispatch().name(), "CPUExecutionProvider");
}

#[test]
fn cuda_requested_without_cuda_is_a_startup_error() {
    common::cpu(); // ONNX Runtime loaded once for the process
    let err = Runtime::new(RuntimeConfig {
        dylib_path: Some(common::ort_dylib()),
        provider: Provider::Cuda {
            device_id: 0,
            memory_limit: None,
        },
        intra_threads: 1,
    })
    .expect_err(
        "the CPU build of ONNX Runtime cannot run CUDA; the executor must refuse, not fall back",
    );
    match &err {
        ExecutorError::ExecutionProvider { provider, .. } => {
            assert_eq!(provider, "CUDAExecutionProvider")
        }
        other => panic!("expected an execution-provider error, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("CUDAExecutionProvider") && msg.contains("will not fall back"),
        "{msg}"
    );
}

#[test]
fn missing_ort_library_is_a_clear_error() {
    let err = Runtime::new(RuntimeConfig {
        dylib_path: Some("/nonexistent/libonnxruntime.so".into()),
        ..Default::default()
    })
    .expect_err("missing library");
    assert!(
        matches!(err, ExecutorError::OrtLibraryMissing { .. }),
        "{err:?}"
    );
}

#[test]
fn ort_version_is_reported() {
    assert_eq!(common::cpu().ort_version(), "1.31.1");
    assert_eq!(
        ort_version(std::path::Path::new("/x/libonnxruntime.so.1.2.3"), ""),
        "1.2.3"
    );
    assert_eq!(
        ort_version(
            std::path::Path::new("/x/lib.so"),
            "ORT Build Info: git-branch=rel-1.30.0, x"
        ),
        "1.30.0"
    );
}

#[test]
fn model_hash_mismatch_is_refused() {
    let models = common::models();
    let mut spec = models.spec("terrain-128", pinned::TERRAIN_128).unwrap();
    assert_eq!(verify(&spec).unwrap().as_str(), pinned::TERRAIN_128);
    spec.sha256 = Sha256Hex::parse(pinned::MINILM_L6_INT8).unwrap();
    let err = common::cpu()
        .session(&spec)
        .expect_err("wrong hash must not load");
    match err {
        ExecutorError::ModelHashMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, pinned::MINILM_L6_INT8);
            assert_eq!(actual, pinned::TERRAIN_128);
        }
        other => panic!("expected ModelHashMismatch, got {other:?}"),
    }
}

#[test]
fn tampered_model_file_is_refused() {
    let dir = common::tmp_dir("tampered");
    let path = dir.join("model.onnx");
    let mut bytes = std::fs::read(common::fixtures().join("probe.onnx")).unwrap();
    let good = sha256_file(&common::fixtures().join("probe.onnx")).unwrap();
    bytes.push(0);
    std::fs::write(&path, &bytes).unwrap();
    let spec = ModelSpec {
        name: "probe".into(),
        path,
        sha256: good,
    };
    assert!(matches!(
        common::cpu().session(&spec),
        Err(ExecutorError::ModelHashMismatch { .. })
    ));
    assert!(Sha256Hex::parse("ABC").is_err());
}

#[test]
fn missing_model_names_the_path() {
    let spec = ModelSpec {
        name: "nope".into(),
        path: "/nonexistent/model.onnx".into(),
        sha256: Sha256Hex::parse(pinned::TERRAIN_128).unwrap(),
    };
    let err = common::cpu().session(&spec).expect_err("missing");
    assert!(matches!(err, ExecutorError::ModelMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("/nonexistent/model.onnx"));
}

#[test]
fn sessions_are_cached_per_model_hash() {
    let rt = common::cpu();
    let spec = common::models()
        .spec("terrain-128", pinned::TERRAIN_128)
        .unwrap();
    let a = rt.session(&spec).unwrap();
    let b = rt.session(&spec).unwrap();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
}
