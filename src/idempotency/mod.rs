//! Idempotent writes: a retried request runs once, and its retries get the stored
//! response.
//!
//! [`IdempotencyLayer`] follows the IETF draft "The Idempotency-Key HTTP Header Field"
//! and Stripe's behaviour. A `POST` or `PATCH` (configurable) with an `Idempotency-Key`
//! header:
//!
//! 1. is buffered (up to [`max_request_body`](IdempotencyLayer::max_request_body), else
//!    `413`) and fingerprinted: SHA-256 of method, path, query, body and any
//!    [configured headers](IdempotencyLayer::fingerprint_header);
//! 2. **claims** its key with one atomic set-if-absent: an "in progress" record holding a
//!    random owner token, with a lease of [`lock_ttl`](IdempotencyLayer::lock_ttl),
//!    renewed every third of it while the handler runs;
//! 3. runs the handler, then **completes** the record with the status, the allow-listed
//!    headers and the body, by compare-and-set against its own claim, kept for
//!    [`retention`](IdempotencyLayer::retention).
//!
//! A retry with the same key and the same request gets the stored response, with
//! `Idempotent-Replayed: true`. While the first is still running, a duplicate gets `409`
//! with `Retry-After`; a different request under a used key gets `422`. Records are kept
//! per caller, method and path: one caller can never replay or probe another's response.
//! The caller is, by default, the `sub` of the [`RegisteredClaims`](crate::RegisteredClaims)
//! an auth layer put in the request extensions; see [`Scope`] for sessions, tenants or
//! anonymous endpoints.
//!
//! Round trips: first time, one claim and one completion; a replay, one; a request without
//! a key, or of another method (`GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE` by default), none.
//! A handler slower than a third of `lock_ttl` adds one lease renewal per third.
//!
//! # What is stored
//!
//! `2xx`, `3xx` (a redirect after a completed write is its result) and `4xx` responses of
//! the handler, except `408`, `409` and `429`. Those, `5xx`, handler errors and panics
//! **release** the key (delete, only while still its owner), so the client may retry;
//! [`store_server_errors`](IdempotencyLayer::store_server_errors) stores `5xx` too. For
//! gRPC, the `grpc-status` decides in the same way: `OK` and deterministic refusals
//! (`INVALID_ARGUMENT`, `NOT_FOUND`, `ALREADY_EXISTS`, `PERMISSION_DENIED`,
//! `FAILED_PRECONDITION`, `OUT_OF_RANGE`, `UNIMPLEMENTED`, `UNAUTHENTICATED`) are stored,
//! the rest release the key. The layer's own `400`/`409`/`413`/`422`/`503` answers are
//! never stored. Replays carry only `Content-Type`, `Content-Encoding`, `Location`,
//! `ETag`, `Link`, `Vary`, a gRPC status, and headers you
//! [add](IdempotencyLayer::replay_header); never `Set-Cookie`, `Date`, `Retry-After` or
//! rate-limit headers. Trailers (gRPC status) are stored and replayed. A response body
//! above [`max_response_body`](IdempotencyLayer::max_response_body) is streamed to the
//! client but not stored, and the key is released.
//!
//! # Failures
//!
//! - **Client disconnects mid-handler:** the request runs inline, in the response future;
//!   when that future is dropped before the request finished (hyper drops it when the
//!   connection closes, an outer timeout drops it), the rest of the request moves to a
//!   Tokio task of its own, with the request's tracing span. The handler runs to
//!   completion and its response is recorded; the client's retry gets `409` while it runs
//!   and the stored response after. (So the layer needs a Tokio runtime.) Layers outside
//!   this one (a timeout, a concurrency limit) stop waiting when the client goes away, but
//!   the handler goes on: bound long handlers inside it.
//! - **Slow handler:** a live request keeps its key however long it runs: its lease is
//!   renewed every third of `lock_ttl`. If a renewal is lost (a store outage, a stalled
//!   instance) and nobody took the key meanwhile, the request claims it again, and its
//!   response is recorded when it finishes.
//! - **Instance killed mid-request:** its renewals stop, its lease expires after
//!   `lock_ttl`, and a retry on another instance runs.
//! - **Lease lost while the handler still runs** (the instance was cut off from the store
//!   longer than `lock_ttl`): another request may take the key and run; the late first
//!   request then cannot overwrite its record, it answers its own client and logs a
//!   warning.
//! - **Store down:** `503` with `Retry-After`; the handler never runs without a claim
//!   (the default, [`StoreFailure::closed`](crate::StoreFailure::closed); with
//!   [`on_store_failure(StoreFailure::open())`](IdempotencyLayer::on_store_failure) the
//!   handler runs unprotected instead, see [`StoreFailure`](crate::StoreFailure)). A
//!   claim whose outcome is unknown (a timeout, a reply lost with its connection:
//!   [`StoreError::may_have_applied`](crate::store::StoreError::may_have_applied)) is
//!   deleted again before the `503` is sent, so the client's retry is not answered `409`
//!   for a whole lease. If the store fails only when recording, the write is retried
//!   briefly on a dropped connection; failing that, the client still gets the handler's
//!   response, and the key frees itself after `lock_ttl`.
//! - **Too many keyed requests at once:** each buffers its bodies, so a layer holds at most
//!   [`max_in_flight`](IdempotencyLayer::max_in_flight) of them (default 128); beyond that
//!   a keyed request is answered `503` with `Retry-After` and the error code
//!   `idempotency_overloaded`, without claiming its key.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_stateless::idempotency::{IdempotencyLayer, RequestBody, Scope};
//! use tower_stateless::store::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(
//!         IdempotencyLayer::new(MemoryStore::new())
//!             .required(true)
//!             // An anonymous endpoint with unguessable keys: every caller shares one
//!             // namespace. Behind `JwtAuthLayer`, leave the default (per user).
//!             .scope(Scope::shared()),
//!     )
//!     .service_fn(|req: Request<RequestBody<Full<Bytes>>>| async move {
//!         let body = req.into_body().collect().await.unwrap().to_bytes();
//!         let mut res = Response::new(Full::new(body)); // charge the card here
//!         *res.status_mut() = StatusCode::CREATED;
//!         Ok::<_, Infallible>(res)
//!     });
//! let pay = || {
//!     Request::post("/payments")
//!         .header("idempotency-key", "7c1f2b")
//!         .body(Full::new(Bytes::from("{\"amount_cents\":500}")))
//!         .unwrap()
//! };
//! let first = svc.clone().oneshot(pay()).await.unwrap();
//! assert_eq!(first.status(), StatusCode::CREATED);
//! let retry = svc.oneshot(pay()).await.unwrap();
//! assert_eq!(retry.status(), StatusCode::CREATED);
//! assert_eq!(retry.headers()["idempotent-replayed"], "true");
//! # }
//! ```
//!
//! # Security
//!
//! Records are never shared between callers unless the layer says so. With the default
//! scope ([`Scope::subject`]) a keyed request that carries no claims (the layer is not
//! behind an auth layer, or the route is public) is refused with `500`
//! (`idempotency_scope_missing`): scope it with [`Scope::from_fn`] (per session, tenant,
//! API client), or choose [`Scope::shared`] for anonymous endpoints whose clients send
//! unguessable keys (UUIDv4); there, a client that guesses another's key gets its
//! response. Keys and the caller are hashed before they reach the store.

mod body;
mod claim;
mod config;
mod future;
mod key;
mod layer;
mod record;
mod run;
mod scope;
mod service;

pub use self::body::RequestBody;
pub use self::future::ResponseFuture;
pub use self::layer::IdempotencyLayer;
pub use self::scope::Scope;
pub use self::service::IdempotencyService;
