//! A batching base for destination sinks (the Quix Streams `BatchingSink`
//! model): the author writes `open` and `write`; the base buffers the
//! batches of a checkpoint per topic and partition without copying them,
//! clears them on `abort`, and hands them to `write` at `flush`.

use std::collections::BTreeMap;

use crate::{Batch, Context, DecodeError, Error, Record, Sink, Status};

/// A destination sink written as one `write` per partition per checkpoint.
/// Export it with [`export_writer!`](crate::export_writer).
pub trait Writer: Sized + 'static {
    /// The config, deserialized from the pipeline's JSON.
    type Config: serde::de::DeserializeOwned;

    /// The JSON Schema of the config, if published. Default: none.
    fn config_schema() -> Option<String> {
        None
    }

    /// Creates the writer; see [`Sink::open`] for `context`.
    fn open(config: Self::Config, context: &Context) -> Result<Self, Error>;

    /// Writes the records a checkpoint buffered for one partition and makes
    /// them durable. Return [`Error::Rejected`] naming the offsets of
    /// records the destination refused (they go to the dead-letter queue,
    /// the rest count as written), [`Error::backpressure`] or
    /// [`Error::retryable`] to have the checkpoint replayed.
    fn write(&mut self, batch: &Buffered) -> Result<(), Error>;

    /// See [`Sink::snapshot`]. Default: none.
    fn snapshot(&mut self) -> Option<Vec<u8>> {
        None
    }

    /// See [`Sink::status`]. Default: none.
    fn status(&mut self) -> Option<Status> {
        None
    }

    /// Releases resources. Default: drop.
    fn close(self) -> Result<(), Error> {
        Ok(())
    }
}

/// What a checkpoint buffered for one partition: the batches as the runtime
/// sent them, unchanged.
pub struct Buffered {
    topic: String,
    partition: u32,
    batches: Vec<Batch>,
}

impl Buffered {
    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// How many records.
    pub fn len(&self) -> usize {
        self.batches.iter().map(Batch::len).sum()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The records, in order.
    pub fn records(&self) -> impl Iterator<Item = Result<Record<'_>, DecodeError>> {
        self.batches.iter().flat_map(Batch::records)
    }

    /// Offset of the first record, if any.
    pub fn first_offset(&self) -> Option<u64> {
        self.records().flatten().next().map(|r| r.offset())
    }

    /// Offset of the last record, if any.
    pub fn last_offset(&self) -> Option<u64> {
        self.batches.iter().rev().find_map(|b| b.records().flatten().last().map(|r| r.offset()))
    }
}

/// A [`Writer`] made a [`Sink`]: buffers per (topic, partition), clears on
/// abort, writes each partition's records at flush.
pub struct Batching<W> {
    writer: W,
    buffers: BTreeMap<(String, u32), Vec<Batch>>,
}

impl<W> Batching<W> {
    /// The writer inside.
    pub fn writer(&self) -> &W {
        &self.writer
    }
}

impl<W: Writer> Sink for Batching<W> {
    type Config = W::Config;

    fn config_schema() -> Option<String> {
        W::config_schema()
    }

    fn open(config: W::Config, context: &Context) -> Result<Self, Error> {
        Ok(Batching { writer: W::open(config, context)?, buffers: BTreeMap::new() })
    }

    fn add(&mut self, _record: Record<'_>) -> Result<(), Error> {
        // `add_batch` keeps whole batches; this is never called.
        Ok(())
    }

    fn add_batch(&mut self, batch: Batch) -> Result<(), Error> {
        if !batch.is_empty() {
            self.buffers.entry((batch.topic().to_string(), batch.partition())).or_default().push(batch);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        while let Some(((topic, partition), batches)) = self.buffers.pop_first() {
            let buffered = Buffered { topic, partition, batches };
            match self.writer.write(&buffered) {
                // Rejected records are dead-lettered by the runtime; the
                // rest count as written.
                Ok(()) => {}
                Err(Error::Rejected(list)) => {
                    self.buffers.clear();
                    return Err(Error::Rejected(list));
                }
                Err(other) => {
                    // Keep it: the runtime aborts (which clears) or replaces
                    // the instance, then replays.
                    self.buffers.insert((buffered.topic, buffered.partition), buffered.batches);
                    return Err(other);
                }
            }
        }
        Ok(())
    }

    fn snapshot(&mut self) -> Option<Vec<u8>> {
        self.writer.snapshot()
    }

    fn status(&mut self) -> Option<Status> {
        self.writer.status()
    }

    fn abort(&mut self) {
        self.buffers.clear();
    }

    fn close(self) -> Result<(), Error> {
        self.writer.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{batch, context};

    /// What one `write` saw: topic, partition, first and last offset, count.
    type Write = (String, u32, Option<u64>, Option<u64>, usize);

    /// Records what `write` saw.
    struct Seen(Vec<Write>);

    impl Writer for Seen {
        type Config = ();
        fn open((): (), _context: &Context) -> Result<Self, Error> {
            Ok(Seen(Vec::new()))
        }
        fn write(&mut self, b: &Buffered) -> Result<(), Error> {
            if b.records().flatten().any(|r| r.value() == b"bad") {
                return Err(Error::reject_offset(b.last_offset().unwrap_or(0), "bad"));
            }
            self.0.push((b.topic().into(), b.partition(), b.first_offset(), b.last_offset(), b.len()));
            Ok(())
        }
    }

    #[test]
    fn writes_per_partition_at_flush_and_abort_clears() {
        let mut sink = Batching::<Seen>::open((), &context("t", 0)).unwrap();
        sink.add_batch(batch("t", 0, &[(1, None, b"a"), (2, None, b"b")])).unwrap();
        sink.add_batch(batch("u", 3, &[(7, None, b"c")])).unwrap();
        sink.add_batch(batch("t", 0, &[(3, None, b"d")])).unwrap();
        sink.flush().unwrap();
        assert_eq!(sink.writer().0, vec![("t".into(), 0, Some(1), Some(3), 3), ("u".into(), 3, Some(7), Some(7), 1)]);
        sink.add_batch(batch("t", 0, &[(4, None, b"e")])).unwrap();
        sink.abort();
        sink.flush().unwrap();
        assert_eq!(sink.writer().0.len(), 2, "aborted records are never written");
        sink.add_batch(batch("t", 0, &[(5, None, b"bad")])).unwrap();
        assert_eq!(sink.flush(), Err(Error::reject_offset(5, "bad")), "rejections raised at flush pass through");
    }
}
