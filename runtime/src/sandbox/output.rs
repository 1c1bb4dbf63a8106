//! Guest stdout and stderr, turned into host log lines.

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::budget::LogBudget;
use super::text;

/// Longest line kept before it is logged in pieces; bounds what a guest
/// that never writes a newline can make the host buffer.
const MAX_LINE: usize = 16 << 10;

/// How much of a guest's recent stderr is kept to explain a trap.
const TAIL_BYTES: usize = 1024;

/// A guest output stream that logs each line, attributed to the sink, and
/// optionally keeps the last lines (a panic message) to attach to a trap.
#[derive(Clone)]
pub(super) struct GuestOutput {
    sink: Arc<str>,
    stream: &'static str,
    partial: Arc<Mutex<Vec<u8>>>,
    tail: Option<Tail>,
    budget: LogBudget,
}

/// The last lines a guest wrote, joined by `"; "`.
#[derive(Clone, Default)]
pub(super) struct Tail(Arc<Mutex<String>>);

impl Tail {
    fn push(&self, line: &str) {
        let mut tail = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !tail.is_empty() {
            tail.push_str("; ");
        }
        tail.push_str(line);
        if tail.len() > TAIL_BYTES {
            let mut cut = tail.len() - TAIL_BYTES;
            while !tail.is_char_boundary(cut) {
                cut += 1;
            }
            tail.drain(..cut);
        }
    }

    pub(super) fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub(super) fn take(&self) -> Option<String> {
        let text = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        (!text.is_empty()).then_some(text)
    }
}

impl GuestOutput {
    pub(super) fn new(sink: Arc<str>, stream: &'static str, tail: Option<Tail>, budget: LogBudget) -> Self {
        GuestOutput { sink, stream, partial: Arc::default(), tail, budget }
    }

    fn write_bytes(&self, mut bytes: &[u8]) {
        // A poisoned lock only means another write panicked mid-line; the
        // bytes in it are still fine to log.
        let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            partial.extend_from_slice(&bytes[..newline]);
            self.emit(&mut partial);
            bytes = &bytes[newline + 1..];
        }
        partial.extend_from_slice(bytes);
        if partial.len() >= MAX_LINE {
            self.emit(&mut partial);
        }
    }

    fn emit(&self, line: &mut Vec<u8>) {
        let raw = String::from_utf8_lossy(line);
        let text = text::guest(raw.trim_end_matches('\r'));
        let text = text.as_str();
        if self.budget.allow(line.len()) {
            tracing::info!(target: "sinkbox::guest", sink = &*self.sink, stream = self.stream, "{text}");
        }
        if let Some(tail) = &self.tail {
            // Rust's panic hint says nothing about the failure itself.
            if !text.trim().is_empty() && !text.starts_with("note: run with `RUST_BACKTRACE") {
                tail.push(text);
            }
        }
        line.clear();
    }

    fn flush_partial(&self) {
        let mut partial = self.partial.lock().unwrap_or_else(|p| p.into_inner());
        if !partial.is_empty() {
            self.emit(&mut partial);
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.flush_partial();
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.flush_partial();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.flush_partial();
        Poll::Ready(Ok(()))
    }
}

/// Most structured fields kept from one guest log call.
const MAX_FIELDS: usize = 32;
/// Longest field name or value kept, in bytes.
const MAX_FIELD: usize = 256;

/// Structured log fields, rendered as ` key="value"` pairs: at most
/// [`MAX_FIELDS`] of them, each name and value cut to [`MAX_FIELD`] bytes
/// and escaped.
pub(super) struct Fields<'a>(pub(super) &'a [(String, String)]);

impl Fields<'_> {
    /// Bytes the rendered fields take at most, for the log budget.
    pub(super) fn len(&self) -> usize {
        self.0.iter().take(MAX_FIELDS).map(|(k, v)| k.len().min(MAX_FIELD) + v.len().min(MAX_FIELD) + 4).sum()
    }
}

impl fmt::Display for Fields<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (key, value) in self.0.iter().take(MAX_FIELDS) {
            write!(f, " {}=\"{}\"", text::clean(key, MAX_FIELD), text::clean(value, MAX_FIELD))?;
        }
        if self.0.len() > MAX_FIELDS {
            write!(f, " [cut {} fields]", self.0.len() - MAX_FIELDS)?;
        }
        Ok(())
    }
}
