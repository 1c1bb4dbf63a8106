//! Checking a sink's config against the JSON Schema it publishes.

use crate::checkpoint::{SinkSpec, runtime};
use crate::error::{Error, Phase, Result};
use crate::sandbox::{Engine, Interrupt, SinkInstance};

/// Largest config schema a sink may publish.
pub const MAX_SCHEMA_BYTES: usize = 64 << 10;
/// Deepest nesting of a config schema.
pub const MAX_SCHEMA_DEPTH: usize = 32;
/// Most `$ref`, `anyOf`, `oneOf`, `allOf` and `not` keywords in a schema.
pub const MAX_SCHEMA_COMBINATORS: usize = 256;
/// Longest a config check may take.
pub const SCHEMA_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How deep `value` nests, and how many combinator keywords it holds.
fn shape(value: &serde_json::Value) -> (usize, usize) {
    match value {
        serde_json::Value::Object(map) => {
            let own = map.keys().filter(|k| matches!(k.as_str(), "$ref" | "anyOf" | "oneOf" | "allOf" | "not")).count();
            map.values().map(shape).fold((1, own), |(d, c), (cd, cc)| (d.max(cd + 1), c + cc))
        }
        serde_json::Value::Array(items) => {
            items.iter().map(shape).fold((1, 0), |(d, c), (cd, cc)| (d.max(cd + 1), c + cc))
        }
        _ => (0, 0),
    }
}

/// Asks the sink for its config schema (in a throwaway instance) and checks
/// the spec's config against it. Returns the schema, if the sink has one.
pub fn check_config(engine: &Engine, spec: &SinkSpec) -> Result<Option<String>> {
    let schema = runtime()?.block_on(async {
        let mut instance =
            SinkInstance::new(engine, &spec.component, &spec.name, spec.limits, &spec.grants, Interrupt::never())
                .await?;
        instance.config_schema().await.map_err(|e| e.into_failure(&spec.name, Phase::ConfigSchema))
    })?;
    let Some(schema_text) = schema else {
        return Ok(None);
    };
    let fail = |what: String| Error::Config(format!("sink \"{}\": {what}", spec.name));
    // The schema is the guest's output: bound it before the host works on it.
    if schema_text.len() > MAX_SCHEMA_BYTES {
        return Err(fail(format!(
            "its config schema is {} bytes, over the limit of {MAX_SCHEMA_BYTES}",
            schema_text.len()
        )));
    }
    let schema: serde_json::Value =
        serde_json::from_str(&schema_text).map_err(|e| fail(format!("its config schema is not JSON: {e}")))?;
    let (depth, combinators) = shape(&schema);
    if depth > MAX_SCHEMA_DEPTH || combinators > MAX_SCHEMA_COMBINATORS {
        return Err(fail(format!(
            "its config schema nests {depth} levels deep with {combinators} $ref/anyOf/oneOf/allOf/not; the limits \
             are {MAX_SCHEMA_DEPTH} and {MAX_SCHEMA_COMBINATORS}"
        )));
    }
    let config: serde_json::Value =
        serde_json::from_str(&spec.config).map_err(|e| fail(format!("config is not JSON: {e}")))?;
    // Validate on a thread of its own under a time limit: a schema that
    // passed the shape limits can still be slow to check.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("sinkbox-schema".into())
        .spawn(move || {
            let problems = jsonschema::validator_for(&schema)
                .map(|validator| {
                    validator
                        .iter_errors(&config)
                        .take(20)
                        .map(|e| {
                            let at = e.instance_path.to_string();
                            if at.is_empty() { format!("{e}") } else { format!("at {at}: {e}") }
                        })
                        .collect::<Vec<String>>()
                })
                .map_err(|e| e.to_string());
            let _ = tx.send(problems);
        })
        .map_err(|e| Error::io("cannot start the schema check", e))?;
    let problems = match rx.recv_timeout(SCHEMA_TIMEOUT) {
        Ok(Ok(problems)) => problems,
        Ok(Err(e)) => return Err(fail(format!("its config schema is invalid: {e}"))),
        Err(_) => {
            return Err(fail(format!("checking the config against its schema took over {SCHEMA_TIMEOUT:?}; refused")));
        }
    };
    let problems: Vec<String> = problems.into_iter().map(|p| crate::sandbox::text::guest(&p)).collect();
    if !problems.is_empty() {
        return Err(fail(format!("config does not match the sink's schema: {}", problems.join("; "))));
    }
    Ok(Some(schema_text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_shape_counts_depth_and_combinators() {
        let schema = serde_json::json!({"anyOf": [{"$ref": "#"}, {"properties": {"a": {"not": {}}}}]});
        assert_eq!(shape(&schema), (6, 3));
        let mut bomb = serde_json::json!({});
        for _ in 0..40 {
            bomb = serde_json::json!({"anyOf": [bomb.clone(), {"$ref": "#"}]});
        }
        let (depth, combinators) = shape(&bomb);
        assert!(depth > MAX_SCHEMA_DEPTH && combinators >= 80, "{depth} {combinators}");
    }
}
