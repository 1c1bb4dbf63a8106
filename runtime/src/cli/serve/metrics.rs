//! What `serve` measures: Prometheus metrics on `/metrics` (read from the
//! hosted pipelines at each scrape, plus latency histograms), and the
//! accounting of each checkpoint, per tenant, appended as JSON lines.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use sinkbox::{CheckpointReport, Observer, SinkMetrics};

use super::Hosted;

/// Latency buckets: 1 ms to about 65 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 17)
}

/// One hosted pipeline's observer: histograms and accounting, kept across
/// its runs (a reload starts a new run).
#[derive(Debug)]
pub struct Observed {
    tenant: String,
    pipeline: String,
    pub checkpoint_latency: Histogram,
    pub flush_latency: Mutex<BTreeMap<String, Histogram>>,
    /// What the tenant used, summed (shared by its pipelines).
    usage: Arc<Usage>,
    books: Option<Arc<Books>>,
    /// The previous report of the current run: totals and when.
    last: Mutex<(Instant, Vec<SinkMetrics>)>,
    /// Runs started, for the accounting log.
    pub run: AtomicU64,
    checkpoints: AtomicU64,
}

/// What one tenant used, over all its pipelines and runs.
#[derive(Debug, Default)]
pub struct Usage {
    pub records: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub fuel: AtomicU64,
    /// Guest time in microseconds.
    pub guest_micros: AtomicU64,
    /// Linear memory held over time, in byte-seconds.
    pub memory_byte_seconds: AtomicU64,
    pub checkpoints: AtomicU64,
}

/// The accounting log: one JSON line per committed checkpoint.
#[derive(Debug)]
pub struct Books {
    path: PathBuf,
    file: Mutex<File>,
    failed: AtomicU64,
}

impl Books {
    pub fn open(path: &Path) -> anyhow::Result<Books> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Books { path: path.to_path_buf(), file: Mutex::new(file), failed: AtomicU64::new(0) })
    }

    fn append(&self, line: &serde_json::Value) {
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = writeln!(file, "{line}") {
            // Said once per 1000 failures, so a full disk does not flood the log.
            if self.failed.fetch_add(1, Ordering::Relaxed).is_multiple_of(1000) {
                tracing::error!("cannot append to the accounting log {}: {e}", self.path.display());
            }
        }
    }
}

impl Observed {
    pub fn new(tenant: &str, pipeline: &str, usage: Arc<Usage>, books: Option<Arc<Books>>) -> Observed {
        Observed {
            tenant: tenant.to_string(),
            pipeline: pipeline.to_string(),
            checkpoint_latency: Histogram::new(latency_buckets()),
            flush_latency: Mutex::default(),
            usage,
            books,
            last: Mutex::new((Instant::now(), Vec::new())),
            run: AtomicU64::new(0),
            checkpoints: AtomicU64::new(0),
        }
    }

    /// A new run starts: its sinks' totals start from zero.
    pub fn new_run(&self) {
        self.run.fetch_add(1, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = (Instant::now(), Vec::new());
    }
}

/// Sums what a checkpoint's sinks cost since `before`.
fn delta(now: &[SinkMetrics], before: &[SinkMetrics], elapsed: Duration) -> (u64, Duration, u64, f64) {
    let (mut fuel, mut guest, mut sent, mut memory_seconds) = (0, Duration::ZERO, 0, 0.0);
    for sink in now {
        let prev = before.iter().find(|b| b.name == sink.name);
        fuel += sink.fuel - prev.map_or(0, |p| p.fuel.min(sink.fuel));
        let time = sink.add_time + sink.flush_time;
        guest += time.saturating_sub(prev.map_or(Duration::ZERO, |p| p.add_time + p.flush_time));
        sent += sink.net.bytes_sent - prev.map_or(0, |p| p.net.bytes_sent.min(sink.net.bytes_sent));
        // An upper bound: each instance held its sink's peak memory.
        memory_seconds += sink.peak_memory as f64 * sink.lanes.max(1) as f64 * elapsed.as_secs_f64();
    }
    (fuel, guest, sent, memory_seconds)
}

impl Observer for Observed {
    fn committed(&self, report: &CheckpointReport) {
        self.checkpoint_latency.observe(report.latency.as_secs_f64());
        let (elapsed, (fuel, guest, sent, memory_seconds)) = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let elapsed = last.0.elapsed();
            let d = delta(&report.sinks, &last.1, elapsed);
            *last = (Instant::now(), report.sinks.clone());
            (elapsed, d)
        };
        let u = &self.usage;
        u.records.fetch_add(report.records, Ordering::Relaxed);
        u.bytes_in.fetch_add(report.bytes, Ordering::Relaxed);
        u.bytes_out.fetch_add(sent, Ordering::Relaxed);
        u.fuel.fetch_add(fuel, Ordering::Relaxed);
        u.guest_micros.fetch_add(guest.as_micros() as u64, Ordering::Relaxed);
        u.memory_byte_seconds.fetch_add(memory_seconds as u64, Ordering::Relaxed);
        u.checkpoints.fetch_add(1, Ordering::Relaxed);
        let checkpoint = self.checkpoints.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(books) = &self.books {
            let time = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            books.append(&serde_json::json!({
                "time": time.as_secs_f64(),
                "tenant": self.tenant,
                "pipeline": self.pipeline,
                "run": self.run.load(Ordering::Relaxed),
                "checkpoint": checkpoint,
                "records": report.records,
                "bytes_in": report.bytes,
                "bytes_out": sent,
                "fuel": fuel,
                "guest_cpu_seconds": guest.as_secs_f64(),
                "memory_byte_seconds": memory_seconds,
                "wall_seconds": elapsed.as_secs_f64(),
                "latency_seconds": report.latency.as_secs_f64(),
            }));
        }
    }

    fn flushed(&self, sink: &str, took: Duration) {
        let mut per_sink = self.flush_latency.lock().unwrap_or_else(|p| p.into_inner());
        per_sink
            .entry(sink.to_string())
            .or_insert_with(|| Histogram::new(latency_buckets()))
            .observe(took.as_secs_f64());
    }
}

/// Every hosted pipeline's metrics, read at each scrape.
#[derive(Debug)]
pub struct Metrics {
    pub pipelines: Arc<Mutex<Vec<Arc<Hosted>>>>,
    pub usage: Arc<Mutex<BTreeMap<String, Arc<Usage>>>>,
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let pipelines = self.pipelines.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let views: Vec<(Arc<Hosted>, super::View)> = pipelines.into_iter().map(|h| (h.clone(), h.view())).collect();
        let base = |h: &Hosted| -> Vec<(&'static str, String)> {
            vec![("tenant", h.tenant.clone()), ("pipeline", h.name.clone())]
        };

        // Per pipeline.
        type PipelineRead = fn(&super::View) -> u64;
        let counters: [(&str, &str, PipelineRead); 4] = [
            ("sinkbox_records_read", "Records read from the source", |v| v.read),
            ("sinkbox_records_committed", "Records committed at checkpoints", |v| v.committed),
            ("sinkbox_input_bytes", "Input bytes read", |v| v.bytes),
            ("sinkbox_reloads", "Reloads that took effect", |v| v.reloads),
        ];
        for (name, help, read) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (h, v) in &views {
                ConstCounter::new(read(v)).encode(family.encode_family(&base(h))?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "sinkbox_pipeline_running",
            "1 while the pipeline runs (paused counts)",
            None,
            MetricType::Gauge,
        )?;
        for (h, v) in &views {
            let up = matches!(v.state, "running" | "paused");
            ConstGauge::new(i64::from(up)).encode(family.encode_family(&base(h))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "sinkbox_pipeline_state",
            "1 for the state the pipeline is in",
            None,
            MetricType::Gauge,
        )?;
        for (h, v) in &views {
            let mut labels = base(h);
            labels.push(("state", v.state.to_string()));
            ConstGauge::new(1).encode(family.encode_family(&labels)?)?;
        }

        // Per sink.
        type SinkRead = fn(&SinkMetrics) -> u64;
        let sink_counters: [(&str, &str, SinkRead); 9] = [
            ("sinkbox_sink_records_added", "Records the sink took (replays counted each time)", |s| s.added),
            ("sinkbox_sink_dead_letters", "Records the sink refused, dead-lettered", |s| s.rejected),
            ("sinkbox_sink_retries", "Checkpoint replays after backpressure or a retryable error", |s| s.retries),
            ("sinkbox_sink_backpressure_waits", "Backpressure waits", |s| s.pauses),
            ("sinkbox_sink_traps", "Traps, limits and fatal errors: each cost an instance", |s| s.traps),
            ("sinkbox_sink_instance_restarts", "Instances started after the first of each lane", |s| {
                s.instances.saturating_sub(s.lanes)
            }),
            ("sinkbox_sink_fuel", "Fuel the sink's calls consumed", |s| s.fuel),
            ("sinkbox_sink_calls", "Guest calls made", |s| s.calls),
            ("sinkbox_sink_network_sent_bytes", "Bytes the sink sent over the network", |s| s.net.bytes_sent),
        ];
        let sinks: Vec<(Vec<(&str, String)>, &SinkMetrics)> = views
            .iter()
            .flat_map(|(h, v)| {
                v.sinks.iter().map(move |sink| {
                    let mut labels = base(h);
                    labels.push(("sink", sink.name.clone()));
                    (labels, sink)
                })
            })
            .collect();
        for (name, help, read) in sink_counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, sink) in &sinks {
                ConstCounter::new(read(sink)).encode(family.encode_family(labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "sinkbox_sink_guest_seconds",
            "Wall-clock time spent in the sink's add and flush calls",
            None,
            MetricType::Counter,
        )?;
        for (labels, sink) in &sinks {
            ConstCounter::new((sink.add_time + sink.flush_time).as_secs_f64()).encode(family.encode_family(labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "sinkbox_sink_errors",
            "Sink errors by class (trap, rejected, retry, and network classes)",
            None,
            MetricType::Counter,
        )?;
        for (labels, sink) in &sinks {
            let n = &sink.net;
            let classes = [
                ("trap", sink.traps),
                ("rejected", sink.rejected),
                ("retry", sink.retries),
                ("net_denied", n.denied),
                ("net_connect", n.connect_errors),
                ("net_timeout", n.timeouts),
                ("net_limited", n.limited),
                ("http_4xx", n.http_4xx),
                ("http_5xx", n.http_5xx),
            ];
            for (class, count) in classes {
                let mut labels = labels.clone();
                labels.push(("class", class.to_string()));
                ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "sinkbox_sink_peak_memory_bytes",
            "Largest linear memory of any of the sink's instances (linear memory never shrinks: a live \
             instance's current size)",
            None,
            MetricType::Gauge,
        )?;
        for (labels, sink) in &sinks {
            ConstGauge::new(i64::try_from(sink.peak_memory).unwrap_or(i64::MAX))
                .encode(family.encode_family(labels)?)?;
        }

        // Per partition.
        let partitions: Vec<(Vec<(&str, String)>, &sinkbox::PartitionStatus)> = views
            .iter()
            .flat_map(|(h, v)| {
                v.partitions.iter().map(move |p| {
                    let mut labels = base(h);
                    labels.extend([("topic", p.topic.clone()), ("partition", p.partition.to_string())]);
                    (labels, p)
                })
            })
            .collect();
        let mut family = encoder.encode_descriptor(
            "sinkbox_partition_records",
            "Records read per partition",
            None,
            MetricType::Counter,
        )?;
        for (labels, p) in &partitions {
            ConstCounter::new(p.records).encode(family.encode_family(labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "sinkbox_partition_lag",
            "Records behind the end of the partition, where the source knows",
            None,
            MetricType::Gauge,
        )?;
        for (labels, p) in &partitions {
            if let Some(lag) = p.lag {
                ConstGauge::new(i64::try_from(lag).unwrap_or(i64::MAX)).encode(family.encode_family(labels)?)?;
            }
        }

        // Latencies.
        let mut family = encoder.encode_descriptor(
            "sinkbox_checkpoint_latency_seconds",
            "From a checkpoint's first flush starting to its commit",
            None,
            MetricType::Histogram,
        )?;
        for (h, _) in &views {
            h.observed.checkpoint_latency.encode(family.encode_family(&base(h))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "sinkbox_flush_latency_seconds",
            "Duration of the sink's flush calls",
            None,
            MetricType::Histogram,
        )?;
        for (h, _) in &views {
            let per_sink = h.observed.flush_latency.lock().unwrap_or_else(|p| p.into_inner());
            for (sink, histogram) in per_sink.iter() {
                let mut labels = base(h);
                labels.push(("sink", sink.clone()));
                histogram.encode(family.encode_family(&labels)?)?;
            }
        }

        // Per tenant: what it used, for billing.
        let usage = self.usage.lock().unwrap_or_else(|p| p.into_inner()).clone();
        type UsageRead = fn(&Usage) -> f64;
        let tenant_counters: [(&str, &str, UsageRead); 7] = [
            ("sinkbox_tenant_records", "Records committed", |u| u.records.load(Ordering::Relaxed) as f64),
            ("sinkbox_tenant_input_bytes", "Input bytes committed", |u| u.bytes_in.load(Ordering::Relaxed) as f64),
            ("sinkbox_tenant_network_sent_bytes", "Bytes its sinks sent", |u| {
                u.bytes_out.load(Ordering::Relaxed) as f64
            }),
            ("sinkbox_tenant_fuel", "Fuel its sinks consumed", |u| u.fuel.load(Ordering::Relaxed) as f64),
            ("sinkbox_tenant_guest_seconds", "Time in its sinks' calls", |u| {
                u.guest_micros.load(Ordering::Relaxed) as f64 / 1e6
            }),
            ("sinkbox_tenant_memory_byte_seconds", "Linear memory held over time (upper bound)", |u| {
                u.memory_byte_seconds.load(Ordering::Relaxed) as f64
            }),
            ("sinkbox_tenant_checkpoints", "Checkpoints committed", |u| u.checkpoints.load(Ordering::Relaxed) as f64),
        ];
        for (name, help, read) in tenant_counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (tenant, u) in &usage {
                let labels: Labels<'_> = vec![("tenant", tenant.as_str())];
                ConstCounter::new(read(u)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
