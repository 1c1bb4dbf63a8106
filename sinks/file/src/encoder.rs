//! Turns record values into output lines.
//!
//! The CSV encoder never builds a JSON tree: it scans the object once
//! ([`crate::scan`]), keeps the byte range of each wanted field's raw JSON,
//! and copies from the value into the line. Only strings with escapes are
//! decoded into a temporary, so the hot path does not allocate.

use std::borrow::Cow;
use std::ops::Range;

use serde::de::IgnoredAny;

/// An output line format.
#[derive(Debug, Clone)]
pub enum Encoder {
    /// The value as is, one per line; it must be valid JSON on one line.
    Jsonl,
    /// The value must be a JSON object; the chosen fields become CSV cells.
    Csv {
        /// Field names, in column order.
        columns: Vec<String>,
        /// Per column, the byte range of its raw JSON in the current value;
        /// reused across records.
        cells: Vec<Option<Range<usize>>>,
    },
}

impl Encoder {
    /// A CSV encoder for these columns.
    pub fn csv(columns: Vec<String>) -> Encoder {
        let cells = vec![None; columns.len()];
        Encoder::Csv { columns, cells }
    }

    /// The CSV header line, if the format has one.
    pub fn header(&self, out: &mut Vec<u8>) {
        if let Encoder::Csv { columns, .. } = self {
            for (i, column) in columns.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                csv_cell(column, out);
            }
            out.push(b'\n');
        }
    }

    /// Appends the line for `value` to `out`, or says why the value cannot
    /// be written (the record is then rejected). On error `out` is unchanged.
    pub fn encode(&mut self, value: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            Encoder::Jsonl => {
                let value = value.trim_ascii();
                if value.contains(&b'\n') {
                    return Err("value spans several lines".into());
                }
                serde_json::from_slice::<IgnoredAny>(value).map_err(|e| format!("value is not JSON: {e}"))?;
                out.extend_from_slice(value);
                out.push(b'\n');
                Ok(())
            }
            Encoder::Csv { columns, cells } => {
                let text = std::str::from_utf8(value).map_err(|e| format!("value is not a JSON object: {e}"))?;
                cells.iter_mut().for_each(|c| *c = None);
                crate::scan::object(value, |key, escaped, range| {
                    let key: Cow<'_, str> = if escaped {
                        // Rare: compare the decoded key.
                        let quoted = format!("\"{}\"", String::from_utf8_lossy(key));
                        serde_json::from_str(&quoted).unwrap_or_default()
                    } else {
                        String::from_utf8_lossy(key)
                    };
                    if let Some(i) = columns.iter().position(|c| *c == key) {
                        cells[i] = Some(range);
                    }
                })
                .map_err(|e| format!("value is not a JSON object: {e}"))?;
                let start = out.len();
                for (i, cell) in cells.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    if let Some(range) = cell
                        && let Err(e) = raw_cell(&text[range.clone()], out)
                    {
                        out.truncate(start);
                        return Err(format!("field \"{}\": {e}", columns[i]));
                    }
                }
                out.push(b'\n');
                Ok(())
            }
        }
    }
}

/// Writes a field's raw JSON as a CSV cell: strings unquoted (and decoded
/// only if they hold escapes), `null` empty, numbers and booleans as written,
/// objects and arrays as their JSON text.
fn raw_cell(raw: &str, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match raw.as_bytes().first() {
        Some(b'"') => {
            let inner = &raw[1..raw.len() - 1];
            if inner.contains('\\') {
                let decoded: Cow<'_, str> = serde_json::from_str(raw)?;
                csv_cell(&decoded, out);
            } else {
                csv_cell(inner, out);
            }
        }
        Some(b'n') => {} // null
        _ => csv_cell(raw, out),
    }
    Ok(())
}

/// Writes one CSV cell, quoted when it holds a comma, quote or line break
/// (RFC 4180).
fn csv_cell(text: &str, out: &mut Vec<u8>) {
    if text.bytes().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.push(b'"');
        for b in text.bytes() {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(encoder: &mut Encoder, value: &str, expected: Result<&str, &str>) {
        let mut out = Vec::new();
        let got = encoder.encode(value.as_bytes(), &mut out);
        match expected {
            Ok(line) => {
                assert_eq!(got, Ok(()), "{value}");
                assert_eq!(String::from_utf8(out).unwrap(), line);
            }
            Err(prefix) => {
                let err = got.unwrap_err();
                assert!(err.starts_with(prefix), "{value}: {err}");
                assert!(out.is_empty());
            }
        }
    }

    #[test]
    fn jsonl_lines() {
        let e = &mut Encoder::Jsonl;
        check(e, r#"{"a":1}"#, Ok("{\"a\":1}\n"));
        check(e, " 42 \n", Ok("42\n"));
        check(e, "not json", Err("value is not JSON"));
        check(e, "{\"a\":\n1}", Err("value spans several lines"));
    }

    #[test]
    fn csv_lines() {
        let e = &mut Encoder::csv(vec!["id".into(), "name".into(), "tags".into(), "ok".into()]);
        check(
            e,
            r#"{"id":7,"name":"a, \"b\"","tags":[1, 2],"ok":true,"other":{"x":[]}}"#,
            Ok("7,\"a, \"\"b\"\"\",\"[1, 2]\",true\n"),
        );
        check(e, r#"{"id":1.5}"#, Ok("1.5,,,\n"));
        check(e, r#"{"name":"plain","ok":null,"id":"\u00e9\n"}"#, Ok("\"é\n\",plain,,\n"));
        check(e, r#"[1,2]"#, Err("value is not a JSON object"));
        check(e, r#"{"id":1} trailing"#, Err("value is not a JSON object"));
        check(e, r#"{"id":1"#, Err("value is not a JSON object"));
        let mut header = Vec::new();
        e.header(&mut header);
        assert_eq!(header, b"id,name,tags,ok\n");
    }
}
