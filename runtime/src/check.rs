//! The contract-compliance scenarios every sink must pass (Vector's
//! `run_and_assert_sink_compliance` is the model): `sinkbox check` runs
//! them against any component, and the tests run them against every
//! built-in sink and SDK example.
//!
//! The records are `{"n": OFFSET}` values with key `k` and header `h=v`,
//! from topic `t`, partition 0. The sink gets a writable directory seen as
//! `/out`; `{out}` in its config becomes `/out/out.jsonl`.

use std::path::{Path, PathBuf};

use sinkbox_format::{BatchWriter, RecordRef};

use crate::bindings::{Batch, Context};
use crate::error::{Fault, Result};
use crate::sandbox::{DirGrant, Engine, Failure, Grants, Interrupt, SandboxLimits, SinkComponent, SinkInstance};

/// What one scenario found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The scenario.
    pub scenario: &'static str,
    /// `None` when it passed; otherwise what went wrong.
    pub problem: Option<String>,
}

/// A sink to check.
pub struct Subject<'a> {
    /// The component.
    pub component: &'a SinkComponent,
    /// Its config; `{out}` becomes `/out/out.jsonl`.
    pub config: &'a str,
    /// What the sink should have written to `{out}` for records with these
    /// offsets, when that is known.
    pub output: Option<fn(std::ops::Range<u64>) -> String>,
    /// A scratch directory, granted as `/out`.
    pub scratch: &'a Path,
}

/// A batch of records `offsets` of `t[0]`.
pub fn batch(offsets: std::ops::Range<u64>) -> Batch {
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

/// The context of the only instance of sink `check` of pipeline `check`,
/// serving `t[0]`, opened with `snapshot`.
pub fn context(snapshot: Option<Vec<u8>>, probe: bool) -> Context {
    Context {
        pipeline: "check".into(),
        sink: "check".into(),
        topic: "t".into(),
        partition: 0,
        lane: 0,
        lanes: 1,
        worker_index: 0,
        worker_count: 1,
        snapshot,
        probe,
    }
}

struct Checker<'a> {
    engine: &'a Engine,
    subject: &'a Subject<'a>,
    grants: Grants,
    config: String,
    out: PathBuf,
}

type Step<T> = std::result::Result<T, String>;

fn step<T>(what: &str, result: std::result::Result<T, Failure>) -> Step<T> {
    result.map_err(|e| match e {
        Failure::Fault(f) => format!("{what}: {f}"),
        Failure::Rejected(list) => format!("{what}: rejected {} records", list.len()),
    })
}

impl Checker<'_> {
    async fn instance(&self, limits: SandboxLimits) -> Step<SinkInstance> {
        let c = self.subject.component;
        SinkInstance::new(self.engine, c, "check", limits, &self.grants, Interrupt::never())
            .await
            .map_err(|f| format!("instantiate: {f}"))
    }

    async fn opened(&self, snapshot: Option<Vec<u8>>, probe: bool) -> Step<SinkInstance> {
        let mut instance = self.instance(SandboxLimits::default()).await?;
        step("open", instance.open(&self.config, &context(snapshot, probe)).await)?;
        Ok(instance)
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn expect_output(&self, offsets: std::ops::Range<u64>, when: &str) -> Step<()> {
        match self.subject.output {
            Some(expected) if self.output() != expected(offsets.clone()) => Err(format!(
                "{when}: the output should hold exactly records {offsets:?}, but it is:\n{}",
                self.output()
            )),
            _ => Ok(()),
        }
    }

    fn listing(&self) -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(self.subject.scratch)
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    async fn schema(&self) -> Step<()> {
        let mut instance = self.instance(SandboxLimits::default()).await?;
        if let Some(schema) = step("config-schema", instance.config_schema().await)? {
            let value: serde_json::Value =
                serde_json::from_str(&schema).map_err(|e| format!("the schema is not JSON: {e}"))?;
            if !value.is_object() {
                return Err("the schema is not a JSON object".into());
            }
        }
        Ok(())
    }

    async fn bad_config(&self) -> Step<()> {
        let mut instance = self.instance(SandboxLimits::default()).await?;
        match instance.open("not json", &context(None, false)).await {
            Err(Failure::Fault(f)) if matches!(f.fault, Fault::Fatal(_)) => Ok(()),
            Err(Failure::Fault(f)) => Err(format!("a config that is not JSON should be a fatal error value: {f}")),
            Err(Failure::Rejected(_)) => Err("a config that is not JSON was answered with rejections".into()),
            Ok(()) => Err("a config that is not JSON was accepted".into()),
        }
    }

    /// abort drops what was added; a replay gives no duplicates; the
    /// snapshot of a flush restores exactly the flushed output; close once.
    async fn replay_and_restart(&self) -> Step<()> {
        let mut instance = self.opened(None, false).await?;
        step("first flush", instance.flush().await)?;
        step("add", instance.add(&batch(0..10)).await)?;
        step("abort", instance.abort().await)?;
        step("replayed add", instance.add(&batch(0..10)).await)?;
        step("add", instance.add(&batch(10..25)).await)?;
        let snapshot = step("flush", instance.flush().await)?;
        step("status", instance.status().await)?;
        step("add", instance.add(&batch(25..30)).await)?;
        step("abort", instance.abort().await)?;
        step("empty flush", instance.flush().await)?;
        self.expect_output(0..25, "after abort and replay")?;
        if snapshot.is_none() {
            // No snapshot: the sink is at-least-once across restarts, and
            // there is no exactly-once restart to check.
            let (closed, _) = instance.close().await;
            return step("close", closed);
        }
        // A checkpoint whose flush is never committed, then a crash: the
        // next instance opens with the last committed snapshot.
        step("add", instance.add(&batch(25..40)).await)?;
        step("uncommitted flush", instance.flush().await)?;
        let (closed, _) = instance.close().await;
        step("close", closed)?;
        let mut restarted = self.opened(snapshot, false).await?;
        step("replayed add after restart", restarted.add(&batch(25..40)).await)?;
        step("flush after restart", restarted.flush().await)?;
        self.expect_output(0..40, "after a restart from the committed snapshot")?;
        let (closed, _) = restarted.close().await;
        step("close", closed)
    }

    /// A probe instance writes nothing and rolls nothing back.
    async fn probe(&self) -> Step<()> {
        let before = self.listing();
        let mut probe = self.opened(None, true).await?;
        step("probe add", probe.add(&batch(100..120)).await)?;
        step("probe abort", probe.abort().await)?;
        let (closed, _) = probe.close().await;
        step("probe close", closed)?;
        if self.listing() != before {
            return Err("a probe instance (context.probe) changed the output directory".into());
        }
        Ok(())
    }

    async fn limits(&self, fuel: bool) -> Step<()> {
        if fuel {
            let starved = SandboxLimits::default().fuel_per_call(1);
            let result = match SinkInstance::new(
                self.engine,
                self.subject.component,
                "check",
                starved,
                &self.grants,
                Interrupt::never(),
            )
            .await
            {
                Err(f) => Err(f.fault),
                Ok(mut i) => i.open(&self.config, &context(None, true)).await.map_err(|e| match e {
                    Failure::Fault(f) => f.fault,
                    Failure::Rejected(_) => Fault::Rejected(0),
                }),
            };
            if !matches!(result, Err(Fault::OutOfFuel { budget: 1 })) {
                return Err(format!("a fuel budget of 1 should stop the sink, got {result:?}"));
            }
        }
        let tiny = SandboxLimits::default().memory(64 << 10);
        match self.instance(tiny).await {
            Err(e) if e.contains("memory limit") => Ok(()),
            Err(e) => Err(format!("a 64 KiB memory limit should be reported as such: {e}")),
            Ok(_) => Err("a 64 KiB memory limit did not stop the sink".into()),
        }
    }
}

/// Runs every scenario; each one's problem names the call that went wrong.
pub async fn check(engine: &Engine, subject: &Subject<'_>) -> Result<Vec<Outcome>> {
    let out_dir = subject.scratch;
    std::fs::create_dir_all(out_dir)
        .map_err(|e| crate::Error::io(format!("cannot create {}", out_dir.display()), e))?;
    let grants = Grants {
        dirs: vec![DirGrant { host: out_dir.into(), guest: "/out".into(), writable: true }],
        env: vec![],
        hosts: vec![],
        quota: None,
        determinism: None,
    };
    let checker = Checker {
        engine,
        subject,
        grants,
        config: subject.config.replace("{out}", "/out/out.jsonl"),
        out: out_dir.join("out.jsonl"),
    };
    let fuel = engine.options().fuel;
    let mut outcomes = Vec::new();
    let mut record = |scenario: &'static str, result: Step<()>| {
        outcomes.push(Outcome { scenario, problem: result.err() });
    };
    record("config-schema is none or a JSON object", checker.schema().await);
    record("a bad config is a fatal error, not a trap", checker.bad_config().await);
    record("abort, replay, snapshot restart: exactly once", checker.replay_and_restart().await);
    record("a probe instance writes nothing", checker.probe().await);
    record(if fuel { "fuel and memory limits enforced" } else { "memory limit enforced" }, checker.limits(fuel).await);
    Ok(outcomes)
}
