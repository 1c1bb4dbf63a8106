//! What a pipeline did: counters for the run and per sink.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::bindings::GuestStatus;
use crate::error::Bytes;
use crate::sandbox::{CallStats, NetStats};

/// How a run ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state", content = "error")]
pub enum Outcome {
    /// Still running (a status taken mid-run).
    #[default]
    Running,
    /// The source ended and everything read was committed.
    Finished,
    /// A stop request ended it; what was committed is in `position`.
    Interrupted,
    /// An error ended it; the text is the whole error chain.
    Failed(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Running => f.write_str("running"),
            Outcome::Finished => f.write_str("finished"),
            Outcome::Interrupted => f.write_str("interrupted"),
            Outcome::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// Counts a sink reported about itself (contract `status`), summed over
/// its instances.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reported {
    /// Records written to the destination.
    pub written: u64,
    /// Records written with a problem.
    pub warnings: u64,
    /// Records the sink skipped on purpose.
    pub filtered: u64,
    /// Failures the sink handled itself.
    pub failures: u64,
    /// The sink's own named counters.
    pub custom: BTreeMap<String, u64>,
}

impl Reported {
    pub(crate) fn add(&mut self, status: &GuestStatus) {
        self.written = self.written.saturating_add(status.written);
        self.warnings = self.warnings.saturating_add(status.warnings);
        self.filtered = self.filtered.saturating_add(status.filtered);
        self.failures = self.failures.saturating_add(status.failures);
        for (name, n) in &status.custom {
            let entry = self.custom.entry(name.clone()).or_default();
            *entry = entry.saturating_add(*n);
        }
    }

    fn merge(&mut self, other: &Reported) {
        self.written += other.written;
        self.warnings += other.warnings;
        self.filtered += other.filtered;
        self.failures += other.failures;
        for (name, n) in &other.custom {
            *self.custom.entry(name.clone()).or_default() += n;
        }
    }
}

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
    /// Wall-clock time from the first record read to the last checkpoint
    /// committed (without the start-up, a Kafka group's join, or closing);
    /// zero if nothing was committed.
    #[serde(serialize_with = "secs")]
    pub active: Duration,
    /// How the run ended.
    pub outcome: Outcome,
    /// Peak resident memory of the whole process, in bytes (Linux only).
    pub peak_rss: Option<u64>,
    /// Per sink, summed over its instances.
    pub sinks: Vec<SinkMetrics>,
    /// Per sink instance: each (sink, partition, lane).
    pub instances: Vec<LaneStatus>,
    /// Per partition read: records, commits, pauses and lag.
    pub partitions: Vec<PartitionStatus>,
}

/// What happened to one partition of the source.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionStatus {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// Records read from it.
    pub records: u64,
    /// Checkpoints committed while it was assigned.
    pub commits: u64,
    /// Backpressure waits of its instances.
    pub pauses: u64,
    /// Records behind the end of the partition, when the source knows
    /// (Kafka: the consumer lag librdkafka last reported).
    pub lag: Option<u64>,
}

/// The counters of one sink's instance for one partition and lane.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LaneStatus {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The lane.
    pub lane: u32,
    /// Its counters (`name` is the sink's).
    pub metrics: SinkMetrics,
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
    /// Backpressure waits (each paused the instance's partition and lane).
    pub pauses: u64,
    /// Traps, limits included, and fatal errors: each cost an instance.
    pub traps: u64,
    /// Instances created (probes not counted).
    pub instances: u64,
    /// Partitions and lanes served: one instance at a time each.
    pub lanes: u64,
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
    /// What the sink reported about itself, if it reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported: Option<Reported>,
    /// What the sink did on the network (requests, bytes, errors by class).
    #[serde(skip_serializing_if = "NetStats::is_empty")]
    pub net: NetStats,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl SinkMetrics {
    /// Metrics for a sink named `name`.
    pub fn new(name: &str) -> Self {
        SinkMetrics { name: name.to_string(), ..Default::default() }
    }

    /// Adds what an instance's calls cost.
    pub(crate) fn absorb(&mut self, stats: &CallStats) {
        self.calls += stats.calls;
        self.calls_ok += stats.calls_ok;
        self.fuel += stats.fuel;
        self.peak_memory = self.peak_memory.max(stats.peak_memory);
        self.add_time += stats.add_time;
        self.flush_time += stats.flush_time;
        self.net.add(&stats.net);
    }

    /// Adds a sink status report.
    pub(crate) fn report(&mut self, status: &GuestStatus) {
        self.reported.get_or_insert_with(Reported::default).add(status);
    }

    /// Adds another lane's metrics of the same sink.
    pub fn merge(&mut self, other: &SinkMetrics) {
        self.added += other.added;
        self.rejected += other.rejected;
        self.retries += other.retries;
        self.pauses += other.pauses;
        self.traps += other.traps;
        self.instances += other.instances;
        self.lanes += other.lanes;
        self.fuel += other.fuel;
        self.peak_memory = self.peak_memory.max(other.peak_memory);
        self.add_time += other.add_time;
        self.flush_time += other.flush_time;
        self.calls += other.calls;
        self.calls_ok += other.calls_ok;
        self.net.add(&other.net);
        if let Some(reported) = &other.reported {
            self.reported.get_or_insert_with(Reported::default).merge(reported);
        }
    }

    /// Sets the shares computed from the counters.
    pub fn finish(mut self) -> Self {
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
            "  read {}  committed {}  malformed {}  checkpoints {}  ({:.0} records/s from the first record)",
            self.read,
            self.committed,
            self.malformed,
            self.checkpoints,
            self.read as f64 / self.active.as_secs_f64().max(1e-9)
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
            if let Some(r) = &s.reported {
                write!(
                    f,
                    "  {:<16} reported: written {}  warnings {}  filtered {}  failures {}",
                    "", r.written, r.warnings, r.filtered, r.failures
                )?;
                for (name, n) in &r.custom {
                    write!(f, "  {name} {n}")?;
                }
                writeln!(f)?;
            }
            let n = &s.net;
            if !n.is_empty() {
                writeln!(
                    f,
                    "  {:<16} network: requests {}  sent {}  received {}  denied {}  connect errors {}  timeouts {}  limited {}  4xx {}  5xx {}",
                    "",
                    n.requests,
                    Bytes(n.bytes_sent),
                    Bytes(n.bytes_received),
                    n.denied,
                    n.connect_errors,
                    n.timeouts,
                    n.limited,
                    n.http_4xx,
                    n.http_5xx
                )?;
            }
        }
        if self.partitions.len() > 1 || self.partitions.iter().any(|p| p.lag.is_some()) {
            writeln!(f, "  {:<24} {:>10} {:>8} {:>7} {:>10}", "partition", "records", "commits", "pauses", "lag")?;
            for p in &self.partitions {
                let lag = p.lag.map_or_else(|| "-".to_string(), |l| l.to_string());
                let name = format!("{}[{}]", p.topic, p.partition);
                writeln!(f, "  {name:<24} {:>10} {:>8} {:>7} {lag:>10}", p.records, p.commits, p.pauses)?;
            }
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
