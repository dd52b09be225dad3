//! Who a request counts against: the JWT subject, a trusted header's address, the peer
//! address, or the application's own key function.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::request::Parts;
use http::HeaderName;

use crate::RegisteredClaims;

pub(crate) type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// Who a request counts against.
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

impl KeySource {
    pub(crate) fn key(&self, parts: &Parts) -> Option<String> {
        match self {
            KeySource::Custom(f) => f(parts),
            KeySource::Default { trusted_header } => {
                if let Some(claims) = parts.extensions.get::<RegisteredClaims>() {
                    return Some(format!("sub:{}", claims.sub));
                }
                let from_header = trusted_header.as_ref().and_then(|name| {
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
        }
    }
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
