//! Paths of the test programs, built into components by this crate's build
//! script. One constant per program in `tests/programs/examples`.
#![allow(missing_docs)]

include!(concat!(env!("OUT_DIR"), "/programs.rs"));
