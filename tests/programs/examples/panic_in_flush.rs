//! Panics in flush.

use sinkbox_sdk::{Error, export_sink};
use sinkbox_test_programs::{Behaviour, Config, Program};

#[derive(Default)]
struct PanicIn;

impl Behaviour for PanicIn {
    fn flush(&mut self, _config: &Config) -> Result<(), Error> {
        panic!("test program panics in flush")
    }
}

export_sink!(Program<PanicIn>);
