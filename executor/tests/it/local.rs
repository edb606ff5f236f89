use executor::embed::{EmbedConfig, EmbedWorkload, Embedder};
use executor::local::{artifact_name, parse_jsonl, run_file};

use crate::common;

fn workload() -> EmbedWorkload {
    EmbedWorkload {
        embedder: Embedder::load(common::cpu(), &common::models(), EmbedConfig::default()).unwrap(),
    }
}

#[test]
fn bad_lines_go_to_the_error_file_and_good_lines_still_run() {
    let dir = common::tmp_dir("badlines");
    let input = dir.join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"custom_id\":\"a\",\"input\":\"The weather is lovely today\"}\n",
            "not json\n",
            "{\"custom_id\":\"b\",\"input\":42}\n",
            "{\"input\":\"no id\"}\n",
            "\n",
            "[1,2]\n",
            "{\"custom_id\":\"a\",\"input\":\"duplicate\"}\n",
            "{\"custom_id\":\"c\",\"body\":{\"input\":\"OpenAI batch style\"}}\n",
            "{\"custom_id\":\"d\"}\n",
            "{\"custom_id\":7,\"input\":\"x\"}\n",
        ),
    )
    .unwrap();
    let out = dir.join("out.jsonl");
    let mut w = workload();
    let report = run_file(&mut w, &input, &out, executor::local::OutputFormat::Gridbook, &|_| {}, &|_| {}).unwrap();
    assert_eq!((report.succeeded, report.failed), (2, 7));

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["custom_id"], "a");
    assert_eq!(lines[1]["custom_id"], "c");
    assert_eq!(lines[0]["embedding"].as_array().unwrap().len(), 384);

    let errors: Vec<serde_json::Value> = std::fs::read_to_string(&report.paths.errors)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary: Vec<(u64, Option<&str>, Option<&str>)> = errors
        .iter()
        .map(|e| {
            (
                e["line"].as_u64().unwrap(),
                e["custom_id"].as_str(),
                e["field"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (2, None, None),
            (3, Some("b"), Some("input")),
            (4, None, Some("custom_id")),
            (6, None, None),
            (7, Some("a"), Some("custom_id")),
            (9, Some("d"), Some("input")),
            (10, None, Some("custom_id")),
        ]
    );
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("invalid JSON")
    );
    assert!(errors[4]["message"].as_str().unwrap().contains("duplicate"));

    // the commitment covers exactly the delivered items and recomputes from the output file
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report.paths.commitment).unwrap()).unwrap();
    let c: executor::commitment::Commitment =
        serde_json::from_value(doc["commitment"].clone()).unwrap();
    assert_eq!(c.items.len(), 2);
    assert_eq!(c.recompute_root().unwrap(), c.merkle_root);
    for (line, item) in lines.iter().zip(&c.items) {
        let v: Vec<f32> = line["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let h = hex::encode(executor::commitment::sha256(
            &executor::commitment::embedding_bytes(&v),
        ));
        assert_eq!(
            h, item.sha256,
            "the JSON floats round-trip to the committed bytes"
        );
        assert_eq!(line["sha256"], item.sha256.as_str());
    }
    assert_eq!(
        doc["manifest"]["models"]["model"],
        executor::models::pinned::MINILM_L6_INT8
    );
    assert_eq!(
        doc["manifest"]["execution_provider"],
        "CPUExecutionProvider"
    );
    assert_eq!(doc["manifest"]["ort_version"], "1.31.1");
}

#[test]
fn parser_reports_line_numbers_without_running_models() {
    let w = workload();
    let parsed = parse_jsonl(
        &w,
        "{\"custom_id\":\"x\",\"input\":\"ok\"}\n{\"custom_id\":\"\",\"input\":\"e\"}\n".as_bytes(),
    );
    assert_eq!(parsed.items.len(), 1);
    assert_eq!(parsed.errors[0].line, 2);
    assert_eq!(parsed.errors[0].field.as_deref(), Some("custom_id"));
}

#[test]
fn artifact_names_are_safe_and_distinct() {
    assert_eq!(artifact_name("r1", "png"), "r1.png");
    let a = artifact_name("a/b", "png");
    let b = artifact_name("a_b", "png");
    assert!(a.starts_with("a_b-") && a.ends_with(".png"));
    assert_ne!(a, b);
    assert!(!artifact_name("../../etc", "png").contains('/'));
}

#[test]
fn a_byte_order_mark_is_accepted_and_the_openai_batch_envelope_is_written() {
    let dir = common::tmp_dir("openai-batch");
    let input = dir.join("in.jsonl");
    std::fs::write(
        &input,
        "\u{feff}{\"custom_id\":\"a\",\"input\":\"The weather is lovely today\"}\n{\"custom_id\":\"b\",\"input\":42}\n",
    )
    .unwrap();
    let out = dir.join("out.jsonl");
    let mut w = workload();
    let report = run_file(&mut w, &input, &out, executor::local::OutputFormat::OpenAiBatch, &|_| {}, &|_| {}).unwrap();
    assert_eq!((report.succeeded, report.failed), (1, 1), "the BOM line is an item");
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&out).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(line["id"], "batch_req_000001");
    assert_eq!(line["custom_id"], "a");
    assert_eq!(line["error"], serde_json::Value::Null);
    assert_eq!(line["response"]["status_code"], 200);
    let body = &line["response"]["body"];
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "EMBED-MINILM-L6");
    assert_eq!(body["data"][0]["object"], "embedding");
    assert_eq!(body["data"][0]["index"], 0);
    assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 384);
    let err: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&report.paths.errors).unwrap().lines().next().unwrap(),
    )
    .unwrap();
    assert_eq!(err["custom_id"], "b");
    assert_eq!(err["id"], "batch_req_000002", "numbered by request (its line among the non-blank ones)");
    assert_eq!(err["response"], serde_json::Value::Null);
    assert_eq!(err["error"]["code"], "invalid_request");
    assert_eq!(err["error"]["message"], "line 2: input: expected a string");
}

/// `executor run` as a user runs it: exit 1 with the first errors on stderr when nothing
/// succeeded (every line bad, or an empty file), each cause said once.
#[test]
fn executor_run_fails_when_no_item_succeeded_and_says_why() {
    let dir = common::tmp_dir("exit-codes");
    let run = |name: &str, text: &str| {
        let input = dir.join(name);
        std::fs::write(&input, text).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_executor"))
            .args(["run", "--workload", "embed", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(dir.join(format!("{name}.out.jsonl")))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let bad = run("bad.jsonl", "{\"custom_id\":\"a\"}\nnot json\n");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("line 1 (a): input: missing"), "{stderr}");
    assert!(stderr.contains("line 2: invalid JSON"), "{stderr}");
    assert!(stderr.contains("error: no item succeeded: all 2 lines failed"), "{stderr}");
    let empty = run("empty.jsonl", "\n\n");
    let stderr = String::from_utf8_lossy(&empty.stderr);
    assert_eq!(empty.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("has no input lines"), "{stderr}");
    let good = run("good.jsonl", "{\"custom_id\":\"a\",\"input\":\"hi\"}\n");
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    // A missing file: the OS error once, not repeated by each layer.
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_executor"))
        .args(["run", "--workload", "embed", "--input", "/nonexistent/in.jsonl", "--output"])
        .arg(dir.join("m.jsonl"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.matches("No such file or directory").count(), 1, "{stderr}");
}
