//! JWT bearer authentication: verify a token on every request with no store lookup, and
//! mint tokens at login.
//!
//! One [`TokenPolicy`] holds everything the token components must agree on: the keys
//! ([`JwtKeySet`]), the signing key, the access-token TTL, the leeway, the issuer and the
//! audience. The layer, the issuer, the [`Revoker`](crate::revocation::Revoker) and the
//! [`RefreshTokens`](crate::refresh::RefreshTokens) are all derived from it, so no TTL or
//! leeway is written twice.
//!
//! [`JwtAuthLayer`] ([`TokenPolicy::auth_layer`]) reads the token (from
//! `Authorization: Bearer` by default, or a [`TokenSource`] cookie or header), verifies it
//! under the policy, optionally checks the revocation list
//! ([`JwtAuthLayer::revocation`]), and puts two things into the request extensions for
//! the inner service: the application's claims type `T` (`serde_json::Value` unless
//! [`JwtAuthLayer::claims`] picks another), and a
//! [`RegisteredClaims`](crate::RegisteredClaims) (`sub`, `jti`, `iat`, `exp`, `sid`) that
//! the session and idempotency layers read. Each part of the token is decoded once: the
//! header parsed once, the payload parsed once for the checks and `RegisteredClaims` and
//! once into `T`, with no intermediate JSON tree. [`TokenIssuer`] ([`TokenPolicy::token_issuer`])
//! mints tokens under the same policy; with the `axum` feature,
#![cfg_attr(feature = "axum", doc = " [`Claims`]")]
#![cfg_attr(not(feature = "axum"), doc = " `Claims`")]
//! extracts the claims in handlers.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{header, Request, Response, StatusCode};
//! use http_body_util::Full;
//! use serde::Deserialize;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
//! use tower_stateless::RegisteredClaims;
//!
//! #[derive(Clone, Deserialize)]
//! struct MyClaims {
//!     sub: String,
//!     role: String,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = JwtKeySet::new().with_hmac("v1", Algorithm::HS256, b"a secret of at least 32 bytes...")?;
//! let policy = TokenPolicy::builder(keys).signing_key("v1").build()?;
//! let issuer = policy.token_issuer()?;
//!
//! let service = ServiceBuilder::new()
//!     .layer(policy.auth_layer().claims::<MyClaims>().realm("example").public_path("/health"))
//!     .service(service_fn(|req: Request<Full<Bytes>>| async move {
//!         let claims = req.extensions().get::<MyClaims>().expect("the layer put them here");
//!         let registered = req.extensions().get::<RegisteredClaims>().expect("and these");
//!         let body = format!("{} is {} (token {:?})", claims.sub, claims.role, registered.jti);
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
//!     }));
//!
//! // At login: mint a token with the application's own claims.
//! let token = issuer
//!     .issue_with("alice", None, &serde_json::json!({ "role": "admin" }))?
//!     .token;
//! let request = Request::get("/orders")
//!     .header(header::AUTHORIZATION, format!("Bearer {token}"))
//!     .body(Full::new(Bytes::new()))?;
//! let response = service.clone().oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//!
//! // No token: 401 with a bare challenge.
//! let request = Request::get("/orders").body(Full::new(Bytes::new()))?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! assert_eq!(response.headers()[header::WWW_AUTHENTICATE], r#"Bearer realm="example""#);
//! # Ok(())
//! # }
//! ```
//!
//! # What is checked
//!
//! In this order, each failure answered without calling the inner service:
//!
//! 1. Exactly one token in the configured sources (none → `401` with a bare
//!    `WWW-Authenticate: Bearer [realm=...]` and no error code; two ways, two
//!    `Authorization` headers, `Bearer` without token or a token with characters outside
//!    RFC 6750's `b64token` → `400 invalid_request`). The `Bearer` scheme is
//!    case-insensitive (RFC 7235), so `bearer` works; another scheme such as `Basic`
//!    counts as no token.
//! 2. Length ≤ [`JwtAuthLayer::max_token_len`] (default 8 KiB), before any decoding.
//! 3. Three non-empty dot-separated segments; a parseable header without `crit`, `enc` or
//!    `zip`.
//! 4. The key named by `kid` (a token without `kid` only when the set holds one key), and
//!    the header's `alg` equal to that key's pinned algorithm: `none`, an algorithm of
//!    another family, or another algorithm of the same family are all refused. `jku`,
//!    `jwk` and `x5u` headers are ignored; keys are never fetched from a token.
//! 5. The signature; then `exp` (required, a number), `nbf` (when present), `sub`
//!    (required, a string that is not empty or only whitespace), `jti` and `sid` (when
//!    present, not empty), `iss`/`aud` when configured (an `aud` claim is refused when no
//!    audience is configured), with the policy's [leeway](TokenPolicyBuilder::leeway)
//!    (default 30 s).
//! 6. The payload is a JSON object that deserializes into both `T` and
//!    `RegisteredClaims` (`jti` and `sid` strings, `iat` and `exp` integers), naming
//!    each registered claim at most once.
//!
//! Failures of 3–6 are `401` with `error="invalid_token"` and one of a few fixed
//! descriptions (`the token is invalid`, `... malformed`, `... has expired`, `... is not
//! valid yet`, `... too long`), plus the JSON [`ErrorBody`](crate::response::ErrorBody).
//! "Expired" and "not valid yet" are only said after the signature checked out.
//!
//! 7. With [`JwtAuthLayer::revocation`]: the token's `jti`, `sid` and subject against the
//!    revocation list, in one store round trip (see [`revocation`](crate::revocation)).
//!
//! # Public and optional paths
//!
//! What passes where:
//!
//! - **Public** ([`JwtAuthLayer::public_path`], [`JwtAuthLayer::public_if`]): the request
//!   passes uninspected, without claims, whatever it carries (a valid token, a bad one,
//!   garbage). For `/health` or `/login`.
//! - **Optional** ([`JwtAuthLayer::optional_path`], [`JwtAuthLayer::optional_if`]): for
//!   routes that work anonymously and personalize for a signed-in caller (a product page
//!   showing "your cart", a feed showing "liked by you").
//!   - No token (none in the configured sources; another scheme such as `Basic` counts
//!     as none, as in step 1): the request passes without claims. With the `axum`
//!     feature, `Option<Claims<T>>` is `None`; `Claims<T>` answers `500 internal_error`
//!     as it does on a public path (a handler of an optional path must take the option).
//!   - A token: every check above, 1–7, with the same answers as anywhere else. A valid
//!     token's claims are inserted as on a protected path. A token that is invalid,
//!     expired, forged, malformed or revoked is refused with `401 invalid_token` (a
//!     malformed request, such as `Bearer` without a token, with `400
//!     invalid_request`), and the inner service is not called. With the store down
//!     during the revocation check, the check's
//!     [`StoreFailure`](crate::StoreFailure) decides, as anywhere else (`503` when
//!     fail-closed, the default).
//! - **Everything else**: a valid token is required; no token is `401` with a bare
//!   challenge.
//!
//! A request that matches both a public and an optional rule is public (the rules are
//! tried public first, whatever order the builder calls came in).
//!
//! Why a bad token on an optional path is refused rather than treated as anonymous:
//! RFC 6750 §3.1 answers a request that presents an invalid token with `invalid_token`,
//! and treating it as anonymous would hide a stale token from the client (it would keep
//! sending it, and keep getting the anonymous page, without ever noticing it is signed
//! out) and would let a revoked token fall back to anonymous access without the client
//! noticing. A client that gets `401` with `error="invalid_token"` from an optional path
//! should drop the token (or refresh it) and retry: without a token the request passes
//! anonymously.
//!
//! A request without a token on an optional path is not counted in the `jwt` metric or
//! traced in a `jwt` span (no decision was made); one with a token is counted as on a
//! protected path. Public paths count nothing.
//!
//! # Crypto backend
//!
//! jsonwebtoken needs exactly one crypto provider. The `rust_crypto` feature (default)
//! uses the pure-Rust RustCrypto crates; `aws_lc_rs` uses aws-lc-rs, which verifies
//! RS256/ES256 5–8× faster but needs a C toolchain. With both enabled (as
//! `--all-features` does), jsonwebtoken would panic on first use, so
//! [`JwtKeySet::new`] installs aws-lc-rs as its process-wide default; a provider the
//! application installed earlier (`jsonwebtoken::crypto::CryptoProvider::install_default`)
//! is kept.
//!
//! # Security
//!
//! - Keys are pinned to one algorithm each, so algorithm confusion (an RSA public key's
//!   PEM used as an HMAC secret) and `alg: none` cannot work. HMAC secrets shorter than
//!   the hash output are refused at startup.
//! - A JWT cannot be revoked by verification alone: keep lifetimes short (the policy's
//!   [access TTL](TokenPolicyBuilder::access_ttl), 15 minutes by default) and add
//!   [`JwtAuthLayer::revocation`] for logout. A token revoked through a
//!   [`Revoker`](crate::revocation::Revoker) of the same policy stays refused for as long
//!   as this layer would accept it, leeway included.
//! - Public and optional paths match exactly; `/health/` or `/Health` are not
//!   `/health`. A [`JwtAuthLayer::public_if`] or [`JwtAuthLayer::optional_if`] predicate
//!   sees the raw URI: mind prefixes like `/public/../admin` if your router normalises
//!   paths.
//! - On an optional path, the handler must not assume a caller: anything it does for a
//!   signed-in caller must check the claims it got. Layers inside that need a caller
//!   ([`RequireScopeLayer`], a rate limit keyed by the subject) see none there for an
//!   anonymous request.
//! - Error responses never echo the token or say which check failed beyond the fixed
//!   descriptions; the details go to `tracing` at debug level, without token contents.
//! - Tokens in cookies need `HttpOnly`, `Secure`, `SameSite` and CSRF protection; that is
//!   the application's job.

mod future;
mod issuer;
pub(crate) mod key;
mod layer;
mod policy;
mod reject;
mod revocation_future;
mod scope;
mod service;
mod source;
mod verify;

#[cfg(feature = "axum")]
mod extract;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use self::extract::{Claims, MissingClaims};
pub use self::future::ResponseFuture;
pub use self::issuer::{IssueError, IssuedToken, TokenIssuer};
pub use self::key::{JwtKeySet, KeyError};
pub use self::layer::JwtAuthLayer;
pub use self::policy::{TokenPolicy, TokenPolicyBuilder};
pub use self::revocation_future::RevocationFuture;
pub use self::scope::{RequireScope, RequireScopeLayer, ScopeClaims};
pub use self::service::JwtAuthService;
pub use self::source::TokenSource;

/// Re-exported so that key sets can name algorithms without a direct dependency.
pub use jsonwebtoken::Algorithm;
