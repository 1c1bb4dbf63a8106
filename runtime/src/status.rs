//! What a pipeline did: counters for the run and per sink.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Bytes, Phase};

/// Counters for one pipeline run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// The pipeline's name.
    pub pipeline: String,
    /// Records read from the source (replays not counted again).
    pub read: u64,
    /// Records whose offsets were committed.
    pub committed: u64,
    /// Records sent to the dead-letter queue by the source (malformed lines).
    pub malformed: u64,
    /// Checkpoints committed.
    pub checkpoints: u64,
    /// The committed position, as the source describes it.
    pub position: String,
    /// Wall-clock time of the run.
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
    /// How the run ended: `"finished"`, `"interrupted"` or the error.
    pub outcome: String,
    /// Peak resident memory of the whole process, in bytes (Linux only).
    pub peak_rss: Option<u64>,
    /// Per sink.
    pub sinks: Vec<SinkMetrics>,
}

/// Counters for one sink, across all its instances.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SinkMetrics {
    /// The sink's name.
    pub name: String,
    /// Records accepted by `add` (replays counted each time).
    pub added: u64,
    /// Records rejected and dead-lettered (by the sink or by bisection).
    pub rejected: u64,
    /// Checkpoint replays after backpressure or a retryable error.
    pub retries: u64,
    /// Traps, limits included, and fatal errors: each cost an instance.
    pub traps: u64,
    /// Instances created.
    pub instances: u64,
    /// Fuel consumed by all calls.
    pub fuel: u64,
    /// Largest linear memory of any instance, in bytes.
    pub peak_memory: u64,
    /// Time spent in `add`.
    #[serde(serialize_with = "secs")]
    pub add_time: Duration,
    /// Time spent in `flush`.
    #[serde(serialize_with = "secs")]
    pub flush_time: Duration,
    /// Calls made.
    pub calls: u64,
    /// Calls that returned `ok`.
    pub calls_ok: u64,
    /// Share of the records this sink finished with that it took (rather
    /// than rejected), in percent; 100 when it saw none. Set at the end of
    /// the run.
    pub success_percent: f64,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl SinkMetrics {
    /// Metrics for a sink named `name`.
    pub fn new(name: &str) -> Self {
        SinkMetrics { name: name.to_string(), ..Default::default() }
    }

    pub(crate) fn record_call(&mut self, phase: Phase, elapsed: Duration, fuel: u64, memory: u64, ok: bool) {
        self.calls += 1;
        self.calls_ok += u64::from(ok);
        self.fuel += fuel;
        self.peak_memory = self.peak_memory.max(memory);
        match phase {
            Phase::Add => self.add_time += elapsed,
            Phase::Flush => self.flush_time += elapsed,
            _ => {}
        }
    }

    pub(crate) fn finish(mut self) -> Self {
        let total = self.added + self.rejected;
        self.success_percent = if total == 0 { 100.0 } else { self.added as f64 * 100.0 / total as f64 };
        self
    }
}

impl fmt::Display for Status {
    /// The status table printed at the end of `sinkbox run`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        writeln!(f, "pipeline \"{}\" {} in {:.2}s", self.pipeline, self.outcome, secs)?;
        writeln!(
            f,
            "  read {}  committed {}  malformed {}  checkpoints {}  ({:.0} records/s)",
            self.read,
            self.committed,
            self.malformed,
            self.checkpoints,
            self.read as f64 / secs
        )?;
        writeln!(f, "  position: {}", self.position)?;
        if let Some(rss) = self.peak_rss {
            writeln!(f, "  peak memory (process): {}", Bytes(rss))?;
        }
        writeln!(
            f,
            "  {:<16} {:>10} {:>8} {:>7} {:>6} {:>14} {:>10} {:>9} {:>9} {:>8}",
            "sink", "added", "rejected", "retries", "traps", "fuel", "peak mem", "add s", "flush s", "ok %"
        )?;
        for s in &self.sinks {
            writeln!(
                f,
                "  {:<16} {:>10} {:>8} {:>7} {:>6} {:>14} {:>10} {:>9.3} {:>9.3} {:>8.2}",
                s.name,
                s.added,
                s.rejected,
                s.retries,
                s.traps,
                s.fuel,
                Bytes(s.peak_memory).to_string(),
                s.add_time.as_secs_f64(),
                s.flush_time.as_secs_f64(),
                s.success_percent
            )?;
        }
        Ok(())
    }
}

/// Peak resident set size of this process (`VmHWM`), on Linux.
pub fn peak_rss() -> Option<u64> {
    proc_status_kib("VmHWM:").map(|kib| kib * 1024)
}

/// Current resident set size of this process (`VmRSS`), on Linux.
pub fn current_rss() -> Option<u64> {
    proc_status_kib("VmRSS:").map(|kib| kib * 1024)
}

fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}
