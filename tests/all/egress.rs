//! Network egress: a sink connects only where `grants.hosts` says, checked
//! on the address and port at connect time; name lookups only for granted
//! names. The peer is a real listener of the test's own on 127.0.0.1, which
//! also proves that nothing reached it when a connection was refused.

use std::io::Read;
use std::net::TcpListener;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use sinkbox_test_artifacts as programs;

use crate::{Scratch, chain, lines};

/// A listener that accepts connections and collects everything sent to it,
/// until the test drops the receiver's sender side by ending.
struct Peer {
    port: u16,
    received: mpsc::Receiver<(usize, String)>,
}

impl Peer {
    fn start() -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().unwrap().port();
        let (tx, received) = mpsc::channel();
        thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(mut conn) = conn else { return };
                let tx = tx.clone();
                thread::spawn(move || {
                    let mut text = String::new();
                    let _ = conn.read_to_string(&mut text);
                    let _ = tx.send((n, text));
                });
            }
        });
        Peer { port, received }
    }

    /// Everything received on connections that closed within `wait`.
    fn collect(&self, wait: Duration) -> Vec<(usize, String)> {
        let mut all = Vec::new();
        while let Ok(item) = self.received.recv_timeout(wait) {
            all.push(item);
        }
        all
    }
}

fn pipeline(addr: &str, hosts: &str) -> String {
    format!(
        r#"
[pipeline]
batch_size = 10
commit_every = 50
dead_letter = "dead.jsonl"
offsets = "offsets.json"

[source]
kind = "file"
path = "in.jsonl"

[[sink]]
name = "net"
component = {component:?}
on_error = "fail"
config = {{ addr = "{addr}" }}
grants = {{ hosts = [{hosts}] }}
"#,
        component = programs::TCP_CLIENT
    )
}

#[test]
fn a_granted_tcp_address_receives_every_record() {
    let peer = Peer::start();
    let s = Scratch::new("egress-tcp-granted");
    s.write("in.jsonl", &lines(120));
    let addr = format!("127.0.0.1:{}", peer.port);
    let (status, result) = s.run(&pipeline(&addr, &format!("\"tcp://{addr}\"")));
    result.unwrap();
    assert_eq!(status.committed, 120);
    let net = status.sinks[0].net;
    assert_eq!((net.requests, net.denied), (1, 0), "{net:?}");
    let got = peer.collect(Duration::from_secs(2));
    assert_eq!(got.len(), 1, "one connection: {got:?}");
    assert_eq!(got[0].1, lines(120));
}

#[test]
fn an_ungranted_tcp_address_is_refused_and_nothing_reaches_it() {
    let peer = Peer::start();
    let s = Scratch::new("egress-tcp-denied");
    s.write("in.jsonl", &lines(5));
    let addr = format!("127.0.0.1:{}", peer.port);
    // Granted: another port on the same address, and nothing at all.
    for hosts in [format!("\"tcp://127.0.0.1:{}\"", peer.port + 1), String::new()] {
        let (status, result) = s.run(&pipeline(&addr, &hosts));
        let err = chain(&result.unwrap_err());
        assert!(
            err.contains(&format!("sink \"net\" failed: cannot connect to {addr}: Permission denied"))
                && err.contains("(PermissionDenied) in open"),
            "{err}"
        );
        assert_eq!(status.committed, 0);
    }
    assert!(peer.collect(Duration::from_millis(500)).is_empty(), "a refused sink reached the peer");
}

#[test]
fn a_granted_name_is_looked_up_and_an_ungranted_one_is_not() {
    let peer = Peer::start();
    let s = Scratch::new("egress-tcp-names");
    s.write("in.jsonl", &lines(3));
    let by_name = format!("localhost:{}", peer.port);
    let (status, result) = s.run(&pipeline(&by_name, &format!("\"tcp://localhost:{}\"", peer.port)));
    result.unwrap();
    assert_eq!(status.committed, 3);
    assert_eq!(peer.collect(Duration::from_secs(2)).len(), 1);

    // The address is granted but not the name: the lookup itself is refused.
    let s = Scratch::new("egress-tcp-names-denied");
    s.write("in.jsonl", &lines(3));
    let (status, result) = s.run(&pipeline(&by_name, &format!("\"tcp://127.0.0.1:{}\"", peer.port)));
    let err = chain(&result.unwrap_err());
    assert!(err.contains(&format!("cannot connect to {by_name}")), "{err}");
    assert_eq!(status.committed, 0);
    assert!(peer.collect(Duration::from_millis(500)).is_empty());
}

#[test]
fn a_bad_host_grant_is_refused_naming_the_sink_and_the_entry() {
    let s = Scratch::new("egress-bad-grant");
    s.write("in.jsonl", &lines(1));
    let file = sinkbox::PipelineFile::parse(&pipeline("127.0.0.1:1", "\"tcp://127.0.0.1\""), "test.toml");
    let err = chain(&file.unwrap_err());
    assert!(err.contains("sink \"net\": grants.hosts: \"tcp://127.0.0.1\": a tcp grant needs a port"), "{err}");
}
