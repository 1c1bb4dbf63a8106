//! Pipeline files (`pipeline.toml`) and how they become a [`Pipeline`].
//!
//! ```toml
//! [pipeline]
//! name = "orders"                   # default: the file's stem
//! batch_size = 1000                 # records per add
//! batch_bytes = "1MiB"              # and at most this much data per add
//! checkpoint_bytes = "16MiB"        # held for replays; reaching it closes the checkpoint
//! max_dead_letters = 100000         # per run; one more stops the pipeline
//! max_dead_letter_share = 0.5       # dead letters per record read; more stops the pipeline
//! dead_letter_share_after = 1000    # records read before the share applies
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
//! limits = { memory = "64MiB", fuel_per_record = 10000000, fuel_per_call = 1000000000, timeout = "10s", handles = 1024 }
//! # more limits: log_lines_per_call = 1000, log_bytes_per_call = "1MiB" (logs past them are dropped and counted),
//! # disk = "10GiB": what the writable granted directories may hold (default: no limit); a write past it
//! # fails in the guest with "no space left on device" and the call fails, is retried as `retryable` is
//! # (a fresh instance; space freed meanwhile counts), and the run stops once the attempts run out
//! grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }], env = { TZ = "UTC" } }
//!
//! [[sink]]
//! name = "events-http"
//! component = "builtin:http"
//! config = { url = "http://127.0.0.1:8080/ingest" }
//! # no network unless granted; checked at connect on name, address and port
//! grants = { hosts = ["http://127.0.0.1:8080", "https://*.example.com", "tcp://127.0.0.1:5432"] }
//! limits = { net_timeout = "30s", connections = 16, response_bytes = "16MiB", sent_per_checkpoint = "256MiB" }
//! ```
//!
//! Relative paths are relative to the pipeline file's directory. An
//! unknown key anywhere is an error naming the key.
//!
//! Limits on values, checked when the file is parsed:
//! - pipeline and sink names: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting
//!   with `.` (a name becomes a file name under `.sinkbox/`);
//! - durations (`commit_interval`, `[retry] base` and `cap`, `timeout`):
//!   at most [`MAX_DURATION`] (24 h);
//! - `[retry]`: `max_attempts` at most 1,000, `max_backpressure` and
//!   `max_poison` at most 100,000 ([`MAX_ATTEMPTS`], [`MAX_WAITS`]);
//! - a sink's `grants.dirs`: each guest path at most once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::checkpoint::{Batching, Committed, DeadLetters, OffsetStore, OnError, Pipeline, RetryPolicy, SinkSpec};
use crate::error::{Error, Result};
use crate::sandbox::{Determinism, DirGrant, DiskQuota, Grants, HostGrant, SandboxLimits};
use crate::sandbox::{Engine, SinkComponent};
use crate::source::{DeadLetterSource, LineFormat, LineSource, OffsetRange, Source};
use crate::state::PipelineState;

/// The longest duration any setting takes: 24 hours.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The most `[retry] max_attempts` may be.
pub const MAX_ATTEMPTS: u32 = 1_000;

/// The most `[retry] max_backpressure` and `max_poison` may be.
pub const MAX_WAITS: u32 = 100_000;

/// The longest pipeline or sink name.
pub const MAX_NAME: usize = 64;

/// Checks a pipeline or sink name (`what` says which): 1 to 64 of
/// `A-Z a-z 0-9 . _ -`, not starting with `.`, so that a name used in a
/// file name stays one file name inside the state directory.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} name {name:?}: use 1 to {MAX_NAME} letters, digits, '.', '_' or '-', not starting with '.'"
        ))
    }
}

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
    /// Dead letters one run may write before the pipeline stops.
    pub max_dead_letters: Option<u64>,
    /// Dead letters per record read (a fraction) past which the pipeline
    /// stops.
    pub max_dead_letter_share: Option<f64>,
    /// Records read before `max_dead_letter_share` applies.
    pub dead_letter_share_after: Option<u64>,
    /// Records per checkpoint.
    pub commit_every: Option<u64>,
    /// Longest a checkpoint stays open.
    #[serde(default, deserialize_with = "commit_interval")]
    pub commit_interval: Option<HumanDuration>,
    /// Offset store path.
    pub offsets: Option<PathBuf>,
    /// Resume from the offset store (default true). False starts from the
    /// beginning and keeps no offsets.
    pub resume: Option<bool>,
    /// Dead-letter file path.
    pub dead_letter: Option<PathBuf>,
    /// Run the sinks with fixed clocks and random numbers (what `sinkbox
    /// replay` does), so two runs over the same records behave alike.
    pub deterministic: Option<DeterministicSection>,
}

/// `[pipeline] deterministic = { clock = 946684800, seed = 0 }`.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeterministicSection {
    /// What the sinks' wall clock reads first, in seconds since the Unix
    /// epoch (default 946684800, 2000-01-01T00:00:00Z). Every reading
    /// moves it on by 1 µs.
    pub clock: Option<u64>,
    /// The seed of the sinks' random numbers (default 0).
    pub seed: Option<u64>,
}

impl DeterministicSection {
    /// The sandbox's deterministic world.
    pub fn determinism(&self) -> Determinism {
        let default = Determinism::default();
        Determinism {
            start: self.clock.map_or(default.start, Duration::from_secs),
            seed: self.seed.unwrap_or(default.seed),
        }
    }
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
        /// Only the lines from this offset (0-based line number) on: for
        /// replays (`sinkbox replay --from`).
        from: Option<u64>,
        /// Only the lines before this offset (`sinkbox replay --to`).
        to: Option<u64>,
        /// Follow the file like `tail -f`: at its end, wait for more lines
        /// instead of ending (the pipeline then runs until stopped).
        #[serde(default)]
        follow: bool,
    },
    /// Standard input, as JSON lines.
    Stdin {
        /// How lines become records.
        #[serde(default)]
        format: LineFormat,
    },
    /// A Kafka consumer group.
    Kafka(KafkaSection),
    /// The entries of a dead-letter file, as the records they were (for
    /// `sinkbox replay`).
    #[serde(rename = "dead-letters")]
    DeadLetters {
        /// The dead-letter file.
        path: PathBuf,
        /// Only the entries of this sink (`source` for input that could
        /// not be parsed); absent: every sink's, but not the source's.
        sink: Option<String>,
    },
}

/// `[source] kind = "kafka"`: a consumer in a group; processes with the
/// same `group` share the topics' partitions.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSection {
    /// Bootstrap servers, `host:port` separated by commas.
    pub brokers: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// The consumer group.
    pub group: String,
    /// Where a partition starts when the group has no offset for it.
    #[serde(default)]
    pub start: KafkaStart,
    /// What values must be.
    #[serde(default)]
    pub value: KafkaValue,
    /// End the run once every assigned partition was read to its end
    /// (a batch job over a topic) instead of waiting for more.
    #[serde(default)]
    pub stop_at_end: bool,
    /// Longest a revocation waits for the checkpoint of the revoked
    /// partitions to be committed (default 30 s).
    #[serde(default)]
    pub revoke_timeout: Option<HumanDuration>,
    /// librdkafka settings, passed through (e.g. `"session.timeout.ms" =
    /// "10000"`); the ones the source sets itself are refused.
    #[serde(default, deserialize_with = "kafka_settings")]
    pub settings: BTreeMap<String, String>,
    /// Only the records from this offset on, in every partition (for
    /// replays, `sinkbox replay --pipeline --from`).
    pub from: Option<u64>,
    /// Only the records before this offset, in every partition.
    pub to: Option<u64>,
}

/// `start`: where a partition without a committed offset starts.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaStart {
    /// The oldest record kept.
    #[default]
    Earliest,
    /// Records produced from now on.
    Latest,
}

impl KafkaStart {
    /// librdkafka's `auto.offset.reset` value.
    pub fn as_str(self) -> &'static str {
        match self {
            KafkaStart::Earliest => "earliest",
            KafkaStart::Latest => "latest",
        }
    }
}

/// `value`: what a record's value must be.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaValue {
    /// Any bytes, passed as they are.
    #[default]
    Raw,
    /// JSON; other values are dead-lettered with the reason.
    Json,
}

/// librdkafka settings: strings, numbers or booleans, passed as strings.
fn kafka_settings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let table = BTreeMap::<String, toml::Value>::deserialize(d)?;
    table
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "settings.{key}: expected a string, number or boolean, found {}",
                        other.type_str()
                    )));
                }
            };
            Ok((key, text))
        })
        .collect()
}

/// `[retry]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySection {
    /// First backoff delay.
    #[serde(default, deserialize_with = "retry_base")]
    pub base: Option<HumanDuration>,
    /// Longest backoff delay.
    #[serde(default, deserialize_with = "retry_cap")]
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
    #[serde(default, deserialize_with = "limits_timeout")]
    pub timeout: Option<HumanDuration>,
    /// Host handles (open files, streams) the instance may hold.
    pub handles: Option<usize>,
    /// Time limit of one network request or connect.
    #[serde(default, deserialize_with = "limits_timeout")]
    pub net_timeout: Option<HumanDuration>,
    /// Concurrent HTTP connections per instance.
    pub connections: Option<usize>,
    /// Bytes of one HTTP response the guest may read.
    pub response_bytes: Option<HumanBytes>,
    /// Bytes an instance may send between two flushes.
    pub sent_per_checkpoint: Option<HumanBytes>,
    /// What the sink's writable granted directories may hold, e.g.
    /// `"10GiB"`; no limit if absent.
    pub disk: Option<HumanBytes>,
    /// Log lines one call may emit.
    pub log_lines_per_call: Option<u32>,
    /// Log bytes one call may emit.
    pub log_bytes_per_call: Option<HumanBytes>,
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
    /// Hosts the sink may connect to: `http://HOST[:PORT]`,
    /// `https://HOST[:PORT]`, `tcp://HOST:PORT`; HOST an address, a name or
    /// (http, https) `*.domain`.
    #[serde(default)]
    pub hosts: Vec<String>,
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

/// Deserializers for the duration keys, so a refused value names its key
/// (`[retry] cap: duration "99h" is longer than the maximum of 24h`).
macro_rules! duration_keys {
    ($($function:ident => $key:literal),* $(,)?) => {$(
        fn $function<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<HumanDuration>, D::Error> {
            let text = String::deserialize(d)?;
            parse_duration(&text).map(|d| Some(HumanDuration(d))).map_err(|e| serde::de::Error::custom(format!("{}: {e}", $key)))
        }
    )*};
}

duration_keys! {
    commit_interval => "[pipeline] commit_interval",
    retry_base => "[retry] base",
    retry_cap => "[retry] cap",
    limits_timeout => "limits.timeout",
}

/// Parses `"250ms"`, `"5s"`, `"2m"`, `"1h"`, up to [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let too_long = || format!("duration \"{text}\" is longer than the maximum of 24h");
    let n: u64 = number.parse().map_err(|e: std::num::ParseIntError| match e.kind() {
        std::num::IntErrorKind::PosOverflow => too_long(),
        _ => format!("invalid duration \"{text}\": expected e.g. \"500ms\", \"5s\", \"2m\""),
    })?;
    let seconds_per_unit = match unit.trim() {
        "ms" => None,
        "s" => Some(1),
        "m" => Some(60),
        "h" => Some(3600),
        _ => return Err(format!("invalid duration \"{text}\": the unit must be ms, s, m or h")),
    };
    let duration = match seconds_per_unit {
        None => Duration::from_millis(n),
        Some(k) => Duration::from_secs(n.checked_mul(k).ok_or_else(too_long)?),
    };
    if duration > MAX_DURATION {
        return Err(too_long());
    }
    Ok(duration)
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
        let fail = |what: String| Error::Config(format!("{origin}: {what}"));
        if let Some(name) = &file.pipeline.name {
            check_name("pipeline", name).map_err(fail)?;
        }
        if let Some(share) = file.pipeline.max_dead_letter_share.filter(|s| !(*s > 0.0 && *s <= 1.0)) {
            return Err(fail(format!(
                "[pipeline] max_dead_letter_share = {share} is not a fraction above 0 and at most 1 (1 turns the \
                 check off)"
            )));
        }
        let r = &file.retry;
        for (key, value, max) in [
            ("max_attempts", r.max_attempts, MAX_ATTEMPTS),
            ("max_backpressure", r.max_backpressure, MAX_WAITS),
            ("max_poison", r.max_poison, MAX_WAITS),
        ] {
            if let Some(value) = value.filter(|v| *v > max) {
                return Err(fail(format!("[retry] {key} = {value} is over the maximum of {max}")));
            }
        }
        let mut names = std::collections::HashSet::new();
        for sink in &file.sinks {
            check_name("sink", &sink.name).map_err(fail)?;
            if !names.insert(sink.name.as_str()) {
                return Err(fail(format!("two sinks are named \"{}\"", sink.name)));
            }
            if let Some(lanes) = sink.lanes
                && !(1..=MAX_LANES).contains(&lanes)
            {
                return Err(Error::Config(format!(
                    "{origin}: sink \"{}\": lanes = {lanes}; it must be 1 to {MAX_LANES}",
                    sink.name
                )));
            }
            sink.check_grants().map_err(fail)?;
        }
        Ok(file)
    }
}

impl SinkSection {
    /// The parsed `grants.hosts`.
    fn hosts(&self) -> Result<Vec<HostGrant>, String> {
        self.grants
            .hosts
            .iter()
            .map(|text| HostGrant::parse(text).map_err(|e| format!("sink \"{}\": grants.hosts: {e}", self.name)))
            .collect()
    }

    /// Refuses two grants of one guest path (the last would silently win)
    /// and host grants that do not parse.
    fn check_grants(&self) -> Result<(), String> {
        self.hosts()?;
        let mut seen = std::collections::HashMap::new();
        for dir in &self.grants.dirs {
            // `/out`, `/out/` and `//out` are one guest path.
            let guest: PathBuf = Path::new(&dir.guest).components().collect();
            if let Some(first) = seen.insert(guest, &dir.host) {
                return Err(format!(
                    "sink \"{}\": guest path {} is granted twice (host {} and host {}); grant each guest path once",
                    self.name,
                    dir.guest,
                    first.display(),
                    dir.host.display()
                ));
            }
        }
        Ok(())
    }

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
        check_name("sink", &self.name).map_err(Error::Config)?;
        self.check_grants().map_err(Error::Config)?;
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
        if let Some(n) = self.limits.handles {
            limits = limits.handles(n);
        }
        if let Some(t) = self.limits.net_timeout {
            limits = limits.net_timeout(t.0);
        }
        if let Some(n) = self.limits.connections {
            limits = limits.connections(n);
        }
        if let Some(b) = self.limits.response_bytes {
            limits = limits.response_bytes(b.0);
        }
        if let Some(b) = self.limits.sent_per_checkpoint {
            limits = limits.sent_per_checkpoint(b.0);
        }
        if let Some(n) = self.limits.log_lines_per_call {
            limits = limits.log_lines_per_call(n);
        }
        if let Some(b) = self.limits.log_bytes_per_call {
            limits = limits.log_bytes_per_call(b.0);
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
            grants: Grants {
                quota: self.limits.disk.map(|limit| DiskQuota::new(limit.0, &dirs)),
                hosts: self.hosts().map_err(Error::Config)?,
                dirs,
                env,
                determinism: None,
            },
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
    /// Where the pipeline keeps its state. `base` is the pipeline file's
    /// directory; `default_name` names it when `[pipeline] name` is absent.
    /// Fails if the name is not a valid pipeline name.
    pub fn state(&self, base: &Path, default_name: &str) -> Result<PipelineState> {
        let p = &self.pipeline;
        let name = p.name.clone().unwrap_or_else(|| default_name.to_string());
        check_name("pipeline", &name)
            .map_err(|e| Error::Config(if p.name.is_some() { e } else { format!("{e} (set [pipeline] name)") }))?;
        let state_dir = base.join(".sinkbox");
        let offsets =
            p.offsets.as_ref().map_or_else(|| state_dir.join(format!("{name}.offsets.json")), |o| base.join(o));
        let dead_letter = p
            .dead_letter
            .as_ref()
            .map_or_else(|| state_dir.join(format!("{name}.dead-letter.jsonl")), |d| base.join(d));
        Ok(PipelineState { name, offsets, dead_letter })
    }

    /// Opens the source, resuming from the committed position when the
    /// pipeline resumes. A position committed for another stream than the
    /// input holds now is an [`Error::StreamChanged`] naming the pipeline
    /// and the offset store. Returns the source, the store (if the pipeline
    /// resumes) and the start position.
    pub fn open_source(
        &self,
        base: &Path,
        state: &PipelineState,
    ) -> Result<(Box<dyn Source>, Option<OffsetStore>, Committed)> {
        let offsets = self.pipeline.resume.unwrap_or(true).then(|| OffsetStore::new(&state.offsets, &state.name));
        let start = match &offsets {
            Some(store) => store.load()?.unwrap_or_default(),
            None => Default::default(),
        };
        let source: Result<Box<dyn Source>> = match &self.source {
            SourceSection::File { path, format, from, to, follow } => {
                let source = LineSource::file(&base.join(path), *format, Some(&start.position));
                let source = source.map(|s| if *follow { s.follow(crate::source::FOLLOW_EVERY) } else { s });
                source.map(|s| match (from, to) {
                    (None, None) => Box::new(s) as Box<dyn Source>,
                    _ => Box::new(OffsetRange::new(Box::new(s), from.unwrap_or(0), *to, true)),
                })
            }
            SourceSection::Stdin { format } => {
                LineSource::stdin(*format, Some(&start.position)).map(|s| Box::new(s) as Box<dyn Source>)
            }
            SourceSection::Kafka(kafka) => kafka_source(kafka, &start.position).map(|s| match (kafka.from, kafka.to) {
                (None, None) => s,
                (from, to) => Box::new(OffsetRange::new(s, from.unwrap_or(0), to, false)) as Box<dyn Source>,
            }),
            SourceSection::DeadLetters { path, sink } => {
                let path = base.join(path);
                if crate::source::same_file(&path, &state.dead_letter) {
                    return Err(Error::Config(format!(
                        "[source] path: {} is also where this pipeline writes its dead letters; give the replay \
                         another dead-letter file",
                        path.display()
                    )));
                }
                DeadLetterSource::open(&path, sink.as_deref()).map(|s| Box::new(s) as Box<dyn Source>)
            }
        };
        let source = source.map_err(|e| match e {
            Error::StreamChanged(mut changed) => {
                changed.pipeline = Some(state.name.clone());
                changed.offsets = Some(state.offsets.clone());
                Error::StreamChanged(changed)
            }
            e => e,
        })?;
        Ok((source, offsets, start))
    }

    /// Builds the runnable pipeline. `base` is the pipeline file's
    /// directory; `default_name` names it when `[pipeline] name` is absent.
    /// Does not lock the pipeline's state: callers that may run next to
    /// another run of it take [`PipelineState::lock`] first.
    pub fn build(&self, engine: &Engine, base: &Path, default_name: &str) -> Result<Pipeline> {
        let sinks = self.resolve_sinks(engine, base)?;
        self.build_with(engine, base, default_name, sinks)
    }

    /// Resolves every sink: loads (compiles) its component and its grants.
    /// Opens no source and reads no state, so it may run while another run
    /// of the pipeline goes on (to check a new version before a reload).
    pub fn resolve_sinks(&self, engine: &Engine, base: &Path) -> Result<Vec<SinkSpec>> {
        let mut sinks = self.sinks.iter().map(|s| s.resolve(engine, base)).collect::<Result<Vec<_>>>()?;
        if let Some(deterministic) = &self.pipeline.deterministic {
            for sink in &mut sinks {
                sink.grants.determinism = Some(deterministic.determinism());
            }
        }
        Ok(sinks)
    }

    /// [`PipelineFile::build`] with sinks resolved already (by
    /// [`PipelineFile::resolve_sinks`]).
    pub fn build_with(
        &self,
        engine: &Engine,
        base: &Path,
        default_name: &str,
        sinks: Vec<SinkSpec>,
    ) -> Result<Pipeline> {
        let state = self.state(base, default_name)?;
        let p = &self.pipeline;
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
        let mut dead_letters = DeadLetters::new(&state.dead_letter);
        if let Some(max) = p.max_dead_letters {
            dead_letters = dead_letters.max(max);
        }
        if p.max_dead_letter_share.is_some() || p.dead_letter_share_after.is_some() {
            let share = p.max_dead_letter_share.unwrap_or(crate::checkpoint::MAX_DEAD_LETTER_SHARE);
            let after = p.dead_letter_share_after.unwrap_or(crate::checkpoint::DEAD_LETTER_SHARE_AFTER);
            dead_letters = dead_letters.max_share(share, after);
        }
        let (source, offsets, start) = self.open_source(base, &state)?;
        Ok(Pipeline {
            name: state.name,
            engine: engine.clone(),
            source,
            sinks,
            batching,
            retry,
            offsets,
            dead_letters,
            start,
        })
    }
}

/// Opens a Kafka source; the group's committed offsets say where it
/// resumes.
#[cfg(feature = "kafka")]
fn kafka_source(section: &KafkaSection, start: &crate::source::Position) -> Result<Box<dyn Source>> {
    Ok(Box::new(crate::source::KafkaSource::new(section, Some(start))?))
}

#[cfg(not(feature = "kafka"))]
fn kafka_source(_section: &KafkaSection, _start: &crate::source::Position) -> Result<Box<dyn Source>> {
    Err(Error::Config("[source] kind = \"kafka\": this sinkbox was built without the `kafka` feature".into()))
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
        assert!(parse_err("[source]\nkind = \"nats\"\n").contains("unknown variant `nats`"));
        assert!(parse_err("[source]\nkind = \"kafka\"\n").contains("missing field `brokers`"));
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

    #[test]
    fn absurd_durations_are_refused_not_wrapped() {
        assert_eq!(parse_duration("24h"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("86400000ms"), Ok(MAX_DURATION));
        for text in ["18446744073709551615s", "1152921504606846976h", "99999999999999999999999s", "25h", "86400001ms"] {
            let err = parse_duration(text).unwrap_err();
            assert_eq!(err, format!("duration \"{text}\" is longer than the maximum of 24h"));
        }
        let cases = [
            (format!("{MINIMAL}limits = {{ timeout = \"18446744073709551615s\" }}\n"), "limits.timeout"),
            (
                format!("[pipeline]\ncommit_interval = \"1152921504606846976h\"\n{MINIMAL}"),
                "[pipeline] commit_interval",
            ),
            (format!("[retry]\ncap = \"99999999999h\"\n{MINIMAL}"), "[retry] cap"),
            (format!("[retry]\nbase = \"25h\"\n{MINIMAL}"), "[retry] base"),
        ];
        for (text, key) in cases {
            let err = parse_err(&text);
            assert!(
                err.contains(&format!("{key}: duration \"")) && err.contains("is longer than the maximum of 24h"),
                "{key}: {err}"
            );
        }
        for (key, value) in [("max_attempts", 4294967295u32), ("max_backpressure", 100_001), ("max_poison", 4000000000)]
        {
            let err = parse_err(&format!("[retry]\n{key} = {value}\n{MINIMAL}"));
            assert!(err.contains(&format!("[retry] {key} = {value} is over the maximum of")), "{err}");
        }
    }

    #[test]
    fn a_dead_letter_share_is_a_fraction() {
        for share in ["0", "-0.1", "1.5", "nan"] {
            let err = parse_err(&format!("[pipeline]\nmax_dead_letter_share = {share}\n{MINIMAL}"));
            assert!(
                err.contains("[pipeline] max_dead_letter_share = ") && err.contains("is not a fraction above 0"),
                "{share}: {err}"
            );
        }
        for share in ["0.01", "0.5", "1"] {
            PipelineFile::parse(&format!("[pipeline]\nmax_dead_letter_share = {share}\n{MINIMAL}"), "p.toml").unwrap();
        }
    }

    #[test]
    fn names_that_could_leave_the_state_directory_are_refused() {
        for name in ["../../escape", ".hidden", "", "a/b", "x y", &"n".repeat(65)] {
            let err = parse_err(&format!("[pipeline]\nname = {name:?}\n{MINIMAL}"));
            assert!(err.contains(&format!("invalid pipeline name {name:?}")), "{err}");
            let err = parse_err(&MINIMAL.replace("name = \"a\"", &format!("name = {name:?}")));
            assert!(err.contains(&format!("invalid sink name {name:?}")), "{err}");
        }
        for name in ["orders", "orders-v2.csv", "A_1", &"n".repeat(64)] {
            assert!(check_name("pipeline", name).is_ok(), "{name}");
        }
        let file = PipelineFile::parse(MINIMAL, "p.toml").unwrap();
        let err = file.state(Path::new("."), "../up").unwrap_err().to_string();
        assert!(err.contains("invalid pipeline name \"../up\"") && err.contains("set [pipeline] name"), "{err}");
    }

    #[test]
    fn a_guest_path_granted_twice_is_refused() {
        let text = format!(
            "{MINIMAL}grants = {{ dirs = [{{ host = \"a\", guest = \"/out\" }}, {{ host = \"b\", guest = \"/out/\", mode = \"rw\" }}] }}\n"
        );
        let err = parse_err(&text);
        assert!(
            err.contains(
                "sink \"a\": guest path /out/ is granted twice (host a and host b); grant each guest path once"
            ),
            "{err}"
        );
    }
}
