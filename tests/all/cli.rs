//! The `sinkbox` binary: exit codes and messages.

use std::process::{Command, Output};

use crate::{Scratch, lines};

fn sinkbox(scratch: &Scratch, args: &[&str]) -> Output {
    sinkbox_in(&scratch.dir, args)
}

fn sinkbox_in(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sinkbox"))
        .args(["--cache-dir", concat!(env!("CARGO_TARGET_TMPDIR"), "/component-cache")])
        .args(args)
        .current_dir(dir)
        // Projects made by `sinkbox new` share one cargo target directory
        // across test runs.
        .env("CARGO_TARGET_DIR", concat!(env!("CARGO_TARGET_TMPDIR"), "/new-projects-target"))
        .output()
        .expect("sinkbox runs")
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
    let pipeline = |format: &str| {
        format!(
            "[source]\nkind = \"file\"\npath = \"in.jsonl\"\n[[sink]]\nname = \"f\"\ncomponent = \"builtin:file\"\nconfig = {{ path = \"/o/x\", format = \"{format}\" }}\n[[sink]]\nname = \"b\"\ncomponent = \"builtin:blackhole\"\n"
        )
    };
    s.write("good.toml", &pipeline("csv"));
    let out = sinkbox(&s, &["validate", "good.toml"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("ok    sink \"f\": config matches its schema"), "{}", stdout(&out));
    s.write("bad.toml", &pipeline("xml"));
    let out = sinkbox(&s, &["validate", "bad.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let report = stdout(&out);
    assert!(
        report.contains("FAIL  sink \"f\": sink \"f\": config does not match the sink's schema: at /format:"),
        "{report}"
    );
    assert!(report.contains("ok    sink \"b\""), "{report}");
    assert!(stderr(&out).contains("1 of 2 sinks are invalid"), "{}", stderr(&out));
    // `run` refuses the same config before opening anything.
    let out = sinkbox(&s, &["run", "bad.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("config does not match the sink's schema"), "{}", stderr(&out));
}

#[test]
fn inspect_shows_world_version_imports_and_schema() {
    let s = Scratch::new("cli-inspect");
    let out = sinkbox(&s, &["inspect", "builtin:file", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["implements_sink_world"], true);
    assert_eq!(info["sink_version"], "0.1.0");
    assert_eq!(info["config_schema"]["required"][0], "path");
    let imports: Vec<&str> = info["imports"].as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert!(imports.contains(&"sinkbox:sink/types@0.1.0"), "{imports:?}");
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
    assert!(stderr(&out).contains("no built-in sink \"nope\"; built-ins are: blackhole, file"), "{}", stderr(&out));
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
    assert!(stderr(&out).contains("error: sink \"bomb\" ran out of fuel (budget 55000) in add"), "{}", stderr(&out));
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
