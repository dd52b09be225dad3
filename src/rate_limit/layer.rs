//! [`RateLimitLayer`] and its builder.

use std::sync::Arc;

use http::request::Parts;
use http::HeaderName;
use tower_layer::Layer;

use super::key::KeySource;
use super::service::RateLimitService;
use super::{Quota, RateLimiter};
use crate::store::StateStore;
use crate::StoreFailure;

/// The layer's configuration, held once in an `Arc` that every service shares.
#[derive(Debug, Clone)]
pub(crate) struct Config<St> {
    pub(crate) limiter: RateLimiter<St>,
    pub(crate) key: KeySource,
    pub(crate) on_store_failure: StoreFailure,
}

/// Limits requests per caller with a quota shared by every instance on one store.
///
/// The caller is, by default, the JWT subject ([`RegisteredClaims`](crate::RegisteredClaims)
/// in the extensions), else the last address in the [trusted header](Self::trusted_header)
/// your proxy sets, else a [`SocketAddr`](std::net::SocketAddr) in the extensions (hyper
/// users insert it; with axum, use [`key_fn`](Self::key_fn) to read `ConnectInfo`). IPv6
/// addresses count per /64. A request with no key is not limited.
/// See the [module docs](super).
#[derive(Debug, Clone)]
pub struct RateLimitLayer<St> {
    config: Arc<Config<St>>,
}

impl<St: StateStore> RateLimitLayer<St> {
    /// A layer limiting every caller to `quota`; fails open when the store is down.
    pub fn new(store: St, quota: Quota) -> Self {
        Self::from_limiter(RateLimiter::new(store, quota))
    }

    /// A layer around a configured [`RateLimiter`] (key prefix, policy name).
    pub fn from_limiter(limiter: RateLimiter<St>) -> Self {
        Self {
            config: Arc::new(Config {
                limiter,
                key: KeySource::Default {
                    trusted_header: None,
                },
                on_store_failure: StoreFailure::open(),
            }),
        }
    }

    /// A builder step: the changed configuration replaces the shared one (the layer is
    /// configured before it makes services, so none holds the old one yet).
    fn with(mut self, f: impl FnOnce(&mut Config<St>)) -> Self {
        let mut config = Config::clone(&self.config);
        f(&mut config);
        self.config = Arc::new(config);
        self
    }

    /// Takes the client address from this header when no JWT claims are present (e.g.
    /// `X-Forwarded-For` or `X-Real-IP`), using its last entry. Only set it behind a proxy
    /// that sets or appends it: a client can send any value.
    #[must_use]
    pub fn trusted_header(self, name: HeaderName) -> Self {
        self.with(|c| {
            c.key = KeySource::Default {
                trusted_header: Some(name),
            }
        })
    }

    /// Keys requests with `f` instead of the default; `None` leaves a request unlimited.
    ///
    /// With axum, the peer address is in `ConnectInfo` (serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()`):
    ///
    /// ```ignore
    /// use axum::extract::ConnectInfo;
    /// let layer = RateLimitLayer::new(store, Quota::per_minute(60)).key_fn(|parts| {
    ///     let ConnectInfo(addr) = parts.extensions.get::<ConnectInfo<SocketAddr>>()?;
    ///     Some(format!("ip:{}", addr.ip()))
    /// });
    /// ```
    #[must_use]
    pub fn key_fn<F>(self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.with(|c| c.key = KeySource::Custom(Arc::new(f)))
    }

    /// What to do when the store is unavailable (default [`StoreFailure::open`]: the
    /// request passes unlimited, with a warning per request); see [`StoreFailure`], the
    /// one setting every store-backed layer shares. [`StoreFailure::closed`] answers `503`
    /// with `Retry-After` and the handler does not run.
    ///
    /// Open is the default here, unlike the other layers: a limit protects the service,
    /// and refusing every request while the store is down would turn a store outage into
    /// a full outage. A store that answers something unexpected is `500` either way.
    #[must_use]
    pub fn on_store_failure(self, on_store_failure: StoreFailure) -> Self {
        self.with(|c| c.on_store_failure = on_store_failure)
    }
}

impl<S, St: StateStore> Layer<S> for RateLimitLayer<St> {
    type Service = RateLimitService<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService::new(inner, Arc::clone(&self.config))
    }
}
