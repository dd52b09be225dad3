//! Minting tokens at login, with the same keys the layer verifies with.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::Header;
use serde::Serialize;
use serde_json::{Map, Value};

use super::policy::TokenPolicy;
use crate::id::random_id;
use crate::RegisteredClaims;

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// The operating system had no randomness for the `jti`.
    #[error("no randomness available for the token id")]
    Random(#[source] getrandom::Error),
    /// The custom claims could not be serialized.
    #[error("the custom claims do not serialize")]
    Claims(#[source] serde_json::Error),
    /// The custom claims are not a JSON object (or `()`/`None` for none).
    #[error("the custom claims must serialize to a JSON object")]
    ClaimsNotAnObject,
    /// A custom claim would overwrite one the issuer sets itself.
    #[error("custom claim {0:?} is reserved")]
    ReservedClaim(String),
    /// The system clock is before 1970.
    #[error("the system clock is before the Unix epoch")]
    Clock,
    /// Signing failed.
    #[error("signing the token failed")]
    Sign(#[source] jsonwebtoken::errors::Error),
    /// The policy has no signing key (not reachable through
    /// [`TokenPolicy::token_issuer`], which refuses such a policy).
    #[error("the token policy has no signing key")]
    NoSigningKey,
    /// The subject is empty or only whitespace. Every token with such a `sub` would share
    /// one revocation subject, one rate limit and one idempotency scope; the JWT layer
    /// refuses them.
    #[error("the subject (sub) is empty or only whitespace")]
    EmptySubject,
    /// The session id is `Some("")`. Every such login would share one session revocation;
    /// pass `None` for a token without a session.
    #[error("the session id (sid) is empty")]
    EmptySessionId,
}

impl IssueError {
    /// Always `false`: issuing a token touches no store.
    pub fn is_unavailable(&self) -> bool {
        false
    }

    /// The HTTP status for a login endpoint's answer: always `500` (every cause is on the
    /// server's side: an empty subject or session id is the calling code's mistake).
    pub fn status(&self) -> http::StatusCode {
        http::StatusCode::INTERNAL_SERVER_ERROR
    }

    /// The error code of the JSON body (see [`rejection`](crate::rejection)):
    /// `internal_error`.
    pub fn error_code(&self) -> &'static str {
        crate::rejection::INTERNAL_ERROR
    }

    // The same signature as every error type's `client_message`.
    #[allow(clippy::unused_self)]
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    fn client_message(&self) -> &'static str {
        "the token could not be issued"
    }
}

crate::response::impl_into_response!(IssueError);

/// A freshly minted token and the registered claims it carries (e.g. to answer
/// `expires_in`, or to remember `jti`/`sid` for revocation).
///
/// Debug output redacts the token: it is a bearer credential.
#[derive(Clone)]
#[non_exhaustive]
pub struct IssuedToken {
    /// The compact JWT, for `Authorization: Bearer` or a cookie.
    pub token: String,
    /// What it says: `sub`, `iat`, `exp`, `jti` and `sid` if given.
    pub claims: RegisteredClaims,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token", &"[redacted]")
            .field("claims", &self.claims)
            .finish()
    }
}

/// Mints tokens for login endpoints under a [`TokenPolicy`]: made by
/// [`TokenPolicy::token_issuer`].
///
/// Every token gets `sub`, `iat`, `exp` (now + the policy's access TTL), a random `jti`
/// (128 bits from the OS CSPRNG), the signing key's `kid` in its header, and the policy's
/// `iss` and `aud` when it has them; optionally a `sid` and the application's own claims.
/// The TTL, issuer and audience come from the policy only, so the tokens minted here are
/// exactly the ones its [`JwtAuthLayer`](super::JwtAuthLayer) accepts and its
/// [`Revoker`](crate::revocation::Revoker) covers.
///
/// ```
/// use std::time::Duration;
/// use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenPolicy};
///
/// let keys = JwtKeySet::new().with_hmac("v1", Algorithm::HS256, &[42; 32])?;
/// let policy = TokenPolicy::builder(keys)
///     .signing_key("v1")
///     .access_ttl(Duration::from_secs(600))
///     .build()?;
/// let issued = policy.token_issuer()?.issue("user-42")?;
/// assert_eq!(issued.claims.sub, "user-42");
/// assert!(issued.claims.jti.is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct TokenIssuer {
    policy: TokenPolicy,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("policy", &self.policy)
            .finish()
    }
}

/// Claims set by the issuer, which custom claims may not overwrite.
const RESERVED: [&str; 7] = ["sub", "iat", "exp", "jti", "sid", "iss", "aud"];

impl TokenIssuer {
    /// Only made by [`TokenPolicy::token_issuer`], which checked the signing key.
    pub(crate) fn new(policy: TokenPolicy) -> Self {
        Self { policy }
    }

    /// The policy the tokens are minted under.
    pub fn policy(&self) -> &TokenPolicy {
        &self.policy
    }

    /// A token for `sub` with no session id and no custom claims.
    ///
    /// # Errors
    ///
    /// As [`issue_with`](Self::issue_with); [`IssueError::EmptySubject`] for a `sub` that
    /// is empty or only whitespace.
    pub fn issue(&self, sub: &str) -> Result<IssuedToken, IssueError> {
        self.issue_with(sub, None, &())
    }

    /// A token for `sub`, with an optional session id (`sid`) and the application's
    /// claims `custom`, which must serialize to a JSON object (or to nothing, like `()`)
    /// and must not set `sub`, `iat`, `exp`, `jti`, `sid`, `iss` or `aud`.
    ///
    /// # Errors
    ///
    /// [`IssueError::EmptySubject`] for a `sub` that is empty or only whitespace (as
    /// [`str::trim`] sees it) and [`IssueError::EmptySessionId`] for `Some("")` (the JWT
    /// layer refuses both; every caller without a subject would share one revocation
    /// subject, rate limit and idempotency scope);
    /// [`IssueError::Claims`], [`ClaimsNotAnObject`](IssueError::ClaimsNotAnObject) or
    /// [`ReservedClaim`](IssueError::ReservedClaim) for custom claims that cannot be
    /// used; [`IssueError::Random`], [`Clock`](IssueError::Clock) or
    /// [`Sign`](IssueError::Sign) when minting fails.
    pub fn issue_with<C: Serialize + ?Sized>(
        &self,
        sub: &str,
        sid: Option<&str>,
        custom: &C,
    ) -> Result<IssuedToken, IssueError> {
        if crate::claims::blank_subject(sub) {
            return Err(IssueError::EmptySubject);
        }
        if sid.is_some_and(str::is_empty) {
            return Err(IssueError::EmptySessionId);
        }
        let mut payload = match serde_json::to_value(custom).map_err(IssueError::Claims)? {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            _ => return Err(IssueError::ClaimsNotAnObject),
        };
        if let Some(reserved) = RESERVED.iter().find(|k| payload.contains_key(**k)) {
            return Err(IssueError::ReservedClaim((*reserved).to_owned()));
        }
        let Some(signing) = self.policy.signing() else {
            return Err(IssueError::NoSigningKey);
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| IssueError::Clock)?
            .as_secs();
        let jti = random_id::<16>().map_err(IssueError::Random)?;
        let mut claims =
            RegisteredClaims::new(sub, now.saturating_add(self.policy.access_ttl().as_secs()))
                .with_iat(now);
        claims = claims.with_jti(jti);
        if let Some(sid) = sid {
            claims = claims.with_sid(sid);
        }
        if let Value::Object(registered) =
            serde_json::to_value(&claims).map_err(IssueError::Claims)?
        {
            payload.extend(registered);
        }
        if let Some(issuer) = self.policy.issuer() {
            payload.insert("iss".to_owned(), Value::String(issuer.to_owned()));
        }
        if let Some(audience) = self.policy.audience() {
            payload.insert("aud".to_owned(), Value::String(audience.to_owned()));
        }
        let mut header = Header::new(signing.alg);
        header.kid = Some(signing.kid.clone());
        let token =
            jsonwebtoken::encode(&header, &payload, &signing.key).map_err(IssueError::Sign)?;
        Ok(IssuedToken { token, claims })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::{Algorithm, JwtKeySet};

    fn issuer() -> TokenIssuer {
        let keys = JwtKeySet::new()
            .with_hmac("k", Algorithm::HS256, &[7; 32])
            .unwrap();
        TokenPolicy::builder(keys)
            .signing_key("k")
            .build()
            .unwrap()
            .token_issuer()
            .unwrap()
    }

    #[test]
    fn empty_subject_or_session_id_is_refused() {
        let issuer = issuer();
        assert!(matches!(issuer.issue(""), Err(IssueError::EmptySubject)));
        assert!(matches!(
            issuer.issue_with("", Some("s1"), &serde_json::json!({"role": "admin"})),
            Err(IssueError::EmptySubject)
        ));
        assert!(matches!(
            issuer.issue_with("alice", Some(""), &()),
            Err(IssueError::EmptySessionId)
        ));
        for blank in ["  ", "\t", " \n\r ", "\u{a0}", "\u{3000}"] {
            assert!(
                matches!(issuer.issue(blank), Err(IssueError::EmptySubject)),
                "{blank:?}"
            );
            assert!(
                matches!(
                    issuer.issue_with(blank, Some("s1"), &()),
                    Err(IssueError::EmptySubject)
                ),
                "{blank:?}"
            );
        }
        let error = issuer.issue("").unwrap_err();
        assert_eq!(
            error.to_string(),
            "the subject (sub) is empty or only whitespace"
        );
        assert_eq!(error.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(error.error_code(), crate::rejection::INTERNAL_ERROR);

        assert_eq!(issuer.issue("alice").unwrap().claims.sub, "alice");
        // Whitespace around a subject is the caller's business: it is kept as given.
        assert_eq!(issuer.issue(" alice ").unwrap().claims.sub, " alice ");
        let with_sid = issuer.issue_with("alice", Some("s1"), &()).unwrap();
        assert_eq!(with_sid.claims.sid.as_deref(), Some("s1"));
    }
}
