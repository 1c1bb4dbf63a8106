//! Shared parts of the test programs. [`Program`] is a sink that records
//! each value as a line in a granted file at flush; each program plugs a
//! [`Behaviour`] into it that misbehaves at one point of the contract.

use std::fs::OpenOptions;
use std::io::Write;

use sinkbox_sdk::{Error, Record, Sink};

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

/// A recording sink with a plugged-in behaviour.
pub struct Program<B> {
    config: Config,
    behaviour: B,
    buffer: Vec<u8>,
}

impl<B: Behaviour> Sink for Program<B> {
    type Config = Config;

    fn open(config: Config) -> Result<Self, Error> {
        let mut behaviour = B::default();
        behaviour.open(&config)?;
        Ok(Program { config, behaviour, buffer: Vec::new() })
    }

    fn add(&mut self, record: Record<'_>) -> Result<(), Error> {
        self.behaviour.add(&self.config, &record)?;
        self.buffer.extend_from_slice(record.value());
        self.buffer.push(b'\n');
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
        Ok(())
    }

    fn abort(&mut self) {
        self.buffer.clear();
    }

    fn close(mut self) -> Result<(), Error> {
        self.behaviour.close();
        Ok(())
    }
}
