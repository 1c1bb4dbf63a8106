//! The network sinks against their real servers on 127.0.0.1, each next to
//! the same server fed by its own bulk path (`psql \copy`, `redis-cli
//! --pipe`, `mosquitto_pub -l`, one `curl` of the whole body), so the table
//! shows how close the sandboxed sink gets to the destination's own limit.
//!
//! `cargo bench -p sinkbox --bench net` prints the table and writes it to
//! `BENCHMARKS-net.md`. Both sides of a row run in the same process, one
//! after the other, on the same records; a server missing from the machine
//! fails its row with the package to install (`bash .ci/setup` installs
//! them all).

#[path = "../../tests/all/servers.rs"]
#[allow(dead_code)]
mod servers;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use servers::{HttpReceiver, Mosquitto, Postgres, Redis, Server};
use sinkbox::{Control, Engine, EngineOptions, PipelineFile};

/// Records per run.
const N: usize = 20_000;

/// One record: the same JSON for every sink.
fn record(i: usize) -> String {
    format!(
        r#"{{"id":{i},"name":"user-{i}","host":"h{}","load":{}.5,"ts":{}}}"#,
        i % 8,
        i % 100,
        1_700_000_000_000u64 + i as u64
    )
}

struct Row {
    sink: &'static str,
    sinkbox: Duration,
    native: &'static str,
    native_time: Duration,
}

/// One row of the table: its name (for the filter) and how to measure it.
type RowFn = (&'static str, fn(&Bench) -> Row);

struct Bench {
    dir: PathBuf,
    engine: Engine,
    input: String,
}

impl Bench {
    /// Runs one sink over the N records and returns the wall time of the
    /// whole pipeline (instantiate, open, every batch, flushes, close).
    fn run(&self, name: &str, component: &str, config: &str, host: &str) -> Duration {
        let dir = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("in.jsonl"), &self.input).expect("input");
        let toml = format!(
            r#"
[pipeline]
name = "bench-{name}"
resume = false

[source]
kind = "file"
path = "in.jsonl"

[[sink]]
name = "{name}"
component = "{component}"
config = '''{config}'''
grants = {{ hosts = ["{host}"] }}
"#
        );
        let file = PipelineFile::parse(&toml, "bench.toml").expect("pipeline parses");
        let pipeline = file.build(&self.engine, &dir, "bench").expect("pipeline builds");
        let start = Instant::now();
        let (status, result) = pipeline.run(&Control::default());
        let elapsed = start.elapsed();
        if let Err(e) = result {
            panic!("{name}: {e}");
        }
        assert_eq!(status.committed, N as u64, "{name}: every record committed");
        elapsed
    }
}

/// Runs a command, with `stdin` from a file when given, and returns its
/// wall time; fails with its output if it fails.
fn timed(command: &mut Command, stdin: Option<&Path>) -> Duration {
    if let Some(path) = stdin {
        command.stdin(std::fs::File::open(path).expect("stdin file"));
    } else {
        command.stdin(Stdio::null());
    }
    let start = Instant::now();
    let output = command.output().expect("run the native tool");
    let elapsed = start.elapsed();
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    elapsed
}

fn curl() -> Command {
    let mut curl = Command::new(servers::program("curl", "curl", &[]));
    // No `Expect: 100-continue`: curl would wait up to a second for a
    // server that does not answer it before sending a large body.
    curl.args(["-sS", "--fail-with-body", "-o", "/dev/null", "-H", "Expect:"]);
    curl
}

fn postgres(bench: &Bench) -> Row {
    let pg = Postgres::start();
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL)");
    let config = format!(
        r#"{{"host":"127.0.0.1","port":{},"user":"sinkbox","password":"sinkbox-pw","table":"t","columns":["id","name"]}}"#,
        pg.server.port
    );
    let sinkbox = bench.run("postgres", "builtin:postgres", &config, &format!("tcp://{}", pg.server.addr()));
    assert_eq!(pg.psql("SELECT count(*) FROM t").trim(), N.to_string());
    pg.psql("TRUNCATE t");
    let csv = bench.dir.join("rows.csv");
    std::fs::write(&csv, (0..N).map(|i| format!("{i},user-{i}\n")).collect::<String>()).expect("csv");
    let native = Instant::now();
    pg.psql(&format!("\\copy t (id, name) FROM '{}' WITH (FORMAT csv)", csv.display()));
    let native_time = native.elapsed();
    assert_eq!(pg.psql("SELECT count(*) FROM t").trim(), N.to_string());
    Row { sink: "postgres (insert)", sinkbox, native: "psql \\copy", native_time }
}

fn redis(bench: &Bench) -> Row {
    let redis = Redis::start();
    let config = format!(r#"{{"host":"127.0.0.1","port":{},"key":"bench"}}"#, redis.server.port);
    let sinkbox = bench.run("redis", "builtin:redis", &config, &format!("tcp://{}", redis.server.addr()));
    assert_eq!(redis.cli(&["XLEN", "bench"]).trim(), N.to_string());
    redis.cli(&["DEL", "bench"]);
    // The same commands in RESP, through redis-cli's own pipelining.
    let mut resp = String::new();
    for i in 0..N {
        let value = record(i);
        for (n, arg) in ["XADD", "bench", "*", "value", value.as_str()].iter().enumerate() {
            if n == 0 {
                let _ = write!(resp, "*5\r\n");
            }
            let _ = write!(resp, "${}\r\n{arg}\r\n", arg.len());
        }
    }
    let file = bench.dir.join("redis.resp");
    std::fs::write(&file, resp).expect("resp");
    let mut cli = Command::new(servers::program("redis-cli", "redis-tools", &[]));
    cli.args(["-h", "127.0.0.1", "-p", &redis.server.port.to_string(), "--pipe"]);
    let native_time = timed(&mut cli, Some(&file));
    assert_eq!(redis.cli(&["XLEN", "bench"]).trim(), N.to_string());
    Row { sink: "redis (xadd)", sinkbox, native: "redis-cli --pipe", native_time }
}

fn mqtt(bench: &Bench) -> Row {
    let broker = Mosquitto::start(&[]);
    let config = format!(r#"{{"host":"127.0.0.1","port":{},"topic":"bench","qos":1}}"#, broker.server.port);
    let sinkbox = bench.run("mqtt", "builtin:mqtt", &config, &format!("tcp://{}", broker.server.addr()));
    let file = bench.dir.join("mqtt.lines");
    std::fs::write(&file, (0..N).map(|i| record(i) + "\n").collect::<String>()).expect("lines");
    let mut publish = Command::new(servers::program("mosquitto_pub", "mosquitto-clients", &[]));
    publish.args(["-h", "127.0.0.1", "-p", &broker.server.port.to_string(), "-q", "1", "-t", "bench", "-l"]);
    let native_time = timed(&mut publish, Some(&file));
    Row { sink: "mqtt (QoS 1)", sinkbox, native: "mosquitto_pub -l -q 1", native_time }
}

fn http(bench: &Bench) -> Row {
    let receiver = HttpReceiver::start();
    let config = format!(r#"{{"url":"{}/ingest","format":"ndjson"}}"#, receiver.origin());
    let sinkbox = bench.run("http", "builtin:http", &config, &receiver.origin());
    let file = bench.dir.join("body.ndjson");
    std::fs::write(&file, &bench.input).expect("body");
    let native_time = timed(
        curl()
            .args(["-H", "content-type: application/x-ndjson", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(format!("{}/ingest", receiver.origin())),
        None,
    );
    Row { sink: "http (ndjson)", sinkbox, native: "curl, one body", native_time }
}

fn influxdb(bench: &Bench) -> Row {
    let dir = bench.dir.join("influxdb-server");
    std::fs::create_dir_all(&dir).expect("dir");
    let server: Server = servers::influxdb(&dir);
    let (status, body) = servers::http(server.port, "POST", "/query?q=CREATE+DATABASE+bench", &[], b"");
    assert_eq!(status, 200, "{body}");
    let origin = format!("http://{}", server.addr());
    let config = format!(
        r#"{{"url":"{origin}","database":"bench","measurement":"people","tag_keys":["host"],"field_keys":["id","load"],"time_key":"ts"}}"#
    );
    let sinkbox = bench.run("influxdb", "builtin:influxdb", &config, &origin);
    let file = bench.dir.join("points.lp");
    let points: String = (0..N)
        .map(|i| format!("people2,host=h{} id={i}i,load={}.5 {}\n", i % 8, i % 100, 1_700_000_000_000u64 + i as u64))
        .collect();
    std::fs::write(&file, points).expect("points");
    let native_time = timed(
        curl()
            .args(["--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(format!("{origin}/write?db=bench&precision=ms")),
        None,
    );
    Row { sink: "influxdb (v1 /write)", sinkbox, native: "curl, one body", native_time }
}

fn elasticsearch(bench: &Bench) -> Row {
    let dir = bench.dir.join("noida-server");
    std::fs::create_dir_all(&dir).expect("dir");
    let server = servers::noida(&dir);
    let origin = format!("http://{}", server.addr());
    let config = format!(r#"{{"url":"{origin}","index":"bench"}}"#);
    let sinkbox = bench.run("elasticsearch", "builtin:elasticsearch", &config, &origin);
    let file = bench.dir.join("bulk.ndjson");
    let body: String =
        (0..N).map(|i| format!("{{\"index\":{{\"_index\":\"bench2\",\"_id\":\"{i}\"}}}}\n{}\n", record(i))).collect();
    std::fs::write(&file, body).expect("bulk");
    let native_time = timed(
        curl()
            .args(["-H", "content-type: application/x-ndjson", "--data-binary"])
            .arg(format!("@{}", file.display()))
            .arg(format!("{origin}/_bulk")),
        None,
    );
    Row { sink: "elasticsearch (noida-db)", sinkbox, native: "curl _bulk, one body", native_time }
}

fn s3(bench: &Bench) -> Row {
    const KEY: &str = "AKIDSINKBOXBENCH";
    const SECRET: &str = "sinkbox-bench-secret";
    let dir = bench.dir.join("seaweedfs-server");
    std::fs::create_dir_all(&dir).expect("dir");
    let (port, ports) = (servers::free_port(), servers::seaweedfs_ports());
    let _server = Server::start("seaweedfs", servers::seaweedfs_command(&dir, port, ports, KEY, SECRET), port, &dir);
    let origin = format!("http://127.0.0.1:{port}");
    // SeaweedFS answers `Expect: 100-continue` itself, and curl signs the
    // headers it sends, so this request keeps curl's defaults.
    let put = |path: &str, file: &Path| {
        Command::new(servers::program("curl", "curl", &[]))
            .args([
                "-sS",
                "--fail-with-body",
                "-o",
                "/dev/null",
                "--aws-sigv4",
                "aws:amz:us-east-1:s3",
                "--user",
                &format!("{KEY}:{SECRET}"),
                "-T",
            ])
            .arg(file)
            .arg(format!("{origin}{path}"))
            .output()
            .expect("curl")
    };
    // The S3 gateway answers a while after its port opens.
    let ready = bench.dir.join("ready");
    std::fs::write(&ready, "ok").expect("ready");
    let start = Instant::now();
    while !put("/events/ready", &ready).status.success() {
        assert!(start.elapsed() < Duration::from_secs(60), "seaweedfs is not ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    let config = format!(
        r#"{{"endpoint":"{origin}","bucket":"events","access_key_id":"{KEY}","secret_access_key":"{SECRET}"}}"#
    );
    let sinkbox = bench.run("s3", "builtin:s3", &config, &origin);
    let file = bench.dir.join("object.jsonl");
    std::fs::write(&file, &bench.input).expect("object");
    let native = Instant::now();
    let output = put("/events/native.jsonl", &file);
    let native_time = native.elapsed();
    assert!(output.status.success(), "curl PUT failed: {}", String::from_utf8_lossy(&output.stderr));
    Row { sink: "s3 (SeaweedFS, jsonl)", sinkbox, native: "curl --aws-sigv4 PUT", native_time }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument picks rows.
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let dir = std::env::temp_dir().join(format!("sinkbox-bench-net-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    let engine = Engine::new(EngineOptions::default().cache_dir(Some(dir.join("cache")))).expect("engine");
    let input: String = (0..N).map(|i| record(i) + "\n").collect();
    let bench = Bench { dir: dir.clone(), engine, input };
    let all: [RowFn; 7] = [
        ("postgres", postgres),
        ("redis", redis),
        ("mqtt", mqtt),
        ("http", http),
        ("influxdb", influxdb),
        ("elasticsearch", elasticsearch),
        ("s3", s3),
    ];
    let mut table = String::new();
    let _ = writeln!(table, "| sink | sinkbox records/s | native path | native records/s | sinkbox / native |");
    let _ = writeln!(table, "|---|---:|---|---:|---:|");
    println!("{N} records of about 90 bytes per run\n");
    for (name, row) in all {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let row = row(&bench);
        let rate = |d: Duration| N as f64 / d.as_secs_f64();
        let line = format!(
            "| {} | {:.0} | {} | {:.0} | {:.2} |",
            row.sink,
            rate(row.sinkbox),
            row.native,
            rate(row.native_time),
            row.native_time.as_secs_f64() / row.sinkbox.as_secs_f64()
        );
        println!("{line}");
        let _ = writeln!(table, "{line}");
    }
    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let report = format!(
        "# Network sinks against their own servers\n\n`cargo bench -p sinkbox --bench net` on {} cores ({machine}); {N} records of about 90 bytes, \
         the server on the same machine. The sinkbox side is a whole `sinkbox run` at default settings (batches of 1,000, \
         a checkpoint every 10,000 records), from instantiation to the last commit; the native side is the server's own \
         bulk path on the same records. The last column is the share of the native rate the sandboxed sink reaches.\n\n{table}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if filter.is_empty() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../BENCHMARKS-net.md");
        std::fs::write(&path, report).expect("write BENCHMARKS-net.md");
        println!("\nwrote {}", path.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
