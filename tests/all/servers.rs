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

/// A free TCP port on 127.0.0.1. The listener is dropped before the port is
/// used, so a race with another process is possible but rare.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
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

/// A server process, killed (and its scratch directory removed) on drop.
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

    /// Starts the same server again with `command` on the same port, after
    /// [`Server::stop`].
    pub fn restart(&mut self, mut command: Command) {
        self.stop();
        let log = std::fs::OpenOptions::new().append(true).open(self.dir.join("server.log")).expect("server log");
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
