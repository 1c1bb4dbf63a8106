//! Panics on any record whose value contains "poison".

use sinkbox_sdk::{Error, Record, export_sink};
use sinkbox_test_programs::{Behaviour, Config, Program};

#[derive(Default)]
struct Poison;

impl Behaviour for Poison {
    fn add(&mut self, _config: &Config, record: &Record<'_>) -> Result<(), Error> {
        if record.value().windows(6).any(|w| w == b"poison") {
            panic!("poisoned by the record at offset {}", record.offset());
        }
        Ok(())
    }
}

export_sink!(Program<Poison>);
