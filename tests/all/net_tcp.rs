//! The raw-TCP built-in sinks (`postgres`, `redis`, `mqtt`) against real
//! servers on 127.0.0.1: their protocol code natively, then whole
//! pipelines through the sandbox with `grants.hosts`.

use sinkbox_sdk::testing::{Entry, batch, context};
use sinkbox_sdk::{Error, Rejection, Sink};

use std::time::Duration;

use crate::servers::{Mosquitto, Postgres, Proxy, Redis, Subscriber};
use crate::{Scratch, chain};

mod postgres {
    use super::*;
    use sinkbox_sink_postgres::{Config, Conn, Login, PgError, PostgresSink};

    fn login<'a>(pg: &'a Postgres, addr: &'a str, user: &'a str, password: Option<&'a str>) -> Login<'a> {
        let _ = pg;
        Login { addr, user, password, database: "sinkbox" }
    }

    #[test]
    fn connects_with_scram_md5_and_trust_and_names_a_bad_password() {
        let pg = Postgres::start();
        let addr = pg.server.addr();
        for (user, password) in [("sinkbox", Some("sinkbox-pw")), ("md5user", Some("md5-pw")), ("trustuser", None)] {
            let mut conn = Conn::connect(&login(&pg, &addr, user, password))
                .unwrap_or_else(|e| panic!("{user} cannot connect: {e}"));
            assert_eq!(conn.simple("SELECT 1").expect("query"), vec!["SELECT 1".to_string()], "{user}");
        }
        for (user, password) in [("sinkbox", "wrong"), ("md5user", "wrong")] {
            let err = Conn::connect(&login(&pg, &addr, user, Some(password))).err().expect("refused");
            assert_eq!(
                err.to_string(),
                format!("password authentication failed for user \"{user}\" (SQLSTATE 28P01)"),
                "{user}"
            );
        }
        let err = Conn::connect(&login(&pg, &addr, "sinkbox", None)).err().expect("refused");
        assert!(matches!(err, PgError::Protocol(_)));
        assert_eq!(err.to_string(), "the server asks for a password for user \"sinkbox\" and the config has none");
    }

    fn config(pg: &Postgres, extra: &str) -> Config {
        let text = format!(
            r#"{{"host":"127.0.0.1","port":{},"user":"sinkbox","password":"sinkbox-pw","table":"t","columns":["id","name"]{extra}}}"#,
            pg.server.port
        );
        serde_json::from_str(&text).expect("config")
    }

    #[test]
    fn the_sink_commits_at_flush_rolls_back_on_abort_and_rejects_bad_rows_exactly() {
        let pg = Postgres::start();
        pg.psql("CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL CHECK (name <> 'bad'))");
        let mut sink = PostgresSink::open(config(&pg, ""), &context("in", 0)).expect("open");
        let count = || pg.psql("SELECT count(*) FROM t").trim().to_string();

        sink.add_batch(batch("in", 0, &[(0, None, br#"{"id":0,"name":"a"}"#), (1, None, br#"{"id":1,"name":"b"}"#)]))
            .expect("add");
        assert_eq!(count(), "0", "nothing is visible before the commit");
        sink.flush().expect("flush");
        assert_eq!(count(), "2");

        sink.add_batch(batch("in", 0, &[(2, None, br#"{"id":2,"name":"c"}"#)])).expect("add");
        sink.abort();
        sink.flush().expect("an empty flush");
        assert_eq!(count(), "2", "abort rolled the open transaction back");

        let rows: &[Entry] = &[
            (3, None, br#"{"id":3,"name":"d"}"#),
            (4, None, br#"{"id":1,"name":"dup"}"#),
            (5, None, br#"{"id":5,"name":"bad"}"#),
            (6, None, br#"{"id":"six","name":"e"}"#),
            (7, None, br#"[7]"#),
            (8, None, br#"{"id":8}"#),
            (9, None, br#"{"id":9,"name":"f"}"#),
        ];
        let rejected = match sink.add_batch(batch("in", 0, rows)) {
            Err(Error::Rejected(list)) => list,
            other => panic!("expected rejections, got {other:?}"),
        };
        let reasons: Vec<(u64, &str)> = rejected.iter().map(|r: &Rejection| (r.offset, r.reason.as_str())).collect();
        assert_eq!(
            reasons,
            vec![
                (7, "value is not a JSON object but an array"),
                (
                    4,
                    "postgres refused the row: duplicate key value violates unique constraint \"t_pkey\" (SQLSTATE \
                     23505): Key (id)=(1) already exists."
                ),
                (
                    5,
                    "postgres refused the row: new row for relation \"t\" violates check constraint \"t_name_check\" \
                     (SQLSTATE 23514): Failing row contains (5, bad)."
                ),
                (6, "postgres refused the row: invalid input syntax for type integer: \"six\" (SQLSTATE 22P02)"),
                (
                    8,
                    "postgres refused the row: null value in column \"name\" of relation \"t\" violates not-null \
                     constraint (SQLSTATE 23502): Failing row contains (8, null)."
                ),
            ]
        );
        sink.flush().expect("flush");
        assert_eq!(pg.psql("SELECT id, name FROM t ORDER BY id"), "0|a\n1|b\n3|d\n9|f\n");
        let status = sink.status().expect("status");
        assert_eq!(status.written, 4);
        assert_eq!(status.custom, vec![("rows_refused".to_string(), 4)]);
        sink.close().expect("close");
    }

    #[test]
    fn upserts_make_replays_idempotent() {
        let pg = Postgres::start();
        pg.psql("CREATE TABLE t (id int PRIMARY KEY, name text)");
        let mut sink =
            PostgresSink::open(config(&pg, r#","mode":"upsert","key":["id"]"#), &context("in", 0)).expect("open");
        for _ in 0..2 {
            sink.add_batch(batch(
                "in",
                0,
                &[(0, None, br#"{"id":0,"name":"a"}"#), (1, None, br#"{"id":0,"name":"b"}"#)],
            ))
            .expect("add");
            sink.flush().expect("flush");
        }
        assert_eq!(pg.psql("SELECT id, name FROM t"), "0|b\n");
    }

    #[test]
    fn a_wrong_table_is_fatal_at_open_and_a_dead_server_retryable() {
        let mut pg = Postgres::start();
        let err = PostgresSink::open(config(&pg, ""), &context("in", 0)).err().expect("refused");
        let addr = pg.server.addr();
        assert_eq!(
            err,
            Error::fatal(format!(
                "postgres {addr}: cannot prepare `INSERT INTO \"t\" (\"id\", \"name\") VALUES ($1, $2)` on {addr}: \
                 relation \"t\" does not exist (SQLSTATE 42P01)"
            ))
        );
        pg.psql("CREATE TABLE t (id int PRIMARY KEY, name text)");
        let mut sink = PostgresSink::open(config(&pg, ""), &context("in", 0)).expect("open");
        sink.add_batch(batch("in", 0, &[(0, None, br#"{"id":0,"name":"a"}"#)])).expect("add");
        pg.stop();
        match sink.flush() {
            Err(Error::Retryable(m)) => assert!(m.starts_with(&format!("postgres {addr}: lost the connection")), "{m}"),
            other => panic!("expected retryable, got {other:?}"),
        }
        match PostgresSink::open(config(&pg, ""), &context("in", 0)) {
            Err(Error::Retryable(m)) => assert!(m.starts_with(&format!("postgres {addr}: cannot connect to")), "{m}"),
            other => panic!("expected retryable, got {:?}", other.err()),
        }
        pg.restart();
        assert_eq!(pg.psql("SELECT count(*) FROM t"), "0\n", "the lost transaction never committed");
    }
}

mod redis {
    use super::*;
    use sinkbox_sink_redis::{Config, RedisSink};

    fn config(redis: &Redis, extra: &str) -> Config {
        let text = format!(r#"{{"host":"127.0.0.1","port":{}{extra}}}"#, redis.server.port);
        serde_json::from_str(&text).expect("config")
    }

    #[test]
    fn xadd_set_and_hset_write_what_the_records_say_and_refuse_the_rest() {
        let redis = Redis::start();
        let mut sink = RedisSink::open(
            config(&redis, r#","key":"s:{partition}","format":"fields","maxlen":1000"#),
            &context("in", 2),
        )
        .expect("open");
        let rows: &[Entry] =
            &[(0, None, br#"{"id":1,"name":"a"}"#), (1, None, b"[1]"), (2, None, br#"{"id":2,"tags":["x"]}"#)];
        match sink.add_batch(batch("in", 2, rows)) {
            Err(Error::Rejected(list)) => assert_eq!(
                list,
                vec![Rejection {
                    offset: 1,
                    reason: "value is not a JSON object, which this sink's format needs".into()
                }]
            ),
            other => panic!("expected a rejection, got {other:?}"),
        }
        sink.flush().expect("flush");
        assert_eq!(sink.status().expect("status").written, 2);
        assert_eq!(redis.cli(&["XLEN", "s:2"]), "2\n");
        let entries = redis.cli(&["--raw", "XRANGE", "s:2", "-", "+"]);
        let is_id = |l: &str| {
            l.split_once('-').is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok())
        };
        let fields: Vec<&str> = entries.lines().filter(|l| !is_id(l)).collect();
        assert_eq!(fields, ["id", "1", "name", "a", "id", "2", "tags", "[\"x\"]"]);

        let mut set =
            RedisSink::open(config(&redis, r#","command":"set","key":"u:{key}","ttl_seconds":100"#), &context("in", 0))
                .expect("open");
        redis.cli(&["HSET", "u:h", "f", "v"]);
        let rows: &[Entry] = &[(0, Some(b"a"), b"{\"v\":1}"), (1, None, b"{}"), (2, Some(b"b"), b"plain text")];
        match set.add_batch(batch("in", 0, rows)) {
            Err(Error::Rejected(list)) => assert_eq!(
                list,
                vec![Rejection { offset: 1, reason: "the record has no key, which the template names".into() }]
            ),
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert_eq!(redis.cli(&["GET", "u:a"]), "{\"v\":1}\n");
        assert_eq!(redis.cli(&["GET", "u:b"]), "plain text\n");
        assert_eq!(redis.cli(&["TTL", "u:b"]), "100\n");

        let mut hset =
            RedisSink::open(config(&redis, r#","command":"hset","key":"u:{/id}""#), &context("in", 0)).expect("open");
        let rows: &[Entry] = &[
            (0, None, br#"{"id":"x","n":1,"ok":true}"#),
            (1, None, br#"{"id":"h"}"#),
            (2, None, br#"{"id":"a","n":2}"#),
        ];
        match hset.add_batch(batch("in", 0, rows)) {
            Err(Error::Rejected(list)) => assert_eq!(
                list,
                vec![Rejection {
                    offset: 2,
                    reason: "redis refused the command: WRONGTYPE Operation against a key holding the wrong kind of \
                             value"
                        .into()
                }]
            ),
            other => panic!("expected rejections, got {other:?}"),
        }
        assert_eq!(redis.cli(&["HGETALL", "u:x"]), "id\nx\nn\n1\nok\ntrue\n");
        assert_eq!(redis.cli(&["HGETALL", "u:h"]), "f\nv\nid\nh\n", "fields merge into an existing hash");
    }

    #[test]
    fn idempotent_streams_skip_replayed_entries_and_a_dead_server_is_retryable() {
        let mut redis = Redis::start();
        let open = |redis: &Redis| {
            RedisSink::open(config(redis, r#","key":"s:{partition}","idempotent":true"#), &context("in", 0))
        };
        let mut sink = open(&redis).expect("open");
        let rows: &[Entry] = &[(0, None, b"a"), (1, None, b"b")];
        sink.add_batch(batch("in", 0, rows)).expect("add");
        sink.abort();
        let rows: &[Entry] = &[(0, None, b"a"), (1, None, b"b"), (2, None, b"c")];
        sink.add_batch(batch("in", 0, rows)).expect("replay");
        sink.flush().expect("flush");
        let status = sink.status().expect("status");
        assert_eq!((status.written, status.custom), (1, vec![("duplicates_skipped".to_string(), 2)]));
        assert_eq!(redis.cli(&["--raw", "XRANGE", "s:0", "-", "+"]), "1-0\nvalue\na\n2-0\nvalue\nb\n3-0\nvalue\nc\n");

        let addr = redis.server.addr();
        redis.server.stop();
        match sink.add_batch(batch("in", 0, &[(3, None, b"d")])) {
            Err(Error::Retryable(m)) => assert!(m.starts_with(&format!("redis {addr}: ")), "{m}"),
            other => panic!("expected retryable, got {other:?}"),
        }
        match open(&redis) {
            Err(Error::Retryable(m)) => {
                assert!(m.starts_with(&format!("redis {addr}: cannot connect to {addr}: ")), "{m}")
            }
            other => panic!("expected retryable, got {:?}", other.err()),
        }
        let err = RedisSink::open(config(&redis, r#","key":"s","idempotent":true"#), &context("in", 0)).err();
        assert_eq!(
            err,
            Some(Error::fatal("\"idempotent\" streams need one writer each: put {partition} in the key \"s\""))
        );
        redis.restart();
        let mut sink = open(&redis).expect("open after restart");
        sink.add_batch(batch("in", 0, &[(3, None, b"d")])).expect("add after restart");
    }
}

mod mqtt {
    use super::*;
    use sinkbox_sink_mqtt::{Config, MqttSink};

    fn config(port: u16, extra: &str) -> Config {
        serde_json::from_str(&format!(r#"{{"host":"127.0.0.1","port":{port}{extra}}}"#)).expect("config")
    }

    #[test]
    fn logs_in_with_a_password_and_names_a_refusal() {
        let broker = Mosquitto::start(&[("pub", "secret")]);
        let port = broker.server.port;
        let err = MqttSink::open(config(port, r#","topic":"ev""#), &context("in", 0)).err();
        assert_eq!(
            err,
            Some(Error::fatal(format!(
                "mqtt 127.0.0.1:{port}: the broker refused the connection: not authorized (CONNACK return code 5)"
            )))
        );
        let sink =
            MqttSink::open(config(port, r#","topic":"ev","username":"pub","password":"secret""#), &context("in", 0));
        sink.expect("logs in").close().expect("close");
    }

    #[test]
    fn publishes_at_qos_1_and_0_to_templated_topics_and_rejects_bad_topics() {
        let broker = Mosquitto::start(&[]);
        let port = broker.server.port;
        let subscriber = Subscriber::connect(port, "ev/#");
        let rows: &[Entry] = &[(0, Some(b"a"), b"0"), (1, Some(b"a/+"), b"1"), (2, None, b"2"), (3, Some(b"b"), b"3")];
        for qos in [1, 0] {
            let mut sink = MqttSink::open(
                config(port, &format!(r#","topic":"ev/{{key}}","qos":{qos},"retain":true"#)),
                &context("in", 0),
            )
            .expect("open");
            match sink.add_batch(batch("in", 0, rows)) {
                Err(Error::Rejected(list)) => assert_eq!(
                    list,
                    vec![
                        Rejection {
                            offset: 1,
                            reason: "the topic \"ev/a/+\" holds '+', which a published topic must not".into()
                        },
                        Rejection { offset: 2, reason: "the record has no key, which the template names".into() },
                    ]
                ),
                other => panic!("expected rejections, got {other:?}"),
            }
            sink.flush().expect("flush");
            assert_eq!(sink.status().expect("status").written, 2);
            sink.close().expect("close");
        }
        let got = subscriber.wait_for(4, Duration::from_secs(10));
        let text: Vec<(String, String)> =
            got.iter().map(|(t, p)| (t.clone(), String::from_utf8_lossy(p).into_owned())).collect();
        let pair = |t: &str, p: &str| (t.to_string(), p.to_string());
        assert_eq!(text, vec![pair("ev/a", "0"), pair("ev/b", "3"), pair("ev/a", "0"), pair("ev/b", "3")]);
        // Retained: a new subscriber gets the last message of each topic.
        let late = Subscriber::connect(port, "ev/#");
        assert_eq!(late.wait_for(2, Duration::from_secs(10)).len(), 2);
    }

    #[test]
    fn a_lost_broker_is_retryable() {
        let mut broker = Mosquitto::start(&[]);
        let port = broker.server.port;
        let mut sink = MqttSink::open(config(port, r#","topic":"ev""#), &context("in", 0)).expect("open");
        broker.server.stop();
        match sink.add_batch(batch("in", 0, &[(0, None, b"x")])) {
            Err(Error::Retryable(m)) => assert!(m.starts_with(&format!("mqtt 127.0.0.1:{port}: ")), "{m}"),
            other => panic!("expected retryable, got {other:?}"),
        }
        match MqttSink::open(config(port, r#","topic":"ev""#), &context("in", 0)) {
            Err(Error::Retryable(m)) => {
                assert!(m.starts_with(&format!("mqtt 127.0.0.1:{port}: cannot connect to 127.0.0.1:{port}: ")), "{m}")
            }
            other => panic!("expected retryable, got {:?}", other.err()),
        }
        broker.restart();
        sink.add_batch(batch("in", 0, &[(0, None, b"x")])).expect("reconnects between checkpoints");
    }
}

/// Whole pipelines through the sandbox: the built-in sinks with
/// `grants.hosts`, against the real servers.
mod pipelines {
    use std::net::TcpListener;
    use std::time::Instant;

    use serde_json::Value;

    use super::*;

    /// A `[[sink]]` section: the builtin's config as JSON, and its hosts.
    fn sink(name: &str, builtin: &str, config: &str, hosts: &[String]) -> String {
        format!(
            "[[sink]]\nname = {name:?}\ncomponent = \"builtin:{builtin}\"\nconfig = '''{config}'''\ngrants = {{ hosts = {hosts:?} }}\n"
        )
    }

    /// A pipeline over `in.jsonl` with fast, patient retries.
    fn pipeline(batch: usize, commit: usize, sinks: &[String]) -> String {
        format!(
            r#"
[pipeline]
batch_size = {batch}
commit_every = {commit}
dead_letter = "dead.jsonl"
offsets = "offsets.json"

[source]
kind = "file"
path = "in.jsonl"

[retry]
base = "20ms"
cap = "200ms"
max_attempts = 300

{}"#,
            sinks.concat()
        )
    }

    fn dead_letters(s: &Scratch) -> Vec<Value> {
        s.read("dead.jsonl").lines().map(|l| serde_json::from_str(l).expect("dead letter is JSON")).collect()
    }

    /// `n` lines `{"id":I,"name":"user-I"}`, with `bad` ids named "bad".
    fn rows(n: usize, bad: &[usize]) -> String {
        (0..n)
            .map(|i| {
                let name = if bad.contains(&i) { "bad".to_string() } else { format!("user-{i}") };
                format!("{{\"id\":{i},\"name\":\"{name}\"}}\n")
            })
            .collect()
    }

    fn rate(what: &str, status: &sinkbox::Status) {
        let secs = status.elapsed.as_secs_f64();
        eprintln!(
            "{what}: {} records in {:.2} s = {:.0} records/s",
            status.committed,
            secs,
            status.committed as f64 / secs
        );
    }

    fn tcp(port: u16) -> Vec<String> {
        vec![format!("tcp://127.0.0.1:{port}")]
    }

    fn pg_config(port: u16) -> String {
        format!(
            r#"{{"host":"127.0.0.1","port":{port},"user":"sinkbox","password":"sinkbox-pw","table":"t","columns":["id","name"],"mode":"upsert","key":["id"]}}"#
        )
    }

    #[test]
    fn postgres_holds_every_record_once_and_refused_rows_are_dead_lettered() {
        let pg = Postgres::start();
        pg.psql("CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL CHECK (name <> 'bad'))");
        let s = Scratch::new("net-postgres-e2e");
        let n = 20_000;
        let bad = [10, 9_999, 19_999];
        s.write("in.jsonl", &rows(n, &bad));
        let port = pg.server.port;
        let (status, result) = s.run(&pipeline(1000, 5000, &[sink("pg", "postgres", &pg_config(port), &tcp(port))]));
        result.unwrap();
        rate("postgres (upsert, batch 1000)", &status);
        assert_eq!(status.committed, n as u64);
        assert_eq!(status.sinks[0].rejected, 3);
        let expected = n - bad.len();
        assert_eq!(
            pg.psql("SELECT count(*), count(DISTINCT id), sum(id) FROM t WHERE name = 'user-' || id"),
            format!("{expected}|{expected}|{}\n", (0..n).filter(|i| !bad.contains(i)).sum::<usize>())
        );
        assert_eq!(pg.psql("SELECT count(*) FROM t"), format!("{expected}\n"));
        let dead = dead_letters(&s);
        assert_eq!(dead.len(), 3);
        for (letter, id) in dead.iter().zip(bad) {
            assert_eq!(letter["sink"], "pg");
            assert_eq!(
                letter["reason"],
                format!(
                    "postgres refused the row: new row for relation \"t\" violates check constraint \"t_name_check\" \
                     (SQLSTATE 23514): Failing row contains ({id}, bad)."
                )
            );
        }
    }

    #[test]
    fn postgres_survives_a_server_that_is_down_then_restarted_mid_run() {
        let mut pg = Postgres::start();
        pg.psql("CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL)");
        let s = Scratch::new("net-postgres-restart");
        let n = 30_000;
        s.write("in.jsonl", &rows(n, &[]));
        let port = pg.server.port;
        pg.stop();
        let toml = pipeline(200, 2000, &[sink("pg", "postgres", &pg_config(port), &tcp(port))]);
        let restarter = std::thread::spawn(move || {
            // Down at the start: the sink cannot connect and is retried.
            std::thread::sleep(Duration::from_millis(1500));
            pg.restart();
            // Then killed once rows arrive: the open transaction is lost
            // with its connection and the checkpoint replayed.
            let start = Instant::now();
            while pg.psql("SELECT count(*) FROM t").trim() == "0" && start.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(10));
            }
            pg.restart();
            pg
        });
        let (status, result) = s.run(&toml);
        let pg = restarter.join().expect("restarter");
        result.unwrap();
        assert_eq!(status.committed, n as u64);
        assert!(status.sinks[0].retries >= 1, "{:?}", status.sinks[0]);
        assert_eq!(
            pg.psql("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM t WHERE name = 'user-' || id"),
            format!("{n}|{n}|0|{}\n", n - 1)
        );
        assert!(dead_letters(&s).is_empty());
    }

    #[test]
    fn every_sink_is_refused_a_host_it_was_not_granted_and_nothing_reaches_it() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().unwrap().port();
        let cases = [
            ("postgres", pg_config(port)),
            ("redis", format!(r#"{{"host":"127.0.0.1","port":{port},"key":"s"}}"#)),
            ("mqtt", format!(r#"{{"host":"127.0.0.1","port":{port},"topic":"t"}}"#)),
        ];
        for (builtin, config) in cases {
            // Granted: another port on the same address, and nothing at all.
            for hosts in [tcp(port + 1), vec![]] {
                let s = Scratch::new(&format!("net-denied-{builtin}"));
                s.write("in.jsonl", &rows(5, &[]));
                let (status, result) = s.run(&pipeline(10, 50, &[sink("net", builtin, &config, &hosts)]));
                let err = chain(&result.unwrap_err());
                let expected = format!(
                    "{builtin} 127.0.0.1:{port}: the connection was denied: the pipeline does not grant it; add \
                     \"tcp://127.0.0.1:{port}\" to this sink's grants.hosts"
                );
                assert!(err.contains(&expected), "{builtin}: {err}");
                assert_eq!(status.committed, 0);
            }
        }
        let accepted = listener.accept();
        assert!(
            matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a refused sink reached the listener: {accepted:?}"
        );
    }

    #[test]
    fn redis_streams_and_hashes_hold_every_record_and_refused_commands_are_dead_lettered() {
        let redis = Redis::start();
        redis.cli(&["SET", "h:7", "a string"]);
        let s = Scratch::new("net-redis-e2e");
        let n = 20_000;
        s.write("in.jsonl", &rows(n, &[]));
        let port = redis.server.port;
        let stream = format!(r#"{{"host":"127.0.0.1","port":{port},"key":"ev:{{partition}}","idempotent":true}}"#);
        let hash = format!(r#"{{"host":"127.0.0.1","port":{port},"command":"hset","key":"h:{{/id}}"}}"#);
        let (status, result) = s.run(&pipeline(
            1000,
            5000,
            &[sink("stream", "redis", &stream, &tcp(port)), sink("hash", "redis", &hash, &tcp(port))],
        ));
        result.unwrap();
        rate("redis (xadd + hset, two sinks, batch 1000)", &status);
        assert_eq!(status.committed, n as u64);
        assert_eq!(redis.cli(&["XLEN", "ev:0"]), format!("{n}\n"));
        let first = redis.cli(&["--raw", "XRANGE", "ev:0", "-", "+", "COUNT", "1"]);
        let first_offset: u64 = first.lines().next().unwrap().trim_end_matches("-0").parse::<u64>().unwrap() - 1;
        assert_eq!(first.lines().nth(2), Some(r#"{"id":0,"name":"user-0"}"#));
        let last = redis.cli(&["--raw", "XREVRANGE", "ev:0", "+", "-", "COUNT", "1"]);
        assert_eq!(last.lines().next(), Some(format!("{}-0", first_offset + n as u64).as_str()));
        assert_eq!(redis.cli(&["DBSIZE"]), format!("{}\n", n + 1));
        assert_eq!(redis.cli(&["HGET", "h:19999", "name"]), "user-19999\n");
        let dead = dead_letters(&s);
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0]["sink"], "hash");
        assert_eq!(
            dead[0]["reason"],
            "redis refused the command: WRONGTYPE Operation against a key holding the wrong kind of value"
        );
        assert_eq!(redis.cli(&["GET", "h:7"]), "a string\n");
    }

    #[test]
    fn redis_idempotent_streams_stay_exact_when_connections_fail_mid_run() {
        let redis = Redis::start();
        let proxy = Proxy::new(redis.server.port);
        let s = Scratch::new("net-redis-restart");
        let n = 30_000;
        s.write("in.jsonl", &rows(n, &[]));
        let config =
            format!(r#"{{"host":"127.0.0.1","port":{},"key":"ev:{{partition}}","idempotent":true}}"#, proxy.port);
        let toml = pipeline(200, 2000, &[sink("stream", "redis", &config, &tcp(proxy.port))]);
        let status = std::thread::scope(|scope| {
            let run = scope.spawn(|| s.run(&toml));
            // Refused at the start, then open; then every connection cut
            // once entries arrive.
            std::thread::sleep(Duration::from_millis(1000));
            proxy.open();
            let start = Instant::now();
            while redis.cli(&["XLEN", "ev:0"]).trim() == "0" && start.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(5));
            }
            proxy.cut();
            let (status, result) = run.join().expect("run");
            result.unwrap();
            status
        });
        assert_eq!(status.committed, n as u64);
        assert!(status.sinks[0].retries >= 1, "{:?}", status.sinks[0]);
        assert_eq!(redis.cli(&["XLEN", "ev:0"]), format!("{n}\n"), "no entry twice, none missing");
        assert!(proxy.accepted() >= 2, "the sink connected again after the cut");
    }

    /// Envelope lines keyed `k0`..`k6`; `bad` offsets get the key `bad+`.
    fn keyed(n: usize, bad: &[usize]) -> String {
        (0..n)
            .map(|i| {
                let key = if bad.contains(&i) { "bad+".to_string() } else { format!("k{}", i % 7) };
                format!("{{\"key\":\"{key}\",\"value\":{{\"i\":{i}}}}}\n")
            })
            .collect()
    }

    /// The `i` of each message, per topic.
    fn by_topic(messages: &[(String, Vec<u8>)]) -> std::collections::BTreeMap<String, Vec<u64>> {
        let mut topics = std::collections::BTreeMap::<String, Vec<u64>>::new();
        for (topic, payload) in messages {
            let value: Value = serde_json::from_slice(payload).expect("payload is JSON");
            topics.entry(topic.clone()).or_default().push(value["i"].as_u64().expect("i"));
        }
        topics
    }

    #[test]
    fn mqtt_delivers_every_record_once_in_order_per_topic_and_dead_letters_bad_topics() {
        let broker = Mosquitto::start(&[]);
        let subscriber = Subscriber::connect(broker.server.port, "ev/#");
        let s = Scratch::new("net-mqtt-e2e");
        let n = 20_000;
        let bad = [3, 12_345];
        s.write("in.jsonl", &keyed(n, &bad));
        let port = broker.server.port;
        let config = format!(r#"{{"host":"127.0.0.1","port":{port},"topic":"ev/{{key}}","qos":1}}"#);
        let (status, result) = s.run(&pipeline(1000, 5000, &[sink("mq", "mqtt", &config, &tcp(port))]));
        result.unwrap();
        rate("mqtt (qos 1, batch 1000)", &status);
        assert_eq!(status.committed, n as u64);
        let got = subscriber.wait_for(n - bad.len(), Duration::from_secs(30));
        assert_eq!(got.len(), n - bad.len());
        let topics = by_topic(&got);
        for k in 0..7 {
            let expected: Vec<u64> = (0..n).filter(|i| i % 7 == k && !bad.contains(i)).map(|i| i as u64).collect();
            assert_eq!(topics[&format!("ev/k{k}")], expected, "ev/k{k}");
        }
        let dead = dead_letters(&s);
        assert_eq!(dead.len(), 2);
        assert_eq!(dead[0]["reason"], "the topic \"ev/bad+\" holds '+', which a published topic must not");
    }

    #[test]
    fn mqtt_at_qos_1_loses_nothing_when_connections_fail_mid_run() {
        let broker = Mosquitto::start(&[]);
        let subscriber = Subscriber::connect(broker.server.port, "ev/#");
        let proxy = Proxy::new(broker.server.port);
        let s = Scratch::new("net-mqtt-restart");
        let n = 30_000;
        s.write("in.jsonl", &keyed(n, &[]));
        let config = format!(r#"{{"host":"127.0.0.1","port":{},"topic":"ev/{{key}}","qos":1}}"#, proxy.port);
        let toml = pipeline(200, 2000, &[sink("mq", "mqtt", &config, &tcp(proxy.port))]);
        let status = std::thread::scope(|scope| {
            let run = scope.spawn(|| s.run(&toml));
            std::thread::sleep(Duration::from_millis(1000));
            proxy.open();
            let start = Instant::now();
            while subscriber.messages.lock().unwrap().is_empty() && start.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(2));
            }
            proxy.cut();
            let (status, result) = run.join().expect("run");
            result.unwrap();
            status
        });
        assert_eq!(status.committed, n as u64);
        assert!(status.sinks[0].retries >= 1, "{:?}", status.sinks[0]);
        let got = subscriber.wait_for(n, Duration::from_secs(30));
        let mut seen: Vec<u64> = by_topic(&got).into_values().flatten().collect();
        seen.sort_unstable();
        let duplicates = seen.len() - {
            seen.dedup();
            seen.len()
        };
        assert_eq!(seen, (0..n as u64).collect::<Vec<_>>(), "every record arrived");
        eprintln!("mqtt restart: {duplicates} duplicates from replays");
    }
}
