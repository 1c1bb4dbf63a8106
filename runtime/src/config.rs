//! Pipeline files (`pipeline.toml`) and how they become a [`Pipeline`].
//!
//! ```toml
//! [pipeline]
//! name = "orders"                   # default: the file's stem
//! batch_size = 1000                 # records per add
//! batch_bytes = "1MiB"              # and at most this much data per add
//! checkpoint_bytes = "16MiB"        # held for replays; reaching it closes the checkpoint
//! commit_every = 10000              # records per checkpoint
//! commit_interval = "5s"            # longest a checkpoint stays open
//! offsets = "state/orders.offsets.json"     # default: .sinkbox/NAME.offsets.json
//! dead_letter = "state/orders.dead.jsonl"   # default: .sinkbox/NAME.dead-letter.jsonl
//! resume = true                     # false: start from the beginning, keep no offsets
//!
//! [source]
//! kind = "file"                     # or "stdin"
//! path = "orders.jsonl"
//! format = "auto"                   # or "envelope", "raw"
//!
//! [retry]
//! base = "100ms"
//! cap = "10s"
//! max_attempts = 5
//! max_backpressure = 1000
//! max_poison = 5
//! max_wait = "60s"                  # cap on a backpressure wait a sink asks for
//! max_retry_time = "10m"            # cap on recovering one checkpoint
//!
//! [[sink]]
//! name = "csv"
//! component = "builtin:file"        # or a path to a .wasm component
//! on_error = "dead-letter"          # or "fail"
//! lanes = 1                         # instances per partition, spread by key
//! config = { path = "/out/orders.csv", format = "csv", columns = ["id", "total"] }
//! limits = { memory = "64MiB", fuel_per_record = 10000000, fuel_per_call = 1000000000, timeout = "10s" }
//! grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }], env = { TZ = "UTC" } }
//! ```
//!
//! Relative paths are relative to the pipeline file's directory. An
//! unknown key anywhere is an error naming the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::checkpoint::{Batching, DeadLetters, OffsetStore, OnError, Pipeline, RetryPolicy, SinkSpec};
use crate::sandbox::{Engine, SinkComponent};
use crate::error::{Error, Result};
use crate::sandbox::{DirGrant, Grants, SandboxLimits};
use crate::source::{LineFormat, LineSource, Source};

/// Most lanes (instances per partition) a sink may have.
pub const MAX_LANES: u32 = 64;

/// A parsed pipeline file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    /// `[pipeline]`.
    #[serde(default)]
    pub pipeline: PipelineSection,
    /// `[source]`.
    pub source: SourceSection,
    /// `[retry]`.
    #[serde(default)]
    pub retry: RetrySection,
    /// `[[sink]]`, one or more.
    #[serde(rename = "sink")]
    pub sinks: Vec<SinkSection>,
}

/// `[pipeline]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// The pipeline's name.
    pub name: Option<String>,
    /// Records per `add`.
    pub batch_size: Option<usize>,
    /// Bytes of record data per `add`.
    pub batch_bytes: Option<HumanBytes>,
    /// Bytes of batches held for replays before a checkpoint closes.
    pub checkpoint_bytes: Option<HumanBytes>,
    /// Records per checkpoint.
    pub commit_every: Option<u64>,
    /// Longest a checkpoint stays open.
    pub commit_interval: Option<HumanDuration>,
    /// Offset store path.
    pub offsets: Option<PathBuf>,
    /// Resume from the offset store (default true). False starts from the
    /// beginning and keeps no offsets.
    pub resume: Option<bool>,
    /// Dead-letter file path.
    pub dead_letter: Option<PathBuf>,
}

/// `[source]`.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SourceSection {
    /// A JSON-lines file.
    File {
        /// Its path.
        path: PathBuf,
        /// How lines become records.
        #[serde(default)]
        format: LineFormat,
    },
    /// Standard input, as JSON lines.
    Stdin {
        /// How lines become records.
        #[serde(default)]
        format: LineFormat,
    },
}

/// `[retry]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// First backoff delay.
    pub base: Option<HumanDuration>,
    /// Longest backoff delay.
    pub cap: Option<HumanDuration>,
    /// Attempts per checkpoint.
    pub max_attempts: Option<u32>,
    /// Backpressure waits per checkpoint.
    pub max_backpressure: Option<u32>,
    /// Poison records per checkpoint.
    pub max_poison: Option<u32>,
    /// Longest backpressure wait.
    pub max_wait: Option<HumanDuration>,
    /// Longest time recovering one checkpoint.
    pub max_retry_time: Option<HumanDuration>,
}

/// `[[sink]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSection {
    /// Unique name.
    pub name: String,
    /// `builtin:NAME` or a path to a component.
    pub component: String,
    /// Config passed to `open`: a table, or a JSON string.
    #[serde(default)]
    pub config: Option<toml::Value>,
    /// What a repeated trap does.
    #[serde(default)]
    pub on_error: OnError,
    /// Instances per partition (default 1), spread by key hash.
    #[serde(default)]
    pub lanes: Option<u32>,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Capabilities.
    #[serde(default)]
    pub grants: GrantsSection,
}

/// A sink's `limits`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Linear memory cap, e.g. `"64MiB"`.
    pub memory: Option<HumanBytes>,
    /// Fuel per record in `add`.
    pub fuel_per_record: Option<u64>,
    /// Fuel per call.
    pub fuel_per_call: Option<u64>,
    /// Wall-clock limit per call.
    pub timeout: Option<HumanDuration>,
}

/// A sink's `grants`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsSection {
    /// Directories.
    #[serde(default)]
    pub dirs: Vec<DirSection>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// One granted directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirSection {
    /// Host path.
    pub host: PathBuf,
    /// Guest path.
    pub guest: String,
    /// `"ro"` (default) or `"rw"`.
    #[serde(default)]
    pub mode: DirMode,
}

/// Directory access mode.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirMode {
    /// Read-only.
    #[default]
    Ro,
    /// Read-write.
    Rw,
}

/// A duration written as `"250ms"`, `"5s"`, `"2m"` or `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(HumanDuration).map_err(serde::de::Error::custom)
    }
}

/// Parses `"250ms"`, `"5s"`, `"2m"`, `"1h"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 =
        number.parse().map_err(|_| format!("invalid duration \"{text}\": expected e.g. \"500ms\", \"5s\", \"2m\""))?;
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("invalid duration \"{text}\": the unit must be ms, s, m or h")),
    }
}

/// A size written as a number of bytes or `"512KiB"`, `"64MiB"`, `"1GiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanBytes(pub u64);

impl<'de> Deserialize<'de> for HumanBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(HumanBytes(n)),
            Raw::Text(t) => parse_bytes(&t).map(HumanBytes).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `"1048576"`, `"512KiB"`, `"64MiB"`, `"1GiB"`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("invalid size \"{text}\": expected e.g. \"64MiB\""))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => {
            return Err(format!("invalid size \"{text}\": the unit must be KiB, MiB or GiB"));
        }
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("size \"{text}\" is too large"))
}

impl PipelineFile {
    /// Reads and parses a pipeline file.
    pub fn load(path: &Path) -> Result<PipelineFile> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses pipeline TOML; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<PipelineFile> {
        let file: PipelineFile =
            toml::from_str(text).map_err(|e| Error::Config(format!("{origin}: {}", e.to_string().trim_end())))?;
        if file.sinks.is_empty() {
            return Err(Error::Config(format!("{origin}: a pipeline needs at least one [[sink]]")));
        }
        let mut names = std::collections::HashSet::new();
        for sink in &file.sinks {
            if !names.insert(sink.name.as_str()) {
                return Err(Error::Config(format!("{origin}: two sinks are named \"{}\"", sink.name)));
            }
            if let Some(lanes) = sink.lanes
                && !(1..=MAX_LANES).contains(&lanes)
            {
                return Err(Error::Config(format!(
                    "{origin}: sink \"{}\": lanes = {lanes}; it must be 1 to {MAX_LANES}",
                    sink.name
                )));
            }
        }
        Ok(file)
    }
}

impl SinkSection {
    /// The config as JSON text (`{}` when absent).
    pub fn config_json(&self) -> Result<String> {
        match &self.config {
            None => Ok("{}".into()),
            Some(toml::Value::String(text)) => {
                serde_json::from_str::<serde_json::Value>(text)
                    .map_err(|e| Error::Config(format!("sink \"{}\": config is not valid JSON: {e}", self.name)))?;
                Ok(text.clone())
            }
            Some(value) => {
                serde_json::to_string(value).map_err(|e| Error::Config(format!("sink \"{}\": config: {e}", self.name)))
            }
        }
    }

    /// Loads the component and resolves paths relative to `base`.
    pub fn resolve(&self, engine: &Engine, base: &Path) -> Result<SinkSpec> {
        let component = load_component(engine, &self.component, base)?;
        let defaults = SandboxLimits::default();
        let mut limits = defaults;
        if let Some(m) = self.limits.memory {
            limits = limits.memory(m.0);
        }
        if let Some(f) = self.limits.fuel_per_record {
            limits = limits.fuel_per_record(f);
        }
        if let Some(f) = self.limits.fuel_per_call {
            limits = limits.fuel_per_call(f);
        }
        if let Some(t) = self.limits.timeout {
            limits = limits.timeout(t.0);
        }
        let mut dirs = Vec::new();
        for dir in &self.grants.dirs {
            let host = base.join(&dir.host);
            if dir.mode == DirMode::Rw {
                std::fs::create_dir_all(&host).map_err(|e| {
                    Error::io(format!("sink \"{}\": cannot create granted directory {}", self.name, host.display()), e)
                })?;
            }
            if !host.is_dir() {
                return Err(Error::Config(format!(
                    "sink \"{}\": granted directory {} does not exist",
                    self.name,
                    host.display()
                )));
            }
            dirs.push(DirGrant { host, guest: dir.guest.clone(), writable: dir.mode == DirMode::Rw });
        }
        let env = self.grants.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Ok(SinkSpec {
            name: self.name.clone(),
            config: self.config_json()?,
            component,
            limits,
            grants: Grants { dirs, env },
            on_error: self.on_error,
            lanes: self.lanes.unwrap_or(1),
        })
    }
}

/// Loads `builtin:NAME` or a component file relative to `base`.
pub fn load_component(engine: &Engine, reference: &str, base: &Path) -> Result<SinkComponent> {
    match reference.strip_prefix("builtin:") {
        Some(name) => {
            let bytes = crate::builtins::get(name).ok_or_else(|| {
                Error::Config(format!(
                    "no built-in sink \"{name}\"; built-ins are: {}",
                    crate::builtins::names().join(", ")
                ))
            })?;
            engine.load(bytes, reference)
        }
        None => engine.load_file(&base.join(reference)),
    }
}

impl PipelineFile {
    /// Builds the runnable pipeline. `base` is the pipeline file's
    /// directory; `default_name` names it when `[pipeline] name` is absent.
    pub fn build(&self, engine: &Engine, base: &Path, default_name: &str) -> Result<Pipeline> {
        let p = &self.pipeline;
        let name = p.name.clone().unwrap_or_else(|| default_name.to_string());
        let mut batching = Batching::default();
        if let Some(n) = p.batch_size {
            batching = batching.batch_size(n);
        }
        if let Some(n) = p.batch_bytes {
            batching = batching.batch_bytes(usize::try_from(n.0).unwrap_or(usize::MAX));
        }
        if let Some(n) = p.checkpoint_bytes {
            batching = batching.checkpoint_bytes(n.0);
        }
        if let Some(n) = p.commit_every {
            batching = batching.commit_every(n);
        }
        if let Some(d) = p.commit_interval {
            batching = batching.commit_interval(d.0);
        }
        let r = &self.retry;
        let mut retry = RetryPolicy::default();
        if let Some(d) = r.base {
            retry = retry.base(d.0);
        }
        if let Some(d) = r.cap {
            retry = retry.cap(d.0);
        }
        if let Some(n) = r.max_attempts {
            retry = retry.max_attempts(n);
        }
        if let Some(n) = r.max_backpressure {
            retry = retry.max_backpressure(n);
        }
        if let Some(n) = r.max_poison {
            retry = retry.max_poison(n);
        }
        if let Some(d) = r.max_wait {
            retry = retry.max_wait(d.0);
        }
        if let Some(d) = r.max_retry_time {
            retry = retry.max_retry_time(d.0);
        }
        let state_dir = base.join(".sinkbox");
        let offsets = OffsetStore::new(
            p.offsets.as_ref().map_or_else(|| state_dir.join(format!("{name}.offsets.json")), |o| base.join(o)),
            &name,
        );
        let dead_letters = DeadLetters::new(
            p.dead_letter
                .as_ref()
                .map_or_else(|| state_dir.join(format!("{name}.dead-letter.jsonl")), |d| base.join(d)),
        );
        let offsets = p.resume.unwrap_or(true).then_some(offsets);
        let start = match &offsets {
            Some(store) => store.load()?.unwrap_or_default(),
            None => Default::default(),
        };
        let source: Box<dyn Source> = match &self.source {
            SourceSection::File { path, format } => {
                Box::new(LineSource::file(&base.join(path), *format, Some(&start.position))?)
            }
            SourceSection::Stdin { format } => Box::new(LineSource::stdin(*format, Some(&start.position))?),
        };
        let sinks = self.sinks.iter().map(|s| s.resolve(engine, base)).collect::<Result<Vec<_>>>()?;
        Ok(Pipeline { name, engine: engine.clone(), source, sinks, batching, retry, offsets, dead_letters, start })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> String {
        PipelineFile::parse(text, "p.toml").unwrap_err().to_string()
    }

    const MINIMAL: &str = "[source]\nkind = \"stdin\"\n[[sink]]\nname = \"a\"\ncomponent = \"builtin:blackhole\"\n";

    #[test]
    fn minimal_file_parses() {
        let file = PipelineFile::parse(MINIMAL, "p.toml").unwrap();
        assert_eq!(file.sinks[0].config_json().unwrap(), "{}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let cases = [
            ("[pipeline]\nbatchsize = 5\n", "unknown field `batchsize`"),
            ("[retry]\ntries = 1\n", "unknown field `tries`"),
        ];
        for (extra, expected) in cases {
            let err = parse_err(&format!("{extra}{MINIMAL}"));
            assert!(err.contains(expected), "{err}");
        }
        let err = parse_err(&format!("{MINIMAL}colour = \"red\"\n"));
        assert!(err.contains("unknown field `colour`"), "{err}");
        let err = parse_err(&format!("{MINIMAL}limits = {{ memroy = \"1MiB\" }}\n"));
        assert!(err.contains("unknown field `memroy`"), "{err}");
    }

    #[test]
    fn structural_errors() {
        assert!(parse_err("sink = []\n[source]\nkind = \"stdin\"\n").contains("at least one [[sink]]"));
        let twice = format!("{MINIMAL}[[sink]]\nname = \"a\"\ncomponent = \"builtin:file\"\n");
        assert!(parse_err(&twice).contains("two sinks are named \"a\""));
        assert!(parse_err("[source]\nkind = \"kafka\"\n").contains("unknown variant `kafka`"));
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5 parsecs").unwrap_err().contains("the unit must be"));
        assert!(parse_duration("s").unwrap_err().contains("invalid duration"));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("1PiB").is_err());
        assert!(parse_bytes("99999999999GiB").unwrap_err().contains("too large"));
    }
}
