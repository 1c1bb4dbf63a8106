//! Sleeps `sleep_ms` inside a host call (a WASI clock wait, not a guest
//! loop) in the phase `phase`, in the first `times` instances (counted
//! across instances; 0: every instance). Without `sleep_ms`, forever.

use std::time::Duration;

use sinkbox_sdk::{Error, Record, export_sink};
use sinkbox_test_programs::{Behaviour, Config, Program};

#[derive(Default)]
struct SleepsInHost {
    decided: Option<bool>,
}

impl SleepsInHost {
    fn maybe_sleep(&mut self, config: &Config, phase: &str) {
        if !config.in_phase(phase) {
            return;
        }
        let sleeps = *self.decided.get_or_insert_with(|| config.times == 0 || config.count("sleeps") < config.times);
        if sleeps {
            let wait = if config.sleep_ms == 0 {
                Duration::from_secs(365 * 24 * 3600)
            } else {
                Duration::from_millis(config.sleep_ms)
            };
            std::thread::sleep(wait);
        }
    }
}

impl Behaviour for SleepsInHost {
    fn open(&mut self, config: &Config) -> Result<(), Error> {
        self.maybe_sleep(config, "open");
        Ok(())
    }
    fn add(&mut self, config: &Config, _record: &Record<'_>) -> Result<(), Error> {
        self.maybe_sleep(config, "add");
        Ok(())
    }
    fn flush(&mut self, config: &Config) -> Result<(), Error> {
        self.maybe_sleep(config, "flush");
        Ok(())
    }
}

export_sink!(Program<SleepsInHost>);
