//! [`RateLimitLayer`] and [`RateLimitService`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::request::Parts;
use http::{HeaderMap, HeaderName, Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

use super::{Quota, RateLimiter};
use crate::response::{
    for_protocol, is_grpc, store_unavailable, wrap, BoxResponseFuture, ErrorBody, ResponseBody,
};
use crate::store::StateStore;
use crate::RegisteredClaims;

type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// Who a request counts against.
#[derive(Clone)]
enum KeySource {
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
    fn key(&self, parts: &Parts) -> Option<String> {
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
                from_header.or_else(|| {
                    parts
                        .extensions
                        .get::<SocketAddr>()
                        .map(|addr| client_key(addr.ip()))
                })
            }
        }
    }
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

/// Adds the rate-limit headers of one limiter without replacing another's: with a global
/// and a per-route limiter the client sees both policies.
fn add_headers(target: &mut HeaderMap, headers: HeaderMap) {
    let mut name = None;
    for (next, value) in headers {
        name = next.or(name);
        if let Some(name) = &name {
            if name == http::header::RETRY_AFTER {
                target.insert(name.clone(), value);
            } else {
                target.append(name.clone(), value);
            }
        }
    }
}

/// Limits requests per caller with a quota shared by every instance on one store.
///
/// The caller is, by default, the JWT subject ([`RegisteredClaims`] in the extensions),
/// else the last address in the [trusted header](Self::trusted_header) your proxy sets,
/// else a [`SocketAddr`] in the extensions (hyper users insert it; with axum, use
/// [`key_fn`](Self::key_fn) to read `ConnectInfo`). IPv6 addresses count per /64. A
/// request with no key is not limited.
/// See the [module docs](super).
#[derive(Debug, Clone)]
pub struct RateLimitLayer<S> {
    limiter: RateLimiter<S>,
    key: KeySource,
    fail_closed: bool,
}

impl<S: StateStore> RateLimitLayer<S> {
    /// A layer limiting every caller to `quota`; fails open when the store is down.
    pub fn new(store: S, quota: Quota) -> Self {
        Self::from_limiter(RateLimiter::new(store, quota))
    }

    /// A layer around a configured [`RateLimiter`] (prefix, policy name).
    pub fn from_limiter(limiter: RateLimiter<S>) -> Self {
        Self {
            limiter,
            key: KeySource::Default {
                trusted_header: None,
            },
            fail_closed: false,
        }
    }

    /// Takes the client address from this header when no JWT claims are present (e.g.
    /// `X-Forwarded-For` or `X-Real-IP`), using its last entry. Only set it behind a proxy
    /// that sets or appends it: a client can send any value.
    #[must_use]
    pub fn trusted_header(mut self, name: HeaderName) -> Self {
        self.key = KeySource::Default {
            trusted_header: Some(name),
        };
        self
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
    pub fn key_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.key = KeySource::Custom(Arc::new(f));
        self
    }

    /// Answers `503` when the store cannot be reached, instead of letting requests
    /// through (the default, with a warning per request: a limiter should not take the
    /// service down with it).
    #[must_use]
    pub fn fail_closed(mut self) -> Self {
        self.fail_closed = true;
        self
    }
}

impl<S: StateStore, I> Layer<I> for RateLimitLayer<S> {
    type Service = RateLimitService<S, I>;

    fn layer(&self, inner: I) -> Self::Service {
        RateLimitService {
            inner,
            layer: Arc::new(self.clone()),
        }
    }
}

/// The service built by [`RateLimitLayer`]. The inner service must be `Clone`.
#[derive(Debug, Clone)]
pub struct RateLimitService<S, I> {
    inner: I,
    // Shared, so that a request copies one pointer rather than the configuration.
    layer: Arc<RateLimitLayer<S>>,
}

impl<S, I> RateLimitService<S, I> {
    /// The inner service.
    pub fn get_ref(&self) -> &I {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut I {
        &mut self.inner
    }

    /// Consumes `self`, returning the inner service.
    pub fn into_inner(self) -> I {
        self.inner
    }
}

/// Response future of [`RateLimitService`]: the store check, then the inner service.
pub type ResponseFuture<B, E> = BoxResponseFuture<B, E>;

impl<S, I, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimitService<S, I>
where
    S: StateStore,
    I: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    I::Future: Send + 'static,
    I::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = I::Error;
    type Future = ResponseFuture<ResBody, I::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (parts, body) = req.into_parts();
        let key = self.layer.key.key(&parts);
        let grpc = is_grpc(&parts.headers);
        let req = Request::from_parts(parts, body);
        let layer = self.layer.clone();
        BoxResponseFuture::new(async move {
            let Some(key) = key else {
                return inner.call(req).await.map(wrap);
            };
            let decision = match layer.limiter.check(&key).await {
                Ok(decision) => decision,
                Err(error) if layer.fail_closed => {
                    crate::metrics::rate_limit(crate::metrics::RateLimit::StoreError);
                    tracing::warn!(%error, "rate limit store failed; answering 503 (fail closed)");
                    return Ok(for_protocol(
                        grpc,
                        store_unavailable(Duration::from_secs(1)),
                    ));
                }
                Err(error) => {
                    crate::metrics::rate_limit(crate::metrics::RateLimit::StoreError);
                    tracing::warn!(%error, "rate limit store failed; request let through unlimited (fail open)");
                    return inner.call(req).await.map(wrap);
                }
            };
            if !decision.allowed() {
                crate::metrics::rate_limit(crate::metrics::RateLimit::Limited);
                let mut res = ErrorBody::new(
                    "rate_limited",
                    "too many requests; retry after the time in Retry-After",
                )
                .into_response(StatusCode::TOO_MANY_REQUESTS);
                add_headers(res.headers_mut(), decision.headers());
                return Ok(for_protocol(grpc, res));
            }
            crate::metrics::rate_limit(crate::metrics::RateLimit::Allowed);
            let mut res = inner.call(req).await?;
            add_headers(res.headers_mut(), decision.headers());
            Ok(wrap(res))
        })
    }
}
