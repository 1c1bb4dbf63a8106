//! InfluxDB line protocol: `measurement,tag=v field=1i,f2="s" 1700000000000`.

use serde_json::{Map, Value};

/// The unit of the time values in records and on the wire.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Nanoseconds.
    Ns,
    /// Microseconds.
    Us,
    /// Milliseconds.
    #[default]
    Ms,
    /// Seconds.
    S,
}

impl Precision {
    /// The `precision` query parameter: v1 spells microseconds `u` and
    /// nanoseconds `n`, v2 `us` and `ns`.
    pub fn param(self, v1: bool) -> &'static str {
        match (self, v1) {
            (Precision::Ns, true) => "n",
            (Precision::Ns, false) => "ns",
            (Precision::Us, true) => "u",
            (Precision::Us, false) => "us",
            (Precision::Ms, _) => "ms",
            (Precision::S, _) => "s",
        }
    }

    /// A record timestamp (milliseconds) in this unit.
    pub fn from_millis(self, ms: i64) -> i64 {
        match self {
            Precision::Ns => ms.saturating_mul(1_000_000),
            Precision::Us => ms.saturating_mul(1_000),
            Precision::Ms => ms,
            Precision::S => ms.div_euclid(1_000),
        }
    }
}

/// How records become points.
#[derive(Debug, Clone)]
pub struct Encoder {
    /// The measurement, unless `measurement_key` names a field holding it.
    pub measurement: String,
    pub measurement_key: Option<String>,
    pub tag_keys: Vec<String>,
    /// Empty: every top-level key that is not a tag, the time or the
    /// measurement.
    pub field_keys: Vec<String>,
    pub time_key: Option<String>,
    pub precision: Precision,
    /// Write integers as floats (`1` instead of `1i`), so a field that is
    /// sometimes `1` and sometimes `1.5` keeps one type.
    pub ints_as_floats: bool,
}

impl Encoder {
    /// Appends the record's line (with a trailing newline) to `out`, or
    /// says why the record cannot be a point; `out` is unchanged then.
    /// `timestamp` is the record's own (milliseconds), used without a
    /// `time_key`.
    pub fn encode(&self, value: &[u8], timestamp: Option<i64>, out: &mut Vec<u8>) -> Result<(), String> {
        let value: Value = serde_json::from_slice(value).map_err(|e| format!("the value is not JSON: {e}"))?;
        let Value::Object(object) = value else {
            return Err("the value is not a JSON object".into());
        };
        let start = out.len();
        let result = self.encode_object(&object, timestamp, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn encode_object(
        &self,
        object: &Map<String, Value>,
        timestamp: Option<i64>,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let measurement = match &self.measurement_key {
            Some(key) => match object.get(key) {
                Some(Value::String(s)) if !s.is_empty() => s.as_str(),
                _ => return Err(format!("the measurement field {key:?} is missing or not a non-empty string")),
            },
            None => self.measurement.as_str(),
        };
        escape(measurement, b", ", "the measurement", out)?;
        for key in &self.tag_keys {
            let text = match object.get(key) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) if s.is_empty() => continue,
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            out.push(b',');
            escape(key, b",= ", "a tag key", out)?;
            out.push(b'=');
            escape(&text, b",= ", &format!("tag {key:?}"), out)?;
        }
        let mut fields = 0;
        let mut field = |key: &str, value: &Value, out: &mut Vec<u8>| -> Result<(), String> {
            if value.is_null() {
                return Ok(());
            }
            out.push(if fields == 0 { b' ' } else { b',' });
            fields += 1;
            escape(key, b",= ", "a field key", out)?;
            out.push(b'=');
            match value {
                Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
                Value::Number(n) if n.is_f64() => {
                    let f = n.as_f64().unwrap_or_default();
                    // Rust prints 1e300 in full and 1.0 as "1": both parse.
                    out.extend_from_slice(f.to_string().as_bytes());
                }
                Value::Number(n) if self.ints_as_floats => out.extend_from_slice(n.to_string().as_bytes()),
                Value::Number(n) if n.is_i64() => {
                    out.extend_from_slice(n.to_string().as_bytes());
                    out.push(b'i');
                }
                Value::Number(n) => {
                    // Above i64::MAX: InfluxDB 1.x has no unsigned type.
                    return Err(format!("field {key:?} = {n} is larger than a 64-bit signed integer"));
                }
                Value::String(s) => quote(s, out),
                nested => quote(&nested.to_string(), out),
            }
            Ok(())
        };
        let skip = |key: &str| {
            self.tag_keys.iter().any(|k| k == key)
                || self.time_key.as_deref() == Some(key)
                || self.measurement_key.as_deref() == Some(key)
        };
        if self.field_keys.is_empty() {
            for (key, value) in object.iter().filter(|(k, _)| !skip(k)) {
                field(key, value, out)?;
            }
        } else {
            for key in &self.field_keys {
                if let Some(value) = object.get(key) {
                    field(key, value, out)?;
                }
            }
        }
        if fields == 0 {
            return Err("the record has no field values (a point needs at least one)".into());
        }
        let time = match &self.time_key {
            Some(key) => match object.get(key) {
                Some(Value::Number(n)) => Some(n.as_i64().ok_or_else(|| {
                    format!("the time field {key:?} = {n} is not an integer (in {:?})", self.precision)
                })?),
                None | Some(Value::Null) => return Err(format!("the time field {key:?} is missing")),
                Some(other) => return Err(format!("the time field {key:?} = {other} is not an integer")),
            },
            None => timestamp.map(|ms| self.precision.from_millis(ms)),
        };
        if let Some(time) = time {
            out.push(b' ');
            out.extend_from_slice(time.to_string().as_bytes());
        }
        out.push(b'\n');
        Ok(())
    }
}

/// Writes `text` with a backslash before each of `special`; line protocol
/// has no escape for newlines, so they are refused.
fn escape(text: &str, special: &[u8], what: &str, out: &mut Vec<u8>) -> Result<(), String> {
    if text.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if text.contains(['\n', '\r']) {
        return Err(format!("{what} ({text:?}) contains a line break, which line protocol cannot carry"));
    }
    for &b in text.as_bytes() {
        if special.contains(&b) {
            out.push(b'\\');
        }
        out.push(b);
    }
    if text.ends_with('\\') {
        // A trailing backslash would escape the separator after it.
        return Err(format!("{what} ({text:?}) ends with a backslash"));
    }
    Ok(())
}

/// A string field value: quoted, with `"` and `\` escaped.
fn quote(text: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for &b in text.as_bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoder() -> Encoder {
        Encoder {
            measurement: "cpu load".into(),
            measurement_key: None,
            tag_keys: vec!["host".into(), "region".into()],
            field_keys: vec![],
            time_key: Some("ts".into()),
            precision: Precision::Ms,
            ints_as_floats: false,
        }
    }

    fn check(encoder: &Encoder, value: &str, timestamp: Option<i64>, want: Result<&str, &str>) {
        let mut out = b"before\n".to_vec();
        let got = encoder.encode(value.as_bytes(), timestamp, &mut out);
        let text = String::from_utf8(out).expect("utf-8");
        match want {
            Ok(line) => {
                assert_eq!(got, Ok(()), "{value}");
                assert_eq!(text, format!("before\n{line}\n"), "{value}");
            }
            Err(reason) => {
                assert_eq!(got, Err(reason.to_string()), "{value}");
                assert_eq!(text, "before\n", "a refused record leaves nothing behind: {value}");
            }
        }
    }

    #[test]
    fn records_become_lines_with_escaping() {
        let e = encoder();
        let cases: &[(&str, Option<i64>, Result<&str, &str>)] = &[
            (
                r#"{"host":"a b","region":"eu,w=1","ts":1700000000000,"v":1,"f":1.5,"ok":true,"s":"say \"hi\" \\o/"}"#,
                None,
                Ok(r#"cpu\ load,host=a\ b,region=eu\,w\=1 f=1.5,ok=true,s="say \"hi\" \\o/",v=1i 1700000000000"#),
            ),
            // Missing and null tags are left out; fields in key order;
            // nested values as JSON strings; null fields skipped.
            (
                r#"{"ts":5,"host":null,"z":{"a":[1]},"n":null,"k y":-3}"#,
                None,
                Ok(r#"cpu\ load k\ y=-3i,z="{\"a\":[1]}" 5"#),
            ),
            (r#"{"ts":5,"host":7,"v":2.0}"#, None, Ok("cpu\\ load,host=7 v=2 5")),
            (r#"{"v":1}"#, Some(9), Err("the time field \"ts\" is missing")),
            (r#"{"ts":1.5,"v":1}"#, None, Err("the time field \"ts\" = 1.5 is not an integer (in Ms)")),
            (r#"{"ts":"now","v":1}"#, None, Err("the time field \"ts\" = \"now\" is not an integer")),
            (r#"{"ts":1,"host":"x"}"#, None, Err("the record has no field values (a point needs at least one)")),
            (
                r#"{"ts":1,"host":"a\nb","v":1}"#,
                None,
                Err("tag \"host\" (\"a\\nb\") contains a line break, which line protocol cannot carry"),
            ),
            (
                r#"{"ts":1,"v":18446744073709551615}"#,
                None,
                Err("field \"v\" = 18446744073709551615 is larger than a 64-bit signed integer"),
            ),
            (r#"[1]"#, None, Err("the value is not a JSON object")),
            ("x", None, Err("the value is not JSON: expected value at line 1 column 1")),
        ];
        for &(value, timestamp, want) in cases {
            check(&e, value, timestamp, want);
        }
    }

    #[test]
    fn chosen_fields_measurement_key_record_time_and_floats() {
        let e = Encoder {
            measurement_key: Some("m".into()),
            field_keys: vec!["b".into(), "a".into()],
            time_key: None,
            precision: Precision::Ns,
            ints_as_floats: true,
            ..encoder()
        };
        check(&e, r#"{"m":"mem","a":1,"b":2,"c":3}"#, Some(1_700_000_000_123), Ok("mem b=2,a=1 1700000000123000000"));
        check(&e, r#"{"m":"mem","a":1}"#, None, Ok("mem a=1"));
        check(&e, r#"{"a":1}"#, None, Err("the measurement field \"m\" is missing or not a non-empty string"));
        check(&e, r#"{"m":"x","c":1}"#, None, Err("the record has no field values (a point needs at least one)"));
    }

    #[test]
    fn precisions_convert_record_timestamps_and_name_the_parameter() {
        assert_eq!(Precision::S.from_millis(1_999), 1);
        assert_eq!(Precision::S.from_millis(-1), -1);
        assert_eq!(Precision::Us.from_millis(2), 2_000);
        assert_eq!((Precision::Ns.param(true), Precision::Ns.param(false)), ("n", "ns"));
        assert_eq!((Precision::Us.param(true), Precision::Us.param(false)), ("u", "us"));
    }
}
