//! The hardware challenge with the real MiniLM model.

use executor::challenge;

use crate::embed::embedder;

#[test]
fn real_model_answers_its_own_challenge_and_a_wrong_one_fails() {
    let e = embedder();
    let (answer, elapsed) = challenge::run(e, "nonce-abc", 32).unwrap();
    assert_eq!(answer.len(), 32);
    assert!(answer.iter().all(|v| v.len() == 384));
    eprintln!("challenge of 32 items in {} ms", elapsed.as_millis());
    // The market's reference run (same texts, other batching) agrees.
    let texts = challenge::inputs("nonce-abc", 32);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let reference = e.embed(&refs).unwrap();
    challenge::verify(&reference, &answer).unwrap();
    // An answer to another nonce does not pass, and the message names item 0.
    let (other, _) = challenge::run(e, "nonce-xyz", 32).unwrap();
    let err = challenge::verify(&reference, &other).unwrap_err();
    assert!(err.starts_with("item 0:"), "{err}");
}

/// The market re-runs only the sampled items (other batches than the node's full run): they
/// agree with the full run's items, and the node's committed leaves bind the vectors it reveals.
#[test]
fn a_sample_rerun_agrees_with_the_full_run_and_the_leaves_bind_it() {
    let e = embedder();
    let (full, _) = challenge::run(e, "nonce-sample", 64).unwrap();
    let leaves = challenge::leaves(&full);
    let picks = [63, 0, 17, 5];
    let (rerun, _) = challenge::run_at(e, "nonce-sample", &picks).unwrap();
    let sample: Vec<challenge::Sampled> = picks
        .iter()
        .map(|&i| {
            let mut leaf = [0u8; 32];
            hex::decode_to_slice(&leaves[i], &mut leaf).unwrap();
            challenge::Sampled { index: i, leaf }
        })
        .collect();
    let revealed: Vec<Vec<f32>> = picks.iter().map(|&i| full[i].clone()).collect();
    challenge::verify_sample(&sample, &rerun, &revealed).unwrap();
    // The re-run's own vectors need not be bit-equal to the node's: they are not what was
    // committed, so they are refused by the leaf check whenever they differ.
    let mut swapped = revealed.clone();
    swapped.swap(0, 1);
    let err = challenge::verify_sample(&sample, &rerun, &swapped).unwrap_err();
    assert!(err.starts_with("item 63: the revealed embedding does not hash"), "{err}");
}
