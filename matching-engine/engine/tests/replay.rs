//! Runs the real binary on the logs in `tests/data/` (tests as data). `UPDATE_EXPECT=1`
//! rewrites `*.expected.jsonl`; review the diff.

use std::path::Path;
use std::process::Command;

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn replay(file: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_matching-engine"))
        .arg("replay")
        .arg(file)
        .output()
        .expect("run binary")
}

#[test]
fn sample_log_gives_expected_events() {
    let out = replay(&data("sample.jsonl"));
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let actual = String::from_utf8(out.stdout).unwrap();
    let expected_path = data("sample.expected.jsonl");
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        std::fs::write(&expected_path, &actual).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap();
    assert_eq!(actual, expected, "UPDATE_EXPECT=1 to rewrite");
    // Deterministic: a second run is byte-identical.
    assert_eq!(replay(&data("sample.jsonl")).stdout, expected.as_bytes());
}

#[test]
fn bad_line_is_named_and_earlier_events_are_printed() {
    let out = replay(&data("bad.jsonl"));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 3"), "stderr: {stderr}");
    assert!(stderr.contains("sideways"), "stderr: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 4, "events of lines 1-2: {stdout}");
    assert!(stdout.lines().last().unwrap().contains("\"cmd\":2"));
}
