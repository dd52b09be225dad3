//! The Generic Cell Rate Algorithm as one store step: [`Gcra`] in, [`GcraOutcome`] out.

use std::time::Duration;

/// One rate-limit step of the Generic Cell Rate Algorithm (GCRA), for
/// [`StateStore::gcra`](super::StateStore::gcra).
///
/// A key holds one number, the *theoretical arrival time* (TAT) of the next request. A
/// steady client may send one request per `emission_interval`; up to `burst` requests may
/// arrive at once. So "100 per minute, bursts of 100" is an emission interval of 600 ms and
/// a burst of 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Gcra {
    /// Time one unit of quota takes to come back (period ÷ quota). At least 1 ms.
    pub emission_interval: Duration,
    /// How many units may be spent at once. At least 1.
    pub burst: u32,
    /// Units this request spends (usually 1). At least 1.
    pub cost: u32,
}

impl Gcra {
    /// A step of cost 1. The interval is raised to 1 ms and the burst to 1 if lower.
    pub fn new(emission_interval: Duration, burst: u32) -> Self {
        Self {
            emission_interval: emission_interval.max(Duration::from_millis(1)),
            burst: burst.max(1),
            cost: 1,
        }
    }

    /// Sets the units this request spends (raised to 1 if 0).
    #[must_use]
    pub fn cost(mut self, cost: u32) -> Self {
        self.cost = cost.max(1);
        self
    }

    /// The parameters in whole milliseconds and units, each at least 1, as the backends
    /// compute with them.
    pub(crate) fn millis(&self) -> (u64, u64, u64) {
        let interval = u64::try_from(self.emission_interval.as_millis())
            .unwrap_or(u64::MAX / 4)
            .clamp(1, u64::MAX / 4);
        (
            interval,
            u64::from(self.burst.max(1)),
            u64::from(self.cost.max(1)),
        )
    }
}

/// The decision of one [`Gcra`] step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcraOutcome {
    /// Whether the request may proceed (and its cost was spent).
    pub allowed: bool,
    /// Units that could still be spent at once right now.
    pub remaining: u32,
    /// When denied, how long until the request would be allowed; zero when allowed.
    pub retry_after: Duration,
    /// How long until the whole burst is available again.
    pub reset_after: Duration,
}

/// One GCRA step in milliseconds: the new TAT to store (when allowed) and the outcome. The
/// Redis script computes exactly the same.
pub(crate) fn step(tat: Option<u64>, now: u64, params: &Gcra) -> (Option<u64>, GcraOutcome) {
    let (interval, burst, cost) = params.millis();
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat.saturating_add(interval.saturating_mul(cost));
    let allow_at = new_tat.saturating_sub(interval.saturating_mul(burst));
    if now < allow_at {
        let outcome = GcraOutcome {
            allowed: false,
            remaining: 0,
            retry_after: Duration::from_millis(allow_at - now),
            reset_after: Duration::from_millis(tat - now),
        };
        return (None, outcome);
    }
    let remaining = u32::try_from((now - allow_at) / interval).unwrap_or(u32::MAX);
    let outcome = GcraOutcome {
        allowed: true,
        remaining,
        retry_after: Duration::ZERO,
        reset_after: Duration::from_millis(new_tat - now),
    };
    (Some(new_tat), outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let p = Gcra::new(Duration::from_millis(100), 3);
        let mut tat = None;
        let mut now = 1_000_000;
        for expected_remaining in [2, 1, 0] {
            let (next, out) = step(tat, now, &p);
            assert!(out.allowed);
            assert_eq!(out.remaining, expected_remaining);
            tat = next;
        }
        let (next, out) = step(tat, now, &p);
        assert!(!out.allowed && next.is_none());
        assert_eq!(out.retry_after, Duration::from_millis(100));
        assert_eq!(out.reset_after, Duration::from_millis(300));
        now += 100;
        let (next, out) = step(tat, now, &p);
        assert!(out.allowed);
        assert_eq!(out.remaining, 0);
        tat = next;
        // Idle for a long time: the full burst is back, not more.
        let (_, out) = step(tat, now + 10_000, &p);
        assert_eq!(out.remaining, 2);
        // A cost above the burst is never allowed.
        let (_, out) = step(None, now, &p.cost(4));
        assert!(!out.allowed);
    }
}
