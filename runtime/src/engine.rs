//! The one place that configures wasmtime.
//!
//! An [`Engine`] owns a `wasmtime::Engine` set up for sinks (async calls,
//! fuel, epoch interruption driven by a ticker thread, optionally the
//! pooling allocator), a linker, and an on-disk cache of compiled
//! components. `wasmtime::Config` never leaves this file.
//!
//! The engine is generic over its store data, as Spin's is: it knows
//! nothing of sandboxes or of the sink world. The sandbox module supplies
//! the store type and links its imports (`sandbox::Engine` is the engine of
//! sink sandboxes).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, InstancePre, Linker};

use crate::error::{Error, Result};

/// How often the ticker advances the epoch; wall-clock deadlines are
/// counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Engine-wide settings. Defaults: epoch deadlines on, fuel off, pooling on
/// (1,000 instances of up to 4 GiB of linear memory each), cache in
/// `$XDG_CACHE_HOME/sinkbox` (or `~/.cache/sinkbox`).
///
/// Why fuel is off by default: metering every basic block cost 10-60% of
/// guest speed in our benchmarks (BENCHMARKS.md, section 3), far above the
/// 10% we allow for limits. The wall-clock deadline per call, checked at
/// every loop and function entry through epochs, is what stops a runaway
/// guest; fuel is for operators who want deterministic, CPU-independent
/// budgets and per-sink fuel accounting, and turn it on knowingly.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub(crate) fuel: bool,
    pub(crate) epochs: bool,
    pub(crate) pooling: Option<Pooling>,
    pub(crate) cache_dir: Option<PathBuf>,
}

/// Pooling allocator sizes.
#[derive(Debug, Clone, Copy)]
pub struct Pooling {
    /// Instances alive at once. Default 1,000.
    pub instances: u32,
    /// Largest linear memory any instance may grow to. Default 4 GiB.
    pub max_memory: usize,
}

impl Default for Pooling {
    fn default() -> Self {
        Pooling { instances: 1_000, max_memory: 4 << 30 }
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { fuel: false, epochs: true, pooling: Some(Pooling::default()), cache_dir: default_cache_dir() }
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("sinkbox"))
}

impl EngineOptions {
    /// Meter guest execution with fuel (default off), enforcing the
    /// `fuel_per_record` and `fuel_per_call` limits. Off, the wall-clock
    /// deadline alone bounds a call.
    pub fn fuel(mut self, on: bool) -> Self {
        self.fuel = on;
        self
    }

    /// Interrupt guests at wall-clock deadlines (default on). Turning it off
    /// is for benchmarks only: with fuel off too, a looping guest hangs.
    pub fn epochs(mut self, on: bool) -> Self {
        self.epochs = on;
        self
    }

    /// Use the pooling allocator with these sizes, or on-demand allocation.
    pub fn pooling(mut self, pooling: Option<Pooling>) -> Self {
        self.pooling = pooling;
        self
    }

    /// Where compiled components are cached; `None` disables the cache.
    pub fn cache_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.cache_dir = dir;
        self
    }
}

/// A configured wasmtime engine, a linker for stores holding `T`, and the
/// component cache. Cheap to clone.
pub struct Engine<T: 'static> {
    inner: Arc<Inner<T>>,
}

impl<T: 'static> Clone for Engine<T> {
    fn clone(&self) -> Self {
        Engine { inner: self.inner.clone() }
    }
}

struct Inner<T: 'static> {
    engine: wasmtime::Engine,
    linker: Linker<T>,
    options: EngineOptions,
    /// Hash of the engine settings that compiled code depends on.
    settings_hash: u64,
    /// Components embedded in the runtime, once linked, by origin.
    embedded: Mutex<HashMap<&'static str, InstancePre<T>>>,
    /// Components loaded through the cache, by cache entry (their bytes'
    /// hash): a thousand pipelines of one sink share one compiled copy,
    /// its code mapped once. At most [`LOADED`] are kept.
    loaded: Mutex<HashMap<PathBuf, Component>>,
}

/// Compiled components kept in memory for reuse, at most.
const LOADED: usize = 256;

/// A compiled, pre-linked component, ready to instantiate.
pub struct Linked<T: 'static> {
    /// The component linked against the engine's linker.
    pub pre: InstancePre<T>,
    /// Where the component came from, for messages.
    pub origin: String,
    /// How it was obtained.
    pub load: LoadInfo,
}

/// A component's interface, as `sinkbox inspect` shows it.
pub struct Described<T: 'static> {
    /// Imported interface names, e.g. `wasi:cli/stdout@0.2.6`.
    pub imports: Vec<String>,
    /// Exported interface names, e.g. `sinkbox:sink/sink@0.2.0`.
    pub exports: Vec<String>,
    /// The component linked, or why it cannot be.
    pub linked: Result<Linked<T>>,
}

/// How a component was loaded, for status and benchmarks.
#[derive(Debug, Clone, Copy)]
pub struct LoadInfo {
    /// Whether it came from the compiled-component cache.
    pub cached: bool,
    /// Time to compile or deserialize it.
    pub elapsed: Duration,
}

impl<T: 'static> Engine<T> {
    /// Builds an engine whose linker `link` fills. The pooling allocator
    /// reserves address space up front; when the machine refuses that, the
    /// engine falls back to on-demand allocation and logs a warning.
    pub fn with_linker(
        options: EngineOptions,
        link: impl FnOnce(&mut Linker<T>) -> wasmtime::Result<()>,
    ) -> Result<Engine<T>> {
        let (engine, options) = match build(&options) {
            Ok(engine) => (engine, options),
            Err(e) if options.pooling.is_some() => {
                tracing::warn!("pooling allocator unavailable ({e}); using on-demand allocation");
                let options = options.pooling(None);
                (build(&options).map_err(|e| Error::Engine(e.into()))?, options)
            }
            Err(e) => return Err(Error::Engine(e.into())),
        };
        let mut linker = Linker::new(&engine);
        link(&mut linker).map_err(|e| Error::Engine(e.into()))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let settings_hash = hasher.finish();
        if options.epochs {
            spawn_ticker(&engine);
        }
        let embedded = Mutex::default();
        Ok(Engine {
            inner: Arc::new(Inner { engine, linker, options, settings_hash, embedded, loaded: Mutex::default() }),
        })
    }

    /// The wasmtime engine, for stores.
    pub(crate) fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.engine
    }

    /// Whether instances come from the pooling allocator (it may have been
    /// asked for but unavailable).
    pub fn pooling_enabled(&self) -> bool {
        self.inner.options.pooling.is_some()
    }

    pub(crate) fn options(&self) -> &EngineOptions {
        &self.inner.options
    }

    /// Loads a component from a file, through the cache.
    ///
    /// Hashing a large component (a 19 MiB Python one takes ~10 ms) would
    /// dominate a cached start, so the cache also remembers which compiled
    /// entry a file had, keyed by the file's identity (device, inode, size,
    /// modification and change times): an unchanged file loads without
    /// being read. Any write to the file changes its change time, which a
    /// user cannot set, so a modified file is always hashed again.
    pub fn link_file(&self, path: &Path) -> Result<Linked<T>> {
        let origin = path.display().to_string();
        let memo = self.file_memo(path);
        if let Some(entry) = memo.as_ref().and_then(|m| std::fs::read_to_string(m).ok()) {
            let started = Instant::now();
            if let Some(component) = self.cache_dir().and_then(|dir| self.deserialize(&dir.join(entry.trim()))) {
                let pre = self.instantiate_pre(&component, &origin)?;
                return Ok(Linked { pre, origin, load: LoadInfo { cached: true, elapsed: started.elapsed() } });
            }
        }
        let bytes = std::fs::read(path)
            .map_err(|e| Error::Io { what: format!("cannot read component {origin}"), source: e })?;
        let (component, entry) = self.load_entry(&bytes, &origin)?;
        if let (Some(memo), Some(entry)) = (memo, entry) {
            let name = entry.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if let Err(e) = write_atomically(&memo, name.as_bytes()) {
                tracing::warn!("cannot write the component cache {}: {e}", memo.display());
            }
        }
        Ok(component)
    }

    fn cache_dir(&self) -> Option<&PathBuf> {
        self.inner.options.cache_dir.as_ref()
    }

    /// Where the cache remembers the compiled entry of the file at `path`
    /// as it is now; `None` without a cache or a file identity.
    fn file_memo(&self, path: &Path) -> Option<PathBuf> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.cache_dir()?;
        let meta = std::fs::metadata(path).ok()?;
        let canonical = path.canonicalize().ok()?;
        let mut h = Sha256::new();
        h.update(canonical.as_os_str().as_encoded_bytes());
        for n in [meta.dev(), meta.ino(), meta.size()] {
            h.update(n.to_le_bytes());
        }
        for n in [meta.mtime(), meta.mtime_nsec(), meta.ctime(), meta.ctime_nsec()] {
            h.update(n.to_le_bytes());
        }
        h.update(self.inner.settings_hash.to_le_bytes());
        let hex: String = h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect();
        Some(dir.join("files").join(hex))
    }

    /// Forgets the compiled components kept in memory: the next load of
    /// each reads the on-disk cache again (what a new process does).
    /// Instances and pipelines holding one keep it.
    pub fn forget_loaded(&self) {
        self.inner.loaded.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// A compiled entry of the cache, or `None` if it is missing or unusable.
    fn deserialize(&self, path: &Path) -> Option<Component> {
        if !path.exists() {
            return None;
        }
        // SAFETY: the file was written by `Engine::precompile_component`
        // of an engine with the same settings hash, in a directory this
        // user owns; wasmtime also checks the header's version and
        // settings and refuses a mismatch, which we treat as a miss.
        match unsafe { Component::deserialize_file(&self.inner.engine, path) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!("ignoring unusable cache entry {}: {e}", path.display());
                None
            }
        }
    }

    /// Loads a component from its bytes, through the cache. `origin` names
    /// it in messages.
    pub fn link(&self, bytes: &[u8], origin: &str) -> Result<Linked<T>> {
        self.load_entry(bytes, origin).map(|(component, _)| component)
    }

    /// [`Engine::link`], also returning the cache entry's path.
    fn load_entry(&self, bytes: &[u8], origin: &str) -> Result<(Linked<T>, Option<PathBuf>)> {
        let started = Instant::now();
        let (component, cached, entry) = self.compile_cached(bytes, origin)?;
        let pre = self.instantiate_pre(&component, origin)?;
        let load = LoadInfo { cached, elapsed: started.elapsed() };
        Ok((Linked { pre, origin: origin.to_string(), load }, entry))
    }

    /// What a component imports and exports, and whether it links; for
    /// `sinkbox inspect`. Fails only if the bytes are not a component.
    pub fn describe(&self, bytes: &[u8], origin: &str) -> Result<Described<T>> {
        let (component, _, _) = self.compile_cached(bytes, origin)?;
        let (imports, exports) = self.interface(&component);
        let linked = self.instantiate_pre(&component, origin).map(|pre| Linked {
            pre,
            origin: origin.to_string(),
            load: LoadInfo { cached: true, elapsed: Duration::ZERO },
        });
        Ok(Described { imports, exports, linked })
    }

    /// The names of what `component` imports and exports.
    pub fn interface(&self, component: &Component) -> (Vec<String>, Vec<String>) {
        let ty = component.component_type();
        let engine = &self.inner.engine;
        let imports = ty.imports(engine).map(|(name, _)| name.to_string()).collect();
        let exports = ty.exports(engine).map(|(name, _)| name.to_string()).collect();
        (imports, exports)
    }

    /// Loads a component embedded in the runtime, through the cache, once
    /// per engine: later calls neither hash nor load it again. `origin`
    /// names it in messages and keys the memo.
    pub fn link_embedded(&self, bytes: &'static [u8], origin: &'static str) -> Result<InstancePre<T>> {
        // A poisoned lock only means another thread panicked while linking;
        // the map holds only finished entries.
        let mut embedded = self.inner.embedded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pre) = embedded.get(origin) {
            return Ok(pre.clone());
        }
        let linked = self.link(bytes, origin)?;
        tracing::debug!(origin, cached = linked.load.cached, elapsed = ?linked.load.elapsed, "loaded an embedded component");
        embedded.insert(origin, linked.pre.clone());
        Ok(linked.pre)
    }

    /// Compiles without the cache, for benchmarks of cold starts.
    pub fn link_uncached(&self, bytes: &[u8], origin: &str) -> Result<Linked<T>> {
        let started = Instant::now();
        let component = self.compile(bytes, origin)?;
        let pre = self.instantiate_pre(&component, origin)?;
        Ok(Linked { pre, origin: origin.to_string(), load: LoadInfo { cached: false, elapsed: started.elapsed() } })
    }

    fn compile(&self, bytes: &[u8], origin: &str) -> Result<Component> {
        Component::new(&self.inner.engine, bytes)
            .map_err(|e| Error::Component { origin: origin.to_string(), source: e.into() })
    }

    fn instantiate_pre(&self, component: &Component, origin: &str) -> Result<InstancePre<T>> {
        self.inner.linker.instantiate_pre(component).map_err(|e| {
            let (imports, exports) = self.interface(component);
            Error::Unlinkable { origin: origin.to_string(), imports, exports, source: e.into() }
        })
    }

    /// The cache key: the component's content hash and the engine settings
    /// hash (target, tunables, wasmtime version), so a changed setting or a
    /// wasmtime upgrade never loads stale code.
    fn cache_path(&self, bytes: &[u8]) -> Option<PathBuf> {
        let dir = self.inner.options.cache_dir.as_ref()?;
        let digest = Sha256::digest(bytes);
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        Some(dir.join(format!("{hex}-{:016x}.cwasm", self.inner.settings_hash)))
    }

    /// Loads or compiles `bytes`; also returns whether it came from the
    /// cache and the cache entry's path (hashing large components is costly,
    /// so callers that need the entry take it from here).
    fn compile_cached(&self, bytes: &[u8], origin: &str) -> Result<(Component, bool, Option<PathBuf>)> {
        let Some(path) = self.cache_path(bytes) else {
            return Ok((self.compile(bytes, origin)?, false, None));
        };
        if let Some(component) = self.inner.loaded.lock().unwrap_or_else(|p| p.into_inner()).get(&path) {
            return Ok((component.clone(), true, Some(path)));
        }
        let (component, cached) = match self.deserialize(&path) {
            Some(component) => (component, true),
            None => {
                let component = self.compile(bytes, origin)?;
                if let Err(e) = write_cache(&path, &component) {
                    tracing::warn!("cannot write the component cache {}: {e}", path.display());
                }
                (component, false)
            }
        };
        let mut loaded = self.inner.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.len() >= LOADED {
            loaded.clear();
        }
        loaded.insert(path.clone(), component.clone());
        Ok((component, cached, Some(path)))
    }
}

/// Writes a cache entry atomically.
fn write_cache(path: &Path, component: &Component) -> std::io::Result<()> {
    write_atomically(path, &component.serialize().map_err(std::io::Error::other)?)
}

/// Writes a file through a temporary and a rename, so a crash or a
/// concurrent writer never leaves a torn file that a later run would load.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("entry");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn build(options: &EngineOptions) -> wasmtime::Result<wasmtime::Engine> {
    let mut config = wasmtime::Config::new();
    // Every guest call is async: a guest yields to the executor at each
    // epoch tick, and a call's deadline covers its host calls too.
    config.consume_fuel(options.fuel);
    config.epoch_interruption(options.epochs);
    // Sinks are built from untrusted sources: keep Spectre mitigations and
    // guard pages at their defaults, and let copy-on-write images make
    // instantiation cheap.
    config.memory_init_cow(true);
    if let Some(pooling) = options.pooling {
        let mut p = wasmtime::PoolingAllocationConfig::default();
        p.total_component_instances(pooling.instances);
        p.total_core_instances(pooling.instances.saturating_mul(4));
        p.total_memories(pooling.instances.saturating_mul(2));
        p.total_tables(pooling.instances.saturating_mul(4));
        p.max_memory_size(pooling.max_memory);
        // Keep a little of each memory resident between instances so reuse
        // does not fault pages in again.
        p.linear_memory_keep_resident(64 << 10);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(p));
    }
    wasmtime::Engine::new(&config)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is
/// dropped.
fn spawn_ticker(engine: &wasmtime::Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("sinkbox-epoch".into()).spawn(move || {
        while let Some(engine) = weak.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(EPOCH_TICK);
        }
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the epoch ticker thread ({e}); wall-clock deadlines will not fire");
    }
}
