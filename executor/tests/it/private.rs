//! Private models on a node: loaded from memory only when the bytes hash to the pinned sha256,
//! run instead of the market's model, at most `PRIVATE_MODELS_KEPT` kept.

use executor::agent::workloads::{PRIVATE_MODELS_KEPT, Workloads};
use executor::runtime::RunControl;

use crate::common;

const MARKET: &str = "EMBED-MINILM-L6";

/// MiniLM's model bytes with `tag` appended as an unknown protobuf field (number 1000): a
/// different file with the same weights.
fn variant(tag: &str) -> (Vec<u8>, String) {
    let mut b = std::fs::read(common::models().model_dir("minilm-l6").join("model.onnx")).unwrap();
    b.extend_from_slice(&[0xC2, 0x3E, tag.len() as u8]);
    b.extend_from_slice(tag.as_bytes());
    let sha = hex::encode(executor::commitment::sha256(&b));
    (b, sha)
}

#[test]
fn a_private_model_runs_only_with_its_pinned_hash_and_few_are_kept() {
    let w = Workloads::load(common::cpu(), &common::models(), [MARKET], None).unwrap();
    let (bytes, sha) = variant("studio a");
    // Bytes that do not hash to the pin are refused before ONNX Runtime sees them.
    let e = w.load_private(MARKET, &"0".repeat(64), bytes.clone()).unwrap_err();
    assert!(e.to_string().contains("model hash mismatch"), "{e}");
    assert!(!w.has_private(MARKET, &sha));
    let control = RunControl::new().unwrap();
    let line = b"{\"custom_id\":\"a\",\"input\":\"hello\"}\n";
    let e = w.run(MARKET, Some(&sha), line, 0, &|_| {}, &control).unwrap_err();
    assert!(e.to_string().contains("is not loaded"), "{e}");

    w.load_private(MARKET, &sha, bytes).unwrap();
    assert!(w.has_private(MARKET, &sha));
    let private = w.run(MARKET, Some(&sha), line, 0, &|_| {}, &control).unwrap();
    let public = w.run(MARKET, None, line, 0, &|_| {}, &control).unwrap();
    assert_eq!(private.manifest.models["model"], sha, "the manifest names the private model");
    assert_eq!(public.manifest.models["model"], executor::models::pinned::MINILM_L6_INT8);
    // Same weights, so the same vectors: the run went through the ordinary embedder.
    assert_eq!(private.output, public.output);

    // Only PRIVATE_MODELS_KEPT stay loaded; the least recently used goes first.
    let mut shas = vec![sha.clone()];
    for i in 0..PRIVATE_MODELS_KEPT {
        let (b, s) = variant(&format!("studio {i}"));
        w.load_private(MARKET, &s, b).unwrap();
        shas.push(s);
    }
    assert!(!w.has_private(MARKET, &shas[0]), "the oldest private model is still kept");
    assert!(shas[1..].iter().all(|s| w.has_private(MARKET, s)));
}
