//! The `blackhole` sink: counts records and bytes, writes nothing.
//!
//! Used for benchmarks (it measures the sandbox boundary and the runtime,
//! not a destination) and as the simplest complete example of a sink.
//! Config: `{"log_flushes": true}` logs the running totals at each flush.

use sinkbox_sdk::{Batch, Context, Error, Record, Sink, Status, export_sink};

/// Running totals; `pending` is what `abort` throws away.
#[derive(Debug, Default)]
pub struct Blackhole {
    log_flushes: bool,
    pending: Totals,
    flushed: Totals,
    /// Records already reported in a status.
    reported: u64,
}

/// Records and key+value bytes seen.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Records.
    pub records: u64,
    /// Key and value bytes.
    pub bytes: u64,
}

/// The blackhole's config.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Log the totals at each flush.
    #[serde(default)]
    pub log_flushes: bool,
}

impl Blackhole {
    /// Totals made durable by `flush`.
    pub fn flushed(&self) -> Totals {
        self.flushed
    }
}

impl Sink for Blackhole {
    type Config = Config;

    fn config_schema() -> Option<String> {
        Some(r#"{"type":"object","additionalProperties":false,"properties":{"log_flushes":{"type":"boolean"}}}"#.into())
    }

    fn open(config: Config, _context: &Context) -> Result<Self, Error> {
        Ok(Blackhole { log_flushes: config.log_flushes, ..Default::default() })
    }

    fn add(&mut self, record: Record<'_>) -> Result<(), Error> {
        self.pending.records += 1;
        self.pending.bytes += (record.key().map_or(0, <[u8]>::len) + record.value().len()) as u64;
        Ok(())
    }

    fn add_batch(&mut self, batch: Batch) -> Result<(), Error> {
        for record in batch.records() {
            let record = record.map_err(Error::fatal)?;
            self.add(record)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.flushed.records += self.pending.records;
        self.flushed.bytes += self.pending.bytes;
        self.pending = Totals::default();
        if self.log_flushes {
            sinkbox_sdk::info!("{} records, {} bytes", self.flushed.records, self.flushed.bytes);
        }
        Ok(())
    }

    fn status(&mut self) -> Option<Status> {
        let written = self.flushed.records - std::mem::replace(&mut self.reported, self.flushed.records);
        Some(Status { written, custom: vec![("bytes".into(), self.flushed.bytes)], ..Status::default() })
    }

    fn abort(&mut self) {
        self.pending = Totals::default();
    }
}

export_sink!(Blackhole);
