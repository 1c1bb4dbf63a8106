//! Record sources behind one trait.
//!
//! A [`Source`] hands out batches of encoded records and says where it is;
//! the checkpoint loop commits that position once every sink flushed. The
//! loop keeps the records of the open checkpoint itself, so a source never
//! has to rewind: replays come from memory, and a restart resumes from the
//! committed position given to the source's constructor.
//!
//! A source runs on a thread of its own behind a [`SourceHandle`], which
//! the async loop reads from; the handle also carries each committed
//! position back to the source ([`Source::committed`]), for sources with a
//! commit protocol of their own (a Kafka consumer group).
//!
//! Every partition a source reads belongs to a stream with an identity
//! ([`Stream`]) that is never reused for different data: standard input is
//! a new stream on every run, and a file is the same stream only while its
//! device, inode and first bytes stay the same (appending keeps it; replacing
//! or rewriting it makes a new one). The identity is part of the topic the
//! sinks see and of the committed position, so a sink's exactly-once state
//! never mistakes new data for records it already has, and a restart never
//! applies a position to a stream it was not committed for.

mod dead_letters;
mod handle;
#[cfg(feature = "kafka")]
mod kafka;
mod lines;
mod range;

use std::fmt;

use serde::{Deserialize, Serialize};
use sinkbox_format::BatchWriter;

pub use dead_letters::{DeadLetterSource, same_file};
pub use handle::{Note, Notifier, SourceHandle, SourceLink};
#[cfg(feature = "kafka")]
pub use kafka::{KafkaSource, TOMBSTONE_HEADER};
pub use lines::{FOLLOW_EVERY, HEAD_BYTES, LineFormat, LineSource, MAX_LINE_BYTES};
pub use range::OffsetRange;

use crate::error::Result;

/// The identity of the stream a partition is read from, recorded with its
/// committed position so that a restart resumes only the same stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Stream {
    /// Standard input of one run; no other run continues it.
    Stdin {
        /// Unique to the run.
        run: String,
    },
    /// A file: the same stream while its device, inode and first bytes stay
    /// the same, so appending to it keeps the stream and replacing it (even
    /// by a file that reuses the inode) does not.
    File {
        /// The device the file is on.
        device: u64,
        /// Its inode.
        inode: u64,
        /// How many bytes from the start `head_sha256` covers: the first
        /// 4 KiB, or less if the file was shorter when last read.
        head_len: u64,
        /// SHA-256 of those bytes, in hex.
        head_sha256: String,
    },
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stream::Stdin { run } => write!(f, "standard input of run {run}"),
            Stream::File { device, inode, head_len, head_sha256 } => write!(
                f,
                "device {device} inode {inode}, first {head_len} bytes with SHA-256 {}",
                head_sha256.get(..16).unwrap_or(head_sha256)
            ),
        }
    }
}

/// Where a source is: the next offset to read, per partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// One entry per partition the source reads.
    pub partitions: Vec<PartitionPosition>,
}

/// The position within one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionPosition {
    /// The topic (for a file, its path).
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// Offset of the next record to read.
    pub next_offset: u64,
    /// For byte streams: where that record starts, so a restart can seek.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byte: Option<u64>,
    /// The stream these offsets belong to (absent in positions committed by
    /// sinkbox 0.1, which did not record it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<Stream>,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.partitions.is_empty() {
            return f.write_str("the start");
        }
        for (i, p) in self.partitions.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}[{}] offset {}", p.topic, p.partition, p.next_offset)?;
            if let Some(byte) = p.byte {
                write!(f, " (byte {byte})")?;
            }
        }
        Ok(())
    }
}

/// A partition of a topic: what a source assigns and revokes, and what a
/// sink instance serves.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PartitionId {
    /// The topic (for a file, its path).
    pub topic: String,
    /// The partition.
    pub partition: u32,
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]", self.topic, self.partition)
    }
}

/// Records behind the end, per partition, as the source last learned.
pub type Lag = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<PartitionId, u64>>>;

/// What a source reports next.
#[derive(Debug)]
pub enum SourceEvent {
    /// Records.
    Batch(SourceBatch),
    /// These partitions are now this source's: the loop opens their sink
    /// instances before their first batch.
    Assigned(Vec<PartitionId>),
    /// These partitions are no longer this source's: the loop flushes and
    /// commits what it holds for them (within a bound) and closes their
    /// instances, or leaves their checkpoint uncommitted.
    Revoked(Vec<PartitionId>),
}

/// A batch of records from one partition, encoded for the sinks.
#[derive(Debug)]
pub struct SourceBatch {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The encoded records.
    pub records: BatchWriter,
    /// Records the source could not turn into records (malformed lines);
    /// the loop dead-letters them with the checkpoint.
    pub malformed: Vec<Malformed>,
    /// The source's position after this batch; it must hold an entry for
    /// the batch's own partition (the loop refuses a batch without one).
    pub end: Position,
    /// Input bytes consumed by this batch.
    pub bytes: u64,
}

/// An input the source could not parse.
#[derive(Debug, Clone)]
pub struct Malformed {
    /// Its offset.
    pub offset: u64,
    /// The raw input, as is (the dead-letter queue keeps up to
    /// [`crate::checkpoint::DeadLetters`]' cap of it).
    pub raw: Vec<u8>,
    /// What is wrong, and where.
    pub reason: String,
}

/// The next batch of `source`'s events, passing over assignments and
/// revocations: `next_batch` for sources that implement `next_event`.
fn next_batch_of_events<S: Source + ?Sized>(
    source: &mut S,
    max: usize,
    max_bytes: usize,
) -> Result<Option<SourceBatch>> {
    loop {
        match source.next_event(max, max_bytes)? {
            Some(SourceEvent::Batch(batch)) => return Ok(Some(batch)),
            Some(_) => {}
            None => return Ok(None),
        }
    }
}

/// A source of records.
pub trait Source: Send {
    /// Names the source in messages, e.g. `file data.jsonl`.
    fn describe(&self) -> String;

    /// The partitions the source reads from the start; a partitioned
    /// source reports later changes as events.
    fn partitions(&self) -> Vec<PartitionId> {
        Vec::new()
    }

    /// Reads the next batch of at most `max` records and about `max_bytes`
    /// of input (at least one record), or `None` at the end of the input.
    /// A batch may hold fewer records when the input is streaming and
    /// nothing more is available yet. Runs on the source's own thread and
    /// may block.
    fn next_batch(&mut self, max: usize, max_bytes: usize) -> Result<Option<SourceBatch>>;

    /// The next event: a batch, or a change of assigned partitions. The
    /// default reads batches only.
    fn next_event(&mut self, max: usize, max_bytes: usize) -> Result<Option<SourceEvent>> {
        Ok(self.next_batch(max, max_bytes)?.map(SourceEvent::Batch))
    }

    /// Total input size in bytes, when known, for progress reporting.
    fn size_hint(&self) -> Option<u64> {
        None
    }

    /// Called after every checkpoint committed to the offset store, with
    /// its position; a source with its own commit protocol (a Kafka
    /// consumer group) commits here. Called on the source's thread between
    /// reads.
    fn committed(&mut self, _position: &Position) -> Result<()> {
        Ok(())
    }

    /// Stops fetching `parts` until [`Source::resume`]: a sink of theirs is
    /// waiting (backpressure, a retry), and what is read of them meanwhile
    /// is held in memory. Records already read are still handed out. The
    /// default does nothing: a source of one partition waits anyway, since
    /// the loop stops taking its batches.
    fn pause(&mut self, _parts: &[PartitionId]) {}

    /// Fetches `parts` again after [`Source::pause`].
    fn resume(&mut self, _parts: &[PartitionId]) {}

    /// Called once on the source's thread before the first read, with its
    /// way to the loop: a source that must wait for the loop in the middle
    /// of a read (a Kafka consumer giving up partitions) keeps it.
    fn attach(&mut self, _link: SourceLink) {}

    /// Where the source keeps how far behind each partition's end it is,
    /// if it knows (a Kafka consumer does).
    fn lag(&self) -> Option<Lag> {
        None
    }

    /// How long the loop waits at the end of a run for the source to take
    /// the last commits and close (a Kafka consumer commits and leaves its
    /// group then). A source blocked in a read (stdin) is not waited for
    /// longer than this.
    fn close_grace(&self) -> std::time::Duration {
        std::time::Duration::from_millis(200)
    }
}
