//! What the caller of a running pipeline holds: stop, pause and resume
//! requests, a records-per-second cap, live counters, and an [`Observer`]
//! told of every checkpoint.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::status::{LaneStatus, PartitionStatus, SinkMetrics};

pub(super) const RUN: u8 = 0;
pub(super) const FINISH: u8 = 1;
pub(super) const ABORT: u8 = 2;

/// Shared with the caller while a pipeline runs: stop and pause requests,
/// and live counters for a progress display or metrics. Cheap to clone:
/// clones share one state.
#[derive(Debug, Clone, Default)]
pub struct Control(Arc<ControlState>);

/// What a [`Control`] shares.
#[derive(Debug)]
pub struct ControlState {
    pub(super) state: watch::Sender<u8>,
    pub(super) abort: watch::Sender<bool>,
    pub(super) paused: watch::Sender<bool>,
    /// Records read so far.
    pub read: AtomicU64,
    /// Input bytes read so far.
    pub bytes: AtomicU64,
    /// Records committed so far.
    pub committed: AtomicU64,
    pub(super) live: Arc<Live>,
    pub(super) rate: OnceLock<Arc<RateLimit>>,
    pub(super) observer: OnceLock<Arc<dyn Observer>>,
}

impl Default for ControlState {
    fn default() -> Self {
        ControlState {
            state: watch::Sender::new(RUN),
            abort: watch::Sender::new(false),
            paused: watch::Sender::new(false),
            read: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            live: Arc::default(),
            rate: OnceLock::new(),
            observer: OnceLock::new(),
        }
    }
}

impl std::ops::Deref for Control {
    type Target = ControlState;

    fn deref(&self) -> &ControlState {
        &self.0
    }
}

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

    pub(super) fn abort_now(&self) {
        self.state.send_replace(ABORT);
        self.abort.send_replace(true);
    }

    pub(super) fn state(&self) -> u8 {
        *self.state.borrow()
    }

    /// Whether a stop was requested.
    pub fn stopping(&self) -> bool {
        self.state() != RUN
    }

    /// Asks the pipeline to pause: it commits every open checkpoint, asks
    /// the source to pause its partitions, and reads nothing until
    /// [`Control::resume`]. Its sink instances stay open.
    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    /// Ends a pause.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }

    /// Whether a pause was requested (and not ended).
    pub fn paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Caps the records the pipeline reads per second, with the other
    /// pipelines sharing `limit`. Set once, before the run; later calls
    /// are ignored (false).
    pub fn limit_rate(&self, limit: Arc<RateLimit>) -> bool {
        self.rate.set(limit).is_ok()
    }

    /// Tells `observer` of every checkpoint and flush. Set once, before the
    /// run; later calls are ignored (false).
    pub fn observe(&self, observer: Arc<dyn Observer>) -> bool {
        self.observer.set(observer).is_ok()
    }

    /// Live metrics per sink, summed over its instances (ended ones
    /// included), as of each instance's last flush.
    pub fn sinks(&self) -> Vec<SinkMetrics> {
        self.live.sinks()
    }

    /// Live counters per partition read, as of the last commit.
    pub fn partitions(&self) -> Vec<PartitionStatus> {
        self.live.partitions.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Counters the loop and its lanes publish as they go.
#[derive(Debug, Default)]
pub(super) struct Live {
    /// Per lane (by snapshot key): its metrics as of its last flush.
    lanes: Mutex<BTreeMap<String, LaneStatus>>,
    pub(super) partitions: Mutex<Vec<PartitionStatus>>,
}

impl Live {
    pub(super) fn publish(&self, key: &str, status: LaneStatus) {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner()).insert(key.to_string(), status);
    }

    pub(super) fn lanes(&self) -> Vec<LaneStatus> {
        self.lanes.lock().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    fn sinks(&self) -> Vec<SinkMetrics> {
        let mut per_sink: BTreeMap<String, SinkMetrics> = BTreeMap::new();
        for lane in self.lanes.lock().unwrap_or_else(|p| p.into_inner()).values() {
            let name = &lane.metrics.name;
            per_sink.entry(name.clone()).or_insert_with(|| SinkMetrics::new(name)).merge(&lane.metrics);
        }
        per_sink.into_values().map(SinkMetrics::finish).collect()
    }
}

/// What a committed checkpoint moved and cost, for an [`Observer`].
#[derive(Debug, Clone)]
pub struct CheckpointReport {
    /// The pipeline.
    pub pipeline: String,
    /// Records committed by this checkpoint.
    pub records: u64,
    /// Their encoded bytes.
    pub bytes: u64,
    /// From the first of its flushes starting to the commit.
    pub latency: Duration,
    /// Live metrics of every sink at the commit: totals of the run so far.
    pub sinks: Vec<SinkMetrics>,
}

/// Told of a pipeline's checkpoints and flushes as they happen (metrics,
/// accounting). Called on the pipeline's task: keep it quick.
pub trait Observer: Send + Sync + fmt::Debug {
    /// A checkpoint was committed.
    fn committed(&self, report: &CheckpointReport);

    /// A `flush` call of `sink` ended (successfully or not) after `took`.
    fn flushed(&self, sink: &str, took: Duration) {
        let _ = (sink, took);
    }
}

/// A records-per-second cap, shared by every pipeline given it: each
/// record reserves `1/rate` s of the cap's time line; a reader that gets
/// more than a second ahead of the clock waits.
#[derive(Debug)]
pub struct RateLimit {
    per_second: u64,
    /// Where the time line is reserved up to.
    next: Mutex<Instant>,
}

/// How far ahead of the clock readers may reserve before they wait: a
/// second's worth of records passes at once.
const BURST: Duration = Duration::from_secs(1);

impl RateLimit {
    /// A cap of `per_second` records per second (at least 1).
    pub fn new(per_second: u64) -> RateLimit {
        RateLimit { per_second: per_second.max(1), next: Mutex::new(Instant::now()) }
    }

    /// The cap.
    pub fn per_second(&self) -> u64 {
        self.per_second
    }

    /// Reserves `records`; how long the reader must wait before it goes on.
    pub fn take(&self, records: u64) -> Duration {
        let cost = Duration::from_secs_f64(records as f64 / self.per_second as f64);
        let now = Instant::now();
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        *next = (*next).max(now) + cost;
        next.saturating_duration_since(now).saturating_sub(BURST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_limit_lets_a_seconds_worth_through_then_spaces_readers() {
        let limit = RateLimit::new(1000);
        assert_eq!(limit.take(500), Duration::ZERO);
        assert_eq!(limit.take(500), Duration::ZERO);
        // Two seconds reserved by now: the next 1000 wait about 1 s more.
        let wait = limit.take(1000);
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
    }

    #[test]
    fn live_sinks_sum_lanes_by_sink() {
        let live = Live::default();
        let lane = |name: &str, added| LaneStatus {
            metrics: SinkMetrics { added, lanes: 1, ..SinkMetrics::new(name) },
            ..Default::default()
        };
        live.publish("a/0", lane("a", 3));
        live.publish("a/1", lane("a", 4));
        live.publish("b/0", lane("b", 5));
        live.publish("a/0", lane("a", 6));
        let sinks = live.sinks();
        assert_eq!(sinks.iter().map(|s| (s.name.as_str(), s.added)).collect::<Vec<_>>(), [("a", 10), ("b", 5)]);
    }
}
