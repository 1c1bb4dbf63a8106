//! The async, partition-aware core: deadlines that cover host calls,
//! instances that run concurrently, lanes, partitions, snapshots and the
//! 0.2 contract.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use sinkbox::source::{PartitionPosition, SourceBatch};
use sinkbox::{
    Batching, Control, DeadLetters, Error, OnError, PartitionId, Pipeline, Position, RetryPolicy, SinkSpec, Source,
    SourceEvent,
};
use sinkbox_format::{BatchWriter, RecordRef};
use sinkbox_test_artifacts as programs;

use crate::{Scratch, chain, engine, lines};

/// A one-sink pipeline file over `in.jsonl`, `out/` granted as `/out`.
fn pipeline(component: &str, config: &str, sink_extra: &str, pipeline_extra: &str) -> String {
    format!(
        r#"
[pipeline]
batch_size = 10
commit_every = 50
dead_letter = "dead.jsonl"
offsets = "offsets.json"
{pipeline_extra}

[source]
kind = "file"
path = "in.jsonl"

[retry]
base = "1ms"
cap = "5ms"

[[sink]]
name = "t"
component = {component:?}
config = {{ {config} }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}
{sink_extra}
"#
    )
}

fn sorted_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

#[test]
fn a_sink_asleep_in_a_host_call_is_stopped_at_its_deadline_and_recovered_in_every_phase() {
    for phase in ["open", "add", "flush"] {
        let s = Scratch::new(&format!("asleep-{phase}"));
        let input = lines(30);
        s.write("in.jsonl", &input);
        // The first instance sleeps forever in `phase`; later ones behave.
        let config = format!("out = \"/out/out.jsonl\", phase = \"{phase}\", times = 1");
        let started = Instant::now();
        let (status, result) =
            s.run(&pipeline(programs::SLEEPS_IN_HOST, &config, "limits = { timeout = \"500ms\" }", ""));
        let elapsed = started.elapsed();
        result.unwrap_or_else(|e| panic!("{phase}: {}", chain(&e)));
        assert!(elapsed >= Duration::from_millis(500), "{phase}: waited for the deadline ({elapsed:?})");
        assert!(elapsed < Duration::from_secs(10), "{phase}: stopped at the deadline, not later ({elapsed:?})");
        assert_eq!(sorted_lines(&s.read("out/out.jsonl")), sorted_lines(&input), "{phase}: every record once");
        assert_eq!(status.committed, 30, "{phase}");
    }
}

#[test]
fn a_sink_asleep_in_flush_for_30s_under_a_2s_deadline_is_stopped_at_2s() {
    let s = Scratch::new("asleep-30s");
    s.write("in.jsonl", &lines(5));
    let config = "out = \"/out/out.jsonl\", phase = \"flush\", times = 1, sleep_ms = 30000";
    let started = Instant::now();
    let (status, result) = s.run(&pipeline(programs::SLEEPS_IN_HOST, config, "limits = { timeout = \"2s\" }", ""));
    result.unwrap();
    let elapsed = started.elapsed();
    assert!((Duration::from_secs(2)..Duration::from_secs(8)).contains(&elapsed), "{elapsed:?}");
    assert_eq!(status.sinks[0].traps, 1, "the timed-out instance was discarded like a trapped one");
    assert_eq!(s.read("out/out.jsonl"), lines(5));
}

#[test]
fn a_sink_that_always_sleeps_fails_the_pipeline_naming_sink_phase_and_limit() {
    let s = Scratch::new("asleep-always");
    s.write("in.jsonl", &lines(5));
    let config = "out = \"/out/out.jsonl\", phase = \"add\"";
    let toml = pipeline(programs::SLEEPS_IN_HOST, config, "limits = { timeout = \"200ms\" }\non_error = \"fail\"", "");
    let (status, result) = s.run(&toml);
    let err = chain(&result.unwrap_err());
    assert!(err.contains("sink \"t\" exceeded its time limit of 200ms in add"), "{err}");
    assert_eq!(status.committed, 0);
}

#[test]
fn two_slow_sinks_flush_concurrently() {
    let s = Scratch::new("two-slow");
    s.write("in.jsonl", &lines(20));
    let sink = |name: &str| {
        format!(
            "[[sink]]\nname = \"{name}\"\ncomponent = {:?}\nconfig = {{ out = \"/out/{name}.jsonl\", phase = \"flush\", sleep_ms = 700 }}\ngrants = {{ dirs = [{{ host = \"out\", guest = \"/out\", mode = \"rw\" }}] }}\n",
            programs::SLEEPS_IN_HOST
        )
    };
    let toml = format!(
        "[pipeline]\ncommit_every = 1000\noffsets = \"offsets.json\"\n[source]\nkind = \"file\"\npath = \"in.jsonl\"\n{}{}",
        sink("a"),
        sink("b")
    );
    let started = Instant::now();
    let (status, result) = s.run(&toml);
    result.unwrap();
    let elapsed = started.elapsed();
    // Two flushes each (the first snapshot at open, the checkpoint), 0.7 s
    // each: 2.8 s one after another, 1.4 s side by side.
    for sink in &status.sinks {
        assert!(sink.flush_time >= Duration::from_millis(1300), "{}: {:?}", sink.name, sink.flush_time);
    }
    assert!(elapsed < Duration::from_millis(2400), "the sinks flushed one after another: {elapsed:?}");
    assert_eq!(s.read("out/a.jsonl"), lines(20));
    assert_eq!(s.read("out/b.jsonl"), lines(20));
}

/// `n` envelope lines over 5 keys, values `{"k":K,"i":I}`.
fn keyed(n: usize) -> String {
    (0..n).map(|i| format!("{{\"key\":\"k{}\",\"value\":{{\"k\":{},\"i\":{i}}}}}\n", i % 5, i % 5)).collect()
}

#[test]
fn lanes_spread_records_by_key_and_keep_each_keys_order() {
    let s = Scratch::new("lanes");
    s.write("in.jsonl", &keyed(300));
    let toml = pipeline("builtin:file", "path = \"/out/out-{lane}.jsonl\"", "lanes = 3", "");
    let (status, result) = s.run(&toml);
    result.unwrap();
    assert_eq!(status.instances.len(), 3, "one instance per lane");
    assert_eq!(status.sinks[0].lanes, 3);
    let mut all = Vec::new();
    let mut key_lane = std::collections::HashMap::new();
    for lane in 0..3 {
        let text = s.read(&format!("out/out-{lane}.jsonl"));
        let mut last = std::collections::HashMap::new();
        for line in text.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            let (k, i) = (v["k"].as_u64().unwrap(), v["i"].as_u64().unwrap());
            assert_eq!(*key_lane.entry(k).or_insert(lane), lane, "key {k} stays in one lane");
            assert!(last.insert(k, i).is_none_or(|prev| prev < i), "key {k} in order");
            all.push(i);
        }
    }
    all.sort_unstable();
    assert_eq!(all, (0..300).collect::<Vec<_>>(), "every record exactly once");
    assert!(key_lane.values().collect::<std::collections::HashSet<_>>().len() > 1, "keys spread over lanes");
}

#[test]
fn lanes_sharing_one_output_are_refused() {
    let s = Scratch::new("lanes-one-output");
    s.write("in.jsonl", &keyed(10));
    let (_, result) = s.run(&pipeline("builtin:file", "path = \"/out/out.jsonl\"", "lanes = 2", ""));
    let err = chain(&result.unwrap_err());
    assert!(err.contains("put {lane} in the path"), "{err}");
}

#[test]
fn a_trap_in_one_lane_replays_only_that_lane() {
    let s = Scratch::new("lane-trap");
    let mut input = keyed(100);
    input.push_str("{\"key\":\"k1\",\"value\":{\"poison\":true}}\n");
    s.write("in.jsonl", &input);
    let toml = pipeline(programs::POISON, "out = \"/out/out-{lane}.jsonl\"", "lanes = 2", "");
    let (status, result) = s.run(&toml);
    result.unwrap();
    let trapped: Vec<_> = status.instances.iter().filter(|i| i.metrics.traps > 0).collect();
    let clean: Vec<_> = status.instances.iter().filter(|i| i.metrics.traps == 0).collect();
    assert_eq!((trapped.len(), clean.len()), (1, 1), "{:?}", status.instances);
    assert_eq!(clean[0].metrics.instances, 1, "the other lane kept its instance");
    assert_eq!(clean[0].metrics.retries, 0);
    let dead = s.read("dead.jsonl");
    assert_eq!(dead.lines().count(), 1, "{dead}");
    assert!(dead.contains("poison"));
}

/// Two partitions with the same offsets, each record's value `{"p":P,"n":N}`;
/// revokes partition 0 after its last batch.
struct TwoPartitions {
    events: Vec<SourceEvent>,
}

impl TwoPartitions {
    fn new() -> TwoPartitions {
        let batch = |partition: u32, offsets: std::ops::Range<u64>| {
            let mut w = BatchWriter::default();
            for n in offsets.clone() {
                let value = format!("{{\"p\":{partition},\"n\":{n}}}");
                w.push(&RecordRef { offset: n, timestamp: None, key: None, value: value.as_bytes(), headers: &[] });
            }
            let end = Position {
                partitions: [0, 1]
                    .iter()
                    .map(|&p| PartitionPosition {
                        topic: "two".into(),
                        partition: p,
                        next_offset: if p == partition { offsets.end } else { 0 },
                        byte: None,
                        stream: None,
                    })
                    .collect(),
            };
            SourceEvent::Batch(SourceBatch {
                topic: "two".into(),
                partition,
                records: w,
                malformed: vec![],
                end,
                bytes: 0,
            })
        };
        let p0 = PartitionId { topic: "two".into(), partition: 0 };
        let events = vec![
            SourceEvent::Assigned(vec![PartitionId { topic: "two".into(), partition: 1 }]),
            batch(0, 0..15),
            batch(1, 0..15),
            batch(0, 15..30),
            SourceEvent::Revoked(vec![p0]),
            batch(1, 15..30),
        ];
        TwoPartitions { events: events.into_iter().rev().collect() }
    }
}

impl Source for TwoPartitions {
    fn describe(&self) -> String {
        "two partitions".into()
    }

    fn partitions(&self) -> Vec<PartitionId> {
        vec![PartitionId { topic: "two".into(), partition: 0 }]
    }

    fn next_batch(&mut self, _max: usize, _max_bytes: usize) -> sinkbox::Result<Option<SourceBatch>> {
        unreachable!("next_event is overridden")
    }

    fn next_event(&mut self, _max: usize, _max_bytes: usize) -> sinkbox::Result<Option<SourceEvent>> {
        Ok(self.events.pop())
    }
}

#[test]
fn partitions_get_their_own_instances_and_dead_letters_name_the_partition() {
    let s = Scratch::new("partitions");
    std::fs::create_dir_all(s.path("out")).unwrap();
    let component = sinkbox::config::load_component(engine(), programs::REJECTS_EVERY_10TH, ".".as_ref()).unwrap();
    let spec = SinkSpec {
        name: "r".into(),
        component,
        config: r#"{"out":"/out/p{partition}.jsonl"}"#.into(),
        limits: Default::default(),
        grants: sinkbox::Grants {
            dirs: vec![sinkbox::DirGrant { host: s.path("out"), guest: "/out".into(), writable: true }],
            ..Default::default()
        },
        on_error: OnError::Fail,
        lanes: 1,
    };
    let pipeline = Pipeline {
        name: "two".into(),
        engine: engine().clone(),
        source: Box::new(TwoPartitions::new()),
        sinks: vec![spec],
        batching: Batching::default().commit_every(20),
        retry: RetryPolicy::default(),
        offsets: None,
        dead_letters: DeadLetters::new(s.path("dead.jsonl")),
        start: Default::default(),
    };
    let (status, result) = pipeline.run(&Control::default());
    result.unwrap();
    assert_eq!(status.instances.len(), 2, "one instance per partition");
    let mut dead: Vec<(u64, u64)> = s
        .read("dead.jsonl")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["partition"].as_u64().unwrap(), v["offset"].as_u64().unwrap())
        })
        .collect();
    dead.sort_unstable();
    assert_eq!(dead, vec![(0, 9), (0, 19), (0, 29), (1, 9), (1, 19), (1, 29)]);
    for p in 0..2 {
        let out = s.read(&format!("out/p{p}.jsonl"));
        let kept: Vec<String> = (0..30).filter(|n| n % 10 != 9).map(|n| format!("{{\"p\":{p},\"n\":{n}}}")).collect();
        assert_eq!(out.lines().collect::<Vec<_>>(), kept, "partition {p}");
    }
}

#[test]
fn a_component_of_contract_0_1_is_refused_naming_both_versions() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/blackhole-contract-0.1.wasm");
    let err = match engine().load_file(path.as_ref()) {
        Err(e) => e,
        Ok(_) => panic!("a 0.1 component loaded"),
    };
    assert!(matches!(err, Error::ContractVersion { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("sinkbox:sink@0.1.0") && text.contains("sinkbox:sink@0.2.0"), "{text}");
}

#[test]
fn snapshots_are_committed_with_the_offsets_and_roll_back_an_uncommitted_checkpoint() {
    let s = Scratch::new("snapshots");
    let input = lines(100);
    s.write("in.jsonl", &input);
    let toml = pipeline("builtin:file", "path = \"/out/out.jsonl\"", "", "");
    let (_, result) = s.run(&toml);
    result.unwrap();
    let stored: Value = serde_json::from_str(&s.read("offsets.json")).unwrap();
    let snapshots = stored["snapshots"].as_object().expect("snapshots in the offset store");
    assert_eq!(snapshots.len(), 1, "{stored}");
    // What a checkpoint wrote before a crash, never committed.
    let mut out = std::fs::OpenOptions::new().append(true).open(s.path("out/out.jsonl")).unwrap();
    std::io::Write::write_all(&mut out, b"{\"id\":\"half-written\"}\n{\"id\":").unwrap();
    drop(out);
    let more = lines(150);
    s.write("in.jsonl", &more);
    let (status, result) = s.run(&toml);
    result.unwrap();
    assert_eq!(s.read("out/out.jsonl"), more, "rolled back to the snapshot, then the new records once");
    assert_eq!(status.committed, 50);
}

#[test]
fn a_file_sink_output_changed_outside_is_refused_with_what_changed() {
    for (case, change, expected) in
        [("truncated", "truncate", "bytes were committed to it"), ("deleted", "delete", "bytes were committed to it")]
    {
        let s = Scratch::new(&format!("changed-{case}"));
        s.write("in.jsonl", &lines(60));
        let toml = pipeline("builtin:file", "path = \"/out/out.jsonl\"", "", "");
        s.run(&toml).1.unwrap();
        match change {
            "truncate" => std::fs::write(s.path("out/out.jsonl"), b"").unwrap(),
            _ => std::fs::remove_file(s.path("out/out.jsonl")).unwrap(),
        }
        s.write("in.jsonl", &lines(90));
        let (status, result) = s.run(&toml);
        let err = chain(&result.unwrap_err());
        assert!(err.contains(expected) && err.contains("/out/out.jsonl"), "{case}: {err}");
        assert_eq!(status.committed, 0, "{case}");
    }
}

#[test]
fn an_output_truncated_or_deleted_during_a_run_is_detected_at_the_next_flush() {
    use sinkbox::{Failure, Fault, Grants, Interrupt, SandboxLimits, SinkInstance};
    for change in ["truncate", "delete"] {
        let s = Scratch::new(&format!("changed-mid-run-{change}"));
        std::fs::create_dir_all(s.path("out")).unwrap();
        let component = sinkbox::config::load_component(engine(), "builtin:file", ".".as_ref()).unwrap();
        let grants = Grants {
            dirs: vec![sinkbox::DirGrant { host: s.path("out"), guest: "/out".into(), writable: true }],
            ..Default::default()
        };
        let context = sinkbox::check::context(None, false);
        let fault = sinkbox::runtime().unwrap().block_on(async {
            let mut i =
                SinkInstance::new(engine(), &component, "f", SandboxLimits::default(), &grants, Interrupt::never())
                    .await
                    .unwrap();
            i.open(r#"{"path":"/out/out.jsonl"}"#, &context).await.unwrap();
            i.add(&sinkbox::check::batch(0..10)).await.unwrap();
            i.flush().await.unwrap();
            match change {
                "truncate" => std::fs::write(s.path("out/out.jsonl"), b"").unwrap(),
                _ => std::fs::remove_file(s.path("out/out.jsonl")).unwrap(),
            }
            i.add(&sinkbox::check::batch(10..20)).await.unwrap();
            match i.flush().await {
                Err(Failure::Fault(f)) => f.fault,
                other => panic!("{change}: the flush should fail, got {other:?}"),
            }
        });
        let Fault::Fatal(message) = fault else { panic!("{change}: {fault:?}") };
        let expected = if change == "truncate" { "changed under the sink" } else { "was deleted" };
        assert!(message.contains(expected) && message.contains("/out/out.jsonl"), "{change}: {message}");
    }
}

#[test]
fn sinks_report_their_own_counts() {
    let s = Scratch::new("reported");
    s.write("in.jsonl", &lines(70));
    let (status, result) = s.run(&pipeline("builtin:blackhole", "", "", ""));
    result.unwrap();
    let reported = status.sinks[0].reported.as_ref().expect("the blackhole reports");
    assert_eq!(reported.written, 70);
    assert!(reported.custom["bytes"] > 0);
}

#[test]
fn a_stop_while_a_guest_is_stuck_in_a_call_ends_the_run_within_the_grace() {
    let s = Scratch::new("stop-stuck");
    s.write("in.jsonl", &lines(30));
    let config = "out = \"/out/out.jsonl\", phase = \"add\"";
    let toml = pipeline(programs::SLEEPS_IN_HOST, config, "limits = { timeout = \"60s\" }", "");
    let control = Arc::new(Control::default());
    let stopper = {
        let control = control.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            control.stop();
        })
    };
    let started = Instant::now();
    let (status, result) = s.run_with(&toml, &control);
    stopper.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
    assert!(matches!(result, Err(Error::Interrupted { .. })), "{result:?}");
    assert_eq!(status.outcome, sinkbox::Outcome::Interrupted);
    assert_eq!(status.committed, 0);
}

#[test]
fn a_sink_cannot_hold_more_host_handles_than_its_limit() {
    let s = Scratch::new("fd-hog");
    s.write("in.jsonl", &lines(5));
    let config = "out = \"/out/out.jsonl\", times = 5000";
    let toml = pipeline(programs::FD_HOG, config, "limits = { handles = 256 }\non_error = \"fail\"", "");
    let (status, result) = s.run(&toml);
    let err = chain(&result.unwrap_err());
    assert!(err.contains("sink \"t\" exceeded its limit of 256 open handles in flush"), "{err}");
    assert_eq!(status.committed, 0);
    let hogged = std::fs::read_dir(s.path("out")).unwrap().count();
    assert!(hogged < 300, "{hogged} files opened under a limit of 256 handles");
}

#[test]
fn records_of_20_kib_pass_the_default_limits() {
    let s = Scratch::new("big-records");
    let pad = "x".repeat(20 << 10);
    let input: String = (0..3000).map(|i| format!("{{\"id\":{i},\"pad\":\"{pad}\"}}\n")).collect();
    s.write("in.jsonl", &input);
    let toml = pipeline("builtin:file", "path = \"/out/out.jsonl\"", "", "")
        .replace("batch_size = 10\ncommit_every = 50\n", "");
    let (status, result) = s.run(&toml);
    result.unwrap();
    assert_eq!((status.committed, status.sinks[0].rejected, status.sinks[0].traps), (3000, 0, 0));
    assert!(s.read("dead.jsonl").is_empty());
    assert_eq!(std::fs::metadata(s.path("out/out.jsonl")).unwrap().len(), input.len() as u64);
}
