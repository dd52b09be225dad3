//! RFC 6750 error responses.

use http::header::WWW_AUTHENTICATE;
use http::{HeaderValue, Response, StatusCode};

use crate::rejection;
use crate::response::{ErrorBody, ResponseBody};

/// Why a request was turned away. The descriptions are fixed strings: they never carry
/// token contents or say which check failed beyond what a client needs to react.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// No token at all: 401 with a bare challenge (RFC 6750 §3.1).
    Missing,
    /// A malformed request: 400 `invalid_request`.
    InvalidRequest(&'static str),
    /// A token that does not verify: 401 `invalid_token`.
    InvalidToken(&'static str),
}

pub(crate) const TOKEN_INVALID: &str = "the token is invalid";
pub(crate) const TOKEN_MALFORMED: &str = "the token is malformed";
pub(crate) const TOKEN_EXPIRED: &str = "the token has expired";
pub(crate) const TOKEN_NOT_YET_VALID: &str = "the token is not valid yet";
pub(crate) const TOKEN_TOO_LONG: &str = "the token is too long";

impl Rejection {
    /// The `result` this rejection is counted and traced as.
    pub(crate) fn metric(self) -> crate::metrics::Jwt {
        match self {
            Self::Missing => crate::metrics::Jwt::Missing,
            Self::InvalidToken(TOKEN_EXPIRED) => crate::metrics::Jwt::Expired,
            Self::InvalidRequest(_) | Self::InvalidToken(_) => crate::metrics::Jwt::Invalid,
        }
    }
}

/// Escapes a realm for a quoted-string, dropping what no header may carry.
pub(crate) fn quote_realm(realm: &str) -> String {
    let mut out = String::with_capacity(realm.len() + 2);
    out.push('"');
    for c in realm.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => {}
        }
    }
    out.push('"');
    out
}

/// The `WWW-Authenticate` header value for a rejection.
pub(crate) fn challenge(quoted_realm: Option<&str>, rejection: Rejection) -> HeaderValue {
    let mut params = Vec::with_capacity(3);
    if let Some(realm) = quoted_realm {
        params.push(format!("realm={realm}"));
    }
    let (code, description) = match rejection {
        Rejection::Missing => (None, None),
        Rejection::InvalidRequest(d) => (Some(rejection::INVALID_REQUEST), Some(d)),
        Rejection::InvalidToken(d) => (Some(rejection::INVALID_TOKEN), Some(d)),
    };
    if let Some(code) = code {
        params.push(format!("error=\"{code}\""));
    }
    if let Some(description) = description {
        params.push(format!("error_description=\"{description}\""));
    }
    let value = if params.is_empty() {
        "Bearer".to_owned()
    } else {
        format!("Bearer {}", params.join(", "))
    };
    HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("Bearer"))
}

/// The full response: status, challenge and the crate's JSON error body.
pub(crate) fn response<B>(
    quoted_realm: Option<&str>,
    rejection: Rejection,
) -> Response<ResponseBody<B>> {
    let (status, body) = match rejection {
        Rejection::Missing => (
            StatusCode::UNAUTHORIZED,
            ErrorBody::new(rejection::MISSING_TOKEN, "a bearer token is required"),
        ),
        Rejection::InvalidRequest(d) => (
            StatusCode::BAD_REQUEST,
            ErrorBody::new(rejection::INVALID_REQUEST, d),
        ),
        Rejection::InvalidToken(d) => (
            StatusCode::UNAUTHORIZED,
            ErrorBody::new(rejection::INVALID_TOKEN, d),
        ),
    };
    let mut response = body.into_response(status);
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, challenge(quoted_realm, rejection));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(challenge(None, Rejection::Missing), "Bearer");
        let realm = quote_realm("my \"api\"\n");
        assert_eq!(realm, r#""my \"api\"""#);
        assert_eq!(
            challenge(Some(&realm), Rejection::InvalidToken(TOKEN_EXPIRED)),
            r#"Bearer realm="my \"api\"", error="invalid_token", error_description="the token has expired""#
        );
        assert_eq!(
            challenge(None, Rejection::InvalidRequest("x")),
            r#"Bearer error="invalid_request", error_description="x""#
        );
    }
}
