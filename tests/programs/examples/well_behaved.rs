//! A well-behaved sink: logs, prints, and writes each value as a line at flush.

use sinkbox_sdk::{Error, export_sink};
use sinkbox_test_programs::{Behaviour, Config, Program};

#[derive(Default)]
struct WellBehaved;

impl Behaviour for WellBehaved {
    fn open(&mut self, _config: &Config) -> Result<(), Error> {
        sinkbox_sdk::info!("opened");
        println!("hello from the guest stdout");
        Ok(())
    }
}

export_sink!(Program<WellBehaved>);
