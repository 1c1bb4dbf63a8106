//! Exclusive locks that keep two runs apart: on a pipeline's state (see
//! [`crate::state`]) and on each writable directory a sink is granted.
//!
//! A lock is an exclusive `flock` on a lock file, taken without waiting
//! with the standard library's [`File::try_lock`], so the kernel releases
//! it when the holder exits, however it exits. The holder writes its pid
//! and pipeline into the file, one a line, for the message the next run
//! prints. A lock file is never deleted: deleting it lets two runs lock two
//! different files.
//!
//! A granted directory's lock file is `.sinkbox.lock` in the directory
//! (the sink sees it; a sink that deletes it gives up its own protection).
//! Within one process, the sinks and lanes of one pipeline share the
//! directory's lock through a registry keyed by the directory's canonical
//! path; another pipeline of the same process is refused like another
//! process.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use crate::error::{Error, Result};

/// The lock file in each writable granted directory.
pub const OUTPUT_LOCK: &str = ".sinkbox.lock";

/// Who holds a lock, as its lock file says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holder {
    /// Its process id.
    pub pid: Option<u32>,
    /// Its pipeline.
    pub pipeline: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.pipeline, self.pid) {
            (Some(pipeline), Some(pid)) => write!(f, "pipeline \"{pipeline}\" (pid {pid})"),
            (None, Some(pid)) => write!(f, "pid {pid}"),
            (Some(pipeline), None) => write!(f, "pipeline \"{pipeline}\""),
            (None, None) => f.write_str("another process"),
        }
    }
}

/// Why [`lock_file`] failed.
pub(crate) enum LockFailure {
    /// Someone else holds it.
    Held(Holder),
    /// The file could not be created, opened, locked or written: what was
    /// being done, and the error.
    Io(&'static str, std::io::Error),
}

/// Opens `path` (creating it and its directory) and locks it, or fails at
/// once if it is held. Writes this process's pid and `pipeline` into it.
pub(crate) fn lock_file(path: &Path, pipeline: &str) -> std::result::Result<File, LockFailure> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(|e| LockFailure::Io("create the directory of", e))?;
    }
    // Not truncated on open: the holder's pid must stay readable.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| LockFailure::Io("open", e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Err(LockFailure::Held(holder(path))),
        Err(TryLockError::Error(e)) => return Err(LockFailure::Io("lock", e)),
    }
    file.set_len(0)
        .and_then(|()| writeln!(file, "{}\n{pipeline}", std::process::id()))
        .and_then(|()| file.flush())
        .map_err(|e| LockFailure::Io("write", e))?;
    Ok(file)
}

/// What a lock file says about its holder.
fn holder(path: &Path) -> Holder {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines();
    let pid = lines.next().and_then(|l| l.trim().parse().ok());
    let pipeline = lines.next().map(str::trim).filter(|l| !l.is_empty()).map(String::from);
    Holder { pid, pipeline }
}

/// A held lock on a writable granted directory; the last clone dropped
/// releases it.
#[derive(Debug)]
pub struct OutputLock {
    dir: PathBuf,
    path: PathBuf,
    pipeline: String,
    _file: File,
}

impl OutputLock {
    /// The directory, canonical.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The process's held directory locks, by canonical directory.
static OUTPUTS: Mutex<Option<HashMap<PathBuf, Weak<OutputLock>>>> = Mutex::new(None);

/// Locks `dir` for `pipeline`: shares the lock it already holds in this
/// process, or takes it, or fails at once with [`Error::OutputLocked`].
pub fn lock_output(dir: &Path, pipeline: &str) -> Result<Arc<OutputLock>> {
    let canonical = dir.canonicalize().map_err(|e| {
        Error::io(format!("pipeline \"{pipeline}\": cannot find granted directory {}", dir.display()), e)
    })?;
    let path = canonical.join(OUTPUT_LOCK);
    let mut outputs = OUTPUTS.lock().unwrap_or_else(|p| p.into_inner());
    let outputs = outputs.get_or_insert_with(HashMap::new);
    outputs.retain(|_, lock| lock.strong_count() > 0);
    if let Some(held) = outputs.get(&canonical).and_then(Weak::upgrade) {
        if held.pipeline == pipeline {
            return Ok(held);
        }
        let holder = Holder { pid: Some(std::process::id()), pipeline: Some(held.pipeline.clone()) };
        return Err(Error::OutputLocked { pipeline: pipeline.to_string(), dir: canonical, lock: path, holder });
    }
    let file = match lock_file(&path, pipeline) {
        Ok(file) => file,
        Err(LockFailure::Held(holder)) => {
            return Err(Error::OutputLocked { pipeline: pipeline.to_string(), dir: canonical, lock: path, holder });
        }
        Err(LockFailure::Io(what, e)) => {
            return Err(Error::io(format!("pipeline \"{pipeline}\": cannot {what} {}", path.display()), e));
        }
    };
    let lock = Arc::new(OutputLock { dir: canonical.clone(), path, pipeline: pipeline.to_string(), _file: file });
    outputs.insert(canonical, Arc::downgrade(&lock));
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pipeline_shares_a_directory_lock_and_another_is_refused_naming_the_holder() {
        let dir = std::env::temp_dir().join(format!("sinkbox-output-lock-{}", std::process::id()));
        fs::create_dir_all(dir.join("out")).unwrap();
        let first = lock_output(&dir.join("out"), "a").unwrap();
        // Another sink or lane of "a", by another spelling of the path.
        let second = lock_output(&dir.join("out/../out"), "a").unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        let err = lock_output(&dir.join("out"), "b").unwrap_err().to_string();
        let canonical = dir.join("out").canonicalize().unwrap();
        assert_eq!(
            err,
            format!(
                "pipeline \"b\" cannot write into directory {}: pipeline \"a\" (pid {}) holds its lock file {}; two \
                 pipelines must not write into one directory",
                canonical.display(),
                std::process::id(),
                canonical.join(OUTPUT_LOCK).display()
            )
        );
        drop(first);
        drop(second);
        let third = lock_output(&dir.join("out"), "b").unwrap();
        assert_eq!(fs::read_to_string(third.path()).unwrap(), format!("{}\nb\n", std::process::id()));
        drop(third);
        fs::remove_dir_all(dir).unwrap();
    }
}
