//! [`IdempotencyLayer`] and its configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, Uri};
use tower_layer::Layer;

use super::service::IdempotencyService;
use crate::store::StateStore;

type Predicate = Arc<dyn Fn(&Method, &Uri) -> bool + Send + Sync>;

/// Whether a request must carry a key.
#[derive(Clone)]
pub(crate) enum Required {
    Never,
    Always,
    If(Predicate),
}

impl fmt::Debug for Required {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Required::Never => f.write_str("Never"),
            Required::Always => f.write_str("Always"),
            Required::If(_) => f.write_str("If(<fn>)"),
        }
    }
}

/// Response headers that are never replayed, whatever is configured: they belong to the
/// original exchange, not to the result.
const NEVER_REPLAYED: &[&str] = &[
    "set-cookie",
    "date",
    "age",
    "retry-after",
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "connection",
    "transfer-encoding",
    "content-length",
];

/// Response headers that are part of the result itself: how to read the body, and a gRPC
/// answer's status when it came as a trailers-only response.
const ALWAYS_REPLAYED: &[&str] = &[
    "content-type",
    "content-encoding",
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
];

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) header: HeaderName,
    pub(crate) methods: Vec<Method>,
    pub(crate) required: Required,
    pub(crate) prefix: String,
    pub(crate) lock_ttl: Duration,
    pub(crate) retention: Duration,
    pub(crate) fingerprint_headers: Vec<HeaderName>,
    pub(crate) replay_headers: Vec<HeaderName>,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) store_server_errors: bool,
}

impl Config {
    pub(crate) fn replays(&self, name: &HeaderName) -> bool {
        (self.replay_headers.contains(name) || ALWAYS_REPLAYED.contains(&name.as_str()))
            && !NEVER_REPLAYED.contains(&name.as_str())
    }

    pub(crate) fn required(&self, method: &Method, uri: &Uri) -> bool {
        match &self.required {
            Required::Never => false,
            Required::Always => true,
            Required::If(f) => f(method, uri),
        }
    }
}

/// Makes `POST` and `PATCH` requests safe to retry: a request with an `Idempotency-Key`
/// runs once, and its retries get the stored response. See the [module docs](super).
///
/// Put it inside `JwtAuthLayer` (or anything that inserts
/// [`RegisteredClaims`](crate::RegisteredClaims)) so that records are kept per caller.
#[derive(Debug, Clone)]
pub struct IdempotencyLayer<S> {
    store: S,
    config: Arc<Config>,
}

impl<S: StateStore> IdempotencyLayer<S> {
    /// A layer with the defaults: header `Idempotency-Key`, methods `POST` and `PATCH`, key
    /// optional, lock (lease) TTL 30 s, retention 24 h, key prefix `idem:`, request and
    /// response bodies up to 1 MiB and 4 MiB, 5xx not stored, replayed headers
    /// `Content-Type`, `Content-Encoding`, `Location`, `ETag`, `Link` and `Vary` (and a
    /// gRPC answer's `grpc-status`, `grpc-message`, `grpc-status-details-bin`).
    pub fn new(store: S) -> Self {
        Self {
            store,
            config: Arc::new(Config {
                header: HeaderName::from_static("idempotency-key"),
                methods: vec![Method::POST, Method::PATCH],
                required: Required::Never,
                prefix: "idem:".to_owned(),
                lock_ttl: Duration::from_secs(30),
                retention: Duration::from_secs(24 * 3600),
                fingerprint_headers: Vec::new(),
                replay_headers: vec![
                    http::header::CONTENT_TYPE,
                    http::header::CONTENT_ENCODING,
                    http::header::LOCATION,
                    http::header::ETAG,
                    http::header::LINK,
                    http::header::VARY,
                ],
                max_request_body: 1024 * 1024,
                max_response_body: 4 * 1024 * 1024,
                store_server_errors: false,
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// The request header that carries the key (default `Idempotency-Key`; some APIs use
    /// `X-Idempotency-Key`).
    #[must_use]
    pub fn header_name(self, name: HeaderName) -> Self {
        self.with(|c| c.header = name)
    }

    /// The methods the layer applies to (default `POST` and `PATCH`). Requests with any
    /// other method pass through untouched, key or not.
    #[must_use]
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        let methods = methods.into_iter().collect();
        self.with(|c| c.methods = methods)
    }

    /// Whether every request the layer applies to must carry a key (`400` without one).
    /// Default `false`: requests without a key pass through. For one route only, put a
    /// layer with `required(true)` on that route, or use [`required_if`](Self::required_if).
    #[must_use]
    pub fn required(self, required: bool) -> Self {
        self.with(|c| {
            c.required = if required {
                Required::Always
            } else {
                Required::Never
            }
        })
    }

    /// Requires a key for the requests `predicate` picks, e.g. by path.
    #[must_use]
    pub fn required_if<F>(self, predicate: F) -> Self
    where
        F: Fn(&Method, &Uri) -> bool + Send + Sync + 'static,
    {
        self.with(|c| c.required = Required::If(Arc::new(predicate)))
    }

    /// Store key prefix (default `idem:`). Keys are `<prefix>{<sha256 hex>}`.
    #[must_use]
    pub fn key_prefix(self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.with(|c| c.prefix = prefix)
    }

    /// How long a running request holds its key (default 30 s): a lease. If the instance
    /// dies, a retry runs once the lease has expired. Set it above your slowest handler: a
    /// handler still running when its lease expires can be run a second time by a retry
    /// (its own result is then not recorded). At least 1 ms.
    #[must_use]
    pub fn lock_ttl(self, ttl: Duration) -> Self {
        self.with(|c| c.lock_ttl = ttl.max(Duration::from_millis(1)))
    }

    /// How long a completed response is kept for replay (default 24 h). At least 1 ms.
    #[must_use]
    pub fn retention(self, ttl: Duration) -> Self {
        self.with(|c| c.retention = ttl.max(Duration::from_millis(1)))
    }

    /// Adds a request header to the fingerprint (method, path, query and body always are):
    /// a retry with the same key but another value of it is `422`.
    #[must_use]
    pub fn fingerprint_header(self, name: HeaderName) -> Self {
        self.with(|c| c.fingerprint_headers.push(name))
    }

    /// Adds a response header to the replay allow-list (`Content-Type`,
    /// `Content-Encoding`, `Location`, `ETag`, `Link`, `Vary` by default). `Set-Cookie`, `Date`, `Retry-After` and rate-limit
    /// headers are never replayed.
    #[must_use]
    pub fn replay_header(self, name: HeaderName) -> Self {
        self.with(|c| c.replay_headers.push(name))
    }

    /// Largest request body accepted, in bytes (default 1 MiB); a larger one is `413`
    /// before the handler runs. The body is buffered once to fingerprint it.
    #[must_use]
    pub fn max_request_body(self, bytes: usize) -> Self {
        self.with(|c| c.max_request_body = bytes)
    }

    /// Largest response body stored, in bytes (default 4 MiB). A larger response is
    /// streamed to the client unchanged but not stored: the key is released, and a retry
    /// runs the handler again.
    #[must_use]
    pub fn max_response_body(self, bytes: usize) -> Self {
        self.with(|c| c.max_response_body = bytes)
    }

    /// Stores `5xx` responses too and replays them (Stripe's at-most-once behaviour).
    /// Default `false`: a `5xx` releases the key so the client may retry.
    #[must_use]
    pub fn store_server_errors(self, on: bool) -> Self {
        self.with(|c| c.store_server_errors = on)
    }
}

impl<S: StateStore, I> Layer<I> for IdempotencyLayer<S> {
    type Service = IdempotencyService<S, I>;

    fn layer(&self, inner: I) -> Self::Service {
        IdempotencyService::new(inner, self.store.clone(), self.config.clone())
    }
}
