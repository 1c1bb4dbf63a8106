//! The library's error type.
//!
//! Three layers stay apart: what a sink returned (a [`Fault::Fatal`] or an
//! exhausted [`Fault::Retryable`]), what trapped inside the sandbox (a
//! guest bug or an exceeded limit), and what failed on the host (loading,
//! I/O, configuration).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A boxed error cause.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result with the library's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A sink call, for messages and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Creating the instance (runs the guest's start code).
    Instantiate,
    /// `config-schema`.
    ConfigSchema,
    /// `open`.
    Open,
    /// `add`.
    Add,
    /// `flush`.
    Flush,
    /// `status`.
    Status,
    /// `abort`.
    Abort,
    /// `close`.
    Close,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Instantiate => "instantiate",
            Phase::ConfigSchema => "config-schema",
            Phase::Open => "open",
            Phase::Add => "add",
            Phase::Flush => "flush",
            Phase::Status => "status",
            Phase::Abort => "abort",
            Phase::Close => "close",
        })
    }
}

/// What went wrong in one sink call.
#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// The call used up its fuel budget.
    #[error("ran out of fuel (budget {budget})")]
    OutOfFuel {
        /// The budget it had.
        budget: u64,
    },
    /// The call hit its wall-clock deadline.
    #[error("exceeded its time limit of {limit:?}")]
    Timeout {
        /// The deadline.
        limit: Duration,
    },
    /// The guest tried to grow its memory past the limit.
    #[error("exceeded its memory limit of {}", Bytes(*limit))]
    Memory {
        /// The limit in bytes.
        limit: u64,
    },
    /// The guest tried to hold more host handles than its limit.
    #[error("exceeded its limit of {limit} open handles")]
    Handles {
        /// The limit.
        limit: usize,
    },
    /// The guest wrote more into its writable directories than its disk
    /// quota allows (the write failed in the guest with no space left).
    #[error("exceeded its disk quota of {} in {dirs} (a write was refused: no space left on device)", Bytes(*limit))]
    Disk {
        /// The quota in bytes.
        limit: u64,
        /// The guest paths it covers.
        dirs: String,
        /// The error the sink returned, if it returned one.
        said: Option<String>,
    },
    /// Any other trap: a panic, a stack overflow, an unreachable.
    #[error("trapped")]
    Trap {
        /// What the guest wrote to stderr in the failing call (a panic
        /// message, usually).
        stderr: Option<String>,
        /// The trap.
        #[source]
        source: BoxError,
    },
    /// The sink returned `fatal`.
    #[error("failed: {0}")]
    Fatal(String),
    /// The sink returned `retryable`.
    #[error("failed, retryably: {0}")]
    Retryable(String),
    /// The sink returned `backpressure`.
    #[error("asked to back off for {0} ms")]
    Backpressure(u32),
    /// The sink returned `rejected` where rejections are not allowed (open).
    #[error("rejected {0} records")]
    Rejected(usize),
    /// The sink broke the contract (an oversized snapshot, say).
    #[error("broke the contract: {0}")]
    Violation(String),
    /// The call was cut off because the pipeline is aborting.
    #[error("was stopped by an abort request")]
    Stopped,
}

impl Fault {
    /// Whether the instance can no longer be used: a trap of any kind
    /// (limits included) or a fatal error.
    pub fn kills_instance(&self) -> bool {
        !matches!(self, Fault::Retryable(_) | Fault::Backpressure(_))
    }

    /// Whether the sandbox ran out of a resource (memory, fuel, time): the
    /// batch may simply have been too big, so smaller batches are tried
    /// before any record is blamed.
    pub fn is_resource_limit(&self) -> bool {
        matches!(self, Fault::OutOfFuel { .. } | Fault::Timeout { .. } | Fault::Memory { .. })
    }

    /// Whether this is a trap (as opposed to an error the sink returned).
    pub fn is_trap(&self) -> bool {
        matches!(
            self,
            Fault::OutOfFuel { .. }
                | Fault::Timeout { .. }
                | Fault::Memory { .. }
                | Fault::Handles { .. }
                | Fault::Trap { .. }
        )
    }
}

/// A sink call that failed, naming the sink and the phase:
/// `sink "orders" exceeded its memory limit of 64 MiB in add`. A trap's
/// message ends with what the guest wrote to stderr in that call (usually
/// its panic message); its source is the trap itself.
#[derive(Debug)]
pub struct SinkFailure {
    /// The sink's name in the pipeline.
    pub sink: String,
    /// The call.
    pub phase: Phase,
    /// What happened.
    pub fault: Fault,
}

impl fmt::Display for SinkFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sink \"{}\" {} in {}", self.sink, self.fault, self.phase)?;
        if let Fault::Trap { stderr: Some(stderr), .. } = &self.fault {
            write!(f, " (guest stderr: {stderr})")?;
        }
        if let Fault::Disk { said: Some(said), .. } = &self.fault {
            write!(f, " (the sink said: {said})")?;
        }
        Ok(())
    }
}

impl std::error::Error for SinkFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // The fault is already in this message; its own cause is next.
        std::error::Error::source(&self.fault)
    }
}

/// The library's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// wasmtime could not be configured.
    #[error("cannot set up the wasm engine")]
    Engine(#[source] BoxError),
    /// A component could not be compiled or linked.
    #[error("cannot load component {origin}")]
    Component {
        /// File or built-in name.
        origin: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A component imports something the linker does not offer.
    #[error("cannot link component {origin}")]
    Unlinkable {
        /// File or built-in name.
        origin: String,
        /// What it imports.
        imports: Vec<String>,
        /// What it exports.
        exports: Vec<String>,
        /// What is missing.
        #[source]
        source: BoxError,
    },
    /// A component does not export the sink contract.
    #[error("component {origin} does not implement the sinkbox:sink/sink-world@0.2.0 world")]
    NotASink {
        /// File or built-in name.
        origin: String,
        /// What is missing.
        #[source]
        source: BoxError,
    },
    /// A component implements another version of the contract.
    #[error(
        "component {origin} implements {found}, but this runtime runs {expected}; rebuild it with the SDK for {expected}"
    )]
    ContractVersion {
        /// File or built-in name.
        origin: String,
        /// The version the component exports.
        found: String,
        /// The version this runtime needs.
        expected: String,
    },
    /// A host I/O operation failed.
    #[error("{what}")]
    Io {
        /// What was being done, and on which path.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A pipeline or sink configuration is invalid.
    #[error("{0}")]
    Config(String),
    /// A source could not be read.
    #[error("source {source_name}: {what}")]
    Source {
        /// The source's description.
        source_name: String,
        /// What went wrong, and where.
        what: String,
    },
    /// A sink call failed in a way the pipeline does not recover from.
    #[error(transparent)]
    Sink(Box<SinkFailure>),
    /// A sink kept failing a checkpoint until its attempts ran out.
    #[error("sink \"{sink}\" still failing after {attempts} attempts; offsets from {from} stay uncommitted")]
    GaveUp {
        /// The sink's name.
        sink: String,
        /// Attempts made.
        attempts: u32,
        /// The first uncommitted position, as the source describes it.
        from: String,
        /// The last failure.
        #[source]
        last: Box<SinkFailure>,
    },
    /// A sink spent longer than `max_retry_time` recovering one checkpoint.
    #[error(
        "sink \"{sink}\" still failing after {limit:?} recovering one checkpoint (max_retry_time); offsets from \
         {from} stay uncommitted"
    )]
    RetryTimeUp {
        /// The sink's name.
        sink: String,
        /// `max_retry_time`.
        limit: Duration,
        /// The first uncommitted position, as the source describes it.
        from: String,
        /// The last failure.
        #[source]
        last: Box<SinkFailure>,
    },
    /// The offset store is unusable.
    #[error("offset store {}: {what}", path.display())]
    Offsets {
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A committed position is for a different stream than the input holds
    /// now; the pipeline refuses to resume rather than skip or mix records.
    #[error(transparent)]
    StreamChanged(Box<StreamChanged>),
    /// Another run holds the pipeline's state.
    #[error(
        "pipeline \"{pipeline}\" is already running: its lock file {} is held by {}",
        lock.display(),
        holder.map_or_else(|| "another process".to_string(), |pid| format!("pid {pid}"))
    )]
    Locked {
        /// The pipeline's name.
        pipeline: String,
        /// The lock file.
        lock: PathBuf,
        /// The process id the holder wrote into the lock file, if readable.
        holder: Option<u32>,
    },
    /// The run wrote more dead letters than its limits allow: past them, the
    /// input or a sink is broken, not a few records.
    #[error(
        "the pipeline wrote {written} dead letters to {}, {limit}; the input or a sink is broken, not a few \
         records; stopping with the checkpoint uncommitted",
        path.display()
    )]
    DeadLetterLimit {
        /// The dead-letter file.
        path: PathBuf,
        /// Entries this run wrote.
        written: u64,
        /// Which limit it reached.
        limit: DeadLetterLimit,
    },
    /// One of the runtime's own tasks ended unexpectedly: a bug in the host
    /// (a panic, say), not the sink's or the configuration's fault.
    #[error("{what}")]
    Task {
        /// Which task, and when.
        what: String,
        /// Why it ended, when known.
        #[source]
        source: Option<BoxError>,
    },
    /// Another pipeline holds a writable directory this one is granted.
    #[error(
        "pipeline \"{pipeline}\" cannot write into directory {}: {holder} holds its lock file {}; two pipelines \
         must not write into one directory",
        dir.display(),
        lock.display()
    )]
    OutputLocked {
        /// The pipeline that was refused.
        pipeline: String,
        /// The directory, canonical.
        dir: PathBuf,
        /// Its lock file.
        lock: PathBuf,
        /// Who holds it.
        holder: crate::lock::Holder,
    },
    /// The pipeline was interrupted before it could finish its checkpoint.
    #[error("interrupted; offsets from {from} stay uncommitted")]
    Interrupted {
        /// The first uncommitted position.
        from: String,
    },
}

/// The dead-letter limit a run reached.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeadLetterLimit {
    /// `max_dead_letters`: entries per run.
    Count {
        /// The limit.
        max: u64,
    },
    /// `max_dead_letter_share`: entries per record read, once enough
    /// records were read.
    Share {
        /// Records read so far.
        read: u64,
        /// Entries per record read.
        share: f64,
        /// The limit, a fraction.
        max: f64,
    },
}

impl fmt::Display for DeadLetterLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadLetterLimit::Count { max } => write!(f, "its limit (max_dead_letters = {max})"),
            DeadLetterLimit::Share { read, share, max } => write!(
                f,
                "{} of the {read} records read, more than its limit (max_dead_letter_share = {max})",
                Share(*share)
            ),
        }
    }
}

/// A fraction as a percentage: `50%`, `0.1%`.
struct Share(f64);

impl fmt::Display for Share {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let percent = self.0 * 100.0;
        if percent.fract() == 0.0 { write!(f, "{percent}%") } else { write!(f, "{percent:.1}%") }
    }
}

/// Why a committed position is not resumed: the input is not the stream
/// it was committed for.
#[derive(Debug)]
pub struct StreamChanged {
    /// The pipeline, when known.
    pub pipeline: Option<String>,
    /// The input, as the source describes it (`file in.jsonl`, `stdin`).
    pub input: String,
    /// What changed.
    pub what: String,
    /// The offset store holding the position, when known.
    pub offsets: Option<PathBuf>,
}

impl StreamChanged {
    /// A mismatch on `input`; the pipeline and store are filled in later.
    pub fn new(input: &str, what: String) -> StreamChanged {
        StreamChanged { pipeline: None, input: input.to_string(), what, offsets: None }
    }
}

impl fmt::Display for StreamChanged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(pipeline) = &self.pipeline {
            write!(f, "pipeline \"{pipeline}\" ")?;
        }
        write!(f, "cannot resume {}", self.input)?;
        if let Some(path) = &self.offsets {
            write!(f, " from {}", path.display())?;
        }
        write!(
            f,
            ": {}; to start over from the input as it is now, run again with --reset (or run `sinkbox reset` on \
             the pipeline file), which deletes the committed offsets and keeps the dead letters",
            self.what
        )
    }
}

impl std::error::Error for StreamChanged {}

impl From<StreamChanged> for Error {
    fn from(changed: StreamChanged) -> Error {
        Error::StreamChanged(Box::new(changed))
    }
}

impl From<SinkFailure> for Error {
    fn from(failure: SinkFailure) -> Error {
        Error::Sink(Box::new(failure))
    }
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { what: what.into(), source }
    }
}

/// An error and its causes, joined by `: `, as one line.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let next = e.to_string();
        // Some errors repeat their cause in their own message.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = e.source();
    }
    text
}

/// Formats a byte count in binary units: `64 MiB`, `1.5 KiB`, `17 bytes`.
#[derive(Debug, Clone, Copy)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
        let mut value = self.0 as f64;
        let mut unit = 0;
        while value >= 1024.0 && unit < UNITS.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        if unit == 0 || value.fract() == 0.0 {
            write!(f, "{} {}", value as u64, UNITS[unit])
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_naturally() {
        for (n, text) in [(0, "0 bytes"), (17, "17 bytes"), (1536, "1.5 KiB"), (64 << 20, "64 MiB"), (5 << 30, "5 GiB")]
        {
            assert_eq!(Bytes(n).to_string(), text);
        }
    }

    #[test]
    fn dead_letter_limits_give_the_numbers_and_the_key() {
        let path = PathBuf::from(".sinkbox/p.dead-letter.jsonl");
        let e = Error::DeadLetterLimit { path: path.clone(), written: 100, limit: DeadLetterLimit::Count { max: 100 } };
        assert_eq!(
            e.to_string(),
            "the pipeline wrote 100 dead letters to .sinkbox/p.dead-letter.jsonl, its limit (max_dead_letters = 100); \
             the input or a sink is broken, not a few records; stopping with the checkpoint uncommitted"
        );
        let limit = DeadLetterLimit::Share { read: 1000, share: 0.601, max: 0.5 };
        let e = Error::DeadLetterLimit { path, written: 601, limit };
        assert!(
            e.to_string().starts_with(
                "the pipeline wrote 601 dead letters to .sinkbox/p.dead-letter.jsonl, 60.1% of the 1000 records \
                 read, more than its limit (max_dead_letter_share = 0.5); "
            ),
            "{e}"
        );
    }

    #[test]
    fn sink_failures_name_sink_limit_and_phase() {
        let e = SinkFailure { sink: "orders".into(), phase: Phase::Add, fault: Fault::Memory { limit: 64 << 20 } };
        assert_eq!(e.to_string(), "sink \"orders\" exceeded its memory limit of 64 MiB in add");
        let e = SinkFailure { sink: "s".into(), phase: Phase::Flush, fault: Fault::OutOfFuel { budget: 10 } };
        assert_eq!(e.to_string(), "sink \"s\" ran out of fuel (budget 10) in flush");
    }
}
