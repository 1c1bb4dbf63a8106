//! The source's own fetch queue: every assigned partition's messages are
//! forwarded to it and read in batches (`rd_kafka_consume_batch_queue`),
//! while the consumer's queue keeps only the group's events (rebalances,
//! errors, statistics), which `BaseConsumer::poll` serves.
//!
//! Reading a batch takes the queue's lock and the clock once per batch
//! rather than once per message, and knowing the next messages lets the
//! reader prefetch their payloads, which the broker thread wrote on the
//! other core, while it packs the current one.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::marker::PhantomData;
use std::time::Duration;

use rdkafka::bindings::{
    rd_kafka_consume_batch_queue, rd_kafka_header_cnt, rd_kafka_header_get_all, rd_kafka_headers_t,
    rd_kafka_message_destroy, rd_kafka_message_headers, rd_kafka_message_t, rd_kafka_message_timestamp,
    rd_kafka_queue_destroy, rd_kafka_queue_forward, rd_kafka_queue_get_partition, rd_kafka_queue_new, rd_kafka_queue_t,
    rd_kafka_resp_err_t, rd_kafka_t, rd_kafka_timestamp_type_t, rd_kafka_topic_name,
};

use rdkafka::error::KafkaError;

use super::PartitionId;

/// Most messages taken from the queue in one call.
pub const BATCH: usize = 1024;

/// How many messages ahead of the one being packed are prefetched.
const AHEAD: usize = 4;

/// A queue of the source's own, destroyed before the consumer it belongs
/// to (librdkafka requires every queue to be gone before the client).
pub struct FetchQueue {
    queue: *mut rd_kafka_queue_t,
    client: *mut rd_kafka_t,
    /// Messages taken by the last [`FetchQueue::read`] and not yet
    /// destroyed.
    taken: Vec<*mut rd_kafka_message_t>,
}

// SAFETY: librdkafka's queues and client handles may be used from any
// thread; the taken messages are owned by this value alone.
unsafe impl Send for FetchQueue {}

impl FetchQueue {
    /// A new queue for `client`'s messages.
    ///
    /// # Safety
    /// `client` must be a live consumer handle that outlives the queue.
    pub unsafe fn new(client: *mut rd_kafka_t) -> FetchQueue {
        // SAFETY: the caller guarantees a live client handle.
        let queue = unsafe { rd_kafka_queue_new(client) };
        FetchQueue { queue, client, taken: Vec::with_capacity(BATCH) }
    }

    /// A handle to the queue that [`forward`] can be given from a
    /// rebalance callback.
    pub fn target(&self) -> Target {
        Target { queue: self.queue, client: self.client }
    }

    /// Takes what is waiting (up to [`BATCH`] messages), waiting up to
    /// `wait` for the first one, and calls `each` with every message in
    /// order. Returns how many there were.
    pub fn read(&mut self, wait: Duration, mut each: impl FnMut(Fetched<'_>)) -> usize {
        self.release();
        let wait_ms = c_int::try_from(wait.as_millis()).unwrap_or(c_int::MAX);
        let first = if wait_ms > 0 {
            // A batch call waits for a full batch; a wait is for the first
            // message only, then what else is there is taken at once.
            // SAFETY: the queue is live and `taken` has room for one.
            let n = unsafe { rd_kafka_consume_batch_queue(self.queue, wait_ms, self.taken.as_mut_ptr(), 1) };
            usize::try_from(n).unwrap_or(0)
        } else {
            0
        };
        let room = BATCH - first;
        // SAFETY: the queue is live and `taken` has room for `room` more
        // after the `first` already written.
        let more = unsafe { rd_kafka_consume_batch_queue(self.queue, 0, self.taken.as_mut_ptr().add(first), room) };
        let n = first + usize::try_from(more).unwrap_or(0);
        // SAFETY: librdkafka wrote `n` message pointers.
        unsafe { self.taken.set_len(n) };
        for i in 0..n {
            if let Some(&ahead) = self.taken.get(i + AHEAD) {
                prefetch(ahead.cast());
            }
            if let Some(&next) = self.taken.get(i + AHEAD / 2) {
                // SAFETY: a message librdkafka returned, not destroyed yet.
                let next = unsafe { &*next };
                prefetch(next.payload.cast_const().cast());
                prefetch(next.payload.cast_const().cast::<u8>().wrapping_add(64));
            }
            // SAFETY: as above; the view does not outlive this iteration.
            each(unsafe { Fetched::from_raw(self.taken[i]) });
        }
        self.release();
        n
    }

    /// Destroys the messages taken last.
    fn release(&mut self) {
        for m in self.taken.drain(..) {
            // SAFETY: each was returned by librdkafka and is destroyed once.
            unsafe { rd_kafka_message_destroy(m) };
        }
    }
}

impl Drop for FetchQueue {
    fn drop(&mut self) {
        self.release();
        // SAFETY: the queue was made by `rd_kafka_queue_new` and the client
        // is still live (the source drops this before its consumer).
        unsafe { rd_kafka_queue_destroy(self.queue) };
    }
}

/// Where a rebalance callback forwards newly assigned partitions.
#[derive(Clone, Copy)]
pub struct Target {
    queue: *mut rd_kafka_queue_t,
    client: *mut rd_kafka_t,
}

// SAFETY: see `FetchQueue`; a target is only used while its queue lives
// (the source clears the context's copy before dropping the queue).
unsafe impl Send for Target {}
unsafe impl Sync for Target {}

/// Forwards `parts`' fetched messages to `target`. librdkafka stops
/// forwarding a partition when it is unassigned, so this runs on every
/// assignment, before the partitions start fetching.
pub fn forward(target: Target, parts: &[PartitionId]) {
    for p in parts {
        let (Ok(topic), Ok(partition)) = (CString::new(p.topic.as_str()), i32::try_from(p.partition)) else {
            continue;
        };
        // SAFETY: the client is live; the topic is NUL-terminated.
        let from = unsafe { rd_kafka_queue_get_partition(target.client, topic.as_ptr(), partition) };
        if from.is_null() {
            tracing::warn!("kafka: {p} has no fetch queue; its records are read through the consumer's");
            continue;
        }
        // SAFETY: both queues are live; the partition's handle is released
        // right after (the forwarding stays).
        unsafe {
            rd_kafka_queue_forward(from, target.queue);
            rd_kafka_queue_destroy(from);
        }
    }
}

/// One fetched message, borrowed from librdkafka.
pub struct Fetched<'a> {
    raw: *const rd_kafka_message_t,
    _message: PhantomData<&'a rd_kafka_message_t>,
}

impl<'a> Fetched<'a> {
    /// A view of `raw`.
    ///
    /// # Safety
    /// `raw` must be a message librdkafka returned that lives for `'a`.
    pub unsafe fn from_raw(raw: *const rd_kafka_message_t) -> Fetched<'a> {
        Fetched { raw, _message: PhantomData }
    }

    fn message(&self) -> &'a rd_kafka_message_t {
        // SAFETY: live for 'a (see `from_raw`).
        unsafe { &*self.raw }
    }

    /// The error or event this message carries rather than a record, as
    /// `BaseConsumer::poll` would return it.
    pub fn error(&self) -> Option<KafkaError> {
        match self.message().err {
            rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => None,
            rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => Some(KafkaError::PartitionEOF(self.partition())),
            code @ rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__FATAL => {
                Some(KafkaError::MessageConsumptionFatal(code.into()))
            }
            code => Some(KafkaError::MessageConsumption(code.into())),
        }
    }

    /// The topic's name, as bytes (Kafka topic names are ASCII).
    pub fn topic(&self) -> &'a [u8] {
        let rkt = self.message().rkt;
        if rkt.is_null() {
            return b"";
        }
        // SAFETY: a message's topic handle lives as long as the message,
        // and its name is NUL-terminated.
        unsafe { CStr::from_ptr(rd_kafka_topic_name(rkt)) }.to_bytes()
    }

    pub fn partition(&self) -> i32 {
        self.message().partition
    }

    pub fn offset(&self) -> i64 {
        self.message().offset
    }

    pub fn key(&self) -> Option<&'a [u8]> {
        // SAFETY: librdkafka's key pointer and length describe one buffer
        // owned by the message.
        unsafe { bytes(self.message().key, self.message().key_len) }
    }

    /// The value; `None` for a tombstone.
    pub fn payload(&self) -> Option<&'a [u8]> {
        // SAFETY: as for the key.
        unsafe { bytes(self.message().payload, self.message().len) }
    }

    /// Milliseconds since the Unix epoch, if the message has a timestamp.
    pub fn timestamp(&self) -> Option<i64> {
        let mut kind = rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: a live message and a live out-pointer.
        let ts = unsafe { rd_kafka_message_timestamp(self.raw, &raw mut kind) };
        (kind != rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE && ts >= 0).then_some(ts)
    }

    /// The message's headers (parsed by librdkafka on first use).
    pub fn headers(&self) -> Headers<'a> {
        let mut hdrs: *mut rd_kafka_headers_t = std::ptr::null_mut();
        // SAFETY: a live message and a live out-pointer; the headers belong
        // to the message.
        let err = unsafe { rd_kafka_message_headers(self.raw, &raw mut hdrs) };
        let hdrs = if err == rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR { hdrs } else { std::ptr::null_mut() };
        // SAFETY: a live header list, or none.
        let count = if hdrs.is_null() { 0 } else { unsafe { rd_kafka_header_cnt(hdrs) } };
        Headers { hdrs, count, _message: PhantomData }
    }
}

/// A message's headers.
pub struct Headers<'a> {
    hdrs: *const rd_kafka_headers_t,
    count: usize,
    _message: PhantomData<&'a rd_kafka_message_t>,
}

impl<'a> Headers<'a> {
    pub fn count(&self) -> usize {
        self.count
    }

    /// The `index`th header: its name and value (`None` for a null value).
    pub fn get(&self, index: usize) -> Option<(&'a [u8], Option<&'a [u8]>)> {
        if index >= self.count {
            return None;
        }
        let (mut name, mut value, mut size): (*const c_char, *const c_void, usize) =
            (std::ptr::null(), std::ptr::null(), 0);
        // SAFETY: a live header list and live out-pointers.
        let err = unsafe { rd_kafka_header_get_all(self.hdrs, index, &raw mut name, &raw mut value, &raw mut size) };
        if err != rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            return None;
        }
        // SAFETY: header names are NUL-terminated; the value buffer has
        // `size` bytes; both belong to the message.
        unsafe { Some((CStr::from_ptr(name).to_bytes(), bytes(value.cast_mut(), size))) }
    }
}

/// `len` bytes at `ptr`, or `None` for a null pointer.
///
/// # Safety
/// A non-null `ptr` must point to `len` readable bytes that live for `'a`.
unsafe fn bytes<'a>(ptr: *mut c_void, len: usize) -> Option<&'a [u8]> {
    if ptr.is_null() {
        return None;
    }
    // SAFETY: the caller's guarantee.
    Some(unsafe { std::slice::from_raw_parts(ptr.cast_const().cast::<u8>(), len) })
}

/// Hints the CPU to bring the cache line at `ptr` in; never faults.
#[inline(always)]
fn prefetch(ptr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint and does not fault on any address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(ptr.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}
