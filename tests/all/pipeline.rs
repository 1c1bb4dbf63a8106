//! The checkpoint loop over well-behaved and misbehaving sinks: one test
//! per behaviour, asserting output, dead letters, offsets and error text.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use sinkbox::Control;
use sinkbox_test_artifacts as programs;

use crate::{Scratch, chain, lines};

/// A one-sink pipeline over `in.jsonl` with small batches (10) and
/// checkpoints (50), fast retries, and `out/` granted as `/out`.
#[derive(Default)]
struct Spec<'a> {
    component: &'a str,
    /// The sink's `config` table body.
    config: &'a str,
    /// The sink's `limits` table body.
    limits: &'a str,
    on_error: &'a str,
    /// Extra `[retry]` lines.
    retry: &'a str,
    /// Extra `[pipeline]` lines.
    pipeline: &'a str,
}

impl Spec<'_> {
    fn toml(&self) -> String {
        let on_error = if self.on_error.is_empty() { "dead-letter" } else { self.on_error };
        let config = if self.config.is_empty() { "out = \"/out/out.jsonl\"" } else { self.config };
        format!(
            r#"
[pipeline]
batch_size = 10
commit_every = 50
dead_letter = "dead.jsonl"
offsets = "offsets.json"
{pipeline}

[source]
kind = "file"
path = "in.jsonl"

[retry]
base = "1ms"
cap = "5ms"
{retry}

[[sink]]
name = "t"
component = {component:?}
on_error = "{on_error}"
config = {{ {config} }}
limits = {{ {limits} }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}
"#,
            pipeline = self.pipeline,
            retry = self.retry,
            component = self.component,
            limits = self.limits,
        )
    }
}

fn dead_letters(scratch: &Scratch) -> Vec<Value> {
    scratch.read("dead.jsonl").lines().map(|l| serde_json::from_str(l).expect("dead letter is JSON")).collect()
}

fn committed_offset(scratch: &Scratch) -> Option<u64> {
    let text = std::fs::read_to_string(scratch.path("offsets.json")).ok()?;
    let v: Value = serde_json::from_str(&text).expect("offsets JSON");
    v["position"]["partitions"][0]["next_offset"].as_u64()
}

/// A scratch directory whose `in.jsonl` holds `n` lines; returns the lines.
fn scratch_with_input(name: &str, n: usize) -> (Scratch, String) {
    let s = Scratch::new(name);
    let input = lines(n);
    s.write("in.jsonl", &input);
    (s, input)
}

/// Input lines except those at the given offsets.
fn without(input: &str, offsets: &[usize]) -> String {
    input.lines().enumerate().filter(|(i, _)| !offsets.contains(i)).map(|(_, l)| format!("{l}\n")).collect()
}

#[test]
fn slow_flushes_overlap_the_next_checkpoints_which_stay_commit_every_long() {
    // Each flush spins 30 ms; the loop closes the next checkpoints (up to
    // four flushes in flight) meanwhile, and commits them in order.
    let (s, input) = scratch_with_input("slow-flushes", 500);
    let spec = Spec {
        component: programs::SLOW_FLUSH,
        config: "out = \"/out/out.jsonl\", sleep_ms = 30",
        ..Default::default()
    };
    let (status, result) = s.run(&spec.toml());
    result.unwrap();
    assert_eq!(s.read("out/out.jsonl"), input);
    assert_eq!(committed_offset(&s), Some(500));
    assert_eq!((status.read, status.committed, status.checkpoints), (500, 500, 10));
    assert_eq!(status.partitions.iter().map(|p| p.commits).sum::<u64>(), 10);
}

#[test]
fn well_behaved_sink_writes_every_record_once_and_commits_all() {
    let (s, input) = scratch_with_input("well-behaved", 123);
    let (status, result) = s.run(&Spec { component: programs::WELL_BEHAVED, ..Default::default() }.toml());
    result.unwrap();
    assert_eq!(s.read("out/out.jsonl"), input);
    assert_eq!(committed_offset(&s), Some(123));
    assert_eq!((status.read, status.committed, status.checkpoints), (123, 123, 3));
    let sink = &status.sinks[0];
    assert_eq!((sink.added, sink.rejected, sink.retries, sink.traps, sink.instances), (123, 0, 0, 0, 1));
    assert!(sink.fuel > 0 && sink.peak_memory > 0, "fuel is on in the test engine");
    assert_eq!(sink.success_percent, 100.0);
    assert!(dead_letters(&s).is_empty());
}

#[test]
fn backpressure_aborts_waits_and_replays_without_duplicates() {
    let (s, input) = scratch_with_input("backpressure", 100);
    let config = "out = \"/out/out.jsonl\", times = 3, sleep_ms = 20";
    let started = std::time::Instant::now();
    let (status, result) =
        s.run(&Spec { component: programs::BACKPRESSURE_THEN_OK, config, ..Default::default() }.toml());
    result.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(60), "waited retry-after three times");
    assert_eq!(s.read("out/out.jsonl"), input);
    assert_eq!(status.sinks[0].retries, 3);
    assert_eq!(status.sinks[0].traps, 0);
    assert_eq!(status.sinks[0].added, 100);
}

#[test]
fn retryable_flush_is_retried_with_backoff() {
    let (s, input) = scratch_with_input("retryable", 100);
    let config = "out = \"/out/out.jsonl\", times = 2";
    let (status, result) = s.run(&Spec { component: programs::RETRYABLE_THEN_OK, config, ..Default::default() }.toml());
    result.unwrap();
    assert_eq!(s.read("out/out.jsonl"), input);
    assert_eq!(status.sinks[0].retries, 2);
    assert_eq!(committed_offset(&s), Some(100));
}

#[test]
fn retryable_exhausted_stops_and_leaves_the_checkpoint_uncommitted() {
    let s = Scratch::new("retryable-exhausted");
    s.write("in.jsonl", &lines(100));
    let config = "out = \"/out/out.jsonl\", times = 1000";
    let spec = Spec { component: programs::RETRYABLE_THEN_OK, config, retry: "max_attempts = 3", ..Default::default() };
    let (status, result) = s.run(&spec.toml());
    let err = result.unwrap_err();
    assert_eq!(
        chain(&err),
        "sink \"t\" still failing after 3 attempts; offsets from the start stay uncommitted: \
         sink \"t\" failed, retryably: destination unavailable (attempt 3) in flush"
    );
    assert_eq!(committed_offset(&s), None);
    assert_eq!(status.committed, 0);
    assert_eq!(s.read("out/out.jsonl"), "");
}

#[test]
fn rejected_records_go_to_the_dead_letter_queue_and_the_rest_is_written() {
    let (s, input) = scratch_with_input("rejects", 100);
    let (status, result) = s.run(&Spec { component: programs::REJECTS_EVERY_10TH, ..Default::default() }.toml());
    result.unwrap();
    let rejected: Vec<usize> = (0..100).filter(|i| i % 10 == 9).collect();
    assert_eq!(s.read("out/out.jsonl"), without(&input, &rejected));
    let letters = dead_letters(&s);
    let offsets: Vec<u64> = letters.iter().map(|l| l["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, rejected.iter().map(|&o| o as u64).collect::<Vec<_>>());
    assert_eq!(letters[0]["sink"], "t");
    assert_eq!(letters[0]["reason"], "offset 9 ends in 9");
    assert_eq!(letters[0]["value"], "{\"id\":9,\"name\":\"user-9\"}");
    assert!(letters[0]["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!((status.sinks[0].added, status.sinks[0].rejected), (90, 10));
    assert_eq!(status.sinks[0].success_percent, 90.0);
    assert_eq!(committed_offset(&s), Some(100));
}

#[test]
fn a_run_stops_when_dead_letters_pass_their_share_of_the_records_read() {
    // One record in ten is rejected: under a share of 5%, the run stops
    // once 20 records were read, with the checkpoint uncommitted.
    let (s, _) = scratch_with_input("dead-share", 1000);
    let pipeline = "max_dead_letter_share = 0.05\ndead_letter_share_after = 20";
    let (status, result) =
        s.run(&Spec { component: programs::REJECTS_EVERY_10TH, pipeline, ..Default::default() }.toml());
    let err = result.unwrap_err();
    let sinkbox::Error::DeadLetterLimit {
        written, limit: sinkbox::DeadLetterLimit::Share { read, share, max }, ..
    } = &err
    else {
        panic!("{}", chain(&err))
    };
    assert_eq!(*max, 0.05);
    assert!(*share > 0.05 && *read >= 20 && *written >= 2, "{}", chain(&err));
    let text = chain(&err);
    assert!(text.contains(&format!("wrote {written} dead letters to ")), "{text}");
    assert!(text.contains("records read, more than its limit (max_dead_letter_share = 0.05)"), "{text}");
    assert!(status.committed < 1000, "stopped early: {}", status.committed);
    assert!(committed_offset(&s).unwrap_or(0) < 1000);
    // Below its minimum the share does not apply: 100 records, 10% of them
    // dead letters, finish.
    let (s, _) = scratch_with_input("dead-share-few", 100);
    let pipeline = "max_dead_letter_share = 0.05\ndead_letter_share_after = 1000";
    let (_, result) = s.run(&Spec { component: programs::REJECTS_EVERY_10TH, pipeline, ..Default::default() }.toml());
    result.unwrap();
    assert_eq!(dead_letters(&s).len(), 10);
}

#[test]
fn a_backpressure_wait_the_sink_asks_for_is_cut_to_max_wait() {
    // backpressure(u32::MAX): 49 days, asked for once.
    let (s, input) = scratch_with_input("backpressure-max-wait", 30);
    let config = "out = \"/out/out.jsonl\", times = 1, sleep_ms = 4294967295";
    let started = std::time::Instant::now();
    let (status, result) = s.run(
        &Spec {
            component: programs::BACKPRESSURE_THEN_OK,
            config,
            retry: "max_wait = \"400ms\"",
            ..Default::default()
        }
        .toml(),
    );
    result.unwrap();
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(s.read("out/out.jsonl"), input);
    assert_eq!((status.sinks[0].retries, status.sinks[0].added), (1, 30));
}

#[test]
fn recovering_one_checkpoint_stops_at_max_retry_time_naming_it() {
    // Every flush is retryable, and the attempts would last for long.
    let (s, _) = scratch_with_input("max-retry-time", 30);
    let config = "out = \"/out/out.jsonl\", times = 100000";
    let retry = "max_attempts = 1000\nmax_retry_time = \"300ms\"";
    let started = std::time::Instant::now();
    let (status, result) =
        s.run(&Spec { component: programs::RETRYABLE_THEN_OK, config, retry, ..Default::default() }.toml());
    let err = result.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, sinkbox::Error::RetryTimeUp { .. }), "{}", chain(&err));
    let text = chain(&err);
    assert!(
        text.starts_with(
            "sink \"t\" still failing after 300ms recovering one checkpoint (max_retry_time); offsets from "
        ),
        "{text}"
    );
    assert!(text.contains("sink \"t\" failed, retryably: destination unavailable (attempt"), "{text}");
    assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(status.committed, 0);
}

#[test]
fn a_sink_over_its_disk_quota_has_its_write_refused_and_the_run_stops_naming_the_quota() {
    // 100 lines of about 25 bytes: a checkpoint of 50 is over 1 KiB.
    let (s, _) = scratch_with_input("disk-quota", 100);
    let spec = Spec {
        component: "builtin:file",
        config: "path = \"/out/out.jsonl\"",
        limits: "disk = \"1KiB\"",
        ..Default::default()
    };
    let (status, result) = s.run(&spec.toml());
    let err = result.unwrap_err();
    let text = chain(&err);
    assert!(matches!(err, sinkbox::Error::GaveUp { .. }), "{text}");
    // The host says what happened in its own words; the guest's view of
    // the refused write (through the preview1 adapter, an I/O error)
    // follows.
    assert!(
        text.contains(
            "sink \"t\" exceeded its disk quota of 1 KiB in /out (a write was refused: no space left on device) in \
             flush (the sink said: cannot write /out/out.jsonl: "
        ),
        "{text}"
    );
    // Nothing is committed past what was flushed, and no record is blamed.
    assert_eq!(committed_offset(&s).unwrap_or(0), 0);
    assert_eq!(status.committed, 0);
    assert!(dead_letters(&s).is_empty());
    let written = std::fs::metadata(s.path("out/out.jsonl")).map_or(0, |m| m.len());
    assert!(written <= 1024, "{written}");
}

#[test]
fn after_a_full_disk_is_freed_the_retry_on_a_fresh_instance_succeeds() {
    // The quota plays the full disk: 3 KiB of it are taken by a file that
    // is deleted while the sink backs off.
    let (s, input) = scratch_with_input("disk-freed", 50);
    std::fs::create_dir_all(s.path("out")).unwrap();
    s.write("out/filler", &"x".repeat(3 << 10));
    let spec = Spec {
        component: "builtin:file",
        config: "path = \"/out/out.jsonl\"",
        limits: "disk = \"4KiB\"",
        retry: "base = \"1500ms\"\ncap = \"1500ms\"",
        ..Default::default()
    }
    .toml()
    .replace("base = \"1ms\"\ncap = \"5ms\"\n", "");
    let (status, result) = std::thread::scope(|scope| {
        let run = scope.spawn(|| s.run(&spec));
        std::thread::sleep(Duration::from_millis(700));
        std::fs::remove_file(s.path("out/filler")).unwrap();
        run.join().unwrap()
    });
    result.unwrap();
    assert_eq!(s.read("out/out.jsonl"), input);
    assert_eq!(committed_offset(&s), Some(50));
    let sink = &status.sinks[0];
    assert_eq!((sink.retries, sink.added), (1, 50), "one refused flush, then a fresh instance");
    assert!(sink.instances >= 2, "{}", sink.instances);
}

#[test]
fn poison_records_are_isolated_by_bisection_and_dead_lettered() {
    let s = Scratch::new("poison");
    let mut input = lines(100);
    input = input.replace("\"user-17\"", "\"poison-17\"").replace("\"user-62\"", "\"poison-62\"");
    s.write("in.jsonl", &input);
    let (status, result) = s.run(&Spec { component: programs::POISON, ..Default::default() }.toml());
    result.unwrap();
    assert_eq!(s.read("out/out.jsonl"), without(&input, &[17, 62]));
    let letters = dead_letters(&s);
    assert_eq!(letters.len(), 2);
    assert_eq!(letters[0]["offset"], 17);
    assert_eq!(letters[1]["offset"], 62);
    let reason = letters[0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("sink \"t\" trapped in add"), "{reason}");
    assert!(reason.contains("poisoned by the record at offset 17"), "{reason}");
    // Each poison record: a trap, a fresh instance whose replay traps again,
    // then the bisection and a final fresh instance.
    assert_eq!(status.sinks[0].traps, 4);
    assert_eq!(status.sinks[0].rejected, 2);
    assert_eq!(committed_offset(&s), Some(100));
}

#[test]
fn on_error_fail_stops_at_the_second_trap_of_a_checkpoint() {
    let s = Scratch::new("fail-policy");
    s.write("in.jsonl", &lines(30));
    let spec = Spec { component: programs::PANIC_IN_ADD, on_error: "fail", ..Default::default() };
    let (status, result) = s.run(&spec.toml());
    let err = result.unwrap_err();
    let text = chain(&err);
    assert!(text.starts_with("sink \"t\" trapped in add"), "{text}");
    assert!(text.contains("test program panics in add"), "{text}");
    assert_eq!(status.sinks[0].traps, 2);
    assert_eq!(status.sinks[0].instances, 2);
    assert_eq!(committed_offset(&s), None);
}

#[test]
fn a_sink_that_traps_on_every_record_gives_up_after_max_poison() {
    let s = Scratch::new("max-poison");
    s.write("in.jsonl", &lines(30));
    let spec = Spec { component: programs::PANIC_IN_ADD, retry: "max_poison = 2", ..Default::default() };
    let (status, result) = s.run(&spec.toml());
    let text = chain(&result.unwrap_err());
    assert!(text.starts_with("sink \"t\" trapped in add"), "{text}");
    assert_eq!(status.sinks[0].rejected, 2, "two poison records isolated before giving up");
    assert_eq!(dead_letters(&s).len(), 2);
    assert_eq!(committed_offset(&s), None);
}

/// Runs a misbehaving program with `on_error = "fail"` and returns the
/// error chain.
fn failure(name: &str, component: &str, limits: &str, config: &str) -> String {
    let s = Scratch::new(name);
    s.write("in.jsonl", &lines(20));
    let spec = Spec { component, limits, config, on_error: "fail", ..Default::default() };
    let (_, result) = s.run(&spec.toml());
    assert_eq!(committed_offset(&s), None, "{name}: nothing committed");
    chain(&result.expect_err(name))
}

#[test]
fn limits_and_traps_are_reported_by_type_with_sink_phase_and_limit() {
    let out = "out = \"/out/out.jsonl\"";
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        ("open", programs::PANIC_IN_OPEN, "", out, "sink \"t\" trapped in open"),
        (
            "loop",
            programs::INFINITE_LOOP,
            "fuel_per_call = 1000000000000000, timeout = \"200ms\"",
            out,
            "sink \"t\" exceeded its time limit of 200ms in add",
        ),
        (
            "fuel",
            programs::FUEL_BOMB,
            "fuel_per_record = 1000, fuel_per_call = 100000",
            out,
            "sink \"t\" ran out of fuel (budget 101000) in add",
        ),
        (
            "memory",
            programs::MEMORY_BOMB,
            "memory = \"16MiB\"",
            out,
            "sink \"t\" exceeded its memory limit of 16 MiB in add",
        ),
        ("recursion", programs::DEEP_RECURSION, "", out, "sink \"t\" trapped in add"),
        (
            "slow-flush",
            programs::SLOW_FLUSH,
            "timeout = \"100ms\"",
            "out = \"/out/out.jsonl\", sleep_ms = 2000",
            "sink \"t\" exceeded its time limit of 100ms in flush",
        ),
    ];
    for (name, component, limits, config, expected) in cases {
        let text = failure(name, component, limits, config);
        assert!(text.starts_with(expected), "{name}: {text}");
    }
    let text = failure("recursion-cause", programs::DEEP_RECURSION, "", out);
    assert!(text.contains("call stack exhausted"), "{text}");
}

#[test]
fn a_trap_in_every_flush_cannot_be_pinned_on_a_record() {
    let s = Scratch::new("panic-flush");
    s.write("in.jsonl", &lines(20));
    let (status, result) = s.run(&Spec { component: programs::PANIC_IN_FLUSH, ..Default::default() }.toml());
    let text = chain(&result.unwrap_err());
    assert!(text.starts_with("sink \"t\" trapped in flush"), "{text}");
    assert!(text.contains("test program panics in flush"), "{text}");
    assert!(dead_letters(&s).is_empty(), "no innocent record dead-lettered");
    assert_eq!(status.sinks[0].traps, 2);
    assert_eq!(committed_offset(&s), None);
}

#[test]
fn a_trap_in_close_is_logged_and_loses_nothing() {
    let (s, input) = scratch_with_input("panic-close", 60);
    let (status, result) = s.run(&Spec { component: programs::PANIC_IN_CLOSE, ..Default::default() }.toml());
    result.unwrap();
    assert_eq!(s.read("out/out.jsonl"), input);
    assert_eq!(status.committed, 60);
}

#[test]
fn a_restart_resumes_after_the_last_committed_offset() {
    let s = Scratch::new("resume");
    let first = lines(70);
    s.write("in.jsonl", &first);
    let toml = Spec { component: programs::WELL_BEHAVED, ..Default::default() }.toml();
    let (status, result) = s.run(&toml);
    result.unwrap();
    assert_eq!(status.read, 70);
    let all = lines(130);
    s.write("in.jsonl", &all);
    let (status, result) = s.run(&toml);
    result.unwrap();
    assert_eq!(status.read, 60, "the second run reads only the new lines");
    assert_eq!(s.read("out/out.jsonl"), all);
    assert_eq!(committed_offset(&s), Some(130));
}

#[test]
fn malformed_envelopes_are_dead_lettered_by_the_source() {
    let s = Scratch::new("malformed");
    s.write("in.jsonl", "{\"value\":\"a\"}\n{\"value\":1,\"headers\":5}\n{\"value\":\"b\"}\nnot json\n");
    let toml = Spec { component: programs::WELL_BEHAVED, ..Default::default() }
        .toml()
        .replace("path = \"in.jsonl\"", "path = \"in.jsonl\"\nformat = \"envelope\"");
    let (status, result) = s.run(&toml);
    result.unwrap();
    assert_eq!(s.read("out/out.jsonl"), "a\nb\n");
    let letters = dead_letters(&s);
    assert_eq!(letters.len(), 2);
    assert_eq!((letters[0]["sink"].as_str(), letters[0]["offset"].as_u64()), (Some("source"), Some(1)));
    assert!(letters[0]["reason"].as_str().unwrap().starts_with("line 2: not a record envelope"), "{}", letters[0]);
    assert_eq!(letters[1]["value"], "not json");
    assert_eq!(status.malformed, 2);
    assert_eq!(committed_offset(&s), Some(4));
}

/// In `auto` mode a line with only envelope fields and a `value` is an
/// envelope: wrong types are dead-lettered with the reason (the whole line
/// kept), never written through as a raw value.
#[test]
fn auto_format_dead_letters_envelopes_with_wrong_types() {
    let s = Scratch::new("auto-envelope");
    s.write(
        "in.jsonl",
        concat!(
            "{\"value\":\"a\",\"timestamp\":\"yesterday\"}\n",
            "{\"value\":\"b\",\"key\":5}\n",
            "{\"value\":\"c\",\"headers\":{\"h\":1}}\n",
            "{\"value\":\"d\",\"key\":\"k\",\"timestamp\":5}\n",
            "{\"id\":1,\"timestamp\":\"yesterday\"}\n",
        ),
    );
    let (status, result) = s.run(&Spec { component: programs::WELL_BEHAVED, ..Default::default() }.toml());
    result.unwrap();
    assert_eq!(s.read("out/out.jsonl"), "d\n{\"id\":1,\"timestamp\":\"yesterday\"}\n");
    let letters = dead_letters(&s);
    let reasons: Vec<&str> = letters.iter().map(|l| l["reason"].as_str().unwrap()).collect();
    assert_eq!(
        reasons,
        [
            "line 1: not a record envelope: `timestamp` must be an integer (milliseconds since the Unix epoch) or null, not \"yesterday\"",
            "line 2: not a record envelope: `key` must be a string or null, not 5",
            "line 3: not a record envelope: `headers` must be an object of strings or a list of [name, value] string pairs, not {\"h\":1}",
        ]
    );
    assert_eq!(letters[1]["value"], "{\"value\":\"b\",\"key\":5}", "the whole line is kept");
    assert_eq!(status.malformed, 3);
}

#[test]
fn a_graceful_stop_commits_only_what_was_flushed_and_a_restart_finishes() {
    let (s, input) = scratch_with_input("stop", 2000);
    let spec = Spec {
        component: programs::SLOW_FLUSH,
        config: "out = \"/out/out.jsonl\", sleep_ms = 30",
        pipeline: "",
        ..Default::default()
    };
    let toml = spec.toml();
    let control = Control::default();
    let (status, result) = std::thread::scope(|scope| {
        scope.spawn(|| {
            while control.committed.load(Ordering::SeqCst) == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
            control.stop();
        });
        s.run_with(&toml, &control)
    });
    result.unwrap();
    assert_eq!(status.outcome, sinkbox::Outcome::Interrupted);
    assert!(status.committed > 0 && status.committed < 2000, "stopped early: {}", status.committed);
    let written = s.read("out/out.jsonl");
    assert_eq!(written.lines().count() as u64, status.committed, "everything committed was flushed, nothing more");
    assert_eq!(committed_offset(&s), Some(status.committed));
    let (_, result) = s.run(&toml);
    result.unwrap();
    assert_eq!(s.read("out/out.jsonl"), input);
}

#[test]
fn one_source_fans_out_to_several_sinks_with_independent_recovery() {
    let (s, input) = scratch_with_input("fan-out", 100);
    let toml = format!(
        r#"
[pipeline]
batch_size = 10
commit_every = 50
dead_letter = "dead.jsonl"
offsets = "offsets.json"
[source]
kind = "file"
path = "in.jsonl"
[retry]
base = "1ms"
[[sink]]
name = "file"
component = "builtin:file"
config = {{ path = "/out/copy.jsonl" }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}
[[sink]]
name = "flaky"
component = {flaky:?}
config = {{ out = "/out/flaky.jsonl", times = 2 }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}
[[sink]]
name = "count"
component = "builtin:blackhole"
"#,
        flaky = programs::RETRYABLE_THEN_OK
    );
    let (status, result) = s.run(&toml);
    result.unwrap();
    assert_eq!(s.read("out/copy.jsonl"), input);
    assert_eq!(s.read("out/flaky.jsonl"), input);
    let retries: Vec<u64> = status.sinks.iter().map(|m| m.retries).collect();
    assert_eq!(retries, [0, 2, 0]);
    assert!(status.sinks.iter().all(|m| m.added == 100));
}

#[test]
fn the_file_sink_writes_csv_with_chosen_columns() {
    let s = Scratch::new("csv");
    s.write("in.jsonl", "{\"id\":1,\"name\":\"a, b\",\"x\":true}\n{\"id\":2}\n[1]\n");
    let toml = r#"
[pipeline]
dead_letter = "dead.jsonl"
offsets = "offsets.json"
[source]
kind = "file"
path = "in.jsonl"
[[sink]]
name = "csv"
component = "builtin:file"
config = { path = "/out/out.csv", format = "csv", columns = ["id", "name"] }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }
"#;
    let (_, result) = s.run(toml);
    result.unwrap();
    assert_eq!(s.read("out/out.csv"), "id,name\n1,\"a, b\"\n2,\n");
    let letters = dead_letters(&s);
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0]["offset"], 2);
    assert!(letters[0]["reason"].as_str().unwrap().starts_with("value is not a JSON object"));
}

#[test]
fn the_python_and_javascript_sdk_examples_write_csv_and_dead_letter_what_they_reject() {
    for (lang, component) in
        [("python", sinkbox_test_artifacts::PY_CSV_SINK), ("js", sinkbox_test_artifacts::JS_CSV_SINK)]
    {
        sdk_example_writes_csv(lang, component);
    }
}

fn sdk_example_writes_csv(lang: &str, component: &str) {
    let s = Scratch::new(&format!("{lang}-csv"));
    s.write("in.jsonl", "{\"id\":1,\"name\":\"a, b\"}\n{\"id\":2}\nnot json\n[3]\n{\"id\":4,\"name\":\"d\"}\n");
    let toml = format!(
        r#"
[pipeline]
dead_letter = "dead.jsonl"
offsets = "offsets.json"
[source]
kind = "file"
path = "in.jsonl"
[[sink]]
name = "sdk"
component = {component:?}
config = {{ path = "/out/out.csv", columns = ["id", "name"] }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}
limits = {{ memory = "128MiB" }}
"#,
    );
    let (status, result) = s.run(&toml);
    result.unwrap();
    assert_eq!(s.read("out/out.csv"), "id,name\n1,\"a, b\"\n2,\n4,d\n", "{lang}");
    let letters = dead_letters(&s);
    let offsets: Vec<u64> = letters.iter().map(|l| l["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [2, 3], "{lang}");
    assert!(letters[0]["reason"].as_str().unwrap().starts_with("value is not"), "{lang}: {}", letters[0]);
    assert_eq!((status.sinks[0].added, status.sinks[0].rejected), (3, 2), "{lang}");
    // Without the offset store (and so without its snapshot) the sink
    // refuses to write into an output it cannot vouch for, saying so.
    std::fs::remove_file(s.path("offsets.json")).unwrap();
    let (status, result) = s.run(&toml);
    let err = chain(&result.unwrap_err());
    assert!(err.contains("already holds 24 bytes"), "{lang}: {err}");
    assert_eq!(status.committed, 0, "{lang}");
    assert_eq!(s.read("out/out.csv"), "id,name\n1,\"a, b\"\n2,\n4,d\n", "{lang}");
}

#[test]
fn a_followed_file_delivers_appended_lines_pauses_on_request_and_ends_at_a_stop() {
    let (s, mut input) = scratch_with_input("follow", 100);
    let toml = Spec { component: programs::WELL_BEHAVED, pipeline: "commit_interval = \"50ms\"", ..Default::default() }
        .toml()
        .replace("path = \"in.jsonl\"", "path = \"in.jsonl\"\nfollow = true");
    let control = Control::default();
    let run = {
        let (toml, control, dir) = (toml.clone(), control.clone(), s.dir.clone());
        std::thread::spawn(move || {
            let file = sinkbox::PipelineFile::parse(&toml, "test.toml").expect("pipeline parses");
            file.build(crate::engine(), &dir, "test").expect("pipeline builds").run(&control)
        })
    };
    let committed = |n: u64| {
        let start = std::time::Instant::now();
        while control.committed.load(Ordering::Relaxed) < n {
            assert!(start.elapsed() < Duration::from_secs(30), "{n} records committed within 30 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let append = |text: &str| {
        let mut file = std::fs::OpenOptions::new().append(true).open(s.path("in.jsonl")).unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    };
    committed(100);
    // A line is taken once its end is written.
    let more: String = (100..200).map(|i| format!("{{\"id\":{i}}}\n")).collect();
    let (head, tail) = more.split_at(more.len() - 5);
    append(head);
    committed(199);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(control.committed.load(Ordering::Relaxed), 199, "the unended line waits for its end");
    append(tail);
    committed(200);
    input.push_str(&more);
    // Paused: nothing more is read or written until it resumes.
    control.pause();
    std::thread::sleep(Duration::from_millis(200));
    let late: String = (200..250).map(|i| format!("{{\"id\":{i}}}\n")).collect();
    append(&late);
    input.push_str(&late);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(control.committed.load(Ordering::Relaxed), 200, "nothing is read while paused");
    assert_eq!(s.read("out/out.jsonl").lines().count(), 200);
    control.resume();
    committed(250);
    control.stop();
    let (status, result) = run.join().expect("the run's thread");
    result.expect("a stop ends a followed file's pipeline cleanly");
    assert_eq!(status.outcome, sinkbox::Outcome::Interrupted);
    assert_eq!(s.read("out/out.jsonl"), input, "every line once, in order");
    assert_eq!(committed_offset(&s), Some(250));
}
