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
pub(crate) fn http(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
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

/// A running `sinkbox serve`, killed when dropped.
pub(crate) struct Serving(pub(crate) Child);

impl Serving {
    /// `sinkbox serve tenants --listen 127.0.0.1:PORT ARGS` in `s`, its
    /// log in `log.txt`.
    pub(crate) fn start(s: &Scratch, port: u16, args: &[&str]) -> Serving {
        let log = std::fs::File::create(s.path("log.txt")).unwrap();
        Serving(
            Command::new(env!("CARGO_BIN_EXE_sinkbox"))
                .args(["--cache-dir", concat!(env!("CARGO_TARGET_TMPDIR"), "/component-cache")])
                .args(["serve", "tenants", "--listen", &format!("127.0.0.1:{port}")])
                .args(args)
                .current_dir(&s.dir)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("sinkbox serve starts"),
        )
    }
}

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
    // Each pipeline its own output directory: the second of two sharing
    // one is refused while the first runs.
    pipeline(&s, "b-broken", "broken", 10, sinkbox_test_artifacts::PANIC_IN_ADD, "out");
    std::fs::create_dir_all(s.path("tenants")).unwrap();
    s.write(
        "tenants/a.toml",
        &format!(
            "[tenant]\ntoken = \"{TOKEN_A}\"\n\n[grants]\ndirs = [\"../a\", \"../a-slow\"]\n\n[[pipeline]]\nfile = \"../a/orders.toml\"\n\n[[pipeline]]\nfile = \"../a-slow/slow.toml\"\n"
        ),
    );
    s.write(
        "tenants/b.toml",
        &format!(
            "[tenant]\ntoken = \"{TOKEN_B}\"\n\n[grants]\ndirs = [\"../b\", \"../b-broken\"]\n\n[[pipeline]]\nfile = \"../b/events.toml\"\n\n[[pipeline]]\nfile = \"../b-broken/broken.toml\"\n\n[[pipeline]]\nfile = \"../b/events.toml\"\n"
        ),
    );
    s.write("tenants/bad.toml", "[tenant]\ntoken = \"bad-tenant-token-0123456789\"\ncolour = \"red\"\n");
    s.write("op.token", OPERATOR);
    // `--check` names every problem and starts nothing.
    let checked = Command::new(env!("CARGO_BIN_EXE_sinkbox"))
        .args(["--cache-dir", concat!(env!("CARGO_TARGET_TMPDIR"), "/component-cache")])
        .args(["serve", "tenants", "--check"])
        .current_dir(&s.dir)
        .output()
        .expect("sinkbox serve --check runs");
    let report = String::from_utf8_lossy(&checked.stdout);
    assert_eq!(checked.status.code(), Some(1), "{report}");
    for (start, end) in [
        ("ok   tenant a (tenants/a.toml)", ""),
        ("ok     pipeline ", "/a/orders.toml"),
        ("ok     pipeline ", "/b-broken/broken.toml"),
        ("FAIL   pipeline ", "/b/events.toml: a second pipeline named events; pipeline file names must differ"),
        ("2 problem(s)", ""),
    ] {
        assert!(report.lines().any(|l| l.starts_with(start) && l.ends_with(end)), "{start}…{end} in:\n{report}");
    }
    assert!(report.contains("FAIL tenant file tenants/bad.toml: "), "{report}");
    assert!(report.contains("unknown field `colour`"), "{report}");
    assert!(!s.path("a/out/orders.jsonl").exists(), "--check writes nothing");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut serving = Serving::start(&s, port, &["--operator-token-file", "op.token"]);
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
            if states.len() == 4 && states.iter().all(|s| !["starting", "running", "stopping"].contains(&s.as_str())) {
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

const TOKEN_C: &str = "tenant-c-token-0123456789";

/// Waits until serve (started in `s`) listens on `port`; fails after 30 s
/// with its log.
fn listening(s: &Scratch, port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(30), "serve listens; log:\n{}", s.read("log.txt"));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls one pipeline's view until `done` holds; fails after 60 s with
/// the last view and serve's log.
fn wait_for(
    s: &Scratch,
    port: u16,
    path: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    poll(s, &format!("{path}: {what}"), || {
        let (code, body) = http(port, "GET", &format!("/v1/pipelines/{path}"), Some(TOKEN_C));
        let view: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if code == 200 && done(&view) { Ok(view) } else { Err(format!("view {code} {body}")) }
    })
}

/// Calls `look` every 50 ms until it gives a value; fails after 60 s with
/// `what`, what `look` saw last and serve's log.
fn poll<T>(s: &Scratch, what: &str, mut look: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        let seen = match look() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} within 60 s; last {seen}\nlog:\n{}",
            s.read("log.txt")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tenant pipeline file over `input`, `commit_every` 100.
fn tenant_pipeline(component: &str, config: &str, input: &str, extra: &str) -> String {
    format!(
        r#"
[pipeline]
commit_every = 100
{extra}

[source]
kind = "file"
path = "{input}"

[[sink]]
name = "out"
component = "{component}"
config = {{ {config} }}
grants = {{ dirs = [{{ host = "out", guest = "/out", mode = "rw" }}] }}
"#
    )
}

#[test]
fn a_tenant_pauses_reloads_and_resets_its_pipelines_within_its_limits_and_is_accounted() {
    let s = Scratch::new("serve-control");
    let n = 9_000;
    std::fs::create_dir_all(s.path("c/out")).unwrap();
    std::fs::create_dir_all(s.path("elsewhere")).unwrap();
    s.write("c/orders.jsonl", &lines(n));
    s.write("c/counted.jsonl", &lines(1_000));
    let orders = tenant_pipeline("builtin:file", "path = \"/out/orders.jsonl\"", "orders.jsonl", "");
    s.write("c/orders.toml", &orders);
    s.write(
        "c/counted.toml",
        &tenant_pipeline("builtin:blackhole", "", "counted.jsonl", "")
            .replace("grants = { dirs = [{ host = \"out\", guest = \"/out\", mode = \"rw\" }] }", ""),
    );
    s.write(
        "c/greedy.toml",
        &tenant_pipeline("builtin:file", "path = \"/out/g.jsonl\"", "counted.jsonl", "")
            .replace("[[sink]]", "[[sink]]\nlimits = { memory = \"128MiB\" }"),
    );
    s.write(
        "c/outside.toml",
        &tenant_pipeline("builtin:file", "path = \"/out/o.jsonl\"", "counted.jsonl", "")
            .replace("host = \"out\"", "host = \"../elsewhere\""),
    );
    std::fs::create_dir_all(s.path("tenants")).unwrap();
    // 1,000 records a second over its pipelines: orders runs for seconds.
    s.write(
        "tenants/c.toml",
        &format!(
            "[tenant]\ntoken = \"{TOKEN_C}\"\n\n[limits]\nmemory = \"32MiB\"\n\n[grants]\ndirs = [\"../c\"]\n\n[quotas]\nrecords_per_second = 1000\n\n\
             [[pipeline]]\nfile = \"../c/orders.toml\"\n\n[[pipeline]]\nfile = \"../c/counted.toml\"\n\n\
             [[pipeline]]\nfile = \"../c/greedy.toml\"\n\n[[pipeline]]\nfile = \"../c/outside.toml\"\n"
        ),
    );
    let port = free_port();
    let _serving = Serving::start(&s, port, &["--watch", "200ms"]);
    listening(&s, port);

    // The tenant's ceilings and grants refuse what asks for more.
    let greedy = wait_for(&s, port, "c/greedy", "a refusal", |v| v["state"] == "failed");
    let e = greedy["error"].as_str().unwrap();
    assert!(e.contains("sink \"out\": limits.memory = 128 MiB is above tenant c's ceiling of 32 MiB"), "{e}");
    let outside = wait_for(&s, port, "c/outside", "a refusal", |v| v["state"] == "failed");
    let e = outside["error"].as_str().unwrap();
    assert!(e.contains("is not under a directory tenant c may grant"), "{e}");

    // Pause: everything read is committed, nothing more is read.
    wait_for(&s, port, "c/orders", "a first commit", |v| v["committed"].as_u64() > Some(0));
    assert_eq!(http(port, "POST", "/v1/pipelines/c/orders/pause", Some(TOKEN_C)).0, 202);
    let paused = wait_for(&s, port, "c/orders", "a pause", |v| v["state"] == "paused" && v["committed"] == v["read"]);
    std::thread::sleep(Duration::from_millis(700));
    let still = wait_for(&s, port, "c/orders", "the pause holding", |_| true);
    assert_eq!(still["committed"], paused["committed"], "nothing is committed while paused");
    assert!(paused["committed"].as_u64().unwrap() < n as u64, "paused before the end: {paused}");
    assert_eq!(s.read("c/out/orders.jsonl").lines().count() as u64, paused["committed"].as_u64().unwrap());
    assert_eq!(http(port, "POST", "/v1/pipelines/c/orders/resume", Some(TOKEN_C)).0, 202);

    // A pipeline file that does not parse: the running version goes on.
    s.write("c/orders.toml", "[pipeline\n");
    let refused = wait_for(&s, port, "c/orders", "a refused reload", |v| !v["reload_error"].is_null());
    assert_eq!(refused["state"], "running", "{refused}");
    // A valid change reloads at a checkpoint boundary; a paused pipeline
    // stays paused across it.
    assert_eq!(http(port, "POST", "/v1/pipelines/c/orders/pause", Some(TOKEN_C)).0, 202);
    wait_for(&s, port, "c/orders", "a pause", |v| v["state"] == "paused" && v["committed"] == v["read"]);
    s.write("c/orders.toml", &orders.replace("commit_every = 100", "commit_every = 150"));
    let reloaded = wait_for(&s, port, "c/orders", "a reload", |v| {
        v["reloads"] == 1 && v["reload_error"].is_null() && v["state"] == "paused"
    });
    std::thread::sleep(Duration::from_millis(500));
    let still = wait_for(&s, port, "c/orders", "the pause holding", |_| true);
    assert_eq!(still["committed"], reloaded["committed"], "the reloaded version starts paused");
    assert_eq!(http(port, "POST", "/v1/pipelines/c/orders/resume", Some(TOKEN_C)).0, 202);
    // A new component that fails at open: rolled back to the running one.
    let panics = tenant_pipeline(sinkbox_test_artifacts::PANIC_IN_OPEN, "out = \"/out/p.jsonl\"", "orders.jsonl", "");
    s.write("c/orders.toml", &panics);
    let rolled = wait_for(&s, port, "c/orders", "a roll-back", |v| {
        v["reload_error"].as_str().is_some_and(|e| e.contains("rolled back"))
    });
    assert!(rolled["reload_error"].as_str().unwrap().contains("panics in open"), "{rolled}");
    let done = wait_for(&s, port, "c/orders", "the end", |v| v["state"] != "running" && v["state"] != "starting");
    assert_eq!((done["state"].as_str(), done["committed"].as_u64()), (Some("finished"), Some(n as u64)), "{done}");
    assert_eq!(s.read("c/out/orders.jsonl"), lines(n), "across pause, reloads and a roll-back: every record once");

    // Reset: the pipeline runs its input again from the start.
    wait_for(&s, port, "c/counted", "the end", |v| v["state"] == "finished");
    assert_eq!(http(port, "POST", "/v1/pipelines/c/counted/reset", Some(TOKEN_C)).0, 202);
    wait_for(&s, port, "c/counted", "a second pass", |v| v["state"] == "finished" && v["committed"] == 2_000);
    assert_eq!(http(port, "POST", "/v1/pipelines/c/counted/jump", Some(TOKEN_C)).0, 404);
    let (code, body) = http(port, "GET", "/v1/tenants", Some(TOKEN_C));
    assert_eq!(code, 200, "{body}");
    let tenants: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(tenants["tenants"][0]["quotas"]["records_per_second"], 1000, "{tenants}");

    // The accounting log bills every committed record once.
    let mut billed: std::collections::BTreeMap<String, u64> = Default::default();
    let mut guest = 0.0;
    for line in s.read("tenants/.sinkbox/accounting.jsonl").lines() {
        let entry: serde_json::Value = serde_json::from_str(line).expect("an accounting line is JSON");
        assert_eq!(entry["tenant"], "c");
        *billed.entry(entry["pipeline"].as_str().unwrap().to_string()).or_default() +=
            entry["records"].as_u64().unwrap();
        guest += entry["guest_cpu_seconds"].as_f64().unwrap();
    }
    assert_eq!(billed.get("orders"), Some(&(n as u64)), "{billed:?}");
    assert_eq!(billed.get("counted"), Some(&2_000), "{billed:?}");
    assert!(guest > 0.0);

    // Per-sink series, latency histograms and the tenant's usage.
    let (_, metrics) = http(port, "GET", "/metrics", None);
    let value = |prefix: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix} in:\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(value("sinkbox_sink_records_added_total{tenant=\"c\",pipeline=\"orders\",sink=\"out\"}") >= n as f64);
    assert!(value("sinkbox_checkpoint_latency_seconds_count{tenant=\"c\",pipeline=\"orders\"}") >= 5.0);
    assert!(value("sinkbox_flush_latency_seconds_count{tenant=\"c\",pipeline=\"orders\",sink=\"out\"}") >= 5.0);
    assert_eq!(value("sinkbox_tenant_records_total{tenant=\"c\"}"), (n + 2_000) as f64);
    assert_eq!(value("sinkbox_reloads_total{tenant=\"c\",pipeline=\"orders\"}"), 1.0);
}

/// Pipelines by name, with their views.
type Views = [(String, serde_json::Value)];

/// The pipelines `token` sees.
fn listed(port: u16, token: &str) -> (u16, Vec<(String, serde_json::Value)>) {
    let (code, body) = http(port, "GET", "/v1/pipelines", Some(token));
    let list: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let views = list["pipelines"]
        .as_array()
        .map(|l| l.iter().map(|p| (p["pipeline"].as_str().unwrap_or_default().to_string(), p.clone())).collect())
        .unwrap_or_default();
    (code, views)
}

#[test]
fn a_tenant_file_that_changes_is_applied_while_serve_runs() {
    let s = Scratch::new("serve-tenant-file");
    std::fs::create_dir_all(s.path("d/out")).unwrap();
    std::fs::create_dir_all(s.path("tenants")).unwrap();
    s.write("d/tail.jsonl", &lines(10));
    s.write("d/idle.jsonl", "");
    let follow = |name: &str, component: &str, config: &str, limits: &str| {
        tenant_pipeline(component, config, &format!("{name}.jsonl"), "commit_interval = \"50ms\"")
            .replace(&format!("path = \"{name}.jsonl\""), &format!("path = \"{name}.jsonl\"\nfollow = true"))
            .replace("[[sink]]\n", &format!("[[sink]]\nlimits = {{ {limits} }}\n"))
    };
    s.write("d/tail.toml", &follow("tail", "builtin:file", "path = \"/out/tail.jsonl\"", "memory = \"64MiB\""));
    // Its own output: two pipelines never write into one directory.
    s.write(
        "d/idle.toml",
        &follow("idle", "builtin:blackhole", "", "").replace("host = \"out\"", "host = \"idle-out\""),
    );
    let tenant = |token: &str, limits: &str, pipelines: &[&str]| {
        let mut text = format!(
            "[tenant]\nname = \"d\"\ntoken = \"{token}\"\n\n[limits]\n{limits}\n\n[grants]\ndirs = [\"../d\"]\n"
        );
        for p in pipelines {
            text += &format!("\n[[pipeline]]\nfile = \"../d/{p}.toml\"\n");
        }
        text
    };
    const D1: &str = "tenant-d-first-token-0123";
    const D2: &str = "tenant-d-second-token-0123";
    s.write("tenants/d.toml", &tenant(D1, "", &["tail"]));
    s.write("op.token", OPERATOR);
    let port = free_port();
    let mut serving = Serving::start(&s, port, &["--watch", "100ms", "--operator-token-file", "op.token"]);
    let until = |what: &str, token: &str, done: &dyn Fn(u16, &Views) -> bool| {
        poll(&s, what, || {
            let (code, views) =
                if TcpStream::connect(("127.0.0.1", port)).is_ok() { listed(port, token) } else { (0, vec![]) };
            if done(code, &views) { Ok(views) } else { Err(format!("{code} {views:?}")) }
        })
    };
    let state = |views: &Views, name: &str| -> Option<(String, u64)> {
        views
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| (v["state"].as_str().unwrap_or_default().into(), v["committed"].as_u64().unwrap_or(0)))
    };
    until("the followed pipeline takes its 10 lines", D1, &|_, v| state(v, "tail") == Some(("running".into(), 10)));

    // A new token, a new pipeline, and a memory ceiling the running
    // pipeline's 64 MiB is above: its reload is refused, it goes on.
    s.write("tenants/d.toml", &tenant(D2, "memory = \"32MiB\"", &["tail", "idle"]));
    let views = until("the new tenant file", D2, &|code, v| {
        code == 200
            && state(v, "idle").is_some_and(|(s, _)| s == "running")
            && v.iter().any(|(n, p)| n == "tail" && p["reload_error"].as_str().is_some_and(|e| e.contains("ceiling")))
    });
    let tail = &views.iter().find(|(n, _)| n == "tail").unwrap().1;
    let e = tail["reload_error"].as_str().unwrap();
    assert!(e.contains("sink \"out\": limits.memory = 64 MiB is above tenant d's ceiling of 32 MiB"), "{e}");
    assert_eq!(http(port, "GET", "/v1/pipelines", Some(D1)).0, 401, "the old token no longer works");
    let mut file = std::fs::OpenOptions::new().append(true).open(s.path("d/tail.jsonl")).unwrap();
    std::io::Write::write_all(&mut file, b"{\"id\":10}\n").unwrap();
    until("the running version to go on", D2, &|_, v| state(v, "tail") == Some(("running".into(), 11)));

    // A tenant file that does not parse: the tenant goes on as it was.
    s.write("tenants/d.toml", "[tenant\n");
    let start = Instant::now();
    while !s.read("log.txt").contains("its tenant goes on as it was") {
        assert!(start.elapsed() < Duration::from_secs(30), "the bad file is reported; log:\n{}", s.read("log.txt"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(listed(port, D2).1.len(), 2);

    // A pipeline left out of the file stops; the file gone stops the tenant.
    s.write("tenants/d.toml", &tenant(D2, "memory = \"64MiB\"", &["tail"]));
    until("idle to go", D2, &|_, v| v.len() == 1 && v[0].0 == "tail");
    std::fs::remove_file(s.path("tenants/d.toml")).unwrap();
    until("the tenant to go", OPERATOR, &|code, v| code == 200 && v.is_empty());
    assert_eq!(http(port, "GET", "/v1/pipelines", Some(D2)).0, 401);
    assert_eq!(s.read("d/out/tail.jsonl"), lines(10) + "{\"id\":10}\n", "what it read, once");

    let _ = Command::new("kill").args(["-TERM", &serving.0.id().to_string()]).status();
    let status = serving.0.wait().expect("serve exits");
    assert!(status.success(), "{status}; log:\n{}", s.read("log.txt"));
}

#[test]
fn a_component_file_replaced_in_place_reloads_and_a_broken_one_rolls_back() {
    let s = Scratch::new("serve-component");
    std::fs::create_dir_all(s.path("e/out")).unwrap();
    std::fs::create_dir_all(s.path("tenants")).unwrap();
    s.write("e/in.jsonl", &lines(20));
    std::fs::copy(sinkbox_test_artifacts::WELL_BEHAVED, s.path("e/sink.wasm")).unwrap();
    s.write(
        "e/p.toml",
        &tenant_pipeline("sink.wasm", "out = \"/out/out.jsonl\"", "in.jsonl", "commit_interval = \"50ms\"")
            .replace("path = \"in.jsonl\"", "path = \"in.jsonl\"\nfollow = true"),
    );
    s.write(
        "tenants/e.toml",
        &format!(
            "[tenant]\ntoken = \"{TOKEN_C}\"\n\n[grants]\ndirs = [\"../e\"]\n\n[[pipeline]]\nfile = \"../e/p.toml\"\n"
        ),
    );
    let port = free_port();
    let _serving = Serving::start(&s, port, &["--watch", "100ms"]);
    listening(&s, port);
    wait_for(&s, port, "e/p", "the first 20 records", |v| v["committed"] == 20);
    // The same file, new bytes: a component that panics in open. The
    // running version is rolled back to, from the compiled component it
    // kept, and goes on.
    let new = std::fs::read(sinkbox_test_artifacts::PANIC_IN_OPEN).unwrap();
    std::fs::write(s.path("e/sink.wasm.new"), new).unwrap();
    std::fs::rename(s.path("e/sink.wasm.new"), s.path("e/sink.wasm")).unwrap();
    let rolled = wait_for(&s, port, "e/p", "a roll-back", |v| {
        v["reload_error"].as_str().is_some_and(|e| e.contains("rolled back")) && v["state"] == "running"
    });
    assert!(rolled["reload_error"].as_str().unwrap().contains("panics in open"), "{rolled}");
    let mut file = std::fs::OpenOptions::new().append(true).open(s.path("e/in.jsonl")).unwrap();
    std::io::Write::write_all(&mut file, lines(25).split_at(lines(20).len()).1.as_bytes()).unwrap();
    wait_for(&s, port, "e/p", "the old version to take 5 more", |v| v["committed"] == 25);
    // A working component again: it reloads and takes over.
    std::fs::copy(sinkbox_test_artifacts::WELL_BEHAVED, s.path("e/sink.wasm.new")).unwrap();
    std::fs::rename(s.path("e/sink.wasm.new"), s.path("e/sink.wasm")).unwrap();
    wait_for(&s, port, "e/p", "a reload", |v| v["reloads"] == 1 && v["reload_error"].is_null());
    assert_eq!(s.read("e/out/out.jsonl"), lines(25), "every record once across both reloads");
}
