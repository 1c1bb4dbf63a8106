//! The `redis` sink: each record becomes an `XADD` to a stream, a `SET` or
//! an `HSET` by key, pipelined per batch (all commands written, then all
//! replies read) over a raw TCP connection (`tcp://HOST:PORT` in the sink's
//! `grants.hosts`).
//!
//! ```json
//! {"host": "127.0.0.1", "command": "xadd", "key": "events:{partition}", "maxlen": 100000}
//! ```
//!
//! Redis has no transaction that spans a checkpoint, so commands are
//! written as batches arrive and a replay writes them again: `SET` and
//! `HSET` rewrite the same values (the end state is exactly once), `XADD`
//! appends again (at least once) unless `idempotent` gives each entry an
//! ID derived from its offset, which the server refuses to add twice.
//!
//! Replies map to the contract: a connection failure and `LOADING`, `BUSY`,
//! `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN` are retryable; `OOM` is
//! backpressure; `NOAUTH`, `WRONGPASS`, `NOPERM`, `MOVED`, `ASK` are fatal;
//! any other error (`WRONGTYPE`, a bad argument) rejects that record to the
//! dead-letter queue with the server's message.

mod resp;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use sinkbox_sdk::template::Template;
use sinkbox_sdk::{Batch, Context, Error, Record, Rejection, Sink, Status, export_sink};

pub use resp::{Reply, command, parse};

/// The redis sink's config. Its JSON Schema is derived from this struct
/// ([`config_schema`]).
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Server host name or IP address; the pipeline must grant
    /// `tcp://HOST:PORT` in the sink's `grants.hosts`.
    #[schemars(length(min = 1))]
    pub host: String,
    /// Server port. Default 6379.
    #[serde(default = "default_port")]
    pub port: u16,
    /// ACL user name (`AUTH user password`); needs `password`.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (`AUTH`).
    #[serde(default)]
    pub password: Option<String>,
    /// Database number (`SELECT`). Default 0.
    #[serde(default)]
    pub database: u32,
    /// `xadd` (default): append to a stream; `set`: the value at a key;
    /// `hset`: the value's top-level fields into a hash at a key.
    #[serde(default)]
    pub command: Command,
    /// The key (the stream for `xadd`): a template with `{key}`, `{topic}`,
    /// `{partition}`, `{lane}`, `{offset}` and JSON Pointers into the value
    /// such as `{/user/id}`.
    #[schemars(length(min = 1))]
    pub key: String,
    /// `xadd`: `value` (default) writes the whole value as one field named
    /// by `field`; `fields` writes each top-level field of the value (a
    /// JSON object) as a stream field.
    #[serde(default)]
    pub format: Format,
    /// `xadd` with `format = "value"`: the field name. Default `value`.
    #[serde(default = "default_field")]
    pub field: String,
    /// `xadd`: trim the stream to about this many entries (`MAXLEN ~`).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub maxlen: Option<u64>,
    /// `set` and `hset`: expire keys after this many seconds.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub ttl_seconds: Option<u64>,
    /// `xadd`: give each entry the ID `OFFSET+1-0`, which the server refuses
    /// to add twice, so replays add nothing. Needs one writer per stream:
    /// the key must name `{partition}` (and `{lane}` with more than one lane).
    #[serde(default)]
    pub idempotent: bool,
}

fn default_port() -> u16 {
    6379
}

fn default_field() -> String {
    "value".into()
}

/// The command each record becomes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Command {
    /// `XADD key [MAXLEN ~ n] id field value ...`
    #[default]
    Xadd,
    /// `SET key value [EX ttl]`
    Set,
    /// `HSET key field value ...` (and `EXPIRE key ttl`)
    Hset,
}

/// How a stream entry is made from a value.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The whole value as one field.
    #[default]
    Value,
    /// Each top-level field of a JSON object.
    Fields,
}

/// The config's JSON Schema (draft 2020-12), derived from [`Config`].
pub fn config_schema() -> String {
    serde_json::to_string(&schemars::schema_for!(Config)).unwrap_or_default()
}

/// What an error reply means for the record that got it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An idempotent `XADD` of an entry the stream already holds.
    Duplicate,
    /// Try again later (the whole batch is replayed).
    Retry,
    /// The server is out of memory: wait, then replay.
    Backpressure,
    /// The connection or the config is wrong.
    Fatal,
    /// This record cannot be written.
    Reject,
}

/// Classifies an error reply by its first word.
pub fn verdict(error: &str) -> Verdict {
    let word = error.split(' ').next().unwrap_or("");
    match word {
        "ERR" if error.contains("is equal or smaller than the target stream top item") => Verdict::Duplicate,
        "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "CLUSTERDOWN" => Verdict::Retry,
        "OOM" => Verdict::Backpressure,
        "NOAUTH" | "WRONGPASS" | "NOPERM" | "MOVED" | "ASK" | "READONLY" => Verdict::Fatal,
        _ => Verdict::Reject,
    }
}

/// A connection: a socket and the bytes read but not yet parsed.
struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
    start: usize,
}

impl Conn {
    fn reply(&mut self) -> Result<Reply, std::io::Error> {
        loop {
            match parse(&self.input[self.start..]) {
                Ok(Some((reply, used))) => {
                    self.start += used;
                    if self.start == self.input.len() {
                        self.input.clear();
                        self.start = 0;
                    }
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            }
            if self.start > 0 {
                self.input.drain(..self.start);
                self.start = 0;
            }
            let len = self.input.len();
            self.input.resize(len + (64 << 10), 0);
            let n = match self.stream.read(&mut self.input[len..]) {
                Ok(n) => n,
                Err(e) => {
                    self.input.truncate(len);
                    return Err(e);
                }
            };
            self.input.truncate(len + n);
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"));
            }
        }
    }
}

/// The sink.
pub struct RedisSink {
    addr: String,
    config: Config,
    key: Template,
    lane: u32,
    conn: Option<Conn>,
    probe: bool,
    out: Vec<u8>,
    /// Per encoded record: its offset and how many replies it gets.
    sent: Vec<(u64, usize)>,
    /// Records written since the last flush; written and skipped since the
    /// last status report.
    pending: u64,
    written: u64,
    duplicates: u64,
}

impl RedisSink {
    fn connect(&mut self) -> Result<(), Error> {
        let stream = TcpStream::connect(&self.addr).map_err(|e| self.io_error("cannot connect to", e))?;
        // Not all hosts support the option; it only costs latency.
        let _ = stream.set_nodelay(true);
        let mut conn = Conn { stream, input: Vec::with_capacity(64 << 10), start: 0 };
        let mut hello = Vec::new();
        let mut expected = 0;
        if let Some(password) = &self.config.password {
            match &self.config.username {
                Some(user) => command(&mut hello, &[b"AUTH", user.as_bytes(), password.as_bytes()]),
                None => command(&mut hello, &[b"AUTH", password.as_bytes()]),
            }
            expected += 1;
        }
        if self.config.database != 0 {
            command(&mut hello, &[b"SELECT", self.config.database.to_string().as_bytes()]);
            expected += 1;
        }
        if expected > 0 {
            conn.stream.write_all(&hello).map_err(|e| self.io_error("cannot write to", e))?;
            for _ in 0..expected {
                if let Reply::Error(e) = conn.reply().map_err(|e| self.io_error("cannot read from", e))? {
                    return Err(Error::fatal(format!("redis {}: {e}", self.addr)));
                }
            }
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// An I/O failure: a denied connection is fatal (it never works),
    /// anything else retryable; the connection is dropped either way.
    fn io_error(&self, what: &str, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return Error::fatal(format!(
                "redis {addr}: the connection was denied: the pipeline does not grant it; add \"tcp://{addr}\" to \
                 this sink's grants.hosts ({e})",
                addr = self.addr
            ));
        }
        Error::retryable(format!("redis {}: {what} {}: {e}", self.addr, self.addr))
    }

    /// Appends the commands for one record to `out` (nothing if it cannot
    /// be written); returns how many.
    fn encode(&self, record: &Record<'_>, out: &mut Vec<u8>) -> Result<usize, String> {
        let config = &self.config;
        let needs_object = config.command == Command::Hset || config.format == Format::Fields;
        let value: Option<Value> = if needs_object || self.key.reads_value() {
            Some(serde_json::from_slice(record.value()).map_err(|e| format!("value is not JSON: {e}"))?)
        } else {
            None
        };
        let mut key = Vec::new();
        self.key.expand(record, self.lane, value.as_ref(), &mut key)?;
        let fields = |value: &Option<Value>| -> Result<Vec<(String, Vec<u8>)>, String> {
            let Some(Value::Object(map)) = value else {
                return Err("value is not a JSON object, which this sink's format needs".into());
            };
            if map.is_empty() {
                return Err("value is an empty object: there is no field to write".into());
            }
            Ok(map
                .iter()
                .map(|(k, v)| match v {
                    Value::String(s) => (k.clone(), s.as_bytes().to_vec()),
                    other => (k.clone(), other.to_string().into_bytes()),
                })
                .collect())
        };
        let mut args: Vec<Vec<u8>> = Vec::new();
        let mut count = 1;
        match config.command {
            Command::Xadd => {
                args.push(b"XADD".to_vec());
                args.push(key.clone());
                if let Some(maxlen) = config.maxlen {
                    args.extend([b"MAXLEN".to_vec(), b"~".to_vec(), maxlen.to_string().into_bytes()]);
                }
                args.push(if config.idempotent {
                    format!("{}-0", record.offset() + 1).into_bytes()
                } else {
                    b"*".to_vec()
                });
                match config.format {
                    Format::Value => args.extend([config.field.as_bytes().to_vec(), record.value().to_vec()]),
                    Format::Fields => {
                        for (k, v) in fields(&value)? {
                            args.extend([k.into_bytes(), v]);
                        }
                    }
                }
            }
            Command::Set => {
                args.extend([b"SET".to_vec(), key.clone(), record.value().to_vec()]);
                if let Some(ttl) = config.ttl_seconds {
                    args.extend([b"EX".to_vec(), ttl.to_string().into_bytes()]);
                }
            }
            Command::Hset => {
                args.extend([b"HSET".to_vec(), key.clone()]);
                for (k, v) in fields(&value)? {
                    args.extend([k.into_bytes(), v]);
                }
            }
        }
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        command(out, &refs);
        if config.command == Command::Hset
            && let Some(ttl) = config.ttl_seconds
        {
            command(out, &[b"EXPIRE", &key, ttl.to_string().as_bytes()]);
            count += 1;
        }
        Ok(count)
    }

    /// Writes the encoded commands and reads every reply; returns the
    /// records the server refused.
    fn send(&mut self) -> Result<Vec<Rejection>, Error> {
        if self.conn.is_none() {
            self.connect()?;
        }
        let Some(conn) = self.conn.as_mut() else { return Err(Error::fatal("no connection")) };
        if let Err(e) = conn.stream.write_all(&self.out) {
            self.conn = None;
            return Err(self.io_error("cannot write to", e));
        }
        let mut rejected = Vec::new();
        let mut duplicates = 0;
        let mut worst: Option<(Verdict, String)> = None;
        for &(offset, replies) in &self.sent {
            let mut refused = false;
            for _ in 0..replies {
                let reply = match conn.reply() {
                    Ok(reply) => reply,
                    Err(e) => {
                        self.conn = None;
                        return Err(self.io_error("lost the connection to", e));
                    }
                };
                let Reply::Error(message) = reply else { continue };
                match verdict(&message) {
                    Verdict::Duplicate => duplicates += 1,
                    Verdict::Reject if !refused => {
                        refused = true;
                        rejected.push(Rejection { offset, reason: format!("redis refused the command: {message}") });
                    }
                    Verdict::Reject => {}
                    other => {
                        // Keep reading: the replies must all be consumed.
                        let rank = |v: &Verdict| match v {
                            Verdict::Fatal => 3,
                            Verdict::Backpressure => 2,
                            _ => 1,
                        };
                        if worst.as_ref().is_none_or(|(v, _)| rank(&other) > rank(v)) {
                            worst = Some((other, message));
                        }
                    }
                }
            }
        }
        if let Some((verdict, message)) = worst {
            let message = format!("redis {}: {message}", self.addr);
            return Err(match verdict {
                Verdict::Fatal => Error::fatal(message),
                Verdict::Backpressure => Error::backpressure(Duration::from_secs(1)),
                _ => Error::retryable(message),
            });
        }
        self.duplicates += duplicates;
        self.pending += (self.sent.len() - rejected.len()) as u64 - duplicates;
        Ok(rejected)
    }
}

impl Sink for RedisSink {
    type Config = Config;

    fn config_schema() -> Option<String> {
        Some(config_schema())
    }

    fn open(config: Config, context: &Context) -> Result<Self, Error> {
        let key = Template::parse(&config.key).map_err(|e| Error::fatal(format!("\"key\": {e}")))?;
        if config.username.is_some() && config.password.is_none() {
            return Err(Error::fatal("\"username\" needs a \"password\""));
        }
        if config.idempotent {
            if config.command != Command::Xadd {
                return Err(Error::fatal("\"idempotent\" applies to \"command\": \"xadd\" only"));
            }
            if !key.names_partition() || (context.lanes > 1 && !key.names_lane()) {
                return Err(Error::fatal(format!(
                    "\"idempotent\" streams need one writer each: put {{partition}} in the key \"{}\"{}",
                    config.key,
                    if context.lanes > 1 {
                        format!(" (and {{lane}}: the sink runs {} lanes)", context.lanes)
                    } else {
                        String::new()
                    }
                )));
            }
        }
        let mut sink = RedisSink {
            addr: format!("{}:{}", config.host, config.port),
            config,
            key,
            lane: context.lane,
            conn: None,
            probe: context.probe,
            out: Vec::with_capacity(64 << 10),
            sent: Vec::new(),
            pending: 0,
            written: 0,
            duplicates: 0,
        };
        if !sink.probe {
            sink.connect()?;
        }
        Ok(sink)
    }

    fn add(&mut self, record: Record<'_>) -> Result<(), Error> {
        self.encode(&record, &mut Vec::new()).map(|_| ()).map_err(Error::Reject)
    }

    fn add_batch(&mut self, batch: Batch) -> Result<(), Error> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        self.sent.clear();
        let mut rejected = Vec::new();
        for record in batch.records() {
            let record = record.map_err(Error::fatal)?;
            match self.encode(&record, &mut out) {
                Ok(replies) => self.sent.push((record.offset(), replies)),
                Err(reason) => rejected.push(Rejection { offset: record.offset(), reason }),
            }
        }
        self.out = out;
        if !self.probe && !self.sent.is_empty() {
            rejected.extend(self.send()?);
        }
        if rejected.is_empty() { Ok(()) } else { Err(Error::Rejected(rejected)) }
    }

    fn flush(&mut self) -> Result<(), Error> {
        if self.probe {
            return Err(Error::fatal("a probe instance cannot flush"));
        }
        self.written += std::mem::take(&mut self.pending);
        Ok(())
    }

    fn status(&mut self) -> Option<Status> {
        let mut custom = Vec::new();
        let duplicates = std::mem::take(&mut self.duplicates);
        if duplicates > 0 {
            custom.push(("duplicates_skipped".to_string(), duplicates));
        }
        Some(Status { written: std::mem::take(&mut self.written), custom, ..Status::default() })
    }

    fn abort(&mut self) {
        // What was written stays written; the replay writes it again.
        self.pending = 0;
    }
}

export_sink!(RedisSink);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_schema_is_derived_from_the_struct() {
        let schema: serde_json::Value = serde_json::from_str(&config_schema()).expect("JSON");
        assert_eq!(schema["required"], serde_json::json!(["host", "key"]));
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["properties"]["port"]["default"], 6379);
        let text = schema.to_string();
        for word in ["xadd", "set", "hset", "MAXLEN", "OFFSET+1-0"] {
            assert!(text.contains(word), "{word}: {text}");
        }
    }

    #[test]
    fn error_replies_map_to_the_contract() {
        let cases = [
            ("ERR The ID specified in XADD is equal or smaller than the target stream top item", Verdict::Duplicate),
            ("WRONGTYPE Operation against a key holding the wrong kind of value", Verdict::Reject),
            ("ERR invalid expire time in 'set' command", Verdict::Reject),
            ("LOADING Redis is loading the dataset in memory", Verdict::Retry),
            ("BUSY Redis is busy running a script", Verdict::Retry),
            ("OOM command not allowed when used memory > 'maxmemory'.", Verdict::Backpressure),
            ("NOAUTH Authentication required.", Verdict::Fatal),
            ("WRONGPASS invalid username-password pair or user is disabled.", Verdict::Fatal),
            ("MOVED 3999 127.0.0.1:6381", Verdict::Fatal),
        ];
        for (error, expected) in cases {
            assert_eq!(verdict(error), expected, "{error}");
        }
    }
}
