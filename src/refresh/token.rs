//! The refresh token as handed to clients, and the token pair a login or refresh answers.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::key::{self, TagKey, TAG_LEN};
use crate::id::random_id;
use crate::jwt::IssuedToken;

/// Length of the random part: 32 bytes (256 bits) in base64url.
const SECRET_LEN: usize = 43;

/// A freshly issued refresh token and what it is bound to.
///
/// The token is `<masked tag>.<secret>`: 22 base64url characters from which only the
/// server (holding the secret the [`RefreshTokens`](super::RefreshTokens) were built with)
/// recovers the store slot of the subject's keys, a `.`, and 256 random bits in 43
/// base64url characters. The masked tag differs from token to token and reveals nothing
/// about the subject, nor links the tokens of one subject. It is URL-safe and opaque to
/// clients; only its SHA-256 is stored.
///
/// Debug output redacts the token: it is a bearer credential.
#[derive(Clone)]
#[non_exhaustive]
pub struct RefreshToken {
    /// The token to send to the client.
    pub token: String,
    /// The subject it speaks for.
    pub sub: String,
    /// The session id it is bound to (also the `sid` of the access tokens of the pair).
    pub sid: String,
    /// The token family: every token rotated from one login shares it.
    pub family: String,
    /// When this token expires, Unix seconds (its own TTL, capped by the family lifetime).
    pub expires_at: u64,
    /// When the family ends whatever happens, Unix seconds.
    pub family_expires_at: u64,
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshToken")
            .field("token", &"[redacted]")
            .field("sub", &self.sub)
            .field("sid", &self.sid)
            .field("family", &self.family)
            .field("expires_at", &self.expires_at)
            .field("family_expires_at", &self.family_expires_at)
            .finish()
    }
}

/// What a login or a refresh hands out: a short-lived access token (a JWT from the
/// [`TokenIssuer`](crate::jwt::TokenIssuer)) and a refresh token.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TokenPair {
    /// The access token, with `sub`, `sid`, `iat`, `exp` and a random `jti`.
    pub access_token: IssuedToken,
    /// The refresh token, to be exchanged at the refresh endpoint.
    pub refresh_token: RefreshToken,
    /// Seconds the access token is valid for (`exp − iat`), for the `expires_in` field.
    pub expires_in: u64,
}

impl TokenPair {
    /// The OAuth 2.0 token response body (RFC 6749 §5.1) for this pair: serialize it as
    /// JSON and answer `200` with `Cache-Control: no-store`.
    pub fn to_response(&self) -> TokenResponse {
        TokenResponse {
            access_token: self.access_token.token.clone(),
            refresh_token: self.refresh_token.token.clone(),
            token_type: "Bearer".to_owned(),
            expires_in: self.expires_in,
        }
    }
}

/// `{"access_token","refresh_token","token_type":"Bearer","expires_in"}`, the JSON a login
/// or refresh endpoint answers. Debug output redacts both tokens.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct TokenResponse {
    /// The access token (a JWT).
    pub access_token: String,
    /// The refresh token.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds the access token is valid for.
    pub expires_in: u64,
}

impl fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"[redacted]")
            .field("refresh_token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// `200` with the body as JSON, `Cache-Control: no-store` and `Pragma: no-cache`: a token
/// response is never stored by a cache (RFC 6749 §5.1).
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum_core::response::IntoResponse for TokenResponse {
    fn into_response(self) -> axum_core::response::Response {
        let Ok(body) = serde_json::to_vec(&self) else {
            tracing::error!("refresh: a token response did not serialize");
            return crate::response::into_axum(crate::response::internal_error());
        };
        let mut response = axum_core::response::Response::new(axum_core::body::Body::from(body));
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        crate::response::no_store(headers);
        response
    }
}

/// As [`TokenPair::to_response`] answered: `200`, the JSON body, `Cache-Control:
/// no-store`.
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum_core::response::IntoResponse for TokenPair {
    fn into_response(self) -> axum_core::response::Response {
        self.to_response().into_response()
    }
}

/// A new token for `sub`, and its hash.
pub(super) fn generate(tags: &TagKey, sub: &str) -> Result<(String, String), getrandom::Error> {
    let secret = random_id::<32>()?;
    let token = format!("{}.{secret}", tags.masked_tag(sub, &secret));
    let hash = key::token_hash(&token);
    Ok((token, hash))
}

/// A presented token, read: its subject tag and the hash of the whole token. `None` when
/// it cannot be a token this crate issued.
pub(super) fn parse(tags: &TagKey, token: &str) -> Option<(String, String)> {
    let (masked, secret) = token.split_once('.')?;
    let url_safe = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    if masked.len() != TAG_LEN
        || secret.len() != SECRET_LEN
        || !url_safe(masked)
        || !url_safe(secret)
    {
        return None;
    }
    let tag = tags.unmask(masked, secret)?;
    Some((tag, key::token_hash(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags() -> TagKey {
        TagKey::new(&[3; 32]).unwrap()
    }

    #[test]
    fn generated_tokens_parse_and_differ() {
        let tags = tags();
        let tag = tags.subject_tag("alice");
        let (a, hash) = generate(&tags, "alice").unwrap();
        let (b, _) = generate(&tags, "alice").unwrap();
        assert_ne!(a, b);
        assert_ne!(
            a[..TAG_LEN],
            b[..TAG_LEN],
            "the visible prefix differs per token"
        );
        assert!(!a.starts_with(&tag));
        assert_eq!(a.len(), TAG_LEN + 1 + SECRET_LEN);
        assert_eq!(parse(&tags, &a), Some((tag.clone(), hash.clone())));
        assert_eq!(parse(&tags, &b).map(|(t, _)| t), Some(tag));
        assert!(!hash.contains(&a[TAG_LEN + 1..]));
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        let tags = tags();
        let (good, _) = generate(&tags, "alice").unwrap();
        for bad in [
            "",
            ".",
            "abc",
            &good[1..],
            &format!("{good}x"),
            &good.replacen('.', ":", 1),
            &format!("{}+{}", &good[..TAG_LEN], &good[TAG_LEN + 1..]),
            &format!("{}.{}=", &good[..TAG_LEN], &good[TAG_LEN + 2..]),
            &format!("{}.{}é", &good[..TAG_LEN], &good[TAG_LEN + 3..]),
        ] {
            assert_eq!(parse(&tags, bad), None, "{bad:?}");
        }
    }
}
