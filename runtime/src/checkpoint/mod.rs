//! The checkpoint loop: batching, flush, commit, replay.
//!
//! A [`Pipeline`] reads batches from one source on a reader thread and
//! hands each batch to every sink. A checkpoint closes after
//! `commit_every` records (at the first batch boundary at or past it) or
//! `commit_interval`, whichever comes first: every sink flushes, dead
//! letters are synced, then the source position is committed to the offset
//! store. The loop keeps the open checkpoint's batches in memory, so a
//! replay never needs the source to rewind.
//!
//! Recovery is per sink: a sink that fails is aborted (or replaced) and
//! replayed from the checkpoint start on its own; sinks that did not fail
//! keep what they already took, which is equivalent for the output and
//! does no work twice. What each failure does:
//!
//! | failure | action |
//! |---|---|
//! | `rejected` | dead-letter the named records; the rest count as taken |
//! | `backpressure(ms)` | `abort`, wait `ms`, replay (up to `max_backpressure` times) |
//! | `retryable` | `abort`, exponential backoff, replay; after `max_attempts` stop, checkpoint uncommitted |
//! | trap, limit, `fatal` | drop the instance, open a fresh one, replay; if the same checkpoint fails so again: `on_error = "fail"` stops, `"dead-letter"` bisects to the poison record, dead-letters it and carries on |

mod deadletter;
mod offsets;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub use deadletter::DeadLetters;
pub use offsets::OffsetStore;
use sinkbox_format::{BatchWriter, Record, Records};

use crate::bindings::{Batch, Rejection};
use crate::engine::{Engine, SinkComponent};
use crate::error::{Error, Fault, Phase, Result, SinkFailure};
use crate::sandbox::{Failure, Grants, SandboxLimits, SinkInstance};
use crate::source::{Position, Source, SourceBatch};
use crate::status::{SinkMetrics, Status};

/// What to do when a checkpoint traps twice in a row for a sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Isolate the record that makes the sink trap, dead-letter it, carry on.
    #[default]
    DeadLetter,
    /// Stop the pipeline; the checkpoint stays uncommitted.
    Fail,
}

/// Retry and backoff policy. Defaults: 100 ms base, 10 s cap, 5 attempts,
/// 1,000 backpressure waits per checkpoint, 10 poison records per
/// checkpoint before the sink is considered broken.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub(crate) base: Duration,
    pub(crate) cap: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) max_backpressure: u32,
    pub(crate) max_poison: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            max_attempts: 5,
            max_backpressure: 1_000,
            max_poison: 10,
        }
    }
}

impl RetryPolicy {
    /// First backoff delay; it doubles with each attempt.
    pub fn base(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// Longest backoff delay.
    pub fn cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// Attempts at a checkpoint (the first included) before giving up.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Backpressure waits allowed within one checkpoint.
    pub fn max_backpressure(mut self, n: u32) -> Self {
        self.max_backpressure = n;
        self
    }

    /// Poison records isolated within one checkpoint before giving up.
    pub fn max_poison(mut self, n: u32) -> Self {
        self.max_poison = n;
        self
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// Checkpoint sizing. Defaults: batches of 1,000 records, a checkpoint
/// every 10,000 records or 5 s.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub(crate) batch_size: usize,
    pub(crate) commit_every: u64,
    pub(crate) commit_interval: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Batching { batch_size: 1_000, commit_every: 10_000, commit_interval: Duration::from_secs(5) }
    }
}

impl Batching {
    /// Records per `add` call.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Records per checkpoint.
    pub fn commit_every(mut self, n: u64) -> Self {
        self.commit_every = n.max(1);
        self
    }

    /// Longest time a checkpoint stays open.
    pub fn commit_interval(mut self, d: Duration) -> Self {
        self.commit_interval = d;
        self
    }
}

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
}

/// Shared with the caller while a pipeline runs: stop requests and live
/// counters for a progress display.
#[derive(Debug, Default)]
pub struct Control {
    stop: AtomicU8,
    /// Records read so far.
    pub read: AtomicU64,
    /// Input bytes read so far.
    pub bytes: AtomicU64,
    /// Records committed so far.
    pub committed: AtomicU64,
}

const RUN: u8 = 0;
const FINISH: u8 = 1;
const ABORT: u8 = 2;

impl Control {
    /// Asks the pipeline to stop reading, flush and commit what it has, and
    /// close its sinks. A second call aborts the open checkpoint instead.
    pub fn stop(&self) {
        let _ = self.stop.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| Some((s + 1).min(ABORT)));
    }

    fn state(&self) -> u8 {
        self.stop.load(Ordering::SeqCst)
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
    /// Where committed positions go; `None` keeps them in memory only.
    pub offsets: Option<OffsetStore>,
    /// Where rejected records go.
    pub dead_letters: DeadLetters,
    /// The position the source starts from (from the offset store).
    pub start: Position,
}

/// A batch of the open checkpoint, kept for replays.
struct Held {
    batch: Batch,
}

impl Held {
    fn records(&self) -> impl Iterator<Item = Record<'_>> {
        // The runtime encoded this buffer itself; it always decodes.
        Records::new(&self.batch.data, self.batch.count).flatten()
    }
}

/// A sink's state in the running pipeline.
struct Slot {
    spec: SinkSpec,
    instance: Option<SinkInstance>,
    metrics: SinkMetrics,
    /// Per open checkpoint: records this sink must not see again, as
    /// (batch index, offset); dead-lettered already.
    skip: BTreeSet<(usize, u64)>,
    added: u64,
    attempts: u32,
    backpressure: u32,
    traps: u32,
    poison: u32,
}

impl Slot {
    fn reset_checkpoint(&mut self) {
        self.skip.clear();
        self.added = 0;
        self.attempts = 0;
        self.backpressure = 0;
        self.traps = 0;
        self.poison = 0;
    }
}

struct Runner<'a> {
    pipeline_name: String,
    engine: Engine,
    retry: RetryPolicy,
    control: &'a Control,
    dead_letters: DeadLetters,
    source_name: String,
    /// The open checkpoint.
    held: Vec<Held>,
    committed: Position,
}

impl Pipeline {
    /// Runs until the source ends, a stop is requested, or an error the
    /// pipeline cannot recover from. Always returns the status; the error,
    /// if any, says why the run ended early.
    pub fn run(self, control: &Control) -> (Status, Result<()>) {
        let started = Instant::now();
        let Pipeline { name, engine, mut source, sinks, batching, retry, offsets, dead_letters, start } = self;
        let source_name = source.describe();
        let mut status = Status { pipeline: name.clone(), position: start.to_string(), ..Default::default() };
        let mut runner = Runner {
            pipeline_name: name,
            engine,
            retry,
            control,
            dead_letters,
            source_name: source_name.clone(),
            held: Vec::new(),
            committed: start,
        };
        let mut slots: Vec<Slot> = sinks
            .into_iter()
            .map(|spec| Slot {
                metrics: SinkMetrics::new(&spec.name),
                spec,
                instance: None,
                skip: BTreeSet::new(),
                added: 0,
                attempts: 0,
                backpressure: 0,
                traps: 0,
                poison: 0,
            })
            .collect();

        // The source runs on its own thread, so parsing overlaps with the
        // sinks and a quiet stdin cannot hold a checkpoint open past its
        // interval. The bounded channel applies backpressure to the reader.
        let (tx, rx) = mpsc::sync_channel::<Result<SourceBatch>>(4);
        let batch_size = batching.batch_size;
        let (source_tx, source_rx) = mpsc::channel::<Box<dyn Source>>();
        let reader = std::thread::Builder::new().name("sinkbox-source".into()).spawn(move || {
            loop {
                match source.next_batch(batch_size) {
                    Ok(Some(batch)) => {
                        if tx.send(Ok(batch)).is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            }
            let _ = source_tx.send(source);
        });
        let result = match reader {
            Err(e) => Err(Error::io("cannot start the source thread", e)),
            Ok(_) => {
                let result = runner
                    .open_all(&mut slots)
                    .and_then(|()| runner.run(&mut slots, &rx, batching, &offsets, &mut status));
                // Close every live instance exactly once, whatever happened.
                for slot in &mut slots {
                    if let Some(instance) = slot.instance.take()
                        && let Err(e) = instance.close(&mut slot.metrics)
                    {
                        tracing::warn!("{}", e.into_failure(&slot.spec.name, Phase::Close));
                    }
                }
                drop(rx);
                // Give the source a chance to commit with its own protocol.
                if let Ok(mut source) = source_rx.recv_timeout(Duration::from_millis(100))
                    && let Err(e) = source.committed(&runner.committed)
                {
                    tracing::warn!("{e}");
                }
                result
            }
        };
        status.elapsed = started.elapsed();
        status.peak_rss = crate::status::peak_rss();
        status.position = runner.committed.to_string();
        status.read = control.read.load(Ordering::Relaxed);
        status.committed = control.committed.load(Ordering::Relaxed);
        status.sinks = slots.into_iter().map(|s| s.metrics.finish()).collect();
        status.outcome = match &result {
            Ok(()) if control.state() != RUN => "interrupted".into(),
            Ok(()) => "finished".into(),
            Err(e) => format!("failed: {e}"),
        };
        (status, result)
    }
}

impl Runner<'_> {
    fn open_all(&mut self, slots: &mut [Slot]) -> Result<()> {
        for slot in slots {
            self.start_instance(slot)?;
        }
        Ok(())
    }

    /// Instantiates and opens a fresh instance for `slot`.
    fn start_instance(&mut self, slot: &mut Slot) -> Result<()> {
        let spec = &slot.spec;
        slot.metrics.instances += 1;
        let mut instance = SinkInstance::new(&self.engine, &spec.component, &spec.name, spec.limits, &spec.grants)?;
        let mut attempt = 0;
        loop {
            match instance.open(&spec.config, &mut slot.metrics) {
                Ok(()) => break,
                Err(Failure::Fault(f)) if !f.fault.kills_instance() && attempt + 1 < self.retry.max_attempts => {
                    attempt += 1;
                    let wait = match f.fault {
                        Fault::Backpressure(ms) => Duration::from_millis(u64::from(ms)),
                        _ => self.retry.backoff(attempt),
                    };
                    tracing::warn!("{f}; retrying in {wait:?}");
                    self.sleep(wait)?;
                }
                Err(e) => return Err(e.into_failure(&spec.name, Phase::Open).into()),
            }
        }
        slot.instance = Some(instance);
        Ok(())
    }

    /// Sleeps, waking early with an error if a stop is requested.
    fn sleep(&self, total: Duration) -> Result<()> {
        let until = Instant::now() + total;
        loop {
            if self.control.state() != RUN {
                return Err(Error::Interrupted { from: self.committed.to_string() });
            }
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            std::thread::sleep((until - now).min(Duration::from_millis(50)));
        }
    }

    fn run(
        &mut self,
        slots: &mut [Slot],
        rx: &Receiver<Result<SourceBatch>>,
        batching: Batching,
        offsets: &Option<OffsetStore>,
        status: &mut Status,
    ) -> Result<()> {
        let mut pending_end: Option<Position> = None;
        let mut cp_records = 0u64;
        let mut cp_started: Option<Instant> = None;
        let mut source_error = None;
        let mut source_done = false;
        loop {
            let state = self.control.state();
            if state == ABORT {
                for slot in slots.iter_mut() {
                    if let Some(instance) = slot.instance.as_mut() {
                        let _ = instance.abort(&mut slot.metrics);
                    }
                }
                return Err(Error::Interrupted { from: self.committed.to_string() });
            }
            let interval_over = cp_started.is_some_and(|t| t.elapsed() >= batching.commit_interval);
            let due = cp_records >= batching.commit_every || interval_over || source_done || state == FINISH;
            if due && pending_end.is_some() {
                self.checkpoint(slots, pending_end.take(), offsets, status)?;
                cp_records = 0;
                cp_started = None;
            }
            if source_done || state == FINISH {
                return match source_error {
                    Some(e) => Err(e),
                    None => Ok(()),
                };
            }
            let wait = match cp_started {
                Some(t) => batching.commit_interval.saturating_sub(t.elapsed()).min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            };
            let batch = match rx.recv_timeout(wait) {
                Ok(Ok(batch)) => batch,
                Ok(Err(e)) => {
                    source_error = Some(e);
                    source_done = true;
                    continue;
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => {
                    source_done = true;
                    continue;
                }
            };
            cp_started.get_or_insert_with(Instant::now);
            let count = u64::from(batch.records.len());
            self.control.read.fetch_add(count + batch.malformed.len() as u64, Ordering::Relaxed);
            self.control.bytes.fetch_add(batch.bytes, Ordering::Relaxed);
            status.malformed += batch.malformed.len() as u64;
            for m in &batch.malformed {
                self.dead_letters.push_malformed(&m.reason, &batch.topic, batch.partition, m.offset, &m.raw)?;
            }
            pending_end = Some(batch.end);
            if count == 0 {
                continue;
            }
            cp_records += count;
            let (data, count) = batch.records.finish();
            self.held.push(Held { batch: Batch { topic: batch.topic, partition: batch.partition, count, data } });
            let index = self.held.len() - 1;
            for slot in slots.iter_mut() {
                self.deliver(slot, index)?;
            }
        }
    }

    /// Flushes every sink, syncs dead letters and commits `end`.
    fn checkpoint(
        &mut self,
        slots: &mut [Slot],
        end: Option<Position>,
        offsets: &Option<OffsetStore>,
        status: &mut Status,
    ) -> Result<()> {
        for slot in slots.iter_mut() {
            self.flush(slot)?;
        }
        self.dead_letters.sync()?;
        let Some(end) = end else { return Ok(()) };
        if let Some(store) = offsets {
            store.commit(&self.source_name, &end)?;
        }
        let records: u64 = self.held.iter().map(|h| u64::from(h.batch.count)).sum();
        self.control.committed.fetch_add(records, Ordering::Relaxed);
        status.checkpoints += 1;
        for slot in slots.iter_mut() {
            slot.metrics.added += slot.added;
            slot.reset_checkpoint();
        }
        self.held.clear();
        tracing::debug!(pipeline = %self.pipeline_name, "committed {end}");
        self.committed = end;
        Ok(())
    }

    /// The batch at `index` as `slot` must see it: without the records it
    /// already dead-lettered as poison.
    fn batch_for(&self, slot: &Slot, index: usize) -> Option<Batch> {
        let held = &self.held[index];
        // No record of this batch to skip: the caller uses it as is.
        slot.skip.range((index, 0)..=(index, u64::MAX)).next()?;
        let mut writer = BatchWriter::default();
        for record in held.records().filter(|r| !slot.skip.contains(&(index, r.offset))) {
            push_record(&mut writer, &record);
        }
        let (data, count) = writer.finish();
        Some(Batch { topic: held.batch.topic.clone(), partition: held.batch.partition, count, data })
    }

    /// Adds the batch at `index` to `slot`, recovering from failures.
    fn deliver(&mut self, slot: &mut Slot, index: usize) -> Result<()> {
        match self.add_once(slot, index) {
            Ok(()) => Ok(()),
            Err(failure) => self.recover(slot, index, failure),
        }
    }

    /// One `add` call, with rejections dead-lettered; any other failure is
    /// returned for recovery.
    fn add_once(&mut self, slot: &mut Slot, index: usize) -> Result<(), SinkFailure> {
        let filtered = self.batch_for(slot, index);
        let batch = filtered.as_ref().unwrap_or(&self.held[index].batch);
        let Some(instance) = slot.instance.as_mut() else {
            return Err(SinkFailure {
                sink: slot.spec.name.clone(),
                phase: Phase::Add,
                fault: Fault::Fatal("no live instance".into()),
            });
        };
        match instance.add(batch, &mut slot.metrics) {
            Ok(()) => {
                slot.added += u64::from(batch.count);
                Ok(())
            }
            Err(Failure::Rejected(list)) => {
                let count = u64::from(batch.count);
                let rejected = self.reject(slot, &list, index..=index)?;
                slot.added += count - rejected;
                Ok(())
            }
            Err(Failure::Fault(f)) => Err(f),
        }
    }

    /// Dead-letters the records named by `list`, looked up in the held
    /// batches `range`, and remembers them so replays skip them. Returns how
    /// many were found.
    fn reject(
        &mut self,
        slot: &mut Slot,
        list: &[Rejection],
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<u64, SinkFailure> {
        let mut found = 0;
        let reasons: HashMap<u64, &str> = list.iter().map(|r| (r.offset, r.reason.as_str())).collect();
        for index in range {
            let held = &self.held[index];
            for record in held.records() {
                let Some(reason) = reasons.get(&record.offset) else {
                    continue;
                };
                if !slot.skip.insert((index, record.offset)) {
                    continue;
                }
                found += 1;
                slot.metrics.rejected += 1;
                self.dead_letters
                    .push(&slot.spec.name, reason, &held.batch.topic, held.batch.partition, &record)
                    .map_err(|e| SinkFailure {
                        sink: slot.spec.name.clone(),
                        phase: Phase::Add,
                        fault: Fault::Fatal(e.to_string()),
                    })?;
            }
        }
        if found < list.len() as u64 {
            tracing::warn!(sink = %slot.spec.name, "rejected {} records, of which {} are not in the batch; ignored those", list.len(), list.len() as u64 - found);
        }
        Ok(found)
    }

    /// Flushes `slot`, recovering from failures.
    fn flush(&mut self, slot: &mut Slot) -> Result<()> {
        loop {
            let Some(instance) = slot.instance.as_mut() else {
                return Err(Error::from(SinkFailure {
                    sink: slot.spec.name.clone(),
                    phase: Phase::Flush,
                    fault: Fault::Fatal("no live instance".into()),
                }));
            };
            match instance.flush(&mut slot.metrics) {
                Ok(()) => return Ok(()),
                Err(Failure::Rejected(list)) => {
                    let last = self.held.len().saturating_sub(1);
                    let found = if self.held.is_empty() { 0 } else { self.reject(slot, &list, 0..=last)? };
                    slot.added = slot.added.saturating_sub(found);
                    return Ok(());
                }
                Err(Failure::Fault(f)) => {
                    // Replay everything held, then try the flush again.
                    let upto = self.held.len().checked_sub(1);
                    self.recover_upto(slot, upto, f)?;
                }
            }
        }
    }

    fn recover(&mut self, slot: &mut Slot, index: usize, failure: SinkFailure) -> Result<()> {
        self.recover_upto(slot, Some(index), failure)
    }

    /// Brings `slot` back to having taken held batches `..=upto` after
    /// `failure`: waits or replaces the instance as the failure demands,
    /// then replays. Returns once a replay succeeded, or with the error that
    /// ends the pipeline.
    fn recover_upto(&mut self, slot: &mut Slot, upto: Option<usize>, mut failure: SinkFailure) -> Result<()> {
        loop {
            tracing::warn!("{failure}; recovering");
            match &failure.fault {
                Fault::Backpressure(ms) => {
                    slot.backpressure += 1;
                    slot.metrics.retries += 1;
                    if slot.backpressure > self.retry.max_backpressure {
                        return Err(self.gave_up(slot, failure));
                    }
                    let wait = Duration::from_millis(u64::from(*ms));
                    self.abort_instance(slot);
                    self.sleep(wait)?;
                }
                Fault::Retryable(_) => {
                    slot.attempts += 1;
                    slot.metrics.retries += 1;
                    if slot.attempts >= self.retry.max_attempts {
                        return Err(self.gave_up(slot, failure));
                    }
                    self.abort_instance(slot);
                    self.sleep(self.retry.backoff(slot.attempts))?;
                }
                _ => {
                    slot.metrics.traps += 1;
                    slot.traps += 1;
                    slot.instance = None; // never entered again
                    if slot.traps >= 2 {
                        match slot.spec.on_error {
                            OnError::Fail => return Err(failure.into()),
                            OnError::DeadLetter => self.isolate_poison(slot, upto, failure)?,
                        }
                    }
                    self.start_instance(slot)?;
                }
            }
            slot.added = 0;
            match self.replay(slot, upto) {
                Ok(()) => return Ok(()),
                Err(next) => failure = next,
            }
        }
    }

    fn gave_up(&self, slot: &Slot, last: SinkFailure) -> Error {
        let attempts = slot.attempts.max(slot.backpressure);
        Error::GaveUp { sink: slot.spec.name.clone(), attempts, from: self.committed.to_string(), last: Box::new(last) }
    }

    fn abort_instance(&self, slot: &mut Slot) {
        if let Some(instance) = slot.instance.as_mut()
            && let Err(Failure::Fault(f)) = instance.abort(&mut slot.metrics)
        {
            tracing::warn!("{f}; replacing the instance");
            slot.metrics.traps += 1;
            slot.instance = None;
        }
    }

    /// Adds held batches `..=upto` again, without recovery.
    fn replay(&mut self, slot: &mut Slot, upto: Option<usize>) -> Result<(), SinkFailure> {
        if slot.instance.is_none() {
            // The abort before this replay trapped; a fresh instance is
            // needed, which the caller's next round provides.
            return Err(SinkFailure {
                sink: slot.spec.name.clone(),
                phase: Phase::Abort,
                fault: Fault::Fatal("instance lost in abort".into()),
            });
        }
        let Some(upto) = upto else { return Ok(()) };
        for index in 0..=upto {
            self.add_once(slot, index)?;
        }
        Ok(())
    }

    /// Finds the record that makes `slot` trap, by bisection over the held
    /// records with throwaway instances that only `add` (so no probe makes
    /// anything durable), then dead-letters it. Fails if the sink traps too
    /// often to be a poison-record problem, or if no `add` reproduces it.
    fn isolate_poison(&mut self, slot: &mut Slot, upto: Option<usize>, failure: SinkFailure) -> Result<()> {
        slot.poison += 1;
        if slot.poison > self.retry.max_poison {
            tracing::error!(
                "sink \"{}\" isolated {} poison records in one checkpoint; giving up",
                slot.spec.name,
                self.retry.max_poison
            );
            return Err(failure.into());
        }
        let Some(upto) = upto else {
            return Err(failure.into());
        };
        let candidates: Vec<(usize, u64)> = (0..=upto)
            .flat_map(|i| self.held[i].records().map(move |r| (i, r.offset)).collect::<Vec<_>>())
            .filter(|key| !slot.skip.contains(key))
            .collect();
        let mut probe_metrics = SinkMetrics::new(&slot.spec.name);
        // Smallest prefix length that traps: probe(n) must trap for the
        // search to mean anything.
        if !self.probe_traps(slot, &candidates, &mut probe_metrics)? {
            tracing::error!(
                "sink \"{}\" fails in {}, but adding the checkpoint's records alone does not; cannot isolate a record",
                slot.spec.name,
                failure.phase
            );
            return Err(failure.into());
        }
        let (mut lo, mut hi) = (1, candidates.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.probe_traps(slot, &candidates[..mid], &mut probe_metrics)? {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        slot.metrics.fuel += probe_metrics.fuel;
        let (index, offset) = candidates[lo - 1];
        let held = &self.held[index];
        let Some(record) = held.records().find(|r| r.offset == offset) else {
            return Err(failure.into());
        };
        let reason = crate::error::chain(&failure);
        tracing::warn!("sink \"{}\": record at offset {offset} is poison; dead-lettering it", slot.spec.name);
        self.dead_letters.push(&slot.spec.name, &reason, &held.batch.topic, held.batch.partition, &record)?;
        slot.skip.insert((index, offset));
        slot.metrics.rejected += 1;
        slot.traps = 0;
        Ok(())
    }

    /// Whether adding exactly `records` (in batches of the usual size) to a
    /// fresh instance traps. The instance is aborted and closed if it
    /// survives.
    fn probe_traps(&self, slot: &Slot, records: &[(usize, u64)], metrics: &mut SinkMetrics) -> Result<bool> {
        let spec = &slot.spec;
        let mut instance = SinkInstance::new(&self.engine, &spec.component, &spec.name, spec.limits, &spec.grants)?;
        instance.open(&spec.config, metrics).map_err(|e| e.into_failure(&spec.name, Phase::Open))?;
        let size = self.held.first().map_or(1, |h| h.batch.count.max(1) as usize);
        for chunk in records.chunks(size) {
            let mut writer = BatchWriter::default();
            let (mut topic, mut partition) = (String::new(), 0);
            for &(index, offset) in chunk {
                let held = &self.held[index];
                if let Some(record) = held.records().find(|r| r.offset == offset) {
                    push_record(&mut writer, &record);
                    topic.clone_from(&held.batch.topic);
                    partition = held.batch.partition;
                }
            }
            let (data, count) = writer.finish();
            match instance.add(&Batch { topic, partition, count, data }, metrics) {
                Ok(()) | Err(Failure::Rejected(_)) => {}
                Err(Failure::Fault(f)) if f.fault.kills_instance() => return Ok(true),
                Err(Failure::Fault(_)) => break,
            }
        }
        let _ = instance.abort(metrics);
        let _ = instance.close(metrics);
        Ok(false)
    }
}

fn push_record(writer: &mut BatchWriter, record: &Record<'_>) {
    writer.begin(record.offset, record.timestamp, record.key, record.value, record.header_count());
    for (name, value) in record.headers().flatten() {
        writer.header(name, value);
    }
}
