//! One sandbox per sink instance: its store, limits and capabilities.
//!
//! A [`SinkInstance`] wraps a component instance in its own `Store`. Every
//! call into it gets a fresh fuel budget and wall-clock deadline; memory
//! growth goes through a limiter that remembers a denied growth, so an
//! exceeded limit is reported as such rather than as the guest's abort.

mod output;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

use crate::bindings::sinkbox as wit;
use crate::bindings::{Batch, GuestError, Level, SinkWorld};
use crate::engine::{EPOCH_TICK, Engine, SinkComponent};
use crate::error::{Fault, Phase, SinkFailure};
use crate::status::SinkMetrics;

/// Per-instance limits. Defaults: 64 MiB of linear memory, a 10 s
/// wall-clock limit per call, and, when the engine meters fuel, 10 million
/// fuel per record in `add` plus 1 billion per call (the budget of `open`,
/// `flush` and `close`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SandboxLimits {
    pub(crate) memory: u64,
    pub(crate) fuel_per_record: u64,
    pub(crate) fuel_per_call: u64,
    pub(crate) timeout: Duration,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            memory: 64 << 20,
            fuel_per_record: 10_000_000,
            fuel_per_call: 1_000_000_000,
            timeout: Duration::from_secs(10),
        }
    }
}

impl SandboxLimits {
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

    /// Wall-clock limit of every call.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
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
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl wit::sink::types::Host for StoreState {}

impl wit::sink::host::Host for StoreState {
    fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let sink = &*self.sink;
        let fields = output::Fields(&fields);
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

/// A live sink instance in its own store.
pub struct SinkInstance {
    store: Store<StoreState>,
    exports: SinkWorld,
    name: Arc<str>,
    limits: SandboxLimits,
    fuel: bool,
    epochs: bool,
}

impl SinkInstance {
    /// Instantiates `component` in a fresh sandbox. Does not call `open`.
    pub fn new(
        engine: &Engine,
        component: &SinkComponent,
        name: &str,
        limits: SandboxLimits,
        grants: &Grants,
    ) -> Result<SinkInstance, SinkFailure> {
        let name: Arc<str> = Arc::from(name);
        let fail = |fault| SinkFailure { sink: name.to_string(), phase: Phase::Instantiate, fault };
        let mut wasi = WasiCtx::builder();
        let stderr_tail = output::Tail::default();
        wasi.stdout(output::GuestOutput::new(name.clone(), "stdout", None))
            .stderr(output::GuestOutput::new(name.clone(), "stderr", Some(stderr_tail.clone())))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for (key, value) in &grants.env {
            wasi.env(key, value);
        }
        for dir in &grants.dirs {
            let perms = if dir.writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
            wasi.preopened_dir(&dir.host, &dir.guest, perms).map_err(|e| {
                fail(Fault::Fatal(format!("cannot grant directory {} as {}: {e}", dir.host.display(), dir.guest)))
            })?;
        }
        let state = StoreState {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                limit: usize::try_from(limits.memory).unwrap_or(usize::MAX),
                peak: 0,
                denied: false,
            },
            sink: name.clone(),
            stderr_tail,
        };
        let mut store = Store::new(engine.wasmtime(), state);
        store.limiter(|s| &mut s.limiter);
        let options = engine.options();
        let guard = Guard { fuel: options.fuel, epochs: options.epochs, limits };
        guard.arm(&mut store, limits.fuel_per_call);
        let exports =
            component.pre.instantiate(&mut store).map_err(|e| fail(guard.classify(&store, e, limits.fuel_per_call)))?;
        Ok(SinkInstance { store, exports, name, limits, fuel: options.fuel, epochs: options.epochs })
    }

    fn guard(&self) -> Guard {
        Guard { fuel: self.fuel, epochs: self.epochs, limits: self.limits }
    }

    /// Runs one guest call under a fresh budget, classifying what went wrong
    /// and recording fuel, time and peak memory in `metrics`.
    fn call<T>(
        &mut self,
        phase: Phase,
        budget: u64,
        metrics: &mut SinkMetrics,
        f: impl FnOnce(&SinkWorld, &mut Store<StoreState>) -> wasmtime::Result<Result<T, GuestError>>,
    ) -> Result<T, Failure> {
        let guard = self.guard();
        guard.arm(&mut self.store, budget);
        let started = Instant::now();
        let result = f(&self.exports, &mut self.store);
        let elapsed = started.elapsed();
        let used = if self.fuel { budget.saturating_sub(self.store.get_fuel().unwrap_or(0)) } else { 0 };
        metrics.record_call(
            phase,
            elapsed,
            used,
            self.store.data().limiter.peak as u64,
            result.as_ref().is_ok_and(Result::is_ok),
        );
        let fault = match result {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(GuestError::Rejected(list))) => return Err(Failure::Rejected(list)),
            Ok(Err(GuestError::Backpressure(ms))) => Fault::Backpressure(ms),
            Ok(Err(GuestError::Retryable(m))) => Fault::Retryable(m),
            Ok(Err(GuestError::Fatal(m))) => Fault::Fatal(m),
            Err(trap) => guard.classify(&self.store, trap, budget),
        };
        Err(Failure::Fault(SinkFailure { sink: self.name.to_string(), phase, fault }))
    }

    /// `config-schema`.
    pub fn config_schema(&mut self, metrics: &mut SinkMetrics) -> Result<Option<String>, Failure> {
        let budget = self.limits.fuel_per_call;
        self.call(Phase::ConfigSchema, budget, metrics, |e, s| e.sinkbox_sink_sink().call_config_schema(s).map(Ok))
    }

    /// `open`.
    pub fn open(&mut self, config: &str, metrics: &mut SinkMetrics) -> Result<(), Failure> {
        let budget = self.limits.fuel_per_call;
        self.call(Phase::Open, budget, metrics, |e, s| e.sinkbox_sink_sink().call_open(s, config))
    }

    /// `add`, with a budget of the per-call fuel plus the per-record fuel
    /// for each record in the batch.
    pub fn add(&mut self, batch: &Batch, metrics: &mut SinkMetrics) -> Result<(), Failure> {
        let budget = self
            .limits
            .fuel_per_call
            .saturating_add(self.limits.fuel_per_record.saturating_mul(u64::from(batch.count)));
        self.call(Phase::Add, budget, metrics, |e, s| e.sinkbox_sink_sink().call_add(s, batch))
    }

    /// `flush`.
    pub fn flush(&mut self, metrics: &mut SinkMetrics) -> Result<(), Failure> {
        let budget = self.limits.fuel_per_call;
        self.call(Phase::Flush, budget, metrics, |e, s| e.sinkbox_sink_sink().call_flush(s))
    }

    /// `abort`.
    pub fn abort(&mut self, metrics: &mut SinkMetrics) -> Result<(), Failure> {
        let budget = self.limits.fuel_per_call;
        self.call(Phase::Abort, budget, metrics, |e, s| e.sinkbox_sink_sink().call_abort(s).map(Ok))
    }

    /// `close`; consumes the instance, which is never entered again.
    pub fn close(mut self, metrics: &mut SinkMetrics) -> Result<(), Failure> {
        let budget = self.limits.fuel_per_call;
        self.call(Phase::Close, budget, metrics, |e, s| e.sinkbox_sink_sink().call_close(s))
    }

    /// Bytes of linear memory the instance has grown to.
    pub fn peak_memory(&self) -> u64 {
        self.store.data().limiter.peak as u64
    }
}

/// How a sink call failed.
#[derive(Debug)]
pub enum Failure {
    /// The sink refused these records; the rest of the call succeeded.
    Rejected(Vec<crate::bindings::Rejection>),
    /// An error or trap.
    Fault(SinkFailure),
}

impl Failure {
    /// Treats rejections as a failure of the call, for calls where the
    /// contract gives them no meaning (`open`, `close`).
    pub fn into_failure(self, sink: &str, phase: Phase) -> SinkFailure {
        match self {
            Failure::Rejected(list) => {
                SinkFailure { sink: sink.to_string(), phase, fault: Fault::Rejected(list.len()) }
            }
            Failure::Fault(f) => f,
        }
    }
}

/// The limits armed before each call.
#[derive(Clone, Copy)]
struct Guard {
    fuel: bool,
    epochs: bool,
    limits: SandboxLimits,
}

impl Guard {
    fn arm(&self, store: &mut Store<StoreState>, budget: u64) {
        if self.fuel {
            // Cannot fail: fuel is enabled in this engine's config.
            let _ = store.set_fuel(budget);
        }
        if self.epochs {
            let ticks = self.limits.timeout.as_nanos().div_ceil(EPOCH_TICK.as_nanos()).max(1);
            store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        }
        store.data_mut().limiter.denied = false;
        store.data().stderr_tail.clear();
    }

    /// Classifies a trap by its type, never by its message.
    fn classify(&self, store: &Store<StoreState>, error: wasmtime::Error, budget: u64) -> Fault {
        if store.data().limiter.denied {
            return Fault::Memory { limit: self.limits.memory };
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => Fault::OutOfFuel { budget },
            Some(Trap::Interrupt) => Fault::Timeout { limit: self.limits.timeout },
            _ => Fault::Trap { stderr: store.data().stderr_tail.take(), source: error.into() },
        }
    }
}
