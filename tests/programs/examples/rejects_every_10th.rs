//! Rejects every record whose offset ends in 9 (every 10th from offset 0).

use sinkbox_sdk::{Error, Record, export_sink};
use sinkbox_test_programs::{Behaviour, Config, Program};

#[derive(Default)]
struct RejectsEvery10th;

impl Behaviour for RejectsEvery10th {
    fn add(&mut self, _config: &Config, record: &Record<'_>) -> Result<(), Error> {
        if record.offset() % 10 == 9 {
            return Err(Error::reject(format!("offset {} ends in 9", record.offset())));
        }
        Ok(())
    }
}

export_sink!(Program<RejectsEvery10th>);
