//! The `sinkbox` binary: exit codes and messages.

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{Scratch, lines};

fn sinkbox(scratch: &Scratch, args: &[&str]) -> Output {
    sinkbox_in(&scratch.dir, args)
}

fn command(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sinkbox"));
    command
        .args(["--cache-dir", concat!(env!("CARGO_TARGET_TMPDIR"), "/component-cache")])
        .args(args)
        .current_dir(dir)
        // Projects made by `sinkbox new` share one cargo target directory
        // across test runs.
        .env("CARGO_TARGET_DIR", concat!(env!("CARGO_TARGET_TMPDIR"), "/new-projects-target"));
    command
}

fn sinkbox_in(dir: &std::path::Path, args: &[&str]) -> Output {
    command(dir, args).output().expect("sinkbox runs")
}

/// Runs sinkbox with `input` on its standard input.
fn sinkbox_with_stdin(scratch: &Scratch, args: &[&str], input: &str) -> Output {
    let mut child = command(&scratch.dir, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sinkbox starts");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().expect("sinkbox runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn quick_form_runs_a_builtin_sink_and_prints_a_status_table() {
    let s = Scratch::new("cli-quick");
    let input = lines(500);
    s.write("in.jsonl", &input);
    let out = sinkbox(
        &s,
        &[
            "run",
            "--sink",
            "builtin:file",
            "--config",
            r#"{"path":"/out/o.jsonl"}"#,
            "--input",
            "in.jsonl",
            "--dir",
            "out:/out:rw",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.read("out/o.jsonl"), input);
    let table = stdout(&out);
    assert!(table.contains("pipeline \"file\" finished"), "{table}");
    assert!(table.contains("read 500  committed 500"), "{table}");
}

#[test]
fn json_status_has_every_counter() {
    let s = Scratch::new("cli-json");
    s.write("in.jsonl", &lines(10));
    let out = sinkbox(&s, &["run", "--sink", "builtin:blackhole", "--input", "in.jsonl", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON status");
    assert_eq!(status["read"], 10);
    assert_eq!(status["committed"], 10);
    let sink = &status["sinks"][0];
    for key in [
        "added",
        "rejected",
        "retries",
        "traps",
        "fuel",
        "peak_memory",
        "add_time",
        "flush_time",
        "calls",
        "calls_ok",
        "success_percent",
    ] {
        assert!(sink.get(key).is_some(), "missing {key} in {sink}");
    }
    assert_eq!(sink["added"], 10);
}

#[test]
fn unknown_pipeline_keys_are_errors_naming_the_key() {
    let s = Scratch::new("cli-unknown-key");
    s.write(
        "p.toml",
        "[source]\nkind = \"stdin\"\n[[sink]]\nname = \"a\"\ncomponent = \"builtin:blackhole\"\nretries = 3\n",
    );
    for command in ["run", "validate"] {
        let out = sinkbox(&s, &[command, "p.toml"]);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.contains("p.toml") && err.contains("unknown field `retries`"), "{command}: {err}");
    }
}

#[test]
fn validate_checks_configs_against_each_sinks_schema() {
    let s = Scratch::new("cli-validate");
    s.write("in.jsonl", "");
    let pipeline = |config: &str| {
        format!(
            "[source]\nkind = \"file\"\npath = \"in.jsonl\"\n[[sink]]\nname = \"f\"\ncomponent = \"builtin:file\"\nconfig = {{ path = \"/o/x\", {config} }}\ngrants = {{ dirs = [{{ host = \"o\", guest = \"/o\", mode = \"rw\" }}] }}\n[[sink]]\nname = \"b\"\ncomponent = \"builtin:blackhole\"\n"
        )
    };
    s.write("good.toml", &pipeline("format = \"csv\", columns = [\"id\"]"));
    let out = sinkbox(&s, &["validate", "good.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("ok    sink \"f\": config matches its schema"), "{}", stdout(&out));
    assert!(!s.path("o/x").exists(), "validate opens the sink in a scratch copy of its directories");
    s.write("bad.toml", &pipeline("format = \"xml\""));
    let out = sinkbox(&s, &["validate", "bad.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let report = stdout(&out);
    assert!(report.contains("FAIL  sink \"f\": config does not match the sink's schema: at /format:"), "{report}");
    assert!(!report.contains("sink \"f\": sink \"f\""), "the sink is named once: {report}");
    assert!(report.contains("ok    sink \"b\""), "{report}");
    assert!(stderr(&out).contains("1 of 2 sinks are invalid"), "{}", stderr(&out));
    // `run` refuses the same config before opening anything.
    let out = sinkbox(&s, &["run", "bad.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("config does not match the sink's schema"), "{}", stderr(&out));
}

/// What `run` refuses when the sink opens (a CSV config without
/// `columns`, which the schema alone allows), `validate` refuses too.
#[test]
fn validate_refuses_what_run_refuses() {
    let s = Scratch::new("cli-validate-run");
    s.write("in.jsonl", &lines(3));
    s.write(
        "p.toml",
        "[source]\nkind = \"file\"\npath = \"in.jsonl\"\n[[sink]]\nname = \"f\"\ncomponent = \"builtin:file\"\nconfig = { path = \"/o/x.csv\", format = \"csv\" }\ngrants = { dirs = [{ host = \"o\", guest = \"/o\", mode = \"rw\" }] }\n",
    );
    let expected = "sink \"f\": config does not match the sink's schema: \"columns\" is a required property";
    let run = sinkbox(&s, &["run", "p.toml"]);
    assert_eq!(run.status.code(), Some(1));
    assert!(stderr(&run).contains(expected), "{}", stderr(&run));
    let out = sinkbox(&s, &["validate", "p.toml"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stdout(&out).contains(&format!("FAIL  {expected}")), "{}", stdout(&out));
    // Settings `run` refuses when it parses the file, `validate` refuses too.
    for (text, expected) in [
        ("[pipeline]\nname = \"../../escape\"\n", "invalid pipeline name \"../../escape\""),
        ("[pipeline]\ncommit_interval = \"1152921504606846976h\"\n", "longer than the maximum of 24h"),
    ] {
        s.write(
            "q.toml",
            &format!("{text}[source]\nkind = \"stdin\"\n[[sink]]\nname = \"b\"\ncomponent = \"builtin:blackhole\"\n"),
        );
        for command in ["run", "validate"] {
            let out = sinkbox(&s, &[command, "q.toml"]);
            assert_eq!(out.status.code(), Some(1), "{command}");
            assert!(stderr(&out).contains(expected), "{command}: {}", stderr(&out));
        }
    }
    assert!(!s.dir.parent().unwrap().join("escape.offsets.json").exists());
}

#[test]
fn absurd_durations_are_refused_naming_the_key() {
    let s = Scratch::new("cli-durations");
    s.write("in.jsonl", &lines(3));
    s.write(
        "p.toml",
        "[source]\nkind = \"file\"\npath = \"in.jsonl\"\n[[sink]]\nname = \"b\"\ncomponent = \"builtin:blackhole\"\nlimits = { timeout = \"18446744073709551615s\" }\n",
    );
    let out = sinkbox(&s, &["run", "p.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("limits.timeout: duration \"18446744073709551615s\" is longer than the maximum of 24h"),
        "{err}"
    );
    let out = sinkbox(&s, &["run", "--sink", "builtin:blackhole", "--input", "in.jsonl", "--timeout", "99999999999h"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--timeout"), "{}", stderr(&out));
}

/// Two stdin runs into one output: the second run's records are other
/// records (a new stream). The file sink refuses to write them into an
/// output it has no committed snapshot for, saying so, unless told to
/// append; it never skips them.
#[test]
fn every_stdin_run_is_a_new_stream() {
    let s = Scratch::new("cli-stdin-twice");
    let args = |config| ["run", "--sink", "builtin:file", "--config", config, "--dir", "out:/out:rw"];
    let first = lines(10);
    let out = sinkbox_with_stdin(&s, &args(r#"{"path":"/out/o.jsonl"}"#), &first);
    assert!(out.status.success(), "{}", stderr(&out));
    let second: String = (0..10).map(|i| format!("{{\"second\":{i}}}\n")).collect();
    let out = sinkbox_with_stdin(&s, &args(r#"{"path":"/out/o.jsonl"}"#), &second);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("output /out/o.jsonl already holds 250 bytes this pipeline did not write"),
        "{}",
        stderr(&out)
    );
    assert_eq!(s.read("out/o.jsonl"), first, "nothing written by the refused run");
    let out = sinkbox_with_stdin(&s, &args(r#"{"path":"/out/o.jsonl","if_exists":"append"}"#), &second);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.read("out/o.jsonl"), format!("{first}{second}"));
}

/// A pipeline whose input file was replaced refuses to resume, naming
/// the pipeline, the input and what changed; `--reset` starts over and
/// keeps the dead letters; appending to the file still resumes.
#[test]
fn a_replaced_input_is_refused_until_reset_and_an_appended_one_resumes() {
    let s = Scratch::new("cli-replaced");
    s.write(
        "p.toml",
        "[source]\nkind = \"file\"\npath = \"in.jsonl\"\nformat = \"envelope\"\n[[sink]]\nname = \"out\"\ncomponent = \"builtin:file\"\nconfig = { path = \"/out/o.jsonl\" }\ngrants = { dirs = [{ host = \"out\", guest = \"/out\", mode = \"rw\" }] }\n",
    );
    let old: String = (0..1000).map(|i| format!("{{\"value\":{{\"n\":\"old-{i}\"}}}}\n")).collect();
    s.write("in.jsonl", &format!("{old}not an envelope\n"));
    let out = sinkbox(&s, &["run", "p.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.read("out/o.jsonl").lines().count(), 1000);
    // Appending resumes after the committed lines.
    let appended: String = (0..10).map(|i| format!("{{\"value\":{{\"n\":\"more-{i}\"}}}}\n")).collect();
    std::fs::OpenOptions::new().append(true).open(s.path("in.jsonl")).unwrap().write_all(appended.as_bytes()).unwrap();
    let out = sinkbox(&s, &["run", "p.toml", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["read"], 10, "only the appended lines are read");
    // Replaced by new data: rewritten in place (same inode), and rotated
    // (the old file renamed away, a new one created).
    let new: String = (0..6000).map(|i| format!("{{\"value\":{{\"n\":\"new-{i}\"}}}}\n")).collect();
    for replace in ["in place", "rotated"] {
        if replace == "rotated" {
            std::fs::rename(s.path("in.jsonl"), s.path("in.jsonl.1")).unwrap();
        }
        s.write("in.jsonl", &new);
        let out = sinkbox(&s, &["run", "p.toml"]);
        assert_eq!(out.status.code(), Some(1), "{replace}: {}", stdout(&out));
        let err = stderr(&out);
        assert!(
            err.contains("error: pipeline \"p\" cannot resume file in.jsonl from .sinkbox/p.offsets.json: "),
            "{err}"
        );
        assert!(err.contains("run again with --reset"), "{replace}: {err}");
        let changed = if replace == "in place" { "its first 4096 bytes changed" } else { "the file was replaced" };
        assert!(err.contains(changed), "{replace}: {err}");
        assert_eq!(s.read("out/o.jsonl").lines().count(), 1010, "{replace}: nothing written");
    }
    // Starting over into the old output would duplicate it: the file sink
    // refuses until the operator moves the output away too.
    let out = sinkbox(&s, &["run", "p.toml", "--reset"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("reset: deleted the committed offsets .sinkbox/p.offsets.json"), "{err}");
    assert!(err.contains("reset: dead letters kept in .sinkbox/p.dead-letter.jsonl"), "{err}");
    assert!(err.contains("output /out/o.jsonl already holds"), "{err}");
    std::fs::rename(s.path("out/o.jsonl"), s.path("out/o.jsonl.old")).unwrap();
    let out = sinkbox(&s, &["run", "p.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.read("out/o.jsonl").lines().count(), 6000, "started over on the new input");
    let output = s.read("out/o.jsonl");
    assert!(output.ends_with("{\"n\":\"new-5999\"}\n"), "{}", &output[output.len() - 100..]);
    assert!(s.path(".sinkbox/p.dead-letter.jsonl").exists(), "dead letters kept");
    // `sinkbox reset` says what it did; the next run reads from the start.
    let out = sinkbox(&s, &["reset", "p.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("deleted the committed offsets .sinkbox/p.offsets.json (they were at"),
        "{}",
        stdout(&out)
    );
    assert!(!s.path(".sinkbox/p.offsets.json").exists());
    let out = sinkbox(&s, &["reset", "p.toml"]);
    assert!(
        stdout(&out).contains("no committed offsets at .sinkbox/p.offsets.json; nothing to delete"),
        "{}",
        stdout(&out)
    );
}

/// A second run of a pipeline fails at once while the first holds its lock.
#[test]
fn a_second_run_of_a_pipeline_fails_naming_the_lock_and_its_holder() {
    let s = Scratch::new("cli-lock");
    s.write("in.jsonl", &lines(3));
    s.write(
        "p.toml",
        "[source]\nkind = \"file\"\npath = \"in.jsonl\"\n[[sink]]\nname = \"b\"\ncomponent = \"builtin:blackhole\"\n",
    );
    std::fs::create_dir_all(s.path(".sinkbox")).unwrap();
    let mut lock = std::fs::File::create(s.path(".sinkbox/p.offsets.json.lock")).unwrap();
    lock.try_lock().expect("the test takes the lock");
    writeln!(lock, "{}", std::process::id()).unwrap();
    for args in [&["run", "p.toml"][..], &["reset", "p.toml"]] {
        let started = Instant::now();
        let out = sinkbox(&s, args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(started.elapsed() < Duration::from_secs(20), "fails at once");
        let expected = format!(
            "error: pipeline \"p\" is already running: its lock file .sinkbox/p.offsets.json.lock is held by pid {}",
            std::process::id()
        );
        assert!(stderr(&out).contains(&expected), "{args:?}: {}", stderr(&out));
    }
    drop(lock);
    let out = sinkbox(&s, &["run", "p.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A line that never ends stops the run with an error naming the input
/// and the byte, without holding more than the line limit in memory.
#[test]
fn a_line_that_never_ends_fails_with_bounded_memory() {
    let s = Scratch::new("cli-dev-zero");
    let out = sinkbox(&s, &["run", "--sink", "builtin:blackhole", "--input", "/dev/zero", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("error: source file /dev/zero: line 1 (from byte 0) is longer than the limit of 16 MiB"),
        "{err}"
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON status");
    let peak = status["peak_rss"].as_u64().unwrap();
    assert!(peak < 200 << 20, "peak memory {peak} bytes");
}

#[test]
fn a_closed_stdout_ends_the_output_quietly() {
    let s = Scratch::new("cli-epipe");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = command(&s.dir, &["inspect", "builtin:file"]).stdout(writer).output().unwrap();
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[test]
fn logs_are_not_coloured_when_stderr_is_not_a_terminal() {
    let s = Scratch::new("cli-colour");
    s.write("in.jsonl", &lines(3));
    let out = sinkbox(&s, &["run", "--sink", sinkbox_test_artifacts::PANIC_IN_CLOSE, "--input", "in.jsonl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("WARN") && err.contains("trapped in close"), "a warning is logged: {err}");
    assert!(!err.contains('\x1b'), "no escape codes in a pipe: {err:?}");
}

/// The progress thread does not hold a short run open.
#[test]
fn a_short_run_does_not_wait_for_the_progress_thread() {
    let s = Scratch::new("cli-progress");
    s.write("in.jsonl", &lines(1));
    let time = |extra: &[&str]| {
        (0..3)
            .map(|_| {
                let started = Instant::now();
                let mut args = vec!["run", "--sink", "builtin:blackhole", "--input", "in.jsonl"];
                args.extend_from_slice(extra);
                let out = sinkbox(&s, &args);
                assert!(out.status.success(), "{}", stderr(&out));
                started.elapsed()
            })
            .min()
            .unwrap()
    };
    let without = time(&["--no-progress"]);
    let with = time(&[]);
    assert!(with < without + Duration::from_millis(300), "with progress {with:?}, without {without:?}");
}

#[test]
fn a_rust_scaffold_says_where_its_sdk_comes_from() {
    let s = Scratch::new("cli-new-sdk");
    let out = sinkbox(&s, &["new", "--lang", "rust", "scaffold"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cargo = s.read("scaffold/Cargo.toml");
    assert!(stdout(&out).contains("note: Cargo.toml depends on sinkbox-sdk"), "{}", stdout(&out));
    assert!(cargo.contains("# sinkbox-sdk is not on crates.io yet") && cargo.contains("--sdk-path"), "{cargo}");
    let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
    let out = sinkbox(&s, &["new", "--lang", "rust", "explicit", "--sdk-path", sdk.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cargo = s.read("explicit/Cargo.toml");
    assert!(cargo.contains("# The sinkbox-sdk given with --sdk-path."), "{cargo}");
}

#[test]
fn inspect_shows_world_version_imports_and_schema() {
    let s = Scratch::new("cli-inspect");
    let out = sinkbox(&s, &["inspect", "builtin:file", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["implements_sink_world"], true);
    assert_eq!(info["sink_version"], "0.2.0");
    assert_eq!(info["config_schema"]["required"][0], "path");
    let imports: Vec<&str> = info["imports"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(imports.contains(&"sinkbox:sink/types@0.2.0"), "{imports:?}");
    assert!(imports.iter().any(|i| i.starts_with("wasi:filesystem/preopens@0.2")), "{imports:?}");
}

#[test]
fn broken_components_are_clear_errors() {
    let s = Scratch::new("cli-broken");
    s.write("junk.wasm", "this is not wasm");
    s.write("in.jsonl", &lines(3));
    let out = sinkbox(&s, &["inspect", "junk.wasm"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot load component junk.wasm"), "{}", stderr(&out));
    let out = sinkbox(&s, &["run", "--sink", "junk.wasm", "--input", "in.jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot load component junk.wasm"), "{}", stderr(&out));
    let out = sinkbox(&s, &["run", "--sink", "builtin:nope", "--input", "in.jsonl"]);
    assert!(
        stderr(&out).contains(
            "no built-in sink \"nope\"; built-ins are: blackhole, elasticsearch, file, http, influxdb, mqtt, postgres, redis, s3"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_sink_error_exits_non_zero_with_the_whole_chain() {
    let s = Scratch::new("cli-trap");
    s.write("in.jsonl", &lines(5));
    let component = sinkbox_test_artifacts::PANIC_IN_OPEN;
    let out = sinkbox(&s, &["run", "--sink", component, "--input", "in.jsonl", "--config", "{}"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("error: sink \"panic_in_open\" trapped in open"), "{err}");
    assert!(err.contains("caused by:"), "{err}");
    assert!(err.contains("test program panics in open"), "{err}");
}

#[test]
fn fuel_limits_in_a_pipeline_turn_fuel_metering_on() {
    let s = Scratch::new("cli-fuel");
    s.write("in.jsonl", &lines(5));
    s.write(
        "p.toml",
        &format!(
            "[source]\nkind = \"file\"\npath = \"in.jsonl\"\n[[sink]]\nname = \"bomb\"\ncomponent = {:?}\non_error = \"fail\"\nlimits = {{ fuel_per_record = 1000, fuel_per_call = 50000 }}\n",
            sinkbox_test_artifacts::FUEL_BOMB
        ),
    );
    let out = sinkbox(&s, &["run", "p.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("error: sink \"bomb\" ran out of fuel (budget 51000) in add"), "{}", stderr(&out));
}

/// What a newcomer does, per language: `sinkbox new`, `sinkbox build`, then
/// `sinkbox run` with the project's sample config and input.
#[test]
fn new_build_and_run_a_project_in_each_language() {
    for lang in ["python", "js", "c", "rust"] {
        let s = Scratch::new(&format!("cli-new-{lang}"));
        let name = format!("my-{lang}-sink");
        let out = sinkbox(&s, &["new", "--lang", lang, &name]);
        assert!(out.status.success(), "{lang}: new: {}", stderr(&out));
        let project = s.path(&name);
        let out = sinkbox_in(&project, &["build", "."]);
        assert!(out.status.success(), "{lang}: build: {}", stderr(&out));
        let config = std::fs::read_to_string(project.join("config.json")).unwrap();
        let wasm = format!("{name}.wasm");
        let args = [
            "run",
            "--sink",
            &wasm,
            "--config",
            &config,
            "--input",
            "sample.jsonl",
            "--dir",
            "out:/out:rw",
            "--dead-letter",
            "dead.jsonl",
        ];
        let out = sinkbox_in(&project, &args);
        assert!(out.status.success(), "{lang}: run: {}", stderr(&out));
        let written = std::fs::read_to_string(project.join("out/records.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = written.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let offsets: Vec<u64> = lines.iter().map(|l| l["offset"].as_u64().unwrap()).collect();
        assert_eq!(offsets, [0, 1, 3], "{lang}: {written}");
        assert_eq!(lines[1]["value"]["item"], "scones", "{lang}: {written}");
        let dead = std::fs::read_to_string(project.join("dead.jsonl")).unwrap();
        assert!(dead.contains(r#""offset":2"#) && dead.contains("not JSON"), "{lang}: {dead}");
    }
}

/// Runs the `hostile_text` program in `mode` over 5 records.
fn hostile(name: &str, mode: &str) -> Output {
    let s = Scratch::new(name);
    s.write("in.jsonl", &lines(5));
    std::fs::create_dir_all(s.path("out")).unwrap();
    let config = format!(r#"{{"out":"/out/o.jsonl","mode":"{mode}","times":1}}"#);
    sinkbox(
        &s,
        &[
            "run",
            "--no-progress",
            "--sink",
            sinkbox_test_artifacts::HOSTILE_TEXT,
            "--config",
            &config,
            "--input",
            "in.jsonl",
            "--dir",
            "out:/out:rw",
        ],
    )
}

#[test]
fn guest_text_cannot_forge_host_log_lines() {
    let out = hostile("hostile-forge", "forge");
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("fine\\n2026-01-01T00:00:00Z  INFO FORGED"), "the newline is escaped: {err}");
    assert!(!err.lines().any(|l| l.contains("FORGED") && !l.contains("fine\\n")), "no forged line: {err}");
    assert!(!err.contains('\r'), "no raw carriage return");
}

#[test]
fn a_huge_guest_error_is_cut_with_a_marker() {
    let out = hostile("hostile-huge", "huge-error");
    let err = stderr(&out);
    assert!(out.status.success(), "the instance is replaced and the run finishes: {err}");
    assert!(err.len() < 64 << 10, "16 MiB error printed whole: {} bytes of stderr", err.len());
    assert!(err.contains("... [cut 16773120 bytes]"), "{}", &err[..err.len().min(2000)]);
}

#[test]
fn a_log_flood_is_dropped_with_a_count() {
    let out = hostile("hostile-flood", "flood");
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let lines = err.lines().filter(|l| l.contains("flood line")).count();
    assert!((100..=1000).contains(&lines), "{lines} of 100,000 flood lines logged");
    assert!(err.contains("logged too much in flush; dropped"), "{}", &err[err.len().saturating_sub(2000)..]);
}

#[test]
fn one_call_logs_at_most_its_cap_and_the_rest_is_counted() {
    let s = Scratch::new("cli-log-per-call");
    s.write("in.jsonl", &lines(5));
    s.write(
        "p.toml",
        &format!(
            "[source]\nkind = \"file\"\npath = \"in.jsonl\"\n[[sink]]\nname = \"loud\"\ncomponent = {:?}\n\
             config = {{ mode = \"flood\", times = 1 }}\nlimits = {{ log_lines_per_call = 50 }}\n",
            sinkbox_test_artifacts::HOSTILE_TEXT
        ),
    );
    let out = sinkbox(&s, &["run", "--no-progress", "p.toml"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    // The sink floods in each of its two flushes (the first one at open,
    // then the checkpoint's): 50 lines each, and one line per call saying
    // what it dropped. The 99,950 lines dropped per call are "flood line
    // 50" to "flood line 99999", about 1.5 MiB.
    assert_eq!(err.lines().filter(|l| l.contains("flood line")).count(), 100, "{err}");
    let report = "sink \"loud\" logged too much in flush; dropped 99950 lines (1.5 MiB) over its limit of 50 lines and \
                  1 MiB per call\n";
    assert_eq!(err.matches(report).count(), 2, "{}", &err[err.len().saturating_sub(2000)..]);
}

/// A running `sinkbox` whose stdin stays open and whose stderr is
/// collected by a thread.
struct Running {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    reader: std::thread::JoinHandle<String>,
}

/// Starts sinkbox with `args`, writes `input` to its stdin (kept open: a
/// stdin source runs on, waiting for more records), and returns once its
/// stderr has a line containing `ready`, and a moment more, to be inside
/// the state that line announces.
fn start_until(scratch: &Scratch, args: &[&str], input: &str, ready: &str) -> Running {
    use std::io::BufRead;
    let mut child = command(&scratch.dir, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sinkbox starts");
    let mut stdin = child.stdin.take();
    if let Some(stdin) = stdin.as_mut() {
        stdin.write_all(input.as_bytes()).unwrap();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains(ready) => break,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                panic!("no line with {ready:?} within 30 s: {}", reader.join().unwrap());
            }
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    Running { child, stdin, reader }
}

impl Running {
    /// Sends SIGINT and waits for the exit: its code, how long it took
    /// after the signal, and the stderr.
    fn interrupt(mut self) -> (Option<i32>, Duration, String) {
        let signalled = Instant::now();
        let kill = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(kill.success());
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if signalled.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
                panic!("still running 20 s after SIGINT");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let took = signalled.elapsed();
        drop(self.stdin);
        (status.code(), took, self.reader.join().unwrap())
    }
}

/// Starts `sinkbox` as [`start_until`] does, then interrupts it.
fn interrupt_when(scratch: &Scratch, args: &[&str], input: &str, ready: &str) -> (Option<i32>, Duration, String) {
    start_until(scratch, args, input, ready).interrupt()
}

#[test]
fn two_pipelines_cannot_write_into_one_directory() {
    let s = Scratch::new("cli-output-lock");
    for name in ["first", "second"] {
        s.write(
            &format!("{name}.toml"),
            &format!(
                "[pipeline]\ncommit_every = 3\n[source]\nkind = \"stdin\"\n[[sink]]\nname = \"f\"\n\
                 component = \"builtin:file\"\nconfig = {{ path = \"/out/{name}.jsonl\" }}\n\
                 grants = {{ dirs = [{{ host = \"out\", guest = \"/out\", mode = \"rw\" }}] }}\n"
            ),
        );
    }
    let first = start_until(&s, &["run", "--no-progress", "--log", "debug", "first.toml"], &lines(3), "committed");
    let started = Instant::now();
    let out = sinkbox_with_stdin(&s, &["run", "--no-progress", "second.toml"], &lines(3));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "fails at once");
    let dir = s.path("out").canonicalize().unwrap();
    let expected = format!(
        "pipeline \"second\" cannot write into directory {}: pipeline \"first\" (pid {}) holds its lock file {}; \
         two pipelines must not write into one directory",
        dir.display(),
        first.child.id(),
        dir.join(".sinkbox.lock").display()
    );
    assert!(err.contains(&expected), "{err}");
    assert!(!s.path("out/second.jsonl").exists());
    let (code, _, err) = first.interrupt();
    assert_eq!(code, Some(130), "{err}");
    // Once the first has ended, the second runs.
    let out = sinkbox_with_stdin(&s, &["run", "--no-progress", "second.toml"], &lines(3));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.read("out/second.jsonl"), lines(3));
}

#[test]
fn ctrl_c_during_a_backoff_wait_exits_130_within_a_second() {
    let s = Scratch::new("cli-sigint-backoff");
    s.write("in.jsonl", &lines(5));
    std::fs::create_dir_all(s.path("out")).unwrap();
    // The sink asks for a 50 s wait on its first add.
    let config = r#"{"out":"/out/o.jsonl","times":1,"sleep_ms":50000}"#;
    let args = [
        "run",
        "--no-progress",
        "--sink",
        sinkbox_test_artifacts::BACKPRESSURE_THEN_OK,
        "--config",
        config,
        "--input",
        "in.jsonl",
        "--dir",
        "out:/out:rw",
    ];
    let (code, took, err) = interrupt_when(&s, &args, "", "asked to back off for 50000 ms in add; recovering");
    assert_eq!(code, Some(130), "{err}");
    assert!(took < Duration::from_millis(1500), "{took:?}: {err}");
}

#[test]
fn ctrl_c_while_running_exits_130_within_a_second() {
    let s = Scratch::new("cli-sigint-running");
    std::fs::create_dir_all(s.path("out")).unwrap();
    // A stdin source that stays open: the run commits the first 3 records
    // and waits for more.
    let args = [
        "run",
        "--no-progress",
        "--sink",
        "builtin:file",
        "--config",
        r#"{"path":"/out/o.jsonl"}"#,
        "--dir",
        "out:/out:rw",
        "--commit-every",
        "3",
        "--log",
        "debug",
    ];
    let (code, took, err) = interrupt_when(&s, &args, &lines(3), "committed");
    assert_eq!(code, Some(130), "{err}");
    assert!(took < Duration::from_millis(1500), "{took:?}: {err}");
}

#[test]
fn a_schema_bomb_is_refused_before_validation() {
    let s = Scratch::new("cli-schema-bomb");
    s.write(
        "p.toml",
        &format!(
            "[source]\nkind = \"stdin\"\n[[sink]]\nname = \"bomb\"\ncomponent = {:?}\n",
            sinkbox_test_artifacts::SCHEMA_BOMB
        ),
    );
    let started = Instant::now();
    let out = sinkbox(&s, &["validate", "p.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(text.contains("its config schema nests 81 levels deep with 80 $ref/anyOf/oneOf/allOf/not"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    // `inspect` applies the same limits to the schema it shows.
    let out = sinkbox(&s, &["inspect", sinkbox_test_artifacts::SCHEMA_BOMB, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let problem = info["problem"].as_str().unwrap_or_default();
    assert!(problem.starts_with("sink \"inspect\": its config schema nests 81 levels deep"), "{problem}");
}

/// Runs sinkbox and also returns the most resident memory it reached
/// (`VmHWM`, a high-water mark, sampled until it exits).
fn sinkbox_peak(scratch: &Scratch, args: &[&str]) -> (Output, u64) {
    let mut child = command(&scratch.dir, args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let status = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        let text = std::fs::read_to_string(&status).unwrap_or_default();
        let kib = text.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().strip_suffix(" kB"));
        peak = peak.max(kib.and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0) << 10);
        std::thread::sleep(Duration::from_millis(5));
    }
    (child.wait_with_output().unwrap(), peak)
}

/// A schema within the size and shape limits whose check doubles at each
/// of 24 levels (the host's validator once took gigabytes on it) is checked
/// in a sandbox under the sink's own limits, and refused at whichever it
/// hits first, by `validate` and `run` alike; the process stays small.
#[test]
fn a_schema_that_is_costly_to_check_is_refused_at_the_sinks_limits() {
    let s = Scratch::new("cli-schema-doubling");
    let cases = [
        ("validate", "", "exceeded its memory limit of 64 MiB"),
        ("run", "limits = { memory = \"16MiB\" }", "exceeded its memory limit of 16 MiB"),
        ("validate", "limits = { memory = \"1GiB\", timeout = \"200ms\" }", "exceeded its time limit of 200ms"),
        ("run", "limits = { memory = \"1GiB\", fuel_per_call = 20000000 }", "ran out of fuel (budget 20000000)"),
    ];
    for (command, limits, expected) in cases {
        s.write(
            "p.toml",
            &format!(
                "[source]\nkind = \"stdin\"\n[[sink]]\nname = \"costly\"\ncomponent = {:?}\n{limits}\n",
                sinkbox_test_artifacts::SCHEMA_DOUBLING
            ),
        );
        let started = Instant::now();
        let (out, peak) = sinkbox_peak(&s, &[command, "p.toml"]);
        let took = started.elapsed();
        let text = format!("{}{}", stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(1), "{command} {limits}: {text}");
        let expected = format!("sink \"costly\": checking the config against its schema {expected}; refused");
        assert!(text.contains(&expected), "{command} {limits}: {text}");
        assert!(took < Duration::from_secs(30), "{command} {limits}: {took:?}");
        assert!(peak < 512 << 20, "{command} {limits}: peak resident memory {} MiB", peak >> 20);
    }
    // Checking the schema alone (without a config) does not expand it.
    let out = sinkbox(&s, &["inspect", sinkbox_test_artifacts::SCHEMA_DOUBLING, "--json"]);
    assert!(out.status.success(), "{}", stdout(&out));
}

/// `sinkbox replay` runs the records of a dead-letter file through a sink
/// as they were (offset, key, value), in a deterministic sandbox: two
/// replays see the same clock and random numbers, and `--clock`/`--seed`
/// set them.
#[test]
fn replay_delivers_dead_letters_as_they_were_with_fixed_clocks_and_random() {
    let s = Scratch::new("cli-replay");
    s.write("in.jsonl", &lines(30));
    std::fs::create_dir_all(s.path("out")).unwrap();
    let out = sinkbox(&s, &["run", "--sink", sinkbox_test_artifacts::REJECTS_EVERY_10TH, "--input", "in.jsonl"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dead = ".sinkbox/rejects_every_10th.dead-letter.jsonl";
    assert_eq!(s.read(dead).lines().count(), 3, "offsets 9, 19 and 29 dead-lettered");
    let replay = |file: &str, extra: &[&str]| {
        let config = format!("{{\"out\": \"/out/{file}\", \"mode\": \"world\"}}");
        let mut args = vec!["replay", dead, "--sink", sinkbox_test_artifacts::WELL_BEHAVED, "--config", &config];
        args.extend(["--dir", "out:/out:rw", "--no-progress"]);
        args.extend(extra);
        let out = sinkbox(&s, &args);
        assert!(out.status.success(), "{}", stderr(&out));
        let rows: Vec<serde_json::Value> =
            s.read(&format!("out/{file}")).lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
        rows
    };
    let first = replay("a.jsonl", &[]);
    let offsets: Vec<u64> = first.iter().map(|r| r["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [9, 19, 29]);
    let input: Vec<String> = lines(30).lines().map(str::to_string).collect();
    for row in &first {
        let offset = row["offset"].as_u64().unwrap() as usize;
        assert_eq!(row["value"].as_str().unwrap(), input[offset], "the record as it was read");
    }
    // 2000-01-01T00:00:00Z, moving on by 1 µs a reading.
    let clock = first[0]["clock_ns"].as_u64().unwrap();
    assert!((946_684_800_000_000_000..946_684_800_001_000_000).contains(&clock), "{clock}");
    assert_eq!(replay("b.jsonl", &[]), first, "a second replay sees the same world");
    let seeded = replay("c.jsonl", &["--seed", "7", "--clock", "1700000000"]);
    assert_ne!(seeded[0]["random"], first[0]["random"], "another seed, other random numbers");
    let clock = seeded[0]["clock_ns"].as_u64().unwrap();
    assert!((1_700_000_000_000_000_000..1_700_000_000_001_000_000).contains(&clock), "{clock}");

    // The replay never writes into the file it reads.
    let out = sinkbox(
        &s,
        &["replay", dead, "--sink", sinkbox_test_artifacts::REJECTS_EVERY_10TH, "--dead-letter", dead, "--no-progress"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is also where this pipeline writes its dead letters"), "{}", stderr(&out));
    assert_eq!(s.read(dead).lines().count(), 3, "the dead-letter file is as it was");
    // A sink that refuses them again dead-letters them to the replay's own file.
    let out = sinkbox(&s, &["replay", dead, "--sink", sinkbox_test_artifacts::REJECTS_EVERY_10TH, "--no-progress"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(s.read(".sinkbox/replay-rejects_every_10th.dead-letter.jsonl").lines().count(), 3);

    // A range of an input file: offsets 5, 6 and 7, as they were.
    let config = "{\"out\": \"/out/range.jsonl\", \"mode\": \"world\"}";
    let args =
        ["replay", "--input", "in.jsonl", "--from", "5", "--to", "8", "--sink", sinkbox_test_artifacts::WELL_BEHAVED];
    let out = sinkbox(&s, &[&args[..], &["--config", config, "--dir", "out:/out:rw", "--no-progress"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> =
        s.read("out/range.jsonl").lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let offsets: Vec<u64> = rows.iter().map(|r| r["offset"].as_u64().unwrap()).collect();
    assert_eq!(offsets, [5, 6, 7]);
    assert_eq!(rows[0]["value"].as_str().unwrap(), input[5]);
    assert_eq!(rows[0]["clock_ns"], first[0]["clock_ns"], "the same fixed clock");

    // A line that is not an entry is refused, naming the file and line.
    s.write("bad.jsonl", "{\"sink\":\"x\",\"topic\":\"t\",\"partition\":0,\"offset\":1,\"value\":\"v\"}\nnot json\n");
    let out = sinkbox(&s, &["replay", "bad.jsonl", "--sink", sinkbox_test_artifacts::WELL_BEHAVED, "--no-progress"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("dead letters bad.jsonl: line 2: not JSON"), "{}", stderr(&out));
}
