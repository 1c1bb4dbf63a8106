//! Connects with Rust std's `TcpStream` (wasi:sockets underneath) to
//! `addr` (an address or a name, with its port) at `open`, and sends each
//! record's value as a line. A failed connect is a fatal error that quotes
//! the guest's own view of it.

use std::io::Write;
use std::net::TcpStream;

use sinkbox_sdk::{Context, Error, Record, Sink, export_sink};

#[derive(serde::Deserialize)]
struct Config {
    addr: String,
}

struct TcpClient {
    stream: TcpStream,
}

impl Sink for TcpClient {
    type Config = Config;

    fn open(config: Config, _context: &Context) -> Result<Self, Error> {
        let stream = TcpStream::connect(config.addr.as_str())
            .map_err(|e| Error::fatal(format!("cannot connect to {}: {e} ({:?})", config.addr, e.kind())))?;
        Ok(TcpClient { stream })
    }

    fn add(&mut self, record: Record<'_>) -> Result<(), Error> {
        self.stream.write_all(record.value()).map_err(|e| Error::retryable(format!("send: {e}")))?;
        self.stream.write_all(b"\n").map_err(|e| Error::retryable(format!("send: {e}")))
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.stream.flush().map_err(|e| Error::retryable(format!("flush: {e}")))
    }
}

export_sink!(TcpClient);
