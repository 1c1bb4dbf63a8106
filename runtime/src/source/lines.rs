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
//!   An envelope whose fields have the wrong types (`"timestamp":
//!   "yesterday"`, `"key": 5`) is dead-lettered with the reason, as in
//!   `envelope` mode, rather than taken whole as a raw value.
//!
//! A line longer than [`MAX_LINE_BYTES`] stops the source with an error
//! naming the input and the byte where the line starts; reading stops at
//! the limit, so a line that never ends (`/dev/zero`) costs no more memory
//! than the limit.
//!
//! The topic of a file is its canonical path followed by `#` and its stream
//! id; of standard input, `stdin#` and a run id (see [`super::Stream`]).

use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{DeserializeSeed, MapAccess, Visitor};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use sinkbox_format::BatchWriter;

use super::{Malformed, PartitionId, PartitionPosition, Position, Source, SourceBatch, SourceLink, Stream};
use crate::error::{Error, Result, StreamChanged};

/// The longest line a source reads (16 MiB, without its line ending). A
/// longer line stops the source with an error; reading stops at the limit.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// How many bytes from its start a file's stream identity fingerprints.
pub const HEAD_BYTES: u64 = 4096;

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
    stream: Option<Stream>,
    format: LineFormat,
    /// Whether more input may arrive later (stdin): then a batch is cut
    /// whenever the reader has no buffered input left, instead of blocking
    /// a partial batch until it fills.
    streaming: bool,
    next_offset: u64,
    byte: u64,
    size: Option<u64>,
    line: Vec<u8>,
    /// An error found after some lines of a batch were read: the batch is
    /// returned first, so the lines before the error can be committed.
    failed: Option<Error>,
    /// Following a file (`tail -f`): at its end, look again this often.
    follow: Option<Duration>,
    /// The file followed, to notice it shrink.
    path: Option<PathBuf>,
    /// The start of a line whose end has not been written yet (following).
    partial: Vec<u8>,
    /// The way to the loop: a followed file stops waiting once it is gone.
    link: Option<SourceLink>,
}

/// How often a followed file is looked at again at its end.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// The read buffer of a followed file (a bulk read's is 256 KiB).
const FOLLOW_BUFFER: usize = 16 << 10;

impl LineSource {
    /// Reads `path`, resuming at `from` (a committed position) if given.
    ///
    /// A committed position is resumed only on the stream it was committed
    /// for: the same device and inode with the same first bytes (appending
    /// keeps a file's stream). Otherwise this is an
    /// [`Error::StreamChanged`] that says what changed.
    pub fn file(path: &Path, format: LineFormat, from: Option<&Position>) -> Result<LineSource> {
        let name = format!("file {}", path.display());
        let fail = |what: String| Error::Source { source_name: name.clone(), what };
        let changed = |what: String| Error::from(StreamChanged::new(&name, what));
        let mut file = File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
        let meta = file.metadata().map_err(|e| fail(format!("cannot stat: {e}")))?;
        let size = meta.len();
        let head_len = HEAD_BYTES.min(size);
        let head_sha256 = head_hash(&file, head_len).map_err(|e| fail(format!("cannot read: {e}")))?;
        let current = Stream::File { device: meta.dev(), inode: meta.ino(), head_len, head_sha256 };
        let (topic, next_offset, byte) = match from.and_then(|p| p.partitions.first()) {
            None => {
                // The topic names the input in sinks' exactly-once state, so
                // it must not depend on the directory sinkbox was started
                // from, and must change when the file is replaced.
                let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
                (format!("{}#{}", path.display(), stream_id(&current)), 0, 0)
            }
            Some(p) => {
                match &p.stream {
                    Some(stored) => same_file(stored, &current, &file, size).map_err(changed)?,
                    None => tracing::warn!(
                        "{name}: the committed position has no stream identity (written by sinkbox 0.1); \
                         resuming at byte {} without checking that the file is the same",
                        p.byte.unwrap_or(0)
                    ),
                }
                let byte = p.byte.unwrap_or(0);
                if byte > size {
                    return Err(changed(format!(
                        "the committed position is byte {byte} but the file has only {size} bytes (it was truncated)"
                    )));
                }
                if byte > 0 {
                    // A committed position always follows a line ending.
                    let mut previous = [0u8];
                    file.read_exact_at(&mut previous, byte - 1).map_err(|e| fail(format!("cannot read: {e}")))?;
                    if previous[0] != b'\n' {
                        return Err(changed(format!(
                            "the committed position (byte {byte}) is not at the start of a line (the file was modified)"
                        )));
                    }
                }
                file.seek(SeekFrom::Start(byte)).map_err(|e| fail(format!("cannot seek: {e}")))?;
                // Resuming keeps the topic the sinks have seen, even if the
                // file was renamed since.
                (p.topic.clone(), p.next_offset, byte)
            }
        };
        Ok(LineSource {
            reader: BufReader::with_capacity(256 << 10, Box::new(file)),
            name,
            topic,
            stream: Some(current),
            format,
            streaming: false,
            next_offset,
            byte,
            size: Some(size),
            line: Vec::new(),
            failed: None,
            follow: None,
            path: Some(path.to_path_buf()),
            partial: Vec::new(),
            link: None,
        })
    }

    /// Follows the file like `tail -f`: at its end, waits for more lines
    /// (looking every `every`) instead of ending; a line is taken once its
    /// line end is written. The source then ends only when the pipeline
    /// stops. A file that shrinks below what was read stops it with an
    /// error.
    pub fn follow(mut self, every: Duration) -> LineSource {
        // A followed file is mostly read a few lines at a time, and an
        // idle pipeline should hold little: a smaller buffer than a bulk
        // read's (nothing is buffered yet, so none is lost).
        if self.reader.buffer().is_empty() {
            self.reader = BufReader::with_capacity(FOLLOW_BUFFER, self.reader.into_inner());
        }
        self.follow = Some(every);
        self.streaming = true;
        self.size = None;
        self
    }

    /// Reads standard input, a new stream on every run: a committed
    /// position (of an earlier run) is refused with
    /// [`Error::StreamChanged`], since this run's input is other data.
    pub fn stdin(format: LineFormat, from: Option<&Position>) -> Result<LineSource> {
        if let Some(p) = from.and_then(|p| p.partitions.first()) {
            let what = match &p.stream {
                Some(Stream::File { .. }) => format!("the offsets are for {}, not standard input", p.topic),
                Some(Stream::Stdin { run }) => format!(
                    "standard input is a new stream on every run, and the offsets are for the standard input \
                     of run {run} (next line {}); a stdin pipeline that should not resume can set resume = false \
                     in [pipeline]",
                    p.next_offset + 1
                ),
                None => format!(
                    "standard input is a new stream on every run, and the offsets are for an earlier run's \
                     (next line {}); a stdin pipeline that should not resume can set resume = false in [pipeline]",
                    p.next_offset + 1
                ),
            };
            return Err(StreamChanged::new("stdin", what).into());
        }
        let run = run_id();
        let mut source = LineSource::reader(Box::new(std::io::stdin()), &format!("stdin#{run}"), format);
        source.name = "stdin".into();
        source.stream = Some(Stream::Stdin { run });
        source.streaming = true;
        Ok(source)
    }

    /// Reads any reader; `topic` names it.
    pub fn reader(reader: Box<dyn Read + Send>, topic: &str, format: LineFormat) -> LineSource {
        LineSource {
            reader: BufReader::with_capacity(256 << 10, reader),
            name: topic.to_string(),
            topic: topic.to_string(),
            stream: None,
            format,
            streaming: false,
            next_offset: 0,
            byte: 0,
            size: None,
            line: Vec::new(),
            failed: None,
            follow: None,
            path: None,
            partial: Vec::new(),
            link: None,
        }
    }

    fn fail(&self, what: String) -> Error {
        Error::Source { source_name: self.name.clone(), what }
    }

    /// Where the source is now: the next line, its byte, and the stream.
    pub fn position(&self) -> Position {
        Position {
            partitions: vec![PartitionPosition {
                topic: self.topic.clone(),
                partition: 0,
                next_offset: self.next_offset,
                byte: Some(self.byte),
                stream: self.stream.clone(),
            }],
        }
    }

    /// Reads the next line, with its ending, into `self.line`; reads at
    /// most [`MAX_LINE_BYTES`] and the line ending. `Ok(0)` at the end.
    /// Following, a line without its end yet is kept for the next read
    /// and `Ok(0)` returned.
    fn read_line(&mut self) -> Result<usize> {
        self.line.clear();
        self.line.append(&mut self.partial);
        let limit = (MAX_LINE_BYTES as u64 + 2).saturating_sub(self.line.len() as u64);
        (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.line)
            .map_err(|e| self.fail(format!("cannot read at byte {}: {e}", self.byte)))?;
        let n = self.line.len();
        if self.follow.is_some() && n > 0 && !self.line.ends_with(b"\n") && n <= MAX_LINE_BYTES {
            self.partial = std::mem::take(&mut self.line);
            return Ok(0);
        }
        if content(&self.line).len() > MAX_LINE_BYTES {
            return Err(self.fail(format!(
                "line {} (from byte {}) is longer than the limit of {} without a line end; \
                 stopped reading there (lines before it are committed)",
                self.next_offset + 1,
                self.byte,
                crate::error::Bytes(MAX_LINE_BYTES as u64)
            )));
        }
        Ok(n)
    }
}

/// A line without its `\n` or `\r\n` ending.
fn content(line: &[u8]) -> &[u8] {
    match line.strip_suffix(b"\n") {
        Some(stripped) => stripped.strip_suffix(b"\r").unwrap_or(stripped),
        None => line,
    }
}

/// SHA-256 (hex) of the first `len` bytes of `file`, or of as many as it
/// has if it is shorter by now.
fn head_hash(file: &File, len: u64) -> std::io::Result<String> {
    let mut head = vec![0u8; len as usize];
    let mut read = 0;
    while read < head.len() {
        match file.read_at(&mut head[read..], read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    head.truncate(read);
    Ok(hex(&Sha256::digest(&head)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The short id a file stream adds to its topic: a hash of its identity.
fn stream_id(stream: &Stream) -> String {
    let text = match stream {
        Stream::File { device, inode, head_len, head_sha256 } => {
            format!("file:{device}:{inode}:{head_len}:{head_sha256}")
        }
        Stream::Stdin { run } => format!("stdin:{run}"),
    };
    hex(&Sha256::digest(text.as_bytes())[..8])
}

/// An id no other run gets: the time, the process id and per-process
/// random keys, hashed.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let hash = std::hash::RandomState::new().hash_one((nanos, std::process::id()));
    format!("{hash:016x}")
}

/// Whether `current` is the stream `stored` was recorded for; if not, what
/// changed. A file whose first bytes were fingerprinted when it was shorter
/// is compared over those bytes only, so appending keeps it the same.
fn same_file(stored: &Stream, current: &Stream, file: &File, size: u64) -> Result<(), String> {
    let (
        Stream::File { device, inode, head_len, head_sha256 },
        Stream::File { device: now_device, inode: now_inode, .. },
    ) = (stored, current)
    else {
        return Err(format!("the offsets are for {stored}, not this file"));
    };
    if (device, inode) != (now_device, now_inode) {
        return Err(format!(
            "the file was replaced (the offsets are for device {device} inode {inode}; the file now is device \
             {now_device} inode {now_inode})"
        ));
    }
    if *head_len > HEAD_BYTES {
        // Never hash more than sinkbox itself fingerprints, whatever the
        // store says.
        return Err(format!(
            "the offsets record a fingerprint of {head_len} bytes, more than the {HEAD_BYTES} sinkbox takes \
             (the offset store was edited)"
        ));
    }
    if *head_len > size {
        return Err(format!(
            "the file has {size} bytes, fewer than the {head_len} read before (it was truncated or rewritten)"
        ));
    }
    let now = head_hash(file, *head_len).map_err(|e| format!("cannot read its first bytes: {e}"))?;
    if &now != head_sha256 {
        return Err(format!("its first {head_len} bytes changed (the file was rewritten or replaced in place)"));
    }
    Ok(())
}

impl LineSource {
    /// Following, at the end of the file: waits until it grows (true), or
    /// the pipeline is gone (false). Takes the loop's notes meanwhile.
    fn wait_for_more(&mut self, every: Duration) -> Result<bool> {
        loop {
            let Some(path) = &self.path else { return Ok(true) };
            let len = std::fs::metadata(path).map_err(|e| self.fail(format!("cannot stat: {e}")))?.len();
            let read = self.byte + self.partial.len() as u64;
            if len < read {
                return Err(self.fail(format!(
                    "the file shrank to {len} bytes while it was followed at byte {read} (truncated or rotated in \
                     place); stopped reading there"
                )));
            }
            if len > read {
                return Ok(true);
            }
            if let Some(link) = self.link.clone() {
                if link.closed() {
                    return Ok(false);
                }
                link.take_notes(|note| super::handle::apply(self, note));
            }
            std::thread::sleep(every);
        }
    }
}

impl Source for LineSource {
    fn describe(&self) -> String {
        self.name.clone()
    }

    fn attach(&mut self, link: SourceLink) {
        self.link = Some(link);
    }

    fn size_hint(&self) -> Option<u64> {
        self.size
    }

    fn partitions(&self) -> Vec<PartitionId> {
        vec![PartitionId { topic: self.topic.clone(), partition: 0 }]
    }

    fn next_batch(&mut self, max: usize, max_bytes: usize) -> Result<Option<SourceBatch>> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        // Following a file at its end: wait before taking a batch's memory,
        // so an idle pipeline holds none.
        if let Some(every) = self.follow
            && self.reader.buffer().is_empty()
            && !self.wait_for_more(every)?
        {
            return Ok(None);
        }
        let mut records = BatchWriter::with_capacity(max.min(1 << 16) * 128);
        let mut malformed = Vec::new();
        let start_byte = self.byte;
        let mut lines = 0;
        while lines < max && self.byte - start_byte < max_bytes as u64 {
            if self.streaming && lines > 0 && self.reader.buffer().is_empty() {
                break;
            }
            let n = match self.read_line() {
                Ok(n) => n,
                Err(e) if lines == 0 => return Err(e),
                Err(e) => {
                    self.failed = Some(e);
                    break;
                }
            };
            if n == 0 {
                if lines == 0
                    && let Some(every) = self.follow
                {
                    if self.wait_for_more(every)? {
                        continue;
                    }
                    return Ok(None);
                }
                break;
            }
            let offset = self.next_offset;
            self.next_offset += 1;
            self.byte += n as u64;
            lines += 1;
            let text = content(&self.line);
            if text.trim_ascii().is_empty() {
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

/// A record envelope, its fields checked.
struct Envelope<'a> {
    key: Option<Cow<'a, str>>,
    value: &'a RawValue,
    headers: Option<Headers<'a>>,
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

/// A JSON string, borrowed when it has no escapes.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// How a line that may be an envelope reads.
enum Parsed<'a> {
    /// An envelope with well-typed fields.
    Envelope(Envelope<'a>),
    /// Not an envelope: not a JSON object, a field other than the four, or
    /// no `value`. `auto` takes the line raw; `envelope` dead-letters it.
    NotEnvelope(String),
    /// Only envelope fields and a `value`, but a field is wrong: both modes
    /// dead-letter it.
    Invalid(String),
}

/// An envelope's fields as raw JSON, before their types are checked.
#[derive(Default)]
struct RawFields<'a> {
    key: Option<&'a RawValue>,
    value: Option<&'a RawValue>,
    headers: Option<&'a RawValue>,
    timestamp: Option<&'a RawValue>,
}

/// What stopped the field scan early, apart from a JSON error.
#[derive(Default)]
enum Stop {
    #[default]
    None,
    Unknown(String),
    Duplicate(&'static str),
}

/// Scans an object's fields into [`RawFields`], stopping at the first one
/// that is not an envelope field (so a plain JSON object costs no more than
/// reading up to its first field).
struct FieldScan<'s> {
    stop: &'s mut Stop,
}

impl<'de> DeserializeSeed<'de> for FieldScan<'_> {
    type Value = RawFields<'de>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldScan<'_> {
    type Value = RawFields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = RawFields::default();
        while let Some(name) = map.next_key::<Text<'de>>()? {
            let (slot, field) = match name.0.as_ref() {
                "key" => (&mut fields.key, "key"),
                "value" => (&mut fields.value, "value"),
                "headers" => (&mut fields.headers, "headers"),
                "timestamp" => (&mut fields.timestamp, "timestamp"),
                _ => {
                    *self.stop = Stop::Unknown(name.0.into_owned());
                    return Err(serde::de::Error::custom("unknown field"));
                }
            };
            if slot.is_some() {
                *self.stop = Stop::Duplicate(field);
                return Err(serde::de::Error::custom("duplicate field"));
            }
            *slot = Some(map.next_value()?);
        }
        Ok(fields)
    }
}

/// The start of a piece of JSON, for messages.
fn snippet(raw: &RawValue) -> String {
    let text = raw.get();
    let mut end = text.len().min(40);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    if end < text.len() { format!("{}...", &text[..end]) } else { text.to_string() }
}

fn parse_envelope(line: &[u8]) -> Parsed<'_> {
    if line.trim_ascii_start().first() != Some(&b'{') {
        return Parsed::NotEnvelope("not a JSON object".into());
    }
    let mut stop = Stop::None;
    let mut de = serde_json::Deserializer::from_slice(line);
    let scanned = FieldScan { stop: &mut stop }.deserialize(&mut de).and_then(|f| de.end().map(|()| f));
    let fields = match (scanned, stop) {
        (Ok(fields), _) => fields,
        (Err(_), Stop::Unknown(name)) => return Parsed::NotEnvelope(format!("unknown field `{name}`")),
        (Err(_), Stop::Duplicate(name)) => return Parsed::Invalid(format!("duplicate field `{name}`")),
        (Err(e), Stop::None) => return Parsed::NotEnvelope(e.to_string()),
    };
    let Some(value) = fields.value else {
        return Parsed::NotEnvelope("missing field `value`".into());
    };
    let key = match fields.key {
        None => None,
        Some(raw) if raw.get() == "null" => None,
        Some(raw) => match serde_json::from_str::<Text<'_>>(raw.get()) {
            Ok(text) => Some(text.0),
            Err(_) => return Parsed::Invalid(format!("`key` must be a string or null, not {}", snippet(raw))),
        },
    };
    let timestamp = match fields.timestamp {
        None => None,
        Some(raw) => match serde_json::from_str::<Option<i64>>(raw.get()) {
            Ok(t) => t,
            Err(_) => {
                return Parsed::Invalid(format!(
                    "`timestamp` must be an integer (milliseconds since the Unix epoch) or null, not {}",
                    snippet(raw)
                ));
            }
        },
    };
    let headers = match fields.headers {
        None => None,
        Some(raw) => match serde_json::from_str::<Option<Headers<'_>>>(raw.get()) {
            Ok(h) => h,
            Err(_) => {
                return Parsed::Invalid(format!(
                    "`headers` must be an object of strings or a list of [name, value] string pairs, not {}",
                    snippet(raw)
                ));
            }
        },
    };
    Parsed::Envelope(Envelope { key, value, headers, timestamp })
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
        LineFormat::Auto => match parse_envelope(line) {
            Parsed::Envelope(envelope) => encode_envelope(&envelope, offset, out),
            Parsed::NotEnvelope(_) => {
                out.begin(offset, None, None, line, 0);
                Ok(())
            }
            Parsed::Invalid(reason) => Err(format!("not a record envelope: {reason}")),
        },
        LineFormat::Envelope => match parse_envelope(line) {
            Parsed::Envelope(envelope) => encode_envelope(&envelope, offset, out),
            Parsed::NotEnvelope(reason) | Parsed::Invalid(reason) => Err(format!("not a record envelope: {reason}")),
        },
    }
}

fn encode_envelope(envelope: &Envelope<'_>, offset: u64, out: &mut BatchWriter) -> Result<(), String> {
    let raw = envelope.value.get();
    let text: Cow<'_, str> = if raw.starts_with('"') {
        serde_json::from_str::<Text<'_>>(raw).map_err(|e| format!("bad value string: {e}"))?.0
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
    use std::io::Write;

    fn read(input: &str, format: LineFormat) -> (Vec<String>, Vec<String>) {
        let mut source = LineSource::reader(Box::new(std::io::Cursor::new(input.as_bytes().to_vec())), "t", format);
        let batch = source.next_batch(100, usize::MAX).unwrap().unwrap();
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
        let (records, malformed) = read(
            "{\"value\":1}\n{\"id\":1}\n{\"value\":1,\"timestamp\":\"x\"}\nnot json\n{\"key\":\"k\"}\n[1]\n",
            LineFormat::Envelope,
        );
        assert_eq!(records, ["0|None|None|1|"]);
        assert_eq!(
            malformed,
            [
                "line 2: not a record envelope: unknown field `id`",
                "line 3: not a record envelope: `timestamp` must be an integer (milliseconds since the Unix epoch) or null, not \"x\"",
                "line 4: not a record envelope: not a JSON object",
                "line 5: not a record envelope: missing field `value`",
                "line 6: not a record envelope: not a JSON object",
            ]
        );
    }

    /// `auto`: a line with only envelope fields and a `value` is an
    /// envelope, so wrong types are dead-lettered, not taken raw; a line
    /// with any other field (or no `value`) is raw whatever it holds.
    #[test]
    fn auto_format_dead_letters_envelopes_with_wrong_types() {
        let long = format!("\"{}\"", "x".repeat(100));
        let input = [
            "{\"value\":1,\"timestamp\":\"yesterday\"}".to_string(),
            "{\"value\":1,\"key\":5}".into(),
            "{\"value\":1,\"headers\":{\"h\":1}}".into(),
            "{\"value\":1,\"headers\":[[\"h\"]]}".into(),
            "{\"value\":1,\"key\":\"a\",\"key\":\"b\"}".into(),
            format!("{{\"value\":1,\"key\":{{\"k\":{long}}}}}"),
            "{\"value\":1,\"key\":null,\"timestamp\":null,\"headers\":null}".into(),
            "{\"timestamp\":\"yesterday\",\"id\":1}".into(),
            "{\"timestamp\":\"yesterday\"}".into(),
            "{\"value\":1,\"timestamp\":\"x\",\"other\":2}".into(),
            "{\"value\":1,\"timestamp\":".into(),
            "{ \"value\" : \"spaced\" }".into(),
        ]
        .map(|l| l + "\n")
        .concat();
        let (records, malformed) = read(&input, LineFormat::Auto);
        assert_eq!(
            malformed,
            [
                "line 1: not a record envelope: `timestamp` must be an integer (milliseconds since the Unix epoch) or null, not \"yesterday\"",
                "line 2: not a record envelope: `key` must be a string or null, not 5",
                "line 3: not a record envelope: `headers` must be an object of strings or a list of [name, value] string pairs, not {\"h\":1}",
                "line 4: not a record envelope: `headers` must be an object of strings or a list of [name, value] string pairs, not [[\"h\"]]",
                "line 5: not a record envelope: duplicate field `key`",
                "line 6: not a record envelope: `key` must be a string or null, not {\"k\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...",
            ]
        );
        assert_eq!(
            records,
            [
                "6|None|None|1|",
                "7|None|None|{\"timestamp\":\"yesterday\",\"id\":1}|",
                "8|None|None|{\"timestamp\":\"yesterday\"}|",
                "9|None|None|{\"value\":1,\"timestamp\":\"x\",\"other\":2}|",
                "10|None|None|{\"value\":1,\"timestamp\":|",
                "11|None|None|spaced|",
            ]
        );
    }

    /// Counts the bytes a reader hands out.
    struct Counting<R>(R, std::sync::Arc<std::sync::atomic::AtomicU64>);

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(n)
        }
    }

    #[test]
    fn a_line_over_the_limit_stops_the_source_after_reading_at_most_the_limit() {
        let read = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        // Two good lines, then 64 MiB without a line end.
        let input = std::io::Cursor::new(b"a\nb\n".to_vec()).chain(std::io::repeat(0).take(64 << 20));
        let mut source = LineSource::reader(Box::new(Counting(input, read.clone())), "endless", LineFormat::Raw);
        let batch = source.next_batch(100, usize::MAX).unwrap().unwrap();
        assert_eq!(batch.records.len(), 2, "the lines before it come first");
        assert_eq!(batch.end.partitions[0].byte, Some(4));
        let err = source.next_batch(100, usize::MAX).unwrap_err().to_string();
        assert_eq!(
            err,
            "source endless: line 3 (from byte 4) is longer than the limit of 16 MiB without a line end; \
             stopped reading there (lines before it are committed)"
        );
        let consumed = read.load(std::sync::atomic::Ordering::Relaxed);
        assert!(consumed <= (MAX_LINE_BYTES + (1 << 20)) as u64, "read {consumed} bytes");
        // Right at the limit is fine, with either line ending.
        for ending in ["\n", "\r\n", ""] {
            let line = format!("{}{ending}", "y".repeat(MAX_LINE_BYTES));
            let mut source =
                LineSource::reader(Box::new(std::io::Cursor::new(line.into_bytes())), "t", LineFormat::Raw);
            assert_eq!(source.next_batch(10, usize::MAX).unwrap().unwrap().records.len(), 1, "{ending:?}");
        }
        let line = "y".repeat(MAX_LINE_BYTES + 1);
        let mut source = LineSource::reader(Box::new(std::io::Cursor::new(line.into_bytes())), "t", LineFormat::Raw);
        assert!(source.next_batch(10, usize::MAX).is_err());
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sinkbox-lines-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_followed_file_waits_for_lines_takes_a_line_once_it_ends_and_stops_if_it_shrinks() {
        let dir = scratch("follow");
        let path = dir.join("log.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2").unwrap();
        let mut source = LineSource::file(&path, LineFormat::Auto, None).unwrap().follow(Duration::from_millis(5));
        let offsets = |batch: &SourceBatch| batch.end.partitions[0].next_offset;
        let first = source.next_batch(1000, usize::MAX).unwrap().expect("a batch");
        assert_eq!((first.records.len(), offsets(&first), first.bytes), (1, 1, 8), "the unended line waits");
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
                std::io::Write::write_all(&mut file, b"}\n{\"a\":3}\n").unwrap();
            })
        };
        let second = source.next_batch(1000, usize::MAX).unwrap().expect("the source waits for more");
        writer.join().unwrap();
        assert_eq!((second.records.len(), offsets(&second)), (2, 3));
        assert_eq!(second.end.partitions[0].byte, Some(24));
        std::fs::write(&path, "{}\n").unwrap();
        let Err(e) = source.next_batch(1000, usize::MAX) else { panic!("a shrunk file stops it") };
        let e = e.to_string();
        assert!(e.contains("the file shrank to 3 bytes while it was followed at byte 24"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn drain(source: &mut LineSource) -> Position {
        let mut end = source.position();
        while let Some(batch) = source.next_batch(1000, usize::MAX).unwrap() {
            end = batch.end;
        }
        end
    }

    #[test]
    fn a_file_resumes_after_appends_and_refuses_a_replaced_file() {
        let dir = scratch("identity");
        let path = dir.join("in.jsonl");
        std::fs::write(&path, "1\n2\n").unwrap();
        let mut first = LineSource::file(&path, LineFormat::Raw, None).unwrap();
        let committed = drain(&mut first);
        let p = &committed.partitions[0];
        assert!(p.topic.starts_with(&format!("{}#", path.canonicalize().unwrap().display())), "{}", p.topic);
        let Some(Stream::File { head_len: 4, .. }) = &p.stream else { panic!("{:?}", p.stream) };
        // Appending keeps the stream: resumes at the committed line, same topic.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"3\n").unwrap();
        let mut resumed = LineSource::file(&path, LineFormat::Raw, Some(&committed)).unwrap();
        let batch = resumed.next_batch(10, usize::MAX).unwrap().unwrap();
        assert_eq!((batch.records.len(), batch.topic.as_str()), (1, p.topic.as_str()));
        let Some(Stream::File { head_len: 6, .. }) = &batch.end.partitions[0].stream else { panic!() };
        // Rewritten in place (same inode), longer: refused, saying what changed.
        std::fs::write(&path, "9\n8\n7\n6\n").unwrap();
        let err = LineSource::file(&path, LineFormat::Raw, Some(&committed)).err().unwrap().to_string();
        let file = path.display();
        assert_eq!(
            err,
            format!(
                "cannot resume file {file}: its first 4 bytes changed (the file was rewritten or replaced in \
                 place); to start over from the input as it is now, run again with --reset (or run `sinkbox reset` \
                 on the pipeline file), which deletes the committed offsets and keeps the dead letters"
            )
        );
        // Truncated.
        std::fs::write(&path, "1").unwrap();
        let err = LineSource::file(&path, LineFormat::Raw, Some(&committed)).err().unwrap().to_string();
        assert!(
            err.contains("the file has 1 bytes, fewer than the 4 read before (it was truncated or rewritten)"),
            "{err}"
        );
        // Replaced by another file (another inode: the old one is kept alive).
        let _old = std::fs::File::open(&path).unwrap();
        std::fs::rename(&path, dir.join("old")).unwrap();
        std::fs::write(&path, "1\n2\n").unwrap();
        let err = LineSource::file(&path, LineFormat::Raw, Some(&committed)).err().unwrap().to_string();
        assert!(err.contains(": the file was replaced (the offsets are for device "), "{err}");
        // A new stream (nothing committed) gets another topic than the old one.
        let fresh = LineSource::file(&path, LineFormat::Raw, None).unwrap();
        assert_ne!(fresh.position().partitions[0].topic, p.topic);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn stdin_never_resumes_an_earlier_runs_offsets() {
        let a = LineSource::stdin(LineFormat::Raw, None).unwrap().position();
        let b = LineSource::stdin(LineFormat::Raw, None).unwrap().position();
        assert_ne!(a.partitions[0].topic, b.partitions[0].topic, "a new stream every run");
        let err = LineSource::stdin(LineFormat::Raw, Some(&a)).err().unwrap().to_string();
        assert!(err.starts_with("cannot resume stdin: standard input is a new stream on every run"), "{err}");
        assert!(err.contains("resume = false"), "{err}");
    }

    #[test]
    fn raw_format_keeps_lines_verbatim() {
        let (records, _) = read("{\"value\":1}\n a b \n", LineFormat::Raw);
        assert_eq!(records, ["0|None|None|{\"value\":1}|", "1|None|None| a b |"]);
    }
}
