//! The Generic Cell Rate Algorithm as one store step: [`Gcra`] in, [`GcraOutcome`] out.
//!
//! Time is kept in nanoseconds: an emission interval such as 1/600 s or 1/5000 s is not a
//! whole number of milliseconds, and rounding it to one let through up to 2.5 times the
//! quota.

use std::time::Duration;

use super::MAX_TTL;

/// The shortest emission interval a store keeps: one microsecond (the resolution of the
/// Redis clock). Finer rates are refused by [`Quota`](crate::rate_limit::Quota).
pub(crate) const MIN_INTERVAL: Duration = Duration::from_micros(1);

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// [`MAX_TTL`] in nanoseconds: the longest a burst may take to refill, and the furthest
/// ahead of the clock a stored state may lie.
pub(crate) const MAX_WINDOW_NANOS: u64 = MAX_TTL.as_secs() * NANOS_PER_SEC;

/// One rate-limit step of the Generic Cell Rate Algorithm (GCRA), for
/// [`StateStore::gcra`](super::StateStore::gcra).
///
/// A key holds one time, the *theoretical arrival time* (TAT) of the next request. A
/// steady client may send one request per `emission_interval`; up to `burst` requests may
/// arrive at once. So "100 per minute, bursts of 100" is an emission interval of 600 ms and
/// a burst of 100. Backends compute in nanoseconds, so any interval is kept exactly.
///
/// Backends bring out-of-range parameters into range before they use them: the interval
/// to at least 1 µs and at most [`MAX_TTL`], the burst to at least 1 and at most what
/// refills within [`MAX_TTL`], the cost to at least 1 (a cost above the burst is never
/// allowed). [`Quota`](crate::rate_limit::Quota) refuses such settings up front instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Gcra {
    /// Time one unit of quota takes to come back (period ÷ quota). At least 1 µs.
    pub emission_interval: Duration,
    /// How many units may be spent at once. At least 1.
    pub burst: u32,
    /// Units this request spends (usually 1). At least 1.
    pub cost: u32,
}

/// The parameters of a step as the backends compute with them: nanoseconds and units,
/// each in range, so that no product or sum below overflows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Params {
    pub(crate) interval: u64,
    pub(crate) burst: u64,
    pub(crate) cost: u64,
}

impl Gcra {
    /// A step of cost 1. The interval is brought into 1 µs ..= [`MAX_TTL`], and the burst
    /// raised to 1 if lower.
    pub fn new(emission_interval: Duration, burst: u32) -> Self {
        Self {
            emission_interval: emission_interval.clamp(MIN_INTERVAL, MAX_TTL),
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

    /// The parameters in nanoseconds and units, in range: `interval × (burst + 1)` is at
    /// most twice [`MAX_TTL`], so every time computed from them fits an `i64`.
    pub(crate) fn params(&self) -> Params {
        let min = u64::try_from(MIN_INTERVAL.as_nanos()).unwrap_or(1);
        let interval = u64::try_from(self.emission_interval.as_nanos())
            .unwrap_or(MAX_WINDOW_NANOS)
            .clamp(min, MAX_WINDOW_NANOS);
        let burst = u64::from(self.burst).clamp(1, MAX_WINDOW_NANOS / interval);
        // Any cost above the burst is refused alike; capping it keeps the sums in range.
        let cost = u64::from(self.cost).clamp(1, burst + 1);
        Params {
            interval,
            burst,
            cost,
        }
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

/// One GCRA step in nanoseconds since the Unix epoch: the new TAT to store (when allowed)
/// and the outcome. The Redis script computes exactly the same.
pub(crate) fn step(tat: Option<u64>, now: u64, params: Params) -> (Option<u64>, GcraOutcome) {
    let Params {
        interval,
        burst,
        cost,
    } = params;
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat.saturating_add(interval * cost);
    let allow_at = new_tat.saturating_sub(interval * burst);
    if now < allow_at {
        let outcome = GcraOutcome {
            allowed: false,
            remaining: 0,
            retry_after: Duration::from_nanos(allow_at - now),
            reset_after: Duration::from_nanos(tat - now),
        };
        return (None, outcome);
    }
    let remaining = u32::try_from((now - allow_at) / interval).unwrap_or(u32::MAX);
    let outcome = GcraOutcome {
        allowed: true,
        remaining,
        retry_after: Duration::ZERO,
        reset_after: Duration::from_nanos(new_tat - now),
    };
    (Some(new_tat), outcome)
}

/// The stored form of a TAT: `<seconds>.<nanoseconds, 9 digits>` since the Unix epoch. The
/// Redis script writes the same (its numbers are doubles, which cannot hold nanoseconds
/// since the epoch in one number). Versions that kept whole milliseconds read it as a time
/// in 1970, long past, rather than refusing every request during a rolling upgrade.
pub(crate) fn encode_tat(tat: u64) -> String {
    format!("{}.{:09}", tat / NANOS_PER_SEC, tat % NANOS_PER_SEC)
}

/// Reads a stored TAT (nanoseconds since the Unix epoch) written by [`encode_tat`], or a
/// plain integer of milliseconds as earlier versions stored it. A TAT further than
/// [`MAX_TTL`] ahead of `now` is corrupt: no step writes one.
pub(crate) fn decode_tat(value: &[u8], now: u64) -> Result<u64, &'static str> {
    let text = std::str::from_utf8(value).map_err(|_| "rate-limit state is not a number")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let tat = match text.split_once('.') {
        Some((secs, nanos)) if digits(secs) && digits(nanos) && nanos.len() == 9 => secs
            .parse::<u64>()
            .ok()
            .and_then(|s| s.checked_mul(NANOS_PER_SEC))
            .zip(nanos.parse::<u64>().ok())
            .and_then(|(s, n)| s.checked_add(n)),
        None if digits(text) => text
            .parse::<u64>()
            .ok()
            .and_then(|ms| ms.checked_mul(1_000_000)),
        _ => return Err("rate-limit state is not a number"),
    };
    tat.filter(|tat| tat.saturating_sub(now) <= MAX_WINDOW_NANOS)
        .ok_or("rate-limit state is out of range")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000 * NANOS_PER_SEC;

    #[test]
    fn burst_then_steady_rate() {
        let p = Gcra::new(Duration::from_millis(100), 3).params();
        let mut tat = None;
        let mut now = NOW;
        for expected_remaining in [2, 1, 0] {
            let (next, out) = step(tat, now, p);
            assert!(out.allowed);
            assert_eq!(out.remaining, expected_remaining);
            tat = next;
        }
        let (next, out) = step(tat, now, p);
        assert!(!out.allowed && next.is_none());
        assert_eq!(out.retry_after, Duration::from_millis(100));
        assert_eq!(out.reset_after, Duration::from_millis(300));
        now += 100_000_000;
        let (next, out) = step(tat, now, p);
        assert!(out.allowed);
        assert_eq!(out.remaining, 0);
        tat = next;
        // Idle for a long time: the full burst is back, not more.
        let (_, out) = step(tat, now + 10 * NANOS_PER_SEC, p);
        assert_eq!(out.remaining, 2);
        // A cost above the burst is never allowed.
        let (_, out) = step(
            None,
            now,
            Gcra::new(Duration::from_millis(100), 3).cost(4).params(),
        );
        assert!(!out.allowed);
    }

    /// 600 per second is an interval of 1.666… ms: kept to the nanosecond, a second of
    /// steady requests lets through 600 plus the burst, not 1000.
    #[test]
    fn sub_millisecond_intervals_are_kept() {
        let p = Gcra::new(Duration::from_secs(1) / 600, 2).params();
        assert_eq!(p.interval, 1_666_666);
        let p5000 = Gcra::new(Duration::from_secs(1) / 5000, 1).params();
        assert_eq!(p5000.interval, 200_000);
        // One request every 10 µs for a second: the burst, then one per interval.
        let mut tat = None;
        let mut allowed = 0;
        for i in 0..100_000 {
            let (next, out) = step(tat, NOW + i * 10_000, p);
            if out.allowed {
                allowed += 1;
                tat = next;
            }
        }
        assert_eq!(allowed, 2 + 599);
    }

    #[test]
    fn parameters_are_brought_into_range() {
        let tiny = Gcra::new(Duration::from_nanos(1), 0).params();
        assert_eq!((tiny.interval, tiny.burst, tiny.cost), (1_000, 1, 1));
        let huge = Gcra::new(Duration::MAX, u32::MAX).cost(u32::MAX).params();
        assert_eq!(huge.interval, MAX_WINDOW_NANOS);
        assert_eq!((huge.burst, huge.cost), (1, 2));
        let mut raw = Gcra::new(Duration::from_secs(3600), u32::MAX);
        raw.emission_interval = Duration::ZERO;
        let p = raw.params();
        assert!(p.interval >= 1_000 && p.interval.checked_mul(p.burst + 1).is_some());
        // The worst case stays far from overflow.
        let (_, out) = step(Some(NOW + MAX_WINDOW_NANOS), NOW, huge);
        assert!(!out.allowed);
    }

    #[test]
    fn stored_state_round_trips_and_old_millisecond_state_is_read() {
        let tat = NOW + 1_666_666;
        assert_eq!(encode_tat(tat), "1700000000.001666666");
        assert_eq!(decode_tat(encode_tat(tat).as_bytes(), NOW), Ok(tat));
        assert_eq!(encode_tat(5), "0.000000005");
        // Milliseconds, as stored before.
        assert_eq!(decode_tat(b"1700000000250", NOW), Ok(NOW + 250_000_000));
        for bad in [
            &b"x"[..],
            b"",
            b"1.5",
            b"-3",
            b"1700000000.12345678a",
            b"\xff",
            b" 1",
        ] {
            assert!(decode_tat(bad, NOW).is_err(), "{bad:?}");
        }
        // Beyond the range any step writes: corrupt, not a lockout for a century.
        assert!(decode_tat(b"99999999999999999999", NOW).is_err());
        assert!(decode_tat(b"9999999999.000000000", NOW).is_err());
    }
}
