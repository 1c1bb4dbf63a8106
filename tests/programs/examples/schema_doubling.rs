//! Publishes a config schema that passes the runtime's size and shape
//! limits (1.5 KiB, 5 levels deep, 73 `$ref`/`allOf`) yet doubles the
//! validator's work at each of its 24 levels: `d0` is all of `d1` twice,
//! `d1` all of `d2` twice, and so on. Checking any config against it visits
//! 2^24 schema nodes, and a validator compiles each on first use: gigabytes
//! and minutes unless something bounds it.

use sinkbox_sdk::{Context, Error, Record, Sink, export_sink};

/// Levels of doubling.
const LEVELS: usize = 24;

struct SchemaDoubling;

impl Sink for SchemaDoubling {
    type Config = serde::de::IgnoredAny;

    fn config_schema() -> Option<String> {
        let mut defs: Vec<String> = (0..LEVELS)
            .map(|i| {
                let next = i + 1;
                format!(r##""d{i}":{{"allOf":[{{"$ref":"#/$defs/d{next}"}},{{"$ref":"#/$defs/d{next}"}}]}}"##)
            })
            .collect();
        defs.push(format!(r#""d{LEVELS}":{{"type":"object"}}"#));
        Some(format!(r##"{{"$defs":{{{}}},"$ref":"#/$defs/d0"}}"##, defs.join(",")))
    }

    fn open(_config: Self::Config, _context: &Context) -> Result<Self, Error> {
        Ok(SchemaDoubling)
    }

    fn add(&mut self, _record: Record<'_>) -> Result<(), Error> {
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

export_sink!(SchemaDoubling);
