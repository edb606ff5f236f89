//! Local mode: a JSONL file in, output files out, no market.
//!
//! For `--output out.jsonl` the runner writes:
//! * `out.jsonl` — one line per successful item, in input order: `{"custom_id": .., <fields>}`;
//!   renders add `"file"` (PNG path relative to the output's folder) and `"sha256"`.
//! * `out.files/` — the PNG files of renders, named after the custom_id (sanitised; a short
//!   hash of the id is appended when sanitising changed it).
//! * `out.errors.jsonl` — one line per failed line or item:
//!   `{"line": n, "custom_id": .. or null, "field": .. or null, "message": ..}`. A bad line never
//!   stops the good ones.
//! * `out.commitment.json` — `{"manifest": .., "commitment": ..}` (see [`crate::commitment`]).

use std::collections::HashSet;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::commitment::{Commitment, Manifest};
use crate::error::{ExecutorError, Result};
use crate::runtime::RunControl;
use crate::workload::{FieldError, Workload, run_items_controlled};

/// Longest accepted input line (bytes); longer lines are rejected as errors.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// A rejected input line or failed item.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LineError {
    pub line: usize,
    pub custom_id: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

/// A parsed input file: good items (with their line numbers) and rejected lines.
pub struct Parsed<T> {
    pub items: Vec<(usize, String, T)>,
    pub errors: Vec<LineError>,
}

/// Parses JSONL text: every line independently; blank lines are skipped.
pub fn parse_jsonl<W: Workload>(workload: &W, reader: impl BufRead) -> Parsed<W::Input> {
    let mut items = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for (idx, line) in reader.split(b'\n').enumerate() {
        let line_no = idx + 1;
        let err = |custom_id: Option<String>, e: FieldError| LineError {
            line: line_no,
            custom_id,
            field: Some(e.field),
            message: e.message,
        };
        let bytes = match line {
            Ok(b) => b,
            Err(e) => {
                errors.push(LineError {
                    line: line_no,
                    custom_id: None,
                    field: None,
                    message: format!("read error: {e}"),
                });
                break;
            }
        };
        if bytes.len() > MAX_LINE_BYTES {
            errors.push(LineError {
                line: line_no,
                custom_id: None,
                field: None,
                message: format!("line longer than {MAX_LINE_BYTES} bytes"),
            });
            continue;
        }
        let text = match std::str::from_utf8(&bytes) {
            // A UTF-8 byte-order mark before the first line is not part of the JSON.
            Ok(t) if line_no == 1 => t.strip_prefix('\u{feff}').unwrap_or(t).trim(),
            Ok(t) => t.trim(),
            Err(_) => {
                errors.push(LineError {
                    line: line_no,
                    custom_id: None,
                    field: None,
                    message: "not valid UTF-8".into(),
                });
                continue;
            }
        };
        if text.is_empty() {
            continue;
        }
        let mut obj: Map<String, Value> = match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(o)) => o,
            Ok(_) => {
                errors.push(LineError {
                    line: line_no,
                    custom_id: None,
                    field: None,
                    message: "expected a JSON object".into(),
                });
                continue;
            }
            Err(e) => {
                errors.push(LineError {
                    line: line_no,
                    custom_id: None,
                    field: None,
                    message: format!("invalid JSON: {e}"),
                });
                continue;
            }
        };
        let custom_id = match obj.remove("custom_id") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => s,
            Some(Value::String(_)) => {
                errors.push(err(
                    None,
                    FieldError::new("custom_id", "must be 1 to 256 bytes"),
                ));
                continue;
            }
            Some(_) => {
                errors.push(err(None, FieldError::new("custom_id", "expected a string")));
                continue;
            }
            None => {
                errors.push(err(None, FieldError::new("custom_id", "missing")));
                continue;
            }
        };
        if !seen.insert(custom_id.clone()) {
            errors.push(err(
                Some(custom_id),
                FieldError::new("custom_id", "duplicate custom_id"),
            ));
            continue;
        }
        match workload.parse(&custom_id, &obj) {
            Ok(input) => items.push((line_no, custom_id, input)),
            Err(e) => errors.push(err(Some(custom_id), e)),
        }
    }
    Parsed { items, errors }
}

/// Where local mode writes its files.
#[derive(Debug, Clone)]
pub struct OutputPaths {
    pub output: PathBuf,
    pub errors: PathBuf,
    pub commitment: PathBuf,
    pub files_dir: PathBuf,
}

impl OutputPaths {
    pub fn for_output(output: &Path) -> Self {
        let stem = output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let dir = output.parent().map(Path::to_path_buf).unwrap_or_default();
        Self {
            output: output.to_owned(),
            errors: dir.join(format!("{stem}.errors.jsonl")),
            commitment: dir.join(format!("{stem}.commitment.json")),
            files_dir: dir.join(format!("{stem}.files")),
        }
    }
}

/// How local mode writes its output and error lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// `{"custom_id", <fields>}` per item; errors `{"line","custom_id","field","message"}`.
    #[default]
    Gridbook,
    /// OpenAI's Batch envelope, what Batch users' parsers read: outputs
    /// `{"id","custom_id","response":{"status_code":200,"request_id","body"},"error":null}`,
    /// errors `{"id","custom_id","response":null,"error":{"code","message"}}`. An embedding's
    /// body is an embeddings response (`object: list`, one `embedding` at index 0, `model`);
    /// another workload's body is its Gridbook fields. No token usage is reported (none is
    /// counted).
    OpenAiBatch,
}

/// An output line (the Gridbook record, `custom_id` included) in OpenAI's Batch envelope;
/// `n` numbers the request (1-based, input order).
pub fn openai_batch_output(n: usize, model: &str, mut record: Map<String, Value>) -> Value {
    let custom_id = record.remove("custom_id").unwrap_or(Value::Null);
    let body = match record.remove("embedding") {
        Some(embedding) => serde_json::json!({
            "object": "list",
            "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
            "model": model,
        }),
        None => Value::Object(record),
    };
    serde_json::json!({
        "id": format!("batch_req_{n:06}"),
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": format!("gridbook-{n:06}"), "body": body},
        "error": null,
    })
}

/// An error line in OpenAI's Batch envelope: `invalid_request` for a line refused before it
/// ran, `item_failed` for an item whose run failed; the message names the line and field.
pub fn openai_batch_error(n: usize, e: &LineError) -> Value {
    let code = if e.field.is_some() || e.custom_id.is_none() { "invalid_request" } else { "item_failed" };
    let message = match &e.field {
        Some(f) => format!("line {}: {f}: {}", e.line, e.message),
        None => format!("line {}: {}", e.line, e.message),
    };
    serde_json::json!({
        "id": format!("batch_req_{n:06}"),
        "custom_id": e.custom_id,
        "response": null,
        "error": {"code": code, "message": message},
    })
}

/// Summary of a local run.
#[derive(Debug)]
pub struct LocalReport {
    pub paths: OutputPaths,
    pub succeeded: usize,
    pub failed: usize,
    /// The first few errors (by line), for the command line.
    pub first_errors: Vec<LineError>,
    pub commitment: Commitment,
    pub manifest: Manifest,
    pub elapsed: std::time::Duration,
}

/// File name for an artifact: the custom_id if it is already safe, else sanitised + short hash.
pub fn artifact_name(custom_id: &str, ext: &str) -> String {
    let safe: String = custom_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let safe = safe.trim_start_matches('.');
    if safe == custom_id && !safe.is_empty() {
        format!("{safe}.{ext}")
    } else {
        let h = hex::encode(&crate::commitment::sha256(custom_id.as_bytes())[..4]);
        format!("{safe}-{h}.{ext}")
    }
}

/// Where a run puts binary artifacts (PNG renders).
#[derive(Debug, Clone, Copy)]
pub enum Artifacts<'a> {
    /// Local mode: written under this folder; the line gets `"file": "<folder name>/<name>"`.
    Dir(&'a Path),
    /// Market mode: the line gets `"image_png_b64"` (the output object is self-contained).
    Inline,
}

/// The outputs of a JSONL run, in memory.
#[derive(Debug)]
pub struct JsonlRun {
    /// The output JSONL: one line per successful item, input order.
    pub output: Vec<u8>,
    /// Rejected lines and failed items, sorted by line.
    pub errors: Vec<LineError>,
    pub succeeded: usize,
    pub commitment: Commitment,
    pub manifest: Manifest,
}

/// Parses and runs JSONL text and formats the output lines (the one code path of local mode and
/// the market agent, so both produce the same bytes). `line_offset` is added to every reported
/// line number (an assignment's first line in its job's file). A cancel through `control`
/// returns [`ExecutorError::Cancelled`].
pub fn run_reader<W: Workload>(
    workload: &mut W,
    reader: impl BufRead,
    line_offset: usize,
    artifacts: Artifacts<'_>,
    progress: &dyn Fn(u64),
    on_total: &dyn Fn(u64),
    control: Option<&RunControl>,
) -> Result<JsonlRun> {
    let parsed = parse_jsonl(workload, reader);
    let mut errors = parsed.errors;
    for e in &mut errors {
        e.line += line_offset;
    }
    on_total(parsed.items.len() as u64);
    tracing::info!(
        workload = workload.id(),
        items = parsed.items.len(),
        rejected = errors.len(),
        "input parsed"
    );

    let lines: Vec<usize> = parsed
        .items
        .iter()
        .map(|(l, _, _)| *l + line_offset)
        .collect();
    let items: Vec<(String, W::Input)> =
        parsed.items.into_iter().map(|(_, id, x)| (id, x)).collect();
    let result = run_items_controlled(workload, items, progress, control)?;

    let mut out: Vec<u8> = Vec::new();
    let mut succeeded = 0;
    for ((custom_id, res), line) in result.outputs.into_iter().zip(lines) {
        match res {
            Ok(item) => {
                let mut rec = Map::new();
                rec.insert("custom_id".into(), Value::String(custom_id.clone()));
                if let Some(bytes) = &item.artifact {
                    match artifacts {
                        Artifacts::Dir(files_dir) => {
                            std::fs::create_dir_all(files_dir)
                                .map_err(|e| ExecutorError::io(files_dir, e))?;
                            let name = artifact_name(&custom_id, "png");
                            let path = files_dir.join(&name);
                            std::fs::write(&path, bytes)
                                .map_err(|e| ExecutorError::io(&path, e))?;
                            let dir_name = files_dir
                                .file_name()
                                .map(|s| s.to_string_lossy().into_owned())
                                .unwrap_or_default();
                            rec.insert("file".into(), Value::String(format!("{dir_name}/{name}")));
                        }
                        Artifacts::Inline => {
                            use base64::Engine as _;
                            rec.insert(
                                "image_png_b64".into(),
                                Value::String(
                                    base64::engine::general_purpose::STANDARD.encode(bytes),
                                ),
                            );
                        }
                    }
                }
                rec.insert("sha256".into(), Value::String(hex::encode(item.hash)));
                rec.extend(item.record);
                serde_json::to_writer(&mut out, &rec)
                    .map_err(|e| ExecutorError::io("<output>", e.into()))?;
                out.push(b'\n');
                succeeded += 1;
            }
            Err(message) => errors.push(LineError {
                line,
                custom_id: Some(custom_id),
                field: None,
                message,
            }),
        }
    }
    errors.sort_by_key(|e| e.line);
    Ok(JsonlRun {
        output: out,
        errors,
        succeeded,
        commitment: result.commitment,
        manifest: result.manifest,
    })
}

/// Runs a JSONL file through a workload and writes the output, error and commitment files.
pub fn run_file<W: Workload>(
    workload: &mut W,
    input: &Path,
    output: &Path,
    format: OutputFormat,
    progress: &dyn Fn(u64),
    on_total: &dyn Fn(u64),
) -> Result<LocalReport> {
    let started = std::time::Instant::now();
    let f = std::fs::File::open(input).map_err(|e| ExecutorError::io(input, e))?;
    tracing::info!(input = %input.display(), "reading input");
    let paths = OutputPaths::for_output(output);
    let run = run_reader(
        workload,
        std::io::BufReader::new(f),
        0,
        Artifacts::Dir(&paths.files_dir),
        progress,
        on_total,
        None,
    )?;
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ExecutorError::io(dir, e))?;
    }
    let bytes = match format {
        OutputFormat::Gridbook => run.output,
        OutputFormat::OpenAiBatch => {
            let mut out = Vec::with_capacity(run.output.len() + run.output.len() / 8);
            for (i, line) in run.output.split(|&b| b == b'\n').filter(|l| !l.is_empty()).enumerate() {
                let rec: Map<String, Value> = serde_json::from_slice(line)
                    .map_err(|e| ExecutorError::io(output, e.into()))?;
                serde_json::to_writer(&mut out, &openai_batch_output(i + 1, &run.manifest.workload, rec))
                    .map_err(|e| ExecutorError::io(output, e.into()))?;
                out.push(b'\n');
            }
            out
        }
    };
    std::fs::write(output, &bytes).map_err(|e| ExecutorError::io(output, e))?;
    let errors = run.errors;
    let result = run.commitment;
    let manifest = run.manifest;
    let succeeded = run.succeeded;

    let mut ef = BufWriter::new(
        std::fs::File::create(&paths.errors).map_err(|e| ExecutorError::io(&paths.errors, e))?,
    );
    for (i, e) in errors.iter().enumerate() {
        match format {
            OutputFormat::Gridbook => serde_json::to_writer(&mut ef, e),
            OutputFormat::OpenAiBatch => serde_json::to_writer(&mut ef, &openai_batch_error(succeeded + i + 1, e)),
        }
        .map_err(|er| ExecutorError::io(&paths.errors, er.into()))?;
        ef.write_all(b"\n")
            .map_err(|er| ExecutorError::io(&paths.errors, er))?;
    }
    ef.flush()
        .map_err(|e| ExecutorError::io(&paths.errors, e))?;

    let doc = serde_json::json!({ "manifest": manifest, "commitment": result });
    let text = serde_json::to_string_pretty(&doc)
        .map_err(|e| ExecutorError::io(&paths.commitment, e.into()))?;
    std::fs::write(&paths.commitment, text + "\n")
        .map_err(|e| ExecutorError::io(&paths.commitment, e))?;

    Ok(LocalReport {
        paths,
        succeeded,
        failed: errors.len(),
        first_errors: errors.iter().take(5).cloned().collect(),
        commitment: result,
        manifest,
        elapsed: started.elapsed(),
    })
}
