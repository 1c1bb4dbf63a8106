//! The raw-TCP built-in sinks (`postgres`, `redis`, `mqtt`) against real
//! servers on 127.0.0.1: their protocol code natively, then whole
//! pipelines through the sandbox with `grants.hosts`.

use sinkbox_sdk::testing::{batch, context};
use sinkbox_sdk::{Error, Rejection, Sink};

use crate::servers::Postgres;

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
