//! JSON-lines sources: a file or standard input.
//!
//! One line is one record; its offset is its line number, counted from 0.
//! Blank lines are skipped (they still use up an offset). A line is read in
//! one of three ways ([`LineFormat`]):
//!
//! - `raw`: the whole line (without its line ending) is the value.
//! - `envelope`: the line is a JSON object with a `value` and optionally
//!   `key` (string or null), `headers` (an object of strings, or a list of
//!   `[name, value]` pairs), and `timestamp` (integer milliseconds since the
//!   Unix epoch). A string `value` is taken as its text; any other JSON
//!   `value` as its JSON text. A line that does not fit is dead-lettered
//!   with the reason.
//! - `auto` (the default): an envelope if the line is a JSON object with a
//!   `value` field and no fields other than the four above, raw otherwise.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use serde::Deserialize;
use serde_json::value::RawValue;
use sinkbox_format::BatchWriter;

use super::{Malformed, PartitionPosition, Position, Source, SourceBatch, PartitionId};
use crate::error::{Error, Result};

/// Lines longer than this are dead-lettered rather than sent to sinks.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// How a line becomes a record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineFormat {
    /// Envelope when the line looks like one, raw otherwise.
    #[default]
    Auto,
    /// Every line is an envelope; others are malformed.
    Envelope,
    /// Every line is a raw value.
    Raw,
}

/// Reads records from lines of a file or of standard input.
pub struct LineSource {
    reader: BufReader<Box<dyn Read + Send>>,
    name: String,
    topic: String,
    format: LineFormat,
    /// Whether more input may arrive later (stdin): then a batch is cut
    /// whenever the reader has no buffered input left, instead of blocking
    /// a partial batch until it fills.
    streaming: bool,
    next_offset: u64,
    byte: u64,
    size: Option<u64>,
    line: Vec<u8>,
}

impl LineSource {
    /// Reads `path`, resuming at `from` (a committed position) if given.
    pub fn file(path: &Path, format: LineFormat, from: Option<&Position>) -> Result<LineSource> {
        let name = format!("file {}", path.display());
        let fail = |what: String| Error::Source { source_name: name.clone(), what };
        let mut file = File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
        let size = file.metadata().map_err(|e| fail(format!("cannot stat: {e}")))?.len();
        // The topic names the input in sinks' exactly-once state, so it must
        // not depend on the directory sinkbox was started from.
        let topic = path.canonicalize().unwrap_or_else(|_| path.to_path_buf()).display().to_string();
        let (next_offset, byte) = match from.and_then(|p| p.partitions.first()) {
            None => (0, 0),
            Some(p) => {
                let byte = p.byte.unwrap_or(0);
                if byte > size {
                    return Err(fail(format!(
                        "the committed position is byte {byte} but the file has only {size} bytes; was it replaced?"
                    )));
                }
                if byte > 0 {
                    // A committed position always follows a line ending.
                    let mut previous = [0u8];
                    file.seek(SeekFrom::Start(byte - 1))
                        .and_then(|_| file.read_exact(&mut previous))
                        .map_err(|e| fail(format!("cannot seek: {e}")))?;
                    if previous[0] != b'\n' {
                        return Err(fail(format!(
                            "the committed position (byte {byte}) is not at the start of a line; was the file modified?"
                        )));
                    }
                }
                file.seek(SeekFrom::Start(byte)).map_err(|e| fail(format!("cannot seek: {e}")))?;
                (p.next_offset, byte)
            }
        };
        Ok(LineSource {
            reader: BufReader::with_capacity(256 << 10, Box::new(file)),
            name,
            topic,
            format,
            streaming: false,
            next_offset,
            byte,
            size: Some(size),
            line: Vec::new(),
        })
    }

    /// Reads standard input. Resuming skips the lines before the committed
    /// offset, for a producer that replays its output from the start.
    pub fn stdin(format: LineFormat, from: Option<&Position>) -> Result<LineSource> {
        let mut source = LineSource::reader(Box::new(std::io::stdin()), "stdin", format);
        source.streaming = true;
        if let Some(skip) = from.and_then(|p| p.partitions.first()).map(|p| p.next_offset) {
            while source.next_offset < skip {
                let mut line = Vec::new();
                let n =
                    source.reader.read_until(b'\n', &mut line).map_err(|e| source.fail(format!("cannot read: {e}")))?;
                if n == 0 {
                    break;
                }
                source.next_offset += 1;
                source.byte += n as u64;
            }
        }
        Ok(source)
    }

    /// Reads any reader; `topic` names it.
    pub fn reader(reader: Box<dyn Read + Send>, topic: &str, format: LineFormat) -> LineSource {
        LineSource {
            reader: BufReader::with_capacity(256 << 10, reader),
            name: topic.to_string(),
            topic: topic.to_string(),
            format,
            streaming: false,
            next_offset: 0,
            byte: 0,
            size: None,
            line: Vec::new(),
        }
    }

    fn fail(&self, what: String) -> Error {
        Error::Source { source_name: self.name.clone(), what }
    }

    fn position(&self) -> Position {
        Position {
            partitions: vec![PartitionPosition {
                topic: self.topic.clone(),
                partition: 0,
                next_offset: self.next_offset,
                byte: Some(self.byte),
            }],
        }
    }
}

impl Source for LineSource {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn size_hint(&self) -> Option<u64> {
        self.size
    }

    fn partitions(&self) -> Vec<PartitionId> {
        vec![PartitionId { topic: self.topic.clone(), partition: 0 }]
    }

    fn next_batch(&mut self, max: usize, max_bytes: usize) -> Result<Option<SourceBatch>> {
        let mut records = BatchWriter::with_capacity(max.min(1 << 16) * 128);
        let mut malformed = Vec::new();
        let start_byte = self.byte;
        let mut lines = 0;
        while lines < max && self.byte - start_byte < max_bytes as u64 {
            if self.streaming && lines > 0 && self.reader.buffer().is_empty() {
                break;
            }
            self.line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.line)
                .map_err(|e| self.fail(format!("cannot read at byte {}: {e}", self.byte)))?;
            if n == 0 {
                break;
            }
            let offset = self.next_offset;
            self.next_offset += 1;
            self.byte += n as u64;
            lines += 1;
            let mut text: &[u8] = &self.line;
            if let Some(stripped) = text.strip_suffix(b"\n") {
                text = stripped.strip_suffix(b"\r").unwrap_or(stripped);
            }
            if text.trim_ascii().is_empty() {
                continue;
            }
            if text.len() > MAX_LINE_BYTES {
                malformed.push(Malformed {
                    offset,
                    raw: text[..1024].to_vec(),
                    reason: format!("line {} is {} bytes, over the limit of {MAX_LINE_BYTES}", offset + 1, text.len()),
                });
                continue;
            }
            if let Err(reason) = encode_line(text, offset, self.format, &mut records) {
                malformed.push(Malformed {
                    offset,
                    raw: text.to_vec(),
                    reason: format!("line {}: {reason}", offset + 1),
                });
            }
        }
        if lines == 0 {
            return Ok(None);
        }
        Ok(Some(SourceBatch {
            topic: self.topic.clone(),
            partition: 0,
            records,
            malformed,
            end: self.position(),
            bytes: self.byte - start_byte,
        }))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    key: Option<Cow<'a, str>>,
    #[serde(borrow)]
    value: &'a RawValue,
    #[serde(borrow, default)]
    headers: Option<Headers<'a>>,
    #[serde(default)]
    timestamp: Option<i64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Headers<'a> {
    #[serde(borrow)]
    Map(std::collections::BTreeMap<Cow<'a, str>, Cow<'a, str>>),
    #[serde(borrow)]
    Pairs(Vec<(Cow<'a, str>, Cow<'a, str>)>),
}

fn encode_line(line: &[u8], offset: u64, format: LineFormat, out: &mut BatchWriter) -> Result<(), String> {
    let looks_like_object = line.trim_ascii_start().first() == Some(&b'{');
    match format {
        LineFormat::Raw => {
            out.begin(offset, None, None, line, 0);
            Ok(())
        }
        LineFormat::Auto if !looks_like_object => {
            out.begin(offset, None, None, line, 0);
            Ok(())
        }
        LineFormat::Auto => match serde_json::from_slice::<Envelope<'_>>(line) {
            Ok(envelope) => encode_envelope(&envelope, offset, out),
            Err(_) => {
                out.begin(offset, None, None, line, 0);
                Ok(())
            }
        },
        LineFormat::Envelope => {
            let envelope: Envelope<'_> =
                serde_json::from_slice(line).map_err(|e| format!("not a record envelope: {e}"))?;
            encode_envelope(&envelope, offset, out)
        }
    }
}

fn encode_envelope(envelope: &Envelope<'_>, offset: u64, out: &mut BatchWriter) -> Result<(), String> {
    let raw = envelope.value.get();
    let text: Cow<'_, str> = if raw.starts_with('"') {
        serde_json::from_str::<Cow<'_, str>>(raw).map_err(|e| format!("bad value string: {e}"))?
    } else {
        Cow::Borrowed(raw)
    };
    let key = envelope.key.as_deref().map(str::as_bytes);
    let pairs: Vec<(&str, &str)> = match &envelope.headers {
        None => Vec::new(),
        Some(Headers::Map(map)) => map.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect(),
        Some(Headers::Pairs(list)) => list.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect(),
    };
    out.begin(offset, envelope.timestamp, key, text.as_bytes(), pairs.len());
    for (name, value) in pairs {
        out.header(name.as_bytes(), value.as_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sinkbox_format::Records;

    fn read(input: &str, format: LineFormat) -> (Vec<String>, Vec<String>) {
        let mut source = LineSource::reader(Box::new(std::io::Cursor::new(input.as_bytes().to_vec())), "t", format);
        let batch = source.next_batch(100).unwrap().unwrap();
        let (data, count) = batch.records.finish();
        let records = Records::new(&data, count)
            .map(|r| {
                let r = r.unwrap();
                let headers: Vec<String> = r
                    .headers()
                    .map(|h| h.unwrap())
                    .map(|(n, v)| format!("{}={}", String::from_utf8_lossy(n), String::from_utf8_lossy(v)))
                    .collect();
                format!(
                    "{}|{:?}|{:?}|{}|{}",
                    r.offset,
                    r.key.map(|k| String::from_utf8_lossy(k).into_owned()),
                    r.timestamp,
                    String::from_utf8_lossy(r.value),
                    headers.join(",")
                )
            })
            .collect();
        (records, batch.malformed.iter().map(|m| m.reason.clone()).collect())
    }

    #[test]
    fn auto_format_cases() {
        let (records, malformed) = read(
            concat!(
                "{\"id\":1}\n",
                "\n",
                "plain text\r\n",
                "{\"key\":\"k\",\"value\":{\"a\":1},\"timestamp\":5,\"headers\":{\"h\":\"v\"}}\n",
                "{\"value\":\"s\\n\",\"headers\":[[\"x\",\"1\"],[\"x\",\"2\"]]}\n",
                "{\"value\":1,\"other\":2}",
            ),
            LineFormat::Auto,
        );
        assert_eq!(
            records,
            [
                "0|None|None|{\"id\":1}|",
                "2|None|None|plain text|",
                "3|Some(\"k\")|Some(5)|{\"a\":1}|h=v",
                "4|None|None|s\n|x=1,x=2",
                "5|None|None|{\"value\":1,\"other\":2}|",
            ]
        );
        assert!(malformed.is_empty());
    }

    #[test]
    fn envelope_format_dead_letters_what_does_not_fit() {
        let (records, malformed) =
            read("{\"value\":1}\n{\"id\":1}\n{\"value\":1,\"timestamp\":\"x\"}\nnot json\n", LineFormat::Envelope);
        assert_eq!(records, ["0|None|None|1|"]);
        assert_eq!(malformed.len(), 3);
        assert!(malformed[0].starts_with("line 2: not a record envelope: unknown field `id`"), "{}", malformed[0]);
        assert!(malformed[1].starts_with("line 3: not a record envelope: invalid type"), "{}", malformed[1]);
        assert!(malformed[2].starts_with("line 4: not a record envelope"), "{}", malformed[2]);
    }

    #[test]
    fn raw_format_keeps_lines_verbatim() {
        let (records, _) = read("{\"value\":1}\n a b \n", LineFormat::Raw);
        assert_eq!(records, ["0|None|None|{\"value\":1}|", "1|None|None| a b |"]);
    }
}
