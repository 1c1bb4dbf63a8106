//! Allocates without bound in add.

use sinkbox_sdk::{Error, Record, export_sink};
use sinkbox_test_programs::{Behaviour, Config, Program};

#[derive(Default)]
struct MemoryBomb(Vec<Vec<u8>>);

impl Behaviour for MemoryBomb {
    fn add(&mut self, _config: &Config, _record: &Record<'_>) -> Result<(), Error> {
        loop {
            self.0.push(std::hint::black_box(vec![1u8; 1 << 20]));
        }
    }
}

export_sink!(Program<MemoryBomb>);
