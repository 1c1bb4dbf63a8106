//! A validating scanner for one JSON object, made for the CSV encoder.
//!
//! It checks the whole value is well-formed JSON (RFC 8259) and reports the
//! byte range of each top-level field's raw value, without allocating. String
//! bodies are skipped eight bytes at a time: in a sandbox every loop
//! iteration pays a deadline check (and a fuel update when fuel is on), so
//! fewer iterations is what makes sandboxed parsing cheap.

use std::ops::Range;

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: u32 = 128;

/// Scans `text` as one JSON object; calls `field(key, raw_value_range)` for
/// each top-level field. `key` is the raw key without its quotes (escapes
/// still escaped); `escaped` says whether it holds any.
pub fn object(text: &[u8], mut field: impl FnMut(&[u8], bool, Range<usize>)) -> Result<(), String> {
    let mut s = Scanner { s: text, i: 0 };
    s.ws();
    if s.peek() != Some(b'{') {
        return Err(s.error("expected `{`"));
    }
    s.i += 1;
    s.ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
    } else {
        loop {
            if s.peek() != Some(b'"') {
                return Err(s.error("expected a string key"));
            }
            let (key, escaped) = s.string()?;
            s.ws();
            if s.peek() != Some(b':') {
                return Err(s.error("expected `:`"));
            }
            s.i += 1;
            s.ws();
            let start = s.i;
            s.value(1)?;
            field(&text[key], escaped, start..s.i);
            s.ws();
            match s.peek() {
                Some(b',') => {
                    s.i += 1;
                    s.ws();
                }
                Some(b'}') => {
                    s.i += 1;
                    break;
                }
                _ => return Err(s.error("expected `,` or `}`")),
            }
        }
    }
    s.ws();
    if s.i != text.len() {
        return Err(s.error("trailing characters"));
    }
    Ok(())
}

struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.i)
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// At a `"`: skips the string; returns the body's range and whether it
    /// holds escapes.
    fn string(&mut self) -> Result<(Range<usize>, bool), String> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            // Eight bytes at a time while none is `"`, `\` or a control byte.
            while let Some(chunk) = self.s.get(self.i..self.i + 8) {
                let w = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
                if has_byte(w, b'"') || has_byte(w, b'\\') || has_below(w, 0x20) {
                    break;
                }
                self.i += 8;
            }
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    let body = start..self.i;
                    self.i += 1;
                    return Ok((body, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            let hex = self.s.get(self.i + 1..self.i + 5).ok_or_else(|| self.error("bad \\u escape"))?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(self.error("bad \\u escape"));
                            }
                            self.i += 5;
                        }
                        _ => return Err(self.error("bad escape")),
                    }
                }
                Some(c) if c < 0x20 => return Err(self.error("control character in string")),
                Some(_) => self.i += 1,
            }
        }
    }

    fn value(&mut self, depth: u32) -> Result<(), String> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        match self.peek() {
            Some(b'"') => self.string().map(drop),
            Some(b'{') => self.container(b'}', depth, true),
            Some(b'[') => self.container(b']', depth, false),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => Err(self.error("expected a value")),
        }
    }

    fn container(&mut self, close: u8, depth: u32, object: bool) -> Result<(), String> {
        self.i += 1;
        self.ws();
        if self.peek() == Some(close) {
            self.i += 1;
            return Ok(());
        }
        loop {
            if object {
                if self.peek() != Some(b'"') {
                    return Err(self.error("expected a string key"));
                }
                self.string()?;
                self.ws();
                if self.peek() != Some(b':') {
                    return Err(self.error("expected `:`"));
                }
                self.i += 1;
                self.ws();
            }
            self.value(depth + 1)?;
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(c) if c == close => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected `,` or a closing bracket")),
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), String> {
        if self.s.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.error("expected a value"))
        }
    }

    fn number(&mut self) -> Result<(), String> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("bad number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("bad number"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("bad number"));
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }
}

/// Whether any byte of `w` equals `b` (the classic SWAR zero-byte test).
fn has_byte(w: u64, b: u8) -> bool {
    has_zero(w ^ (u64::from(b) * 0x0101_0101_0101_0101))
}

fn has_zero(w: u64) -> bool {
    w.wrapping_sub(0x0101_0101_0101_0101) & !w & 0x8080_8080_8080_8080 != 0
}

/// Whether any byte of `w` is below `n` (n <= 128).
fn has_below(w: u64, n: u8) -> bool {
    w.wrapping_sub(u64::from(n) * 0x0101_0101_0101_0101) & !w & 0x8080_8080_8080_8080 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        object(text.as_bytes(), |k, _, r| {
            out.push((String::from_utf8_lossy(k).into_owned(), text[r].to_string()));
        })?;
        Ok(out)
    }

    #[test]
    fn agrees_with_serde_json_on_validity() {
        let cases = [
            r#"{}"#,
            r#" { "a" : 1 , "b":[1,2,{"c":null}], "d":"x\"y\\u00e9", "e":-0.5e+3 } "#,
            r#"{"long":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","t":true,"f":false}"#,
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":[1,2}"#,
            r#"{"a":tru}"#,
            r#"[1]"#,
            r#"{"a":1} x"#,
            r#"{"a":"unterminated}"#,
            r#"{"a":-}"#,
            r#"{"a":1e}"#,
            r#"{"a":{"b":{"c":[[[]]]}}}"#,
        ];
        for case in cases {
            let ours = fields(case).is_ok();
            let theirs = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(case).is_ok();
            assert_eq!(ours, theirs, "{case}");
        }
    }

    #[test]
    fn reports_top_level_raw_values() {
        let got = fields(r#"{"a":1,"b":{"x":[1, 2]},"c":"s\n"}"#).unwrap();
        let got: Vec<(&str, &str)> = got.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, [("a", "1"), ("b", r#"{"x":[1, 2]}"#), ("c", r#""s\n""#)]);
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(fields(&deep).unwrap_err().starts_with("nested too deeply"));
    }

    #[test]
    fn swar_tests_find_every_position() {
        for pos in 0..8 {
            let mut bytes = [b'a'; 8];
            bytes[pos] = b'"';
            assert!(has_byte(u64::from_le_bytes(bytes), b'"'));
            bytes[pos] = 0x1f;
            assert!(has_below(u64::from_le_bytes(bytes), 0x20));
        }
        assert!(!has_byte(u64::from_le_bytes(*b"abcdefgh"), b'"'));
        assert!(!has_below(u64::from_le_bytes(*b"abcdefgh"), 0x20));
        // Bytes >= 0x80 (UTF-8) are neither quotes nor control bytes.
        assert!(!has_below(u64::from_le_bytes([0xc3, 0xa9, b'a', b'b', 0xe2, 0x82, 0xac, b'c']), 0x20));
    }
}
