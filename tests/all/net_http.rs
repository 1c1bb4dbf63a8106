//! The HTTP-based built-in sinks (`http`, `influxdb`, `elasticsearch`,
//! `s3`) against real servers on 127.0.0.1: delivery end to end, failures
//! (server down then up, answers that mean slow down or refuse), and
//! egress that the pipeline does not grant.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::servers::{Answer, HttpReceiver, Received};
use crate::{Scratch, chain, lines};

/// A one-sink pipeline over `in.jsonl`: batches of 100, checkpoints of
/// `commit_every`, quick retries, the sink granted `hosts`.
fn pipeline(component: &str, config: &str, hosts: &[String], commit_every: usize, retry: &str) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    format!(
        r#"
[pipeline]
batch_size = 100
commit_every = {commit_every}
dead_letter = "dead.jsonl"
offsets = "offsets.json"

[source]
kind = "file"
path = "in.jsonl"

[retry]
base = "50ms"
cap = "500ms"
{retry}

[[sink]]
name = "out"
component = {component:?}
config = {{ {config} }}
grants = {{ hosts = [{hosts}] }}
"#,
        hosts = hosts.join(", "),
    )
}

fn dead_letters(scratch: &Scratch) -> Vec<Value> {
    scratch.read("dead.jsonl").lines().map(|l| serde_json::from_str(l).expect("dead letter is JSON")).collect()
}

/// The input's records as JSON values.
fn values(n: usize) -> Vec<Value> {
    lines(n).lines().map(|l| serde_json::from_str(l).expect("JSON")).collect()
}

/// The NDJSON body's values.
fn ndjson(request: &Received) -> Vec<Value> {
    std::str::from_utf8(&request.body)
        .expect("utf-8 body")
        .lines()
        .map(|l| serde_json::from_str(l).expect("an NDJSON line"))
        .collect()
}

/// The records the receiver holds once replays are dropped by idempotency
/// key (as a receiver would), ordered by id; panics if a replay under one
/// key carried different records.
fn deduplicated(requests: &[Received]) -> Vec<Value> {
    let mut by_key: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for request in requests {
        let key = request.header("idempotency-key").expect("every request has an idempotency key").to_string();
        if let Some(earlier) = by_key.insert(key.clone(), request.body.clone()) {
            assert_eq!(earlier, request.body, "a replay under key {key} sent other records");
        }
    }
    let mut all: Vec<Value> = by_key
        .values()
        .flat_map(|body| {
            ndjson(&Received { method: String::new(), path: String::new(), headers: vec![], body: body.clone() })
        })
        .collect();
    all.sort_by_key(|v| v["id"].as_u64());
    all
}

fn http_config(receiver_origin: &str) -> String {
    format!(
        r#"url = "{receiver_origin}/ingest?src=sinkbox", format = "ndjson", max_records = 250, auth = {{ kind = "bearer", token = "s3cret" }}, headers = {{ "x-team" = "data" }}"#
    )
}

#[test]
fn http_sink_posts_every_record_once_with_headers_and_idempotency_keys() {
    let n = 5000;
    let s = Scratch::new("net-http-e2e");
    s.write("in.jsonl", &lines(n));
    let receiver = HttpReceiver::start();
    let toml = pipeline("builtin:http", &http_config(&receiver.origin()), &[receiver.origin()], 1000, "");
    let start = Instant::now();
    let (status, result) = s.run(&toml);
    let elapsed = start.elapsed();
    result.expect("the pipeline runs");
    eprintln!("http sink: {n} records in {elapsed:?} ({:.0} records/s)", n as f64 / elapsed.as_secs_f64());
    assert_eq!(status.committed, n as u64);
    let requests = receiver.requests();
    let sink = &status.sinks[0];
    if sink.retries > 0 {
        // The sink is at least once: a checkpoint replayed after a failed
        // request (a loaded CI machine) resends its requests under the same
        // keys. Everything arrives, and duplicates are only those replays.
        eprintln!("replayed: {} retries, network {:?}", sink.retries, sink.net);
        assert_eq!(deduplicated(&requests), values(n));
        assert!(requests.len() > n / 250, "a replay resends");
        assert!(dead_letters(&s).is_empty());
        return;
    }
    assert_eq!(requests.len(), n / 250, "no retries, yet not one request per 250 records: {:?}", sink.net);
    let mut received = Vec::new();
    let mut keys = std::collections::BTreeSet::new();
    for request in &requests {
        assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/ingest?src=sinkbox"));
        assert_eq!(request.header("authorization"), Some("Bearer s3cret"));
        assert_eq!(request.header("x-team"), Some("data"));
        assert_eq!(request.header("content-type"), Some("application/x-ndjson"));
        // A file source's offsets are line numbers, here the ids.
        let body = ndjson(request);
        let key = request.header("idempotency-key").expect("idempotency key");
        let (first, last) = (&body[0]["id"], &body[body.len() - 1]["id"]);
        assert!(key.starts_with("sinkbox:/") && key.ends_with(&format!(":0:{first}-{last}")), "{key}");
        assert!(keys.insert(key.to_string()), "key {key} sent twice without a failure");
        received.extend(body);
    }
    assert_eq!(received, values(n), "the receiver holds exactly the input, in order");
    assert!(dead_letters(&s).is_empty());
}

#[test]
fn http_sink_waits_on_429_and_503_retries_500_and_loses_nothing() {
    let n = 2000;
    let s = Scratch::new("net-http-slow");
    s.write("in.jsonl", &lines(n));
    let receiver = HttpReceiver::start();
    receiver.script([
        Answer::new(200, "{}"),
        Answer::new(429, "slow down").header("retry-after", "1"),
        Answer::new(503, "busy").header("retry-after", "0"),
        Answer::new(500, "oops"),
    ]);
    let toml = pipeline("builtin:http", &http_config(&receiver.origin()), &[receiver.origin()], 1000, "");
    let start = Instant::now();
    let (status, result) = s.run(&toml);
    result.expect("the pipeline recovers");
    assert!(start.elapsed() >= Duration::from_secs(1), "the 429's Retry-After of 1 s was honoured");
    let retries = status.sinks[0].retries;
    let requests = receiver.requests();
    assert_eq!(deduplicated(&requests), values(n));
    assert!(dead_letters(&s).is_empty());
    if retries > 3 {
        // A loaded CI machine can time out one more request; that replay
        // resends under the same keys and loses nothing (checked above).
        eprintln!("replayed {retries} times, 3 of them scripted: network {:?}", status.sinks[0].net);
        assert!(requests.len() >= n / 250 + 4, "the scripted answers were all given");
        return;
    }
    assert_eq!(retries, 3, "429, 503 and 500 each replay the checkpoint once");
    // 8 requests deliver, 4 of the first checkpoint's went out again.
    assert_eq!(requests.len(), n / 250 + 4);
}

#[test]
fn http_sink_retries_while_the_server_is_down() {
    let n = 1000;
    let s = Scratch::new("net-http-down");
    s.write("in.jsonl", &lines(n));
    let port = crate::servers::free_port();
    let origin = format!("http://127.0.0.1:{port}");
    // The server is down (connections close at once); it comes up after
    // 1.5 s.
    let holder = crate::servers::PortHolder::hold(&[port]);
    let later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(holder);
        HttpReceiver::start_on(port)
    });
    let toml = pipeline("builtin:http", &http_config(&origin), std::slice::from_ref(&origin), 500, "max_attempts = 50");
    let (status, result) = s.run(&toml);
    let receiver = later.join().expect("receiver thread");
    result.expect("the pipeline recovers once the server is up");
    assert!(status.sinks[0].retries >= 1, "{status:?}");
    assert_eq!(deduplicated(&receiver.requests()), values(n));
    assert!(dead_letters(&s).is_empty());
}

#[test]
fn http_sink_dead_letters_the_records_a_4xx_refuses() {
    let n = 1000;
    let s = Scratch::new("net-http-400");
    s.write("in.jsonl", &lines(n));
    let receiver = HttpReceiver::start();
    receiver.script([Answer::new(200, "{}"), Answer::new(400, "{\"error\":\"field name is reserved\"}")]);
    let toml = pipeline("builtin:http", &http_config(&receiver.origin()), &[receiver.origin()], 1000, "");
    let (status, result) = s.run(&toml);
    result.expect("the pipeline carries on past refused records");
    assert_eq!(status.committed, n as u64);
    assert_eq!(status.sinks[0].rejected, 250);
    let dead = dead_letters(&s);
    assert_eq!(dead.len(), 250);
    let reason = format!(
        "POST {}/ingest?src=sinkbox refused the records: HTTP 400: {{\"error\":\"field name is reserved\"}}",
        receiver.origin()
    );
    for letter in &dead {
        assert_eq!(letter["reason"].as_str(), Some(reason.as_str()), "{letter}");
    }
    let refused: Vec<Value> =
        dead.iter().map(|d| serde_json::from_str(d["value"].as_str().expect("value")).expect("JSON")).collect();
    assert_eq!(refused, values(n)[250..500]);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 4, "refused records are not sent again");
    let delivered: Vec<Value> =
        requests.iter().enumerate().filter(|(i, _)| *i != 1).flat_map(|(_, r)| ndjson(r)).collect();
    assert_eq!(delivered.len(), 750);
}

#[test]
fn http_sink_to_a_host_not_granted_is_denied_and_sends_nothing() {
    let s = Scratch::new("net-http-denied");
    s.write("in.jsonl", &lines(100));
    let receiver = HttpReceiver::start();
    let other = HttpReceiver::start();
    // Granted: another port on the same address.
    let toml = pipeline("builtin:http", &http_config(&receiver.origin()), &[other.origin()], 1000, "max_attempts = 2");
    let (_, result) = s.run(&toml);
    let error = chain(&result.expect_err("the request is denied"));
    let url = format!("{}/ingest?src=sinkbox", receiver.origin());
    assert!(
        error.contains(&format!("the request to {url} was denied: its host is not in this sink's grants.hosts")),
        "{error}"
    );
    assert_eq!(receiver.connections(), 0, "nothing reached the server");
    assert_eq!(other.connections(), 0);
    assert!(dead_letters(&s).is_empty(), "a denied request blames no record");
}

/// `n` metric records `{"id":I,"host":"hI%7","load":I.5,"ts":T0+I}`.
fn metrics(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"id\":{i},\"host\":\"h{}\",\"load\":{i}.5,\"ts\":{}}}\n",
                i % 7,
                1_700_000_000_000u64 + i as u64
            )
        })
        .collect()
}

fn influx_query(port: u16, q: &str) -> Value {
    let path = format!("/query?db=metrics&epoch=ms&q={}", q.replace(' ', "+").replace('*', "%2A").replace(',', "%2C"));
    let (status, body) = crate::servers::http(port, "GET", &path, &[], b"");
    assert_eq!(status, 200, "{q}: {body}");
    serde_json::from_str(&body).expect("query answer is JSON")
}

/// The points of `people` as `[time, host, id, load]`, by time.
fn influx_points(port: u16) -> Vec<Value> {
    let answer = influx_query(port, "SELECT host, id, load FROM people");
    answer["results"][0]["series"][0]["values"].as_array().cloned().unwrap_or_default()
}

fn create_database(port: u16) {
    let (status, body) = crate::servers::http(port, "POST", "/query?q=CREATE+DATABASE+metrics", &[], b"");
    assert_eq!(status, 200, "{body}");
}

fn influx_config(port: u16) -> String {
    format!(
        r#"url = "http://127.0.0.1:{port}", database = "metrics", measurement = "people", tag_keys = ["host"], field_keys = ["id", "load"], time_key = "ts", max_lines = 1000"#
    )
}

fn expected_points(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| serde_json::json!([1_700_000_000_000u64 + i as u64, format!("h{}", i % 7), i, i as f64 + 0.5]))
        .collect()
}

#[test]
fn influxdb_sink_writes_every_record_as_a_point() {
    let n = 5000;
    let s = Scratch::new("net-influx-e2e");
    s.write("in.jsonl", &metrics(n));
    let server = crate::servers::influxdb(&s.path("influxdb"));
    create_database(server.port);
    let origin = format!("http://{}", server.addr());
    let toml = pipeline("builtin:influxdb", &influx_config(server.port), &[origin], 2500, "");
    let start = Instant::now();
    let (status, result) = s.run(&toml);
    let elapsed = start.elapsed();
    result.expect("the pipeline runs");
    eprintln!("influxdb sink: {n} records in {elapsed:?} ({:.0} records/s)", n as f64 / elapsed.as_secs_f64());
    assert_eq!(status.committed, n as u64);
    assert_eq!(influx_points(server.port), expected_points(n));
    assert!(dead_letters(&s).is_empty());
}

#[test]
fn influxdb_sink_retries_while_the_server_is_down_and_dead_letters_refused_points() {
    let n = 3000;
    let s = Scratch::new("net-influx-down");
    // One point whose field type conflicts with the others.
    let input = metrics(n).replace("\"load\":2500.5", "\"load\":\"high\"");
    s.write("in.jsonl", &input);
    let dir = s.path("influxdb");
    std::fs::create_dir_all(&dir).expect("dir");
    let (port, rpc_port) = (crate::servers::free_port(), crate::servers::free_port());
    let mut server =
        crate::servers::Server::start("influxd", crate::servers::influxdb_command(&dir, port, rpc_port), port, &dir);
    create_database(port);
    server.stop();
    let holder = crate::servers::PortHolder::hold(&[port, rpc_port]);
    let later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(holder);
        server.restart(crate::servers::influxdb_command(&dir, port, rpc_port));
        server
    });
    let toml = pipeline(
        "builtin:influxdb",
        &influx_config(port),
        &[format!("http://127.0.0.1:{port}")],
        1000,
        "max_attempts = 50",
    );
    let (status, result) = s.run(&toml);
    let _server = later.join().expect("restart thread");
    result.expect("the pipeline recovers once the server is up");
    assert!(status.sinks[0].retries >= 1, "{status:?}");
    let dead = dead_letters(&s);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["offset"], 2500);
    let reason = dead[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("influxdb refused the point: HTTP 400: ") && reason.contains("field type conflict"),
        "{reason}"
    );
    let mut want = expected_points(n);
    want.remove(2500);
    assert_eq!(influx_points(port), want);
}

#[test]
fn influxdb_sink_to_a_host_not_granted_is_denied_and_writes_nothing() {
    let s = Scratch::new("net-influx-denied");
    s.write("in.jsonl", &metrics(100));
    let server = crate::servers::influxdb(&s.path("influxdb"));
    create_database(server.port);
    let other = HttpReceiver::start();
    let toml = pipeline("builtin:influxdb", &influx_config(server.port), &[other.origin()], 1000, "max_attempts = 2");
    let (_, result) = s.run(&toml);
    let error = chain(&result.expect_err("the write is denied"));
    assert!(
        error.contains(&format!("the request to http://{}/write?db=metrics&precision=ms was denied", server.addr())),
        "{error}"
    );
    assert_eq!(influx_points(server.port), Vec::<Value>::new(), "nothing reached the server");
    assert_eq!(other.connections(), 0);
}

/// `n` envelope lines: key `doc-I`, value `{"id":I,"name":"user-I"}`.
fn keyed(n: usize) -> String {
    (0..n).map(|i| format!("{{\"key\":\"doc-{i}\",\"value\":{{\"id\":{i},\"name\":\"user-{i}\"}}}}\n")).collect()
}

/// The documents of `users` as `(_id, _source)`, by `_source.id`.
fn es_documents(port: u16) -> Vec<(String, Value)> {
    let (status, body) = crate::servers::http(port, "POST", "/users/_refresh", &[], b"");
    if status == 404 {
        return Vec::new();
    }
    assert_eq!(status, 200, "{body}");
    let (status, body) = crate::servers::http(port, "GET", "/users/_search?size=10000", &[], b"");
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("search answer");
    let mut docs: Vec<(String, Value)> = answer["hits"]["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|hit| (hit["_id"].as_str().expect("_id").to_string(), hit["_source"].clone()))
        .collect();
    docs.sort_by_key(|(_, source)| source["id"].as_u64());
    docs
}

fn expected_documents(n: usize) -> Vec<(String, Value)> {
    (0..n).map(|i| (format!("doc-{i}"), serde_json::json!({"id": i, "name": format!("user-{i}")}))).collect()
}

fn es_config(port: u16) -> String {
    format!(r#"url = "http://127.0.0.1:{port}", index = "users", max_records = 500"#)
}

#[test]
fn elasticsearch_sink_indexes_every_record_by_key() {
    let n = 5000;
    let s = Scratch::new("net-es-e2e");
    s.write("in.jsonl", &keyed(n));
    let server = crate::servers::noida(&s.path("noida"));
    let toml =
        pipeline("builtin:elasticsearch", &es_config(server.port), &[format!("http://{}", server.addr())], 2500, "");
    let start = Instant::now();
    let (status, result) = s.run(&toml);
    let elapsed = start.elapsed();
    result.expect("the pipeline runs");
    eprintln!("elasticsearch sink: {n} records in {elapsed:?} ({:.0} records/s)", n as f64 / elapsed.as_secs_f64());
    assert_eq!(status.committed, n as u64);
    assert_eq!(es_documents(server.port), expected_documents(n));
    assert!(dead_letters(&s).is_empty());
}

#[test]
fn elasticsearch_sink_retries_while_the_server_is_down_and_dead_letters_refused_documents() {
    let n = 2000;
    let s = Scratch::new("net-es-down");
    // One document whose `id` does not fit the mapping (a number).
    let input = keyed(n).replace("{\"id\":1500,", "{\"id\":\"fifteen hundred\",");
    s.write("in.jsonl", &input);
    let dir = s.path("noida");
    std::fs::create_dir_all(&dir).expect("dir");
    let port = crate::servers::free_port();
    let mut server = crate::servers::Server::start("noida-db", crate::servers::noida_command(&dir, port), port, &dir);
    server.stop();
    let holder = crate::servers::PortHolder::hold(&[port]);
    let later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(holder);
        server.restart(crate::servers::noida_command(&dir, port));
        server
    });
    let toml = pipeline(
        "builtin:elasticsearch",
        &es_config(port),
        &[format!("http://127.0.0.1:{port}")],
        1000,
        "max_attempts = 50",
    );
    let (status, result) = s.run(&toml);
    let _server = later.join().expect("restart thread");
    result.expect("the pipeline recovers once the server is up");
    assert!(status.sinks[0].retries >= 1, "{status:?}");
    let dead = dead_letters(&s);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["offset"], 1500);
    let reason = dead[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("elasticsearch refused the document (status 400): document_parsing_exception: ")
            && reason.contains("failed to parse field [id]"),
        "{reason}"
    );
    let mut want = expected_documents(n);
    want.remove(1500);
    assert_eq!(es_documents(port), want);
}

#[test]
fn elasticsearch_sink_to_a_host_not_granted_is_denied_and_writes_nothing() {
    let s = Scratch::new("net-es-denied");
    s.write("in.jsonl", &keyed(100));
    let server = crate::servers::noida(&s.path("noida"));
    let other = HttpReceiver::start();
    let toml = pipeline("builtin:elasticsearch", &es_config(server.port), &[other.origin()], 1000, "max_attempts = 2");
    let (_, result) = s.run(&toml);
    let error = chain(&result.expect_err("the bulk request is denied"));
    assert!(
        error.contains(&format!("the request to http://{}/_bulk?", server.addr())) && error.contains("was denied"),
        "{error}"
    );
    assert_eq!(es_documents(server.port), Vec::new(), "nothing reached the server");
    assert_eq!(other.connections(), 0);
}

pub(crate) const S3_ACCESS_KEY: &str = "AKIDSINKBOXTEST";
pub(crate) const S3_SECRET_KEY: &str = "sinkbox-test-secret";

/// A SigV4-signed request to the S3 API on 127.0.0.1:`port`, with the
/// s3 sink's own signer (checked against AWS's test vectors).
fn s3_request(port: u16, method: &str, path: &str, query: &[(&str, &str)], body: &[u8]) -> (u16, Vec<u8>) {
    use sinkbox_sink_s3::sigv4;
    let credentials = sigv4::Credentials {
        access_key_id: S3_ACCESS_KEY.into(),
        secret_access_key: S3_SECRET_KEY.into(),
        session_token: None,
    };
    let host = format!("127.0.0.1:{port}");
    let path = sigv4::encode_path(path);
    let hash = sigv4::sha256_hex(body);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let date = sigv4::amz_date(now);
    let headers = [("x-amz-content-sha256", hash.as_str()), ("x-amz-date", date.as_str())];
    let authorization = sigv4::authorization(
        &credentials,
        &sigv4::Signable {
            method,
            host: &host,
            path: &path,
            query,
            headers: &headers,
            payload_hash: &hash,
            amz_date: &date,
            region: "us-east-1",
            service: "s3",
        },
    );
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={}", sigv4::encode(v, true))).collect();
    let target = if query.is_empty() { path } else { format!("{path}?{}", query.join("&")) };
    let mut all = headers.to_vec();
    all.push(("authorization", &authorization));
    crate::servers::http_bytes(port, method, &target, &all, body)
}

/// SeaweedFS with SigV4 credentials in `dir`; returns once a PUT into
/// bucket `events` succeeds (its volumes take a few seconds).
pub(crate) fn seaweedfs(dir: &std::path::Path) -> (crate::servers::Server, [u16; 7]) {
    std::fs::create_dir_all(dir).expect("dir");
    let (port, ports) = (crate::servers::free_port(), crate::servers::seaweedfs_ports());
    let command = crate::servers::seaweedfs_command(dir, port, ports, S3_ACCESS_KEY, S3_SECRET_KEY);
    let server = crate::servers::Server::start("seaweedfs", command, port, dir);
    s3_wait_ready(&server);
    (server, ports)
}

fn s3_wait_ready(server: &crate::servers::Server) {
    let port = server.port;
    let start = Instant::now();
    loop {
        let (status, body) = s3_request(port, "PUT", "/events/ready", &[], b"ok");
        if status == 200 {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "seaweedfs is not ready: {status} {}\nthe end of its log:\n{}",
            String::from_utf8_lossy(&body),
            crate::servers::tail(&server.log(), 40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The objects under `prefix` in bucket `events`, by key.
fn s3_objects(port: u16, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let (status, body) = s3_request(port, "GET", "/events", &[("list-type", "2"), ("prefix", prefix)], b"");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let listing = String::from_utf8(body).expect("utf-8 listing");
    let keys: Vec<String> = listing
        .split("<Key>")
        .skip(1)
        .map(|rest| rest.split("</Key>").next().unwrap_or_default().to_string())
        .collect();
    keys.into_iter()
        .map(|key| {
            let (status, body) = s3_request(port, "GET", &format!("/events/{key}"), &[], b"");
            assert_eq!(status, 200, "{key}");
            (key, body)
        })
        .collect()
}

fn gunzip(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip");
    child.stdin.take().expect("stdin").write_all(bytes).expect("write to gzip");
    let out = child.wait_with_output().expect("gzip output");
    assert!(out.status.success(), "not gzip");
    String::from_utf8(out.stdout).expect("utf-8")
}

fn s3_config(port: u16, extra: &str) -> String {
    format!(
        r#"endpoint = "http://127.0.0.1:{port}", bucket = "events", access_key_id = "{S3_ACCESS_KEY}", secret_access_key = "{S3_SECRET_KEY}"{extra}"#
    )
}

#[test]
fn s3_sink_writes_one_gzipped_object_per_checkpoint() {
    let n = 5000;
    let s = Scratch::new("net-s3-e2e");
    s.write("in.jsonl", &lines(n));
    let (server, _) = seaweedfs(&s.path("seaweedfs"));
    let toml = pipeline(
        "builtin:s3",
        &s3_config(server.port, ", gzip = true"),
        &[format!("http://{}", server.addr())],
        1000,
        "",
    );
    let start = Instant::now();
    let (status, result) = s.run(&toml);
    let elapsed = start.elapsed();
    result.expect("the pipeline runs");
    eprintln!("s3 sink: {n} records in {elapsed:?} ({:.0} records/s)", n as f64 / elapsed.as_secs_f64());
    assert_eq!(status.committed, n as u64);
    let objects = s3_objects(server.port, "test/");
    let keys: Vec<&str> = objects.iter().map(|(k, _)| k.as_str()).collect();
    let want: Vec<String> = (0..5).map(|i| format!("test/out/0/{:020}.jsonl.gz", i * 1000)).collect();
    assert_eq!(keys, want);
    let text: String = objects.iter().map(|(_, body)| gunzip(body)).collect();
    assert_eq!(text, lines(n), "the objects hold exactly the input, in order");
    assert!(dead_letters(&s).is_empty());
}

#[test]
fn s3_sink_retries_while_the_server_is_down_and_dead_letters_bad_records() {
    let n = 2000;
    let s = Scratch::new("net-s3-down");
    // CSV needs objects; one record is an array.
    let input = lines(n).replace("{\"id\":1200,\"name\":\"user-1200\"}", "[1200]");
    s.write("in.jsonl", &input);
    let dir = s.path("seaweedfs");
    let (mut server, ports) = seaweedfs(&dir);
    let port = server.port;
    server.stop();
    let holder = crate::servers::PortHolder::hold(&[&[port][..], &ports[..]].concat());
    let later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        drop(holder);
        server.restart(crate::servers::seaweedfs_command(&dir, port, ports, S3_ACCESS_KEY, S3_SECRET_KEY));
        server
    });
    let config =
        s3_config(port, r#", format = "csv", columns = ["id", "name"], key = "csv/{partition}/{first}.{ext}""#);
    let toml = pipeline("builtin:s3", &config, &[format!("http://127.0.0.1:{port}")], 1000, "max_attempts = 100");
    let (status, result) = s.run(&toml);
    let _server = later.join().expect("restart thread");
    result.expect("the pipeline recovers once the server is up");
    assert!(status.sinks[0].retries >= 1, "{status:?}");
    let dead = dead_letters(&s);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["offset"], 1200);
    assert_eq!(dead[0]["reason"], "value is not a JSON object: expected `{` at byte 0");
    let objects = s3_objects(port, "csv/");
    let keys: Vec<&str> = objects.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, [format!("csv/0/{:020}.csv", 0), format!("csv/0/{:020}.csv", 1000)]);
    let rows = |range: std::ops::Range<usize>| -> String {
        let mut text = String::from("id,name\n");
        text.extend(range.filter(|&i| i != 1200).map(|i| format!("{i},user-{i}\n")));
        text
    };
    assert_eq!(String::from_utf8_lossy(&objects[0].1), rows(0..1000));
    assert_eq!(String::from_utf8_lossy(&objects[1].1), rows(1000..2000));
}

#[test]
fn s3_sink_with_a_wrong_secret_is_refused_by_sigv4() {
    let s = Scratch::new("net-s3-badkey");
    s.write("in.jsonl", &lines(10));
    let (server, _) = seaweedfs(&s.path("seaweedfs"));
    let config = s3_config(server.port, "").replace(S3_SECRET_KEY, "not-the-secret");
    let toml = pipeline("builtin:s3", &config, &[format!("http://{}", server.addr())], 1000, "max_attempts = 2");
    let (_, result) = s.run(&toml);
    let error = chain(&result.expect_err("the PUT is refused"));
    assert!(
        error.contains("PUT s3://events/test/out/0/00000000000000000000.jsonl was refused: HTTP 403: ")
            && error.contains("SignatureDoesNotMatch"),
        "{error}"
    );
    assert_eq!(s3_objects(server.port, "test/"), Vec::new());
    assert!(dead_letters(&s).is_empty(), "bad credentials blame no record");
}

#[test]
fn s3_sink_to_a_host_not_granted_is_denied_and_writes_nothing() {
    let s = Scratch::new("net-s3-denied");
    s.write("in.jsonl", &lines(100));
    let (server, _) = seaweedfs(&s.path("seaweedfs"));
    let other = HttpReceiver::start();
    let toml = pipeline("builtin:s3", &s3_config(server.port, ""), &[other.origin()], 1000, "max_attempts = 2");
    let (_, result) = s.run(&toml);
    let error = chain(&result.expect_err("the PUT is denied"));
    assert!(
        error.contains(&format!(
            "the request to http://{}/events/test/out/0/00000000000000000000.jsonl was denied",
            server.addr()
        )),
        "{error}"
    );
    assert_eq!(s3_objects(server.port, "test/"), Vec::new(), "nothing reached the server");
    assert_eq!(other.connections(), 0);
}
