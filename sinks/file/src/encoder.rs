//! Turns record values into output lines.

use serde_json::Value;

/// An output line format.
#[derive(Debug, Clone)]
pub enum Encoder {
    /// The value as is, one per line; it must be valid JSON on one line.
    Jsonl,
    /// The value must be a JSON object; the chosen fields become CSV cells.
    Csv {
        /// Field names, in column order.
        columns: Vec<String>,
    },
}

impl Encoder {
    /// The CSV header line, if the format has one.
    pub fn header(&self, out: &mut Vec<u8>) {
        if let Encoder::Csv { columns } = self {
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
    pub fn encode(&self, value: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        match self {
            Encoder::Jsonl => {
                let value = value.trim_ascii();
                if value.contains(&b'\n') {
                    return Err("value spans several lines".into());
                }
                serde_json::from_slice::<serde::de::IgnoredAny>(value)
                    .map_err(|e| format!("value is not JSON: {e}"))?;
                out.extend_from_slice(value);
                out.push(b'\n');
                Ok(())
            }
            Encoder::Csv { columns } => {
                let object: serde_json::Map<String, Value> =
                    serde_json::from_slice(value).map_err(|e| format!("value is not a JSON object: {e}"))?;
                for (i, column) in columns.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    match object.get(column) {
                        None | Some(Value::Null) => {}
                        Some(Value::String(s)) => csv_cell(s, out),
                        Some(Value::Bool(b)) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
                        Some(Value::Number(n)) => out.extend_from_slice(n.to_string().as_bytes()),
                        Some(nested) => csv_cell(&nested.to_string(), out),
                    }
                }
                out.push(b'\n');
                Ok(())
            }
        }
    }
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

    fn check(encoder: &Encoder, value: &str, expected: Result<&str, &str>) {
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
        let e = Encoder::Jsonl;
        check(&e, r#"{"a":1}"#, Ok("{\"a\":1}\n"));
        check(&e, " 42 \n", Ok("42\n"));
        check(&e, "not json", Err("value is not JSON"));
        check(&e, "{\"a\":\n1}", Err("value spans several lines"));
    }

    #[test]
    fn csv_lines() {
        let e = Encoder::Csv { columns: vec!["id".into(), "name".into(), "tags".into(), "ok".into()] };
        check(&e, r#"{"id":7,"name":"a, \"b\"","tags":[1],"ok":true}"#, Ok("7,\"a, \"\"b\"\"\",[1],true\n"));
        check(&e, r#"{"id":1.5}"#, Ok("1.5,,,\n"));
        check(&e, r#"[1,2]"#, Err("value is not a JSON object"));
        let mut header = Vec::new();
        e.header(&mut header);
        assert_eq!(header, b"id,name,tags,ok\n");
    }
}
