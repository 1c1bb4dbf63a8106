//! Write [Sinkbox](https://example.invalid/sinkbox) sinks in Rust.
//!
//! A sink is a type implementing [`Sink`]; [`export_sink!`] turns it into the
//! exports of the `sinkbox:sink/sink-world` component world (contract
//! `sinkbox:sink@0.2.0`). Build the crate as a `cdylib` for `wasm32-wasip2`
//! and the result is a component that `sinkbox run` drives: `open` once
//! with the typed config and a [`Context`], `add` per record (or
//! [`Sink::add_batch`] per batch), `flush` at each checkpoint, `abort`
//! before a replay, `close` once at the end.
//!
//! Most destination sinks are simpler to write as a [`Writer`]: it gets
//! the records of a checkpoint per partition at flush, and
//! [`export_writer!`] wraps it in a [`Batching`] sink that buffers (without
//! copying) and clears on abort.
//!
//! Exactly-once: [`Sink::snapshot`] returns a small snapshot after each
//! successful flush; the runtime commits it with the source offsets and
//! hands it back in [`Context::snapshot`] when an instance opens again.
//! A file sink truncates its output to the length its snapshot names, and
//! everything after it is replayed (see `sinks/file`).
//!
//! ```
//! use sinkbox_sdk::{Context, Error, Record, Sink, export_sink};
//!
//! /// Counts records with a value above a threshold.
//! struct Threshold {
//!     min: u64,
//!     seen: u64,
//!     pending: u64,
//! }
//!
//! #[derive(serde::Deserialize)]
//! struct Config {
//!     min: u64,
//! }
//!
//! impl Sink for Threshold {
//!     type Config = Config;
//!
//!     fn open(config: Config, context: &Context) -> Result<Self, Error> {
//!         // The count survives restarts in the runtime-kept snapshot.
//!         let seen = context.snapshot.as_deref().map_or(Ok(0), |s| {
//!             s.try_into().map(u64::from_le_bytes).map_err(|_| Error::fatal("bad snapshot"))
//!         })?;
//!         Ok(Threshold { min: config.min, seen, pending: 0 })
//!     }
//!
//!     fn add(&mut self, record: Record<'_>) -> Result<(), Error> {
//!         // A record whose value is not a number can never be written:
//!         // reject it, and it goes to the dead-letter queue.
//!         let n: u64 = record.json().map_err(|e| Error::reject(e.to_string()))?;
//!         if n >= self.min {
//!             self.pending += 1;
//!         }
//!         Ok(())
//!     }
//!
//!     fn flush(&mut self) -> Result<(), Error> {
//!         self.seen += self.pending;
//!         self.pending = 0;
//!         sinkbox_sdk::info!("{} records over the threshold so far", self.seen);
//!         Ok(())
//!     }
//!
//!     fn snapshot(&mut self) -> Option<Vec<u8>> {
//!         Some(self.seen.to_le_bytes().to_vec())
//!     }
//!
//!     fn abort(&mut self) {
//!         // The runtime replays everything since the last flush.
//!         self.pending = 0;
//!     }
//! }
//!
//! export_sink!(Threshold);
//! ```
//!
//! The runtime decides what happens after an error by its kind: see
//! [`Error`]. A panic is a trap: the runtime drops the instance, starts a
//! fresh one and replays; use it only for bugs.
#![deny(missing_docs)]

mod batching;
#[cfg(feature = "http")]
pub mod http;
pub mod template;

use std::cell::RefCell;
use std::fmt;
use std::time::Duration;

pub use batching::{Batching, Buffered, Writer};
pub use sinkbox_format::{DecodeError, Headers};

/// Encode batches natively, to unit-test a sink without building a
/// component: write records with [`testing::BatchWriter`], wrap the buffer
/// in [`Batch::new`], and call the sink's methods directly.
pub mod testing {
    pub use sinkbox_format::{BatchWriter, RecordRef};

    use crate::{Batch, Context};

    /// One record for [`batch`]: offset, key, value.
    pub type Entry<'a> = (u64, Option<&'a [u8]>, &'a [u8]);

    /// A batch of the given `(offset, key, value)` records of
    /// `topic[partition]`.
    pub fn batch(topic: &str, partition: u32, records: &[Entry<'_>]) -> Batch {
        let mut writer = BatchWriter::default();
        for &(offset, key, value) in records {
            writer.push(&RecordRef { offset, timestamp: None, key, value, headers: &[] });
        }
        let (data, count) = writer.finish();
        Batch::new(topic.to_string(), partition, count, data)
    }

    /// The context of a first open of `topic[partition]`, with no snapshot.
    pub fn context(topic: &str, partition: u32) -> Context {
        Context {
            pipeline: "test".into(),
            sink: "test".into(),
            topic: topic.into(),
            partition,
            lane: 0,
            lanes: 1,
            worker_index: 0,
            worker_count: 1,
            snapshot: None,
            probe: false,
        }
    }
}

#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "sinkbox:sink/sink-world",
        default_bindings_module: "sinkbox_sdk::__bindings",
        pub_export_macro: true,
        export_macro_name: "__export_sink_world",
    });
}

/// The generated bindings' export macro, for power users who implement the
/// raw `Guest` trait themselves instead of [`Sink`].
pub use __bindings::__export_sink_world as export_raw;

use __bindings::sinkbox::sink::host;
use __bindings::sinkbox::sink::types;

/// A sink: receives records, makes them durable at each flush.
///
/// One value of the implementing type lives per component instance, created
/// by [`Sink::open`] and consumed by [`Sink::close`].
pub trait Sink: Sized + 'static {
    /// The sink's configuration, deserialized from the pipeline's JSON.
    type Config: serde::de::DeserializeOwned;

    /// The JSON Schema of [`Sink::Config`], if the sink publishes one; the
    /// runtime validates configs against it. Default: none.
    fn config_schema() -> Option<String> {
        None
    }

    /// Creates the sink from its config. `context` says what this instance
    /// serves (pipeline, sink, topic, partition, lane) and carries the
    /// snapshot of the last committed flush. A probe instance
    /// (`context.probe`) only receives `add`, then `abort` and `close`: it
    /// must not roll anything back or write anything.
    fn open(config: Self::Config, context: &Context) -> Result<Self, Error>;

    /// Takes one record. Return [`Error::reject`] to dead-letter just this
    /// record; any other error fails the whole batch.
    fn add(&mut self, record: Record<'_>) -> Result<(), Error>;

    /// Takes a batch. The default calls [`Sink::add`] for each record and
    /// collects per-record rejections; override it to keep the batch's
    /// buffer (zero copies) or to write a whole batch at once.
    fn add_batch(&mut self, batch: Batch) -> Result<(), Error> {
        let mut rejected = Vec::new();
        for record in batch.records() {
            let record = record.map_err(|e| Error::Fatal(e.to_string()))?;
            match self.add(record) {
                Ok(()) => {}
                Err(Error::Reject(reason)) => rejected.push(Rejection { offset: record.offset(), reason }),
                Err(other) => return Err(other),
            }
        }
        if rejected.is_empty() { Ok(()) } else { Err(Error::Rejected(rejected)) }
    }

    /// Makes everything added since the last successful flush durable.
    /// Return [`Error::Rejected`] to dead-letter records it could not
    /// write; the rest count as flushed.
    fn flush(&mut self) -> Result<(), Error>;

    /// The snapshot to commit with this checkpoint, called after each
    /// successful flush: small (at most 64 KiB) and opaque to the runtime,
    /// which hands the last committed one to `open` in
    /// [`Context::snapshot`]. Default: none.
    fn snapshot(&mut self) -> Option<Vec<u8>> {
        None
    }

    /// Counts since the previous call, merged into the runtime's status.
    /// Called after each successful flush. Default: none.
    fn status(&mut self) -> Option<Status> {
        None
    }

    /// Drops everything added since the last successful flush. Default: does
    /// nothing, right for sinks that only write in `flush` from state that
    /// `add` rebuilds; sinks that buffer must clear the buffer here.
    fn abort(&mut self) {}

    /// Releases resources; unflushed records are discarded. Default: drop.
    fn close(self) -> Result<(), Error> {
        Ok(())
    }
}

/// What an instance serves, given to [`Sink::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// The pipeline's name.
    pub pipeline: String,
    /// The sink's name in the pipeline.
    pub sink: String,
    /// The topic this instance serves (for a file source, its path).
    pub topic: String,
    /// The partition this instance serves.
    pub partition: u32,
    /// The lane within the partition.
    pub lane: u32,
    /// How many lanes the partition is spread over.
    pub lanes: u32,
    /// This instance's index among the sink's instances in the process.
    pub worker_index: u32,
    /// How many instances the sink has in the process.
    pub worker_count: u32,
    /// The snapshot of the last committed flush of this sink, partition
    /// and lane; `None` on the very first open.
    pub snapshot: Option<Vec<u8>>,
    /// A probe instance: only `add`, then `abort` and `close`; must not
    /// roll back or write anything.
    pub probe: bool,
}

impl Context {
    /// `template` with `{partition}`, `{lane}`, `{sink}` and `{pipeline}`
    /// replaced, for outputs named per instance (instances of one pipeline
    /// run concurrently and must not share an output).
    pub fn expand(&self, template: &str) -> String {
        template
            .replace("{partition}", &self.partition.to_string())
            .replace("{lane}", &self.lane.to_string())
            .replace("{sink}", &self.sink)
            .replace("{pipeline}", &self.pipeline)
    }
}

/// Counts a sink reports about itself after each flush, since its previous
/// report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Records written to the destination.
    pub written: u64,
    /// Records written with a problem.
    pub warnings: u64,
    /// Records skipped on purpose.
    pub filtered: u64,
    /// Failures the sink handled itself.
    pub failures: u64,
    /// Named counters (at most 32 names of up to 64 bytes are kept).
    pub custom: Vec<(String, u64)>,
}

/// Why a call did not fully succeed; the runtime acts on the kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The destination is overloaded: the runtime aborts, waits, replays.
    Backpressure {
        /// How long the runtime should wait before replaying.
        retry_after: Duration,
    },
    /// A transient failure: the runtime aborts and retries with backoff.
    Retryable(String),
    /// Reject the record being added (only from [`Sink::add`]): it goes to
    /// the dead-letter queue with this reason, the batch carries on.
    Reject(String),
    /// Reject these records (from `add` or `flush`, wherever the records
    /// are known); the rest count as accepted.
    Rejected(Vec<Rejection>),
    /// The instance is broken: the runtime replaces it and replays.
    Fatal(String),
}

impl Error {
    /// Backpressure with the given wait.
    pub fn backpressure(retry_after: Duration) -> Self {
        Error::Backpressure { retry_after }
    }

    /// A transient failure.
    pub fn retryable(message: impl fmt::Display) -> Self {
        Error::Retryable(message.to_string())
    }

    /// Rejects the current record.
    pub fn reject(reason: impl fmt::Display) -> Self {
        Error::Reject(reason.to_string())
    }

    /// Rejects the record at `offset`.
    pub fn reject_offset(offset: u64, reason: impl fmt::Display) -> Self {
        Error::Rejected(vec![Rejection { offset, reason: reason.to_string() }])
    }

    /// A broken instance.
    pub fn fatal(message: impl fmt::Display) -> Self {
        Error::Fatal(message.to_string())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Backpressure { retry_after } => {
                write!(f, "backpressure, retry after {retry_after:?}")
            }
            Error::Retryable(m) => write!(f, "retryable: {m}"),
            Error::Reject(m) => write!(f, "record rejected: {m}"),
            Error::Rejected(r) => write!(f, "{} records rejected", r.len()),
            Error::Fatal(m) => write!(f, "fatal: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// One record a sink refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The record's offset.
    pub offset: u64,
    /// Why it was refused.
    pub reason: String,
}

/// A batch of records from one topic partition. Owns the buffer the runtime
/// sent, so a sink can keep it until `flush` without copying records out.
pub struct Batch {
    inner: types::Batch,
}

impl Batch {
    /// Wraps a buffer encoded with `sinkbox_format::BatchWriter`; for
    /// driving a sink natively (tests and benchmarks), where no runtime
    /// sends batches.
    pub fn new(topic: String, partition: u32, count: u32, data: Vec<u8>) -> Batch {
        Batch { inner: types::Batch { topic, partition, count, data } }
    }

    /// The stream the records come from.
    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    /// The partition within the topic.
    pub fn partition(&self) -> u32 {
        self.inner.partition
    }

    /// How many records the batch holds.
    pub fn len(&self) -> usize {
        self.inner.count as usize
    }

    /// Whether the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.inner.count == 0
    }

    /// The records, borrowed from the batch buffer. An `Err` means the
    /// runtime sent a malformed buffer, which is a bug on its side.
    pub fn records(&self) -> impl Iterator<Item = Result<Record<'_>, DecodeError>> {
        let (topic, partition) = (self.inner.topic.as_str(), self.inner.partition);
        sinkbox_format::Records::new(&self.inner.data, self.inner.count)
            .map(move |r| r.map(|r| Record(r, topic, partition)))
    }

    /// The packed buffer, for sinks that forward it as is.
    pub fn raw(&self) -> &[u8] {
        &self.inner.data
    }
}

/// A record, borrowed from its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a>(sinkbox_format::Record<'a>, &'a str, u32);

impl<'a> Record<'a> {
    /// The stream the record comes from (for a file source, its path and
    /// stream identity).
    pub fn topic(&self) -> &'a str {
        self.1
    }

    /// The partition within the topic.
    pub fn partition(&self) -> u32 {
        self.2
    }

    /// Position of the record in its partition; strictly increasing.
    pub fn offset(&self) -> u64 {
        self.0.offset
    }

    /// Milliseconds since the Unix epoch, if the source gave one.
    pub fn timestamp(&self) -> Option<i64> {
        self.0.timestamp
    }

    /// The key, if any.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.0.key
    }

    /// The value.
    pub fn value(&self) -> &'a [u8] {
        self.0.value
    }

    /// The value as UTF-8 text.
    pub fn value_str(&self) -> Result<&'a str, std::str::Utf8Error> {
        std::str::from_utf8(self.0.value)
    }

    /// The value parsed as JSON into `T`.
    pub fn json<T: serde::de::Deserialize<'a>>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(self.0.value)
    }

    /// The headers, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + use<'a> {
        // Header bytes were bounds-checked when the record was decoded.
        self.0.headers().flatten()
    }

    /// The first header with this name.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.0.header(name)
    }

    /// Whether the record is a tombstone: its source record had no value
    /// (a Kafka delete marker). Its value is empty, and it carries the
    /// header [`TOMBSTONE_HEADER`].
    pub fn is_tombstone(&self) -> bool {
        self.header(TOMBSTONE_HEADER).is_some()
    }
}

/// The header a source sets on a record whose value was null (a Kafka
/// tombstone).
pub const TOMBSTONE_HEADER: &str = "sinkbox.tombstone";

/// Log severity.
pub use types::Level;

/// Writes a structured log line to the host log, attributed to this sink.
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    host::log(level, message, &fields);
}

/// Logs a formatted message at a level: `sinkbox_sdk::log!(Level::Info, "n = {}", n)`.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {
        $crate::log($level, &::std::format!($($arg)+), &[])
    };
}

/// Logs a formatted message at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log!($crate::Level::Debug, $($arg)+) };
}

/// Logs a formatted message at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log!($crate::Level::Info, $($arg)+) };
}

/// Logs a formatted message at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log!($crate::Level::Warn, $($arg)+) };
}

/// Logs a formatted message at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log!($crate::Level::Error, $($arg)+) };
}

/// Exports a [`Sink`] implementation as the component's sink contract.
///
/// Use it once per crate, at the top level: `export_sink!(MySink);`. It
/// expands to nothing on non-wasm targets, so a sink crate also builds as a
/// native library (for tests and benchmarks) and several sinks can be
/// linked into one native binary.
#[macro_export]
macro_rules! export_sink {
    ($sink:ty) => {
        #[cfg(target_family = "wasm")]
        const _: () = {
            ::std::thread_local! {
                static STATE: ::std::cell::RefCell<::std::option::Option<$sink>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }
            struct Export;
            impl $crate::__rt::Guest for Export {
                fn config_schema() -> ::std::option::Option<::std::string::String> {
                    <$sink as $crate::Sink>::config_schema()
                }
                fn open(config: ::std::string::String, context: $crate::__rt::RawContext) -> $crate::__rt::Result {
                    STATE.with(|s| $crate::__rt::open::<$sink>(s, config, context))
                }
                fn add(batch: $crate::__rt::RawBatch) -> $crate::__rt::Result {
                    STATE.with(|s| $crate::__rt::add::<$sink>(s, batch))
                }
                fn flush() -> $crate::__rt::Flushed {
                    STATE.with(|s| $crate::__rt::flush::<$sink>(s))
                }
                fn status() -> ::std::option::Option<$crate::__rt::RawStatus> {
                    STATE.with(|s| $crate::__rt::status::<$sink>(s))
                }
                fn abort() {
                    STATE.with(|s| $crate::__rt::abort::<$sink>(s))
                }
                fn close() -> $crate::__rt::Result {
                    STATE.with(|s| $crate::__rt::close::<$sink>(s))
                }
            }
            $crate::export_raw!(Export);
        };
        // Natively there is nothing to export; name the implementation so
        // it still counts as used.
        #[cfg(not(target_family = "wasm"))]
        const _: () = {
            let _ = <$sink as $crate::Sink>::open;
        };
    };
}

/// Exports a [`Writer`] as the component's sink contract, wrapped in
/// [`Batching`]: `export_writer!(MyWriter);`.
#[macro_export]
macro_rules! export_writer {
    ($writer:ty) => {
        $crate::export_sink!($crate::Batching<$writer>);
    };
}

/// Glue called by [`export_sink!`]; not a stable API.
#[doc(hidden)]
pub mod __rt {
    use super::*;

    pub use crate::__bindings::exports::sinkbox::sink::sink::Guest;
    pub use types::{Batch as RawBatch, Context as RawContext, SinkStatus as RawStatus};

    pub type Result = std::result::Result<(), types::SinkError>;
    pub type Flushed = std::result::Result<Option<Vec<u8>>, types::SinkError>;

    type State<S> = RefCell<Option<S>>;

    fn not_open() -> types::SinkError {
        types::SinkError::Fatal("sink called before a successful open".into())
    }

    pub fn open<S: Sink>(state: &State<S>, config: String, context: RawContext) -> Result {
        let config: S::Config =
            serde_json::from_str(&config).map_err(|e| types::SinkError::Fatal(format!("invalid sink config: {e}")))?;
        let context = Context {
            pipeline: context.pipeline,
            sink: context.sink,
            topic: context.topic,
            partition: context.partition,
            lane: context.lane,
            lanes: context.lanes,
            worker_index: context.worker_index,
            worker_count: context.worker_count,
            snapshot: context.snapshot,
            probe: context.probe,
        };
        *state.borrow_mut() = Some(S::open(config, &context).map_err(lower)?);
        Ok(())
    }

    pub fn add<S: Sink>(state: &State<S>, batch: RawBatch) -> Result {
        let mut state = state.borrow_mut();
        let sink = state.as_mut().ok_or_else(not_open)?;
        sink.add_batch(Batch { inner: batch }).map_err(lower)
    }

    pub fn flush<S: Sink>(state: &State<S>) -> Flushed {
        let mut state = state.borrow_mut();
        let sink = state.as_mut().ok_or_else(not_open)?;
        sink.flush().map_err(lower)?;
        Ok(sink.snapshot())
    }

    pub fn status<S: Sink>(state: &State<S>) -> Option<RawStatus> {
        let status = state.borrow_mut().as_mut()?.status()?;
        Some(RawStatus {
            written: status.written,
            warnings: status.warnings,
            filtered: status.filtered,
            failures: status.failures,
            custom: status.custom,
        })
    }

    pub fn abort<S: Sink>(state: &State<S>) {
        if let Some(sink) = state.borrow_mut().as_mut() {
            sink.abort();
        }
    }

    pub fn close<S: Sink>(state: &State<S>) -> Result {
        match state.borrow_mut().take() {
            Some(sink) => sink.close().map_err(lower),
            None => Ok(()),
        }
    }

    fn lower(error: Error) -> types::SinkError {
        match error {
            Error::Backpressure { retry_after } => {
                types::SinkError::Backpressure(u32::try_from(retry_after.as_millis()).unwrap_or(u32::MAX))
            }
            Error::Retryable(m) => types::SinkError::Retryable(m),
            // A bare `Reject` outside `add` has no record to name; it means
            // the call failed for good, which the runtime handles as fatal.
            // Name the record with `Error::reject_offset` instead.
            Error::Reject(m) => types::SinkError::Fatal(format!("record rejected outside add: {m}")),
            Error::Rejected(list) => types::SinkError::Rejected(
                list.into_iter().map(|r| types::Rejection { offset: r.offset, reason: r.reason }).collect(),
            ),
            Error::Fatal(m) => types::SinkError::Fatal(m),
        }
    }
}
