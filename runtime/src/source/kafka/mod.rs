//! A Kafka consumer-group source (`[source] kind = "kafka"`).
//!
//! Several `sinkbox` processes with the same `group` share the partitions of
//! its topics. Each partition this process is assigned gets its own sink
//! instances (the loop opens them on [`SourceEvent::Assigned`]). Offsets are
//! committed to the group only after a checkpoint was committed, so a
//! process that dies leaves at most its open checkpoint to be read again by
//! the process that takes its partitions over.
//!
//! A revocation (another process joined or left) runs inside the consumer's
//! poll: the source tells the loop, which commits its open checkpoint and
//! closes the revoked partitions' instances; the source then commits those
//! offsets to the group before giving the partitions up. If the loop does
//! not finish within `revoke_timeout`, the partitions are given up
//! uncommitted: the next owner reads the open checkpoint again, and nothing
//! is lost.
//!
//! Records keep their Kafka offset, key, timestamp and headers. A record
//! with no value (a tombstone) reaches the sinks with an empty value and the
//! header [`TOMBSTONE_HEADER`].

mod queue;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sinkbox_format::BatchWriter;

use super::{
    Lag, Malformed, Note, PartitionId, PartitionPosition, Position, Source, SourceBatch, SourceEvent, SourceLink,
};
use crate::config::{KafkaSection, KafkaValue};
use crate::error::{Error, Result};
use queue::{FetchQueue, Fetched, Target};

/// Header that marks a record whose Kafka value was null (a tombstone).
pub const TOMBSTONE_HEADER: &str = "sinkbox.tombstone";

/// Settings the source sets itself; a pipeline file may not override them.
const OWN_SETTINGS: [(&str, &str); 5] = [
    ("bootstrap.servers", "set `brokers`"),
    ("group.id", "set `group`"),
    ("enable.auto.commit", "sinkbox commits offsets after each checkpoint"),
    ("enable.auto.offset.store", "sinkbox commits offsets after each checkpoint"),
    ("auto.offset.reset", "set `start`"),
];

/// Longest one poll waits for a message before the loop looks again.
const POLL: Duration = Duration::from_millis(100);

/// The consumer's context: rebalance callbacks (on the source's thread,
/// inside a poll) and librdkafka's logs.
struct Context {
    link: Mutex<Option<SourceLink>>,
    /// Consumer lag per partition, from librdkafka's statistics.
    lag: Lag,
    revoke_within: Duration,
    state: Mutex<Shared>,
    /// Set by the rebalance callbacks: the source stops polling to look at
    /// [`Shared`] (read per message, so not behind the lock).
    rebalanced: AtomicBool,
    /// The source's fetch queue, where assigned partitions are forwarded;
    /// cleared before the queue is destroyed.
    fetch: Mutex<Option<Target>>,
}

/// What the callbacks tell the source.
#[derive(Default)]
struct Shared {
    /// Partitions assigned now.
    assigned: BTreeSet<PartitionId>,
    /// Events for the loop, before any further batch.
    events: VecDeque<SourceEvent>,
    /// Partitions given up since the source last looked: records it holds
    /// of them are dropped (their next owner reads them).
    revoked: Vec<PartitionId>,
    /// Per partition: the offset this process committed up to (its offset
    /// store, then every checkpoint). The consumer's start can be below it
    /// when a group commit was lost (a broker restart): the records below
    /// were delivered and committed here already, and are skipped.
    floor: Vec<(PartitionId, u64)>,
    /// When a librdkafka error was last logged, and how many were not
    /// logged since: a broker that stays down is reported every
    /// [`ERROR_EVERY`], not on every reconnect attempt.
    last_error: Option<Instant>,
    unlogged_errors: u64,
}

/// Least time between two logged librdkafka errors.
const ERROR_EVERY: Duration = Duration::from_secs(10);

/// How long a partition's end is asked for before a partition below its
/// floor is refused (see `KafkaSource::check_floor`).
const FLOOR_CHECK: Duration = Duration::from_secs(15);

impl Context {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forwards `parts` to the source's fetch queue; called before they are
    /// assigned, so before librdkafka starts fetching them.
    fn forward(&self, parts: &[PartitionId]) {
        if let Some(target) = *self.fetch.lock().unwrap_or_else(|p| p.into_inner()) {
            queue::forward(target, parts);
        }
    }

    /// What an error read from either queue does: an end of partition is
    /// noted, a fatal error is returned (it ends the source), any other is
    /// logged (librdkafka retries).
    fn consumption_error(&self, pending: &mut Held, error: KafkaError) -> Option<KafkaError> {
        match error {
            KafkaError::PartitionEOF(partition) => {
                pending.at_end.insert(partition);
                None
            }
            e @ KafkaError::MessageConsumptionFatal(_) => Some(e),
            e => {
                self.error(e, "while consuming");
                None
            }
        }
    }
}

impl Shared {
    /// Raises the floor of every partition in `position`.
    fn raise_floor(&mut self, position: &Position) {
        for p in &position.partitions {
            match self.floor.iter_mut().find(|(id, _)| id.topic == p.topic && id.partition == p.partition) {
                Some((_, floor)) => *floor = (*floor).max(p.next_offset),
                None => {
                    self.floor.push((PartitionId { topic: p.topic.clone(), partition: p.partition }, p.next_offset));
                }
            }
        }
    }
}

fn parts_of(list: &TopicPartitionList) -> Vec<PartitionId> {
    list.elements()
        .iter()
        .map(|e| PartitionId { topic: e.topic().to_string(), partition: u32::try_from(e.partition()).unwrap_or(0) })
        .collect()
}

/// Commits the offsets `position` holds for `only` (all of them if `None`)
/// to the group.
fn commit(
    consumer: &BaseConsumer<Context>,
    position: &Position,
    only: &BTreeSet<PartitionId>,
    mode: CommitMode,
) -> std::result::Result<(), String> {
    let mut list = TopicPartitionList::new();
    for p in &position.partitions {
        let id = PartitionId { topic: p.topic.clone(), partition: p.partition };
        if !only.contains(&id) {
            continue;
        }
        let offset = Offset::Offset(i64::try_from(p.next_offset).unwrap_or(i64::MAX));
        list.add_partition_offset(&p.topic, p.partition as i32, offset)
            .map_err(|e| format!("cannot commit {id} to the group: {e}"))?;
    }
    if list.count() == 0 {
        return Ok(());
    }
    consumer.commit(&list, mode).map_err(|e| format!("cannot commit offsets to the group: {e}"))
}

/// Pauses or resumes fetching `parts` (those still assigned).
fn set_paused(consumer: &BaseConsumer<Context>, parts: &[PartitionId], paused: bool) {
    let assigned = consumer.context().shared().assigned.clone();
    let mut list = TopicPartitionList::new();
    for p in parts.iter().filter(|p| assigned.contains(p)) {
        list.add_partition(&p.topic, i32::try_from(p.partition).unwrap_or(i32::MAX));
    }
    if list.count() == 0 {
        return;
    }
    let (verb, result) = if paused { ("pause", consumer.pause(&list)) } else { ("resume", consumer.resume(&list)) };
    match result {
        Ok(()) => {
            tracing::debug!("kafka: {verb}d {}", parts.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
        }
        Err(e) => tracing::warn!("kafka: cannot {verb} fetching: {e}"),
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::warn!("kafka: {facility}: {message}");
            }
            _ => tracing::debug!("kafka: {facility}: {message}"),
        }
    }

    fn stats(&self, statistics: Statistics) {
        let mut lag = self.lag.lock().unwrap_or_else(|p| p.into_inner());
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                // Partition -1 is librdkafka's own; a negative lag is unknown.
                if let (Ok(partition), Ok(behind)) = (u32::try_from(*partition), u64::try_from(p.consumer_lag)) {
                    lag.insert(PartitionId { topic: topic.clone(), partition }, behind);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error, KafkaError::PartitionEOF(_)) || reason.contains("reached end of partition") {
            return;
        }
        let mut shared = self.shared();
        if shared.last_error.is_some_and(|t| t.elapsed() < ERROR_EVERY) {
            shared.unlogged_errors += 1;
            return;
        }
        let more = std::mem::take(&mut shared.unlogged_errors);
        let more = if more > 0 { format!("; {more} more errors in the last {ERROR_EVERY:?}") } else { String::new() };
        tracing::warn!("kafka: {error}: {reason} (retrying{more})");
        shared.last_error = Some(Instant::now());
    }
}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let list = match rebalance {
            Rebalance::Revoke(list) => list,
            Rebalance::Assign(list) => {
                self.forward(&parts_of(list));
                return;
            }
            Rebalance::Error(_) => return,
        };
        let parts = parts_of(list);
        {
            let mut shared = self.shared();
            // Assignments the loop has not seen yet need no revocation.
            shared.events.retain(|e| !matches!(e, SourceEvent::Assigned(_)));
            shared.revoked.extend(parts.iter().cloned());
        }
        self.rebalanced.store(true, Ordering::Release);
        let link = self.link.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(link) = link else { return };
        let owned = self.shared().assigned.clone();
        let on_note = |note: &Note| match note {
            Note::Committed(position) => {
                self.shared().raise_floor(position);
                if let Err(e) = commit(consumer, position, &owned, CommitMode::Async) {
                    tracing::warn!("{e}");
                }
            }
            Note::Pause(parts) => set_paused(consumer, parts, true),
            Note::Resume(parts) => set_paused(consumer, parts, false),
            Note::Revoked(_) => {}
        };
        tracing::info!("kafka: giving up {} partition(s); committing what was read of them", parts.len());
        let revoked: BTreeSet<PartitionId> = parts.iter().cloned().collect();
        match link.revoke(parts, self.revoke_within, on_note) {
            Some(position) => {
                self.shared().raise_floor(&position);
                if let Err(e) = commit(consumer, &position, &revoked, CommitMode::Sync) {
                    tracing::warn!("{e}; the next owner reads the last checkpoint again");
                }
            }
            None => tracing::warn!(
                "kafka: the checkpoint of the revoked partitions was not committed within {:?} (revoke_timeout); \
                 giving them up uncommitted: the next owner reads their open checkpoint again",
                self.revoke_within
            ),
        }
        let mut shared = self.shared();
        for p in &revoked {
            shared.assigned.remove(p);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let parts = parts_of(list);
                tracing::info!(
                    "kafka: assigned {}",
                    parts.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                );
                let mut shared = self.shared();
                shared.assigned.extend(parts.iter().cloned());
                shared.events.push_back(SourceEvent::Assigned(parts));
                self.rebalanced.store(true, Ordering::Release);
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!("kafka: rebalance failed: {e}"),
        }
    }
}

/// Records read from one partition and not yet handed to the loop.
struct Pending {
    records: BatchWriter,
    malformed: Vec<Malformed>,
    /// Offset after the last record.
    next: u64,
    bytes: u64,
}

/// Records read and not yet taken by the loop, per partition.
struct Held {
    value: KafkaValue,
    /// A few partitions: a list, searched without building a key.
    partitions: Vec<(PartitionId, Pending)>,
    /// Batches handed over, waiting for the loop.
    ready: VecDeque<SourceEvent>,
    /// Per partition: the offset after the last record handed over.
    handed: BTreeMap<PartitionId, u64>,
    /// A partition's pending records are handed over as a batch once they
    /// reach this many records or bytes (what the loop asked for last).
    max: (usize, usize),
    /// Per partition assigned: the offset after the last record read. A
    /// record below it is one the consumer reads again (librdkafka reset its
    /// position, e.g. after a broker restart): it is dropped, since an
    /// offset never names different records.
    next: Vec<(PartitionId, u64)>,
    /// Records dropped that way.
    reread: u64,
    /// A copy of [`Shared::floor`], taken after every poll.
    floor: Vec<(PartitionId, u64)>,
    /// A partition that started below its floor: (partition, offset,
    /// floor), for the source to look into.
    below_floor: Option<(PartitionId, u64, u64)>,
    /// Partition numbers librdkafka reported at their end (`stop_at_end`).
    at_end: BTreeSet<i32>,
    /// The end of an offset range: records from it on are not taken.
    to: Option<u64>,
}

/// Whether `id` names `topic` and `partition`.
fn names(id: &PartitionId, topic: &[u8], partition: u32) -> bool {
    id.partition == partition && id.topic.as_bytes() == topic
}

impl Held {
    /// Appends one message to its partition's pending records, and hands
    /// them over once they are a full batch.
    fn take(&mut self, message: &Fetched<'_>) {
        let (topic, partition) = (message.topic(), u32::try_from(message.partition()).unwrap_or(0));
        let offset = u64::try_from(message.offset()).unwrap_or(0);
        if !self.at_end.is_empty() {
            self.at_end.remove(&message.partition());
        }
        let id = || PartitionId { topic: String::from_utf8_lossy(topic).into_owned(), partition };
        match self.next.iter_mut().find(|(id, _)| names(id, topic, partition)) {
            Some((id, next)) if offset < *next => {
                self.reread += 1;
                if self.reread == 1 || self.reread.is_power_of_two() {
                    tracing::info!(
                        "kafka: {id} offset {offset} was read before (the consumer rewound); \
                         skipping records read again ({} so far)",
                        self.reread
                    );
                }
                return;
            }
            Some((_, next)) => *next = offset + 1,
            None => {
                // The first record since the partition was assigned: it
                // starts where the group says, unless this process already
                // committed further.
                let floor = self.floor.iter().find(|(id, _)| names(id, topic, partition));
                let floor = floor.map_or(0, |(_, f)| *f);
                self.next.push((id(), floor.max(offset + 1)));
                if offset < floor {
                    self.reread += 1;
                    self.below_floor = Some((id(), offset, floor));
                    return;
                }
            }
        }
        if self.to.is_some_and(|to| offset >= to) {
            return;
        }
        let index = match self.partitions.iter().position(|(id, _)| names(id, topic, partition)) {
            Some(index) => index,
            None => {
                let records = BatchWriter::with_capacity(64 << 10);
                self.partitions.push((id(), Pending { records, malformed: Vec::new(), next: offset, bytes: 0 }));
                self.partitions.len() - 1
            }
        };
        let pending = &mut self.partitions[index].1;
        pending.next = offset + 1;
        let payload = message.payload();
        let key = message.key();
        pending.bytes += (payload.map_or(0, <[u8]>::len) + key.map_or(0, <[u8]>::len)) as u64;
        if let (KafkaValue::Json, Some(value)) = (self.value, payload)
            && let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(value)
        {
            pending.malformed.push(Malformed {
                offset,
                raw: value.to_vec(),
                reason: format!(
                    "{}[{partition}] offset {offset}: the value is not JSON ({e}); [source] value = \"json\"",
                    String::from_utf8_lossy(topic)
                ),
            });
        } else {
            let headers = message.headers();
            let count = headers.count() + usize::from(payload.is_none());
            pending.records.begin(offset, message.timestamp(), key, payload.unwrap_or_default(), count);
            for (name, value) in (0..headers.count()).filter_map(|i| headers.get(i)) {
                pending.records.header(name, value.unwrap_or_default());
            }
            if payload.is_none() {
                pending.records.header(TOMBSTONE_HEADER.as_bytes(), b"");
            }
        }
        let (max, max_bytes) = self.max;
        if pending.records.len() as usize + pending.malformed.len() >= max || pending.records.bytes() >= max_bytes {
            self.hand(index);
        }
    }

    /// Hands the pending records of the `index`th partition to the loop as
    /// a batch.
    fn hand(&mut self, index: usize) {
        let (id, pending) = self.partitions.swap_remove(index);
        self.handed.insert(id.clone(), pending.next);
        let end = Position {
            partitions: self
                .handed
                .iter()
                .map(|(p, next)| PartitionPosition {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    next_offset: *next,
                    byte: None,
                    stream: None,
                })
                .collect(),
        };
        self.ready.push_back(SourceEvent::Batch(SourceBatch {
            topic: id.topic,
            partition: id.partition,
            records: pending.records,
            malformed: pending.malformed,
            end,
            bytes: pending.bytes,
        }));
    }

    /// Hands every partition's pending records to the loop.
    fn hand_all(&mut self) {
        while !self.partitions.is_empty() {
            self.hand(0);
        }
    }
}

/// A Kafka consumer in a group.
pub struct KafkaSource {
    /// Where the assigned partitions' messages arrive; always `Some` until
    /// the source is dropped, which destroys it before the consumer.
    fetch: Option<FetchQueue>,
    consumer: BaseConsumer<Context>,
    describe: String,
    stop_at_end: bool,
    pending: Held,
    /// The last checkpoint committed, committed again (synchronously) when
    /// the source closes.
    last_committed: Option<Position>,
    /// Whether the partitions were assigned by the group (or by an offset
    /// range, which joins no group and commits nothing).
    grouped: bool,
}

impl KafkaSource {
    /// Connects to the group and subscribes to the topics. The group's
    /// committed offsets say where each partition resumes.
    /// `start` is what this process committed last (its offset store): a
    /// partition whose group offset is below it (a lost group commit)
    /// skips to it.
    pub fn new(section: &KafkaSection, start: Option<&Position>) -> Result<KafkaSource> {
        let consumer = Self::consumer(section)?;
        // SAFETY: the consumer outlives the queue (see `fetch`).
        let fetch = unsafe { FetchQueue::new(consumer.client().native_ptr()) };
        *consumer.context().fetch.lock().unwrap_or_else(|p| p.into_inner()) = Some(fetch.target());
        if let Some(start) = start {
            consumer.context().shared().raise_floor(start);
        }
        let grouped = section.from.is_none() && section.to.is_none();
        let describe = if grouped {
            let topics: Vec<&str> = section.topics.iter().map(String::as_str).collect();
            consumer
                .subscribe(&topics)
                .map_err(|e| Error::Config(format!("[source] kafka: cannot subscribe to {topics:?}: {e}")))?;
            format!("kafka {} (group {}) at {}", section.topics.join(","), section.group, section.brokers)
        } else {
            Self::assign_range(&consumer, section)?;
            format!("kafka {} (no group) at {}", section.topics.join(","), section.brokers)
        };
        Ok(KafkaSource {
            fetch: Some(fetch),
            consumer,
            describe,
            stop_at_end: section.stop_at_end,
            pending: Held {
                value: section.value,
                partitions: Vec::new(),
                ready: VecDeque::new(),
                handed: BTreeMap::new(),
                max: (usize::MAX, usize::MAX),
                next: Vec::new(),
                reread: 0,
                floor: Vec::new(),
                below_floor: None,
                at_end: BTreeSet::new(),
                to: section.to,
            },
            last_committed: None,
            grouped,
        })
    }

    /// An offset range (a replay) is read by assignment rather than by
    /// joining a group: every partition of the topics, from `from` (each
    /// partition's start if absent), so the records below it are never
    /// fetched and no group rebalances or keeps offsets of the replay.
    fn assign_range(consumer: &BaseConsumer<Context>, section: &KafkaSection) -> Result<()> {
        let fail = |what: String| Error::Source { source_name: format!("kafka at {}", section.brokers), what };
        let from = section.from.map_or(Offset::Beginning, |f| Offset::Offset(i64::try_from(f).unwrap_or(i64::MAX)));
        let mut list = TopicPartitionList::new();
        for topic in &section.topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), Duration::from_secs(30))
                .map_err(|e| fail(format!("cannot read the partitions of topic {topic:?}: {e}")))?;
            let found = metadata.topics().iter().find(|t| t.name() == topic);
            let partitions = match found {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => t.partitions(),
                _ => return Err(fail(format!("topic {topic:?} does not exist"))),
            };
            for p in partitions {
                list.add_partition_offset(topic, p.id(), from)
                    .map_err(|e| fail(format!("cannot read {topic}[{}] from {from:?}: {e}", p.id())))?;
            }
        }
        let parts = parts_of(&list);
        consumer.context().forward(&parts);
        consumer.assign(&list).map_err(|e| fail(format!("cannot assign the partitions: {e}")))?;
        tracing::info!(
            "kafka: reading {} from offset {} (an offset range: no group is joined)",
            parts.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            section.from.unwrap_or(0)
        );
        let mut shared = consumer.context().shared();
        shared.assigned.extend(parts.iter().cloned());
        shared.events.push_back(SourceEvent::Assigned(parts));
        Ok(())
    }

    /// Checks the section's settings by making a consumer that joins no
    /// group (`sinkbox validate`: a check must not make the group
    /// rebalance).
    pub fn check(section: &KafkaSection) -> Result<()> {
        Self::consumer(section).map(drop)
    }

    /// A consumer with the section's settings, not subscribed yet.
    fn consumer(section: &KafkaSection) -> Result<BaseConsumer<Context>> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &section.brokers)
            .set("group.id", &section.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", section.start.as_str())
            .set("enable.partition.eof", if section.stop_at_end { "true" } else { "false" })
            .set("client.id", "sinkbox")
            // A member that dies is noticed in 10 s rather than librdkafka's
            // 45 s (Kafka Connect's default); brokers also hold a first join
            // for a fraction of it.
            .set("session.timeout.ms", "10000")
            // Prefetch at most 16 MiB rather than 64 MiB: the records wait in
            // the checkpoint loop's batches, not here.
            .set("queued.max.messages.kbytes", "16384")
            // Consumer lag per partition, for the status.
            .set("statistics.interval.ms", "1000")
            // Refill the fetch queue sooner than librdkafka's default of 1 s
            // once it drains (a pipeline file may set it back).
            .set("fetch.queue.backoff.ms", "100")
            .set_log_level(if tracing::enabled!(tracing::Level::DEBUG) {
                RDKafkaLogLevel::Debug
            } else {
                RDKafkaLogLevel::Warning
            });
        for (key, value) in &section.settings {
            if let Some((_, why)) = OWN_SETTINGS.iter().find(|(own, _)| own == key) {
                return Err(Error::Config(format!("[source] settings: {key:?} cannot be set here ({why})")));
            }
            config.set(key, value);
        }
        let revoke_within = section.revoke_timeout.map_or(Duration::from_secs(30), |d| d.0);
        let context = Context {
            link: Mutex::new(None),
            lag: Lag::default(),
            revoke_within,
            state: Mutex::new(Shared::default()),
            rebalanced: AtomicBool::new(false),
            fetch: Mutex::new(None),
        };
        config
            .create_with_context(context)
            .map_err(|e| Error::Config(format!("[source] kafka: cannot create the consumer: {e}")))
    }

    /// Drops what is held of partitions revoked since the last look.
    fn forget_revoked(&mut self) {
        let revoked = {
            let mut shared = self.consumer.context().shared();
            self.pending.floor.clone_from(&shared.floor);
            std::mem::take(&mut shared.revoked)
        };
        for p in revoked {
            self.pending.partitions.retain(|(id, _)| *id != p);
            self.pending.next.retain(|(id, _)| *id != p);
            self.pending.handed.remove(&p);
            self.pending
                .ready
                .retain(|e| !matches!(e, SourceEvent::Batch(b) if b.topic == p.topic && b.partition == p.partition));
        }
    }

    /// A partition starts at `offset`, below the `floor` this process
    /// committed. If the partition still holds records up to the floor, the
    /// group lost a commit (a broker restart): the records below were
    /// delivered here already and are skipped. If it ends below the floor,
    /// it is not the partition those offsets were committed for (the topic
    /// was recreated or truncated): refused, since skipping would lose its
    /// records.
    ///
    /// A broker that has just restarted may not know a partition's end yet,
    /// or not answer at once: the end is asked again for up to
    /// [`FLOOR_CHECK`] before refusing.
    fn check_floor(&self, id: &PartitionId, offset: u64, floor: u64) -> Result<()> {
        let partition = i32::try_from(id.partition).unwrap_or(i32::MAX);
        let started = Instant::now();
        let high = loop {
            let high =
                self.consumer.fetch_watermarks(&id.topic, partition, Duration::from_secs(5)).map(|(_, high)| high);
            let reaches = matches!(high, Ok(high) if u64::try_from(high).unwrap_or(0) >= floor);
            if reaches || started.elapsed() >= FLOOR_CHECK {
                break high;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        match high {
            Ok(high) if u64::try_from(high).unwrap_or(0) >= floor => {
                tracing::warn!(
                    "kafka: {id} starts at offset {offset}, below offset {floor} this pipeline already committed \
                     (the group lost a commit); skipping to {floor}"
                );
                Ok(())
            }
            Ok(high) => Err(Error::Source {
                source_name: self.describe.clone(),
                what: format!(
                    "{id} ends at offset {high}, below offset {floor} this pipeline committed for it: the topic was \
                     recreated or truncated; `sinkbox reset` starts the pipeline over"
                ),
            }),
            Err(e) => Err(Error::Source {
                source_name: self.describe.clone(),
                what: format!(
                    "{id} starts at offset {offset}, below offset {floor} this pipeline committed, and its end \
                     cannot be read to tell why: {e}"
                ),
            }),
        }
    }

    /// Reads until a partition has a full batch or nothing more is waiting
    /// (waiting up to [`POLL`] for the first message), then hands over what
    /// is held.
    fn poll(&mut self) -> Result<()> {
        let mut wait = POLL;
        loop {
            // The group's events (rebalances, errors), and any message that
            // reached the consumer's own queue rather than the fetch queue.
            let mut fatal = None;
            while fatal.is_none()
                && let Some(polled) = self.consumer.poll(Duration::ZERO)
            {
                match polled {
                    // SAFETY: the message lives until the end of this arm.
                    Ok(message) => self.pending.take(&unsafe { Fetched::from_raw(message.ptr()) }),
                    Err(e) => fatal = fatal.or(self.consumer.context().consumption_error(&mut self.pending, e)),
                }
            }
            if let Some(e) = fatal {
                return Err(Error::Source { source_name: self.describe.clone(), what: e.to_string() });
            }
            if self.consumer.context().rebalanced.swap(false, Ordering::AcqRel) {
                break;
            }
            let Some(fetch) = self.fetch.as_mut() else { break };
            let (pending, context) = (&mut self.pending, self.consumer.context());
            let read = fetch.read(wait, |message| match message.error() {
                None => pending.take(&message),
                Some(e) => {
                    if let Some(e) = context.consumption_error(pending, e) {
                        fatal.get_or_insert(e);
                    }
                }
            });
            wait = Duration::ZERO;
            if let Some(e) = fatal {
                return Err(Error::Source { source_name: self.describe.clone(), what: e.to_string() });
            }
            if let Some((id, offset, floor)) = self.pending.below_floor.take() {
                self.check_floor(&id, offset, floor)?;
            }
            if read == 0 || !self.pending.ready.is_empty() {
                break;
            }
        }
        self.forget_revoked();
        if self.pending.ready.is_empty() {
            self.pending.hand_all();
        }
        Ok(())
    }

    /// Whether every assigned partition was read to its end.
    fn at_end(&self) -> bool {
        let shared = self.consumer.context().shared();
        !shared.assigned.is_empty()
            && shared.events.is_empty()
            && self.pending.partitions.is_empty()
            && shared.assigned.iter().all(|p| self.read_to_end(p))
    }

    /// Whether `id` was read up to the end the broker last reported: its
    /// high watermark from the last fetch, or else librdkafka's
    /// end-of-partition event (a partition nothing was read from). The
    /// watermark says so as soon as the last record is taken; the event
    /// only after a fetch that found nothing more, which the broker may
    /// hold for `fetch.wait.max.ms`.
    fn read_to_end(&self, id: &PartitionId) -> bool {
        let next = self.pending.next.iter().find(|(p, _)| p == id).map(|(_, next)| *next);
        let reached = |end: Option<u64>| next.zip(end).is_some_and(|(next, end)| next >= end);
        reached(self.pending.to)
            || reached(self.cached_high(id))
            || self.pending.at_end.contains(&i32::try_from(id.partition).unwrap_or(i32::MAX))
    }

    /// `id`'s high watermark as of the last fetch response, from
    /// librdkafka's cache (no request to the broker); `None` if it has none.
    fn cached_high(&self, id: &PartitionId) -> Option<u64> {
        use rdkafka::bindings::{rd_kafka_get_watermark_offsets, rd_kafka_resp_err_t};
        let topic = std::ffi::CString::new(id.topic.as_str()).ok()?;
        let partition = i32::try_from(id.partition).ok()?;
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: the client handle lives as long as `self.consumer`; the
        // topic is a NUL-terminated string and both out-pointers are live
        // locals, all outliving the call, which only reads librdkafka's
        // cache.
        let err = unsafe {
            rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
                &raw mut low,
                &raw mut high,
            )
        };
        if err != rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
            return None;
        }
        // RD_KAFKA_OFFSET_INVALID (negative) when nothing was fetched yet.
        u64::try_from(high).ok()
    }
}

impl Source for KafkaSource {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn lag(&self) -> Option<Lag> {
        Some(self.consumer.context().lag.clone())
    }

    fn attach(&mut self, link: SourceLink) {
        *self.consumer.context().link.lock().unwrap_or_else(|p| p.into_inner()) = Some(link);
    }

    fn next_batch(&mut self, max: usize, max_bytes: usize) -> Result<Option<SourceBatch>> {
        super::next_batch_of_events(self, max, max_bytes)
    }

    fn next_event(&mut self, max: usize, max_bytes: usize) -> Result<Option<SourceEvent>> {
        loop {
            // The loop's notes, taken here too: this may poll for long
            // without an event (a paused partition waits for its resume).
            let link = self.consumer.context().link.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(link) = link {
                link.take_notes(|note| super::handle::apply(self, note));
            }
            if let Some(event) = self.consumer.context().shared().events.pop_front() {
                return Ok(Some(event));
            }
            if let Some(event) = self.pending.ready.pop_front() {
                return Ok(Some(event));
            }
            if self.stop_at_end && self.at_end() {
                // Read to the end: nothing is behind, whatever the last
                // statistics said.
                let assigned = self.consumer.context().shared().assigned.clone();
                let mut lag = self.consumer.context().lag.lock().unwrap_or_else(|p| p.into_inner());
                for p in assigned {
                    lag.insert(p, 0);
                }
                return Ok(None);
            }
            self.pending.max = (max, max_bytes);
            self.poll()?;
        }
    }

    fn committed(&mut self, position: &Position) -> Result<()> {
        if !self.grouped {
            return Ok(());
        }
        let owned = {
            let mut shared = self.consumer.context().shared();
            shared.raise_floor(position);
            shared.assigned.clone()
        };
        self.last_committed = Some(position.clone());
        commit(&self.consumer, position, &owned, CommitMode::Async)
            .map_err(|what| Error::Source { source_name: self.describe.clone(), what })
    }

    fn pause(&mut self, parts: &[PartitionId]) {
        set_paused(&self.consumer, parts, true);
    }

    fn resume(&mut self, parts: &[PartitionId]) {
        set_paused(&self.consumer, parts, false);
    }

    fn close_grace(&self) -> Duration {
        // The last commit, and leaving the group so that its partitions move
        // at once rather than after the session timeout.
        Duration::from_secs(10)
    }
}

impl Drop for KafkaSource {
    fn drop(&mut self) {
        // The last checkpoint's commit was asynchronous: make sure it
        // landed before leaving the group.
        let owned = self.consumer.context().shared().assigned.clone();
        if let Some(position) = self.last_committed.take()
            && let Err(e) = commit(&self.consumer, &position, &owned, CommitMode::Sync)
        {
            tracing::warn!("kafka: {e}");
        }
        *self.consumer.context().link.lock().unwrap_or_else(|p| p.into_inner()) = None;
        // The fetch queue goes before the consumer (librdkafka requires it).
        *self.consumer.context().fetch.lock().unwrap_or_else(|p| p.into_inner()) = None;
        drop(self.fetch.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PipelineFile;

    fn section(extra: &str) -> KafkaSection {
        let text = format!(
            "[source]\nkind = \"kafka\"\nbrokers = \"127.0.0.1:1\"\ntopics = [\"t\"]\ngroup = \"g\"\n{extra}\n\
             [[sink]]\nname = \"a\"\ncomponent = \"builtin:blackhole\"\n"
        );
        match PipelineFile::parse(&text, "p.toml").expect("parses").source {
            crate::config::SourceSection::Kafka(section) => section,
            other => panic!("not a kafka source: {other:?}"),
        }
    }

    fn refused(extra: &str) -> String {
        KafkaSource::new(&section(extra), None).err().expect("refused").to_string()
    }

    #[test]
    fn settings_the_source_owns_are_refused_naming_the_key_and_why() {
        assert_eq!(
            refused("settings = { \"enable.auto.commit\" = true }"),
            "[source] settings: \"enable.auto.commit\" cannot be set here (sinkbox commits offsets after each checkpoint)"
        );
        assert_eq!(
            refused("settings = { \"group.id\" = \"other\" }"),
            "[source] settings: \"group.id\" cannot be set here (set `group`)"
        );
    }

    #[test]
    fn an_unknown_librdkafka_setting_is_refused_when_the_consumer_is_made() {
        let e = refused("settings = { \"no.such.setting\" = 1 }");
        assert!(e.starts_with("[source] kafka: cannot create the consumer: "), "{e}");
        assert!(e.contains("no.such.setting"), "{e}");
    }

    #[test]
    fn settings_take_strings_numbers_and_booleans_and_nothing_else() {
        let s =
            section("settings = { \"session.timeout.ms\" = 6000, \"check.crcs\" = true, \"client.rack\" = \"r1\" }");
        let got: Vec<(&str, &str)> = s.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, [("check.crcs", "true"), ("client.rack", "r1"), ("session.timeout.ms", "6000")]);
        let text = "[source]\nkind = \"kafka\"\nbrokers = \"b\"\ntopics = [\"t\"]\ngroup = \"g\"\n\
                    settings = { \"x\" = [1] }\n[[sink]]\nname = \"a\"\ncomponent = \"builtin:blackhole\"\n";
        let e = PipelineFile::parse(text, "p.toml").expect_err("refused").to_string();
        assert!(e.contains("settings.x: expected a string, number or boolean, found array"), "{e}");
    }

    #[test]
    fn a_consumer_is_made_without_a_reachable_broker() {
        // Connecting happens in the background: a broker that is down is
        // waited for, not an error at start.
        let source = KafkaSource::new(&section("start = \"latest\"\nvalue = \"json\""), None).expect("made");
        assert_eq!(source.describe(), "kafka t (group g) at 127.0.0.1:1");
    }
}
