//! Retry, backoff and checkpoint sizing policies.

use std::time::Duration;

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
/// 1,000 backpressure waits per checkpoint, each wait a sink asks for cut
/// to `max_wait` (60 s), at most `max_retry_time` (10 min) spent recovering
/// one checkpoint, and 5 poison records per checkpoint before the sink is
/// considered broken.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub(crate) base: Duration,
    pub(crate) cap: Duration,
    pub(crate) max_attempts: u32,
    pub(crate) max_backpressure: u32,
    pub(crate) max_poison: u32,
    pub(crate) max_wait: Duration,
    pub(crate) max_retry_time: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            max_attempts: 5,
            max_backpressure: 1_000,
            max_poison: 5,
            max_wait: Duration::from_secs(60),
            max_retry_time: Duration::from_secs(600),
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

    /// Longest wait a sink's backpressure can impose at once.
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }

    /// Longest time spent recovering one checkpoint of one instance before
    /// the pipeline stops.
    pub fn max_retry_time(mut self, d: Duration) -> Self {
        self.max_retry_time = d;
        self
    }

    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// Checkpoint sizing. Defaults: batches of 1,000 records or 1 MiB, a
/// checkpoint every 10,000 records, 5 s or 16 MiB of held batches,
/// whichever comes first. The held bytes bound what the runtime keeps in
/// memory for replays.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub(crate) batch_size: usize,
    pub(crate) batch_bytes: usize,
    pub(crate) commit_every: u64,
    pub(crate) commit_interval: Duration,
    pub(crate) checkpoint_bytes: u64,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            batch_size: 1_000,
            batch_bytes: 1 << 20,
            commit_every: 10_000,
            commit_interval: Duration::from_secs(5),
            checkpoint_bytes: 16 << 20,
        }
    }
}

impl Batching {
    /// Records per `add` call.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Most bytes of record data per `add` call (a batch holds at least
    /// one record, however big).
    pub fn batch_bytes(mut self, n: usize) -> Self {
        self.batch_bytes = n.max(1);
        self
    }

    /// Most bytes of batches held for replays; reaching it closes the
    /// checkpoint early.
    pub fn checkpoint_bytes(mut self, n: u64) -> Self {
        self.checkpoint_bytes = n.max(1);
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
