//! One rate limit shared by every instance of a service.
//!
//! `tower::limit::RateLimit` and tower_governor count per process: behind a load balancer
//! with N instances, the real limit is N times the configured one. [`RateLimitLayer`]
//! keeps the count in the shared [`StateStore`](crate::store::StateStore) with the
//! Generic Cell Rate Algorithm (GCRA): one atomic store step, **one round trip per
//! request**, on the store's clock, so every instance limits against the same state and
//! time.
//!
//! A [`Quota`] is `count` requests per `period`, of which `burst` (default: `count`) may
//! come at once; spent quota comes back steadily. The limit holds exactly, on every
//! backend: over any stretch of time `t`, one caller gets at most
//! `burst + count × t / period` requests through (time is kept in nanoseconds, so a rate
//! such as 600 or 5,000 per second is not rounded to whole milliseconds). A quota that
//! cannot be kept (zero, finer than one request per microsecond, a burst that takes over a
//! century to refill) is refused when it is built, with a [`ConfigError`](crate::ConfigError). Every answer carries the
//! `RateLimit-Policy` and `RateLimit` header fields of draft-ietf-httpapi-ratelimit-headers
//! (`"default";q=100;w=60`, `"default";r=42;t=35`); over the limit, `429 Too Many Requests`
//! with `Retry-After` and a JSON body `{"error":"rate_limited",...}`, and the handler does
//! not run. A gRPC request gets `RESOURCE_EXHAUSTED` instead, with the same headers as
//! metadata and the wait in the status message itself (`too many requests; retry after
//! 12 s`).
//!
//! Store down: the layer **fails open** by default (requests pass, a warning is logged
//! per request), since a limiter should not take the service down;
//! [`on_store_failure(StoreFailure::closed())`](RateLimitLayer::on_store_failure) answers
//! `503` instead (see [`StoreFailure`](crate::StoreFailure), the one setting of every
//! store-backed layer). A store that answers something unexpected is `500` either way.
//!
//! The caller is the JWT subject, else a [trusted proxy
//! header](RateLimitLayer::trusted_header), else the peer address (see
//! [`RateLimitLayer`] for where axum and hyper put it), or your own
//! [`key_fn`](RateLimitLayer::key_fn). A request with none of them passes unlimited, and
//! the layer logs a warning, at most one a minute.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_stateless::rate_limit::{Quota, RateLimitLayer};
//! use tower_stateless::store::MemoryStore;
//! use tower_stateless::RegisteredClaims;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let svc = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(MemoryStore::new(), Quota::per_minute(2)?))
//!     .service_fn(|_: Request<String>| async { Ok::<_, Infallible>(Response::new(String::new())) });
//! let request = || {
//!     let mut req = Request::new(String::new());
//!     // Normally JwtAuthLayer inserts the caller's claims.
//!     req.extensions_mut().insert(RegisteredClaims::new("alice", u64::MAX));
//!     req
//! };
//! let first = svc.clone().oneshot(request()).await?;
//! assert_eq!(first.headers()["ratelimit"], "\"default\";r=1;t=30");
//! svc.clone().oneshot(request()).await?;
//! let third = svc.oneshot(request()).await?;
//! assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(third.headers()["retry-after"], "30");
//! # Ok(())
//! # }
//! ```
//!
//! # Security
//!
//! Key by the authenticated subject where you can. A [trusted
//! header](RateLimitLayer::trusted_header) is only as trustworthy as the proxy that sets
//! it; a client reaching the service directly can send any value and pick its own bucket.

mod error;
mod future;
mod key;
mod layer;
mod limiter;
mod quota;
mod service;

pub use self::error::RateLimitError;
pub use self::future::ResponseFuture;
pub use self::layer::RateLimitLayer;
pub use self::limiter::{Decision, RateLimiter};
pub use self::quota::Quota;
pub use self::service::RateLimitService;
