//! A source on its own thread, read asynchronously.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Lag, PartitionId, Position, Source, SourceEvent};
use crate::error::{Error, Result};

/// What the loop tells a source, in order.
#[derive(Debug)]
pub enum Note {
    /// A checkpoint was committed at this position.
    Committed(Position),
    /// The loop finished a revocation: it committed what it held of the
    /// revoked partitions (this position) and closed their instances.
    Revoked(Position),
    /// A sink of these partitions is waiting (backpressure, a retry): stop
    /// fetching them until [`Note::Resume`].
    Pause(Vec<PartitionId>),
    /// Fetch these partitions again.
    Resume(Vec<PartitionId>),
}

/// How many events (batches, at most `batch_bytes` each) the source reads
/// ahead of the loop. A Kafka fetch is up to 1 MiB of one partition, about
/// 8 batches of small records: a shorter queue stalls the source while the
/// loop routes one partition's fetch.
pub const SOURCE_AHEAD: usize = 16;

/// The async side of a source running on its own thread. Reading a source
/// may block (stdin, a file on a slow disk, a broker poll), so it never runs
/// on the executor; the bounded channel between them applies backpressure
/// to the reader.
pub struct SourceHandle {
    events: mpsc::Receiver<Result<SourceEvent>>,
    notes: Option<Notifier>,
    thread: Option<std::thread::JoinHandle<()>>,
    name: String,
    partitions: Vec<PartitionId>,
    size: Option<u64>,
    close_grace: Duration,
    lag: Option<Lag>,
}

/// The loop's side of the notes to a source: committed checkpoints and
/// finished revocations.
#[derive(Debug, Clone)]
pub struct Notifier(std_mpsc::Sender<Note>);

impl Notifier {
    /// Tells the source a checkpoint was committed at `position`.
    pub fn committed(&self, position: &Position) {
        let _ = self.0.send(Note::Committed(position.clone()));
    }

    /// Tells the source the last revocation is done; `position` is what the
    /// loop has committed.
    pub fn revoked(&self, position: &Position) {
        let _ = self.0.send(Note::Revoked(position.clone()));
    }

    /// Asks the source to stop fetching `parts` for now.
    pub fn pause(&self, parts: Vec<PartitionId>) {
        let _ = self.0.send(Note::Pause(parts));
    }

    /// Asks the source to fetch `parts` again.
    pub fn resume(&self, parts: Vec<PartitionId>) {
        let _ = self.0.send(Note::Resume(parts));
    }
}

/// The source thread's way to the loop, handed to [`Source::attach`]: a
/// source that must wait for the loop in the middle of a read (a Kafka
/// consumer giving up partitions inside its poll) sends events and takes
/// notes through it.
#[derive(Clone)]
pub struct SourceLink(Arc<LinkState>);

struct LinkState {
    /// Taken at the end of the input, which closes the loop's channel.
    events: Mutex<Option<mpsc::Sender<Result<SourceEvent>>>>,
    notes: Mutex<std_mpsc::Receiver<Note>>,
    /// Revocations sent to the loop, and those it has finished.
    revocations: AtomicU64,
    revoked: AtomicU64,
}

impl SourceLink {
    /// Sends `event` to the loop, waiting while its queue is full; false
    /// once the loop has gone.
    pub fn send(&self, event: Result<SourceEvent>) -> bool {
        let sender = self.0.events.lock().unwrap_or_else(|p| p.into_inner()).clone();
        sender.is_some_and(|sender| sender.blocking_send(event).is_ok())
    }

    /// Whether the loop has gone (the pipeline ended or stops).
    pub fn closed(&self) -> bool {
        self.0.events.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_none_or(|s| s.is_closed())
    }

    /// Hands every note taken so far (committed checkpoints, pauses and
    /// resumptions) to `on_note`, without waiting.
    pub fn take_notes(&self, mut on_note: impl FnMut(&Note)) {
        let notes = self.0.notes.lock().unwrap_or_else(|p| p.into_inner());
        while let Ok(note) = notes.try_recv() {
            self.note(note, &mut on_note);
        }
    }

    fn note(&self, note: Note, on_note: &mut impl FnMut(&Note)) -> Option<Position> {
        match note {
            Note::Revoked(position) => {
                self.0.revoked.fetch_add(1, Ordering::SeqCst);
                Some(position)
            }
            other => {
                on_note(&other);
                None
            }
        }
    }

    /// Tells the loop `parts` are revoked and waits, at most `within`, until
    /// it has committed what it holds of them and closed their instances.
    /// Notes taken meanwhile go to `on_note`. Returns the
    /// position committed at the end of the revocation, or `None` when the
    /// loop did not finish in time (or has gone).
    pub fn revoke(
        &self,
        parts: Vec<PartitionId>,
        within: Duration,
        mut on_note: impl FnMut(&Note),
    ) -> Option<Position> {
        let wanted = self.0.revocations.fetch_add(1, Ordering::SeqCst) + 1;
        if !self.send(Ok(SourceEvent::Revoked(parts))) {
            return None;
        }
        let deadline = Instant::now() + within;
        let notes = self.0.notes.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let note = match notes.recv_timeout(left) {
                Ok(note) => note,
                Err(_) => return None,
            };
            // An earlier revocation that timed out may finish now: only
            // this one's end counts.
            if let Some(position) = self.note(note, &mut on_note)
                && self.0.revoked.load(Ordering::SeqCst) >= wanted
            {
                return Some(position);
            }
        }
    }
}

impl SourceHandle {
    /// Starts `source` on a thread that reads batches of at most
    /// `batch_size` records and about `batch_bytes` bytes.
    pub fn spawn(mut source: Box<dyn Source>, batch_size: usize, batch_bytes: usize) -> Result<SourceHandle> {
        let name = source.describe();
        let partitions = source.partitions();
        let size = source.size_hint();
        let close_grace = source.close_grace();
        let lag = source.lag();
        let (tx, events) = mpsc::channel::<Result<SourceEvent>>(SOURCE_AHEAD);
        let (notes, notes_rx) = std_mpsc::channel::<Note>();
        let link = SourceLink(Arc::new(LinkState {
            events: Mutex::new(Some(tx)),
            notes: Mutex::new(notes_rx),
            revocations: AtomicU64::new(0),
            revoked: AtomicU64::new(0),
        }));
        let thread = std::thread::Builder::new()
            .name("sinkbox-source".into())
            .spawn(move || read(source.as_mut(), link, batch_size, batch_bytes))
            .map_err(|e| Error::io("cannot start the source thread", e))?;
        Ok(SourceHandle {
            events,
            notes: Some(Notifier(notes)),
            thread: Some(thread),
            name,
            partitions,
            size,
            close_grace,
            lag,
        })
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

    /// Records behind the end per partition, if the source knows.
    pub fn lag(&self) -> Option<Lag> {
        self.lag.clone()
    }

    /// Where the loop sends committed positions and finished revocations.
    pub fn notifier(&self) -> Option<Notifier> {
        self.notes.clone()
    }

    /// Stops reading and waits (up to the source's close grace) for it to
    /// take the last commits and close.
    pub async fn finish(mut self) {
        self.events.close();
        drop(self.notes.take());
        if let Some(thread) = self.thread.take() {
            // The thread may be blocked in a read (stdin); it ends at its
            // next read or commit, so do not wait for it forever.
            let _ = tokio::time::timeout(self.close_grace, tokio::task::spawn_blocking(move || thread.join())).await;
        }
    }
}

/// Applies a note from the loop to `source`.
pub(super) fn apply(source: &mut dyn Source, note: &Note) {
    match note {
        Note::Committed(position) => {
            if let Err(e) = source.committed(position) {
                tracing::warn!("{e}");
            }
        }
        Note::Pause(parts) => source.pause(parts),
        Note::Resume(parts) => source.resume(parts),
        Note::Revoked(_) => {}
    }
}

fn read(source: &mut dyn Source, link: SourceLink, batch_size: usize, batch_bytes: usize) {
    source.attach(link.clone());
    loop {
        link.take_notes(|note| apply(source, note));
        match source.next_event(batch_size, batch_bytes) {
            Ok(Some(event)) => {
                if !link.send(Ok(event)) {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                let _ = link.send(Err(e));
                break;
            }
        }
    }
    // The end of the input: the loop sees the channel close (even if the
    // source keeps a clone of the link). It still commits the last
    // checkpoints after that.
    link.0.events.lock().unwrap_or_else(|p| p.into_inner()).take();
    let notes = link.0.notes.lock().unwrap_or_else(|p| p.into_inner());
    while let Ok(note) = notes.recv() {
        if let Note::Committed(_) = note {
            apply(source, &note);
        }
    }
}
