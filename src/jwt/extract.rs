//! axum extractors for the claims the layer put into the request extensions.

use std::convert::Infallible;
use std::fmt;
use std::ops::{Deref, DerefMut};

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::header::WWW_AUTHENTICATE;
use http::request::Parts;
use http::{HeaderValue, StatusCode};

use crate::rejection;
use crate::response::{into_axum, ErrorBody};

/// Extracts the verified claims of type `T` that [`JwtAuthLayer`](super::JwtAuthLayer)
/// inserted: the application's own claims type, or
/// [`RegisteredClaims`](crate::RegisteredClaims).
///
/// When the request carries no such claims (the layer is missing, misordered, the route
/// is public, or `T` is not the layer's claims type) the handler is not run and the
/// client gets `401` with `WWW-Authenticate: Bearer` and a JSON body: never a `500`.
/// Use `Option<Claims<T>>` on routes where authentication is optional.
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
        parts
            .extensions
            .get::<T>()
            .cloned()
            .map(Claims)
            .ok_or(MissingClaims)
    }
}

impl<S, T> OptionalFromRequestParts<S> for Claims<T>
where
    S: Send + Sync,
    T: Clone + Send + Sync + 'static,
{
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<T>().cloned().map(Claims))
    }
}

/// Rejection of [`Claims`]: the request carries no verified claims. Answers `401` with
/// `WWW-Authenticate: Bearer` and the crate's JSON error body (`missing_token`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MissingClaims;

impl fmt::Display for MissingClaims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request carries no verified token claims")
    }
}

impl std::error::Error for MissingClaims {}

impl IntoResponse for MissingClaims {
    fn into_response(self) -> Response {
        let mut response = into_axum(
            ErrorBody::new(rejection::MISSING_TOKEN, "a bearer token is required")
                .into_response(StatusCode::UNAUTHORIZED),
        );
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }
}
