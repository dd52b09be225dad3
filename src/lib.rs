//! Tower middleware that makes HTTP and gRPC services stateless.
//!
//! Every instance of a service can serve every request, can be killed at any moment, and
//! no user notices: state lives in the request (a signed JWT) or in a shared store
//! (Redis), never in the instance. This crate gives you the layers for it, over one
//! pluggable [`store::StateStore`]:
//!
//! | layer | job | state |
//! |---|---|---|
//! | `jwt::JwtAuthLayer` | verify a bearer JWT, put its claims in request extensions | none |
//! | `jwt::JwtAuthLayer::revocation` | and deny revoked tokens, sessions and subjects | store, 1 read |
//! | `session::SessionLayer` | server-side session data behind an opaque id | store, lazy |
//! | `idempotency::IdempotencyLayer` | retried writes run once, the response replayed | store |
//! | `rate_limit::RateLimitLayer` | one rate limit shared by every instance | store, 1 step |
//!
//! The layers are generic over request and response bodies and work in axum, hyper and
//! tonic. A request the layers refuse gets an HTTP status with a JSON
//! [`ErrorBody`](response::ErrorBody), or, when it is gRPC (`content-type:
//! application/grpc`), a gRPC status in a trailers-only response.
//!
//! And for login and refresh endpoints:
//!
//! | module | job | state |
//! |---|---|---|
//! | `refresh::RefreshTokens` | short-lived access tokens, rotated refresh tokens, reuse detection | store |
//!
//! # One token policy
//!
//! Everything about tokens comes from one [`jwt::TokenPolicy`] (keys, signing key,
//! access-token TTL, leeway, issuer, audience): the JWT layer, the token issuer, the
//! [`revocation::Revoker`] and [`refresh::RefreshTokens`] are derived from it, so no TTL or
//! leeway is written twice, and a revoked token stays refused for as long as the JWT layer
//! would accept it.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//!
//! use http::{header, Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
//! use tower_stateless::refresh::RefreshTokens;
//! use tower_stateless::revocation::Revoker;
//! use tower_stateless::store::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = JwtKeySet::new().with_hmac("v1", Algorithm::HS256, &[42; 32])?;
//! let policy = TokenPolicy::builder(keys)
//!     .signing_key("v1")
//!     .access_ttl(Duration::from_secs(15 * 60))
//!     .leeway(Duration::from_secs(30))
//!     .build()?;
//! let store = MemoryStore::new();
//! let tokens = RefreshTokens::builder(store.clone(), &policy)
//!     .secret(b"another server secret, 32+ bytes")
//!     .build()?;
//! let revoker = Revoker::new(store.clone(), &policy);
//!
//! let service = ServiceBuilder::new()
//!     .layer(policy.auth_layer().revocation(store))
//!     .service_fn(|_request: Request<String>| async {
//!         Ok::<_, Infallible>(Response::new(String::from("hello")))
//!     });
//!
//! let login = tokens.issue("alice").await?;
//! let request = || {
//!     Request::get("/orders")
//!         .header(header::AUTHORIZATION, format!("Bearer {}", login.access_token.token))
//!         .body(String::new())
//! };
//! assert_eq!(service.clone().oneshot(request()?).await?.status(), StatusCode::OK);
//!
//! revoker.revoke_token(&login.access_token.claims).await?;
//! assert_eq!(service.oneshot(request()?).await?.status(), StatusCode::UNAUTHORIZED);
//! # Ok(())
//! # }
//! ```
//!
//! # Every layer has the same shape
//!
//! Knowing one layer predicts the others:
//!
//! - `XLayer` holds only configuration, once, in an `Arc` its services share; its service
//!   is `XService<S, St>`, the inner service first and the store second
//!   ([`JwtAuthService<S, T, R>`](jwt::JwtAuthService) has the claims type and the
//!   revocation check instead of a store), with `get_ref`, `get_mut` and `into_inner`.
//! - What a store-backed layer does when the store is down is one setting with one name:
//!   `.on_store_failure(`[`StoreFailure`]`)`. The keys a layer owns are namespaced with
//!   one builder name, `.key_prefix(..)` (`SessionLayer`, `IdempotencyLayer`, and
//!   `RateLimiter`, which a `RateLimitLayer` is built from; `Devices` takes the session
//!   prefix from the `SessionLayer` it is built with), after the store's own
//!   [`key_prefix`](store::RedisStoreBuilder::key_prefix); every one of them refuses a
//!   prefix with `{` or `}` (a [`ConfigError`] naming `key_prefix`), which would displace
//!   the keys' Redis Cluster hash tags. The revocation, refresh-token and device keys are
//!   fixed, so that the parts reading and writing them cannot disagree (the README's key
//!   table lists them all).
//! - A refusal is a response, never a service error: the JSON
//!   [`ErrorBody`](response::ErrorBody) with a code from the [`rejection`] catalogue.
//!   Every error type handlers see has `is_unavailable()`, `status()` and `error_code()`
//!   and, with the `axum` feature, is an `IntoResponse` of that same body.
//! - Settings that cannot work are refused when the layer is built, with [`ConfigError`].
//! - A response future polled after it completed panics (see [`response`]).
//!
//! # Feature flags
//!
//! | feature | default | what |
//! |---|---|---|
//! | `redis` | yes | `store::RedisStore` on deadpool-redis |
//! | `redis-cluster` | no | Redis Cluster mode of `store::RedisStore` (`RedisStoreBuilder::cluster_urls`); implies `redis` |
//! | `rust_crypto` | yes | JWT signatures through the RustCrypto crates (pure Rust) |
//! | `aws_lc_rs` | no | JWT signatures through aws-lc-rs: RS256/ES256 verify 5–8× faster; needs a C toolchain |
//! | `axum` | no | axum extractors for claims and sessions; `RateLimitLayer` reads the peer address from axum's `ConnectInfo<SocketAddr>` |
//! | `oidc` | no | `oidc::RemoteJwks`: keys of an identity provider by OpenID discovery or JWKS URL, refreshed in the background (reqwest with rustls) |
//! | `conformance` | no | `store::conformance`, the store contract's test suite, for your own backend |
//! | `metrics` | no | the layers' counters and the store histogram through the [`metrics`](https://docs.rs/metrics) facade; off, `metrics` is no dependency |
//!
//! jsonwebtoken needs exactly one crypto backend. With neither `rust_crypto` nor
//! `aws_lc_rs` this crate does not compile; with both (as `--all-features` does),
//! `aws_lc_rs` is used.
//!
//! # Metrics and traces
//!
//! With the feature `metrics`, the layers count their decisions through the
//! [`metrics`](https://docs.rs/metrics) facade; the application installs the exporter
//! (Prometheus, OpenTelemetry, statsd). Without the feature the counting code is not
//! compiled. The store histogram is recorded by [`store::InstrumentedStore`], which wraps
//! any store. Names and labels are a public contract; label values are fixed words, never
//! user data (no subject, key, token or path parameter):
//!
//! | metric | type | labels | values |
//! |---|---|---|---|
//! | `tower_stateless_jwt_total` | counter | `result` | `ok`, `missing`, `invalid`, `expired`, `insufficient_scope` |
//! | `tower_stateless_revocation_total` | counter | `result` | `ok`, `revoked`, `store_error` |
//! | `tower_stateless_session_total` | counter | `op`, `result` | `op`: `load`, `write`, `destroy`; `result`: `ok`, `conflict`, `store_error` |
//! | `tower_stateless_idempotency_total` | counter | `result` | `executed`, `replayed`, `in_progress`, `mismatch`, `released`, `store_error` |
//! | `tower_stateless_rate_limit_total` | counter | `result` | `allowed`, `limited`, `store_error`, `no_key` |
//! | `tower_stateless_refresh_total` | counter | `result` | `issued`, `rotated`, `reused`, `invalid` |
//! | `tower_stateless_local_cache_total` | counter | `result` | `hit`, `miss` (one per LocalCache read of a cached prefix; reads it passes through are not counted) |
//! | `tower_stateless_store_duration_seconds` | histogram | `op`, `result` | `op`: a [`StateStore`](store::StateStore) method (`get`, `get_many`, `set`, `set_if_absent`, `compare_and_set`, `compare_and_delete`, `get_and_refresh`, `delete`, `gcra`, `hash_get_all_and_refresh`, `hash_get_all_and_refresh_lazily`, `hash_get_all_cached`, `hash_apply`, `hash_compare_and_set_field`); `result`: `ok`, `unavailable`, `error` |
//!
//!
//! Traces, with or without the feature: each decision is a `DEBUG` span named after the
//! layer, with the same words in its `result` field, recorded when the layer decides; the
//! store operations it waits on are child spans (`redis` or `memory`, and `store` under
//! [`store::InstrumentedStore`]). The `jwt`, `rate_limit`, `revocation` and `session`
//! spans cover the layer's own work, not the inner service; the `idempotency` span
//! covers the whole keyed request, since its result is known only once the handler's
//! answer is recorded. Each decision is also a `DEBUG` event with the same fields. No
//! span or event field carries a token, session id, cookie, idempotency key, subject or
//! value. A disabled span costs one callsite check and allocates nothing.
//!
//! | span | target | fields | opened | `result` |
//! |---|---|---|---|---|
//! | `jwt` | `tower_stateless::jwt` | `result` | per request that is not on a public path, nor tokenless on an optional path (and by `RequireScopeLayer` when it refuses) | `ok`, `missing`, `invalid`, `expired`, `insufficient_scope` |
//! | `revocation` | `tower_stateless::revocation` | `result` | per verified token checked, around its store read | `ok`, `revoked`, `store_error` |
//! | `session` | `tower_stateless::session` | `op`, `result` | per session load (first touch of a session with an id), per `Session::update` attempt (one that lost a race and is retried records `conflict`), per write-back that writes | `op`: `load`, `write`, `destroy`; `result`: `ok`, `conflict`, `store_error` |
//! | `idempotency` | `tower_stateless::idempotency` | `result` | per request with a key that reaches the store: claim, handler, record | `executed`, `replayed`, `in_progress`, `mismatch`, `released`, `store_error` |
//! | `rate_limit` | `tower_stateless::rate_limit` | `result` | per keyed request, around its store step; per request the default key cannot place (no store step) | `allowed`, `limited`, `store_error`, `no_key` |
//! | `refresh` | `tower_stateless::refresh` | `result` | per `RefreshTokens::issue`/`issue_for_session` and `rotate` call | `issued`, `rotated`, `reused`, `invalid` |
//! | `redis`, `memory` | `tower_stateless::store` | `op`, `result` | per operation of `RedisStore` (per round trip) and `MemoryStore` | `op`: the `StateStore` method; `result`: `ok`, `unavailable`, `error` |
//! | `store` | `tower_stateless::store` | `op`, `result` | per operation of a store wrapped in `InstrumentedStore` | as above |
//!
//! The README says what each value counts.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(not(any(feature = "rust_crypto", feature = "aws_lc_rs")))]
compile_error!(
    "tower-stateless needs a JWT crypto backend: enable the `rust_crypto` (default) or `aws_lc_rs` feature"
);

mod claims;
mod config;
mod failure;
mod id;
pub mod idempotency;
pub mod jwt;
mod metrics;
#[cfg(feature = "oidc")]
#[cfg_attr(docsrs, doc(cfg(feature = "oidc")))]
pub mod oidc;
pub mod rate_limit;
pub mod refresh;
pub mod rejection;
pub mod response;
pub mod revocation;
pub mod session;
pub mod store;

pub use self::claims::RegisteredClaims;
pub use self::config::ConfigError;
pub use self::failure::StoreFailure;

// The README's Rust examples compile as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
