//! The `http` sink: POSTs the records of each checkpoint, per partition, as
//! a JSON array or NDJSON to a URL, at least once.
//!
//! Config (the URL's host must be in the pipeline entry's `grants.hosts`):
//!
//! ```json
//! {"url": "http://127.0.0.1:8080/ingest", "format": "ndjson",
//!  "auth": {"kind": "bearer", "token": "secret"}}
//! ```
//!
//! At `flush` the records of a checkpoint go out in requests of at most
//! `max_records`. Each request carries an idempotency key derived from the
//! topic, the partition and its first and last offset, so a replay sends
//! the same key for the same records and a receiver can drop it. What the
//! answers make the runtime do: 2xx taken; 429, or 503 with Retry-After,
//! backpressure for that long; other 5xx, 408 and connection failures
//! retryable; any other answer (4xx) rejects the request's records to the
//! dead-letter queue, quoting the status and the start of the body.

use std::collections::BTreeMap;
use std::time::Duration;

use sinkbox_sdk::http::{self, Request, Verdict};
use sinkbox_sdk::{Buffered, Context, Error, Record, Rejection, Status, Writer, export_writer};

/// The http sink's config. Its JSON Schema is derived from this struct
/// ([`config_schema`]).
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where to POST, `http://` or `https://`; its host must be granted.
    #[schemars(length(min = 1))]
    pub url: String,
    /// `json` (default: one JSON array per request) or `ndjson` (one
    /// value per line).
    #[serde(default)]
    pub format: Format,
    /// Extra request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Authorization: `{"kind": "bearer", "token": ...}` or `{"kind":
    /// "basic", "username": ..., "password": ...}`.
    #[serde(default)]
    pub auth: Option<Auth>,
    /// Records per request at most. Default 1000.
    #[serde(default = "default_max_records")]
    #[schemars(range(min = 1))]
    pub max_records: usize,
    /// Request timeout in milliseconds (connect, first byte, between
    /// bytes). Default 10000.
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 1))]
    pub timeout_ms: u64,
    /// The header that carries the idempotency key. Default
    /// `Idempotency-Key`.
    #[serde(default = "default_idempotency_header")]
    #[schemars(length(min = 1))]
    pub idempotency_header: String,
}

fn default_max_records() -> usize {
    1000
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_idempotency_header() -> String {
    "Idempotency-Key".into()
}

/// Request body format.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `[v1,v2,...]`, `content-type: application/json`.
    #[default]
    Json,
    /// `v1\nv2\n...`, `content-type: application/x-ndjson`.
    Ndjson,
}

/// How the sink authenticates.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Auth {
    /// `authorization: Bearer TOKEN`.
    Bearer {
        /// The token.
        token: String,
    },
    /// `authorization: Basic base64(USERNAME:PASSWORD)`.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
}

/// The config's JSON Schema (draft 2020-12), derived from [`Config`].
pub fn config_schema() -> String {
    serde_json::to_string(&schemars::schema_for!(Config)).unwrap_or_default()
}

/// One request's worth of records, encoded.
#[derive(Default)]
pub struct Body {
    bytes: Vec<u8>,
    offsets: Vec<u64>,
}

impl Body {
    /// Appends a record's value; a value that is not JSON is refused with
    /// the reason.
    pub fn push(&mut self, format: Format, record: &Record<'_>) -> Result<(), String> {
        let value = trim(record.value());
        serde_json::from_slice::<serde::de::IgnoredAny>(value).map_err(|e| format!("the value is not JSON: {e}"))?;
        match format {
            Format::Json => {
                self.bytes.push(if self.offsets.is_empty() { b'[' } else { b',' });
                self.bytes.extend_from_slice(value);
            }
            Format::Ndjson if value.contains(&b'\n') => {
                // Pretty-printed JSON: one line per value in NDJSON.
                let parsed: serde_json::Value = serde_json::from_slice(value).map_err(|e| e.to_string())?;
                serde_json::to_writer(&mut self.bytes, &parsed).map_err(|e| e.to_string())?;
                self.bytes.push(b'\n');
            }
            Format::Ndjson => {
                self.bytes.extend_from_slice(value);
                self.bytes.push(b'\n');
            }
        }
        self.offsets.push(record.offset());
        Ok(())
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    /// The finished body.
    pub fn finish(&mut self, format: Format) -> Vec<u8> {
        if format == Format::Json {
            self.bytes.push(b']');
        }
        std::mem::take(&mut self.bytes)
    }
}

fn trim(value: &[u8]) -> &[u8] {
    let start = value.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
    &value[start..end]
}

/// The idempotency key of the records `first..=last` of a topic partition:
/// `sinkbox:TOPIC:PARTITION:FIRST-LAST`, the topic percent-encoded outside
/// visible ASCII (and `%` and `:`), so the value is a valid header.
pub fn idempotency_key(topic: &str, partition: u32, first: u64, last: u64) -> String {
    let mut key = String::from("sinkbox:");
    for b in topic.bytes() {
        if b.is_ascii_graphic() && b != b'%' && b != b':' {
            key.push(char::from(b));
        } else {
            key.push_str(&format!("%{b:02X}"));
        }
    }
    key.push_str(&format!(":{partition}:{first}-{last}"));
    key
}

/// The sink.
pub struct HttpSink {
    url: String,
    format: Format,
    headers: Vec<(String, String)>,
    max_records: usize,
    timeout: Duration,
    idempotency_header: String,
    written: u64,
    requests: u64,
}

impl HttpSink {
    /// Sends one request; returns the offsets it rejected, if the server
    /// refused them.
    fn send(&mut self, topic: &str, partition: u32, body: &mut Body) -> Result<Vec<Rejection>, Error> {
        let (Some(&first), Some(&last)) = (body.offsets.first(), body.offsets.last()) else {
            return Ok(Vec::new());
        };
        let content_type = match self.format {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
        };
        let mut request = Request::post(&self.url)
            .header("content-type", content_type)
            .header(self.idempotency_header.as_str(), idempotency_key(topic, partition, first, last))
            .timeout(self.timeout)
            .max_response_bytes(4096);
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request.body(body.finish(self.format));
        let response = request.send()?;
        self.requests += 1;
        let offsets = std::mem::take(&mut body.offsets);
        match response.verdict() {
            Verdict::Ok => {
                self.written += offsets.len() as u64;
                Ok(Vec::new())
            }
            Verdict::Backpressure(wait) => Err(Error::backpressure(wait)),
            Verdict::Retry(reason) => Err(Error::retryable(format!("POST {}: {reason}", self.url))),
            Verdict::Refused(reason) => Ok(offsets
                .into_iter()
                .map(|offset| Rejection { offset, reason: format!("POST {} refused the records: {reason}", self.url) })
                .collect()),
        }
    }
}

impl Writer for HttpSink {
    type Config = Config;

    fn config_schema() -> Option<String> {
        Some(config_schema())
    }

    fn open(config: Config, _context: &Context) -> Result<Self, Error> {
        if !config.url.starts_with("http://") && !config.url.starts_with("https://") {
            return Err(Error::fatal(format!("url {:?} must start with http:// or https://", config.url)));
        }
        let mut headers: Vec<(String, String)> = config.headers.into_iter().collect();
        match config.auth {
            Some(Auth::Bearer { token }) => headers.push(("authorization".into(), format!("Bearer {token}"))),
            Some(Auth::Basic { username, password }) => {
                headers.push(("authorization".into(), http::basic_auth(&username, &password)));
            }
            None => {}
        }
        Ok(HttpSink {
            url: config.url,
            format: config.format,
            headers,
            max_records: config.max_records.max(1),
            timeout: Duration::from_millis(config.timeout_ms),
            idempotency_header: config.idempotency_header,
            written: 0,
            requests: 0,
        })
    }

    fn write(&mut self, batch: &Buffered) -> Result<(), Error> {
        let mut rejected = Vec::new();
        let mut body = Body::default();
        for record in batch.records() {
            let record = record.map_err(Error::fatal)?;
            if let Err(reason) = body.push(self.format, &record) {
                rejected.push(Rejection { offset: record.offset(), reason });
            }
            if body.len() >= self.max_records {
                rejected.extend(self.send(batch.topic(), batch.partition(), &mut body)?);
            }
        }
        rejected.extend(self.send(batch.topic(), batch.partition(), &mut body)?);
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

export_writer!(HttpSink);

#[cfg(test)]
mod tests {
    use sinkbox_sdk::testing;

    use super::*;

    fn encode(format: Format, values: &[&str]) -> (String, Vec<String>) {
        let entries: Vec<testing::Entry<'_>> =
            values.iter().enumerate().map(|(i, v)| (i as u64 + 10, None, v.as_bytes())).collect();
        let batch = testing::batch("t", 0, &entries);
        let mut body = Body::default();
        let mut errors = Vec::new();
        for record in batch.records() {
            if let Err(e) = body.push(format, &record.expect("record")) {
                errors.push(e);
            }
        }
        (String::from_utf8(body.finish(format)).expect("utf-8"), errors)
    }

    #[test]
    fn bodies_are_json_arrays_or_ndjson_of_the_values() {
        let values = ["{\"a\":1}", " [1, 2]\n", "{\n  \"b\": \"x\"\n}", "nope", "7"];
        let (json, errors) = encode(Format::Json, &values);
        assert_eq!(json, "[{\"a\":1},[1, 2],{\n  \"b\": \"x\"\n},7]");
        assert_eq!(errors, ["the value is not JSON: expected ident at line 1 column 2"]);
        let (ndjson, _) = encode(Format::Ndjson, &values);
        assert_eq!(ndjson, "{\"a\":1}\n[1, 2]\n{\"b\":\"x\"}\n7\n");
        let parsed: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(parsed.as_array().map(Vec::len), Some(4));
    }

    #[test]
    fn idempotency_keys_name_topic_partition_and_offsets() {
        assert_eq!(idempotency_key("orders", 3, 100, 199), "sinkbox:orders:3:100-199");
        assert_eq!(idempotency_key("in put:1%é", 0, 0, 0), "sinkbox:in%20put%3A1%25%C3%A9:0:0-0");
    }

    #[test]
    fn the_config_schema_is_derived_from_the_struct() {
        let schema: serde_json::Value = serde_json::from_str(&config_schema()).expect("JSON");
        assert_eq!(schema["required"], serde_json::json!(["url"]));
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["properties"]["max_records"]["default"], 1000);
        let text = schema.to_string();
        for word in ["ndjson", "bearer", "basic", "Idempotency-Key"] {
            assert!(text.contains(word), "{word}: {text}");
        }
    }

    #[test]
    fn configs_parse_with_auth() {
        let config: Config = serde_json::from_str(
            r#"{"url":"http://h/","auth":{"kind":"basic","username":"u","password":"p"},"format":"ndjson"}"#,
        )
        .expect("config");
        assert!(matches!(config.auth, Some(Auth::Basic { .. })));
        let sink = HttpSink::open(config, &testing::context("t", 0)).map_err(|e| e.to_string()).expect("open");
        assert_eq!(sink.headers, [("authorization".to_string(), "Basic dTpw".to_string())]);
        let bad = Config { url: "ftp://x".into(), ..serde_json::from_str(r#"{"url":"http://h/"}"#).expect("config") };
        let error = HttpSink::open(bad, &testing::context("t", 0)).err().map(|e| e.to_string());
        assert_eq!(error.as_deref(), Some("fatal: url \"ftp://x\" must start with http:// or https://"));
    }
}
