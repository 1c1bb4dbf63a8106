//! Checking a sink's config against the JSON Schema it publishes.
//!
//! The schema is the guest's output, so the host never does unbounded work
//! on it. Cheap, bounded checks come first: its size, then (parsed) its
//! nesting depth and its count of combinator keywords. The check itself, by
//! the `jsonschema` crate, does not run on the host: the runtime embeds it
//! as a WASI command (`runtime/validator`, built for wasm32-wasip2) and runs
//! it in a sandbox under the sink's own limits (memory, the wall-clock
//! deadline of a call, and fuel when the engine meters it). A schema that
//! passes the first checks yet makes validation blow up (nested `$ref`s
//! that double at each level, say) hits one of those limits and is refused
//! with the limit named; it costs the host no more than the sink could.

use serde::Deserialize;

use crate::checkpoint::{SinkSpec, runtime};
use crate::error::{Error, Fault, Phase, Result};
use crate::sandbox::{Engine, Interrupt, SandboxLimits, SinkInstance, text};

include!(concat!(env!("OUT_DIR"), "/validator.rs"));

/// Largest config schema a sink may publish.
pub const MAX_SCHEMA_BYTES: usize = 64 << 10;
/// Deepest nesting of a config schema.
pub const MAX_SCHEMA_DEPTH: usize = 32;
/// Most `$ref`, `anyOf`, `oneOf`, `allOf` and `not` keywords in a schema.
pub const MAX_SCHEMA_COMBINATORS: usize = 256;

/// The validator's name in messages, and its key in the engine's memo.
const VALIDATOR_ORIGIN: &str = "the config-schema validator";
/// Most the validator may write: 20 problems of at most 1 KiB each, as
/// JSON (escaping can make one several times longer), with room to spare.
const MAX_ANSWER: usize = 256 << 10;

/// The validator's answer (see `runtime/validator`).
#[derive(Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
enum Answer {
    /// What is wrong with the config; empty if it matches.
    Problems(Vec<String>),
    /// Why the schema is not a valid JSON Schema.
    Invalid(String),
}

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
/// the spec's config against it (see [`check_schema`]), under the sink's
/// limits. Returns the schema, if the sink has one. `interrupt` cuts both
/// sandboxed calls off.
pub fn check_config(engine: &Engine, spec: &SinkSpec, interrupt: Interrupt) -> Result<Option<String>> {
    let schema = runtime()?.block_on(async {
        let mut instance =
            SinkInstance::new(engine, &spec.component, &spec.name, spec.limits, &spec.grants, interrupt.clone())
                .await?;
        instance.config_schema().await.map_err(|e| e.into_failure(&spec.name, Phase::ConfigSchema))
    })?;
    let Some(schema) = schema else {
        return Ok(None);
    };
    check_schema(engine, &spec.name, spec.limits, &schema, Some(&spec.config), interrupt)?;
    Ok(Some(schema))
}

/// Checks the config schema that the sink `sink` published: its size and
/// shape on the host, then that it is a valid JSON Schema and, given a
/// `config`, that the config matches it, in the sandboxed validator under
/// `limits`. Every refusal names the sink; a limit the validator hit is
/// named as such.
pub fn check_schema(
    engine: &Engine,
    sink: &str,
    limits: SandboxLimits,
    schema_text: &str,
    config: Option<&str>,
    interrupt: Interrupt,
) -> Result<()> {
    let fail = |what: String| Error::Config(format!("sink \"{sink}\": {what}"));
    // The schema is the guest's output: bound it before the host works on it.
    if schema_text.len() > MAX_SCHEMA_BYTES {
        return Err(fail(format!(
            "its config schema is {} bytes, over the limit of {MAX_SCHEMA_BYTES}",
            schema_text.len()
        )));
    }
    let schema: serde_json::Value =
        serde_json::from_str(schema_text).map_err(|e| fail(format!("its config schema is not JSON: {e}")))?;
    let (depth, combinators) = shape(&schema);
    if depth > MAX_SCHEMA_DEPTH || combinators > MAX_SCHEMA_COMBINATORS {
        return Err(fail(format!(
            "its config schema nests {depth} levels deep with {combinators} $ref/anyOf/oneOf/allOf/not; the limits \
             are {MAX_SCHEMA_DEPTH} and {MAX_SCHEMA_COMBINATORS}"
        )));
    }
    // Both texts are whole JSON documents (parsed above), so they can be
    // spliced into the validator's input as they are.
    let mut input = format!("{{\"schema\":{schema_text}");
    if let Some(config) = config {
        serde_json::from_str::<serde::de::IgnoredAny>(config).map_err(|e| fail(format!("config is not JSON: {e}")))?;
        input.push_str(",\"config\":");
        input.push_str(config);
    }
    input.push('}');
    let what = if config.is_some() { "checking the config against its schema" } else { "checking its config schema" };
    let started = std::time::Instant::now();
    let validator = engine.helper(VALIDATOR, VALIDATOR_ORIGIN)?;
    let loaded = started.elapsed();
    let answer = runtime()?
        .block_on(validator.run(engine, sink, limits, interrupt, input.into_bytes(), MAX_ANSWER))
        .map_err(|fault| fail(format!("{what} {}; refused", described(&fault))))?;
    tracing::debug!(sink, ?loaded, took = ?started.elapsed(), "{what}");
    let answer: Answer = serde_json::from_slice(&answer)
        .map_err(|e| fail(format!("{what}: {VALIDATOR_ORIGIN} answered what the runtime cannot read: {e}")))?;
    match answer {
        Answer::Invalid(e) => Err(fail(format!("its config schema is invalid: {}", text::guest(&e)))),
        Answer::Problems(problems) if !problems.is_empty() => {
            let problems: Vec<String> = problems.iter().map(|p| text::guest(p)).collect();
            Err(fail(format!("config does not match the sink's schema: {}", problems.join("; "))))
        }
        Answer::Problems(_) => Ok(()),
    }
}

/// A validator run's fault as the end of a sentence: `exceeded its memory
/// limit of 64 MiB`; a trap says what trapped and what the validator wrote
/// to stderr.
fn described(fault: &Fault) -> String {
    let Fault::Trap { stderr, source } = fault else {
        return fault.to_string();
    };
    // The innermost cause is the trap itself; the outer ones are backtraces.
    let mut cause: &dyn std::error::Error = &**source;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let mut text = format!("{fault} ({})", text::guest(&cause.to_string()));
    if let Some(stderr) = stderr {
        text.push_str(&format!(" (validator stderr: {stderr})"));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;
    use std::time::Duration;

    use super::*;
    use crate::EngineOptions;

    /// One engine for these tests, so the validator compiles once.
    fn engine() -> &'static Engine {
        static ENGINE: OnceLock<Engine> = OnceLock::new();
        ENGINE.get_or_init(|| Engine::new(EngineOptions::default().cache_dir(None)).expect("engine"))
    }

    /// `d0` is all of `d1` twice, and so on for `levels`: small, shallow,
    /// and doubling the validator's work at each level.
    fn doubling(levels: usize) -> String {
        let mut defs: Vec<String> = (0..levels)
            .map(|i| format!(r##""d{i}":{{"allOf":[{{"$ref":"#/$defs/d{0}"}},{{"$ref":"#/$defs/d{0}"}}]}}"##, i + 1))
            .collect();
        defs.push(format!(r#""d{levels}":{{}}"#));
        format!(r##"{{"$defs":{{{}}},"$ref":"#/$defs/d0"}}"##, defs.join(","))
    }

    fn check(limits: SandboxLimits, schema: &str, config: Option<&str>, interrupt: Interrupt) -> Result<(), String> {
        check_schema(engine(), "t", limits, schema, config, interrupt).map_err(|e| e.to_string())
    }

    #[test]
    fn the_sandboxed_validator_answers_what_the_host_one_did() {
        let schema = r#"{"type":"object","properties":{"format":{"enum":["csv","json"]}},"required":["path"]}"#;
        let limits = SandboxLimits::default();
        let never = Interrupt::never;
        let cases: [(&str, Option<&str>, Result<(), &str>); 6] = [
            (schema, Some(r#"{"path":"x","format":"csv"}"#), Ok(())),
            (
                schema,
                Some(r#"{"format":"xml"}"#),
                Err(
                    r#"sink "t": config does not match the sink's schema: at /format: "xml" is not one of "csv" or "json"; "path" is a required property"#,
                ),
            ),
            (schema, None, Ok(())),
            (schema, Some("{"), Err(r#"sink "t": config is not JSON: EOF while parsing an object at line 1 column 1"#)),
            (
                r#"{"type":5}"#,
                None,
                Err(
                    r#"sink "t": its config schema is invalid: 5 is not valid under any of the schemas listed in the 'anyOf' keyword"#,
                ),
            ),
            (&doubling(40), None, Ok(())),
        ];
        for (schema, config, expected) in cases {
            assert_eq!(check(limits, schema, config, never()), expected.map_err(str::to_string), "{config:?}");
        }
    }

    #[test]
    fn a_costly_check_is_refused_at_the_sinks_limits_or_when_interrupted() {
        let schema = doubling(40);
        let config = Some("{}");
        let refused = |what: &str| Err(format!("sink \"t\": checking the config against its schema {what}; refused"));
        let small = SandboxLimits::default().memory(16 << 20);
        assert_eq!(check(small, &schema, config, Interrupt::never()), refused("exceeded its memory limit of 16 MiB"));
        let slow = SandboxLimits::default().memory(1 << 30).timeout(Duration::from_millis(100));
        assert_eq!(check(slow, &schema, config, Interrupt::never()), refused("exceeded its time limit of 100ms"));
        let (tx, rx) = tokio::sync::watch::channel(true);
        let stopped = check(SandboxLimits::default(), &schema, config, Interrupt::new(rx));
        assert_eq!(stopped, refused("was stopped by an abort request"));
        drop(tx);
    }

    #[test]
    fn an_oversized_schema_is_refused_before_it_is_parsed() {
        let schema = format!("[{}0]", "0,".repeat(MAX_SCHEMA_BYTES));
        let expected =
            format!("sink \"t\": its config schema is {} bytes, over the limit of {MAX_SCHEMA_BYTES}", schema.len());
        assert_eq!(check(SandboxLimits::default(), &schema, None, Interrupt::never()), Err(expected));
    }

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
