//! The raw-TCP built-in sinks (`postgres`, `redis`, `mqtt`) against real
//! servers on 127.0.0.1: their protocol code natively, then whole
//! pipelines through the sandbox with `grants.hosts`.

use sinkbox_sdk::testing::{batch, context};
use sinkbox_sdk::{Error, Rejection, Sink};

use std::time::Duration;

use crate::servers::{Mosquitto, Postgres, Redis, Subscriber};

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

        let rows: &[(u64, Option<&[u8]>, &[u8])] = &[
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
        pg.server.stop();
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
        let rows: &[(u64, Option<&[u8]>, &[u8])] =
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
        let rows: &[(u64, Option<&[u8]>, &[u8])] =
            &[(0, Some(b"a"), b"{\"v\":1}"), (1, None, b"{}"), (2, Some(b"b"), b"plain text")];
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
        let rows: &[(u64, Option<&[u8]>, &[u8])] = &[
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
        let rows: &[(u64, Option<&[u8]>, &[u8])] = &[(0, None, b"a"), (1, None, b"b")];
        sink.add_batch(batch("in", 0, rows)).expect("add");
        sink.abort();
        let rows: &[(u64, Option<&[u8]>, &[u8])] = &[(0, None, b"a"), (1, None, b"b"), (2, None, b"c")];
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
        let rows: &[(u64, Option<&[u8]>, &[u8])] =
            &[(0, Some(b"a"), b"0"), (1, Some(b"a/+"), b"1"), (2, None, b"2"), (3, Some(b"b"), b"3")];
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
