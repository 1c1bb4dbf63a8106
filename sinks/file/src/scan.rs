//! A validating scanner for one JSON object, made for the CSV encoder.
//!
//! It checks the whole value is well-formed JSON (RFC 8259) and reports the
//! byte range of each top-level field's raw value, without allocating. String
//! bodies and digits are skipped eight bytes at a time: in a sandbox every
//! loop iteration pays a deadline check (and a fuel update when fuel is on),
//! so fewer iterations is what makes sandboxed parsing cheap. It does not
//! check UTF-8 itself, but says whether any byte needs it.

use std::ops::Range;

/// Nesting deeper than this is refused rather than risking the stack.
const MAX_DEPTH: u32 = 128;

/// One top-level field of an object.
pub struct Field<'a> {
    /// The raw key without its quotes, escapes still escaped.
    pub key: &'a [u8],
    /// Whether the key holds escapes.
    pub key_escaped: bool,
    /// The byte range of the raw value.
    pub value: Range<usize>,
    /// Whether the value is a string that holds escapes.
    pub value_escaped: bool,
}

/// Scans `text` as one JSON object and calls `field` for each top-level
/// field. Returns whether `text` is all ASCII; if not, the caller checks
/// it is UTF-8 (only string bodies can hold other bytes).
pub fn object(text: &[u8], mut field: impl FnMut(Field<'_>)) -> Result<bool, String> {
    let mut s = Scanner { s: text, i: 0, high: 0 };
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
            let value_escaped = if s.peek() == Some(b'"') { s.string()?.1 } else { s.value(1).map(|()| false)? };
            field(Field { key: &text[key], key_escaped: escaped, value: start..s.i, value_escaped });
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
    Ok(s.high & HIGHS == 0)
}

struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
    /// The bytes of string bodies (and a few past them), or-ed: a high bit
    /// set means some byte may not be ASCII.
    high: u64,
}

impl Scanner<'_> {
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.i)
    }

    #[inline(always)]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// At a `"`: skips the string; returns the body's range and whether it
    /// holds escapes.
    #[inline(always)]
    fn string(&mut self) -> Result<(Range<usize>, bool), String> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            // Eight bytes at a time to the first `"`, `\` or control byte.
            while let Some(chunk) = self.s.get(self.i..self.i + 8) {
                let w = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
                self.high |= w;
                let stops = byte_mask(w, b'"') | byte_mask(w, b'\\') | below_mask(w, 0x20);
                if stops != 0 {
                    self.i += first(stops);
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
                Some(c) => {
                    self.high |= u64::from(c);
                    self.i += 1;
                }
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
        if self.s.get(self.i..self.i + word.len()).is_some_and(|w| same(w, word)) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.error("expected a value"))
        }
    }

    #[inline(always)]
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

    #[inline(always)]
    fn digits(&mut self) {
        // Eight bytes at a time to the first byte that is not a digit.
        while let Some(chunk) = self.s.get(self.i..self.i + 8) {
            let w = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            let stops = below_mask(w, b'0') | above_mask(w, b'9');
            if stops != 0 {
                self.i += first(stops);
                return;
            }
            self.i += 8;
        }
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }
}

// SWAR tests on eight bytes at once: each mask has the high bit of a byte
// set where the byte matches. Only the lowest set byte is exact (a borrow
// or carry may flag bytes above a match), which is all [`first`] uses.
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Bytes of `w` equal to `b`.
#[inline(always)]
pub(crate) fn byte_mask(w: u64, b: u8) -> u64 {
    below_mask(w ^ (u64::from(b) * ONES), 1)
}

/// Bytes of `w` below `n` (`n` <= 128).
#[inline(always)]
fn below_mask(w: u64, n: u8) -> u64 {
    w.wrapping_sub(u64::from(n) * ONES) & !w & HIGHS
}

/// Bytes of `w` above `n` (`n` < 128).
#[inline(always)]
fn above_mask(w: u64, n: u8) -> u64 {
    (w.wrapping_add(u64::from(127 - n) * ONES) | w) & HIGHS
}

/// Whether `a` and `b` hold the same bytes, compared eight at a time.
///
/// Slice equality calls `memcmp`, which wasm has no instruction for: the
/// guest's copy compares byte by byte, behind a call. Keys and literals
/// are short, so two overlapping words (or a few bytes) settle it.
#[inline(always)]
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().unwrap_or_default());
    let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().unwrap_or_default());
    match n {
        0 => true,
        1..4 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..8 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        _ => (0..n - 8).step_by(8).all(|at| word(a, at) == word(b, at)) && word(a, n - 8) == word(b, n - 8),
    }
}

/// Appends `bytes` to `out`. Like `extend_from_slice`, without its
/// `memcpy` call for short slices: in wasm that becomes a `memory.copy`,
/// which wasmtime runs as a call out of the guest.
#[inline(always)]
pub(crate) fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = bytes.len();
    let word = |at: usize| -> [u8; 8] { bytes[at..at + 8].try_into().unwrap_or_default() };
    let half = |at: usize| -> [u8; 4] { bytes[at..at + 4].try_into().unwrap_or_default() };
    match n {
        0..4 => bytes.iter().for_each(|&b| out.push(b)),
        // Overlapping head and tail: the tail rewrites the head's last bytes.
        4..8 => {
            let len = out.len();
            out.extend_from_slice(&half(0));
            out.truncate(len + n - 4);
            out.extend_from_slice(&half(n - 4));
        }
        8..=32 => {
            out.reserve(n);
            let len = out.len();
            (0..n - 8).step_by(8).for_each(|at| out.extend_from_slice(&word(at)));
            out.truncate(len + n - 8);
            out.extend_from_slice(&word(n - 8));
        }
        _ => out.extend_from_slice(bytes),
    }
}

/// The index of the lowest byte set in a non-zero mask.
#[inline(always)]
fn first(mask: u64) -> usize {
    (mask.trailing_zeros() / 8) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(text: &str) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        object(text.as_bytes(), |f| {
            out.push((String::from_utf8_lossy(f.key).into_owned(), text[f.value].to_string()));
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
    fn swar_masks_find_the_first_match_for_every_byte_and_position() {
        let slow = |bytes: [u8; 8], hit: &dyn Fn(u8) -> bool| bytes.iter().position(|&b| hit(b));
        let fast = |mask: u64| (mask != 0).then(|| first(mask));
        // Every byte value at every position, over a background that
        // matches nothing and one that matches everywhere above it.
        for background in [b'a', 0xff, 0x00, b'"', b'5'] {
            for pos in 0..8 {
                for b in 0..=255u8 {
                    let mut bytes = [background; 8];
                    bytes[pos] = b;
                    let w = u64::from_le_bytes(bytes);
                    assert_eq!(fast(byte_mask(w, b'"')), slow(bytes, &|c| c == b'"'), "{bytes:?}");
                    assert_eq!(fast(byte_mask(w, b'\\')), slow(bytes, &|c| c == b'\\'), "{bytes:?}");
                    assert_eq!(fast(below_mask(w, 0x20)), slow(bytes, &|c| c < 0x20), "{bytes:?}");
                    let digit = below_mask(w, b'0') | above_mask(w, b'9');
                    assert_eq!(fast(digit), slow(bytes, &|c| !c.is_ascii_digit()), "{bytes:?}");
                }
            }
        }
    }

    #[test]
    fn same_and_put_agree_with_the_slice_operations_at_every_length() {
        let text: Vec<u8> = (0..80u8).map(|i| b'a' + i % 26).collect();
        for n in 0..text.len() {
            let a = &text[..n];
            let mut b = a.to_vec();
            assert!(same(a, &b), "{n}");
            for at in 0..n {
                b[at] ^= 1;
                assert!(!same(a, &b), "{n} {at}");
                b[at] ^= 1;
            }
            assert!(!same(a, &text[..n + 1]), "{n}");
            let mut out = b"prefix".to_vec();
            put(&mut out, a);
            assert_eq!(out, [b"prefix".as_slice(), a].concat(), "{n}");
        }
    }

    #[test]
    fn numbers_and_strings_of_every_length_end_where_they_end() {
        for n in 1..20 {
            let digits: String = (0..n).map(|i| char::from(b'1' + (i % 9) as u8)).collect();
            let body: String = (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
            let text =
                format!(r#"{{"n":{digits},"s":"{body}","e":"{body}\"{body}","f":-{digits}.{digits}e+{digits}}}"#);
            let got = fields(&text).unwrap();
            assert_eq!(got[0].1, digits);
            assert_eq!(got[1].1, format!("\"{body}\""));
            assert_eq!(got[2].1, format!("\"{body}\\\"{body}\""));
            assert_eq!(got[3].1, format!("-{digits}.{digits}e+{digits}"));
        }
    }
}
