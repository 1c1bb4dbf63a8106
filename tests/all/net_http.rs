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
        .flat_map(|body| ndjson(&Received { method: String::new(), path: String::new(), headers: vec![], body: body.clone() }))
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
    assert_eq!(requests.len(), n / 250);
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
    assert_eq!(status.sinks[0].retries, 3, "429, 503 and 500 each replay the checkpoint once");
    let requests = receiver.requests();
    // 8 requests deliver, 4 of the first checkpoint's went out again.
    assert_eq!(requests.len(), n / 250 + 4);
    assert_eq!(deduplicated(&requests), values(n));
    assert!(dead_letters(&s).is_empty());
}

#[test]
fn http_sink_retries_while_the_server_is_down() {
    let n = 1000;
    let s = Scratch::new("net-http-down");
    s.write("in.jsonl", &lines(n));
    let port = crate::servers::free_port();
    let origin = format!("http://127.0.0.1:{port}");
    // Nothing listens yet; the receiver comes up after a second.
    let later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        HttpReceiver::start_on(port)
    });
    let toml = pipeline("builtin:http", &http_config(&origin), &[origin.clone()], 500, "max_attempts = 50");
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
    let delivered: Vec<Value> = requests.iter().enumerate().filter(|(i, _)| *i != 1).flat_map(|(_, r)| ndjson(r)).collect();
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
    (0..n).map(|i| format!("{{\"id\":{i},\"host\":\"h{}\",\"load\":{i}.5,\"ts\":{}}}\n", i % 7, 1_700_000_000_000u64 + i as u64)).collect()
}

fn influx_query(port: u16, q: &str) -> Value {
    let path = format!("/query?db=metrics&epoch=ms&q={}", q.replace(' ', "+").replace('*', "%2A").replace(',', "%2C"));
    let (status, body) = crate::servers::http(port, "GET", &path, &[], b"");
    assert_eq!(status, 200, "{q}: {body}");
    serde_json::from_str(&body).expect("query answer is JSON")
}

/// The points of `users` as `[time, host, id, load]`, by time.
fn influx_points(port: u16) -> Vec<Value> {
    let answer = influx_query(port, "SELECT host, id, load FROM users");
    answer["results"][0]["series"][0]["values"].as_array().cloned().unwrap_or_default()
}

fn create_database(port: u16) {
    let (status, body) = crate::servers::http(port, "POST", "/query?q=CREATE+DATABASE+metrics", &[], b"");
    assert_eq!(status, 200, "{body}");
}

fn influx_config(port: u16) -> String {
    format!(
        r#"url = "http://127.0.0.1:{port}", database = "metrics", measurement = "users", tag_keys = ["host"], field_keys = ["id", "load"], time_key = "ts", max_lines = 1000"#
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
    let later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        server.restart(crate::servers::influxdb_command(&dir, port, rpc_port));
        server
    });
    let toml = pipeline("builtin:influxdb", &influx_config(port), &[format!("http://127.0.0.1:{port}")], 1000, "max_attempts = 50");
    let (status, result) = s.run(&toml);
    let _server = later.join().expect("restart thread");
    result.expect("the pipeline recovers once the server is up");
    assert!(status.sinks[0].retries >= 1, "{status:?}");
    let dead = dead_letters(&s);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["offset"], 2500);
    let reason = dead[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("influxdb refused the point: HTTP 400: ") && reason.contains("field type conflict"), "{reason}");
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
    assert!(error.contains(&format!("the request to http://{}/write?db=metrics&precision=ms was denied", server.addr())), "{error}");
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
    let toml = pipeline("builtin:elasticsearch", &es_config(server.port), &[format!("http://{}", server.addr())], 2500, "");
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
    let later = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        server.restart(crate::servers::noida_command(&dir, port));
        server
    });
    let toml = pipeline("builtin:elasticsearch", &es_config(port), &[format!("http://127.0.0.1:{port}")], 1000, "max_attempts = 50");
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
    assert!(error.contains(&format!("the request to http://{}/_bulk?", server.addr())) && error.contains("was denied"), "{error}");
    assert_eq!(es_documents(server.port), Vec::new(), "nothing reached the server");
    assert_eq!(other.connections(), 0);
}
