//! The checkpoint loop: batching, flush, commit, replay.
//!
//! A [`Pipeline`] reads events from its source (on the source's own
//! thread) and routes each batch to the lanes of every sink: one task per
//! sink instance, per (sink, partition, lane). A checkpoint closes after
//! `commit_every` records, `commit_interval`, or `checkpoint_bytes` of
//! held batches, whichever comes first. It is a barrier: every lane
//! flushes (concurrently), dead letters are synced, then the source
//! position and the lanes' snapshots are committed together to the offset
//! store, and the source hears of it ([`Source::committed`]). Each lane
//! keeps the open checkpoint's batches it took, so a replay never needs
//! the source to rewind.
//!
//! Recovery is per lane: a lane whose sink fails is aborted (or its
//! instance replaced) and replays its own held batches; other lanes, of the
//! same sink or not, keep what they took. What each failure does:
//!
//! | failure | action |
//! |---|---|
//! | `rejected` | dead-letter the named records; the rest count as taken |
//! | `backpressure(ms)` | `abort`, wait `ms` (at most `max_wait`), replay (up to `max_backpressure` times) |
//! | `retryable` | drop the instance, exponential backoff, a fresh instance, replay; after `max_attempts` stop, checkpoint uncommitted |
//! | memory, fuel or time limit in `add` | drop the instance, replay in batches a quarter the size, down to one record |
//! | trap, `fatal` | drop the instance, open a fresh one, replay; if the same checkpoint fails so again: `on_error = "fail"` stops, `"dead-letter"` bisects to the poison record, dead-letters it and carries on |
//!
//! Failures of the host's own world (the dead-letter file, the offset
//! store, the disk) stop the pipeline with a host error; they are never
//! blamed on a sink and never cause a replacement or a bisection.
//!
//! [`Source::committed`]: crate::source::Source::committed

mod bisect;
mod deadletter;
mod lane;
mod offsets;
mod policy;
mod route;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use deadletter::{DEAD_LETTER_SHARE_AFTER, DeadLetters, MAX_DEAD_LETTER_SHARE, MAX_DEAD_LETTERS};
pub use offsets::{Committed, OffsetStore, Snapshots};
pub use policy::{Batching, OnError, RetryPolicy};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use self::lane::{Command, Flushed, Lane, LaneEnd, Shared};
use crate::bindings::{Batch, Context};
use crate::error::{Error, Result};
use crate::sandbox::{Engine, Grants, Interrupt, SandboxLimits, SinkComponent};
use crate::source::{Notifier, PartitionId, Position, Source, SourceEvent, SourceHandle};
use crate::status::{LaneStatus, Outcome, PartitionStatus, SinkMetrics, Status};

/// How long a checkpoint may still run after a stop request before it is
/// aborted (its offsets then stay uncommitted and are replayed next run).
pub const STOP_GRACE: Duration = Duration::from_secs(1);

/// One sink of a pipeline.
#[derive(Clone)]
pub struct SinkSpec {
    /// Its name, unique in the pipeline.
    pub name: String,
    /// The compiled component.
    pub component: SinkComponent,
    /// The JSON config passed to `open`.
    pub config: String,
    /// Its limits.
    pub limits: SandboxLimits,
    /// Its capabilities.
    pub grants: Grants,
    /// What a repeated trap does.
    pub on_error: OnError,
    /// Instances per partition (default 1). With more than one, records
    /// are spread by a hash of their key, so records with one key stay in
    /// order in one lane; records without a key go round-robin by batch.
    pub lanes: u32,
}

/// Shared with the caller while a pipeline runs: stop requests and live
/// counters for a progress display. Cheap to clone: clones share one state.
#[derive(Debug, Clone, Default)]
pub struct Control(Arc<ControlState>);

/// What a [`Control`] shares.
#[derive(Debug)]
pub struct ControlState {
    state: watch::Sender<u8>,
    abort: watch::Sender<bool>,
    /// Records read so far.
    pub read: AtomicU64,
    /// Input bytes read so far.
    pub bytes: AtomicU64,
    /// Records committed so far.
    pub committed: AtomicU64,
}

impl Default for ControlState {
    fn default() -> Self {
        ControlState {
            state: watch::Sender::new(RUN),
            abort: watch::Sender::new(false),
            read: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            committed: AtomicU64::new(0),
        }
    }
}

impl std::ops::Deref for Control {
    type Target = ControlState;

    fn deref(&self) -> &ControlState {
        &self.0
    }
}

const RUN: u8 = 0;
const FINISH: u8 = 1;
const ABORT: u8 = 2;

impl Control {
    /// Asks the pipeline to stop reading, flush and commit what it has, and
    /// close its sinks. A second call aborts the open checkpoint instead,
    /// cutting off any guest call in progress.
    pub fn stop(&self) {
        self.state.send_modify(|s| *s = (*s + 1).min(ABORT));
        if *self.state.borrow() == ABORT {
            self.abort.send_replace(true);
        }
    }

    fn abort_now(&self) {
        self.state.send_replace(ABORT);
        self.abort.send_replace(true);
    }

    fn state(&self) -> u8 {
        *self.state.borrow()
    }

    /// Whether a stop was requested.
    pub fn stopping(&self) -> bool {
        self.state() != RUN
    }
}

/// A source fanned out to sinks, with an offset store and a dead-letter
/// queue.
pub struct Pipeline {
    /// Its name.
    pub name: String,
    /// The engine that runs its sinks.
    pub engine: Engine,
    /// Where records come from.
    pub source: Box<dyn Source>,
    /// Where they go.
    pub sinks: Vec<SinkSpec>,
    /// Checkpoint sizing.
    pub batching: Batching,
    /// Retries.
    pub retry: RetryPolicy,
    /// Where committed positions and snapshots go; `None` keeps them in
    /// memory only.
    pub offsets: Option<OffsetStore>,
    /// Where rejected records go.
    pub dead_letters: DeadLetters,
    /// What was committed last (from the offset store): where the source
    /// starts, and the snapshots the sinks' instances open with.
    pub start: Committed,
}

/// The process's one async runtime, started on first use with a worker
/// thread per core.
pub fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RUNTIME: std::sync::OnceLock<std::result::Result<tokio::runtime::Runtime, String>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .thread_name("sinkbox-worker")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Io {
            what: "cannot start the async runtime".into(),
            source: std::io::Error::other(e.clone()),
        })
}

impl Pipeline {
    /// Runs until the source ends, a stop is requested, or an error the
    /// pipeline cannot recover from. Always returns the status; the error,
    /// if any, says why the run ended early. Blocks on the process's
    /// runtime; from async code use [`Pipeline::run_async`].
    pub fn run(self, control: &Control) -> (Status, Result<()>) {
        let rt = match runtime() {
            Ok(rt) => rt,
            Err(e) => return (Status { outcome: Outcome::Failed(e.to_string()), ..Default::default() }, Err(e)),
        };
        // The loop runs on a worker, beside its lanes, rather than on the
        // calling thread: handing a batch to a lane then wakes it on the
        // same worker instead of across threads.
        let control = control.clone();
        match rt.block_on(rt.spawn(async move { self.run_async(&control).await })) {
            Ok(ended) => ended,
            Err(e) => {
                let e = Error::Io {
                    what: "the pipeline's task failed".into(),
                    source: std::io::Error::other(e.to_string()),
                };
                (Status { outcome: Outcome::Failed(e.to_string()), ..Default::default() }, Err(e))
            }
        }
    }

    /// [`Pipeline::run`], as a future.
    pub async fn run_async(self, control: &Control) -> (Status, Result<()>) {
        let started = Instant::now();
        let Pipeline { name, engine, source, sinks, batching, retry, offsets, dead_letters, start } = self;
        let mut status = Status { pipeline: name.clone(), position: start.position.to_string(), ..Default::default() };
        // Held for the whole run: no other pipeline writes into these.
        let _outputs = match lock_outputs(&name, &sinks) {
            Ok(locks) => locks,
            Err(e) => {
                status.outcome = Outcome::Failed(crate::error::chain(&e));
                return (status, Err(e));
            }
        };
        let shared = Arc::new(Shared {
            engine,
            retry,
            dead_letters: Arc::new(Mutex::new(dead_letters)),
            interrupt: Interrupt::new(control.abort.subscribe()),
            state: control.state.subscribe(),
            committed: Mutex::new(start.position.to_string()),
        });
        let mut run = Run {
            pipeline: name,
            source_name: String::new(),
            sinks: sinks.into_iter().map(Arc::new).collect(),
            shared: shared.clone(),
            control,
            batching,
            offsets,
            committed: start.position,
            snapshots: start.snapshots,
            lanes: BTreeMap::new(),
            ended: Vec::new(),
            workers: BTreeMap::new(),
            notifier: None,
            lag: None,
            partitions: BTreeMap::new(),
            first_record: None,
            last_commit: None,
            round_robin: 0,
            checkpoints: 0,
            malformed: 0,
        };
        let result = match SourceHandle::spawn(source, batching.batch_size, batching.batch_bytes) {
            Ok(mut source) => {
                run.source_name = source.describe().to_string();
                run.notifier = source.notifier();
                run.lag = source.lag();
                let result = run.run(&mut source).await;
                run.close_all().await;
                // The source takes its last notes until every notifier is
                // gone.
                run.notifier = None;
                source.finish().await;
                result
            }
            Err(e) => Err(e),
        };
        status.elapsed = started.elapsed();
        status.active = match (run.first_record, run.last_commit) {
            (Some(first), Some(last)) => last.saturating_duration_since(first),
            _ => Duration::ZERO,
        };
        status.peak_rss = crate::status::peak_rss();
        status.position = run.committed.to_string();
        status.read = control.read.load(Ordering::Relaxed);
        status.committed = control.committed.load(Ordering::Relaxed);
        status.checkpoints = run.checkpoints;
        status.malformed = run.malformed;
        status.sinks = run.metrics();
        status.instances = run.ended.iter().map(|(_, lane)| lane.clone()).collect();
        status.partitions = run.partition_status(&status.instances);
        status.outcome = match &result {
            Ok(()) if control.stopping() => Outcome::Interrupted,
            Ok(()) => Outcome::Finished,
            Err(Error::Interrupted { .. }) => Outcome::Interrupted,
            Err(e) => Outcome::Failed(crate::error::chain(e)),
        };
        (status, result)
    }
}

/// Locks every writable directory granted to `sinks` for `pipeline`.
fn lock_outputs(pipeline: &str, sinks: &[SinkSpec]) -> Result<Vec<Arc<crate::lock::OutputLock>>> {
    let writable = sinks.iter().flat_map(|s| &s.grants.dirs).filter(|d| d.writable);
    writable.map(|d| crate::lock::lock_output(&d.host, pipeline)).collect()
}

/// Runs `step`, unless a stop request has waited [`STOP_GRACE`] for it:
/// then the pipeline aborts (calls in progress are cut off) and the open
/// checkpoint stays uncommitted.
async fn bounded<T>(control: &Control, from: String, step: impl Future<Output = Result<T>>) -> Result<T> {
    let mut state = control.state.subscribe();
    let overdue = async {
        let _ = state.wait_for(|s| *s != RUN).await;
        tokio::time::sleep(STOP_GRACE).await;
    };
    tokio::select! {
        result = step => result,
        () = overdue => {
            tracing::warn!("the checkpoint did not finish within {STOP_GRACE:?} of the stop request; aborting it");
            control.abort_now();
            Err(Error::Interrupted { from })
        }
    }
}

/// A running lane, seen from the loop.
struct LaneHandle {
    sink: usize,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<LaneEnd>,
}

/// The loop's state for one run.
struct Run<'a> {
    pipeline: String,
    /// The source's description, recorded with each commit.
    source_name: String,
    sinks: Vec<Arc<SinkSpec>>,
    shared: Arc<Shared>,
    control: &'a Control,
    batching: Batching,
    offsets: Option<OffsetStore>,
    committed: Position,
    snapshots: Snapshots,
    /// Per partition: its lanes, sink by sink, lane by lane.
    lanes: BTreeMap<PartitionId, Vec<LaneHandle>>,
    /// Lanes that ended: their sink and metrics.
    ended: Vec<(usize, LaneStatus)>,
    /// Per sink: lanes opened so far (the next worker index).
    workers: BTreeMap<usize, u32>,
    /// Where committed positions go back to the source (a Kafka consumer
    /// commits them to its group).
    notifier: Option<Notifier>,
    /// The source's lag per partition, if it knows.
    lag: Option<crate::source::Lag>,
    /// Per partition read: its records and commits.
    partitions: BTreeMap<PartitionId, PartitionStatus>,
    /// When the first record was read, and the last checkpoint committed.
    first_record: Option<Instant>,
    last_commit: Option<Instant>,
    round_robin: u64,
    checkpoints: u64,
    malformed: u64,
}

/// The checkpoint in progress.
#[derive(Default)]
struct Open {
    end: Option<Position>,
    records: u64,
    bytes: u64,
    started: Option<Instant>,
}

impl Run<'_> {
    async fn run(&mut self, source: &mut SourceHandle) -> Result<()> {
        let initial = source.partitions().to_vec();
        self.assign(initial).await?;
        let mut open = Open::default();
        let mut source_error = None;
        let mut source_done = false;
        let mut state = self.control.state.subscribe();
        loop {
            let now = *state.borrow_and_update();
            if now == ABORT {
                return Err(self.interrupted());
            }
            let interval_over = open.started.is_some_and(|t| t.elapsed() >= self.batching.commit_interval);
            let due = open.records >= self.batching.commit_every
                || open.bytes >= self.batching.checkpoint_bytes
                || interval_over
                || source_done
                || now == FINISH;
            if due && let Some(end) = open.end.take() {
                bounded(self.control, self.committed.to_string(), self.checkpoint(end, open.records)).await?;
                open = Open::default();
            }
            if source_done || now == FINISH {
                return source_error.map_or(Ok(()), Err);
            }
            let wait = match open.started {
                Some(t) => self.batching.commit_interval.saturating_sub(t.elapsed()),
                None => Duration::from_secs(3600),
            };
            let event = tokio::select! {
                event = source.next() => event,
                () = tokio::time::sleep(wait) => continue,
                _ = state.changed() => continue,
            };
            let batch = match event {
                None => {
                    source_done = true;
                    continue;
                }
                Some(Err(e)) => {
                    source_error = Some(e);
                    source_done = true;
                    continue;
                }
                Some(Ok(SourceEvent::Assigned(parts))) => {
                    bounded(self.control, self.committed.to_string(), self.assign(parts)).await?;
                    continue;
                }
                Some(Ok(SourceEvent::Revoked(parts))) => {
                    if let Some(end) = open.end.take() {
                        bounded(self.control, self.committed.to_string(), self.checkpoint(end, open.records)).await?;
                        open = Open::default();
                    }
                    bounded(self.control, self.committed.to_string(), self.revoke(parts)).await?;
                    if let Some(notifier) = &self.notifier {
                        notifier.revoked(&self.committed);
                    }
                    continue;
                }
                Some(Ok(SourceEvent::Batch(batch))) => batch,
            };
            open.started.get_or_insert_with(Instant::now);
            self.first_record.get_or_insert_with(Instant::now);
            let count = u64::from(batch.records.len());
            self.control.read.fetch_add(count + batch.malformed.len() as u64, Ordering::Relaxed);
            self.control.bytes.fetch_add(batch.bytes, Ordering::Relaxed);
            self.malformed += batch.malformed.len() as u64;
            {
                let mut dead_letters = self.shared.dead_letters.lock().unwrap_or_else(|p| p.into_inner());
                dead_letters.read(count + batch.malformed.len() as u64)?;
                for m in &batch.malformed {
                    dead_letters.push_malformed(&m.reason, &batch.topic, batch.partition, m.offset, &m.raw)?;
                }
            }
            open.end = Some(batch.end);
            let partition = PartitionId { topic: batch.topic, partition: batch.partition };
            self.partitions
                .entry(partition.clone())
                .or_insert_with(|| PartitionStatus {
                    topic: partition.topic.clone(),
                    partition: partition.partition,
                    ..Default::default()
                })
                .records += count + batch.malformed.len() as u64;
            if count == 0 {
                continue;
            }
            if !self.lanes.contains_key(&partition) {
                bounded(self.control, self.committed.to_string(), self.assign(vec![partition.clone()])).await?;
            }
            let (data, count) = batch.records.finish();
            open.records += u64::from(count);
            open.bytes += data.len() as u64;
            let batch = Batch { topic: partition.topic.clone(), partition: partition.partition, count, data };
            bounded(self.control, self.committed.to_string(), self.route(&partition, batch)).await?;
        }
    }

    fn interrupted(&self) -> Error {
        Error::Interrupted { from: self.committed.to_string() }
    }

    /// Opens the lanes of `parts` for every sink, each with its committed
    /// snapshot. Lanes with no snapshot yet flush at once, and their first
    /// snapshots are committed before any record reaches them.
    async fn assign(&mut self, mut parts: Vec<PartitionId>) -> Result<()> {
        parts.retain(|p| !self.lanes.contains_key(p));
        parts.dedup();
        let mut opening = Vec::new();
        for part in &parts {
            let part = part.clone();
            let mut handles = Vec::new();
            for (index, spec) in self.sinks.iter().enumerate() {
                for lane in 0..spec.lanes.max(1) {
                    let worker = self.workers.entry(index).or_default();
                    let worker_index = *worker;
                    *worker += 1;
                    let key = Snapshots::key(&spec.name, &part.topic, part.partition, lane);
                    let context = Context {
                        pipeline: self.pipeline.clone(),
                        sink: spec.name.clone(),
                        topic: part.topic.clone(),
                        partition: part.partition,
                        lane,
                        lanes: spec.lanes.max(1),
                        worker_index,
                        worker_count: self.workers_after(index, parts.len()),
                        snapshot: None,
                        probe: false,
                    };
                    let snapshot = self.snapshots.get(&key).cloned();
                    let state = Lane::new(spec.clone(), key, context, snapshot, self.shared.clone());
                    let (commands, rx) = mpsc::channel(4);
                    let (opened_tx, opened) = oneshot::channel();
                    let task = tokio::spawn(state.run(rx, opened_tx));
                    handles.push((LaneHandle { sink: index, commands, task }, opened));
                }
            }
            opening.push((part, handles));
        }
        // Wait for every lane to open.
        let mut first = Vec::new();
        let mut failure = None;
        for (part, handles) in opening {
            let mut kept = Vec::new();
            for (handle, opened) in handles {
                match opened.await {
                    Ok(Ok(Some(flushed))) => first.push(flushed),
                    Ok(Ok(None)) => {}
                    Ok(Err(e)) => {
                        failure.get_or_insert(e);
                    }
                    Err(_) => {
                        let sink = &self.sinks[handle.sink].name;
                        failure.get_or_insert_with(|| Error::Task {
                            what: format!("sink \"{sink}\": its task ended while opening"),
                            source: None,
                        });
                    }
                }
                kept.push(handle);
            }
            self.lanes.insert(part, kept);
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if !first.is_empty() {
            for flushed in first {
                self.snapshots.set(flushed.key, flushed.snapshot);
            }
            if let Some(store) = &self.offsets {
                store.commit(&self.source_name, &self.committed, &self.snapshots)?;
            }
        }
        Ok(())
    }

    /// How many lanes sink `index` has once `new_parts` more partitions
    /// are open.
    fn workers_after(&self, index: usize, new_parts: usize) -> u32 {
        let per_partition = self.sinks[index].lanes.max(1);
        let open = u32::try_from(self.lanes.len() + new_parts).unwrap_or(u32::MAX);
        open.saturating_mul(per_partition)
    }

    /// Sends `batch` of `partition` to every sink's lanes.
    async fn route(&mut self, partition: &PartitionId, batch: Batch) -> Result<()> {
        let batch = Arc::new(batch);
        self.round_robin += 1;
        let Some(handles) = self.lanes.get(partition) else { return Ok(()) };
        let mut sends = Vec::new();
        // Sinks with the same lane count share one split of the batch.
        let mut splits: BTreeMap<usize, Vec<Option<Arc<Batch>>>> = BTreeMap::new();
        let mut i = 0;
        for spec in &self.sinks {
            let n = spec.lanes.max(1) as usize;
            if n == 1 {
                sends.push((i, batch.clone()));
            } else {
                let parts = splits.entry(n).or_insert_with(|| {
                    route::split(&batch, n, self.round_robin).into_iter().map(|p| p.map(Arc::new)).collect()
                });
                for (lane, part) in parts.iter().enumerate() {
                    if let Some(part) = part {
                        sends.push((i + lane, part.clone()));
                    }
                }
            }
            i += n;
        }
        for (index, batch) in sends {
            if handles[index].commands.send(Command::Add(batch)).await.is_err() {
                return Err(self.lane_failed(partition.clone(), index).await);
            }
        }
        Ok(())
    }

    /// The error a lane's task ended with.
    async fn lane_failed(&mut self, partition: PartitionId, index: usize) -> Error {
        let Some(handles) = self.lanes.get_mut(&partition) else { return self.interrupted() };
        let handle = handles.remove(index);
        let sink = handle.sink;
        match handle.task.await {
            Ok(end) => {
                self.ended.push((sink, end.status));
                end.error.unwrap_or_else(|| self.interrupted())
            }
            Err(e) => Error::Task {
                what: format!("sink \"{}\": its task failed", self.sinks[sink].name),
                source: Some(Box::new(e)),
            },
        }
    }

    /// Flushes every lane (concurrently: a barrier), syncs dead letters,
    /// and commits `end` with every lane's snapshot.
    async fn checkpoint(&mut self, end: Position, records: u64) -> Result<()> {
        let mut replies = Vec::new();
        for (partition, handles) in &self.lanes {
            for (index, handle) in handles.iter().enumerate() {
                let (tx, rx) = oneshot::channel();
                if handle.commands.send(Command::Flush(tx)).await.is_err() {
                    let partition = partition.clone();
                    return Err(self.lane_failed(partition, index).await);
                }
                replies.push((partition.clone(), index, rx));
            }
        }
        let mut flushed: Vec<Flushed> = Vec::new();
        for (partition, index, rx) in replies {
            match rx.await {
                Ok(Ok(f)) => flushed.push(f),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(self.lane_failed(partition, index).await),
            }
        }
        for f in flushed {
            self.snapshots.set(f.key, f.snapshot);
        }
        self.shared.dead_letters.lock().unwrap_or_else(|p| p.into_inner()).sync()?;
        if let Some(store) = &self.offsets {
            store.commit(&self.source_name, &end, &self.snapshots)?;
        }
        self.control.committed.fetch_add(records, Ordering::Relaxed);
        self.checkpoints += 1;
        self.last_commit = Some(Instant::now());
        for partition in self.lanes.keys() {
            if let Some(p) = self.partitions.get_mut(partition) {
                p.commits += 1;
            }
        }
        for quota in self.sinks.iter().filter_map(|s| s.grants.quota.as_ref()) {
            quota.measure();
        }
        tracing::debug!(pipeline = %self.pipeline, "committed {end}");
        if let Some(notifier) = &self.notifier {
            notifier.committed(&end);
        }
        *self.shared.committed.lock().unwrap_or_else(|p| p.into_inner()) = end.to_string();
        self.committed = end;
        Ok(())
    }

    /// Closes the lanes of revoked partitions (their checkpoint was just
    /// committed).
    async fn revoke(&mut self, parts: Vec<PartitionId>) -> Result<()> {
        for part in parts {
            if let Some(handles) = self.lanes.remove(&part) {
                for handle in handles {
                    drop(handle.commands);
                    if let Ok(end) = handle.task.await {
                        self.ended.push((handle.sink, end.status));
                    }
                }
            }
        }
        Ok(())
    }

    /// Ends every lane: each closes its instance exactly once.
    async fn close_all(&mut self) {
        let lanes = std::mem::take(&mut self.lanes);
        let mut tasks = Vec::new();
        for handle in lanes.into_values().flatten() {
            drop(handle.commands);
            tasks.push((handle.sink, handle.task));
        }
        for (sink, task) in tasks {
            match task.await {
                Ok(end) => {
                    if let Some(e) = end.error {
                        tracing::debug!("{}", crate::error::chain(&e));
                    }
                    self.ended.push((sink, end.status));
                }
                Err(e) => tracing::error!("a sink task failed: {e}"),
            }
        }
    }

    /// Per partition: records, commits, its instances' pauses, and the
    /// source's last known lag.
    fn partition_status(&self, instances: &[LaneStatus]) -> Vec<PartitionStatus> {
        let lag = self.lag.as_ref().map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap_or_default();
        self.partitions
            .iter()
            .map(|(id, p)| {
                let mut p = p.clone();
                p.pauses = instances
                    .iter()
                    .filter(|i| i.topic == id.topic && i.partition == id.partition)
                    .map(|i| i.metrics.pauses)
                    .sum();
                p.lag = lag.get(id).copied();
                p
            })
            .collect()
    }

    /// Metrics per sink, summed over its lanes.
    fn metrics(&self) -> Vec<SinkMetrics> {
        let mut per_sink: Vec<SinkMetrics> = self.sinks.iter().map(|s| SinkMetrics::new(&s.name)).collect();
        for (sink, lane) in &self.ended {
            per_sink[*sink].merge(&lane.metrics);
        }
        per_sink.into_iter().map(SinkMetrics::finish).collect()
    }
}
