//! Refresh tokens: short-lived access tokens, long-lived refresh tokens rotated on every
//! use, and reuse detection (OAuth 2.0 Security BCP, RFC 9700 §4.14.2).
//!
//! [`RefreshTokens`] keeps refresh tokens in a [`StateStore`](crate::store::StateStore)
//! and mints the access tokens (JWTs) that go with them under the
//! [`TokenPolicy`](crate::jwt::TokenPolicy) the JWT layer verifies with: the access TTL,
//! leeway, issuer and audience come from there, and nowhere else.
//!
//! - **Login** ([`issue`](RefreshTokens::issue)): starts a token *family* bound to a
//!   subject and a session id (`sid`) and returns a [`TokenPair`]: an access token (15
//!   minutes by default, carrying `sub`, `sid` and a `jti`) and an opaque refresh token
//!   (256 random bits, URL-safe; 14 days by default). The family ends 30 days after the
//!   login whatever happens (the absolute lifetime).
//! - **Refresh** ([`rotate`](RefreshTokens::rotate)): the presented refresh token is
//!   consumed in **one** atomic store step (a compare-and-set of its record from active
//!   to consumed) and a new pair of the same family is returned. Of concurrent exchanges
//!   of one token, at most one gets a pair.
//! - **Reuse detection**: presenting a consumed token means two parties hold it. The
//!   session is revoked through the [`Revoker`](crate::revocation::Revoker) (so its
//!   access tokens are refused by the JWT layer's
//!   [revocation check](crate::jwt::JwtAuthLayer::revocation)), then the family (every
//!   later rotation fails), and the answer is `invalid_grant`. If the store fails between
//!   the two, the next presentation of the token runs both again: the session revocation
//!   is never skipped. An optional [grace window](RefreshTokensBuilder::grace_period) (default
//!   zero) tolerates the just-superseded token once, for clients that lost a response.
//! - **Logout** ([`logout`](RefreshTokens::logout)) ends the session's families and
//!   revokes its access tokens; **log out everywhere**
//!   ([`logout_everywhere`](RefreshTokens::logout_everywhere)) does the same for every
//!   session of the subject, through a cutoff time checked at rotation.
//!
//! Every failure is a [`RefreshError`]: `invalid_grant` (answer `400`), store unavailable
//! ([`is_unavailable`](RefreshError::is_unavailable), answer `503` with `Retry-After`; no
//! token is ever issued without the store), or an internal error (`500`).
//! [`RefreshError::status`] and [`RefreshError::error_code`] give both.
//!
//! # Wiring it into handlers
//!
//! - `POST /login`: check the credentials, then `tokens.issue(&user_id).await` (or
//!   [`issue_for_session`](RefreshTokens::issue_for_session) to reuse a session id you
//!   already have), and answer `200` with [`pair.to_response()`](TokenPair::to_response)
//!   as JSON: `{"access_token","refresh_token","token_type":"Bearer","expires_in"}`.
//! - `POST /token/refresh` with `{"refresh_token": "..."}`: no bearer token needed (make
//!   it a public path of the `JwtAuthLayer`); call `tokens.rotate(&refresh_token).await`;
//!   on `Ok(pair)` answer `200` with `pair.to_response()`; on `Err(e)` answer
//!   `e.status()` with `{"error": e.error_code()}` (and `Retry-After` when
//!   `e.is_unavailable()`). Send `Cache-Control: no-store` either way. With the `axum`
//!   feature, both are an `IntoResponse` that does all this: return
//!   `pair.to_response()` or the error.
//! - `POST /logout` (behind `JwtAuthLayer`): take the `RegisteredClaims` from the request
//!   extensions; when they carry a `sid`, call `tokens.logout(&claims.sub, sid).await`
//!   (its refresh tokens and every access token of the login); without one (a token
//!   minted by [`TokenIssuer::issue`](crate::jwt::TokenIssuer::issue), or a provider's),
//!   revoke the token itself with `tokens.revoker().revoke_token(&claims).await`. An empty
//!   `sid` is refused (`RevokeError::MissingSid`, `400 invalid_request`): it would revoke
//!   nothing.
//! - `POST /logout-all`: `tokens.logout_everywhere(&claims.sub).await`.
//! - With [`Devices`](crate::session::Devices) ("my devices"), go through it instead:
//!   `devices.rotate`, `devices.logout` and `devices.logout_everywhere` also end the
//!   login's session data and its entry in the list.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
//! use tower_stateless::refresh::{InvalidGrant, RefreshTokens};
//! use tower_stateless::store::MemoryStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = JwtKeySet::new().with_hmac("v1", Algorithm::HS256, &[42; 32])?;
//! let policy = TokenPolicy::builder(keys)
//!     .signing_key("v1")
//!     .access_ttl(Duration::from_secs(15 * 60))
//!     .build()?;
//! let store = MemoryStore::new();
//! let tokens = RefreshTokens::builder(store, &policy)
//!     .secret(b"another server secret, 32+ bytes")
//!     .refresh_ttl(Duration::from_secs(14 * 24 * 3600))
//!     .build()?;
//!
//! // Login handler: credentials checked, start a session.
//! let login = tokens.issue("alice").await?;
//! let body = serde_json::to_string(&login.to_response())?;
//! assert!(body.contains(r#""token_type":"Bearer""#));
//! assert_eq!(login.expires_in, 900);
//!
//! // Refresh handler: exchange the refresh token for a new pair.
//! let refreshed = tokens.rotate(&login.refresh_token.token).await?;
//! assert_eq!(refreshed.refresh_token.family, login.refresh_token.family);
//! assert_eq!(refreshed.access_token.claims.sid, Some(login.refresh_token.sid.clone()));
//!
//! // The old refresh token was consumed: presenting it again is reuse, which ends the
//! // family (and revokes the session's access tokens).
//! let error = tokens.rotate(&login.refresh_token.token).await.unwrap_err();
//! assert_eq!(error.invalid_grant(), Some(InvalidGrant::Reused));
//! assert_eq!(error.error_code(), "invalid_grant");
//! assert!(tokens.rotate(&refreshed.refresh_token.token).await.is_err());
//!
//! // Logout handler: with the sub and sid of the caller's access token (a token
//! // without a `sid` is revoked by its `jti` instead).
//! let other = tokens.issue("alice").await?;
//! let claims = &other.access_token.claims;
//! match &claims.sid {
//!     Some(sid) => tokens.logout(&claims.sub, sid).await?,
//!     None => tokens.revoker().revoke_token(claims).await?,
//! }
//! let error = tokens.rotate(&other.refresh_token.token).await.unwrap_err();
//! assert_eq!(error.invalid_grant(), Some(InvalidGrant::Revoked));
//! // An empty session id would revoke nothing: refused.
//! let error = tokens.logout("alice", "").await.unwrap_err();
//! assert_eq!(error.error_code(), "invalid_request");
//! # Ok(())
//! # }
//! ```
//!
//! # Security
//!
//! - Only the SHA-256 of a refresh token is stored (the token has 256 random bits, so an
//!   unsalted hash cannot be reversed); a leak of the store does not leak usable tokens.
//! - The token starts with the subject's store tag (a 128-bit HMAC of the subject under
//!   the [server secret](RefreshTokensBuilder::secret), to find the subject's keys, all
//!   under one Redis Cluster hash tag), masked with a pad derived from the token's own
//!   random part. Without the secret, a token reveals nothing about its subject (a guess
//!   cannot be confirmed by hashing it) and two tokens of one user share no visible part.
//! - A concurrent duplicate refresh (two tabs, a retrying proxy) counts as reuse and ends
//!   the family; the grace window only helps sequential retries. Let one request at a time
//!   refresh on the client.
//! - If the store fails after the token was consumed (a lost reply), the client gets an
//!   error and its retry counts as reuse, unless the grace window covers it.
//! - Reuse, logout and "log out everywhere" revoke access tokens through the `Revoker`:
//!   add [`revocation`](crate::jwt::JwtAuthLayer::revocation) to the JWT layer, or the
//!   access tokens stay valid until they expire (15 minutes by default).
//! - Subject cutoffs compare times of different instances: keep clocks in sync.
//! - A rotation racing a revocation may still hand out one pair; the next rotation fails.
//!
//! # Keys and round trips
//!
//! Under `rt:{T}`, `T` being a keyed digest of the subject: `rt:{T}:tok:<sha256>` (one record per
//! token, kept until the token would have expired, also once consumed, for reuse
//! detection), `rt:{T}:fam:<family>` (revoked family), `rt:{T}:sid:<sid>` (logged-out
//! session), `rt:{T}:sub` (subject cutoff). A login is one write; a rotation is two reads
//! (the token, then its family, session and subject markers in one `get_many`), one write
//! (the new token) and one compare-and-set (the old one consumed).

mod error;
mod key;
mod manager;
mod record;
mod token;

pub use self::error::{InvalidGrant, RefreshError};
pub use self::manager::{RefreshTokens, RefreshTokensBuilder};
pub use self::token::{RefreshToken, TokenPair, TokenResponse};
