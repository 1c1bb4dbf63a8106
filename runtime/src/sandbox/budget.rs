//! Limits on what a guest can make the host log: a rate per second and a
//! cap per call.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::error::Bytes;

/// Log lines a sink may emit per second (and in one burst).
pub const LOG_LINES_PER_SEC: u32 = 200;
/// Log bytes a sink may emit per second (and in one burst).
pub const LOG_BYTES_PER_SEC: u32 = 256 << 10;

/// A token bucket over lines and bytes, plus a cap on lines and bytes per
/// guest call, shared by a sandbox's log import and its stdout and stderr.
/// What exceeds either is dropped and counted; the count is reported once
/// per guest call.
#[derive(Clone)]
pub(crate) struct LogBudget(Arc<Mutex<Bucket>>);

struct Bucket {
    lines: f64,
    bytes: f64,
    at: Instant,
    per_call: PerCall,
    /// Logged in the current call.
    call_lines: u32,
    call_bytes: u64,
    dropped: Dropped,
}

/// The most a sink may log in one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PerCall {
    pub(crate) lines: u32,
    pub(crate) bytes: u64,
}

/// What one call's logging lost, and to which limit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dropped {
    pub(crate) lines: u64,
    pub(crate) bytes: u64,
    /// Some of it went over the per-call cap (this is its value).
    pub(crate) per_call: Option<PerCall>,
    /// Some of it went over the rate per second.
    pub(crate) per_second: bool,
}

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dropped {} lines ({}) over its limit of ", self.lines, Bytes(self.bytes))?;
        if let Some(cap) = self.per_call {
            write!(f, "{} lines and {} per call", cap.lines, Bytes(cap.bytes))?;
            if self.per_second {
                f.write_str(" and of ")?;
            }
        }
        if self.per_second {
            write!(f, "{LOG_LINES_PER_SEC} lines and {} per second", Bytes(u64::from(LOG_BYTES_PER_SEC)))?;
        }
        Ok(())
    }
}

impl LogBudget {
    /// A budget with `per_call` on top of the rate per second.
    pub(crate) fn new(per_call: PerCall) -> LogBudget {
        LogBudget(Arc::new(Mutex::new(Bucket {
            lines: f64::from(LOG_LINES_PER_SEC),
            bytes: f64::from(LOG_BYTES_PER_SEC),
            at: Instant::now(),
            per_call,
            call_lines: 0,
            call_bytes: 0,
            dropped: Dropped::default(),
        })))
    }

    /// Whether a line of `bytes` may be logged now; counts it as dropped if not.
    pub(crate) fn allow(&self, bytes: usize) -> bool {
        let mut b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let secs = now.duration_since(b.at).as_secs_f64();
        b.at = now;
        b.lines = (b.lines + secs * f64::from(LOG_LINES_PER_SEC)).min(f64::from(LOG_LINES_PER_SEC));
        b.bytes = (b.bytes + secs * f64::from(LOG_BYTES_PER_SEC)).min(f64::from(LOG_BYTES_PER_SEC));
        let size = bytes as u64;
        if b.call_lines >= b.per_call.lines || b.call_bytes.saturating_add(size) > b.per_call.bytes {
            b.dropped.per_call = Some(b.per_call);
        } else if b.lines < 1.0 || b.bytes < bytes as f64 {
            b.dropped.per_second = true;
        } else {
            b.lines -= 1.0;
            b.bytes -= bytes as f64;
            b.call_lines += 1;
            b.call_bytes += size;
            return true;
        }
        b.dropped.lines += 1;
        b.dropped.bytes += size;
        false
    }

    /// Ends a call: what it dropped, if anything; the per-call cap starts
    /// over.
    pub(crate) fn end_call(&self) -> Option<Dropped> {
        let mut b = self.0.lock().unwrap_or_else(|p| p.into_inner());
        b.call_lines = 0;
        b.call_bytes = 0;
        let dropped = std::mem::take(&mut b.dropped);
        (dropped.lines > 0).then_some(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIDE: PerCall = PerCall { lines: u32::MAX, bytes: u64::MAX };

    #[test]
    fn a_flood_is_cut_to_the_burst_and_counted() {
        let budget = LogBudget::new(WIDE);
        let allowed = (0..10_000).filter(|_| budget.allow(10)).count();
        assert!((200..=202).contains(&allowed), "{allowed}");
        let dropped = budget.end_call().unwrap();
        assert_eq!(dropped.lines, 10_000 - allowed as u64);
        assert_eq!(dropped.bytes, 10 * dropped.lines);
        assert!(dropped.per_second && dropped.per_call.is_none());
        assert_eq!(budget.end_call(), None);
        let big = LogBudget::new(WIDE);
        assert!(!big.allow(1 << 20), "one line larger than the byte budget");
    }

    #[test]
    fn a_call_logs_at_most_its_cap_and_the_next_call_starts_over() {
        let budget = LogBudget::new(PerCall { lines: 5, bytes: 1 << 20 });
        assert_eq!((0..8).filter(|_| budget.allow(100)).count(), 5);
        let dropped = budget.end_call().unwrap();
        assert_eq!(dropped.to_string(), "dropped 3 lines (300 bytes) over its limit of 5 lines and 1 MiB per call");
        assert_eq!((0..5).filter(|_| budget.allow(100)).count(), 5);
        assert_eq!(budget.end_call(), None);
        // Bytes: two lines of 40 fit in 100, the third does not.
        let budget = LogBudget::new(PerCall { lines: 100, bytes: 100 });
        assert_eq!((0..3).filter(|_| budget.allow(40)).count(), 2);
        assert_eq!(budget.end_call().unwrap().bytes, 40);
    }
}
