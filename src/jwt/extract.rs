//! axum extractors for the claims the layer put into the request extensions.

use std::fmt;
use std::ops::{Deref, DerefMut};

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;
use http::StatusCode;

use crate::rejection;
use crate::response::{error_response, into_axum};
use crate::RegisteredClaims;

/// Extracts the verified claims of type `T` that [`JwtAuthLayer`](super::JwtAuthLayer)
/// inserted: the application's own claims type, or
/// [`RegisteredClaims`](crate::RegisteredClaims).
///
/// A request the layer refused never reaches the handler (the layer answers `401` itself),
/// so a request without such claims here is a server misconfiguration: the layer is
/// missing or misordered, the route is one of its public paths (or one of its optional
/// paths, requested without a token), or `T` is not the layer's
/// claims type (see [`JwtAuthLayer::claims`](super::JwtAuthLayer::claims); `RegisteredClaims`
/// always works). The handler is not run, the mistake is logged at error level and the
/// client gets `500` with the crate's JSON error body (`internal_error`), as
/// [`RequireScopeLayer`](super::RequireScopeLayer) and the `Session` extractor answer
/// without their layer: not a `401`, which would send the client to log in again forever.
///
/// `Option<Claims<T>>` is `None` when the request carries no verified claims at all (no
/// [`RegisteredClaims`](crate::RegisteredClaims) either): one of the layer's
/// [optional paths](super::JwtAuthLayer::optional_path) requested without a token, a
/// route the layer does not cover, or one of its public paths, for a handler shared by
/// routes behind the layer and routes without it. When the request does carry verified claims but no `T` (the layer
/// decodes another claims type), it rejects as `Claims<T>` does, `500 internal_error`
/// logged at error level: that is the same programming error, and `None` would hide it by
/// treating every signed-in caller as anonymous. It tells the two apart by the
/// `RegisteredClaims` the layer inserts next to its own type on every request it lets
/// through (so another authentication middleware that inserts only `RegisteredClaims`
/// counts as "claims of another type" too).
///
/// It does not make authentication optional by itself: the layer verifies no token on its
/// [public paths](super::JwtAuthLayer::public_path) (there `Option<Claims<T>>` is always
/// `None`, even with a valid token), and refuses a request without a token everywhere
/// else. For a route that works anonymously and personalizes for a signed-in caller, make
/// it an [optional path](super::JwtAuthLayer::optional_path) and take
/// `Option<Claims<T>>`: `None` without a token, `Some` with a valid one (an invalid one
/// never reaches the handler).
///
/// ```
/// use axum::{routing::get, Router};
/// use tower_stateless::jwt::Claims;
/// use tower_stateless::RegisteredClaims;
///
/// async fn me(Claims(claims): Claims<RegisteredClaims>) -> String {
///     claims.sub
/// }
///
/// let app: Router = Router::new().route("/me", get(me));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Claims<T>(pub T);

impl<T> Deref for Claims<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> DerefMut for Claims<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<S, T> FromRequestParts<S> for Claims<T>
where
    S: Send + Sync,
    T: Clone + Send + Sync + 'static,
{
    type Rejection = MissingClaims;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<T>() {
            Some(claims) => Ok(Claims(claims.clone())),
            None => Err(MissingClaims::of::<T>(parts)),
        }
    }
}

impl<S, T> OptionalFromRequestParts<S> for Claims<T>
where
    S: Send + Sync,
    T: Clone + Send + Sync + 'static,
{
    type Rejection = MissingClaims;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        if let Some(claims) = parts.extensions.get::<T>() {
            return Ok(Some(Claims(claims.clone())));
        }
        // No claims at all is what the option is for; claims of another type are the
        // misconfiguration `Claims<T>` answers.
        let missing = MissingClaims::of::<T>(parts);
        if missing.other_type {
            Err(missing)
        } else {
            Ok(None)
        }
    }
}

/// Rejection of [`Claims`]: the request carries no verified claims of the type asked for,
/// a misconfiguration (see [`Claims`]); of `Option<Claims<T>>` only when it carries claims
/// of another type. Answers `500` with the crate's JSON error body (`internal_error`) and
/// logs the mistake at error level.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MissingClaims {
    claims_type: &'static str,
    other_type: bool,
}

impl MissingClaims {
    fn of<T>(parts: &Parts) -> Self {
        Self {
            claims_type: std::any::type_name::<T>(),
            // The JWT layer inserts `RegisteredClaims` next to its own type on every
            // request it lets through: with them here it ran, with another type.
            other_type: parts.extensions.get::<RegisteredClaims>().is_some(),
        }
    }
}

impl fmt::Display for MissingClaims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.other_type {
            write!(
                f,
                "Claims<{}>: the token was verified (the request carries RegisteredClaims) \
                 but the JwtAuthLayer decodes another claims type; give it \
                 `.claims::<{0}>()`, or extract its type (or `RegisteredClaims`)",
                self.claims_type
            )
        } else {
            write!(
                f,
                "Claims<{}>: no verified claims in the request; the JwtAuthLayer is missing \
                 or misordered, or the route is one of its public paths or an optional path \
                 requested without a token (use `Option<Claims>` there)",
                self.claims_type
            )
        }
    }
}

impl std::error::Error for MissingClaims {}

impl IntoResponse for MissingClaims {
    fn into_response(self) -> Response {
        tracing::error!("{self}");
        into_axum(error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            rejection::INTERNAL_ERROR,
            "the authorization layers are misconfigured",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn extract<T: Clone + Send + Sync + 'static>(
        registered: bool,
    ) -> Result<Claims<T>, MissingClaims> {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        if registered {
            parts.extensions.insert(RegisteredClaims::new("alice", 1));
            parts.extensions.insert(serde_json::json!({"sub": "alice"}));
        }
        <Claims<T> as FromRequestParts<()>>::from_request_parts(&mut parts, &()).await
    }

    #[tokio::test]
    async fn the_log_tells_another_claims_type_from_no_layer() {
        let other = extract::<u8>(true).await.unwrap_err();
        assert!(other.other_type);
        assert!(other.to_string().contains("decodes another claims type"));
        assert!(other.to_string().starts_with("Claims<u8>"));

        let none = extract::<u8>(false).await.unwrap_err();
        assert!(!none.other_type);
        assert!(none.to_string().contains("JwtAuthLayer is missing"));

        assert!(extract::<serde_json::Value>(true).await.is_ok());
        assert!(extract::<RegisteredClaims>(true).await.is_ok());
    }

    async fn extract_optional<T: Clone + Send + Sync + 'static>(
        registered: bool,
    ) -> Result<Option<Claims<T>>, MissingClaims> {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        if registered {
            parts.extensions.insert(RegisteredClaims::new("alice", 1));
            parts.extensions.insert(serde_json::json!({"sub": "alice"}));
        }
        <Claims<T> as OptionalFromRequestParts<()>>::from_request_parts(&mut parts, &()).await
    }

    /// `None` only without any claims; claims of another type reject as `Claims<T>` does.
    #[tokio::test]
    async fn the_option_is_none_only_without_claims() {
        let other = extract_optional::<u8>(true).await.unwrap_err();
        assert!(other.other_type);
        let response = other.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);

        assert_eq!(extract_optional::<u8>(false).await.unwrap(), None);
        assert_eq!(
            extract_optional::<RegisteredClaims>(false).await.unwrap(),
            None
        );
        assert_eq!(
            extract_optional::<serde_json::Value>(true).await.unwrap(),
            Some(Claims(serde_json::json!({"sub": "alice"})))
        );
        assert_eq!(
            extract_optional::<RegisteredClaims>(true).await.unwrap(),
            Some(Claims(RegisteredClaims::new("alice", 1)))
        );
    }

    #[tokio::test]
    async fn both_answer_500_internal_error() {
        for registered in [true, false] {
            let response = extract::<u8>(registered).await.unwrap_err().into_response();
            assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert!(!response
                .headers()
                .contains_key(http::header::WWW_AUTHENTICATE));
        }
    }
}
