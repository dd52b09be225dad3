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
    /// `count` requests per `period`. Both are raised to a minimum of 1 (request, ms).
    pub fn new(count: u32, period: Duration) -> Self {
        let count = count.max(1);
        Self {
            count,
            period: period.max(Duration::from_millis(1)),
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
