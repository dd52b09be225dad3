//! The example's error answers: its own codes in the crate's JSON error body, and the
//! crate's errors through their `IntoResponse`.

use super::*;

/// `404`: no such route, or no such record of the caller.
pub(crate) const NOT_FOUND: &str = "not_found";
/// `405`: the route exists, the method does not (axum adds `Allow`).
pub(crate) const METHOD_NOT_ALLOWED: &str = "method_not_allowed";

/// The example's own errors in the crate's JSON error body (`{"error", "message"}`).
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(ErrorBody::new(code, message))).into_response()
}

/// `503 store_unavailable` with `Retry-After`, as the layers answer.
pub(crate) fn unavailable() -> Response {
    let mut res = error(
        StatusCode::SERVICE_UNAVAILABLE,
        rejection::STORE_UNAVAILABLE,
        "the state store is unavailable; retry later",
    );
    res.headers_mut()
        .insert("retry-after", HeaderValue::from_static("1"));
    res
}

/// An error of the crate answered as the crate's JSON error response (its `status()`,
/// `error_code()`, `Retry-After` on a `503`); what is not the client's fault is logged.
pub(crate) fn failed<E: IntoResponse + std::error::Error>(e: E) -> Response {
    let message = e.to_string();
    let res = e.into_response();
    if res.status().is_server_error() && res.status() != StatusCode::SERVICE_UNAVAILABLE {
        tracing::error!(error = %message, "request failed");
    }
    res
}

/// A body axum could not take as JSON, as a JSON error: 400 malformed, 413 too large, 415
/// not JSON, 422 wrong shape.
pub(crate) fn rejected(e: &JsonRejection) -> Response {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // What the idempotency layer answers for a keyed body over the same limit.
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            rejection::PAYLOAD_TOO_LARGE,
            "the request body is larger than this endpoint accepts",
        );
    }
    error(e.status(), rejection::INVALID_BODY, &e.body_text())
}

pub(crate) fn invalid(message: &str) -> Response {
    error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_input", message)
}

/// `404 not_found` for a path no route matches, instead of axum's empty `404`.
pub(crate) async fn no_route() -> Response {
    error(StatusCode::NOT_FOUND, NOT_FOUND, "no route for this path")
}

/// `405 method_not_allowed` for a route without the method, instead of axum's empty
/// `405`; axum still sets `Allow`.
pub(crate) async fn wrong_method() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        METHOD_NOT_ALLOWED,
        "this route does not take this method; `Allow` lists those it takes",
    )
}
