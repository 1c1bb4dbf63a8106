//! The offset store: a JSON file replaced atomically at each commit.
//!
//! ```json
//! {
//!   "version": 2,
//!   "pipeline": "orders",
//!   "source": "file orders.jsonl",
//!   "position": { "partitions": [{ "topic": "/data/orders.jsonl#5f1c0e2a9b3d7e44", "partition": 0,
//!     "next_offset": 1000, "byte": 81234,
//!     "stream": { "kind": "file", "device": 2049, "inode": 1311, "head_len": 4096, "head_sha256": "..." } }] }
//! }
//! ```
//!
//! With the position it holds, under `snapshots`, the snapshot each sink
//! instance returned from its flush (hex, keyed by sink, topic, partition
//! and lane), so positions and snapshots are always of the same
//! checkpoint.
//!
//! Format versions: 1 (sinkbox 0.1) had no `stream` and no `snapshots`; 2
//! records each partition's stream identity and the sinks' snapshots. This
//! version reads both and writes 2.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::source::Position;

/// The format version this build writes; it reads every version up to it.
pub const VERSION: u32 = 2;

/// What the offset store file holds.
///
/// To add a section (per-sink snapshots, say): add an optional field with
/// `#[serde(default, skip_serializing_if = "...")]` and bump [`VERSION`].
/// An older sinkbox then refuses the file by its version ("written by a
/// newer sinkbox") instead of dropping the section it does not know.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    version: u32,
    pipeline: String,
    source: String,
    position: Position,
    /// Per sink instance (see [`Snapshots::key`]): its snapshot, hex.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    snapshots: BTreeMap<String, String>,
}

/// The committed snapshots of a pipeline's sink instances, keyed by sink,
/// topic, partition and lane.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshots(BTreeMap<String, Vec<u8>>);

impl Snapshots {
    /// The key of the instance of `sink` serving `lane` of `topic[partition]`.
    pub fn key(sink: &str, topic: &str, partition: u32, lane: u32) -> String {
        format!("{sink}|{topic}|{partition}|{lane}")
    }

    /// The snapshot at `key`.
    pub fn get(&self, key: &str) -> Option<&Vec<u8>> {
        self.0.get(key)
    }

    /// Sets (or, with `None`, removes) the snapshot at `key`.
    pub fn set(&mut self, key: String, snapshot: Option<Vec<u8>>) {
        match snapshot {
            Some(bytes) => self.0.insert(key, bytes),
            None => self.0.remove(&key),
        };
    }

    /// How many are kept.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What was committed last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// The source position.
    pub position: Position,
    /// The sink instances' snapshots of the same checkpoint.
    pub snapshots: Snapshots,
}

/// The one field every version has, read first to pick the format.
#[derive(Deserialize)]
struct Version {
    version: u32,
}

/// A pipeline's committed position, kept in one file.
#[derive(Debug)]
pub struct OffsetStore {
    path: PathBuf,
    pipeline: String,
}

impl OffsetStore {
    /// A store at `path` for the pipeline named `pipeline`.
    pub fn new(path: impl Into<PathBuf>, pipeline: &str) -> OffsetStore {
        OffsetStore { path: path.into(), pipeline: pipeline.to_string() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn fail(&self, what: impl Into<String>) -> Error {
        Error::Offsets { path: self.path.clone(), what: what.into() }
    }

    /// What was committed, or `None` if nothing was committed yet.
    pub fn load(&self) -> Result<Option<Committed>> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.fail(format!("cannot read: {e}"))),
        };
        let version: Version = serde_json::from_slice(&bytes).map_err(|e| self.fail(format!("corrupt: {e}")))?;
        if version.version == 0 || version.version > VERSION {
            return Err(self.fail(format!(
                "format version {} is not one this sinkbox reads (1 to {VERSION}); was it written by a newer sinkbox?",
                version.version
            )));
        }
        let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| self.fail(format!("corrupt: {e}")))?;
        if stored.pipeline != self.pipeline {
            return Err(self.fail(format!(
                "belongs to pipeline \"{}\", not \"{}\"; give each pipeline its own offset store",
                stored.pipeline, self.pipeline
            )));
        }
        let mut snapshots = Snapshots::default();
        for (key, hex) in stored.snapshots {
            let bytes = decode_hex(&hex).ok_or_else(|| self.fail(format!("corrupt: snapshot {key} is not hex")))?;
            snapshots.set(key, Some(bytes));
        }
        Ok(Some(Committed { position: stored.position, snapshots }))
    }

    /// Commits `position`: writes a temporary file, syncs it, renames it over
    /// the store and syncs the directory, so a crash leaves either the old or
    /// the new position, never a torn file.
    pub fn commit(&self, source: &str, position: &Position, snapshots: &Snapshots) -> Result<()> {
        let stored = Stored {
            version: VERSION,
            pipeline: self.pipeline.clone(),
            source: source.to_string(),
            position: position.clone(),
            snapshots: snapshots.0.iter().map(|(k, v)| (k.clone(), encode_hex(v))).collect(),
        };
        let bytes = serde_json::to_vec_pretty(&stored).map_err(|e| self.fail(format!("cannot encode: {e}")))?;
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("json.tmp");
        (|| -> std::io::Result<()> {
            fs::create_dir_all(dir)?;
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            File::open(dir)?.sync_all()
        })()
        .map_err(|e| self.fail(format!("cannot commit: {e}")))
    }

    /// Deletes the store (and a temporary file a crash may have left), so
    /// the next run starts from the beginning. Returns the position it held.
    pub fn reset(&self) -> Result<Option<Position>> {
        // A store that cannot be read is deleted all the same: resetting is
        // how an operator gets past it.
        let held = self.load().ok().flatten().map(|c| c.position);
        for path in [self.path.clone(), self.path.with_extension("json.tmp")] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.fail(format!("cannot delete {}: {e}", path.display()))),
            }
        }
        Ok(held)
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{PartitionPosition, Stream};

    #[test]
    fn commit_then_load_roundtrips_and_checks_owner() {
        let dir = std::env::temp_dir().join(format!("sinkbox-offsets-{}", std::process::id()));
        let path = dir.join("p.offsets.json");
        let store = OffsetStore::new(&path, "p");
        assert_eq!(store.load().unwrap(), None);
        let position = Position {
            partitions: vec![PartitionPosition {
                topic: "t".into(),
                partition: 0,
                next_offset: 42,
                byte: Some(999),
                stream: Some(Stream::File { device: 1, inode: 2, head_len: 3, head_sha256: "ab".into() }),
            }],
        };
        let mut snapshots = Snapshots::default();
        snapshots.set(Snapshots::key("csv", "t", 0, 1), Some(vec![0, 1, 0xfe, 0xff]));
        store.commit("file t", &position, &snapshots).unwrap();
        assert_eq!(store.load().unwrap(), Some(Committed { position, snapshots }));
        let other = OffsetStore::new(&path, "q");
        let err = other.load().unwrap_err().to_string();
        assert!(err.contains("belongs to pipeline \"p\", not \"q\""), "{err}");
        fs::write(&path, b"{").unwrap();
        assert!(store.load().unwrap_err().to_string().contains("corrupt"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reads_version_1_refuses_newer_versions_and_resets() {
        let dir = std::env::temp_dir().join(format!("sinkbox-offsets-v-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.offsets.json");
        let store = OffsetStore::new(&path, "p");
        let v1 = r#"{"version":1,"pipeline":"p","source":"stdin","position":{"partitions":[{"topic":"stdin","partition":0,"next_offset":10,"byte":70}]}}"#;
        fs::write(&path, v1).unwrap();
        let position = store.load().unwrap().unwrap().position;
        assert_eq!((position.partitions[0].next_offset, &position.partitions[0].stream), (10, &None));
        fs::write(&path, v1.replace("\"version\":1", "\"version\":3")).unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("format version 3 is not one this sinkbox reads (1 to 2)"), "{err}");
        assert!(store.reset().unwrap().is_none(), "an unreadable store is deleted all the same");
        assert!(!path.exists());
        fs::write(&path, v1).unwrap();
        assert_eq!(store.reset().unwrap().map(|p| p.partitions[0].next_offset), Some(10));
        assert_eq!(store.load().unwrap(), None);
        assert_eq!(store.reset().unwrap(), None, "resetting nothing is fine");
        fs::remove_dir_all(dir).unwrap();
    }
}
