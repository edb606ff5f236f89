//! Deciding a verification task (`crosscheck::decide`) with the real MiniLM model on the real
//! ONNX Runtime: every combination of an honest or cheating first node and an honest, lying,
//! silent or colluding verifier. The end-to-end paths (a real second agent; a liar played over
//! HTTP and NATS) are in the API's tests (`services/api/tests/it/crosscheck.rs`).

use std::collections::BTreeMap;

use executor::commitment;
use gridbook_settlement::crosscheck::{Answer, TaskOutcome, decide};
use gridbook_settlement::verify::{self, SamplePolicy, Verifier};
use serde_json::json;
use uuid::Uuid;

use crate::cheating::{ITEMS, committed, honest_embeddings, input_file, output_file, output_of};

fn verifier() -> Verifier {
    Verifier::new(SamplePolicy::new(vec![0x42; 32], verify::DEFAULT_SAMPLE_ITEMS, BTreeMap::new()).unwrap())
}

fn unit_vector(len: usize) -> Vec<f32> {
    let mut v = vec![0.0; len];
    v[0] = 1.0;
    v
}

#[test]
fn crosscheck_decisions_against_the_real_model() {
    let input = input_file();
    let honest = honest_embeddings(&input);
    let fake = unit_vector(honest[0].len());
    let mut v = verifier();
    let assignment = Uuid::from_u128(0xabc);

    // The first node honest, or faking every item (consistent hashes and root).
    let (honest_out, honest_root) = output_file(&honest);
    let honest_sha = hex::encode(commitment::sha256(honest_out.as_bytes()));
    let (cheat_out, cheat_root) = output_file(&vec![fake.clone(); ITEMS]);
    let cheat_sha = hex::encode(commitment::sha256(cheat_out.as_bytes()));
    let first_honest = committed(assignment, &input, &honest_out, &honest_root, &honest_sha);
    let first_cheat = committed(assignment, &input, &cheat_out, &cheat_root, &cheat_sha);

    // What each side's task holds: the items its sample draws (from its own commitment), served
    // to the verifying node by position like any assignment's lines.
    let sample = |c: &verify::Committed<'_>| {
        let p = v.prepare(c).expect("the commitment checks out");
        let served: Vec<String> = (0..p.pairs.len() as u64).map(gridbook_wire::catalog::served_id).collect();
        (p.item_numbers.clone(), served)
    };
    let (honest_items, honest_ids) = sample(&first_honest);
    let (cheat_items, cheat_ids) = sample(&first_cheat);
    assert_eq!(honest_items.len(), verify::DEFAULT_SAMPLE_ITEMS);
    let true_vectors = |items: &[u64]| items.iter().map(|&i| honest[i as usize].clone()).collect::<Vec<_>>();
    let fakes = |n: usize| vec![fake.clone(); n];

    struct Case<'a> {
        name: &'a str,
        first: &'a verify::Committed<'a>,
        items: &'a [u64],
        /// The verifier's output (text, root) or why it has none.
        answer: Result<(String, String), &'a str>,
        expired: bool,
        first_passes: bool,
        outcome: TaskOutcome,
        market_rerun: bool,
        verifier_correct: Option<bool>,
    }
    let cases = [
        Case {
            name: "honest first, honest verifier: agreed without the market",
            first: &first_honest,
            items: &honest_items,
            answer: Ok(output_of(&honest_ids, &true_vectors(&honest_items))),
            expired: false,
            first_passes: true,
            outcome: TaskOutcome::Agreed,
            market_rerun: false,
            verifier_correct: Some(true),
        },
        Case {
            name: "honest first, lying verifier: the market clears the first node and proves the verifier wrong",
            first: &first_honest,
            items: &honest_items,
            answer: Ok(output_of(&honest_ids, &fakes(honest_items.len()))),
            expired: false,
            first_passes: true,
            outcome: TaskOutcome::Disagreed,
            market_rerun: true,
            verifier_correct: Some(false),
        },
        Case {
            name: "cheating first, honest verifier: the market fails the first node, the verifier was right",
            first: &first_cheat,
            items: &cheat_items,
            answer: Ok(output_of(&cheat_ids, &true_vectors(&cheat_items))),
            expired: false,
            first_passes: false,
            outcome: TaskOutcome::Disagreed,
            market_rerun: true,
            verifier_correct: Some(true),
        },
        Case {
            name: "honest first, silent verifier: the market re-runs it itself",
            first: &first_honest,
            items: &honest_items,
            answer: Err("the verifying node did not answer within 120 s"),
            expired: true,
            first_passes: true,
            outcome: TaskOutcome::Expired,
            market_rerun: true,
            verifier_correct: None,
        },
        Case {
            name: "cheating first, verifier answers garbage (wrong root): the market decides",
            first: &first_cheat,
            items: &cheat_items,
            answer: Ok((output_of(&cheat_ids, &true_vectors(&cheat_items)).0, "00".repeat(32))),
            expired: false,
            first_passes: false,
            outcome: TaskOutcome::Failed,
            market_rerun: true,
            verifier_correct: None,
        },
        // The limit, stated as a test: two nodes of one operator that the cluster rules did not
        // link (other networks, machines, accounts) can agree on the same wrong answer, and the
        // market re-runs only disagreements (ARCHITECTURE.md, "What is trusted today").
        Case {
            name: "cheating first, colluding verifier with the same fakes: passes",
            first: &first_cheat,
            items: &cheat_items,
            answer: Ok(output_of(&cheat_ids, &fakes(cheat_items.len()))),
            expired: false,
            first_passes: true,
            outcome: TaskOutcome::Agreed,
            market_rerun: false,
            verifier_correct: Some(true),
        },
    ];
    for c in &cases {
        let answer = match &c.answer {
            Ok((text, root)) => Answer::Output { text, merkle_root: root, reported_failed: 0 },
            Err(why) => Answer::None((*why).to_owned()),
        };
        let d = decide(&mut v, c.first, c.items, answer, c.expired, Some(&json!({"node": "verifier"})))
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(d.verdict.is_ok(), c.first_passes, "{}: {d:?}", c.name);
        assert_eq!((d.outcome, d.market_rerun, d.verifier_correct), (c.outcome, c.market_rerun, c.verifier_correct), "{}: {}", c.name, d.detail);
        assert!(d.blame_verifier || !c.market_rerun, "{}: the sample did not change", c.name);
        match &d.verdict {
            Ok(ok) => {
                assert_eq!(ok.ok, ITEMS as u64, "{}", c.name);
                assert_eq!(ok.items.len(), c.items.len(), "{}", c.name);
                // Agreement keeps the verifier's manifest; a market decision the market's.
                let by_node = ok.reference_manifest == json!({"node": "verifier"});
                assert_eq!(by_node, !c.market_rerun, "{}: {}", c.name, ok.reference_manifest);
            }
            Err(f) => {
                assert_eq!(f.check, gridbook_db::status::FailedCheck::SampleMismatch, "{}", c.name);
                assert!(f.evidence.seed.is_some() && f.evidence.sampled.len() == c.items.len(), "{}: {f:?}", c.name);
                assert!(f.evidence.items.iter().any(|i| !i.ok && i.cosine.is_some_and(|x| x < 0.999)), "{}: {f:?}", c.name);
            }
        }
    }

    // A task whose items are not the sample drawn now (the market's secret changed since it was
    // sent): the market decides, and the verifier is not blamed.
    let mut other = verifier();
    let shifted: Vec<u64> = honest_items.iter().map(|i| (i + 1) % ITEMS as u64).collect();
    let (text, root) = output_of(&honest_ids, &true_vectors(&honest_items));
    let d = decide(
        &mut other,
        &first_honest,
        &shifted,
        Answer::Output { text: &text, merkle_root: &root, reported_failed: 0 },
        false,
        None,
    )
    .unwrap();
    assert!(d.verdict.is_ok() && d.market_rerun && !d.blame_verifier, "{d:?}");
}
