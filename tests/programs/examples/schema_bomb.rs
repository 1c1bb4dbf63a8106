//! Publishes a config schema built to make a validator blow up: 40 levels
//! of `anyOf` with a `$ref` back to the root at each.

use sinkbox_sdk::{Context, Error, Record, Sink, export_sink};

struct SchemaBomb;

impl Sink for SchemaBomb {
    type Config = serde::de::IgnoredAny;

    fn config_schema() -> Option<String> {
        let mut schema = String::from("{}");
        for _ in 0..40 {
            schema = format!(r##"{{"anyOf":[{schema},{{"$ref":"#"}}]}}"##);
        }
        Some(schema)
    }

    fn open(_config: Self::Config, _context: &Context) -> Result<Self, Error> {
        Ok(SchemaBomb)
    }

    fn add(&mut self, _record: Record<'_>) -> Result<(), Error> {
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

export_sink!(SchemaBomb);
