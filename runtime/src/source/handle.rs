//! A source on its own thread, read asynchronously.

use std::sync::mpsc as std_mpsc;

use tokio::sync::mpsc;

use super::{PartitionId, Position, Source, SourceEvent};
use crate::error::{Error, Result};

/// The async side of a source running on its own thread. Reading a source
/// may block (stdin, a file on a slow disk, a broker poll), so it never runs
/// on the executor; the bounded channel between them applies backpressure
/// to the reader.
pub struct SourceHandle {
    events: mpsc::Receiver<Result<SourceEvent>>,
    commits: Option<std_mpsc::Sender<Position>>,
    thread: Option<std::thread::JoinHandle<()>>,
    name: String,
    partitions: Vec<PartitionId>,
    size: Option<u64>,
}

impl SourceHandle {
    /// Starts `source` on a thread that reads batches of at most
    /// `batch_size` records and about `batch_bytes` bytes.
    pub fn spawn(mut source: Box<dyn Source>, batch_size: usize, batch_bytes: usize) -> Result<SourceHandle> {
        let name = source.describe();
        let partitions = source.partitions();
        let size = source.size_hint();
        let (tx, events) = mpsc::channel::<Result<SourceEvent>>(4);
        let (commits, commit_rx) = std_mpsc::channel::<Position>();
        let thread = std::thread::Builder::new()
            .name("sinkbox-source".into())
            .spawn(move || read(source.as_mut(), tx, &commit_rx, batch_size, batch_bytes))
            .map_err(|e| Error::io("cannot start the source thread", e))?;
        Ok(SourceHandle { events, commits: Some(commits), thread: Some(thread), name, partitions, size })
    }

    /// The source's description, e.g. `file data.jsonl`.
    pub fn describe(&self) -> &str {
        &self.name
    }

    /// The partitions the source reads from the start.
    pub fn partitions(&self) -> &[PartitionId] {
        &self.partitions
    }

    /// Total input size, when known.
    pub fn size_hint(&self) -> Option<u64> {
        self.size
    }

    /// The next event, or `None` at the end of the input.
    pub async fn next(&mut self) -> Option<Result<SourceEvent>> {
        self.events.recv().await
    }

    /// Hands a committed position to the source (on its thread).
    pub fn committed(&self, position: &Position) {
        if let Some(commits) = &self.commits {
            let _ = commits.send(position.clone());
        }
    }

    /// Stops reading and waits for the source to take the last commits.
    pub async fn finish(mut self) {
        self.events.close();
        drop(self.commits.take());
        if let Some(thread) = self.thread.take() {
            // The thread may be blocked in a read (stdin); it ends at its
            // next read or commit, so do not wait for it forever.
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(200),
                tokio::task::spawn_blocking(move || thread.join()),
            )
            .await;
        }
    }
}

fn read(
    source: &mut dyn Source,
    tx: mpsc::Sender<Result<SourceEvent>>,
    commits: &std_mpsc::Receiver<Position>,
    batch_size: usize,
    batch_bytes: usize,
) {
    let commit = |source: &mut dyn Source, position: Position| {
        if let Err(e) = source.committed(&position) {
            tracing::warn!("{e}");
        }
    };
    loop {
        while let Ok(position) = commits.try_recv() {
            commit(source, position);
        }
        match source.next_event(batch_size, batch_bytes) {
            Ok(Some(event)) => {
                if tx.blocking_send(Ok(event)).is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                break;
            }
        }
    }
    // The end of the input: the loop sees the channel close. It still
    // commits the last checkpoints after that.
    drop(tx);
    while let Ok(position) = commits.recv() {
        commit(source, position);
    }
}
