//! [`RateLimitError`]: why a rate limit could not be checked.

use http::StatusCode;

use crate::store::StoreError;

/// Why [`RateLimiter::check`](super::RateLimiter::check) could not decide.
///
/// It has the helpers of every error type handlers see ([`is_unavailable`](Self::is_unavailable),
/// [`status`](Self::status), [`error_code`](Self::error_code)), and with the `axum`
/// feature is an `IntoResponse`: the status and the crate's JSON error body.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RateLimitError {
    /// The store failed; when [`is_unavailable`](Self::is_unavailable), the check may be
    /// retried later.
    #[error("the rate limit could not be checked")]
    Store(#[from] StoreError),
}

impl RateLimitError {
    /// `true` when the store could not be reached in time (`503`).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Store(error) => error.is_unavailable(),
        }
    }

    /// The HTTP status: `503` when the store is unavailable, else `500`.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Store(error) => error.status(),
        }
    }

    /// The error code of the JSON body (see [`rejection`](crate::rejection)):
    /// `store_unavailable` or `store_error`.
    pub fn error_code(&self) -> &'static str {
        match self {
            Self::Store(error) => error.error_code(),
        }
    }

    /// This error as the layer's own response.
    pub(crate) fn response<B>(&self) -> http::Response<crate::response::ResponseBody<B>> {
        match self {
            Self::Store(error) => error.response(),
        }
    }

    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    fn client_message(&self) -> &'static str {
        if self.is_unavailable() {
            crate::response::STORE_UNAVAILABLE_MESSAGE
        } else {
            "the rate limit could not be checked"
        }
    }
}

crate::response::impl_into_response!(RateLimitError);
