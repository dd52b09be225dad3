use http::StatusCode;

use crate::jwt::IssueError;
use crate::rejection;
use crate::revocation::RevokeError;
use crate::store::StoreError;

/// Why a refresh token was refused. Tell the client only `invalid_grant`; the reason is
/// for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidGrant {
    /// Not shaped like a refresh token of this crate.
    Malformed,
    /// Well-formed, but no such token is stored: forged, from another deployment, or
    /// its record has expired.
    Unknown,
    /// The token's own TTL or its family's absolute lifetime has passed.
    Expired,
    /// The family was ended: by reuse detection, logout of its session, or "log out
    /// everywhere" of its subject.
    Revoked,
    /// The token had already been exchanged: reuse detected, and the family and its
    /// session were revoked just now.
    Reused,
}

impl std::fmt::Display for InvalidGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed refresh token",
            Self::Unknown => "unknown refresh token",
            Self::Expired => "refresh token expired",
            Self::Revoked => "refresh token family revoked",
            Self::Reused => "refresh token reused; family and session revoked",
        })
    }
}

/// Why issuing, rotating or revoking refresh tokens failed.
///
/// Map it to the token endpoint's answer with [`status`](Self::status) and
/// [`error_code`](Self::error_code): `400 invalid_grant`, `503 temporarily_unavailable`
/// (send `Retry-After`), or `500 server_error` (OAuth 2.0 codes, listed in
/// [`rejection`](crate::rejection)). With the `axum` feature it is an `IntoResponse`: that
/// status, the crate's JSON [`ErrorBody`](crate::response::ErrorBody) (which never tells
/// the reason of an `invalid_grant`), and `Retry-After: 1` on a `503`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefreshError {
    /// The refresh token is not (or no longer) valid: OAuth `invalid_grant`.
    #[error("invalid_grant: {0}")]
    InvalidGrant(InvalidGrant),
    /// The store failed. When [`is_unavailable`](Self::is_unavailable), the request may be
    /// retried later; no token was issued.
    #[error("refresh token store failed")]
    Store(#[source] StoreError),
    /// Writing the session or subject revocation failed (other than a store failure):
    /// a logout given an empty session id ([`RevokeError::MissingSid`]) or an empty or
    /// whitespace-only subject ([`RevokeError::MissingSubject`]), refused with `400
    /// invalid_request` before anything is written.
    #[error("could not revoke the session or subject")]
    Revoke(#[source] RevokeError),
    /// The access token could not be minted; also an empty (or whitespace-only) subject or
    /// an empty session id given to [`issue`](super::RefreshTokens::issue) or
    /// [`issue_for_session`](super::RefreshTokens::issue_for_session)
    /// ([`IssueError::EmptySubject`], [`IssueError::EmptySessionId`]), refused before
    /// anything is written.
    #[error("could not mint the access token")]
    Issue(#[source] IssueError),
    /// The operating system had no randomness for the token.
    #[error("no randomness available for the refresh token")]
    Random(#[source] getrandom::Error),
    /// A stored record does not decode: corruption, or a record written by something else.
    #[error("corrupt refresh token record in the store")]
    Corrupt(#[source] serde_json::Error),
}

impl RefreshError {
    /// `true` for [`RefreshError::InvalidGrant`].
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, Self::InvalidGrant(_))
    }

    /// The reason of an `invalid_grant`, if it is one.
    pub fn invalid_grant(&self) -> Option<InvalidGrant> {
        match self {
            Self::InvalidGrant(reason) => Some(*reason),
            _ => None,
        }
    }

    /// `true` when the store could not be reached in time: answer `503` with
    /// `Retry-After`. No token was issued.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Store(error) => error.is_unavailable(),
            _ => false,
        }
    }

    /// The refusal of a logout call that named no session or subject
    /// ([`RevokeError::MissingSid`], [`RevokeError::MissingSubject`]),
    /// the caller's mistake rather than the server's.
    fn is_bad_request(&self) -> bool {
        matches!(
            self,
            Self::Revoke(
                RevokeError::MissingSid | RevokeError::MissingJti | RevokeError::MissingSubject
            )
        )
    }

    /// The OAuth 2.0 error code for the response body: `invalid_grant`,
    /// `invalid_request` (a logout naming no session, or an empty or whitespace-only
    /// subject), `temporarily_unavailable` or `server_error`.
    pub fn error_code(&self) -> &'static str {
        if self.is_invalid_grant() {
            rejection::INVALID_GRANT
        } else if self.is_bad_request() {
            rejection::INVALID_REQUEST
        } else if self.is_unavailable() {
            rejection::TEMPORARILY_UNAVAILABLE
        } else {
            rejection::SERVER_ERROR
        }
    }

    /// The HTTP status for the response: `400`, `503` or `500`.
    pub fn status(&self) -> StatusCode {
        if self.is_invalid_grant() || self.is_bad_request() {
            StatusCode::BAD_REQUEST
        } else if self.is_unavailable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }

    /// What the client is told: never the reason of an `invalid_grant`; for a refused
    /// logout, what it lacked (the session or the subject).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn client_message(&self) -> &'static str {
        match self {
            Self::InvalidGrant(_) => "the refresh token is invalid",
            Self::Revoke(error) if self.is_bad_request() => error.client_message(),
            _ if self.is_unavailable() => crate::response::STORE_UNAVAILABLE_MESSAGE,
            _ => "the token endpoint failed",
        }
    }
}

/// The status, the JSON [`ErrorBody`](crate::response::ErrorBody) with `error_code()`,
/// `Retry-After: 1` on a `503`, and `Cache-Control: no-store` (a token endpoint's error,
/// RFC 6749 §5.2).
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum_core::response::IntoResponse for RefreshError {
    fn into_response(self) -> axum_core::response::Response {
        let mut response = crate::response::into_axum(crate::response::error_response(
            self.status(),
            self.error_code(),
            self.client_message(),
        ));
        crate::response::no_store(response.headers_mut());
        response
    }
}

impl From<InvalidGrant> for RefreshError {
    fn from(reason: InvalidGrant) -> Self {
        // Every refused refresh token of `RefreshTokens` becomes its error here: one place to count it.
        crate::metrics::refresh(match reason {
            InvalidGrant::Reused => crate::metrics::Refresh::Reused,
            _ => crate::metrics::Refresh::Invalid,
        });
        Self::InvalidGrant(reason)
    }
}

impl From<StoreError> for RefreshError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

impl From<RevokeError> for RefreshError {
    fn from(error: RevokeError) -> Self {
        match error {
            RevokeError::Store(error) => Self::Store(error),
            other => Self::Revoke(other),
        }
    }
}
