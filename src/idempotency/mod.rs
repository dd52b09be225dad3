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
//!    random owner token, with a lease of [`lock_ttl`](IdempotencyLayer::lock_ttl);
//! 3. runs the handler, then **completes** the record with the status, the allow-listed
//!    headers and the body, by compare-and-set against its own claim, kept for
//!    [`retention`](IdempotencyLayer::retention).
//!
//! A retry with the same key and the same request gets the stored response, with
//! `Idempotent-Replayed: true`. While the first is still running, a duplicate gets `409`
//! with `Retry-After`; a different request under a used key gets `422`. Records are scoped
//! to the caller (`sub` of [`RegisteredClaims`](crate::RegisteredClaims), when an auth
//! layer put them in the request extensions), the method and the path: one user can never
//! replay or probe another's response.
//!
//! Round trips: first time, one claim and one completion; a replay, one; a request without
//! a key, or of another method (`GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE` by default), none.
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
//! - **Client disconnects mid-handler:** the request runs in a Tokio task of its own, so the
//!   handler runs to completion and its response is recorded; the client's retry gets `409`
//!   while it runs and the stored response after. (So the layer needs a Tokio runtime.)
//!   The task keeps the request's tracing span. Layers outside this one (a timeout, a
//!   concurrency limit) stop waiting when the client goes away, but the handler goes on:
//!   bound long handlers inside it.
//! - **Instance killed mid-request:** its lease expires after `lock_ttl`, and a retry on
//!   another instance runs.
//! - **Lease expired while the handler still runs:** another request may take the key and
//!   run; the late first request then cannot overwrite its record (its claim token no
//!   longer matches), it answers its own client and logs a warning. Set `lock_ttl` above
//!   your slowest handler.
//! - **Store down:** `503` with `Retry-After`; the handler never runs without a claim (a
//!   claim that timed out, and may have been written, is deleted again at once). If the
//!   store fails only when recording, the write is retried briefly on a dropped
//!   connection; failing that, the client still gets the handler's response, and the key
//!   frees itself after `lock_ttl`.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response, StatusCode};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_stateless::idempotency::{IdempotencyLayer, RequestBody};
//! use tower_stateless::store::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(IdempotencyLayer::new(MemoryStore::new()).required(true))
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
//! Without an auth layer in front, every anonymous client shares one namespace per method
//! and path: a client that guesses another's key gets its response. Use unguessable keys
//! (UUIDv4) or put the layer behind `JwtAuthLayer`. Keys and the caller are hashed before
//! they reach the store.

mod body;
mod future;
mod key;
mod layer;
mod record;
mod service;

pub use self::body::RequestBody;
pub use self::future::ResponseFuture;
pub use self::layer::IdempotencyLayer;
pub use self::service::IdempotencyService;
