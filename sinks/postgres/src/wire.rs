//! A PostgreSQL connection over `std::net::TcpStream`: startup,
//! authentication (trust, cleartext, md5, SCRAM-SHA-256) and reading
//! backend messages. Message framing comes from `postgres-protocol`.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend::Message, frontend};

/// What went wrong talking to the server.
#[derive(Debug)]
pub enum PgError {
    /// The connection failed or broke.
    Io(io::Error),
    /// The server answered with an `ErrorResponse`.
    Server(ServerError),
    /// The server said something this client does not understand, or asked
    /// for what the config cannot give (a password it does not hold).
    Protocol(String),
}

impl From<io::Error> for PgError {
    fn from(e: io::Error) -> PgError {
        PgError::Io(e)
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgError::Io(e) => write!(f, "{e}"),
            PgError::Server(e) => write!(f, "{e}"),
            PgError::Protocol(m) => write!(f, "{m}"),
        }
    }
}

/// An `ErrorResponse`: SQLSTATE, message, and detail when the server gives one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The five-character SQLSTATE code.
    pub code: String,
    /// The primary message.
    pub message: String,
    /// The detail line, if any (e.g. which key a unique violation hit).
    pub detail: Option<String>,
}

impl ServerError {
    fn from_fields(body: &postgres_protocol::message::backend::ErrorResponseBody) -> ServerError {
        let mut error = ServerError { code: String::new(), message: String::new(), detail: None };
        let mut fields = body.fields();
        while let Ok(Some(field)) = fields.next() {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                _ => {}
            }
        }
        error
    }

    /// Whether the error is about a row's content (SQLSTATE classes 22,
    /// data exception, and 23, integrity constraint violation), so the row
    /// can be dead-lettered and the rest written.
    pub fn is_content(&self) -> bool {
        self.code.starts_with("22") || self.code.starts_with("23")
    }

    /// Whether retrying later can succeed: connection exceptions (08),
    /// transaction rollbacks such as deadlocks and serialization failures
    /// (40), insufficient resources (53), operator intervention such as a
    /// shutdown (57) and system errors (58).
    pub fn is_transient(&self) -> bool {
        ["08", "40", "53", "57", "58"].iter().any(|class| self.code.starts_with(class))
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// Who to connect as.
pub struct Login<'a> {
    /// `host:port`.
    pub addr: &'a str,
    /// User name.
    pub user: &'a str,
    /// Password, if the server asks for one.
    pub password: Option<&'a str>,
    /// Database name.
    pub database: &'a str,
}

/// An open, authenticated connection, idle (ready for a query).
pub struct Conn {
    stream: TcpStream,
    input: BytesMut,
    /// Messages built but not yet sent; [`Conn::send`] writes them in one go.
    pub out: BytesMut,
}

impl Conn {
    /// Connects, starts up and authenticates, and waits for the server to be
    /// ready for queries.
    pub fn connect(login: &Login<'_>) -> Result<Conn, PgError> {
        let stream = TcpStream::connect(login.addr)?;
        // Replies are read in one batch after a pipeline is written; Nagle
        // would only delay the last packet. Not all hosts support the
        // option; it only costs latency.
        let _ = stream.set_nodelay(true);
        let mut conn =
            Conn { stream, input: BytesMut::with_capacity(64 << 10), out: BytesMut::with_capacity(64 << 10) };
        let params = [
            ("user", login.user),
            ("database", login.database),
            ("application_name", "sinkbox"),
            ("client_encoding", "UTF8"),
        ];
        frontend::startup_message(params, &mut conn.out)?;
        conn.send()?;
        conn.authenticate(login)?;
        loop {
            match conn.recv()? {
                Message::ReadyForQuery(_) => return Ok(conn),
                Message::ErrorResponse(body) => return Err(PgError::Server(ServerError::from_fields(&body))),
                _ => {}
            }
        }
    }

    fn authenticate(&mut self, login: &Login<'_>) -> Result<(), PgError> {
        let password = || {
            login.password.ok_or_else(|| {
                PgError::Protocol(format!(
                    "the server asks for a password for user \"{}\" and the config has none",
                    login.user
                ))
            })
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            match self.recv()? {
                Message::AuthenticationOk => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?.as_bytes(), &mut self.out)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(login.user.as_bytes(), password()?.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.out)?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut offered = Vec::new();
                    while let Some(m) = mechanisms.next()? {
                        offered.push(m.to_string());
                    }
                    if !offered.iter().any(|m| m == sasl::SCRAM_SHA_256) {
                        return Err(PgError::Protocol(format!(
                            "the server offers SASL mechanisms {offered:?}, none of which this sink supports \
                             (it supports {})",
                            sasl::SCRAM_SHA_256
                        )));
                    }
                    let state = sasl::ScramSha256::new(password()?.as_bytes(), sasl::ChannelBinding::unsupported());
                    frontend::sasl_initial_response(sasl::SCRAM_SHA_256, state.message(), &mut self.out)?;
                    scram = Some(state);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let state = scram.as_mut().ok_or_else(|| PgError::Protocol("SASL continue before start".into()))?;
                    state.update(body.data())?;
                    frontend::sasl_response(state.message(), &mut self.out)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let state = scram.as_mut().ok_or_else(|| PgError::Protocol("SASL final before start".into()))?;
                    state.finish(body.data())?;
                    continue;
                }
                Message::ErrorResponse(body) => return Err(PgError::Server(ServerError::from_fields(&body))),
                _ => {
                    return Err(PgError::Protocol(
                        "the server asks for an authentication method this sink does not support (it supports \
                         trust, password, md5 and scram-sha-256)"
                            .into(),
                    ));
                }
            }
            self.send()?;
        }
    }

    /// Writes everything in `out`.
    pub fn send(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.out)?;
        self.out.clear();
        Ok(())
    }

    /// The next backend message, reading from the socket as needed.
    pub fn recv(&mut self) -> Result<Message, PgError> {
        loop {
            if let Some(message) = Message::parse(&mut self.input)? {
                return Ok(message);
            }
            let start = self.input.len();
            self.input.resize(start + (64 << 10), 0);
            let read = self.stream.read(&mut self.input[start..]);
            let n = match read {
                Ok(n) => n,
                Err(e) => {
                    self.input.truncate(start);
                    return Err(e.into());
                }
            };
            self.input.truncate(start + n);
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection").into());
            }
        }
    }

    /// Runs a simple query (which may hold several statements) and returns
    /// the command tags, or the first error once the server is ready again.
    pub fn simple(&mut self, sql: &str) -> Result<Vec<String>, PgError> {
        frontend::query(sql, &mut self.out)?;
        self.send()?;
        let mut tags = Vec::new();
        let mut error = None;
        loop {
            match self.recv()? {
                Message::CommandComplete(body) => tags.push(body.tag()?.to_string()),
                Message::ErrorResponse(body) => error = Some(ServerError::from_fields(&body)),
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match error {
            Some(e) => Err(PgError::Server(e)),
            None => Ok(tags),
        }
    }

    /// Says goodbye; the server ends the session (rolling back anything open).
    pub fn terminate(mut self) {
        frontend::terminate(&mut self.out);
        let _ = self.send();
    }
}

/// What the server said about the messages sent by one pipelined round:
/// a prefix of simple queries, then extended-protocol statements up to one
/// `Sync`.
#[derive(Debug, Default)]
pub struct Replies {
    /// Statements of the extended part that completed, in order.
    pub completed: usize,
    /// The first error in the prefix, if any.
    pub prefix_error: Option<ServerError>,
    /// The error that stopped the extended part, if any; the server skipped
    /// everything after it up to the `Sync`.
    pub error: Option<ServerError>,
}

impl Conn {
    /// Reads the replies to `prefixes` simple queries followed by extended
    /// statements and one `Sync`.
    pub fn replies(&mut self, prefixes: usize) -> Result<Replies, PgError> {
        let mut replies = Replies::default();
        let mut ready = 0;
        loop {
            match self.recv()? {
                Message::CommandComplete(_) if ready >= prefixes => replies.completed += 1,
                Message::ErrorResponse(body) => {
                    let error = ServerError::from_fields(&body);
                    if ready < prefixes {
                        replies.prefix_error.get_or_insert(error);
                    } else {
                        replies.error = Some(error);
                    }
                }
                Message::ReadyForQuery(_) => {
                    ready += 1;
                    if ready > prefixes {
                        return Ok(replies);
                    }
                }
                _ => {}
            }
        }
    }
}
