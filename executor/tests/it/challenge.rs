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
