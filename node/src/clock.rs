//! Wall time and randomness, injected so simulations can skew clocks and replay
//! seeds. Durations and deadlines use `tokio::time`, which turmoil simulates; only
//! "what time is it in the world" (for `created` fields, periods, expiry) comes from
//! a [`Clock`].

use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use rand::{Rng as _, RngCore, SeedableRng, rngs::StdRng};

/// Wall-clock time as seen by this node.
pub trait Clock: Send + Sync + 'static {
    /// Time since the Unix epoch.
    fn since_epoch(&self) -> Duration;

    fn unix_secs(&self) -> u64 {
        self.since_epoch().as_secs()
    }
}

/// The operating system's clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // this is the seam itself
    fn since_epoch(&self) -> Duration {
        std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
    }
}

/// A clock that reads another clock and adds an offset (positive or
/// negative), used by simulations to skew one node against the others. The
/// offset may change while the node runs: a clock that jumps forward or back
/// (a step of NTP, a VM resumed).
#[derive(Debug)]
pub struct SkewedClock<C> {
    pub inner: C,
    pub offset_ms: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl<C: Clock> Clock for SkewedClock<C> {
    fn since_epoch(&self) -> Duration {
        let base = self.inner.since_epoch();
        let offset = self.offset_ms.load(std::sync::atomic::Ordering::Relaxed);
        let skew = Duration::from_millis(offset.unsigned_abs());
        if offset >= 0 {
            base + skew
        } else {
            base.saturating_sub(skew)
        }
    }
}

/// The node's one source of randomness. Production seeds it from the OS; tests
/// and simulations pass a seed so every choice (deployment picks, request ids,
/// generated keys) replays exactly.
#[derive(Debug)]
pub struct SeededRng(Mutex<StdRng>);

impl SeededRng {
    pub fn from_seed(seed: u64) -> Self {
        Self(Mutex::new(StdRng::seed_from_u64(seed)))
    }

    pub fn from_os() -> Self {
        Self(Mutex::new(StdRng::from_os_rng()))
    }

    fn with<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-draw; the RNG
        // state is still a valid RNG state.
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    pub fn next_u64(&self) -> u64 {
        self.with(|r| r.next_u64())
    }

    /// Uniform in `0..n`; `n` must be non-zero.
    pub fn below(&self, n: u64) -> u64 {
        self.with(|r| r.random_range(0..n.max(1)))
    }

    /// `bytes` random bytes as lowercase hex.
    pub fn hex(&self, bytes: usize) -> String {
        let mut buf = vec![0u8; bytes];
        self.with(|r| r.fill_bytes(&mut buf));
        hex::encode(buf)
    }
}

/// Unix seconds → RFC 3339 (UTC), as LiteLLM shows `expires`.
pub fn rfc3339(secs: u64) -> String {
    let rem = secs % 86_400;
    let (y, m, d) = meridian_replication::crdt::civil_from_days(secs / 86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_draws() {
        let a = SeededRng::from_seed(7);
        let b = SeededRng::from_seed(7);
        assert_eq!(a.hex(16), b.hex(16));
        assert_eq!(a.below(10), b.below(10));
    }

    #[test]
    fn skew_moves_time_both_ways() {
        struct Fixed;
        impl Clock for Fixed {
            fn since_epoch(&self) -> Duration {
                Duration::from_secs(100)
            }
        }
        let offset = |ms| std::sync::Arc::new(std::sync::atomic::AtomicI64::new(ms));
        let ahead = SkewedClock {
            inner: Fixed,
            offset_ms: offset(1500),
        };
        let behind = SkewedClock {
            inner: Fixed,
            offset_ms: offset(-1500),
        };
        assert_eq!(ahead.since_epoch(), Duration::from_millis(101_500));
        assert_eq!(behind.since_epoch(), Duration::from_millis(98_500));
        behind
            .offset_ms
            .store(2500, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            behind.since_epoch(),
            Duration::from_millis(102_500),
            "jumps"
        );
    }
}
