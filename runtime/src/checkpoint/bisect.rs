//! Finding the record that makes a sink trap every time.
//!
//! Bisection runs over the lane's held records with probe instances:
//! throwaway instances opened with `context.probe = true` that only `add`,
//! so no probe makes anything durable. A record is poison only when it
//! alone, in a fresh instance, makes the sink fail; then it is
//! dead-lettered with the failure as the reason.

use sinkbox_format::BatchWriter;

use super::lane::{Lane, push_record, records};
use crate::bindings::Batch;
use crate::error::{Fault, Result, SinkFailure};
use crate::sandbox::Failure;

impl Lane {
    /// Finds the record of held batches `..=upto` that makes the sink
    /// trap, and dead-letters it. Fails if the sink traps too often to be a
    /// poison-record problem, or if no `add` reproduces the failure.
    pub(super) async fn isolate_poison(&mut self, upto: Option<usize>, failure: SinkFailure) -> Result<()> {
        self.poison += 1;
        let max = self.shared.retry.max_poison;
        if self.poison > max {
            tracing::error!(
                "sink \"{}\" isolated {max} poison records in one checkpoint; a sink that fails this often is \
                 broken, not its records; giving up",
                self.spec.name
            );
            return Err(failure.into());
        }
        let Some(upto) = upto else {
            return Err(failure.into());
        };
        let candidates: Vec<(usize, u64)> = (0..=upto)
            .flat_map(|i| records(&self.held[i]).map(move |r| (i, r.offset)).collect::<Vec<_>>())
            .filter(|key| !self.skip.contains(key))
            .collect();
        if !self.probe_traps(&candidates).await? {
            tracing::error!(
                "sink \"{}\" fails in {}, but adding the checkpoint's records alone does not; cannot isolate a record",
                self.spec.name,
                failure.phase
            );
            return Err(failure.into());
        }
        // Smallest prefix that traps.
        let (mut lo, mut hi) = (1, candidates.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.probe_traps(&candidates[..mid]).await? {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        let culprit = candidates[lo - 1];
        if lo > 1 && !self.probe_traps(&[culprit]).await? {
            tracing::error!(
                "sink \"{}\" fails after the record at offset {}, but not on that record alone; its failures depend \
                 on what came before, so no record is to blame",
                self.spec.name,
                culprit.1
            );
            return Err(failure.into());
        }
        let (index, offset) = culprit;
        let held = self.held[index].clone();
        let Some(record) = records(&held).find(|r| r.offset == offset) else {
            return Err(failure.into());
        };
        let reason = crate::error::chain(&failure);
        tracing::warn!(
            "sink \"{}\": record at {}[{}] offset {offset} is poison; dead-lettering it",
            self.spec.name,
            held.topic,
            held.partition
        );
        self.dead_letter(&reason, &held, &record)?;
        self.skip.insert((index, offset));
        self.metrics.rejected += 1;
        Ok(())
    }

    /// Whether adding exactly `candidates` (in batches of the usual size,
    /// keeping their partition) to a fresh probe instance makes it fail.
    /// The probe is aborted and closed if it survives.
    async fn probe_traps(&mut self, candidates: &[(usize, u64)]) -> Result<bool> {
        let mut instance = self.new_instance(true).await?;
        let size = self.held.first().map_or(1, |h| h.count.max(1) as usize);
        let mut trapped = false;
        for chunk in candidates.chunks(size) {
            let mut writer = BatchWriter::default();
            for &(index, offset) in chunk {
                if let Some(record) = records(&self.held[index]).find(|r| r.offset == offset) {
                    push_record(&mut writer, &record);
                }
            }
            let (data, count) = writer.finish();
            // A lane's batches all come from its one partition.
            let first = &self.held[chunk[0].0];
            let batch = Batch { topic: first.topic.clone(), partition: first.partition, count, data };
            match instance.add(&batch).await {
                Ok(()) | Err(Failure::Rejected(_)) => {}
                // An abort cuts every call off: that says nothing of the
                // records, and the pipeline is ending.
                Err(Failure::Fault(f)) if matches!(f.fault, Fault::Stopped) => {
                    return Err(crate::error::Error::Interrupted { from: self.shared.committed() });
                }
                Err(Failure::Fault(f)) if f.fault.kills_instance() => {
                    trapped = true;
                    break;
                }
                Err(Failure::Fault(_)) => break,
            }
        }
        if !trapped {
            let _ = instance.abort().await;
            let (_, stats) = instance.close().await;
            self.metrics.fuel += stats.fuel;
        } else {
            self.metrics.fuel += instance.take_stats().fuel;
        }
        Ok(trapped)
    }
}
