//! Batch jobs: submit (upload, estimate, submit), watch, get, list, cancel, download.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{ApiFailure, new_idempotency_key};
use crate::estimate::{self, Estimate, Level};
use crate::output::{self, i, s};
use crate::{Ctx, Exit, PageArgs};

/// The statuses a job does not leave.
pub const TERMINAL: [&str; 5] = ["completed", "failed", "expired", "cancelled", "rejected"];

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// Upload a JSONL file, show a cost estimate from the current book, submit the job.
    Submit(SubmitArgs),
    /// Follow a job with a progress bar until it ends (exit 0 when it completed, 3 when it
    /// failed, expired or was cancelled).
    Watch(WatchArgs),
    /// One job: status, counts, escrow.
    Get {
        /// The job.
        id: String,
    },
    /// Your jobs, newest first.
    List(PageArgs),
    /// Raise a waiting job's limit price (a further hold of the difference for its open units;
    /// refused when your balance does not cover it).
    Amend {
        /// The job.
        id: String,
        /// The new limit per unit (credits), above the current one.
        #[arg(long)]
        limit: i64,
    },
    /// Cancel a queued or running job (running assignments finish and are paid).
    Cancel {
        /// The job.
        id: String,
    },
    /// Download a job's output (or, with --errors, its error file).
    Download(DownloadArgs),
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The JSONL input: one object per line with a unique `custom_id` and the market's fields.
    file: PathBuf,
    /// The market, e.g. EMBED-MINILM-L6 (see `gridbook markets`).
    #[arg(long)]
    market: String,
    /// The most you pay per unit of work (credits), before the fee.
    #[arg(long)]
    limit: i64,
    /// When unfilled units expire: a duration from now (30m, 2h, 1d) or an RFC 3339 time.
    #[arg(long)]
    deadline: String,
    /// A private model of yours (`POST /v1/models`) to run instead of the market's.
    #[arg(long)]
    model_id: Option<String>,
    /// Time in force: gtc waits until the deadline; ioc runs what the book fills now and
    /// releases the rest; fok fills every unit now or is rejected with everything released.
    #[arg(long, value_enum, default_value_t = Tif::Gtc)]
    tif: Tif,
    /// The Idempotency-Key to submit under [default: a new one]; resending the same command
    /// with the same key never creates a second job.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Upload and estimate, but do not submit.
    #[arg(long)]
    dry_run: bool,
}

/// A job's time in force (`time_in_force` in `POST /v1/jobs`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tif {
    Gtc,
    Ioc,
    Fok,
}

impl Tif {
    fn as_str(self) -> &'static str {
        match self {
            Tif::Gtc => "gtc",
            Tif::Ioc => "ioc",
            Tif::Fok => "fok",
        }
    }
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// The job.
    id: String,
    /// Seconds between polls.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Give up after this many seconds (exit 4) [default: never].
    #[arg(long)]
    timeout: Option<u64>,
}

#[derive(Args, Debug)]
pub struct DownloadArgs {
    /// The job.
    id: String,
    /// Write to this file [default: stdout].
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// The error file (one line per failed item) instead of the output.
    #[arg(long)]
    errors: bool,
}

pub async fn run(ctx: &Ctx, cmd: JobsCommand) -> anyhow::Result<()> {
    match cmd {
        JobsCommand::Submit(a) => submit(ctx, a).await,
        JobsCommand::Watch(a) => watch(ctx, a).await,
        JobsCommand::Get { id } => {
            let job = get_job(ctx, &id).await?;
            if ctx.json {
                output::print_json(&job);
            } else {
                show_job(&job);
            }
            Ok(())
        }
        JobsCommand::List(page) => list(ctx, page).await,
        JobsCommand::Cancel { id } => {
            let job = ctx
                .client
                .send_json(
                    Method::POST,
                    &format!("/v1/jobs/{}/cancel", job_path(&id)?),
                    None,
                    None,
                )
                .await?;
            if ctx.json {
                output::print_json(&job);
            } else {
                println!(
                    "cancel requested for job {} (status {}): unfilled units go back to your balance",
                    s(&job["id"]),
                    s(&job["status"])
                );
            }
            Ok(())
        }
        JobsCommand::Amend { id, limit } => {
            if limit < 1 {
                return Err(refuse(
                    "invalid_request",
                    "limit_price",
                    format!("--limit must be a positive price per unit (got {limit})"),
                ));
            }
            let job = ctx
                .client
                .send_json(
                    Method::PATCH,
                    &format!("/v1/jobs/{}", job_path(&id)?),
                    Some(&json!({"limit_price": limit})),
                    None,
                )
                .await?;
            if ctx.json {
                output::print_json(&job);
            } else {
                println!(
                    "job {} limit {} ({}); open reservation {}",
                    s(&job["id"]),
                    i(&job["limit_price"]),
                    s(&job["status"]),
                    i(&job["escrow"]["open"])
                );
            }
            Ok(())
        }
        JobsCommand::Download(a) => download(ctx, a).await,
    }
}

/// A job id for a path: a UUID, or a clear error before any request.
fn job_path(id: &str) -> anyhow::Result<String> {
    let id = id.trim();
    id.parse::<uuid::Uuid>()
        .map(|u| u.to_string())
        .map_err(|_| {
            anyhow::anyhow!("{id:?} is not a job id (a UUID, as `gridbook jobs list` shows)")
        })
}

async fn get_job(ctx: &Ctx, id: &str) -> anyhow::Result<Value> {
    ctx.client.get(&format!("/v1/jobs/{}", job_path(id)?)).await
}

/// The market named `symbol` from `GET /v1/markets`, or an error that lists the real ones.
async fn market(ctx: &Ctx, symbol: &str) -> anyhow::Result<Value> {
    let list = ctx.client.get_public("/v1/markets").await?;
    let markets = list["markets"].as_array().cloned().unwrap_or_default();
    if let Some(m) = markets.iter().find(|m| m["symbol"] == symbol) {
        return Ok(m.clone());
    }
    let names: Vec<String> = markets.iter().map(|m| s(&m["symbol"])).collect();
    Err(ApiFailure {
        status: reqwest::StatusCode::BAD_REQUEST,
        code: "unknown_market".into(),
        message: format!("unknown market {symbol:?}; the markets are {}", names.join(", ")),
        field: Some("market".into()),
        details: Vec::new(),
        retry_after: None,
        body: json!({"error": {"code": "unknown_market", "message": format!("unknown market {symbol:?}"), "field": "market", "markets": names}}),
    }
    .into())
}

/// A client-side refusal in the API's error shape (so `--json` and the message look the same).
fn refuse(code: &str, field: &str, message: String) -> anyhow::Error {
    ApiFailure {
        status: reqwest::StatusCode::BAD_REQUEST,
        code: code.into(),
        body: json!({"error": {"code": code, "message": message, "field": field}}),
        message,
        field: Some(field.into()),
        details: Vec::new(),
        retry_after: None,
    }
    .into()
}

async fn submit(ctx: &Ctx, a: SubmitArgs) -> anyhow::Result<()> {
    // Everything that needs no upload first: the deadline, the market, the file.
    let deadline = crate::deadline::parse(&a.deadline, chrono::Utc::now())
        .map_err(|m| refuse("invalid_deadline", "deadline", m))?;
    let model_id = match &a.model_id {
        Some(m) => Some(m.trim().parse::<uuid::Uuid>().map_err(|_| {
            refuse(
                "invalid_request",
                "model_id",
                format!("--model-id {m:?} is not a model id (a UUID)"),
            )
        })?),
        None => None,
    };
    let m = market(ctx, &a.market).await?;
    let body = tokio::fs::read(&a.file)
        .await
        .with_context(|| format!("reading {}", a.file.display()))?;
    if body.iter().all(u8::is_ascii_whitespace) {
        bail!(
            "{} is empty: a job needs at least one JSONL line",
            a.file.display()
        );
    }
    let base_key = a
        .idempotency_key
        .clone()
        .unwrap_or_else(new_idempotency_key);

    // Upload (validated line by line by the API).
    let filename = a
        .file
        .file_name()
        .map(|f| f.to_string_lossy().chars().take(255).collect::<String>())
        .filter(|f| !f.is_empty());
    let mut path = format!(
        "/v1/files?purpose=batch&market={}",
        output::encode(&a.market)
    );
    if let Some(f) = &filename {
        path.push_str(&format!("&filename={}", output::encode(f)));
    }
    if !ctx.client.has_key() {
        bail!("not logged in: run `gridbook login` (or set GRIDBOOK_API_KEY)");
    }
    let file_key = format!("{base_key}-file");
    let r = ctx
        .client
        .send(true, || {
            ctx.client
                .request(Method::POST, &path)
                .header("Idempotency-Key", &file_key)
                .header(reqwest::header::CONTENT_TYPE, "application/jsonl")
                .body(body.clone())
        })
        .await?;
    let file = crate::client::Client::json(r).await?;
    let lines = file["lines"].as_u64().unwrap_or(0);

    // The estimate from the book now.
    let ipu = m["items_per_unit"].as_u64().unwrap_or(1);
    let fee_bps = u32::try_from(i(&m["fee_bps"])).unwrap_or(0);
    // The book may be unreadable for a moment (the API's feed resynchronising and the engine
    // not answering): the estimate then assumes no asks, and says so.
    let (asks, book_error) = match ctx
        .client
        .get_public(&format!(
            "/v1/markets/{}/book?depth=1000",
            output::encode(&a.market)
        ))
        .await
    {
        Ok(book) => (
            book["asks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| Level {
                    price: l["price"].as_u64().unwrap_or(0),
                    qty: l["qty"].as_u64().unwrap_or(0),
                })
                .collect::<Vec<Level>>(),
            None,
        ),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    let est = estimate::estimate(lines, ipu, a.limit, fee_bps, &asks);
    let balance = ctx.client.get("/v1/balance").await.ok();
    if !ctx.json {
        show_estimate(&a, &file, &est, &m, balance.as_ref(), book_error.as_deref());
    }
    if a.dry_run {
        if ctx.json {
            output::print_json(
                &json!({"file": file, "estimate": est, "book_error": book_error, "job": Value::Null}),
            );
        } else {
            println!(
                "dry run: not submitted (the file {} stays uploaded)",
                s(&file["id"])
            );
        }
        return Ok(());
    }

    let mut req = json!({
        "market": a.market,
        "input_file": file["id"],
        "limit_price": a.limit,
        "deadline": deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "time_in_force": a.tif.as_str(),
    });
    if let Some(mid) = model_id {
        req["model_id"] = json!(mid);
    }
    let job = ctx
        .client
        .send_json(
            Method::POST,
            "/v1/jobs",
            Some(&req),
            Some(&format!("{base_key}-job")),
        )
        .await?;
    if ctx.json {
        output::print_json(
            &json!({"file": file, "estimate": est, "book_error": book_error, "job": job}),
        );
    } else {
        println!(
            "job {} {} (reserved {}); follow it with: gridbook jobs watch {}",
            s(&job["id"]),
            s(&job["status"]),
            job["escrow"]["reserved"]
                .as_i64()
                .map_or_else(|| est.reserved.to_string(), |r| r.to_string()),
            s(&job["id"])
        );
    }
    Ok(())
}

fn show_estimate(
    a: &SubmitArgs,
    file: &Value,
    e: &Estimate,
    m: &Value,
    balance: Option<&Value>,
    book_error: Option<&str>,
) {
    println!(
        "uploaded {}: {} lines, file {}",
        a.file.display(),
        e.lines,
        s(&file["id"])
    );
    println!(
        "{}: {} lines a unit → {} unit{}; limit {} a unit, fee {}",
        s(&m["symbol"]),
        e.items_per_unit,
        e.units,
        if e.units == 1 { "" } else { "s" },
        e.limit_price,
        output::bps(i64::from(e.fee_bps))
    );
    match e.best_ask {
        None if book_error.is_some() => println!(
            "book: cannot be read now ({}); assuming no asks, the bid rests at {} until sellers come or the deadline",
            book_error.unwrap_or_default(),
            e.limit_price
        ),
        None => println!(
            "book: no asks now; the bid rests at {} until sellers come or the deadline",
            e.limit_price
        ),
        Some(best) if e.fill_units == 0 => println!(
            "book: best ask {best} is above your limit; all {} units rest at {} until sellers come or the deadline",
            e.units, e.limit_price
        ),
        Some(best) => println!(
            "book: {} of {} units available now at ≤ {} (best ask {best}): about {} + fee {} = {} credits",
            e.fill_units,
            e.units,
            e.limit_price,
            e.fill_cost,
            e.fill_fee,
            e.fill_cost + e.fill_fee
        ),
    }
    if e.rest_units > 0 && e.fill_units > 0 {
        println!(
            "      the other {} units rest at {} (at most {} with the fee)",
            e.rest_units, e.limit_price, e.rest_max
        );
    }
    println!(
        "reserved now: {} × ({} + fee {}) = {} credits; what is not spent goes back (estimated cost at most {})",
        e.units,
        e.limit_price,
        e.unit_reserve - e.limit_price,
        e.reserved,
        e.max_cost()
    );
    if let Some(b) = balance
        && let Some(av) = b["available"].as_i64()
    {
        let note = if av < e.reserved {
            "  — not enough: the API will refuse the job"
        } else {
            ""
        };
        println!("your available balance: {av} credits{note}");
    }
}

fn show_job(j: &Value) {
    let rc = &j["request_counts"];
    println!(
        "job {}  {}  {}",
        s(&j["id"]),
        s(&j["market"]),
        s(&j["status"])
    );
    println!(
        "  items     {} total: {} succeeded, {} failed ({:.0}%)",
        i(&rc["total"]),
        i(&rc["completed"]),
        i(&rc["failed"]),
        j["progress"].as_f64().unwrap_or(0.0) * 100.0
    );
    println!(
        "  units     {} of {} lines at limit {} (fee {}, {})",
        i(&j["units"]),
        i(&j["items_per_unit"]),
        i(&j["limit_price"]),
        output::bps(i(&j["fee_bps"])),
        j["time_in_force"].as_str().unwrap_or("gtc")
    );
    if let Some(r) = j["reject_reason"].as_str() {
        println!("  rejected  {r}: nothing ran, the reservation was released");
    }
    println!(
        "  deadline  {} ({})",
        output::time(&j["deadline"]),
        output::relative(&j["deadline"])
    );
    if let Some(e) = j["escrow"].as_object() {
        println!(
            "  escrow    reserved {}, open {}, held {}, spent {}, released {}",
            s(&e["reserved"]),
            s(&e["open"]),
            s(&e["held"]),
            s(&e["spent"]),
            s(&e["released"])
        );
    }
    if !j["model_id"].is_null() {
        println!(
            "  model     {} (sha256 {})",
            s(&j["model_id"]),
            s(&j["model_sha256"])
        );
    }
    if !j["output_file"].is_null() {
        println!(
            "  output    gridbook jobs download {} -o out.jsonl",
            s(&j["id"])
        );
    }
    if !j["error_file"].is_null() {
        println!(
            "  errors    gridbook jobs download {} --errors -o errors.jsonl",
            s(&j["id"])
        );
    }
    if !j["cancel_requested_at"].is_null() {
        println!(
            "  cancel    requested {}",
            output::time(&j["cancel_requested_at"])
        );
    }
    println!("  created   {}", output::time(&j["created_at"]));
    if !j["finished_at"].is_null() {
        println!("  finished  {}", output::time(&j["finished_at"]));
    }
}

async fn list(ctx: &Ctx, page: PageArgs) -> anyhow::Result<()> {
    let list = ctx.client.get(&format!("/v1/jobs{}", page.query())).await?;
    if ctx.json {
        output::print_json(&list);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|j| {
            let rc = &j["request_counts"];
            vec![
                s(&j["id"]),
                s(&j["market"]),
                s(&j["status"]),
                format!(
                    "{}/{}",
                    i(&rc["completed"]) + i(&rc["failed"]),
                    i(&rc["total"])
                ),
                s(&rc["failed"]),
                s(&j["limit_price"]),
                output::time(&j["created_at"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no jobs");
    } else {
        output::table(
            &[
                "JOB", "MARKET", "STATUS", "DONE", "FAILED", "LIMIT", "CREATED",
            ],
            &rows,
        );
    }
    if !list["next_before"].is_null() {
        println!(
            "more: gridbook jobs list --before {}",
            s(&list["next_before"])
        );
    }
    Ok(())
}

/// Seconds left at the rate seen since the first observation.
fn eta(first: (Instant, i64), now: Instant, done: i64, total: i64) -> Option<u64> {
    let gained = done - first.1;
    let secs = now.duration_since(first.0).as_secs_f64();
    if gained <= 0 || secs <= 0.0 || done >= total {
        return None;
    }
    Some(((total - done) as f64 / (gained as f64 / secs)).ceil() as u64)
}

fn progress_text(status: &str, ok: i64, failed: i64, eta: Option<u64>) -> String {
    let eta = match (status, eta) {
        (_, Some(e)) => format!("ETA {}", output::duration(e)),
        ("queued", None) => "waiting for a match".into(),
        _ => "ETA -".into(),
    };
    format!("{status} · {ok} succeeded · {failed} failed · {eta}")
}

async fn watch(ctx: &Ctx, a: WatchArgs) -> anyhow::Result<()> {
    let path = format!("/v1/jobs/{}", job_path(&a.id)?);
    let interval = Duration::from_secs_f64(a.interval.clamp(0.1, 60.0));
    let started = Instant::now();
    let mut job = ctx.client.get(&path).await?;
    let total = i(&job["request_counts"]["total"]).max(0);
    let interactive = !ctx.json && std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(total as u64);
    if interactive {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] [{bar:30}] {pos}/{len} items  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut first: Option<(Instant, i64)> = None;
    let mut last_line = String::new();
    let mut failures = 0u32;
    loop {
        let rc = &job["request_counts"];
        let (ok, failed) = (i(&rc["completed"]), i(&rc["failed"]));
        let done = ok + failed;
        let status = s(&job["status"]);
        let now = Instant::now();
        // The rate counts from the first time work was seen moving.
        if first.is_none() && (status != "queued" || done > 0) {
            first = Some((now, done));
        }
        let left = first.and_then(|f| eta(f, now, done, total));
        let text = progress_text(&status, ok, failed, left);
        bar.set_position(done.max(0) as u64);
        bar.set_message(text.clone());
        if !interactive && !ctx.json {
            let line = format!("{status}: {done}/{total} items ({ok} succeeded, {failed} failed)");
            if line != last_line {
                eprintln!("{line} · {}", text.rsplit(" · ").next().unwrap_or(""));
                last_line = line;
            }
        }
        if TERMINAL.contains(&status.as_str()) {
            bar.finish_and_clear();
            break;
        }
        if a.timeout
            .is_some_and(|t| started.elapsed() >= Duration::from_secs(t))
        {
            bar.abandon();
            if ctx.json {
                output::print_json(&job);
            }
            eprintln!(
                "error: job {} is still {status} after {} s (--timeout)",
                s(&job["id"]),
                a.timeout.unwrap_or(0)
            );
            return Err(Exit(4).into());
        }
        tokio::time::sleep(interval).await;
        match ctx.client.get(&path).await {
            Ok(j) => {
                job = j;
                failures = 0;
            }
            // A passing outage (restart, network) does not end the watch; a lasting one does.
            Err(e)
                if e.downcast_ref::<ApiFailure>()
                    .is_none_or(|f| f.status.is_server_error())
                    && failures < 30 =>
            {
                failures += 1;
                bar.set_message(format!(
                    "{} (API unreachable, retrying: {e:#})",
                    s(&job["status"])
                ));
            }
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        }
    }
    let status = s(&job["status"]);
    if ctx.json {
        output::print_json(&job);
    } else {
        let rc = &job["request_counts"];
        println!(
            "job {} {status} in {}: {} succeeded, {} failed of {}",
            s(&job["id"]),
            output::duration(started.elapsed().as_secs()),
            i(&rc["completed"]),
            i(&rc["failed"]),
            i(&rc["total"])
        );
        if let Some(e) = job["escrow"].as_object() {
            println!(
                "  spent {} credits, {} returned to your balance",
                s(&e["spent"]),
                s(&e["released"])
            );
        }
        if !job["output_file"].is_null() {
            println!(
                "  download: gridbook jobs download {} -o out.jsonl",
                s(&job["id"])
            );
        }
        if i(&rc["failed"]) > 0 {
            println!(
                "  failed items: gridbook jobs download {} --errors",
                s(&job["id"])
            );
        }
    }
    if status == "completed" {
        Ok(())
    } else {
        Err(Exit(3).into())
    }
}

async fn download(ctx: &Ctx, a: DownloadArgs) -> anyhow::Result<()> {
    let id = job_path(&a.id)?;
    let which = if a.errors { "errors" } else { "output" };
    let path = format!("/v1/jobs/{id}/{which}");
    if !ctx.client.has_key() {
        bail!("not logged in: run `gridbook login` (or set GRIDBOOK_API_KEY)");
    }
    let r = match ctx
        .client
        .send(true, || ctx.client.request(Method::GET, &path))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let not_ready = e
                .downcast_ref::<ApiFailure>()
                .is_some_and(|f| f.code == "not_ready");
            if not_ready && a.errors {
                // A finished job without failures has no error file: say so, not "not ready".
                let job = get_job(ctx, &id).await?;
                if TERMINAL.contains(&job["status"].as_str().unwrap_or(""))
                    && i(&job["request_counts"]["failed"]) == 0
                {
                    if let Some(p) = &a.output {
                        std::fs::write(p, b"")
                            .with_context(|| format!("writing {}", p.display()))?;
                    }
                    if ctx.json && a.output.is_some() {
                        output::print_json(
                            &json!({"job": id, "file": a.output, "bytes": 0, "lines": 0}),
                        );
                    }
                    eprintln!(
                        "job {id} is {} with no failed items: its error file is empty",
                        s(&job["status"])
                    );
                    return Ok(());
                }
            }
            if let Some(f) = e
                .downcast_ref::<ApiFailure>()
                .filter(|f| f.code == "not_ready")
            {
                let mut f = f.clone();
                f.message = format!(
                    "{}; `gridbook jobs watch {id}` waits until the job ends",
                    f.message
                );
                return Err(f.into());
            }
            return Err(e);
        }
    };
    let mut r = r;
    let (mut bytes, mut lines) = (0u64, 0u64);
    match &a.output {
        Some(p) => {
            let tmp = p.with_extension("part");
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            while let Some(chunk) = r.chunk().await.context("downloading")? {
                bytes += chunk.len() as u64;
                lines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
                f.write_all(&chunk)
                    .with_context(|| format!("writing {}", tmp.display()))?;
            }
            f.sync_all().ok();
            drop(f);
            std::fs::rename(&tmp, p).with_context(|| format!("writing {}", p.display()))?;
            if ctx.json {
                output::print_json(&json!({"job": id, "file": p, "bytes": bytes, "lines": lines}));
            } else {
                eprintln!("wrote {} ({lines} lines, {bytes} bytes)", p.display());
            }
        }
        None => {
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = r.chunk().await.context("downloading")? {
                out.write_all(&chunk).context("writing to stdout")?;
            }
            out.flush().ok();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_from_the_rate_seen() {
        let t0 = Instant::now();
        assert_eq!(
            eta((t0, 0), t0 + Duration::from_secs(10), 500, 1_500),
            Some(20)
        );
        assert_eq!(eta((t0, 0), t0 + Duration::from_secs(10), 0, 1_500), None);
        assert_eq!(
            eta((t0, 0), t0 + Duration::from_secs(10), 1_500, 1_500),
            None
        );
        assert!(progress_text("queued", 0, 0, None).contains("waiting for a match"));
        assert!(progress_text("running", 5, 1, Some(42)).contains("ETA 42s"));
    }
}
