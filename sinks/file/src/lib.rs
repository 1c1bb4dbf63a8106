//! The `file` sink: JSONL or CSV lines into a file in a granted directory,
//! exactly once across aborts, restarts and crashes.
//!
//! Config (the path is the guest's view of a directory the pipeline grants):
//!
//! ```json
//! {"path": "/out/orders.csv", "format": "csv", "columns": ["id", "total"]}
//! ```
//!
//! How it keeps every record exactly once, with no state of its own: the
//! snapshot it returns from each `flush` is the output's length, which the
//! runtime commits together with the source offsets.
//! - `add` encodes lines into a buffer (spilling to the file past
//!   `spill_bytes`); `abort` truncates the file back to the flushed length
//!   and clears the buffer, so a replay does not duplicate lines.
//! - `flush` checks the output is still what it wrote (not deleted,
//!   truncated or replaced), writes the buffer, syncs the file and returns
//!   the new length.
//! - `open` truncates the file to the committed length (dropping what a
//!   checkpoint wrote before a crash, which the runtime replays) and fails
//!   if the file is shorter than that: something outside changed it.
//! - A probe instance (bisection) never touches the file.

mod encoder;
mod scan;

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};

pub use encoder::Encoder;
use sinkbox_sdk::{Batch, Context, Error, Record, Sink, Status, export_sink};

/// The file sink's config. Its JSON Schema is derived from this struct
/// ([`config_schema`]), doc comments and defaults included.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Output file, as the guest sees it (inside a granted directory).
    /// `{partition}` and `{lane}` are replaced by the instance's; with
    /// `lanes > 1` the path must name `{lane}`.
    #[schemars(length(min = 1))]
    pub path: String,
    /// `jsonl` (default) or `csv`.
    #[serde(default)]
    pub format: Format,
    /// CSV columns: the value's top-level fields, in order. Required for CSV.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Write a CSV header line when the file is new. Default true.
    #[serde(default = "yes")]
    pub header: bool,
    /// Buffered bytes past which `add` writes to the file before `flush`.
    /// Default 1 MiB.
    #[serde(default = "default_spill")]
    pub spill_bytes: usize,
    /// What to do on a first run (no committed snapshot) when the output
    /// already holds data: `fail` (default) or `append`.
    #[serde(default)]
    pub if_exists: IfExists,
}

fn yes() -> bool {
    true
}

fn default_spill() -> usize {
    1 << 20
}

/// Output line format.
#[derive(Debug, Default, Clone, Copy, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON value per line.
    #[default]
    Jsonl,
    /// Comma-separated values with chosen columns.
    Csv,
}

/// A first run's answer to an output that already holds data.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IfExists {
    /// Refuse: the data is not this pipeline's.
    #[default]
    Fail,
    /// Keep it and write after it.
    Append,
}

/// The config's JSON Schema (draft 2020-12): derived from [`Config`], plus
/// the one rule a struct cannot say: CSV needs columns.
pub fn config_schema() -> String {
    let mut schema = schemars::schema_for!(Config);
    schema.insert(
        "allOf".into(),
        serde_json::json!([{
            "if": { "properties": { "format": { "const": "csv" } }, "required": ["format"] },
            "then": { "required": ["columns"], "properties": { "columns": { "minItems": 1 } } }
        }]),
    );
    serde_json::to_string(&schema).unwrap_or_default()
}

/// The snapshot: the output's length after a flush.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Snapshot {
    len: u64,
}

/// The sink.
pub struct FileSink {
    path: String,
    /// `None` for a probe instance, which writes nothing.
    file: Option<File>,
    encoder: Encoder,
    spill_bytes: usize,
    /// Whether a new (empty) file starts with the encoder's header line.
    header: bool,
    buffer: Vec<u8>,
    /// File length as of the last successful flush.
    flushed_len: u64,
    /// Bytes written past `flushed_len` by spills since that flush.
    spilled: u64,
    /// Records taken since the last flush, and written since the last
    /// status report.
    pending: u64,
    written: u64,
}

impl FileSink {
    /// Empties the buffer; a file that is still empty gets its header first.
    fn start_buffer(&mut self) {
        self.buffer.clear();
        if self.flushed_len == 0 && self.header {
            self.encoder.header(&mut self.buffer);
        }
    }

    fn write_all_at_end(&mut self) -> std::io::Result<()> {
        if let Some(file) = &mut self.file {
            file.write_all(&self.buffer)?;
            self.spilled += self.buffer.len() as u64;
        }
        self.buffer.clear();
        Ok(())
    }

    fn io_error(&self, what: &str, e: std::io::Error) -> Error {
        // An I/O failure in a granted directory is usually transient (disk
        // full, quota); the runtime retries on a fresh instance with
        // backoff, then stops.
        Error::retryable(format!("{what} {}: {}", self.path, describe(&e)))
    }

    /// Fails if the output is not what this sink wrote: deleted, truncated
    /// or written by someone else since the last flush.
    fn check_unchanged(&self) -> Result<(), Error> {
        let expected = self.flushed_len + self.spilled;
        match std::fs::metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::fatal(format!(
                "output {} was deleted while the pipeline ran; {expected} bytes were written to it",
                self.path
            ))),
            Err(e) => Err(self.io_error("cannot stat", e)),
            Ok(meta) if meta.len() != expected => Err(Error::fatal(format!(
                "output {} changed under the sink: it should be {expected} bytes but is {}; it was truncated, \
                 replaced or written by something else",
                self.path,
                meta.len()
            ))),
            Ok(_) => Ok(()),
        }
    }
}

impl Sink for FileSink {
    type Config = Config;

    fn config_schema() -> Option<String> {
        Some(config_schema())
    }

    fn open(config: Config, context: &Context) -> Result<Self, Error> {
        let encoder = match config.format {
            Format::Jsonl => Encoder::Jsonl,
            Format::Csv if config.columns.is_empty() => {
                return Err(Error::fatal("format \"csv\" needs a non-empty \"columns\" list"));
            }
            Format::Csv => Encoder::csv(config.columns),
        };
        if context.lanes > 1 && !config.path.contains("{lane}") {
            return Err(Error::fatal(format!(
                "the sink runs {} lanes, which must not share one output: put {{lane}} in the path \"{}\"",
                context.lanes, config.path
            )));
        }
        let path = context.expand(&config.path);
        let mut sink = FileSink {
            path,
            file: None,
            encoder,
            spill_bytes: config.spill_bytes,
            header: config.header,
            buffer: Vec::with_capacity(config.spill_bytes.min(1 << 20) + 4096),
            flushed_len: 0,
            spilled: 0,
            pending: 0,
            written: 0,
        };
        if context.probe {
            sink.start_buffer();
            return Ok(sink);
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&sink.path)
            .map_err(|e| Error::fatal(format!("cannot open {}: {e}", sink.path)))?;
        let actual = file.metadata().map_err(|e| Error::fatal(format!("cannot stat {}: {e}", sink.path)))?.len();
        let committed = match &context.snapshot {
            Some(bytes) => {
                let snapshot: Snapshot = serde_json::from_slice(bytes)
                    .map_err(|e| Error::fatal(format!("the committed snapshot is not this sink's: {e}")))?;
                if actual < snapshot.len {
                    return Err(Error::fatal(format!(
                        "output {} is {actual} bytes but {} bytes were committed to it: it was truncated, \
                         replaced or deleted outside sinkbox; restore it, or reset the pipeline to start over",
                        sink.path, snapshot.len
                    )));
                }
                snapshot.len
            }
            None if actual > 0 && config.if_exists == IfExists::Fail => {
                return Err(Error::fatal(format!(
                    "output {} already holds {actual} bytes this pipeline did not write; remove it, choose another \
                     path, or set \"if_exists\": \"append\"",
                    sink.path
                )));
            }
            None => actual,
        };
        // Drop what a checkpoint that was never committed wrote.
        file.set_len(committed).map_err(|e| Error::fatal(format!("cannot truncate {}: {e}", sink.path)))?;
        file.seek(SeekFrom::End(0)).map_err(|e| Error::fatal(format!("cannot seek {}: {e}", sink.path)))?;
        sink.file = Some(file);
        sink.flushed_len = committed;
        sink.start_buffer();
        Ok(sink)
    }

    fn add(&mut self, record: Record<'_>) -> Result<(), Error> {
        self.encoder.encode(record.value(), &mut self.buffer).map_err(Error::Reject)
    }

    fn add_batch(&mut self, batch: Batch) -> Result<(), Error> {
        let mut rejected = Vec::new();
        for record in batch.records() {
            let record = record.map_err(Error::fatal)?;
            match self.encoder.encode(record.value(), &mut self.buffer) {
                Ok(()) => self.pending += 1,
                Err(reason) => rejected.push(sinkbox_sdk::Rejection { offset: record.offset(), reason }),
            }
        }
        if self.buffer.len() >= self.spill_bytes {
            self.write_all_at_end().map_err(|e| self.io_error("cannot write", e))?;
        }
        if rejected.is_empty() { Ok(()) } else { Err(Error::Rejected(rejected)) }
    }

    fn flush(&mut self) -> Result<(), Error> {
        if self.file.is_none() {
            return Err(Error::fatal("a probe instance cannot flush"));
        }
        self.check_unchanged()?;
        self.write_all_at_end().map_err(|e| self.io_error("cannot write", e))?;
        if let Some(file) = &self.file {
            file.sync_data().map_err(|e| self.io_error("cannot sync", e))?;
        }
        self.flushed_len += self.spilled;
        self.spilled = 0;
        self.written += std::mem::take(&mut self.pending);
        Ok(())
    }

    fn snapshot(&mut self) -> Option<Vec<u8>> {
        serde_json::to_vec(&Snapshot { len: self.flushed_len }).ok()
    }

    fn status(&mut self) -> Option<Status> {
        Some(Status { written: std::mem::take(&mut self.written), ..Status::default() })
    }

    fn abort(&mut self) {
        self.start_buffer();
        self.pending = 0;
        if self.spilled > 0 {
            // If truncation fails the next flush would keep aborted lines;
            // poison the instance so the runtime replaces it instead: a
            // fresh instance truncates to the committed length on open.
            let flushed = self.flushed_len;
            let truncated =
                self.file.as_mut().is_some_and(|f| f.set_len(flushed).and_then(|()| f.seek(SeekFrom::End(0))).is_ok());
            if !truncated {
                panic!("cannot truncate {} back to its flushed length", self.path);
            }
            self.spilled = 0;
        }
    }
}

/// An I/O error in words: WASI reports some only by number ("os error
/// 29"), which tells an operator nothing.
fn describe(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    let words = match e.kind() {
        ErrorKind::StorageFull => "no space left on device",
        ErrorKind::QuotaExceeded => "disk quota exceeded",
        ErrorKind::PermissionDenied => "permission denied",
        ErrorKind::NotFound => "no such file or directory",
        ErrorKind::ReadOnlyFilesystem => "read-only file system",
        ErrorKind::FileTooLarge => "file too large",
        _ => return e.to_string(),
    };
    format!("{words} ({e})")
}

export_sink!(FileSink);

#[cfg(test)]
mod tests {
    #[test]
    fn the_config_schema_is_derived_from_the_struct() {
        let schema: serde_json::Value = serde_json::from_str(&super::config_schema()).expect("JSON");
        assert_eq!(schema["required"], serde_json::json!(["path"]));
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["properties"]["spill_bytes"]["default"], 1 << 20);
        assert_eq!(schema["properties"]["header"]["default"], true);
        let text = schema.to_string();
        for word in ["jsonl", "csv", "fail", "append", "Output file, as the guest sees it"] {
            assert!(text.contains(word), "{word}: {text}");
        }
        assert_eq!(schema["allOf"][0]["then"]["required"], serde_json::json!(["columns"]));
    }
}
