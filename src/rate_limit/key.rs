//! Who a request counts against: the JWT subject, a trusted header's address, the peer
//! address, or the application's own key function.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::request::Parts;
use http::HeaderName;

use crate::RegisteredClaims;

pub(crate) type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// Where a request's key comes from.
#[derive(Clone)]
pub(crate) enum KeySource {
    Default { trusted_header: Option<HeaderName> },
    Custom(KeyFn),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Default { trusted_header } => f
                .debug_struct("Default")
                .field("trusted_header", trusted_header)
                .finish(),
            KeySource::Custom(_) => f.write_str("Custom(<fn>)"),
        }
    }
}

/// Who a request counts against, as [`KeySource::key`] found it.
#[derive(Debug)]
pub(crate) enum Caller {
    /// The caller's bucket.
    Key(String),
    /// The key function answered `None`: not limited, on purpose.
    Exempt,
    /// The default key found no claims, no trusted header and no peer address.
    Unknown,
}

impl KeySource {
    pub(crate) fn key(&self, parts: &Parts) -> Caller {
        match self {
            KeySource::Custom(f) => f(parts).map_or(Caller::Exempt, Caller::Key),
            KeySource::Default { trusted_header } => {
                default_key(trusted_header.as_ref(), parts).map_or(Caller::Unknown, Caller::Key)
            }
        }
    }
}

/// The default key: the JWT subject, else the trusted header's last address, else the
/// peer address.
fn default_key(trusted_header: Option<&HeaderName>, parts: &Parts) -> Option<String> {
    if let Some(claims) = parts.extensions.get::<RegisteredClaims>() {
        return Some(format!("sub:{}", claims.sub));
    }
    let from_header = trusted_header.and_then(|name| {
        // A proxy appends the address it saw: the last entry is the one it vouches for.
        let value = parts.headers.get_all(name).iter().next_back()?;
        let last = value.to_str().ok()?.rsplit(',').next()?.trim();
        match last.parse::<IpAddr>() {
            Ok(ip) => Some(client_key(ip)),
            Err(_) => (!last.is_empty()).then(|| format!("ip:{last}")),
        }
    });
    from_header.or_else(|| peer_ip(parts).map(client_key))
}

/// The peer address: a bare [`SocketAddr`] in the extensions (what hyper users insert),
/// else, with the `axum` feature, axum's `ConnectInfo<SocketAddr>` (what
/// `into_make_service_with_connect_info::<SocketAddr>()` inserts).
fn peer_ip(parts: &Parts) -> Option<IpAddr> {
    if let Some(addr) = parts.extensions.get::<SocketAddr>() {
        return Some(addr.ip());
    }
    #[cfg(feature = "axum")]
    if let Some(info) = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
    {
        return Some(info.0.ip());
    }
    None
}

/// The bucket of a client address. An IPv6 client usually holds a whole /64 and could take
/// a fresh address per request, so IPv6 addresses count per /64.
fn client_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("ip:{v4}"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let s = v6.segments();
                format!("ip6:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The longest a layer stays quiet about requests it could not key, in milliseconds.
const UNKNOWN_CALLER_WARNING_INTERVAL_MS: u64 = 60_000;

/// Counts the requests the default key could not place, and says when to warn: at the
/// first, then at most once per [`UNKNOWN_CALLER_WARNING_INTERVAL_MS`]. A service that
/// inserts no peer address misses the key on every public request; a warning per request
/// would flood its logs.
#[derive(Debug)]
pub(crate) struct UnknownCallers {
    start: Instant,
    /// Milliseconds after `start` before which no warning is due.
    quiet_until: AtomicU64,
    /// Requests let through since the last warning.
    unwarned: AtomicU64,
}

impl UnknownCallers {
    pub(crate) fn new() -> Self {
        Self {
            start: Instant::now(),
            quiet_until: AtomicU64::new(0),
            unwarned: AtomicU64::new(0),
        }
    }

    /// Counts one request; `Some(n)` when a warning is due, `n` being the requests let
    /// through since the last warning, this one included.
    pub(crate) fn record(&self) -> Option<u64> {
        self.record_at(self.start.elapsed())
    }

    fn record_at(&self, since_start: Duration) -> Option<u64> {
        self.unwarned.fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(since_start.as_millis()).unwrap_or(u64::MAX);
        let quiet_until = self.quiet_until.load(Ordering::Relaxed);
        if now < quiet_until {
            return None;
        }
        let next = now.saturating_add(UNKNOWN_CALLER_WARNING_INTERVAL_MS);
        // Of the requests racing past the deadline, one warns.
        self.quiet_until
            .compare_exchange(quiet_until, next, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(self.unwarned.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_callers_warn_at_the_first_then_once_per_interval() {
        let unknown = UnknownCallers::new();
        let at = |secs: u64| unknown.record_at(Duration::from_secs(secs));
        assert_eq!(at(0), Some(1));
        assert_eq!(at(1), None);
        assert_eq!(at(59), None);
        assert_eq!(at(60), Some(3), "the two quiet ones and this one");
        assert_eq!(at(61), None);
        assert_eq!(at(500), Some(2));
        assert_eq!(at(500), None);
    }
}
