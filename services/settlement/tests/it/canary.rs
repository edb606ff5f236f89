//! Canaries against the real MiniLM model on the real ONNX Runtime: the market computes a
//! canary's answer once, an honest node passes with canaries mixed in (and only the job's items
//! are sampled, paid and named by the studio's ids), and a node that fakes a canary, skips one
//! or fakes items while a colluding verifier would agree is caught by the canary alone. The pool
//! and the layout in PostgreSQL are tested at the end; the served layout end to end (API, real
//! agent) is in the API's tests (`services/api/tests/it/canary.rs`).

use std::collections::BTreeMap;

use executor::commitment;
use executor::registry::{Reference, WorkloadKind};
use executor::workload::Workload;
use gridbook_db::status::FailedCheck;
use gridbook_settlement::canary::{self, CanaryPolicy};
use gridbook_settlement::verify::{self, Canary, Committed, SamplePolicy, Verifier, VerifyError};
use gridbook_wire::catalog::{self, CanarySlot};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::cheating::{ITEMS, honest_embeddings, input_file, output_of};

const MARKET: &str = "EMBED-MINILM-L6";

fn verifier() -> Verifier {
    Verifier::new(SamplePolicy::new(vec![0x33; 32], verify::DEFAULT_SAMPLE_ITEMS, BTreeMap::new()).unwrap())
}

/// The embedding of each canary input, as an honest node computes it.
fn canary_embeddings(canaries: &[Canary]) -> Vec<Vec<f32>> {
    let mut reference = Reference::new();
    let w = reference.workload(WorkloadKind::Embed).expect("the MiniLM model loads");
    let items: Vec<_> = canaries.iter().map(|c| w.parse("x", &c.input).unwrap()).collect();
    w.run(&items, &|_| {})
        .unwrap()
        .into_iter()
        .map(|r| executor::registry::embedding_of(&r.unwrap().record).unwrap())
        .collect()
}

/// The node's output over its served lines: the items' vectors with the canaries' at their
/// positions, every line named by position; `skip` leaves served positions out.
fn served_output(items: &[Vec<f32>], canaries: &[(u64, Vec<f32>)], skip: &[u64]) -> (String, String, String) {
    let slots: Vec<CanarySlot> = canaries.iter().map(|(at, _)| CanarySlot { at: *at, id: Uuid::nil() }).collect();
    let lines = catalog::served_lines(items.len() as u64, &slots).unwrap();
    let (mut ids, mut vs) = (Vec::new(), Vec::new());
    for (p, l) in lines.iter().enumerate() {
        if skip.contains(&(p as u64)) {
            continue;
        }
        ids.push(catalog::served_id(p as u64));
        vs.push(match *l {
            catalog::ServedLine::Item(i) => items[i as usize].clone(),
            catalog::ServedLine::Canary(c) => canaries[c].1.clone(),
        });
    }
    let (text, root) = output_of(&ids, &vs);
    let sha = hex::encode(commitment::sha256(text.as_bytes()));
    (text, root, sha)
}

fn committed<'a>(input: &'a str, out: &'a (String, String, String), failed: u64, canaries: &'a [Canary]) -> Committed<'a> {
    Committed {
        model: None,
        assignment: Uuid::from_u128(0xca9a),
        market: MARKET,
        kind: WorkloadKind::Embed,
        input,
        start: 0,
        count: ITEMS as u64,
        output: &out.0,
        output_sha256: &out.2,
        merkle_root: &out.1,
        reported_failed: failed,
        canaries,
    }
}

fn expect_canary_failure(r: Result<verify::Verified, VerifyError>, what: &str) -> verify::Failure {
    match r {
        Err(VerifyError::Mismatch(f)) if f.check == FailedCheck::Canary => *f,
        other => panic!("{what}: expected a canary failure, got {other:?}"),
    }
}

#[test]
fn canaries_are_answered_once_pass_an_honest_node_and_catch_what_the_sample_cannot() {
    let input = input_file();
    let honest = honest_embeddings(&input);
    let fake = {
        let mut v = vec![0.0f32; honest[0].len()];
        v[0] = 1.0;
        v
    };
    // Two canaries from the market's generator at served positions 7 and 41 (the last line).
    let mut canaries: Vec<Canary> = [(7u64, 11u64), (41, 12)]
        .into_iter()
        .map(|(at, seed)| Canary {
            at,
            id: Uuid::from_u128(at as u128),
            input: canary::generate(WorkloadKind::Embed, seed).unwrap(),
            answer: None,
        })
        .collect();
    let mut v = verifier();

    // No answer yet: the verifier refuses to decide (retry), never passes unchecked.
    let truth = canary_embeddings(&canaries);
    let placed: Vec<(u64, Vec<f32>)> = canaries.iter().map(|c| c.at).zip(truth.clone()).collect();
    let honest_out = served_output(&honest, &placed, &[]);
    assert!(matches!(v.prepare(&committed(&input, &honest_out, 0, &canaries)), Err(VerifyError::Unavailable(_))));
    // The market computes each answer once.
    let fresh = v.answer_canaries(WorkloadKind::Embed, &mut canaries).unwrap();
    assert_eq!(fresh.len(), 2);
    assert!(canaries.iter().all(|c| c.answer.is_some()));
    assert!(v.answer_canaries(WorkloadKind::Embed, &mut canaries).unwrap().is_empty(), "known answers are not recomputed");

    // The honest node passes: 40 verified items (canaries are not the studio's), the sample
    // drawn among the job's items and named by the studio's ids, both canaries checked.
    let ok = v.verify(&committed(&input, &honest_out, 0, &canaries)).expect("honest work verifies");
    assert_eq!(ok.ok, ITEMS as u64);
    assert_eq!(ok.canaries.len(), 2);
    assert!(ok.canaries.iter().all(|f| f.ok && f.cosine.unwrap() >= 0.999), "{:?}", ok.canaries);
    assert_eq!(ok.sampled.len(), verify::DEFAULT_SAMPLE_ITEMS);
    assert!(ok.sampled.iter().all(|id| id.starts_with('s')), "studio ids: {:?}", ok.sampled);
    let p = v.prepare(&committed(&input, &honest_out, 0, &canaries)).unwrap();
    assert!(p.item_numbers.iter().all(|&i| i < ITEMS as u64));

    // A node that fakes exactly the canaries (as if it knew them) and nothing else: every item
    // the sample could draw is honest, the canary check alone catches it.
    let faked: Vec<(u64, Vec<f32>)> = canaries.iter().map(|c| (c.at, fake.clone())).collect();
    let out = served_output(&honest, &faked, &[]);
    let f = expect_canary_failure(v.verify(&committed(&input, &out, 0, &canaries)), "faked canaries");
    assert!(f.why.contains("canary"), "{}", f.why);
    assert_eq!(f.evidence.canaries.iter().filter(|c| !c.ok).count(), 2);
    assert!(f.evidence.seed.is_none(), "it fails before any sample is drawn or re-run");

    // A node that reports a canary failed (no output line for it).
    let out = served_output(&honest, &placed, &[41]);
    let f = expect_canary_failure(v.verify(&committed(&input, &out, 1, &canaries)), "skipped canary");
    assert!(f.why.contains("i41 has no output"), "{}", f.why);

    // Faking every item: the canaries are among what it faked (it cannot tell them apart), so
    // it is caught before any verifying node (colluding or not) sees the sample.
    let all_fake: Vec<Vec<f32>> = vec![fake.clone(); ITEMS];
    let faked: Vec<(u64, Vec<f32>)> = canaries.iter().map(|c| (c.at, fake.clone())).collect();
    let out = served_output(&all_fake, &faked, &[]);
    expect_canary_failure(v.prepare(&committed(&input, &out, 0, &canaries)).map(|_| unreachable!()), "all fake");

    // Outputs under the studio's ids (not what it was served) do not check out.
    let ids: Vec<String> = (0..ITEMS).map(|i| format!("s{i}")).collect();
    let (text, root) = output_of(&ids, &honest);
    let sha = hex::encode(commitment::sha256(text.as_bytes()));
    let out = (text, root, sha);
    match v.prepare(&committed(&input, &out, 0, &[])) {
        Err(VerifyError::Mismatch(f)) => assert_eq!(f.check, FailedCheck::MissingItems),
        other => panic!("studio ids must not check: {other:?}"),
    }
}

#[test]
fn the_pool_and_the_layout_in_postgres() {
    let db = crate::fresh_db();
    let mut c = db.conn();
    let policy = CanaryPolicy { pool_size: 8, max_uses: 2, ..CanaryPolicy::default() };
    // 1000 items at 1 %: 10 canaries; more than the pool: it grows to what one assignment needs.
    let slots = canary::place(&mut c, &policy, MARKET, WorkloadKind::Embed, 1000, false).unwrap();
    assert_eq!(slots.len(), 10);
    assert!(slots.windows(2).all(|w| w[0].at < w[1].at) && slots.last().unwrap().at < 1010);
    let distinct: std::collections::BTreeSet<Uuid> = slots.iter().map(|s| s.id).collect();
    assert_eq!(distinct.len(), 10, "one canary at most once per assignment");
    let served = catalog::served_lines(1000, &slots).unwrap();
    assert_eq!(served.iter().filter(|l| matches!(l, catalog::ServedLine::Canary(_))).count(), 10);
    // Their inputs have the served shape; no answer until the first check.
    let loaded = canary::load(&mut c, &slots).unwrap();
    for k in &loaded {
        assert_eq!(executor::registry::served_fields(WorkloadKind::Embed, "i0", &k.input).unwrap(), k.input);
        assert!(k.answer.is_none());
    }
    // Stored answers are read back; a second store keeps the first.
    let answer = |x: f64| verify::NewAnswer {
        id: slots[0].id,
        answer: verify::Answer {
            record: Map::from_iter([("embedding".to_owned(), Value::from(vec![x]))]),
            hash: [7; 32],
        },
        manifest: Value::Null,
    };
    canary::store_answers(&mut c, &[answer(1.0)]).unwrap();
    canary::store_answers(&mut c, &[answer(2.0)]).unwrap();
    let again = canary::load(&mut c, &slots[..1]).unwrap();
    assert_eq!(again[0].answer.as_ref().unwrap().record["embedding"], Value::from(vec![1.0]));
    // Each canary is placed in at most max_uses (2) assignments, then retired and replaced.
    let mut uses: BTreeMap<Uuid, usize> = BTreeMap::new();
    for s in slots.iter().chain(canary::place(&mut c, &policy, MARKET, WorkloadKind::Embed, 1000, false).unwrap().iter()).chain(canary::place(&mut c, &policy, MARKET, WorkloadKind::Embed, 1000, false).unwrap().iter()) {
        *uses.entry(s.id).or_default() += 1;
    }
    assert!(uses.values().all(|&n| n <= 2), "{uses:?}");
    // None for a private model, for a kind without a pool, or at rate 0; at most the sample's
    // items get none at this rate unless the draw says so.
    assert!(canary::place(&mut c, &policy, MARKET, WorkloadKind::Embed, 1000, true).unwrap().is_empty());
    assert!(canary::place(&mut c, &policy, "RENDER-SD15-512", WorkloadKind::Sd, 1000, false).unwrap().is_empty());
    assert!(canary::place(&mut c, &CanaryPolicy::none(), MARKET, WorkloadKind::Embed, 1000, false).unwrap().is_empty());
    // A caught node's canaries are retired.
    let ids: Vec<Uuid> = slots.iter().map(|s| s.id).collect();
    assert_eq!(canary::retire(&mut c, &ids).unwrap(), 10);
    let later = canary::place(&mut c, &policy, MARKET, WorkloadKind::Embed, 1000, false).unwrap();
    assert!(later.iter().all(|s| !ids.contains(&s.id)), "retired canaries are never placed again");
}
