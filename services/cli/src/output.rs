//! Printing: JSON for scripts, aligned text for people.

use chrono::{DateTime, Utc};
use serde_json::Value;

pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// A table with a header row; columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                s.push_str(&c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// `v` as text: strings without quotes, null as `-`.
pub fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

pub fn i(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// Basis points as a percentage: 250 → `2.50%`.
pub fn bps(b: i64) -> String {
    format!("{}.{:02}%", b / 100, (b % 100).abs())
}

/// An RFC 3339 time shortened to the second, UTC.
pub fn time(v: &Value) -> String {
    match v.as_str().and_then(|t| t.parse::<DateTime<Utc>>().ok()) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
        None => s(v),
    }
}

/// `in 59m` / `3h ago` for a time.
pub fn relative(v: &Value) -> String {
    let Some(t) = v.as_str().and_then(|t| t.parse::<DateTime<Utc>>().ok()) else {
        return String::new();
    };
    let secs = (t - Utc::now()).num_seconds();
    if secs.abs() < 2 {
        "just now".into()
    } else if secs > 0 {
        format!("in {}", duration(secs as u64))
    } else {
        format!("{} ago", duration(secs.unsigned_abs()))
    }
}

/// `42s`, `5m 3s`, `2h 10m`, `3d 4h`.
pub fn duration(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m {}s", secs / 60, secs % 60),
        3_600..86_400 => format!("{}h {}m", secs / 3_600, (secs % 3_600) / 60),
        _ => format!("{}d {}h", secs / 86_400, (secs % 86_400) / 3_600),
    }
}

/// Percent-encodes a query or path value (anything but unreserved characters).
pub fn encode(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bps(250), "2.50%");
        assert_eq!(bps(5), "0.05%");
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(303), "5m 3s");
        assert_eq!(duration(7_800), "2h 10m");
        assert_eq!(encode("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(s(&Value::Null), "-");
        assert_eq!(s(&serde_json::json!("x")), "x");
    }
}
