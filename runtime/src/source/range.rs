//! Only the records of a source within an offset range: what `sinkbox
//! replay --from N --to M` reads.

use sinkbox_format::{BatchWriter, Records};

use super::{Lag, PartitionId, Position, Source, SourceBatch, SourceEvent, SourceLink};
use crate::error::Result;

/// The records of `inner` with `from <= offset < to`, in every partition.
/// A source of one partition (a file) ends once it has passed `to`; one
/// of several (Kafka) is read to its end.
pub struct OffsetRange {
    inner: Box<dyn Source>,
    from: u64,
    to: Option<u64>,
    single: bool,
    done: bool,
}

impl OffsetRange {
    /// `inner`, cut to `from..to` (`to` absent: to the end). `single`: the
    /// source has one partition whose offsets only grow.
    pub fn new(inner: Box<dyn Source>, from: u64, to: Option<u64>, single: bool) -> OffsetRange {
        OffsetRange { inner, from, to, single, done: false }
    }

    fn within(&self, offset: u64) -> bool {
        offset >= self.from && self.to.is_none_or(|to| offset < to)
    }

    /// `batch` without the records outside the range; `None` if none is
    /// left.
    fn cut(&mut self, mut batch: SourceBatch) -> Option<SourceBatch> {
        let (data, count) = std::mem::take(&mut batch.records).finish();
        let mut kept = BatchWriter::default();
        let mut last = None;
        for record in Records::new(&data, count).flatten() {
            last = Some(record.offset);
            if self.within(record.offset) {
                kept.begin(record.offset, record.timestamp, record.key, record.value, record.header_count());
                for (name, value) in record.headers().flatten() {
                    kept.header(name, value);
                }
            }
        }
        let last = last.into_iter().chain(batch.malformed.iter().map(|m| m.offset)).max();
        batch.malformed.retain(|m| self.within(m.offset));
        if let (true, Some(to), Some(last)) = (self.single, self.to, last)
            && last + 1 >= to
        {
            self.done = true;
        }
        batch.records = kept;
        (!batch.records.is_empty() || !batch.malformed.is_empty()).then_some(batch)
    }
}

impl Source for OffsetRange {
    fn describe(&self) -> String {
        let to = self.to.map_or_else(String::new, |t| t.to_string());
        format!("{}, offsets {}..{to}", self.inner.describe(), self.from)
    }

    fn partitions(&self) -> Vec<PartitionId> {
        self.inner.partitions()
    }

    fn size_hint(&self) -> Option<u64> {
        self.inner.size_hint()
    }

    fn next_batch(&mut self, max: usize, max_bytes: usize) -> Result<Option<SourceBatch>> {
        super::next_batch_of_events(self, max, max_bytes)
    }

    fn next_event(&mut self, max: usize, max_bytes: usize) -> Result<Option<SourceEvent>> {
        while !self.done {
            match self.inner.next_event(max, max_bytes)? {
                Some(SourceEvent::Batch(batch)) => {
                    if let Some(batch) = self.cut(batch) {
                        return Ok(Some(SourceEvent::Batch(batch)));
                    }
                }
                other => return Ok(other),
            }
        }
        Ok(None)
    }

    fn committed(&mut self, position: &Position) -> Result<()> {
        self.inner.committed(position)
    }

    fn pause(&mut self, parts: &[PartitionId]) {
        self.inner.pause(parts);
    }

    fn resume(&mut self, parts: &[PartitionId]) {
        self.inner.resume(parts);
    }

    fn attach(&mut self, link: SourceLink) {
        self.inner.attach(link);
    }

    fn lag(&self) -> Option<Lag> {
        self.inner.lag()
    }

    fn close_grace(&self) -> std::time::Duration {
        self.inner.close_grace()
    }
}
