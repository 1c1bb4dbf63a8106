//! The packed record-batch encoding of the Sinkbox sink contract.
//!
//! A batch crosses the sandbox boundary as one byte buffer (`batch.data` in
//! `wit/types.wit`) instead of a list of nested records, because each nested
//! list or string costs an allocation call into the guest. This crate is the
//! one implementation of that encoding: the runtime encodes with
//! [`BatchWriter`], guests decode with [`Records`], and both sides borrow
//! rather than copy.
//!
//! ```
//! use sinkbox_format::{BatchWriter, RecordRef, Records};
//!
//! let mut writer = BatchWriter::default();
//! writer.push(&RecordRef {
//!     offset: 7,
//!     timestamp: Some(1_700_000_000_000),
//!     key: Some(b"user-1"),
//!     value: b"{\"n\":1}",
//!     headers: &[(b"source".as_slice(), b"demo".as_slice())],
//! });
//! let (data, count) = writer.finish();
//!
//! let records: Vec<_> = Records::new(&data, count).collect::<Result<_, _>>().unwrap();
//! assert_eq!(records[0].offset, 7);
//! assert_eq!(records[0].key, Some(b"user-1".as_slice()));
//! assert_eq!(records[0].headers().next().unwrap().unwrap().0, b"source");
//! ```
#![no_std]
#![deny(missing_docs)]

extern crate alloc;

use alloc::vec::Vec;
use core::fmt;

/// Size of the fixed part of an encoded record, before key, value and headers.
pub const RECORD_HEADER_LEN: usize = 8 + 8 + 4 + 4 + 4;

/// Encoded `key-len` meaning "this record has no key".
pub const NO_KEY: u32 = u32::MAX;

/// Encoded timestamp meaning "this record has no timestamp".
pub const NO_TIMESTAMP: i64 = i64::MIN;

/// A record to encode, borrowing its parts.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// Position of the record in its partition.
    pub offset: u64,
    /// Milliseconds since the Unix epoch, if known.
    pub timestamp: Option<i64>,
    /// The key, if any.
    pub key: Option<&'a [u8]>,
    /// The value.
    pub value: &'a [u8],
    /// Header name/value pairs, in order.
    pub headers: &'a [(&'a [u8], &'a [u8])],
}

/// Appends records to one packed buffer.
#[derive(Debug, Default, Clone)]
pub struct BatchWriter {
    data: Vec<u8>,
    count: u32,
}

impl BatchWriter {
    /// A writer whose buffer starts with room for `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> Self {
        Self { data: Vec::with_capacity(bytes), count: 0 }
    }

    /// Appends one record.
    ///
    /// # Panics
    ///
    /// If a key, value or header is 4 GiB or larger, which the encoding cannot
    /// express; callers bound record sizes well below that.
    pub fn push(&mut self, record: &RecordRef<'_>) {
        self.begin(record.offset, record.timestamp, record.key, record.value, record.headers.len());
        for (name, value) in record.headers {
            self.header(name, value);
        }
    }

    /// Starts a record whose `header_count` headers follow through
    /// [`BatchWriter::header`]; lets a caller stream headers it does not hold
    /// as a slice.
    pub fn begin(
        &mut self,
        offset: u64,
        timestamp: Option<i64>,
        key: Option<&[u8]>,
        value: &[u8],
        header_count: usize,
    ) {
        let key_len = key.map_or(NO_KEY, |k| len32(k.len()));
        let d = &mut self.data;
        d.reserve(RECORD_HEADER_LEN + key.map_or(0, <[u8]>::len) + value.len());
        d.extend_from_slice(&offset.to_le_bytes());
        d.extend_from_slice(&timestamp.unwrap_or(NO_TIMESTAMP).to_le_bytes());
        d.extend_from_slice(&key_len.to_le_bytes());
        d.extend_from_slice(&len32(value.len()).to_le_bytes());
        d.extend_from_slice(&len32(header_count).to_le_bytes());
        if let Some(key) = key {
            d.extend_from_slice(key);
        }
        d.extend_from_slice(value);
        self.count += 1;
    }

    /// Appends one header to the record started last by [`BatchWriter::begin`].
    pub fn header(&mut self, name: &[u8], value: &[u8]) {
        let d = &mut self.data;
        d.extend_from_slice(&len32(name.len()).to_le_bytes());
        d.extend_from_slice(name);
        d.extend_from_slice(&len32(value.len()).to_le_bytes());
        d.extend_from_slice(value);
    }

    /// How many records were pushed.
    pub fn len(&self) -> u32 {
        self.count
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size so far, in bytes.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// The buffer and the record count.
    pub fn finish(self) -> (Vec<u8>, u32) {
        (self.data, self.count)
    }
}

fn len32(n: usize) -> u32 {
    // The encoding caps each part at 4 GiB - 2; sources reject larger records
    // long before this point, so reaching it is a bug in the caller.
    assert!(n < NO_KEY as usize, "record part of {n} bytes exceeds the encoding's limit");
    n as u32
}

/// A decoded record, borrowing from the batch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Position of the record in its partition.
    pub offset: u64,
    /// Milliseconds since the Unix epoch, if known.
    pub timestamp: Option<i64>,
    /// The key, if any.
    pub key: Option<&'a [u8]>,
    /// The value.
    pub value: &'a [u8],
    header_count: u32,
    header_bytes: &'a [u8],
}

impl<'a> Record<'a> {
    /// The record's headers, in order, as name/value pairs.
    pub fn headers(&self) -> Headers<'a> {
        Headers { rest: self.header_bytes, left: self.header_count }
    }

    /// How many headers the record has.
    pub fn header_count(&self) -> usize {
        self.header_count as usize
    }

    /// The first header with this name.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers().flatten().find(|(n, _)| *n == name.as_bytes()).map(|(_, v)| v)
    }
}

/// Why a buffer could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError {
    /// Byte position in the buffer where decoding failed.
    pub at: usize,
    /// What was wrong there.
    pub what: &'static str,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed record batch at byte {}: {}", self.at, self.what)
    }
}

impl core::error::Error for DecodeError {}

/// Iterates the records of a packed buffer.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    data: &'a [u8],
    pos: usize,
    left: u32,
}

impl<'a> Records<'a> {
    /// Decodes `count` records from `data`.
    pub fn new(data: &'a [u8], count: u32) -> Self {
        Self { data, pos: 0, left: count }
    }

    fn fail(&mut self, what: &'static str) -> Option<Result<Record<'a>, DecodeError>> {
        let at = self.pos;
        self.left = 0;
        Some(Err(DecodeError { at, what }))
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let Some(fixed) = slice(self.data, self.pos, RECORD_HEADER_LEN) else {
            return self.fail("truncated record header");
        };
        let offset = u64::from_le_bytes(fixed[0..8].try_into().unwrap_or_default());
        let timestamp = i64::from_le_bytes(fixed[8..16].try_into().unwrap_or_default());
        let key_len = u32_at(fixed, 16);
        let value_len = u32_at(fixed, 20) as usize;
        let header_count = u32_at(fixed, 24);
        let mut at = self.pos + RECORD_HEADER_LEN;
        let key = if key_len == NO_KEY {
            None
        } else {
            let Some(key) = slice(self.data, at, key_len as usize) else {
                return self.fail("truncated key");
            };
            at += key_len as usize;
            Some(key)
        };
        let Some(value) = slice(self.data, at, value_len) else {
            return self.fail("truncated value");
        };
        at += value_len;
        let headers_start = at;
        for _ in 0..header_count {
            for _ in 0..2 {
                let Some(len) = slice(self.data, at, 4) else {
                    return self.fail("truncated header");
                };
                at = match at.checked_add(4 + u32_at(len, 0) as usize) {
                    Some(end) if end <= self.data.len() => end,
                    _ => return self.fail("truncated header"),
                };
            }
        }
        let Some(header_bytes) = self.data.get(headers_start..at) else {
            return self.fail("truncated header");
        };
        self.pos = at;
        self.left -= 1;
        Some(Ok(Record {
            offset,
            timestamp: (timestamp != NO_TIMESTAMP).then_some(timestamp),
            key,
            value,
            header_count,
            header_bytes,
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left as usize))
    }
}

/// `len` bytes of `data` from `at`, or `None` when they run past its end
/// (including when `at + len` overflows, possible on 32-bit wasm targets).
fn slice(data: &[u8], at: usize, len: usize) -> Option<&[u8]> {
    data.get(at..at.checked_add(len)?)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Iterates a record's headers. Header bytes were bounds-checked when the
/// record was decoded, so this cannot fail past the first error it reports.
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    rest: &'a [u8],
    left: u32,
}

impl<'a> Iterator for Headers<'a> {
    type Item = Result<(&'a [u8], &'a [u8]), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut take = || {
            let len = u32_at(self.rest.get(..4)?, 0) as usize;
            let part = slice(self.rest, 4, len)?;
            self.rest = &self.rest[4 + len..];
            Some(part)
        };
        match (take(), take()) {
            (Some(name), Some(value)) => Some(Ok((name, value))),
            _ => {
                self.left = 0;
                Some(Err(DecodeError { at: 0, what: "truncated header" }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(records: &[RecordRef<'_>]) {
        let mut w = BatchWriter::default();
        for r in records {
            w.push(r);
        }
        let (data, count) = w.finish();
        let back: Vec<Record<'_>> = Records::new(&data, count).map(Result::unwrap).collect();
        assert_eq!(back.len(), records.len());
        for (a, b) in records.iter().zip(&back) {
            assert_eq!(a.offset, b.offset);
            assert_eq!(a.timestamp, b.timestamp);
            assert_eq!(a.key, b.key);
            assert_eq!(a.value, b.value);
            let headers: Vec<_> = b.headers().map(Result::unwrap).collect();
            assert_eq!(a.headers, headers.as_slice());
        }
    }

    #[test]
    fn roundtrips_all_shapes() {
        roundtrip(&[]);
        roundtrip(&[
            RecordRef { offset: 0, timestamp: None, key: None, value: b"", headers: &[] },
            RecordRef { offset: 1, timestamp: Some(-5), key: Some(b""), value: b"v", headers: &[] },
            RecordRef {
                offset: u64::MAX,
                timestamp: Some(i64::MAX),
                key: Some(b"k"),
                value: &[0xff; 300],
                headers: &[(b"a", b"1"), (b"", b"")],
            },
        ]);
    }

    #[test]
    fn truncated_buffers_are_errors_not_panics() {
        let mut w = BatchWriter::default();
        w.push(&RecordRef { offset: 3, timestamp: None, key: Some(b"key"), value: b"value", headers: &[(b"h", b"v")] });
        let (data, count) = w.finish();
        for cut in 0..data.len() {
            let result: Result<Vec<_>, _> = Records::new(&data[..cut], count).collect();
            assert!(result.is_err(), "a buffer cut at {cut} decoded");
        }
        // Claiming more records than the buffer holds is an error too.
        let result: Result<Vec<_>, _> = Records::new(&data, count + 1).collect();
        assert_eq!(result.unwrap_err().what, "truncated record header");
    }

    #[test]
    fn header_lookup_finds_first_match() {
        let mut w = BatchWriter::default();
        w.push(&RecordRef {
            offset: 0,
            timestamp: None,
            key: None,
            value: b"",
            headers: &[(b"x", b"1"), (b"x", b"2")],
        });
        let (data, count) = w.finish();
        let r = Records::new(&data, count).next().unwrap().unwrap();
        assert_eq!(r.header("x"), Some(b"1".as_slice()));
        assert_eq!(r.header("y"), None);
    }
}
