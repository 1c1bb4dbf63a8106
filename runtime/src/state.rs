//! A pipeline's state on disk: its offset store, its dead-letter file, and
//! the lock that keeps two runs of one pipeline apart.
//!
//! The lock is an exclusive `flock` on `OFFSETS.lock` (next to the offset
//! store), taken as [`crate::lock`] takes every lock: the kernel releases
//! it when the holder exits, however it exits, and the holder's pid is in
//! the file for the message the next run prints.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::checkpoint::OffsetStore;
use crate::error::{Error, Result};
use crate::lock::{LockFailure, lock_file};
use crate::source::Position;

/// Where a pipeline keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineState {
    /// The pipeline's name.
    pub name: String,
    /// The offset store.
    pub offsets: PathBuf,
    /// The dead-letter file.
    pub dead_letter: PathBuf,
}

/// What [`PipelineState::reset`] did.
#[derive(Debug)]
pub struct Reset {
    /// The offset store that was deleted, and the position it held (`None`
    /// if there was none or it could not be read).
    pub offsets: PathBuf,
    /// Whether there was an offset store to delete.
    pub deleted: bool,
    /// The position it held, if readable.
    pub position: Option<Position>,
    /// The dead-letter file, kept, if it exists.
    pub dead_letters_kept: Option<PathBuf>,
}

impl PipelineState {
    /// The lock file: the offset store's path with `.lock` appended.
    pub fn lock_path(&self) -> PathBuf {
        let mut path = self.offsets.clone().into_os_string();
        path.push(".lock");
        PathBuf::from(path)
    }

    /// Takes the pipeline's lock, or fails at once with
    /// [`Error::Locked`] naming the holder's pid. The lock is held until
    /// the returned [`StateLock`] is dropped (or the process exits).
    pub fn lock(&self) -> Result<StateLock> {
        let path = self.lock_path();
        match lock_file(&path, &self.name) {
            Ok(file) => Ok(StateLock { _file: file, path }),
            Err(LockFailure::Held(holder)) => {
                Err(Error::Locked { pipeline: self.name.clone(), lock: path, holder: holder.pid })
            }
            Err(LockFailure::Io(what, e)) => {
                Err(Error::io(format!("pipeline \"{}\": cannot {what} {}", self.name, path.display()), e))
            }
        }
    }

    /// Deletes the offset store so the next run starts from the beginning
    /// of its input; keeps the dead-letter file. Take the lock first.
    pub fn reset(&self) -> Result<Reset> {
        let existed = self.offsets.exists();
        let position = OffsetStore::new(&self.offsets, &self.name).reset()?;
        Ok(Reset {
            offsets: self.offsets.clone(),
            deleted: existed,
            position,
            dead_letters_kept: self.dead_letter.exists().then(|| self.dead_letter.clone()),
        })
    }
}

/// A held pipeline lock; dropping it releases the lock.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_naming_pipeline_file_and_pid_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("sinkbox-lock-{}", std::process::id()));
        let state = PipelineState {
            name: "orders".into(),
            offsets: dir.join("state/orders.offsets.json"),
            dead_letter: dir.join("dead.jsonl"),
        };
        let held = state.lock().unwrap();
        assert_eq!(held.path(), dir.join("state/orders.offsets.json.lock"));
        let err = state.lock().unwrap_err().to_string();
        let expected = format!(
            "pipeline \"orders\" is already running: its lock file {} is held by pid {}",
            held.path().display(),
            std::process::id()
        );
        assert_eq!(err, expected);
        drop(held);
        let again = state.lock().unwrap();
        drop(again);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
