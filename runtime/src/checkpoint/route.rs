//! Spreading one partition's batches over a sink's lanes.
//!
//! Ordering guarantee: records with the same key always go to the same
//! lane, in their order, so per-key order holds across lanes. Records
//! without a key have no order to keep: a whole batch of them goes to one
//! lane, chosen round-robin by batch.

use sinkbox_format::BatchWriter;

use super::lane::{push_record, records};
use crate::bindings::Batch;

/// The lane of a key among `lanes`: FNV-1a, stable across runs and
/// machines, so a restart routes every key as before.
pub(super) fn lane_of(key: &[u8], lanes: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % lanes as u64) as usize
}

/// `batch` cut into one batch per lane (`None` where a lane gets no
/// record). `round_robin` picks the lane of the records without a key.
pub(super) fn split(batch: &Batch, lanes: usize, round_robin: u64) -> Vec<Option<Batch>> {
    let keyless = (round_robin % lanes as u64) as usize;
    let mut writers: Vec<Option<BatchWriter>> = (0..lanes).map(|_| None).collect();
    for record in records(batch) {
        let lane = record.key.map_or(keyless, |key| lane_of(key, lanes));
        push_record(writers[lane].get_or_insert_with(BatchWriter::default), &record);
    }
    writers
        .into_iter()
        .map(|w| {
            w.map(|w| {
                let (data, count) = w.finish();
                Batch { topic: batch.topic.clone(), partition: batch.partition, count, data }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use sinkbox_format::RecordRef;

    use super::*;

    fn batch(keys: &[Option<&str>]) -> Batch {
        let mut w = BatchWriter::default();
        for (offset, key) in keys.iter().enumerate() {
            w.push(&RecordRef {
                offset: offset as u64,
                timestamp: None,
                key: key.map(str::as_bytes),
                value: b"{}",
                headers: &[],
            });
        }
        let (data, count) = w.finish();
        Batch { topic: "t".into(), partition: 3, count, data }
    }

    #[test]
    fn one_key_stays_in_one_lane_in_order_and_keyless_records_follow_the_round_robin() {
        let keys = [Some("a"), None, Some("b"), Some("a"), None, Some("c"), Some("a")];
        let parts = split(&batch(&keys), 3, 7);
        let mut seen = Vec::new();
        for (lane, part) in parts.iter().enumerate() {
            let Some(part) = part else { continue };
            assert_eq!(part.partition, 3);
            let offsets: Vec<u64> = records(part).map(|r| r.offset).collect();
            assert!(offsets.windows(2).all(|w| w[0] < w[1]), "order kept in lane {lane}");
            for r in records(part) {
                let expected = r.key.map_or(7 % 3, |k| lane_of(k, 3));
                assert_eq!(lane, expected);
                seen.push(r.offset);
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..keys.len() as u64).collect::<Vec<_>>(), "every record in exactly one lane");
    }
}
