//! Exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng;

/// Backoff state: `base * 2^attempt`, capped, with full jitter.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay to wait before retrying.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = exp.min(self.max);
        let millis = ceiling.as_millis().max(1) as u64;
        // Full jitter, but never below a quarter of the ceiling so retries spread
        // without hammering.
        let low = millis / 4;
        Duration::from_millis(rand::rng().random_range(low..=millis))
    }

    /// Number of delays handed out so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Start over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut ceiling = 100u64;
        for _ in 0..10 {
            let d = b.next_delay().as_millis() as u64;
            assert!(d <= ceiling.min(2000), "{d} > {ceiling}");
            assert!(d >= ceiling.min(2000) / 4, "{d} < quarter of {ceiling}");
            ceiling *= 2;
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
