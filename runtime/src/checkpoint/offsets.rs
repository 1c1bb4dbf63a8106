//! The offset store: a JSON file replaced atomically at each commit.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::source::Position;

/// What the offset store file holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    version: u32,
    pipeline: String,
    source: String,
    position: Position,
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

    /// The committed position, or `None` if nothing was committed yet.
    pub fn load(&self) -> Result<Option<Position>> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.fail(format!("cannot read: {e}"))),
        };
        let stored: Stored = serde_json::from_slice(&bytes).map_err(|e| self.fail(format!("corrupt: {e}")))?;
        if stored.version != 1 {
            return Err(self.fail(format!("unknown version {}", stored.version)));
        }
        if stored.pipeline != self.pipeline {
            return Err(self.fail(format!(
                "belongs to pipeline \"{}\", not \"{}\"; give each pipeline its own offset store",
                stored.pipeline, self.pipeline
            )));
        }
        Ok(Some(stored.position))
    }

    /// Commits `position`: writes a temporary file, syncs it, renames it over
    /// the store and syncs the directory, so a crash leaves either the old or
    /// the new position, never a torn file.
    pub fn commit(&self, source: &str, position: &Position) -> Result<()> {
        let stored = Stored {
            version: 1,
            pipeline: self.pipeline.clone(),
            source: source.to_string(),
            position: position.clone(),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::PartitionPosition;

    #[test]
    fn commit_then_load_roundtrips_and_checks_owner() {
        let dir = std::env::temp_dir().join(format!("sinkbox-offsets-{}", std::process::id()));
        let path = dir.join("p.offsets.json");
        let store = OffsetStore::new(&path, "p");
        assert_eq!(store.load().unwrap(), None);
        let position = Position {
            partitions: vec![PartitionPosition { topic: "t".into(), partition: 0, next_offset: 42, byte: Some(999) }],
        };
        store.commit("file t", &position).unwrap();
        assert_eq!(store.load().unwrap(), Some(position));
        let other = OffsetStore::new(&path, "q");
        let err = other.load().unwrap_err().to_string();
        assert!(err.contains("belongs to pipeline \"p\", not \"q\""), "{err}");
        fs::write(&path, b"{").unwrap();
        assert!(store.load().unwrap_err().to_string().contains("corrupt"));
        fs::remove_dir_all(dir).unwrap();
    }
}
