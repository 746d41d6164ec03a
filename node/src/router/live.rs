//! What a node has seen of each deployment: calls in flight, this minute's
//! requests, tokens and failures, recent latencies, cooldown, and totals for
//! the metrics endpoint. Kept per node, in memory: every node learns a
//! failing deployment from its own calls within `allowed_fails` requests, so
//! nothing here is worth a cross-node message.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Latencies kept per deployment for `latency-based-routing`.
const LATENCY_SAMPLES: usize = 10;

#[derive(Debug)]
pub struct Live {
    in_flight: AtomicU64,
    inner: Mutex<Inner>,
    pub totals: Totals,
}

/// Since start, for `/metrics`.
#[derive(Debug, Default)]
pub struct Totals {
    pub requests: AtomicU64,
    pub successes: AtomicU64,
    pub failures: AtomicU64,
    pub cooldowns: AtomicU64,
    /// Sum of successful calls' latency, microseconds.
    pub latency_us: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    /// The minute (since the router's epoch) the counts below are for.
    minute: u64,
    requests: u64,
    tokens: u64,
    failures: u32,
    cooldown_until: Option<Instant>,
    /// Why it is cooling down (for `/health` and logs).
    cooldown_reason: Option<String>,
    /// Left out by a failed background health check: until when, and why.
    unhealthy: Option<(Instant, String)>,
    latencies: VecDeque<(Instant, Duration)>,
}

impl Inner {
    fn roll(&mut self, minute: u64) {
        if self.minute != minute {
            self.minute = minute;
            self.requests = 0;
            self.tokens = 0;
            self.failures = 0;
        }
    }
}

/// A snapshot for choosing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    pub in_flight: u64,
    pub requests: u64,
    pub tokens: u64,
    /// Average of recent latencies; `None` before the first success.
    pub latency: Option<Duration>,
}

impl Default for Live {
    fn default() -> Self {
        Self {
            in_flight: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
            totals: Totals::default(),
        }
    }
}

impl Live {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether it is left out of routing at `now` (cooling down after
    /// failures, or failing its health check), and until when.
    pub fn cooling_until(&self, now: Instant) -> Option<Instant> {
        let inner = self.lock();
        let forever = meridian_bugs::on(meridian_bugs::Bug::CooldownForever);
        let cooldown = inner.cooldown_until.filter(|until| *until > now || forever);
        let unhealthy = inner
            .unhealthy
            .as_ref()
            .map(|(u, _)| *u)
            .filter(|u| *u > now);
        cooldown.max(unhealthy)
    }

    /// Why it is left out of routing at `now`, if it is.
    pub fn cooldown_reason(&self, now: Instant) -> Option<String> {
        let inner = self.lock();
        match (&inner.unhealthy, inner.cooldown_until) {
            (Some((until, why)), _) if *until > now => Some(format!("health check failed: {why}")),
            (_, Some(until)) if until > now => inner.cooldown_reason.clone(),
            _ => None,
        }
    }

    pub fn seen(&self, minute: u64, now: Instant, ttl: Duration) -> Seen {
        let mut inner = self.lock();
        inner.roll(minute);
        while inner
            .latencies
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > ttl)
        {
            inner.latencies.pop_front();
        }
        let n = inner.latencies.len() as u32;
        let latency =
            (n > 0).then(|| inner.latencies.iter().map(|(_, d)| *d).sum::<Duration>() / n);
        Seen {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            requests: inner.requests,
            tokens: inner.tokens,
            latency,
        }
    }

    /// A call starts: counted now (so `usage-based-routing` and `rpm`
    /// filtering see it at once), in flight until the guard drops.
    pub fn start(self: &std::sync::Arc<Self>, minute: u64, tokens: u64) -> InFlight {
        {
            let mut inner = self.lock();
            inner.roll(minute);
            inner.requests = inner.requests.saturating_add(1);
            // Usage comes from upstream answers: never trusted not to overflow.
            inner.tokens = inner.tokens.saturating_add(tokens);
        }
        self.totals.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Corrects this minute's tokens once the real usage is known.
    pub fn correct_tokens(&self, minute: u64, estimated: u64, actual: u64) {
        let mut inner = self.lock();
        if inner.minute == minute {
            inner.tokens = inner
                .tokens
                .saturating_sub(estimated)
                .saturating_add(actual);
        }
    }

    pub fn succeeded(&self, now: Instant, latency: Duration) {
        let mut inner = self.lock();
        if inner.latencies.len() == LATENCY_SAMPLES {
            inner.latencies.pop_front();
        }
        inner.latencies.push_back((now, latency));
        self.totals.successes.fetch_add(1, Ordering::Relaxed);
        self.totals.latency_us.fetch_add(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Counts a failure; cools the deployment down for `cooldown` when
    /// `at_once`, or when this minute's failures exceed `allowed`. Returns
    /// whether this failure started a cooldown. A cooldown already running
    /// is extended, never shortened.
    pub fn failed(
        &self,
        minute: u64,
        now: Instant,
        allowed: u32,
        at_once: bool,
        cooldown: Option<Duration>,
        reason: &str,
    ) -> bool {
        self.totals.failures.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        inner.roll(minute);
        inner.failures = inner.failures.saturating_add(1);
        let Some(cooldown) = cooldown else {
            return false;
        };
        if !(at_once || inner.failures > allowed) {
            return false;
        }
        let until = now + cooldown;
        let started = inner.cooldown_until.is_none_or(|u| u <= now);
        if inner.cooldown_until.is_none_or(|u| u < until) {
            inner.cooldown_until = Some(until);
            inner.cooldown_reason = Some(reason.to_owned());
        }
        if started {
            self.totals.cooldowns.fetch_add(1, Ordering::Relaxed);
        }
        started
    }

    /// A health check found it down: left out of routing until `until` (the
    /// next check), without counting a request failure.
    pub fn unhealthy_until(&self, until: Instant, reason: &str) {
        self.lock().unhealthy = Some((until, reason.to_owned()));
    }

    /// A health check passed: routed again (a cooldown from request
    /// failures still runs its course).
    pub fn healthy(&self) {
        self.lock().unhealthy = None;
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Holds one call in flight on a deployment (for `least-busy`): a streamed
/// answer stays in flight until its stream ends.
#[derive(Debug)]
pub struct InFlight(std::sync::Arc<Live>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn cooldown_after_allowed_fails_or_at_once_and_never_shortened() {
        let live = Arc::new(Live::default());
        let now = Instant::now();
        let five = Some(Duration::from_secs(5));
        for _ in 0..3 {
            assert!(!live.failed(0, now, 3, false, five, "500"));
        }
        assert!(live.cooling_until(now).is_none());
        assert!(live.failed(0, now, 3, false, five, "500"));
        assert_eq!(live.cooling_until(now), Some(now + Duration::from_secs(5)));
        // A shorter cooldown does not cut a longer one short.
        assert!(!live.failed(0, now, 3, true, Some(Duration::from_secs(1)), "429"));
        assert_eq!(live.cooling_until(now), Some(now + Duration::from_secs(5)));
        assert!(live.cooling_until(now + Duration::from_secs(5)).is_none());
        // A new minute forgets the failures.
        let later = now + Duration::from_secs(61);
        assert!(!live.failed(1, later, 3, false, five, "500"));
        // At once, whatever the count; never without a cooldown time.
        assert!(live.failed(1, later, 3, true, five, "429"));
        let fresh = Live::default();
        assert!(!fresh.failed(0, now, 0, true, None, "429"));
        assert_eq!(live.totals.cooldowns.load(Ordering::Relaxed), 2);
        // A failed health check leaves it out until the next check passes.
        fresh.unhealthy_until(now + Duration::from_secs(300), "down");
        assert_eq!(
            fresh.cooling_until(now),
            Some(now + Duration::from_secs(300))
        );
        assert_eq!(
            fresh.cooldown_reason(now).as_deref(),
            Some("health check failed: down")
        );
        fresh.healthy();
        assert!(fresh.cooling_until(now).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn usage_latency_and_in_flight_are_seen() {
        let live = Arc::new(Live::default());
        let now = Instant::now();
        let ttl = Duration::from_secs(60);
        let guard = live.start(0, 100);
        let second = live.start(0, 50);
        live.correct_tokens(0, 50, 20);
        assert_eq!(live.seen(0, now, ttl).in_flight, 2);
        drop(guard);
        live.succeeded(now, Duration::from_millis(10));
        live.succeeded(now, Duration::from_millis(30));
        let seen = live.seen(0, now, ttl);
        assert_eq!(
            (seen.in_flight, seen.requests, seen.tokens, seen.latency),
            (1, 2, 120, Some(Duration::from_millis(20)))
        );
        drop(second);
        // Old latencies expire; a new minute starts from zero.
        let seen = live.seen(1, now + Duration::from_secs(61), ttl);
        assert_eq!((seen.requests, seen.tokens, seen.latency), (0, 0, None));
    }
}
