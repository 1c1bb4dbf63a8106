//! Answers backpressure (retry after `sleep_ms`) to the first `times` adds of each instance, then works.

use std::time::Duration;

use sinkbox_sdk::{Error, Record, export_sink};
use sinkbox_test_programs::{Behaviour, Config, Program};

#[derive(Default)]
struct BackpressureThenOk(u32);

impl Behaviour for BackpressureThenOk {
    fn add(&mut self, config: &Config, _record: &Record<'_>) -> Result<(), Error> {
        if self.0 < config.times {
            self.0 += 1;
            return Err(Error::backpressure(Duration::from_millis(config.sleep_ms)));
        }
        Ok(())
    }
}

export_sink!(Program<BackpressureThenOk>);
