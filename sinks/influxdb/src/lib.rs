//! The `influxdb` sink: records (JSON objects) as InfluxDB line protocol,
//! written at each checkpoint through the v1 `/write` or the v2
//! `/api/v2/write` API, at least once (a point with the same measurement,
//! tags and time overwrites, so replays of records with a time are
//! idempotent).
//!
//! Config (the Quix `InfluxDBV3Sink` model: measurement, tag, field and
//! time keys):
//!
//! ```json
//! {"url": "http://127.0.0.1:8086", "database": "metrics", "measurement": "cpu",
//!  "tag_keys": ["host"], "field_keys": ["load"], "time_key": "ts"}
//! ```

mod line;

use std::ops::Range;
use std::time::Duration;

pub use line::{Encoder, Precision};
use sinkbox_sdk::http::{self, Request, Verdict};
use sinkbox_sdk::{Buffered, Context, Error, Rejection, Status, Writer, export_writer};

/// The influxdb sink's config. Its JSON Schema is derived from this struct
/// ([`config_schema`]).
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The server, e.g. `http://127.0.0.1:8086`; its host must be granted.
    #[schemars(length(min = 1))]
    pub url: String,
    /// `v1` (default: `/write?db=`) or `v2` (`/api/v2/write?org=&bucket=`).
    #[serde(default)]
    pub api: Api,
    /// v1: the database.
    #[serde(default)]
    pub database: Option<String>,
    /// v1: the retention policy. Default: the database's default.
    #[serde(default)]
    pub retention_policy: Option<String>,
    /// v1: user name (HTTP basic auth), with `password`.
    #[serde(default)]
    pub username: Option<String>,
    /// v1: password.
    #[serde(default)]
    pub password: Option<String>,
    /// v2: the organization.
    #[serde(default)]
    pub org: Option<String>,
    /// v2: the bucket.
    #[serde(default)]
    pub bucket: Option<String>,
    /// v2: the API token (`authorization: Token ...`).
    #[serde(default)]
    pub token: Option<String>,
    /// The measurement of every point, unless `measurement_key` is set.
    #[serde(default)]
    pub measurement: Option<String>,
    /// A top-level field whose string value is the point's measurement.
    #[serde(default)]
    pub measurement_key: Option<String>,
    /// Top-level fields written as tags (as text), in this order.
    #[serde(default)]
    pub tag_keys: Vec<String>,
    /// Top-level fields written as fields, in this order. Default: all
    /// but the tags, the time and the measurement key, in key order.
    #[serde(default)]
    pub field_keys: Vec<String>,
    /// A top-level integer field holding the point's time in
    /// `time_precision` units. Default: the record's timestamp, or none
    /// (the server's clock; replays then duplicate points).
    #[serde(default)]
    pub time_key: Option<String>,
    /// `ns`, `us`, `ms` (default) or `s`.
    #[serde(default)]
    pub time_precision: Precision,
    /// Write integers as floats, so a field keeps one type when its values
    /// mix `1` and `1.5`. Default false.
    #[serde(default)]
    pub ints_as_floats: bool,
    /// Points per request at most. Default 5000.
    #[serde(default = "default_max_lines")]
    #[schemars(range(min = 1))]
    pub max_lines: usize,
    /// Request timeout in milliseconds. Default 10000.
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 1))]
    pub timeout_ms: u64,
}

fn default_max_lines() -> usize {
    5000
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// The write API.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// InfluxDB 1.x `/write?db=`.
    #[default]
    V1,
    /// InfluxDB 2.x/3.x `/api/v2/write?org=&bucket=`.
    V2,
}

/// The config's JSON Schema (draft 2020-12): derived from [`Config`], plus
/// the rules a struct cannot say: v1 needs a database, v2 an org and a
/// bucket, and a measurement comes from one of two keys.
pub fn config_schema() -> String {
    let mut schema = schemars::schema_for!(Config);
    schema.insert(
        "allOf".into(),
        serde_json::json!([
            {
                "if": { "properties": { "api": { "const": "v2" } }, "required": ["api"] },
                "then": { "required": ["org", "bucket"] },
                "else": { "required": ["database"] }
            },
            { "anyOf": [{ "required": ["measurement"] }, { "required": ["measurement_key"] }] }
        ]),
    );
    serde_json::to_string(&schema).unwrap_or_default()
}

/// Percent-encodes a query parameter value.
fn query_value(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The write URL for a config.
pub fn write_url(config: &Config) -> Result<String, String> {
    let base = config.url.trim_end_matches('/');
    let precision = config.time_precision.param(config.api == Api::V1);
    match config.api {
        Api::V1 => {
            let db = config.database.as_deref().ok_or("api \"v1\" needs a \"database\"")?;
            let mut url = format!("{base}/write?db={}&precision={precision}", query_value(db));
            if let Some(rp) = &config.retention_policy {
                url.push_str(&format!("&rp={}", query_value(rp)));
            }
            Ok(url)
        }
        Api::V2 => {
            let (Some(org), Some(bucket)) = (&config.org, &config.bucket) else {
                return Err("api \"v2\" needs \"org\" and \"bucket\"".into());
            };
            Ok(format!(
                "{base}/api/v2/write?org={}&bucket={}&precision={precision}",
                query_value(org),
                query_value(bucket)
            ))
        }
    }
}

/// The sink.
pub struct InfluxSink {
    url: String,
    authorization: Option<String>,
    encoder: Encoder,
    max_lines: usize,
    timeout: Duration,
    written: u64,
    requests: u64,
}

impl InfluxSink {
    /// Writes `lines` (offsets and byte ranges of `buf`, contiguous). A
    /// refused write is split in halves until the refused points are
    /// found: InfluxDB writes the good points of a batch it answers 400.
    fn send(&mut self, buf: &[u8], lines: &[(u64, Range<usize>)]) -> Result<Vec<Rejection>, Error> {
        let (Some(first), Some(last)) = (lines.first(), lines.last()) else {
            return Ok(Vec::new());
        };
        let mut request = Request::post(&self.url)
            .header("content-type", "text/plain; charset=utf-8")
            .timeout(self.timeout)
            .max_response_bytes(8192)
            .body(&buf[first.1.start..last.1.end]);
        if let Some(auth) = &self.authorization {
            request = request.header("authorization", auth.as_str());
        }
        let response = request.send()?;
        self.requests += 1;
        match (response.status(), response.verdict()) {
            (_, Verdict::Ok) => {
                self.written += lines.len() as u64;
                Ok(Vec::new())
            }
            (_, Verdict::Backpressure(wait)) => Err(Error::backpressure(wait)),
            (_, Verdict::Retry(reason)) => Err(Error::retryable(format!("influxdb write failed: {reason}"))),
            // Credentials or database: no point is at fault, and a fixed
            // config (or a created database) makes the replay succeed.
            (401 | 403 | 404, Verdict::Refused(reason)) => {
                Err(Error::retryable(format!("influxdb refused the write to {}: {reason}", self.url)))
            }
            (_, Verdict::Refused(reason)) if lines.len() == 1 => {
                Ok(vec![Rejection { offset: first.0, reason: format!("influxdb refused the point: {reason}") }])
            }
            (_, Verdict::Refused(_)) => {
                let (left, right) = lines.split_at(lines.len() / 2);
                let mut rejected = self.send(buf, left)?;
                rejected.extend(self.send(buf, right)?);
                Ok(rejected)
            }
        }
    }
}

impl Writer for InfluxSink {
    type Config = Config;

    fn config_schema() -> Option<String> {
        Some(config_schema())
    }

    fn open(config: Config, _context: &Context) -> Result<Self, Error> {
        let url = write_url(&config).map_err(Error::fatal)?;
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(Error::fatal(format!("url {:?} must start with http:// or https://", config.url)));
        }
        let measurement = match (&config.measurement, &config.measurement_key) {
            (None, None) => return Err(Error::fatal("set \"measurement\" or \"measurement_key\"")),
            (m, _) => m.clone().unwrap_or_default(),
        };
        let authorization = match (config.api, &config.token, &config.username, &config.password) {
            (Api::V2, Some(token), _, _) => Some(format!("Token {token}")),
            (Api::V1, _, Some(user), password) => Some(http::basic_auth(user, password.as_deref().unwrap_or_default())),
            _ => None,
        };
        Ok(InfluxSink {
            url,
            authorization,
            encoder: Encoder {
                measurement,
                measurement_key: config.measurement_key,
                tag_keys: config.tag_keys,
                field_keys: config.field_keys,
                time_key: config.time_key,
                precision: config.time_precision,
                ints_as_floats: config.ints_as_floats,
            },
            max_lines: config.max_lines.max(1),
            timeout: Duration::from_millis(config.timeout_ms),
            written: 0,
            requests: 0,
        })
    }

    fn write(&mut self, batch: &Buffered) -> Result<(), Error> {
        let mut rejected = Vec::new();
        let mut buf = Vec::new();
        let mut lines = Vec::new();
        for record in batch.records() {
            let record = record.map_err(Error::fatal)?;
            let start = buf.len();
            match self.encoder.encode(record.value(), record.timestamp(), &mut buf) {
                Ok(()) => lines.push((record.offset(), start..buf.len())),
                Err(reason) => rejected.push(Rejection { offset: record.offset(), reason }),
            }
            if lines.len() >= self.max_lines {
                rejected.extend(self.send(&buf, &lines)?);
                lines.clear();
                buf.clear();
            }
        }
        rejected.extend(self.send(&buf, &lines)?);
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

export_writer!(InfluxSink);

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        serde_json::from_str(json).expect("config")
    }

    #[test]
    fn write_urls_follow_the_api() {
        let v1 = config(r#"{"url":"http://h:8086/","database":"my db","retention_policy":"a&b","measurement":"m"}"#);
        assert_eq!(write_url(&v1).as_deref(), Ok("http://h:8086/write?db=my%20db&precision=ms&rp=a%26b"));
        let v2 = config(
            r#"{"url":"https://h","api":"v2","org":"o","bucket":"b/1","measurement":"m","time_precision":"ns"}"#,
        );
        assert_eq!(write_url(&v2).as_deref(), Ok("https://h/api/v2/write?org=o&bucket=b%2F1&precision=ns"));
        assert_eq!(write_url(&config(r#"{"url":"http://h"}"#)), Err("api \"v1\" needs a \"database\"".to_string()));
        assert_eq!(
            write_url(&config(r#"{"url":"http://h","api":"v2","org":"o"}"#)),
            Err("api \"v2\" needs \"org\" and \"bucket\"".to_string())
        );
    }

    #[test]
    fn open_checks_the_config_and_sets_auth() {
        let open = |json: &str| {
            InfluxSink::open(config(json), &sinkbox_sdk::testing::context("t", 0)).map_err(|e| e.to_string())
        };
        assert_eq!(
            open(r#"{"url":"http://h","database":"d"}"#).err().as_deref(),
            Some("fatal: set \"measurement\" or \"measurement_key\"")
        );
        assert_eq!(
            open(r#"{"url":"ftp://h","database":"d","measurement":"m"}"#).err().as_deref(),
            Some("fatal: url \"ftp://h\" must start with http:// or https://")
        );
        let v1 = open(r#"{"url":"http://h","database":"d","measurement":"m","username":"u","password":"p"}"#);
        assert_eq!(v1.expect("v1").authorization.as_deref(), Some("Basic dTpw"));
        let v2 = open(r#"{"url":"http://h","api":"v2","org":"o","bucket":"b","token":"t","measurement":"m"}"#);
        assert_eq!(v2.expect("v2").authorization.as_deref(), Some("Token t"));
    }

    #[test]
    fn the_config_schema_is_derived_from_the_struct() {
        let schema: serde_json::Value = serde_json::from_str(&config_schema()).expect("JSON");
        assert_eq!(schema["required"], serde_json::json!(["url"]));
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["properties"]["max_lines"]["default"], 5000);
        assert_eq!(schema["allOf"][0]["then"]["required"], serde_json::json!(["org", "bucket"]));
        let text = schema.to_string();
        for word in ["v1", "v2", "ns", "tag_keys", "measurement_key"] {
            assert!(text.contains(word), "{word}: {text}");
        }
    }
}
