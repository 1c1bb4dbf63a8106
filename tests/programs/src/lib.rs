//! Shared parts of the test programs. [`Program`] is a sink that records
//! each value as a line in a granted file at flush; each program plugs a
//! [`Behaviour`] into it that misbehaves at one point of the contract.

use std::fs::OpenOptions;
use std::io::Write;

use sinkbox_sdk::{Context, Error, Record, Sink, Status};

/// Config of every test program; each reads the fields it needs.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Output file (inside a granted directory); none keeps nothing.
    #[serde(default)]
    pub out: Option<String>,
    /// How many times to misbehave before behaving.
    #[serde(default)]
    pub times: u32,
    /// Milliseconds to sleep where the program sleeps.
    #[serde(default)]
    pub sleep_ms: u64,
    /// Where the program misbehaves, for programs that can do it anywhere:
    /// `open`, `add`, `flush` or `close`.
    #[serde(default)]
    pub phase: Option<String>,
    /// How the program misbehaves, for programs with several ways;
    /// `metadata` (any program) writes each record's topic, partition,
    /// offset, timestamp, key, headers and value as a JSON line instead of
    /// its value; `world` writes its offset, key and value with what the
    /// sandbox's wall clock and random numbers gave.
    #[serde(default)]
    pub mode: Option<String>,
}

impl Config {
    /// Whether the program misbehaves in `phase`.
    pub fn in_phase(&self, phase: &str) -> bool {
        self.phase.as_deref() == Some(phase)
    }

    /// Counts calls across instances (a fresh instance forgets its own
    /// state) in a file beside `out`, named by `tag`; returns the count
    /// before this call. Without `out`, always 0.
    pub fn count(&self, tag: &str) -> u32 {
        let Some(out) = &self.out else { return 0 };
        let path = format!("{out}.{tag}.count");
        let n: u32 = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
        let _ = std::fs::write(&path, (n + 1).to_string());
        n
    }
}

/// Where a program misbehaves. Every hook defaults to behaving.
pub trait Behaviour: Default + 'static {
    fn open(&mut self, _config: &Config) -> Result<(), Error> {
        Ok(())
    }
    fn add(&mut self, _config: &Config, _record: &Record<'_>) -> Result<(), Error> {
        Ok(())
    }
    fn flush(&mut self, _config: &Config) -> Result<(), Error> {
        Ok(())
    }
    fn close(&mut self) {}
}

/// A recording sink with a plugged-in behaviour. Output is appended at
/// flush (at-least-once across crashes); `out` may name `{lane}` or
/// `{partition}`.
pub struct Program<B> {
    config: Config,
    behaviour: B,
    buffer: Vec<u8>,
    pending: u64,
    written: u64,
}

impl<B: Behaviour> Sink for Program<B> {
    type Config = Config;

    fn open(mut config: Config, context: &Context) -> Result<Self, Error> {
        config.out = config.out.map(|out| context.expand(&out));
        let mut behaviour = B::default();
        behaviour.open(&config)?;
        Ok(Program { config, behaviour, buffer: Vec::new(), pending: 0, written: 0 })
    }

    fn add(&mut self, record: Record<'_>) -> Result<(), Error> {
        self.behaviour.add(&self.config, &record)?;
        if self.config.mode.as_deref() == Some("metadata") {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            let headers: Vec<(String, String)> = record.headers().map(|(n, v)| (text(n), text(v))).collect();
            let line = serde_json::json!({
                "topic": record.topic(),
                "partition": record.partition(),
                "offset": record.offset(),
                "timestamp": record.timestamp(),
                "key": record.key().map(text),
                "headers": headers,
                "value": text(record.value()),
            });
            self.buffer.extend_from_slice(line.to_string().as_bytes());
        } else if self.config.mode.as_deref() == Some("world") {
            // What the sandbox's clock and random numbers say, per record.
            use std::hash::BuildHasher;
            let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let random = std::collections::hash_map::RandomState::new().hash_one(record.offset());
            let line = serde_json::json!({
                "offset": record.offset(),
                "key": record.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                "value": String::from_utf8_lossy(record.value()),
                "clock_ns": u64::try_from(clock.as_nanos()).unwrap_or(u64::MAX),
                "random": random,
            });
            self.buffer.extend_from_slice(line.to_string().as_bytes());
        } else {
            self.buffer.extend_from_slice(record.value());
        }
        self.buffer.push(b'\n');
        self.pending += 1;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.behaviour.flush(&self.config)?;
        if let Some(path) = &self.config.out {
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| Error::fatal(format!("cannot open {path}: {e}")))?;
            file.write_all(&self.buffer).map_err(|e| Error::retryable(format!("cannot write {path}: {e}")))?;
        }
        self.buffer.clear();
        self.written += std::mem::take(&mut self.pending);
        Ok(())
    }

    fn status(&mut self) -> Option<Status> {
        Some(Status { written: std::mem::take(&mut self.written), ..Status::default() })
    }

    fn abort(&mut self) {
        self.buffer.clear();
        self.pending = 0;
    }

    fn close(mut self) -> Result<(), Error> {
        self.behaviour.close();
        Ok(())
    }
}
