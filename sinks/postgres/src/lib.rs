//! The `postgres` sink: inserts or upserts each record's JSON fields as a
//! row of a PostgreSQL table, one transaction per checkpoint, over the
//! PostgreSQL wire protocol on a raw TCP connection (`tcp://HOST:PORT` in
//! the sink's `grants.hosts`).
//!
//! ```json
//! {"host": "127.0.0.1", "user": "app", "password": "secret", "table": "orders",
//!  "columns": ["id", "total"], "mode": "upsert", "key": ["id"]}
//! ```
//!
//! How it writes:
//! - `open` connects, authenticates (trust, password, md5 or
//!   SCRAM-SHA-256) and prepares the insert, so a wrong table or column is
//!   a fatal error at open naming it.
//! - The first `add` after a flush opens a transaction (`BEGIN`); each
//!   batch is one pipelined round trip: a savepoint, one Bind/Execute of
//!   the prepared insert per record, a release, a Sync. `flush` commits.
//! - A row the server refuses for its content (SQLSTATE class 22 or 23,
//!   e.g. a constraint or a type error) is found exactly: the server
//!   completed every statement before it and skipped everything after. The
//!   sink rolls back to the batch's savepoint, sends the batch again
//!   without that row, and rejects it with the server's message (it goes
//!   to the dead-letter queue). Each bad row costs one more round trip of
//!   its batch; the rest of the checkpoint is untouched.
//! - A connection failure, or a transient server error (SQLSTATE classes
//!   08, 40, 53, 57, 58), is retryable: the runtime replaces the instance
//!   (the server rolls back the open transaction when the connection
//!   closes) and replays the checkpoint. Other server errors are fatal.
//! - In `upsert` mode a replay overwrites the same rows, so the table ends
//!   up exactly as if every record was written once; in `insert` mode a
//!   crash between the commit and the runtime's offset commit writes the
//!   checkpoint's rows again (at least once).
//! - A probe instance (bisection) never connects; it only checks that
//!   each value is a JSON object.

mod row;
mod wire;

use std::collections::BTreeMap;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use sinkbox_sdk::{Batch, Context, Error, Record, Rejection, Sink, Status, export_sink};

pub use row::{Columns, quote};
pub use wire::{Conn, Login, PgError, ServerError};

/// The postgres sink's config. Its JSON Schema is derived from this struct
/// ([`config_schema`]).
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Server host name or IP address; the pipeline must grant
    /// `tcp://HOST:PORT` in the sink's `grants.hosts`.
    #[schemars(length(min = 1))]
    pub host: String,
    /// Server port. Default 5432.
    #[serde(default = "default_port")]
    pub port: u16,
    /// User name.
    #[schemars(length(min = 1))]
    pub user: String,
    /// Password, for password, md5 or SCRAM-SHA-256 authentication.
    #[serde(default)]
    pub password: Option<String>,
    /// Database. Default: the user name.
    #[serde(default)]
    pub database: Option<String>,
    /// Schema of the table. Default: the server's search path.
    #[serde(default)]
    pub schema: Option<String>,
    /// Table name (quoted as given: case matters).
    #[schemars(length(min = 1))]
    pub table: String,
    /// The columns to write, each from the value's field of the same name
    /// unless `fields` says otherwise.
    #[schemars(length(min = 1))]
    pub columns: Vec<String>,
    /// Where a column's value comes from: a JSON Pointer into the record's
    /// value (`"/customer/id"`). A missing field or JSON null is SQL NULL;
    /// strings go as text, numbers and booleans as their JSON text, objects
    /// and arrays as JSON (for json/jsonb columns).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// `insert` (default) or `upsert` (`INSERT ... ON CONFLICT (key) DO
    /// UPDATE`, which makes replays idempotent).
    #[serde(default)]
    pub mode: Mode,
    /// The conflict target for `upsert`: columns of a unique index.
    #[serde(default)]
    pub key: Vec<String>,
}

fn default_port() -> u16 {
    5432
}

/// How rows are written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `INSERT`: a duplicate key is a rejected row.
    #[default]
    Insert,
    /// `INSERT ... ON CONFLICT (key) DO UPDATE SET` the other columns (or
    /// `DO NOTHING` when every column is a key column).
    Upsert,
}

/// The config's JSON Schema (draft 2020-12): derived from [`Config`], plus
/// the rule a struct cannot say: upsert needs a key.
pub fn config_schema() -> String {
    let mut schema = schemars::schema_for!(Config);
    schema.insert(
        "allOf".into(),
        serde_json::json!([{
            "if": { "properties": { "mode": { "const": "upsert" } }, "required": ["mode"] },
            "then": { "required": ["key"], "properties": { "key": { "minItems": 1 } } }
        }]),
    );
    serde_json::to_string(&schema).unwrap_or_default()
}

/// The statement names prepared at open.
const INSERT: &str = "sinkbox_insert";
const SAVEPOINT: &str = "sinkbox_savepoint";
const RELEASE: &str = "sinkbox_release";

/// The sink.
pub struct PostgresSink {
    addr: String,
    user: String,
    password: Option<String>,
    database: String,
    sql: String,
    columns: Columns,
    /// `None` in a probe instance, and after a connection failure until the
    /// next transaction starts.
    conn: Option<Conn>,
    probe: bool,
    /// A transaction is open on `conn`.
    in_transaction: bool,
    /// One batch's rows, encoded as Bind+Execute messages.
    encoded: BytesMut,
    rows: Vec<(u64, std::ops::Range<usize>)>,
    /// Rows in the open transaction, and rows committed since the last
    /// status report.
    pending: u64,
    written: u64,
    rejected: u64,
}

impl PostgresSink {
    fn login(&self) -> Login<'_> {
        Login { addr: &self.addr, user: &self.user, password: self.password.as_deref(), database: &self.database }
    }

    /// Connects and prepares the statements.
    fn connect(&mut self) -> Result<(), Error> {
        let mut conn = Conn::connect(&self.login()).map_err(|e| self.error("cannot connect to", e))?;
        let prepare = |conn: &mut Conn| -> Result<(), PgError> {
            frontend::parse(INSERT, &self.sql, [], &mut conn.out)?;
            frontend::parse(SAVEPOINT, "SAVEPOINT sinkbox", [], &mut conn.out)?;
            frontend::parse(RELEASE, "RELEASE SAVEPOINT sinkbox", [], &mut conn.out)?;
            frontend::sync(&mut conn.out);
            conn.send()?;
            match conn.replies(0)?.error {
                Some(e) => Err(PgError::Server(e)),
                None => Ok(()),
            }
        };
        prepare(&mut conn).map_err(|e| self.error(&format!("cannot prepare `{}` on", self.sql), e))?;
        self.conn = Some(conn);
        Ok(())
    }

    /// A failure as the contract's error: connection trouble and transient
    /// server errors are retryable, a denied connection and everything else
    /// fatal.
    fn error(&self, what: &str, e: PgError) -> Error {
        let message = format!("postgres {}: {what} {}: {e}", self.addr, self.addr);
        match &e {
            PgError::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => Error::fatal(format!(
                "postgres {addr}: the connection was denied: the pipeline does not grant it; add \"tcp://{addr}\" \
                 to this sink's grants.hosts ({io})",
                addr = self.addr
            )),
            PgError::Io(_) => Error::retryable(message),
            PgError::Server(s) if s.is_transient() => Error::retryable(message),
            _ => Error::fatal(message),
        }
    }

    /// The open connection; connects first if there is none (only between
    /// transactions: a transaction does not survive its connection).
    fn conn(&mut self) -> Result<&mut Conn, Error> {
        if self.conn.is_none() {
            if self.in_transaction {
                return Err(Error::retryable(format!(
                    "postgres {}: the connection was lost mid-transaction",
                    self.addr
                )));
            }
            self.connect()?;
        }
        self.conn.as_mut().ok_or_else(|| Error::fatal("no connection"))
    }

    /// Sends the encoded rows not in `skip` as one pipelined round, after
    /// `prefix` (simple queries), and reads the replies.
    fn round(&mut self, prefix: Option<&str>, skip: &[usize]) -> Result<wire::Replies, PgError> {
        let Some(conn) = self.conn.as_mut() else {
            return Err(PgError::Protocol("no connection".into()));
        };
        if let Some(sql) = prefix {
            frontend::query(sql, &mut conn.out)?;
        }
        statement(SAVEPOINT, &mut conn.out)?;
        for (i, (_, range)) in self.rows.iter().enumerate() {
            if !skip.contains(&i) {
                conn.out.extend_from_slice(&self.encoded[range.clone()]);
            }
        }
        statement(RELEASE, &mut conn.out)?;
        frontend::sync(&mut conn.out);
        conn.send()?;
        conn.replies(usize::from(prefix.is_some()))
    }

    /// Writes the encoded rows inside the open transaction (opening it
    /// first); returns the rows the server refused for their content.
    fn write_rows(&mut self) -> Result<Vec<Rejection>, Error> {
        self.conn()?;
        let mut prefix = if self.in_transaction { None } else { Some("BEGIN") };
        // The transaction is open once BEGIN is sent: a failure after this
        // point must roll it back (abort) or drop the connection.
        self.in_transaction = true;
        let mut skip: Vec<usize> = Vec::new();
        let mut rejected = Vec::new();
        loop {
            let replies = match self.round(prefix, &skip) {
                Ok(replies) => replies,
                Err(e) => return Err(self.lost(e)),
            };
            if let Some(e) = replies.prefix_error {
                return Err(self.error("cannot start a transaction on", PgError::Server(e)));
            }
            let Some(e) = replies.error else { break };
            // Completed: the savepoint, then the rows before the bad one.
            let live: Vec<usize> = (0..self.rows.len()).filter(|i| !skip.contains(i)).collect();
            let bad = replies.completed.checked_sub(1).and_then(|n| live.get(n).copied());
            match bad {
                Some(index) if e.is_content() => {
                    rejected.push(Rejection {
                        offset: self.rows[index].0,
                        reason: format!("postgres refused the row: {e}"),
                    });
                    skip.push(index);
                    prefix = Some("ROLLBACK TO SAVEPOINT sinkbox; RELEASE SAVEPOINT sinkbox");
                }
                _ => return Err(self.error("cannot insert into", PgError::Server(e))),
            }
        }
        self.pending += (self.rows.len() - skip.len()) as u64;
        self.rejected += rejected.len() as u64;
        Ok(rejected)
    }

    /// Drops a connection that failed mid-transaction (the server rolls the
    /// transaction back) and says so.
    fn lost(&mut self, e: PgError) -> Error {
        self.conn = None;
        self.error("lost the connection to", e)
    }
}

/// Bind and Execute of a prepared statement without parameters.
fn statement(name: &str, out: &mut BytesMut) -> std::io::Result<()> {
    frontend::bind("", name, [], [] as [Option<&[u8]>; 0], |_, _| Ok(postgres_protocol::IsNull::Yes), [], out)
        .map_err(|_| std::io::Error::other("cannot encode a bind message"))?;
    frontend::execute("", 0, out)
}

impl Sink for PostgresSink {
    type Config = Config;

    fn config_schema() -> Option<String> {
        Some(config_schema())
    }

    fn open(config: Config, context: &Context) -> Result<Self, Error> {
        let columns = Columns::new(&config.columns, &config.fields).map_err(Error::fatal)?;
        let sql = row::insert_sql(config.schema.as_deref(), &config.table, &config.columns, config.mode, &config.key)
            .map_err(Error::fatal)?;
        let mut sink = PostgresSink {
            addr: format!("{}:{}", config.host, config.port),
            database: config.database.unwrap_or_else(|| config.user.clone()),
            user: config.user,
            password: config.password,
            sql,
            columns,
            conn: None,
            probe: context.probe,
            in_transaction: false,
            encoded: BytesMut::with_capacity(64 << 10),
            rows: Vec::new(),
            pending: 0,
            written: 0,
            rejected: 0,
        };
        if !sink.probe {
            sink.connect()?;
        }
        Ok(sink)
    }

    fn add(&mut self, record: Record<'_>) -> Result<(), Error> {
        let mut scratch = BytesMut::new();
        self.columns.encode(INSERT, record.value(), &mut scratch).map_err(Error::Reject)
    }

    fn add_batch(&mut self, batch: Batch) -> Result<(), Error> {
        self.encoded.clear();
        self.rows.clear();
        let mut rejected = Vec::new();
        for record in batch.records() {
            let record = record.map_err(Error::fatal)?;
            let start = self.encoded.len();
            match self.columns.encode(INSERT, record.value(), &mut self.encoded) {
                Ok(()) => self.rows.push((record.offset(), start..self.encoded.len())),
                Err(reason) => {
                    self.encoded.truncate(start);
                    rejected.push(Rejection { offset: record.offset(), reason });
                }
            }
        }
        if !self.probe && !self.rows.is_empty() {
            rejected.extend(self.write_rows()?);
        }
        if rejected.is_empty() { Ok(()) } else { Err(Error::Rejected(rejected)) }
    }

    fn flush(&mut self) -> Result<(), Error> {
        if self.probe {
            return Err(Error::fatal("a probe instance cannot flush"));
        }
        if self.in_transaction {
            let Some(conn) = self.conn.as_mut() else {
                return Err(Error::retryable(format!(
                    "postgres {}: the connection was lost mid-transaction",
                    self.addr
                )));
            };
            let tags = match conn.simple("COMMIT") {
                Ok(tags) => tags,
                Err(e @ PgError::Io(_)) => return Err(self.lost(e)),
                // A deferred constraint fails at commit, where the row that
                // broke it is not known: the checkpoint is replayed.
                Err(e) => return Err(self.error("cannot commit on", e)),
            };
            self.in_transaction = false;
            if tags.first().map(String::as_str) != Some("COMMIT") {
                return Err(Error::retryable(format!(
                    "postgres {}: the server rolled the transaction back at commit ({tags:?})",
                    self.addr
                )));
            }
        }
        self.written += std::mem::take(&mut self.pending);
        Ok(())
    }

    fn status(&mut self) -> Option<Status> {
        let mut custom = Vec::new();
        let rejected = std::mem::take(&mut self.rejected);
        if rejected > 0 {
            custom.push(("rows_refused".to_string(), rejected));
        }
        Some(Status { written: std::mem::take(&mut self.written), custom, ..Status::default() })
    }

    fn abort(&mut self) {
        self.pending = 0;
        self.rejected = 0;
        if std::mem::take(&mut self.in_transaction)
            && let Some(conn) = self.conn.as_mut()
            && conn.simple("ROLLBACK").is_err()
        {
            // The server rolls back when the connection closes; the next
            // transaction connects again.
            self.conn = None;
        }
    }

    fn close(self) -> Result<(), Error> {
        if let Some(conn) = self.conn {
            conn.terminate();
        }
        Ok(())
    }
}

export_sink!(PostgresSink);

#[cfg(test)]
mod tests {
    #[test]
    fn the_config_schema_is_derived_from_the_struct() {
        let schema: serde_json::Value = serde_json::from_str(&super::config_schema()).expect("JSON");
        assert_eq!(schema["required"], serde_json::json!(["host", "user", "table", "columns"]));
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["properties"]["port"]["default"], 5432);
        assert_eq!(schema["allOf"][0]["then"]["required"], serde_json::json!(["key"]));
        let text = schema.to_string();
        for word in ["insert", "upsert", "JSON Pointer"] {
            assert!(text.contains(word), "{word}: {text}");
        }
    }
}
