//! Commit, then sample, against the real MiniLM model on the real ONNX Runtime
//! (`ORT_DYLIB_PATH`, `GRIDBOOK_MODELS_DIR`; `cargo xtask test` sets both).
//!
//! The attack the old rule allowed: the sample was seeded by the assignment id, which the node
//! receives before it commits, so a node could compute exactly the items that would be checked
//! honestly and fake all the others. Here such a cheater is built with the real model and is
//! paid under the old rule, and caught under the new one (the sample is an HMAC of its
//! commitment under the market's secret); an honest node still passes.

use std::collections::BTreeMap;

use executor::commitment::{self, Commitment};
use executor::registry::{Reference, WorkloadKind};
use executor::workload::Workload;
use gridbook_settlement::verify::{self, Committed, SamplePolicy, Verifier, VerifyError};
use serde_json::{Map, Value, json};
use uuid::Uuid;

pub(crate) const ITEMS: usize = 40;
const MARKET: &str = "EMBED-MINILM-L6";

pub(crate) fn input_file() -> String {
    (0..ITEMS)
        .map(|i| json!({"custom_id": format!("s{i}"), "input": format!("sentence number {i} about item {}", i * 7)}).to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The honest embedding of every input, computed with the market's own model.
pub(crate) fn honest_embeddings(input: &str) -> Vec<Vec<f32>> {
    let mut reference = Reference::new();
    let w = reference
        .workload(WorkloadKind::Embed)
        .expect("the MiniLM model loads");
    let items: Vec<_> = verify::input_items(input, 0, ITEMS as u64)
        .unwrap()
        .into_iter()
        .map(|(id, fields)| w.parse(&id, &fields).unwrap())
        .collect();
    w.run(&items, &|_| {})
        .unwrap()
        .into_iter()
        .map(|r| executor::registry::embedding_of(&r.unwrap().record).expect("an embedding"))
        .collect()
}

/// An output file in the executor's format, with its Merkle root: the node answers under the
/// ids it was served (positions, `catalog::served_id`), not the studio's.
pub(crate) fn output_file(embeddings: &[Vec<f32>]) -> (String, String) {
    let ids: Vec<String> = (0..embeddings.len() as u64).map(gridbook_wire::catalog::served_id).collect();
    output_of(&ids, embeddings)
}

/// An output file of items `ids` with vectors `vs` (in order), with its Merkle root.
pub(crate) fn output_of(ids: &[String], vs: &[Vec<f32>]) -> (String, String) {
    let mut lines = Vec::new();
    let mut leaves = Vec::new();
    for (id, v) in ids.iter().zip(vs) {
        let h = commitment::sha256(&commitment::embedding_bytes(v));
        let mut rec = Map::new();
        rec.insert("custom_id".into(), Value::String(id.clone()));
        rec.insert("sha256".into(), Value::String(hex::encode(h)));
        rec.insert("embedding".into(), json!(v));
        lines.push(Value::Object(rec).to_string());
        leaves.push((id.clone(), h));
    }
    (lines.join("\n"), Commitment::build(&leaves).merkle_root)
}

pub(crate) fn committed<'a>(
    a: Uuid,
    input: &'a str,
    output: &'a str,
    root: &'a str,
    sha: &'a str,
) -> Committed<'a> {
    Committed {
        model: None,
        assignment: a,
        market: MARKET,
        kind: WorkloadKind::Embed,
        input,
        start: 0,
        count: ITEMS as u64,
        output,
        output_sha256: sha,
        merkle_root: root,
        reported_failed: 0,
        canaries: &[],
    }
}

#[test]
fn a_cheater_who_knows_the_old_sample_is_paid_under_the_old_rule_and_caught_under_the_new() {
    let input = input_file();
    let honest = honest_embeddings(&input);
    let assignment = Uuid::from_u128(0x1234_5678_9abc_def0_1122_3344_5566_7788);

    // The cheater computes only the 4 items the old rule (seed = assignment id) would check,
    // and fills every other item with one made-up unit vector (hashes and root consistent).
    let old_sample = verify::sample(ITEMS, verify::DEFAULT_SAMPLE_ITEMS, assignment.as_u128());
    let mut fake = vec![0.0f32; honest[0].len()];
    fake[0] = 1.0;
    let cheated: Vec<Vec<f32>> = (0..ITEMS)
        .map(|i| {
            if old_sample.contains(&i) {
                honest[i].clone()
            } else {
                fake.clone()
            }
        })
        .collect();
    let (cheat_out, cheat_root) = output_file(&cheated);
    let cheat_sha = hex::encode(commitment::sha256(cheat_out.as_bytes()));

    let policy = SamplePolicy::new(
        vec![0x5a; 32],
        verify::DEFAULT_SAMPLE_ITEMS,
        BTreeMap::new(),
    )
    .unwrap();
    let mut verifier = Verifier::new(policy.clone());
    // Under the old rule the cheater passes: every item the old sample re-runs is honest.
    let outputs = verify::parse_output(&cheat_out).unwrap();
    let inputs = verify::input_items(&input, 0, ITEMS as u64).unwrap();
    let old_pairs: Vec<_> = old_sample
        .iter()
        .map(|&i| (inputs[i].clone(), outputs[i].clone()))
        .collect();
    verifier
        .rerun(WorkloadKind::Embed, None, &old_pairs)
        .expect("the old predictable sample finds nothing wrong: the attack worked");

    // Under commit-then-sample the same output is caught.
    let verdict = verifier.verify(&committed(
        assignment,
        &input,
        &cheat_out,
        &cheat_root,
        &cheat_sha,
    ));
    match verdict {
        Err(VerifyError::Mismatch(f)) => {
            let why = f.to_string();
            assert!(why.contains("differs from the re-run"), "{why}");
            let seed = hex::encode(policy.seed(assignment, &cheat_root, &cheat_sha));
            assert!(
                why.contains(&format!("sample seed {seed}")),
                "the evidence names the seed: {why}"
            );
            // The dispute evidence: which check, the seed, and per sampled item both sides'
            // hashes and the cosine (the faked ones far below 0.999).
            assert_eq!(f.check, gridbook_db::status::FailedCheck::SampleMismatch);
            assert_eq!(f.evidence.seed.as_deref(), Some(seed.as_str()));
            assert_eq!(f.evidence.items.len(), verify::DEFAULT_SAMPLE_ITEMS);
            assert!(f.evidence.reference_manifest.is_some());
            let bad: Vec<_> = f.evidence.items.iter().filter(|i| !i.ok).collect();
            assert!(!bad.is_empty());
            for i in &f.evidence.items {
                assert!(i.reference_sha256.is_some(), "{i:?}");
                let cos = i.cosine.expect("a cosine per embedding");
                assert_eq!(i.ok, cos >= 0.999, "{i:?}");
                assert_eq!(i.ok, i.node_sha256 == *i.reference_sha256.as_ref().unwrap() || cos >= 0.999);
            }
        }
        other => panic!("the cheater was not caught: {other:?}"),
    }

    // The honest node passes, and the evidence names the seed and the sampled items.
    let (out, root) = output_file(&honest);
    let sha = hex::encode(commitment::sha256(out.as_bytes()));
    let v = verifier
        .verify(&committed(assignment, &input, &out, &root, &sha))
        .expect("honest work verifies");
    assert_eq!(v.ok, ITEMS as u64);
    assert_eq!(v.sampled.len(), verify::DEFAULT_SAMPLE_ITEMS);
    assert_eq!(v.seed, hex::encode(policy.seed(assignment, &root, &sha)));
}

#[test]
fn the_sample_size_is_market_configuration() {
    let input = input_file();
    let honest = honest_embeddings(&input);
    let (out, root) = output_file(&honest);
    let sha = hex::encode(commitment::sha256(out.as_bytes()));
    let policy =
        SamplePolicy::new(vec![1; 32], 2, BTreeMap::from([(MARKET.to_owned(), 9)])).unwrap();
    let v = Verifier::new(policy)
        .verify(&committed(Uuid::from_u128(9), &input, &out, &root, &sha))
        .unwrap();
    assert_eq!(v.sampled.len(), 9);
}
