//! The contract-compliance harness: every built-in sink and SDK example
//! goes through the same calls and must show the same observable behaviour
//! (Vector's `run_and_assert_sink_compliance` is the model).

use std::path::PathBuf;

use sinkbox::SinkComponent;

use crate::{Scratch, engine};

/// A sink under test.
struct Subject<'a> {
    name: &'a str,
    /// `builtin:NAME` or a component path.
    component: &'a str,
    /// Its config; `{out}` is replaced by the guest path of its output file.
    config: &'a str,
    /// What it writes to `{out}` for records with these offsets (values
    /// `{"n":OFFSET}`), if it writes there.
    output: Option<fn(std::ops::Range<u64>) -> String>,
}

fn load(component: &str) -> SinkComponent {
    sinkbox::config::load_component(engine(), component, &PathBuf::from(".")).expect("component loads")
}

/// One value per line, as the file sink in JSONL mode writes them.
fn value_lines(offsets: std::ops::Range<u64>) -> String {
    offsets.map(|o| format!("{{\"n\":{o}}}\n")).collect()
}

/// A CSV file with the column `n`.
fn csv_lines(offsets: std::ops::Range<u64>) -> String {
    std::iter::once("n\n".to_string()).chain(offsets.map(|o| format!("{o}\n"))).collect()
}

/// Runs every compliance scenario (`sinkbox::check`, which `sinkbox
/// check` runs too) and asserts they all pass.
fn check(subject: &Subject<'_>) {
    let s = Scratch::new(&format!("compliance-{}", subject.name));
    let component = load(subject.component);
    let checked = sinkbox::check::Subject {
        component: &component,
        config: subject.config,
        output: subject.output,
        scratch: &s.path("out"),
    };
    let outcomes = sinkbox::runtime().unwrap().block_on(sinkbox::check::check(engine(), &checked)).expect("check runs");
    assert_eq!(outcomes.len(), 5);
    let failed: Vec<String> =
        outcomes.iter().filter_map(|o| o.problem.as_ref().map(|p| format!("{}: {}", o.scenario, p))).collect();
    assert!(failed.is_empty(), "{}: {}", subject.name, failed.join("\n"));
}

#[test]
fn builtin_file_sink_complies() {
    check(&Subject {
        name: "file",
        component: "builtin:file",
        config: r#"{"path":"{out}"}"#,
        output: Some(value_lines),
    });
}

#[test]
fn builtin_blackhole_sink_complies() {
    check(&Subject { name: "blackhole", component: "builtin:blackhole", config: "{}", output: None });
}

#[test]
fn rust_sdk_example_complies() {
    check(&Subject {
        name: "well-behaved",
        component: sinkbox_test_artifacts::WELL_BEHAVED,
        config: r#"{"out":"{out}"}"#,
        output: Some(value_lines),
    });
}

#[test]
fn python_sdk_example_complies() {
    check(&Subject {
        name: "python-csv",
        component: sinkbox_test_artifacts::PY_CSV_SINK,
        config: r#"{"path":"{out}","columns":["n"]}"#,
        output: Some(csv_lines),
    });
}

#[test]
fn javascript_sdk_example_complies() {
    check(&Subject {
        name: "js-csv",
        component: sinkbox_test_artifacts::JS_CSV_SINK,
        config: r#"{"path":"{out}","columns":["n"]}"#,
        output: Some(csv_lines),
    });
}

#[test]
fn c_sdk_example_complies() {
    check(&Subject {
        name: "c-jsonl",
        component: sinkbox_test_artifacts::C_JSONL_SINK,
        config: r#"{"path":"{out}"}"#,
        output: Some(value_lines),
    });
}
