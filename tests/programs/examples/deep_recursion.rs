//! Recurses until the wasm call stack is exhausted in add.

use sinkbox_sdk::{Error, Record, export_sink};
use sinkbox_test_programs::{Behaviour, Config, Program};

#[derive(Default)]
struct DeepRecursion;

/// Not tail-recursive, and opaque to the optimizer, so every level is a
/// real wasm call frame.
fn descend(depth: u64) -> u64 {
    if depth == u64::MAX {
        return 0;
    }
    std::hint::black_box(descend(std::hint::black_box(depth + 1))) + 1
}

impl Behaviour for DeepRecursion {
    fn add(&mut self, _config: &Config, _record: &Record<'_>) -> Result<(), Error> {
        std::hint::black_box(descend(0));
        Ok(())
    }
}

export_sink!(Program<DeepRecursion>);
