//! The entries of a dead-letter file, read back as the records they were:
//! what `sinkbox replay` feeds a sink.
//!
//! Each entry becomes a record with its original topic, partition, offset,
//! timestamp, key, value and headers (`{"base64": ...}` decoded), so the
//! sink sees what it saw when it refused it. Only what the file held when it
//! was opened is read (a live pipeline may still append to it). The whole
//! file is checked before the first record goes out: a line that is not an
//! entry, or an entry cut at the dead-letter queue's size cap (replaying it
//! would deliver a different record), is refused naming the file and line.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, Take};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sinkbox_format::BatchWriter;

use super::{PartitionPosition, Position, Source, SourceBatch};
use crate::error::{Error, Result};

/// The longest line read: a dead letter keeps at most 1 MiB of record,
/// which base64 and JSON escapes can grow several times over.
const MAX_LINE: u64 = 8 << 20;

/// A record read back from an entry.
struct Entry {
    topic: String,
    partition: u32,
    offset: u64,
    timestamp: Option<i64>,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The entry's line, in bytes.
    bytes: u64,
}

/// A dead-letter file as a source.
pub struct DeadLetterSource {
    path: PathBuf,
    reader: BufReader<Take<File>>,
    size: u64,
    sink: Option<String>,
    /// Lines read so far.
    line: u64,
    /// An entry read for the next batch (it is of another partition).
    next: Option<Entry>,
}

/// Whether `a` and `b` name the same existing file.
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl DeadLetterSource {
    /// Opens `path`, checks every entry, and reads those of `sink` (every
    /// sink's but the source's, if `None`).
    pub fn open(path: &Path, sink: Option<&str>) -> Result<DeadLetterSource> {
        let mut file = File::open(path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        let size = file.metadata().map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?.len();
        let mut source = DeadLetterSource {
            path: path.to_path_buf(),
            reader: BufReader::new(file.try_clone().map_err(|e| Error::io("cannot reopen", e))?.take(size)),
            size,
            sink: sink.map(str::to_string),
            line: 0,
            next: None,
        };
        let (mut taken, mut skipped) = (0u64, 0u64);
        while let Some(entry) = source.read_entry_or_skip(&mut skipped)? {
            drop(entry);
            taken += 1;
        }
        tracing::info!(
            "{}: {taken} entries to replay{}",
            path.display(),
            if skipped > 0 {
                format!(", {skipped} of other sinks left out (--from-sink picks one; `source` is unparsed input)")
            } else {
                String::new()
            }
        );
        file.rewind().map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        source.reader = BufReader::new(file.take(size));
        source.line = 0;
        Ok(source)
    }

    fn error(&self, what: impl std::fmt::Display) -> Error {
        Error::Source { source_name: self.describe(), what: format!("line {}: {what}", self.line) }
    }

    /// The next entry to replay, skipping (and counting) other sinks'.
    fn read_entry_or_skip(&mut self, skipped: &mut u64) -> Result<Option<Entry>> {
        loop {
            let mut line = Vec::new();
            let read = (&mut self.reader)
                .take(MAX_LINE + 1)
                .read_until(b'\n', &mut line)
                .map_err(|e| Error::io(format!("cannot read {}", self.path.display()), e))?;
            if read == 0 {
                return Ok(None);
            }
            self.line += 1;
            if line.len() as u64 > MAX_LINE {
                return Err(self.error(format_args!("longer than {MAX_LINE} bytes; not a dead-letter entry")));
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value: Value = serde_json::from_slice(&line).map_err(|e| self.error(format_args!("not JSON: {e}")))?;
            let from = value.get("sink").and_then(Value::as_str).ok_or_else(|| self.error("no \"sink\""))?;
            let wanted = match &self.sink {
                Some(sink) => from == sink,
                None => from != "source",
            };
            if !wanted {
                *skipped += 1;
                continue;
            }
            return entry(&value, line.len() as u64).map(Some).map_err(|what| self.error(what));
        }
    }
}

/// Reads an entry's record.
fn entry(value: &Value, bytes: u64) -> std::result::Result<Entry, String> {
    if let Some(cut) = value.get("truncated") {
        return Err(format!(
            "the dead letter was cut at the dead-letter queue's size cap ({cut}); replaying it would deliver a \
             different record, so fetch the whole record from its source"
        ));
    }
    let field = |name: &str| value.get(name).ok_or_else(|| format!("no \"{name}\""));
    let topic = field("topic")?.as_str().ok_or("\"topic\" is not a string")?.to_string();
    let partition = field("partition")?.as_u64().and_then(|p| u32::try_from(p).ok()).ok_or("bad \"partition\"")?;
    let offset = field("offset")?.as_u64().ok_or("\"offset\" is not a whole number")?;
    let timestamp = match value.get("timestamp") {
        None | Some(Value::Null) => None,
        Some(t) => Some(t.as_i64().ok_or("\"timestamp\" is not a whole number")?),
    };
    let key = match value.get("key") {
        None | Some(Value::Null) => None,
        Some(k) => Some(bytes_of(k).map_err(|e| format!("\"key\": {e}"))?),
    };
    let record_value = bytes_of(field("value")?).map_err(|e| format!("\"value\": {e}"))?;
    let mut headers = Vec::new();
    if let Some(list) = value.get("headers") {
        for pair in list.as_array().ok_or("\"headers\" is not an array")? {
            let [name, value] = pair.as_array().map(Vec::as_slice).unwrap_or_default() else {
                return Err("a header is not a [name, value] pair".into());
            };
            let name = name.as_str().ok_or("a header name is not a string")?;
            headers.push((name.as_bytes().to_vec(), bytes_of(value).map_err(|e| format!("header {name:?}: {e}"))?));
        }
    }
    Ok(Entry { topic, partition, offset, timestamp, key, value: record_value, headers, bytes })
}

/// The bytes a dead letter's text or `{"base64": ...}` holds.
fn bytes_of(value: &Value) -> std::result::Result<Vec<u8>, String> {
    match value {
        Value::String(text) => Ok(text.as_bytes().to_vec()),
        Value::Object(map) => match map.get("base64").and_then(Value::as_str) {
            Some(text) if map.len() == 1 => unbase64(text),
            _ => Err("expected a string or {\"base64\": \"...\"}".into()),
        },
        _ => Err("expected a string or {\"base64\": \"...\"}".into()),
    }
}

/// Decodes standard base64 (with padding).
fn unbase64(text: &str) -> std::result::Result<Vec<u8>, String> {
    let digit = |c: u8| -> std::result::Result<u32, String> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Err(format!("{:?} is not base64", char::from(c))),
        }
        .into())
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return Err("base64 of a length that is not a multiple of 4".into());
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return Err("bad base64 padding".into());
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | digit(c)?;
        }
        n <<= 6 * pad as u32;
        let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&three[..3 - pad]);
    }
    Ok(out)
}

impl Source for DeadLetterSource {
    fn describe(&self) -> String {
        format!("dead letters {}", self.path.display())
    }

    fn size_hint(&self) -> Option<u64> {
        Some(self.size)
    }

    fn next_batch(&mut self, max: usize, max_bytes: usize) -> Result<Option<SourceBatch>> {
        let mut skipped = 0;
        let Some(first) = self.next.take().map_or_else(|| self.read_entry_or_skip(&mut skipped), |e| Ok(Some(e)))?
        else {
            return Ok(None);
        };
        let (topic, partition) = (first.topic.clone(), first.partition);
        let mut writer = BatchWriter::default();
        let mut bytes = 0;
        let mut next_offset = 0;
        let mut entry = Some(first);
        while let Some(e) = entry.take() {
            if e.topic != topic || e.partition != partition {
                self.next = Some(e);
                break;
            }
            writer.begin(e.offset, e.timestamp, e.key.as_deref(), &e.value, e.headers.len());
            for (name, value) in &e.headers {
                writer.header(name, value);
            }
            bytes += e.bytes;
            next_offset = e.offset + 1;
            if writer.len() as usize >= max || writer.bytes() >= max_bytes {
                break;
            }
            entry = self.read_entry_or_skip(&mut skipped)?;
        }
        let end = Position {
            partitions: vec![PartitionPosition {
                topic: topic.clone(),
                partition,
                next_offset,
                byte: None,
                stream: None,
            }],
        };
        Ok(Some(SourceBatch { topic, partition, records: writer, malformed: Vec::new(), end, bytes }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_what_the_dead_letter_queue_writes() {
        assert_eq!(unbase64("AAEC/w==").unwrap(), [0, 1, 2, 255]);
        assert_eq!(unbase64("aGk=").unwrap(), b"hi");
        assert_eq!(unbase64("aGVsbG8h").unwrap(), b"hello!");
        assert!(unbase64("a").is_err());
        assert!(unbase64("a*==").is_err());
    }

    #[test]
    fn entries_are_refused_naming_the_line_when_cut_or_malformed() {
        let dir = std::env::temp_dir().join(format!("sinkbox-dl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dl.jsonl");
        let good = r#"{"sink":"s","reason":"r","topic":"t","partition":0,"offset":3,"timestamp":null,"key":null,"value":"v","headers":[]}"#;
        std::fs::write(&path, format!("{good}\n{{\"sink\":\"s\",\"topic\":\"t\"}}\n")).unwrap();
        let err = DeadLetterSource::open(&path, None).err().expect("refused").to_string();
        assert!(err.contains("line 2: no \"partition\""), "{err}");
        let cut = good.replace("\"headers\":[]", "\"headers\":[],\"truncated\":{\"kept_bytes\":1}");
        std::fs::write(&path, format!("{good}\n{cut}\n")).unwrap();
        let err = DeadLetterSource::open(&path, None).err().expect("refused").to_string();
        assert!(err.contains("line 2: the dead letter was cut"), "{err}");
        // Another sink's cut entry is not replayed, so not refused.
        let mut source = DeadLetterSource::open(&path, Some("other")).expect("opens");
        assert!(source.next_batch(10, 1 << 20).unwrap().is_none());
        std::fs::write(&path, format!("{good}\n{good}\n")).unwrap();
        let mut source = DeadLetterSource::open(&path, Some("s")).expect("opens");
        let batch = source.next_batch(10, 1 << 20).unwrap().expect("a batch");
        assert_eq!((batch.records.len(), batch.end.partitions[0].next_offset), (2, 4));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
