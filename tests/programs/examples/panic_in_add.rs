//! Panics in add.

use sinkbox_sdk::{Error, Record, export_sink};
use sinkbox_test_programs::{Behaviour, Config, Program};

#[derive(Default)]
struct PanicIn;

impl Behaviour for PanicIn {
    fn add(&mut self, _config: &Config, _record: &Record<'_>) -> Result<(), Error> {
        panic!("test program panics in add")
    }
}

export_sink!(Program<PanicIn>);
