//! The token bucket behind a connection's rate limits (publishes, commands): a
//! pure decision on the time that passed, with its unit tests.

use tokio::time::Instant;

/// `burst` tokens at most, refilled at `rate` per second; each take costs one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenBucket {
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn full(burst: u32, now: Instant) -> Self {
        TokenBucket {
            tokens: f64::from(burst),
            refilled: now,
        }
    }

    /// Take a token at `now`; false when there is none (the bucket is unchanged
    /// but for the refill). A `rate` of 0 is unlimited.
    pub(crate) fn take(&mut self, now: Instant, rate: u32, burst: u32) -> bool {
        if rate == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.refilled);
        self.refilled = now;
        self.tokens = (self.tokens + elapsed.as_secs_f64() * f64::from(rate)).min(f64::from(burst));
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// How long a bucket at `rate` per second takes to gain one token.
    fn refill_time(rate: u32) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(rate))
    }

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(3, t0);
        assert!((0..3).all(|_| b.take(t0, 10, 3)));
        assert!(!b.take(t0, 10, 3), "burst spent");
        assert!(!b.take(t0 + refill_time(10) / 2, 10, 3));
        assert!(b.take(t0 + refill_time(10) * 2, 10, 3), "refilled");
        // Idle for long: no more than the burst.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| b.take(later, 10, 3)));
        assert!(!b.take(later, 10, 3));
    }

    #[test]
    fn rate_zero_is_unlimited() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(0, t0);
        assert!((0..1000).all(|_| b.take(t0, 0, 0)));
    }
}
