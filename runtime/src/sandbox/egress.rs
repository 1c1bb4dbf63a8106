//! Network egress: a sink connects only where its `grants.hosts` say.
//!
//! Two ways out of a sandbox, both off unless granted:
//! - HTTP through `wasi:http/outgoing-handler`. The host makes the request
//!   itself ([`Egress`] is the `send_request` hook): it checks the scheme,
//!   name and port against the grants, resolves the name, checks every
//!   resolved address, and connects to the address it checked (a name
//!   that resolves elsewhere between check and connect cannot redirect
//!   it). HTTPS is done by the host, with the Mozilla root store.
//! - Raw TCP through `wasi:sockets`, checked on the address and port at
//!   `connect`; a name grant allows the addresses the name resolves to at
//!   that moment. Name lookup is allowed only for granted names. UDP, bind
//!   to a chosen address and listen are never allowed.
//!
//! A name grant never reaches link-local, multicast, broadcast or
//! unspecified addresses (a cloud metadata endpoint is link-local): only an
//! IP grant can name those.
//!
//! Every refusal fails inside the guest (`HTTP-request-denied`,
//! `access-denied`) and is logged by the host with the sink and address.
//! Per-sink limits ([`NetLimits`]) bound time, concurrent connections,
//! bytes sent per checkpoint and bytes of each response.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use wasmtime::component::{HasData, Resource};
use wasmtime_wasi::p2::SocketError;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::ResolveAddressStream;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{Host as LookupHost, HostResolveAddressStream};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode as SocketErrorCode, IpAddress, Network};
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSocketsCtxView};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use super::text;

/// How a sink reaches a granted host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP requests through wasi:http.
    Http,
    /// HTTPS requests through wasi:http; TLS is done by the host.
    Https,
    /// Raw TCP through wasi:sockets.
    Tcp,
}

impl Protocol {
    fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Https => "https",
            Protocol::Tcp => "tcp",
        }
    }
}

/// The host part of a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// One address.
    Ip(IpAddr),
    /// One name, lower case.
    Name(String),
    /// Every name under a domain (`*.example.com`): the suffix
    /// `.example.com`, lower case. The domain itself is not included.
    Suffix(String),
}

/// One entry of a sink's `grants.hosts`: `http://127.0.0.1:8086`,
/// `tcp://db.internal:5432`, `https://*.example.com:443`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGrant {
    /// How the sink may reach it.
    pub protocol: Protocol,
    /// Which host.
    pub host: HostPattern,
    /// Which port (HTTP 80 and HTTPS 443 when the grant gives none).
    pub port: u16,
}

impl HostGrant {
    /// Parses `SCHEME://HOST[:PORT]`. The message of an error says what is
    /// wrong with the text; the caller names where it came from.
    pub fn parse(text: &str) -> Result<HostGrant, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| format!("\"{text}\" is not SCHEME://HOST:PORT (for example tcp://127.0.0.1:5432)"))?;
        let protocol = match scheme.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "https" => Protocol::Https,
            "tcp" => Protocol::Tcp,
            other => return Err(format!("\"{text}\": unknown scheme \"{other}\" (use http, https or tcp)")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!("\"{text}\": a host grant names a scheme, a host and a port, not a path or user"));
        }
        let (host, port) = split_host_port(rest).map_err(|e| format!("\"{text}\": {e}"))?;
        let port = match (port, protocol) {
            (Some(port), _) => port,
            (None, Protocol::Http) => 80,
            (None, Protocol::Https) => 443,
            (None, Protocol::Tcp) => return Err(format!("\"{text}\": a tcp grant needs a port")),
        };
        if port == 0 {
            return Err(format!("\"{text}\": port 0 is not a port"));
        }
        let host = if let Ok(ip) = host.parse::<IpAddr>() {
            HostPattern::Ip(ip)
        } else if let Some(domain) = host.strip_prefix("*.") {
            if protocol == Protocol::Tcp {
                return Err(format!(
                    "\"{text}\": a tcp grant names one host (wildcards are for http and https, whose names the host resolves itself)"
                ));
            }
            check_name(domain).map_err(|e| format!("\"{text}\": {e}"))?;
            HostPattern::Suffix(format!(".{}", domain.to_ascii_lowercase()))
        } else {
            check_name(host).map_err(|e| format!("\"{text}\": {e}"))?;
            HostPattern::Name(host.to_ascii_lowercase())
        };
        Ok(HostGrant { protocol, host, port })
    }

    /// Whether this grant lets `protocol` reach `host` (a name or an
    /// address literal) on `port`.
    fn allows_name(&self, protocol: Protocol, host: &str, port: u16) -> bool {
        if self.protocol != protocol || self.port != port {
            return false;
        }
        let host = host.to_ascii_lowercase();
        match &self.host {
            HostPattern::Ip(ip) => host.parse::<IpAddr>().is_ok_and(|h| h.to_canonical() == ip.to_canonical()),
            HostPattern::Name(name) => *name == host,
            HostPattern::Suffix(suffix) => host.ends_with(suffix.as_str()) && host.len() > suffix.len(),
        }
    }
}

impl fmt::Display for HostGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = self.protocol.as_str();
        match &self.host {
            HostPattern::Ip(IpAddr::V6(ip)) => write!(f, "{scheme}://[{ip}]:{}", self.port),
            HostPattern::Ip(ip) => write!(f, "{scheme}://{ip}:{}", self.port),
            HostPattern::Name(name) => write!(f, "{scheme}://{name}:{}", self.port),
            HostPattern::Suffix(suffix) => write!(f, "{scheme}://*{suffix}:{}", self.port),
        }
    }
}

/// Splits `host[:port]`, with an IPv6 host in brackets.
fn split_host_port(text: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("an IPv6 address needs its closing ]")?;
        (host, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err("no host".into());
    }
    let port = port.map(|p| p.parse::<u16>().map_err(|_| format!("\"{p}\" is not a port"))).transpose()?;
    Ok((host, port))
}

/// Checks a DNS name: letters, digits, `-` and `.`, at most 253 bytes.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok { Ok(()) } else { Err(format!("\"{name}\" is not a host name")) }
}

/// Addresses a name grant never reaches; only an IP grant can name them.
fn special(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_link_local() || v4.is_multicast() || v4.is_broadcast() || v4.is_unspecified(),
        IpAddr::V6(v6) => v6.is_unicast_link_local() || v6.is_multicast() || v6.is_unspecified(),
    }
}

/// Per-sink network limits. Defaults: 30 s per request (connect, first
/// byte, and between bytes; the call's own deadline still covers all of
/// it), 16 concurrent HTTP connections per instance, 16 MiB read from one
/// response, 256 MiB sent per checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetLimits {
    pub(crate) timeout: Duration,
    pub(crate) connections: usize,
    pub(crate) response_bytes: u64,
    pub(crate) sent_per_checkpoint: u64,
}

impl Default for NetLimits {
    fn default() -> Self {
        NetLimits {
            timeout: Duration::from_secs(30),
            connections: 16,
            response_bytes: 16 << 20,
            sent_per_checkpoint: 256 << 20,
        }
    }
}

/// What a sink did on the network, summed into its status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetStats {
    /// HTTP requests that got a response, and TCP connections made.
    pub requests: u64,
    /// Request bytes sent (HTTP bodies).
    pub bytes_sent: u64,
    /// Response bytes read into the guest (HTTP bodies).
    pub bytes_received: u64,
    /// Connections and lookups refused by the grants.
    pub denied: u64,
    /// Connections that failed (refused, reset, TLS, DNS).
    pub connect_errors: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Requests stopped by a limit (connections, response or sent bytes).
    pub limited: u64,
    /// Responses with a 4xx status.
    pub http_4xx: u64,
    /// Responses with a 5xx status.
    pub http_5xx: u64,
}

impl NetStats {
    /// Whether the sink used the network at all.
    pub fn is_empty(&self) -> bool {
        *self == NetStats::default()
    }

    /// Adds another instance's counts.
    pub fn add(&mut self, other: &NetStats) {
        self.requests += other.requests;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.denied += other.denied;
        self.connect_errors += other.connect_errors;
        self.timeouts += other.timeouts;
        self.limited += other.limited;
        self.http_4xx += other.http_4xx;
        self.http_5xx += other.http_5xx;
    }
}

/// Live counters of one instance, shared with its requests' bodies.
#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    denied: AtomicU64,
    connect_errors: AtomicU64,
    timeouts: AtomicU64,
    limited: AtomicU64,
    http_4xx: AtomicU64,
    http_5xx: AtomicU64,
    /// Bytes sent since the last successful flush.
    sent_in_checkpoint: AtomicU64,
    /// Refusals logged so far: the first few are logged, then only counted.
    logged: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Refusals logged per instance; the rest are counted in its status.
const LOGGED_REFUSALS: u64 = 10;

/// One instance's egress policy: its grants, limits and counters. The
/// wasi:http `send_request` hook and the wasi:sockets checks.
#[derive(Clone)]
pub(crate) struct Egress {
    sink: Arc<str>,
    grants: Arc<[HostGrant]>,
    limits: NetLimits,
    counters: Arc<Counters>,
    connections: Arc<tokio::sync::Semaphore>,
}

impl Egress {
    pub(crate) fn new(sink: Arc<str>, grants: &[HostGrant], limits: NetLimits) -> Egress {
        Egress {
            sink,
            grants: grants.into(),
            limits,
            counters: Arc::default(),
            connections: Arc::new(tokio::sync::Semaphore::new(limits.connections.max(1))),
        }
    }

    /// Whether any grant is for raw TCP.
    pub(crate) fn tcp(&self) -> bool {
        self.grants.iter().any(|g| g.protocol == Protocol::Tcp)
    }

    /// The counts since the last call, resetting them.
    pub(crate) fn take_stats(&self) -> NetStats {
        let c = &self.counters;
        let take = |counter: &AtomicU64| counter.swap(0, Ordering::Relaxed);
        NetStats {
            requests: take(&c.requests),
            bytes_sent: take(&c.bytes_sent),
            bytes_received: take(&c.bytes_received),
            denied: take(&c.denied),
            connect_errors: take(&c.connect_errors),
            timeouts: take(&c.timeouts),
            limited: take(&c.limited),
            http_4xx: take(&c.http_4xx),
            http_5xx: take(&c.http_5xx),
        }
    }

    /// A checkpoint was flushed: its send budget starts again.
    pub(crate) fn checkpoint(&self) {
        self.counters.sent_in_checkpoint.store(0, Ordering::Relaxed);
    }

    /// Counts a refusal and logs the first few of this instance.
    fn refuse(&self, what: fmt::Arguments<'_>) {
        bump(&self.counters.denied);
        if self.counters.logged.fetch_add(1, Ordering::Relaxed) < LOGGED_REFUSALS {
            tracing::warn!(sink = &*self.sink, "sink \"{}\" was denied {what} (not in its grants.hosts)", self.sink);
        }
    }

    /// The TCP check of wasi:sockets: connect only to granted addresses;
    /// the implicit bind before a connect is allowed, nothing else.
    pub(crate) fn socket_check(
        &self,
    ) -> impl Fn(SocketAddr, SocketAddrUse) -> Pin<Box<dyn Future<Output = bool> + Send + Sync>> + Send + Sync + 'static
    {
        let egress = self.clone();
        move |addr, usage| {
            let egress = egress.clone();
            Box::pin(async move {
                match usage {
                    SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                    SocketAddrUse::TcpConnect => {
                        let allowed = egress.tcp_allowed(addr).await;
                        if allowed {
                            bump(&egress.counters.requests);
                        } else {
                            egress.refuse(format_args!("a connection to tcp://{addr}"));
                        }
                        allowed
                    }
                    _ => {
                        egress.refuse(format_args!("{usage:?} on {addr}"));
                        false
                    }
                }
            })
        }
    }

    /// Whether a TCP grant covers `addr`: an IP grant by equality, a name
    /// grant if the name resolves to it now (and it is not special).
    async fn tcp_allowed(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        for grant in self.grants.iter().filter(|g| g.protocol == Protocol::Tcp && g.port == addr.port()) {
            match &grant.host {
                HostPattern::Ip(granted) if granted.to_canonical() == ip => return true,
                HostPattern::Name(name) if !special(ip) => {
                    let lookup = tokio::net::lookup_host((name.as_str(), addr.port()));
                    if let Ok(Ok(found)) = tokio::time::timeout(self.limits.timeout, lookup).await
                        && found.into_iter().any(|a| a.ip().to_canonical() == ip)
                    {
                        return true;
                    }
                }
                _ => {}
            }
        }
        false
    }

    /// Whether `name` may be looked up: a TCP grant names it.
    fn lookup_allowed(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.grants.iter().any(|g| g.protocol == Protocol::Tcp && g.host == HostPattern::Name(name.clone()))
            || name.parse::<IpAddr>().is_ok()
    }

    /// Checks, resolves and connects one HTTP request, then sends it.
    async fn send(
        self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
    ) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
        let uri = request.uri().clone();
        let protocol = match uri.scheme_str() {
            Some("https") => Protocol::Https,
            Some("http") => Protocol::Http,
            _ => return Err(HttpError::HttpProtocolError),
        };
        let host = uri.host().ok_or(HttpError::HttpRequestUriInvalid)?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port = uri.port_u16().unwrap_or(if protocol == Protocol::Https { 443 } else { 80 });
        let shown = format!("{}://{}:{port}", protocol.as_str(), text::guest(host));
        let Some(grant) = self.grants.iter().find(|g| g.allows_name(protocol, host, port)) else {
            self.refuse(format_args!("a request to {shown}"));
            return Err(HttpError::HttpRequestDenied);
        };
        let timeout =
            |requested: Option<Duration>| requested.map_or(self.limits.timeout, |t| t.min(self.limits.timeout));
        let connect_timeout = timeout(options.and_then(|o| o.connect_timeout));
        let first_byte_timeout = timeout(options.and_then(|o| o.first_byte_timeout));
        let between_bytes_timeout = timeout(options.and_then(|o| o.between_bytes_timeout));

        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            bump(&self.counters.limited);
            return Err(HttpError::ConnectionLimitReached);
        };
        let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => match tokio::time::timeout(connect_timeout, tokio::net::lookup_host((host, port))).await {
                Ok(Ok(found)) => found.collect(),
                Ok(Err(_)) => {
                    bump(&self.counters.connect_errors);
                    return Err(HttpError::DnsError { rcode: Some("name unresolvable".into()), info_code: None });
                }
                Err(_) => {
                    bump(&self.counters.timeouts);
                    return Err(HttpError::DnsTimeout);
                }
            },
        };
        let ip_grant = matches!(grant.host, HostPattern::Ip(_));
        let allowed: Vec<SocketAddr> = addrs.into_iter().filter(|a| ip_grant || !special(a.ip())).collect();
        if allowed.is_empty() {
            self.refuse(format_args!(
                "a request to {shown}, which resolves only to addresses a name grant never reaches"
            ));
            return Err(HttpError::DestinationIpProhibited);
        }
        let stream = match connect(&allowed, connect_timeout).await {
            Ok(stream) => stream,
            Err(e) => {
                let timed_out = matches!(e, HttpError::ConnectionTimeout);
                bump(if timed_out { &self.counters.timeouts } else { &self.counters.connect_errors });
                return Err(e);
            }
        };
        let io: Box<dyn IoStream> = if protocol == Protocol::Https {
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|_| HttpError::HttpRequestUriInvalid)?;
            match tokio::time::timeout(connect_timeout, tls().connect(name, stream)).await {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(e)) => {
                    bump(&self.counters.connect_errors);
                    return Err(HttpError::Tls(e));
                }
                Err(_) => {
                    bump(&self.counters.timeouts);
                    return Err(HttpError::ConnectionTimeout);
                }
            }
        } else {
            Box::new(stream)
        };
        let (mut sender, conn) = match tokio::time::timeout(
            connect_timeout,
            hyper::client::conn::http1::handshake(TokioIo::new(io)),
        )
        .await
        {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                bump(&self.counters.connect_errors);
                return Err(HttpError::Hyper(e));
            }
            Err(_) => {
                bump(&self.counters.timeouts);
                return Err(HttpError::ConnectionTimeout);
            }
        };
        // The request line carries only the path: the authority is in the
        // Host header, and the connection is already to the right place.
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        *request.uri_mut() =
            http::Uri::builder().path_and_query(path).build().map_err(|_| HttpError::HttpRequestUriInvalid)?;
        let request = request.map(|body| {
            SentBody { inner: body, counters: self.counters.clone(), budget: self.limits.sent_per_checkpoint }
                .boxed_unsync()
        });
        let conn = wasmtime_wasi::runtime::spawn(async move { conn.await.map_err(HttpError::from) });
        let response = match tokio::time::timeout(first_byte_timeout, sender.send_request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                bump(if e.is_timeout() { &self.counters.timeouts } else { &self.counters.connect_errors });
                return Err(HttpError::Hyper(e));
            }
            Err(_) => {
                bump(&self.counters.timeouts);
                return Err(HttpError::ConnectionReadTimeout);
            }
        };
        bump(&self.counters.requests);
        match response.status().as_u16() {
            400..=499 => bump(&self.counters.http_4xx),
            500..=599 => bump(&self.counters.http_5xx),
            _ => {}
        }
        let counters = self.counters.clone();
        let limit = self.limits.response_bytes;
        let response = response.map(|incoming| {
            ReceivedBody {
                inner: incoming,
                counters,
                received: 0,
                limit,
                idle: Box::pin(tokio::time::sleep(between_bytes_timeout)),
                between_bytes_timeout,
                _permit: permit,
            }
            .boxed_unsync()
        });
        let io: IoFuture = Box::new(conn);
        Ok((response, io))
    }
}

/// The future that drives a request's connection to its end.
type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

trait IoStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> IoStream for T {}

/// Connects to the first of `addrs` that answers.
async fn connect(addrs: &[SocketAddr], limit: Duration) -> Result<tokio::net::TcpStream, HttpError> {
    let attempt = async {
        let mut last = None;
        for addr in addrs {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or(HttpError::DestinationUnavailable, |e| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                HttpError::ConnectionRefused
            } else {
                HttpError::Connect(e)
            }
        }))
    };
    tokio::time::timeout(limit, attempt).await.map_err(|_| HttpError::ConnectionTimeout)?
}

/// The process's TLS client: the Mozilla root store, no client auth.
fn tls() -> tokio_rustls::TlsConnector {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.into() };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|builder| builder.with_root_certificates(roots).with_no_client_auth());
        // The ring provider supports the default protocol versions; the
        // fallback only guards a build of rustls without them.
        Arc::new(config.unwrap_or_else(|_| {
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("ring supports TLS 1.3")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }))
    });
    tokio_rustls::TlsConnector::from(config.clone())
}

impl WasiHttpHooks for Egress {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: IoFuture,
    ) -> Box<dyn Future<Output = wasmtime_wasi_http::Result<(http::Response<WasiBody>, IoFuture)>> + Send> {
        // `fut` reports the guest's own writing of the body; the body
        // stream already ends with that error if writing fails.
        drop(fut);
        Box::new(self.clone().send(request, options))
    }

    fn p2_error_from_connect(
        &mut self,
        err: &std::io::Error,
    ) -> wasmtime_wasi_http::p2::bindings::http::types::ErrorCode {
        use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
        match err.kind() {
            std::io::ErrorKind::ConnectionRefused => ErrorCode::ConnectionRefused,
            std::io::ErrorKind::TimedOut => ErrorCode::ConnectionTimeout,
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                ErrorCode::ConnectionTerminated
            }
            _ => ErrorCode::DestinationUnavailable,
        }
    }
}

/// A request body that counts what it sends and stops at the checkpoint's
/// send budget.
struct SentBody {
    inner: WasiBody,
    counters: Arc<Counters>,
    budget: u64,
}

impl Body for SentBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64;
            let sent = self.counters.sent_in_checkpoint.fetch_add(n, Ordering::Relaxed) + n;
            if sent > self.budget {
                bump(&self.counters.limited);
                return Poll::Ready(Some(Err(HttpError::HttpRequestBodySize(Some(self.budget)))));
            }
            self.counters.bytes_sent.fetch_add(n, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body read into the guest: counted, capped, and failing when
/// the server goes quiet for longer than the between-bytes timeout. It
/// holds the connection's permit until it ends.
struct ReceivedBody {
    inner: hyper::body::Incoming,
    counters: Arc<Counters>,
    received: u64,
    limit: u64,
    idle: Pin<Box<tokio::time::Sleep>>,
    between_bytes_timeout: Duration,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Body for ReceivedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let deadline = tokio::time::Instant::now() + self.between_bytes_timeout;
                self.idle.as_mut().reset(deadline);
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    self.received += n;
                    if self.received > self.limit {
                        bump(&self.counters.limited);
                        return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(self.limit)))));
                    }
                    self.counters.bytes_received.fetch_add(n, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(HttpError::Hyper(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    bump(&self.counters.timeouts);
                    Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `wasi:sockets/ip-name-lookup`, answering only for granted names.
pub(crate) struct GuardedLookup;

impl HasData for GuardedLookup {
    type Data<'a> = LookupView<'a>;
}

/// The lookup interface's view of a store: WASI's sockets and the policy.
pub(crate) struct LookupView<'a> {
    pub(crate) sockets: WasiSocketsCtxView<'a>,
    pub(crate) egress: Egress,
}

impl LookupHost for LookupView<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> Result<Resource<ResolveAddressStream>, SocketError> {
        if !self.egress.lookup_allowed(&name) {
            self.egress.refuse(format_args!("a name lookup of \"{}\"", text::guest(&name)));
            return Err(SocketErrorCode::AccessDenied.into());
        }
        self.sockets.resolve_addresses(network, name)
    }
}

// The lookup interface converts errors through the network interface's
// host trait; both delegate to WASI's.
impl wasmtime_wasi::p2::bindings::sockets::network::Host for LookupView<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<SocketErrorCode> {
        self.sockets.convert_error_code(error)
    }

    fn network_error_code(
        &mut self,
        err: Resource<wasmtime_wasi::p2::bindings::sockets::network::Error>,
    ) -> wasmtime::Result<Option<SocketErrorCode>> {
        self.sockets.network_error_code(err)
    }
}

impl wasmtime_wasi::p2::bindings::sockets::network::HostNetwork for LookupView<'_> {
    fn drop(&mut self, this: Resource<Network>) -> wasmtime::Result<()> {
        wasmtime_wasi::p2::bindings::sockets::network::HostNetwork::drop(&mut self.sockets, this)
    }
}

impl HostResolveAddressStream for LookupView<'_> {
    fn resolve_next_address(
        &mut self,
        resource: Resource<ResolveAddressStream>,
    ) -> Result<Option<IpAddress>, SocketError> {
        self.sockets.resolve_next_address(resource)
    }

    fn subscribe(
        &mut self,
        resource: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<wasmtime_wasi::p2::DynPollable>> {
        self.sockets.subscribe(resource)
    }

    fn drop(&mut self, resource: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        HostResolveAddressStream::drop(&mut self.sockets, resource)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(text: &str) -> HostGrant {
        HostGrant::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn grants_parse_with_default_ports_and_print_canonically() {
        assert_eq!(grant("http://127.0.0.1").to_string(), "http://127.0.0.1:80");
        assert_eq!(grant("HTTPS://API.Example.com/").to_string(), "https://api.example.com:443");
        assert_eq!(grant("tcp://[::1]:5432").to_string(), "tcp://[::1]:5432");
        assert_eq!(grant("https://*.example.com:8443").to_string(), "https://*.example.com:8443");
    }

    #[test]
    fn bad_grants_say_what_is_wrong() {
        let err = |text: &str| HostGrant::parse(text).unwrap_err();
        assert_eq!(
            err("127.0.0.1:80"),
            "\"127.0.0.1:80\" is not SCHEME://HOST:PORT (for example tcp://127.0.0.1:5432)"
        );
        assert_eq!(err("ftp://x:21"), "\"ftp://x:21\": unknown scheme \"ftp\" (use http, https or tcp)");
        assert_eq!(err("tcp://db"), "\"tcp://db\": a tcp grant needs a port");
        assert_eq!(err("http://x:99999"), "\"http://x:99999\": \"99999\" is not a port");
        assert_eq!(
            err("http://x/path"),
            "\"http://x/path\": a host grant names a scheme, a host and a port, not a path or user"
        );
        assert!(err("tcp://*.x.com:1").contains("a tcp grant names one host"));
        assert_eq!(err("http://bad_name:80"), "\"http://bad_name:80\": \"bad_name\" is not a host name");
        assert_eq!(err("tcp://127.0.0.1:0"), "\"tcp://127.0.0.1:0\": port 0 is not a port");
    }

    #[test]
    fn a_grant_matches_scheme_host_and_port_exactly() {
        let g = grant("http://127.0.0.1:8086");
        assert!(g.allows_name(Protocol::Http, "127.0.0.1", 8086));
        assert!(!g.allows_name(Protocol::Http, "127.0.0.1", 8087));
        assert!(!g.allows_name(Protocol::Https, "127.0.0.1", 8086));
        assert!(!g.allows_name(Protocol::Tcp, "127.0.0.1", 8086));
        assert!(!g.allows_name(Protocol::Http, "localhost", 8086));
        let w = grant("https://*.example.com");
        assert!(w.allows_name(Protocol::Https, "api.EXAMPLE.com", 443));
        assert!(w.allows_name(Protocol::Https, "a.b.example.com", 443));
        assert!(!w.allows_name(Protocol::Https, "example.com", 443));
        assert!(!w.allows_name(Protocol::Https, "badexample.com", 443));
        let v6 = grant("tcp://[::ffff:127.0.0.1]:1");
        assert!(v6.allows_name(Protocol::Tcp, "127.0.0.1", 1));
    }

    #[test]
    fn name_grants_never_reach_link_local_or_unspecified_addresses() {
        assert!(special("169.254.169.254".parse().unwrap()));
        assert!(special("0.0.0.0".parse().unwrap()));
        assert!(special("fe80::1".parse().unwrap()));
        assert!(special("224.0.0.1".parse().unwrap()));
        assert!(!special("127.0.0.1".parse().unwrap()));
        assert!(!special("10.1.2.3".parse().unwrap()));
    }
}
