//! The dead-letter queue: a JSON-lines file of records no sink could take.
//!
//! Each line: `{"time", "sink", "reason", "topic", "partition", "offset",
//! "timestamp", "key", "value", "headers"}`. `key`, `value` and header values
//! are strings when they are UTF-8 and `{"base64": "..."}` otherwise. Entries
//! are synced before the checkpoint's offsets are committed, so a record is
//! never lost; after a crash an entry may appear twice.
//!
//! An entry keeps the whole record up to [`MAX_RECORD_BYTES`] (1 MiB) of
//! value, key and headers together, in that order. A larger record is cut
//! there, and the entry says so in `"truncated"`: `{"original_bytes",
//! "kept_bytes", "source"}`, where `source` is the record's position in
//! its input (topic, partition, offset) to find the whole record by.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sinkbox_format::Record;

use crate::error::{DeadLetterLimit, Error, Result};

/// The most bytes of a record (value, key and headers together) a dead
/// letter keeps: 1 MiB.
pub const MAX_RECORD_BYTES: usize = 1 << 20;

/// Cuts records to [`MAX_RECORD_BYTES`] and remembers what it cut.
struct Budget {
    left: usize,
    original: usize,
    kept: usize,
}

impl Budget {
    fn new() -> Budget {
        Budget { left: MAX_RECORD_BYTES, original: 0, kept: 0 }
    }

    /// The part of `bytes` that fits; a UTF-8 text is cut at a character
    /// boundary, so it stays text.
    fn take<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        self.original += bytes.len();
        let mut end = bytes.len().min(self.left);
        if end < bytes.len()
            && let Ok(text) = std::str::from_utf8(bytes)
        {
            while !text.is_char_boundary(end) {
                end -= 1;
            }
        }
        self.left -= end;
        self.kept += end;
        &bytes[..end]
    }

    /// The `truncated` note, if anything was cut.
    fn note(&self, topic: &str, partition: u32, offset: u64) -> Option<Value> {
        (self.kept < self.original).then(|| {
            json!({
                "original_bytes": self.original,
                "kept_bytes": self.kept,
                "source": format!("topic {topic} partition {partition} offset {offset}"),
            })
        })
    }
}

/// Appends dead-letter entries to a file.
pub struct DeadLetters {
    path: PathBuf,
    file: Option<BufWriter<File>>,
    written: u64,
    max: u64,
    /// Records read by this run.
    read: u64,
    max_share: f64,
    share_after: u64,
}

/// Dead letters a run may write before the pipeline stops (Kafka Connect's
/// `errors.tolerance` in spirit): past it, the input or the sink is broken,
/// not a few records.
pub const MAX_DEAD_LETTERS: u64 = 100_000;

/// The share of the records read that may become dead letters: half.
pub const MAX_DEAD_LETTER_SHARE: f64 = 0.5;

/// Records a run reads before [`MAX_DEAD_LETTER_SHARE`] applies, so that
/// one early bad record does not stop it.
pub const DEAD_LETTER_SHARE_AFTER: u64 = 1_000;

impl DeadLetters {
    /// A queue at `path`; the file is created on the first entry. At most
    /// [`MAX_DEAD_LETTERS`] entries per run, and, once
    /// [`DEAD_LETTER_SHARE_AFTER`] records were read, at most
    /// [`MAX_DEAD_LETTER_SHARE`] of them.
    pub fn new(path: impl Into<PathBuf>) -> DeadLetters {
        DeadLetters {
            path: path.into(),
            file: None,
            written: 0,
            max: MAX_DEAD_LETTERS,
            read: 0,
            max_share: MAX_DEAD_LETTER_SHARE,
            share_after: DEAD_LETTER_SHARE_AFTER,
        }
    }

    /// The most entries one run may write; one more stops the pipeline.
    pub fn max(mut self, max: u64) -> DeadLetters {
        self.max = max;
        self
    }

    /// The most entries per record read (a fraction; 1 or more turns the
    /// check off), checked once `after` records were read.
    pub fn max_share(mut self, share: f64, after: u64) -> DeadLetters {
        self.max_share = share;
        self.share_after = after;
        self
    }

    /// Counts `n` more records read (malformed ones included); fails if the
    /// entries written so far are now over the share.
    pub fn read(&mut self, n: u64) -> Result<()> {
        self.read += n;
        self.check_share()
    }

    fn check_share(&self) -> Result<()> {
        if self.read == 0 || self.read < self.share_after {
            return Ok(());
        }
        let share = self.written as f64 / self.read as f64;
        if share > self.max_share {
            return Err(Error::DeadLetterLimit {
                path: self.path.clone(),
                written: self.written,
                limit: DeadLetterLimit::Share { read: self.read, share, max: self.max_share },
            });
        }
        Ok(())
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries written by this run.
    pub fn written(&self) -> u64 {
        self.written
    }

    fn fail(&self, e: std::io::Error) -> Error {
        Error::io(format!("cannot write the dead-letter queue {}", self.path.display()), e)
    }

    /// Appends an entry for a record `sink` refused or trapped on.
    pub fn push(&mut self, sink: &str, reason: &str, topic: &str, partition: u32, record: &Record<'_>) -> Result<()> {
        let mut budget = Budget::new();
        let value = bytes_value(budget.take(record.value));
        let key = record.key.map(|key| bytes_value(budget.take(key)));
        let mut headers: Vec<Value> = Vec::new();
        for (name, value) in record.headers().flatten() {
            let name = budget.take(name);
            let value = budget.take(value);
            if name.is_empty() && value.is_empty() && budget.left == 0 {
                continue;
            }
            headers.push(json!([String::from_utf8_lossy(name), bytes_value(value)]));
        }
        let mut entry = json!({
            "time": rfc3339_now(),
            "sink": sink,
            "reason": reason,
            "topic": topic,
            "partition": partition,
            "offset": record.offset,
            "timestamp": record.timestamp,
            "key": key,
            "value": value,
            "headers": headers,
        });
        if let Some(note) = budget.note(topic, partition, record.offset) {
            entry["truncated"] = note;
        }
        self.write(entry)
    }

    /// Appends an entry for input the source could not parse; `raw` is the
    /// input as read.
    pub fn push_malformed(&mut self, reason: &str, topic: &str, partition: u32, offset: u64, raw: &[u8]) -> Result<()> {
        let mut budget = Budget::new();
        let value = bytes_value(budget.take(raw));
        let mut entry = json!({
            "time": rfc3339_now(),
            "sink": "source",
            "reason": reason,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "timestamp": null,
            "key": null,
            "value": value,
            "headers": [],
        });
        if let Some(note) = budget.note(topic, partition, offset) {
            entry["truncated"] = note;
        }
        self.write(entry)
    }

    fn write(&mut self, entry: Value) -> Result<()> {
        if self.written >= self.max {
            return Err(Error::DeadLetterLimit {
                path: self.path.clone(),
                written: self.written,
                limit: DeadLetterLimit::Count { max: self.max },
            });
        }
        if self.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| self.fail(e))?;
            }
            let file = OpenOptions::new().create(true).append(true).open(&self.path).map_err(|e| self.fail(e))?;
            self.file = Some(BufWriter::new(file));
        }
        let Some(file) = self.file.as_mut() else { unreachable!("opened just above") };
        let written = serde_json::to_writer(&mut *file, &entry)
            .map_err(std::io::Error::from)
            .and_then(|()| file.write_all(b"\n"));
        written.map_err(|e| self.fail(e))?;
        self.written += 1;
        self.check_share()
    }

    /// Makes every entry durable; called before offsets are committed.
    pub fn sync(&mut self) -> Result<()> {
        if let Some(file) = self.file.as_mut() {
            let synced = file.flush().and_then(|()| file.get_ref().sync_data());
            synced.map_err(|e| self.fail(e))?;
        }
        Ok(())
    }
}

fn bytes_value(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_string()),
        Err(_) => json!({ "base64": base64(bytes) }),
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The current UTC time as `2026-11-21T23:04:05.123Z`.
fn rfc3339_now() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    fn read_entries(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn entries_keep_the_whole_record_up_to_the_cap_and_say_where_they_cut() {
        let dir = std::env::temp_dir().join(format!("sinkbox-dead-{}", std::process::id()));
        let path = dir.join("dead.jsonl");
        let mut letters = DeadLetters::new(&path);
        // A record just under the cap is kept whole.
        let whole = "x".repeat(MAX_RECORD_BYTES - 10);
        letters.push_malformed("bad", "t#1", 0, 7, whole.as_bytes()).unwrap();
        // A 3 MiB line of multi-byte text is cut at a character boundary.
        let big = "é".repeat(3 << 19);
        letters.push_malformed("bad", "t#1", 0, 8, big.as_bytes()).unwrap();
        // A sink's rejection: value first, then key and headers share the rest.
        let mut batch = sinkbox_format::BatchWriter::with_capacity(0);
        let value = vec![b'v'; MAX_RECORD_BYTES - 4];
        batch.begin(9, Some(5), Some(b"key-1234"), &value, 1);
        batch.header(b"h", b"header value");
        let (data, count) = batch.finish();
        let record = sinkbox_format::Records::new(&data, count).next().unwrap().unwrap();
        letters.push("s", "rejected", "t#1", 2, &record).unwrap();
        letters.sync().unwrap();
        let entries = read_entries(&path);
        assert_eq!(entries[0]["value"].as_str().unwrap().len(), MAX_RECORD_BYTES - 10);
        assert!(entries[0].get("truncated").is_none(), "{}", entries[0]["truncated"]);
        let kept = entries[1]["value"].as_str().unwrap();
        assert!(kept.len() <= MAX_RECORD_BYTES && kept.len() > MAX_RECORD_BYTES - 2 && kept.chars().all(|c| c == 'é'));
        assert_eq!(entries[1]["truncated"]["original_bytes"], big.len());
        assert_eq!(entries[1]["truncated"]["kept_bytes"], kept.len());
        assert_eq!(entries[1]["truncated"]["source"], "topic t#1 partition 0 offset 8");
        assert_eq!(entries[2]["value"].as_str().unwrap().len(), MAX_RECORD_BYTES - 4);
        assert_eq!(entries[2]["key"], "key-");
        assert_eq!(entries[2]["headers"], json!([]));
        assert_eq!(entries[2]["truncated"]["original_bytes"], MAX_RECORD_BYTES - 4 + 8 + 1 + 12);
        assert_eq!(entries[2]["truncated"]["source"], "topic t#1 partition 2 offset 9");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T", "{t}");
    }
}

#[cfg(test)]
mod cap_tests {
    use super::*;

    #[test]
    fn a_run_stops_at_its_dead_letter_cap_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("sinkbox-dead-cap-{}", std::process::id()));
        let mut dead = DeadLetters::new(dir.join("d.jsonl")).max(2);
        dead.push_malformed("bad", "t", 0, 0, b"x").unwrap();
        dead.push_malformed("bad", "t", 0, 1, b"y").unwrap();
        let err = dead.push_malformed("bad", "t", 0, 2, b"z").unwrap_err();
        assert!(
            matches!(&err, Error::DeadLetterLimit { written: 2, limit: DeadLetterLimit::Count { max: 2 }, .. }),
            "{err:?}"
        );
        let err = err.to_string();
        assert!(err.contains("wrote 2 dead letters to") && err.contains("d.jsonl"), "{err}");
        assert!(err.contains("its limit (max_dead_letters = 2)"), "{err}");
        dead.sync().unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("d.jsonl")).unwrap().lines().count(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_run_stops_over_its_share_once_enough_records_were_read() {
        let dir = std::env::temp_dir().join(format!("sinkbox-dead-share-{}", std::process::id()));
        let mut dead = DeadLetters::new(dir.join("d.jsonl")).max_share(0.1, 20);
        // Below 20 records read, any share passes: one early bad record
        // does not stop the run.
        dead.read(5).unwrap();
        for offset in 0..3 {
            dead.push_malformed("bad", "t", 0, offset, b"x").unwrap();
        }
        // 3 of 20 is over a tenth.
        let err = dead.read(15).unwrap_err();
        let Error::DeadLetterLimit { written: 3, limit: DeadLetterLimit::Share { read: 20, share, max }, .. } = err
        else {
            panic!("{err:?}")
        };
        assert_eq!((share, max), (0.15, 0.1));
        // 3 of 40 is not, and the next entries are checked as they are
        // written: 4 of 40 passes, 5 of 40 does not.
        dead.read(20).unwrap();
        dead.push_malformed("bad", "t", 0, 3, b"x").unwrap();
        let err = dead.push_malformed("bad", "t", 0, 4, b"x").unwrap_err().to_string();
        assert!(err.contains("wrote 5 dead letters to") && err.contains("12.5% of the 40 records read"), "{err}");
        assert!(err.contains("more than its limit (max_dead_letter_share = 0.1)"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
