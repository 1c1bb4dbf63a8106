//! One sandbox per sink instance: its store, limits and capabilities.
//!
//! A [`SinkInstance`] wraps a component instance in its own `Store`. Every
//! call into it is async and runs under a wall-clock deadline that covers
//! the whole call, host calls included (a guest asleep in WASI is stopped
//! as surely as one spinning), a fresh fuel budget when the engine meters
//! fuel, and a memory limiter that remembers a denied growth, so an
//! exceeded limit is reported as such rather than as the guest's abort.
//! The guest yields to the executor at every epoch tick, so a guest that
//! computes for long never holds a worker thread.
//!
//! The runtime's own helper programs that compute on a guest's output (the
//! config-schema validator) run the same way, in a store of their own under
//! the sink's limits (`command.rs`).

mod budget;
mod command;
mod determinism;
mod egress;
mod instance;
mod output;
mod quota;
pub mod text;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::ResourceLimiter;
use wasmtime::component::{HasSelf, ResourceTable};
use wasmtime_wasi::sockets::WasiSocketsView;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

pub use budget::{LOG_BYTES_PER_SEC, LOG_LINES_PER_SEC};
pub use determinism::Determinism;
pub use egress::{HostGrant, HostPattern, NetLimits, NetStats, Protocol};
pub use instance::{CallStats, Failure, Interrupt, SinkInstance};
pub use quota::DiskQuota;

use crate::bindings::sinkbox as wit;
use crate::bindings::{CONTRACT, Level, SinkWorld, SinkWorldPre};
use crate::engine::{self, EngineOptions, LoadInfo};
use crate::error::{Error, Result};

/// The engine of sink sandboxes: stores hold [`StoreState`], the linker has
/// WASI (async) and the host interface.
pub type Engine = engine::Engine<StoreState>;

/// Largest snapshot a sink may return from `flush`.
pub const MAX_SNAPSHOT: usize = 64 << 10;

/// Per-instance limits. Defaults: 64 MiB of linear memory, a 10 s
/// wall-clock limit per call, 1,024 host handles (open files, directories,
/// streams and pollables together), 1,000 log lines and 1 MiB of logs per
/// call (on top of the rate per second), and, when the engine meters fuel,
/// 10 million fuel per record in `add` plus 1 billion per call (the budget
/// of `open`, `flush` and `close`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    pub(crate) memory: u64,
    pub(crate) fuel_per_record: u64,
    pub(crate) fuel_per_call: u64,
    pub(crate) timeout: Duration,
    pub(crate) handles: usize,
    pub(crate) net: NetLimits,
    pub(crate) log_per_call: budget::PerCall,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            memory: 64 << 20,
            fuel_per_record: 10_000_000,
            fuel_per_call: 1_000_000_000,
            timeout: Duration::from_secs(10),
            handles: 1024,
            net: NetLimits::default(),
            log_per_call: budget::PerCall { lines: 1000, bytes: 1 << 20 },
        }
    }
}

impl SandboxLimits {
    /// The linear memory cap, in bytes.
    pub fn memory_cap(&self) -> u64 {
        self.memory
    }

    /// The wall-clock cap of one call.
    pub fn timeout_cap(&self) -> Duration {
        self.timeout
    }

    /// The fuel of every call (on top of the per-record part for `add`).
    pub fn fuel_per_call_cap(&self) -> u64 {
        self.fuel_per_call
    }

    /// The fuel per record of an `add` call.
    pub fn fuel_per_record_cap(&self) -> u64 {
        self.fuel_per_record
    }

    /// Linear memory cap in bytes.
    pub fn memory(mut self, bytes: u64) -> Self {
        self.memory = bytes;
        self
    }

    /// Fuel added to an `add` call's budget per record in the batch.
    pub fn fuel_per_record(mut self, fuel: u64) -> Self {
        self.fuel_per_record = fuel;
        self
    }

    /// Fuel of every call, on top of the per-record part for `add`.
    pub fn fuel_per_call(mut self, fuel: u64) -> Self {
        self.fuel_per_call = fuel;
        self
    }

    /// Wall-clock limit of every call, host calls included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Host handles (files, directories, streams, pollables) the instance
    /// may hold at once: one sink cannot take the process's descriptors.
    pub fn handles(mut self, n: usize) -> Self {
        self.handles = n.max(16);
        self
    }

    /// Time limit of one network request or connect (default 30 s); the
    /// call's own deadline still covers it.
    pub fn net_timeout(mut self, timeout: Duration) -> Self {
        self.net.timeout = timeout;
        self
    }

    /// Concurrent HTTP connections of one instance (default 16).
    pub fn connections(mut self, n: usize) -> Self {
        self.net.connections = n.max(1);
        self
    }

    /// Bytes of one HTTP response the guest may read (default 16 MiB).
    pub fn response_bytes(mut self, bytes: u64) -> Self {
        self.net.response_bytes = bytes;
        self
    }

    /// Bytes an instance may send between two flushes (default 256 MiB).
    pub fn sent_per_checkpoint(mut self, bytes: u64) -> Self {
        self.net.sent_per_checkpoint = bytes;
        self
    }

    /// Log lines (the log import, stdout and stderr together) one call may
    /// emit; the excess is dropped and counted.
    pub fn log_lines_per_call(mut self, lines: u32) -> Self {
        self.log_per_call.lines = lines;
        self
    }

    /// Log bytes one call may emit; the excess is dropped and counted.
    pub fn log_bytes_per_call(mut self, bytes: u64) -> Self {
        self.log_per_call.bytes = bytes;
        self
    }
}

/// What a sink may touch. Nothing unless granted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// Host directories visible to the guest.
    pub dirs: Vec<DirGrant>,
    /// Environment variables the guest sees.
    pub env: Vec<(String, String)>,
    /// Hosts the guest may connect to (see [`HostGrant`]).
    pub hosts: Vec<HostGrant>,
    /// What the writable directories may hold, shared by all instances of
    /// the sink; `None` is no limit.
    pub quota: Option<DiskQuota>,
    /// Fixed clocks and random numbers (a replay); `None` is the host's.
    pub determinism: Option<Determinism>,
}

/// A host directory made visible to a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    /// The directory on the host.
    pub host: PathBuf,
    /// Where the guest sees it (e.g. `/out`).
    pub guest: String,
    /// Whether the guest may create, write and delete files in it.
    pub writable: bool,
}

/// The store data of one sink instance.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: MemoryLimiter,
    sink: Arc<str>,
    /// What the guest wrote to stderr during the current call.
    stderr_tail: output::Tail,
    /// Shared by the log import and the guest's stdout and stderr.
    log_budget: budget::LogBudget,
    http: WasiHttpCtx,
    /// The network policy: the wasi:http hook and the sockets checks.
    egress: egress::Egress,
    quota: quota::StoreQuota,
}

impl StoreState {
    /// The state of one sandbox (a sink instance or a helper command): its
    /// WASI context, a handle table and a memory limiter bounded by
    /// `limits`, and its log, network and disk accounting.
    fn new(
        wasi: WasiCtx,
        limits: SandboxLimits,
        sink: Arc<str>,
        stderr_tail: output::Tail,
        log_budget: budget::LogBudget,
        egress: egress::Egress,
        quota: quota::StoreQuota,
    ) -> StoreState {
        let mut table = ResourceTable::new();
        table.set_max_capacity(limits.handles);
        StoreState {
            wasi,
            table,
            limiter: MemoryLimiter {
                limit: usize::try_from(limits.memory).unwrap_or(usize::MAX),
                peak: 0,
                denied: false,
            },
            sink,
            stderr_tail,
            log_budget,
            http: WasiHttpCtx::new(),
            egress,
            quota,
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.egress }
    }
}

impl wit::sink::types::Host for StoreState {}

impl wit::sink::host::Host for StoreState {
    fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let fields = output::Fields(&fields);
        if !self.log_budget.allow(message.len().min(text::MAX_TEXT) + fields.len()) {
            return;
        }
        let sink = &*self.sink;
        let message = text::guest(&message);
        match level {
            Level::Trace => tracing::trace!(target: "sinkbox::guest", sink, "{message}{fields}"),
            Level::Debug => tracing::debug!(target: "sinkbox::guest", sink, "{message}{fields}"),
            Level::Info => tracing::info!(target: "sinkbox::guest", sink, "{message}{fields}"),
            Level::Warn => tracing::warn!(target: "sinkbox::guest", sink, "{message}{fields}"),
            Level::Error => tracing::error!(target: "sinkbox::guest", sink, "{message}{fields}"),
        }
    }
}

/// Caps linear memory and records what it refused, so the runtime can say
/// "exceeded its memory limit" instead of reporting the guest's abort.
struct MemoryLimiter {
    limit: usize,
    peak: usize,
    denied: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.denied = true;
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Tables hold function references; a million is far beyond any
        // real sink and bounds what a hostile one can make the host store.
        Ok(desired <= 1_000_000)
    }
}

/// A compiled sink component, linked and checked against the contract.
#[derive(Clone)]
pub struct SinkComponent {
    pub(crate) pre: SinkWorldPre<StoreState>,
    /// Where the component came from, for messages.
    pub origin: String,
    /// How it was obtained.
    pub load: LoadInfo,
}

/// A component's interface, as `sinkbox inspect` shows it.
pub struct ComponentInfo {
    /// Imported interface names, e.g. `wasi:cli/stdout@0.2.6`.
    pub imports: Vec<String>,
    /// Exported interface names, e.g. `sinkbox:sink/sink@0.2.0`.
    pub exports: Vec<String>,
    /// The component ready to run, or why it cannot run as a sink.
    pub sink: Result<SinkComponent>,
}

/// Links WASI (async), wasi:http's outgoing handler and the host
/// interface. Name lookup is WASI's, behind the sink's grants.
fn link(linker: &mut wasmtime::component::Linker<StoreState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    quota::link(linker)?;
    linker.allow_shadowing(true);
    wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::add_to_linker::<_, egress::GuardedLookup>(linker, |s| {
        egress::LookupView { egress: s.egress.clone(), sockets: s.sockets() }
    })?;
    egress::link_tcp_metering(linker)?;
    linker.allow_shadowing(false);
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    SinkWorld::add_to_linker::<_, HasSelf<_>>(linker, |s| s)
}

impl Engine {
    /// Builds the engine of sink sandboxes.
    pub fn new(options: EngineOptions) -> Result<Engine> {
        Engine::with_linker(options, link)
    }

    /// Loads a sink component from its bytes, through the cache. `origin`
    /// names it in messages.
    pub fn load(&self, bytes: &[u8], origin: &str) -> Result<SinkComponent> {
        SinkComponent::new(self, self.link(bytes, origin).map_err(other_contract)?)
    }

    /// Loads a sink component from a file, through the cache.
    pub fn load_file(&self, path: &std::path::Path) -> Result<SinkComponent> {
        SinkComponent::new(self, self.link_file(path).map_err(other_contract)?)
    }

    /// Compiles a sink component without the cache, for benchmarks.
    pub fn compile_uncached(&self, bytes: &[u8], origin: &str) -> Result<SinkComponent> {
        SinkComponent::new(self, self.link_uncached(bytes, origin).map_err(other_contract)?)
    }

    /// What a component imports and exports, and whether it runs as a sink.
    pub fn inspect(&self, bytes: &[u8], origin: &str) -> Result<ComponentInfo> {
        let described = self.describe(bytes, origin)?;
        let sink = described.linked.map_err(other_contract).and_then(|linked| SinkComponent::new(self, linked));
        Ok(ComponentInfo { imports: described.imports, exports: described.exports, sink })
    }
}

/// The contract version a component's interface names, if not this
/// runtime's: from its sink export, or else its host import.
fn contract_of(imports: &[String], exports: &[String]) -> Option<String> {
    let version = exports
        .iter()
        .find_map(|name| name.strip_prefix("sinkbox:sink/sink@"))
        .or_else(|| imports.iter().find_map(|name| name.strip_prefix("sinkbox:sink/host@")))?;
    let found = format!("sinkbox:sink@{version}");
    (found != CONTRACT).then_some(found)
}

/// A link failure of a component built for another contract version,
/// reported as such.
fn other_contract(error: Error) -> Error {
    match error {
        Error::Unlinkable { origin, imports, exports, source } => match contract_of(&imports, &exports) {
            Some(found) => Error::ContractVersion { origin, found, expected: CONTRACT.to_string() },
            None => Error::Component { origin, source },
        },
        other => other,
    }
}

impl SinkComponent {
    /// Checks that `linked` implements this runtime's contract. A component
    /// built for another version of the contract is refused with both
    /// versions named.
    fn new(engine: &Engine, linked: engine::Linked<StoreState>) -> Result<SinkComponent> {
        let origin = linked.origin;
        let (imports, exports) = engine.interface(linked.pre.component());
        match SinkWorldPre::new(linked.pre) {
            Ok(pre) => Ok(SinkComponent { pre, origin, load: linked.load }),
            Err(e) => match contract_of(&imports, &exports) {
                Some(found) => Err(Error::ContractVersion { origin, found, expected: CONTRACT.to_string() }),
                None => Err(Error::NotASink { origin, source: e.into() }),
            },
        }
    }
}
