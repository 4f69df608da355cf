//! Rate limits of what sidewatch sends the API server, on the monotonic clock.

use std::time::{Duration, Instant};

/// Now on the runtime's clock, as a `std` instant: the monotonic clock in production, and the
/// virtual one under a paused-time test (`tokio::time::pause`), so that the in-process tests run
/// minutes of backoff, cooldown and rate limit in milliseconds. `std::time::Instant::now()` here
/// would not move while the test's timers jump, and every deadline would be in the past.
pub(super) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The gate's rate limit for anything but a turn to not ready.
const GATE_BURST: f64 = 5.0;
const GATE_REFILL: Duration = Duration::from_secs(1);
/// A failed gate patch is retried after this, doubling up to `GATE_RETRY_MAX`: the gate must not
/// stay stale when the API server failed just that one patch.
const GATE_RETRY_MIN: Duration = Duration::from_millis(500);
const GATE_RETRY_MAX: Duration = Duration::from_secs(30);

/// A token bucket: `burst` tokens, one more every `refill`. On the monotonic clock, so a jump of
/// the wall clock neither empties nor fills it.
#[derive(Debug)]
pub(super) struct Bucket {
    burst: f64,
    refill: Duration,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    pub(super) fn new(burst: f64, refill: Duration, now: Instant) -> Self {
        Self {
            burst,
            refill,
            tokens: burst,
            refilled: now,
        }
    }

    fn top_up(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = self.refilled.max(now);
        self.tokens = (self.tokens + elapsed / self.refill.as_secs_f64()).min(self.burst);
    }

    /// Takes a token when there is one (to the float's noise: see `next_token`).
    pub(super) fn take(&mut self, now: Instant) -> bool {
        self.top_up(now);
        if self.tokens < 1.0 - 1e-9 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    /// When the next token is there, rounded up to the microsecond. Truncated (as
    /// `Duration::mul_f64` does), it could fall a hair short of a whole token, and a caller woken
    /// then would find none and be woken at once again, for ever on a clock that has not moved
    /// in between (a paused test's, or a coarse one).
    pub(super) fn next_token(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        let micros = (self.refill.as_secs_f64() * missing * 1e6).ceil();
        self.refilled + Duration::from_micros(micros as u64)
    }
}

/// When the readiness gate may be patched. A turn to not ready goes at once: that is what keeps
/// requests away from a failing app. Anything else (back to ready, other reasons, a relist)
/// waits for a token, so a flapping app moves the pod in and out of its endpoints a few times a
/// second at most, not at every probe. After a failed patch, backoff.
#[derive(Debug)]
pub(super) struct GateLimit {
    bucket: Bucket,
    retry: backon::ExponentialBackoff,
    pub(super) retry_at: Option<Instant>,
}

impl GateLimit {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            bucket: Bucket::new(GATE_BURST, GATE_REFILL, now),
            retry: gate_backoff(),
            retry_at: None,
        }
    }

    /// `Ok` to patch now, or when to try again.
    pub(super) fn may_patch(&mut self, turning_unready: bool, now: Instant) -> Result<(), Instant> {
        if let Some(at) = self.retry_at.filter(|at| now < *at) {
            return Err(at);
        }
        if self.bucket.take(now) || turning_unready {
            return Ok(());
        }
        Err(self.bucket.next_token())
    }

    pub(super) fn succeeded(&mut self) {
        self.retry = gate_backoff();
        self.retry_at = None;
    }

    pub(super) fn failed(&mut self, now: Instant) {
        self.retry_at = Some(now + self.retry.next().unwrap_or(GATE_RETRY_MAX));
    }
}

/// Doubling from `GATE_RETRY_MIN` to `GATE_RETRY_MAX`, for ever. No jitter: one pod's own
/// patches, not a crowd's.
fn gate_backoff() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(GATE_RETRY_MIN)
        .with_max_delay(GATE_RETRY_MAX)
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_bursts_then_gives_one_per_refill_period() {
        const REFILL: Duration = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut l = Bucket::new(5.0, REFILL, t0);
        for i in 0..5 {
            assert!(l.take(t0), "event {i} of the burst");
        }
        assert!(!l.take(t0));
        assert_eq!(l.next_token(), t0 + REFILL);
        assert!(!l.take(t0 + REFILL / 2));
        assert_eq!(l.next_token(), t0 + REFILL);
        assert!(l.take(t0 + REFILL));
        assert!(!l.take(t0 + REFILL));
        // A long quiet time refills the burst, no more.
        let later = t0 + REFILL * 100;
        for _ in 0..5 {
            assert!(l.take(later));
        }
        assert!(!l.take(later));
    }

    #[test]
    fn a_token_is_there_at_the_moment_next_token_says() {
        // Irregular takes leave fractions of a token that a truncated wait fell short of: the
        // publisher, woken then, found none and was woken again at once, for ever on a clock
        // that did not move (the paused-time test of a flapping app caught it).
        let t0 = Instant::now();
        let mut b = Bucket::new(5.0, Duration::from_secs(10), t0);
        let mut now = t0;
        for i in 0u64..2000 {
            while b.take(now) {}
            now = b.next_token();
            assert!(b.take(now), "take {i}");
            now += Duration::from_nanos(i * 7919 % 3_000_000_000);
        }
    }

    #[test]
    fn the_gate_turns_unready_at_once_and_the_rest_waits_for_tokens() {
        let t0 = Instant::now();
        let mut g = GateLimit::new(t0);
        for _ in 0..5 {
            assert_eq!(g.may_patch(false, t0), Ok(()));
        }
        assert_eq!(g.may_patch(false, t0), Err(t0 + GATE_REFILL));
        assert_eq!(g.may_patch(true, t0), Ok(()), "not ready never waits");
        let later = t0 + GATE_REFILL;
        assert_eq!(g.may_patch(false, later), Ok(()));
        // A failure backs off, doubling, whatever the tokens say.
        g.failed(later);
        assert_eq!(g.may_patch(true, later), Err(later + GATE_RETRY_MIN));
        let again = later + GATE_RETRY_MIN;
        g.failed(again);
        assert_eq!(g.retry_at, Some(again + GATE_RETRY_MIN * 2));
        g.succeeded();
        assert_eq!(g.may_patch(true, again), Ok(()));
    }
}
