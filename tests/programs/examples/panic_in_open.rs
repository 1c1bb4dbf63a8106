//! Panics in open.

use sinkbox_sdk::{Error, export_sink};
use sinkbox_test_programs::{Behaviour, Config, Program};

#[derive(Default)]
struct PanicIn;

impl Behaviour for PanicIn {
    fn open(&mut self, _config: &Config) -> Result<(), Error> {
        panic!("test program panics in open")
    }
}

export_sink!(Program<PanicIn>);
