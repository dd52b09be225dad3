//! What a store-backed layer does when the store cannot be reached: one setting, one name,
//! one meaning on every layer.

use std::time::Duration;

use http::{Response, StatusCode};

use crate::rejection;
use crate::response::{error_response, store_unavailable, ResponseBody};
use crate::store::StoreError;

/// What a store-backed layer does when its store is **unavailable** (refused, dropped,
/// timed out: [`StoreError::is_unavailable`]).
///
/// Every store-backed layer takes it under the same builder name,
/// `.on_store_failure(StoreFailure)`:
///
/// | layer | default | `open()` means |
/// |---|---|---|
/// | JWT revocation check ([`RevocationCheck`](crate::revocation::RevocationCheck)) | closed | the token is accepted unchecked |
/// | [`SessionLayer`](crate::session::SessionLayer) | closed | see the session module |
/// | [`IdempotencyLayer`](crate::idempotency::IdempotencyLayer) | closed | the handler runs unprotected: no claim, no record, no replay |
/// | [`RateLimitLayer`](crate::rate_limit::RateLimitLayer) | **open** | the request is not limited |
///
/// - [`closed`](Self::closed): answer `503 Service Unavailable` with `Retry-After` (1 s
///   unless [`retry_after`](Self::retry_after) says otherwise) and the JSON
///   [`ErrorBody`](crate::response::ErrorBody) `store_unavailable`, without calling the
///   inner service.
/// - [`open`](Self::open): go on as if the store had found nothing, and log a `tracing`
///   warning for each such request.
///
/// The rate limit defaults to open because a limit is a protection of the service, not
/// of the user: refusing every request while Redis is down would turn a store outage into
/// a full outage. Revocation, sessions and idempotency default to closed because their
/// open mode gives up a guarantee (revoked tokens accepted, writes run without protection).
///
/// Only an unavailable store is governed by this setting. A store that answers something
/// unexpected (a corrupt value, a script error) is a bug or corruption, not an outage: it
/// is answered `500` whatever this setting says.
///
/// ```
/// use std::time::Duration;
/// use tower_stateless::StoreFailure;
///
/// let closed = StoreFailure::closed().retry_after(Duration::from_secs(5));
/// assert!(!closed.is_open());
/// assert!(StoreFailure::open().is_open());
/// assert_eq!(StoreFailure::default(), StoreFailure::closed());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct StoreFailure {
    open: bool,
    retry_after: Duration,
}

impl StoreFailure {
    /// Answer `503` with `Retry-After` and `store_unavailable`.
    pub const fn closed() -> Self {
        Self {
            open: false,
            retry_after: Duration::from_secs(1),
        }
    }

    /// Let the request through as if the store had found nothing, with a `tracing`
    /// warning per request.
    pub const fn open() -> Self {
        Self {
            open: true,
            retry_after: Duration::from_secs(1),
        }
    }

    /// The `Retry-After` of the `503` a closed setting answers (whole seconds, rounded
    /// down, at least 1; default 1 s). Without effect on an open setting.
    pub const fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// `true` for [`open`](Self::open).
    pub const fn is_open(&self) -> bool {
        self.open
    }

    /// The `503` of a closed setting.
    pub(crate) fn response<B>(&self) -> Response<ResponseBody<B>> {
        store_unavailable(self.retry_after)
    }
}

impl Default for StoreFailure {
    /// [`closed`](Self::closed).
    fn default() -> Self {
        Self::closed()
    }
}

impl StoreError {
    /// The HTTP status for this error: `503` when [`is_unavailable`](Self::is_unavailable),
    /// else `500`.
    pub fn status(&self) -> StatusCode {
        if self.is_unavailable() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }

    /// The error code of the JSON body (see [`rejection`]): `store_unavailable` or
    /// `store_error`.
    pub fn error_code(&self) -> &'static str {
        if self.is_unavailable() {
            rejection::STORE_UNAVAILABLE
        } else {
            rejection::STORE_ERROR
        }
    }

    fn client_message(&self) -> &'static str {
        if self.is_unavailable() {
            crate::response::STORE_UNAVAILABLE_MESSAGE
        } else {
            "the state store failed"
        }
    }

    /// This error as a layer's response: the status, the JSON body, `Retry-After: 1` on a
    /// `503`.
    pub(crate) fn response<B>(&self) -> Response<ResponseBody<B>> {
        error_response(self.status(), self.error_code(), self.client_message())
    }
}

crate::response::impl_into_response!(StoreError);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_503_or_500() {
        let down = StoreError::Timeout(Duration::from_secs(1));
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.error_code(), "store_unavailable");
        let broken = StoreError::Unexpected("bad reply".into());
        assert_eq!(broken.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(broken.error_code(), "store_error");
        let response = down.response::<String>();
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "1");
    }

    #[test]
    fn closed_answers_503_with_its_retry_after() {
        let response = StoreFailure::closed()
            .retry_after(Duration::from_secs(7))
            .response::<String>();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "7");
    }

    #[cfg(feature = "axum")]
    #[test]
    fn handler_errors_are_json_error_responses() {
        use axum_core::response::IntoResponse;
        let json = |res: &axum_core::response::Response| {
            res.headers()[http::header::CONTENT_TYPE] == "application/json"
        };
        let res = StoreError::Timeout(Duration::from_secs(1)).into_response();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()[http::header::RETRY_AFTER], "1");
        assert!(json(&res));
        let res = crate::refresh::RefreshError::from(crate::refresh::InvalidGrant::Reused)
            .into_response();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert!(json(&res));
        let res = crate::revocation::RevokeError::MissingJti.into_response();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let res = crate::jwt::IssueError::ClaimsNotAnObject.into_response();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let res = crate::session::SessionError::Ended.into_response();
        assert_eq!(res.status(), StatusCode::CONFLICT);
        let res = crate::rate_limit::RateLimitError::from(StoreError::Unexpected("x".into()))
            .into_response();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(json(&res));
    }
}
