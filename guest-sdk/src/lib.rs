//! Write [Sinkbox](https://example.invalid/sinkbox) sinks in Rust.
//!
//! A sink is a type implementing [`Sink`]; [`export_sink!`] turns it into the
//! exports of the `sinkbox:sink/sink-world` component world. Build the crate
//! as a `cdylib` for `wasm32-wasip2` and the result is a component that
//! `sinkbox run` drives: `open` once with the typed config, `add` per record
//! (or [`Sink::add_batch`] per batch), `flush` at each checkpoint, `abort`
//! before a replay, `close` once at the end.
//!
//! ```
//! use sinkbox_sdk::{Error, Record, Sink, export_sink};
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
//!     fn open(config: Config) -> Result<Self, Error> {
//!         Ok(Threshold { min: config.min, seen: 0, pending: 0 })
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

use std::cell::RefCell;
use std::fmt;
use std::time::Duration;

pub use sinkbox_format::{DecodeError, Headers};

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

    /// Creates the sink from its config.
    fn open(config: Self::Config) -> Result<Self, Error>;

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
    fn flush(&mut self) -> Result<(), Error>;

    /// Drops everything added since the last successful flush. Default: does
    /// nothing, right for sinks that only write in `flush` from state that
    /// `add` rebuilds; sinks that buffer must clear the buffer here.
    fn abort(&mut self) {}

    /// Releases resources; unflushed records are discarded. Default: drop.
    fn close(self) -> Result<(), Error> {
        Ok(())
    }
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
    /// Reject these records of the batch; the rest count as accepted.
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
        sinkbox_format::Records::new(&self.inner.data, self.inner.count).map(|r| r.map(Record))
    }

    /// The packed buffer, for sinks that forward it as is.
    pub fn raw(&self) -> &[u8] {
        &self.inner.data
    }
}

/// A record, borrowed from its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a>(sinkbox_format::Record<'a>);

impl<'a> Record<'a> {
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
}

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
                fn open(config: ::std::string::String) -> $crate::__rt::Result {
                    STATE.with(|s| $crate::__rt::open::<$sink>(s, config))
                }
                fn add(batch: $crate::__rt::RawBatch) -> $crate::__rt::Result {
                    STATE.with(|s| $crate::__rt::add::<$sink>(s, batch))
                }
                fn flush() -> $crate::__rt::Result {
                    STATE.with(|s| $crate::__rt::flush::<$sink>(s))
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

/// Glue called by [`export_sink!`]; not a stable API.
#[doc(hidden)]
pub mod __rt {
    use super::*;

    pub use crate::__bindings::exports::sinkbox::sink::sink::Guest;
    pub use types::Batch as RawBatch;

    pub type Result = std::result::Result<(), types::SinkError>;

    type State<S> = RefCell<Option<S>>;

    fn not_open() -> types::SinkError {
        types::SinkError::Fatal("sink called before a successful open".into())
    }

    pub fn open<S: Sink>(state: &State<S>, config: String) -> Result {
        let config: S::Config =
            serde_json::from_str(&config).map_err(|e| types::SinkError::Fatal(format!("invalid sink config: {e}")))?;
        *state.borrow_mut() = Some(S::open(config).map_err(lower)?);
        Ok(())
    }

    pub fn add<S: Sink>(state: &State<S>, batch: RawBatch) -> Result {
        let mut state = state.borrow_mut();
        let sink = state.as_mut().ok_or_else(not_open)?;
        sink.add_batch(Batch { inner: batch }).map_err(lower)
    }

    pub fn flush<S: Sink>(state: &State<S>) -> Result {
        state.borrow_mut().as_mut().ok_or_else(not_open)?.flush().map_err(lower)
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
            Error::Reject(m) => types::SinkError::Fatal(format!("record rejected outside add: {m}")),
            Error::Rejected(list) => types::SinkError::Rejected(
                list.into_iter().map(|r| types::Rejection { offset: r.offset, reason: r.reason }).collect(),
            ),
            Error::Fatal(m) => types::SinkError::Fatal(m),
        }
    }
}
