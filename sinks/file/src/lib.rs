//! The `file` sink: JSONL or CSV lines into a file in a granted directory,
//! exactly once across aborts, restarts and crashes.
//!
//! Config (the path is the guest's view of a directory the pipeline grants):
//!
//! ```json
//! {"path": "/out/orders.csv", "format": "csv", "columns": ["id", "total"]}
//! ```
//!
//! How it keeps every record exactly once:
//! - `add` encodes lines into a buffer (spilling to the file past
//!   `spill_bytes`); `abort` truncates the file back to the last flushed
//!   length and clears the buffer, so a replay does not duplicate lines.
//! - `flush` writes the buffer, syncs the file, then atomically replaces a
//!   state file (`PATH.sinkbox-state`: flushed length, and the highest
//!   offset flushed per topic partition).
//! - `open` truncates the file to the flushed length from the state file
//!   (dropping lines of a flush that crashed before its state was written)
//!   and skips records at or below the flushed offsets: the runtime replays
//!   from its last committed offset, which may be older than the last flush.

mod encoder;
mod scan;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};

pub use encoder::Encoder;
use sinkbox_sdk::{Batch, Error, Record, Sink, export_sink};

/// The file sink's config.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Output file, as the guest sees it (inside a granted directory).
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
}

fn yes() -> bool {
    true
}

fn default_spill() -> usize {
    1 << 20
}

/// Output line format.
#[derive(Debug, Default, Clone, Copy, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON value per line.
    #[default]
    Jsonl,
    /// Comma-separated values with chosen columns.
    Csv,
}

/// What the state file records after each successful flush.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct State {
    /// File length after the last flush.
    len: u64,
    /// Highest flushed offset per `topic/partition`.
    offsets: BTreeMap<String, u64>,
}

/// The sink.
pub struct FileSink {
    path: String,
    state_path: String,
    file: File,
    encoder: Encoder,
    spill_bytes: usize,
    /// Whether a new (empty) file starts with the encoder's header line.
    header: bool,
    buffer: Vec<u8>,
    /// State as of the last successful flush.
    flushed: State,
    /// Bytes written past `flushed.len` by spills since that flush.
    spilled: u64,
    /// Highest offset per partition accepted since the last flush.
    pending: BTreeMap<String, u64>,
}

impl FileSink {
    /// Empties the buffer; a file that is still empty gets its header first.
    fn start_buffer(&mut self) {
        self.buffer.clear();
        if self.flushed.len == 0 && self.header {
            self.encoder.header(&mut self.buffer);
        }
    }

    fn write_all_at_end(&mut self) -> std::io::Result<()> {
        self.file.write_all(&self.buffer)?;
        self.spilled += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    fn io_error(&self, what: &str, e: std::io::Error) -> Error {
        // An I/O failure in a granted directory is usually transient (disk
        // full, quota); the runtime retries with backoff and then stops.
        Error::retryable(format!("{what} {}: {e}", self.path))
    }
}

impl Sink for FileSink {
    type Config = Config;

    fn config_schema() -> Option<String> {
        Some(include_str!("../schema.json").into())
    }

    fn open(config: Config) -> Result<Self, Error> {
        let encoder = match config.format {
            Format::Jsonl => Encoder::Jsonl,
            Format::Csv if config.columns.is_empty() => {
                return Err(Error::fatal("format \"csv\" needs a non-empty \"columns\" list"));
            }
            Format::Csv => Encoder::csv(config.columns),
        };
        let state_path = format!("{}.sinkbox-state", config.path);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&config.path)
            .map_err(|e| Error::fatal(format!("cannot open {}: {e}", config.path)))?;
        let actual_len = file.metadata().map_err(|e| Error::fatal(format!("cannot stat {}: {e}", config.path)))?.len();
        let flushed = match fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice::<State>(&bytes)
                .map_err(|e| Error::fatal(format!("corrupt state file {state_path}: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // First open: whatever the file holds now predates the sink.
                // Record that before anything is written, so a crash before
                // the first flush completes truncates back to it instead of
                // taking half-written lines for flushed ones.
                let state = State { len: actual_len, offsets: BTreeMap::new() };
                write_state(&state_path, &state)
                    .map_err(|e| Error::fatal(format!("cannot write {state_path}: {e}")))?;
                state
            }
            Err(e) => return Err(Error::fatal(format!("cannot read {state_path}: {e}"))),
        };
        if actual_len < flushed.len {
            return Err(Error::fatal(format!(
                "{} is {actual_len} bytes but {} bytes were flushed to it; was it modified outside the sink?",
                config.path, flushed.len
            )));
        }
        // Drop what an unfinished flush or a spill wrote past the last flush.
        file.set_len(flushed.len).map_err(|e| Error::fatal(format!("cannot truncate {}: {e}", config.path)))?;
        file.seek(SeekFrom::End(0)).map_err(|e| Error::fatal(format!("cannot seek {}: {e}", config.path)))?;
        let mut sink = FileSink {
            path: config.path,
            state_path,
            file,
            encoder,
            spill_bytes: config.spill_bytes,
            header: config.header,
            buffer: Vec::with_capacity(config.spill_bytes.min(1 << 20) + 4096),
            flushed,
            spilled: 0,
            pending: BTreeMap::new(),
        };
        sink.start_buffer();
        Ok(sink)
    }

    fn add(&mut self, record: Record<'_>) -> Result<(), Error> {
        self.encoder.encode(record.value(), &mut self.buffer).map_err(Error::Reject)
    }

    fn add_batch(&mut self, batch: Batch) -> Result<(), Error> {
        let partition = format!("{}/{}", batch.topic(), batch.partition());
        let done = self.flushed.offsets.get(&partition).copied();
        let mut rejected = Vec::new();
        let mut last = None;
        for record in batch.records() {
            let record = record.map_err(Error::fatal)?;
            if done.is_some_and(|done| record.offset() <= done) {
                continue; // flushed before a restart; the runtime is replaying
            }
            last = Some(record.offset());
            if let Err(reason) = self.encoder.encode(record.value(), &mut self.buffer) {
                rejected.push(sinkbox_sdk::Rejection { offset: record.offset(), reason });
            }
        }
        if let Some(last) = last {
            self.pending.insert(partition, last);
        }
        if self.buffer.len() >= self.spill_bytes {
            self.write_all_at_end().map_err(|e| self.io_error("cannot write", e))?;
        }
        if rejected.is_empty() { Ok(()) } else { Err(Error::Rejected(rejected)) }
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.write_all_at_end().map_err(|e| self.io_error("cannot write", e))?;
        self.file.sync_data().map_err(|e| self.io_error("cannot sync", e))?;
        let mut next = self.flushed.clone();
        next.len += self.spilled;
        next.offsets.extend(std::mem::take(&mut self.pending));
        write_state(&self.state_path, &next).map_err(|e| self.io_error("cannot write the state file of", e))?;
        self.flushed = next;
        self.spilled = 0;
        Ok(())
    }

    fn abort(&mut self) {
        self.start_buffer();
        self.pending.clear();
        if self.spilled > 0 {
            // If truncation fails the next flush would keep aborted lines;
            // poison the instance so the runtime replaces it instead: a
            // fresh instance truncates to the flushed length on open.
            if self.file.set_len(self.flushed.len).and_then(|()| self.file.seek(SeekFrom::End(0))).is_err() {
                panic!("cannot truncate {} back to its flushed length", self.path);
            }
            self.spilled = 0;
        }
    }
}

/// Replaces the state file atomically: write a temporary file, sync it,
/// rename it over the old one.
fn write_state(path: &str, state: &State) -> std::io::Result<()> {
    let tmp = format!("{path}.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(state).map_err(std::io::Error::other)?)?;
    f.sync_data()?;
    fs::rename(&tmp, path)
}

export_sink!(FileSink);
