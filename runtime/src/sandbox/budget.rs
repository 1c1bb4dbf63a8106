//! A rate limit on what a guest can make the host log.

use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Log lines a sink may emit per second (and in one burst).
pub const LOG_LINES_PER_SEC: u32 = 200;
/// Log bytes a sink may emit per second (and in one burst).
pub const LOG_BYTES_PER_SEC: u32 = 256 << 10;

/// A token bucket over lines and bytes, shared by a sandbox's log import
/// and its stdout and stderr. What exceeds it is dropped and counted; the
/// count is reported once per guest call.
#[derive(Clone)]
pub(crate) struct LogBudget(Arc<Mutex<Bucket>>);

struct Bucket {
    lines: f64,
    bytes: f64,
    at: Instant,
    dropped: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        LogBudget(Arc::new(Mutex::new(Bucket {
            lines: f64::from(LOG_LINES_PER_SEC),
            bytes: f64::from(LOG_BYTES_PER_SEC),
            at: Instant::now(),
            dropped: 0,
        })))
    }
}

impl LogBudget {
    /// Whether a line of `bytes` may be logged now; counts it as dropped if not.
    pub(crate) fn allow(&self, bytes: usize) -> bool {
        let mut b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let secs = now.duration_since(b.at).as_secs_f64();
        b.at = now;
        b.lines = (b.lines + secs * f64::from(LOG_LINES_PER_SEC)).min(f64::from(LOG_LINES_PER_SEC));
        b.bytes = (b.bytes + secs * f64::from(LOG_BYTES_PER_SEC)).min(f64::from(LOG_BYTES_PER_SEC));
        if b.lines >= 1.0 && b.bytes >= bytes as f64 {
            b.lines -= 1.0;
            b.bytes -= bytes as f64;
            true
        } else {
            b.dropped += 1;
            false
        }
    }

    /// Lines dropped since the last call.
    pub(crate) fn take_dropped(&self) -> u64 {
        std::mem::take(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()).dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_cut_to_the_burst_and_counted() {
        let budget = LogBudget::default();
        let allowed = (0..10_000).filter(|_| budget.allow(10)).count();
        assert!((200..=202).contains(&allowed), "{allowed}");
        assert_eq!(budget.take_dropped(), 10_000 - allowed as u64);
        assert_eq!(budget.take_dropped(), 0);
        let big = LogBudget::default();
        assert!(!big.allow(1 << 20), "one line larger than the byte budget");
    }
}
