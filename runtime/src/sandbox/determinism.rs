//! A deterministic world for replays: clocks that start at a fixed instant
//! and advance by a fixed step on every reading, and random numbers from a
//! fixed seed. Two runs of the same sink over the same records then see the
//! same times and the same random bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

/// How far the clocks move on each reading: 1 µs.
const STEP_NANOS: u64 = 1_000;

/// The fixed start and seed of a deterministic sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Determinism {
    /// What the wall clock reads first, since the Unix epoch.
    pub start: Duration,
    /// The seed of both random generators.
    pub seed: u64,
}

impl Default for Determinism {
    /// 2000-01-01T00:00:00Z, seed 0.
    fn default() -> Self {
        Determinism { start: Duration::from_secs(946_684_800), seed: 0 }
    }
}

/// A clock that reads `start`, then `start` plus one step more on every
/// reading.
struct SteppingClock {
    start: Duration,
    readings: AtomicU64,
}

impl SteppingClock {
    fn read(&self) -> Duration {
        let n = self.readings.fetch_add(1, Ordering::Relaxed);
        self.start + Duration::from_nanos(n.saturating_mul(STEP_NANOS))
    }
}

impl HostWallClock for SteppingClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(STEP_NANOS)
    }

    fn now(&self) -> Duration {
        self.read()
    }
}

impl HostMonotonicClock for SteppingClock {
    fn resolution(&self) -> u64 {
        STEP_NANOS
    }

    fn now(&self) -> u64 {
        u64::try_from(self.read().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// SplitMix64: small, fast, and the same output on every platform.
struct SplitMix(u64);

impl rand_core::TryRng for SplitMix {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok((self.try_next_u64()? >> 32) as u32)
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Ok(z ^ (z >> 31))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.try_next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}

impl Determinism {
    /// Makes `wasi`'s clocks and random generators this world's.
    pub(super) fn apply(&self, wasi: &mut wasmtime_wasi::WasiCtxBuilder) {
        wasi.wall_clock(SteppingClock { start: self.start, readings: AtomicU64::new(0) })
            .monotonic_clock(SteppingClock { start: Duration::ZERO, readings: AtomicU64::new(0) })
            .secure_random(SplitMix(self.seed))
            .insecure_random(SplitMix(self.seed ^ 0x5EED))
            .insecure_random_seed(u128::from(self.seed));
    }
}

#[cfg(test)]
mod tests {
    use rand_core::Rng;

    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_bytes_and_clocks_step() {
        let (mut a, mut b) = (SplitMix(7), SplitMix(7));
        let (mut x, mut y) = ([0u8; 13], [0u8; 13]);
        a.fill_bytes(&mut x);
        b.fill_bytes(&mut y);
        assert_eq!(x, y);
        assert_ne!(SplitMix(8).next_u64(), SplitMix(7).next_u64());
        let clock = SteppingClock { start: Duration::from_secs(10), readings: AtomicU64::new(0) };
        assert_eq!(HostWallClock::now(&clock), Duration::from_secs(10));
        assert_eq!(HostWallClock::now(&clock), Duration::from_secs(10) + Duration::from_micros(1));
    }
}
