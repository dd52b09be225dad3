//! Tokens from an identity provider: OpenID Connect discovery, a remote JWKS refreshed
//! in the background, and several issuers in one layer.
//!
//! Keycloak, Auth0, Okta, Cognito, Entra ID and Google sign access tokens with keys they
//! publish as a JWKS and rotate. [`RemoteJwks`] fetches those keys (from the issuer URL
//! by discovery, or from the JWKS URL) into a [`JwtKeySet`](crate::jwt::JwtKeySet),
//! which [`JwtAuthLayer`](crate::jwt::JwtAuthLayer) then uses like any other key set.
//!
//! # Example
//!
//! The provider must be reachable, so this example is not run:
//!
//! ```no_run
//! use tower::ServiceBuilder;
//! use tower_stateless::jwt::{Algorithm, JwtKeySet, RequireScopeLayer, TokenPolicy};
//! use tower_stateless::oidc::RemoteJwks;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Waits up to 10 s for the first keys; an error names the issuer.
//! let provider = RemoteJwks::discover("https://login.example.com/realms/shop")
//!     .algorithms([Algorithm::RS256, Algorithm::ES256])
//!     .build()
//!     .await?;
//!
//! // Our own tokens, plus the provider's for the audience `shop-api`.
//! let keys = JwtKeySet::new()
//!     .with_hmac("v1", Algorithm::HS256, b"a secret of at least 32 bytes...")?
//!     .with_issuer("https://login.example.com/realms/shop", ["shop-api"], provider.key_set())?;
//!
//! let policy = TokenPolicy::builder(keys).signing_key("v1").build()?;
//!
//! let orders = ServiceBuilder::new()
//!     .layer(policy.auth_layer())
//!     .layer(RequireScopeLayer::new(["orders:write"])?)
//!     .service_fn(|_req: http::Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//!     });
//! # drop(orders);
//! # Ok(())
//! # }
//! ```
//!
//! A provider alone needs no binding: a [`TokenPolicy`](crate::jwt::TokenPolicy) built from
//! `provider.key_set()` with the policy's `issuer` and `audience` set.
//!
//! # Refresh
//!
//! - A background task (on the Tokio runtime `build` ran on) refetches the JWKS every
//!   [`refresh_interval`](RemoteJwks::refresh_interval), or as the response's
//!   `Cache-Control: max-age` says, bounded by
//!   [`min_refresh_interval`](RemoteJwks::min_refresh_interval) and
//!   [`max_refresh_interval`](RemoteJwks::max_refresh_interval). It holds only a weak
//!   reference to the keys and stops when the last key set or layer using them is dropped.
//! - A token whose `kid` is not in the set wakes the task, at most once per
//!   `min_refresh_interval`, however many such tokens arrive: a flood of made-up `kid`s
//!   costs one fetch per interval. That token itself is answered `401` at once (the
//!   request path never waits for I/O); once the refresh has landed, tokens with the new
//!   `kid` verify. Providers publish new keys before signing with them, so the regular
//!   refresh usually has them first.
//! - A fetch that fails (provider down, slow, an error status, garbage, an oversized body,
//!   a redirect loop, a document without usable key) leaves the last good keys in use and
//!   logs a `tracing` warning; the task retries after `min_refresh_interval`. Removed keys
//!   stop verifying once a refresh has seen the new document.
//! - Verification never takes a lock and never does I/O: it loads the current key table
//!   (an `arc-swap` snapshot) and verifies against it.
//! - [`RemoteKeys::refresh`] refetches on demand (e.g. from an admin endpoint or a test).
//!
//! # Before the first keys
//!
//! [`RemoteJwks::build`] does not return until the first keys are in: it retries failed
//! fetches for up to [`startup_timeout`](RemoteJwks::startup_timeout) (10 s by default)
//! and then returns [`OidcError::Startup`] naming the issuer or JWKS URL, with the last
//! failure as its source. A discovery document naming another issuer fails at once
//! ([`OidcError::IssuerMismatch`]). So a layer never runs with an empty provider key set;
//! decide at startup whether to exit or to start without that provider.
//!
//! # Transport
//!
//! reqwest with rustls (no OpenSSL; rustls uses aws-lc-rs, which needs a C compiler),
//! the platform's root certificates, a connect timeout (5 s) and a total timeout (10 s)
//! per request, bodies read in chunks and refused past
//! [`max_body_bytes`](RemoteJwks::max_body_bytes) (256 KiB), at most
//! [`max_redirects`](RemoteJwks::max_redirects) redirects (5) and none in a loop, and
//! `https` only unless [`allow_http`](RemoteJwks::allow_http) is set (also for redirects
//! and the discovered `jwks_uri`).
//!
//! # Security
//!
//! - Only signature keys are taken: `use: enc` keys, `oct` (HMAC) keys and keys of
//!   algorithms not in [`RemoteJwks::algorithms`] are skipped. An RSA key without `alg`
//!   is used only for the RSA algorithms configured, never for HMAC, so an `HS256`
//!   token signed with an RSA public key is refused (algorithm confusion).
//! - `jku`, `jwk`, `x5u` and `x5c` token headers are ignored; keys come only from the
//!   configured URL. A JWK's `x5c` certificate chain is not validated (issuer, dates):
//!   the key is the JWK's `n`/`e` (or `x`/`y`), and only a JWK without them takes the
//!   public key of its first certificate, checked as any other (RSA modulus size, `alg`,
//!   `crv`). A certificate that does not decode or holds another type of key is skipped
//!   with a warning; the other keys of the set are still used.
//! - With several issuers, the unverified `iss` only selects which keys to try; the
//!   signature and then `iss` and `aud` are verified as for any token.

mod error;
mod fetch;
mod remote;

pub use self::error::OidcError;
pub use self::remote::{RemoteJwks, RemoteKeys};
