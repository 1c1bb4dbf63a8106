//! A disk quota per sink: what its writable granted directories may hold.
//!
//! The quota is enforced on the guest's writes, not after the fact: the
//! WASI filesystem functions that write (`write-via-stream`,
//! `append-via-stream`, `write`, and `set-size` when it grows a file) are
//! shadowed in the linker by versions that call wasmtime-wasi's own and
//! charge what is written to the quota; a stream is wrapped in one that
//! refuses a write over budget. A refused write fails in the guest with
//! `insufficient-space` ("no space left on device"), and the sandbox
//! records it, so the call fails with [`Fault::Disk`] whatever the guest
//! makes of the error.
//!
//! Accounting: what the directories hold is measured (a bounded walk) when
//! the sink's first instance starts, again after every checkpoint and
//! before every retry, and every byte written since is added. An overwrite
//! counts as new bytes until the next measurement, so the count errs on
//! the side of the quota.
//!
//! [`Fault::Disk`]: crate::error::Fault::Disk

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::async_trait;
use wasmtime_wasi::filesystem::WasiFilesystemView;
use wasmtime_wasi::p2::bindings::filesystem::types::{Descriptor, ErrorCode, Host as _, HostDescriptor};
use wasmtime_wasi::p2::{DynOutputStream, FsResult, OutputStream, Pollable, StreamError, StreamResult};

use super::{DirGrant, StoreState};

/// The filesystem interface whose write functions are shadowed; guests
/// importing any 0.2.x version of it link to this one.
const FILESYSTEM_TYPES: &str = "wasi:filesystem/types@0.2.12";

/// Entries one measurement looks at, at most; a tree larger than this is
/// counted as far as the walk got (and a warning says so).
const MAX_WALK: usize = 100_000;

/// A sink's disk quota, shared by all its instances. Cheap to clone:
/// clones share one count. Two quotas are equal only if they are one.
#[derive(Clone)]
pub struct DiskQuota(Arc<Inner>);

struct Inner {
    limit: u64,
    /// The writable granted directories: host path and guest path.
    dirs: Vec<(PathBuf, String)>,
    measured: AtomicBool,
    /// What the directories held when last measured.
    base: AtomicU64,
    /// Bytes written since.
    written: AtomicU64,
    /// Serialises measurements.
    walking: Mutex<()>,
}

impl DiskQuota {
    /// A quota of `limit` bytes over the writable directories in `dirs`.
    pub fn new(limit: u64, dirs: &[DirGrant]) -> DiskQuota {
        let dirs = dirs.iter().filter(|d| d.writable).map(|d| (d.host.clone(), d.guest.clone())).collect();
        DiskQuota(Arc::new(Inner {
            limit,
            dirs,
            measured: AtomicBool::new(false),
            base: AtomicU64::new(0),
            written: AtomicU64::new(0),
            walking: Mutex::new(()),
        }))
    }

    /// The limit in bytes.
    pub fn limit(&self) -> u64 {
        self.0.limit
    }

    /// The guest paths it covers, for messages: `/out` or `/out, /logs`.
    pub fn guest_dirs(&self) -> String {
        self.0.dirs.iter().map(|(_, guest)| guest.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// Bytes the directories hold by the current count.
    pub fn used(&self) -> u64 {
        self.0.base.load(Ordering::Relaxed).saturating_add(self.0.written.load(Ordering::Relaxed))
    }

    /// Measures what the directories hold now (a bounded walk that does
    /// not follow symbolic links) and starts the count of writes over.
    pub fn measure(&self) {
        let _walking = self.0.walking.lock().unwrap_or_else(|p| p.into_inner());
        let mut total = 0u64;
        let mut seen = 0usize;
        let mut stack: Vec<PathBuf> = self.0.dirs.iter().map(|(host, _)| host.clone()).collect();
        'walk: while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                seen += 1;
                if seen > MAX_WALK {
                    tracing::warn!(
                        "the disk quota of {} counts only the first {MAX_WALK} entries of its directories",
                        self.guest_dirs()
                    );
                    break 'walk;
                }
                let Ok(meta) = entry.path().symlink_metadata() else { continue };
                if meta.is_dir() {
                    stack.push(entry.path());
                } else if meta.is_file() {
                    total = total.saturating_add(meta.len());
                }
            }
        }
        self.0.base.store(total, Ordering::Relaxed);
        self.0.written.store(0, Ordering::Relaxed);
        self.0.measured.store(true, Ordering::Relaxed);
    }

    /// Measures, unless that was done already.
    pub(crate) fn measure_once(&self) {
        if !self.0.measured.load(Ordering::Relaxed) {
            self.measure();
        }
    }

    /// Counts `n` more bytes, if they fit.
    fn charge(&self, n: u64) -> bool {
        let base = self.0.base.load(Ordering::Relaxed);
        self.0
            .written
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |written| {
                let after = written.checked_add(n)?;
                (base.saturating_add(after) <= self.0.limit).then_some(after)
            })
            .is_ok()
    }

    /// Takes back `n` bytes counted for a write that failed.
    fn refund(&self, n: u64) {
        let _ = self.0.written.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| Some(w.saturating_sub(n)));
    }
}

impl PartialEq for DiskQuota {
    fn eq(&self, other: &DiskQuota) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for DiskQuota {}

impl fmt::Debug for DiskQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskQuota").field("limit", &self.0.limit).field("dirs", &self.guest_dirs()).finish()
    }
}

/// One store's view of its sink's quota: the quota, if any, and whether a
/// write of this instance was refused.
#[derive(Default)]
pub(crate) struct StoreQuota {
    quota: Option<DiskQuota>,
    exceeded: Arc<AtomicBool>,
}

impl StoreQuota {
    pub(crate) fn new(quota: Option<DiskQuota>) -> StoreQuota {
        if let Some(quota) = &quota {
            quota.measure_once();
        }
        StoreQuota { quota, exceeded: Arc::default() }
    }

    /// The quota, if a write was refused since the last call.
    pub(crate) fn take_exceeded(&self) -> Option<&DiskQuota> {
        if self.exceeded.swap(false, Ordering::Relaxed) { self.quota.as_ref() } else { None }
    }

    /// Counts `n` bytes; false (and recorded) if they do not fit.
    fn charge(&self, n: u64) -> bool {
        match &self.quota {
            Some(quota) if !quota.charge(n) => {
                self.exceeded.store(true, Ordering::Relaxed);
                false
            }
            _ => true,
        }
    }

    fn refund(&self, n: u64) {
        if let Some(quota) = &self.quota {
            quota.refund(n);
        }
    }
}

/// The error a refused write gives the guest: no space left on device.
fn no_space() -> std::io::Error {
    // ENOSPC on Linux and macOS; wasmtime-wasi maps it to
    // `insufficient-space`.
    std::io::Error::from_raw_os_error(28)
}

/// An output stream that charges every write to its sink's quota.
struct Counted {
    inner: DynOutputStream,
    quota: DiskQuota,
    exceeded: Arc<AtomicBool>,
}

#[async_trait]
impl OutputStream for Counted {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        if !self.quota.charge(bytes.len() as u64) {
            self.exceeded.store(true, Ordering::Relaxed);
            return Err(StreamError::LastOperationFailed(wasmtime::Error::new(no_space())));
        }
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        self.inner.check_write()
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

#[async_trait]
impl Pollable for Counted {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

/// Wraps the stream a write-via-stream or append-via-stream returned, if
/// the sink has a quota.
fn counted(state: &mut StoreState, opened: FsResult<Resource<DynOutputStream>>) -> wasmtime::Result<StreamOrError> {
    let stream = match opened {
        Ok(stream) => stream,
        Err(e) => return Ok((Err(state.filesystem().convert_error_code(e)?),)),
    };
    let Some(quota) = state.quota.quota.clone() else { return Ok((Ok(stream),)) };
    let inner = state.table.delete(stream)?;
    let counted: DynOutputStream = Box::new(Counted { inner, quota, exceeded: state.quota.exceeded.clone() });
    Ok((Ok(state.table.push(counted)?),))
}

type StreamOrError = (Result<Resource<DynOutputStream>, ErrorCode>,);

/// Shadows the filesystem's write functions with quota-checking ones.
pub(super) fn link(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(FILESYSTEM_TYPES)?;
    types.func_wrap(
        "[method]descriptor.write-via-stream",
        |mut store: StoreContextMut<'_, StoreState>, (fd, offset): (Resource<Descriptor>, u64)| {
            let state = store.data_mut();
            let opened = HostDescriptor::write_via_stream(&mut state.filesystem(), fd, offset);
            counted(state, opened)
        },
    )?;
    types.func_wrap(
        "[method]descriptor.append-via-stream",
        |mut store: StoreContextMut<'_, StoreState>, (fd,): (Resource<Descriptor>,)| {
            let state = store.data_mut();
            let opened = HostDescriptor::append_via_stream(&mut state.filesystem(), fd);
            counted(state, opened)
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.write",
        |mut store: StoreContextMut<'_, StoreState>, (fd, buf, offset): (Resource<Descriptor>, Vec<u8>, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                let n = buf.len() as u64;
                if !state.quota.charge(n) {
                    return Ok((Err(ErrorCode::InsufficientSpace),));
                }
                let mut fs = state.filesystem();
                let written = HostDescriptor::write(&mut fs, fd, buf, offset).await;
                let result = match written {
                    Ok(written) => Ok(written),
                    Err(e) => Err(fs.convert_error_code(e)?),
                };
                if result.is_err() {
                    state.quota.refund(n);
                }
                Ok((result,))
            })
        },
    )?;
    types.func_wrap_async(
        "[method]descriptor.set-size",
        |mut store: StoreContextMut<'_, StoreState>, (fd, size): (Resource<Descriptor>, u64)| {
            Box::new(async move {
                let state = store.data_mut();
                let mut growth = 0;
                if state.quota.quota.is_some() {
                    let this = Resource::new_borrow(fd.rep());
                    let current = match HostDescriptor::stat(&mut state.filesystem(), this).await {
                        Ok(stat) => stat.size,
                        Err(e) => return Ok((Err(state.filesystem().convert_error_code(e)?),)),
                    };
                    growth = size.saturating_sub(current);
                    if !state.quota.charge(growth) {
                        return Ok((Err(ErrorCode::InsufficientSpace),));
                    }
                }
                let mut fs = state.filesystem();
                let result = match HostDescriptor::set_size(&mut fs, fd, size).await {
                    Ok(()) => Ok(()),
                    Err(e) => Err(fs.convert_error_code(e)?),
                };
                if result.is_err() {
                    state.quota.refund(growth);
                }
                Ok((result,))
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_counts_what_its_directories_hold_and_what_is_written_since() {
        let dir = std::env::temp_dir().join(format!("sinkbox-quota-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("out/sub")).unwrap();
        std::fs::create_dir_all(dir.join("ro")).unwrap();
        std::fs::write(dir.join("out/a"), vec![0; 300]).unwrap();
        std::fs::write(dir.join("out/sub/b"), vec![0; 200]).unwrap();
        std::fs::write(dir.join("ro/c"), vec![0; 5000]).unwrap();
        let grants = [
            DirGrant { host: dir.join("out"), guest: "/out".into(), writable: true },
            DirGrant { host: dir.join("ro"), guest: "/ro".into(), writable: false },
        ];
        let quota = DiskQuota::new(1000, &grants);
        assert_eq!(quota.guest_dirs(), "/out");
        let store = StoreQuota::new(Some(quota.clone()));
        assert_eq!(quota.used(), 500);
        assert!(store.charge(400));
        assert!(!store.charge(101), "500 + 400 + 101 is over 1000");
        assert_eq!(store.take_exceeded(), Some(&quota));
        assert_eq!(store.take_exceeded(), None);
        assert!(store.charge(100));
        // Freed space counts once measured again.
        std::fs::remove_file(dir.join("out/a")).unwrap();
        quota.measure();
        assert_eq!(quota.used(), 200);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
