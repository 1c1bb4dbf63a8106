//! The `s3` sink: one object per partition per checkpoint (JSONL or CSV,
//! optionally gzipped), PUT with AWS SigV4 signing to S3 or any
//! S3-compatible store.
//!
//! Config (the endpoint's host must be granted):
//!
//! ```json
//! {"endpoint": "http://127.0.0.1:8333", "bucket": "events",
//!  "access_key_id": "AKID", "secret_access_key": "...", "gzip": true}
//! ```
//!
//! Records are buffered in `add` (the runtime's batches, kept as they
//! came) and written at `flush`. An object's name holds the offset of the
//! checkpoint's first record, which a replay of that checkpoint shares
//! whatever its end: the replay overwrites the object instead of adding a
//! second copy, so the bucket holds each record once.

// The file sink's JSONL and CSV encoders, shared by source so the s3
// component does not link the file sink's exports.
#[path = "../../file/src/encoder.rs"]
mod encoder;
#[path = "../../file/src/scan.rs"]
mod scan;
pub mod sigv4;

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use encoder::Encoder;
use sinkbox_sdk::http::{Request, Verdict};
use sinkbox_sdk::{Buffered, Context, Error, Rejection, Status, Writer, export_writer};

/// The s3 sink's config. Its JSON Schema is derived from this struct
/// ([`config_schema`]).
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The S3 endpoint, e.g. `https://s3.eu-west-1.amazonaws.com` or
    /// `http://127.0.0.1:8333`; requests are path-style
    /// (`ENDPOINT/BUCKET/KEY`). Its host must be granted.
    #[schemars(length(min = 1))]
    pub endpoint: String,
    /// The bucket.
    #[schemars(length(min = 1))]
    pub bucket: String,
    /// The signing region. Default `us-east-1`.
    #[serde(default = "default_region")]
    pub region: String,
    /// The access key id.
    #[schemars(length(min = 1))]
    pub access_key_id: String,
    /// The secret access key.
    #[schemars(length(min = 1))]
    pub secret_access_key: String,
    /// A session token, for temporary credentials.
    #[serde(default)]
    pub session_token: Option<String>,
    /// The object key. `{pipeline}`, `{sink}`, `{partition}` and `{lane}`
    /// are the instance's, `{first}` the checkpoint's first offset
    /// (20 digits, so keys sort by offset), `{ext}` `jsonl`, `csv`,
    /// `jsonl.gz` or `csv.gz`. Must name `{first}`, and `{lane}` with
    /// `lanes > 1`. Default `{pipeline}/{sink}/{partition}/{first}.{ext}`.
    #[serde(default = "default_key")]
    pub key: String,
    /// `jsonl` (default) or `csv`.
    #[serde(default)]
    pub format: Format,
    /// CSV columns: the value's top-level fields, in order. Required for
    /// CSV.
    #[serde(default)]
    pub columns: Vec<String>,
    /// CSV: start each object with a header line. Default true.
    #[serde(default = "yes")]
    pub header: bool,
    /// Gzip each object. Default false.
    #[serde(default)]
    pub gzip: bool,
    /// Request timeout in milliseconds. Default 30000.
    #[serde(default = "default_timeout_ms")]
    #[schemars(range(min = 1))]
    pub timeout_ms: u64,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_key() -> String {
    "{pipeline}/{sink}/{partition}/{first}.{ext}".into()
}

fn yes() -> bool {
    true
}

fn default_timeout_ms() -> u64 {
    30_000
}

/// Object format.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON value per line.
    #[default]
    Jsonl,
    /// Comma-separated values with chosen columns.
    Csv,
}

/// The config's JSON Schema (draft 2020-12): derived from [`Config`], plus
/// the rule a struct cannot say: CSV needs columns.
pub fn config_schema() -> String {
    let mut schema = schemars::schema_for!(Config);
    schema.insert(
        "allOf".into(),
        serde_json::json!([{
            "if": { "properties": { "format": { "const": "csv" } }, "required": ["format"] },
            "then": { "required": ["columns"], "properties": { "columns": { "minItems": 1 } } }
        }]),
    );
    serde_json::to_string(&schema).unwrap_or_default()
}

/// The sink.
pub struct S3Sink {
    /// `http(s)://host[:port]`, no trailing slash.
    endpoint: String,
    /// `host[:port]`, as signed.
    host: String,
    bucket: String,
    region: String,
    credentials: sigv4::Credentials,
    /// The key with the instance's placeholders filled in.
    key: String,
    ext: &'static str,
    encoder: Encoder,
    header: bool,
    gzip: bool,
    timeout: Duration,
    written: u64,
    objects: u64,
}

impl S3Sink {
    /// The object key for a checkpoint starting at `first`.
    pub fn object_key(&self, first: u64) -> String {
        self.key.replace("{first}", &format!("{first:020}")).replace("{ext}", self.ext)
    }

    /// The signed PUT of `body` to `key`.
    fn put_request(&self, key: &str, body: Vec<u8>, metadata: &[(&str, String)], now: u64) -> Request {
        let path = sigv4::encode_path(&format!("/{}/{key}", self.bucket));
        let payload_hash = sigv4::sha256_hex(&body);
        let amz_date = sigv4::amz_date(now);
        let content_type = match (self.gzip, &self.encoder) {
            (true, _) => "application/gzip",
            (false, Encoder::Jsonl) => "application/x-ndjson",
            (false, Encoder::Csv { .. }) => "text/csv",
        };
        let length = body.len().to_string();
        let mut headers: Vec<(&str, &str)> = vec![
            ("content-length", &length),
            ("content-type", content_type),
            ("x-amz-content-sha256", &payload_hash),
            ("x-amz-date", &amz_date),
        ];
        if let Some(token) = &self.credentials.session_token {
            headers.push(("x-amz-security-token", token));
        }
        for (name, value) in metadata {
            headers.push((name, value));
        }
        let authorization = sigv4::authorization(
            &self.credentials,
            &sigv4::Signable {
                method: "PUT",
                host: &self.host,
                path: &path,
                query: &[],
                headers: &headers,
                payload_hash: &payload_hash,
                amz_date: &amz_date,
                region: &self.region,
                service: "s3",
            },
        );
        let mut request =
            Request::put(format!("{}{path}", self.endpoint)).timeout(self.timeout).max_response_bytes(8192);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.header("authorization", authorization).body(body)
    }
}

impl Writer for S3Sink {
    type Config = Config;

    fn config_schema() -> Option<String> {
        Some(config_schema())
    }

    fn open(config: Config, context: &Context) -> Result<Self, Error> {
        let endpoint = config.endpoint.trim_end_matches('/').to_string();
        let host = endpoint.strip_prefix("http://").or_else(|| endpoint.strip_prefix("https://")).ok_or_else(|| {
            Error::fatal(format!("endpoint {:?} must start with http:// or https://", config.endpoint))
        })?;
        if host.is_empty() || host.contains('/') {
            return Err(Error::fatal(format!(
                "endpoint {:?} must be a scheme and a host, without a path (the bucket is \"bucket\")",
                config.endpoint
            )));
        }
        let host = host.to_string();
        if !config.key.contains("{first}") {
            return Err(Error::fatal(format!(
                "key {:?} must name {{first}}, so each checkpoint gets its own object and a replay overwrites it",
                config.key
            )));
        }
        if context.lanes > 1 && !config.key.contains("{lane}") {
            return Err(Error::fatal(format!(
                "the sink runs {} lanes, which must not share objects: put {{lane}} in the key {:?}",
                context.lanes, config.key
            )));
        }
        let (encoder, ext) = match config.format {
            Format::Jsonl => (Encoder::Jsonl, "jsonl"),
            Format::Csv if config.columns.is_empty() => {
                return Err(Error::fatal("format \"csv\" needs a non-empty \"columns\" list"));
            }
            Format::Csv => (Encoder::csv(config.columns), "csv"),
        };
        let ext = match (ext, config.gzip) {
            ("jsonl", true) => "jsonl.gz",
            ("csv", true) => "csv.gz",
            (ext, _) => ext,
        };
        Ok(S3Sink {
            endpoint,
            host,
            bucket: config.bucket,
            region: config.region,
            credentials: sigv4::Credentials {
                access_key_id: config.access_key_id,
                secret_access_key: config.secret_access_key,
                session_token: config.session_token,
            },
            key: context.expand(&config.key),
            ext,
            encoder,
            header: config.header,
            gzip: config.gzip,
            timeout: Duration::from_millis(config.timeout_ms),
            written: 0,
            objects: 0,
        })
    }

    fn write(&mut self, batch: &Buffered) -> Result<(), Error> {
        let Some(first) = batch.first_offset() else {
            return Ok(());
        };
        let mut rejected = Vec::new();
        let mut body = Vec::new();
        if self.header {
            self.encoder.header(&mut body);
        }
        let mut lines = 0u64;
        let mut last = first;
        for record in batch.records() {
            let record = record.map_err(Error::fatal)?;
            last = record.offset();
            match self.encoder.encode(record.value(), &mut body) {
                Ok(()) => lines += 1,
                Err(reason) => rejected.push(Rejection { offset: record.offset(), reason }),
            }
        }
        if lines > 0 {
            let body =
                if self.gzip { gzip(&body).map_err(|e| Error::fatal(format!("gzip failed: {e}")))? } else { body };
            let key = self.object_key(first);
            let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
            let metadata = [
                ("x-amz-meta-first-offset", first.to_string()),
                ("x-amz-meta-last-offset", last.to_string()),
                ("x-amz-meta-records", lines.to_string()),
            ];
            let response = self.put_request(&key, body, &metadata, now).send()?;
            let what = format!("PUT s3://{}/{key}", self.bucket);
            match response.verdict() {
                Verdict::Ok => {
                    self.written += lines;
                    self.objects += 1;
                }
                Verdict::Backpressure(wait) => return Err(Error::backpressure(wait)),
                Verdict::Retry(reason) => return Err(Error::retryable(format!("{what} failed: {reason}"))),
                // Credentials, a missing bucket or a refused object: no
                // record is at fault, and a fixed config lets the replay
                // succeed; the pipeline stops after its attempts with this.
                Verdict::Refused(reason) => return Err(Error::retryable(format!("{what} was refused: {reason}"))),
            }
        }
        if rejected.is_empty() { Ok(()) } else { Err(Error::Rejected(rejected)) }
    }

    fn status(&mut self) -> Option<Status> {
        let objects = std::mem::take(&mut self.objects);
        Some(Status {
            written: std::mem::take(&mut self.written),
            custom: vec![("objects".into(), objects)],
            ..Status::default()
        })
    }
}

fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes)?;
    encoder.finish()
}

export_writer!(S3Sink);

#[cfg(test)]
mod tests {
    use sinkbox_sdk::testing;

    use super::*;

    fn config(extra: &str) -> Config {
        serde_json::from_str(&format!(
            r#"{{"endpoint":"http://127.0.0.1:8333","bucket":"b","access_key_id":"AKID","secret_access_key":"secret"{extra}}}"#
        ))
        .expect("config")
    }

    fn open(extra: &str) -> Result<S3Sink, String> {
        let mut context = testing::context("t", 3);
        context.pipeline = "p".into();
        context.sink = "s".into();
        S3Sink::open(config(extra), &context).map_err(|e| e.to_string())
    }

    #[test]
    fn object_keys_hold_the_first_offset() {
        let sink = open("").expect("open");
        assert_eq!(sink.object_key(42), "p/s/3/00000000000000000042.jsonl");
        let sink = open(r#","format":"csv","columns":["a"],"gzip":true,"key":"x/{lane}-{first}.{ext}""#).expect("open");
        assert_eq!(sink.object_key(7), "x/0-00000000000000000007.csv.gz");
    }

    #[test]
    fn open_refuses_configs_that_cannot_work() {
        let cases = [
            (
                r#","key":"{partition}.jsonl""#,
                "fatal: key \"{partition}.jsonl\" must name {first}, so each checkpoint gets its own object and a replay overwrites it",
            ),
            (r#","format":"csv""#, "fatal: format \"csv\" needs a non-empty \"columns\" list"),
        ];
        for (extra, want) in cases {
            assert_eq!(open(extra).err().as_deref(), Some(want), "{extra}");
        }
        let bad = Config { endpoint: "http://h/path".into(), ..config("") };
        let error = S3Sink::open(bad, &testing::context("t", 0)).err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some(
                "fatal: endpoint \"http://h/path\" must be a scheme and a host, without a path (the bucket is \"bucket\")"
            )
        );
        let mut lanes = testing::context("t", 0);
        lanes.lanes = 2;
        let error = S3Sink::open(config(""), &lanes).err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some(
                "fatal: the sink runs 2 lanes, which must not share objects: put {lane} in the key \"{pipeline}/{sink}/{partition}/{first}.{ext}\""
            )
        );
    }

    #[test]
    fn puts_are_signed_over_the_body_and_metadata() {
        let sink = open("").expect("open");
        let request =
            sink.put_request("a b.jsonl", b"{}\n".to_vec(), &[("x-amz-meta-records", "1".into())], 1_369_353_600);
        assert_eq!(request.url(), "http://127.0.0.1:8333/b/a%20b.jsonl");
        let text = format!("{request:?}");
        assert!(text.contains("\"x-amz-date\", [50, 48, 49, 51"), "{text}");
        // The signature is over exactly these headers.
        let payload_hash = sigv4::sha256_hex(b"{}\n");
        let want = sigv4::authorization(
            &sink.credentials,
            &sigv4::Signable {
                method: "PUT",
                host: "127.0.0.1:8333",
                path: "/b/a%20b.jsonl",
                query: &[],
                headers: &[
                    ("content-length", "3"),
                    ("content-type", "application/x-ndjson"),
                    ("x-amz-content-sha256", &payload_hash),
                    ("x-amz-date", "20130524T000000Z"),
                    ("x-amz-meta-records", "1"),
                ],
                payload_hash: &payload_hash,
                amz_date: "20130524T000000Z",
                region: "us-east-1",
                service: "s3",
            },
        );
        assert!(want.contains(
            "SignedHeaders=content-length;content-type;host;x-amz-content-sha256;x-amz-date;x-amz-meta-records"
        ));
        let bytes: Vec<String> = want.bytes().map(|b| b.to_string()).collect();
        assert!(text.contains(&bytes.join(", ")), "{text}");
    }

    #[test]
    fn gzip_round_trips() {
        let zipped = gzip(b"{\"a\":1}\n").expect("gzip");
        assert_eq!(&zipped[..2], [0x1f, 0x8b]);
        let mut out = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&zipped[..]), &mut out).expect("gunzip");
        assert_eq!(out, "{\"a\":1}\n");
    }
}
