//! Turns record values into output lines.
//!
//! The CSV encoder never builds a JSON tree: it scans the object once
//! ([`crate::scan`]), keeps the byte range of each wanted field's raw JSON,
//! and copies from the value into the line. Only strings with escapes are
//! decoded into a temporary, so the hot path does not allocate.

use std::ops::Range;

use serde::de::IgnoredAny;

use crate::scan::{put, same};

/// An output line format.
#[derive(Debug, Clone)]
pub enum Encoder {
    /// The value as is, one per line; it must be valid JSON on one line.
    Jsonl,
    /// The value must be a JSON object; the chosen fields become CSV cells.
    Csv {
        /// Field names, in column order.
        columns: Vec<String>,
        /// Per column, the byte range of its raw JSON in the current value
        /// and whether it is a string with escapes; reused across records.
        cells: Vec<Option<(Range<usize>, bool)>>,
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
                csv_cell(column.as_bytes(), out);
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
                cells.iter_mut().for_each(|c| *c = None);
                // Fields usually come in column order: the column after the
                // last one found is tried first.
                let mut next = 0;
                let ascii = crate::scan::object(value, |field| {
                    let found = if field.key_escaped {
                        // Rare: compare the decoded key.
                        let quoted = format!("\"{}\"", String::from_utf8_lossy(field.key));
                        let key: String = serde_json::from_str(&quoted).unwrap_or_default();
                        columns.iter().position(|c| *c == key)
                    } else if columns.get(next).is_some_and(|c| same(c.as_bytes(), field.key)) {
                        Some(next)
                    } else {
                        columns.iter().position(|c| same(c.as_bytes(), field.key))
                    };
                    if let Some(i) = found {
                        cells[i] = Some((field.value, field.value_escaped));
                        next = i + 1;
                    }
                })
                .map_err(|e| format!("value is not a JSON object: {e}"))?;
                if !ascii {
                    std::str::from_utf8(value).map_err(|e| format!("value is not a JSON object: {e}"))?;
                }
                let start = out.len();
                for (i, cell) in cells.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    if let Some((range, escaped)) = cell
                        && let Err(e) = raw_cell(&value[range.clone()], *escaped, out)
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

/// Writes a field's raw JSON (valid, as the scanner checked) as a CSV cell:
/// strings unquoted (and decoded only if they hold escapes), `null` empty,
/// numbers and booleans as written, objects and arrays as their JSON text.
fn raw_cell(raw: &[u8], escaped: bool, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match raw.first() {
        Some(b'"') if escaped => {
            let decoded: String = serde_json::from_slice(raw)?;
            csv_cell(decoded.as_bytes(), out);
        }
        Some(b'"') => {
            let inner = &raw[1..raw.len() - 1];
            if has_comma(inner) {
                // Without escapes a body holds no quote or line break.
                csv_cell(inner, out);
            } else {
                put(out, inner);
            }
        }
        Some(b'n') => {} // null
        // Objects and arrays may hold commas, quotes and line breaks.
        Some(b'{' | b'[') => csv_cell(raw, out),
        // Numbers, true and false hold none.
        _ => put(out, raw),
    }
    Ok(())
}

/// Whether `text` holds a comma, eight bytes at a time.
fn has_comma(text: &[u8]) -> bool {
    let mut chunks = text.chunks_exact(8);
    let found = chunks
        .by_ref()
        .any(|c| crate::scan::byte_mask(u64::from_le_bytes(c.try_into().unwrap_or_default()), b',') != 0);
    found || chunks.remainder().contains(&b',')
}

/// Writes one CSV cell, quoted when it holds a comma, quote or line break
/// (RFC 4180).
fn csv_cell(text: &[u8], out: &mut Vec<u8>) {
    if text.iter().any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r')) {
        out.push(b'"');
        for &b in text {
            if b == b'"' {
                out.push(b'"');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        out.extend_from_slice(text);
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

    #[test]
    fn csv_fields_in_any_order_escaped_keys_and_utf8() {
        let e = &mut Encoder::csv(vec!["id".into(), "name".into(), "ok".into()]);
        check(e, r#"{"ok":false,"name":"x","id":2}"#, Ok("2,x,false\n"));
        check(e, r#"{"n\u0061me":"é, ü","id":3,"id":4}"#, Ok("4,\"é, ü\",\n"));
        check(e, r#"{"id":{"a":[1,"b"]}}"#, Ok("\"{\"\"a\"\":[1,\"\"b\"\"]}\",,\n"));
        // Not UTF-8, in a chosen field or not.
        for bad in [&b"{\"name\":\"\xff\"}"[..], &b"{\"other\":\"\xc3\"}"[..]] {
            let mut out = Vec::new();
            let err = e.encode(bad, &mut out).unwrap_err();
            assert!(err.starts_with("value is not a JSON object"), "{err}");
            assert!(out.is_empty());
        }
    }
}
