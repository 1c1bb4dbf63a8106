//! Record sources behind one trait.
//!
//! A [`Source`] hands out batches of encoded records and says where it is;
//! the checkpoint loop commits that position once every sink flushed. The
//! loop keeps the records of the open checkpoint itself, so a source never
//! has to rewind: replays come from memory, and a restart resumes from the
//! committed position given to the source's constructor.

mod lines;

use std::fmt;

use serde::{Deserialize, Serialize};
use sinkbox_format::BatchWriter;

pub use lines::{LineFormat, LineSource};

use crate::error::Result;

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
    /// The source's position after this batch.
    pub end: Position,
    /// Input bytes consumed by this batch.
    pub bytes: u64,
}

/// An input the source could not parse.
#[derive(Debug, Clone)]
pub struct Malformed {
    /// Its offset.
    pub offset: u64,
    /// The raw input, as is.
    pub raw: Vec<u8>,
    /// What is wrong, and where.
    pub reason: String,
}

/// A source of records.
pub trait Source: Send {
    /// Names the source in messages, e.g. `file data.jsonl`.
    fn describe(&self) -> String;

    /// Reads the next batch of at most `max` records, or `None` at the end
    /// of the input. A batch may hold fewer records when the input is
    /// streaming and nothing more is available yet.
    fn next_batch(&mut self, max: usize) -> Result<Option<SourceBatch>>;

    /// Total input size in bytes, when known, for progress reporting.
    fn size_hint(&self) -> Option<u64> {
        None
    }

    /// Called after a position was committed to the offset store; a source
    /// with its own commit protocol (a Kafka consumer group) commits here.
    fn committed(&mut self, _position: &Position) -> Result<()> {
        Ok(())
    }
}
