//! The one check every text that reaches PostgreSQL from a request passes: no NUL character.
//!
//! PostgreSQL refuses U+0000 in `text` columns ("invalid byte sequence") and `\u0000` in `jsonb`
//! ("unsupported Unicode escape sequence"), so a NUL that got through would surface as a 500 (or
//! break a later writer such as the settlement worker). Text reaches the database from three
//! places, and each passes through this module before any handler sees it:
//! - JSON bodies: the `body_guard` middleware in `app` runs [`json`] over every JSON request body
//!   (every field, nested ones included: job metadata, key names, credit references, node names,
//!   challenge devices, and the stored idempotent responses that echo them);
//! - query strings: the same middleware runs [`query`] over every query string (the upload's
//!   `filename`, `market`, `purpose`);
//! - uploaded JSONL files: `files::validate_jsonl` runs [`json`] over every line that
//!   [`may_contain_nul`] flags (a line's `custom_id` ends up in assignment details).
//!
//! Headers that are stored (`Idempotency-Key`) are restricted to visible ASCII by their own
//! parser. A NUL is answered with 400 `invalid_request` naming the field (`metadata.note`,
//! `embeddings[3]`, `filename`).

use serde_json::Value;

use crate::error::{ApiError, ApiResult};

fn nul(field: &str) -> ApiError {
    ApiError::invalid(
        field,
        format!("{field} contains a NUL character (U+0000), which is not allowed"),
    )
}

/// 400 naming `field` when `s` contains NUL.
pub fn text(field: &str, s: &str) -> ApiResult<()> {
    if s.contains('\0') {
        return Err(nul(field));
    }
    Ok(())
}

/// 400 naming the first field of `value` (keys and string values, at any depth) that contains
/// NUL. Field paths: `a.b` for object members, `a[3]` for array items, `body` for the top level.
pub fn json(value: &Value) -> ApiResult<()> {
    let mut path = String::new();
    walk(value, &mut path)
}

fn walk(v: &Value, path: &mut String) -> ApiResult<()> {
    match v {
        Value::String(s) => text(if path.is_empty() { "body" } else { path }, s),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Object(map) => {
            for (k, item) in map {
                if k.contains('\0') {
                    let parent = if path.is_empty() {
                        "body"
                    } else {
                        path.as_str()
                    };
                    return Err(ApiError::invalid(
                        parent,
                        format!("a field name in {parent} contains a NUL character (U+0000)"),
                    ));
                }
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                walk(item, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// 400 naming the first query parameter whose name or (percent-decoded) value contains NUL. A
/// query string that does not parse is left to the route's own extractor.
pub fn query(query: &str) -> ApiResult<()> {
    if query.is_empty() || !query.contains("%00") {
        return Ok(());
    }
    let Ok(pairs) = actix_web::web::Query::<Vec<(String, String)>>::from_query(query) else {
        return Ok(());
    };
    for (k, v) in pairs.iter() {
        if k.contains('\0') {
            return Err(ApiError::invalid(
                "query",
                "a query parameter name contains a NUL character (U+0000)",
            ));
        }
        text(k, v)?;
    }
    Ok(())
}

/// Whether JSON text may hold a NUL: a raw 0x00 byte, or the escape `\u0000` (not preceded by an
/// escaping backslash). Fast (no parsing); a `true` is confirmed by parsing and [`json`].
pub fn may_contain_nul(bytes: &[u8]) -> bool {
    const ESC: &[u8] = b"u0000";
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            0 => return true,
            b'\\' => {
                // Count the run of backslashes; an odd run escapes what follows.
                let start = i;
                while i < bytes.len() && bytes[i] == b'\\' {
                    i += 1;
                }
                if (i - start) % 2 == 1 && bytes[i..].starts_with(ESC) {
                    return true;
                }
            }
            _ => i += 1,
        }
    }
    false
}

/// The path of the field (`vram_mb`, `metadata.note`, `embeddings[1][0]`) at a position of
/// JSON text given as serde's one-based `line` and `column`: where a type error was found. The
/// text is scanned up to that position, keeping the stack of open objects (with their current
/// key) and arrays (with their current index). `None` at the top level.
pub fn json_path_at(text: &[u8], line: usize, column: usize) -> Option<String> {
    enum Frame {
        Object { key: Option<String>, value: bool },
        Array(usize),
    }
    let mut start = 0;
    for _ in 1..line {
        start += text[start..].iter().position(|&b| b == b'\n')? + 1;
    }
    let end = (start + column.saturating_sub(1)).min(text.len());
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < end {
        match text[i] {
            b'{' => stack.push(Frame::Object {
                key: None,
                value: false,
            }),
            b'[' => stack.push(Frame::Array(0)),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Array(n)) => *n += 1,
                Some(Frame::Object { key, value }) => {
                    *key = None;
                    *value = false;
                }
                None => {}
            },
            b':' => {
                if let Some(Frame::Object { value, .. }) = stack.last_mut() {
                    *value = true;
                }
            }
            b'"' => {
                let from = i + 1;
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                if let Some(Frame::Object { key, value: false }) = stack.last_mut() {
                    let raw = &text[from..i.min(text.len())];
                    *key = Some(
                        serde_json::from_slice::<String>(&[b"\"", raw, b"\""].concat())
                            .unwrap_or_else(|_| String::from_utf8_lossy(raw).into_owned()),
                    );
                }
            }
            _ => {}
        }
        i += 1;
    }
    let mut path = String::new();
    for f in &stack {
        match f {
            Frame::Object {
                key: Some(k),
                value: true,
            } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            Frame::Object { .. } => break,
            Frame::Array(n) => path.push_str(&format!("[{n}]")),
        }
    }
    (!path.is_empty()).then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_the_nested_field() {
        let e = json(&json!({"metadata": {"a": "ok", "note": "x\u{0}y"}})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("metadata.note"));
        let e = json(&json!({"embeddings": [[1.0], "\u{0}"]})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("embeddings[1]"));
        let e = json(&json!({"metadata": {"k\u{0}": "v"}})).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("metadata"));
        assert!(json(&json!({"a": ["b", {"c": 1}], "d": null})).is_ok());
    }

    #[test]
    fn query_values_are_decoded() {
        let e = query("purpose=batch&filename=a%00b").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("filename"));
        assert!(query("filename=a%2500b").is_ok());
        assert!(query("").is_ok());
    }

    fn path_of_error<T: serde::de::DeserializeOwned + std::fmt::Debug>(
        text: &str,
    ) -> Option<String> {
        let e = serde_json::from_str::<T>(text).unwrap_err();
        json_path_at(text.as_bytes(), e.line(), e.column())
    }

    #[test]
    fn finds_the_field_of_a_type_error() {
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Inner {
            n: u32,
        }
        #[derive(serde::Deserialize, Debug)]
        #[allow(dead_code)]
        struct Outer {
            name: String,
            inner: Inner,
            list: Vec<Vec<f32>>,
        }
        assert_eq!(
            path_of_error::<Outer>(r#"{"name": 12, "inner": {"n": 1}, "list": []}"#).as_deref(),
            Some("name")
        );
        assert_eq!(
            path_of_error::<Outer>(
                "{\"name\": \"a,b:\\\"{\",\n \"inner\": {\"n\": \"x\"}, \"list\": []}"
            )
            .as_deref(),
            Some("inner.n")
        );
        assert_eq!(
            path_of_error::<Outer>(r#"{"name":"a","inner":{"n":1},"list":[[1.0],[2.0,"x"]]}"#)
                .as_deref(),
            Some("list[1][1]")
        );
        assert_eq!(path_of_error::<Outer>("1"), None);
        assert_eq!(path_of_error::<Outer>("[1]").as_deref(), Some("[0]"));
    }

    #[test]
    fn scan_finds_escapes_only() {
        assert!(may_contain_nul(br#"{"a":"\u0000"}"#));
        assert!(may_contain_nul(br#"{"a":"\\\u0000"}"#));
        assert!(!may_contain_nul(br#"{"a":"\\u0000"}"#));
        assert!(!may_contain_nul(br#"{"a":"u0000"}"#));
        assert!(may_contain_nul(b"{\"a\":\"\0\"}"));
    }
}
