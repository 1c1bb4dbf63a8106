//! The checkpoint loop: batching, flush, commit, replay.
//!
//! A [`Pipeline`] reads events from its source (on the source's own
//! thread) and routes each batch to the lanes of every sink: one task per
//! sink instance, per (sink, partition, lane). A checkpoint closes after
//! `commit_every` records, `commit_interval`, or `checkpoint_bytes` of
//! held batches, whichever comes first. Each partition checkpoints on its
//! own: its lanes flush (concurrently), and once they all answered, dead
//! letters are synced, then the partition's position and its lanes'
//! snapshots are committed to the offset store, and the source hears of it
//! ([`Source::committed`]). Each lane keeps the open checkpoint's batches
//! it took, so a replay never needs the source to rewind.
//!
//! The loop does not wait for a flush, nor for the offset store. A
//! partition's next checkpoint closes at its own boundary while the
//! previous one still flushes (its lanes take the commands in order), and
//! its flushes commit in order, up to [`FLUSHES_AHEAD`] of them or
//! `checkpoint_bytes` in flight; then the loop waits. Flushes that end
//! together commit together, and the offset store is written on a blocking
//! thread: a commit that ends while the previous write is still under way
//! joins the next write (positions and snapshots are cumulative). What a
//! commit reports (counts, the source's note, the observer) happens only
//! once its write is durable.
//!
//! A lane that waits before a replay (backpressure, a retry's backoff)
//! holds up only its partition: the loop keeps that partition's batches
//! for it (up to `checkpoint_bytes` per lane, then it waits) and asks the
//! source to pause the partition ([`Source::pause`]) until the lane takes
//! them, while the other partitions go on. The end of the input and a stop
//! request settle every partition: every held batch is delivered and every
//! partition committed. A revocation settles the revoked partitions only
//! (a cooperative rebalance moves some, and the others keep flowing).
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
//! [`Source::pause`]: crate::source::Source::pause

mod bisect;
mod control;
mod deadletter;
mod lane;
mod offsets;
mod policy;
mod route;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use self::control::{ABORT, FINISH, RUN};
pub use control::{CheckpointReport, Control, ControlState, Observer, RateLimit};
pub use deadletter::{DEAD_LETTER_SHARE_AFTER, DeadLetters, MAX_DEAD_LETTER_SHARE, MAX_DEAD_LETTERS};
pub use offsets::{Committed, OffsetStore, Snapshots};
pub use policy::{Batching, OnError, RetryPolicy};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinError, JoinHandle, JoinSet};

use self::lane::{Command, Flushed, Lane, LaneEnd, Shared};
use crate::bindings::{Batch, Context};
use crate::error::{Error, Result};
use crate::sandbox::{Engine, Grants, Interrupt, SandboxLimits, SinkComponent};
use crate::source::{Notifier, PartitionId, PartitionPosition, Position, Source, SourceEvent, SourceHandle};
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
            live: control.live.clone(),
            observer: control.observer.get().cloned(),
        });
        let mut run = Run {
            pipeline: name,
            source_name: String::new(),
            sinks: sinks.into_iter().map(Arc::new).collect(),
            shared: shared.clone(),
            control,
            batching,
            offsets: offsets.map(Arc::new),
            submitted: start.position.clone(),
            committed: start.position,
            snapshots: start.snapshots,
            writing: None,
            queued: None,
            lanes: BTreeMap::new(),
            open: BTreeMap::new(),
            flushes: JoinSet::new(),
            flushed: BTreeMap::new(),
            closing: BTreeMap::new(),
            next_checkpoint: 0,
            ended: Vec::new(),
            workers: BTreeMap::new(),
            notifier: None,
            lag: None,
            partitions: BTreeMap::new(),
            first_record: None,
            last_commit: None,
            round_robin: 0,
            throttled_until: None,
            checkpoints: 0,
            malformed: 0,
        };
        let result = match SourceHandle::spawn(source, batching.batch_size, batching.batch_bytes) {
            Ok(mut source) => {
                run.source_name = source.describe().to_string();
                run.notifier = source.notifier();
                run.lag = source.lag();
                let result = run.run(&mut source).await;
                // What flushed is committed, also when the run failed.
                let result = result.and(run.sync_commits().await);
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
    /// Whether the lane is waiting before a replay.
    waiting: watch::Receiver<bool>,
    /// Commands kept for it while it waits, in order, and their bytes.
    backlog: VecDeque<Command>,
    backlog_bytes: u64,
}

/// The lane's task has ended: its end says why.
struct LaneGone;

impl LaneHandle {
    /// Sends `command` to the lane. While the lane waits before a replay,
    /// the command is kept for it instead (true is returned), unless `wait`
    /// is set or there is no `room` (bytes) left to keep it: then this
    /// waits for the lane to take it.
    async fn send(&mut self, command: Command, wait: bool, room: u64) -> std::result::Result<bool, LaneGone> {
        let may_keep = !wait && room > 0;
        if !self.backlog.is_empty() {
            if may_keep {
                self.keep(command);
                return Ok(true);
            }
            self.hand_over_all().await?;
        }
        let command = match self.commands.try_send(command) {
            Ok(()) => return Ok(false),
            Err(TrySendError::Closed(_)) => return Err(LaneGone),
            Err(TrySendError::Full(command)) => command,
        };
        if !may_keep {
            return self.commands.send(command).await.map(|()| false).map_err(|_| LaneGone);
        }
        let mut waiting = self.waiting.clone();
        tokio::select! {
            permit = self.commands.reserve() => {
                permit.map_err(|_| LaneGone)?.send(command);
                return Ok(false);
            }
            _ = waiting.wait_for(|w| *w) => {}
        }
        self.keep(command);
        Ok(true)
    }

    fn keep(&mut self, command: Command) {
        self.backlog_bytes += command.bytes();
        self.backlog.push_back(command);
    }

    /// Moves kept commands to the lane as far as it has room; true once
    /// none is kept.
    fn hand_over(&mut self) -> std::result::Result<bool, LaneGone> {
        while let Some(command) = self.backlog.pop_front() {
            let bytes = command.bytes();
            match self.commands.try_send(command) {
                Ok(()) => self.backlog_bytes -= bytes,
                Err(TrySendError::Full(command)) => {
                    self.backlog.push_front(command);
                    return Ok(false);
                }
                Err(TrySendError::Closed(_)) => return Err(LaneGone),
            }
        }
        Ok(true)
    }

    /// Moves every kept command to the lane, waiting for it to take them.
    async fn hand_over_all(&mut self) -> std::result::Result<(), LaneGone> {
        while let Some(command) = self.backlog.pop_front() {
            self.backlog_bytes -= command.bytes();
            self.commands.send(command).await.map_err(|_| LaneGone)?;
        }
        Ok(())
    }
}

/// One partition's open checkpoint, as the loop sees it.
#[derive(Default)]
struct PartitionCheckpoint {
    /// Where the open checkpoint ends: the position after its last batch.
    end: Option<PartitionPosition>,
    records: u64,
    bytes: u64,
    started: Option<Instant>,
    /// The bytes of the flushes started and not yet committed.
    flushing_bytes: u64,
    /// The number of the next flush to start, and to commit.
    next_flush: u64,
    next_commit: u64,
    /// The source was asked to pause this partition.
    paused: bool,
}

impl PartitionCheckpoint {
    /// Flushes of earlier checkpoints started and not yet committed.
    fn flushing(&self) -> u64 {
        self.next_flush - self.next_commit
    }
}

/// How many flushes of one partition may be in flight.
pub const FLUSHES_AHEAD: u64 = 4;

/// The most commands a lane's queue holds.
pub const LANE_AHEAD: usize = 32;

/// A partition's flush, once every lane answered.
struct PartitionFlushed {
    partition: PartitionId,
    /// Its number among the partition's flushes.
    number: u64,
    /// The checkpoint it belongs to (see `Run::closing`).
    checkpoint: u64,
    end: PartitionPosition,
    records: u64,
    bytes: u64,
    /// When its flush started.
    started: Instant,
    /// Per lane (by index): its answer, or an error if its task ended.
    replies: Vec<(usize, std::result::Result<Result<Flushed>, oneshot::error::RecvError>)>,
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
    offsets: Option<Arc<OffsetStore>>,
    /// What is durable in the offset store.
    committed: Position,
    /// What flushed: the position of the last write started or queued.
    /// The snapshots are always of it.
    submitted: Position,
    snapshots: Snapshots,
    /// The offset-store write under way (it ends with the position it
    /// wrote), and what it commits.
    writing: Option<(JoinHandle<Result<Position>>, Commits)>,
    /// Commits that flushed while a write was under way: the next write.
    queued: Option<Commits>,
    /// Per partition: its lanes, sink by sink, lane by lane.
    lanes: BTreeMap<PartitionId, Vec<LaneHandle>>,
    /// Per partition: its open checkpoint.
    open: BTreeMap<PartitionId, PartitionCheckpoint>,
    /// Flushes in flight.
    flushes: JoinSet<PartitionFlushed>,
    /// Flushes that ended before an earlier flush of their partition, by
    /// partition and number.
    flushed: BTreeMap<(PartitionId, u64), PartitionFlushed>,
    /// Per checkpoint closed (numbered from 0): its partitions' flushes
    /// not yet committed.
    closing: BTreeMap<u64, u32>,
    next_checkpoint: u64,
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
    /// Until when the records-per-second cap holds reading back.
    throttled_until: Option<Instant>,
    checkpoints: u64,
    malformed: u64,
}

/// Flushes committed in one write of the offset store.
#[derive(Default)]
struct Commits {
    /// The checkpoints they complete.
    checkpoints: u64,
    records: u64,
    bytes: u64,
    /// When the earliest of their flushes started.
    started: Option<Instant>,
    partitions: Vec<PartitionId>,
}

impl Commits {
    fn merge(&mut self, other: Commits) {
        self.checkpoints += other.checkpoints;
        self.records += other.records;
        self.bytes += other.bytes;
        self.started = self.started.into_iter().chain(other.started).min();
        self.partitions.extend(other.partitions);
    }
}

/// Waits for the offset-store write under way, if any (else forever).
async fn written(
    writing: &mut Option<(JoinHandle<Result<Position>>, Commits)>,
) -> std::result::Result<Result<Position>, JoinError> {
    match writing {
        Some((task, _)) => task.await,
        None => std::future::pending().await,
    }
}

/// What woke the loop.
enum Wake {
    Event(Option<Result<SourceEvent>>),
    Flushed(std::result::Result<PartitionFlushed, JoinError>),
    Durable(std::result::Result<Result<Position>, JoinError>),
    Tick,
}

/// How often the loop offers kept batches to a waiting lane.
const HAND_OVER_EVERY: Duration = Duration::from_millis(10);

impl Run<'_> {
    async fn run(&mut self, source: &mut SourceHandle) -> Result<()> {
        let initial = source.partitions().to_vec();
        self.assign(initial).await?;
        let mut state = self.control.state.subscribe();
        let mut paused = self.control.paused.subscribe();
        loop {
            let now = *state.borrow_and_update();
            if now == ABORT {
                return Err(self.interrupted());
            }
            if now == FINISH {
                return bounded(self.control, self.committed.to_string(), self.settle(None)).await;
            }
            if *paused.borrow_and_update() {
                self.pause(&mut paused).await?;
                continue;
            }
            if self.checkpoint_due() {
                bounded(self.control, self.committed.to_string(), self.close_checkpoint()).await?;
            }
            if self.holding() {
                bounded(self.control, self.committed.to_string(), self.hand_over()).await?;
            }
            let mut wait = self.next_wake();
            // Over its records-per-second cap, the loop reads nothing until
            // the cap allows, but goes on committing.
            let throttled = self.throttled_until.filter(|t| *t > Instant::now());
            if let Some(until) = throttled {
                wait = wait.min(until - Instant::now());
            }
            let wake = tokio::select! {
                event = source.next(), if throttled.is_none() => Wake::Event(event),
                Some(flushed) = self.flushes.join_next() => Wake::Flushed(flushed),
                written = written(&mut self.writing) => Wake::Durable(written),
                () = tokio::time::sleep(wait) => Wake::Tick,
                _ = state.changed() => Wake::Tick,
                _ = paused.changed() => Wake::Tick,
            };
            let batch = match wake {
                Wake::Tick => continue,
                Wake::Flushed(flushed) => {
                    bounded(self.control, self.committed.to_string(), self.commit(flushed)).await?;
                    continue;
                }
                Wake::Durable(written) => {
                    self.durable(written)?;
                    continue;
                }
                Wake::Event(None) => {
                    return bounded(self.control, self.committed.to_string(), self.settle(None)).await;
                }
                Wake::Event(Some(Err(e))) => {
                    bounded(self.control, self.committed.to_string(), self.settle(None)).await?;
                    return Err(e);
                }
                Wake::Event(Some(Ok(SourceEvent::Assigned(parts)))) => {
                    bounded(self.control, self.committed.to_string(), self.assign(parts)).await?;
                    continue;
                }
                Wake::Event(Some(Ok(SourceEvent::Revoked(parts)))) => {
                    bounded(self.control, self.committed.to_string(), self.settle(Some(&parts))).await?;
                    bounded(self.control, self.committed.to_string(), self.revoke(parts)).await?;
                    if let Some(notifier) = &self.notifier {
                        notifier.revoked(&self.committed);
                    }
                    continue;
                }
                Wake::Event(Some(Ok(SourceEvent::Batch(batch)))) => batch,
            };
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
            let partition = PartitionId { topic: batch.topic, partition: batch.partition };
            self.partitions
                .entry(partition.clone())
                .or_insert_with(|| PartitionStatus {
                    topic: partition.topic.clone(),
                    partition: partition.partition,
                    ..Default::default()
                })
                .records += count + batch.malformed.len() as u64;
            let mine = |p: &PartitionPosition| p.topic == partition.topic && p.partition == partition.partition;
            let Some(end) = batch.end.partitions.into_iter().find(mine) else {
                // Without it the partition could never commit.
                return Err(Error::Source {
                    source_name: self.source_name.clone(),
                    what: format!("a batch of {partition} came without a position for {partition}"),
                });
            };
            let open = self.open.entry(partition.clone()).or_default();
            open.started.get_or_insert_with(Instant::now);
            open.end = Some(end);
            if count == 0 {
                continue;
            }
            if !self.lanes.contains_key(&partition) {
                bounded(self.control, self.committed.to_string(), self.assign(vec![partition.clone()])).await?;
            }
            let (data, count) = batch.records.finish();
            let open = self.open.entry(partition.clone()).or_default();
            open.records += u64::from(count);
            open.bytes += data.len() as u64;
            let batch = Batch { topic: partition.topic.clone(), partition: partition.partition, count, data };
            bounded(self.control, self.committed.to_string(), self.route(&partition, batch)).await?;
            if let Some(rate) = self.control.rate.get() {
                let wait = rate.take(u64::from(count));
                self.throttled_until = (!wait.is_zero()).then(|| Instant::now() + wait);
            }
        }
    }

    /// A pause: commits every open checkpoint, pauses the source's
    /// partitions, and waits for a resume or a stop.
    async fn pause(&mut self, paused: &mut watch::Receiver<bool>) -> Result<()> {
        bounded(self.control, self.committed.to_string(), self.settle(None)).await?;
        let parts: Vec<PartitionId> = self.lanes.keys().cloned().collect();
        if let Some(notifier) = &self.notifier {
            notifier.pause(parts.clone());
        }
        tracing::info!(pipeline = %self.pipeline, "paused at {}", self.committed);
        let mut state = self.control.state.subscribe();
        tokio::select! {
            _ = paused.wait_for(|p| !*p) => {}
            _ = state.wait_for(|s| *s != RUN) => {}
        }
        // Partitions the loop paused for a waiting lane stay paused.
        let resume: Vec<PartitionId> =
            parts.into_iter().filter(|p| !self.open.get(p).is_some_and(|o| o.paused)).collect();
        if let Some(notifier) = &self.notifier {
            notifier.resume(resume);
        }
        tracing::info!(pipeline = %self.pipeline, "resumed");
        Ok(())
    }

    /// Whether a sink of `partition` waits before a replay, or has batches
    /// kept for it.
    fn waiting(&self, partition: &PartitionId) -> bool {
        self.lanes.get(partition).is_some_and(|h| h.iter().any(|h| *h.waiting.borrow() || !h.backlog.is_empty()))
    }

    /// Whether the open checkpoint is due: `commit_every` records,
    /// `checkpoint_bytes`, or `commit_interval` since its first batch (or
    /// since its partition's last flush ended), over the partitions whose
    /// sinks are not waiting (those close theirs once they take batches
    /// again).
    fn checkpoint_due(&self) -> bool {
        let (mut records, mut bytes, mut oldest) = (0, 0, None::<Instant>);
        for (_, open) in self.open.iter().filter(|(id, o)| o.end.is_some() && !self.waiting(id)) {
            records += open.records;
            bytes += open.bytes;
            // A partition's interval runs from the end of its last flush.
            if let Some(started) = open.started.filter(|_| open.flushing() == 0) {
                oldest = Some(oldest.map_or(started, |o| o.min(started)));
            }
        }
        records >= self.batching.commit_every
            || bytes >= self.batching.checkpoint_bytes
            || oldest.is_some_and(|t| t.elapsed() >= self.batching.commit_interval)
    }

    /// How long the loop may sleep: until the oldest open checkpoint's
    /// interval is over, or a moment while batches are kept for a waiting
    /// lane.
    fn next_wake(&self) -> Duration {
        if self.lanes.values().flatten().any(|h| !h.backlog.is_empty()) {
            return HAND_OVER_EVERY;
        }
        let open = self.open.iter().filter(|(id, o)| o.end.is_some() && o.flushing() == 0 && !self.waiting(id));
        let oldest = open.filter_map(|(_, o)| o.started).min();
        oldest.map_or(Duration::from_secs(3600), |t| self.batching.commit_interval.saturating_sub(t.elapsed()))
    }

    /// Closes the open checkpoint: starts the flush of every partition,
    /// once no partition (but those whose sinks wait before a replay) has
    /// [`FLUSHES_AHEAD`] flushes or `checkpoint_bytes` in flight.
    async fn close_checkpoint(&mut self) -> Result<()> {
        while !self.flushes.is_empty() && self.flushes_behind() {
            tokio::select! {
                Some(flushed) = self.flushes.join_next() => self.commit(flushed).await?,
                // A flush may turn into a wait (backpressure at flush).
                () = tokio::time::sleep(HAND_OVER_EVERY) => {}
            }
        }
        self.start_flushes(None).await
    }

    /// Whether the flushes in flight hold back the next checkpoint.
    fn flushes_behind(&self) -> bool {
        let live = self.open.iter().filter(|(id, o)| o.flushing() > 0 && !self.waiting(id));
        let (bytes, most) = live.fold((0, 0), |(b, m), (_, o)| (b + o.flushing_bytes, m.max(o.flushing())));
        most >= FLUSHES_AHEAD || bytes >= self.batching.checkpoint_bytes
    }

    /// Starts the flush of every partition (or of `only` these) with an
    /// open checkpoint and fewer than [`FLUSHES_AHEAD`] flushes in flight.
    /// Its lanes' answers come back through `flushes`.
    async fn start_flushes(&mut self, only: Option<&[PartitionId]>) -> Result<()> {
        let due: Vec<PartitionId> = self
            .open
            .iter()
            .filter(|(id, o)| o.flushing() < FLUSHES_AHEAD && o.end.is_some() && only.is_none_or(|p| p.contains(id)))
            .map(|(id, _)| id.clone())
            .collect();
        let checkpoint = self.next_checkpoint;
        for partition in due {
            let Some(open) = self.open.get_mut(&partition) else { continue };
            let Some(end) = open.end.take() else { continue };
            let (records, bytes, number) = (open.records, open.bytes, open.next_flush);
            *open = PartitionCheckpoint {
                flushing_bytes: open.flushing_bytes + bytes,
                next_flush: number + 1,
                next_commit: open.next_commit,
                paused: open.paused,
                ..Default::default()
            };
            let started = Instant::now();
            let lanes = self.lanes.get(&partition).map_or(0, Vec::len);
            let mut replies = Vec::new();
            for index in 0..lanes {
                let (tx, rx) = oneshot::channel();
                self.send(&partition, index, Command::Flush(tx), false).await?;
                replies.push((index, rx));
            }
            self.flushes.spawn(async move {
                let mut answers = Vec::new();
                for (index, rx) in replies {
                    answers.push((index, rx.await));
                }
                PartitionFlushed { partition, number, checkpoint, end, records, bytes, started, replies: answers }
            });
            *self.closing.entry(checkpoint).or_default() += 1;
        }
        if self.closing.contains_key(&checkpoint) {
            self.next_checkpoint += 1;
        }
        Ok(())
    }

    /// Commits `first` with the other flushes that have ended, each after
    /// the earlier flushes of its partition: the lanes' snapshots and the
    /// partitions' positions, in one write to the offset store.
    async fn commit(&mut self, first: std::result::Result<PartitionFlushed, JoinError>) -> Result<()> {
        let mut done = vec![first];
        while let Some(more) = self.flushes.try_join_next() {
            done.push(more);
        }
        for flushed in done {
            let flushed = flushed
                .map_err(|e| Error::Task { what: "a checkpoint's flush failed".into(), source: Some(Box::new(e)) })?;
            self.flushed.insert((flushed.partition.clone(), flushed.number), flushed);
        }
        // In key order, a partition's flushes come by number: one pass
        // takes every flush whose earlier ones have committed.
        let mut ready = Vec::new();
        let keys: Vec<(PartitionId, u64)> = self.flushed.keys().cloned().collect();
        for key in keys {
            let Some(open) = self.open.get_mut(&key.0).filter(|o| o.next_commit == key.1) else { continue };
            let Some(flushed) = self.flushed.remove(&key) else { continue };
            open.next_commit += 1;
            open.flushing_bytes -= flushed.bytes;
            // Its next checkpoint's interval runs from here: batches it
            // took while its flushes were in flight (a retry, a slow
            // destination) do not make it due early.
            if open.flushing() == 0 && open.started.is_some() {
                open.started = Some(Instant::now());
            }
            ready.push(flushed);
        }
        if ready.is_empty() {
            return Ok(());
        }
        let mut commits = Commits::default();
        for flushed in ready {
            let mut snapshots = Vec::new();
            for (index, reply) in flushed.replies {
                match reply {
                    Ok(Ok(f)) => snapshots.push(f),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err(self.lane_failed(flushed.partition, index).await),
                }
            }
            for f in snapshots {
                self.snapshots.set(f.key, f.snapshot);
            }
            let end = &flushed.end;
            let partitions = &mut self.submitted.partitions;
            match partitions.iter_mut().find(|p| p.topic == end.topic && p.partition == end.partition) {
                Some(p) => *p = flushed.end,
                None => partitions.push(flushed.end),
            }
            // A checkpoint is committed once the flushes of all its
            // partitions are.
            let left = self.closing.entry(flushed.checkpoint).or_insert(1);
            *left -= 1;
            let checkpoints = u64::from(*left == 0);
            if *left == 0 {
                self.closing.remove(&flushed.checkpoint);
            }
            commits.merge(Commits {
                checkpoints,
                records: flushed.records,
                bytes: flushed.bytes,
                started: Some(flushed.started),
                partitions: vec![flushed.partition],
            });
        }
        self.submit(commits);
        Ok(())
    }

    /// Writes `commits` (with every position and snapshot flushed so far)
    /// to the offset store, or, while a write is under way, queues them for
    /// the next.
    fn submit(&mut self, commits: Commits) {
        if self.writing.is_some() {
            self.queued.get_or_insert_default().merge(commits);
            return;
        }
        let (position, snapshots) = (self.submitted.clone(), self.snapshots.clone());
        let (dead_letters, store) = (self.shared.dead_letters.clone(), self.offsets.clone());
        let source = self.source_name.clone();
        let task = tokio::task::spawn_blocking(move || {
            // Dead letters first: a committed offset never points past a
            // rejected record that is not on disk.
            dead_letters.lock().unwrap_or_else(|p| p.into_inner()).sync()?;
            if let Some(store) = store {
                store.commit(&source, &position, &snapshots)?;
            }
            Ok(position)
        });
        self.writing = Some((task, commits));
    }

    /// The write under way ended: reports what it committed, and starts
    /// the next.
    fn durable(&mut self, written: std::result::Result<Result<Position>, JoinError>) -> Result<()> {
        let Some((_, commits)) = self.writing.take() else { return Ok(()) };
        let end = written
            .map_err(|e| Error::Task { what: "writing the offset store failed".into(), source: Some(Box::new(e)) })??;
        if let Some(next) = self.queued.take() {
            self.submit(next);
        }
        *self.shared.committed.lock().unwrap_or_else(|p| p.into_inner()) = end.to_string();
        self.committed = end;
        if commits.partitions.is_empty() {
            // Only first snapshots (see `assign`): no checkpoint to report.
            return Ok(());
        }
        self.control.committed.fetch_add(commits.records, Ordering::Relaxed);
        self.checkpoints += commits.checkpoints;
        self.last_commit = Some(Instant::now());
        for partition in &commits.partitions {
            if let Some(p) = self.partitions.get_mut(partition) {
                p.commits += 1;
            }
        }
        for quota in self.sinks.iter().filter_map(|s| s.grants.quota.as_ref()) {
            quota.measure();
        }
        tracing::debug!(pipeline = %self.pipeline, "committed {}", self.committed);
        let lanes = self.shared.live.lanes();
        *self.shared.live.partitions.lock().unwrap_or_else(|p| p.into_inner()) = self.partition_status(&lanes);
        if let Some(observer) = &self.shared.observer {
            let report = CheckpointReport {
                pipeline: self.pipeline.clone(),
                records: commits.records,
                bytes: commits.bytes,
                latency: commits.started.map_or(Duration::ZERO, |s| s.elapsed()),
                sinks: self.control.sinks(),
            };
            observer.committed(&report);
        }
        if let Some(notifier) = &self.notifier {
            notifier.committed(&self.committed);
        }
        Ok(())
    }

    /// Waits until every commit is durable.
    async fn sync_commits(&mut self) -> Result<()> {
        while self.writing.is_some() {
            let written = written(&mut self.writing).await;
            self.durable(written)?;
        }
        Ok(())
    }

    /// Delivers every kept batch and commits the open checkpoint of every
    /// partition, or of `only` these, waiting for the lanes and the offset
    /// store: at the end of the input, a stop, or a revocation (other
    /// partitions' flushes that end meanwhile commit too).
    async fn settle(&mut self, only: Option<&[PartitionId]>) -> Result<()> {
        let chosen = |id: &PartitionId| only.is_none_or(|o| o.contains(id));
        loop {
            self.start_flushes(only).await?;
            let parts: Vec<PartitionId> = self.lanes.keys().filter(|p| chosen(p)).cloned().collect();
            for partition in parts {
                let lanes = self.lanes.get(&partition).map_or(0, Vec::len);
                for index in 0..lanes {
                    let handle = &mut self.lanes.get_mut(&partition).expect("listed above")[index];
                    if handle.hand_over_all().await.is_err() {
                        return Err(self.lane_failed(partition, index).await);
                    }
                }
            }
            self.hand_over().await?;
            let open = self.open.iter().any(|(id, o)| chosen(id) && (o.flushing() > 0 || o.end.is_some()));
            if !open {
                return self.sync_commits().await;
            }
            match self.flushes.join_next().await {
                Some(flushed) => self.commit(flushed).await?,
                None => return self.sync_commits().await,
            }
        }
    }

    /// Whether batches are kept for a waiting lane, or a partition is
    /// paused: then [`Run::hand_over`] has work.
    fn holding(&self) -> bool {
        self.lanes.values().flatten().any(|h| !h.backlog.is_empty()) || self.open.values().any(|o| o.paused)
    }

    /// Offers kept batches to their lanes; resumes a paused partition once
    /// none of its batches is kept.
    async fn hand_over(&mut self) -> Result<()> {
        let mut resumed = Vec::new();
        let mut gone = None;
        for (partition, handles) in &mut self.lanes {
            let mut all = true;
            for (index, handle) in handles.iter_mut().enumerate() {
                match handle.hand_over() {
                    Ok(done) => all &= done,
                    Err(LaneGone) => {
                        gone = Some((partition.clone(), index));
                        all = false;
                    }
                }
            }
            if all
                && let Some(open) = self.open.get_mut(partition)
                && open.paused
            {
                open.paused = false;
                resumed.push(partition.clone());
            }
        }
        if let Some((partition, index)) = gone {
            return Err(self.lane_failed(partition, index).await);
        }
        if !resumed.is_empty()
            && let Some(notifier) = &self.notifier
        {
            tracing::debug!("resuming {}", resumed.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "));
            notifier.resume(resumed);
        }
        Ok(())
    }

    /// Sends `command` to lane `index` of `partition`; pauses the partition
    /// at its source if the command is kept for a waiting lane.
    async fn send(&mut self, partition: &PartitionId, index: usize, command: Command, wait: bool) -> Result<()> {
        // Keeping batches for a waiting lane only helps other partitions
        // flow; with one partition the loop waits, as the checkpoint must
        // then too (and it stays `commit_every` records long).
        let wait = wait || self.lanes.len() <= 1;
        // What every lane keeps counts against one `checkpoint_bytes`.
        let kept: u64 = self.lanes.values().flatten().map(|h| h.backlog_bytes).sum();
        let room = self.batching.checkpoint_bytes.saturating_sub(kept);
        let Some(handle) = self.lanes.get_mut(partition).and_then(|h| h.get_mut(index)) else { return Ok(()) };
        match handle.send(command, wait, room).await {
            Ok(false) => Ok(()),
            Ok(true) => {
                let open = self.open.entry(partition.clone()).or_default();
                if !open.paused {
                    open.paused = true;
                    tracing::debug!("pausing {partition}: a sink of it waits before a replay");
                    if let Some(notifier) = &self.notifier {
                        notifier.pause(vec![partition.clone()]);
                    }
                }
                Ok(())
            }
            Err(LaneGone) => Err(self.lane_failed(partition.clone(), index).await),
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
                    let (commands, rx) = mpsc::channel(self.lane_ahead());
                    let (opened_tx, opened) = oneshot::channel();
                    let waiting = state.waiting();
                    // In the caller's span: `serve` names the tenant and
                    // pipeline of what the sink logs.
                    let task = tokio::spawn(tracing::Instrument::in_current_span(state.run(rx, opened_tx)));
                    let handle =
                        LaneHandle { sink: index, commands, task, waiting, backlog: VecDeque::new(), backlog_bytes: 0 };
                    handles.push((handle, opened));
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
            self.submit(Commits::default());
            self.sync_commits().await?;
        }
        Ok(())
    }

    /// How many commands a lane's queue holds: batches up to about
    /// `checkpoint_bytes`, at least 4 and at most [`LANE_AHEAD`]. A source
    /// hands over a fetch of one partition at a time (a Kafka consumer up to
    /// 1 MiB), so a short queue would hold the loop on that partition's
    /// lanes while the others idle.
    fn lane_ahead(&self) -> usize {
        let batches = self.batching.checkpoint_bytes / self.batching.batch_bytes.max(1) as u64;
        usize::try_from(batches).unwrap_or(LANE_AHEAD).clamp(4, LANE_AHEAD)
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
        if !self.lanes.contains_key(partition) {
            return Ok(());
        }
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
            self.send(partition, index, Command::Add(batch), false).await?;
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

    /// Closes the lanes of revoked partitions (their checkpoint was just
    /// committed).
    async fn revoke(&mut self, parts: Vec<PartitionId>) -> Result<()> {
        for part in parts {
            self.open.remove(&part);
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
