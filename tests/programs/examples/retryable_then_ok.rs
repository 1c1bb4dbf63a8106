//! Answers retryable to the first `times` flushes of each instance, then works.

use sinkbox_sdk::{Error, export_sink};
use sinkbox_test_programs::{Behaviour, Config, Program};

#[derive(Default)]
struct RetryableThenOk(u32);

impl Behaviour for RetryableThenOk {
    fn flush(&mut self, config: &Config) -> Result<(), Error> {
        if self.0 < config.times {
            self.0 += 1;
            return Err(Error::retryable(format!("destination unavailable (attempt {})", self.0)));
        }
        Ok(())
    }
}

export_sink!(Program<RetryableThenOk>);
