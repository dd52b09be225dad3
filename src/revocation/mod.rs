//! Revocation: deny tokens whose `jti`, session or subject was revoked (logout, "log out
//! everywhere", security events), although the tokens themselves are stateless.
//!
//! Two halves share one [`StateStore`](crate::store::StateStore) and one
//! [`TokenPolicy`](crate::jwt::TokenPolicy):
//!
//! - [`Revoker`], the write side, called by logout handlers and admin tools:
//!   [`revoke_token`](Revoker::revoke_token) (one token, by `jti`),
//!   [`revoke_session`](Revoker::revoke_session) (every token with that `sid`) and
//!   [`revoke_subject`](Revoker::revoke_subject) (every token of `sub` issued up to now).
//!   Every entry carries a TTL computed from the policy (until the JWT layer would refuse
//!   the token anyway), so the list never grows without bound.
//! - The read side is part of the JWT layer:
//!   [`policy.auth_layer().revocation(store)`](crate::jwt::JwtAuthLayer::revocation)
//!   checks the verified token's `jti`, its `sid` and its subject in **one** `get_many`
//!   (one `MGET` on Redis), in the same service, right after verification.
//!   [`RevocationCheck::on_store_failure`] sets what happens when the store is down
//!   (the one [`StoreFailure`](crate::StoreFailure) setting of every store-backed layer). All keys of a subject
//!   share one Redis Cluster hash tag, so it stays one round trip on a cluster too.
//!
//! There is no separate revocation layer, so the check cannot be placed in front of the
//! JWT layer by mistake (where it would see no claims).
//!
//! # Guarantee
//!
//! A token revoked through a `Revoker` built from the same policy as the JWT layer stays
//! refused until the layer would refuse it by itself: until `exp` plus the policy's
//! leeway has passed (plus the last partial second, since the verifier compares `exp` with
//! whole seconds). Neither the TTL nor the leeway is written twice.
//!
//! # Responses
//!
//! | case | answer |
//! |---|---|
//! | not revoked | the inner service's response |
//! | `jti` or `sid` revoked; subject revoked with `iat <= t` or no `iat` | `401`, `WWW-Authenticate: Bearer error="invalid_token", error_description="token revoked"`, JSON [`ErrorBody`](crate::response::ErrorBody) `invalid_token` |
//! | store unreachable or timed out (default, [`StoreFailure::closed`](crate::StoreFailure::closed)) | `503`, `Retry-After`, JSON `store_unavailable` |
//! | store unreachable, with [`StoreFailure::open`](crate::StoreFailure::open) | the inner service's response, and a `tracing` warning per request |
//! | the store answered something unexpected | `500 internal_error`, whatever `on_store_failure` says |
//!
//! "Log out everywhere" at second `t` revokes every token of the subject with
//! `iat <= t`: `iat` has whole-second precision, so a token issued in the same second
//! as the revocation is refused, and one issued from the next second on passes.
//!
//! # Requirements
//!
//! With a revocation check, the inner service of the JWT layer must be `Clone` (the store
//! lookup runs before it is called). The response future boxes the store lookup only,
//! which is `Send + 'static` on its own; the request body, response body and inner service
//! need no `Send` or `'static` bound beyond what your server asks for.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//!
//! use http::{header, Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
//! use tower_stateless::revocation::Revoker;
//! use tower_stateless::store::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = JwtKeySet::new().with_hmac("v1", Algorithm::HS256, &[42; 32])?;
//! let policy = TokenPolicy::builder(keys).signing_key("v1").build()?;
//! let store = MemoryStore::new();
//! let revoker = Revoker::new(store.clone(), &policy);
//!
//! let service = ServiceBuilder::new()
//!     .layer(policy.auth_layer().revocation(store))
//!     .service_fn(|_request: Request<String>| async {
//!         Ok::<_, Infallible>(Response::new(String::from("hello")))
//!     });
//!
//! let issued = policy.token_issuer()?.issue("alice")?;
//! let request = || {
//!     Request::get("/")
//!         .header(header::AUTHORIZATION, format!("Bearer {}", issued.token))
//!         .body(String::new())
//! };
//! let response = service.clone().oneshot(request()?).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//!
//! // The logout handler:
//! revoker.revoke_token(&issued.claims).await?;
//!
//! let response = service.oneshot(request()?).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! # Ok(())
//! # }
//! ```
//!
//! # Security
//!
//! - Fail closed is the default: while the store is unreachable every request gets `503`.
//!   [`StoreFailure::open`](crate::StoreFailure::open) trades that for accepting revoked tokens
//!   during an outage.
//! - Session and subject revocations are kept for the policy's longest token lifetime
//!   ([`TokenPolicy::max_token_lifetime`](crate::jwt::TokenPolicy::max_token_lifetime),
//!   default 24 hours) plus twice the leeway, and the JWT layer refuses tokens that
//!   would live longer: no accepted token outlives its revocation.
//! - The subject rule compares `iat` with the clock of the instance that revoked: keep
//!   the clocks of token issuers and revokers in sync (NTP). A token without `iat` is
//!   refused once its subject is revoked.
//!
//! # Keys
//!
//! `rev:{s<sub>}:jti:<jti>`, `rev:{s<sub>}:sid:<sid>` and `rev:{s<sub>}:sub` (the
//! revocation time in Unix seconds, as decimal text), where `<sub>` is the subject in
//! base64url without padding, so that a `{`, `}` or `:` in a subject can neither break the
//! hash tag nor collide with another subject's keys. The store's own prefix goes in front.

pub(crate) mod check;
mod key;
mod revoker;

pub use self::check::RevocationCheck;
pub(crate) use self::revoker::{check_subject, raise_cutoff};
pub use self::revoker::{RevokeError, Revoker};
