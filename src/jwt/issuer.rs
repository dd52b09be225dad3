//! Minting tokens at login, with the same keys the layer verifies with.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{Map, Value};

use super::key::{JwtKeySet, KeyError};
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
}

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

/// Mints tokens for login endpoints with a signing key of a [`JwtKeySet`].
///
/// Every token gets `sub`, `iat`, `exp` (now + TTL, default 15 minutes), a random `jti`
/// (128 bits from the OS CSPRNG), the key's `kid` in its header, and, when configured,
/// `iss` and `aud`; optionally a `sid` and the application's own claims.
///
/// ```
/// use std::time::Duration;
/// use tower_stateless::jwt::{Algorithm, JwtKeySet, TokenIssuer};
///
/// let keys = JwtKeySet::new().with_hmac("v1", Algorithm::HS256, &[42; 32])?;
/// let issuer = TokenIssuer::new(&keys, "v1")?.ttl(Duration::from_secs(600));
/// let issued = issuer.issue("user-42")?;
/// assert_eq!(issued.claims.sub, "user-42");
/// assert!(issued.claims.jti.is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
#[must_use]
pub struct TokenIssuer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
    ttl: Duration,
    issuer: Option<String>,
    audience: Option<String>,
}

impl fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("key", &"[redacted]")
            .field("ttl", &self.ttl)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// Claims set by the issuer, which custom claims may not overwrite.
const RESERVED: [&str; 7] = ["sub", "iat", "exp", "jti", "sid", "iss", "aud"];

impl TokenIssuer {
    /// An issuer signing with the key `kid` of `keys`, which must be able to sign (an
    /// HMAC secret or a private key, not a verify-only public key).
    pub fn new(keys: &JwtKeySet, kid: &str) -> Result<Self, KeyError> {
        let entry = keys.signing_key(kid)?;
        let key = entry
            .encoding
            .clone()
            .ok_or_else(|| KeyError::NotSigningKey(kid.to_owned()))?;
        Ok(Self {
            kid: kid.to_owned(),
            alg: entry.alg,
            key,
            ttl: Duration::from_secs(15 * 60),
            issuer: None,
            audience: None,
        })
    }

    /// How long tokens live (default 15 minutes; at least one second).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_secs(1));
        self
    }

    /// Sets `iss` on every token.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Sets `aud` on every token.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// A token for `sub` with no session id and no custom claims.
    pub fn issue(&self, sub: &str) -> Result<IssuedToken, IssueError> {
        self.issue_with(sub, None, &())
    }

    /// A token for `sub`, with an optional session id (`sid`) and the application's
    /// claims `custom`, which must serialize to a JSON object (or to nothing, like `()`)
    /// and must not set `sub`, `iat`, `exp`, `jti`, `sid`, `iss` or `aud`.
    pub fn issue_with<C: Serialize + ?Sized>(
        &self,
        sub: &str,
        sid: Option<&str>,
        custom: &C,
    ) -> Result<IssuedToken, IssueError> {
        let mut payload = match serde_json::to_value(custom).map_err(IssueError::Claims)? {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            _ => return Err(IssueError::ClaimsNotAnObject),
        };
        if let Some(reserved) = RESERVED.iter().find(|k| payload.contains_key(**k)) {
            return Err(IssueError::ReservedClaim((*reserved).to_owned()));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| IssueError::Clock)?
            .as_secs();
        let jti = random_id::<16>().map_err(IssueError::Random)?;
        let mut claims =
            RegisteredClaims::new(sub, now.saturating_add(self.ttl.as_secs())).with_iat(now);
        claims = claims.with_jti(jti);
        if let Some(sid) = sid {
            claims = claims.with_sid(sid);
        }
        if let Value::Object(registered) =
            serde_json::to_value(&claims).map_err(IssueError::Claims)?
        {
            payload.extend(registered);
        }
        if let Some(issuer) = &self.issuer {
            payload.insert("iss".to_owned(), Value::String(issuer.clone()));
        }
        if let Some(audience) = &self.audience {
            payload.insert("aud".to_owned(), Value::String(audience.clone()));
        }
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        let token = jsonwebtoken::encode(&header, &payload, &self.key).map_err(IssueError::Sign)?;
        Ok(IssuedToken { token, claims })
    }
}
