//! Answers retryable to the first `times` flushes (counted across
//! instances: retryable replaces the instance), then works.

use sinkbox_sdk::{Error, export_sink};
use sinkbox_test_programs::{Behaviour, Config, Program};

#[derive(Default)]
struct RetryableThenOk;

impl Behaviour for RetryableThenOk {
    fn flush(&mut self, config: &Config) -> Result<(), Error> {
        let n = config.count("retryable");
        if n < config.times {
            return Err(Error::retryable(format!("destination unavailable (attempt {})", n + 1)));
        }
        Ok(())
    }
}

export_sink!(Program<RetryableThenOk>);
