//! The caller's registered JWT claims, shared between layers through request extensions.

use serde::{Deserialize, Serialize};

/// The registered claims of a verified token that the other layers need.
///
/// `JwtAuthLayer` inserts one into the request extensions of every request it lets
/// through (after its revocation check, when it has one, looked up the `jti`, `sid` and
/// `sub`); `IdempotencyLayer` (records scoped per caller) and `SessionLayer` (session id
/// from `sid`) read it from there. Any other authentication middleware can insert one
/// too, and those layers will work behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RegisteredClaims {
    /// Subject: who the token speaks for. Never empty or only whitespace in the claims
    /// the JWT layer inserts (it refuses such a token).
    pub sub: String,
    /// Token id, unique per token; needed to revoke one token. Never `Some("")` in the
    /// claims the JWT layer inserts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Issued-at, seconds since the Unix epoch; needed for "log out everywhere".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Session id, when the token belongs to a server-side session. Never `Some("")` in
    /// the claims the JWT layer inserts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

impl RegisteredClaims {
    /// Claims for `sub` expiring at `exp` (seconds since the Unix epoch).
    pub fn new(sub: impl Into<String>, exp: u64) -> Self {
        Self {
            sub: sub.into(),
            jti: None,
            iat: None,
            exp,
            sid: None,
        }
    }

    /// Sets the token id.
    #[must_use]
    pub fn with_jti(mut self, jti: impl Into<String>) -> Self {
        self.jti = Some(jti.into());
        self
    }

    /// Sets the issued-at time.
    #[must_use]
    pub fn with_iat(mut self, iat: u64) -> Self {
        self.iat = Some(iat);
        self
    }

    /// Sets the session id.
    #[must_use]
    pub fn with_sid(mut self, sid: impl Into<String>) -> Self {
        self.sid = Some(sid.into());
        self
    }
}

/// Whether `sub` names no one: empty or only whitespace (as [`str::trim`] sees it).
///
/// Every such caller would share one revocation subject ("log out everywhere"), one rate
/// limit and one idempotency scope: the JWT layer refuses such a token and the token
/// issuer does not mint one, both by this test.
pub(crate) fn blank_subject(sub: &str) -> bool {
    sub.trim().is_empty()
}
