//! Checking a sink's config against the JSON Schema it publishes.

use crate::checkpoint::{SinkSpec, runtime};
use crate::error::{Error, Phase, Result};
use crate::sandbox::{Engine, Interrupt, SinkInstance};

/// Asks the sink for its config schema (in a throwaway instance) and checks
/// the spec's config against it. Returns the schema, if the sink has one.
pub fn check_config(engine: &Engine, spec: &SinkSpec) -> Result<Option<String>> {
    let schema = runtime()?.block_on(async {
        let mut instance =
            SinkInstance::new(engine, &spec.component, &spec.name, spec.limits, &spec.grants, Interrupt::never()).await?;
        instance.config_schema().await.map_err(|e| e.into_failure(&spec.name, Phase::ConfigSchema))
    })?;
    let Some(schema_text) = schema else {
        return Ok(None);
    };
    let fail = |what: String| Error::Config(format!("sink \"{}\": {what}", spec.name));
    let schema: serde_json::Value =
        serde_json::from_str(&schema_text).map_err(|e| fail(format!("its config schema is not JSON: {e}")))?;
    let validator =
        jsonschema::validator_for(&schema).map_err(|e| fail(format!("its config schema is invalid: {e}")))?;
    let config: serde_json::Value =
        serde_json::from_str(&spec.config).map_err(|e| fail(format!("config is not JSON: {e}")))?;
    let problems: Vec<String> = validator
        .iter_errors(&config)
        .map(|e| {
            let at = e.instance_path.to_string();
            if at.is_empty() { format!("{e}") } else { format!("at {at}: {e}") }
        })
        .collect();
    if !problems.is_empty() {
        return Err(fail(format!("config does not match the sink's schema: {}", problems.join("; "))));
    }
    Ok(Some(schema_text))
}
