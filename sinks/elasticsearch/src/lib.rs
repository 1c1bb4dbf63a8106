//! The `elasticsearch` sink: indexes each record's value (a JSON object)
//! into an Elasticsearch or OpenSearch index with the `_bulk` API, at
//! least once; with ids from the record keys a replay overwrites (`index`)
//! or finds the document already there (`create`), so it never duplicates.
//!
//! Config (the URL's host must be granted):
//!
//! ```json
//! {"url": "http://127.0.0.1:9200", "index": "orders", "action": "index"}
//! ```
//!
//! Per-item failures in the bulk answer (a mapping conflict, an id that is
//! too long) reject just those records to the dead-letter queue with the
//! item's error; the rest count as written.

use std::time::Duration;

use serde_json::Value;
use sinkbox_sdk::http::{self, Request, Verdict};
use sinkbox_sdk::{Buffered, Context, Error, Record, Rejection, Status, Writer, export_writer};

/// The elasticsearch sink's config. Its JSON Schema is derived from this
/// struct ([`config_schema`]).
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The cluster, e.g. `http://127.0.0.1:9200`; its host must be granted.
    #[schemars(length(min = 1))]
    pub url: String,
    /// The index (or data stream, with `create`).
    #[schemars(length(min = 1))]
    pub index: String,
    /// `index` (default: create or replace the document) or `create` (only
    /// create; a document that exists already counts as written).
    #[serde(default)]
    pub action: Action,
    /// Where a document's `_id` comes from: `key` (default: the record's
    /// key; a record without one gets an id from the server) or `auto`
    /// (always the server's).
    #[serde(default)]
    pub id: IdFrom,
    /// HTTP basic auth user name, with `password`.
    #[serde(default)]
    pub username: Option<String>,
    /// HTTP basic auth password.
    #[serde(default)]
    pub password: Option<String>,
    /// An API key (`authorization: ApiKey ...`), instead of basic auth.
    #[serde(default)]
    pub api_key: Option<String>,
    /// Documents per bulk request at most. Default 1000.
    #[serde(default = "default_max_records")]
    #[schemars(range(min = 1))]
    pub max_records: usize,
    /// Request timeout in milliseconds. Default 30000.
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 1))]
    pub timeout_ms: u64,
}

fn default_max_records() -> usize {
    1000
}

fn default_timeout_ms() -> u64 {
    30_000
}

/// The bulk action per document.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Create or replace.
    #[default]
    Index,
    /// Create only.
    Create,
}

/// Where document ids come from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IdFrom {
    /// The record's key (UTF-8).
    #[default]
    Key,
    /// The server's.
    Auto,
}

/// The config's JSON Schema (draft 2020-12), derived from [`Config`].
pub fn config_schema() -> String {
    serde_json::to_string(&schemars::schema_for!(Config)).unwrap_or_default()
}

/// Encodes bulk request bodies.
pub struct BulkEncoder {
    pub index: String,
    pub action: Action,
    pub id: IdFrom,
}

impl BulkEncoder {
    /// Appends the action line and the document line of a record, or says
    /// why the record cannot be a document; `out` is unchanged then.
    pub fn encode(&self, record: &Record<'_>, out: &mut Vec<u8>) -> Result<(), String> {
        let value = record.value();
        let doc: Value = serde_json::from_slice(value).map_err(|e| format!("the value is not JSON: {e}"))?;
        if !doc.is_object() {
            return Err("the value is not a JSON object".into());
        }
        let id = match (self.id, record.key()) {
            (IdFrom::Key, Some(key)) => {
                Some(std::str::from_utf8(key).map_err(|_| "the key is not UTF-8, so it cannot be a document id")?)
            }
            _ => None,
        };
        let action = match self.action {
            Action::Index => "index",
            Action::Create => "create",
        };
        let meta = match id {
            Some(id) => serde_json::json!({ action: { "_index": self.index, "_id": id } }),
            None => serde_json::json!({ action: { "_index": self.index } }),
        };
        serde_json::to_writer(&mut *out, &meta).map_err(|e| e.to_string())?;
        out.push(b'\n');
        // Bulk bodies are one document per line; compact pretty ones.
        if value.contains(&b'\n') {
            serde_json::to_writer(&mut *out, &doc).map_err(|e| e.to_string())?;
        } else {
            out.extend_from_slice(value.trim_ascii());
        }
        out.push(b'\n');
        Ok(())
    }
}

/// What one bulk answer's item says about its document.
#[derive(Debug, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Written (or, for `create`, already there).
    Written,
    /// The cluster is overloaded (429): replay later.
    Busy,
    /// Refused for good, with the reason.
    Refused(String),
}

/// Reads a bulk answer (possibly filtered to `errors,items.*.status,
/// items.*.error`) into one outcome per document sent.
pub fn read_bulk_answer(answer: &[u8], sent: usize, action: Action) -> Result<Vec<ItemOutcome>, String> {
    let answer: Value = serde_json::from_slice(answer).map_err(|e| format!("the bulk answer is not JSON: {e}"))?;
    let items = answer["items"].as_array().ok_or("the bulk answer has no items")?;
    if items.len() != sent {
        return Err(format!("the bulk answer has {} items for {sent} documents", items.len()));
    }
    let outcomes = items
        .iter()
        .map(|item| {
            let item = item.as_object().and_then(|o| o.values().next()).unwrap_or(&Value::Null);
            let status = item["status"].as_u64().unwrap_or(0);
            let error = &item["error"];
            let kind = error["type"].as_str().unwrap_or_default();
            match status {
                200..=299 => ItemOutcome::Written,
                409 if action == Action::Create && kind == "version_conflict_engine_exception" => ItemOutcome::Written,
                429 => ItemOutcome::Busy,
                _ => {
                    let reason = match (kind, error["reason"].as_str()) {
                        ("", _) => format!("status {status}: {error}"),
                        (kind, Some(reason)) => format!("{kind}: {reason}"),
                        (kind, None) => kind.to_string(),
                    };
                    ItemOutcome::Refused(format!("elasticsearch refused the document (status {status}): {reason}"))
                }
            }
        })
        .collect();
    Ok(outcomes)
}

/// The sink.
pub struct ElasticSink {
    url: String,
    authorization: Option<String>,
    encoder: BulkEncoder,
    max_records: usize,
    timeout: Duration,
    written: u64,
    requests: u64,
}

impl ElasticSink {
    fn send(&mut self, body: &mut Vec<u8>, offsets: &mut Vec<u64>) -> Result<Vec<Rejection>, Error> {
        if offsets.is_empty() {
            return Ok(Vec::new());
        }
        let mut request = Request::post(&self.url)
            .header("content-type", "application/x-ndjson")
            .timeout(self.timeout)
            .max_response_bytes(16 << 20)
            .body(std::mem::take(body));
        if let Some(auth) = &self.authorization {
            request = request.header("authorization", auth.as_str());
        }
        let response = request.send()?;
        self.requests += 1;
        let offsets = std::mem::take(offsets);
        match (response.status(), response.verdict()) {
            (_, Verdict::Ok) => {}
            (_, Verdict::Backpressure(wait)) => return Err(Error::backpressure(wait)),
            (_, Verdict::Retry(reason)) => {
                return Err(Error::retryable(format!("elasticsearch bulk failed: {reason}")));
            }
            (401 | 403 | 404, Verdict::Refused(reason)) => {
                return Err(Error::retryable(format!(
                    "elasticsearch refused the bulk request to {}: {reason}",
                    self.url
                )));
            }
            (_, Verdict::Refused(reason)) => {
                let reason = format!("elasticsearch refused the bulk request: {reason}");
                return Ok(offsets.into_iter().map(|offset| Rejection { offset, reason: reason.clone() }).collect());
            }
        }
        if response.truncated() {
            return Err(Error::retryable("the bulk answer was larger than 16 MiB; lower max_records"));
        }
        let outcomes = read_bulk_answer(response.body(), offsets.len(), self.encoder.action)
            .map_err(|e| Error::retryable(format!("elasticsearch bulk to {}: {e}", self.url)))?;
        let mut rejected = Vec::new();
        let mut busy = false;
        for (offset, outcome) in offsets.into_iter().zip(outcomes) {
            match outcome {
                ItemOutcome::Written => self.written += 1,
                ItemOutcome::Busy => busy = true,
                ItemOutcome::Refused(reason) => rejected.push(Rejection { offset, reason }),
            }
        }
        if busy {
            // Replaying re-sends the documents that were written, which
            // ids make harmless.
            return Err(Error::backpressure(http::DEFAULT_RETRY_AFTER));
        }
        Ok(rejected)
    }
}

impl Writer for ElasticSink {
    type Config = Config;

    fn config_schema() -> Option<String> {
        Some(config_schema())
    }

    fn open(config: Config, _context: &Context) -> Result<Self, Error> {
        if !config.url.starts_with("http://") && !config.url.starts_with("https://") {
            return Err(Error::fatal(format!("url {:?} must start with http:// or https://", config.url)));
        }
        if config.index.is_empty() {
            return Err(Error::fatal("\"index\" is empty"));
        }
        let authorization = match (&config.api_key, &config.username) {
            (Some(key), _) => Some(format!("ApiKey {key}")),
            (None, Some(user)) => Some(http::basic_auth(user, config.password.as_deref().unwrap_or_default())),
            (None, None) => None,
        };
        Ok(ElasticSink {
            // Only what the sink reads of the answer, to keep it small.
            url: format!("{}/_bulk?filter_path=errors,items.*.status,items.*.error", config.url.trim_end_matches('/')),
            authorization,
            encoder: BulkEncoder { index: config.index, action: config.action, id: config.id },
            max_records: config.max_records.max(1),
            timeout: Duration::from_millis(config.timeout_ms),
            written: 0,
            requests: 0,
        })
    }

    fn write(&mut self, batch: &Buffered) -> Result<(), Error> {
        let mut rejected = Vec::new();
        let mut body = Vec::new();
        let mut offsets = Vec::new();
        for record in batch.records() {
            let record = record.map_err(Error::fatal)?;
            let start = body.len();
            match self.encoder.encode(&record, &mut body) {
                Ok(()) => offsets.push(record.offset()),
                Err(reason) => {
                    body.truncate(start);
                    rejected.push(Rejection { offset: record.offset(), reason });
                }
            }
            if offsets.len() >= self.max_records {
                rejected.extend(self.send(&mut body, &mut offsets)?);
            }
        }
        rejected.extend(self.send(&mut body, &mut offsets)?);
        if rejected.is_empty() { Ok(()) } else { Err(Error::Rejected(rejected)) }
    }

    fn status(&mut self) -> Option<Status> {
        let requests = std::mem::take(&mut self.requests);
        Some(Status {
            written: std::mem::take(&mut self.written),
            custom: vec![("requests".into(), requests)],
            ..Status::default()
        })
    }
}

export_writer!(ElasticSink);

#[cfg(test)]
mod tests {
    use sinkbox_sdk::testing;

    use super::*;

    #[test]
    fn records_become_action_and_document_lines() {
        let batch = testing::batch(
            "t",
            0,
            &[
                (0, Some(b"k\"1"), b"{\"a\":1}"),
                (1, None, b" {\n \"b\": 2\n}\n"),
                (2, Some(b"k3"), b"[1]"),
                (3, Some(b"\xff"), b"{}"),
                (4, Some(b"k5"), b"nope"),
            ],
        );
        let encoder = BulkEncoder { index: "idx".into(), action: Action::Create, id: IdFrom::Key };
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for record in batch.records() {
            if let Err(e) = encoder.encode(&record.expect("record"), &mut out) {
                errors.push(e);
            }
        }
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "{\"create\":{\"_id\":\"k\\\"1\",\"_index\":\"idx\"}}\n{\"a\":1}\n{\"create\":{\"_index\":\"idx\"}}\n{\"b\":2}\n"
        );
        assert_eq!(
            errors,
            [
                "the value is not a JSON object",
                "the key is not UTF-8, so it cannot be a document id",
                "the value is not JSON: expected ident at line 1 column 2"
            ]
        );
        let auto = BulkEncoder { index: "idx".into(), action: Action::Index, id: IdFrom::Auto };
        let mut out = Vec::new();
        let record = batch.records().next().expect("a record").expect("record");
        auto.encode(&record, &mut out).expect("encodes");
        assert_eq!(String::from_utf8(out).expect("utf-8"), "{\"index\":{\"_index\":\"idx\"}}\n{\"a\":1}\n");
    }

    #[test]
    fn bulk_answers_become_outcomes_per_document() {
        let answer = br#"{"errors":true,"items":[
            {"index":{"status":201}},
            {"create":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"[1]: exists"}}},
            {"index":{"status":400,"error":{"type":"document_parsing_exception","reason":"failed to parse field [a]"}}},
            {"index":{"status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
            {"index":{"status":500}}]}"#;
        let outcomes = read_bulk_answer(answer, 5, Action::Create).expect("answer");
        assert_eq!(
            outcomes,
            [
                ItemOutcome::Written,
                ItemOutcome::Written,
                ItemOutcome::Refused(
                    "elasticsearch refused the document (status 400): document_parsing_exception: failed to parse field [a]"
                        .into()
                ),
                ItemOutcome::Busy,
                ItemOutcome::Refused("elasticsearch refused the document (status 500): status 500: null".into()),
            ]
        );
        let conflict = read_bulk_answer(answer, 5, Action::Index).expect("answer");
        assert!(matches!(&conflict[1], ItemOutcome::Refused(r) if r.contains("version_conflict_engine_exception")));
        assert_eq!(
            read_bulk_answer(answer, 4, Action::Index),
            Err("the bulk answer has 5 items for 4 documents".into())
        );
        assert_eq!(read_bulk_answer(b"{}", 1, Action::Index), Err("the bulk answer has no items".into()));
    }

    #[test]
    fn the_config_schema_is_derived_from_the_struct() {
        let schema: serde_json::Value = serde_json::from_str(&config_schema()).expect("JSON");
        assert_eq!(schema["required"], serde_json::json!(["url", "index"]));
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["properties"]["max_records"]["default"], 1000);
        let text = schema.to_string();
        for word in ["create", "auto", "api_key"] {
            assert!(text.contains(word), "{word}: {text}");
        }
    }
}
