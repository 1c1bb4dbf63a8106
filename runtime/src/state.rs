//! A pipeline's state on disk: its offset store, its dead-letter file, and
//! the lock that keeps two runs of one pipeline apart.
//!
//! The lock is an exclusive `flock` on `OFFSETS.lock` (next to the offset
//! store), taken with the standard library's [`File::try_lock`], so it
//! needs no dependency and the kernel releases it when the holder exits,
//! however it exits. The holder writes its pid into the file for the
//! message the next run prints. The file itself is never deleted: deleting
//! a lock file lets two runs lock two different files.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::checkpoint::OffsetStore;
use crate::error::{Error, Result};
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
        let io = |what: &str, e| Error::io(format!("pipeline \"{}\": cannot {what} {}", self.name, path.display()), e);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
        }
        // Not truncated on open: the holder's pid must stay readable.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("open", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path).ok().and_then(|text| text.trim().parse().ok());
                return Err(Error::Locked { pipeline: self.name.clone(), lock: path, holder });
            }
            Err(TryLockError::Error(e)) => return Err(io("lock", e)),
        }
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .and_then(|()| file.flush())
            .map_err(|e| io("write", e))?;
        Ok(StateLock { _file: file, path })
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
        fs::remove_dir_all(dir).unwrap();
    }
}
