//! Checks a sink's config against the JSON Schema the sink publishes.
//!
//! The schema is a guest's output, and checking a config against it can
//! take any amount of time and memory (nested `$ref`s compile to a tree
//! that doubles with each level), so the runtime never runs this on the
//! host: it builds this program for wasm32-wasip2 and runs it as a WASI
//! command in a sandbox under the sink's own limits.
//!
//! Protocol: standard input holds one JSON object, `{"schema": S}` or
//! `{"schema": S, "config": C}`; standard output gets one JSON object,
//! `{"problems": [...]}` (at most [`MAX_PROBLEMS`], each at most
//! [`MAX_PROBLEM_BYTES`]; empty when the config matches, and always empty
//! without a config: then only the schema is checked) or `{"invalid": E}`
//! when the schema is not a valid JSON Schema or the input is malformed.

use std::io::{Read, Write};

/// Most problems reported for one config.
pub const MAX_PROBLEMS: usize = 20;
/// Longest problem reported, in bytes; longer ones are cut.
pub const MAX_PROBLEM_BYTES: usize = 1024;

fn main() {
    let mut input = String::new();
    let answer = match std::io::stdin().read_to_string(&mut input) {
        Ok(_) => check(&input),
        Err(e) => invalid(format!("cannot read the input: {e}")),
    };
    // A failed write leaves the output empty, which the host reports.
    let _ = std::io::stdout().write_all(answer.to_string().as_bytes());
}

/// The answer for one input.
pub fn check(input: &str) -> serde_json::Value {
    let mut request: serde_json::Value = match serde_json::from_str(input) {
        Ok(request) => request,
        Err(e) => return invalid(format!("the input is not JSON: {e}")),
    };
    let Some(schema) = request.get_mut("schema").map(serde_json::Value::take) else {
        return invalid("the input has no schema".into());
    };
    let validator = match jsonschema::validator_for(&schema) {
        Ok(validator) => validator,
        Err(e) => return invalid(cut(e.to_string())),
    };
    let problems: Vec<String> = match request.get("config") {
        Some(config) => validator
            .iter_errors(config)
            .take(MAX_PROBLEMS)
            .map(|e| {
                let at = e.instance_path.to_string();
                cut(if at.is_empty() { e.to_string() } else { format!("at {at}: {e}") })
            })
            .collect(),
        None => Vec::new(),
    };
    serde_json::json!({ "problems": problems })
}

fn invalid(message: String) -> serde_json::Value {
    serde_json::json!({ "invalid": message })
}

/// `text` cut to at most [`MAX_PROBLEM_BYTES`], at a character boundary.
fn cut(mut text: String) -> String {
    if text.len() > MAX_PROBLEM_BYTES {
        let mut end = MAX_PROBLEM_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let dropped = text.len() - end;
        text.truncate(end);
        text.push_str(&format!("... [cut {dropped} bytes]"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(input: &str) -> String {
        check(input).to_string()
    }

    #[test]
    fn answers_problems_with_their_paths_or_that_the_schema_is_invalid() {
        let schema = r#"{"type":"object","properties":{"format":{"enum":["csv","json"]}},"required":["path"]}"#;
        assert_eq!(
            answer(&format!(r#"{{"schema":{schema},"config":{{"path":"x","format":"csv"}}}}"#)),
            r#"{"problems":[]}"#
        );
        assert_eq!(
            answer(&format!(r#"{{"schema":{schema},"config":{{"format":"xml"}}}}"#)),
            r#"{"problems":["at /format: \"xml\" is not one of \"csv\" or \"json\"","\"path\" is a required property"]}"#
        );
        assert_eq!(answer(&format!(r#"{{"schema":{schema}}}"#)), r#"{"problems":[]}"#);
        assert!(answer(r#"{"schema":{"type":"nonsense"}}"#).starts_with(r#"{"invalid":"#));
        assert_eq!(
            answer("{"),
            r#"{"invalid":"the input is not JSON: EOF while parsing an object at line 1 column 1"}"#
        );
        assert_eq!(answer(r#"{"config":{}}"#), r#"{"invalid":"the input has no schema"}"#);
    }

    #[test]
    fn reports_at_most_twenty_problems_each_cut_to_a_kilobyte() {
        let config: Vec<String> = (0..50).map(|i| format!("{i}")).collect();
        let out = check(&format!(r#"{{"schema":{{"items":{{"type":"string"}}}},"config":[{}]}}"#, config.join(",")));
        assert_eq!(out["problems"].as_array().unwrap().len(), MAX_PROBLEMS);
        let long = "é".repeat(2000);
        let out = check(&format!(r#"{{"schema":{{"maxLength":1}},"config":"{long}"}}"#));
        let problem = out["problems"][0].as_str().unwrap();
        assert!(problem.len() <= MAX_PROBLEM_BYTES + 32 && problem.ends_with(" bytes]"), "{problem}");
    }

    #[test]
    fn resolves_no_remote_reference() {
        let out = check(r#"{"schema":{"$ref":"http://127.0.0.1:1/schema.json"},"config":{}}"#);
        assert!(out["invalid"].is_string(), "{out}");
    }
}
