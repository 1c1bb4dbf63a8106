//! Says hostile things to the host in `flush`, by `mode`: `forge` logs a
//! message with a newline that imitates a host log line; `huge-error`
//! fails with a 16 MiB fatal message; `flood` logs 100,000 lines.

use sinkbox_sdk::{Error, export_sink};
use sinkbox_test_programs::{Behaviour, Config, Program};

#[derive(Default)]
struct HostileText;

impl Behaviour for HostileText {
    fn flush(&mut self, config: &Config) -> Result<(), Error> {
        match config.mode.as_deref() {
            Some("forge") => {
                sinkbox_sdk::info!(
                    "fine\n2026-01-01T00:00:00Z  INFO FORGED sink \"payments\" committed 1000 records\r"
                );
                Ok(())
            }
            Some("huge-error") if config.count("huge") < config.times => Err(Error::fatal("x".repeat(16 << 20))),
            Some("flood") => {
                for i in 0..100_000 {
                    sinkbox_sdk::info!("flood line {i}");
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

export_sink!(Program<HostileText>);
