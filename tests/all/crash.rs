//! Kill -9 the `sinkbox` process at random points of a 100,000-record run,
//! restart it each time, and check that the file sink's output holds every
//! input record exactly once.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{Scratch, lines};

/// A small xorshift generator; the seed is printed so a failure can be
/// replayed with SINKBOX_CRASH_SEED.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn kill_9_at_random_points_loses_and_duplicates_nothing() {
    let s = Scratch::new("crash");
    let input = lines(100_000);
    s.write("in.jsonl", &input);
    s.write(
        "p.toml",
        r#"
[pipeline]
name = "crash"
batch_size = 100
commit_every = 500
offsets = "offsets.json"
dead_letter = "dead.jsonl"

[source]
kind = "file"
path = "in.jsonl"

[[sink]]
name = "out"
component = "builtin:file"
config = { path = "/out/out.jsonl", spill_bytes = 16384 }
grants = { dirs = [{ host = "out", guest = "/out", mode = "rw" }] }
"#,
    );
    let seed = std::env::var("SINKBOX_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1);
    eprintln!("crash test seed: {seed}");
    let mut rng = Rng(seed);
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_sinkbox"))
            .args(["--cache-dir", concat!(env!("CARGO_TARGET_TMPDIR"), "/component-cache"), "--log", "warn"])
            .args(["run", "p.toml", "--no-progress"])
            .current_dir(&s.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sinkbox starts")
    };
    // Kill points: ten random committed offsets, in order. Each run is
    // killed 0-15 ms after the committed offset passes its point, so kills
    // land mid-batch, mid-spill, mid-flush and mid-commit.
    let mut points: Vec<u64> = (0..10).map(|_| 1 + rng.next() % 99_000).collect();
    points.sort_unstable();
    let started = Instant::now();
    let mut kills = 0;
    for point in points {
        let mut child = spawn();
        loop {
            if child.try_wait().expect("wait").is_some() {
                break; // finished before the kill point; resumes next round
            }
            if committed(&s) >= point {
                std::thread::sleep(Duration::from_micros(rng.next() % 15_000));
                child.kill().expect("kill -9");
                child.wait().expect("reap");
                kills += 1;
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(300), "crash test took too long");
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    let status = spawn().wait().expect("wait");
    assert!(status.success(), "the final run succeeds ({status})");
    let output = s.read("out/out.jsonl");
    assert_eq!(output.lines().count(), 100_000, "seed {seed}: every record, exactly once");
    assert!(output == input, "seed {seed}: output equals input, in order");
    assert!(kills >= 5, "seed {seed}: only {kills} kills landed mid-run");
    eprintln!("crash test: {kills} kills mid-run, output intact");
}

/// The committed offset, 0 before the first commit.
fn committed(s: &Scratch) -> u64 {
    let Ok(text) = std::fs::read_to_string(s.path("offsets.json")) else { return 0 };
    let v: serde_json::Value = serde_json::from_str(&text).expect("the offset store is never torn");
    v["position"]["partitions"][0]["next_offset"].as_u64().unwrap_or(0)
}
