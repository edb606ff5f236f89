//! `matching-engine replay FILE`: reads a command log, prints the book's events.
//!
//! Input: JSONL, one `matching_core::Command` per line, e.g.
//! `{"seq":1,"time":1000,"place":{"id":1,"account":7,"side":"bid","price":100,"qty":5}}`.
//! The first line may instead be the market: `{"config":{...MarketConfig fields...}}` (missing
//! fields take `MarketConfig::default()`); without it the default market is used. Blank lines
//! are skipped. `-` reads standard input.
//!
//! Output: JSONL on stdout, one `matching_core::Event` per line, e.g.
//! `{"seq":1,"cmd":1,"accepted":{"id":1,"account":7,"side":"bid","price":100,"qty":5}}`.
//! A line that does not parse stops the replay with an error naming its line number (exit
//! status 1); the events of the lines before it have been printed.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;

use anyhow::{Context, bail};
use matching_core::{Command, MarketConfig, OrderBook};

#[derive(clap::Args)]
pub struct Args {
    /// The command log (JSONL); `-` for standard input.
    pub file: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let result = if args.file.as_os_str() == "-" {
        replay(io::stdin().lock(), &mut out)
    } else {
        let f = File::open(&args.file)
            .with_context(|| format!("cannot open {}", args.file.display()))?;
        replay(BufReader::new(f), &mut out)
    };
    out.flush()?;
    result.map(|_| ())
}

/// Replays `input` into `out`; returns the number of commands applied.
pub fn replay(input: impl BufRead, mut out: impl Write) -> anyhow::Result<u64> {
    let mut book: Option<OrderBook> = None;
    let mut events = Vec::new();
    let mut commands = 0;
    for (n, line) in input.lines().enumerate() {
        let lineno = n + 1;
        let line = line.with_context(|| format!("line {lineno}: cannot read"))?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if text.starts_with("{\"config\"") {
            if book.is_some() {
                bail!("line {lineno}: the market config must come before the first command");
            }
            let mut v: serde_json::Value = serde_json::from_str(text)
                .with_context(|| format!("line {lineno}: invalid JSON"))?;
            let cfg: MarketConfig = serde_json::from_value(v["config"].take())
                .with_context(|| format!("line {lineno}: invalid market config"))?;
            book = Some(
                OrderBook::new(cfg)
                    .with_context(|| format!("line {lineno}: invalid market config"))?,
            );
            continue;
        }
        let cmd: Command = serde_json::from_str(text)
            .with_context(|| format!("line {lineno}: invalid command"))?;
        let book = match book.as_mut() {
            Some(b) => b,
            None => book
                .insert(OrderBook::new(MarketConfig::default()).context("default market config")?),
        };
        events.clear();
        book.apply(&cmd, &mut events);
        for e in &events {
            serde_json::to_writer(&mut out, e)?;
            out.write_all(b"\n")?;
        }
        commands += 1;
    }
    Ok(commands)
}
