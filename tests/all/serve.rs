//! `sinkbox serve`: tenants' pipelines in one process, the admin API's
//! tokens, and `/metrics`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::servers::free_port;
use crate::{Scratch, lines};

const OPERATOR: &str = "operator-token-0123456789";
const TOKEN_A: &str = "tenant-a-token-0123456789";
const TOKEN_B: &str = "tenant-b-token-0123456789";

/// One HTTP/1.1 request; the status code and body.
fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let code = response.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

/// A pipeline over `n` lines in `dir`, into `component` writing to
/// `out/NAME.jsonl` (`key` names the config key of that path).
fn pipeline(s: &Scratch, dir: &str, name: &str, n: usize, component: &str, key: &str) {
    std::fs::create_dir_all(s.path(&format!("{dir}/out"))).unwrap();
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
config = {{ {key} = "/out/{name}.jsonl" }}
on_error = "fail"
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}
"#
        ),
    );
}

struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn tenants_run_side_by_side_and_see_only_their_own_pipelines() {
    let s = Scratch::new("serve");
    pipeline(&s, "a", "orders", 100, "builtin:file", "path");
    // Slow enough to be stopped through the API: 50 flushes of 200 ms.
    // Its own output directory: two pipelines never share one (the second
    // would be refused).
    pipeline(&s, "a-slow", "slow", 1_000, sinkbox_test_artifacts::SLOW_FLUSH, "out");
    let slow = s.read("a-slow/slow.toml");
    s.write(
        "a-slow/slow.toml",
        &slow.replace("out = \"/out/slow.jsonl\"", "out = \"/out/slow.jsonl\", sleep_ms = 200"),
    );
    pipeline(&s, "b", "events", 50, "builtin:file", "path");
    pipeline(&s, "b", "broken", 10, sinkbox_test_artifacts::PANIC_IN_ADD, "out");
    std::fs::create_dir_all(s.path("tenants")).unwrap();
    s.write(
        "tenants/a.toml",
        &format!(
            "[tenant]\ntoken = \"{TOKEN_A}\"\n\n[[pipeline]]\nfile = \"../a/orders.toml\"\n\n[[pipeline]]\nfile = \"../a-slow/slow.toml\"\n"
        ),
    );
    s.write(
        "tenants/b.toml",
        &format!(
            "[tenant]\ntoken = \"{TOKEN_B}\"\n\n[[pipeline]]\nfile = \"../b/events.toml\"\n\n[[pipeline]]\nfile = \"../b/broken.toml\"\n\n[[pipeline]]\nfile = \"../b/events.toml\"\n"
        ),
    );
    s.write("tenants/bad.toml", "[tenant]\ntoken = \"bad-tenant-token-0123456789\"\ncolour = \"red\"\n");
    s.write("op.token", OPERATOR);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(s.path("log.txt")).unwrap();
    let mut serving = Serving(
        Command::new(env!("CARGO_BIN_EXE_sinkbox"))
            .args(["--cache-dir", concat!(env!("CARGO_TARGET_TMPDIR"), "/component-cache")])
            .args(["serve", "tenants", "--listen", &listen, "--operator-token-file", "op.token"])
            .current_dir(&s.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sinkbox serve starts"),
    );
    // Every pipeline ends: two finish, the broken one fails, and the slow
    // one is stopped by its tenant.
    let start = Instant::now();
    let mut stopped = false;
    let list = loop {
        assert!(serving.0.try_wait().unwrap().is_none(), "serve exited; its log:\n{}", s.read("log.txt"));
        assert!(start.elapsed() < Duration::from_secs(60), "pipelines end within 60 s; log:\n{}", s.read("log.txt"));
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            if !stopped {
                let (code, body) = http(port, "POST", "/v1/pipelines/a/slow/stop", Some(TOKEN_A));
                assert_eq!(code, 202, "{body}");
                stopped = true;
            }
            let (code, body) = http(port, "GET", "/v1/pipelines", Some(OPERATOR));
            assert_eq!(code, 200, "{body}");
            let list: serde_json::Value = serde_json::from_str(&body).unwrap();
            let states: Vec<String> = list["pipelines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["state"].as_str().unwrap().to_string())
                .collect();
            if states.len() == 4 && states.iter().all(|s| s != "starting" && s != "running") {
                break list;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let summary: Vec<(String, String, String, u64)> = list["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let text = |k: &str| p[k].as_str().unwrap().to_string();
            (text("tenant"), text("pipeline"), text("state"), p["committed"].as_u64().unwrap())
        })
        .collect();
    let (slow, summary): (Vec<_>, Vec<_>) = summary.into_iter().partition(|(_, name, _, _)| name == "slow");
    assert_eq!(
        summary,
        [
            ("a".into(), "orders".into(), "finished".into(), 100),
            ("b".into(), "events".into(), "finished".into(), 50),
            ("b".into(), "broken".into(), "failed".into(), 0),
        ]
    );
    // Stopped at a checkpoint: what it committed is what it wrote.
    let (_, _, state, committed) = &slow[0];
    assert_eq!(state, "stopped");
    assert!(*committed < 1_000, "{committed}");
    assert_eq!(s.read("a-slow/out/slow.jsonl").lines().count() as u64, *committed);
    assert_eq!(s.read("a/out/orders.jsonl"), lines(100));
    assert_eq!(s.read("b/out/events.jsonl"), lines(50));
    let broken = &list["pipelines"][3]["error"];
    assert!(broken.as_str().unwrap().contains("sink \"out\""), "{broken}");
    let log = s.read("log.txt");
    assert!(log.contains("bad.toml") && log.contains("unknown field `colour`"), "{log}");
    assert!(log.contains("tenant b: a second pipeline named events"), "{log}");

    // Tokens: none or a wrong one is 401; a tenant sees only its own.
    assert_eq!(http(port, "GET", "/v1/pipelines", None).0, 401);
    assert_eq!(http(port, "GET", "/v1/pipelines", Some("wrong-token-0123456789")).0, 401);
    let (code, body) = http(port, "GET", "/v1/pipelines", Some(TOKEN_A));
    assert_eq!(code, 200);
    let mine: serde_json::Value = serde_json::from_str(&body).unwrap();
    let tenants: Vec<&str> =
        mine["pipelines"].as_array().unwrap().iter().map(|p| p["tenant"].as_str().unwrap()).collect();
    assert_eq!(tenants, ["a", "a"]);
    assert_eq!(http(port, "GET", "/v1/pipelines/b/events", Some(TOKEN_A)).0, 404);
    assert_eq!(http(port, "POST", "/v1/pipelines/b/events/stop", Some(TOKEN_A)).0, 404);
    let (code, body) = http(port, "GET", "/v1/pipelines/a/orders", Some(TOKEN_A));
    assert_eq!(code, 200, "{body}");
    let orders: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(orders["status"]["committed"], 100);
    assert_eq!(http(port, "GET", "/v1/pipelines/b/events", Some(OPERATOR)).0, 200);

    // Metrics, per tenant and pipeline.
    let (code, metrics) = http(port, "GET", "/metrics", None);
    assert_eq!(code, 200);
    for line in [
        "sinkbox_records_committed_total{tenant=\"a\",pipeline=\"orders\"} 100",
        "sinkbox_records_committed_total{tenant=\"b\",pipeline=\"events\"} 50",
        "sinkbox_records_read_total{tenant=\"a\",pipeline=\"orders\"} 100",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }

    // A real Prometheus scrapes it and answers per-tenant series.
    let prometheus_dir = crate::servers::TempDir::new("prometheus");
    s.write(
        "prometheus.yml",
        &format!(
            "global: {{ scrape_interval: 1s }}\nscrape_configs:\n  - job_name: sinkbox\n    static_configs: [{{ targets: ['{listen}'] }}]\n"
        ),
    );
    let prometheus_port = free_port();
    let mut command = Command::new("prometheus");
    command
        .arg(format!("--config.file={}", s.path("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", prometheus_dir.0.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"));
    let _prometheus = crate::servers::Server::start("prometheus", command, prometheus_port, &prometheus_dir.0);
    let start = Instant::now();
    let series = loop {
        let (code, body) = http(prometheus_port, "GET", "/api/v1/query?query=sinkbox_records_committed_total", None);
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let mut series: Vec<(String, String, String)> = answer["data"]["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|r| {
                        let label = |k: &str| r["metric"][k].as_str().unwrap_or_default().to_string();
                        (label("tenant"), label("pipeline"), r["value"][1].as_str().unwrap_or_default().to_string())
                    })
                    .collect()
            })
            .unwrap_or_default();
        series.retain(|(_, pipeline, _)| pipeline != "slow");
        series.sort();
        if code == 200 && series.len() == 3 {
            break series;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "Prometheus scrapes within 60 s: {code} {body}");
        std::thread::sleep(Duration::from_millis(250));
    };
    let expected: Vec<(String, String, String)> = [("a", "orders", "100"), ("b", "broken", "0"), ("b", "events", "50")]
        .iter()
        .map(|(t, p, v)| (t.to_string(), p.to_string(), v.to_string()))
        .collect();
    assert_eq!(series, expected);

    // SIGTERM stops it cleanly.
    let _ = Command::new("kill").args(["-TERM", &serving.0.id().to_string()]).status();
    let status = serving.0.wait().expect("serve exits");
    assert!(status.success(), "{status}; log:\n{}", s.read("log.txt"));
}
