//! The contract-compliance harness: every built-in sink and SDK example
//! goes through the same calls and must show the same observable behaviour
//! (Vector's `run_and_assert_sink_compliance` is the model).

use std::path::PathBuf;

use sinkbox::sandbox::Failure;
use sinkbox::{Batch, DirGrant, Fault, Grants, SandboxLimits, SinkComponent, SinkInstance, SinkMetrics};
use sinkbox_format::{BatchWriter, RecordRef};

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

fn batch(offsets: std::ops::Range<u64>) -> Batch {
    let mut w = BatchWriter::default();
    for offset in offsets {
        let value = format!("{{\"n\":{offset}}}");
        w.push(&RecordRef {
            offset,
            timestamp: Some(1),
            key: Some(b"k"),
            value: value.as_bytes(),
            headers: &[(b"h", b"v")],
        });
    }
    let (data, count) = w.finish();
    Batch { topic: "t".into(), partition: 0, count, data }
}

/// One value per line, as the file sink in JSONL mode writes them.
fn value_lines(offsets: std::ops::Range<u64>) -> String {
    offsets.map(|o| format!("{{\"n\":{o}}}\n")).collect()
}

/// A CSV file with the column `n`.
fn csv_lines(offsets: std::ops::Range<u64>) -> String {
    std::iter::once("n\n".to_string()).chain(offsets.map(|o| format!("{o}\n"))).collect()
}

fn fault(result: Result<(), Failure>) -> Fault {
    match result {
        Err(Failure::Fault(f)) => f.fault,
        Err(Failure::Rejected(r)) => panic!("expected a fault, got {} rejections", r.len()),
        Ok(()) => panic!("expected a fault, got ok"),
    }
}

fn check(subject: &Subject<'_>) {
    let s = Scratch::new(&format!("compliance-{}", subject.name));
    let component = load(subject.component);
    let grants =
        Grants { dirs: vec![DirGrant { host: s.path("out"), guest: "/out".into(), writable: true }], env: Vec::new() };
    std::fs::create_dir_all(s.path("out")).unwrap();
    let config = subject.config.replace("{out}", "/out/out.jsonl");
    let limits = SandboxLimits::default();
    let mut m = SinkMetrics::new(subject.name);
    let new = || SinkInstance::new(engine(), &component, subject.name, limits, &grants).expect("instantiates");

    // config-schema: none, or a JSON object.
    let mut instance = new();
    if let Some(schema) = instance.config_schema(&mut m).expect("config-schema") {
        let schema: serde_json::Value = serde_json::from_str(&schema).expect("schema is JSON");
        assert!(schema.is_object(), "{}: schema is an object", subject.name);
    }

    // A config that is not even JSON is an error value, not a trap.
    let mut instance = new();
    assert!(
        matches!(fault(instance.open("not json", &mut m)), Fault::Fatal(_)),
        "{}: bad config is fatal",
        subject.name
    );

    // abort drops what was added; a replay after it gives no duplicates.
    let mut instance = new();
    instance.open(&config, &mut m).expect("open");
    instance.add(&batch(0..10), &mut m).expect("add");
    instance.abort(&mut m).expect("abort");
    instance.add(&batch(0..10), &mut m).expect("replayed add");
    instance.add(&batch(10..25), &mut m).expect("add");
    instance.flush(&mut m).expect("flush");
    instance.add(&batch(25..30), &mut m).expect("add");
    instance.abort(&mut m).expect("abort");
    instance.flush(&mut m).expect("empty flush");
    if let Some(output) = subject.output {
        assert_eq!(s.read("out/out.jsonl"), output(0..25), "{}: exactly the flushed records", subject.name);
    }
    // close consumes the instance: it cannot be called twice.
    instance.close(&mut m).expect("close");

    // Limits apply to the component whatever its language.
    let starved = SandboxLimits::default().fuel_per_call(1);
    let fuel = SinkInstance::new(engine(), &component, subject.name, starved, &grants).map_err(|f| f.fault).and_then(
        |mut i| {
            i.open(&config, &mut m).map_err(|e| match e {
                Failure::Fault(f) => f.fault,
                Failure::Rejected(_) => Fault::Rejected(0),
            })
        },
    );
    assert!(matches!(fuel, Err(Fault::OutOfFuel { budget: 1 })), "{}: fuel limit enforced", subject.name);
    let tiny = SandboxLimits::default().memory(64 << 10);
    let memory = SinkInstance::new(engine(), &component, subject.name, tiny, &grants).err().map(|f| f.fault);
    assert!(matches!(memory, Some(Fault::Memory { limit: 65536 })), "{}: memory limit enforced", subject.name);
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
