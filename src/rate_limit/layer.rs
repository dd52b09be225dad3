//! [`RateLimitLayer`] and its builder.

use std::sync::Arc;

use http::request::Parts;
use http::HeaderName;
use tower_layer::Layer;

use super::key::{KeySource, UnknownCallers};
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
    /// Requests the default key could not place; one count for every service of the layer.
    pub(crate) unknown_callers: Arc<UnknownCallers>,
}

/// Limits requests per caller with a quota shared by every instance on one store.
///
/// The caller is, by default, the first of:
///
/// 1. the JWT subject: [`RegisteredClaims`](crate::RegisteredClaims) in the extensions, as
///    [`JwtAuthLayer`](crate::jwt::JwtAuthLayer) inserts them (place this layer inside it);
/// 2. the last address in the [trusted header](Self::trusted_header) your proxy sets, if
///    you set one;
/// 3. the peer address, from the request extensions: a
///    [`SocketAddr`](std::net::SocketAddr), else (with this crate's `axum` feature) axum's
///    `ConnectInfo<SocketAddr>`. Neither hyper nor axum puts it there unasked:
///    - **axum** (0.8) inserts `ConnectInfo<SocketAddr>` when the app is served with
///      `axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())`;
///      `axum::serve(listener, app)` inserts no address. Enable the `axum` feature.
///    - **hyper**: insert the address `TcpListener::accept` returned into every request of
///      that connection, as below.
///
/// IPv6 addresses count per /64. [`key_fn`](Self::key_fn) replaces all of this. See the
/// [module docs](super).
///
/// # A request with no key passes, with a warning
///
/// When the default key finds none of the three (no claims, no trusted header, no peer
/// address: typically an axum app served without connect info, or without the `axum`
/// feature, or a hyper service that does not insert the address), the request **passes
/// unlimited**, without `RateLimit` headers, and the layer logs a `WARN` that says how to
/// fix it: at the first such request, then at most once a minute per layer, with the
/// number let through since; with the feature `metrics`, each such request counts in
/// `tower_stateless_rate_limit_total{result="no_key"}` (see the crate docs' metrics table),
/// so an alert can catch it. It is a setup mistake, not a store outage, so
/// [`on_store_failure`](Self::on_store_failure) does not apply: refusing would take every
/// public route down over a missing line of setup. Where no request may pass uncounted,
/// key with [`key_fn`](Self::key_fn) and give such requests a key of their own (one bucket
/// for all of them). A `key_fn` that answers `None` exempts the request on purpose, and
/// nothing is logged.
///
/// With hyper:
///
/// ```no_run
/// use std::convert::Infallible;
/// use hyper::body::Incoming;
/// use hyper::{Request, Response};
/// use hyper_util::rt::TokioIo;
/// use hyper_util::service::TowerToHyperService;
/// use tower::ServiceBuilder;
/// use tower_stateless::rate_limit::{Quota, RateLimitLayer};
/// use tower_stateless::store::MemoryStore;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let limit = RateLimitLayer::new(MemoryStore::new(), Quota::per_minute(60)?);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
/// loop {
///     let (stream, peer) = listener.accept().await?;
///     let service = ServiceBuilder::new()
///         // The peer address the rate limit reads.
///         .map_request(move |mut req: Request<Incoming>| {
///             req.extensions_mut().insert(peer);
///             req
///         })
///         .layer(limit.clone())
///         .service_fn(|_| async { Ok::<_, Infallible>(Response::new(String::from("ok"))) });
///     let connection = hyper::server::conn::http1::Builder::new()
///         .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
///     tokio::spawn(connection);
/// }
/// # }
/// ```
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
                unknown_callers: Arc::new(UnknownCallers::new()),
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

    /// Keys requests with `f` instead of the default; `None` leaves a request unlimited
    /// (on purpose: nothing is logged).
    ///
    /// ```
    /// use tower_stateless::rate_limit::{Quota, RateLimitLayer};
    /// use tower_stateless::store::MemoryStore;
    ///
    /// # fn main() -> Result<(), tower_stateless::ConfigError> {
    /// // One bucket per API key; requests without one are not limited by this layer.
    /// let layer = RateLimitLayer::new(MemoryStore::new(), Quota::per_minute(60)?).key_fn(|parts| {
    ///     let key = parts.headers.get("x-api-key")?.to_str().ok()?;
    ///     Some(format!("api-key:{key}"))
    /// });
    /// # Ok(())
    /// # }
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
