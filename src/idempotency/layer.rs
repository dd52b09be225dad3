//! [`IdempotencyLayer`] and its builder.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, Uri};
use tokio::sync::Semaphore;
use tower_layer::Layer;

use super::config::{body_limit, store_ttl, Config, Required, MIN_LOCK_TTL};
use super::scope::Scope;
use super::service::IdempotencyService;
use crate::config::check_key_prefix;
use crate::store::StateStore;
use crate::{ConfigError, StoreFailure};

/// Makes `POST` and `PATCH` requests safe to retry: a request with an `Idempotency-Key`
/// runs once, and its retries get the stored response. See the [module docs](super).
///
/// Records are kept per caller: put it inside `JwtAuthLayer` (or anything that inserts
/// [`RegisteredClaims`](crate::RegisteredClaims)), or choose another [`Scope`].
///
/// The configuration is held once, in an `Arc` the services share.
#[derive(Debug, Clone)]
pub struct IdempotencyLayer<St> {
    store: St,
    config: Arc<Config>,
}

impl<St: StateStore> IdempotencyLayer<St> {
    /// A layer with the defaults: header `Idempotency-Key`, methods `POST` and `PATCH`, key
    /// optional, lock (lease) TTL 30 s, retention 24 h, key prefix `idem:`, request and
    /// response bodies up to 1 MiB and 4 MiB, 5xx not stored, replayed headers
    /// `Content-Type`, `Content-Encoding`, `Location`, `ETag`, `Link` and `Vary` (and a
    /// gRPC answer's `grpc-status`, `grpc-message`, `grpc-status-details-bin`), records
    /// scoped per user ([`Scope::subject`]), at most 128 keyed requests in flight.
    pub fn new(store: St) -> Self {
        Self {
            store,
            config: Arc::new(Config::default()),
        }
    }

    /// A builder step: the changed configuration replaces the shared one (the layer is
    /// configured before it makes services, so none holds the old one yet).
    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::clone(&self.config);
        f(&mut config);
        self.config = Arc::new(config);
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

    /// Store key prefix (default `idem:`). Keys are `<prefix>{<sha256 hex>}`, under the
    /// store's own prefix ([`RedisStoreBuilder::key_prefix`](crate::store::RedisStoreBuilder::key_prefix)).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming `key_prefix` when the prefix contains `{` or `}`: Redis
    /// Cluster hashes only the first `{...}` of a key, so a brace there would replace the
    /// digest as the key's hash tag.
    pub fn key_prefix(self, prefix: impl Into<String>) -> Result<Self, ConfigError> {
        let prefix = prefix.into();
        check_key_prefix(&prefix)?;
        Ok(self.with(|c| c.prefix = prefix))
    }

    /// How long a running request holds its key without renewing it (default 30 s): a
    /// lease. While the handler runs, the layer renews the lease every third of it, so a
    /// live request keeps its key however long it runs; if the instance dies, renewals
    /// stop and a retry runs once the lease has expired. A shorter lease frees the key of a
    /// dead instance sooner, at one store command per renewal for handlers slower than a
    /// third of it.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming `lock_ttl` below 3 ms or beyond what the store holds (100
    /// years).
    pub fn lock_ttl(self, ttl: Duration) -> Result<Self, ConfigError> {
        store_ttl("lock_ttl", ttl, MIN_LOCK_TTL)?;
        Ok(self.with(|c| c.lock_ttl = ttl))
    }

    /// How long a completed response is kept for replay (default 24 h).
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming `retention` below 1 ms or beyond what the store holds (100
    /// years).
    pub fn retention(self, ttl: Duration) -> Result<Self, ConfigError> {
        store_ttl("retention", ttl, Duration::from_millis(1))?;
        Ok(self.with(|c| c.retention = ttl))
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
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming `max_request_body` for 0 or more than 512 MiB.
    pub fn max_request_body(self, bytes: usize) -> Result<Self, ConfigError> {
        body_limit("max_request_body", bytes)?;
        Ok(self.with(|c| c.max_request_body = bytes))
    }

    /// Largest response body stored, in bytes (default 4 MiB). A larger response is
    /// streamed to the client unchanged but not stored: the key is released, and a retry
    /// runs the handler again.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming `max_response_body` for 0 or more than 512 MiB (the largest
    /// value Redis holds).
    pub fn max_response_body(self, bytes: usize) -> Result<Self, ConfigError> {
        body_limit("max_response_body", bytes)?;
        Ok(self.with(|c| c.max_response_body = bytes))
    }

    /// How many requests with a key the services of this layer (and of its clones) hold
    /// at once (default 128). Each buffers its request body and, to record it, its
    /// response body, so memory stays below about `max_in_flight` × (`max_request_body` +
    /// `max_response_body`) (640 MiB with the defaults, when every body is as large as
    /// allowed). A keyed request beyond the bound is answered `503` with `Retry-After` and
    /// the error code `idempotency_overloaded`, without claiming its key: the client's
    /// retry runs normally. Requests without a key are not counted.
    ///
    /// The bound also holds a request whose client went away mid-handler (it runs to its
    /// end in a task of its own), which no outer concurrency limit sees.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming `max_in_flight` for 0 or more than Tokio's semaphore holds.
    pub fn max_in_flight(self, requests: usize) -> Result<Self, ConfigError> {
        if requests == 0 || requests > Semaphore::MAX_PERMITS {
            return Err(ConfigError::new(
                "max_in_flight",
                format!(
                    "{requests}; it must be between 1 and {}",
                    Semaphore::MAX_PERMITS
                ),
            ));
        }
        Ok(self.with(|c| {
            c.max_in_flight = requests;
            c.in_flight = Arc::new(Semaphore::new(requests));
        }))
    }

    /// Whose records a request can reach (default [`Scope::subject`], per authenticated
    /// user). Without an auth layer in front, choose [`Scope::from_fn`] (per session,
    /// tenant, API client) or, for anonymous endpoints with unguessable keys,
    /// [`Scope::shared`]. See [`Scope`].
    #[must_use]
    pub fn scope(self, scope: Scope) -> Self {
        self.with(|c| c.scope = scope)
    }

    /// What to do when the store is unavailable (default [`StoreFailure::closed`]: `503`
    /// with `Retry-After`, the handler not run); see [`StoreFailure`], the one setting
    /// every store-backed layer shares.
    ///
    /// With [`StoreFailure::open`], a keyed request whose key cannot be claimed runs
    /// **unprotected**: the handler runs, nothing is claimed, recorded or replayed, and a
    /// warning is logged. A retry may then run the handler twice. A store that answers
    /// something unexpected is answered `500` either way.
    #[must_use]
    pub fn on_store_failure(self, on_store_failure: StoreFailure) -> Self {
        self.with(|c| c.on_store_failure = on_store_failure)
    }

    /// Stores `5xx` responses too and replays them (Stripe's at-most-once behaviour).
    /// Default `false`: a `5xx` releases the key so the client may retry.
    #[must_use]
    pub fn store_server_errors(self, on: bool) -> Self {
        self.with(|c| c.store_server_errors = on)
    }
}

impl<S, St: StateStore> Layer<S> for IdempotencyLayer<St> {
    type Service = IdempotencyService<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService::new(inner, self.store.clone(), Arc::clone(&self.config))
    }
}
