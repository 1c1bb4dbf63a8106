//! A live sink instance and the guard around every call into it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use wasmtime::component::ResourceTableError;
use wasmtime::{Store, Trap};
use wasmtime_wasi::{FsPerms, WasiCtx};

use super::{Engine, MAX_SNAPSHOT, SandboxLimits, SinkComponent, StoreState, budget, output, quota, text};
use super::{Grants, NetStats, SinkWorld, egress};
use crate::bindings::{Batch, Context, GuestError, GuestStatus, Rejection};
use crate::error::{Fault, Phase, SinkFailure};

/// Most custom counters kept from one status report.
const MAX_CUSTOM_COUNTERS: usize = 32;
/// Longest custom counter name kept, in bytes.
const MAX_COUNTER_NAME: usize = 64;

/// Fires when the calls of a pipeline's instances must stop at once (an
/// operator's abort). A call in progress is dropped and its instance
/// discarded.
#[derive(Clone, Debug, Default)]
pub struct Interrupt(Option<watch::Receiver<bool>>);

impl Interrupt {
    /// An interrupt that never fires.
    pub fn never() -> Interrupt {
        Interrupt(None)
    }

    /// Fires once `receiver` holds `true`.
    pub fn new(receiver: watch::Receiver<bool>) -> Interrupt {
        Interrupt(Some(receiver))
    }

    /// Whether it fired.
    pub fn fired(&self) -> bool {
        self.0.as_ref().is_some_and(|rx| *rx.borrow())
    }

    /// Resolves when it fires; never, if it cannot.
    pub async fn wait(&mut self) {
        if let Some(rx) = &mut self.0
            && rx.wait_for(|fired| *fired).await.is_ok()
        {
            return;
        }
        std::future::pending::<()>().await;
    }
}

/// What one instance's calls cost; the instance keeps it, its owner
/// collects it ([`SinkInstance::take_stats`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallStats {
    /// Calls made.
    pub calls: u64,
    /// Calls that returned `ok`.
    pub calls_ok: u64,
    /// Fuel consumed.
    pub fuel: u64,
    /// Largest linear memory, in bytes.
    pub peak_memory: u64,
    /// Time spent in `add`.
    pub add_time: Duration,
    /// Time spent in `flush`.
    pub flush_time: Duration,
    /// What the instance did on the network.
    pub net: NetStats,
}

/// How a sink call failed.
#[derive(Debug)]
pub enum Failure {
    /// The sink refused these records; the rest of the call succeeded.
    Rejected(Vec<Rejection>),
    /// An error, a trap or an exceeded limit.
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

/// One call into the guest.
enum Call<'a> {
    ConfigSchema,
    Open(&'a str, &'a Context),
    Add(&'a Batch),
    Flush,
    Status,
    Abort,
    Close,
}

/// What a call returned.
pub(super) enum Returned {
    Unit,
    Schema(Option<String>),
    Snapshot(Option<Vec<u8>>),
    Status(Option<GuestStatus>),
}

/// How a guarded call ended.
pub(super) enum Ended {
    Returned(wasmtime::Result<Result<Returned, GuestError>>),
    TimedOut,
    Stopped,
}

/// A live sink instance in its own store.
pub struct SinkInstance {
    store: Store<StoreState>,
    exports: SinkWorld,
    name: Arc<str>,
    guard: Guard,
    interrupt: Interrupt,
    stats: CallStats,
    /// Set once a call trapped, failed for good or was cut off: the
    /// instance is never entered again.
    broken: bool,
}

impl SinkInstance {
    /// Instantiates `component` in a fresh sandbox. Does not call `open`.
    /// The guest's start code runs under the call deadline too.
    pub async fn new(
        engine: &Engine,
        component: &SinkComponent,
        name: &str,
        limits: SandboxLimits,
        grants: &Grants,
        interrupt: Interrupt,
    ) -> Result<SinkInstance, SinkFailure> {
        let name: Arc<str> = Arc::from(name);
        let fail = |fault| SinkFailure { sink: name.to_string(), phase: Phase::Instantiate, fault };
        let mut wasi = WasiCtx::builder();
        let stderr_tail = output::Tail::default();
        let log_budget = budget::LogBudget::new(limits.log_per_call);
        let egress = egress::Egress::new(name.clone(), &grants.hosts, limits.net);
        wasi.stdout(output::GuestOutput::new(name.clone(), "stdout", None, log_budget.clone()))
            .stderr(output::GuestOutput::new(name.clone(), "stderr", Some(stderr_tail.clone()), log_budget.clone()))
            .allow_tcp(egress.tcp())
            .allow_udp(false)
            .allow_ip_name_lookup(egress.tcp())
            .socket_addr_check(egress.socket_check());
        for (key, value) in &grants.env {
            wasi.env(key, value);
        }
        if let Some(determinism) = &grants.determinism {
            determinism.apply(&mut wasi);
        }
        for dir in &grants.dirs {
            let perms = if dir.writable { FsPerms::ReadWrite } else { FsPerms::ReadOnly };
            wasi.preopened_dir(&dir.host, &dir.guest, perms).map_err(|e| {
                fail(Fault::Fatal(format!("cannot grant directory {} as {}: {e}", dir.host.display(), dir.guest)))
            })?;
        }
        let quota = quota::StoreQuota::new(grants.quota.clone());
        let state = StoreState::new(wasi.build(), limits, name.clone(), stderr_tail, log_budget, egress, quota);
        let mut store = Store::new(engine.wasmtime(), state);
        let guard = Guard::new(engine, &mut store, limits);
        guard.arm(&mut store, limits.fuel_per_call);
        let mut interrupt = interrupt;
        let ended = tokio::select! {
            r = tokio::time::timeout(limits.timeout, component.pre.instantiate_async(&mut store)) => match r {
                Ok(Ok(exports)) => Ok(exports),
                Ok(Err(e)) => Err(Ended::Returned(Err(e))),
                Err(_) => Err(Ended::TimedOut),
            },
            () = interrupt.wait() => Err(Ended::Stopped),
        };
        match ended {
            Ok(exports) => {
                Ok(SinkInstance { store, exports, name, guard, interrupt, stats: CallStats::default(), broken: false })
            }
            Err(ended) => Err(fail(guard.classify(&store, ended, limits.fuel_per_call))),
        }
    }

    /// Runs one guest call under a fresh budget and its deadline,
    /// classifying what went wrong and recording what it cost.
    async fn invoke(&mut self, phase: Phase, budget: u64, call: Call<'_>) -> Result<Returned, Failure> {
        if self.broken {
            return Err(
                self.failure(phase, Fault::Fatal("the instance failed before and is never entered again".into()))
            );
        }
        self.guard.arm(&mut self.store, budget);
        let started = Instant::now();
        let SinkInstance { store, exports, interrupt, guard, .. } = self;
        let guest = exports.sinkbox_sink_sink();
        let call = async {
            let store = &mut *store;
            Ok(match call {
                Call::ConfigSchema => Ok(Returned::Schema(guest.call_config_schema(store).await?)),
                Call::Open(config, context) => guest.call_open(store, config, context).await?.map(|()| Returned::Unit),
                Call::Add(batch) => guest.call_add(store, batch).await?.map(|()| Returned::Unit),
                Call::Flush => guest.call_flush(store).await?.map(Returned::Snapshot),
                Call::Status => Ok(Returned::Status(guest.call_status(store).await?)),
                Call::Abort => guest.call_abort(store).await.map(|()| Ok(Returned::Unit))?,
                Call::Close => guest.call_close(store).await?.map(|()| Returned::Unit),
            })
        };
        let ended = tokio::select! {
            r = tokio::time::timeout(guard.limits.timeout, call) => match r {
                Ok(r) => Ended::Returned(r),
                Err(_) => Ended::TimedOut,
            },
            () = interrupt.wait() => Ended::Stopped,
        };
        let elapsed = started.elapsed();
        let used = if guard.fuel { budget.saturating_sub(self.store.get_fuel().unwrap_or(0)) } else { 0 };
        let ok = matches!(ended, Ended::Returned(Ok(Ok(_))));
        self.record(phase, elapsed, used, ok);
        if let Some(dropped) = self.store.data().log_budget.end_call() {
            tracing::warn!("sink \"{}\" logged too much in {phase}; {dropped}", self.name);
        }
        if let Some(quota) = self.store.data().quota.take_exceeded() {
            // A refused write fails the call whatever the guest made of
            // it: what it meant to write is not all there.
            let said = match &ended {
                Ended::Returned(Ok(Err(GuestError::Fatal(m) | GuestError::Retryable(m)))) => Some(text::guest(m)),
                _ => None,
            };
            let fault = Fault::Disk { limit: quota.limit(), dirs: quota.guest_dirs(), said };
            self.broken = true;
            return Err(self.failure(phase, fault));
        }
        let fault = match ended {
            Ended::Returned(Ok(Ok(value))) => return Ok(value),
            Ended::Returned(Ok(Err(GuestError::Rejected(mut list)))) => {
                for rejection in &mut list {
                    rejection.reason = text::guest(&rejection.reason);
                }
                return Err(Failure::Rejected(list));
            }
            Ended::Returned(Ok(Err(GuestError::Backpressure(ms)))) => Fault::Backpressure(ms),
            Ended::Returned(Ok(Err(GuestError::Retryable(m)))) => Fault::Retryable(self.explained(&m)),
            Ended::Returned(Ok(Err(GuestError::Fatal(m)))) => Fault::Fatal(self.explained(&m)),
            other => self.guard.classify(&self.store, other, budget),
        };
        if fault.kills_instance() || matches!(fault, Fault::Retryable(_)) {
            self.broken = true;
        }
        Err(self.failure(phase, fault))
    }

    /// A guest's error message, followed by the limit the host enforced
    /// during the call if there was one (the guest saw only an I/O error).
    fn explained(&self, message: &str) -> String {
        let message = text::guest(message);
        match self.store.data().egress.take_enforced() {
            Some(enforced) => format!("{message} (because {enforced})"),
            None => message,
        }
    }

    fn failure(&self, phase: Phase, fault: Fault) -> Failure {
        Failure::Fault(SinkFailure { sink: self.name.to_string(), phase, fault })
    }

    fn record(&mut self, phase: Phase, elapsed: Duration, fuel: u64, ok: bool) {
        let stats = &mut self.stats;
        stats.calls += 1;
        stats.calls_ok += u64::from(ok);
        stats.fuel += fuel;
        stats.peak_memory = stats.peak_memory.max(self.store.data().limiter.peak as u64);
        match phase {
            Phase::Add => stats.add_time += elapsed,
            Phase::Flush => stats.flush_time += elapsed,
            _ => {}
        }
    }

    /// `config-schema`.
    pub async fn config_schema(&mut self) -> Result<Option<String>, Failure> {
        match self.invoke(Phase::ConfigSchema, self.guard.limits.fuel_per_call, Call::ConfigSchema).await? {
            Returned::Schema(schema) => Ok(schema),
            _ => unreachable!("config-schema returns a schema"),
        }
    }

    /// `open`.
    pub async fn open(&mut self, config: &str, context: &Context) -> Result<(), Failure> {
        self.invoke(Phase::Open, self.guard.limits.fuel_per_call, Call::Open(config, context)).await.map(drop)
    }

    /// `add`, with a budget of the per-call fuel plus the per-record fuel
    /// for each record in the batch.
    pub async fn add(&mut self, batch: &Batch) -> Result<(), Failure> {
        let limits = self.guard.limits;
        let budget = limits.fuel_per_call.saturating_add(limits.fuel_per_record.saturating_mul(u64::from(batch.count)));
        self.invoke(Phase::Add, budget, Call::Add(batch)).await.map(drop)
    }

    /// `flush`; returns the sink's snapshot, at most [`MAX_SNAPSHOT`] bytes.
    pub async fn flush(&mut self) -> Result<Option<Vec<u8>>, Failure> {
        match self.invoke(Phase::Flush, self.guard.limits.fuel_per_call, Call::Flush).await? {
            Returned::Snapshot(Some(snapshot)) if snapshot.len() > MAX_SNAPSHOT => {
                self.broken = true;
                Err(self.failure(
                    Phase::Flush,
                    Fault::Violation(format!(
                        "returned a snapshot of {}, over the cap of {}",
                        crate::error::Bytes(snapshot.len() as u64),
                        crate::error::Bytes(MAX_SNAPSHOT as u64)
                    )),
                ))
            }
            Returned::Snapshot(snapshot) => {
                self.store.data().egress.checkpoint();
                Ok(snapshot)
            }
            _ => unreachable!("flush returns a snapshot"),
        }
    }

    /// `status`; custom counters beyond 32, or with names over 64 bytes,
    /// are dropped with a warning.
    pub async fn status(&mut self) -> Result<Option<GuestStatus>, Failure> {
        let Returned::Status(status) =
            self.invoke(Phase::Status, self.guard.limits.fuel_per_call, Call::Status).await?
        else {
            unreachable!("status returns a status")
        };
        Ok(status.map(|mut status| {
            let before = status.custom.len();
            status.custom.retain(|(name, _)| name.len() <= MAX_COUNTER_NAME);
            status.custom.truncate(MAX_CUSTOM_COUNTERS);
            for (name, _) in &mut status.custom {
                *name = text::guest(name);
            }
            if status.custom.len() < before {
                tracing::warn!(
                    "sink \"{}\" reported {before} custom counters; kept {} (at most {MAX_CUSTOM_COUNTERS}, names up to {MAX_COUNTER_NAME} bytes)",
                    self.name,
                    status.custom.len()
                );
            }
            status
        }))
    }

    /// `abort`.
    pub async fn abort(&mut self) -> Result<(), Failure> {
        self.invoke(Phase::Abort, self.guard.limits.fuel_per_call, Call::Abort).await.map(drop)
    }

    /// `close`; consumes the instance, which is never entered again, and
    /// hands back what its calls cost.
    pub async fn close(mut self) -> (Result<(), Failure>, CallStats) {
        let result = self.invoke(Phase::Close, self.guard.limits.fuel_per_call, Call::Close).await.map(drop);
        (result, self.take_stats())
    }

    /// What the calls so far cost; resets the counters.
    pub fn take_stats(&mut self) -> CallStats {
        let mut stats = std::mem::take(&mut self.stats);
        stats.net = self.store.data().egress.take_stats();
        stats
    }

    /// Bytes of linear memory the instance has grown to.
    pub fn peak_memory(&self) -> u64 {
        self.store.data().limiter.peak as u64
    }

    /// Whether a call failed in a way that rules out entering it again.
    pub fn is_broken(&self) -> bool {
        self.broken
    }
}

/// The limits armed before each call.
#[derive(Clone, Copy)]
pub(super) struct Guard {
    fuel: bool,
    epochs: bool,
    limits: SandboxLimits,
}

impl Guard {
    /// The guard of `store`, whose memory limiter it installs; with epochs
    /// on, the guest yields to the executor at every tick instead of
    /// trapping: the call's own deadline (a timer) decides when to stop it.
    pub(super) fn new(engine: &Engine, store: &mut Store<StoreState>, limits: SandboxLimits) -> Guard {
        let options = engine.options();
        store.limiter(|s| &mut s.limiter);
        if options.epochs {
            store.epoch_deadline_async_yield_and_update(1);
        }
        Guard { fuel: options.fuel, epochs: options.epochs, limits }
    }

    /// Arms a fresh budget of `budget` fuel (when the engine meters fuel)
    /// and the epoch deadline, and clears what the last call recorded.
    pub(super) fn arm(&self, store: &mut Store<StoreState>, budget: u64) {
        if self.fuel {
            // Cannot fail: fuel is enabled in this engine's config.
            let _ = store.set_fuel(budget);
        }
        if self.epochs {
            store.set_epoch_deadline(1);
        }
        store.data_mut().limiter.denied = false;
        store.data().stderr_tail.clear();
        store.data().egress.take_enforced();
    }

    /// Classifies how a call failed by type, never by message.
    pub(super) fn classify(&self, store: &Store<StoreState>, ended: Ended, budget: u64) -> Fault {
        let error = match ended {
            Ended::TimedOut => return Fault::Timeout { limit: self.limits.timeout },
            Ended::Stopped => return Fault::Stopped,
            Ended::Returned(Ok(_)) => return Fault::Fatal("returned where a failure was expected".into()),
            Ended::Returned(Err(error)) => error,
        };
        if store.data().limiter.denied {
            return Fault::Memory { limit: self.limits.memory };
        }
        if matches!(error.downcast_ref::<ResourceTableError>(), Some(ResourceTableError::Full)) {
            return Fault::Handles { limit: self.limits.handles };
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => Fault::OutOfFuel { budget },
            Some(Trap::Interrupt) => Fault::Timeout { limit: self.limits.timeout },
            _ => Fault::Trap { stderr: store.data().stderr_tail.take(), source: error.into() },
        }
    }
}
