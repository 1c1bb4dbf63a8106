//! The `mqtt` sink: publishes each record's value to an MQTT 3.1.1 broker
//! at QoS 0 or 1, on a topic from a template (`events/{key}`), over a raw
//! TCP connection (`tcp://HOST:PORT` in the sink's `grants.hosts`).
//!
//! ```json
//! {"host": "127.0.0.1", "topic": "events/{key}", "qos": 1}
//! ```
//!
//! Each batch is written in one go. At QoS 1 the sink then reads the
//! PUBACK of every message before `add` returns (at most 1,024 messages are
//! in flight), so a `flush` that succeeds means the broker has every
//! message. At QoS 0 `flush` sends a PINGREQ and waits for the PINGRESP:
//! the broker answers in order, so it has read everything before it. A
//! replay publishes again (at least once).

mod packet;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;

use sinkbox_sdk::template::Template;
use sinkbox_sdk::{Batch, Context, Error, Record, Rejection, Sink, Status, export_sink};

pub use packet::{Connect, Incoming, check_topic, connect, parse, publish};

/// The mqtt sink's config. Its JSON Schema is derived from this struct
/// ([`config_schema`]).
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Broker host name or IP address; the pipeline must grant
    /// `tcp://HOST:PORT` in the sink's `grants.hosts`.
    #[schemars(length(min = 1))]
    pub host: String,
    /// Broker port. Default 1883.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The topic, a template: `{key}` (the record's key), `{topic}`,
    /// `{partition}`, `{lane}`, `{offset}` and JSON Pointers into the value
    /// such as `{/device}`.
    #[schemars(length(min = 1))]
    pub topic: String,
    /// 0 (at most once per attempt) or 1 (acknowledged). Default 1.
    #[serde(default = "default_qos")]
    #[schemars(range(max = 1))]
    pub qos: u8,
    /// Publish with the retain flag.
    #[serde(default)]
    pub retain: bool,
    /// Client identifier; `{pipeline}`, `{sink}`, `{partition}` and `{lane}`
    /// are replaced. Each instance needs its own (a broker drops the older
    /// connection of a repeated one). Default
    /// `sinkbox-{pipeline}-{sink}-{partition}-{lane}`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (needs `username` in MQTT 3.1.1).
    #[serde(default)]
    pub password: Option<String>,
    /// Keep-alive in seconds sent in CONNECT. Default 0: off (the sink
    /// sends nothing while idle, so a broker must not time it out).
    #[serde(default)]
    pub keep_alive_seconds: u16,
}

fn default_port() -> u16 {
    1883
}

fn default_qos() -> u8 {
    1
}

/// The config's JSON Schema (draft 2020-12), derived from [`Config`].
pub fn config_schema() -> String {
    serde_json::to_string(&schemars::schema_for!(Config)).unwrap_or_default()
}

/// Messages in flight at QoS 1 before the sink waits for their PUBACKs.
const WINDOW: usize = 1024;

/// A connection: a socket and the bytes read but not yet parsed.
struct Conn {
    stream: TcpStream,
    input: Vec<u8>,
}

impl Conn {
    fn packet(&mut self) -> std::io::Result<Incoming> {
        loop {
            match parse(&self.input) {
                Ok(Some((packet, used))) => {
                    self.input.drain(..used);
                    return Ok(packet);
                }
                Ok(None) => {}
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            }
            let len = self.input.len();
            self.input.resize(len + (16 << 10), 0);
            let n = match self.stream.read(&mut self.input[len..]) {
                Ok(n) => n,
                Err(e) => {
                    self.input.truncate(len);
                    return Err(e);
                }
            };
            self.input.truncate(len + n);
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the broker closed the connection"));
            }
        }
    }
}

/// The sink.
pub struct MqttSink {
    addr: String,
    config: Config,
    client_id: String,
    topic: Template,
    lane: u32,
    conn: Option<Conn>,
    probe: bool,
    out: Vec<u8>,
    /// QoS 1 packet identifiers written and not yet acknowledged.
    inflight: HashSet<u16>,
    next_id: u16,
    pending: u64,
    written: u64,
}

impl MqttSink {
    fn connect(&mut self) -> Result<(), Error> {
        let stream = TcpStream::connect(&self.addr).map_err(|e| self.io_error("cannot connect to", e))?;
        // Not all hosts support the option; it only costs latency.
        let _ = stream.set_nodelay(true);
        let mut conn = Conn { stream, input: Vec::with_capacity(16 << 10) };
        let mut hello = Vec::new();
        connect(
            &mut hello,
            &Connect {
                client_id: &self.client_id,
                username: self.config.username.as_deref(),
                password: self.config.password.as_deref(),
                keep_alive: self.config.keep_alive_seconds,
            },
        );
        conn.stream.write_all(&hello).map_err(|e| self.io_error("cannot write to", e))?;
        match conn.packet().map_err(|e| self.io_error("cannot read from", e))? {
            Incoming::ConnAck(0) => {}
            Incoming::ConnAck(code) => {
                let message = format!(
                    "mqtt {}: the broker refused the connection: {} (CONNACK return code {code})",
                    self.addr,
                    packet::connack_reason(code)
                );
                return Err(if code == 3 { Error::retryable(message) } else { Error::fatal(message) });
            }
            other => {
                return Err(Error::fatal(format!("mqtt {}: the broker answered CONNECT with {other:?}", self.addr)));
            }
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// An I/O failure: a denied connection is fatal (it never works),
    /// anything else retryable.
    fn io_error(&self, what: &str, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            return Error::fatal(format!(
                "mqtt {addr}: the connection was denied: the pipeline does not grant it; add \"tcp://{addr}\" to \
                 this sink's grants.hosts ({e})",
                addr = self.addr
            ));
        }
        Error::retryable(format!("mqtt {}: {what} {}: {e}", self.addr, self.addr))
    }

    /// Appends the PUBLISH for one record to `out`, or says why it cannot be.
    fn encode(&mut self, record: &Record<'_>, out: &mut Vec<u8>) -> Result<(), String> {
        let value = if self.topic.reads_value() {
            Some(serde_json::from_slice(record.value()).map_err(|e| format!("value is not JSON: {e}"))?)
        } else {
            None
        };
        let mut topic = Vec::new();
        self.topic.expand(record, self.lane, value.as_ref(), &mut topic)?;
        check_topic(&topic)?;
        let len = packet::publish_len(&topic, record.value(), self.config.qos);
        if len > packet::MAX_REMAINING {
            return Err(format!("the message is {len} bytes, over MQTT's limit of {}", packet::MAX_REMAINING));
        }
        let id = self.next_id;
        if self.config.qos > 0 {
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            self.inflight.insert(id);
        }
        publish(out, &topic, record.value(), self.config.qos, self.config.retain, id);
        Ok(())
    }

    /// Writes `out` and, at QoS 1, reads until every message in flight is
    /// acknowledged.
    fn send(&mut self) -> Result<(), Error> {
        if self.conn.is_none() {
            self.connect()?;
        }
        let Some(conn) = self.conn.as_mut() else { return Err(Error::fatal("no connection")) };
        let mut result = conn.stream.write_all(&self.out);
        while result.is_ok() && !self.inflight.is_empty() {
            match conn.packet() {
                Ok(Incoming::PubAck(id)) => {
                    self.inflight.remove(&id);
                }
                Ok(_) => {}
                Err(e) => result = Err(e),
            }
        }
        self.out.clear();
        result.map_err(|e| {
            self.conn = None;
            self.inflight.clear();
            self.io_error("lost the connection to", e)
        })
    }
}

impl Sink for MqttSink {
    type Config = Config;

    fn config_schema() -> Option<String> {
        Some(config_schema())
    }

    fn open(config: Config, context: &Context) -> Result<Self, Error> {
        if config.qos > 1 {
            return Err(Error::fatal(format!("\"qos\" must be 0 or 1, not {}", config.qos)));
        }
        if config.password.is_some() && config.username.is_none() {
            return Err(Error::fatal("\"password\" needs a \"username\" in MQTT 3.1.1"));
        }
        let topic = Template::parse(&config.topic).map_err(|e| Error::fatal(format!("\"topic\": {e}")))?;
        let client_id =
            context.expand(config.client_id.as_deref().unwrap_or("sinkbox-{pipeline}-{sink}-{partition}-{lane}"));
        let mut sink = MqttSink {
            addr: format!("{}:{}", config.host, config.port),
            config,
            client_id,
            topic,
            lane: context.lane,
            conn: None,
            probe: context.probe,
            out: Vec::with_capacity(64 << 10),
            inflight: HashSet::new(),
            next_id: 1,
            pending: 0,
            written: 0,
        };
        if !sink.probe {
            sink.connect()?;
        }
        Ok(sink)
    }

    fn add(&mut self, record: Record<'_>) -> Result<(), Error> {
        let mut out = Vec::new();
        let result = self.encode(&record, &mut out).map_err(Error::Reject);
        self.inflight.clear();
        result
    }

    fn add_batch(&mut self, batch: Batch) -> Result<(), Error> {
        let mut rejected = Vec::new();
        let mut count = 0;
        for record in batch.records() {
            let record = record.map_err(Error::fatal)?;
            let mut out = std::mem::take(&mut self.out);
            let encoded = self.encode(&record, &mut out);
            self.out = out;
            match encoded {
                Ok(()) => count += 1,
                Err(reason) => rejected.push(Rejection { offset: record.offset(), reason }),
            }
            if !self.probe && (self.inflight.len() >= WINDOW || self.out.len() >= 1 << 20) {
                self.send()?;
            }
        }
        if self.probe {
            self.out.clear();
            self.inflight.clear();
        } else if !self.out.is_empty() {
            self.send()?;
        }
        self.pending += count;
        if rejected.is_empty() { Ok(()) } else { Err(Error::Rejected(rejected)) }
    }

    fn flush(&mut self) -> Result<(), Error> {
        if self.probe {
            return Err(Error::fatal("a probe instance cannot flush"));
        }
        if self.config.qos == 0 && self.pending > 0 {
            // The broker answers in order: its PINGRESP means it has read
            // every PUBLISH before the PINGREQ.
            self.out.extend_from_slice(&packet::PINGREQ);
            let Some(conn) = self.conn.as_mut() else {
                return Err(Error::retryable(format!("mqtt {}: the connection was lost", self.addr)));
            };
            let mut result = conn.stream.write_all(&self.out);
            self.out.clear();
            while result.is_ok() {
                match conn.packet() {
                    Ok(Incoming::PingResp) => break,
                    Ok(_) => {}
                    Err(e) => result = Err(e),
                }
            }
            if let Err(e) = result {
                self.conn = None;
                return Err(self.io_error("lost the connection to", e));
            }
        }
        self.written += std::mem::take(&mut self.pending);
        Ok(())
    }

    fn status(&mut self) -> Option<Status> {
        Some(Status { written: std::mem::take(&mut self.written), ..Status::default() })
    }

    fn abort(&mut self) {
        // Published messages cannot be taken back; the replay publishes
        // them again.
        self.pending = 0;
        self.out.clear();
    }

    fn close(self) -> Result<(), Error> {
        if let Some(mut conn) = self.conn {
            let _ = conn.stream.write_all(&packet::DISCONNECT);
        }
        Ok(())
    }
}

export_sink!(MqttSink);

#[cfg(test)]
mod tests {
    #[test]
    fn the_config_schema_is_derived_from_the_struct() {
        let schema: serde_json::Value = serde_json::from_str(&super::config_schema()).expect("JSON");
        assert_eq!(schema["required"], serde_json::json!(["host", "topic"]));
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["properties"]["port"]["default"], 1883);
        assert_eq!(schema["properties"]["qos"]["default"], 1);
        assert_eq!(schema["properties"]["qos"]["maximum"], 1);
    }
}
