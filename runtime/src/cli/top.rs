//! `sinkbox top`: a live table of the pipelines of a `sinkbox serve`, read
//! from its admin API (`GET /v1/pipelines`) every interval.
//!
//! The table is built from that listing alone, so any token works: the
//! operator's shows every tenant, a tenant's only its own pipelines. A field
//! the server does not send is shown as `-`, so an older or newer server
//! still gets a table.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use crossterm::event::{Event, KeyCode, KeyEventKind, KeyModifiers};
use crossterm::{cursor, style, terminal};
use serde::Deserialize;

/// The largest response read from the server.
const MAX_RESPONSE: u64 = 16 << 20;
/// How long connecting, and each read or write, may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The width when neither the terminal nor `COLUMNS` gives one.
const DEFAULT_WIDTH: usize = 120;

/// `sinkbox top`.
#[derive(clap::Args)]
pub struct TopArgs {
    /// The admin API of `sinkbox serve` (its `--listen` address).
    #[arg(long, default_value = "http://127.0.0.1:8787")]
    url: String,
    /// A file holding a bearer token: the operator's (every tenant) or a
    /// tenant's (its own pipelines). Or set SINKBOX_TOKEN.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// How often to refresh, e.g. `500ms`, `2s`.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    interval: Duration,
    /// Print one frame as plain text to stdout and exit (for scripts).
    #[arg(long)]
    once: bool,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    match sinkbox::config::parse_duration(text)? {
        Duration::ZERO => Err("the interval must be longer than 0".into()),
        interval => Ok(interval),
    }
}

pub fn top(args: TopArgs) -> anyhow::Result<ExitCode> {
    let endpoint = Endpoint::parse(&args.url)?;
    let token = token(args.token_file.as_deref(), std::env::var("SINKBOX_TOKEN").ok())?;
    if args.once {
        let sample = Sample::take(&endpoint, &token)?;
        let width = width(std::io::stdout().is_terminal());
        let mut text = frame(&endpoint.url, &sample, None, width).join("\n");
        text.push('\n');
        super::print(&text)?;
        return Ok(ExitCode::SUCCESS);
    }
    if !std::io::stdout().is_terminal() {
        bail!("stdout is not a terminal: give --once to print one frame as plain text");
    }
    watch(&endpoint, &token, args.interval)?;
    Ok(ExitCode::SUCCESS)
}

/// The bearer token, from `file` or else from `SINKBOX_TOKEN` (`env`).
fn token(file: Option<&Path>, env: Option<String>) -> anyhow::Result<String> {
    let (text, from) = match (file, env) {
        (Some(path), _) => (
            std::fs::read_to_string(path).with_context(|| format!("cannot read the token file {}", path.display()))?,
            path.display().to_string(),
        ),
        (None, Some(text)) => (text, "SINKBOX_TOKEN".to_string()),
        (None, None) => {
            bail!("give a bearer token (the operator's or a tenant's): --token-file PATH, or set SINKBOX_TOKEN")
        }
    };
    let token = text.trim();
    if token.is_empty() {
        bail!("{from}: the token is empty");
    }
    // It goes into a header line: a line break would end the header.
    if token.chars().any(char::is_control) {
        bail!("{from}: the token has a control character");
    }
    Ok(token.to_string())
}

/// Where the admin API is: `http://HOST[:PORT][/PREFIX]`.
#[derive(Clone, Debug, PartialEq)]
struct Endpoint {
    /// As given, without a trailing `/`, for messages.
    url: String,
    host: String,
    port: u16,
    /// `host:port` as given, for the `Host` header.
    authority: String,
    /// The path of the pipeline list.
    path: String,
}

impl Endpoint {
    fn parse(url: &str) -> anyhow::Result<Endpoint> {
        let url = url.trim().trim_end_matches('/');
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                bail!("--url {url}: the scheme must be http (`sinkbox serve` speaks plain HTTP), not {scheme}")
            }
            None => url,
        };
        let (authority, prefix) = rest.find('/').map_or((rest, ""), |at| rest.split_at(at));
        let (host, port) = match authority.strip_prefix('[') {
            // An IPv6 address: `[::1]:8787`.
            Some(v6) => match v6.split_once(']') {
                Some((host, "")) => (host, None),
                Some((host, port)) => (host, Some(port.strip_prefix(':').unwrap_or(port))),
                None => bail!("--url {url}: no `]` after the IPv6 address"),
            },
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        if host.is_empty() {
            bail!("--url {url}: no host");
        }
        let port = match port {
            None => 80,
            Some(port) => port.parse().map_err(|_| anyhow::anyhow!("--url {url}: invalid port \"{port}\""))?,
        };
        Ok(Endpoint {
            url: url.to_string(),
            host: host.to_string(),
            port,
            authority: authority.to_string(),
            path: format!("{prefix}/v1/pipelines"),
        })
    }

    /// One `GET` of the pipeline list: the status code and body.
    fn get(&self, token: &str) -> anyhow::Result<(u16, Vec<u8>)> {
        let addresses = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {}", self.authority))?;
        let mut failure = None;
        let mut connected = None;
        for address in addresses {
            match TcpStream::connect_timeout(&address, TIMEOUT) {
                Ok(stream) => {
                    connected = Some(stream);
                    break;
                }
                Err(e) => failure = Some(e),
            }
        }
        let Some(mut stream) = connected else {
            let hint = format!("is `sinkbox serve` running at {}?", self.url);
            return Err(match failure {
                Some(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    anyhow::anyhow!("cannot connect to {}: connection refused; {hint}", self.authority)
                }
                Some(e) => anyhow::Error::new(e).context(format!("cannot connect to {} ({hint})", self.authority)),
                None => anyhow::anyhow!("{} resolves to no address", self.authority),
            });
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n\
             User-Agent: sinkbox-top\r\nConnection: close\r\n\r\n",
            self.path, self.authority
        );
        let mut raw = Vec::new();
        stream
            .set_read_timeout(Some(TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
            .and_then(|()| stream.write_all(request.as_bytes()))
            .and_then(|()| (&mut stream).take(MAX_RESPONSE + 1).read_to_end(&mut raw))
            .with_context(|| format!("no answer from {}{}", self.url, self.path))?;
        if raw.len() as u64 > MAX_RESPONSE {
            bail!("the answer of {}{} is over {} MiB", self.url, self.path, MAX_RESPONSE >> 20);
        }
        parse_response(&raw).with_context(|| format!("{}{} did not answer HTTP", self.url, self.path))
    }
}

/// The status code and body of a whole HTTP/1.1 response.
fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("the response has no end of its header");
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = match status.split(' ').collect::<Vec<_>>().as_slice() {
        [version, code, ..] if version.starts_with("HTTP/1.") => code.parse().ok(),
        _ => None,
    };
    let Some(code) = code else {
        bail!("the status line is \"{}\"", status.chars().take(80).collect::<String>());
    };
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| anyhow::anyhow!("content-length \"{value}\""))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = match (chunked, length) {
        (true, _) => dechunk(body)?,
        (false, Some(n)) if body.len() >= n => body[..n].to_vec(),
        (false, Some(n)) => bail!("the body was cut short ({} of {n} bytes)", body.len()),
        (false, None) => body.to_vec(),
    };
    Ok((code, body))
}

/// A chunked body, joined.
fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            bail!("a chunk has no size line");
        };
        let line = String::from_utf8_lossy(&body[..eol]);
        let size = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).map_err(|_| anyhow::anyhow!("chunk size \"{size}\""))?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        match (body.get(..size), body.get(size..size + 2)) {
            (Some(chunk), Some(b"\r\n")) => out.extend_from_slice(chunk),
            _ => bail!("a chunk was cut short"),
        }
        body = &body[size + 2..];
    }
}

/// `GET /v1/pipelines`.
#[derive(Deserialize)]
struct Listing {
    pipelines: Vec<Pipeline>,
}

/// One pipeline as the admin API shows it. Every field but the names may
/// be missing.
#[derive(Deserialize, Clone, Debug, Default)]
struct Pipeline {
    tenant: String,
    pipeline: String,
    #[serde(default)]
    state: State,
    read: Option<u64>,
    committed: Option<u64>,
    error: Option<String>,
    reload_error: Option<String>,
    sinks: Option<Vec<Sink>>,
    partitions: Option<Vec<Partition>>,
}

#[derive(Deserialize, Clone, Debug, Default)]
struct Sink {
    rejected: Option<u64>,
    traps: Option<u64>,
    retries: Option<u64>,
    peak_memory: Option<u64>,
}

#[derive(Deserialize, Clone, Debug, Default)]
struct Partition {
    lag: Option<i64>,
}

/// Where a pipeline is, as the server says; a state this version does not
/// know is kept as its text.
#[derive(Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(from = "String")]
enum State {
    Starting,
    Running,
    Paused,
    Stopping,
    Stopped,
    Finished,
    Failed,
    Reloading,
    Other(String),
    #[default]
    Unknown,
}

impl From<String> for State {
    fn from(text: String) -> State {
        match text.as_str() {
            "starting" => State::Starting,
            "running" => State::Running,
            "paused" => State::Paused,
            "stopping" => State::Stopping,
            "stopped" => State::Stopped,
            "finished" => State::Finished,
            "failed" => State::Failed,
            "reloading" => State::Reloading,
            _ => State::Other(clean(&text)),
        }
    }
}

impl State {
    fn label(&self) -> &str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Finished => "finished",
            State::Failed => "failed",
            State::Reloading => "reloading",
            State::Other(text) => text,
            State::Unknown => "-",
        }
    }
}

/// One reading of the pipeline list.
struct Sample {
    at: Instant,
    clock: SystemTime,
    pipelines: Vec<Pipeline>,
}

impl Sample {
    fn take(endpoint: &Endpoint, token: &str) -> anyhow::Result<Sample> {
        let (code, body) = endpoint.get(token)?;
        let (at, clock) = (Instant::now(), SystemTime::now());
        match code {
            200 => {}
            401 => bail!(
                "the token was refused by {} (401 Unauthorized): give the operator's token or a tenant's",
                endpoint.url
            ),
            _ => {
                let said = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
                bail!("{}{} answered {code}: {}", endpoint.url, endpoint.path, clean(said.trim()));
            }
        }
        let mut listing: Listing = serde_json::from_slice(&body)
            .map_err(|e| anyhow::anyhow!("{}{} did not answer a pipeline list: {e}", endpoint.url, endpoint.path))?;
        listing.pipelines.sort_by(|a, b| (&a.tenant, &a.pipeline).cmp(&(&b.tenant, &b.pipeline)));
        Ok(Sample { at, clock, pipelines: listing.pipelines })
    }
}

/// The columns, in order; numbers are right-aligned.
const COLUMNS: [(&str, Align); 10] = [
    ("TENANT", Align::Left),
    ("PIPELINE", Align::Left),
    ("STATE", Align::Left),
    ("READ", Align::Right),
    ("READ/S", Align::Right),
    ("COMMITTED", Align::Right),
    ("ERRORS", Align::Right),
    ("RETRIES", Align::Right),
    ("LAG", Align::Right),
    ("MEMORY", Align::Right),
];
/// The columns left out first when the table is too wide (by index).
const DROP_ORDER: [usize; 6] = [7, 9, 8, 6, 4, 3];
/// TENANT and PIPELINE are cut to no less than this when too wide.
const MIN_NAME: usize = 8;

#[derive(Clone, Copy, PartialEq)]
enum Align {
    Left,
    Right,
}

/// The table's cells of one pipeline; `elapsed` is the time since the
/// previous sample and the pipeline in it, for the rate.
fn row(pipeline: &Pipeline, elapsed: Option<(Duration, &Pipeline)>) -> [String; 10] {
    let dash = || "-".to_string();
    let count = |n: Option<u64>| n.map_or_else(dash, |n| n.to_string());
    let sinks = pipeline.sinks.as_deref().unwrap_or_default();
    let over_sinks = |field: fn(&Sink) -> Option<u64>| sum(sinks.iter().map(field));
    let rate = elapsed.and_then(|(elapsed, before)| {
        let (now, then) = (pipeline.read?, before.read?);
        let seconds = elapsed.as_secs_f64();
        (seconds > 0.0 && now >= then).then(|| (now - then) as f64 / seconds)
    });
    let lag = pipeline
        .partitions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.lag)
        .fold(None, |total: Option<i64>, lag| Some(total.unwrap_or(0).saturating_add(lag)));
    let memory = sinks.iter().filter_map(|s| s.peak_memory).max();
    [
        clean(&pipeline.tenant),
        clean(&pipeline.pipeline),
        pipeline.state.label().to_string(),
        count(pipeline.read),
        rate.map_or_else(dash, |r| if r < 10.0 { format!("{r:.1}") } else { format!("{r:.0}") }),
        count(pipeline.committed),
        count(sum(sinks.iter().flat_map(|s| [s.rejected, s.traps]))),
        count(over_sinks(|s| s.retries)),
        lag.map_or_else(dash, |n| n.to_string()),
        memory.map_or_else(dash, human_bytes),
    ]
}

/// The sum of the values that are there; `None` when none is.
fn sum(values: impl Iterator<Item = Option<u64>>) -> Option<u64> {
    values.flatten().fold(None, |total, n| Some(total.unwrap_or(0u64).saturating_add(n)))
}

/// `512 B`, `12.0 MiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{n} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

/// The frame of `sample` for a screen `width` wide: a header line, the
/// table, and the errors of failed pipelines.
fn frame(url: &str, sample: &Sample, before: Option<&Sample>, width: usize) -> Vec<String> {
    let pipelines = &sample.pipelines;
    let tenants: BTreeSet<&str> = pipelines.iter().map(|p| p.tenant.as_str()).collect();
    let counted = |state: State| pipelines.iter().filter(|p| p.state == state).count();
    let header = format!(
        "{}  {}  {}, {}: {} running, {} failed",
        clean(url),
        clock(sample.clock),
        plural(tenants.len(), "tenant"),
        plural(pipelines.len(), "pipeline"),
        counted(State::Running),
        counted(State::Failed),
    );
    let previous: BTreeMap<(&str, &str), &Pipeline> = before
        .map(|b| b.pipelines.iter().map(|p| ((p.tenant.as_str(), p.pipeline.as_str()), p)).collect())
        .unwrap_or_default();
    let elapsed = before.map(|b| sample.at.saturating_duration_since(b.at));
    let rows: Vec<[String; 10]> = pipelines
        .iter()
        .map(|p| {
            let then = previous.get(&(p.tenant.as_str(), p.pipeline.as_str()));
            row(p, elapsed.zip(then.copied()))
        })
        .collect();
    let mut lines = vec![cut(&header, width), String::new()];
    lines.extend(table(&rows, width));
    let mut errors = Vec::new();
    for p in pipelines {
        let name = format!("{}/{}", clean(&p.tenant), clean(&p.pipeline));
        if let (State::Failed, Some(error)) = (&p.state, &p.error) {
            errors.push(cut(&format!("{name} failed: {}", clean(error)), width));
        }
        if let Some(error) = &p.reload_error {
            errors.push(cut(&format!("{name} reload failed: {}", clean(error)), width));
        }
    }
    if !errors.is_empty() {
        lines.push(String::new());
        lines.extend(errors);
    }
    lines
}

/// The table's lines, fitted to `width`: the names are cut first, then the
/// least needed columns left out, then every line cut.
fn table(rows: &[[String; 10]], width: usize) -> Vec<String> {
    let mut widths: Vec<usize> = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (name, _))| rows.iter().map(|r| r[i].chars().count()).chain([name.len()]).max().unwrap_or(0))
        .collect();
    let mut shown = [true; 10];
    let total = |widths: &[usize], shown: &[bool; 10]| {
        let columns: Vec<usize> = widths.iter().zip(shown).filter(|(_, s)| **s).map(|(w, _)| *w).collect();
        columns.iter().sum::<usize>() + 2 * columns.len().saturating_sub(1)
    };
    while total(&widths, &shown) > width {
        // Cut the wider of TENANT and PIPELINE by one.
        let wider = if widths[1] >= widths[0] { 1 } else { 0 };
        if widths[wider] <= MIN_NAME {
            break;
        }
        widths[wider] -= 1;
    }
    for column in DROP_ORDER {
        if total(&widths, &shown) <= width {
            break;
        }
        shown[column] = false;
    }
    let line = |cells: &[String]| {
        let mut line = String::new();
        for (i, cell) in cells.iter().enumerate().filter(|(i, _)| shown[*i]) {
            if !line.is_empty() {
                line.push_str("  ");
            }
            let cell = cut(cell, widths[i]);
            let pad = " ".repeat(widths[i].saturating_sub(cell.chars().count()));
            match COLUMNS[i].1 {
                Align::Left => line.extend([cell.as_str(), pad.as_str()]),
                Align::Right => line.extend([pad.as_str(), cell.as_str()]),
            }
        }
        cut(line.trim_end(), width)
    };
    let names: Vec<String> = COLUMNS.iter().map(|(name, _)| name.to_string()).collect();
    let mut lines = vec![line(&names)];
    lines.extend(rows.iter().map(|r| line(r)));
    lines
}

/// `text` cut to `width` characters, the last one `…` when cut.
fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    if width > 0 {
        cut.push('…');
    }
    cut
}

/// Text from the server with control characters (line breaks, terminal
/// escapes) made spaces, so it cannot move the cursor or restyle the screen.
fn clean(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

/// `HH:MM:SS UTC`.
fn clock(at: SystemTime) -> String {
    let seconds = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() % 86_400;
    format!("{:02}:{:02}:{:02} UTC", seconds / 3600, seconds / 60 % 60, seconds % 60)
}

/// The screen's width: the terminal's when `terminal`, else `COLUMNS`,
/// else 120.
fn width(is_terminal: bool) -> usize {
    let from_terminal = is_terminal.then(terminal::size).and_then(Result::ok).map(|(columns, _)| usize::from(columns));
    from_terminal
        .or_else(|| std::env::var("COLUMNS").ok()?.trim().parse().ok())
        .filter(|&w| w > 0)
        .unwrap_or(DEFAULT_WIDTH)
}

/// The alternate screen in raw mode with a hidden cursor, while it lives:
/// dropping it (on every way out, panics included) gives the terminal back
/// as it was.
struct Screen;

impl Screen {
    fn enter() -> anyhow::Result<Screen> {
        terminal::enable_raw_mode().context("cannot put the terminal in raw mode")?;
        let screen = Screen;
        crossterm::execute!(std::io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)
            .context("cannot switch to the alternate screen")?;
        Ok(screen)
    }

    /// Draws `lines` from the top and `status` on the last row.
    fn draw(&self, lines: &[String], status: &str) -> std::io::Result<()> {
        let rows = terminal::size().map_or(40, |(_, rows)| rows.max(1));
        let mut out = std::io::stdout().lock();
        crossterm::queue!(out, terminal::BeginSynchronizedUpdate)?;
        for (row, line) in (0..rows - 1).zip(lines) {
            crossterm::queue!(
                out,
                cursor::MoveTo(0, row),
                style::Print(line),
                terminal::Clear(terminal::ClearType::UntilNewLine)
            )?;
        }
        let drawn = u16::try_from(lines.len()).unwrap_or(u16::MAX).min(rows - 1);
        crossterm::queue!(
            out,
            cursor::MoveTo(0, drawn),
            terminal::Clear(terminal::ClearType::FromCursorDown),
            cursor::MoveTo(0, rows - 1),
            style::SetAttribute(style::Attribute::Reverse),
            style::Print(status),
            style::SetAttribute(style::Attribute::Reset),
            terminal::EndSynchronizedUpdate
        )?;
        out.flush()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = crossterm::execute!(std::io::stdout(), cursor::Show, terminal::LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }
}

/// What the interactive loop waits for.
enum Message {
    Sampled(anyhow::Result<Sample>),
    Input(std::io::Result<Event>),
}

/// Redraws every `interval` until `q`, Esc or Ctrl-C. A failed reading is
/// shown on the status line over the last good table, and tried again the
/// next interval.
fn watch(endpoint: &Endpoint, token: &str, interval: Duration) -> anyhow::Result<()> {
    let screen = Screen::enter()?;
    let (tx, rx) = mpsc::channel();
    // Both threads end by themselves once the receiver is gone, or with
    // the process.
    let input = tx.clone();
    std::thread::spawn(move || {
        loop {
            let event = crossterm::event::read();
            let failed = event.is_err();
            if input.send(Message::Input(event)).is_err() || failed {
                break;
            }
        }
    });
    let (sampled, token) = (endpoint.clone(), token.to_string());
    std::thread::spawn(move || {
        loop {
            let next = Instant::now() + interval;
            if tx.send(Message::Sampled(Sample::take(&sampled, &token))).is_err() {
                break;
            }
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    });
    let every = humanize(interval);
    let (mut latest, mut previous): (Option<Sample>, Option<Sample>) = (None, None);
    let mut failure: Option<String> = None;
    loop {
        let width = width(true);
        let lines = match &latest {
            Some(sample) => frame(&endpoint.url, sample, previous.as_ref(), width),
            None => vec![cut(&format!("{}  waiting for the first answer", clean(&endpoint.url)), width)],
        };
        // The header's time stays that of the table shown.
        let status = match &failure {
            Some(e) => format!(" error: {} (retrying every {every}) ", clean(e)),
            None => format!(" q quits; refreshing every {every} "),
        };
        screen.draw(&lines, &cut(&status, width)).context("cannot draw on the terminal")?;
        // Until something changes what is shown.
        loop {
            // The sampling thread holds a sender as long as this runs.
            let Ok(message) = rx.recv() else { return Ok(()) };
            match message {
                Message::Sampled(Ok(sample)) => {
                    previous = latest.replace(sample);
                    failure = None;
                }
                Message::Sampled(Err(e)) => failure = Some(format!("{e:#}")),
                Message::Input(Ok(Event::Key(key))) if key.kind != KeyEventKind::Release => {
                    let ctrl_c = key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(key.code, KeyCode::Char('q' | 'Q') | KeyCode::Esc) {
                        return Ok(());
                    }
                    continue;
                }
                Message::Input(Ok(Event::Resize(..))) => {}
                Message::Input(Ok(_)) => continue,
                Message::Input(Err(e)) => return Err(e).context("cannot read the keyboard"),
            }
            break;
        }
    }
}

/// `500ms`, `2s`, `1.5s`.
fn humanize(interval: Duration) -> String {
    match interval.as_millis() {
        ms if ms < 1000 => format!("{ms}ms"),
        ms if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{:.1}s", interval.as_secs_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let cases = [
            ("http://127.0.0.1:8787", Some(("127.0.0.1", 8787, "/v1/pipelines"))),
            ("http://127.0.0.1:8787/", Some(("127.0.0.1", 8787, "/v1/pipelines"))),
            ("HTTP://localhost/admin/", Some(("localhost", 80, "/admin/v1/pipelines"))),
            ("127.0.0.1:9000", Some(("127.0.0.1", 9000, "/v1/pipelines"))),
            ("http://[::1]:8787", Some(("::1", 8787, "/v1/pipelines"))),
            ("https://127.0.0.1:8787", None),
            ("http://:8787", None),
            ("http://127.0.0.1:port", None),
            ("http://[::1", None),
        ];
        for (url, expected) in cases {
            let parsed = Endpoint::parse(url).ok();
            let got = parsed.as_ref().map(|e| (e.host.as_str(), e.port, e.path.as_str()));
            assert_eq!(got, expected, "{url}");
        }
    }

    /// A raw response, and its status code and body if it is one.
    type ResponseCase = (&'static [u8], Option<(u16, &'static [u8])>);

    #[test]
    fn responses() {
        let cases: [ResponseCase; 8] = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", Some((200, b"{}"))),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}extra", Some((200, b"{}"))),
            (b"HTTP/1.1 401 Unauthorized\r\n\r\nno", Some((401, b"no"))),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
                Some((200, b"abcde")),
            ),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nabc", None),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", None),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 2", None),
            (b"SSH-2.0-OpenSSH\r\n\r\n", None),
        ];
        for (raw, expected) in cases {
            let got = parse_response(raw).ok();
            assert_eq!(got.as_ref().map(|(c, b)| (*c, b.as_slice())), expected, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn tokens() {
        let dir = std::env::temp_dir().join(format!("sinkbox-top-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "  from-the-file-0123456789\n").unwrap();
        let env = || Some("from-the-env-0123456789".to_string());
        assert_eq!(token(Some(&file), env()).unwrap(), "from-the-file-0123456789");
        assert_eq!(token(None, env()).unwrap(), "from-the-env-0123456789");
        let refused = [
            (token(None, None), "--token-file"),
            (token(None, Some(" \n".into())), "empty"),
            (token(None, Some("a\r\nX-Evil: 1".into())), "control character"),
            (token(Some(&dir.join("missing")), env()), "cannot read the token file"),
        ];
        for (result, says) in refused {
            let e = format!("{:#}", result.unwrap_err());
            assert!(e.contains(says), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bytes_read_as_humans_do() {
        for (n, text) in [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (12 << 20, "12.0 MiB"), (3 << 29, "1.5 GiB")]
        {
            assert_eq!(human_bytes(n), text);
        }
    }

    fn sample(json: &str, at: Instant) -> Sample {
        let listing: Listing = serde_json::from_str(json).unwrap();
        Sample { at, clock: UNIX_EPOCH + Duration::from_secs(3_723), pipelines: listing.pipelines }
    }

    #[test]
    fn rows_sum_sinks_and_partitions_and_show_what_is_missing_as_a_dash() {
        let start = Instant::now();
        let before =
            sample(r#"{"pipelines":[{"tenant":"a","pipeline":"orders","state":"running","read":100}]}"#, start);
        let now = sample(
            r#"{"pipelines":[
                {"tenant":"b","pipeline":"events","state":"failed","read":5,"committed":5,"error":"sink \"out\"\ntrapped\u001b[2J","status":null},
                {"tenant":"a","pipeline":"orders","state":"running","read":300,"committed":250,"error":null,"bytes":9,
                 "sinks":[{"name":"x","rejected":1,"traps":2,"retries":3,"peak_memory":1048576},
                          {"name":"y","rejected":4,"peak_memory":12582912,"new_field":true}],
                 "partitions":[{"topic":"t","partition":0,"lag":7},{"topic":"t","partition":1,"lag":null},{"lag":3}]},
                {"tenant":"a","pipeline":"new","state":"somewhere-new"}
            ]}"#,
            start + Duration::from_secs(2),
        );
        let mut pipelines = now.pipelines.clone();
        pipelines.sort_by(|a, b| (&a.tenant, &a.pipeline).cmp(&(&b.tenant, &b.pipeline)));
        let now = Sample { pipelines, ..now };
        let lines = frame("http://127.0.0.1:8787", &now, Some(&before), 200);
        let expected = [
            "http://127.0.0.1:8787  01:02:03 UTC  2 tenants, 3 pipelines: 1 running, 1 failed",
            "",
            "TENANT  PIPELINE  STATE          READ  READ/S  COMMITTED  ERRORS  RETRIES  LAG    MEMORY",
            "a       new       somewhere-new     -       -          -       -        -    -         -",
            "a       orders    running         300     100        250       7        3   10  12.0 MiB",
            "b       events    failed            5       -          5       -        -    -         -",
            "",
            "b/events failed: sink \"out\" trapped [2J",
        ];
        assert_eq!(lines, expected);
    }

    #[test]
    fn narrow_screens_cut_names_then_leave_columns_out() {
        let rows = [[
            "a-long-tenant-name".to_string(),
            "a-long-pipeline-name".to_string(),
            "running".to_string(),
            "1".to_string(),
            "2".to_string(),
            "3".to_string(),
            "4".to_string(),
            "5".to_string(),
            "6".to_string(),
            "7 B".to_string(),
        ]];
        let check = |width: usize, expected: &[&str]| {
            let lines = table(&rows, width);
            assert_eq!(lines, expected, "{width}");
            assert!(lines.iter().all(|l| l.chars().count() <= width), "{width}");
        };
        check(
            200,
            &[
                "TENANT              PIPELINE              STATE    READ  READ/S  COMMITTED  ERRORS  RETRIES  LAG  MEMORY",
                "a-long-tenant-name  a-long-pipeline-name  running     1       2          3       4        5    6     7 B",
            ],
        );
        check(
            60,
            &[
                "TENANT    PIPELINE  STATE    READ  READ/S  COMMITTED  ERRORS",
                "a-long-…  a-long-…  running     1       2          3       4",
            ],
        );
        check(20, &["TENANT    PIPELINE …", "a-long-…  a-long-… …"]);
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("fast").is_err());
        assert_eq!(humanize(Duration::from_millis(1500)), "1.5s");
        assert_eq!(humanize(Duration::from_secs(2)), "2s");
    }
}
