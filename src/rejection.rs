//! The catalogue of error codes: every `error` string a layer, an extractor or an error
//! type of this crate answers with, in one place (as axum keeps its rejections in
//! `extract/rejection.rs`).
//!
//! Each code is the `error` field of the JSON [`ErrorBody`](crate::response::ErrorBody)
//! (`{"error":"store_unavailable","message":"..."}`). Codes are stable: match on them in
//! clients and tests; the `message` is for people and may change.
//!
//! | code | status | who answers it |
//! |---|---|---|
//! | [`MISSING_TOKEN`] | `401` | JWT layer |
//! | [`INVALID_REQUEST`] | `400` | JWT layer (token sent two ways, malformed header); [`RevokeError`](crate::revocation::RevokeError), [`RefreshError`](crate::refresh::RefreshError) and [`DevicesError`](crate::session::DevicesError) (a revocation or logout naming no token, session or subject: an empty `jti` or `sid`, a blank `sub`) |
//! | [`INVALID_TOKEN`] | `401` | JWT layer (bad, expired or revoked token) |
//! | [`INSUFFICIENT_SCOPE`] | `403` | [`RequireScopeLayer`](crate::jwt::RequireScopeLayer) |
//! | [`STORE_UNAVAILABLE`] | `503` | every store-backed layer ([`StoreFailure::closed`](crate::StoreFailure::closed)), [`StoreError`](crate::store::StoreError) and the errors wrapping one ([`RevokeError`](crate::revocation::RevokeError), [`RateLimitError`](crate::rate_limit::RateLimitError), [`SessionError`](crate::session::SessionError), [`DevicesError`](crate::session::DevicesError)) |
//! | [`STORE_ERROR`] | `500` | [`StoreError`](crate::store::StoreError) other than unavailable, and [`RevokeError`](crate::revocation::RevokeError) or [`RateLimitError`](crate::rate_limit::RateLimitError) wrapping one |
//! | [`INTERNAL_ERROR`] | `500` | any layer, the `Claims` and `Session` extractors (feature `axum`), for a misconfiguration or a corrupt store reply |
//! | [`RATE_LIMITED`] | `429` | rate limit layer |
//! | [`SESSION_ERROR`] | `500` | session layer, [`SessionError`](crate::session::SessionError) |
//! | [`SESSION_TOO_LARGE`] | `413` | session layer, [`SessionError`](crate::session::SessionError) |
//! | [`SESSION_CONFLICT`] | `409` | [`SessionError`](crate::session::SessionError) |
//! | [`SESSION_ENDED`] | `409` | [`SessionError`](crate::session::SessionError) |
//! | [`IDEMPOTENCY_KEY_REQUIRED`] | `400` | idempotency layer |
//! | [`INVALID_IDEMPOTENCY_KEY`] | `400` | idempotency layer |
//! | [`INVALID_BODY`] | `400` | idempotency layer (a keyed request's body could not be read) |
//! | [`PAYLOAD_TOO_LARGE`] | `413` | idempotency layer |
//! | [`IDEMPOTENCY_KEY_REUSED`] | `422` | idempotency layer |
//! | [`IDEMPOTENCY_REQUEST_IN_PROGRESS`] | `409` | idempotency layer |
//! | [`IDEMPOTENCY_STORE_ERROR`] | `500` | idempotency layer |
//! | [`IDEMPOTENCY_SCOPE_MISSING`] | `500` | idempotency layer |
//! | [`IDEMPOTENCY_OVERLOADED`] | `503` | idempotency layer |
//! | [`RESPONSE_BODY_FAILED`] | `500` | idempotency layer |
//! | [`DEVICES_ERROR`] | `500` | [`DevicesError`](crate::session::DevicesError) |
//! | [`INVALID_GRANT`] | `400` | [`RefreshError`](crate::refresh::RefreshError) (OAuth 2.0) |
//! | [`TEMPORARILY_UNAVAILABLE`] | `503` | [`RefreshError`](crate::refresh::RefreshError) (OAuth 2.0) |
//! | [`SERVER_ERROR`] | `500` | [`RefreshError`](crate::refresh::RefreshError) (OAuth 2.0) |
//!
//! The table lists what this crate answers. An application may answer these codes too,
//! with the status that fits its case: the example API (`examples/stateless_api`) answers
//! a JSON body axum cannot take with [`INVALID_BODY`] and axum's status (`400` malformed
//! JSON, `415` not `application/json`, `422` the wrong shape) and one over its size limit
//! with [`PAYLOAD_TOO_LARGE`] (`413`, as the idempotency layer answers a keyed one).
//!
//! Every error type a handler sees ([`StoreError`](crate::store::StoreError),
//! [`SessionError`](crate::session::SessionError),
//! [`RevokeError`](crate::revocation::RevokeError),
//! [`IssueError`](crate::jwt::IssueError), [`RefreshError`](crate::refresh::RefreshError),
//! [`DevicesError`](crate::session::DevicesError),
//! [`RateLimitError`](crate::rate_limit::RateLimitError)) has the same three helpers:
//! `is_unavailable()`, `status()` and `error_code()` (one of the codes here), and with the
//! `axum` feature implements `IntoResponse` as this JSON body (with `Retry-After: 1` on a
//! `503`).

/// No token in the request (`401`, with a bare `WWW-Authenticate: Bearer`).
pub const MISSING_TOKEN: &str = "missing_token";
/// A malformed request: a token sent two ways, a `Bearer` without token; or a revocation
/// or logout naming no token, session or subject (`400`).
pub const INVALID_REQUEST: &str = "invalid_request";
/// A token that does not verify, has expired or was revoked (`401`).
pub const INVALID_TOKEN: &str = "invalid_token";
/// The token lacks a scope or claim the route requires (`403`).
pub const INSUFFICIENT_SCOPE: &str = "insufficient_scope";
/// The state store could not be reached in time (`503` with `Retry-After`).
pub const STORE_UNAVAILABLE: &str = "store_unavailable";
/// The state store answered something unexpected (`500`).
pub const STORE_ERROR: &str = "store_error";
/// A misconfiguration or a corrupt store reply; the details are in the log (`500`).
pub const INTERNAL_ERROR: &str = "internal_error";
/// The caller's rate limit is exhausted (`429` with `Retry-After`).
pub const RATE_LIMITED: &str = "rate_limited";
/// The session could not be loaded or saved (`500`).
pub const SESSION_ERROR: &str = "session_error";
/// A session update met a concurrent change on every attempt (`409`).
pub const SESSION_CONFLICT: &str = "session_conflict";
/// The session would grow past its size limit (`413`).
pub const SESSION_TOO_LARGE: &str = "session_too_large";
/// The session ended (destroyed or expired) during the request (`409`).
pub const SESSION_ENDED: &str = "session_ended";
/// Listing or ending a user's logins failed on an unexpected store reply (`500`).
pub const DEVICES_ERROR: &str = "devices_error";
/// The request needs an idempotency key and has none (`400`).
pub const IDEMPOTENCY_KEY_REQUIRED: &str = "idempotency_key_required";
/// The idempotency key is malformed (`400`).
pub const INVALID_IDEMPOTENCY_KEY: &str = "invalid_idempotency_key";
/// The request body could not be read (`400`). An application may use it for a body it
/// cannot parse, with the status that says why (the example API: `400`, `415`, `422`).
pub const INVALID_BODY: &str = "invalid_body";
/// The request body is larger than the endpoint accepts (`413`).
pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
/// The idempotency key was used for a different request (`422`).
pub const IDEMPOTENCY_KEY_REUSED: &str = "idempotency_key_reused";
/// A request with this idempotency key is still running (`409` with `Retry-After`).
pub const IDEMPOTENCY_REQUEST_IN_PROGRESS: &str = "idempotency_request_in_progress";
/// The idempotency record could not be read (`500`).
pub const IDEMPOTENCY_STORE_ERROR: &str = "idempotency_store_error";
/// A keyed request has no caller to keep its record for (`500`, a misconfiguration).
pub const IDEMPOTENCY_SCOPE_MISSING: &str = "idempotency_scope_missing";
/// Too many keyed requests are running (`503` with `Retry-After`).
pub const IDEMPOTENCY_OVERLOADED: &str = "idempotency_overloaded";
/// The handler's response body failed while it was being recorded (`500`).
pub const RESPONSE_BODY_FAILED: &str = "response_body_failed";
/// OAuth 2.0: the refresh token is not (or no longer) valid (`400`).
pub const INVALID_GRANT: &str = "invalid_grant";
/// OAuth 2.0: the token endpoint's store is unavailable (`503`).
pub const TEMPORARILY_UNAVAILABLE: &str = "temporarily_unavailable";
/// OAuth 2.0: the token endpoint failed (`500`).
pub const SERVER_ERROR: &str = "server_error";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refresh::RefreshError;
    use crate::revocation::RevokeError;
    use crate::session::DevicesError;

    /// The catalogue's row for the constant `name`.
    fn row(name: &str) -> &'static str {
        include_str!("rejection.rs")
            .lines()
            .find(|l| l.starts_with(&format!("//! | [`{name}`] |")))
            .unwrap_or_else(|| panic!("no catalogue row for {name}"))
    }

    /// Every error type answering `invalid_request` is named in its row, not only the
    /// JWT layer.
    #[test]
    fn the_catalogue_names_every_source_of_invalid_request() {
        let missing = || RefreshError::from(RevokeError::MissingSubject);
        let answers = [
            ("RevokeError", RevokeError::MissingSubject.error_code()),
            ("RefreshError", missing().error_code()),
            ("DevicesError", DevicesError::from(missing()).error_code()),
        ];
        let row = row("INVALID_REQUEST");
        assert!(row.contains("JWT layer"), "{row}");
        for (who, code) in answers {
            assert_eq!(code, INVALID_REQUEST, "{who}");
            assert!(row.contains(&format!("[`{who}`]")), "{who} missing: {row}");
        }
    }

    /// The catalogue says an application may answer `invalid_body` with other statuses,
    /// as the example API does.
    #[test]
    fn the_catalogue_notes_invalid_body_beyond_the_idempotency_layer() {
        let docs: String = include_str!("rejection.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .collect::<Vec<_>>()
            .join(" ");
        for status in ["`415`", "`422`"] {
            assert!(docs.contains(status), "{status}");
        }
        assert!(docs.contains("examples/stateless_api"));
        let example = include_str!("../examples/stateless_api/errors.rs");
        assert!(example.contains("rejection::INVALID_BODY"));
    }
}
