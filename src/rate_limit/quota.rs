//! [`Quota`]: how many requests per period, and how many at once.

use std::time::Duration;

use crate::store::Gcra;

/// A rate: `count` requests per `period`, of which up to `burst` may come at once
/// (default: `count`). Spent quota comes back steadily, one request every
/// `period / count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    count: u32,
    period: Duration,
    burst: u32,
}

impl Quota {
    /// `count` requests per `period`. Both are raised to a minimum of 1 (request, ms), and
    /// the count is capped at one request per millisecond of the period (the store keeps
    /// time in milliseconds), so that the `RateLimit-Policy` header tells the truth.
    pub fn new(count: u32, period: Duration) -> Self {
        let period = period.max(Duration::from_millis(1));
        let per_ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
        let count = count.clamp(1, per_ms);
        Self {
            count,
            period,
            burst: count,
        }
    }

    /// `count` requests per second.
    pub fn per_second(count: u32) -> Self {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` requests per minute.
    pub fn per_minute(count: u32) -> Self {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` requests per hour.
    pub fn per_hour(count: u32) -> Self {
        Self::new(count, Duration::from_secs(3600))
    }

    /// How many requests may come at once (default: the count). At least 1.
    #[must_use]
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst.max(1);
        self
    }

    /// Requests per period.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    pub(crate) fn gcra(&self) -> Gcra {
        Gcra::new(self.period / self.count, self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_finer_than_a_millisecond_are_capped() {
        assert_eq!(Quota::per_second(2000).count(), 1000);
        assert_eq!(Quota::per_second(10).count(), 10);
        assert_eq!(Quota::new(0, Duration::ZERO).count(), 1);
        let g = Quota::per_minute(600).burst(20).gcra();
        assert_eq!(g.emission_interval, Duration::from_millis(100));
        assert_eq!(g.burst, 20);
    }
}
