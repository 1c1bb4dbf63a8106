//! A small HTTP client over `wasi:http/outgoing-handler` (cargo feature
//! `http`), so a sink author does not hand-roll requests over raw WASI
//! resources.
//!
//! The runtime makes the connection (HTTPS included) and allows it only to
//! hosts the pipeline grants the sink (`grants.hosts`); a request to any
//! other host fails with [`HttpError::Denied`].
//!
//! ```no_run
//! use sinkbox_sdk::http::{Request, Verdict};
//! use std::time::Duration;
//!
//! # fn send() -> Result<(), sinkbox_sdk::Error> {
//! let response = Request::post("http://127.0.0.1:8080/ingest")
//!     .header("authorization", "Bearer secret")
//!     .json(&serde_json::json!([{"id": 1}]))
//!     .timeout(Duration::from_secs(10))
//!     .send()?;
//! match response.verdict() {
//!     Verdict::Ok => Ok(()),
//!     // 429 or 503 with Retry-After, 5xx, 408: the runtime waits or
//!     // retries and replays the checkpoint.
//!     Verdict::Backpressure(wait) => Err(sinkbox_sdk::Error::backpressure(wait)),
//!     Verdict::Retry(why) => Err(sinkbox_sdk::Error::retryable(why)),
//!     // Any other answer: the destination refuses these records.
//!     Verdict::Refused(why) => Err(sinkbox_sdk::Error::fatal(why)),
//! }
//! # }
//! ```
//!
//! Requests are blocking: every guest call runs under the runtime's
//! deadline, and the request's own [`Request::timeout`] bounds the wait for
//! a connection and for each part of the answer.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "wit-http",
        world: "sinkbox:sdk-http/http-client",
        generate_all,
    });
}

use __bindings::wasi::http::outgoing_handler;
use __bindings::wasi::http::types::{self, ErrorCode};
use __bindings::wasi::io::streams::StreamError;

/// Response bytes read into the guest by default: 1 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Backpressure for a 429 answer that names no Retry-After: 1 s.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Response body bytes quoted in a [`Verdict`] reason.
const QUOTED_BODY_BYTES: usize = 512;

/// An HTTP method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// PATCH
    Patch,
    /// Any other method, by name.
    Other(String),
}

/// A request, built up and then [sent](Request::send).
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    timeout: Option<Duration>,
    max_response_bytes: usize,
}

impl Request {
    /// A request with `method` to `url` (`http://` or `https://`), no
    /// headers, an empty body, the host's default timeout and a response
    /// cap of [`DEFAULT_MAX_RESPONSE_BYTES`].
    pub fn new(method: Method, url: impl Into<String>) -> Request {
        Request {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }

    /// A GET request.
    pub fn get(url: impl Into<String>) -> Request {
        Request::new(Method::Get, url)
    }

    /// A POST request.
    pub fn post(url: impl Into<String>) -> Request {
        Request::new(Method::Post, url)
    }

    /// A PUT request.
    pub fn put(url: impl Into<String>) -> Request {
        Request::new(Method::Put, url)
    }

    /// Adds a header (names are case-insensitive; a name may repeat).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Request {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// Sets the body to `value` as JSON, with `content-type:
    /// application/json`.
    pub fn json<T: serde::Serialize + ?Sized>(self, value: &T) -> Request {
        // Serializing to a Vec fails only for maps with non-string keys;
        // such a value has no JSON form, and the body stays empty.
        let body = serde_json::to_vec(value).unwrap_or_default();
        self.header("content-type", "application/json").body(body)
    }

    /// Bounds the wait for the connection, for the first byte of the
    /// answer, and between its bytes. Default: the host's (`net_timeout`).
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = Some(timeout);
        self
    }

    /// Response body bytes read into the guest; past them the body is cut
    /// and [`Response::truncated`] says so. Default 1 MiB.
    pub fn max_response_bytes(mut self, max: usize) -> Request {
        self.max_response_bytes = max;
        self
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The body.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    /// Sends the request and reads the answer (status, headers, and the
    /// body up to the cap).
    pub fn send(&self) -> Result<Response, HttpError> {
        let url = Url::parse(&self.url)?;
        let mut fields: Vec<(String, Vec<u8>)> =
            self.headers.iter().map(|(name, value)| (name.to_ascii_lowercase(), value.clone())).collect();
        // A known length lets the host send the body as is, not chunked
        // (some servers, and S3 signing, need it).
        let bodiless = matches!(self.method, Method::Get | Method::Head) && self.body.is_empty();
        if !bodiless && !fields.iter().any(|(name, _)| name == "content-length") {
            fields.push(("content-length".into(), self.body.len().to_string().into_bytes()));
        }
        let headers = types::Fields::from_list(&fields)
            .map_err(|e| HttpError::Invalid(format!("bad header for {}: {e:?}", self.url)))?;
        let request = types::OutgoingRequest::new(headers);
        let method = match &self.method {
            Method::Get => types::Method::Get,
            Method::Head => types::Method::Head,
            Method::Post => types::Method::Post,
            Method::Put => types::Method::Put,
            Method::Delete => types::Method::Delete,
            Method::Patch => types::Method::Patch,
            Method::Other(name) => types::Method::Other(name.clone()),
        };
        let invalid = |what: &str| HttpError::Invalid(format!("the host refused the {what} of {}", self.url));
        request.set_method(&method).map_err(|()| invalid("method"))?;
        let scheme = if url.https { types::Scheme::Https } else { types::Scheme::Http };
        request.set_scheme(Some(&scheme)).map_err(|()| invalid("scheme"))?;
        request.set_authority(Some(url.authority)).map_err(|()| invalid("authority"))?;
        request.set_path_with_query(Some(url.path)).map_err(|()| invalid("path"))?;
        let body = request.body().map_err(|()| invalid("body"))?;

        let options = self.timeout.map(|timeout| {
            let options = types::RequestOptions::new();
            let nanos = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
            // A host that cannot honour a timeout still bounds the call by
            // the runtime's deadline, so a refusal is not an error.
            let _ = options.set_connect_timeout(Some(nanos));
            let _ = options.set_first_byte_timeout(Some(nanos));
            let _ = options.set_between_bytes_timeout(Some(nanos));
            options
        });
        let future =
            outgoing_handler::handle(request, options).map_err(|code| HttpError::from_code(&self.url, code))?;

        // The body goes out after `handle`, so the host streams it while
        // it is written instead of buffering all of it first.
        {
            let stream = body.write().map_err(|()| invalid("body stream"))?;
            let mut rest = self.body.as_slice();
            while !rest.is_empty() {
                let permit = match stream.check_write() {
                    Ok(0) => {
                        stream.subscribe().block();
                        continue;
                    }
                    Ok(n) => usize::try_from(n).unwrap_or(usize::MAX).min(rest.len()),
                    Err(e) => return Err(self.stream_error(&future, e)),
                };
                stream.write(&rest[..permit]).map_err(|e| self.stream_error(&future, e))?;
                rest = &rest[permit..];
            }
            stream.blocking_flush().map_err(|e| self.stream_error(&future, e))?;
        }
        types::OutgoingBody::finish(body, None).map_err(|code| HttpError::from_code(&self.url, code))?;

        let response = wait(&future).map_err(|code| HttpError::from_code(&self.url, code))?;
        let status = response.status();
        let headers = response.headers().entries();
        let incoming = response.consume().map_err(|()| HttpError::Protocol("the response body was taken".into()))?;
        let (body, truncated) = {
            let stream =
                incoming.stream().map_err(|()| HttpError::Protocol("the response body stream was taken".into()))?;
            let mut body = Vec::new();
            let mut truncated = false;
            loop {
                let room = (self.max_response_bytes - body.len()) as u64;
                if room == 0 {
                    truncated = true;
                    break;
                }
                match stream.blocking_read(room.min(64 << 10)) {
                    Ok(chunk) => body.extend_from_slice(&chunk),
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        let detail =
                            types::http_error_code(&e).map_or_else(|| e.to_debug_string(), |code| describe_code(&code));
                        return Err(HttpError::Connection(format!(
                            "reading the answer of {} failed: {detail}",
                            self.url
                        )));
                    }
                }
            }
            (body, truncated)
        };
        // Dropping an unfinished body is fine; the rest is discarded.
        drop(incoming);
        Ok(Response { status, headers, body, truncated })
    }

    /// The error of a failed body write: the response future usually knows
    /// why (connection refused, denied), the stream only that it failed.
    fn stream_error(&self, future: &types::FutureIncomingResponse, e: StreamError) -> HttpError {
        if let Some(Ok(Err(code))) = future.get() {
            return HttpError::from_code(&self.url, code);
        }
        let detail = match e {
            StreamError::Closed => "the connection closed".to_string(),
            StreamError::LastOperationFailed(e) => {
                types::http_error_code(&e).map_or_else(|| e.to_debug_string(), |code| describe_code(&code))
            }
        };
        HttpError::Connection(format!("sending the body to {} failed: {detail}", self.url))
    }
}

fn wait(future: &types::FutureIncomingResponse) -> Result<types::IncomingResponse, ErrorCode> {
    loop {
        match future.get() {
            Some(Ok(result)) => return result,
            Some(Err(())) => return Err(ErrorCode::InternalError(Some("the response was already taken".into()))),
            None => future.subscribe().block(),
        }
    }
}

/// An answer: status, headers and the body (up to the request's cap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    truncated: bool,
}

impl Response {
    /// A response, for testing code that classifies answers natively.
    pub fn new(status: u16, headers: Vec<(String, Vec<u8>)>, body: Vec<u8>) -> Response {
        Response { status, headers, body, truncated: false }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// All headers, names in lower case, in order.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The first header with this name (case-insensitive), if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The body, up to the request's cap.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Whether the body was cut at the request's cap.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// The body parsed as JSON.
    pub fn json<'a, T: serde::Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The wait the Retry-After header asks for (seconds or an HTTP date),
    /// if it has one that parses.
    pub fn retry_after(&self) -> Option<Duration> {
        self.header("retry-after").and_then(|v| retry_after(v, SystemTime::now()))
    }

    /// What a sink should do with this answer:
    /// - 2xx: [`Verdict::Ok`];
    /// - 429, or 503 with Retry-After: [`Verdict::Backpressure`] for that
    ///   long (a 429 without it: [`DEFAULT_RETRY_AFTER`]);
    /// - other 5xx, 408 and 425: [`Verdict::Retry`];
    /// - anything else (4xx, an unfollowed 3xx): [`Verdict::Refused`].
    ///
    /// Reasons quote the status and the start of the body.
    pub fn verdict(&self) -> Verdict {
        match self.status {
            200..=299 => Verdict::Ok,
            429 => Verdict::Backpressure(self.retry_after().unwrap_or(DEFAULT_RETRY_AFTER)),
            503 if self.retry_after().is_some() => Verdict::Backpressure(self.retry_after().unwrap_or_default()),
            408 | 425 | 500..=599 => Verdict::Retry(self.reason()),
            _ => Verdict::Refused(self.reason()),
        }
    }

    /// `HTTP 400: {"error": ...}`: the status and up to 512 bytes of the
    /// body, for error messages and dead letters.
    pub fn reason(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        if text.is_empty() {
            return format!("HTTP {}", self.status);
        }
        let mut cut = text.len().min(QUOTED_BODY_BYTES);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let more = if cut < text.len() || self.truncated { "..." } else { "" };
        format!("HTTP {}: {}{more}", self.status, &text[..cut])
    }
}

/// What an answer means for the records it was about; see
/// [`Response::verdict`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Taken.
    Ok,
    /// The server asks to slow down: wait this long, then send again.
    Backpressure(Duration),
    /// A transient failure: send again later.
    Retry(String),
    /// The server refuses these records for good; the reason quotes it.
    Refused(String),
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host is not in the sink's `grants.hosts`.
    Denied(String),
    /// The URL or a header cannot be sent.
    Invalid(String),
    /// No connection, or it broke or timed out: transient.
    Connection(String),
    /// The server's answer was not valid HTTP.
    Protocol(String),
}

impl HttpError {
    fn from_code(url: &str, code: ErrorCode) -> HttpError {
        match code {
            ErrorCode::HttpRequestDenied => HttpError::Denied(format!(
                "the request to {url} was denied: its host is not in this sink's grants.hosts"
            )),
            ErrorCode::HttpRequestUriInvalid | ErrorCode::HttpRequestMethodInvalid => {
                HttpError::Invalid(format!("the host cannot send to {url}: {}", describe_code(&code)))
            }
            ErrorCode::HttpProtocolError
            | ErrorCode::HttpResponseIncomplete
            | ErrorCode::HttpResponseHeaderSectionSize(_)
            | ErrorCode::HttpResponseHeaderSize(_)
            | ErrorCode::HttpResponseBodySize(_)
            | ErrorCode::HttpResponseContentCoding(_) => {
                HttpError::Protocol(format!("bad answer from {url}: {}", describe_code(&code)))
            }
            code => HttpError::Connection(format!("request to {url} failed: {}", describe_code(&code))),
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Denied(m) | HttpError::Invalid(m) | HttpError::Connection(m) | HttpError::Protocol(m) => {
                f.write_str(m)
            }
        }
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for crate::Error {
    /// A request that got no answer: retryable, so the runtime replays on a
    /// fresh instance with backoff and, after `max_attempts`, stops with
    /// this message. A denied or invalid request is retried too: it
    /// blames no record (a fatal error would send the runtime hunting for
    /// a poison record), and the pipeline stops naming the cause.
    fn from(e: HttpError) -> crate::Error {
        crate::Error::Retryable(e.to_string())
    }
}

/// The value of an `authorization` header for HTTP basic auth:
/// `Basic base64(user:password)`.
pub fn basic_auth(user: &str, password: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}");
    let mut out = String::from("Basic ");
    for chunk in input.as_bytes().chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An error code in words (`connection refused`), its detail appended.
fn describe_code(code: &ErrorCode) -> String {
    let text = format!("{code:?}");
    // `ConnectionRefused` -> `connection refused`; payloads stay as they are.
    let (name, rest) = text.split_at(text.find('(').unwrap_or(text.len()));
    let name = name.rsplit("::").next().unwrap_or(name);
    let mut words = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    words + rest
}

/// A URL split into what wasi:http takes.
#[derive(Debug, PartialEq, Eq)]
struct Url<'a> {
    https: bool,
    authority: &'a str,
    path: &'a str,
}

impl<'a> Url<'a> {
    fn parse(url: &'a str) -> Result<Url<'a>, HttpError> {
        let bad = |why: &str| HttpError::Invalid(format!("invalid URL {url:?}: {why}"));
        let (https, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else {
            return Err(bad("it must start with http:// or https://"));
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() {
            return Err(bad("it names no host"));
        }
        if authority.contains('@') {
            return Err(bad("credentials in the URL are not sent; use an authorization header"));
        }
        let path = path.split('#').next().unwrap_or_default();
        let path = if path.is_empty() { "/" } else { path };
        if path.starts_with('?') {
            return Err(bad("the query needs a path before it, e.g. /?a=b"));
        }
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("spaces and control characters must be percent-encoded"));
        }
        Ok(Url { https, authority, path })
    }
}

/// The wait a Retry-After value asks for, as of `now`: delay-seconds
/// (`120`) or an HTTP date in any of the three forms HTTP allows
/// (`Sun, 06 Nov 1994 08:49:37 GMT`, `Sunday, 06-Nov-94 08:49:37 GMT`,
/// `Sun Nov  6 08:49:37 1994`). A date in the past is a zero wait; a value
/// that parses as neither is `None`.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = http_date(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Seconds since the Unix epoch of an HTTP date.
fn http_date(value: &str) -> Option<u64> {
    let words: Vec<&str> = value.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    let (day, month, year, time) = match words.as_slice() {
        // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        [_, day, month, year, time, "GMT"] => (day.parse().ok()?, *month, year.parse().ok()?, *time),
        // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        [_, date, time, "GMT"] => {
            let mut parts = date.split('-');
            let day = parts.next()?.parse().ok()?;
            let month = parts.next()?;
            let year: u64 = parts.next()?.parse().ok()?;
            // Two-digit years: HTTP says to read a year more than 50 years
            // ahead as the past; this century or the last covers it.
            let year = if year < 70 {
                2000 + year
            } else if year < 100 {
                1900 + year
            } else {
                year
            };
            (day, month, year, *time)
        }
        // asctime: Sun Nov  6 08:49:37 1994
        [_, month, day, time, year] => (day.parse().ok()?, *month, year.parse().ok()?, *time),
        _ => return None,
    };
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    let mut hms = time.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() || !(1..=31).contains(&day) || year < 1970 || h > 23 || m > 59 || s > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm), for years from 1970.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let yoe = year - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn retry_after_reads_seconds_and_all_three_date_forms() {
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example).
        let now = at(784_111_777 - 90);
        let cases: &[(&str, Option<u64>)] = &[
            ("120", Some(120)),
            (" 0 ", Some(0)),
            ("Sun, 06 Nov 1994 08:49:37 GMT", Some(90)),
            ("Sunday, 06-Nov-94 08:49:37 GMT", Some(90)),
            ("Sun Nov  6 08:49:37 1994", Some(90)),
            // In the past: no wait.
            ("Sat, 05 Nov 1994 08:49:37 GMT", Some(0)),
            ("Thu, 01 Jan 1970 00:00:00 GMT", Some(0)),
            ("-5", None),
            ("1.5", None),
            ("", None),
            ("soon", None),
            ("Sun, 06 Foo 1994 08:49:37 GMT", None),
            ("Sun, 32 Nov 1994 08:49:37 GMT", None),
            ("Sun, 06 Nov 1994 08:49 GMT", None),
            ("Sun, 06 Nov 1994 08:49:37 CET", None),
        ];
        for &(value, want) in cases {
            assert_eq!(retry_after(value, now), want.map(Duration::from_secs), "{value:?}");
        }
        assert_eq!(http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(http_date("Tue, 29 Feb 2028 12:00:00 GMT"), Some(1_835_438_400));
        assert_eq!(http_date("Sat, 01 Mar 2000 00:00:00 GMT"), Some(951_868_800));
    }

    #[test]
    fn verdicts_follow_the_status_and_retry_after() {
        let response = |status: u16, retry: Option<&str>, body: &str| {
            let headers = retry.map(|v| vec![("retry-after".to_string(), v.as_bytes().to_vec())]).unwrap_or_default();
            Response::new(status, headers, body.as_bytes().to_vec())
        };
        let cases = [
            (response(200, None, ""), Verdict::Ok),
            (response(204, None, ""), Verdict::Ok),
            (response(429, Some("7"), ""), Verdict::Backpressure(Duration::from_secs(7))),
            (response(429, None, ""), Verdict::Backpressure(DEFAULT_RETRY_AFTER)),
            (response(503, Some("2"), ""), Verdict::Backpressure(Duration::from_secs(2))),
            (response(503, None, "down"), Verdict::Retry("HTTP 503: down".into())),
            (response(500, Some("2"), ""), Verdict::Retry("HTTP 500".into())),
            (response(408, None, ""), Verdict::Retry("HTTP 408".into())),
            (response(400, None, " {\"error\":\"bad\"}\n"), Verdict::Refused("HTTP 400: {\"error\":\"bad\"}".into())),
            (response(404, Some("3"), ""), Verdict::Refused("HTTP 404".into())),
            (response(301, None, ""), Verdict::Refused("HTTP 301".into())),
        ];
        for (response, want) in cases {
            assert_eq!(response.verdict(), want, "{response:?}");
        }
        let long = response(400, None, &"é".repeat(400));
        let reason = long.reason();
        assert!(reason.starts_with("HTTP 400: éé") && reason.ends_with("é..."), "{reason}");
        assert_eq!(reason.len(), "HTTP 400: ".len() + 512 + 3);
    }

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let ok = |url, https, authority, path| {
            assert_eq!(Url::parse(url), Ok(Url { https, authority, path }), "{url}");
        };
        ok("http://127.0.0.1:8086/write?db=x", false, "127.0.0.1:8086", "/write?db=x");
        ok("https://example.com", true, "example.com", "/");
        ok("http://[::1]:80/a#frag", false, "[::1]:80", "/a");
        let bad = |url: &str, why: &str| match Url::parse(url) {
            Err(HttpError::Invalid(m)) => assert_eq!(m, format!("invalid URL {url:?}: {why}")),
            other => panic!("{url}: {other:?}"),
        };
        bad("ftp://host/", "it must start with http:// or https://");
        bad("http:///path", "it names no host");
        bad("http://user:pw@host/", "credentials in the URL are not sent; use an authorization header");
        bad("http://host/a b", "spaces and control characters must be percent-encoded");
        bad("http://host?a=b", "the query needs a path before it, e.g. /?a=b");
    }

    #[test]
    fn basic_auth_is_base64_of_user_colon_password() {
        // RFC 7617's example, plus each padding length.
        assert_eq!(basic_auth("Aladdin", "open sesame"), "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert_eq!(basic_auth("a", "b"), "Basic YTpi");
        assert_eq!(basic_auth("ab", "c"), "Basic YWI6Yw==");
        assert_eq!(basic_auth("ab", "cd"), "Basic YWI6Y2Q=");
    }

    #[test]
    fn error_codes_read_as_words() {
        assert_eq!(describe_code(&ErrorCode::ConnectionRefused), "connection refused");
        assert_eq!(describe_code(&ErrorCode::InternalError(Some("x".into()))), "internal error(Some(\"x\"))");
        let denied = HttpError::from_code("http://h/", ErrorCode::HttpRequestDenied);
        assert_eq!(
            denied.to_string(),
            "the request to http://h/ was denied: its host is not in this sink's grants.hosts"
        );
        assert!(matches!(HttpError::from_code("u", ErrorCode::ConnectionTimeout), HttpError::Connection(_)));
    }
}
