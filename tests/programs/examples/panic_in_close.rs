//! Panics in close.

use sinkbox_sdk::export_sink;
use sinkbox_test_programs::{Behaviour, Program};

#[derive(Default)]
struct PanicIn;

impl Behaviour for PanicIn {
    fn close(&mut self) {
        panic!("test program panics in close")
    }
}

export_sink!(Program<PanicIn>);
