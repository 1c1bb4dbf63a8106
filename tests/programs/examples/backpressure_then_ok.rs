//! Answers backpressure (retry after `sleep_ms`) to the first `times` adds of each instance, then works.
//! With `phase = "partition-N"`, only the instances of partition N do.

use std::time::Duration;

use sinkbox_sdk::{Error, Record, export_sink};
use sinkbox_test_programs::{Behaviour, Config, Program};

#[derive(Default)]
struct BackpressureThenOk(u32);

impl Behaviour for BackpressureThenOk {
    fn add(&mut self, config: &Config, record: &Record<'_>) -> Result<(), Error> {
        let here = config.phase.as_ref().is_none_or(|p| *p == format!("partition-{}", record.partition()));
        if here && self.0 < config.times {
            self.0 += 1;
            return Err(Error::backpressure(Duration::from_millis(config.sleep_ms)));
        }
        Ok(())
    }
}

export_sink!(Program<BackpressureThenOk>);
