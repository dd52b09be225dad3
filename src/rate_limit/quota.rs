//! [`Quota`]: how many requests per period, and how many at once.

use std::time::Duration;

use crate::store::{Gcra, MAX_TTL};
use crate::ConfigError;

/// A rate: `count` requests per `period`, of which up to `burst` may come at once
/// (default: `count`). Spent quota comes back steadily, one request every
/// `period / count`.
///
/// The limit holds to the nanosecond: over any stretch of time `t`, at most
/// `burst + count × t / period` requests of one caller are allowed, on every backend. So
/// `Quota::per_second(600)` lets through 600 requests a second after its burst, and
/// `Quota::per_second(5000)` one every 200 µs.
///
/// A quota that cannot be kept is refused when it is built, with a
/// [`ConfigError`] naming the setting: a zero count, period or burst; more than one
/// request per microsecond (the resolution of the Redis clock); a burst that takes longer
/// than [`MAX_TTL`] to refill.
///
/// ```
/// use std::time::Duration;
/// use tower_stateless::rate_limit::Quota;
///
/// # fn main() -> Result<(), tower_stateless::ConfigError> {
/// let api = Quota::per_minute(600)?.burst(20)?;
/// assert_eq!(api.count(), 600);
/// assert_eq!(api.burst_size(), 20);
///
/// let refused = Quota::new(0, Duration::from_secs(1)).unwrap_err();
/// assert_eq!(refused.setting(), "count");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    count: u32,
    period: Duration,
    burst: u32,
    /// `period / count`, rounded up to the nanosecond: never more than the quota.
    interval: Duration,
}

impl Quota {
    /// `count` requests per `period`, with a burst of `count`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for setting `count` when it is zero or more than one request per
    /// microsecond of the period, and for `period` when it is zero or longer than
    /// [`MAX_TTL`].
    pub fn new(count: u32, period: Duration) -> Result<Self, ConfigError> {
        if count == 0 {
            return Err(ConfigError::new("count", "must be at least 1"));
        }
        if period.is_zero() {
            return Err(ConfigError::new("period", "must be longer than zero"));
        }
        if period > MAX_TTL {
            return Err(ConfigError::new(
                "period",
                "must be at most store::MAX_TTL (100 years)",
            ));
        }
        if period.as_nanos() < u128::from(count) * 1000 {
            return Err(ConfigError::new(
                "count",
                format!(
                    "{count} per {period:?} is more than one request per microsecond, \
                     finer than the store's clock"
                ),
            ));
        }
        let nanos = period.as_nanos().div_ceil(u128::from(count));
        let interval = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        Self {
            count,
            period,
            burst: count,
            interval,
        }
        .checked("period")
    }

    /// `count` requests per second.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new): `count` is zero or above 1,000,000.
    pub fn per_second(count: u32) -> Result<Self, ConfigError> {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` requests per minute.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new): `count` is zero.
    pub fn per_minute(count: u32) -> Result<Self, ConfigError> {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` requests per hour.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new): `count` is zero.
    pub fn per_hour(count: u32) -> Result<Self, ConfigError> {
        Self::new(count, Duration::from_secs(3600))
    }

    /// How many requests may come at once (default: the count).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] for setting `burst` when it is zero, or when refilling it
    /// (`burst × period / count`) would take longer than [`MAX_TTL`].
    pub fn burst(self, burst: u32) -> Result<Self, ConfigError> {
        if burst == 0 {
            return Err(ConfigError::new("burst", "must be at least 1"));
        }
        Self { burst, ..self }.checked("burst")
    }

    /// Refuses a quota whose whole burst takes longer than [`MAX_TTL`] to refill: the store
    /// keeps its state that long.
    fn checked(self, setting: &'static str) -> Result<Self, ConfigError> {
        if self.interval.as_nanos() * u128::from(self.burst) > MAX_TTL.as_nanos() {
            return Err(ConfigError::new(
                setting,
                "refilling the burst (burst × period / count) must take at most \
                 store::MAX_TTL (100 years)",
            ));
        }
        Ok(self)
    }

    /// Requests per period.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Requests that may come at once.
    pub fn burst_size(&self) -> u32 {
        self.burst
    }

    pub(crate) fn gcra(&self) -> Gcra {
        Gcra::new(self.interval, self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_are_kept_to_the_nanosecond() {
        let q = Quota::per_second(600).unwrap();
        assert_eq!(q.gcra().emission_interval, Duration::from_nanos(1_666_667));
        let q = Quota::per_second(5000).unwrap();
        assert_eq!(q.gcra().emission_interval, Duration::from_micros(200));
        assert_eq!(q.count(), 5000);
        let g = Quota::per_minute(600).unwrap().burst(20).unwrap().gcra();
        assert_eq!(g.emission_interval, Duration::from_millis(100));
        assert_eq!(g.burst, 20);
        // One per microsecond is the finest.
        assert!(Quota::per_second(1_000_000).is_ok());
    }

    #[test]
    fn quotas_that_cannot_be_kept_are_refused() {
        let setting = |r: Result<Quota, ConfigError>| r.map(|_| ()).unwrap_err().setting();
        assert_eq!(setting(Quota::per_second(0)), "count");
        assert_eq!(setting(Quota::new(1, Duration::ZERO)), "period");
        assert_eq!(setting(Quota::new(0, Duration::ZERO)), "count");
        assert_eq!(setting(Quota::per_second(1_000_001)), "count");
        assert_eq!(setting(Quota::per_second(u32::MAX)), "count");
        assert_eq!(setting(Quota::new(1, Duration::from_nanos(999))), "count");
        assert_eq!(setting(Quota::new(1, Duration::MAX)), "period");
        assert_eq!(
            setting(Quota::new(1, MAX_TTL + Duration::from_secs(1))),
            "period"
        );
        assert!(Quota::new(1, MAX_TTL).is_ok());
        let hourly = Quota::per_hour(1).unwrap();
        assert_eq!(setting(hourly.burst(0)), "burst");
        assert_eq!(setting(hourly.burst(u32::MAX)), "burst");
        assert!(hourly.burst(100).is_ok());
        assert!(Quota::per_second(2).unwrap().burst(u32::MAX).is_ok());
    }
}
