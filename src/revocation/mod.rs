//! Revocation: deny tokens whose `jti`, session or subject was revoked (logout, "log out
//! everywhere", security events), although the tokens themselves are stateless.
//!
//! Two halves share one [`StateStore`](crate::store::StateStore):
//!
//! - [`Revoker`], the write side, called by logout handlers and admin tools:
//!   [`revoke_token`](Revoker::revoke_token) (one token, by `jti`),
//!   [`revoke_session`](Revoker::revoke_session) (every token with that `sid`) and
//!   [`revoke_subject`](Revoker::revoke_subject) (every token of `sub` issued up to now).
//!   Every entry carries a TTL (the token's remaining life, the session's, or the max token
//!   lifetime), so the list never grows without bound.
//! - [`RevocationLayer`], the read side, placed **after** the JWT layer: it reads the
//!   [`RegisteredClaims`](crate::RegisteredClaims) from the request extensions and checks
//!   the token's `jti`, its `sid` and its subject in **one** `get_many` (one `MGET` on
//!   Redis). All keys of a subject share one Redis Cluster hash tag, so it stays one round
//!   trip on a cluster too.
//!
//! # Responses
//!
//! | case | answer |
//! |---|---|
//! | not revoked | the inner service's response |
//! | `jti` or `sid` revoked; subject revoked with `iat <= t` or no `iat` | `401`, `WWW-Authenticate: Bearer error="invalid_token", error_description="token revoked"`, JSON [`ErrorBody`](crate::response::ErrorBody) `invalid_token` |
//! | store unreachable or timed out (default, fail closed) | `503`, `Retry-After`, JSON `store_unavailable` |
//! | store unreachable, with [`fail_open`](RevocationLayer::fail_open) | the inner service's response, and a `tracing` warning per request |
//! | no `RegisteredClaims` in the extensions (layer misplaced) | `500`, JSON `internal_error`, and a `tracing` error naming the cause |
//! | the store answered something unexpected | `500`, whatever `fail_open` says |
//!
//! "Log out everywhere" at second `t` revokes every token of the subject with
//! `iat <= t`: `iat` has whole-second precision, so a token issued in the same second
//! as the revocation is refused, and one issued from the next second on passes.
//!
//! # Requirements
//!
//! The inner service must be `Clone` (the store lookup runs before it is called). The
//! response future boxes the store lookup only, which is `Send + 'static` on its own; the
//! request body, response body and inner service need no `Send` or `'static` bound beyond
//! what your server asks for. The layer works with any request and response body.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::{Duration, SystemTime, UNIX_EPOCH};
//!
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_stateless::revocation::{RevocationLayer, Revoker};
//! use tower_stateless::store::MemoryStore;
//! use tower_stateless::RegisteredClaims;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let revoker = Revoker::new(store.clone(), Duration::from_secs(3600));
//!
//! let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
//! let claims = RegisteredClaims::new("alice", now + 900).with_jti("t-1").with_iat(now);
//!
//! let service = ServiceBuilder::new()
//!     // Stands in for `JwtAuthLayer`, which inserts the verified claims.
//!     .map_request({
//!         let claims = claims.clone();
//!         move |mut request: Request<String>| {
//!             request.extensions_mut().insert(claims.clone());
//!             request
//!         }
//!     })
//!     .layer(RevocationLayer::new(store))
//!     .service_fn(|_request: Request<String>| async {
//!         Ok::<_, Infallible>(Response::new(String::from("hello")))
//!     });
//!
//! let response = service.clone().oneshot(Request::new(String::new())).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//!
//! // The logout handler:
//! revoker.revoke_token(&claims).await?;
//!
//! let response = service.oneshot(Request::new(String::new())).await?;
//! assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
//! # Ok(())
//! # }
//! ```
//!
//! # Security
//!
//! - Fail closed is the default: while the store is unreachable every request gets `503`.
//!   [`fail_open`](RevocationLayer::fail_open) trades that for accepting revoked tokens
//!   during an outage.
//! - Entries expire with the token (`exp − now`). If your JWT verifier accepts tokens for
//!   some leeway past `exp`, give the same [`leeway`](Revoker::leeway) to the `Revoker`, or
//!   a revoked token works again for that leeway once its entry has expired.
//! - Subject revocations are kept for the max token lifetime given to [`Revoker::new`]; a
//!   token that lives longer than that is accepted again after the entry expires.
//! - The subject rule compares `iat` with the clock of the instance that revoked: keep
//!   the clocks of token issuers and revokers in sync (NTP). A token without `iat` is
//!   refused once its subject is revoked.
//! - The layer trusts the claims in the extensions: put it after the layer that verifies
//!   them.
//!
//! # Keys
//!
//! `rev:{s<sub>}:jti:<jti>`, `rev:{s<sub>}:sid:<sid>` and `rev:{s<sub>}:sub` (the
//! revocation time in Unix seconds, as decimal text), where `<sub>` is the subject in
//! base64url without padding, so that a `{`, `}` or `:` in a subject can neither break the
//! hash tag nor collide with another subject's keys. The store's own prefix goes in front.

mod check;
mod future;
mod key;
mod layer;
mod revoker;
mod service;

pub use self::future::ResponseFuture;
pub use self::layer::RevocationLayer;
pub use self::revoker::{RevokeError, Revoker};
pub use self::service::RevocationService;
