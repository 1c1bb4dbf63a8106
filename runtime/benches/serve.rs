//! `sinkbox serve`, measured (`cargo bench -p sinkbox --bench serve`):
//!
//! - **Overhead**: one pipeline (JSON lines into `builtin:file`) under
//!   `sinkbox run` against the same pipeline under `sinkbox serve`,
//!   alternating, `ROUNDS` each; records per second from the first record
//!   to the last commit (the run's own `active` time in both).
//! - **Fairness**: a well-behaved tenant's checkpoint latency (from the
//!   accounting log) alone, then while a neighbour tenant's sink spins in
//!   every `add` until its wall-clock limit cuts it off, over and over.
//! - **Density**: `DENSITY` idle pipelines (a followed, empty file into
//!   the Rust `builtin:blackhole` sink, each with its instance open) in one
//!   process: resident memory of the whole process, and per pipeline.
//!
//! Prints a table (also written to `BENCHMARKS-serve.md`).
//! `SINKBOX_SERVE_BENCH_DENSITY` changes the pipeline count.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 3;
const RECORDS: u64 = 300_000;
const TOKEN: &str = "bench-operator-token-0123456789";

fn value(i: u64) -> String {
    format!(
        r#"{{"id":{i},"customer":"c-{:05}","amount":{}.{:02},"currency":"EUR","status":"paid"}}"#,
        i % 50_000,
        i % 10_000,
        i % 100
    )
}

fn write_input(path: &Path, n: u64) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("input"));
    for i in 0..n {
        writeln!(out, "{}", value(i)).expect("write");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn http(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.get(9..12)?.parse().ok()?;
    Some((code, response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

fn pipelines(port: u16) -> Vec<serde_json::Value> {
    match http(port, "/v1/pipelines") {
        Some((200, body)) => {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            v["pipelines"].as_array().cloned().unwrap_or_default()
        }
        _ => Vec::new(),
    }
}

struct Serving {
    child: Child,
    port: u16,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, extra: &[&str]) -> Serving {
    std::fs::write(dir.join("op.token"), TOKEN).expect("token");
    let port = free_port();
    let log = std::fs::File::create(dir.join("serve.log")).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_sinkbox"))
        .args(["--log", "warn", "serve", "tenants", "--operator-token-file", "op.token"])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("sinkbox serve starts");
    let serving = Serving { child, port };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "serve listens");
        std::thread::sleep(Duration::from_millis(20));
    }
    serving
}

fn tenant(dir: &Path, name: &str, pipelines: &[&str]) {
    let tenants = dir.join("tenants");
    std::fs::create_dir_all(&tenants).expect("tenants dir");
    let mut text = format!("[tenant]\ntoken = \"{name}-token-0123456789abcdef\"\n\n[grants]\ndirs = [\"../{name}\"]\n");
    for p in pipelines {
        write!(text, "\n[[pipeline]]\nfile = \"../{name}/{p}.toml\"\n").expect("fmt");
    }
    std::fs::write(tenants.join(format!("{name}.toml")), text).expect("tenant file");
}

fn pipeline_file(dir: &Path, source: &str, component: &str, config: &str, extra: &str) -> String {
    std::fs::create_dir_all(dir.join("out")).expect("out dir");
    format!(
        "[pipeline]\ncommit_every = 10000\n{extra}\n[source]\nkind = \"file\"\n{source}\n\n[[sink]]\nname = \"out\"\n\
         component = \"{component}\"\nconfig = {{ {config} }}\ngrants = {{ dirs = [{{ host = \"out\", guest = \"/out\", mode = \"rw\" }}] }}\n"
    )
}

/// The proportional set size (KiB) of `pid`: resident memory with pages
/// mapped several times (a component's memory image, mapped once per
/// instance) counted once.
fn pss(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l[4..].trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The resident and peak memory (KiB) and threads of `pid`.
fn proc_status(pid: u32) -> (u64, u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l[name.len()..].trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"), field("Threads:"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// `sinkbox run` and `sinkbox serve` on the same pipeline: records/s.
fn overhead(root: &Path) -> (f64, f64) {
    let (mut run, mut served) = (Vec::new(), Vec::new());
    let input = root.join("input.jsonl");
    write_input(&input, RECORDS);
    for round in 0..ROUNDS {
        // run
        let dir = root.join(format!("run-{round}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let source = format!("path = \"{}\"", input.display());
        std::fs::write(dir.join("p.toml"), pipeline_file(&dir, &source, "builtin:file", "path = \"/out/o.jsonl\"", ""))
            .expect("pipeline");
        let out = Command::new(env!("CARGO_BIN_EXE_sinkbox"))
            .args(["--log", "warn", "run", "p.toml", "--json", "--no-progress"])
            .current_dir(&dir)
            .output()
            .expect("sinkbox run");
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("run --json prints the status");
        run.push(status["read"].as_f64().unwrap_or(0.0) / status["active"].as_f64().unwrap_or(f64::NAN));
        // serve
        let dir = root.join(format!("serve-{round}"));
        let home = dir.join("t");
        std::fs::create_dir_all(&home).expect("dir");
        std::fs::write(
            home.join("p.toml"),
            pipeline_file(&home, &source, "builtin:file", "path = \"/out/o.jsonl\"", ""),
        )
        .expect("pipeline");
        tenant(&dir, "t", &["p"]);
        let serving = serve(&dir, &[]);
        let start = Instant::now();
        let view = loop {
            let list = pipelines(serving.port);
            if let Some(p) = list.first().filter(|p| p["state"] == "finished") {
                break p.clone();
            }
            assert!(start.elapsed() < Duration::from_secs(300), "the served pipeline finishes: {list:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        served.push(
            view["status"]["read"].as_f64().unwrap_or(0.0) / view["status"]["active"].as_f64().unwrap_or(f64::NAN),
        );
    }
    (median(run), median(served))
}

/// Checkpoint latencies (seconds) of tenant `good` from the accounting log.
fn latencies(log: &Path, tenant: &str) -> Vec<f64> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["tenant"] == tenant)
        .filter_map(|v| v["latency_seconds"].as_f64())
        .collect()
}

/// The well-behaved tenant's p50 and p99 checkpoint latency (ms), alone
/// and beside a spinning neighbour.
fn fairness(root: &Path) -> [(f64, f64, usize); 2] {
    let mut out = [(0.0, 0.0, 0); 2];
    for (i, spinner) in [false, true].into_iter().enumerate() {
        let dir = root.join(format!("fair-{i}"));
        let good = dir.join("good");
        std::fs::create_dir_all(&good).expect("dir");
        write_input(&good.join("in.jsonl"), 40_000);
        // 4,000 records a second, a checkpoint every 200: 200 checkpoints.
        let p = pipeline_file(&good, "path = \"in.jsonl\"", "builtin:file", "path = \"/out/o.jsonl\"", "")
            .replace("commit_every = 10000", "commit_every = 200\nbatch_size = 100");
        std::fs::write(good.join("p.toml"), p).expect("pipeline");
        tenant(&dir, "good", &["p"]);
        let tenant_file = dir.join("tenants/good.toml");
        let text = std::fs::read_to_string(&tenant_file).expect("tenant") + "\n[quotas]\nrecords_per_second = 4000\n";
        std::fs::write(&tenant_file, text).expect("tenant");
        if spinner {
            // Two pipelines (one per core) whose sink spins 450 ms in
            // every flush, every 10 records, under a 500 ms limit.
            // Each its own directory: two pipelines never share an output.
            let bad = dir.join("bad");
            for name in ["spin1", "spin2"] {
                let home = bad.join(name);
                std::fs::create_dir_all(&home).expect("dir");
                write_input(&home.join("in.jsonl"), 100_000);
                let config = format!("out = \"/out/{name}\", sleep_ms = 450");
                let p = pipeline_file(&home, "path = \"in.jsonl\"", sinkbox_test_artifacts::SLOW_FLUSH, &config, "")
                    .replace("commit_every = 10000", "commit_every = 10\nbatch_size = 10")
                    .replace("[[sink]]\n", "[[sink]]\nlimits = { timeout = \"500ms\" }\n");
                std::fs::write(home.join(format!("{name}.toml")), p).expect("pipeline");
            }
            tenant(&dir, "bad", &["spin1/spin1", "spin2/spin2"]);
        }
        let serving = serve(&dir, &[]);
        let start = Instant::now();
        loop {
            let list = pipelines(serving.port);
            let good = list.iter().find(|p| p["tenant"] == "good");
            if good.is_some_and(|p| p["state"] == "finished") {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(300), "the good pipeline finishes: {good:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        if spinner {
            for bad in pipelines(serving.port).into_iter().filter(|p| p["tenant"] == "bad") {
                let guest = bad["sinks"][0]["flush_time"].as_f64().unwrap_or(0.0);
                eprintln!("spinning neighbour {}: {} in {guest:.1} s of flush calls", bad["pipeline"], bad["state"]);
            }
        }
        drop(serving);
        let l = latencies(&dir.join("tenants/.sinkbox/accounting.jsonl"), "good");
        out[i] = (percentile(l.clone(), 0.5) * 1e3, percentile(l.clone(), 0.99) * 1e3, l.len());
    }
    out
}

/// Idle pipelines in one process: pipelines, RSS and PSS (MiB) with them
/// all open, RSS as it started listening, threads, seconds to open all.
fn density(root: &Path, count: usize) -> (usize, f64, f64, f64, u64, f64) {
    let dir = root.join("density");
    let per_tenant = 10;
    let mut names = Vec::new();
    for t in 0..count.div_ceil(per_tenant) {
        let name = format!("t{t:04}");
        let home = dir.join(&name);
        std::fs::create_dir_all(&home).expect("dir");
        std::fs::write(home.join("idle.jsonl"), "").expect("input");
        let mut files = Vec::new();
        for p in 0..per_tenant.min(count - t * per_tenant) {
            let text = pipeline_file(&home, "path = \"idle.jsonl\"\nfollow = true", "builtin:blackhole", "", "")
                .replace("grants = { dirs = [{ host = \"out\", guest = \"/out\", mode = \"rw\" }] }\n", "");
            std::fs::write(home.join(format!("p{p}.toml")), text).expect("pipeline");
            files.push(format!("p{p}"));
        }
        let refs: Vec<&str> = files.iter().map(String::as_str).collect();
        tenant(&dir, &name, &refs);
        names.push(name);
    }
    let start = Instant::now();
    let serving = serve(&dir, &[]);
    let pid = serving.child.id();
    let (rss_empty, _, _) = {
        // The process right after it listens, before most pipelines opened.
        proc_status(pid)
    };
    loop {
        let list = pipelines(serving.port);
        let open =
            list.iter().filter(|p| p["state"] == "running" && p["sinks"][0]["instances"].as_u64() >= Some(1)).count();
        if open == count {
            break;
        }
        let failed: Vec<_> = list.iter().filter(|p| p["state"] == "failed").take(3).collect();
        assert!(failed.is_empty(), "idle pipelines failed: {failed:?}");
        assert!(start.elapsed() < Duration::from_secs(600), "{open} of {count} pipelines open after 600 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let startup = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let (rss, _, threads) = proc_status(pid);
    (count, rss as f64 / 1024.0, pss(pid) as f64 / 1024.0, rss_empty as f64 / 1024.0, threads, startup)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let root = std::env::temp_dir().join(format!("sinkbox-serve-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("scratch");
    let count: usize = std::env::var("SINKBOX_SERVE_BENCH_DENSITY").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000);

    let (run, served) = overhead(&root);
    let fair = fairness(&root);
    let (n, rss, pss, rss_start, threads, startup) = density(&root, count);

    let mut table = String::new();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    writeln!(
        table,
        "`cargo bench -p sinkbox --bench serve` on {cores} cores; medians of {ROUNDS} alternating rounds.\n"
    )
    .unwrap();
    writeln!(table, "| measure | result |\n|---|---|").unwrap();
    writeln!(table, "| overhead: `sinkbox run`, {RECORDS} records into `builtin:file` | {run:.0} records/s |").unwrap();
    writeln!(
        table,
        "| overhead: the same pipeline under `sinkbox serve` | {served:.0} records/s ({:.2}x of run) |",
        served / run
    )
    .unwrap();
    let [(p50a, p99a, na), (p50b, p99b, nb)] = fair;
    writeln!(
        table,
        "| fairness: checkpoint latency alone (p50 / p99, {na} checkpoints) | {p50a:.1} ms / {p99a:.1} ms |"
    )
    .unwrap();
    writeln!(
        table,
        "| fairness: beside a tenant spinning in every call (p50 / p99, {nb} checkpoints) | {p50b:.1} ms / {p99b:.1} ms (p99 +{:.1} ms) |",
        p99b - p99a
    )
    .unwrap();
    writeln!(
        table,
        "| density: {n} idle pipelines (a followed empty file into an open `builtin:blackhole` instance each) | \
         {rss:.0} MiB resident (VmRSS; {:.0} KiB per pipeline), {pss:.0} MiB proportional (PSS: shared pages once; \
         {:.0} KiB per pipeline); {rss_start:.0} MiB as it started listening |",
        rss * 1024.0 / n as f64,
        pss * 1024.0 / n as f64
    )
    .unwrap();
    writeln!(table, "| density: threads, and time until all were open | {threads} threads; {startup:.1} s |").unwrap();
    println!("{table}");
    let _ = std::fs::write(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../BENCHMARKS-serve.md"),
        format!("# `sinkbox serve`\n\n{table}"),
    );
    let _ = std::fs::remove_dir_all(&root);
}
