//! Loops forever in add.

use sinkbox_sdk::{Error, Record, export_sink};
use sinkbox_test_programs::{Behaviour, Config, Program};

#[derive(Default)]
struct InfiniteLoop;

impl Behaviour for InfiniteLoop {
    fn add(&mut self, _config: &Config, _record: &Record<'_>) -> Result<(), Error> {
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

export_sink!(Program<InfiniteLoop>);
