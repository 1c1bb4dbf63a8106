//! Burns a huge but finite amount of computation in add.

use sinkbox_sdk::{Error, Record, export_sink};
use sinkbox_test_programs::{Behaviour, Config, Program};

#[derive(Default)]
struct FuelBomb;

impl Behaviour for FuelBomb {
    fn add(&mut self, _config: &Config, _record: &Record<'_>) -> Result<(), Error> {
        let mut n = 0u64;
        for i in 0..10_000_000_000u64 {
            n = std::hint::black_box(n ^ i);
        }
        std::hint::black_box(n);
        Ok(())
    }
}

export_sink!(Program<FuelBomb>);
