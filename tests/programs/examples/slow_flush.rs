//! Spins for `sleep_ms` in each flush, busy in guest code as a slow encoder
//! or a tight polling loop would be.

use std::time::{Duration, Instant};

use sinkbox_sdk::{Error, export_sink};
use sinkbox_test_programs::{Behaviour, Config, Program};

#[derive(Default)]
struct SlowFlush;

impl Behaviour for SlowFlush {
    fn flush(&mut self, config: &Config) -> Result<(), Error> {
        let until = Instant::now() + Duration::from_millis(config.sleep_ms);
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        Ok(())
    }
}

export_sink!(Program<SlowFlush>);
