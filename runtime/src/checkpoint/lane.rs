//! One sink instance's task: the batches of the open checkpoint it holds,
//! its position in them, its metrics and its recovery.
//!
//! A lane serves one sink for one partition (and one lane of it, with
//! `lanes = N`). The loop sends it batches and, at each checkpoint, a
//! flush; the lane recovers from its sink's failures on its own, replaying
//! only its own held batches, so a trap in one partition's instance never
//! replays another's.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sinkbox_format::{BatchWriter, Record, Records};
use tokio::sync::{mpsc, oneshot, watch};

use super::control::{Live, Observer};
use super::deadletter::DeadLetters;
use super::policy::{OnError, RetryPolicy};
use super::{RUN, SinkSpec};
use crate::bindings::{Batch, Context, Rejection};
use crate::error::{Error, Fault, Phase, Result, SinkFailure};
use crate::sandbox::{Engine, Failure, Interrupt, SinkInstance};
use crate::status::{LaneStatus, SinkMetrics};

/// What every lane of a pipeline shares.
pub(super) struct Shared {
    pub engine: Engine,
    pub retry: RetryPolicy,
    pub dead_letters: Arc<Mutex<DeadLetters>>,
    /// Fires on an operator's abort: calls in progress are dropped.
    pub interrupt: Interrupt,
    /// The pipeline's stop state (`RUN`, `FINISH`, `ABORT`).
    pub state: watch::Receiver<u8>,
    /// The committed position, for messages.
    pub committed: Mutex<String>,
    /// Where lanes publish their metrics at each flush.
    pub live: Arc<Live>,
    /// Told of every flush.
    pub observer: Option<Arc<dyn Observer>>,
}

impl Shared {
    pub(super) fn committed(&self) -> String {
        self.committed.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sleeps, waking early with an error if a stop is requested.
    pub(super) async fn sleep(&self, total: Duration) -> Result<()> {
        let mut state = self.state.clone();
        let stopped = async {
            let _ = state.wait_for(|s| *s != RUN).await;
        };
        tokio::select! {
            () = tokio::time::sleep(total) => Ok(()),
            () = stopped => Err(Error::Interrupted { from: self.committed() }),
        }
    }

    /// A failure as the pipeline's error: an abort's cut-off call becomes
    /// `Interrupted`.
    fn stopped_or(&self, failure: SinkFailure) -> Error {
        if matches!(failure.fault, Fault::Stopped) {
            return Error::Interrupted { from: self.committed() };
        }
        failure.into()
    }

    /// Instantiates and opens an instance of `spec` with `context`.
    /// `open` answering backpressure or retryable is retried on a fresh
    /// instance.
    pub(super) async fn open_instance(&self, spec: &SinkSpec, context: &Context) -> Result<SinkInstance> {
        let mut attempt = 0;
        loop {
            let mut instance = SinkInstance::new(
                &self.engine,
                &spec.component,
                &spec.name,
                spec.limits,
                &spec.grants,
                self.interrupt.clone(),
            )
            .await
            .map_err(|f| self.stopped_or(f))?;
            match instance.open(&spec.config, context).await {
                Ok(()) => return Ok(instance),
                // A trap or an exceeded limit in open gets a fresh instance
                // too; `fatal` (a bad config, usually) does not.
                Err(Failure::Fault(f))
                    if !matches!(f.fault, Fault::Fatal(_) | Fault::Stopped | Fault::Rejected(_))
                        && attempt + 1 < self.retry.max_attempts =>
                {
                    attempt += 1;
                    let wait = match f.fault {
                        Fault::Backpressure(ms) => Duration::from_millis(u64::from(ms)).min(self.retry.max_wait),
                        _ => self.retry.backoff(attempt),
                    };
                    tracing::warn!("{f}; retrying in {wait:?}");
                    self.sleep(wait).await?;
                }
                Err(e) => return Err(self.stopped_or(e.into_failure(&spec.name, Phase::Open))),
            }
        }
    }
}

/// What the loop asks of a lane.
pub(super) enum Command {
    /// Take this batch.
    Add(Arc<Batch>),
    /// Flush, and answer with the snapshot.
    Flush(oneshot::Sender<Result<Flushed>>),
}

impl Command {
    /// The encoded bytes it carries.
    pub(super) fn bytes(&self) -> u64 {
        match self {
            Command::Add(batch) => batch.data.len() as u64,
            Command::Flush(_) => 0,
        }
    }
}

/// A lane's answer to a flush.
pub(super) struct Flushed {
    /// The lane's snapshot key.
    pub key: String,
    /// What its sink returned.
    pub snapshot: Option<Vec<u8>>,
}

/// How a lane's task ended.
pub(super) struct LaneEnd {
    pub status: LaneStatus,
    /// Why it ended early, unless it already answered a request with it.
    pub error: Option<Error>,
}

/// A lane's state.
pub(super) struct Lane {
    pub(super) spec: Arc<SinkSpec>,
    /// Its snapshot key.
    pub(super) key: String,
    /// The context its instances are opened with (without the snapshot).
    pub(super) context: Context,
    pub(super) shared: Arc<Shared>,
    instance: Option<SinkInstance>,
    /// The snapshot of the last successful flush: handed to every instance
    /// this lane opens.
    snapshot: Option<Vec<u8>>,
    pub(super) metrics: SinkMetrics,
    /// The open checkpoint's batches, kept for replays.
    pub(super) held: Vec<Arc<Batch>>,
    /// Records this lane must not see again in the open checkpoint, as
    /// (batch index, offset): dead-lettered already.
    pub(super) skip: BTreeSet<(usize, u64)>,
    added: u64,
    attempts: u32,
    backpressure: u32,
    traps: u32,
    pub(super) poison: u32,
    /// After a resource-limit trap: replay in pieces of this many records.
    piece: Option<usize>,
    recovering_since: Option<Instant>,
    /// True while the lane sleeps before a replay (backpressure, a retry's
    /// backoff): the loop then holds this partition's batches and pauses
    /// its source instead of waiting, so other partitions keep flowing.
    waiting: Arc<watch::Sender<bool>>,
}

impl Lane {
    pub(super) fn new(
        spec: Arc<SinkSpec>,
        key: String,
        context: Context,
        snapshot: Option<Vec<u8>>,
        shared: Arc<Shared>,
    ) -> Lane {
        let mut metrics = SinkMetrics::new(&spec.name);
        metrics.lanes = 1;
        Lane {
            spec,
            key,
            context,
            shared,
            instance: None,
            snapshot,
            metrics,
            held: Vec::new(),
            skip: BTreeSet::new(),
            added: 0,
            attempts: 0,
            backpressure: 0,
            traps: 0,
            poison: 0,
            piece: None,
            recovering_since: None,
            waiting: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Follows whether the lane is waiting before a replay.
    pub(super) fn waiting(&self) -> watch::Receiver<bool> {
        self.waiting.subscribe()
    }

    /// Sleeps `total` before a replay, saying so to the loop.
    fn wait(&self, total: Duration) -> impl Future<Output = Result<()>> + Send + 'static {
        let (shared, waiting) = (self.shared.clone(), self.waiting.clone());
        async move {
            waiting.send_replace(true);
            let slept = shared.sleep(total).await;
            waiting.send_replace(false);
            slept
        }
    }

    /// The lane's task: opens an instance (and, for a lane with no
    /// committed snapshot yet, flushes it at once, so even a crash in the
    /// first checkpoint has a snapshot to roll back to), answers `opened`
    /// with that first snapshot, then serves commands until the loop drops
    /// its sender, and closes the instance.
    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        opened: oneshot::Sender<Result<Option<Flushed>>>,
    ) -> LaneEnd {
        let first = self.open_first().await;
        let failed = first.is_err();
        let _ = opened.send(first);
        if failed {
            return self.end(None).await;
        }
        while let Some(command) = commands.recv().await {
            match command {
                Command::Add(batch) => {
                    self.held.push(batch);
                    if let Err(e) = self.deliver(self.held.len() - 1).await {
                        return self.end(Some(e)).await;
                    }
                }
                Command::Flush(reply) => match self.flush().await {
                    Ok(snapshot) => {
                        let _ = reply.send(Ok(Flushed { key: self.key.clone(), snapshot }));
                    }
                    Err(e) => {
                        // The error goes with the lane's end, which the loop
                        // reads whether it sees the flush go unanswered or
                        // the lane gone first.
                        drop(reply);
                        return self.end(Some(e)).await;
                    }
                },
            }
        }
        self.end(None).await
    }

    async fn open_first(&mut self) -> Result<Option<Flushed>> {
        self.start_instance().await?;
        if self.snapshot.is_some() {
            return Ok(None);
        }
        let snapshot = self.flush().await?;
        Ok(Some(Flushed { key: self.key.clone(), snapshot }))
    }

    /// Closes the live instance (exactly once), unless the pipeline is
    /// aborting or it failed.
    async fn end(mut self, error: Option<Error>) -> LaneEnd {
        if let Some(instance) = self.instance.take() {
            if *self.shared.state.borrow() == super::ABORT || instance.is_broken() {
                self.retire(instance);
            } else {
                let (result, stats) = instance.close().await;
                self.metrics.absorb(&stats);
                if let Err(e) = result {
                    tracing::warn!("{}", e.into_failure(&self.spec.name, Phase::Close));
                }
            }
        }
        let status = self.status();
        self.shared.live.publish(&self.key, status.clone());
        LaneEnd { status, error }
    }

    /// Its counters so far.
    fn status(&self) -> LaneStatus {
        LaneStatus {
            topic: self.context.topic.clone(),
            partition: self.context.partition,
            lane: self.context.lane,
            metrics: self.metrics.clone().finish(),
        }
    }

    /// Drops an instance, keeping what its calls cost.
    fn retire(&mut self, mut instance: SinkInstance) {
        self.metrics.absorb(&instance.take_stats());
    }

    fn drop_instance(&mut self) {
        if let Some(instance) = self.instance.take() {
            self.retire(instance);
        }
    }

    /// The context an instance of this lane is opened with.
    pub(super) fn context(&self, probe: bool) -> Context {
        Context { snapshot: self.snapshot.clone(), probe, ..self.context.clone() }
    }

    /// Instantiates and opens an instance (probes are not counted as the
    /// lane's instances).
    pub(super) fn new_instance(&self, probe: bool) -> impl Future<Output = Result<SinkInstance>> + Send + 'static {
        let (spec, shared, context) = (self.spec.clone(), self.shared.clone(), self.context(probe));
        async move { shared.open_instance(&spec, &context).await }
    }

    async fn start_instance(&mut self) -> Result<()> {
        self.metrics.instances += 1;
        let instance = self.new_instance(false).await?;
        self.instance = Some(instance);
        Ok(())
    }

    /// Adds the held batch at `index`, recovering from failures.
    async fn deliver(&mut self, index: usize) -> Result<()> {
        match self.add_once(index).await? {
            Ok(()) => Ok(()),
            Err(failure) => self.recover(Some(index), failure).await,
        }
    }

    /// The held batch at `index` as this lane must see it: without the
    /// records it already dead-lettered. `None`: use it as it is.
    fn batch_for(&self, index: usize) -> Option<Batch> {
        let held = &self.held[index];
        self.skip.range((index, 0)..=(index, u64::MAX)).next()?;
        let mut writer = BatchWriter::default();
        for record in records(held).filter(|r| !self.skip.contains(&(index, r.offset))) {
            push_record(&mut writer, &record);
        }
        let (data, count) = writer.finish();
        Some(Batch { topic: held.topic.clone(), partition: held.partition, count, data })
    }

    /// One `add` of the held batch at `index` (in pieces after a resource
    /// limit), rejections dead-lettered. A sink failure is returned for
    /// recovery; the outer error is the host's own (the dead-letter file).
    async fn add_once(&mut self, index: usize) -> Result<Result<(), SinkFailure>> {
        if self.instance.is_none() {
            // The last instance was lost after a successful flush.
            if let Err(e) = self.start_instance().await {
                return match e {
                    Error::Sink(f) => Ok(Err(*f)),
                    other => Err(other),
                };
            }
        }
        let filtered = self.batch_for(index);
        let batch = filtered.as_ref().unwrap_or(&self.held[index]);
        let pieces = match self.piece {
            Some(n) if (batch.count as usize) > n => split(batch, n),
            _ => vec![],
        };
        let parts: Vec<&Batch> = if pieces.is_empty() { vec![batch] } else { pieces.iter().collect() };
        let mut rejected_all = Vec::new();
        let mut added = 0;
        for part in parts {
            // Cannot be `None`: started above.
            let Some(instance) = self.instance.as_mut() else { break };
            match instance.add(part).await {
                Ok(()) => added += u64::from(part.count),
                Err(Failure::Rejected(list)) => {
                    added += u64::from(part.count);
                    rejected_all.extend(list);
                }
                Err(Failure::Fault(f)) => return Ok(Err(f)),
            }
        }
        let rejected = if rejected_all.is_empty() { 0 } else { self.reject(&rejected_all, index..=index)? };
        self.added += added - rejected.min(added);
        Ok(Ok(()))
    }

    /// Dead-letters the records `list` names, looked up in the held
    /// batches `range`, and remembers them so replays skip them. Returns
    /// how many were found.
    fn reject(&mut self, list: &[Rejection], range: std::ops::RangeInclusive<usize>) -> Result<u64> {
        let mut found = 0;
        let reasons: HashMap<u64, &str> = list.iter().map(|r| (r.offset, r.reason.as_str())).collect();
        for index in range {
            let held = self.held[index].clone();
            for record in records(&held) {
                let Some(reason) = reasons.get(&record.offset) else {
                    continue;
                };
                if !self.skip.insert((index, record.offset)) {
                    continue;
                }
                found += 1;
                self.metrics.rejected += 1;
                self.dead_letter(reason, &held, &record)?;
            }
        }
        if found < list.len() as u64 {
            tracing::warn!(
                sink = %self.spec.name,
                "rejected {} records, of which {} are not in the batch; ignored those",
                list.len(),
                list.len() as u64 - found
            );
        }
        Ok(found)
    }

    /// Writes a dead letter. A failure here is the host's own: it stops the
    /// pipeline and is never blamed on the sink.
    pub(super) fn dead_letter(&self, reason: &str, batch: &Batch, record: &Record<'_>) -> Result<()> {
        let mut dead_letters = self.shared.dead_letters.lock().unwrap_or_else(|p| p.into_inner());
        dead_letters.push(&self.spec.name, reason, &batch.topic, batch.partition, record)
    }

    /// Flushes, recovering from failures; returns the snapshot, which
    /// becomes the one later instances of this lane open with.
    async fn flush(&mut self) -> Result<Option<Vec<u8>>> {
        let mut rejections = 0;
        loop {
            if self.instance.is_none() {
                self.start_instance().await?;
            }
            // Cannot be `None`: started above.
            let Some(instance) = self.instance.as_mut() else { continue };
            let started = Instant::now();
            let flushed = instance.flush().await;
            if let Some(observer) = &self.shared.observer {
                observer.flushed(&self.spec.name, started.elapsed());
            }
            match flushed {
                Ok(snapshot) => {
                    self.after_flush(snapshot.clone()).await;
                    return Ok(snapshot);
                }
                Err(Failure::Rejected(list)) => {
                    let found = match self.held.len().checked_sub(1) {
                        Some(last) => self.reject(&list, 0..=last)?,
                        None => 0,
                    };
                    self.added = self.added.saturating_sub(found);
                    // The rest counts as flushed, but a rejecting flush
                    // returns no snapshot: flush again (nothing new to
                    // write) for the one that covers what it wrote.
                    rejections += 1;
                    if rejections > 3 {
                        let failure = SinkFailure {
                            sink: self.spec.name.clone(),
                            phase: Phase::Flush,
                            fault: Fault::Violation("rejected records in four flushes in a row".into()),
                        };
                        return Err(failure.into());
                    }
                }
                Err(Failure::Fault(f)) => {
                    // Replay everything held, then flush again.
                    let upto = self.held.len().checked_sub(1);
                    self.recover(upto, f).await?;
                }
            }
        }
    }

    /// Closes the checkpoint for this lane: keeps the snapshot, asks the
    /// sink for its status, forgets the held batches.
    async fn after_flush(&mut self, snapshot: Option<Vec<u8>>) {
        self.snapshot = snapshot;
        self.metrics.added += self.added;
        if let Some(instance) = self.instance.as_mut() {
            match instance.status().await {
                Ok(Some(status)) => self.metrics.report(&status),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("{}", e.into_failure(&self.spec.name, Phase::Status));
                    if self.instance.as_ref().is_some_and(SinkInstance::is_broken) {
                        self.drop_instance();
                    }
                }
            }
        }
        if let Some(instance) = self.instance.as_mut() {
            self.metrics.absorb(&instance.take_stats());
        }
        self.shared.live.publish(&self.key, self.status());
        self.held.clear();
        self.skip.clear();
        self.added = 0;
        self.attempts = 0;
        self.backpressure = 0;
        self.traps = 0;
        self.poison = 0;
        self.piece = None;
        self.recovering_since = None;
    }

    /// Brings the lane back to having taken held batches `..=upto` after
    /// `failure`: waits, shrinks the batches or replaces the instance as
    /// the failure demands, then replays. Returns once a replay succeeded,
    /// or with the error that ends the pipeline.
    async fn recover(&mut self, upto: Option<usize>, mut failure: SinkFailure) -> Result<()> {
        let since = *self.recovering_since.get_or_insert_with(Instant::now);
        loop {
            if matches!(failure.fault, Fault::Stopped) {
                return Err(Error::Interrupted { from: self.shared.committed() });
            }
            if since.elapsed() > self.shared.retry.max_retry_time {
                return Err(Error::RetryTimeUp {
                    sink: self.spec.name.clone(),
                    limit: self.shared.retry.max_retry_time,
                    from: self.shared.committed(),
                    last: Box::new(failure),
                });
            }
            tracing::warn!("{failure}; recovering");
            let largest = upto.map_or(0, |u| self.held[..=u].iter().map(|b| b.count as usize).max().unwrap_or(0));
            match &failure.fault {
                Fault::Backpressure(ms) => {
                    self.backpressure += 1;
                    self.metrics.retries += 1;
                    self.metrics.pauses += 1;
                    if self.backpressure > self.shared.retry.max_backpressure {
                        return Err(self.gave_up(failure));
                    }
                    let asked = Duration::from_millis(u64::from(*ms));
                    let wait = asked.min(self.shared.retry.max_wait);
                    if wait < asked {
                        tracing::warn!(
                            "sink \"{}\" asked to wait {asked:?}; waiting max_wait = {wait:?}",
                            self.spec.name
                        );
                    }
                    self.abort_instance().await;
                    self.wait(wait).await?;
                }
                Fault::Retryable(_) | Fault::Disk { .. } => {
                    self.attempts += 1;
                    self.metrics.retries += 1;
                    if self.attempts >= self.shared.retry.max_attempts {
                        return Err(self.gave_up(failure));
                    }

                    // A fresh instance reopens whatever broke (a file
                    // handle on a full disk, a connection).
                    self.drop_instance();
                    self.wait(self.shared.retry.backoff(self.attempts)).await?;
                    if let Some(quota) = &self.spec.grants.quota {
                        // Space freed during the wait counts for the retry.
                        quota.measure();
                    }
                    self.start_instance().await?;
                }
                fault
                    if fault.is_resource_limit()
                        && failure.phase == Phase::Add
                        && self.piece.unwrap_or(largest) > 1 =>
                {
                    // The batch may just be too big for the sandbox: try
                    // smaller ones before blaming any record.
                    self.metrics.traps += 1;
                    self.drop_instance();
                    let piece = self.piece.unwrap_or(largest).div_ceil(4).max(1);
                    tracing::warn!("sink \"{}\": replaying in batches of {piece} records", self.spec.name);
                    self.piece = Some(piece);
                    self.start_instance().await?;
                }
                _ => {
                    self.metrics.traps += 1;
                    self.traps += 1;
                    self.drop_instance();
                    if self.traps >= 2 {
                        match self.spec.on_error {
                            OnError::Fail => return Err(failure.into()),
                            OnError::DeadLetter => self.isolate_poison(upto, failure).await?,
                        }
                    }
                    self.start_instance().await?;
                }
            }
            self.added = 0;
            match self.replay(upto).await? {
                Ok(()) => return Ok(()),
                Err(next) => failure = next,
            }
        }
    }

    pub(super) fn gave_up(&self, last: SinkFailure) -> Error {
        let attempts = self.attempts.max(self.backpressure);
        Error::GaveUp { sink: self.spec.name.clone(), attempts, from: self.shared.committed(), last: Box::new(last) }
    }

    async fn abort_instance(&mut self) {
        if let Some(instance) = self.instance.as_mut()
            && let Err(Failure::Fault(f)) = instance.abort().await
        {
            tracing::warn!("{f}; replacing the instance");
            self.metrics.traps += 1;
            self.drop_instance();
        }
    }

    /// Adds held batches `..=upto` again, without recovery.
    async fn replay(&mut self, upto: Option<usize>) -> Result<Result<(), SinkFailure>> {
        let Some(upto) = upto else { return Ok(Ok(())) };
        for index in 0..=upto {
            if let Err(f) = self.add_once(index).await? {
                return Ok(Err(f));
            }
        }
        Ok(Ok(()))
    }
}

/// The records of a batch the runtime encoded itself (it always decodes).
pub(super) fn records(batch: &Batch) -> impl Iterator<Item = Record<'_>> {
    Records::new(&batch.data, batch.count).flatten()
}

pub(super) fn push_record(writer: &mut BatchWriter, record: &Record<'_>) {
    writer.begin(record.offset, record.timestamp, record.key, record.value, record.header_count());
    for (name, value) in record.headers().flatten() {
        writer.header(name, value);
    }
}

/// `batch` cut into batches of at most `n` records.
fn split(batch: &Batch, n: usize) -> Vec<Batch> {
    let all: Vec<Record<'_>> = records(batch).collect();
    all.chunks(n.max(1))
        .map(|chunk| {
            let mut writer = BatchWriter::default();
            for record in chunk {
                push_record(&mut writer, record);
            }
            let (data, count) = writer.finish();
            Batch { topic: batch.topic.clone(), partition: batch.partition, count, data }
        })
        .collect()
}
