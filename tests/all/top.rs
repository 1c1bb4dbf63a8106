//! `sinkbox top` over a real `sinkbox serve`: one plain frame with
//! `--once` for each kind of token, and the live screen under tmux.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::serve::Serving;
use crate::servers::free_port;
use crate::{Scratch, lines};

const OPERATOR: &str = "operator-token-0123456789";
const TOKEN_A: &str = "tenant-a-token-0123456789";
const TOKEN_B: &str = "tenant-b-token-0123456789";

/// A pipeline over `n` lines in `dir` into `component`, with no grants:
/// a tenant needs to allow nothing for it.
fn pipeline(s: &Scratch, dir: &str, name: &str, n: usize, component: &str) {
    std::fs::create_dir_all(s.path(dir)).unwrap();
    s.write(&format!("{dir}/{name}.jsonl"), &lines(n));
    s.write(
        &format!("{dir}/{name}.toml"),
        &format!(
            r#"
[pipeline]
commit_every = 20

[source]
kind = "file"
path = "{name}.jsonl"

[[sink]]
name = "out"
component = "{component}"
on_error = "fail"
"#
        ),
    );
}

/// `sinkbox top ARGS --once` with `token` in SINKBOX_TOKEN (or none), 160
/// columns wide.
fn top_once(url: &str, token: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sinkbox"));
    command.args(["top", "--once", "--url", url]).env("COLUMNS", "160").env_remove("SINKBOX_TOKEN");
    if let Some(token) = token {
        command.env("SINKBOX_TOKEN", token);
    }
    command.output().expect("sinkbox top runs")
}

/// The table's rows as TENANT, PIPELINE, STATE, COMMITTED (the sixth
/// column).
fn rows(frame: &str) -> Vec<[String; 4]> {
    let table = frame.lines().skip_while(|l| !l.starts_with("TENANT")).skip(1).take_while(|l| !l.is_empty());
    table
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            [0, 1, 2, 5].map(|i| cells.get(i).copied().unwrap_or_default().to_string())
        })
        .collect()
}

fn row(tenant: &str, pipeline: &str, state: &str, committed: &str) -> [String; 4] {
    [tenant, pipeline, state, committed].map(str::to_string)
}

/// Fails the test unless tmux is installed.
fn require_tmux() {
    match Command::new("tmux").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        _ => panic!("tmux is needed to test `sinkbox top`'s screen: install it (apt-get install tmux; .ci/setup does)"),
    }
}

/// A tmux server of its own (`-L`, no config file), so the test never
/// touches a user's, running one detached session `top`; on drop the
/// server is killed and its socket removed.
struct Tmux {
    socket: String,
    socket_path: Option<PathBuf>,
}

impl Tmux {
    fn start(width: u16, height: u16, command: &str) -> Tmux {
        let mut tmux = Tmux { socket: format!("sinkbox-test-{}", std::process::id()), socket_path: None };
        let (width, height) = (width.to_string(), height.to_string());
        let started = tmux.run(&["new-session", "-d", "-s", "top", "-x", &width, "-y", &height, command]);
        assert!(started.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&started.stderr));
        let path = tmux.run(&["display-message", "-p", "-t", "top", "#{socket_path}"]).stdout;
        tmux.socket_path = Some(PathBuf::from(String::from_utf8_lossy(&path).trim()));
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("tmux runs")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A shell word.
fn quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

#[test]
fn top_shows_each_token_its_pipelines_once_and_live() {
    require_tmux();
    let s = Scratch::new("top");
    pipeline(&s, "a", "orders", 100, "builtin:blackhole");
    pipeline(&s, "b", "events", 50, "builtin:blackhole");
    pipeline(&s, "b", "broken", 10, sinkbox_test_artifacts::PANIC_IN_ADD);
    std::fs::create_dir_all(s.path("tenants")).unwrap();
    s.write(
        "tenants/a.toml",
        &format!("[tenant]\ntoken = \"{TOKEN_A}\"\n\n[[pipeline]]\nfile = \"../a/orders.toml\"\n"),
    );
    s.write(
        "tenants/b.toml",
        &format!(
            "[tenant]\ntoken = \"{TOKEN_B}\"\n\n[[pipeline]]\nfile = \"../b/events.toml\"\n\n[[pipeline]]\nfile = \"../b/broken.toml\"\n"
        ),
    );
    let operator_file = s.write("op.token", OPERATOR);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");

    // Nothing listens yet: a clear error, not a panic.
    let out = top_once(&url, Some(OPERATOR));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("is `sinkbox serve` running at"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let mut serving = Serving::start(&s, port, &["--operator-token-file", "op.token"]);

    // (1) `--once`, polled until every pipeline has ended.
    let everything = [
        row("a", "orders", "finished", "100"),
        row("b", "broken", "failed", "0"),
        row("b", "events", "finished", "50"),
    ];
    let start = Instant::now();
    let frame = loop {
        assert!(serving.0.try_wait().unwrap().is_none(), "serve exited; its log:\n{}", s.read("log.txt"));
        let out = top_once(&url, Some(OPERATOR));
        let frame = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && rows(&frame) == everything {
            break frame;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "top shows every pipeline ended within 60 s; its last frame:\n{frame}\n{}\nserve's log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            s.read("log.txt")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let header = frame.lines().next().unwrap();
    assert!(header.starts_with(&url), "{frame}");
    assert!(header.ends_with("2 tenants, 3 pipelines: 0 running, 1 failed"), "{frame}");
    assert!(frame.lines().any(|l| l.starts_with("b/broken failed: sink \"out\"")), "{frame}");
    assert!(frame.lines().all(|l| l.chars().count() <= 160), "{frame}");

    // A tenant's token (from the environment or a file) sees its own.
    let out = top_once(&url, Some(TOKEN_B));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rows(&String::from_utf8_lossy(&out.stdout)), everything[1..]);
    let a_file = s.write("a.token", &format!("{TOKEN_A}\n"));
    let out = Command::new(env!("CARGO_BIN_EXE_sinkbox"))
        .args(["top", "--once", "--url", &url, "--token-file"])
        .arg(&a_file)
        .env_remove("SINKBOX_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(rows(&String::from_utf8_lossy(&out.stdout)), everything[..1]);

    // A wrong token, or none: non-zero, and says why.
    let out = top_once(&url, Some("wrong-token-0123456789"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("the token was refused"), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    let out = top_once(&url, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--token-file") && stderr.contains("SINKBOX_TOKEN"), "{stderr}");

    // (2) The live screen in a 160x40 tmux pane: it draws both tenants'
    // pipelines, and `q` ends it.
    let command = format!(
        "{} top --url {url} --token-file {} --interval 200ms",
        quote(Path::new(env!("CARGO_BIN_EXE_sinkbox"))),
        quote(&operator_file)
    );
    let tmux = Tmux::start(160, 40, &command);
    let start = Instant::now();
    loop {
        let captured = tmux.run(&["capture-pane", "-p", "-t", "top"]);
        let pane = String::from_utf8_lossy(&captured.stdout).into_owned();
        let shown = |tenant: &str, pipeline: &str, state: &str| {
            pane.lines().any(|l| l.split_whitespace().take(3).eq([tenant, pipeline, state]))
        };
        if shown("a", "orders", "finished") && shown("b", "events", "finished") && pane.contains("q quits") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the screen shows both tenants' pipelines within 20 s; the pane:\n{pane}\n{}",
            String::from_utf8_lossy(&captured.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent = tmux.run(&["send-keys", "-t", "top", "q"]);
    assert!(sent.status.success(), "tmux send-keys: {}", String::from_utf8_lossy(&sent.stderr));
    let start = Instant::now();
    while tmux.run(&["has-session", "-t", "top"]).status.success() {
        let pane = String::from_utf8_lossy(&tmux.run(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned();
        assert!(start.elapsed() < Duration::from_secs(5), "`q` ends sinkbox top within 5 s; the pane:\n{pane}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
