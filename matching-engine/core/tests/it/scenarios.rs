//! Scenario tests as data: every `tests/scenarios/*.txt` is a script of commands, each followed
//! by the events it must produce. One helper runs them all; `UPDATE_EXPECT=1 cargo test -p
//! matching-core` rewrites the expected events (review the diff before committing).
//!
//! Format, line by line:
//! - `# ...` comment; blank lines are kept.
//! - `config key=value ...` (first, optional): overrides of the scenario's market config
//!   (defaults: prices 1..=1000, everything else `MarketConfig::default()`).
//! - `> t=TIME KIND key=value ...` a command; KIND is place/cancel/amend/expire, the keys are
//!   the JSON fields (`acct` may stand for `account`; a bare word such as `post_only` means
//!   `true`; `tif=gtd@500` is GTD expiring at 500). `seq` is the line's command number.
//!   `seq=N` overrides it for that line only (to test out-of-sequence input).
//! - `  KIND key=value ...` (indented) an expected event, fields as in the JSON event.
//! - `! check` asserts the book's internal invariants; `! l2` / `! l3` print the views as
//!   expected lines (`  l2 bid price=.. qty=.. orders=..`).

use std::path::Path;

use matching_core::{Command, Event, MarketConfig, OrderBook, Side};
use serde_json::{Map, Value};

fn scalar(v: &str) -> Value {
    match v.parse::<u64>() {
        Ok(n) => Value::from(n),
        Err(_) => Value::from(v),
    }
}

fn parse_command(line: &str, mut seq: u64, lineno: usize) -> Command {
    let mut toks = line.split_whitespace();
    let mut time = None;
    let mut kind = None;
    let mut fields = Map::new();
    for tok in toks.by_ref() {
        if let Some(t) = tok.strip_prefix("t=") {
            time = Some(t.parse::<u64>().expect("t= number"));
        } else if let Some(s) = tok.strip_prefix("seq=") {
            seq = s.parse::<u64>().expect("seq= number");
        } else {
            kind = Some(tok.to_string());
            break;
        }
    }
    for tok in toks {
        match tok.split_once('=') {
            None => {
                fields.insert(tok.to_string(), Value::Bool(true));
            }
            Some((k, v)) => {
                let k = if k == "acct" { "account" } else { k };
                let v = match v.split_once('@') {
                    Some(("gtd", at)) => serde_json::json!({"gtd": {"expires_at": scalar(at)}}),
                    _ => scalar(v),
                };
                fields.insert(k.to_string(), v);
            }
        }
    }
    let kind = kind.unwrap_or_else(|| panic!("line {lineno}: no command kind"));
    let mut obj = Map::new();
    obj.insert("seq".into(), Value::from(seq));
    obj.insert(
        "time".into(),
        Value::from(time.unwrap_or_else(|| panic!("line {lineno}: no t="))),
    );
    obj.insert(kind, Value::Object(fields));
    serde_json::from_value(Value::Object(obj)).unwrap_or_else(|e| panic!("line {lineno}: {e}"))
}

/// `fill maker=1 taker=2 ...`: the event's JSON, flattened.
pub fn render_event(e: &Event) -> String {
    let v = serde_json::to_value(e.kind).expect("serialize");
    let (kind, fields) = v.as_object().and_then(|o| o.iter().next()).expect("tagged");
    let mut s = kind.clone();
    for (k, v) in fields.as_object().expect("struct variant") {
        match v {
            Value::String(x) => s += &format!(" {k}={x}"),
            x => s += &format!(" {k}={x}"),
        }
    }
    s
}

fn run_script(text: &str) -> String {
    let mut out = String::new();
    let mut book: Option<OrderBook> = None;
    let mut cfg = serde_json::to_value(MarketConfig {
        max_price: 1000,
        ..MarketConfig::default()
    })
    .unwrap();
    let mut seq = 0u64;
    let mut events = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let lineno = n + 1;
        if line.starts_with("  ") {
            continue; // expected events: regenerated below
        }
        out.push_str(line);
        out.push('\n');
        if let Some(rest) = line.strip_prefix("config") {
            for kv in rest.split_whitespace() {
                let (k, v) = kv
                    .split_once('=')
                    .unwrap_or_else(|| panic!("line {lineno}: key=value"));
                cfg[k] = scalar(v);
            }
            continue;
        }
        if !(line.starts_with('>') || line.starts_with('!')) {
            continue;
        }
        let book = book.get_or_insert_with(|| {
            let c: MarketConfig = serde_json::from_value(cfg.clone()).expect("config");
            OrderBook::new(c).expect("valid config")
        });
        if let Some(cmd) = line.strip_prefix('>') {
            seq += 1;
            let cmd = parse_command(cmd, seq, lineno);
            events.clear();
            book.apply(&cmd, &mut events);
            for e in &events {
                assert_eq!(e.cmd, cmd.seq);
                out.push_str("  ");
                out.push_str(&render_event(e));
                out.push('\n');
            }
        } else if let Some(what) = line.strip_prefix('!') {
            match what.trim() {
                "check" => book
                    .check_invariants()
                    .unwrap_or_else(|e| panic!("line {lineno}: {e}")),
                "l2" => {
                    for side in [Side::Bid, Side::Ask] {
                        for l in book.depth(side, usize::MAX) {
                            let side = serde_json::to_value(side).unwrap();
                            let side = side.as_str().unwrap();
                            out.push_str(&format!(
                                "  l2 {side} price={} qty={} orders={}\n",
                                l.price, l.qty, l.orders
                            ));
                        }
                    }
                }
                "l3" => {
                    for side in [Side::Bid, Side::Ask] {
                        for o in book.orders(side) {
                            out.push_str(&format!(
                                "  l3 {} id={} account={} price={} qty={} priority={}\n",
                                serde_json::to_value(side).unwrap().as_str().unwrap(),
                                o.id.0,
                                o.account.0,
                                o.price,
                                o.qty,
                                o.priority
                            ));
                        }
                    }
                }
                other => panic!("line {lineno}: unknown directive {other}"),
            }
        }
    }
    out
}

#[test]
fn scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failed = Vec::new();
    let mut ran = 0;
    for p in paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
    {
        let text = std::fs::read_to_string(p).unwrap();
        let actual = run_script(&text);
        ran += 1;
        if actual != text {
            if update {
                std::fs::write(p, &actual).unwrap();
            } else {
                failed.push(p.file_name().unwrap().to_string_lossy().to_string());
                eprintln!("--- {} differs; expected vs actual:", p.display());
                for (a, b) in text.lines().zip(actual.lines()) {
                    if a != b {
                        eprintln!("  - {a}\n  + {b}");
                    }
                }
                if text.lines().count() != actual.lines().count() {
                    eprintln!(
                        "  (line counts differ: {} vs {})",
                        text.lines().count(),
                        actual.lines().count()
                    );
                }
            }
        }
    }
    assert!(ran >= 5, "scenario files not found in {}", dir.display());
    assert!(
        failed.is_empty(),
        "scenarios differ (UPDATE_EXPECT=1 to rewrite): {failed:?}"
    );
}
