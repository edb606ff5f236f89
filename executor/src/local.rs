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
//!
//! The run streams ([`run_stream`]): lines are parsed, run and written a bounded chunk at a
//! time, so output appears while it runs and memory does not grow with the file. While it runs,
//! `out.commitment.items.jsonl` holds the committed items and `out.progress.json` says how far
//! the written files go; a restart resumes from there ([`run_file_with`]; the rule is in the
//! executor README, "Streaming, bounded memory, resume").

use std::collections::HashSet;
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use sha2::{Digest, Sha256};

use crate::commitment::{Commitment, Hash, Manifest, MerkleBuilder, SCHEME};
use crate::error::{ExecutorError, Result};
use crate::runtime::RunControl;
use crate::workload::{FieldError, ItemOutput, Workload};

/// Longest accepted input line (bytes); longer lines are rejected as errors.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// A rejected input line or failed item.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// Hash of a custom_id for the duplicate check: 128 bits of sha256, so the set of ids seen
/// costs 16 bytes per item however long the ids are (a collision is out of reach).
fn id_key(custom_id: &str) -> u128 {
    let h = crate::commitment::sha256(custom_id.as_bytes());
    u128::from_le_bytes(h[..16].try_into().expect("16 bytes"))
}

/// Parses one input line (`bytes` without its `\n`); `None` for a blank line. `seen` holds
/// the custom_ids of the lines before (a repeated id is refused).
pub fn parse_line<W: Workload>(
    workload: &W,
    seen: &mut HashSet<u128>,
    line_no: usize,
    bytes: &[u8],
) -> Option<std::result::Result<(String, W::Input), LineError>> {
    let plain = |message: String| LineError {
        line: line_no,
        custom_id: None,
        field: None,
        message,
    };
    let err = |custom_id: Option<String>, e: FieldError| LineError {
        line: line_no,
        custom_id,
        field: Some(e.field),
        message: e.message,
    };
    if bytes.len() > MAX_LINE_BYTES {
        return Some(Err(too_long(line_no)));
    }
    let text = match std::str::from_utf8(bytes) {
        // A UTF-8 byte-order mark before the first line is not part of the JSON.
        Ok(t) if line_no == 1 => t.strip_prefix('\u{feff}').unwrap_or(t).trim(),
        Ok(t) => t.trim(),
        Err(_) => return Some(Err(plain("not valid UTF-8".into()))),
    };
    if text.is_empty() {
        return None;
    }
    let mut obj: Map<String, Value> = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Some(Err(plain("expected a JSON object".into()))),
        Err(e) => return Some(Err(plain(format!("invalid JSON: {e}")))),
    };
    let custom_id = match obj.remove("custom_id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => s,
        Some(Value::String(_)) => {
            return Some(Err(err(None, FieldError::new("custom_id", "must be 1 to 256 bytes"))));
        }
        Some(_) => return Some(Err(err(None, FieldError::new("custom_id", "expected a string")))),
        None => return Some(Err(err(None, FieldError::new("custom_id", "missing")))),
    };
    if !seen.insert(id_key(&custom_id)) {
        return Some(Err(err(
            Some(custom_id),
            FieldError::new("custom_id", "duplicate custom_id"),
        )));
    }
    Some(match workload.parse(&custom_id, &obj) {
        Ok(input) => Ok((custom_id, input)),
        Err(e) => Err(err(Some(custom_id), e)),
    })
}

fn too_long(line: usize) -> LineError {
    LineError {
        line,
        custom_id: None,
        field: None,
        message: format!("line longer than {MAX_LINE_BYTES} bytes"),
    }
}

/// One line read by [`read_line`].
enum Line {
    /// The line's bytes (without `\n`; `len` counts the input bytes it took, `\n` included).
    Text { bytes: Vec<u8>, len: u64 },
    /// A line over [`MAX_LINE_BYTES`], skipped without holding it (`len` as above).
    TooLong { len: u64 },
}

impl Line {
    fn len(&self) -> u64 {
        match self {
            Line::Text { len, .. } | Line::TooLong { len } => *len,
        }
    }
}

/// Reads one line, holding at most [`MAX_LINE_BYTES`] + 1 bytes of it; `Ok(None)` at the end.
/// Every byte consumed (the `\n` included) goes through `hasher`.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>, hasher: &mut Sha256) -> std::io::Result<Option<Line>> {
    buf.clear();
    let mut len: u64 = 0;
    let mut too_long = false;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            if len == 0 {
                return Ok(None);
            }
            break;
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let data = &chunk[..if done { take - 1 } else { take }];
        if !too_long {
            if buf.len() + data.len() > MAX_LINE_BYTES {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(data);
            }
        }
        hasher.update(&chunk[..take]);
        len += take as u64;
        reader.consume(take);
        if done {
            break;
        }
    }
    Ok(Some(if too_long {
        Line::TooLong { len }
    } else {
        Line::Text { bytes: std::mem::take(buf), len }
    }))
}

/// Parses JSONL text: every line independently; blank lines are skipped. Holds every item:
/// for checking an upload; runs stream with [`run_stream`] instead.
pub fn parse_jsonl<W: Workload>(workload: &W, mut reader: impl BufRead) -> Parsed<W::Input> {
    let mut items = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    let mut buf = Vec::new();
    let mut hasher = Sha256::new();
    let mut line_no = 0;
    loop {
        line_no += 1;
        let bytes = match read_line(&mut reader, &mut buf, &mut hasher) {
            Ok(None) => break,
            Ok(Some(Line::Text { bytes, .. })) => bytes,
            Ok(Some(Line::TooLong { .. })) => {
                errors.push(too_long(line_no));
                continue;
            }
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
        match parse_line(workload, &mut seen, line_no, &bytes) {
            None => {}
            Some(Ok((id, input))) => items.push((line_no, id, input)),
            Some(Err(e)) => errors.push(e),
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
    /// While a run goes: the committed `{"custom_id","sha256"}` per output line (the commitment
    /// file's items, written into it at the end).
    pub items: PathBuf,
    /// While a run goes: where it is, rewritten after each chunk (see [`run_file_with`]).
    pub progress: PathBuf,
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
            items: dir.join(format!("{stem}.commitment.items.jsonl")),
            progress: dir.join(format!("{stem}.progress.json")),
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

/// Items in one streamed chunk at most (parsed inputs, their tokenisations and outputs are held
/// for one chunk only); a workload may ask for fewer ([`Workload::stream_chunk_items`]).
pub const DEFAULT_CHUNK_ITEMS: usize = 1024;

/// The first chunk's items: chunks start small and double up to the bound, so the first output
/// lines appear within seconds.
pub const FIRST_CHUNK_ITEMS: usize = 32;

/// How much of its input a streamed run has consumed and what it committed to so far.
pub struct StreamState {
    /// Input lines consumed (blank lines included).
    pub lines: usize,
    /// Input bytes consumed (the `\n` of each line included).
    pub input_bytes: u64,
    input_hash: Sha256,
    /// Non-blank lines consumed (each one request: an output line or an error line).
    pub requests: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// The Merkle root so far, over the leaves of the successful items in input order.
    pub merkle: MerkleBuilder,
    seen: HashSet<u128>,
}

impl Default for StreamState {
    fn default() -> Self {
        Self {
            lines: 0,
            input_bytes: 0,
            input_hash: Sha256::new(),
            requests: 0,
            succeeded: 0,
            failed: 0,
            merkle: MerkleBuilder::new(),
            seen: HashSet::new(),
        }
    }
}

impl StreamState {
    /// sha256 of the input bytes consumed so far, hex.
    pub fn input_sha256(&self) -> String {
        hex::encode(self.input_hash.clone().finalize())
    }

    /// Reads one line of input, accounting its bytes.
    fn read(&mut self, reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Option<Line>> {
        let line = read_line(reader, buf, &mut self.input_hash)?;
        if let Some(l) = &line {
            self.lines += 1;
            self.input_bytes += l.len();
        }
        Ok(line)
    }
}

/// Where a streamed run's lines go, chunk by chunk, in input order.
pub trait Sink {
    /// A successful item: `n` its request number (1-based over the non-blank lines), `record`
    /// its Gridbook output record (`custom_id` first), `item_hash` its committed hash.
    fn output(&mut self, n: usize, record: &Map<String, Value>, item_hash: &Hash) -> Result<()>;
    /// A refused line or a failed item (`n` as for [`Sink::output`]).
    fn error(&mut self, n: usize, e: &LineError) -> Result<()>;
    /// A chunk is complete: everything handed over so far is final at `state`.
    fn chunk_done(&mut self, _state: &StreamState) -> Result<()> {
        Ok(())
    }
}

/// How a stream runs.
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions<'a> {
    /// Added to every reported line number (an assignment's first line in its job's file).
    pub line_offset: usize,
    /// Items per chunk at most (0: the workload's [`Workload::stream_chunk_items`]).
    pub chunk_items: usize,
    pub artifacts: Artifacts<'a>,
}

/// Parses, runs and hands over JSONL lines in bounded chunks: read up to a chunk of items (at
/// most `chunk_items`; refused lines count towards it), run them (the workload tokenises and
/// batches within the chunk), hand the outputs and errors to `sink` in line order, extend the
/// Merkle root, and go on. Memory holds one chunk, the Merkle builder (`O(log n)`) and the
/// duplicate check (16 bytes per custom_id). A cancel through `control` returns
/// [`ExecutorError::Cancelled`]; what the sink was given before stays valid.
pub fn run_stream<W: Workload>(
    workload: &mut W,
    reader: &mut impl BufRead,
    state: &mut StreamState,
    opts: StreamOptions<'_>,
    sink: &mut dyn Sink,
    progress: &dyn Fn(u64),
    control: Option<&RunControl>,
) -> Result<()> {
    let bound = match opts.chunk_items {
        0 => workload.stream_chunk_items(),
        n => n,
    }
    .max(1);
    let mut size = bound.min(FIRST_CHUNK_ITEMS);
    let mut buf = Vec::new();
    let mut eof = false;
    while !eof {
        // (line, request number, custom_id) of the chunk's items, and their inputs.
        let mut items: Vec<(usize, usize, String)> = Vec::new();
        let mut inputs: Vec<W::Input> = Vec::new();
        let mut errors: Vec<(usize, LineError)> = Vec::new();
        while items.len() + errors.len() < size {
            let line = match state.read(reader, &mut buf) {
                Ok(Some(l)) => l,
                Ok(None) => {
                    eof = true;
                    break;
                }
                Err(e) => {
                    state.requests += 1;
                    errors.push((
                        state.requests,
                        LineError {
                            line: state.lines + 1 + opts.line_offset,
                            custom_id: None,
                            field: None,
                            message: format!("read error: {e}"),
                        },
                    ));
                    eof = true;
                    break;
                }
            };
            let parsed = match line {
                Line::Text { bytes, .. } => parse_line(workload, &mut state.seen, state.lines, &bytes),
                Line::TooLong { .. } => Some(Err(too_long(state.lines))),
            };
            let Some(parsed) = parsed else { continue };
            state.requests += 1;
            match parsed {
                Ok((id, input)) => {
                    items.push((state.lines + opts.line_offset, state.requests, id));
                    inputs.push(input);
                }
                Err(mut e) => {
                    e.line += opts.line_offset;
                    errors.push((state.requests, e));
                }
            }
        }
        size = (size * 2).min(bound);
        if items.is_empty() && errors.is_empty() {
            continue;
        }
        let results = if inputs.is_empty() {
            Vec::new()
        } else {
            workload.run_controlled(&inputs, progress, control)?
        };
        drop(inputs);
        assert_eq!(
            results.len(),
            items.len(),
            "workload {} returned {} results for {} inputs",
            workload.id(),
            results.len(),
            items.len()
        );
        // Outputs and errors in line order: merge the chunk's items with its refused lines.
        let mut errors = errors.into_iter().peekable();
        for ((line, n, custom_id), res) in items.into_iter().zip(results) {
            while let Some((en, e)) = errors.next_if(|(_, e)| e.line < line) {
                sink.error(en, &e)?;
                state.failed += 1;
            }
            match res {
                Ok(item) => {
                    let hash = item.hash;
                    let rec = output_record(&custom_id, item, opts.artifacts)?;
                    sink.output(n, &rec, &hash)?;
                    state.merkle.push(crate::commitment::leaf_hash(&custom_id, &hash));
                    state.succeeded += 1;
                }
                Err(message) => {
                    sink.error(
                        n,
                        &LineError {
                            line,
                            custom_id: Some(custom_id),
                            field: None,
                            message,
                        },
                    )?;
                    state.failed += 1;
                }
            }
        }
        for (en, e) in errors {
            sink.error(en, &e)?;
            state.failed += 1;
        }
        sink.chunk_done(state)?;
    }
    Ok(())
}

/// The Gridbook output record of an item: `custom_id`, the artifact's `file` or
/// `image_png_b64`, `sha256`, then the workload's fields.
fn output_record(custom_id: &str, item: ItemOutput, artifacts: Artifacts<'_>) -> Result<Map<String, Value>> {
    let mut rec = Map::new();
    rec.insert("custom_id".into(), Value::String(custom_id.to_owned()));
    if let Some(bytes) = &item.artifact {
        match artifacts {
            Artifacts::Dir(files_dir) => {
                std::fs::create_dir_all(files_dir).map_err(|e| ExecutorError::io(files_dir, e))?;
                let name = artifact_name(custom_id, "png");
                let path = files_dir.join(&name);
                std::fs::write(&path, bytes).map_err(|e| ExecutorError::io(&path, e))?;
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
                    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
                );
            }
        }
    }
    rec.insert("sha256".into(), Value::String(hex::encode(item.hash)));
    rec.extend(item.record);
    Ok(rec)
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

/// The sink of [`run_reader`]: everything in memory.
#[derive(Default)]
struct MemorySink {
    output: Vec<u8>,
    errors: Vec<LineError>,
    items: Vec<(String, Hash)>,
}

impl Sink for MemorySink {
    fn output(&mut self, _n: usize, record: &Map<String, Value>, item_hash: &Hash) -> Result<()> {
        serde_json::to_writer(&mut self.output, record)
            .map_err(|e| ExecutorError::io("<output>", e.into()))?;
        self.output.push(b'\n');
        let id = record.get("custom_id").and_then(Value::as_str).unwrap_or_default();
        self.items.push((id.to_owned(), *item_hash));
        Ok(())
    }

    fn error(&mut self, _n: usize, e: &LineError) -> Result<()> {
        self.errors.push(e.clone());
        Ok(())
    }
}

/// Parses and runs JSONL text and formats the output lines in memory (the market agent's path:
/// [`run_stream`] with the chunks local mode uses, so both produce the same bytes).
/// `line_offset` is added to every reported line number (an assignment's first line in its
/// job's file). A cancel through `control` returns [`ExecutorError::Cancelled`].
pub fn run_reader<W: Workload>(
    workload: &mut W,
    mut reader: impl BufRead,
    line_offset: usize,
    artifacts: Artifacts<'_>,
    progress: &dyn Fn(u64),
    control: Option<&RunControl>,
) -> Result<JsonlRun> {
    let mut state = StreamState::default();
    let mut sink = MemorySink::default();
    let opts = StreamOptions { line_offset, chunk_items: 0, artifacts };
    run_stream(workload, &mut reader, &mut state, opts, &mut sink, progress, control)?;
    let commitment = Commitment::build(&sink.items);
    debug_assert_eq!(commitment.merkle_root, hex::encode(state.merkle.root()));
    Ok(JsonlRun {
        output: sink.output,
        errors: sink.errors,
        succeeded: state.succeeded,
        commitment,
        manifest: workload.manifest(),
    })
}

/// What [`run_to_writer`] wrote.
#[derive(Debug, Clone)]
pub struct StreamedRun {
    pub succeeded: usize,
    pub failed: usize,
    /// The Merkle root over the successful items, hex.
    pub merkle_root: String,
    /// sha256 of the output bytes written, hex, and their count.
    pub output_sha256: String,
    pub output_bytes: u64,
}

/// The sink of [`run_to_writer`]: Gridbook output lines to a writer, hashed as they go.
struct WriterSink<'a, O: Write> {
    out: O,
    hasher: Sha256,
    bytes: u64,
    on_error: &'a dyn Fn(&LineError),
}

impl<O: Write> Sink for WriterSink<'_, O> {
    fn output(&mut self, _n: usize, record: &Map<String, Value>, _item_hash: &Hash) -> Result<()> {
        let mut line = serde_json::to_vec(record).map_err(|e| ExecutorError::io("<output>", e.into()))?;
        line.push(b'\n');
        self.out.write_all(&line).map_err(|e| ExecutorError::io("<output>", e))?;
        self.hasher.update(&line);
        self.bytes += line.len() as u64;
        Ok(())
    }

    fn error(&mut self, _n: usize, e: &LineError) -> Result<()> {
        (self.on_error)(e);
        Ok(())
    }

    fn chunk_done(&mut self, _state: &StreamState) -> Result<()> {
        self.out.flush().map_err(|e| ExecutorError::io("<output>", e))
    }
}

/// [`run_reader`] writing its output lines to `out` as each chunk completes (the agent's
/// path: output spooled to a file and uploaded streamed); errors go to `on_error` as they come.
/// The bytes written equal [`run_reader`]'s `output`.
#[allow(clippy::too_many_arguments)]
pub fn run_to_writer<W: Workload>(
    workload: &mut W,
    mut reader: impl BufRead,
    line_offset: usize,
    artifacts: Artifacts<'_>,
    out: impl Write,
    on_error: &dyn Fn(&LineError),
    progress: &dyn Fn(u64),
    control: Option<&RunControl>,
) -> Result<StreamedRun> {
    let mut state = StreamState::default();
    let mut sink = WriterSink { out, hasher: Sha256::new(), bytes: 0, on_error };
    let opts = StreamOptions { line_offset, chunk_items: 0, artifacts };
    run_stream(workload, &mut reader, &mut state, opts, &mut sink, progress, control)?;
    sink.out.flush().map_err(|e| ExecutorError::io("<output>", e))?;
    Ok(StreamedRun {
        succeeded: state.succeeded,
        failed: state.failed,
        merkle_root: hex::encode(state.merkle.root()),
        output_sha256: hex::encode(sink.hasher.finalize()),
        output_bytes: sink.bytes,
    })
}

/// Summary of a local run.
#[derive(Debug)]
pub struct LocalReport {
    pub paths: OutputPaths,
    /// Items that succeeded, over the whole file (a resumed run counts the earlier part too).
    pub succeeded: usize,
    pub failed: usize,
    /// The first few errors (by line), for the command line.
    pub first_errors: Vec<LineError>,
    /// The Merkle root over the successful items (hex), as in the commitment file.
    pub merkle_root: String,
    pub manifest: Manifest,
    /// Input lines a resumed run found done already (`None`: it started from the beginning).
    pub resumed_lines: Option<usize>,
    pub elapsed: std::time::Duration,
}

/// How [`run_file_with`] runs.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    pub format: OutputFormat,
    /// Resume an interrupted run of the same input and workload from its progress file; when
    /// false (or when there is no progress file) the output files are started afresh.
    pub resume: bool,
    /// Items per chunk at most (0: the workload's own bound).
    pub chunk_items: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            format: OutputFormat::Gridbook,
            resume: true,
            chunk_items: 0,
        }
    }
}

/// How many first errors a report keeps.
pub const FIRST_ERRORS: usize = 5;

/// The progress file of a running local run (`<stem>.progress.json`), rewritten (write + rename)
/// after each chunk once the chunk's lines are flushed to the output files.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Progress {
    version: u32,
    workload: String,
    format: String,
    manifest: Value,
    /// Input lines done (blank ones included), their bytes and sha256.
    input_lines: usize,
    input_bytes: u64,
    input_sha256: String,
    requests: usize,
    succeeded: usize,
    failed: usize,
    /// Lengths of the output, error and commitment-items files at this point.
    output_bytes: u64,
    errors_bytes: u64,
    items_bytes: u64,
}

const PROGRESS_VERSION: u32 = 1;

impl OutputFormat {
    fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Gridbook => "gridbook",
            OutputFormat::OpenAiBatch => "openai-batch",
        }
    }
}

/// A file being appended to, with its length.
struct Counted {
    path: PathBuf,
    w: BufWriter<std::fs::File>,
    len: u64,
}

impl Counted {
    /// Opens `path` for appending after its first `len` bytes (the rest is cut off).
    fn open(path: &Path, len: u64) -> Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| ExecutorError::io(path, e))?;
        f.set_len(len).map_err(|e| ExecutorError::io(path, e))?;
        let mut f = f;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(len)).map_err(|e| ExecutorError::io(path, e))?;
        Ok(Self {
            path: path.to_owned(),
            w: BufWriter::with_capacity(1 << 16, f),
            len,
        })
    }

    fn line(&mut self, value: &impl serde::Serialize) -> Result<()> {
        let mut bytes = serde_json::to_vec(value).map_err(|e| ExecutorError::io(&self.path, e.into()))?;
        bytes.push(b'\n');
        self.w.write_all(&bytes).map_err(|e| ExecutorError::io(&self.path, e))?;
        self.len += bytes.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.w.flush().map_err(|e| ExecutorError::io(&self.path, e))
    }
}

/// The sink of local mode: the output, error and commitment-items files, and the progress file
/// after each chunk.
struct FileSink<'a> {
    paths: &'a OutputPaths,
    format: OutputFormat,
    model: String,
    manifest: Value,
    output: Counted,
    errors: Counted,
    items: Counted,
    first_errors: Vec<LineError>,
}

impl Sink for FileSink<'_> {
    fn output(&mut self, n: usize, record: &Map<String, Value>, item_hash: &Hash) -> Result<()> {
        let id = record.get("custom_id").cloned().unwrap_or(Value::Null);
        match self.format {
            OutputFormat::Gridbook => self.output.line(record)?,
            OutputFormat::OpenAiBatch => {
                self.output.line(&openai_batch_output(n, &self.model, record.clone()))?;
            }
        }
        self.items.line(&serde_json::json!({"custom_id": id, "sha256": hex::encode(item_hash)}))
    }

    fn error(&mut self, n: usize, e: &LineError) -> Result<()> {
        if self.first_errors.len() < FIRST_ERRORS {
            self.first_errors.push(e.clone());
        }
        match self.format {
            OutputFormat::Gridbook => self.errors.line(e),
            OutputFormat::OpenAiBatch => self.errors.line(&openai_batch_error(n, e)),
        }
    }

    fn chunk_done(&mut self, state: &StreamState) -> Result<()> {
        self.output.flush()?;
        self.errors.flush()?;
        self.items.flush()?;
        let p = Progress {
            version: PROGRESS_VERSION,
            workload: self.model.clone(),
            format: self.format.as_str().into(),
            manifest: self.manifest.clone(),
            input_lines: state.lines,
            input_bytes: state.input_bytes,
            input_sha256: state.input_sha256(),
            requests: state.requests,
            succeeded: state.succeeded,
            failed: state.failed,
            output_bytes: self.output.len,
            errors_bytes: self.errors.len,
            items_bytes: self.items.len,
        };
        let text = serde_json::to_vec_pretty(&p).map_err(|e| ExecutorError::io(&self.paths.progress, e.into()))?;
        write_atomically(&self.paths.progress, &text)
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename (never a half-written file).
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    std::fs::write(&tmp, bytes).map_err(|e| ExecutorError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| ExecutorError::io(path, e))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

fn resume_err(path: &Path, message: impl Into<String>) -> ExecutorError {
    ExecutorError::Resume {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Reads the lines of the first `len` bytes of `path`, one by one.
fn prefix_lines(path: &Path, len: u64) -> Result<impl Iterator<Item = Result<Vec<u8>>>> {
    let f = std::fs::File::open(path).map_err(|e| ExecutorError::io(path, e))?;
    let actual = f.metadata().map_err(|e| ExecutorError::io(path, e))?.len();
    if actual < len {
        return Err(resume_err(path, format!("the file has {actual} bytes, the progress file says {len} were written")));
    }
    let path = path.to_owned();
    Ok(std::io::BufReader::new(std::io::Read::take(f, len))
        .split(b'\n')
        .map(move |l| l.map_err(|e| ExecutorError::io(&path, e))))
}

/// Checks what an interrupted run wrote against its progress file and rebuilds its state: the
/// output and commitment-items prefixes re-parsed line by line (same custom_ids in the same
/// order, Gridbook output's `sha256` equal to the committed one, `succeeded` lines), the error
/// prefix counted (`failed` lines), the Merkle root rebuilt from the items' leaves, and the
/// input's first `input_lines` lines re-read (same bytes by sha256; their custom_ids back in the
/// duplicate check).
fn resume_state<W: Workload>(
    workload: &W,
    reader: &mut impl BufRead,
    paths: &OutputPaths,
    p: &Progress,
    first_errors: &mut Vec<LineError>,
) -> Result<StreamState> {
    let mut state = StreamState::default();
    let mut outputs = prefix_lines(&paths.output, p.output_bytes)?;
    let mut count = 0usize;
    for item in prefix_lines(&paths.items, p.items_bytes)? {
        let item = item?;
        count += 1;
        let bad = |what: &str| resume_err(&paths.items, format!("line {count}: {what}"));
        let v: Value = serde_json::from_slice(&item).map_err(|e| bad(&e.to_string()))?;
        let id = v["custom_id"].as_str().ok_or_else(|| bad("no custom_id"))?;
        let hash = v["sha256"]
            .as_str()
            .and_then(|h| hex::decode(h).ok())
            .and_then(|h| Hash::try_from(h).ok())
            .ok_or_else(|| bad("no sha256"))?;
        let out = outputs
            .next()
            .ok_or_else(|| resume_err(&paths.output, format!("has fewer lines than the {count} committed")))??;
        let bad_out = |what: &str| resume_err(&paths.output, format!("line {count}: {what}"));
        let o: Value = serde_json::from_slice(&out).map_err(|e| bad_out(&e.to_string()))?;
        if o["custom_id"].as_str() != Some(id) {
            return Err(bad_out(&format!("custom_id {:?}, the commitment has {id:?}", o["custom_id"])));
        }
        if let Some(h) = o.get("sha256").and_then(Value::as_str)
            && h != hex::encode(hash)
        {
            return Err(bad_out(&format!("sha256 {h}, the commitment has {}", hex::encode(hash))));
        }
        state.merkle.push(crate::commitment::leaf_hash(id, &hash));
    }
    if outputs.next().is_some() {
        return Err(resume_err(&paths.output, format!("has more lines than the {count} committed")));
    }
    if count != p.succeeded {
        return Err(resume_err(&paths.items, format!("{count} items, the progress file says {}", p.succeeded)));
    }
    let mut failed = 0usize;
    for line in prefix_lines(&paths.errors, p.errors_bytes)? {
        let line = line?;
        failed += 1;
        if first_errors.len() < FIRST_ERRORS
            && let Ok(e) = serde_json::from_slice::<LineError>(&line)
        {
            first_errors.push(e);
        }
    }
    if failed != p.failed {
        return Err(resume_err(&paths.errors, format!("{failed} lines, the progress file says {}", p.failed)));
    }
    let mut buf = Vec::new();
    while state.lines < p.input_lines {
        let line = state
            .read(reader, &mut buf)
            .map_err(|e| resume_err(&paths.progress, format!("re-reading the input: {e}")))?;
        let Some(line) = line else { break };
        let request = match line {
            Line::Text { bytes, .. } => parse_line(workload, &mut state.seen, state.lines, &bytes).is_some(),
            Line::TooLong { .. } => true,
        };
        if request {
            state.requests += 1;
        }
    }
    if state.lines != p.input_lines || state.input_bytes != p.input_bytes || state.input_sha256() != p.input_sha256 || state.requests != p.requests {
        return Err(resume_err(
            &paths.progress,
            "the input is not the one the interrupted run read (its first lines differ)",
        ));
    }
    state.succeeded = p.succeeded;
    state.failed = p.failed;
    Ok(state)
}

/// Non-blank lines of a file (for the progress bar's total), read once without parsing.
fn count_requests(path: &Path) -> Result<u64> {
    let f = std::fs::File::open(path).map_err(|e| ExecutorError::io(path, e))?;
    let mut n = 0;
    for line in std::io::BufReader::with_capacity(1 << 16, f).split(b'\n') {
        let line = line.map_err(|e| ExecutorError::io(path, e))?;
        if line.iter().any(|b| !b.is_ascii_whitespace()) {
            n += 1;
        }
    }
    Ok(n)
}

/// Writes the commitment file (through a temporary file) from the items file, streamed.
fn write_commitment(paths: &OutputPaths, manifest: &Manifest, root: &Hash) -> Result<()> {
    let path = &paths.commitment;
    let tmp = tmp_path(path);
    let io = |e: std::io::Error| ExecutorError::io(&tmp, e);
    let json = |e: serde_json::Error| ExecutorError::io(&tmp, e.into());
    let mut w = BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    let manifest = serde_json::to_string_pretty(manifest).map_err(json)?.replace('\n', "\n  ");
    write!(
        w,
        "{{\n  \"manifest\": {manifest},\n  \"commitment\": {{\n    \"scheme\": {},\n    \"merkle_root\": \"{}\",\n    \"items\": [",
        serde_json::to_string(SCHEME).map_err(json)?,
        hex::encode(root)
    )
    .map_err(io)?;
    let items = std::fs::File::open(&paths.items).map_err(|e| ExecutorError::io(&paths.items, e))?;
    let mut first = true;
    for line in std::io::BufReader::new(items).split(b'\n') {
        let line = line.map_err(|e| ExecutorError::io(&paths.items, e))?;
        if line.is_empty() {
            continue;
        }
        w.write_all(if first { b"\n      " } else { b",\n      " }).map_err(io)?;
        w.write_all(&line).map_err(io)?;
        first = false;
    }
    w.write_all(if first { b"]\n  }\n}\n" } else { b"\n    ]\n  }\n}\n" }).map_err(io)?;
    w.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| ExecutorError::io(path, e))
}

/// [`run_file_with`] with the default options and `format`.
pub fn run_file<W: Workload>(
    workload: &mut W,
    input: &Path,
    output: &Path,
    format: OutputFormat,
    progress: &dyn Fn(u64),
    on_total: &dyn Fn(u64),
) -> Result<LocalReport> {
    let opts = RunOptions { format, ..RunOptions::default() };
    run_file_with(workload, input, output, &opts, progress, on_total)
}

/// Runs a JSONL file through a workload, streamed ([`run_stream`]): output and error lines are
/// appended chunk by chunk while it runs, then the commitment file is written. A progress file
/// after each chunk lets a killed run resume (see the module docs and the README's rule).
pub fn run_file_with<W: Workload>(
    workload: &mut W,
    input: &Path,
    output: &Path,
    opts: &RunOptions,
    progress: &dyn Fn(u64),
    on_total: &dyn Fn(u64),
) -> Result<LocalReport> {
    let started = std::time::Instant::now();
    let f = std::fs::File::open(input).map_err(|e| ExecutorError::io(input, e))?;
    on_total(count_requests(input)?);
    let mut reader = std::io::BufReader::with_capacity(1 << 16, f);
    let paths = OutputPaths::for_output(output);
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| ExecutorError::io(dir, e))?;
    }
    let manifest = workload.manifest();
    let manifest_value =
        serde_json::to_value(&manifest).map_err(|e| ExecutorError::io(&paths.progress, e.into()))?;
    let mut first_errors = Vec::new();
    let resumed: Option<Progress> = if opts.resume && paths.progress.exists() {
        let text = std::fs::read(&paths.progress).map_err(|e| ExecutorError::io(&paths.progress, e))?;
        let p: Progress = serde_json::from_slice(&text).map_err(|e| resume_err(&paths.progress, e.to_string()))?;
        if p.version != PROGRESS_VERSION {
            return Err(resume_err(&paths.progress, format!("version {}, this executor writes {PROGRESS_VERSION}", p.version)));
        }
        if p.workload != manifest.workload || p.format != opts.format.as_str() {
            return Err(resume_err(
                &paths.progress,
                format!("it was a {} run in the {} format, this one is {} in {}", p.workload, p.format, manifest.workload, opts.format.as_str()),
            ));
        }
        if p.manifest != manifest_value {
            return Err(resume_err(&paths.progress, "its manifest (models, runtime or parameters) differs from this run's"));
        }
        Some(p)
    } else {
        None
    };
    let (mut state, lens) = match &resumed {
        Some(p) => {
            let state = resume_state(workload, &mut reader, &paths, p, &mut first_errors)?;
            tracing::info!(input = %input.display(), lines = p.input_lines, succeeded = p.succeeded, failed = p.failed, "resuming an interrupted run");
            progress((p.succeeded + p.failed) as u64);
            (state, (p.output_bytes, p.errors_bytes, p.items_bytes))
        }
        None => {
            let _ = std::fs::remove_file(&paths.commitment);
            (StreamState::default(), (0, 0, 0))
        }
    };
    let mut sink = FileSink {
        paths: &paths,
        format: opts.format,
        model: manifest.workload.clone(),
        manifest: manifest_value,
        output: Counted::open(&paths.output, lens.0)?,
        errors: Counted::open(&paths.errors, lens.1)?,
        items: Counted::open(&paths.items, lens.2)?,
        first_errors,
    };
    if resumed.is_none() {
        // The empty files are the starting point a restart can resume from.
        sink.chunk_done(&state)?;
    }
    tracing::info!(input = %input.display(), output = %output.display(), "streaming");
    let stream_opts = StreamOptions {
        line_offset: 0,
        chunk_items: opts.chunk_items,
        artifacts: Artifacts::Dir(&paths.files_dir),
    };
    run_stream(workload, &mut reader, &mut state, stream_opts, &mut sink, progress, None)?;
    sink.chunk_done(&state)?;
    let first_errors = std::mem::take(&mut sink.first_errors);
    drop(sink);
    let root = state.merkle.root();
    write_commitment(&paths, &manifest, &root)?;
    std::fs::remove_file(&paths.items).map_err(|e| ExecutorError::io(&paths.items, e))?;
    std::fs::remove_file(&paths.progress).map_err(|e| ExecutorError::io(&paths.progress, e))?;
    Ok(LocalReport {
        paths,
        succeeded: state.succeeded,
        failed: state.failed,
        first_errors,
        merkle_root: hex::encode(root),
        manifest,
        resumed_lines: resumed.map(|p| p.input_lines),
        elapsed: started.elapsed(),
    })
}
